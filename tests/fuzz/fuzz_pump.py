"""Fuzz the backend pump (venet.devices._pump.Pump): TX descriptors, chains,
SG lists and offload records written straight into a device region's shared
memory as a hostile frontend would, and hostile frames arriving on the
"tap", which here is one end of a SOCK_SEQPACKET socketpair (it keeps frame
boundaries as a tap does).  The pump runs until it has nothing left to do
(run(timeout=0)), then:

- every TX descriptor it released is accounted for: frames written plus
  counted drops equal the frames a model of the chain rules (docs/abi.md)
  cuts the released descriptors into; the same for the tap frames read;
- every frame that reached the socket is a 16-byte vnet header and 14..max
  bytes, and its bytes are the ones its descriptors point at (record
  skipped), frames in ring order;
- every descriptor the pump published on the RX ring passes ioq's checks,
  its chains are well formed, and as many as the frames it counted;
- every TXC event names a frame that asked for one.

The pump and ioq are Cython: atheris does not instrument them, so coverage
comes from the harness's own choices; crashes still show (and memory errors
under the ASan build, docs/fuzzing.md).
"""
import mmap
import socket
import struct
import sys

import numpy as np

import ioq
from tests.fuzz._runner import Finding, fuzz_main
from venet import abi
from venet.devices._pump import Pump

TARGET = "pump"
DESC = ioq.DESC_STRUCT
SG = ioq.SG_STRUCT
M32 = 0xffffffff
VENET_BITS = (abi.F_NEEDS_CSUM, abi.F_GSO, abi.F_ECN, abi.F_TXC, abi.F_MORE)
CAPS = (0, abi.CAP_CSUM, abi.consistent_caps(abi.OFFLOAD_CAPS))
# Every way the ring -> tap direction refuses a frame: one counter each.
DROPS = ("drop_bad_desc", "drop_short", "drop_offload", "drop_chain", "drop_tap_write") + \
    tuple("drop_meta_" + r for r in abi.META_REASONS if r != "ok")

_pair = None
_PATTERN = bytes(i * 7 % 251 for i in range(251))   # pool bytes: where a frame came from shows


def _socks():
    """(pump's end, harness's end), non-blocking: a full socket is a counted
    drop, never a blocked pump."""
    global _pair
    if _pair is None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for s in (a, b):
            s.setblocking(False)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        _pair = (a, b)
    return _pair


def _drain(s):
    out = []
    while True:
        try:
            out.append(s.recv(1 << 17))
        except BlockingIOError:
            return out


def _groups(flags):
    """The pump's chain rules over released descriptors: (first, last) of
    each frame verdict, a chain past MAX_CHAIN is one verdict (its tail
    skipped up to its end)."""
    out, i, n, discard = [], 0, len(flags), False
    while i < n:
        if discard:
            discard = bool(flags[i] & abi.F_MORE)
            i += 1
            continue
        e = i
        while e < n and flags[e] & abi.F_MORE and e - i < abi.MAX_CHAIN:
            e += 1
        if e - i >= abi.MAX_CHAIN:
            out.append(None)
            discard, i = True, i + abi.MAX_CHAIN
            continue
        if e == n:
            raise Finding(f"the pump released part of a chain (descriptors {i}..{n - 1})")
        out.append((i, e))
        i = e + 1
    return out


def _frame_bytes(snap, lo, hi, tx_hi, descs, first, last):
    """What a frame's descriptors point at; None where the pump must refuse
    it; only its length where a piece lies outside the TX buffers (the pump
    writes RX buffers and events while it runs)."""
    pieces, only_len = [], False
    for d in descs[first:last + 1]:
        off, ln, fl = d[1], d[2], d[3]
        if fl & ioq.F_INDIRECT:
            if ln % 16 or not ln or off < lo or off + ln > hi:
                return None
            for j in range(ln // 16):
                eo, el, _ = SG.unpack_from(snap, off - lo + 16 * j)
                if eo < lo or eo + el > hi:
                    return None
                only_len |= eo + el > tx_hi
                pieces.append(snap[eo - lo:eo - lo + el])
        else:
            if off < lo or off + ln > hi:
                return None
            only_len |= off + ln > tx_hi
            pieces.append(snap[off - lo:off - lo + ln])
    data = b"".join(pieces)
    if descs[first][3] & (abi.F_NEEDS_CSUM | abi.F_GSO):
        data = data[abi.META_SIZE:]
    return len(data) if only_len else data


def _setup(fdp):
    mtu = fdp.PickValueInList([68, 1500, 9000])
    caps = fdp.PickValueInList(list(CAPS))
    gso = caps & ~abi.CAP_CSUM
    buf_size = 2048 if gso else fdp.PickValueInList([256, 2048])
    read_max = abi.META_SIZE + (abi.MAX_GSO_FRAME if gso else mtu + abi.ETH_HLEN)
    read_slots = -(-read_max // buf_size)
    rx = 8
    while rx < 2 * read_slots:
        rx *= 2
    tx = 1 << fdp.ConsumeIntInRange(3, 7)
    region = ioq.Region.create([tx, rx, 16], buf_size=buf_size, max_sg=fdp.ConsumeIntInRange(1, 16))
    return region, mtu, caps, fdp.ConsumeBool()


def _offset(fdp, region, lo, hi, tx):
    k = fdp.ConsumeIntInRange(0, 7)
    if k == 0:
        return fdp.ConsumeIntInRange(0, (1 << 64) - 1)
    if k == 1:
        return lo + fdp.ConsumeIntInRange(0, hi - lo)
    return region.buffer_offset(fdp.ConsumeIntInRange(0, tx - 1)) + fdp.ConsumeIntInRange(0, 16) * 8


def _length(fdp, buf_size):
    k = fdp.ConsumeIntInRange(0, 7)
    if k == 0:
        return fdp.ConsumeIntInRange(0, M32)
    if k == 1:
        return 16 * fdp.ConsumeIntInRange(0, 20)
    return fdp.ConsumeIntInRange(0, buf_size)


def _flags(fdp):
    k = fdp.ConsumeIntInRange(0, 7)
    if k == 0:
        return fdp.ConsumeIntInRange(0, M32)
    f = 0
    for bit in VENET_BITS:
        if fdp.ConsumeIntInRange(0, 3) == 0:
            f |= bit
    if k == 1:
        f |= ioq.F_INDIRECT
    return f


def _record(fdp):
    """An offload record, mostly plausible."""
    if fdp.ConsumeBool():
        return fdp.ConsumeBytes(16).ljust(16, b"\0")
    return struct.pack("<HHBBHH6x", fdp.PickValueInList([0, 13, 14, 34, 54, 0xffff]),
                       fdp.PickValueInList([6, 16, 0, 0xfffe]), fdp.ConsumeIntInRange(0, 5), 0,
                       fdp.ConsumeIntInRange(0, 200), fdp.PickValueInList([0, 1, 1448, 0xffff]))


def _tap_frame(fdp):
    """A frame as tun would hand it over: virtio_net_hdr, 6 bytes, frame."""
    vh = struct.pack("<BBHHHH", fdp.PickValueInList([0, 1, 2, 3]), fdp.PickValueInList([0, 1, 3, 4, 5, 0x81]),
                     fdp.ConsumeIntInRange(0, 200), fdp.ConsumeIntInRange(0, 1500),
                     fdp.PickValueInList([0, 14, 34, 0xffff]), fdp.PickValueInList([6, 16, 0, 0xffff]))
    return vh + bytes(6) + bytes(fdp.ConsumeIntInRange(0, 3000))


def TestOneInput(data):
    import atheris
    fdp = atheris.FuzzedDataProvider(data)
    region, mtu, caps, txc = _setup(fdp)
    a, b = _socks()
    _drain(a)
    _drain(b)
    mem = mmap.mmap(region.fd, region.size)
    try:
        lo, hi = region.pool_offset, region.pool_offset + region.pool_size
        ntx, buf_size = region.ring_count(0), region.buf_size
        tx_at = region.ring_offset(0) + ioq.RING_HDR_SIZE
        mem[lo:hi] = (_PATTERN * (1 + (hi - lo) // len(_PATTERN)))[:hi - lo]
        # Offload records and SG tables in TX buffers.
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            at = region.buffer_offset(fdp.ConsumeIntInRange(0, ntx - 1))
            if fdp.ConsumeBool():
                mem[at:at + 16] = _record(fdp)
            else:
                for j in range(min(fdp.ConsumeIntInRange(1, 17), buf_size // 16)):
                    SG.pack_into(mem, at + 16 * j, _offset(fdp, region, lo, hi, ntx),
                                 _length(fdp, buf_size), 0)
        snap = bytes(mem[lo:hi])
        tx = region.consumer(0, max_len=abi.META_SIZE + abi.max_frame(mtu, caps))
        rxp = region.producer(1)
        evq = region.producer(2) if txc else None
        pump = Pump(tx, rxp, a.fileno(), mtu=mtu, caps=caps, txc_evq=evq)
        descs, pos, tap_sent = [], 0, 0
        for _ in range(fdp.ConsumeIntInRange(1, 3)):
            for _ in range(fdp.ConsumeIntInRange(0, min(ntx, 2 * abi.MAX_CHAIN + 4))):
                cons = struct.unpack_from("<I", mem, tx_at - ioq.RING_HDR_SIZE + ioq.RING_CONS_OFF)[0]
                if pos - cons >= ntx:
                    break                       # would overwrite a slot not released
                d = (fdp.ConsumeIntInRange(0, (1 << 64) - 1), _offset(fdp, region, lo, hi, ntx),
                     _length(fdp, buf_size), _flags(fdp), 0, pos + 1)
                if not fdp.ConsumeIntInRange(0, 15):
                    d = d[:5] + (fdp.ConsumeIntInRange(0, M32),)
                DESC.pack_into(mem, tx_at + ioq.DESC_SIZE * (pos % ntx), *d)
                if d[5] != pos + 1:
                    break                       # unpublished: nothing after it is seen
                descs.append(d)
                pos += 1
            for _ in range(fdp.ConsumeIntInRange(0, 3)):
                try:
                    b.send(_tap_frame(fdp))
                    tap_sent += 1
                except BlockingIOError:
                    break
            result = pump.run(timeout=0)
            if result != "timeout":
                raise Finding(f"pump.run returned {result!r}")
        _check(pump, region, mem, snap, descs, tap_sent, a, b, mtu, txc, lo, hi)
    finally:
        mem.close()
        region.close()


def _check(pump, region, mem, snap, descs, tap_sent, a, b, mtu, txc, lo, hi):
    st = pump.stats()
    released = struct.unpack_from("<I", mem, region.ring_offset(0) + ioq.RING_CONS_OFF)[0]
    groups = _groups([d[3] for d in descs[:released]])
    tap_left = len(_drain(a))
    tap_read = tap_sent - tap_left
    verdicts = st["to_tap_frames"] + sum(st[k] for k in DROPS) + st["from_tap_frames"] \
        + st["drop_rx_truncated"] + st["drop_rx_meta"]
    if verdicts != len(groups) + tap_read:
        raise Finding(f"{released} descriptors released in {len(groups)} frames and {tap_read} "
                      f"tap frames read, but {verdicts} outcomes counted: {st}")
    # What reached the "tap".
    out = _drain(b)
    if len(out) != st["to_tap_frames"]:
        raise Finding(f"{len(out)} frames on the socket, to_tap_frames={st['to_tap_frames']}")
    tx_hi = region.buffer_offset(region.ring_count(0) - 1) + region.buf_size
    cands = [None if g is None else _frame_bytes(snap, lo, hi, tx_hi, descs, *g) for g in groups]
    ci = 0
    for f in out:
        flags, gso_type = f[0], f[1]
        body = f[abi.META_SIZE:]
        if not abi.ETH_HLEN <= len(body) <= abi.MAX_GSO_FRAME:
            raise Finding(f"a frame of {len(body)} bytes reached the tap")
        if gso_type == 0 and len(body) > mtu + abi.ETH_HLEN:
            raise Finding(f"a plain frame of {len(body)} bytes reached a tap of MTU {mtu}")
        if flags & ~1 or gso_type & 0x7f not in (0, 1, 3, 4, 5):
            raise Finding(f"vnet header {f[:10].hex()} has unknown flags or GSO type")
        while ci < len(cands) and cands[ci] != body and cands[ci] != len(body):
            ci += 1
        if ci == len(cands):
            raise Finding(f"a frame of {len(body)} bytes on the tap matches no released frame "
                          f"in order: {body[:32].hex()}")
        ci += 1
    # What the pump published on the RX ring.
    rxc = region.consumer(1)
    items = np.zeros(rxc.count, ioq.ITEM_DTYPE)
    k = rxc.pop(items)
    if (items["status"][:k] != 0).any():
        raise Finding(f"the pump published descriptors ioq refuses: {items[:k]}")
    frames, chained = 0, 0
    for it in items[:k]:
        if not chained:
            frames += 1
            if int(it["flags"]) & ~(abi.F_NEEDS_CSUM | abi.F_GSO | abi.F_ECN | abi.F_MORE):
                raise Finding(f"an RX frame with flags {int(it['flags']):#x}")
        elif int(it["flags"]) & ~abi.F_MORE:
            raise Finding(f"an RX continuation with flags {int(it['flags']):#x}")
        chained = int(it["flags"]) & abi.F_MORE
    if chained or frames != st["from_tap_frames"]:
        raise Finding(f"{k} RX descriptors make {frames} frames (open chain: {bool(chained)}), "
                      f"from_tap_frames={st['from_tap_frames']}")
    if txc:
        ev = region.consumer(2)
        cookies = {descs[g[0]][0] for g in groups if g is not None and descs[g[0]][3] & abi.F_TXC}
        n = 0
        while True:
            m = ev.get(timeout=0)
            if m is None:
                break
            etype, size, ca, cb = abi.EVENT_STRUCT.unpack(m)
            ring, status = cb & 0xffffffff, cb >> 32
            if etype != abi.EV_TXC or size != abi.EVENT_SIZE or ca not in cookies or ring != abi.RING_TX:
                raise Finding(f"event {(etype, size, ca, cb)} names no frame that asked for one")
            if status >= len(abi.TXC_STATUS):
                raise Finding(f"event {(etype, size, ca, cb)} has an unknown status {status}")
            n += 1
        if n != st["txc_events"]:
            raise Finding(f"{n} TXC events on the queue, txc_events={st['txc_events']}")
        # Every frame that asked for a completion gets one, sent or refused
        # (unless the event queue was full: counted in txc_lost).
        asked = sum(1 for g in groups if g is not None and descs[g[0]][3] & abi.F_TXC)
        if n + st["txc_lost"] != asked:
            raise Finding(f"{asked} frames asked for a TX completion, {n} events + "
                          f"{st['txc_lost']} lost")


def main(argv=None):
    fuzz_main(TARGET, TestOneInput, [sys.modules[__name__]], argv, max_len=4096)


if __name__ == "__main__":
    main(sys.argv)
