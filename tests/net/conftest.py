"""Fixtures for tests that need root: throwaway network namespaces and
processes started (and killed, by pid) by the test itself.  Every tap, veth
and address lives inside a namespace made here; nothing touches the root
namespace, and everything is removed even when a test fails."""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from tests.conftest import IS_ROOT

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces and taps")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def netns():
    """Factory: netns() -> a fresh namespace name, removed at teardown."""
    if not IS_ROOT:
        pytest.skip("needs root for network namespaces and taps")
    from pyroute2 import netns as nslib
    made = []

    def make():
        name = f"vnt-{uuid.uuid4().hex[:8]}"
        nslib.create(name)
        made.append(name)
        with ns_ipr(name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    yield make
    for name in made:
        try:
            nslib.remove(name)
        except OSError:
            pass


def ns_ipr(name):
    from pyroute2 import IPRoute
    return IPRoute(netns=name)


def add_addr(ns, ifname, addr, prefix=24, wait=5.0):
    deadline = time.monotonic() + wait
    with ns_ipr(ns) as ipr:
        while True:
            idx = ipr.link_lookup(ifname=ifname)
            if idx or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert idx, f"{ifname} did not appear in {ns}"
        ipr.addr("add", index=idx[0], address=addr, prefixlen=prefix)
        ipr.link("set", index=idx[0], state="up")


class Procs:
    """Processes a test starts; each is killed by its own pid at teardown."""

    def __init__(self):
        self.procs = []

    def venet(self, *args, ready=True, timeout=20, **kw):
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        p = subprocess.Popen([sys.executable, "-m", "venet", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, **kw)
        self.procs.append(p)
        if ready:
            line = _readline(p, timeout)
            if not line.startswith("ready"):
                p.kill()
                err = p.stderr.read()
                raise AssertionError(f"venet {' '.join(args)} did not start: {line!r} {err}")
        return p

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()


def _readline(p, timeout):
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        return ""
    return p.stdout.readline()


@pytest.fixture
def procs():
    pr = Procs()
    yield pr
    pr.cleanup()


@pytest.fixture
def sockdir(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path
