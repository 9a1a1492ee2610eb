import json
import subprocess
import sys

import pytest



def run(*args):
    return subprocess.run([sys.executable, "-m", "venet", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args,msg", [
    (["bench", "ring", "--cpus", "x"], "--cpus wants two CPU numbers"),
    (["bench", "ring", "--cpus", "0,999"], "CPU 999 is not available"),
    (["bench", "ring", "--cpus", "0,0"], "two different CPUs"),
    (["bench", "notify", "--cpus", "999,0"], "CPU 999 is not available"),
    (["bench", "nothing"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_exit_2_with_one_line(args, msg):
    r = run(*args)
    assert r.returncode == 2
    assert msg in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_ring_quick_json(tmp_path):
    """Smoke: the whole ring benchmark, a tenth of the counts."""
    out = tmp_path / "ring.json"
    r = run("bench", "ring", "--quick", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    names = {row["name"] for row in rows}
    for need in ["ioq-pingpong-poll", "ioq-pingpong-signal", "spin-pingpong-c", "eventfd-pingpong",
                 "pipe-pingpong", "mp-pipe-pingpong", "ioq-stream-b1", "ioq-stream-b32",
                 "ioq-stream-b256", "spsc-stream-c-b1", "spsc-stream-c-b32", "ioq-stream-py-b1",
                 "ioq-stream-py-b32", "faster-fifo-b1", "faster-fifo-b32"]:
        assert need in names
    for row in rows:
        assert row["value"] is None or row["value"] > 0
    assert "ioq-pingpong-poll" in r.stdout


def test_bench_notify_quick_json(tmp_path):
    """Smoke: the RFC's experiment, every strategy, a tenth of the counts."""
    out = tmp_path / "notify.json"
    r = run("bench", "notify", "--quick", "--json", str(out))
    assert r.returncode == 0, r.stderr
    rows = {(row["name"], row["metric"]): row["value"] for row in json.loads(out.read_text())["rows"]}
    for s in ("poll", "shmsignal", "always-kick", "timer"):
        assert rows[(f"{s}-pingpong", "rtt_ns_p50")] > 0
        assert rows[(f"{s}-stream-b32", "msgs_per_s")] > 0
    # What each strategy is: polling and timers never kick; always-kick kicks
    # for every message of a ping-pong; shmsignal no more often than that.
    assert rows[("poll-pingpong", "kicks_per_msg")] == 0
    assert rows[("timer-stream-b32", "kicks_per_msg")] == 0
    assert rows[("always-kick-pingpong", "kicks_per_msg")] >= 1
    assert rows[("shmsignal-stream-b32", "kicks_per_msg")] < rows[("always-kick-stream-b32", "kicks_per_msg")]
