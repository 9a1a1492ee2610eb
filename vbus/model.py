"""The registry: buses, devices, device classes and live connections.

A bus is a container for access to some devices: drivers connected to it
see the devices linked to it and nothing else.  A device is an instance of
a device class with typed attributes, linked to one or more buses (a switch
spans several).  A connection is one driver on one bus (the daemon makes
one per client socket) and holds devices open.

Every operation checks everything before it changes anything, so a failed
operation raises a VbusError and leaves the registry as it was (compare
`tree()` before and after).  An operation that would cut live connections
(destroying a bus or a device, unlinking an open device) is refused unless
asked with force=True; with force, observers are told before each device is
closed under a connection (so a daemon sends link-down first) and the
connection's holds are closed cleanly.

One re-entrant lock serialises every operation.  Observers are called
synchronously under that lock, in the order the changes happen and in the
order the observers were added; they must not block (a daemon queues the
bus event for the client's thread) and may not fail the operation: an
observer that raises is logged and the others still run.
"""
import itertools
import logging
import threading

from .access import Creds, Rules
from .classes import ClassTable
from .config import TREE_VERSION, build
from .device import DeviceInstance
from .errors import (AccessDenied, BadValue, DeviceError, Exists, InUse, LimitReached, NoSuchBus,
                     NoSuchDevice, NotOpen, VbusError)
from .names import check_name

log = logging.getLogger("vbus")

MAX_BUSES = 1024
MAX_DEVICES = 4096
MAX_CONNECTIONS = 1024      # per bus
MAX_LINKS = 64              # buses per device
MAX_OPEN = 256              # devices one connection holds
MAX_FUNC = 2 ** 32 - 1


class Observer:
    """The bus-registration notifiers.  Subclass and override what you need;
    every method is called under the registry lock, after the change it
    names, except the *_closing ones, called just before the close."""

    def bus_created(self, bus): pass
    def bus_destroyed(self, bus): pass
    def device_created(self, device): pass
    def device_destroyed(self, device): pass
    def device_linked(self, bus, device): pass
    def device_unlinked(self, bus, device): pass
    def attribute_set(self, device, name, value): pass
    def rules_changed(self, bus): pass

    def device_closing(self, conn, device, reason):
        """The registry is about to close `device` under `conn` although the
        connection did not ask (unlinked, destroyed, bus gone, access
        revoked): the moment to send the driver its link-down."""

    def connection_closed(self, conn, reason):
        """`conn` is over (its holds are closed): the daemon closes its
        socket.  Also called for disconnect(); handlers are idempotent."""


class Bus:
    def __init__(self, name, proc):
        self.name = name
        self.rules = Rules(proc)
        self._devices = {}
        self._conns = {}

    @property
    def devices(self):
        return tuple(self._devices)

    @property
    def connections(self):
        return tuple(self._conns.values())

    def __repr__(self):
        return f"<Bus {self.name} devices={len(self._devices)} connections={len(self._conns)}>"


class Device:
    def __init__(self, name, cls, attrs, instance):
        self.name = name
        self.cls = cls
        self._attrs = attrs
        self.instance = instance
        self._buses = {}
        self._holders = {}

    @property
    def class_name(self):
        return self.cls.name

    @property
    def interface(self):
        return self.cls.interface

    @property
    def attrs(self):
        return dict(self._attrs)

    @property
    def buses(self):
        return tuple(self._buses)

    @property
    def holders(self):
        return tuple(self._holders.values())

    @property
    def is_open(self):
        return bool(self._holders)

    def __repr__(self):
        return f"<Device {self.name} class={self.cls.name} open={len(self._holders)}>"


class Connection:
    """One driver on one bus.  `context` is the daemon's own slot (its
    socket, its queue); the registry never touches it."""

    def __init__(self, cid, bus, creds):
        self.id = cid
        self.bus = bus
        self.creds = creds
        self._devices = {}
        self.closed = False
        self.reason = None
        self.context = None

    @property
    def devices(self):
        return tuple(self._devices)

    def __repr__(self):
        return f"<Connection {self.id} bus={self.bus} {self.creds.describe()}>"


def _locked(fn):
    def wrapper(self, *args, **kw):
        with self._lock:
            return fn(self, *args, **kw)
    wrapper.__name__, wrapper.__doc__, wrapper.__qualname__ = fn.__name__, fn.__doc__, fn.__qualname__
    return wrapper


class Registry:
    def __init__(self, classes=None, *, proc="/proc", max_buses=MAX_BUSES, max_devices=MAX_DEVICES,
                 max_connections=MAX_CONNECTIONS, max_links=MAX_LINKS, max_open=MAX_OPEN):
        """`classes`: a vbus.ClassTable (default: an empty one; a daemon passes
        ClassTable.discover()).  `proc`: where /proc is (tests pass a fake)."""
        self.classes = classes if classes is not None else ClassTable()
        self.proc = proc
        self.max_buses, self.max_devices = max_buses, max_devices
        self.max_connections, self.max_links, self.max_open = max_connections, max_links, max_open
        self._lock = threading.RLock()
        self._buses = {}
        self._devices = {}
        self._observers = []
        self._ids = itertools.count(1)

    # -- observers --------------------------------------------------------

    @_locked
    def add_observer(self, obs):
        if obs not in self._observers:
            self._observers.append(obs)

    @_locked
    def remove_observer(self, obs):
        if obs in self._observers:
            self._observers.remove(obs)

    def _emit(self, event, *args):
        for obs in list(self._observers):
            try:
                getattr(obs, event)(*args)
            except Exception:
                log.exception("vbus observer %r failed on %s", obs, event)

    # -- lookups ----------------------------------------------------------

    def register_class(self, cls):
        with self._lock:
            return self.classes.register(cls)

    def _bus(self, name):
        try:
            return self._buses[name]
        except (KeyError, TypeError):
            raise NoSuchBus(f"no bus {str(name)[:40]!r}") from None

    def _device(self, name):
        try:
            return self._devices[name]
        except (KeyError, TypeError):
            raise NoSuchDevice(f"no device {str(name)[:40]!r}") from None

    @_locked
    def bus(self, name):
        return self._bus(name)

    @_locked
    def device(self, name):
        return self._device(name)

    @_locked
    def buses(self):
        return tuple(self._buses)

    @_locked
    def devices(self):
        return tuple(self._devices)

    def _guard(self, dev, what, fn, *args):
        """Call into a device's code: a VbusError is its refusal; anything
        else is its bug, logged with the traceback and refused in a line."""
        try:
            return fn(*args)
        except VbusError:
            raise
        except Exception as e:
            log.exception("vbus device %s (class %s) failed to %s", dev, getattr(dev, "cls", None), what)
            name = dev if isinstance(dev, str) else dev.name
            raise DeviceError(f"device '{name}' failed to {what}: {type(e).__name__}: {e}") from None

    def _quietly(self, dev, what, fn, *args):
        """Call into a device where a failure cannot stop the change (close,
        destroy): log it and go on."""
        try:
            fn(*args)
        except Exception:
            log.exception("vbus device %s failed to %s", dev.name, what)

    # -- buses ------------------------------------------------------------

    @_locked
    def create_bus(self, name):
        check_name(name, "bus name")
        if name in self._buses:
            raise Exists(f"bus '{name}' already exists")
        if len(self._buses) >= self.max_buses:
            raise LimitReached(f"at most {self.max_buses} buses")
        bus = self._buses[name] = Bus(name, self.proc)
        self._emit("bus_created", bus)
        return bus

    @_locked
    def destroy_bus(self, name, force=False):
        bus = self._bus(name)
        if bus._conns and not force:
            raise InUse(f"bus '{name}' has {len(bus._conns)} connection(s); destroy it with force "
                        "to close them")
        reason = f"bus '{name}' destroyed"
        for conn in list(bus._conns.values()):
            self._drop(conn, reason, forced=True)
        for dev in list(bus._devices.values()):
            del bus._devices[dev.name]
            del dev._buses[name]
            self._emit("device_unlinked", bus, dev)
        del self._buses[name]
        self._emit("bus_destroyed", bus)

    # -- devices ----------------------------------------------------------

    @_locked
    def create_device(self, name, class_name, attrs=None, buses=()):
        """Make a device of a class (the RFC's create + set class in one
        call) with `attrs` {name: typed value} (defaults for the rest), and
        link it to `buses`."""
        check_name(name, "device name")
        if name in self._devices:
            raise Exists(f"device '{name}' already exists")
        cls = self.classes.get(class_name)
        full = cls.check_attrs({} if attrs is None else attrs, name)
        if isinstance(buses, str):
            buses = (buses,)
        targets = []
        for b in buses:
            bus = self._bus(b)
            if bus not in targets:
                targets.append(bus)
        if len(targets) > self.max_links:
            raise LimitReached(f"a device is linked to at most {self.max_links} buses")
        if len(self._devices) >= self.max_devices:
            raise LimitReached(f"at most {self.max_devices} devices")
        instance = self._guard(name, "be created", cls.create, name, dict(full))
        if not isinstance(instance, DeviceInstance):
            raise DeviceError(f"class '{cls.name}' made {type(instance).__name__}, not a vbus.DeviceInstance")
        dev = self._devices[name] = Device(name, cls, full, instance)
        self._emit("device_created", dev)
        for bus in targets:
            self._link(bus, dev)
        return dev

    @_locked
    def set_attr(self, device, name, value, text=False):
        """Change one attribute; `text` True: value is the text of KEY=VALUE.
        A non-live attribute changes only while no connection holds the
        device."""
        dev = self._device(device)
        attr = dev.cls.attr(name)
        value = dev.cls.check_value(name, value, dev.name, text=text)
        if not attr.live and dev._holders:
            raise InUse(f"attribute '{name}' of device '{dev.name}' can change only while the device is "
                        f"closed (open by {len(dev._holders)} connection(s))")
        self._guard(dev, f"set {name}", dev.instance.set, name, value)
        dev._attrs[name] = value
        self._emit("attribute_set", dev, name, value)
        return value

    @_locked
    def reset_device(self, device):
        dev = self._device(device)
        self._guard(dev, "reset", dev.instance.reset)

    @_locked
    def destroy_device(self, name, force=False):
        dev = self._device(name)
        if dev._holders and not force:
            raise InUse(f"device '{name}' is open by {len(dev._holders)} connection(s); destroy it "
                        "with force to close them")
        reason = f"device '{name}' destroyed"
        for conn in list(dev._holders.values()):
            self._force_close(conn, dev, reason)
        for bus in list(dev._buses.values()):
            self._unlink(bus, dev)
        del self._devices[name]
        self._quietly(dev, "be destroyed", dev.instance.destroy)
        self._emit("device_destroyed", dev)

    # -- links ------------------------------------------------------------

    def _link(self, bus, dev):
        bus._devices[dev.name] = dev
        dev._buses[bus.name] = bus
        self._emit("device_linked", bus, dev)

    def _unlink(self, bus, dev):
        del bus._devices[dev.name]
        del dev._buses[bus.name]
        self._emit("device_unlinked", bus, dev)

    @_locked
    def link(self, bus, device):
        b, dev = self._bus(bus), self._device(device)
        if b.name in dev._buses:
            raise Exists(f"device '{dev.name}' is already linked to bus '{b.name}'")
        if len(dev._buses) >= self.max_links:
            raise LimitReached(f"a device is linked to at most {self.max_links} buses")
        self._link(b, dev)

    @_locked
    def unlink(self, bus, device, force=False):
        b, dev = self._bus(bus), self._device(device)
        if b.name not in dev._buses:
            raise NoSuchDevice(f"device '{dev.name}' is not linked to bus '{b.name}'")
        holders = [c for c in dev._holders.values() if c.bus == b.name]
        if holders and not force:
            raise InUse(f"device '{dev.name}' is open by {len(holders)} connection(s) of bus '{b.name}'; "
                        "unlink it with force to close them")
        for conn in holders:
            self._force_close(conn, dev, f"device '{dev.name}' unlinked from bus '{b.name}'")
        self._unlink(b, dev)

    # -- access -----------------------------------------------------------

    @staticmethod
    def _rule_arg(uid, gid, pid):
        given = [(k, v) for k, v in (("uid", uid), ("gid", gid), ("pid", pid)) if v is not None]
        if len(given) != 1:
            raise BadValue("name exactly one of uid, gid, pid")
        return given[0]

    @_locked
    def allow(self, bus, *, uid=None, gid=None, pid=None, start=None):
        """Allow a uid, a gid, or a pid and its descendants (`start`: the
        process start time, read from /proc when not given)."""
        self._rule("allow", bus, uid, gid, pid, start)

    @_locked
    def deny(self, bus, *, uid=None, gid=None, pid=None, start=None):
        """Deny (it wins over any allow); live connections it now refuses
        are closed."""
        self._rule("deny", bus, uid, gid, pid, start)

    @_locked
    def forget(self, bus, *, uid=None, gid=None, pid=None):
        """Drop the rule naming that id, allow or deny."""
        self._rule("forget", bus, uid, gid, pid, None)

    def _rule(self, action, bus, uid, gid, pid, start):
        b = self._bus(bus)
        kind, value = self._rule_arg(uid, gid, pid)
        b.rules.commit(b.rules.prepare(action, kind, value, start))
        self._emit("rules_changed", b)
        if action != "allow":
            for conn in list(b._conns.values()):
                if not b.rules.allowed(conn.creds):
                    self._drop(conn, f"access to bus '{b.name}' revoked", forced=True)

    @_locked
    def check_access(self, bus, creds):
        """(allowed, why) for a log line; NoSuchBus for a missing bus."""
        return self._bus(bus).rules.decide(creds)

    @_locked
    def visible_buses(self, creds):
        """The buses `creds` may use: every other bus is invisible to it."""
        return tuple(n for n, b in self._buses.items() if b.rules.allowed(creds))

    # -- connections ------------------------------------------------------

    @_locked
    def connect(self, bus, creds):
        """A driver joins a bus: AccessDenied (its `why` says which rule, for
        the log; the text does not) unless the rules allow its creds."""
        if not isinstance(creds, Creds):
            raise BadValue("creds must be a vbus.Creds")
        b = self._bus(bus)
        ok, why = b.rules.decide(creds)
        if not ok:
            err = AccessDenied(f"access to bus '{b.name}' refused ({creds.describe()})")
            err.why = why
            raise err
        if len(b._conns) >= self.max_connections:
            raise LimitReached(f"bus '{b.name}' has its {self.max_connections} connections")
        conn = Connection(next(self._ids), b.name, creds)
        b._conns[conn.id] = conn
        return conn

    @_locked
    def disconnect(self, conn):
        """The driver left: close what it held.  Idempotent."""
        if not conn.closed:
            self._drop(conn, "disconnected", forced=False)

    def _drop(self, conn, reason, forced):
        for dev in list(conn._devices.values()):
            if forced:
                self._force_close(conn, dev, reason)
            else:
                self._close(conn, dev)
        conn.closed, conn.reason = True, reason
        self._buses[conn.bus]._conns.pop(conn.id, None)
        self._emit("connection_closed", conn, reason)

    def _live(self, conn):
        if conn.closed:
            raise NotOpen(f"connection {conn.id} is closed ({conn.reason})")
        return self._buses[conn.bus]

    @_locked
    def list(self, conn):
        """What a driver on `conn` sees: [{name, class, interface}] of the
        devices linked to its bus."""
        b = self._live(conn)
        return [{"name": d.name, "class": d.cls.name, "interface": d.cls.interface}
                for d in b._devices.values()]

    @_locked
    def open(self, conn, device):
        b = self._live(conn)
        dev = b._devices.get(device) if isinstance(device, str) else None
        if dev is None:
            # The same words for "does not exist" and "not on your bus":
            # guessing names tells a driver nothing.
            raise NoSuchDevice(f"no device {str(device)[:40]!r} on bus '{b.name}'")
        if conn.id in dev._holders:
            raise InUse(f"device '{dev.name}' is already open on this connection")
        if dev._holders and not dev.cls.multi_open:
            raise InUse(f"device '{dev.name}' is in use by another connection")
        if len(conn._devices) >= self.max_open:
            raise LimitReached(f"a connection holds at most {self.max_open} devices")
        self._guard(dev, "open", dev.instance.open, conn)
        dev._holders[conn.id] = conn
        conn._devices[dev.name] = dev
        return dev

    def _held(self, conn, device):
        self._live(conn)
        dev = conn._devices.get(device) if isinstance(device, str) else None
        if dev is None:
            raise NotOpen(f"device {str(device)[:40]!r} is not open on this connection")
        return dev

    def _close(self, conn, dev):
        del dev._holders[conn.id]
        del conn._devices[dev.name]
        self._quietly(dev, "close", dev.instance.close, conn)

    def _force_close(self, conn, dev, reason):
        self._emit("device_closing", conn, dev, reason)
        self._close(conn, dev)

    @_locked
    def close(self, conn, device):
        self._close(conn, self._held(conn, device))

    @_locked
    def call(self, conn, device, func, args=b""):
        """Device function number `func` with `args` (bytes); returns bytes.
        Runs under the registry lock: control-plane work only."""
        dev = self._held(conn, device)
        if isinstance(func, bool) or not isinstance(func, int) or not 0 <= func <= MAX_FUNC:
            raise BadValue(f"function number must be an integer 0..{MAX_FUNC}")
        if not isinstance(args, (bytes, bytearray, memoryview)):
            raise BadValue("function arguments must be bytes")
        out = self._guard(dev, f"run function {func}", dev.instance.call, conn, func, bytes(args))
        if out is None:
            return b""
        if not isinstance(out, (bytes, bytearray)):
            raise DeviceError(f"device '{dev.name}' function {func} returned {type(out).__name__}, not bytes")
        return bytes(out)

    # -- reflection -------------------------------------------------------

    def _counters(self, dev):
        try:
            raw = dev.instance.counters() or {}
            return {str(k): int(v) for k, v in raw.items()}
        except Exception:
            log.exception("vbus device %s failed to give its counters", dev.name)
            return {}

    @_locked
    def tree(self):
        """The reflection tree as plain dicts (JSON-ready): every bus with
        its devices, access rules and connections; every device with its
        class, attributes, buses, connections and counters.  Accepted back
        by from_config (connections, counters and interface are read-only
        and ignored there)."""
        buses = {}
        for name in sorted(self._buses):
            b = self._buses[name]
            buses[name] = {
                "devices": sorted(b._devices),
                "access": b.rules.to_dict(),
                "connections": [{"id": c.id, "pid": c.creds.pid, "uid": c.creds.uid, "gid": c.creds.gid,
                                 "devices": sorted(c._devices)} for c in b._conns.values()],
            }
        devices = {}
        for name in sorted(self._devices):
            d = self._devices[name]
            devices[name] = {
                "class": d.cls.name,
                "interface": d.cls.interface,
                "attributes": dict(d._attrs),
                "buses": sorted(d._buses),
                "connections": sorted(d._holders),
                "counters": self._counters(d),
            }
        return {"version": TREE_VERSION, "buses": buses, "devices": devices}

    @_locked
    def describe_classes(self):
        return {n: self.classes.get(n).describe() for n in self.classes.names()}

    # -- whole registry ---------------------------------------------------

    @classmethod
    def from_config(cls, config, *, classes=None, source="<config>", proc="/proc", **limits):
        """A registry built from a config dict (a parsed TOML file or a
        tree()); ConfigError naming the source and key otherwise."""
        return build(cls(classes, proc=proc, **limits), config, source)

    @_locked
    def shutdown(self):
        """Close every connection, destroy every bus and device (a daemon's
        tidy exit); observers hear all of it."""
        for name in list(self._buses):
            self.destroy_bus(name, force=True)
        for name in list(self._devices):
            self.destroy_device(name, force=True)

