import json
import subprocess
import sys

from tests.conftest import needs_root, wait_until
from tests.net.conftest import ROOT, netns_names, new_netns


@needs_root
def test_bench_e2e_one_short_topology(tmp_path):
    """Smoke: venet built, measured by every client, and torn down."""
    out = tmp_path / "e2e.json"
    before = netns_names()
    r = subprocess.run([sys.executable, "-m", "venet", "bench", "e2e", "--quick", "--topologies",
                        "venet", "--json", str(out), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    got = {(row["client"], row["metric"]) for row in rows}
    for need in [("sockperf-64", "rtt_us_p50"), ("sockperf-1400", "rtt_per_s"),
                 ("ping-f", "rtt_us_avg"), ("iperf3-mtu1500", "gbit_per_s"), ("idle", "cpu_percent")]:
        assert need in got
    assert all(row["value"] > 0 for row in rows if row["metric"] != "cpu_percent")
    assert (tmp_path / "out" / "rtt.png").stat().st_size > 0
    assert (tmp_path / "out" / "e2e.md").read_text().count("| venet |") >= 5
    assert new_netns(before, "vnb") == []           # the bench's lab (bench/e2e.py) is gone


def test_unknown_topology_is_a_usage_error():
    r = subprocess.run([sys.executable, "-m", "venet", "bench", "e2e", "--topologies", "nope"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "unknown topology" in r.stderr and "Traceback" not in r.stderr


@needs_root
def test_bench_e2e_sigterm_cleans_up():
    """Stopped mid-run (SIGTERM), the bench removes its namespaces and
    processes, like Ctrl-C."""
    import signal
    before = netns_names()
    p = subprocess.Popen([sys.executable, "-m", "venet", "bench", "e2e", "--quick", "--topologies",
                          "venet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # Mid-run: once its lab exists and an attach process runs in one of
        # its namespaces (the bench is then measuring, or about to).
        wait_until(lambda: any(_running_with(["attach", ns]) for ns in new_netns(before, "vnb")),
                   60, "the bench's lab with its attach process")
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        left = new_netns(before, "vnb")
        _remove_leftovers(left)
    assert not left, f"namespaces left behind: {left}"


def _running_with(words):
    """Is a process running whose command line holds all these words?"""
    import os
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if all(w in argv for w in words):
            return True
    return False


def _remove_leftovers(namespaces):
    """If the bench failed to clean up, this test still must: kill the
    processes started for those namespaces (by pid) and remove them."""
    import os
    import signal
    from pyroute2 import netns as nslib
    for ns in namespaces:
        pids = subprocess.run(["pgrep", "-f", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        nslib.remove(ns)


@needs_root
def test_bench_syscalls_smoke(tmp_path):
    """Smoke: every call measured in a namespace of its own, which is gone after."""
    out = tmp_path / "sys.json"
    before = netns_names()
    r = subprocess.run([sys.executable, "-m", "venet", "bench", "syscalls", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row["value"] for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"syscall", "read-empty", "write-60", "write-1514", "write-gso"}
    assert all(v > 0 for v in rows.values())
    assert new_netns(before, "vns") == []           # the bench's lab (bench/syscalls.py) is gone
