"""The errors of the bus.  Every one is a refusal with one line for people:
what was wrong and, where it helps, what is allowed.  A failed operation
changed nothing.  `code` is a short stable word a daemon can put on the
wire beside the text (clients branch on it, people read the text)."""


class VbusError(Exception):
    code = "error"

    def __str__(self):
        # One line whatever a caller passed in.
        return " ".join(super().__str__().split())


class BadName(VbusError, ValueError):
    code = "bad-name"


class Exists(VbusError):
    code = "exists"


class NotFound(VbusError, LookupError):
    code = "not-found"


class NoSuchBus(NotFound):
    code = "no-such-bus"


class NoSuchDevice(NotFound):
    code = "no-such-device"


class NoSuchClass(NotFound):
    code = "no-such-class"


class NoSuchAttribute(NotFound):
    code = "no-such-attribute"


class NoSuchFunction(NotFound):
    code = "no-such-function"


class NoSuchProcess(NotFound):
    code = "no-such-process"


class NoSuchRule(NotFound):
    code = "no-such-rule"


class BadValue(VbusError, ValueError):
    code = "bad-value"


class InUse(VbusError):
    """The operation would cut a live connection, or the device is held."""
    code = "in-use"


class NotOpen(VbusError):
    code = "not-open"


class AccessDenied(VbusError, PermissionError):
    code = "access-denied"


class LimitReached(VbusError):
    code = "limit"


class DeviceError(VbusError):
    """A device class's own code failed (its factory, open, set, call)."""
    code = "device-error"


class PluginError(VbusError):
    """A device class that cannot be used (bad schema, broken entry point)."""
    code = "plugin"


class ConfigError(VbusError, ValueError):
    code = "config"
