"""Fixtures for tests that need root, on top of venet.topology.Lab: every
namespace, tap, veth, address and process a test makes lives in its lab
and is removed (processes killed by pid) at teardown, pass or fail.  Nothing
touches the root namespace."""
import os
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import IS_ROOT
from venet.topology import ROOT, Lab, add_addr, ping, run_in  # noqa: F401 (re-exported)

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


def ns_python_bg(ns, code):
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: _enter(ns))


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
