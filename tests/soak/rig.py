"""Bridge + attach across two namespaces, for the soak loops.

Namespace A holds the bridge's tap vb0 (10.77.9.1), namespace B the
attach's va0 (10.77.9.2).  Every process is started through the lab, so
the lab's close() kills it by pid even when a loop fails half-way.
"""
import subprocess
import time

from tests.lab import _setns, run_in

from .conftest import drain, link_stats, reap, wait_for

A, B = "10.77.9.1", "10.77.9.2"


class Rig:
    def __init__(self, lab):
        self.lab = lab
        self.a = lab.netns("a")
        self.b = lab.netns("b")
        self.sock = lab.socket_path()
        self.bridge = None
        self.attach = None

    def start_bridge(self):
        self.bridge = drain(self.lab.venet("bridge", "--tap", "vb0", "--netns", self.a,
                                           "--socket", self.sock))
        self.lab.addr(self.a, "vb0", A)

    def start_attach(self):
        self.attach = drain(self.lab.venet("attach", "--socket", self.sock, "--tap", "va0",
                                           "--netns", self.b))
        self.lab.addr(self.b, "va0", B)

    def spawn(self, ns, argv):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             preexec_fn=_setns(ns))
        self.lab.procs.append(p)
        return p

    def reachable(self, timeout=20):
        wait_for(lambda: run_in(self.b, ["ping", "-n", "-c", "1", "-W", "1", A], timeout=10).returncode == 0,
                 timeout, f"ping {B} -> {A} through bridge + attach", interval=0.1)

    def iperf_running(self):
        """Start an iperf3 stream B -> A and wait until frames move; returns
        (server, client)."""
        srv = self.spawn(self.a, ["iperf3", "-s", "-1", "-B", A])
        before = link_stats(self.a, "vb0")["rx_packets"]

        def flowing():
            return link_stats(self.a, "vb0")["rx_packets"] - before > 200
        cli = None
        deadline = time.monotonic() + 20
        while cli is None or not flowing():
            if cli is None or cli.poll() is not None:
                # The server may not listen yet: try again.
                if cli is not None:
                    reap(self.lab, cli)
                cli = self.spawn(self.b, ["iperf3", "-c", A, "-t", "60"])
            assert time.monotonic() < deadline, "iperf3 moved nothing through bridge + attach"
            time.sleep(0.05)
        return srv, cli
