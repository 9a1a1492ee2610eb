"""venet device constants for Python.  Every number, name table and record
codec comes from venet._abi, built from venet/includes/venet_abi.h (the one
source of the device ABI); this module adds the Python-side rules."""
from venet._abi import (CAP_CSUM, CAP_ECN, CAP_EVQ_LINKSTATE, CAP_EVQ_TXC, CAP_GROUP_EVENTQ,
                        CAP_GROUP_SG, CAP_SG, CAP_TSO4, CAP_TSO6, CAP_UFO, CAP_USO, ETH_HLEN,
                        EV_LINKSTATE, EV_TXC, EVENT_DTYPE, EVENT_SIZE, EVENT_STRUCT, F_ECN, F_GSO,
                        F_MORE, F_NEEDS_CSUM, F_TXC, GSO_TCPV4, GSO_TCPV6, GSO_UDP, GSO_UDP_L4,
                        MAX_CHAIN, MAX_GSO_FRAME, MAX_MTU, META_DTYPE, META_REASONS, META_SIZE,
                        META_STRUCT, MIN_BUF_SIZE, MIN_FRAME, MIN_MTU, NRINGS, RING_EVQ, RING_RX,
                        RING_TX, TXC_META_BASE, TXC_STATUS, VERSION)

DEVICE_TYPE = "virtual-ethernet"

# The offload bits of the SG group, and what each needs besides itself.
OFFLOAD_CAPS = CAP_CSUM | CAP_TSO4 | CAP_TSO6 | CAP_ECN | CAP_USO
CAP_NAMES = {CAP_SG: "sg", CAP_CSUM: "csum", CAP_TSO4: "tso4", CAP_TSO6: "tso6",
             CAP_ECN: "tso-ecn", CAP_UFO: "ufo", CAP_USO: "uso"}


def consistent_caps(bits):
    """Drop offload bits whose prerequisites are missing: every offload
    needs CSUM (a segment's checksum is always partial), ECN needs TSO."""
    if not bits & CAP_CSUM:
        bits &= ~(CAP_TSO4 | CAP_TSO6 | CAP_ECN | CAP_USO | CAP_UFO)
    if not bits & (CAP_TSO4 | CAP_TSO6):
        bits &= ~CAP_ECN
    return bits


def max_frame(mtu, offloads):
    """The longest frame (without its record) a device carries: a GSO frame
    if segmentation offloads were negotiated, else one MTU frame."""
    return MAX_GSO_FRAME if consistent_caps(offloads) & OFFLOAD_CAPS & ~CAP_CSUM else mtu + ETH_HLEN


def cap_names(bits):
    """'csum,tso4,...' for SG-group bits."""
    return ",".join(n for b, n in CAP_NAMES.items() if bits & b) or "none"


def parse_offloads(text):
    """SG-group offload bits from 'all', 'none' or a comma list of
    csum, tso4, tso6, tso-ecn, uso.  ValueError names what is unknown."""
    text = text.strip().lower()
    if text == "all":
        return OFFLOAD_CAPS
    if text in ("none", ""):
        return 0
    by_name = {n: b for b, n in CAP_NAMES.items() if b & OFFLOAD_CAPS}
    bits = 0
    for name in text.split(","):
        name = name.strip()
        if name not in by_name:
            raise ValueError(f"unknown offload {name!r} (choose from all, none, {', '.join(by_name)})")
        bits |= by_name[name]
    return bits


GSO_NAMES = {GSO_TCPV4: "tcpv4", GSO_UDP: "udp", GSO_TCPV6: "tcpv6", GSO_UDP_L4: "udp_l4"}
# Which SG-group capability allows each GSO type.
GSO_CAP = {GSO_TCPV4: CAP_TSO4, GSO_UDP: CAP_UFO, GSO_TCPV6: CAP_TSO6, GSO_UDP_L4: CAP_USO}

# An event (EVENT_STRUCT packs and unpacks type, size, a, b).  EV_TXC's b:
# the ring (RING_TX) in bits 0..31, what became of the frame in bits
# 32..63, an index into TXC_STATUS (0 "sent": written to the tap).


def check_mtu(mtu):
    """mtu if a device may have it, else ValueError saying the range."""
    if not MIN_MTU <= mtu <= MAX_MTU:
        raise ValueError(f"MTU {mtu} is out of range {MIN_MTU}..{MAX_MTU}")
    return mtu


# The role each side plays on the device's rings (ioq: 0 producer, 1
# consumer): the frontend creates the region declaring FRONTEND_ROLES, the
# backend attaches it declaring BACKEND_ROLES, which checks every fd.
FRONTEND_ROLES = (0, 1, 1)
BACKEND_ROLES = (1, 0, 0)

DEFAULT_RING = 256
EVQ_RING = 16


MEMORY_BUDGET = 4 << 20     # default device memory: rings and buffers


def buf_size_for(mtu):
    """Per-slot buffer bytes for a device of this MTU: one MTU frame with
    the offload record (or the tap's vnet header) before it.  Larger frames
    (GSO) span consecutive slots as an F_MORE chain.  Smaller buffers work
    too (every frame then chains), but cost throughput: more slots, kicks
    and iovecs per GSO frame (docs/architecture.md has the measurement)."""
    return max(2048, (META_SIZE + mtu + ETH_HLEN + 63) // 64 * 64)


def ring_size_for(mtu, budget=MEMORY_BUDGET):
    """The largest power-of-two ring (up to DEFAULT_RING) whose TX and RX
    paired buffers, with the event queue's, fit the memory budget: 256
    slots at MTU 1500 (1.1 MiB), 128 at MTU 9000 (2.4 MiB)."""
    n = DEFAULT_RING
    while n > 8 and (2 * n + EVQ_RING) * buf_size_for(mtu) > budget:
        n //= 2
    return n
