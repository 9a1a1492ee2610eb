"""Typed device attributes: the schema a device class declares.

An `Attr` names one attribute, its type (int with bounds, str with a
pattern and a length limit, bool, enum of choices), its default, whether
it may change while the device is open (`live`) and one line of doc.  A
`check` hook validates what the type alone cannot (a MAC address is the
venet layer's business, not the bus's): it takes the typed value and
returns it, possibly normalised, or raises ValueError with the reason.

Values arrive two ways: typed (a config file, a JSON tree, an API call):
`validate()`; or as text (`KEY=VALUE` on a command line): `parse()`.  Both
raise ValueError with a reason that names the allowed values; the registry
adds which device and attribute it was about.
"""
import re

from .errors import PluginError
from .names import check_attr_name

TYPES = ("int", "str", "bool", "enum")
_TYPE_NAMES = {int: "int", str: "str", bool: "bool"}
MAX_STR = 4096
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class Attr:
    __slots__ = ("name", "type", "default", "min", "max", "pattern", "max_len", "choices", "check",
                 "live", "doc", "_re")

    def __init__(self, name, type, default, *, min=None, max=None, pattern=None, max_len=256,
                 choices=None, check=None, live=False, doc=""):
        try:
            check_attr_name(name)
        except ValueError as e:
            raise PluginError(str(e)) from None
        t = _TYPE_NAMES.get(type, type)
        if t not in TYPES:
            raise PluginError(f"attribute {name!r}: type must be int, str, bool or 'enum', not {type!r}")
        if t == "enum" and (not choices or not all(isinstance(c, str) for c in choices)):
            raise PluginError(f"attribute {name!r}: an enum needs a non-empty list of string choices")
        if (min is not None or max is not None) and t != "int":
            raise PluginError(f"attribute {name!r}: min/max apply to int attributes only")
        if (pattern is not None) and t != "str":
            raise PluginError(f"attribute {name!r}: a pattern applies to str attributes only")
        if check is not None and not callable(check):
            raise PluginError(f"attribute {name!r}: check must be callable")
        if not isinstance(max_len, int) or not 0 < max_len <= MAX_STR:
            raise PluginError(f"attribute {name!r}: max_len must be 1..{MAX_STR}")
        self.name, self.type, self.live, self.doc = name, t, bool(live), doc
        self.min, self.max, self.pattern, self.max_len = min, max, pattern, max_len
        self.choices = tuple(choices) if choices else None
        self.check = check
        self._re = re.compile(pattern) if pattern is not None else None
        try:
            self.default = self.validate(default)
        except ValueError as e:
            raise PluginError(f"attribute {name!r}: its default is not valid: {e}") from None

    def allowed(self):
        """The allowed values in words: '68..9000', 'true or false', ..."""
        if self.type == "int":
            lo = "" if self.min is None else str(self.min)
            hi = "" if self.max is None else str(self.max)
            return f"an integer {lo}..{hi}" if (lo or hi) else "an integer"
        if self.type == "bool":
            return "true or false"
        if self.type == "enum":
            return "one of " + ", ".join(self.choices)
        extra = f" matching {self.pattern}" if self.pattern else ""
        return f"a string of at most {self.max_len} characters{extra}"

    def validate(self, value):
        """The typed value, checked; ValueError with the reason otherwise."""
        t = self.type
        if t == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{_show(value)} is not an integer")
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                lo = "" if self.min is None else self.min
                hi = "" if self.max is None else self.max
                raise ValueError(f"{value} is out of range {lo}..{hi}")
        elif t == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"{_show(value)} is not true or false")
        else:
            if not isinstance(value, str):
                raise ValueError(f"{_show(value)} is not a string")
            if t == "enum":
                if value not in self.choices:
                    raise ValueError(f"{_show(value)} is not one of {', '.join(self.choices)}")
            else:
                if len(value) > self.max_len:
                    raise ValueError(f"a string of {len(value)} characters is longer than {self.max_len}")
                if self._re is not None and not self._re.fullmatch(value):
                    raise ValueError(f"{_show(value)} does not match {self.pattern}")
        if self.check is not None:
            try:
                value = self.check(value)
            except ValueError as e:
                raise ValueError(" ".join(str(e).split()) or f"{_show(value)} is not allowed") from None
        return value

    def parse(self, text):
        """A value written as text (the VALUE of KEY=VALUE), validated."""
        if not isinstance(text, str):
            return self.validate(text)
        if self.type == "int":
            try:
                value = int(text.strip(), 0)
            except ValueError:
                raise ValueError(f"{_show(text)} is not an integer") from None
        elif self.type == "bool":
            low = text.strip().lower()
            if low not in _TRUE + _FALSE:
                raise ValueError(f"{_show(text)} is not true or false")
            value = low in _TRUE
        else:
            value = text
        return self.validate(value)

    def describe(self):
        d = {"type": self.type, "default": self.default, "live": self.live, "allowed": self.allowed()}
        if self.doc:
            d["doc"] = self.doc
        return d

    def __repr__(self):
        return f"Attr({self.name!r}, {self.type}, default={self.default!r}, live={self.live})"


def _show(value):
    """A value for an error line: repr, cut short."""
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."
