"""venet-null (no root): a sink that drops what it is sent, and with
source=LEN a source of LEN-byte frames without end, to a venet frontend
through the daemon and to a virtio driver through the vhost-user engine;
a source nobody reads from costs nothing; bad attributes are refused."""
import os
import threading

import pytest

from tests.conftest import wait_until
from tests.test_daemon import DaemonProc, frame
from tests.test_vhost_hostile import Driver
from vbus._worker import Pool
from venet import bridge, frontend
from venet.daemon import AdminRefused
from venet.classes import null_frame, null_port_fd
from venet.vhost.backend import Connector


@pytest.fixture(scope="module")
def dmn():
    d = DaemonProc()
    d.n = 0
    yield d
    d.cleanup()


def _null(dmn, **attrs):
    """A bus with one venet-null device: (socket path, device name)."""
    dmn.n += 1
    bus, dev = f"n{dmn.n}", f"null{dmn.n}"
    dmn.req("bus-create", name=bus)
    dmn.req("device-create", name=dev, set={k: str(v) for k, v in attrs.items()}, **{"class": "venet-null"})
    dmn.req("bus-link", bus=bus, device=dev)
    if os.geteuid() != 0:
        dmn.req("bus-allow", bus=bus, uid=os.geteuid())
    return dmn.sock(bus), dev


def _counters(bus, name):
    return next(d for d in bus.stats()["devices"] if d["device"] == name)["counters"]


def test_a_sink_takes_every_frame_and_gives_none(dmn):
    path, name = _null(dmn)
    with frontend.connect(path) as bus:
        dev = bus.open(name)
        for k in range(500):
            assert dev.send(frame(60 + k % 900, k), timeout=5)
        wait_until(lambda: _counters(bus, name).get("to_tap_frames") == 500, 5, "500 frames taken")
        assert _counters(bus, name).get("to_tap_bytes") == sum(60 + k % 900 for k in range(500))
        assert dev.recv(timeout=0.2) is None


def test_a_source_gives_its_frame_without_end(dmn):
    path, name = _null(dmn, source=64)
    with frontend.connect(path) as bus:
        mac = next(d["mac"] for d in bus.list() if d["name"] == name)
        want = null_frame(mac, 64)
        assert len(want) == 64 and want[:6] == b"\xff" * 6 and want[12:14] == b"\x88\xb5"
        dev = bus.open(name)
        got = [dev.recv(timeout=5) for _ in range(3000)]
        assert got == [want] * 3000
        # It is a sink too.
        assert dev.send(frame(60, 1), timeout=5)
        wait_until(lambda: _counters(bus, name).get("to_tap_frames") == 1, 5, "the frame taken")


def test_a_source_nobody_reads_from_sleeps(dmn):
    """With the frontend's RX ring full the pump stops reading the source
    (its port leaves the worker's interest set): no turn while it stays full."""
    path, name = _null(dmn, source=128)
    with frontend.connect(path) as bus:
        dev = bus.open(name)
        assert dev.recv(timeout=5) is not None
        wait_until(lambda: _counters(bus, name).get("out_ring_full", 0) >= 1, 5, "the RX ring to fill")
        settled = wait_until(lambda: _settled(bus, name), 5, "the pump to go quiet")
        threading_wait(0.5)
        assert _counters(bus, name)["wakeups"] == settled["wakeups"]
        # Reading again wakes it.
        for _ in range(600):
            assert dev.recv(timeout=5) is not None


def _settled(bus, name):
    a = _counters(bus, name)
    threading_wait(0.2)
    b = _counters(bus, name)
    return b if a.get("wakeups") == b.get("wakeups") else None


def threading_wait(secs):
    threading.Event().wait(secs)


@pytest.mark.parametrize("value, why", [(30, "60..1514"), (1515, "60..1514"), (-1, "")])
def test_bad_source_lengths_are_refused(dmn, value, why):
    with pytest.raises(AdminRefused) as e:
        dmn.req("device-create", name="badnull", set={"source": str(value)}, **{"class": "venet-null"})
    assert "source" in str(e.value) and why in str(e.value)
    assert "badnull" not in str(dmn.req("tree"))


# ---- through the vhost-user engine -----------------------------------------

@pytest.fixture
def null_connector(tmp_path):
    """A venet-null device factory on a pool of its own, with a connector."""
    made = []
    pool = Pool(1, pin=False)

    def make(length):
        mac = "02:00:00:00:00:0a"
        fd = null_port_fd(length)
        dev = bridge.Device(f"vn{len(made)}", "null", fd, False, mac, 1500, pool=pool,
                            null_frame=null_frame(mac, length))
        c = Connector(dev, str(tmp_path / f"vn{len(made)}.sock")).start()
        d = Driver(c.path)
        made.append((d, c, dev))
        d.setup()
        wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
        return d, c
    yield make
    for d, c, dev in made:
        d.close()
        c.close()
        dev.close()
    pool.close()


def test_vhost_driver_to_a_sink(null_connector):
    d, c = null_connector(0)
    # The test driver has 32 TX chains: two batches, each returned before
    # the next reuses them.
    for batch in (range(20), range(20, 40)):
        for k in batch:
            d.tx(frame(60 + k, k))
        wait_until(lambda: d.used_idx(1) == batch[-1] + 1, 5, "the batch's TX buffers returned")
    s = c.stats()
    assert s["tx_frames"] == 40 and s["tx_bytes"] == sum(60 + k for k in range(40))
    assert s["rx_frames"] == 0


def test_vhost_source_fills_the_drivers_buffers_and_waits_for_more(null_connector):
    d, c = null_connector(100)
    want = null_frame("02:00:00:00:00:0a", 100)
    d.post_rx(8)
    got = []
    wait_until(lambda: got.extend(d.rx_frames()) or len(got) >= 8, 5, "8 frames")
    assert got == [want] * 8
    # No buffers: the engine waits (a frame held for them), it does not spin.
    wait_until(lambda: c.stats()["rx_wait_buffers"] >= 1, 5, "the engine to wait for buffers")
    turns = wait_until(lambda: _still(c), 5, "the engine to go quiet")
    threading_wait(0.3)
    assert c.stats()["turns"] == turns
    d.post_rx(4)
    wait_until(lambda: got.extend(d.rx_frames()) or len(got) >= 12, 5, "4 more frames")
    assert got == [want] * 12


def _still(c):
    a = c.stats()["turns"]
    threading_wait(0.1)
    return a if c.stats()["turns"] == a else None
