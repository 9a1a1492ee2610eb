"""The virtqueue engine as a task of the bus's worker pool (no thread per
device, no wake-up while idle), the connector's control thread asleep while
idle, the owner claimed under the device's lock, and the engine let go
synchronously before the driver's memory is unmapped.  No root: the
device's port is one end of a datagram socketpair."""
import os
import socket
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.test_vhost_hostile import Driver, frame, port_frames, works
from vbus._worker import Pool
from venet import bridge
from venet.vhost.backend import Connector


@pytest.fixture
def pooled(tmp_path):
    """A device on a pool of its own (one unpinned worker), a connector on
    it: (connector factory, device, port peer, driver factory, pool)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    pool = Pool(1, pin=False)
    dev = bridge.Device("vp0", "sock", a.detach(), False, "02:00:00:00:00:01", 1500, pool=pool)
    made, drivers = [], []

    def connector(**kw):
        c = Connector(dev, str(tmp_path / f"vp{len(made)}.sock"), **kw).start()
        made.append(c)
        return c

    def driver(c, **kw):
        d = Driver(c.path, **kw)
        drivers.append(d)
        return d
    yield connector, dev, b, driver, pool
    for d in drivers:
        d.close()
    for c in made:
        c.close()
    dev.close()
    pool.close()
    b.close()


def _switches(tid):
    with open(f"/proc/{os.getpid()}/task/{tid}/status") as f:
        for line in f:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def _quiet(tids, window):
    """True when none of the threads woke up during `window` seconds."""
    before = [_switches(t) for t in tids]
    threading.Event().wait(window)
    return before == [_switches(t) for t in tids]


def test_engine_is_a_task_of_the_devices_pool(pooled):
    connector, dev, peer, driver, pool = pooled
    c = connector()
    threads0 = {t.name for t in threading.enumerate()}
    d = works(c, peer, lambda: driver(c))
    eng = c.session.engine
    assert eng.worker is pool.workers[0] and pool.stats()[0]["tasks"] == 1
    assert {t.name for t in threading.enumerate()} == threads0, "a thread was started for the engine"
    assert dev.owner is c and dev.link
    d.sock.close()
    wait_until(lambda: not c.stats()["driver_connected"], 5, "the disconnect")
    # Removed before the memory went: the worker no longer knows it.
    assert eng.worker is None and pool.stats()[0]["tasks"] == 0
    assert dev.owner is None and not dev.link


@pytest.mark.parametrize("poll_us", [0, 2000])
def test_idle_engine_and_connector_make_no_wakeups(pooled, poll_us):
    """After traffic (with poll_us: a busy-poll window after it), the
    worker serving the engine and the connector's control thread sleep:
    over 1 s neither wakes up, and the engine takes no turn."""
    connector, dev, peer, driver, pool = pooled
    c = connector(poll_us=poll_us)
    d = works(c, peer, lambda: driver(c))
    for k in range(20):
        d.tx(frame(60 + k))
    port_frames(peer, 20)
    tids = [pool.workers[0].tid, c.thread.native_id]
    wait_until(lambda: _quiet(tids, 0.3), 5, "the worker and the connector to go quiet")
    turns = c.stats()["turns"]
    assert _quiet(tids, 1.0), "a thread woke while the device was idle"
    assert c.stats()["turns"] == turns
    # Asleep, not gone: a kick wakes it.
    d.tx(frame(61, b"z"))
    assert port_frames(peer, 1)[0][16:] == frame(61, b"z")
    assert c.stats()["wakeups"] >= 1


def test_poll_us_serves_both_ways(pooled):
    """With poll_us the engine returns POLL after work and arms on the
    worker's ARM turn: frames each way, nothing lost."""
    connector, dev, peer, driver, pool = pooled
    c = connector(poll_us=5000)
    d = works(c, peer, lambda: driver(c))
    d.post_rx(32)
    for k in range(30):
        d.tx(frame(60 + k, bytes([65 + k % 26])))
        peer.send(bytes(16) + frame(70 + k, b"r"))
    got = port_frames(peer, 30)
    assert [g[16:] for g in got] == [frame(60 + k, bytes([65 + k % 26])) for k in range(30)]
    rx = []
    wait_until(lambda: rx.extend(d.rx_frames()) or len(rx) >= 30, 5, "30 frames in the RX ring")
    assert rx == [frame(70 + k, b"r") for k in range(30)]


def test_owner_claimed_under_the_device_lock(pooled):
    """The connector claims the device under its lock: a frontend that
    took the device under that lock (the daemon's OPEN) is seen, never
    overwritten."""
    connector, dev, peer, driver, pool = pooled
    c = connector()
    d = driver(c)
    m0 = c.counters["messages"]
    errors = []

    def setup():
        try:
            d.setup()
        except (OSError, AssertionError) as e:
            errors.append(e)
    with dev._lock:
        t = threading.Thread(target=setup)
        t.start()
        # The second SET_VRING_ENABLE makes the rings ready: the claim then
        # waits for the lock.
        wait_until(lambda: c.counters["messages"] >= m0 + 18, 5, "the driver's set-up")
        assert dev.owner is None and not c.stats()["rings_live"]
        dev.owner = "a frontend"
    t.join(10)
    wait_until(lambda: c.last_reason is not None, 5, "the refusal")
    assert "in use by a venet frontend" in c.last_reason
    assert dev.owner == "a frontend" and pool.stats()[0]["tasks"] == 0
    dev.owner = None
    works(c, peer, lambda: driver(c))


def test_disconnects_under_traffic(pooled):
    """A driver that goes away while frames flow both ways: the engine is
    removed from its worker before the memory is unmapped (a use after
    unmap would kill this process); the next driver is served."""
    connector, dev, peer, driver, pool = pooled
    c = connector()
    for _ in range(8):
        d = driver(c)
        d.setup()
        wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
        d.post_rx(32)
        for k in range(20):
            d.tx(frame(60))
            if k % 4 == 0:          # at most 40 in all wait in the port for the last driver
                peer.send(bytes(16) + frame(80))
        d.sock.close()
        wait_until(lambda: not c.stats()["driver_connected"], 5, "the disconnect")
        assert pool.stats()[0]["tasks"] == 0
        while True:
            try:
                peer.recv(70000)
            except BlockingIOError:
                break
    # The next driver is served; it also gets what waited in the port.
    d = driver(c)
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    d.tx(frame(60, b"ok"))
    assert port_frames(peer, 1)[-1][16:] == frame(60, b"ok")
    d.post_rx(60)
    peer.send(bytes(16) + frame(70, b"in"))
    rx = []
    wait_until(lambda: rx.extend(d.rx_frames()) or frame(70, b"in") in rx, 5, "the frame")
    assert set(rx) <= {frame(80), frame(70, b"in")}
