"""Device classes and the device instances they make.

A device class is a type of device that may be instantiated should an
administrator wish to (the RFC's deviceclass).  It declares:

- `name`: what an administrator writes (`venet-tap`, `venet-loopback`);
- `interface`: what a driver binds to (`virtual-ethernet`): one driver
  serves every class presenting the same interface;
- `attrs`: the attribute schema (`vbus.attrs.Attr`);
- `multi_open`: whether many connections may hold one device at once (a
  switch) or one only (a tap, a loopback);
- `create(name, attrs)`: the factory, returning a `DeviceInstance`.

The registry validates every attribute against the schema before it calls
the class, so a class sees typed, checked values only.  The registry
serialises all calls into an instance (one lock), so an instance needs no
locking of its own against the registry; its data path is its own.
"""
from .attrs import Attr
from .errors import BadValue, NoSuchAttribute, NoSuchFunction, PluginError
from .names import check_name

MAX_ATTRS = 64


class DeviceInstance:
    """One device of a class.  Every method may raise a VbusError to refuse
    (the refusal reaches the caller; nothing changes); anything else raised
    is the class's bug and is reported as a DeviceError."""

    def open(self, conn):
        """A connection (vbus.model.Connection) starts using the device.
        Called only for a connection of a bus the device is linked to,
        never twice for one connection, and for a single-open class never
        while another connection holds it."""

    def close(self, conn):
        """The connection stops using the device (it closed it, went away,
        or the device was unlinked from its bus or destroyed: observers
        have been told first, so the driver got its link-down)."""

    def call(self, conn, func, args):
        """Device function number `func` (an int 0..2**32-1) with `args`
        (bytes), for a connection that holds the device open.  Returns
        bytes.  The default has no functions."""
        raise NoSuchFunction(f"this device has no function {func}")

    def set(self, name, value):
        """Apply a validated attribute value.  Called while the device is
        closed, or while open for an attribute its class marks live.
        Raising refuses the change; the old value stays."""

    def reset(self):
        """Back to the state just after create, attributes kept."""

    def counters(self):
        """{name: int}: cheap to read (the tree reads it under the
        registry's lock)."""
        return {}

    def destroy(self):
        """Release everything; no connection holds the device any more."""


class DeviceClass:
    name = None
    interface = None
    attrs = ()
    multi_open = False
    doc = ""

    def create(self, name, attrs):
        """Return a DeviceInstance for device `name` with the full,
        validated attribute dict `attrs`."""
        raise NotImplementedError

    # -- helpers the registry uses; a class need not override them --------

    def attr(self, name):
        for a in self.attrs:
            if a.name == name:
                return a
        have = ", ".join(a.name for a in self.attrs) or "none"
        raise NoSuchAttribute(f"class '{self.name}' has no attribute {str(name)[:40]!r} (it has: {have})")

    def check_attrs(self, values, device):
        """The full attribute dict for a new device: `values` validated,
        defaults for the rest.  Raises NoSuchAttribute or BadValue naming
        the device and the allowed values."""
        if not isinstance(values, dict):
            raise BadValue(f"attributes of device '{device}' must be a table of NAME = VALUE")
        out = {}
        for key, value in values.items():
            out[key] = self.check_value(key, value, device)
        for a in self.attrs:
            out.setdefault(a.name, a.default)
        return {a.name: out[a.name] for a in self.attrs}

    def check_value(self, key, value, device, text=False):
        a = self.attr(key)
        try:
            return a.parse(value) if text else a.validate(value)
        except ValueError as e:
            raise BadValue(f"attribute '{key}' of device '{device}': {e} (allowed: {a.allowed()})") from None

    def describe(self):
        return {"interface": self.interface, "multi_open": self.multi_open, "doc": self.doc,
                "attributes": {a.name: a.describe() for a in self.attrs}}


def check_class(cls):
    """A DeviceClass instance from a class object or an instance, with its
    schema checked; PluginError otherwise."""
    if isinstance(cls, type):
        if not issubclass(cls, DeviceClass):
            raise PluginError(f"{cls.__module__}.{cls.__qualname__} is not a vbus.DeviceClass")
        try:
            cls = cls()
        except Exception as e:
            raise PluginError(f"{type(e).__name__} making {cls.__qualname__}: {e}") from None
    if not isinstance(cls, DeviceClass):
        raise PluginError(f"{cls!r:.60} is not a vbus.DeviceClass")
    try:
        check_name(cls.name, "class name")
        check_name(cls.interface, "interface name")
    except ValueError as e:
        raise PluginError(f"class {type(cls).__qualname__}: {e}") from None
    attrs = tuple(cls.attrs)
    if len(attrs) > MAX_ATTRS:
        raise PluginError(f"class '{cls.name}' has more than {MAX_ATTRS} attributes")
    seen = set()
    for a in attrs:
        if not isinstance(a, Attr):
            raise PluginError(f"class '{cls.name}': {a!r:.40} is not a vbus.Attr")
        if a.name in seen:
            raise PluginError(f"class '{cls.name}' declares attribute '{a.name}' twice")
        seen.add(a.name)
    if not callable(getattr(cls, "create", None)) or type(cls).create is DeviceClass.create:
        raise PluginError(f"class '{cls.name}' has no create()")
    return cls
