"""Names of buses, devices and classes.  A bus name becomes a file name
(`RUN_DIR/bus/NAME.sock`) and every name travels on the command line, so
the charset is narrow: letters, digits, '_', '.', '-', starting with a
letter or digit (no '.', '..', no leading '-' an option parser would take),
at most MAX_NAME characters (a socket path must fit in 108 bytes)."""
import re

from .errors import BadName

MAX_NAME = 32
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Attribute names are keys in TOML and on the command line (KEY=VALUE).
MAX_ATTR_NAME = 32
_ATTR = re.compile(r"[a-z][a-z0-9_]*")


def check_name(name, what="name"):
    """Return `name` if it is a valid bus, device or class name, else raise
    BadName saying why (`what` is "bus name", "device name", ...)."""
    if not isinstance(name, str):
        raise BadName(f"{what} must be a string, not {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME:
        raise BadName(f"{what} {name[:40]!r} must be 1 to {MAX_NAME} characters")
    if not _NAME.fullmatch(name):
        raise BadName(f"{what} {name!r} may hold only letters, digits, '_', '.', '-' "
                      "and must start with a letter or digit")
    return name


def check_attr_name(name):
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_ATTR_NAME or not _ATTR.fullmatch(name):
        raise BadName(f"attribute name {str(name)[:40]!r} must be 1 to {MAX_ATTR_NAME} of a-z, 0-9, '_', "
                      "starting with a letter")
    return name
