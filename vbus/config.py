"""The config: buses, devices with class and attributes, links and access
rules, as TOML (stdlib tomllib) or as the JSON of `Registry.tree()`, so a
running setup can be saved and restored.

    version = 1                          # optional; 1 is the only one

    [buses.tenant-a.access.allow]
    uid = [1000, "alice"]                # numbers or user names
    gid = ["netdev"]                     # numbers or group names
    pid = [4242, {pid = 4243, start = 98765}]

    [buses.tenant-a.access.deny]
    uid = [1001]

    [devices.lo0]
    class = "venet-loopback"
    buses = ["tenant-a"]                 # links (a bus's `devices` list works too)
    attributes = { mtu = 9000 }

Read-only keys of the tree (a bus's `connections`; a device's `interface`,
`connections`, `counters`) are accepted and ignored.  Everything else
unknown is an error: a typo must not pass silently.  Every problem is one
line: `FILE: KEY: what is wrong`.
"""
import grp
import json
import pwd
import tomllib

from .access import KINDS, check_id, start_time
from .errors import ConfigError, VbusError
from .names import check_name

TREE_VERSION = 1
MAX_FILE = 4 << 20
_TOP = {"version", "buses", "devices"}
_BUS = {"devices", "access", "connections"}
_DEVICE = {"class", "attributes", "buses", "interface", "connections", "counters"}


def load(path):
    """The config dict of a TOML or JSON file (JSON when it ends in .json or
    starts with '{', as `venet tree --json` writes)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    if len(data) > MAX_FILE:
        raise ConfigError(f"{path}: larger than {MAX_FILE >> 20} MiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if str(path).endswith(".json") or text.lstrip().startswith("{"):
        try:
            cfg = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
    else:
        try:
            cfg = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the top level must be a table")
    return cfg


class _Checker:
    def __init__(self, source, registry):
        self.source = source
        self.reg = registry

    def fail(self, key, msg):
        raise ConfigError(f"{self.source}: {key}: {msg}")

    def table(self, value, key, allowed=None):
        if not isinstance(value, dict):
            self.fail(key, f"must be a table, not {_kind(value)}")
        if allowed is not None:
            for k in value:
                if k not in allowed:
                    self.fail(f"{key}.{k}" if key else k,
                              f"unknown key (allowed: {', '.join(sorted(allowed))})")
        return value

    def names(self, value, key, what):
        if not isinstance(value, list):
            self.fail(key, f"must be a list of {what} names, not {_kind(value)}")
        for i, n in enumerate(value):
            try:
                check_name(n, f"{what} name")
            except VbusError as e:
                self.fail(f"{key}[{i}]", str(e))
        return value

    def ident(self, kind, value, key):
        if kind in ("uid", "gid") and isinstance(value, str):
            try:
                return (pwd.getpwnam(value).pw_uid if kind == "uid" else grp.getgrnam(value).gr_gid), None
            except KeyError:
                self.fail(key, f"no {'user' if kind == 'uid' else 'group'} {value[:40]!r}")
        start = None
        if kind == "pid" and isinstance(value, dict):
            self.table(value, key, {"pid", "start"})
            if "pid" not in value or "start" not in value:
                self.fail(key, "a pid rule table needs both pid and start")
            value, start = value["pid"], value["start"]
            if isinstance(start, bool) or not isinstance(start, int) or start < 0:
                self.fail(f"{key}.start", "must be an integer 0 or more")
        try:
            check_id(kind, value)
            if kind == "pid" and start is None:
                start = start_time(value, self.reg.proc)
        except VbusError as e:
            self.fail(key, str(e))
        return (value, start)

    def rules(self, access, key):
        self.table(access, key, {"allow", "deny"})
        out, seen = [], {}
        for action in ("allow", "deny"):
            side = self.table(access.get(action, {}), f"{key}.{action}", set(KINDS))
            for kind in KINDS:
                ids = side.get(kind, [])
                k = f"{key}.{action}.{kind}"
                if not isinstance(ids, list):
                    self.fail(k, f"must be a list, not {_kind(ids)}")
                for i, raw in enumerate(ids):
                    value, start = self.ident(kind, raw, f"{k}[{i}]")
                    if (kind, value) in seen:
                        self.fail(f"{k}[{i}]", f"{kind} {value} is already named in {seen[(kind, value)]}")
                    if action == "deny" and kind == "uid" and value == 0:
                        self.fail(f"{k}[{i}]", "uid 0 (root) is always allowed; it cannot be denied")
                    seen[(kind, value)] = f"{key}.{action}"
                    out.append((action, kind, value, start))
        return out


def build(reg, cfg, source="<config>"):
    """Fill the empty registry `reg` from `cfg`: everything is checked first,
    then made; a device class failing to make its device undoes the rest."""
    c = _Checker(source, reg)
    c.table(cfg, "", _TOP)
    if "version" in cfg and (cfg["version"] != TREE_VERSION or isinstance(cfg["version"], bool)):
        c.fail("version", f"{cfg['version']!r} is not a known version (this reads {TREE_VERSION})")
    buses = c.table(cfg.get("buses", {}), "buses")
    devices = c.table(cfg.get("devices", {}), "devices")
    if len(buses) > reg.max_buses:
        c.fail("buses", f"more than {reg.max_buses} buses")
    if len(devices) > reg.max_devices:
        c.fail("devices", f"more than {reg.max_devices} devices")

    plan_buses = {}
    links = {}
    for name, spec in buses.items():
        key = f"buses.{name}"
        try:
            check_name(name, "bus name")
        except VbusError as e:
            c.fail(key, str(e))
        c.table(spec, key, _BUS)
        plan_buses[name] = c.rules(spec.get("access", {}), f"{key}.access")
        for i, dev in enumerate(c.names(spec.get("devices", []), f"{key}.devices", "device")):
            if dev not in devices:
                c.fail(f"{key}.devices[{i}]", f"no device '{dev}' in this config")
            links.setdefault(dev, [])
            if name not in links[dev]:
                links[dev].append(name)

    plan_devices = []
    for name, spec in devices.items():
        key = f"devices.{name}"
        try:
            check_name(name, "device name")
        except VbusError as e:
            c.fail(key, str(e))
        c.table(spec, key, _DEVICE)
        if "class" not in spec:
            c.fail(f"{key}.class", "missing: every device needs a class")
        try:
            cls = reg.classes.get(spec["class"])
        except VbusError as e:
            c.fail(f"{key}.class", str(e))
        attrs = c.table(spec.get("attributes", {}), f"{key}.attributes")
        for attr_name, value in attrs.items():
            try:
                attr = cls.attr(attr_name)
            except VbusError as e:
                c.fail(f"{key}.attributes.{attr_name}", str(e))
            try:
                attr.validate(value)
            except ValueError as e:
                c.fail(f"{key}.attributes.{attr_name}", f"{e} (allowed: {attr.allowed()})")
        own = c.names(spec.get("buses", []), f"{key}.buses", "bus")
        for i, b in enumerate(own):
            if b not in buses:
                c.fail(f"{key}.buses[{i}]", f"no bus '{b}' in this config")
        targets = list(dict.fromkeys(own + links.get(name, [])))
        if len(targets) > reg.max_links:
            c.fail(f"{key}.buses", f"a device is linked to at most {reg.max_links} buses")
        plan_devices.append((name, cls.name, attrs, targets))

    try:
        for name, rules in plan_buses.items():
            reg.create_bus(name)
            for action, kind, value, start in rules:
                getattr(reg, action)(name, **{kind: value}, start=start)
        for name, cls_name, attrs, targets in plan_devices:
            try:
                reg.create_device(name, cls_name, attrs, targets)
            except VbusError as e:
                c.fail(f"devices.{name}", str(e))
    except BaseException:
        reg.shutdown()
        raise
    return reg


def _kind(value):
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)
