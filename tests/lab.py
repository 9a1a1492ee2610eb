"""Throwaway network labs: namespaces, veth pairs, venet processes and
addresses, all removed by close() (also when something failed half-way).

Used by `venet demo`, the benchmarks (bench/) and the tests that need root
(tests/net, tests/soak); not part of the installed package.  Addresses are
whatever the caller gives (10.77.x.y by convention) and live only inside
the namespaces made here; processes are killed by their own pids.  The
venet processes run from this checkout (ROOT).
"""
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Lab:
    def __init__(self, prefix="venet"):
        self.prefix = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.tmp = tempfile.mkdtemp(prefix=f"{prefix}-")
        os.chmod(self.tmp, 0o755)
        self.namespaces = []
        self.procs = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def netns(self, name):
        """Create namespace <prefix>-<name> with lo up; returns its name."""
        from pyroute2 import IPRoute
        from pyroute2 import netns as nslib
        full = f"{self.prefix}-{name}"
        nslib.create(full)
        self.namespaces.append(full)
        with IPRoute(netns=full) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return full

    def socket_path(self, name="bus"):
        return os.path.join(self.tmp, f"{name}.sock")

    def venet(self, *args, timeout=20):
        """Start `python -m venet ARGS` and wait for its 'ready' line."""
        return self.start([sys.executable, "-m", "venet", *args], timeout=timeout)

    def addr(self, ns, ifname, addr, prefixlen=24, mtu=None):
        add_addr(ns, ifname, addr, prefixlen, mtu=mtu)

    def start(self, argv, ns=None, ready="ready", timeout=20, stdin=None):
        """Start a helper process (in `ns` if given); with `ready`, wait
        until a line of its stdout contains it."""
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=stdin, preexec_fn=_setns(ns) if ns else None, cwd=ROOT,
                             env=_env(), start_new_session=True)
        self.procs.append(p)
        if ready:
            sel = selectors.DefaultSelector()
            sel.register(p.stdout, selectors.EVENT_READ)
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                line = p.stdout.readline() if left > 0 and sel.select(left) else ""
                if ready in line:
                    break
                if not line:
                    p.kill()
                    p.wait()
                    raise RuntimeError(f"{argv[0]} did not start: {p.stderr.read().strip()[-300:]}")
        return p

    def move(self, ns_from, ifname, ns_to):
        """Move link `ifname` from namespace ns_from into ns_to."""
        from pyroute2 import IPRoute
        with IPRoute(netns=ns_from) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], net_ns_fd=ns_to)

    def veth(self, ns_a, ns_b, a="va", b="vb", mtu=None):
        """A veth pair with one end in each namespace."""
        from pyroute2 import IPRoute
        with IPRoute(netns=ns_a) as ipr:
            ipr.link("add", ifname=a, kind="veth", peer={"ifname": b, "net_ns_fd": ns_b})
            if mtu:
                ipr.link("set", index=ipr.link_lookup(ifname=a)[0], mtu=mtu)
        if mtu:
            with IPRoute(netns=ns_b) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=b)[0], mtu=mtu)

    def popen_in(self, ns, argv):
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=_setns(ns))
        self.procs.append(p)
        return p

    def close(self):
        from pyroute2 import netns as nslib
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
        self.procs = []
        for ns in self.namespaces:
            try:
                nslib.remove(ns)
            except OSError:
                pass
        self.namespaces = []
        # Everything made in it goes, directories too (a daemon's run dir).
        shutil.rmtree(self.tmp, ignore_errors=True)


def add_addr(ns, ifname, addr, prefixlen=24, wait=5.0, mtu=None):
    """Give `ifname` in `ns` an address (and MTU) and bring it up; waits for
    the link to appear (a tap made by another process shows up later)."""
    from pyroute2 import IPRoute
    deadline = time.monotonic() + wait
    with IPRoute(netns=ns) as ipr:
        while True:
            found = ipr.link_lookup(ifname=ifname)
            if found:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{ifname} did not appear in {ns}")
            time.sleep(0.05)
        if mtu:
            ipr.link("set", index=found[0], mtu=mtu)
        ipr.addr("add", index=found[0], address=addr, prefixlen=prefixlen)
        ipr.link("set", index=found[0], state="up")


def run_in(ns, argv, timeout=60, **kw):
    """Run a program inside namespace `ns` and wait for it."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          preexec_fn=_setns(ns), **kw)


def ping(ns, dst, count, interval=0.2):
    """ping from inside `ns`; returns (rtts in ms, output)."""
    out = run_in(ns, ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst],
                 timeout=count * max(interval, 0.01) + 30)
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", out.stdout)], out.stdout + out.stderr


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _setns(ns):
    def enter():
        from pyroute2 import netns as nslib
        nslib.setns(ns, flags=0)
    return enter


def cpu_seconds(pid):
    """User+system CPU seconds of all threads of `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0
