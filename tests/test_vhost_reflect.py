"""The engine's reflecting port (Engine reflect=N, the bench's
`venet-vhost-reflect-*` rows): what the Python driver of
tests/test_vhost_hostile.py sends comes back on its RX queue, in order,
with no port behind the device; a full FIFO refuses frames, counted, and
never more than it holds waits."""
import pytest

from tests.conftest import wait_until
from tests.test_vhost_hostile import Driver, frame
from venet import bridge
from venet.classes import loop_port
from venet.vhost.backend import Connector

SLOTS = 8


@pytest.fixture
def reflecting(tmp_path):
    # The device's fd is only watched: a loopback socket nothing writes to.
    dev = bridge.Device("vr0", "reflect", loop_port(), False, "02:00:00:00:00:01", 1500)
    c = Connector(dev, str(tmp_path / "vr.sock"), reflect=SLOTS).start()
    drivers = []
    try:
        d = Driver(c.path)
        drivers.append(d)
        d.setup()
        wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
        yield c, d
    finally:
        for d in drivers:
            d.close()
        c.close()
        dev.close()


def received(d, n):
    got = []
    wait_until(lambda: got.extend(d.rx_frames()) or len(got) >= n, 5, f"{n} frames back")
    return got


def test_frames_come_back_in_order(reflecting):
    c, d = reflecting
    d.post_rx(32)
    sent = [frame(60 + k, bytes([65 + k])) for k in range(20)]
    for k, f in enumerate(sent):
        d.tx(f, split=5 if k % 3 == 0 else 0)
        if k % 4 == 3:
            assert received(d, 4) == sent[k - 3:k + 1]
    s = c.stats()
    assert s["tx_frames"] == s["rx_frames"] == 20 and s["tx_drop_port"] == 0
    assert s["reflect_refused"] == 0


def test_a_full_fifo_refuses_and_counts(reflecting):
    """No RX buffers: one frame waits in the engine, SLOTS in the FIFO, the
    rest are refused (counted); once buffers come, every frame taken comes
    back, in order."""
    c, d = reflecting
    sent = [frame(60, bytes([65 + k])) for k in range(SLOTS + 6)]
    for f in sent:
        d.tx(f)
    wait_until(lambda: d.used_idx(1) == len(sent), 5, "the TX buffers returned")
    s = c.stats()
    assert s["tx_frames"] + s["tx_drop_port"] == len(sent)
    assert s["tx_drop_port"] == s["reflect_refused"] >= 5
    assert s["tx_frames"] <= SLOTS + 1
    d.post_rx(32)
    got = received(d, s["tx_frames"])
    assert len(got) == s["tx_frames"] and set(got) <= set(sent)
    assert got == sorted(got, key=sent.index)
    assert c.stats()["rx_frames"] == s["tx_frames"]


def test_a_readable_port_fd_is_not_watched_in_reflect_mode(tmp_path):
    """The FIFO stands in for the port: the device's fd, never read in
    reflect mode, must not be watched, or a frame queued on it (level-
    triggered) keeps the worker turning the engine for nothing."""
    import os
    import socket
    import threading
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    dev = bridge.Device("vr1", "reflect", os.dup(a.fileno()), False, "02:00:00:00:00:02", 1500)
    c = Connector(dev, str(tmp_path / "vr1.sock"), reflect=SLOTS).start()
    d = Driver(c.path)
    try:
        d.setup()
        wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
        d.post_rx(8)
        d.tx(frame(60, b"A"))
        assert received(d, 1)
        b.send(b"\x00" * 80)                # the port fd is readable from now on
        threading.Event().wait(0.2)         # let any spin show
        turns = c.stats()["turns"]
        threading.Event().wait(0.5)         # the observation window
        assert c.stats()["turns"] - turns <= 2, "the worker kept turning the engine"
    finally:
        d.close()
        c.close()
        dev.close()
        a.close()
        b.close()
