"""Device classes: the attribute schema and its validation, explicit
registration, and plugins found through the `vbus.device_classes`
entry-point group (a broken one is one line and skipped)."""
import logging

import pytest

import vbus
from tests.test_vbus_fakes import Echo
from vbus import Attr, ClassTable, DeviceClass, PluginError


@pytest.mark.parametrize("kw,text", [
    ({"name": "Bad", "type": int, "default": 1}, "attribute name 'Bad'"),
    ({"name": "a", "type": float, "default": 1.0}, "type must be int, str, bool or 'enum'"),
    ({"name": "a", "type": "enum", "default": "x"}, "an enum needs a non-empty list"),
    ({"name": "a", "type": str, "default": "x", "min": 1}, "min/max apply to int attributes only"),
    ({"name": "a", "type": int, "default": 1, "pattern": "x"}, "a pattern applies to str attributes only"),
    ({"name": "a", "type": int, "default": 0, "min": 1}, "its default is not valid: 0 is out of range 1.."),
])
def test_bad_schema_is_a_plugin_error(kw, text):
    with pytest.raises(PluginError, match=text.replace("(", r"\(").replace(".", r"\.")):
        Attr(**kw)


def test_parse_text_values():
    assert Attr("n", int, 1, min=0).parse("0x10") == 16
    assert Attr("b", bool, False).parse("Yes") is True
    assert Attr("b", bool, True).parse("off") is False
    assert Attr("e", "enum", "a", choices=("a", "b")).parse("b") == "b"
    with pytest.raises(ValueError, match="'maybe' is not true or false"):
        Attr("b", bool, False).parse("maybe")
    with pytest.raises(ValueError, match=r"-1 is out of range 0\.\."):
        Attr("n", int, 1, min=0).parse("-1")
    assert Attr("n", int, 1, min=0, max=9).allowed() == "an integer 0..9"


def test_describe_for_people():
    d = Echo().describe()
    assert d["interface"] == "test-iface" and d["multi_open"] is False
    assert d["attributes"]["mtu"] == {"type": "int", "default": 1500, "live": True,
                                      "allowed": "an integer 68..9000", "doc": "largest frame payload"}


class NoName(DeviceClass):
    interface = "x"

    def create(self, name, attrs):
        return None


class NoCreate(DeviceClass):
    name = "no-create"
    interface = "x"


class Twice(Echo):
    name = "twice"
    attrs = (Attr("a", int, 1), Attr("a", int, 2))


@pytest.mark.parametrize("cls,text", [
    (NoName, "class name must be a string"),
    (NoCreate, "class 'no-create' has no create()"),
    (Twice, "class 'twice' declares attribute 'a' twice"),
    (object, "builtins.object is not a vbus.DeviceClass"),
    (42, "42 is not a vbus.DeviceClass"),
])
def test_register_refuses_a_bad_class(cls, text):
    t = ClassTable()
    with pytest.raises(PluginError, match=text.replace("(", r"\(").replace(")", r"\)")):
        t.register(cls)
    assert len(t) == 0


def test_register_twice_is_refused():
    t = ClassTable()
    t.register(Echo)
    with pytest.raises(vbus.Exists, match="a device class named 'test-echo' is already registered"):
        t.register(Echo())
    assert t.names() == ["test-echo"]


def _plugin_dist(root, entries):
    """A distribution on `root` whose entry points are `entries` (name =
    value lines of the vbus.device_classes group)."""
    info = root / "vbus_test_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: vbus-test-plugin\nVersion: 1.0\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[vbus.device_classes]\n{lines}")


PLUGIN = '''
from vbus import Attr, DeviceClass, DeviceInstance

class Good(DeviceClass):
    name = "plug-good"
    interface = "test-iface"
    attrs = (Attr("depth", int, 4, min=1, max=64),)
    def create(self, name, attrs):
        return DeviceInstance()

class Other(Good):
    name = "plug-other"

class BadSchema(Good):
    name = "plug-bad"
    attrs = ("depth",)

NOT_A_CLASS = 3
'''


def test_entry_point_plugins_load_and_broken_ones_are_skipped(tmp_path, monkeypatch, caplog):
    (tmp_path / "vbus_test_plugin_mod.py").write_text(PLUGIN)
    _plugin_dist(tmp_path, {
        "plug-good": "vbus_test_plugin_mod:Good",
        "plug-bad": "vbus_test_plugin_mod:BadSchema",
        "plug-missing": "vbus_test_plugin_nosuchmodule:X",
        "plug-int": "vbus_test_plugin_mod:NOT_A_CLASS",
        "plug-wrongname": "vbus_test_plugin_mod:Other",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    t = ClassTable()
    with caplog.at_level(logging.WARNING, logger="vbus"):
        problems = t.load_entry_points(path=[str(tmp_path)])
    assert t.names() == ["plug-good"]
    assert problems == [
        "device class plugin 'plug-bad' skipped: class 'plug-bad': 'depth' is not a vbus.Attr",
        "device class plugin 'plug-int' skipped: 3 is not a vbus.DeviceClass",
        "device class plugin 'plug-missing' skipped: cannot load vbus_test_plugin_nosuchmodule:X: "
        "ModuleNotFoundError: No module named 'vbus_test_plugin_nosuchmodule'",
        "device class plugin 'plug-wrongname' skipped: vbus_test_plugin_mod:Other is class 'plug-other', "
        "not 'plug-wrongname'",
    ]
    assert all("\n" not in p for p in problems)
    assert [r.getMessage() for r in caplog.records] == problems
    # a plugin class is usable like any other
    reg = vbus.Registry(t)
    reg.create_bus("b")
    reg.create_device("p0", "plug-good", {"depth": 8}, buses=["b"])
    assert reg.tree()["devices"]["p0"]["attributes"] == {"depth": 8}


def test_discover_finds_the_installed_group_without_failing():
    t = ClassTable.discover()
    assert isinstance(t.names(), list)
