"""The vbus worker pool (vbus/_worker.pyx) serving venet pumps, without
root: socketpairs and loopback devices stand in for taps.

Many pumps on one worker move frames independently; a busy pump does not
starve another (counted by the order their frames reach one receiver);
remove is synchronous, also under traffic; a pump whose frontend broke a
ring index is dropped and reported while the others go on; an idle daemon
with 64 open devices makes no wake-ups; threads do not grow with devices
and nothing leaks over 100 open/close cycles."""
import os
import select
import socket
import threading
import time

import pytest

import ioq
from tests import hostile
from tests.conftest import wait_until
from tests.test_daemon import DaemonProc, frame as lframe
from vbus._worker import Pool, Worker
from venet import _frames, abi, frontend
from venet.devices._pump import Pump

WAIT = 10
PLAIN = bytes(abi.META_SIZE)


def frame(n=60, tag=0):
    return bytes.fromhex("020000000001020000000099") + b"\x08\x00" + bytes([tag & 0xff]) * (n - 14)


class Side:
    """A pump's rings (this side plays the frontend: sends on tx, receives
    on rx) and its port: one end of a datagram socketpair (`wire` is the
    kernel's end), or a given fd."""

    def __init__(self, ring=64, port=None, **kw):
        self.region = ioq.Region.create([ring, ring], buf_size=2048)
        self.tx = self.region.producer(abi.RING_TX)
        self.rx = self.region.consumer(abi.RING_RX)
        if port is None:
            self.port, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.port.setblocking(False)
            self.wire.settimeout(WAIT)
        else:
            self.port, self.wire = port, None
        self.pump = Pump(self.region.consumer(abi.RING_TX), self.region.producer(abi.RING_RX),
                         self.port.fileno(), **kw)

    def close(self):
        assert self.pump.worker is None, "close a side only once its pump is removed"
        self.port.close()
        if self.wire is not None:
            self.wire.close()
        self.region.close()


@pytest.fixture
def sides():
    made = []

    def make(**kw):
        s = Side(**kw)
        made.append(s)
        return s
    yield make
    for s in made:
        if s.pump.worker is not None:
            s.pump.worker.remove(s.pump)
        s.close()


@pytest.fixture
def pool1():
    p = Pool(1, pin=False)
    yield p
    p.close()


# ---- the pool's own rules -------------------------------------------------------

def test_pool_size_is_checked():
    for bad in (0, 257, -1, "2", True):
        with pytest.raises(ValueError, match="workers must be 1..256"):
            Pool(bad)


def test_default_pool_is_one_pinned_worker_per_usable_cpu():
    cpus = sorted(os.sched_getaffinity(0))
    with Pool() as p:
        st = p.stats()
        assert [s["cpu"] for s in st] == cpus
        assert all(s["tid"] for s in st) and len({s["tid"] for s in st}) == len(cpus)
        for s in st:
            with open(f"/proc/self/task/{s['tid']}/status") as f:
                allowed = [line.split()[1] for line in f if line.startswith("Cpus_allowed_list:")]
            assert allowed == [str(s["cpu"])]
    assert p.workers == []
    for s in st:
        assert not os.path.exists(f"/proc/self/task/{s['tid']}"), "a worker thread outlived close()"


def test_add_twice_and_remove_of_a_stranger(sides, pool1):
    s = sides()
    w = pool1.add(s.pump)
    assert s.pump.worker is w and s.pump.running and w.ntasks == 1
    with pytest.raises(RuntimeError, match="already served"):
        pool1.add(s.pump)
    with pytest.raises(RuntimeError, match="already being served"):
        s.pump.run(timeout=0.1)
    other = Worker()
    other.remove(s.pump)                    # not its task: nothing happens
    assert s.pump.worker is w
    pool1.remove(s.pump)
    assert s.pump.worker is None and not s.pump.running and w.ntasks == 0
    pool1.remove(s.pump)                    # removed already: nothing happens
    other.close()


def test_placement_by_cpu_or_least_loaded(sides):
    with Pool(4, pin=False) as p:
        # Unpinned workers have no CPU: every task goes to the least loaded.
        ws = [p.add(sides().pump, cpu=None) for _ in range(8)]
        assert sorted(w.index for w in ws) == [0, 0, 1, 1, 2, 2, 3, 3]
        assert [s["tasks"] for s in p.stats()] == [2, 2, 2, 2]
    cpu = min(os.sched_getaffinity(0))
    with Pool(2) as p:
        a, b = sides(), sides()
        assert p.add(a.pump, cpu=cpu).cpu == cpu
        assert p.add(b.pump, cpu=cpu).cpu == cpu        # the CPU's worker, even if loaded
        p.remove(a.pump)
        p.remove(b.pump)


# ---- pumps sharing a worker -----------------------------------------------------

def test_many_pumps_on_one_worker_move_frames_independently(sides, pool1):
    ss = [sides() for _ in range(8)]
    for s in ss:
        pool1.add(s.pump)
    for round_ in range(3):
        for i, s in enumerate(ss):
            assert _frames.send_frame(s.tx, frame(60 + i, round_), timeout=WAIT)
            s.wire.send(PLAIN + frame(100 + i, round_))
        for i, s in enumerate(ss):
            assert s.wire.recv(4096) == PLAIN + frame(60 + i, round_)
            assert _frames.recv_frame(s.rx, timeout=WAIT) == (frame(100 + i, round_), 0, None)
    for s in ss:
        st = s.pump.stats()
        assert (st["to_tap_frames"], st["from_tap_frames"]) == (3, 3), st
    assert pool1.stats()[0]["tasks"] == 8


class _Fd:
    def __init__(self, fd):
        self.fd = fd

    def fileno(self):
        return self.fd

    def close(self):
        os.close(self.fd)


def test_a_busy_pump_does_not_starve_another_on_its_worker(sides):
    """A pump with 200 frames waiting and one with 1, both added before the
    worker runs, both writing into one pipe (each frame one atomic write,
    so the pipe keeps the order the pumps wrote): the second's frame comes
    within the first round, after at most one turn of the busy one (its
    budget), not after all of its frames."""
    r, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    w = Worker()
    t = None
    try:
        busy = sides(ring=256, port=_Fd(os.dup(wfd)), budget=16)
        other = sides(port=_Fd(os.dup(wfd)))
        for i in range(200):
            assert _frames.send_frame(busy.tx, frame(60, 1), timeout=WAIT)
        assert _frames.send_frame(other.tx, frame(60, 2), timeout=WAIT)
        w.add(busy.pump)
        w.add(other.pump)
        t = threading.Thread(target=w.run, kwargs={"timeout": 60}, daemon=True)
        t.start()
        size = abi.META_SIZE + 60
        data = b""
        deadline = time.monotonic() + WAIT
        while len(data) < 201 * size and time.monotonic() < deadline:
            if select.select([r], [], [], 0.5)[0]:
                data += os.read(r, 65536)
        assert len(data) == 201 * size
        order = [data[i * size + abi.META_SIZE + 14] for i in range(201)]
        at = order.index(2)
        # One turn pops at most max(budget, MAX_CHAIN) descriptors.
        assert at <= max(16, abi.MAX_CHAIN), f"the other pump's frame came {at + 1}th of 201"
        assert order.count(1) == 200
    finally:
        w.stop()
        if t is not None:
            t.join(WAIT)
            assert not t.is_alive()
        w.close()
        os.close(r)
        os.close(wfd)


def test_remove_under_traffic_is_synchronous(sides, pool1):
    """While frames flow into a pump's port, remove() returns only once the
    worker has let it go: a round later (a frame through a second pump on
    the same worker) its counters have not moved, and frames sent after
    are left in the port for whoever serves it next."""
    a, b = sides(ring=256), sides()
    pool1.add(a.pump)
    pool1.add(b.pump)
    stop = threading.Event()

    def flood():
        n = 0
        while not stop.is_set() and n < 100_000:
            try:
                a.wire.send(PLAIN + frame(60, n))
                n += 1
            except (BlockingIOError, socket.timeout):
                pass
            while _frames.recv_frame(a.rx, timeout=0) is not None:
                pass
    t = threading.Thread(target=flood, daemon=True)
    t.start()
    try:
        wait_until(lambda: a.pump.stats()["from_tap_frames"] > 50, WAIT, "traffic through the pump")
        pool1.remove(a.pump)
        snap = a.pump.stats()["from_tap_frames"]
        assert a.pump.worker is None and not a.pump.running
        b.wire.send(PLAIN + frame(60, 7))
        assert _frames.recv_frame(b.rx, timeout=WAIT) == (frame(60, 7), 0, None)
        assert a.pump.stats()["from_tap_frames"] == snap
    finally:
        stop.set()
        t.join(WAIT)
    # Served again, it takes the frames left in its port.
    pool1.add(a.pump)
    wait_until(lambda: a.pump.stats()["from_tap_frames"] > snap or None, WAIT, "the pump to go on")


def test_done_is_reported_and_the_others_go_on():
    """Devices on one worker: the frontend of one corrupts a ring index;
    its pump is dropped, the device posts link-down (the frontend sees it)
    and the other device keeps moving frames."""
    pool = Pool(1, pin=False)
    fes = [hostile.Frontend(ring=64), hostile.Frontend(ring=64)]
    ports = [hostile.port_pair() for _ in fes]
    devs = []
    mm = None
    try:
        for fe, (port, _) in zip(fes, ports):
            d = hostile.device(port.detach())
            d.pool = pool
            d.register(fe.fds)
            d.linkup()
            assert fe.events(1)[0][2] == 1
            devs.append(d)
        import mmap
        import struct
        mm = mmap.mmap(fes[0].fds[0], fes[0].region.size)
        struct.pack_into("<I", mm, fes[0].region.ring_offset(abi.RING_RX) + ioq.RING_CONS_OFF, 0x7fff0000)
        for _ in range(2 * 64):
            try:
                ports[0][1].send(PLAIN + frame())
            except BlockingIOError:
                break
        wait_until(lambda: not devs[0].link and devs[0].pump is None, WAIT, "the broken device's link down")
        assert [e[2] for e in fes[0].events(1) if e[0] == abi.EV_LINKSTATE] == [0]
        assert devs[1].link and devs[1].pump.worker is pool.workers[0]
        for i in range(5):
            ports[1][1].send(PLAIN + frame(60, i))
            assert _frames.recv_frame(fes[1].rx, timeout=WAIT) == (frame(60, i), 0, None)
        assert pool.stats()[0]["tasks"] == 1
    finally:
        for d in devs:
            d.close()
        pool.close()
        if mm is not None:
            mm.close()
        for fe in fes:
            fe.close()
        for _, outside in ports:
            outside.close()


def test_busy_poll_on_a_shared_worker_then_sleep(sides, pool1):
    """--poll-us on a pooled pump: right after work the worker polls it
    (frames caught by the poll are counted), and once traffic stops the
    window expires, the pump arms and the worker sleeps (its turns stop)."""
    s = sides(poll_us=20_000)
    quiet = sides()                         # a pump without polling on the same worker
    pool1.add(s.pump)
    pool1.add(quiet.pump)
    for i in range(50):
        s.wire.send(PLAIN + frame(60, i))
        assert _frames.recv_frame(s.rx, timeout=WAIT) == (frame(60, i), 0, None)
    assert s.pump.stats()["busy_polls"] > 0 and pool1.stats()[0]["busy_polls"] > 0
    assert quiet.pump.stats()["busy_polls"] == 0

    def still():
        a = pool1.stats()[0]["turns"]
        time.sleep(0.1)                     # longer than the largest window
        return a == pool1.stats()[0]["turns"]
    wait_until(still, WAIT, "the worker to stop turning")
    wakeups = pool1.stats()[0]["wakeups"]
    s.wire.send(PLAIN + frame(60, 99))      # asleep: a frame wakes it
    assert _frames.recv_frame(s.rx, timeout=WAIT) == (frame(60, 99), 0, None)
    assert pool1.stats()[0]["wakeups"] > wakeups


def test_pump_run_alone_still_serves_and_stops():
    """Pump.run (venet attach): a private worker in the calling thread,
    stopped from another thread; a stop() before run() is kept."""
    s = Side()
    try:
        s.pump.stop()
        assert s.pump.run(timeout=WAIT) == "stopped"
        res = []
        t = threading.Thread(target=lambda: res.append(s.pump.run(timeout=60)), daemon=True)
        t.start()
        wait_until(lambda: s.pump.running, WAIT, "the pump to run")
        s.wire.send(PLAIN + frame())
        assert _frames.recv_frame(s.rx, timeout=WAIT) == (frame(), 0, None)
        s.pump.stop()
        t.join(WAIT)
        assert res == ["stopped"] and not s.pump.running
        assert s.pump.run(timeout=0.05) == "timeout"
    finally:
        s.close()


# ---- a daemon: idle, threads, leaks ----------------------------------------------

def _task_stat(pid, tid, key):
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _switches(pid):
    """{tid: voluntary context switches} of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[tid] = _task_stat(pid, tid, "voluntary_ctxt_switches")
        except FileNotFoundError:
            pass
    return out


@pytest.fixture
def daemon2():
    d = DaemonProc(extra=("--workers", "2"))
    yield d
    d.cleanup()


def _assert_no_wakeups(d):
    """Once the daemon has gone quiet, no thread of it wakes over 2 s."""
    def settled():
        a = _switches(d.pid)
        time.sleep(0.3)                 # a quiet spell before the measured window
        return a == _switches(d.pid)
    wait_until(settled, WAIT, "the daemon to go quiet")
    before = _switches(d.pid)
    threading.Event().wait(2.0)         # the observation window
    after = _switches(d.pid)
    woke = {t: after[t] - before.get(t, 0) for t in after if after[t] != before.get(t, 0)}
    assert woke == {}, f"threads woke while idle: {woke}"


def test_idle_daemon_with_64_open_devices_makes_no_wakeups(daemon2):
    """64 loopback devices open (link up, pumps armed): over 2 s no thread
    of the daemon wakes up, and it has no more threads than before any
    device was opened."""
    d = daemon2
    d.req("bus-create", name="idle")
    for i in range(64):
        d.req("device-create", name=f"l{i}", **{"class": "venet-loopback"})
        d.req("bus-link", bus="idle", device=f"l{i}")
    threads0 = d.threads()
    buses = [frontend.connect(d.sock("idle")) for _ in range(4)]
    try:
        devs = [buses[i // 16].open(f"l{i}", ring_size=64) for i in range(64)]
        devs[0].send(lframe(), timeout=WAIT)            # one pump works, then all are idle
        assert devs[0].recv(timeout=WAIT) == lframe()
        assert d.threads() == threads0, "threads grew with the devices"

        _assert_no_wakeups(d)
    finally:
        for b in buses:
            b.close()


def test_an_idle_switch_with_open_ports_makes_no_wakeups(daemon2):
    """A venet-switch is one task of the pool, not a thread: 8 ports open
    and linked up, traffic once, then over 2 s no thread of the daemon
    wakes up (ageing needs no timer) and none was added."""
    d = daemon2
    d.req("bus-create", name="sw")
    threads0 = d.threads()
    d.req("device-create", name="s0", **{"class": "venet-switch"})
    d.req("bus-link", bus="sw", device="s0")
    buses = [frontend.connect(d.sock("sw")) for _ in range(8)]
    try:
        ports = [b.open("s0", ring_size=64) for b in buses]    # a port per connection
        ports[0].send(lframe(), timeout=WAIT)               # flooded to the 7 others
        for p in ports[1:]:
            assert p.recv(timeout=WAIT) == lframe()
        assert d.threads() == threads0, "threads grew with the switch"

        _assert_no_wakeups(d)
    finally:
        for b in buses:
            b.close()


def test_nothing_leaks_over_100_open_close_cycles(daemon2):
    d = daemon2
    d.req("bus-create", name="c")
    d.req("device-create", name="lc", **{"class": "venet-loopback"})
    d.req("bus-link", bus="c", device="lc")
    with frontend.connect(d.sock("c")) as bus:
        dev = bus.open("lc", ring_size=64)                  # warm-up: lazy imports, the first pool use
        dev.close()
        fds0, threads0 = d.fds(), d.threads()
        for i in range(100):
            dev = bus.open("lc", ring_size=64)
            if i % 25 == 0:
                dev.send(lframe(tag=i), timeout=WAIT)
                assert dev.recv(timeout=WAIT) == lframe(tag=i)
            dev.close()
        wait_until(lambda: d.fds() == fds0 and d.threads() == threads0, WAIT,
                   f"fds back to {fds0} and threads to {threads0}")
