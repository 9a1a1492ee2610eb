"""docs/errors.md is a contract: every row of its two tables is run here.

Command-line rows run `python -m venet ARGS` and check the exit status, the
one line on stderr and that no traceback is printed.  Rows against a running
daemon do the same with `--run-dir` of a daemon the test starts (no root:
a loopback and a switch), and check that the registry did not change.  Control-message rows
send the message to a bridge serving tap-less devices (no root) and check
the ERROR text and whether the connection was closed or kept.
"""
import os
import re
import shlex
import socket
import struct
import subprocess
import sys

import pytest

from tests.test_control_hostile import Host, client, msg, raw_msg
from venet import control

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(ROOT, "docs", "errors.md")


def _section(title):
    text = open(DOC).read()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        if not line.startswith("| ") or line.startswith("| ---") or line.startswith("|---"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] in ("arguments", "message"):
            continue
        rows.append(cells)
    return rows


def _code(cell):
    """The text of the first `code` span of a cell ('' for an empty one)."""
    m = re.search(r"``|`([^`]*)`", cell)
    assert m, f"no code span in {cell!r}"
    return m.group(1) or ""


CLI_ROWS = _section("Command lines")
DAEMON_ROWS = _section("Against a running daemon")
CONTROL_ROWS = _section("Control messages")


def test_the_catalogue_is_big_enough():
    assert len(CLI_ROWS) + len(CONTROL_ROWS) >= 30
    assert len(DAEMON_ROWS) >= 10


@pytest.mark.parametrize("row", CLI_ROWS, ids=[_code(r[0]) or "(none)" for r in CLI_ROWS])
def test_command_line_row(row):
    args, want, status = shlex.split(_code(row[0])), _code(row[1]), int(row[2])
    r = subprocess.run([sys.executable, "-m", "venet", *args], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == status, r.stderr
    assert want in r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 3 and want in lines[-1], r.stderr      # argparse adds a usage line


@pytest.fixture(scope="module")
def daemon_host():
    from tests.test_daemon import DaemonProc
    d = DaemonProc()
    try:
        d.req("bus-create", name="b0")
        d.req("device-create", name="lo0", **{"class": "venet-loopback"})
        d.req("device-create", name="sw0", **{"class": "venet-switch"})
        for dev in ("lo0", "sw0"):
            d.req("bus-link", bus="b0", device=dev)
        if os.geteuid() != 0:
            d.req("bus-allow", bus="b0", uid=os.geteuid())
        yield d
    finally:
        d.cleanup()


def _registry(d):
    """The tree without what moves by itself (counters, connections)."""
    t = d.tree()
    for dev in t["devices"].values():
        dev.pop("counters", None)
        dev.pop("connections", None)
    for bus in t["buses"].values():
        bus.pop("connections", None)
    return t


@pytest.mark.parametrize("row", DAEMON_ROWS, ids=[_code(r[0]) for r in DAEMON_ROWS])
def test_daemon_row(row, daemon_host, capsys):
    """In this process (venet.cli.main, as `python -m venet` runs it): the
    daemon is the other side, and a process start per row would cost more
    than the row."""
    from venet.cli import main
    args, want, status = shlex.split(_code(row[0])), _code(row[1]), int(row[2])
    before = _registry(daemon_host)
    try:
        rc = main([*args, "--run-dir", daemon_host.run_dir])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert rc == status, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and want in lines[0], err
    assert _registry(daemon_host) == before
    assert daemon_host.proc.poll() is None, daemon_host.log()


@pytest.fixture(scope="module")
def bridge_host(tmp_path_factory):
    h = Host(tmp_path_factory.mktemp("errors"))
    yield h
    h.close()


def _hello(s):
    s.send(msg(control.HELLO, {"version": control.VERSION}))
    assert control.recv(s)[0] == control.REPLY


def _raw(mtype, data):
    return raw_msg(mtype, data)


def _names():
    ns = {k: getattr(control, k) for k in ("HELLO", "LIST", "OPEN", "NEGCAP", "REGISTER", "LINKUP",
                                           "LINKDOWN", "MACQUERY", "CLOSE", "STATS", "FLUSHRX")}
    ns.update(msg=msg, raw=_raw, struct=struct)
    return ns


def _fds_for(desc, stack):
    """File descriptors a row asks to send with its message."""
    if "with an fd" in desc:
        r, w = os.pipe()
        stack += [r, w]
        return [r]
    if "with 2 fds" in desc:
        a, b = os.pipe()
        stack += [a, b]
        return [a, b]
    if "a pipe as the memfd" in desc:
        fds = [os.pipe() for _ in range(4)]
        flat = [x for p in fds for x in p]
        stack += flat
        return flat[:7]
    return []


def _answer(s):
    """('error', text) or ('reply', body) or ('closed', None)."""
    try:
        mtype, body, fds = control.recv(s)
    except (control.Disconnected, ConnectionResetError):
        return "closed", None
    control.close_fds(fds)
    return ("error", body.get("error", "")) if mtype == control.ERROR else ("reply", body)


def _closed(s):
    s.settimeout(2.0)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.mark.parametrize("row", CONTROL_ROWS, ids=[r[0][:60] for r in CONTROL_ROWS])
def test_control_message_row(row, bridge_host):
    desc, want, fate = row[0], _code(row[1]), row[2]
    data = eval(_code(desc), _names())          # the doc's own expression  # noqa: S307
    extra, held, keep = [], [], []
    try:
        s = client(bridge_host.path)
        keep.append(s)
        if not desc.startswith("first:"):
            _hello(s)
        if "after OPEN d0" in desc:
            s.send(msg(control.OPEN, {"device": "d0"}))
            assert _answer(s)[0] == "reply"
        if "twice" in desc:
            other = client(bridge_host.path)
            keep.append(other)
            _hello(other)
            other.send(data)
            assert _answer(other)[0] == "reply"
        fds = _fds_for(desc, extra)
        if fds:
            s.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))])
        else:
            s.send(data)
        kind, text = _answer(s)
        assert kind == "error", f"expected ERROR containing {want!r}, got {kind} {text!r}"
        assert want in text
        assert _closed(s) == (fate == "closed"), f"connection should be {fate}"
        assert bridge_host.alive(), bridge_host.logs()
    finally:
        for s in keep:
            s.close()
        for fd in extra + held:
            os.close(fd)
