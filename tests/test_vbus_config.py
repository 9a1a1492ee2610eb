"""vbus config: TOML and the tree's JSON build the same registry, the tree
round-trips, and every malformed file or value is one line naming the file,
the key and what is wrong, with nothing built."""
import json
import os

import pytest

import vbus
from tests.test_vbus_fakes import Broken, Echo, Hub
from vbus import ClassTable, ConfigError, Registry, load_config


@pytest.fixture
def journal():
    return []


@pytest.fixture
def classes(journal):
    t = ClassTable()
    for c in (Echo(journal), Hub(journal), Broken(journal)):
        t.register(c)
    return t


EXAMPLE = f"""
version = 1

[buses.tenant-a.access.allow]
uid = [1000, "root"]
gid = [100]
pid = [{os.getpid()}]

[buses.tenant-a.access.deny]
uid = [1001]

[buses.tenant-b]
devices = ["sw0"]

[devices.lo0]
class = "test-echo"
buses = ["tenant-a"]
attributes = {{ mtu = 9000, mode = "safe" }}

[devices.sw0]
class = "test-hub"
buses = ["tenant-a"]
"""


def write(tmp_path, text, name="vbus.toml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_toml_builds_the_registry(tmp_path, classes):
    reg = Registry.from_config(load_config(write(tmp_path, EXAMPLE)), classes=classes)
    t = reg.tree()
    a = t["buses"]["tenant-a"]
    assert a["devices"] == ["lo0", "sw0"] and t["buses"]["tenant-b"]["devices"] == ["sw0"]
    assert a["access"]["allow"]["uid"] == [0, 1000] and a["access"]["deny"]["uid"] == [1001]
    assert [p["pid"] for p in a["access"]["allow"]["pid"]] == [os.getpid()]
    assert t["devices"]["lo0"]["attributes"]["mtu"] == 9000
    assert t["devices"]["sw0"]["buses"] == ["tenant-a", "tenant-b"]


def test_tree_round_trip_through_json(tmp_path, classes):
    reg = Registry.from_config(load_config(write(tmp_path, EXAMPLE)), classes=classes)
    conn = reg.connect("tenant-a", vbus.Creds(pid=1, uid=0, gid=0, groups=()))
    reg.open(conn, "lo0")
    reg.call(conn, "lo0", 1, b"x")
    saved = json.dumps(reg.tree(), indent=2)
    path = write(tmp_path, saved, "saved.json")
    again = Registry.from_config(load_config(path), classes=classes, source=path)
    strip = lambda t: {**t, "buses": {n: {**b, "connections": []} for n, b in t["buses"].items()},
                       "devices": {n: {**d, "connections": [], "counters": {}} for n, d in t["devices"].items()}}
    got = again.tree()
    assert strip(got) == strip(json.loads(saved))
    assert got["devices"]["lo0"]["counters"] == {"frames": 0}   # state is not config
    # and once more: a fixed point
    assert strip(Registry.from_config(json.loads(json.dumps(got)), classes=classes).tree()) == strip(got)


def test_json_detected_by_content(tmp_path, classes):
    path = write(tmp_path, json.dumps({"buses": {"b": {}}}), "vbus.conf")
    assert Registry.from_config(load_config(path), classes=classes).buses() == ("b",)


def test_empty_config_is_an_empty_registry(tmp_path, classes):
    assert Registry.from_config(load_config(write(tmp_path, "")), classes=classes).tree() == \
        {"version": 1, "buses": {}, "devices": {}}


BAD = [
    ("[buses.b]\nfoo = 1\n", "buses.b.foo: unknown key (allowed: access, connections, devices)"),
    ("bus = {}\n", "bus: unknown key (allowed: buses, devices, version)"),
    ("version = 2\n", "version: 2 is not a known version (this reads 1)"),
    ("buses = 3\n", "buses: must be a table, not an integer"),
    ('[buses."a/b"]\n', "buses.a/b: bus name 'a/b' may hold only letters"),
    ("[devices.d]\nbuses = []\n", "devices.d.class: missing: every device needs a class"),
    ('[devices.d]\nclass = "nope"\n', "devices.d.class: no device class 'nope' (known: test-broken, test-echo, test-hub)"),
    ('[devices.d]\nclass = "test-echo"\nattributes = { mtu = 9001 }\n',
     "devices.d.attributes.mtu: 9001 is out of range 68..9000 (allowed: an integer 68..9000)"),
    ('[devices.d]\nclass = "test-echo"\nattributes = { mtu = "9000" }\n',
     "devices.d.attributes.mtu: '9000' is not an integer"),
    ('[devices.d]\nclass = "test-echo"\nattributes = { speed = 1 }\n',
     "devices.d.attributes.speed: class 'test-echo' has no attribute 'speed'"),
    ('[devices.d]\nclass = "test-echo"\nbuses = ["nob"]\n', "devices.d.buses[0]: no bus 'nob' in this config"),
    ('[devices.d]\nclass = "test-echo"\nbuses = "b"\n', "devices.d.buses: must be a list of bus names, not a string"),
    ('[buses.b]\ndevices = ["ghost"]\n', "buses.b.devices[0]: no device 'ghost' in this config"),
    ("[buses.b.access.allow]\nuid = [-1]\n", "buses.b.access.allow.uid[0]: uid must be an integer 0..4294967294"),
    ('[buses.b.access.allow]\ngid = ["no-such-group-x"]\n', "buses.b.access.allow.gid[0]: no group 'no-such-group-x'"),
    ('[buses.b.access.allow]\nuid = ["no-such-user-x"]\n', "buses.b.access.allow.uid[0]: no user 'no-such-user-x'"),
    ("[buses.b.access.allow]\npid = [4194304999]\n", "buses.b.access.allow.pid[0]: no process 4194304999"),
    ("[buses.b.access.allow]\npid = [{pid = 5}]\n", "buses.b.access.allow.pid[0]: a pid rule table needs both pid and start"),
    ("[buses.b.access.allow]\nuid = [5]\n[buses.b.access.deny]\nuid = [5]\n",
     "buses.b.access.deny.uid[0]: uid 5 is already named in buses.b.access.allow"),
    ("[buses.b.access.deny]\nuid = [0]\n", "buses.b.access.deny.uid[0]: uid 0 (root) is always allowed"),
    ("[buses.b.access.maybe]\n", "buses.b.access.maybe: unknown key (allowed: allow, deny)"),
    ("[buses.b.access.allow]\nuser = [1]\n", "buses.b.access.allow.user: unknown key (allowed: gid, pid, uid)"),
    ('[devices.d]\nclass = "test-broken"\n', "devices.d: device 'd' failed to be created: RuntimeError: no hardware"),
    ("[buses.b\n", "not valid TOML: "),
]


@pytest.mark.parametrize("text,want", BAD, ids=[w.split(":")[0] for _, w in BAD])
def test_malformed_config_is_one_line_naming_file_and_key(tmp_path, classes, journal, text, want):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Registry.from_config(load_config(path), classes=classes, source=path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: ") and want in msg and "\n" not in msg, msg
    assert [e for e in journal if e[0] == "create"] == [] or ("destroy", "d") in journal


def test_a_late_failure_undoes_what_was_made(tmp_path, classes, journal):
    text = '[devices.a]\nclass = "test-echo"\n[devices.z]\nclass = "test-broken"\n'
    with pytest.raises(ConfigError, match="devices.z: device 'z' failed to be created"):
        Registry.from_config(load_config(write(tmp_path, text)), classes=classes)
    assert journal == [("create", "a"), ("destroy", "a")]


def test_unreadable_and_non_text_files(tmp_path):
    with pytest.raises(ConfigError, match=r"^/nonexistent/x.toml: cannot read: No such file or directory$"):
        load_config("/nonexistent/x.toml")
    p = tmp_path / "bin.toml"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="bin.toml: not UTF-8 text"):
        load_config(str(p))
    with pytest.raises(ConfigError, match="x.json: not valid JSON"):
        load_config(write(tmp_path, "{", "x.json"))
    with pytest.raises(ConfigError, match="the top level must be a table"):
        load_config(write(tmp_path, "[1]", "y.json"))
