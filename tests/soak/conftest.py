"""Helpers of the fault and load loops (opt-in: `make soak`, marker `soak`).

Every loop is bounded in count and time, makes its own namespaces (through
tests.lab.Lab), and kills only the processes it started, by pid.  What
a process holds is counted from /proc: its fds by kind (memfds, eventfds,
sockets), its threads, its resident memory; taps and link counters are
read inside the loop's own namespaces (with `ip -j`).  Each loop prints one
summary line starting with "soak:" (run pytest with -s to see them; `make
soak` does), also appended to the file SOAK_LOG names, if set.
"""
import collections
import json
import os
import signal
import subprocess
import threading

import pytest

from tests.conftest import IS_ROOT
from tests.lab import Lab
from tests.conftest import wait_until as wait_for  # noqa: F401 (the soak tests import it from here)

# SOAK_MINUTES: length of the iperf3 + ping run (default 10; 1 for a quick check).
MINUTES = float(os.environ.get("SOAK_MINUTES", "10"))


def env_int(name, default):
    """An integer knob of the loops (a smaller count for a quick check)."""
    return int(os.environ.get(name, default))


def summary(name, **figures):
    """The loop's one-line result, for the closing note."""
    parts = " ".join(f"{k}={_fmt(v)}" for k, v in figures.items())
    line = f"soak: {name}: {parts}"
    print("\n" + line, flush=True)      # on a line of its own after pytest's dots
    log = os.environ.get("SOAK_LOG")
    if log:
        with open(log, "a") as f:
            f.write(line + "\n")
    return line


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fd_kinds(pid):
    """What `pid` holds, from /proc: fds, memfds, eventfds, sockets, threads."""
    counts = {"fds": 0, "memfds": 0, "eventfds": 0, "sockets": 0, "threads": 0}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue            # closed between listdir and readlink
        counts["fds"] += 1
        if target.startswith("/memfd:"):
            counts["memfds"] += 1
        elif target == "anon_inode:[eventfd]":
            counts["eventfds"] += 1
        elif target.startswith("socket:"):
            counts["sockets"] += 1
    counts["threads"] = len(os.listdir(f"/proc/{pid}/task"))
    return counts


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def taps(ns):
    """Names of the tun/tap links in namespace `ns` (`ip -j -d link` run
    inside it: a pyroute2 socket made for a namespace now and then did not
    see links that were there, on this host)."""
    from tests.lab import run_in
    r = run_in(ns, ["ip", "-j", "-d", "link", "show"], timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"ip link in {ns}: {r.stderr.strip()}")
    return sorted(link["ifname"] for link in json.loads(r.stdout)
                  if link.get("linkinfo", {}).get("info_kind") == "tun")


def link_stats(ns, ifname):
    """The kernel's packet counters of `ifname` in `ns` (stats64), from
    `ip -j -s link` run inside the namespace."""
    from tests.lab import run_in
    r = run_in(ns, ["ip", "-j", "-s", "link", "show", "dev", ifname], timeout=10)
    if r.returncode != 0:
        raise RuntimeError(f"{ifname} in {ns}: {r.stderr.strip()}")
    st = json.loads(r.stdout)[0]["stats64"]
    return {f"{d}_{k}": st[d][k] for d in ("rx", "tx") for k in ("packets", "dropped", "errors")}


def same_as(baseline, pid, keys=("fds", "memfds", "eventfds", "sockets", "threads")):
    """A predicate for wait_for: `pid`'s /proc counts equal `baseline`."""
    last = {}

    def check():
        last.clear()
        last.update(fd_kinds(pid))
        return all(last[k] == baseline[k] for k in keys)
    check.last = last
    return check


def drain(p):
    """Keep reading a started process's stdout and stderr (a daemon that
    logs a line per refused client must never block on a full pipe); the
    last lines are in p.tail.  Returns p."""
    p.tail = collections.deque(maxlen=100)
    for f in (p.stdout, p.stderr):
        if f is not None:
            threading.Thread(target=_pump_lines, args=(f, p.tail), daemon=True).start()
    return p


def _pump_lines(f, tail):
    try:
        for line in f:
            tail.append(line.rstrip("\n"))
    except (OSError, ValueError):
        pass                # closed by reap()


def last_words(p):
    """The last lines a drained process wrote (for failure messages)."""
    return " | ".join(list(getattr(p, "tail", ()))[-8:])


def kill9(p):
    """SIGKILL one process we started (by its pid) and reap it."""
    if p.poll() is None:
        os.kill(p.pid, signal.SIGKILL)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def reap(lab, p):
    """Forget a process the lab started once it is dead (closes its pipes)."""
    kill9(p)
    for f in (p.stdout, p.stderr):
        if f:
            f.close()
    if p in lab.procs:
        lab.procs.remove(p)


@pytest.fixture
def lab():
    if not IS_ROOT:
        pytest.skip("needs root for network namespaces and taps")
    lab = Lab("vsk")
    yield lab
    lab.close()
