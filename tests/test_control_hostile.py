"""The control plane against hostile clients (no root needed).

A bridge serving tap-less devices (tap_fd=-1) runs in a subprocess on a
socket in a temp dir; each test misbehaves on one connection in one way and
checks that the bridge lives, refuses or drops that client with a reason,
and that another client's HELLO and LIST replies still arrive promptly.
"""
import array
import fcntl
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from venet import control
from tests.conftest import wait_until as wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_BOUND = 1.0       # seconds: generous; the replies are expected within 100 ms
MEASURED = {}           # test -> slowest probe, printed with -s


def _host(path, kwargs, nofile):
    """The bridge process: three tap-less devices, logs to stderr."""
    import logging
    import resource
    from venet import bridge
    if nofile:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="venet bridge: %(message)s")
    devs = [bridge.Device(f"d{i}", f"d{i}", -1, False, f"02:00:00:00:00:0{i + 1}", 1500) for i in range(3)]
    known = inspect.signature(bridge.Bridge).parameters
    br = bridge.Bridge(path, devs, **{k: v for k, v in kwargs.items() if k in known})
    br.listen()
    signal.signal(signal.SIGTERM, lambda *a: br.stop())
    print("ready", flush=True)
    try:
        br.serve()
    finally:
        br.close()


class Host:
    def __init__(self, tmp_path, nofile=0, **kwargs):
        self.path = str(tmp_path / "bus.sock")
        self.log_path = tmp_path / "bridge.log"
        code = (f"import sys; sys.path.insert(0, {ROOT!r}); from tests.test_control_hostile import _host; "
                f"_host({self.path!r}, {kwargs!r}, {nofile})")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                     stderr=self.log, text=True, cwd=ROOT)
        line = _readline(self.proc, 20)
        assert line == "ready", f"bridge did not start: {line!r}\n{self.logs()}"

    def alive(self):
        return self.proc.poll() is None

    def logs(self):
        self.log.flush()
        return self.log_path.read_text()

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        self.log.close()


def _readline(proc, timeout):
    out = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline().strip()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else None


@pytest.fixture
def host(tmp_path):
    made = []

    def make(**kw):
        h = Host(tmp_path, **kw)
        made.append(h)
        return h
    yield make
    for h in made:
        h.close()


def _close(fds):
    for fd in fds:
        os.close(fd)


def msg(mtype, body=None):
    return control.encode(mtype, body or {})


def raw_msg(mtype, data):
    return control.HDR.pack(control.MAGIC, control.VERSION, mtype, len(data)) + data


def client(path, timeout=2.0):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    s.connect(path)
    return s


def hello(s):
    return control.call(s, control.HELLO, {"version": control.VERSION})


def recv_until_eof(s, timeout=3.0):
    """Every message the bridge sends until it closes: [(type, body)]; a
    timeout fails the test (the bridge did not close the connection)."""
    got = []
    deadline = time.monotonic() + timeout
    while True:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            mtype, body, fds = control.recv(s)
        except control.Disconnected:
            return got
        except ConnectionResetError:
            return got
        except socket.timeout:
            pytest.fail(f"the bridge did not close the connection within {timeout} s (got {got})")
        _close(fds)
        got.append((mtype, body))


def first_reply(s, request):
    """The bridge's answer to a request (its REPLY, or the ERROR it sent a
    refused connection, which may have closed before the request came)."""
    try:
        s.send(request)
    except BrokenPipeError:
        pass
    for _ in range(2):
        try:
            mtype, body, fds = control.recv(s)
            _close(fds)
            return mtype, body
        except ConnectionResetError:
            continue        # a reset is reported once, before what was queued
        except (control.Disconnected, socket.timeout):
            break
    return None, {}


def probe(h, name):
    """A well-behaved client's HELLO and LIST, timed; returns the slowest."""
    assert h.alive(), f"the bridge died:\n{h.logs()}"
    t0 = time.monotonic()
    with client(h.path, timeout=PROBE_BOUND + 1) as s:
        hello(s)
        t1 = time.monotonic()
        devs = control.call(s, control.LIST)["devices"]
        t2 = time.monotonic()
    assert [d["name"] for d in devs] == ["d0", "d1", "d2"]
    worst = max(t1 - t0, t2 - t1)
    MEASURED[name] = max(MEASURED.get(name, 0), worst)
    print(f"\n{name}: hello {1e3 * (t1 - t0):.2f} ms, list {1e3 * (t2 - t1):.2f} ms")
    assert worst < PROBE_BOUND
    return worst


def control_stats(h):
    with client(h.path) as s:
        hello(s)
        return control.call(s, control.STATS).get("control", {})


def _stats_or_none(h):
    """control_stats, or {} while the bridge still refuses connections."""
    try:
        return control_stats(h)
    except (control.RemoteError, control.Disconnected, ConnectionResetError):
        return {}


# ---- bug 1: nesting ------------------------------------------------------------

DEEP = [b"[" * 8000, b'{"a":' * 1600, b'{"version":' + b"[" * 3000]


@pytest.mark.parametrize("after_hello", [False, True])
@pytest.mark.parametrize("body", DEEP, ids=["brackets", "objects", "field"])
def test_deep_nesting_is_a_protocol_error(host, body, after_hello):
    h = host()
    with client(h.path) as s:
        if after_hello:
            hello(s)
        s.send(raw_msg(control.HELLO if not after_hello else control.LIST, body))
        got = recv_until_eof(s)
    assert got and got[-1][0] == control.ERROR and "nests deeper than 2 levels" in got[-1][1]["error"]
    probe(h, "deep nesting")
    assert "dropped: body nests deeper than 2 levels" in h.logs()
    assert f"(pid {os.getpid()} uid {os.getuid()} gid {os.getgid()}) dropped" in h.logs()
    assert "Traceback" not in h.logs()


@pytest.mark.parametrize("body,reason", [
    ({"version": {"a": 1}}, "field 'version' is not a number, string or short list of them"),
    ({"version": list(range(65))}, "field 'version' is not a number, string or short list of them"),
])
def test_request_bodies_are_flat(host, body, reason):
    h = host()
    with client(h.path) as s:
        s.send(msg(control.HELLO, body))
        got = recv_until_eof(s)
    assert got == [(control.ERROR, {"error": reason})]
    probe(h, "nested request")


def test_bad_json_and_utf8(host):
    h = host()
    base = h.fds()
    for data, reason in ((b'{"version": 1', "body is not valid JSON"),
                         (b'{"version": 1' + b"1" * 5000 + b"}", "body is not valid JSON"),
                         (b'{"version": "\xff"}', "body is not valid UTF-8"),
                         (b"[1]", "body is not a JSON object"),
                         (b" " * (control.MAX_BODY + 1), "body of 8193 bytes exceeds 8192"),
                         (b" " * (control.MAX_BODY + 2), "message or its file descriptors were truncated")):
        with client(h.path) as s:
            s.send(raw_msg(control.HELLO, data))
            assert recv_until_eof(s) == [(control.ERROR, {"error": reason})]
    probe(h, "bad json")
    # more fds than a message may carry: truncated, and none of them leak
    many = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(control.MAX_FDS + 4)]
    try:
        with client(h.path) as s:
            hello(s)
            s.sendmsg([msg(control.LIST)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", many))])
            assert recv_until_eof(s) == [
                (control.ERROR, {"error": "message or its file descriptors were truncated"})]
    finally:
        _close(many)
    wait_for(lambda: h.fds() == base, what="the bridge to close every fd it was sent")


# ---- bug 5: a client that never reads ---------------------------------------------

def test_unread_replies_do_not_block_the_bus(host):
    h = host(output_timeout=0.5)
    bad = client(h.path)
    hello(bad)
    control.call(bad, control.OPEN, {"device": "d0"})
    bad.setblocking(False)
    sent = 0
    for _ in range(300):
        try:
            bad.send(msg(control.STATS))
            sent += 1
        except BlockingIOError:
            break
    assert sent > 100
    probe(h, "unread replies")
    # It is dropped once its output has stood still for output_timeout,
    # and the device it held is free again.
    c = wait_for(lambda: (lambda c: c if c.get("dropped_output_stall") else None)(control_stats(h)),
                 what="the client to be dropped")
    assert c["dropped_output_stall"] == 1 and c["connections"] == 1
    with client(h.path) as s:
        hello(s)
        assert not [d for d in control.call(s, control.LIST)["devices"] if d["busy"]]
    assert "dropped: replies not read for 0.5 s" in h.logs()
    bad.close()


# ---- bug 6: connections and fds ---------------------------------------------------

def test_out_of_fds_refuses_and_survives(host):
    h = host(nofile=48)
    socks, refused = [], []
    try:
        for _ in range(70):
            s = client(h.path)
            rtype, body = first_reply(s, msg(control.HELLO, {"version": control.VERSION}))
            if rtype == control.REPLY:
                socks.append(s)
            else:
                refused.append(body.get("error"))
                s.close()
        assert h.alive(), f"the bridge died:\n{h.logs()}"
        assert refused and set(refused) == {"the bridge is out of file descriptors"}
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: _stats_or_none(h).get("connections") == 1, what="the connections to close")
    probe(h, "out of fds")
    c = control_stats(h)
    assert c["refused_no_fds"] >= len(refused) and c["accepted"] >= len(socks)
    assert "refused a connection from pid" in h.logs()


def test_connection_cap(host):
    h = host(max_connections=4)
    socks = [client(h.path) for _ in range(4)]
    try:
        for s in socks:
            hello(s)
        extra = client(h.path)
        assert recv_until_eof(extra) == [
            (control.ERROR, {"error": "too many connections: this bridge serves at most 4"})]
        extra.close()
        socks.pop().close()
        socks.append(wait_for(lambda: _try_hello(h.path), what="a free connection slot"))
    finally:
        for s in socks:
            s.close()
    c = control_stats(h)
    assert c["refused_max_connections"] >= 1 and c["max_connections"] == 4


def test_one_process_cannot_take_every_connection(host):
    """Past its share a process is refused; another process still gets in."""
    h = host(max_connections=16, max_per_process=3)
    socks = [client(h.path) for _ in range(3)]
    try:
        for s in socks:
            hello(s)
        extra = client(h.path)
        assert recv_until_eof(extra) == [
            (control.ERROR, {"error": "too many connections from this process: one process "
                                      "may hold 3"})]
        extra.close()
        other = subprocess.run(
            [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[2]); "
             "from tests.test_control_hostile import client, hello; "
             "s = client(sys.argv[1]); print(hello(s)['version'])", h.path, ROOT],
            capture_output=True, text=True, timeout=30)
        assert other.stdout.strip() == "1", other.stderr
    finally:
        for s in socks:
            s.close()
    c = control_stats(h)
    assert c["refused_max_per_process"] == 1 and c["max_per_process"] == 3


def test_connections_that_never_say_hello_make_room(host):
    """A bridge full of connections that never said HELLO still serves a
    newcomer: the oldest silent one is dropped to make room."""
    h = host(max_connections=8)
    silent = [client(h.path) for _ in range(8)]
    try:
        t0 = time.monotonic()
        s = client(h.path)
        assert hello(s)["version"] == control.VERSION
        assert control.call(s, control.LIST)["devices"]
        MEASURED["newcomer among silent connections"] = time.monotonic() - t0
        s.close()
        assert recv_until_eof(silent[0])[-1][0] == control.ERROR   # the oldest went
    finally:
        for x in silent:
            x.close()
    assert control_stats(h)["dropped_evicted"] >= 1
    assert h.alive()


def test_a_flood_of_refusals_is_logged_in_bursts(host):
    """Refusals a client can repeat at will are logged at most ten a second
    (the rest counted in the next line): the log, or a stderr pipe nobody
    reads fast enough, cannot become what stalls the bridge."""
    h = host(max_per_process=1)
    keep = client(h.path)
    hello(keep)
    t0 = time.monotonic()
    for _ in range(300):
        s = client(h.path)
        recv_until_eof(s)
        s.close()
    elapsed = time.monotonic() - t0
    lines = [ln for ln in h.logs().splitlines() if "refused a connection" in ln]
    assert 1 <= len(lines) <= 10 * (int(elapsed) + 2), (len(lines), elapsed)

    def refused_again():
        # Once the second is over, the next line says how many were not logged.
        s = client(h.path)
        recv_until_eof(s)
        s.close()
        return [ln for ln in h.logs().splitlines() if "more like it not logged" in ln]
    said = wait_for(refused_again, what="a line counting the refusals not logged")
    assert int(said[0].split("(and ")[1].split()[0]) >= 300 - 10 * (int(elapsed) + 2)
    keep.close()
    assert wait_for(lambda: _stats_or_none(h).get("refused_max_per_process"),
                    what="the bridge to answer again") >= 300


def _try_hello(path):
    s = client(path)
    try:
        hello(s)
        return s
    except (control.RemoteError, control.Disconnected, OSError):
        s.close()
        return None


def test_max_connections_option():
    from venet.cli import build_parser
    p = build_parser()
    assert p.parse_args(["bridge", "--tap", "vt0", "--max-connections", "8"]).max_connections == 8
    assert p.parse_args(["bridge", "--tap", "vt0"]).max_connections == 256
    with pytest.raises(SystemExit):
        p.parse_args(["bridge", "--tap", "vt0", "--max-connections", "0"])


# ---- caps: handshake time, devices per connection -----------------------------------

def test_handshake_timeout(host):
    h = host(handshake_timeout=0.3)
    t0 = time.monotonic()
    with client(h.path) as s:
        probe(h, "handshake timeout")        # while the silent client is connected
        got = recv_until_eof(s, timeout=3.0)
    assert got == [(control.ERROR, {"error": "no hello within 0.3 s of connecting"})]
    assert time.monotonic() - t0 >= 0.3
    assert control_stats(h)["dropped_handshake_timeout"] == 1


def test_devices_per_connection(host):
    h = host(max_devices=2)
    with client(h.path) as s:
        hello(s)
        control.call(s, control.OPEN, {"device": "d0"})
        control.call(s, control.OPEN, {"device": "d1"})
        with pytest.raises(control.RemoteError, match="already holds 2 devices, the most one connection may open"):
            control.call(s, control.OPEN, {"device": "d2"})
        assert control.call(s, control.MACQUERY, {"device": "d1"})["mtu"] == 1500
        control.call(s, control.CLOSE, {"device": "d0"})
        control.call(s, control.OPEN, {"device": "d2"})


# ---- bug 7: refusals are ERROR replies, fds never leak ----------------------------

def _region_fds():
    import ioq
    r = ioq.Region.create([64, 64, 16], buf_size=2048, name="hostile")
    fd, efds = r.handoff()
    return r, fd, [x for pair in efds for x in pair]


def test_register_oserror_is_an_error_reply(host):
    h = host()
    r, fd, efds = _region_fds()
    try:
        size = os.fstat(fd).st_size
        sealed = os.memfd_create("sealed", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        os.write(sealed, os.pread(fd, size, 0))
        fcntl.fcntl(sealed, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE)
        base = h.fds()
        with client(h.path) as s:
            hello(s)
            control.call(s, control.OPEN, {"device": "d0"})
            with pytest.raises(control.RemoteError) as e:
                control.call(s, control.REGISTER, {"device": "d0"}, [sealed] + efds)
            assert "\n" not in str(e.value) and str(e.value)
            # the connection stays and serves
            assert control.call(s, control.MACQUERY, {"device": "d0"})["mtu"] == 1500
            assert h.fds() == base + 1      # only the connection itself
        os.close(sealed)
    finally:
        r.close()
    assert f"register refused: {e.value}" in h.logs()
    probe(h, "register oserror")


def test_fds_with_a_message_that_takes_none(host):
    h = host()
    r, fd, efds = _region_fds()
    try:
        base = h.fds()
        with client(h.path) as s:
            hello(s)
            with pytest.raises(control.RemoteError, match=r"^list takes no file descriptors "
                                                          r"\(the 2 sent were closed\)$"):
                control.call(s, control.LIST, fds=efds[:2])
            assert control.call(s, control.LIST)["devices"]
            assert h.fds() == base + 1
            # fds on a message that is a protocol error: closed too
            s.sendmsg([raw_msg(control.LIST, b"[" * 10)],
                      [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", efds))])
            recv_until_eof(s)
        wait_for(lambda: h.fds() == base, what="the bridge to close every fd it was sent")
    finally:
        r.close()
    probe(h, "fds refused")


def test_unknown_and_out_of_order_messages(host):
    h = host()
    cases = [([msg(control.LIST)], "list: the first message must be hello"),
             ([msg(control.HELLO, {"version": 1}), msg(control.HELLO, {"version": 1})],
              "hello: hello was already received"),
             ([msg(control.HELLO, {"version": 1}), msg(99)], "message type 99: unknown message type 99"),
             ([msg(control.HELLO, {"version": 2})], "hello: frontend speaks version 2, this bridge 1"),
             ([msg(control.HELLO, {"version": 1}), msg(control.LINKUP, {"device": "d0"})],
              "linkup: device 'd0' is not open on this connection")]
    for msgs, reason in cases:
        with client(h.path) as s:
            for m in msgs:
                s.send(m)
            got = recv_until_eof(s)
        assert got[-1] == (control.ERROR, {"error": reason}), got
        assert f"dropped: {reason}" in h.logs()
    probe(h, "protocol errors")
    assert control_stats(h)["dropped_protocol"] == len(cases)


def test_internal_error_costs_one_connection(tmp_path, monkeypatch):
    """A bug of ours (here a device that raises) drops that connection with
    an ERROR; the bus keeps serving (bridge in a thread of this process)."""
    from venet import bridge
    devs = [bridge.Device("d0", "d0", -1, False, "02:00:00:00:00:01", 1500)]
    br = bridge.Bridge(str(tmp_path / "bus.sock"), devs)
    br.listen()
    t = threading.Thread(target=br.serve, daemon=True)
    t.start()
    try:
        with client(br.path) as s:
            hello(s)
            monkeypatch.setattr(bridge.Device, "describe", lambda self: 1 / 0)
            s.send(msg(control.LIST))
            assert recv_until_eof(s) == [
                (control.ERROR, {"error": "internal error handling list: ZeroDivisionError"})]
        monkeypatch.undo()
        with client(br.path) as s:
            hello(s)
            assert control.call(s, control.LIST)["devices"][0]["name"] == "d0"
        assert br.counters["dropped_internal_error"] == 1
    finally:
        br.stop()
        t.join(5)
        br.close()


def test_stats_has_control_counters(host):
    h = host()
    c = control_stats(h)
    for k in ("connections", "max_connections", "max_devices", "accepted", "closed",
              "refused_max_connections", "refused_no_fds", "accept_errors", "dropped_protocol",
              "dropped_handshake_timeout", "dropped_output_full", "dropped_output_stall",
              "dropped_socket_error", "dropped_internal_error", "requests_refused"):
        assert isinstance(c[k], int), k
    assert c["connections"] == 1 and c["max_connections"] == 256 and c["accepted"] == 1
    assert json.dumps(c)


def test_output_queue_is_bounded(tmp_path):
    """Whatever the bridge has to send a client that does not read waits in
    a queue of at most OUT_MAX_MSGS messages / OUT_MAX_BYTES bytes; past
    that the client is dropped and counted (driven step by step here)."""
    from venet import bridge
    br = bridge.Bridge(str(tmp_path / "bus.sock"), [])
    br.listen()
    try:
        with client(br.path) as s:
            br._accept()
            (conn,) = br.conns.values()
            for i in range(10 * bridge.OUT_MAX_MSGS):
                br._queue(conn, control.EVENT, {"pad": "x" * 4000})
                if conn.closed:
                    break
                assert len(conn.out) <= bridge.OUT_MAX_MSGS
                assert conn.out_bytes <= bridge.OUT_MAX_BYTES
            assert conn.closed and br.counters["dropped_output_full"] == 1
            assert not br.conns
    finally:
        br.close()


# ---- found in review -----------------------------------------------------------

def test_a_refusal_quoting_a_long_path_the_peer_chose_is_short(host, tmp_path):
    """REGISTER with a directory of a long, non-UTF-8 path as its memfd:
    the refusal names what it is in a line of bounded length; the reply
    once outgrew the protocol's limit and killed the bridge."""
    h = host()
    d = os.fsencode(str(tmp_path))
    for _ in range(6):
        d = os.path.join(d, b"\xff" * 250)
        os.mkdir(d)
    dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    r, fd, efds = _region_fds()
    try:
        with client(h.path) as s:
            hello(s)
            control.call(s, control.OPEN, {"device": "d0"})
            with pytest.raises(control.RemoteError) as e:
                control.call(s, control.REGISTER, {"device": "d0"}, [dfd] + efds)
            assert "is not a memfd: it is a directory" in str(e.value)
            assert len(str(e.value)) < 400
    finally:
        os.close(dfd)
        r.close()
    assert h.alive(), h.logs()
    probe(h, "long path")


def test_stats_of_many_devices_fits_a_reply(host):
    """A reply may be larger than a request (STATS of a bus of many devices
    each with its counters); it is sent, not the bridge's end."""
    h = host()
    with client(h.path) as s:
        hello(s)
        st = control.call(s, control.STATS)
    assert len(control.encode(control.REPLY, st)) < control.MAX_REPLY_BODY
    big = {"devices": [{"device": f"d{i}", "counters": {f"c{j}": j for j in range(64)}}
                       for i in range(40)]}
    assert len(control.encode(control.REPLY, big)) > control.MAX_BODY   # now allowed
    with pytest.raises(ValueError):
        control.encode(control.LIST, big)                               # requests are not


def test_negcap_of_unknown_groups_keeps_nothing(host):
    h = host()
    with client(h.path) as s:
        hello(s)
        control.call(s, control.OPEN, {"device": "d0"})
        for g in range(2, 2000):
            assert control.call(s, control.NEGCAP, {"device": "d0", "group": g, "bits": 1}) == \
                {"group": g, "bits": 0}
    probe(h, "negcap flood")


def test_venet_stats_shows_the_control_counters(host):
    h = host()
    s = client(h.path)
    s.send(raw_msg(control.HELLO, b"[" * 100))
    recv_until_eof(s)
    s.close()
    r = subprocess.run([sys.executable, "-m", "venet", "stats", "--socket", h.path],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "control: 1 connections of 256" in r.stdout
    line = [ln for ln in r.stdout.splitlines() if "dropped_protocol" in ln]
    assert line and line[0].split()[-1] == "1", r.stdout


def test_an_idle_bus_arms_no_deadline_once_hellos_came_and_output_was_taken(tmp_path):
    """Deadlines are armed per connection (hello within the handshake
    timeout, replies taken within the output timeout); once what they wait
    for has happened, an idle bus has nothing to wake for.  The stale hello
    deadline once woke the daemon 5 s after every connection."""
    from venet import bridge
    br = bridge.Bridge(str(tmp_path / "bus.sock"), [])
    br.listen()
    try:
        with client(br.path) as s:
            br._accept()
            (conn,) = br.conns.values()
            assert br.next_timeout() is not None            # the hello deadline
            s.send(msg(control.HELLO, {"version": control.VERSION}))
            wait_for(lambda: br.poll(0.05) and conn.hello, 5.0, "the hello to be served")
            control.recv(s)                                 # the reply taken
            wait_for(lambda: br.poll(0.05) and not conn.out, 5.0, "the output to drain")
            assert br.next_timeout() is None
    finally:
        br.close()
