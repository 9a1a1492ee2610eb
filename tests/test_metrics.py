"""--metrics: the Prometheus endpoint of `venet daemon` (loopback devices,
no root) and of a bridge's loop; scraped over HTTP and parsed with
prometheus_client's own parser.  Also the log options (--log-json).

The endpoint listens on 127.0.0.1 at a port the kernel picks; nothing
leaves the host's loopback."""
import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_until
from tests.test_daemon import REPO, DaemonProc, frame
from venet import frontend, metrics


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        assert r.status == 200
        text = r.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.mark.parametrize("text,want", [
    ("9101", ("127.0.0.1", 9101)),
    (":9101", ("127.0.0.1", 9101)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("localhost:0", ("localhost", 0)),
    ("[::1]:9101", ("::1", 9101)),
])
def test_parse_address(text, want):
    assert metrics.parse_address(text) == want


@pytest.mark.parametrize("text,msg", [
    ("host", "is not HOST:PORT (the port must be a number)"),
    ("h:65536", "port 65536 is out of range"),
    ("::1:80", "an IPv6 host goes in brackets"),
    ("[zz]:80", "is not an IPv6 address"),
])
def test_bad_address(text, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        metrics.parse_address(text)


def _loop(sel, stop):
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            key.data()


def test_loop_snapshot_runs_in_the_loop_thread_and_is_never_stale():
    seen = []
    n = [0]

    def fn():
        seen.append(threading.get_ident())
        n[0] += 1
        return n[0]
    snap = metrics.LoopSnapshot(fn)
    with pytest.raises(TimeoutError):       # no loop yet: a bounded wait, not a hang
        snap.take(0.2)
    sel = selectors.DefaultSelector()
    sel.register(snap, selectors.EVENT_READ, snap)
    stop = threading.Event()
    t = threading.Thread(target=_loop, args=(sel, stop))
    t.start()
    try:
        first = snap.take(5)
        second = snap.take(5)
        assert second > first >= 1      # a later take never gets an earlier answer
        assert set(seen) == {t.ident}
    finally:
        stop.set()
        t.join()
        sel.close()
        snap.close()


def test_a_failing_snapshot_is_a_failed_scrape_not_a_dead_loop():
    def fn():
        raise KeyError("boom")
    snap = metrics.LoopSnapshot(fn)
    snap_fams = metrics.VenetCollector(snap, timeout=5)
    sel = selectors.DefaultSelector()
    sel.register(snap, selectors.EVENT_READ, snap)
    stop = threading.Event()
    t = threading.Thread(target=_loop, args=(sel, stop))
    t.start()
    try:
        fams = list(snap_fams.collect())
        assert [(f.name, f.samples[0].value) for f in fams] == [("venet_scrape_ok", 0)]
        assert t.is_alive()
    finally:
        stop.set()
        t.join()
        sel.close()
        snap.close()


def test_a_bridge_loop_answers_scrapes(tmp_path):
    """The bridge's own loop (Bridge.poll) runs the snapshot: tap-less
    devices, one opened by a frontend.  A tap-less port takes no frame (a
    counted tap_write drop): the scrape shows it, and the session's end
    logs it as one `drops` event."""
    from venet import bridge
    devs = [bridge.Device(f"d{i}", f"d{i}", -1, False, f"02:00:00:00:00:0{i + 1}", 1500) for i in range(2)]
    br = bridge.Bridge(str(tmp_path / "bus.sock"), devs)
    br.listen()
    m = metrics.MetricsServer(("127.0.0.1", 0), lambda: [metrics.bus_snapshot(br.bus, br)]).start()
    br.sel.register(m.snapshot, selectors.EVENT_READ, m.snapshot)
    t = threading.Thread(target=br.serve)
    t.start()
    try:
        with frontend.connect(br.path) as bus:
            bus.open("d0")
            s = scrape(m.port)
            base = dict(bus="default", device="d0", **{"class": "venet-tap"})
            assert value(s, "venet_device_open", **base) == 1
            assert value(s, "venet_device_open", **dict(base, device="d1")) == 0
            assert value(s, "venet_control_accepted_total", bus="default") == 1
            assert value(s, "venet_control_connections", bus="default") == 1
            assert value(s, "venet_scrape_ok") == 1
            dev = bus.devices["d0"]
            assert dev.send(bytes(60), timeout=5)
            wait_until(lambda: value(scrape(m.port), "venet_device_drops_total", reason="tap_write", **base),
                       what="the drop in the metrics")
            # A handler on the logger itself: another test's harness may
            # have stopped venet.bridge propagating to the root (caplog).
            records = []
            handler = logging.Handler(logging.INFO)
            handler.emit = records.append
            lg = logging.getLogger("venet.bridge")
            lg.addHandler(handler)
            old_level = lg.level
            lg.setLevel(logging.INFO)
            try:
                dev.close()
                wait_until(lambda: [r for r in records if getattr(r, "event", None) == "drops"],
                           what="the drops event")
            finally:
                lg.removeHandler(handler)
                lg.setLevel(old_level)
            (r,) = [r for r in records if getattr(r, "event", None) == "drops"]
            assert r.device == "d0" and "tap_write 1" in r.getMessage()
    finally:
        br.stop()
        t.join(10)
        m.close()
        br.close()
    assert not t.is_alive()


@pytest.fixture
def metered():
    port = free_port()
    d = DaemonProc(extra=["--metrics", f"127.0.0.1:{port}", "--log-json"])
    d.port = port
    yield d
    d.cleanup()


def test_daemon_metrics_match_its_counters(metered):
    d = metered
    d.req("bus-create", name="t")
    d.req("device-create", name="lo0", **{"class": "venet-loopback"})
    d.req("bus-link", bus="t", device="lo0")
    if os.geteuid() != 0:
        d.req("bus-allow", bus="t", uid=os.geteuid())
    with frontend.connect(d.sock("t")) as bus:
        dev = bus.open("lo0")
        for i in range(50):
            assert dev.send(frame(100, i), timeout=5)
            assert dev.recv(timeout=5) == frame(100, i)
        s = scrape(d.port)
        (c,) = [x["counters"] for x in bus.stats()["devices"]]
    base = dict(bus="t", device="lo0", **{"class": "venet-loopback"})
    assert value(s, "venet_device_frames_total", direction="tx", **base) == c["to_tap_frames"] == 50
    assert value(s, "venet_device_frames_total", direction="rx", **base) == c["from_tap_frames"] == 50
    assert value(s, "venet_device_bytes_total", direction="tx", **base) == 5000
    assert value(s, "venet_device_drops_total", reason="short", **base) == 0
    assert value(s, "venet_device_link_up", **base) == 1
    assert value(s, "venet_ring_kicks_total", ring="out", outcome="sent", **base) == \
        c["out_ring.kicks_sent"]
    assert value(s, "venet_control_accepted_total", bus="t") >= 1
    assert value(s, "venet_scrape_ok") == 1
    # The library's process collector: this is the daemon's process.
    assert value(s, "process_cpu_seconds_total") > 0
    assert value(s, "process_open_fds") > 0
    # A second scrape sees the close.
    s2 = wait_until(lambda: (lambda x: x if value(x, "venet_device_open", **base) == 0 else None)(scrape(d.port)),
                    what="the device closed in the metrics")
    assert value(s2, "venet_device_frames_total", direction="tx", **base) == 50


def test_daemon_logs_json_events_with_fields(metered):
    d = metered
    d.req("bus-create", name="j")
    d.req("device-create", name="lj", **{"class": "venet-loopback"})
    d.req("bus-link", bus="j", device="lj")
    if os.geteuid() != 0:
        d.req("bus-allow", bus="j", uid=os.geteuid())
    with frontend.connect(d.sock("j")) as bus:
        bus.open("lj")
        with pytest.raises(Exception):
            bus.open("nosuch")

    def events():
        out = [json.loads(ln) for ln in d.log().splitlines() if ln.strip()]
        got = {e.get("event") for e in out}
        return out if {"opened", "open", "link_up", "refused", "reset", "closed"} <= got else None
    lines = wait_until(events, what="the daemon's event lines")
    by = {e["event"]: e for e in lines if "event" in e}
    assert by["open"]["bus"] == "j" and by["open"]["device"] == "lj"
    assert by["open"]["peer"]["pid"] == os.getpid() and by["open"]["level"] == "info"
    assert by["refused"]["level"] == "warning" and "nosuch" in by["refused"]["message"]
    assert by["reset"]["device"] == "lj"
    assert any("metrics on http://127.0.0.1:" in e["message"] for e in lines)
    for e in lines:                             # every line one object with the fixed keys
        assert {"time", "level", "logger", "message", "program"} <= set(e)


def test_metrics_port_in_use_is_one_line_exit_2(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        r = subprocess.run([sys.executable, "-m", "venet", "daemon", "--run-dir", str(tmp_path / "run"),
                            "--metrics", f"127.0.0.1:{port}", "--log-level", "warning"],
                           cwd=REPO, capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        taken.close()
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("venet: error: metrics: cannot listen on 127.0.0.1:")
    assert "Address already in use" in lines[0]
    assert not os.path.exists(tmp_path / "run" / "admin.sock")     # nothing left behind


def test_no_metrics_by_default(tmp_path):
    d = DaemonProc()
    try:
        conns = [ln for ln in open(f"/proc/{d.pid}/net/tcp").read().splitlines()[1:]]
        # The daemon opened no TCP listener of its own.
        inodes = {os.readlink(f"/proc/{d.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{d.pid}/fd")}
        listening = [c for c in conns if c.split()[3] == "0A" and f"socket:[{c.split()[9]}]" in inodes]
        assert listening == []
        assert "metrics" not in d.log()
    finally:
        d.cleanup()


def test_scrape_is_answered_while_frames_flow(metered):
    """Scrapes under traffic: every one answered (venet_scrape_ok 1) and
    the counters only grow."""
    d = metered
    d.req("bus-create", name="f")
    d.req("device-create", name="lf", **{"class": "venet-loopback"})
    d.req("bus-link", bus="f", device="lf")
    if os.geteuid() != 0:
        d.req("bus-allow", bus="f", uid=os.geteuid())
    base = dict(bus="f", device="lf", **{"class": "venet-loopback"})
    with frontend.connect(d.sock("f")) as bus:
        dev = bus.open("lf")
        stop = threading.Event()

        def traffic():
            for i in range(200000):
                if stop.is_set():
                    return
                dev.send(frame(100, i), timeout=1)
                dev.recv(timeout=1)
        t = threading.Thread(target=traffic)
        t.start()
        try:
            last = -1
            deadline = time.monotonic() + 3
            n = 0
            while time.monotonic() < deadline and n < 20:
                s = scrape(d.port)
                assert value(s, "venet_scrape_ok") == 1
                v = value(s, "venet_device_frames_total", direction="tx", **base)
                assert v >= last
                last = v
                n += 1
            assert last > 0 and n >= 2
        finally:
            stop.set()
            t.join(10)


def test_a_closed_snapshot_fails_scrapes_at_once():
    snap = metrics.LoopSnapshot(lambda: [])
    snap.close()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stopped"):
        snap.take(5)
    assert time.monotonic() - t0 < 4          # not the timeout: it knows
    snap.close()                               # twice is harmless


def test_text_and_json_log_lines_carry_the_event_fields():
    import io
    import logging

    from venet import logs

    class Conn:
        id, pid, uid, gid = 3, 42, 1000, 1000
    root = logging.getLogger()
    for as_json in (False, True):
        out = io.StringIO()
        saved = root.handlers[:], root.level        # setup() takes the root logger over
        try:
            logs.setup("venet test", "info", as_json, stream=out)
            logging.getLogger("venet.logtest").info("device %s opened", "d0",
                                                    extra=logs.fields("open", "b0", "d0", Conn()))
            logging.getLogger("venet.logtest").debug("not shown at info")
        finally:
            root.handlers[:] = saved[0]
            root.setLevel(saved[1])
        (line,) = out.getvalue().splitlines()
        if as_json:
            e = json.loads(line)
            assert e["message"] == "device d0 opened" and e["event"] == "open" and e["bus"] == "b0"
            assert e["device"] == "d0" and e["peer"] == {"conn": 3, "pid": 42, "uid": 1000, "gid": 1000}
            assert e["program"] == "venet test" and e["level"] == "info"
        else:
            assert line == ("venet test: device d0 opened [event=open bus=b0 device=d0 "
                            "peer=conn:3,pid:42,uid:1000,gid:1000]")
