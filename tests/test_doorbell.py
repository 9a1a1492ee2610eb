"""Doorbells a peer shares cannot block the side that rings or waits on them,
and attach refuses fds that are not what they must be (no root needed)."""
import fcntl
import mmap
import os
import select
import socket
import struct
import tempfile
import time

import pytest

import ioq
from ioq import Region, RegionError
from tests import hostile
from venet import abi, bridge

DEADLINE = 3.0


# ---- ringing never blocks ------------------------------------------------

def test_ring_put_never_blocks_on_a_full_blocking_socket_doorbell():
    """The peer cleared O_NONBLOCK on the socket we ring and filled its
    queue: the kick must come back at once (counted busy), not block."""
    def scenario():
        creator = Region.create([8], buf_size=64)
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setblocking(False)
        fd, pairs = creator.handoff()
        peer = Region.attach(fd, [(pairs[0][0], b.fileno())])
        consumer = creator.consumer(0, wait_fd=a.fileno())
        consumer.arm()                      # the creator asks to be kicked
        hostile.fill(b)
        b.setblocking(True)
        producer = peer.producer(0)
        assert producer.put(b"x") is True
        st = producer.stats()
        assert st["kicks_sent"] == 1 and st["kicks_busy"] == 1 and st["kicks_failed"] == 0
        assert consumer.get(timeout=1) == b"x"
        peer.close()
        creator.close()
    hostile.run_isolated(scenario, DEADLINE)


def test_failed_kick_is_counted_not_raised():
    creator = Region.create([8], buf_size=64)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.setblocking(False)
    fd, pairs = creator.handoff()
    peer = Region.attach(fd, [(pairs[0][0], b.fileno())])
    try:
        creator.consumer(0, wait_fd=a.fileno()).arm()
        a.close()                           # the waiter is gone: EPIPE, no SIGPIPE
        producer = peer.producer(0)
        assert producer.put(b"x", timeout=0) is True
        assert producer.stats()["kicks_failed"] == 1
    finally:
        peer.close()
        creator.close()
        b.close()


def test_frontend_clearing_nonblock_everywhere_cannot_block_the_backend():
    """Every fd the frontend shares made blocking and saturated: the
    backend's event put, its Ring puts and its pump all go on."""
    def scenario():
        fe = hostile.Frontend()
        port, outside = hostile.port_pair()
        dev = hostile.device(port.detach())
        dev.register(fe.fds)
        fe.want_kicks()
        fe.misbehave()
        fe.want_kicks()
        dev.linkup()                        # posts LINKSTATE: kicks the event doorbell
        for i in range(40):                 # RX traffic: the pump kicks the RX doorbell
            outside.send(b"\0" * 16 + hostile.frame(60, i))
        deadline = time.monotonic() + DEADLINE
        while dev.pump.stats()["from_tap_frames"] < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        out = dev.pump.stats()["out_ring"]
        assert dev.pump.stats()["from_tap_frames"] >= 16
        assert out["kicks_busy"] >= 1 and out["kicks_failed"] == 0
        dev.event(abi.EV_LINKSTATE, 1)
        pump = dev.pump
        dev.reset()
        assert pump.worker is None and not pump.running
        assert dev.region is None and dev.wedged == []
        dev.close()
        fe.close()
    hostile.run_isolated(scenario, 2 * DEADLINE)


def test_attacher_never_reads_the_eventfd_it_waits_on():
    """The creator made the attacher's wait eventfd blocking with a zero
    count: waiting, arming and draining must still never block (the
    attacher watches it edge-triggered), and a kick still wakes it."""
    def scenario():
        creator = Region.create([8], buf_size=64, roles=[0])     # creator produces
        fd, pairs = creator.handoff()
        peer = Region.attach(fd, pairs, roles=[1])
        wait_efd = pairs[0][1]
        os.set_blocking(wait_efd, True)
        c = peer.consumer(0)
        p = creator.producer(0)
        assert c.fileno() != wait_efd           # a private epoll fd
        for _ in range(3):
            c.arm()
            c.wait(0.05)
            p.put(b"m")
            assert c.get(timeout=1) == b"m"
        assert not c.arm()
        r, _, _ = select.select([c], [], [], 0)
        assert not r
        p.put(b"n")                              # kicks: c asked to be woken
        r, _, _ = select.select([c], [], [], 2)
        assert r and c.get(timeout=0) == b"n"
        assert os.eventfd_read(wait_efd) >= 1   # never read by the attacher
        peer.close()
        creator.close()
    hostile.run_isolated(scenario, DEADLINE)


def test_creator_with_roles_waits_on_sockets_and_hands_out_the_other_ends():
    with Region.create([8, 8], buf_size=64, roles=[0, 1]) as r:
        fd, pairs = r.handoff()
        assert r.doorbells[0][0] != pairs[0][0] and r.doorbells[0][1] == pairs[0][1]
        assert r.doorbells[1][1] != pairs[1][1] and r.doorbells[1][0] == pairs[1][0]
        assert os.readlink(f"/proc/self/fd/{pairs[0][1]}") == "anon_inode:[eventfd]"
        assert os.readlink(f"/proc/self/fd/{pairs[1][0]}") == "anon_inode:[eventfd]"
        with Region.attach(fd, pairs, roles=[1, 0]) as a:
            p, c = r.producer(0), a.consumer(0)
            c2, p2 = r.consumer(1), a.producer(1)
            for _ in range(3):
                p.put(b"a")
                assert c.get(timeout=1) == b"a"
                p2.put(b"b")
                assert c2.get(timeout=1) == b"b"
            with pytest.raises(ioq.IoqError, match="declared the producer role"):
                r.consumer(0)
            with pytest.raises(ioq.IoqError, match="declared the consumer role"):
                a.producer(0)


# ---- fds are checked for what they claim to be ---------------------------

@pytest.fixture
def memory():
    """A creator's region with socket doorbells, and its handoff."""
    r = Region.create([8, 8, 8], buf_size=256, roles=abi.FRONTEND_ROLES)
    fd, pairs = r.handoff()
    yield r, fd, [list(p) for p in pairs]
    r.close()


def _other_fds():
    made = []

    def keep(fd):
        made.append(fd)
        return fd
    rd, wr = os.pipe()
    keep(rd), keep(wr)
    tmp = tempfile.TemporaryFile()
    zero = keep(os.open("/dev/zero", os.O_RDWR))
    inet = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    dg1, dg2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    lone = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    named.bind(b"\0venet-test-doorbell-%d" % os.getpid())
    efd = keep(os.eventfd(0))
    socks = [tmp, inet, dg1, dg2, lone, named]
    kinds = {"pipe": wr, "file": tmp.fileno(), "zero": zero, "inet": inet.fileno(),
             "dgram": dg1.fileno(), "unconnected": lone.fileno(), "named": named.fileno(),
             "eventfd": efd}

    def close():
        for fd in made:
            os.close(fd)
        for s in socks:
            s.close()
    return kinds, close


WAIT_REFUSALS = {"pipe": "a pipe", "file": "a regular file", "zero": "a device \\(/dev/zero\\)",
                 "inet": "an AF_INET socket", "dgram": "an AF_UNIX datagram socket", "memfd": "a memfd"}
RING_REFUSALS = {"pipe": "a pipe", "file": "a regular file", "zero": "a device \\(/dev/zero\\)",
                 "inet": "an AF_INET socket", "dgram": "an AF_UNIX datagram socket",
                 "unconnected": "an unconnected AF_UNIX stream socket",
                 "named": "a named AF_UNIX socket", "eventfd": "an eventfd", "memfd": "a memfd"}


@pytest.mark.parametrize("kind", sorted(WAIT_REFUSALS))
def test_a_wait_doorbell_must_be_an_eventfd(memory, kind):
    r, fd, pairs = memory
    fds, close = _other_fds()
    try:
        bad = fd if kind == "memfd" else fds[kind]
        pairs[0][1] = bad           # the backend consumes TX: it waits on ring 0's consumer doorbell
        msg = (f"ring 0: the consumer's doorbell \\(fd {bad}\\) is {WAIT_REFUSALS[kind]}.*"
               f"must be an eventfd")
        with pytest.raises(RegionError, match=msg):
            Region.attach(fd, pairs, roles=abi.BACKEND_ROLES)
    finally:
        close()


@pytest.mark.parametrize("kind", sorted(RING_REFUSALS))
def test_a_doorbell_to_ring_must_be_a_socketpair_end(memory, kind):
    r, fd, pairs = memory
    fds, close = _other_fds()
    try:
        bad = fd if kind == "memfd" else fds[kind]
        pairs[2][1] = bad           # the backend produces events: it rings ring 2's consumer doorbell
        msg = (f"ring 2: the consumer's doorbell \\(fd {bad}\\) is {RING_REFUSALS[kind]}.*"
               f"not one end of an AF_UNIX stream socketpair")
        with pytest.raises(RegionError, match=msg):
            Region.attach(fd, pairs, roles=abi.BACKEND_ROLES)
    finally:
        close()


def test_device_register_refuses_bad_fds_with_a_reason(memory):
    r, fd, pairs = memory
    rd, wr = os.pipe()
    port, outside = hostile.port_pair()
    dev = hostile.device(port.detach())
    try:
        pairs[1][1] = wr
        flat = [fd] + [x for p in pairs for x in p]
        with pytest.raises(bridge.DeviceError, match="memory refused: ring 1: the consumer's doorbell "
                                                     f"\\(fd {wr}\\) is a pipe"):
            dev.register(flat)
        assert dev.region is None
    finally:
        dev.close()
        outside.close()
        os.close(rd)
        os.close(wr)


def test_memfd_sealed_against_writing_is_refused():
    for seal in (fcntl.F_SEAL_WRITE, 0x0010):     # F_SEAL_WRITE, F_SEAL_FUTURE_WRITE
        fd = os.memfd_create("t", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, 8192)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | seal)
            with pytest.raises(RegionError, match="sealed against writing"):
                Region.attach(fd)
        finally:
            os.close(fd)


def test_memfd_that_cannot_be_mapped_is_refused():
    with Region.create([8], buf_size=64) as r:
        ro = os.open(f"/proc/self/fd/{r.fd}", os.O_RDONLY)
        try:
            with pytest.raises(RegionError, match=f"fd {ro}\\) cannot be mapped read-write"):
                Region.attach(ro)
        finally:
            os.close(ro)


def test_ring_offset_near_two_to_the_64_is_a_region_error():
    with Region.create([8], buf_size=64) as r:
        data = bytearray(os.pread(r.fd, r.size, 0))
    struct.pack_into("<Q", data, 64, (1 << 64) - 64)
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, len(data))
        os.pwrite(fd, bytes(data), 0)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        with pytest.raises(RegionError, match="ring 0: offset 18446744073709551552 runs into"):
            Region.attach(fd)
    finally:
        os.close(fd)


def test_roles_are_validated():
    with pytest.raises(RegionError, match="2 roles given for 1 rings"):
        Region.create([8], roles=[0, 1])
    with pytest.raises(RegionError, match="role 2 is neither"):
        Region.create([8], roles=[2])
    with Region.create([8], buf_size=64) as r:
        with pytest.raises(RegionError, match="roles given without doorbells"):
            Region.attach(r.fd, roles=[1])


def test_plain_regions_keep_shared_eventfds():
    """Trusting users (benchmarks, tests, two processes of one program)
    keep two eventfds per ring, and the mapping is unchanged."""
    with Region.create([8, 8], buf_size=64) as r:
        fd, pairs = r.handoff()
        assert pairs == r.doorbells == r.eventfds
        for p in pairs:
            for x in p:
                assert os.readlink(f"/proc/self/fd/{x}") == "anon_inode:[eventfd]"
        with Region.attach(fd, pairs) as a:
            mm = mmap.mmap(a.fd, a.size)
            mm.close()
