"""The vbus registry: every operation, every refusal, and that a refusal
changes nothing (tree() before and after), observers in order."""
import json

import pytest

import vbus
from tests.test_vbus_fakes import Broken, Echo, Hub
from vbus import Creds, Observer, Registry

ME = Creds(pid=1, uid=0, gid=0, groups=())   # root: allowed on every bus, no /proc read


class Recorder(Observer):
    def __init__(self, log, tag=""):
        self.log, self.tag = log, tag

    def __getattribute__(self, name):
        if name in ("log", "tag") or name.startswith("__"):
            return object.__getattribute__(self, name)
        if not hasattr(Observer, name):
            return object.__getattribute__(self, name)

        def record(*args):
            self.log.append((self.tag + name, *[getattr(a, "name", getattr(a, "id", a)) for a in args]))
        return record


@pytest.fixture
def journal():
    return []


@pytest.fixture
def reg(journal):
    r = Registry()
    r.register_class(Echo(journal))
    r.register_class(Hub(journal))
    r.register_class(Broken(journal))
    return r


@pytest.fixture
def setup(reg):
    reg.create_bus("b0")
    reg.create_bus("b1")
    reg.create_device("d0", "test-echo", {"mtu": 9000}, buses=["b0"])
    reg.create_device("hub", "test-hub", buses=["b0", "b1"])
    return reg


def refused(reg, exc, want, fn, *args, **kw):
    """fn(*args) raises `exc` with one line containing `want` and the tree
    is exactly as before."""
    before = json.dumps(reg.tree(), sort_keys=True)
    with pytest.raises(exc) as info:
        fn(*args, **kw)
    msg = str(info.value)
    assert want in msg and "\n" not in msg, msg
    assert json.dumps(reg.tree(), sort_keys=True) == before
    return msg


def test_tree_shows_buses_devices_attributes_links(setup):
    t = setup.tree()
    assert t["version"] == 1
    assert t["buses"]["b0"]["devices"] == ["d0", "hub"]
    assert t["buses"]["b1"]["devices"] == ["hub"]
    d0 = t["devices"]["d0"]
    assert d0["class"] == "test-echo" and d0["interface"] == "test-iface"
    assert d0["attributes"] == {"mtu": 9000, "mode": "fast", "label": "x", "enabled": True,
                                "mac": "02:00:00:00:00:01"}
    assert d0["buses"] == ["b0"] and d0["connections"] == [] and d0["counters"] == {"frames": 0}
    assert t["buses"]["b0"]["access"]["allow"] == {"uid": [], "gid": [], "pid": []}
    json.dumps(t)


@pytest.mark.parametrize("args,exc,text", [
    (("d9", "nosuch"), vbus.NoSuchClass, "no device class 'nosuch' (known: test-broken, test-echo, test-hub)"),
    (("d0", "test-echo"), vbus.Exists, "device 'd0' already exists"),
    (("d9", "test-echo", {}, ["nobus"]), vbus.NoSuchBus, "no bus 'nobus'"),
    (("d9", "test-echo", {"mtu": 9001}), vbus.BadValue,
     "attribute 'mtu' of device 'd9': 9001 is out of range 68..9000 (allowed: an integer 68..9000)"),
    (("d9", "test-echo", {"mtu": "big"}), vbus.BadValue, "'big' is not an integer"),
    (("d9", "test-echo", {"mtu": True}), vbus.BadValue, "True is not an integer"),
    (("d9", "test-echo", {"mode": "slow"}), vbus.BadValue, "'slow' is not one of fast, safe"),
    (("d9", "test-echo", {"label": "A B"}), vbus.BadValue, "'A B' does not match [a-z0-9-]*"),
    (("d9", "test-echo", {"label": "a" * 17}), vbus.BadValue, "longer than 16"),
    (("d9", "test-echo", {"enabled": 1}), vbus.BadValue, "1 is not true or false"),
    (("d9", "test-echo", {"mac": "zz"}), vbus.BadValue, "'zz' is not a MAC address like 02:00:00:00:00:01"),
    (("d9", "test-echo", {"speed": 1}), vbus.NoSuchAttribute,
     "class 'test-echo' has no attribute 'speed' (it has: mtu, mode, label, enabled, mac)"),
    (("d9", "test-broken"), vbus.DeviceError, "device 'd9' failed to be created: RuntimeError: no hardware"),
    (("a/b", "test-echo"), vbus.BadName, "device name 'a/b' may hold only letters, digits"),
    (("", "test-echo"), vbus.BadName, "must be 1 to 32 characters"),
    (("x" * 33, "test-echo"), vbus.BadName, "must be 1 to 32 characters"),
    ((".hidden", "test-echo"), vbus.BadName, "must start with a letter or digit"),
])
def test_create_device_refusals_change_nothing(setup, journal, args, exc, text):
    before = list(journal)
    refused(setup, exc, text, setup.create_device, *args)
    assert journal == before, "a refused create must not reach the class"


def test_check_hook_normalises(reg):
    reg.create_bus("b")
    d = reg.create_device("d", "test-echo", {"mac": "02:AA:00:00:00:01"})
    assert d.attrs["mac"] == "02:aa:00:00:00:01"


def test_bus_create_destroy(reg):
    reg.create_bus("b0")
    refused(reg, vbus.Exists, "bus 'b0' already exists", reg.create_bus, "b0")
    refused(reg, vbus.BadName, "bus name '..' may hold only", reg.create_bus, "..")
    refused(reg, vbus.NoSuchBus, "no bus 'nob'", reg.destroy_bus, "nob")
    reg.destroy_bus("b0")
    assert reg.tree()["buses"] == {}


def test_limits(journal):
    r = Registry(max_buses=1, max_devices=1, max_links=1)
    r.register_class(Echo(journal))
    r.create_bus("b0")
    refused(r, vbus.LimitReached, "at most 1 buses", r.create_bus, "b1")
    r.create_device("d0", "test-echo", buses=["b0"])
    refused(r, vbus.LimitReached, "at most 1 devices", r.create_device, "d1", "test-echo")


def test_link_unlink(setup):
    refused(setup, vbus.Exists, "device 'd0' is already linked to bus 'b0'", setup.link, "b0", "d0")
    refused(setup, vbus.NoSuchBus, "no bus 'b9'", setup.link, "b9", "d0")
    refused(setup, vbus.NoSuchDevice, "no device 'd9'", setup.link, "b0", "d9")
    refused(setup, vbus.NoSuchDevice, "device 'd0' is not linked to bus 'b1'", setup.unlink, "b1", "d0")
    setup.link("b1", "d0")
    assert setup.tree()["devices"]["d0"]["buses"] == ["b0", "b1"]
    setup.unlink("b0", "d0")
    assert setup.tree()["buses"]["b0"]["devices"] == ["hub"]


def test_set_attribute_live_and_not(setup, journal):
    conn = setup.connect("b0", ME)
    setup.open(conn, "d0")
    assert setup.set_attr("d0", "mtu", 1400) == 1400          # live: fine while open
    assert ("set", "d0", "mtu", 1400) in journal
    assert setup.set_attr("d0", "enabled", "off", text=True) is False
    refused(setup, vbus.InUse, "attribute 'mode' of device 'd0' can change only while the device is closed "
            "(open by 1 connection(s))", setup.set_attr, "d0", "mode", "safe")
    refused(setup, vbus.BadValue, "67 is out of range 68..9000", setup.set_attr, "d0", "mtu", 67)
    refused(setup, vbus.BadValue, "'x' is not an integer", setup.set_attr, "d0", "mtu", "x", text=True)
    refused(setup, vbus.NoSuchAttribute, "has no attribute 'nope'", setup.set_attr, "d0", "nope", 1)
    refused(setup, vbus.NoSuchDevice, "no device 'd9'", setup.set_attr, "d9", "mtu", 1500)
    setup.device("d0").instance.refuse_set = True
    refused(setup, vbus.VbusError, "device 'd0' refuses to change mtu now", setup.set_attr, "d0", "mtu", 1300)
    setup.device("d0").instance.refuse_set = False
    setup.close(conn, "d0")
    setup.set_attr("d0", "mode", "safe")
    assert setup.tree()["devices"]["d0"]["attributes"]["mode"] == "safe"


def test_destroy_in_use_is_refused_then_forced(setup, journal):
    conn = setup.connect("b0", ME)
    setup.open(conn, "d0")
    refused(setup, vbus.InUse, "device 'd0' is open by 1 connection(s); destroy it with force",
            setup.destroy_device, "d0")
    refused(setup, vbus.InUse, "bus 'b0' has 1 connection(s)", setup.destroy_bus, "b0")
    refused(setup, vbus.InUse, "device 'd0' is open by 1 connection(s) of bus 'b0'", setup.unlink, "b0", "d0")
    events = []
    setup.add_observer(Recorder(events))
    setup.destroy_device("d0", force=True)
    assert events == [("device_closing", conn.id, "d0", "device 'd0' destroyed"),
                      ("device_unlinked", "b0", "d0"), ("device_destroyed", "d0")]
    assert journal[-2:] == [("close", "d0", conn.id), ("destroy", "d0")]
    assert conn.devices == () and not conn.closed
    assert "d0" not in setup.tree()["devices"]


def test_unlink_in_use_with_force_closes_only_that_bus(setup):
    c0, c1 = setup.connect("b0", ME), setup.connect("b1", ME)
    setup.open(c0, "hub")
    setup.open(c1, "hub")
    setup.unlink("b0", "hub", force=True)
    assert c0.devices == () and c1.devices == ("hub",)
    assert setup.tree()["devices"]["hub"]["connections"] == [c1.id]


def test_destroy_bus_with_force_closes_its_connections_in_order(setup):
    conn = setup.connect("b0", ME)
    setup.open(conn, "d0")
    events = []
    setup.add_observer(Recorder(events, "1:"))
    setup.add_observer(Recorder(events, "2:"))
    setup.destroy_bus("b0", force=True)
    reason = "bus 'b0' destroyed"
    assert events == [
        ("1:device_closing", conn.id, "d0", reason), ("2:device_closing", conn.id, "d0", reason),
        ("1:connection_closed", conn.id, reason), ("2:connection_closed", conn.id, reason),
        ("1:device_unlinked", "b0", "d0"), ("2:device_unlinked", "b0", "d0"),
        ("1:device_unlinked", "b0", "hub"), ("2:device_unlinked", "b0", "hub"),
        ("1:bus_destroyed", "b0"), ("2:bus_destroyed", "b0"),
    ]
    assert conn.closed and conn.reason == reason
    refused(setup, vbus.NotOpen, "is closed (bus 'b0' destroyed)", setup.list, conn)
    # the devices outlive the bus
    assert setup.tree()["devices"]["d0"]["buses"] == []


def test_observers_hear_every_change_in_order(reg):
    events = []
    reg.add_observer(Recorder(events))
    reg.create_bus("b0")
    reg.create_device("d0", "test-echo", buses=["b0"])
    reg.set_attr("d0", "mtu", 2000)
    reg.allow("b0", uid=1000)
    reg.unlink("b0", "d0")
    reg.destroy_device("d0")
    reg.destroy_bus("b0")
    assert events == [("bus_created", "b0"), ("device_created", "d0"), ("device_linked", "b0", "d0"),
                      ("attribute_set", "d0", "mtu", 2000), ("rules_changed", "b0"),
                      ("device_unlinked", "b0", "d0"), ("device_destroyed", "d0"), ("bus_destroyed", "b0")]


def test_a_failing_observer_neither_fails_the_change_nor_silences_the_next(reg, caplog):
    class Bad(Observer):
        def bus_created(self, bus):
            raise RuntimeError("observer bug")
    events = []
    reg.add_observer(Bad())
    reg.add_observer(Recorder(events))
    reg.create_bus("b0")
    assert events == [("bus_created", "b0")] and reg.buses() == ("b0",)
    assert "observer" in caplog.text


def test_connections_open_close_call(setup, journal):
    conn = setup.connect("b0", ME)
    assert setup.list(conn) == [{"name": "d0", "class": "test-echo", "interface": "test-iface"},
                                {"name": "hub", "class": "test-hub", "interface": "test-iface"}]
    refused(setup, vbus.NotOpen, "device 'd0' is not open on this connection", setup.call, conn, "d0", 1)
    setup.open(conn, "d0")
    assert journal[-1] == ("open", "d0", conn.id)
    assert setup.call(conn, "d0", 1, b"ping") == b"ping"
    refused(setup, vbus.NoSuchFunction, "this device has no function 7", setup.call, conn, "d0", 7)
    refused(setup, vbus.DeviceError, "device 'd0' failed to run function 2: RuntimeError: function 2 is broken",
            setup.call, conn, "d0", 2)
    refused(setup, vbus.BadValue, "function number must be an integer 0..4294967295", setup.call, conn, "d0", -1)
    refused(setup, vbus.BadValue, "function arguments must be bytes", setup.call, conn, "d0", 1, "str")
    assert setup.tree()["devices"]["d0"]["counters"] == {"frames": 1}
    setup.reset_device("d0")
    assert setup.tree()["devices"]["d0"]["counters"] == {"frames": 0}
    refused(setup, vbus.InUse, "device 'd0' is already open on this connection", setup.open, conn, "d0")
    other = setup.connect("b0", ME)
    refused(setup, vbus.InUse, "device 'd0' is in use by another connection", setup.open, other, "d0")
    setup.open(conn, "hub")
    setup.open(other, "hub")                                     # multi_open
    assert setup.tree()["devices"]["hub"]["connections"] == [conn.id, other.id]
    assert setup.tree()["buses"]["b0"]["connections"][0] == {"id": conn.id, "pid": 1, "uid": 0, "gid": 0,
                                                             "devices": ["d0", "hub"]}
    setup.close(conn, "d0")
    assert journal[-1] == ("close", "d0", conn.id)
    setup.disconnect(other)
    setup.disconnect(other)                                      # idempotent
    assert other.closed and setup.tree()["devices"]["hub"]["connections"] == [conn.id]


def test_a_driver_sees_only_its_bus_even_by_guessing(setup):
    c1 = setup.connect("b1", ME)
    assert [d["name"] for d in setup.list(c1)] == ["hub"]
    linked_elsewhere = refused(setup, vbus.NoSuchDevice, "no device 'd0' on bus 'b1'", setup.open, c1, "d0")
    missing = refused(setup, vbus.NoSuchDevice, "on bus 'b1'", setup.open, c1, "zz")
    assert linked_elsewhere.replace("d0", "X") == missing.replace("zz", "X")


def test_connect_refusals(setup):
    refused(setup, vbus.NoSuchBus, "no bus 'b9'", setup.connect, "b9", ME)
    stranger = Creds(pid=1, uid=4321, gid=4321, groups=())
    with pytest.raises(vbus.AccessDenied) as info:
        setup.connect("b0", stranger)
    assert str(info.value) == "access to bus 'b0' refused (pid 1 uid 4321 gid 4321)"
    assert info.value.why == "no rule allows it"
    assert setup.visible_buses(stranger) == ()
    setup.allow("b1", uid=4321)
    assert setup.visible_buses(stranger) == ("b1",)


def test_deny_closes_live_connections_it_now_refuses(setup):
    user = Creds(pid=1, uid=4321, gid=50, groups=())
    setup.allow("b0", gid=50)
    conn = setup.connect("b0", user)
    setup.open(conn, "d0")
    events = []
    setup.add_observer(Recorder(events))
    setup.deny("b0", uid=4321)
    reason = "access to bus 'b0' revoked"
    assert events == [("rules_changed", "b0"), ("device_closing", conn.id, "d0", reason),
                      ("connection_closed", conn.id, reason)]
    assert conn.closed


def test_shutdown_tears_everything_down(setup, journal):
    conn = setup.connect("b0", ME)
    setup.open(conn, "d0")
    setup.shutdown()
    assert setup.tree() == {"version": 1, "buses": {}, "devices": {}}
    assert ("destroy", "d0") in journal and ("destroy", "hub") in journal and conn.closed
