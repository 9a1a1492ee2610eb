"""Test-only device classes for the vbus tests (not part of the product):
`test-echo` (one connection, function 1 echoes its arguments), `test-hub`
(many connections), `test-broken` (its factory fails).  Every instance
writes what the registry asked of it into a shared journal."""
import re

from vbus import Attr, DeviceClass, DeviceInstance, VbusError

_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def mac(value):
    value = value.lower()
    if not _MAC.fullmatch(value):
        raise ValueError(f"{value!r} is not a MAC address like 02:00:00:00:00:01")
    return value


SCHEMA = (
    Attr("mtu", int, 1500, min=68, max=9000, live=True, doc="largest frame payload"),
    Attr("mode", "enum", "fast", choices=("fast", "safe")),
    Attr("label", str, "x", pattern=r"[a-z0-9-]*", max_len=16),
    Attr("enabled", bool, True, live=True),
    Attr("mac", str, "02:00:00:00:00:01", check=mac),
)


class Instance(DeviceInstance):
    def __init__(self, name, attrs, journal):
        self.name, self.attrs, self.journal = name, attrs, journal
        self.frames = 0
        self.refuse_set = False
        self.journal.append(("create", name))

    def open(self, conn):
        self.journal.append(("open", self.name, conn.id))

    def close(self, conn):
        self.journal.append(("close", self.name, conn.id))

    def call(self, conn, func, args):
        if func == 1:
            self.frames += 1
            return args
        if func == 2:
            raise RuntimeError("function 2 is broken")
        return super().call(conn, func, args)

    def set(self, name, value):
        if self.refuse_set:
            raise VbusError(f"device '{self.name}' refuses to change {name} now")
        self.attrs[name] = value
        self.journal.append(("set", self.name, name, value))

    def reset(self):
        self.frames = 0
        self.journal.append(("reset", self.name))

    def counters(self):
        return {"frames": self.frames}

    def destroy(self):
        self.journal.append(("destroy", self.name))


class Echo(DeviceClass):
    name = "test-echo"
    interface = "test-iface"
    attrs = SCHEMA
    doc = "echoes function 1"

    def __init__(self, journal=None):
        self.journal = [] if journal is None else journal

    def create(self, name, attrs):
        return Instance(name, attrs, self.journal)


class Hub(Echo):
    name = "test-hub"
    multi_open = True


class Broken(Echo):
    name = "test-broken"

    def create(self, name, attrs):
        raise RuntimeError("no hardware")
