"""Fixtures for tests that need root, on top of tests.lab.Lab: every
namespace, tap, veth, address and process a test makes lives in its lab
and is removed (processes killed by pid) at teardown, pass or fail.  Nothing
touches the root namespace."""
import os
import pathlib
import selectors
import subprocess
import sys
import time

import pytest

from tests.conftest import IS_ROOT
from tests.lab import ROOT, Lab, add_addr, ping, run_in  # noqa: F401 (re-exported)

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces and taps")


@pytest.fixture
def lab():
    if not IS_ROOT:
        pytest.skip("needs root for network namespaces and taps")
    lab = Lab("vnt")
    yield lab
    lab.close()


@pytest.fixture
def netns(lab):
    """Factory: netns() -> a fresh namespace name."""
    names = iter(range(100))
    return lambda: lab.netns(f"n{next(names)}")


@pytest.fixture
def procs(lab):
    """Starts `venet ...` processes (lab.venet waits for 'ready')."""
    return lab


@pytest.fixture
def sockdir(lab):
    return pathlib.Path(lab.tmp)


def ns_ipr(name):
    from pyroute2 import IPRoute
    return IPRoute(netns=name)


def ns_python(ns, code, timeout=20):
    r = run_in(ns, [sys.executable, "-c", code], timeout=timeout)
    assert r.returncode == 0, r.stderr
    return r.stdout


def ns_python_bg(ns, code, ready=None, timeout=10):
    """Start `python -c code` in namespace ns.  With `ready`, wait (at most
    `timeout` s) until a line of its stdout contains it: the code prints
    it once it listens, so the caller need not guess how long that takes.
    The lines up to it are consumed; communicate() returns the rest."""
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         preexec_fn=lambda: _enter(ns))
    if ready is None:
        return p
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(p.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            line = p.stdout.readline() if left > 0 and sel.select(left) else ""
            if ready in line:
                return p
            if not line:
                p.kill()
                p.communicate()
                raise AssertionError(f"the helper in {ns} did not say {ready!r} within {timeout} s")


def _enter(ns):
    from pyroute2 import netns as nslib
    nslib.setns(ns)


def thread_cpus(pid):
    """{thread id: its Cpus_allowed_list} for every thread of `pid`."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    out[tid] = line.split()[1]
    return out


def netns_names():
    """The names of the network namespaces that exist now (ip netns list)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=30).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def new_netns(before, prefix):
    """Namespaces named `prefix`-... that exist now and did not at `before`
    (a netns_names() result): the ones a command that names its lab
    `prefix` made and has not removed.  Namespaces other programs make or
    remove meanwhile do not count."""
    return sorted(n for n in netns_names() - before if n.startswith(prefix + "-"))
