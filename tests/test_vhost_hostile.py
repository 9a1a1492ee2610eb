"""The vhost-user connector against a driver written here in Python (raw
protocol over the socket, memfd memory, rings laid out by hand), no root:
the device's port is one end of a datagram socketpair.

First a well-behaved driver moves frames each way (TX gathered from a
header split across buffers, RX into mergeable buffers); then hostile ones:
descriptors outside the memory table, loops, chains past the table,
indirect tables inside indirect tables, avail idx jumping ahead, bad memory
tables, fds that are not memory, messages cut short or oversized.  Each is
refused (connection closed with a logged reason) or counted, and the
backend then serves the next driver.
"""
import mmap
import os
import socket
import struct

import pytest

from tests.conftest import wait_until
from venet import bridge
from venet.vhost import protocol as P
from venet.vhost.backend import Connector

GPA = 0x1_0000_0000            # the driver's "guest physical" base
UVA = 0x7f00_0000_0000         # ... and its own addresses: differ on purpose
MEM = 4 << 20
QSIZE = 64
BUF = 2048
DESC = struct.Struct("<QIHH")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
FEATURES = (P.bit(P.F_VERSION_1) | P.bit(P.NET_F_MRG_RXBUF) | P.bit(P.USER_F_PROTOCOL_FEATURES) |
            P.bit(P.RING_F_INDIRECT_DESC))


def frame(n=60, fill=b"x"):
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + (fill * n)[:n - 14]


class Driver:
    """A virtio-net driver over vhost-user, in Python: queue 0 RX, 1 TX."""

    def __init__(self, path, qsize=QSIZE, features=FEATURES, event_idx=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(path)
        self.qsize = qsize
        self.features = features | (P.bit(P.RING_F_EVENT_IDX) if event_idx else 0)
        self.memfd = os.memfd_create("vhost-test")
        os.ftruncate(self.memfd, MEM)
        self.mm = mmap.mmap(self.memfd, MEM)
        # The avail idx is published with one 2-byte store, as a driver
        # must: struct.pack_into zero-fills its field before it writes, and
        # a polling engine that reads the idx in between sees it go back
        # (an avail jump: the queue is stopped).
        self.u16 = memoryview(self.mm).cast("H")
        self.kick = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)]
        self.call = [os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)]
        self.avail_idx = [0, 0]
        self.used_seen = [0, 0]
        self.next_desc = [0, 0]

    # layout: queue q at q * 64 KiB: desc, avail at +8 KiB, used at +12 KiB;
    # buffers from 256 KiB (queue 0) and 1 MiB (queue 1)
    def desc_off(self, q):
        return q * 0x10000

    def avail_off(self, q):
        return q * 0x10000 + 0x2000

    def used_off(self, q):
        return q * 0x10000 + 0x3000

    def buf_off(self, q, i):
        return (0x40000 if q == 0 else 0x100000) + (i % self.qsize) * BUF

    def close(self):
        self.sock.close()
        self.u16.release()
        self.mm.close()
        for fd in [self.memfd] + self.kick + self.call:
            os.close(fd)

    # ---- messages --------------------------------------------------------
    def send(self, req, payload=b"", fds=(), flags=P.VERSION):
        data = P.HDR.pack(req, flags, len(payload)) + payload
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
        self.sock.sendmsg([data], anc)

    def reply(self, req):
        hdr = self.sock.recv(P.HDR.size, socket.MSG_WAITALL)
        r, flags, size = P.HDR.unpack(hdr)
        assert (r, flags) == (req, 0x5)
        return self.sock.recv(size, socket.MSG_WAITALL)

    def ask(self, req, payload=b""):
        self.send(req, payload)
        return self.reply(req)

    def mem_table(self, regions=None, fds=None):
        regions = regions or [(GPA, MEM, UVA, 0)]
        fds = fds if fds is not None else [self.memfd] * len(regions)
        payload = P.MEM_HDR.pack(len(regions), 0) + b"".join(P.REGION.pack(*r) for r in regions)
        self.send(P.SET_MEM_TABLE, payload, fds, flags=P.VERSION | P.F_NEED_REPLY)
        return P.U64.unpack(self.reply(P.SET_MEM_TABLE))[0]

    def setup(self, base=0):
        offered = P.U64.unpack(self.ask(P.GET_FEATURES))[0]
        assert offered & self.features == self.features
        self.send(P.SET_OWNER)
        proto = P.U64.unpack(self.ask(P.GET_PROTOCOL_FEATURES))[0]
        self.send(P.SET_PROTOCOL_FEATURES, P.U64.pack(proto & 0x10009))
        self.send(P.SET_FEATURES, P.U64.pack(self.features))
        assert self.mem_table() == 0
        for q in (0, 1):
            self.send(P.SET_VRING_CALL, P.U64.pack(q), [self.call[q]])
            self.send(P.SET_VRING_NUM, P.STATE.pack(q, self.qsize))
            self.send(P.SET_VRING_BASE, P.STATE.pack(q, base))
            self.send(P.SET_VRING_ADDR, P.ADDR.pack(q, 0, UVA + self.desc_off(q), UVA + self.used_off(q),
                                                    UVA + self.avail_off(q), 0))
            self.send(P.SET_VRING_KICK, P.U64.pack(q), [self.kick[q]])
        for q in (0, 1):
            self.avail_idx[q] = self.used_seen[q] = base
        for q in (0, 1):
            self.send(P.SET_VRING_ENABLE, P.STATE.pack(q, 1))
        # A request with a reply: every message before it has been handled.
        self.ask(P.GET_QUEUE_NUM)

    # ---- rings -----------------------------------------------------------
    def put_desc(self, q, i, addr, length, flags=0, nxt=0):
        DESC.pack_into(self.mm, self.desc_off(q) + 16 * i, addr, length, flags, nxt)

    def publish(self, q, head, kick=True):
        a = self.avail_off(q)
        struct.pack_into("<H", self.mm, a + 4 + 2 * (self.avail_idx[q] % self.qsize), head)
        self.avail_idx[q] = (self.avail_idx[q] + 1) & 0xffff
        self.u16[(a + 2) // 2] = self.avail_idx[q]
        if kick:
            os.eventfd_write(self.kick[q], 1)

    def used_idx(self, q):
        return struct.unpack_from("<H", self.mm, self.used_off(q) + 2)[0]

    def used(self, q):
        """Used entries new since the last call: [(id, len)]."""
        out = []
        idx = self.used_idx(q)
        while self.used_seen[q] != idx:
            out.append(struct.unpack_from("<II", self.mm, self.used_off(q) + 4 + 8 * (self.used_seen[q] % self.qsize)))
            self.used_seen[q] = (self.used_seen[q] + 1) & 0xffff
        return out

    def tx(self, data, split=0):
        """Send one frame behind a 12-byte header; split > 0 cuts the
        header after `split` bytes into a buffer of its own."""
        q, i = 1, self.next_desc[1] % (self.qsize // 2) * 2
        self.next_desc[1] += 1
        pkt = bytes(12) + data
        off = self.buf_off(q, i)
        self.mm[off:off + len(pkt)] = pkt
        if split:
            self.put_desc(q, i, GPA + off, split, F_NEXT, i + 1)
            self.put_desc(q, i + 1, GPA + off + split, len(pkt) - split)
        else:
            self.put_desc(q, i, GPA + off, len(pkt))
        self.publish(q, i)
        return i

    def post_rx(self, n, size=BUF):
        for k in range(n):
            i = self.next_desc[0] % self.qsize
            self.next_desc[0] += 1
            self.put_desc(0, i, GPA + self.buf_off(0, i), size, F_WRITE)
            self.publish(0, i, kick=k == n - 1)

    def rx_frames(self):
        """Frames received (mergeable buffers joined)."""
        out, parts, left = [], b"", 0
        for head, length in self.used(0):
            data = bytes(self.mm[self.buf_off(0, head):self.buf_off(0, head) + length])
            if not left:
                left = struct.unpack_from("<H", data, 10)[0]
                parts = data[12:]
            else:
                parts += data
            left -= 1
            if not left:
                out.append(parts)
        return out


@pytest.fixture
def device():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    dev = bridge.Device("vh0", "sock", a.detach(), False, "02:00:00:00:00:01", 1500)
    yield dev, b
    dev.close()
    b.close()


@pytest.fixture
def served(device, tmp_path):
    dev, peer = device
    c = Connector(dev, str(tmp_path / "vh.sock")).start()
    drivers = []

    def driver(**kw):
        d = Driver(c.path, **kw)
        drivers.append(d)
        return d
    yield c, dev, peer, driver
    for d in drivers:
        d.close()
    c.close()


def port_frames(peer, n, timeout=5):
    got = []

    def take():
        while True:
            try:
                got.append(peer.recv(70000))
            except BlockingIOError:
                return len(got) >= n
    wait_until(take, timeout, f"{n} frames on the port")
    return got


def works(c, peer, driver):
    """A new, well-behaved driver moves a frame each way."""
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    d.tx(frame(60, b"ok"))
    assert port_frames(peer, 1)[0][16:] == frame(60, b"ok")
    d.post_rx(4)
    peer.send(bytes(16) + frame(70, b"in"))
    assert wait_until(lambda: d.rx_frames(), 5, "a frame in the RX ring") == [frame(70, b"in")]
    return d


def test_frames_both_ways(served):
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    assert dev.owner is c and dev.link
    for k in range(20):
        d.tx(frame(60 + k, bytes([65 + k])), split=5 if k % 2 else 0)
    got = port_frames(peer, 20)
    assert [g[16:] for g in got] == [frame(60 + k, bytes([65 + k])) for k in range(20)]
    assert all(g[:16] == bytes(16) for g in got)
    wait_until(lambda: len(d.used(1)) == 0 and d.used_idx(1) == 20, 5, "TX buffers returned")
    # RX: a 1514-byte frame (and its 12-byte header) into 512-byte buffers: 3 of them
    d.post_rx(8, size=512)
    big = frame(1514, b"M")
    peer.send(bytes(16) + big)
    assert wait_until(lambda: d.rx_frames(), 5, "the frame") == [big]
    s = c.stats()
    assert s["rx_buffers"] == 3 and s["rx_frames"] == 1 and s["tx_frames"] == 20


def test_rx_waits_for_buffers(served):
    """A frame that finds no RX buffer waits for one, and is not lost."""
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    peer.send(bytes(16) + frame(80, b"w"))
    wait_until(lambda: c.stats()["rx_wait_buffers"] >= 1, 5, "the frame to wait")
    d.post_rx(2)
    assert wait_until(lambda: d.rx_frames(), 5, "the frame") == [frame(80, b"w")]


def test_device_reused_after_disconnect(served):
    c, dev, peer, driver = served
    d = works(c, peer, driver)
    d.sock.close()
    wait_until(lambda: not c.stats()["driver_connected"], 5, "the disconnect")
    assert dev.owner is None and not dev.link
    works(c, peer, driver)


def _bad_chain(d, q, kind):
    """Publish one hostile TX chain of `kind`."""
    if kind == "outside":
        d.put_desc(q, 0, GPA + MEM - 10, 100)
    elif kind == "loop":
        d.put_desc(q, 0, GPA + d.buf_off(q, 0), 100, F_NEXT, 1)
        d.put_desc(q, 1, GPA + d.buf_off(q, 1), 100, F_NEXT, 0)
    elif kind == "index":
        d.put_desc(q, 0, GPA + d.buf_off(q, 0), 100, F_NEXT, d.qsize + 3)
    elif kind == "nested":
        t1, t2 = 0x200000, 0x201000
        DESC.pack_into(d.mm, t1, GPA + t2, 16, F_INDIRECT, 0)
        DESC.pack_into(d.mm, t2, GPA + d.buf_off(q, 0), 100, 0, 0)
        d.put_desc(q, 0, GPA + t1, 16, F_INDIRECT)
    elif kind == "indirect_size":
        d.put_desc(q, 0, GPA + 0x200000, 24, F_INDIRECT)
    elif kind == "indirect_loop":
        t1 = 0x200000
        DESC.pack_into(d.mm, t1, GPA + d.buf_off(q, 0), 100, F_NEXT, 1)
        DESC.pack_into(d.mm, t1 + 16, GPA + d.buf_off(q, 1), 100, F_NEXT, 0)
        d.put_desc(q, 0, GPA + t1, 32, F_INDIRECT)
    elif kind == "write":
        d.put_desc(q, 0, GPA + d.buf_off(q, 0), 100, F_WRITE)
    elif kind == "short":
        d.put_desc(q, 0, GPA + d.buf_off(q, 0), 8)
    d.publish(q, 0)


@pytest.mark.parametrize("kind,counter", [
    ("outside", "drop_bad_addr"), ("loop", "drop_bad_loop"), ("index", "drop_bad_index"),
    ("nested", "drop_bad_nested"), ("indirect_size", "drop_bad_indirect"),
    ("indirect_loop", "drop_bad_loop"), ("write", "drop_bad_dir"), ("short", "drop_bad_short")])
def test_bad_tx_chain_counted(served, kind, counter):
    """Counted, the buffer returned, the queue still serving."""
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    _bad_chain(d, 1, kind)
    wait_until(lambda: c.stats()[counter] == 1, 5, counter)
    assert d.used(1) == [(0, 0)]
    d.next_desc[1] = 1
    d.tx(frame(60, b"after"))
    assert port_frames(peer, 1)[0][16:] == frame(60, b"after")


def test_avail_jump_stops_queue(served):
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    struct.pack_into("<H", d.mm, d.avail_off(1) + 2, d.qsize + 5)
    os.eventfd_write(d.kick[1], 1)
    wait_until(lambda: c.stats()["avail_jump"] == 1, 5, "the jump counted")
    assert c.stats()["tx_queue_broken"] == 1 and d.used_idx(1) == 0
    d.sock.close()
    wait_until(lambda: not c.stats()["driver_connected"], 5, "the disconnect")
    works(c, peer, driver)


def test_bad_rx_chain_stops_rx_queue(served):
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    d.put_desc(0, 0, GPA + MEM, 100, F_WRITE)         # just past the region
    d.publish(0, 0)
    peer.send(bytes(16) + frame(60))
    wait_until(lambda: c.stats()["rx_queue_broken"], 5, "the RX queue to stop")
    assert c.stats()["drop_bad_addr"] == 1
    d.tx(frame(60, b"tx"))                            # TX still served
    assert port_frames(peer, 1)[0][16:] == frame(60, b"tx")


def _closed_with(c, reason, before):
    wait_until(lambda: c.stats()["dropped_protocol"] > before, 5, "the connection to be closed")
    assert reason in c.last_reason, c.last_reason


@pytest.mark.parametrize("case,reason", [
    ("zero_size", "has size 0"),
    ("overlap_gpa", "overlap in guest-physical space"),
    ("overlap_uva", "overlap in user-address space"),
    ("not_memory", "its fd is not memory"),
    ("short_file", "the file holds"),
    ("fd_count", "memory regions came with"),
    ("too_many", "regions, 1..8 accepted"),
])
def test_bad_memory_table(served, case, reason):
    c, dev, peer, driver = served
    d = driver()
    d.ask(P.GET_FEATURES)
    d.send(P.SET_PROTOCOL_FEATURES, P.U64.pack(0x9))
    half = MEM // 2
    fds = None
    if case == "zero_size":
        regions = [(GPA, 0, UVA, 0)]
    elif case == "overlap_gpa":
        regions = [(GPA, half, UVA, 0), (GPA + half - 4096, half, UVA + half, half)]
    elif case == "overlap_uva":
        regions = [(GPA, half, UVA, 0), (GPA + half, half, UVA + 4096, half)]
    elif case == "not_memory":
        regions, fds = [(GPA, MEM, UVA, 0)], [d.kick[0]]
    elif case == "short_file":
        regions = [(GPA, MEM * 2, UVA, 0)]
    elif case == "fd_count":
        regions, fds = [(GPA, half, UVA, 0), (GPA + half, half, UVA + half, half)], [d.memfd]
    else:
        regions = [(GPA + i * 4096, 4096, UVA + i * 4096, 0) for i in range(9)]
        fds = [d.memfd] * 8
    payload = P.MEM_HDR.pack(len(regions), 0) + b"".join(P.REGION.pack(*r) for r in regions)
    d.send(P.SET_MEM_TABLE, payload, fds if fds is not None else [d.memfd] * len(regions))
    _closed_with(c, reason, 0)
    works(c, peer, driver)


@pytest.mark.parametrize("case,reason", [
    ("cut_header", "message cut short (5 of 12 bytes)"),
    ("cut_payload", "message cut short (3 of 8 bytes)"),
    ("oversized", "payload of 100000 bytes, at most 4096 accepted"),
    ("bad_version", "protocol version 2"),
    ("unknown", "unknown request 99"),
    ("wrong_size", "payload of 4 bytes, expected 8"),
    ("unoffered", "acked features 0x400000000 this device did not offer"),
    ("ring_index", "one queue pair"),
    ("ring_size", "not a power of 2"),
    ("kick_not_eventfd", "not an eventfd"),
    ("ring_outside", "outside the memory table"),
    ("log", "dirty logging"),
])
def test_bad_message_closes_connection(served, case, reason):
    c, dev, peer, driver = served
    d = driver()
    if case == "cut_header":
        d.sock.send(P.HDR.pack(P.SET_FEATURES, 1, 8)[:5])
        d.sock.shutdown(socket.SHUT_WR)
    elif case == "cut_payload":
        d.sock.send(P.HDR.pack(P.SET_FEATURES, 1, 8) + b"abc")
        d.sock.shutdown(socket.SHUT_WR)
    elif case == "oversized":
        d.sock.send(P.HDR.pack(P.SET_FEATURES, 1, 100000))
    elif case == "bad_version":
        d.sock.send(P.HDR.pack(P.GET_FEATURES, 2, 0))
    elif case == "unknown":
        d.send(99)
    elif case == "wrong_size":
        d.send(P.SET_FEATURES, b"abcd")
    elif case == "unoffered":
        d.send(P.SET_FEATURES, P.U64.pack(P.bit(P.F_RING_PACKED) | P.bit(P.F_VERSION_1)))
    elif case == "ring_index":
        d.send(P.SET_VRING_NUM, P.STATE.pack(2, 256))
    elif case == "ring_size":
        d.send(P.SET_VRING_NUM, P.STATE.pack(0, 100))
    elif case == "kick_not_eventfd":
        d.send(P.SET_VRING_KICK, P.U64.pack(0), [d.memfd])
    elif case == "log":
        d.send(P.SET_VRING_ADDR, P.ADDR.pack(0, 1, UVA, UVA + 0x3000, UVA + 0x2000, 0))
    elif case == "ring_outside":
        d.features = FEATURES
        d.send(P.SET_FEATURES, P.U64.pack(FEATURES))
        d.send(P.SET_PROTOCOL_FEATURES, P.U64.pack(0x9))
        assert d.mem_table() == 0
        for q in (0, 1):
            d.send(P.SET_VRING_NUM, P.STATE.pack(q, QSIZE))
            d.send(P.SET_VRING_ADDR, P.ADDR.pack(q, 0, UVA + MEM, UVA + d.used_off(q), UVA + d.avail_off(q), 0))
            d.send(P.SET_VRING_KICK, P.U64.pack(q), [d.kick[q]])
            d.send(P.SET_VRING_ENABLE, P.STATE.pack(q, 1))
    _closed_with(c, reason, 0)
    works(c, peer, driver)


def test_message_stalled_midway(served, monkeypatch):
    from venet.vhost import backend
    monkeypatch.setattr(backend, "MESSAGE_TIMEOUT", 0.3)
    c, dev, peer, driver = served
    d = driver()
    d.sock.send(P.HDR.pack(P.SET_FEATURES, 1, 8) + b"ab")
    _closed_with(c, "not whole within", 0)
    assert c.stats()["dropped_timeout"] == 1
    works(c, peer, driver)


def test_reconnecting_driver_asks_vring_base_first(served):
    """DPDK's order after a reconnect: ENABLE 0 and GET_VRING_BASE for rings
    this backend never saw, answered; then the setup without SET_OWNER."""
    c, dev, peer, driver = served
    d = driver()
    for q in (0, 1):
        d.send(P.SET_VRING_ENABLE, P.STATE.pack(q, 0))
        assert P.STATE.unpack(d.ask(P.GET_VRING_BASE, P.STATE.pack(q, 0))) == (q, 0)
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")


def test_get_vring_base_reports_progress(served):
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    for _ in range(3):
        d.tx(frame(60))
    port_frames(peer, 3)
    assert P.STATE.unpack(d.ask(P.GET_VRING_BASE, P.STATE.pack(1, 0))) == (1, 3)
    assert not c.stats()["rings_live"]


def test_second_driver_refused_first_served(served):
    c, dev, peer, driver = served
    d = works(c, peer, driver)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.connect(c.path)
    wait_until(lambda: c.stats()["refused_second"] == 1, 5, "the refusal")
    other.close()
    d.tx(frame(60, b"still"))
    assert port_frames(peer, 1)[0][16:] == frame(60, b"still")


def test_busy_device_refuses_driver(served):
    """One owner at a time: a device a venet frontend holds refuses a driver."""
    c, dev, peer, driver = served
    dev.owner = object()
    d = driver()
    d.setup_error = None
    try:
        d.setup()
    except (OSError, AssertionError, struct.error):
        pass
    _closed_with(c, "in use by a venet frontend", 0)
    dev.owner = None
    works(c, peer, driver)


def test_event_idx_suppresses_calls(served):
    """With EVENT_IDX the driver is called only when its used_event asks."""
    c, dev, peer, driver = served
    d = driver(event_idx=True)
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    # used_event far ahead: no call for the next frames
    struct.pack_into("<H", d.mm, d.avail_off(1) + 4 + 2 * d.qsize, 1000)
    # One at a time: each frame is a turn of its own, so a call is
    # considered for each (three frames in one turn would make one).  The
    # engine publishes the used idx before it considers the call (the
    # driver sees its buffer first): the call's counter is waited for too,
    # or the last frame's decision may not be counted yet when we look.
    def considered():
        s = c.stats()
        return s["calls_sent"] + s["calls_suppressed"] + s["calls_failed"]
    for k in range(3):
        d.tx(frame(60))
        port_frames(peer, 1)
        wait_until(lambda: d.used_idx(1) == k + 1, 5, "the TX buffer returned")
        wait_until(lambda: considered() >= k + 1, 5, "the call considered")
    s = c.stats()
    assert s["calls_sent"] <= 1 and s["calls_suppressed"] >= 2


def test_loopback_device_attribute(tmp_path):
    """venet-loopback with vhost_user set: what the driver sends comes back
    to it; clearing the attribute closes the socket."""
    from venet.classes import LoopbackClass
    path = str(tmp_path / "lo.sock")
    cls = LoopbackClass()
    inst = cls.create("lo0", {"mtu": 1500, "mac": "", "vhost_user": path})
    d = None
    try:
        d = Driver(path)
        d.setup()
        wait_until(lambda: inst.counters().get("vhost_rings_live"), 5, "the rings to go live")
        d.post_rx(4)
        d.tx(frame(100, b"loop"))
        assert wait_until(lambda: d.rx_frames(), 5, "the frame back") == [frame(100, b"loop")]
        inst.set("vhost_user", "")
        assert not os.path.exists(path)
        assert inst.dev.owner is None
    finally:
        if d is not None:
            d.close()
        inst.destroy()
