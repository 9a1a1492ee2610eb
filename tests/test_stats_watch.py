"""`venet stats --watch`: rates from counter differences over measured
intervals; plain lines when stdout is not a terminal, a rich table on a
terminal (a pty here), JSON lines; Ctrl-C ends it cleanly.  Against a
daemon's loopback device (no root)."""
import json
import os
import pty
import selectors
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.test_daemon import REPO, DaemonProc, frame
from venet import frontend
from venet.service import rates

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def dev_stats(name, link=True, **counters):
    return {"device": name, "link": link, "busy": True, "counters": counters}


def test_rates_are_differences_over_the_interval():
    prev = {"devices": [dev_stats("a", to_tap_frames=100, to_tap_bytes=1000, from_tap_frames=5,
                                  drop_short=1, drop_tap_write=0, **{"in_ring.kicks_sent": 3,
                                                                     "out_ring.kicks_sent": 4})]}
    cur = {"devices": [dev_stats("a", to_tap_frames=300, to_tap_bytes=21000, from_tap_frames=5,
                                 drop_short=5, drop_tap_write=0, **{"in_ring.kicks_sent": 13,
                                                                    "out_ring.kicks_sent": 14,
                                                                    "in_ring.bad_total": 2}),
                       dev_stats("new", to_tap_frames=10)]}
    a, new = rates(prev, cur, 2.0)
    assert a["tx_frames"] == 100 and a["tx_bytes"] == 10000 and a["rx_frames"] == 0
    assert a["kicks"] == 10
    assert a["drops_by"] == {"short": 2, "in_ring_bad": 1} and a["drops"] == 3
    assert new["tx_frames"] == 5        # a device new since the last sample: from zero


def test_a_counter_that_went_back_restarts_from_zero():
    prev = {"devices": [dev_stats("a", to_tap_frames=1000)]}
    cur = {"devices": [dev_stats("a", to_tap_frames=10)]}      # recreated
    (a,) = rates(prev, cur, 1.0)
    assert a["tx_frames"] == 10


@pytest.fixture
def busy():
    """A daemon with bus t, loopback lo0, and a frontend moving frames
    (bounded in count) until the test ends."""
    d = DaemonProc()
    d.req("bus-create", name="t")
    d.req("device-create", name="lo0", **{"class": "venet-loopback"})
    d.req("bus-link", bus="t", device="lo0")
    if os.geteuid() != 0:
        d.req("bus-allow", bus="t", uid=os.geteuid())
    bus = frontend.connect(d.sock("t"))
    dev = bus.open("lo0")
    stop = threading.Event()

    def traffic():
        for i in range(500000):
            if stop.is_set():
                return
            if dev.send(frame(100, i), timeout=1):
                dev.recv(timeout=1)
    t = threading.Thread(target=traffic)
    t.start()
    wait_until(lambda: dev.stats()["tx"].get("ops", 0) > 0, what="traffic")
    yield d
    stop.set()
    t.join(10)
    bus.close()
    d.cleanup()


def watch(d, *extra, timeout=30):
    return subprocess.run([sys.executable, "-m", "venet", "stats", "--watch", "--bus", "t",
                           "--run-dir", d.run_dir, *extra], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def test_plain_lines_when_not_a_terminal(busy):
    r = watch(busy, "--interval", "0.2", "--count", "3")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all(" lo0 link up tx " in ln for ln in lines), r.stdout
    rate = float(lines[-1].split(" tx ")[1].split()[0])
    assert rate > 0
    assert "drops 0.0/s" in lines[-1] and " kicks " in lines[-1]


def test_json_lines(busy):
    r = watch(busy, "--interval", "0.2", "--count", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(ln) for ln in r.stdout.strip().splitlines()]
    assert len(rows) == 2
    for row in rows:
        (d,) = row["devices"]
        assert d["device"] == "lo0" and d["tx_frames"] > 0 and d["tx_bytes"] == pytest.approx(
            100 * d["tx_frames"], rel=0.01)
        assert row["interval"] >= 0.2 * 0.9


def _run_in_pty(argv, timeout=30):
    """argv with stdout on a pseudo-terminal; returns (status, output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, cwd=REPO, stdout=slave, stderr=subprocess.PIPE, env=dict(ENV, COLUMNS="160"))
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(master, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if sel.select(0.1):
                    try:
                        chunk = os.read(master, 65536)
                    except OSError:         # EIO: the child closed its side
                        break
                    if not chunk:
                        break
                    out += chunk
                elif p.poll() is not None:
                    break
        p.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)
        err = p.stderr.read().decode()
        p.stderr.close()
    return p.returncode, out.decode(errors="replace"), err


def test_a_rich_table_on_a_terminal(busy):
    code, out, err = _run_in_pty([sys.executable, "-m", "venet", "stats", "--watch", "--bus", "t",
                                  "--run-dir", busy.run_dir, "--interval", "0.2", "--count", "2"])
    assert code == 0, err
    assert "tx frames/s" in out and "drops by reason" in out and "lo0" in out
    assert "\x1b[" in out           # updated in place: terminal control sequences


def test_ctrl_c_ends_cleanly(busy):
    p = subprocess.Popen([sys.executable, "-m", "venet", "stats", "--watch", "--bus", "t",
                          "--run-dir", busy.run_dir, "--interval", "0.2"], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(p.stdout, selectors.EVENT_READ)
            assert sel.select(15), "no line within 15 s"
        assert " lo0 " in p.stdout.readline()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0 and "Traceback" not in err, err


def test_the_bridge_going_away_ends_the_watch_with_one_line():
    d = DaemonProc()
    try:
        d.req("bus-create", name="t")
        p = subprocess.Popen([sys.executable, "-m", "venet", "stats", "--watch", "--bus", "t",
                              "--run-dir", d.run_dir, "--interval", "0.1"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        try:
            wait_until(lambda: len(d.req("tree")["buses"]["t"]["connections"]) == 1,
                       what="the watcher's connection")
            d.stop()
            out, err = p.communicate(timeout=15)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        assert p.returncode == 1
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "went away" in lines[0], err
    finally:
        d.cleanup()
