"""Findings of the last review, each a test that failed before its fix.
No root: fakes and a datagram socketpair stand in for a bridge and a tap."""
import socket

import pytest

from tests.conftest import wait_until
from tests.test_vhost_hostile import Driver
from vbus._worker import Pool
from venet import bridge, control
from venet.frontend import Bus
from venet.vhost.backend import Connector


def _bus(replies, calls):
    """A Bus whose requests are answered by `replies` (a function of the
    request's number and body), with no socket."""
    bus = Bus.__new__(Bus)
    bus.path = "fake"

    def _control(mtype, body=None):
        calls.append(body)
        return replies(len(calls), body)
    bus._control = _control
    return bus


@pytest.mark.parametrize("mtype", ["list", "stats"])
def test_paging_stops_at_an_empty_page_that_claims_more(mtype):
    """A bridge that answers `more: true` with no devices makes no progress:
    the client says so at once, not after 65536 identical requests."""
    key = "name" if mtype == "list" else "device"
    calls = []

    def replies(n, body):
        if n == 1:
            return {"bus": "b", "devices": [{key: "a", "counters": {}}], "control": {}, "more": True}
        return {"bus": "b", "devices": [], "control": {}, "more": True}
    bus = _bus(replies, calls)
    with pytest.raises(control.ProtocolError, match="no progress|went wrong"):
        getattr(bus, mtype)()
    assert len(calls) <= 3, f"{len(calls)} requests for an empty page"


def test_paging_accepts_an_empty_last_page():
    """Devices removed between two pages: an empty page that ends the walk
    is fine."""
    calls = []

    def replies(n, body):
        if n == 1:
            return {"bus": "b", "devices": [{"device": "a", "counters": {}}], "control": {}, "more": True}
        return {"bus": "b", "devices": [], "control": {}, "more": False}
    s = _bus(replies, calls).stats()
    assert [d["device"] for d in s["devices"]] == ["a"] and "more" not in s and len(calls) == 2


def test_vhost_driver_refused_on_a_device_with_a_wedged_pump(tmp_path):
    """Device._linkup refuses a device whose previous pump a worker did not
    let go (it may still read the port); a vhost-user driver must be
    refused too, not given a second reader of the same port."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    pool = Pool(1, pin=False)
    dev = bridge.Device("vw0", "sock", a.detach(), False, "02:00:00:00:00:01", 1500, pool=pool)
    c = Connector(dev, str(tmp_path / "vw0.sock")).start()
    d = None
    dev.wedged.append(object())         # what _linkdown keeps of a wedged pump
    try:
        d = Driver(c.path)
        try:
            d.setup()
        except (OSError, AssertionError, EOFError):
            pass                        # the connection is closed under the driver
        wait_until(lambda: c.last_reason is not None or c.stats()["rings_live"], 5,
                   "the driver's rings refused or live")
        assert not c.stats()["rings_live"], "an engine serves the port of a wedged pump"
        assert "did not let it go" in c.last_reason
        assert dev.owner is None
    finally:
        dev.wedged.clear()
        if d is not None:
            d.close()
        c.close()
        dev.close()
        pool.close()
        b.close()


def test_a_wedged_vhost_engine_keeps_the_device_from_a_venet_pump(tmp_path):
    """An engine a worker did not let go may still use the device's port:
    the device must refuse a venet frontend's link-up and keep the port's fd
    open at close, as it does for a wedged pump (Device.wedged)."""
    import types
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    dev = bridge.Device("vw1", "sock", a.detach(), False, "02:00:00:00:00:02", 1500)
    fd = dev.tap_fd
    c = Connector(dev, str(tmp_path / "vw1.sock"))

    class Stuck:
        def remove(self, task, timeout):
            raise TimeoutError("worker 0 did not answer")
    eng = types.SimpleNamespace(worker=Stuck())
    s = types.SimpleNamespace(engine=eng, mem=None, rings=[])
    try:
        with dev._lock:
            dev.owner = c
        c._stop(s)
        assert c.wedged
        assert dev.wedged, "the device does not know its port is still used"
        dev.reset()                     # what the daemon's reset does after the connector's drop
        dev.region = object()           # as after a venet frontend's REGISTER
        with pytest.raises(bridge.DeviceError, match="did not let it go"):
            dev.linkup()
        dev.region = None
        dev.close()
        assert dev.tap_fd == fd, "the port's fd was closed under the engine"
    finally:
        dev.wedged.clear()
        dev.region = None
        dev.close()
        c.close()
        b.close()
