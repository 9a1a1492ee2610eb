"""The frame pump (venet.devices._pump.Pump) without root: a Unix
SOCK_SEQPACKET socketpair stands in for the tap.  It keeps frame boundaries
as a tap does; each "tap" frame is the 16-byte vnet header (virtio_net_hdr
and 6 bytes the kernel skips, docs/abi.md) then the Ethernet frame.  The
test plays both the frontend (the far ends of the two rings) and the kernel
(the far end of the socket) while the pump runs in a thread."""
import gc
import json
import os
import socket
import struct
import threading

import numpy as np
import pytest

import ioq
from tests.conftest import RawPeer, wait_until
from venet import _frames, abi
from venet.devices._pump import Pump
from venet.offload import Meta

VHDR = struct.Struct("<BBHHHH6x")          # virtio_net_hdr, padded to 16 bytes
assert VHDR.size == abi.META_SIZE
VIRTIO_NEEDS_CSUM = 1
VIRTIO_GSO = {abi.GSO_TCPV4: 1, abi.GSO_UDP: 3, abi.GSO_TCPV6: 4, abi.GSO_UDP_L4: 5}
VIRTIO_ECN = 0x80
PLAIN = VHDR.pack(0, 0, 0, 0, 0, 0)
OFFLOADS = abi.CAP_CSUM | abi.CAP_TSO4 | abi.CAP_TSO6 | abi.CAP_ECN | abi.CAP_USO
WAIT = 10                                   # seconds any one condition may take


def frame(size, seed=0):
    """An Ethernet frame of `size` bytes (IPv4 ethertype, patterned payload).
    The pump reads no header beyond the offsets a record names."""
    head = bytes.fromhex("020000000001" "020000000099" "0800")
    return head + bytes((seed + i) & 0xff for i in range(size - len(head)))


def vhdr(meta):
    """The vnet header a kernel would put before a frame with this Meta."""
    if meta is None:
        return PLAIN
    gso = 0 if meta.gso_type is None else VIRTIO_GSO[meta.gso_type] | (VIRTIO_ECN if meta.ecn else 0)
    return VHDR.pack(VIRTIO_NEEDS_CSUM if meta.needs_csum else 0, gso,
                     meta.hdr_len if gso else 0, meta.gso_size if gso else 0,
                     meta.csum_start if meta.needs_csum else 0,
                     meta.csum_offset if meta.needs_csum else 0)


class Rig:
    """A pump between two rings and a socketpair, running in a thread.
    tx/rx are the frontend's ends (it sends on tx, receives on rx); `wire`
    is the kernel's end of the "tap"."""

    def __init__(self, *, ring=64, buf_size=2048, mtu=1500, caps=0, txc=False, budget=64):
        sizes = [ring, ring] + ([abi.EVQ_RING] if txc else [])
        self.region = ioq.Region.create(sizes, buf_size=buf_size)
        self.tx = self.region.producer(abi.RING_TX)
        self.rx = self.region.consumer(abi.RING_RX)
        self.evq = self.region.consumer(abi.RING_EVQ) if txc else None
        self.tap, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.tap.setblocking(False)             # a tap fd is non-blocking: reads end in EAGAIN
        self.wire.settimeout(WAIT)
        self.thread = None
        self.result = None
        try:
            self.pump = Pump(self.region.consumer(abi.RING_TX), self.region.producer(abi.RING_RX),
                             self.tap.fileno(), mtu=mtu, caps=caps, budget=budget,
                             txc_evq=self.region.producer(abi.RING_EVQ) if txc else None)
        except BaseException:
            self._close_fds()
            raise

    def start(self):
        self.thread = threading.Thread(target=self._run, name="pump", daemon=True)
        self.thread.start()
        wait_until(lambda: self.pump.running, WAIT, "the pump to run")
        return self

    def _run(self):
        self.result = self.pump.run(timeout=120)    # a bound, should stop() never come

    def stop(self):
        if self.thread is not None:
            self.pump.stop()
            self.thread.join(WAIT)
            assert not self.thread.is_alive(), "the pump did not stop"
            self.thread = None
        return self.result

    def _close_fds(self):
        self.tap.close()
        self.wire.close()
        self.region.close()

    def close(self):
        self.stop()             # raises, leaving the memory mapped, if the pump still runs
        self._close_fds()

    def stats(self):
        return self.pump.stats()

    def wait_stats(self, want, what=None):
        """Wait until every counter in `want` has its value; returns the stats."""
        def ok():
            s = self.stats()
            return s if all(s[k] == v for k, v in want.items()) else None
        try:
            return wait_until(ok, WAIT, what or f"pump counters {want}")
        except AssertionError as e:
            s = self.stats()
            raise AssertionError(f"{e}; now {({k: s[k] for k in want})}") from None

    def from_tap(self, data, meta=None):
        """The kernel hands the pump a frame."""
        self.wire.send(vhdr(meta) + data)

    def to_tap(self):
        """The next frame the pump wrote to the "tap": (vnet header, frame)."""
        got = self.wire.recv(1 << 17)
        return got[:abi.META_SIZE], got[abi.META_SIZE:]

    def nothing_more_to_tap(self):
        self.wire.settimeout(0)
        try:
            self.wire.recv(1 << 17)
        except BlockingIOError:
            return True
        finally:
            self.wire.settimeout(WAIT)
        return False


@pytest.fixture
def rig():
    made = []

    def make(**kw):
        r = Rig(**kw)
        made.append(r)
        return r.start()
    yield make
    for r in made:
        r.close()


# ---- ring -> tap ---------------------------------------------------------------

def test_plain_frames_reach_the_tap_in_order_behind_an_empty_header(rig):
    r = rig()
    frames = [frame(n, seed=n) for n in (60, 61, 100, 1000, 1514)]
    for f in frames:
        assert _frames.send_frame(r.tx, f, timeout=WAIT)
    for f in frames:
        assert r.to_tap() == (PLAIN, f)
    s = r.wait_stats({"to_tap_frames": len(frames), "to_tap_bytes": sum(map(len, frames))})
    assert s["to_tap_csum"] == 0 and s["to_tap_gso"] == 0
    assert r.nothing_more_to_tap()


@pytest.mark.parametrize("meta,size,counter", [
    (Meta(34, 6), 300, "to_tap_csum"),                                  # UDP partial checksum
    (Meta(34, 16), 1514, "to_tap_csum"),                                # TCP, a full MTU frame
    (Meta(34, 6, abi.GSO_UDP_L4, 1000, 42), 10042, "to_tap_gso"),       # USO, chained
    (Meta(34, 16, abi.GSO_TCPV4, 1448, 66, ecn=True), 30000, "to_tap_gso"),
    (Meta(54, 16, abi.GSO_TCPV6, 1440, 86), abi.MAX_GSO_FRAME, "to_tap_gso"),
])
def test_offload_records_become_vnet_headers(rig, meta, size, counter):
    r = rig(ring=128, caps=OFFLOADS)
    f = frame(size)
    assert _frames.send_frame(r.tx, f, meta.flags, meta.pack(), timeout=WAIT)
    assert r.to_tap() == (vhdr(meta), f)
    s = r.wait_stats({"to_tap_frames": 1, counter: 1, "to_tap_bytes": size})
    assert sum(v for k, v in s.items() if k.startswith("drop_")) == 0, s


@pytest.mark.parametrize("buf_size,sizes", [
    (256, [60, 240, 241, 256, 257, 1000, 1514]),       # plain frames of up to 6 slots
    (2048, [2032, 2033, 4096, 9014]),                  # MTU 9000 frames over 2 KiB slots
])
def test_chains_across_slots_are_written_whole(rig, buf_size, sizes):
    mtu = max(sizes) - abi.ETH_HLEN
    r = rig(ring=64, buf_size=buf_size, mtu=max(mtu, 1500))
    for i, n in enumerate(sizes):
        assert _frames.send_frame(r.tx, frame(n, seed=i), timeout=WAIT)
    for i, n in enumerate(sizes):
        assert r.to_tap() == (PLAIN, frame(n, seed=i))
    r.wait_stats({"to_tap_frames": len(sizes)})


def test_tx_completion_events_echo_the_cookie(rig):
    r = rig(txc=True)
    cookies = [_frames.send_frame(r.tx, frame(100, seed=i), abi.F_TXC, timeout=WAIT,
                                  want_cookie=True) for i in range(3)]
    assert _frames.send_frame(r.tx, frame(100), timeout=WAIT)         # no event asked for
    for i in range(3):
        assert r.to_tap()[1] == frame(100, seed=i)
    assert r.to_tap()[1] == frame(100)
    r.wait_stats({"txc_events": 3, "to_tap_frames": 4})
    events = []
    while (m := r.evq.get(timeout=0)) is not None:
        events.append(abi.EVENT_STRUCT.unpack(m))
    assert events == [(abi.EV_TXC, abi.EVENT_SIZE, c, abi.RING_TX) for c in cookies]


# ---- refused descriptors, counted per reason ----------------------------------

def publish(r, descs):
    """Publish raw (offset, len, flags) descriptors on the TX ring: what a
    buggy or hostile frontend could put there, past send_frame's checks."""
    d = np.zeros(len(descs), ioq.DESC_DTYPE)
    for i, (off, ln, fl) in enumerate(descs):
        d[i] = (i, off, ln, fl, 0, 0)
    done = 0
    while done < len(d):
        k = r.tx.push(d[done:])
        if k == 0:
            wait_until(lambda: r.tx.free() > 0, WAIT, "room on the TX ring")
        done += k


def test_refused_descriptors_are_counted_by_reason_and_never_written(rig):
    r = rig(ring=256, caps=abi.CAP_CSUM | abi.CAP_USO)
    base = r.region.buffer_offset(r.region.paired_base(abi.RING_TX))
    bs = r.region.buf_size
    pool_end = r.region.pool_offset + r.region.pool_size

    def slot(i):
        return base + i * bs

    def with_record(i, meta, data):
        r.region.view(slot(i), abi.META_SIZE + len(data))[:] = meta.pack() + data
        return (slot(i), abi.META_SIZE + len(data), meta.flags)

    def reserved(i, at, data):
        """A valid checksum record with reserved byte `at` set."""
        rec = bytearray(Meta(34, 16).pack())
        rec[at] = 1
        r.region.view(slot(i), abi.META_SIZE + len(data))[:] = bytes(rec) + data
        return (slot(i), abi.META_SIZE + len(data), abi.F_NEEDS_CSUM)

    f = frame(300)
    for i in range(64):
        r.region.view(slot(i), bs)[:len(f)] = f
    cases = [
        # ioq refuses the descriptor itself (reasons in the ring's stats)
        ([(0, 64, 0)], "drop_bad_desc"),                          # the region's header
        ([(slot(0), 0, 0)], "drop_bad_desc"),                     # zero length
        ([(pool_end - 8, 64, 0)], "drop_bad_desc"),               # runs past the pool
        ([((1 << 64) - 8, 64, 0)], "drop_bad_desc"),              # wraps around
        ([(slot(0), 64, 0x2)], "drop_bad_desc"),                  # an unknown ioq flag
        ([(slot(0), 24, ioq.F_INDIRECT)], "drop_bad_desc"),       # not a whole SG table
        # the pump refuses the frame
        ([(slot(0), 13, 0)], "drop_short"),                       # shorter than Ethernet
        ([(slot(0), 64, 1 << 25)], "drop_offload"),               # a venet bit nobody defined
        ([(slot(0), 64, abi.F_TXC)], "drop_offload"),             # TXC, not negotiated
        ([(slot(0), 1515, 0)], "drop_meta_too_long"),             # past MTU + 14, plain
        ([(slot(0), 64, abi.F_MORE), (slot(1), 64, abi.F_NEEDS_CSUM)], "drop_chain"),
        ([(slot(i), 64, abi.F_MORE) for i in range(abi.MAX_CHAIN)] + [(slot(0), 64, 0)],
         "drop_chain"),                                           # one descriptor too many
        ([with_record(2, Meta(34, 6, abi.GSO_UDP_L4, 0, 42), f)], "drop_meta_bad_gso"),
        ([with_record(3, Meta(34, 6, abi.GSO_UDP_L4, 1000, 400), f)], "drop_meta_bad_gso"),
        ([with_record(4, Meta(34, 6, 7, 1000, 42), f)], "drop_meta_bad_gso"),
        ([with_record(5, Meta(34, 6, abi.GSO_UDP_L4, 1000, 42, needs_csum=False), f)],
         "drop_meta_bad_gso"),
        ([with_record(6, Meta(34, 300), f)], "drop_meta_bad_csum"),   # field past the frame
        ([with_record(7, Meta(2, 6), f)], "drop_meta_bad_csum"),      # inside Ethernet
        ([(slot(8), 10, abi.F_NEEDS_CSUM)], "drop_short"),            # shorter than its record
        ([(slot(8), 29, abi.F_NEEDS_CSUM)], "drop_short"),            # record + 13 bytes
        ([(slot(10), 10, abi.F_NEEDS_CSUM | abi.F_MORE), (slot(11), 300, 0)],
         "drop_meta_bad_record"),                                 # record split across buffers
        ([reserved(12, 5, f)], "drop_meta_bad_record"),           # a reserved byte set
        ([reserved(13, 15, f)], "drop_meta_bad_record"),
        ([with_record(9, Meta(34, 16, abi.GSO_TCPV4, 1000, 54), f)], "drop_meta_not_negotiated"),
    ]
    want = {}
    for descs, reason in cases:
        publish(r, descs)
        want[reason] = want.get(reason, 0) + 1
    publish(r, [(slot(63), len(f), 0)])                           # then one good frame
    assert r.to_tap() == (PLAIN, f)
    want["to_tap_frames"] = 1
    s = r.wait_stats(want)
    refused = {k: v for k, v in s.items() if k.startswith("drop_") and v}
    assert refused == {k: v for k, v in want.items() if k.startswith("drop_")}, refused
    assert r.nothing_more_to_tap()
    ring = s["in_ring"]
    assert ring["bad_total"] == want["drop_bad_desc"], ring
    assert r.stop() == "stopped"


# ---- tap -> ring ---------------------------------------------------------------

def test_tap_frames_reach_the_ring_in_order(rig):
    r = rig()
    frames = [frame(n, seed=n) for n in (60, 61, 1000, 1514)]
    for f in frames:
        r.from_tap(f)
    for f in frames:
        assert _frames.recv_frame(r.rx, timeout=WAIT) == (f, 0, None)
    r.wait_stats({"from_tap_frames": len(frames), "from_tap_bytes": sum(map(len, frames))})


@pytest.mark.parametrize("meta,size,counter", [
    (Meta(34, 6), 300, "from_tap_csum"),
    (Meta(34, 6, abi.GSO_UDP_L4, 1400, 42), 14042, "from_tap_gso"),
    (Meta(34, 16, abi.GSO_TCPV4, 1448, 66, ecn=True), 40000, "from_tap_gso"),
    (Meta(54, 16, abi.GSO_TCPV6, 1440, 86), abi.MAX_GSO_FRAME, "from_tap_gso"),
])
def test_vnet_headers_become_offload_records(rig, meta, size, counter):
    r = rig(ring=128, caps=OFFLOADS)
    f = frame(size)
    r.from_tap(f, meta)
    data, flags, rec = _frames.recv_frame(r.rx, timeout=WAIT)
    assert data == f and Meta.unpack(flags, rec) == meta
    r.wait_stats({"from_tap_frames": 1, counter: 1})


def test_refused_tap_frames_are_counted_and_the_rest_delivered(rig):
    r = rig(ring=128, caps=abi.CAP_CSUM)                       # checksums only, no GSO
    good = frame(200)
    r.wire.send(PLAIN + good[:13])                             # shorter than Ethernet
    r.wire.send(PLAIN[:10])                                    # not even a whole header
    r.from_tap(frame(3000), Meta(34, 6, abi.GSO_UDP_L4, 1000, 42))  # GSO not negotiated
    r.wire.send(VHDR.pack(VIRTIO_NEEDS_CSUM, 9, 42, 1000, 34, 6) + good)   # no such GSO type
    r.wire.send(VHDR.pack(0, VIRTIO_ECN, 0, 0, 0, 0) + good)   # ECN on no GSO
    r.from_tap(good, Meta(34, 200))                            # checksum field past the frame
    r.from_tap(good)
    assert _frames.recv_frame(r.rx, timeout=WAIT) == (good, 0, None)
    r.wait_stats({"drop_short": 2, "drop_rx_meta": 4, "from_tap_frames": 1})
    assert _frames.recv_frame(r.rx, timeout=0) is None


def test_a_full_out_ring_leaves_frames_in_the_tap_until_room_returns(rig):
    r = rig(ring=8)
    n = 30
    for i in range(n):
        r.from_tap(frame(100, seed=i))
    # The frontend reads nothing: the ring fills and the pump stops reading.
    r.wait_stats({"from_tap_frames": 8}, "the ring to fill")
    wait_until(lambda: r.stats()["out_ring_full"] > 0, WAIT, "the pump to see the ring full")
    assert r.rx.ready() == 8
    # Reading makes room and wakes the pump; nothing was lost or reordered.
    for i in range(n):
        assert _frames.recv_frame(r.rx, timeout=WAIT) == (frame(100, seed=i), 0, None)
    s = r.wait_stats({"from_tap_frames": n})
    assert sum(v for k, v in s.items() if k.startswith("drop_")) == 0, s


def test_both_directions_at_once(rig):
    r = rig(ring=32)
    for i in range(200):
        r.from_tap(frame(64 + i % 64, seed=i))
        assert _frames.send_frame(r.tx, frame(128 + i % 64, seed=i), timeout=WAIT)
        assert r.to_tap() == (PLAIN, frame(128 + i % 64, seed=i))
        assert _frames.recv_frame(r.rx, timeout=WAIT) == (frame(64 + i % 64, seed=i), 0, None)
    s = r.wait_stats({"to_tap_frames": 200, "from_tap_frames": 200})
    assert sum(v for k, v in s.items() if k.startswith("drop_")) == 0, s


def test_a_full_tap_queue_costs_counted_drops_not_a_blocked_pump(rig):
    """The kernel reads nothing: writes the tap refuses (its queue is full)
    are counted and the frames let go; the pump keeps serving the ring."""
    r = rig(ring=64)
    # The smallest send buffer the kernel allows: a few frames fill the queue.
    r.tap.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1)
    n = 50
    for i in range(n):
        assert _frames.send_frame(r.tx, frame(1000, seed=i), timeout=WAIT)
    s = wait_until(lambda: (s := r.stats())["to_tap_frames"] + s["drop_tap_write"] == n and s,
                   WAIT, "every frame written or refused")
    assert s["drop_tap_write"] > 0 and s["to_tap_frames"] > 0, s
    wait_until(lambda: r.tx.free() == 64, WAIT, "every slot back on the TX ring")
    written = [r.to_tap() for _ in range(s["to_tap_frames"])]
    assert written == [(PLAIN, frame(1000, seed=i)) for i in range(s["to_tap_frames"])]
    assert r.nothing_more_to_tap()


# ---- lifetime -------------------------------------------------------------------

def test_stop_ends_run_and_a_timeout_ends_it_too(rig):
    r = rig()
    assert r.pump.running
    assert r.stop() == "stopped"
    assert not r.pump.running
    assert r.pump.run(timeout=0.05) == "timeout"
    r.pump.stop()                               # a stop asked before run() is kept
    assert r.pump.run(timeout=WAIT) == "stopped"


def test_a_corrupted_index_breaks_the_pump_not_the_process(rig):
    r = rig(ring=8)
    for i in range(8):
        r.from_tap(frame(100, seed=i))
    r.wait_stats({"from_tap_frames": 8}, "the ring to fill")
    # The frontend claims to have consumed slots the pump never filled,
    # and says so: the pump, waiting for room, looks at the index again.
    peer = RawPeer(r.region, abi.RING_RX)
    try:
        peer.set_cons(0x7fffffff)
    finally:
        peer.close()
    r.rx.notify()
    wait_until(lambda: not r.pump.running, WAIT, "the pump to give up on the broken ring")
    r.thread.join(WAIT)
    r.thread = None
    assert r.result == "broken"
    assert r.stats()["out_ring"]["bad_index"] == 1


def refused(**kw):
    """Build a Pump with these arguments in a child process; returns (the
    ValueError's text or None, whether the child's fd 0 survived).  In a
    child, because a refused constructor has closed fd 0 (see below)."""
    rd, wr = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rd)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
            err = None
            try:
                if kw.pop("backwards", False):
                    region = ioq.Region.create([8, 8], buf_size=2048)
                    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    Pump(region.producer(0), region.producer(1), a.fileno())
                else:
                    Rig(**kw)
            except ValueError as e:
                err = str(e)
            gc.collect()
            try:
                os.fstat(0)
                fd0 = True
            except OSError:
                fd0 = False
            os.write(wr, json.dumps([err, fd0]).encode())
        finally:
            os._exit(0)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        out = f.read()
    os.waitpid(pid, 0)
    return tuple(json.loads(out))


@pytest.mark.parametrize("kw,msg", [
    ({"budget": 0}, "budget must be 1..256"),
    ({"budget": 257}, "budget must be 1..256"),
    ({"mtu": 67}, "mtu must be 68..9000"),
    ({"mtu": abi.MAX_MTU + 1}, "mtu must be 68..9000"),
    ({"ring": 4, "buf_size": 256}, "too small for frames of 1530 bytes"),
    ({"backwards": True}, "the pump consumes `inr` and produces on `outr`"),
])
def test_bad_arguments_are_refused(kw, msg):
    err, _ = refused(**kw)
    assert err is not None and msg in err, err


@pytest.mark.parametrize("kw", [{"budget": 0}, {"backwards": True}])
def test_a_refused_pump_closes_no_fd_it_did_not_open(kw):
    err, fd0_open = refused(**kw)
    assert err is not None and fd0_open
