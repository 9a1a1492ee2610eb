"""STATS in pages (docs/abi.md, "STATS pages"): a bus of any number of used
devices is listed whole by `venet stats`, `--watch` and the frontend API,
each reply within the protocol's 64 KiB, never refused for size; zero
counters stay off the wire and read as 0 on the client; the --metrics
scrape (not a STATS reply) sees every device too.

No root: a bridge.Bridge of stand-in devices in a thread for the protocol,
and a `venet daemon` with 256 venet-loopback devices that all carried a
frame for the commands."""
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.test_daemon import REPO, DaemonProc, frame
from tests.test_metrics import free_port, scrape
from venet import bridge, control, metrics
from venet import frontend as fe

ENV = dict(os.environ, PYTHONPATH=str(REPO))


class StandIn:
    """What a bridge asks of a device for LIST and STATS, with as many
    counters as a used tap (half of them zero)."""

    def __init__(self, name, ncounters=48, big=False):
        self.name = name
        self.pool = None
        self.counters = {f"counter_{j:02d}": (0 if j % 2 else 10 ** 12 + j) for j in range(ncounters)}
        if big:         # an entry no reply can hold
            self.counters = {f"c{j:05d}_" + "x" * 40: j + 1 for j in range(2000)}

    def stats(self):
        return {"device": self.name, "tap": "stand-in", "link": True, "busy": False,
                "counters": dict(self.counters), "worker_cpu": None}

    def describe(self):
        return {"name": self.name, "type": "virtual-ethernet", "mac": "02:00:00:00:00:01", "mtu": 1500,
                "busy": False, "link": True, "offloads": ""}

    def close(self):
        pass


@pytest.fixture
def serve(tmp_path):
    """serve(devices) -> the socket path of a bridge on bus b0 serving them
    in a thread (stopped and closed at the end)."""
    running = []

    def start(devices):
        path = str(tmp_path / f"b{len(running)}.sock")
        b = bridge.Bridge(path, devices, bus="b0")
        b.listen()
        t = threading.Thread(target=b.serve, daemon=True)
        t.start()
        running.append((b, t))
        return path

    yield start
    for b, t in running:
        b.stop()
        t.join(10)
        b.close()


def raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(10)
    s.connect(path)
    control.call(s, control.HELLO, {"version": control.VERSION})
    return s


def stats(s, body=None):
    """One STATS exchange: (reply body, its encoded size)."""
    control.send(s, control.STATS, body)
    mtype, reply, fds = control.recv(s)
    assert not fds
    if mtype == control.ERROR:
        raise control.RemoteError(reply["error"])
    assert mtype == control.REPLY, mtype
    return reply, len(control.encode(mtype, reply))


NAMES = [f"d{i:03d}" for i in range(300)]


def test_a_plain_stats_gets_the_first_page_and_more(serve):
    # Shuffled order on the bus: a page is in name order.
    path = serve([StandIn(n) for n in reversed(NAMES)])
    with raw(path) as s:
        page, size = stats(s)
    assert size <= control.HDR.size + control.MAX_REPLY_BODY
    assert page["more"] is True and page["bus"] == "b0"
    got = [d["device"] for d in page["devices"]]
    assert 0 < len(got) < len(NAMES) and got == NAMES[:len(got)]
    for d in page["devices"]:
        assert d["counters"] and all(v for v in d["counters"].values())     # zeros left out
        assert "counter_01" not in d["counters"] and d["counters"]["counter_00"] == 10 ** 12
    assert page["control"]["connections"] == 1 and page["control"]["refused_max_connections"] == 0


def test_pages_cover_every_device_once_each_within_a_reply(serve):
    path = serve([StandIn(n) for n in NAMES])
    seen, pages, after = [], 0, None
    with raw(path) as s:
        while True:
            page, size = stats(s, {} if after is None else {"after": after})
            pages += 1
            assert size <= control.HDR.size + control.MAX_REPLY_BODY
            assert page["devices"]
            seen += [d["device"] for d in page["devices"]]
            after = seen[-1]
            if not page["more"]:
                break
            assert pages < 50
    assert seen == NAMES and pages >= 3


def test_limit_device_and_a_cursor_between_names(serve):
    path = serve([StandIn(n) for n in NAMES])
    with raw(path) as s:
        page, _ = stats(s, {"limit": 3, "after": "d1"})     # d1 < d100: names after it, not a device
        assert [d["device"] for d in page["devices"]] == ["d100", "d101", "d102"] and page["more"]
        page, _ = stats(s, {"after": "d299"})
        assert page["devices"] == [] and page["more"] is False
        page, _ = stats(s, {"device": "d042", "after": "d100", "limit": 1})
        assert [d["device"] for d in page["devices"]] == ["d042"] and page["more"] is False
        with pytest.raises(control.RemoteError, match="no device 'nope' on bus b0"):
            stats(s, {"device": "nope"})
        page, _ = stats(s, {"limit": 1})                    # refused, and the connection serves on
        assert [d["device"] for d in page["devices"]] == ["d000"]


@pytest.mark.parametrize("body,why", [
    ({"limit": 0}, "field 'limit'=0 out of range"),
    ({"limit": "2"}, "field 'limit' must be an integer"),
    ({"after": 5}, "field 'after' must be a string"),
    ({"device": "x" * 65}, "field 'device' longer than 64"),
])
def test_a_bad_field_is_a_violation_with_its_reason(serve, body, why):
    path = serve([StandIn(n) for n in NAMES[:3]])
    with raw(path) as s:
        with pytest.raises(control.RemoteError, match=why):
            stats(s, body)
        with pytest.raises(control.Disconnected):
            control.recv(s)


def test_a_device_too_large_for_a_reply_alone_is_named_not_refused(serve):
    path = serve([StandIn("a"), StandIn("b", big=True), StandIn("c")])
    assert len(json.dumps(StandIn("b", big=True).stats())) > control.MAX_REPLY_BODY
    with fe.connect(path) as bus:
        s = bus.stats()
    assert [d["device"] for d in s["devices"]] == ["a", "b", "c"]
    b = s["devices"][1]
    assert b["truncated"] is True and b["counters"] == {} and b["link"] is True
    assert s["devices"][2]["counters"]["counter_00"] == 10 ** 12


def test_the_frontend_merges_the_pages_and_reads_an_absent_counter_as_zero(serve):
    path = serve([StandIn(n) for n in NAMES])
    with fe.connect(path) as bus:
        s = bus.stats()
        one = bus.stats(device="d007")
        with pytest.raises(control.RemoteError, match="no device 'zz' on bus b0"):
            bus.stats(device="zz")
    assert [d["device"] for d in s["devices"]] == NAMES and "more" not in s
    c = s["devices"][5]["counters"]
    assert c["counter_01"] == 0 and "counter_01" not in c and c.get("counter_01") is None
    assert c["counter_02"] == 10 ** 12 + 2
    assert [d["device"] for d in one["devices"]] == ["d007"] and "more" not in one


def test_pumps_wedged_is_exported_with_its_meaning():
    snap = [{"bus": "b0", "control": {}, "devices": [
        {"device": "d0", "class": "venet-tap", "link": True, "busy": False,
         "counters": {"pumps_wedged": 1, "to_tap_frames": 3}}]}]
    fams = {f.name: f for f in metrics.families(snap)}
    f = fams["venet_device_pumps_wedged"]
    assert "did not let them go" in f.documentation and f.type == "counter"
    assert [s.value for s in f.samples] == [1]


# ---- a daemon bus of 256 used loopback devices ------------------------------

N_LOOP = 256


@pytest.fixture
def used_bus():
    """A daemon (metrics on 127.0.0.1) with bus t of N_LOOP loopback
    devices, each of which carried one frame each way."""
    port = free_port()
    d = DaemonProc(extra=["--metrics", f"127.0.0.1:{port}"])
    try:
        d.req("bus-create", name="t")
        if os.geteuid() != 0:
            d.req("bus-allow", bus="t", uid=os.geteuid())
        names = [f"l{i:03d}" for i in range(N_LOOP)]
        for n in names:
            d.req("device-create", name=n, **{"class": "venet-loopback"})
            d.req("bus-link", bus="t", device=n)
        with fe.connect(d.sock("t")) as bus:
            for i, n in enumerate(names):
                with bus.open(n, ring_size=64) as dev:
                    assert dev.send(frame(100, i), timeout=5)
                    assert dev.recv(timeout=5) == frame(100, i)
        yield d, port, names
    finally:
        d.cleanup()


def test_256_used_devices_are_listed_by_stats_watch_and_the_scrape(used_bus):
    d, port, names = used_bus
    with raw(d.sock("t")) as s:
        first, size = stats(s)
    assert first["more"] is True and len(first["devices"]) < N_LOOP     # more than one page
    assert size <= control.HDR.size + control.MAX_REPLY_BODY

    r = subprocess.run([sys.executable, "-m", "venet", "stats", "--json", "--bus", "t",
                        "--run-dir", d.run_dir], cwd=REPO, capture_output=True, text=True,
                       timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [x["device"] for x in out["devices"]] == names
    for x in out["devices"]:
        c = x["counters"]
        assert c["to_tap_frames"] == 1 and c["from_tap_frames"] == 1 and c["to_tap_bytes"] == 100, x
        assert all(v for v in c.values())

    r = subprocess.run([sys.executable, "-m", "venet", "stats", "--watch", "--count", "2", "--interval",
                        "0.2", "--json", "--bus", "t", "--run-dir", d.run_dir], cwd=REPO,
                       capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    samples = [json.loads(ln) for ln in r.stdout.strip().splitlines()]
    assert len(samples) == 2
    for sample in samples:
        assert [x["device"] for x in sample["devices"]] == names
        assert all(x["tx_frames"] == 0 and x["drops"] == 0 for x in sample["devices"])

    r = subprocess.run([sys.executable, "-m", "venet", "stats", "--bus", "t", "--run-dir", d.run_dir],
                       cwd=REPO, capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0, r.stderr
    assert sum(ln.startswith("device l") for ln in r.stdout.splitlines()) == N_LOOP

    samples = scrape(port)
    assert samples[("venet_scrape_ok", ())] == 1
    up = {dict(k[1])["device"] for k in samples if k[0] == "venet_device_link_up"}
    assert up == set(names)
    for n in names:
        labels = {"bus": "t", "device": n, "class": "venet-loopback", "direction": "tx"}
        assert samples[("venet_device_frames_total", tuple(sorted(labels.items())))] == 1


def test_list_pages_cover_a_bus_of_any_size(serve):
    """LIST is paged like STATS: 1000 devices (a reply holds a few hundred
    descriptions) are listed whole by the frontend, each reply within the
    limit; a plain LIST gets the first page and `more`."""
    names = [f"d{i:04d}" for i in range(1000)]
    path = serve([StandIn(n) for n in names])
    with raw(path) as s:
        control.send(s, control.LIST, {})
        mtype, first, _ = control.recv(s)        # recv checks the reply's limit
        assert mtype == control.REPLY
        assert first["more"] is True and 0 < len(first["devices"]) < 1000
    with fe.connect(path) as bus:
        got = [d["name"] for d in bus.list()]
    assert got == names
