"""venet device constants for Python (mirrors venet/abi.pxd)."""
DEVICE_TYPE = "virtual-ethernet"
VERSION = 1
RING_TX, RING_RX, RING_EVQ = 0, 1, 2
NRINGS = 3
ETH_HLEN = 14
MIN_MTU, MAX_MTU = 68, 9000
MIN_FRAME = 14

FUNC_LINKUP, FUNC_LINKDOWN, FUNC_MACQUERY, FUNC_NEGCAP, FUNC_FLUSHRX = range(5)

CAP_GROUP_SG, CAP_GROUP_EVENTQ = 0, 1
CAP_SG, CAP_TSO4, CAP_TSO6, CAP_ECN, CAP_UFO = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4
CAP_EVQ_LINKSTATE, CAP_EVQ_TXC = 1 << 0, 1 << 1
# What this backend offers per group (offloads arrive with issue 5).
BACKEND_CAPS = {CAP_GROUP_SG: CAP_SG, CAP_GROUP_EVENTQ: CAP_EVQ_LINKSTATE}

F_NEEDS_CSUM, F_GSO, F_ECN, F_TXC = 1 << 16, 1 << 17, 1 << 18, 1 << 19

EV_LINKSTATE, EV_TXC = 0, 1
EVENT_SIZE = 24

DEFAULT_RING = 256
EVQ_RING = 16


MEMORY_BUDGET = 4 << 20     # default device memory: rings and buffers


def buf_size_for(mtu):
    """Per-slot buffer bytes for a device of this MTU: one frame fits."""
    return max(2048, (mtu + ETH_HLEN + 63) // 64 * 64)


def ring_size_for(mtu, budget=MEMORY_BUDGET):
    """The largest power-of-two ring (up to DEFAULT_RING) whose TX and RX
    paired buffers, with the event queue's, fit the memory budget: 256
    slots at MTU 1500 (1.1 MiB), 128 at MTU 9000 (2.4 MiB)."""
    n = DEFAULT_RING
    while n > 8 and (2 * n + EVQ_RING) * buf_size_for(mtu) > budget:
        n //= 2
    return n
