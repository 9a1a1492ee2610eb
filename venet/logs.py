"""Logging of the daemon and the bridge: one line per event.

Events carry their fields as `extra=` attributes of the log record (see
fields()): `event` (what happened: opened, closed, open, link_up,
link_down, reset, drops, refused, ... and the control plane's counter
names for drops and refusals), `bus`, `device` and `peer` (the control
connection: its number and the pid, uid and gid the kernel gave at
accept).  Text lines end with those fields as key=value; --log-json
writes one JSON object per line with the same fields.
"""
import json
import logging
import sys
import time

FIELDS = ("event", "bus", "device", "peer")
LEVELS = ("debug", "info", "warning", "error")


def fields(event=None, bus=None, device=None, conn=None):
    """The `extra=` of an event line; conn: a bridge.Connection (or None)."""
    out = {"event": event, "bus": bus, "device": device, "peer": None}
    if conn is not None:
        out["peer"] = {"conn": conn.id, "pid": conn.pid, "uid": conn.uid, "gid": conn.gid}
    return out


def _peer_text(p):
    return f"conn:{p['conn']},pid:{p['pid']},uid:{p['uid']},gid:{p['gid']}"


class TextFormatter(logging.Formatter):
    """PROG: message [event=E bus=B device=D peer=...] (fields present only)."""

    def __init__(self, prog):
        super().__init__()
        self.prog = prog

    def format(self, record):
        line = f"{self.prog}: {record.getMessage()}"
        tags = []
        for k in FIELDS:
            v = getattr(record, k, None)
            if v is None:
                continue
            tags.append(f"{k}={_peer_text(v) if k == 'peer' else v}")
        if tags:
            line += " [" + " ".join(tags) + "]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger,
    program, message, then the event's fields that are set; an exception
    as "exception" (its traceback in one string)."""

    def __init__(self, prog):
        super().__init__()
        self.prog = prog

    def format(self, record):
        t = time.gmtime(record.created)
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "program": self.prog,
               "message": record.getMessage()}
        for k in FIELDS:
            v = getattr(record, k, None)
            if v is not None:
                out[k] = v
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(prog, level="info", as_json=False, stream=None):
    """Route every logger of the process to one handler on stderr (or
    `stream`): text or JSON lines at `level` (a name of LEVELS)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(prog) if as_json else TextFormatter(prog))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
    return handler
