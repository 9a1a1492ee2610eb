"""`venet bench switch`: frontends talking through a venet-switch device of
a throwaway `venet daemon`, beside the paths a user would take instead, in
one run.

Rows (`--json FILE` writes {"rows": [{"name", "metric", "value"}, ...]}):
  switch-stream-{64,1500}-c      two frontend processes through one switch,
                                 batches of 32, the frontend's rings driven
                                 from C (bench/_swbench.pyx): frames_per_s
  switch-stream-{64,1500}-py     the same with venet.frontend's batch API
                                 (send_batch, recv_batch)
  switch-stream-{64,1500}-c-4fe  four frontends, two pairs at once: the
                                 aggregate
  switch-stream-64-c-poll        switch-stream-64-c with frontends and device
                                 polling (--poll-us) instead of sleeping
  switch-stream-64-c[-4fe]-r1024 switch-stream-64-c[-4fe] with rings of
                                 DEEP_RING slots instead of the default (256
                                 at MTU 1500): in signal mode a ring must
                                 hold what arrives while a sleeper wakes up
  switch-pingpong-poll           one frame each way, frontends and device with
                                 --poll-us: rtt_ns_p50/p99
  switch-pingpong-signal         the same sleeping on the shmsignal doorbells
  ring-pingpong-poll             the ring's own polled round trip (bench/ring.py)
  eventfd-relay-pingpong         A -> relay -> B and back over eventfds, the
                                 relay waiting on both (the wake-ups of the
                                 switch path in signal mode)
  afpacket-stream-64             two processes over a veth pair in a namespace
                                 made here, send()/recv() per frame (root)
  afpacket-mmap-stream-64        the same with PACKET_MMAP TPACKET_V3 rings and
                                 PACKET_QDISC_BYPASS (root)
  afpacket-pingpong              round trips over that veth pair (root)
  memif-stream-64                two dpdk-testpmd over net_memif, txonly ->
                                 rxonly, when dpdk-testpmd is installed (root)
  spin-pingpong-c[-after]        the bare cache-line round trip at the start
                                 and end: where the host put the two vCPUs
The switch's worker runs on the second CPU (the device's cpu attribute);
the frontends of a stream or of the polled ping-pong share the first (a
frontend's poll yields the CPU every few checks), those of the signal
ping-pong take one CPU each, as the relay's ends do.
With --loopback, loopback-* rows run the same frontend loops through a
venet-loopback device (one frontend: the harness without a switch).

A stream's rate is what the receiver got, from its first frame to its last;
frames the path dropped (a full RX ring, a full backlog) are not counted
and their share is the row's loss_fraction.  A row that cannot run here
has value null and a note saying why.
"""
import json
import mmap
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench import _swbench as sw

SWITCH_CLASS = "venet-switch"
ETHERTYPE = sw.ETHERTYPE
LEARN_TYPE = b"\x88\xb6"            # frames that teach the switch a MAC; not counted
WAIT_SIGNAL = 1
POLL_US = 1000                      # --poll-us of the poll rows (frontends and device)
BATCH = 32
DEEP_RING = 1024                    # the -r1024 rows' ring slots (TX and RX)
A, B = "10.77.0.1", "10.77.0.2"    # not used on the wire; the veth pair carries raw frames


def mac(i):
    return bytes([0x02, 0x00, 0x00, 0x5b, 0x00, i])


BCAST = b"\xff" * 6


class Unavailable(Exception):
    """A row that cannot run here (the reason is reported)."""


# ---- child processes stepped through phases in lockstep -------------------

class Job:
    """A child process: phases run in order, each when the parent says go;
    the last one's return value (JSON) is the job's result."""

    def __init__(self, phases, cpu=None, name="job"):
        self.phases, self.cpu, self.name = phases, cpu, name


def run_jobs(jobs, timeout=60.0):
    """Fork one child per job; step all through phase 1, then all through
    phase 2, ...; return the results of the last phases.  Children that do
    not answer within `timeout` s of a phase are killed (by pid)."""
    kids = []
    try:
        for job in jobs:
            c_r, c_w = os.pipe()
            p_r, p_w = os.pipe()
            pid = os.fork()
            if pid == 0:
                _child(job, p_r, c_w)
            os.close(c_w)
            os.close(p_r)
            kids.append({"pid": pid, "r": c_r, "w": p_w, "buf": b"", "job": job})
        nphases = max(len(j.phases) for j in jobs)
        results = [None] * len(kids)
        for ph in range(nphases):
            for k in kids:
                if ph < len(k["job"].phases):
                    os.write(k["w"], b"g")
            for i, k in enumerate(kids):
                if ph >= len(k["job"].phases):
                    continue
                msg = _read_line(k, timeout)
                if "error" in msg:
                    raise RuntimeError(f"{k['job'].name}: {msg['error']}")
                results[i] = msg.get("result")
        return results
    finally:
        for k in kids:
            for fd in (k["r"], k["w"]):
                try:
                    os.close(fd)
                except OSError:
                    pass
        for k in kids:
            _reap(k["pid"])


def _child(job, go_r, out_w):
    code = 0
    try:
        if job.cpu is not None:
            os.sched_setaffinity(0, {job.cpu})
        state = {}
        for ph in job.phases:
            if os.read(go_r, 1) != b"g":
                os._exit(3)
            res = ph(state)
            os.write(out_w, json.dumps({"result": res}).encode() + b"\n")
    except BaseException as e:
        try:
            os.write(out_w, json.dumps({"error": f"{type(e).__name__}: {e}"}).encode()[:3000] + b"\n")
        except OSError:
            pass
        code = 1
    finally:
        os._exit(code)


def _read_line(k, timeout):
    deadline = time.monotonic() + timeout
    while b"\n" not in k["buf"]:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([k["r"]], [], [], left)[0]:
            raise RuntimeError(f"{k['job'].name} did not answer within {timeout:.0f} s")
        data = os.read(k["r"], 65536)
        if not data:
            raise RuntimeError(f"{k['job'].name} died")
        k["buf"] += data
    line, _, k["buf"] = k["buf"].partition(b"\n")
    return json.loads(line)


def _reap(pid, grace=5.0):
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


# ---- a throwaway daemon ---------------------------------------------------

class Daemon:
    """`venet daemon` on a run dir of its own; stop() ends it by pid."""

    def __init__(self):
        from tests.lab import ROOT, _env
        self.run_dir = tempfile.mkdtemp(prefix="venet-swb-", dir="/tmp")
        os.chmod(self.run_dir, 0o755)
        self.log = open(os.path.join(self.run_dir, "daemon.log"), "w+")
        self.proc = subprocess.Popen([sys.executable, "-m", "venet", "daemon", "--run-dir", self.run_dir,
                                      "--log-level", "warning"],
                                     cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=self.log,
                                     start_new_session=True)
        ready = select.select([self.proc.stdout], [], [], 20)[0]
        line = self.proc.stdout.readline() if ready else b""
        if not line.startswith(b"ready"):
            self.stop()
            raise RuntimeError(f"venet daemon did not start: {self._log()[-300:]}")

    def _log(self):
        self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def req(self, op, **kw):
        from venet import daemon
        return daemon.request(self.run_dir, dict(kw, op=op))

    def device(self, name, cls, bus, sets=None):
        """Create a bus, a device of `cls` linked to it; the bus socket."""
        from venet import daemon
        try:
            self.req("device-create", name=name, **{"class": cls, "set": sets or {}})
        except daemon.AdminRefused as e:
            raise Unavailable(str(e)) from None
        sock = self.req("bus-create", name=bus)["socket"]
        self.req("bus-link", bus=bus, device=name)
        return sock

    def counters(self, name):
        return self.req("tree")["devices"][name].get("counters", {})

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)


# ---- frontend phases ------------------------------------------------------

def _open(sock, dev, poll_us=0, ring=None):
    def phase(st):
        from venet import frontend as fe
        st["bus"] = fe.connect(sock)
        st["dev"] = st["bus"].open(dev, poll_us=poll_us, ring_size=ring)
        return None
    return phase


def _learn(me, peer):
    """Send a broadcast from `me` (the switch learns where it is), then wait
    for the peer's: both are known to the switch when this returns."""
    def phase(st):
        dev = st["dev"]
        dev.send(BCAST + mac(me) + LEARN_TYPE + bytes(46), timeout=5)
        if peer is None:
            return None
        want = mac(peer)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            f = dev.recv(timeout=0.2)
            if f is not None and f[6:12] == want:
                return None
            if f is None:
                dev.send(BCAST + mac(me) + LEARN_TYPE + bytes(46), timeout=1)
        raise RuntimeError(f"no frame from frontend {peer} through the switch within 10 s")
    return phase


def _stream_send_c(me, peer, size, seconds, mode=WAIT_SIGNAL, poll_us=0):
    def phase(st):
        sent, ns = sw.fe_stream_send(st["dev"].tx, mac(peer) + mac(me), 1 << 62, BATCH, size, seconds,
                                     mode, poll_us * 1000)
        return {"sent": sent, "ns": ns}
    return phase


def _stream_recv_c(seconds, mode=WAIT_SIGNAL, poll_us=0):
    def phase(st):
        got, lost, bad, first, last = sw.fe_stream_recv(st["dev"].rx, 1 << 62, 256, 0.3, seconds + 10,
                                                        mode, poll_us * 1000)
        return {"got": got, "lost": lost, "bad": bad, "first": first, "last": last}
    return phase


def _stream_send_py(me, peer, size, seconds):
    def phase(st):
        dev = st["dev"]
        tmpl = np.frombuffer(mac(peer) + mac(me) + ETHERTYPE.to_bytes(2, "big") + bytes(size - 14), np.uint8)
        block = np.tile(tmpl, (BATCH, 1))
        seqs = block[:, 16:24].view("<u8")
        step = np.arange(BATCH, dtype=np.uint64)
        seq = 0
        t0 = time.monotonic()
        end = t0 + seconds
        send_batch, wait = dev.send_batch, dev.tx.wait
        while time.monotonic() < end:
            seqs[:, 0] = step + seq
            k = send_batch(block)
            while k < BATCH and time.monotonic() < end + 5:
                wait(0.05)          # the ring is full: until the switch frees slots
                k += send_batch(block[k:])
            seq += k
        return {"sent": seq, "ns": int((time.monotonic() - t0) * 1e9)}
    return phase


def _stream_recv_py(size, seconds):
    def phase(st):
        dev = st["dev"]
        out = np.zeros((256, max(size, 64)), np.uint8)
        lens = np.zeros(256, np.uint32)
        got = lost = bad = expect = 0
        first = last = 0
        deadline = time.monotonic() + seconds + 10
        recv_batch = dev.recv_batch
        while time.monotonic() < deadline:
            k = recv_batch(out, lens, timeout=0.3)
            now = time.monotonic_ns()
            if k == 0:
                if got:
                    break
                continue
            rows = out[:k]
            ours = (rows[:, 12] == 0x88) & (rows[:, 13] == 0xb5)
            s = rows[ours, 16:24].copy().view("<u8").ravel()
            if not s.size:
                continue
            if got == 0:
                first = now
            inc = np.diff(s.astype(np.int64))
            bad += int((inc <= 0).sum()) + int(s[0] < expect)
            lost += int(max(0, int(s[-1]) + 1 - expect - s.size))
            expect = int(s[-1]) + 1
            got += int(s.size)
            last = now
        return {"got": got, "lost": lost, "bad": bad, "first": first, "last": last}
    return phase


def _rate_rows(name, recvs):
    got = sum(r["got"] for r in recvs)
    lost = sum(r["lost"] for r in recvs)
    span = max(r["last"] for r in recvs) - min(r["first"] for r in recvs if r["got"])
    if got < 2 or span <= 0:
        raise RuntimeError(f"{name}: {got} frames received")
    return [{"name": name, "metric": "frames_per_s", "value": (got - 1) * 1e9 / span},
            {"name": name, "metric": "loss_fraction", "value": lost / (got + lost)}]


def _rtt_rows(name, ns, done, warm):
    if done < warm + 10:
        raise RuntimeError(f"{name}: only {done} round trips completed")
    a = np.asarray(ns[warm:done], dtype=np.int64)
    return [{"name": name, "metric": "rtt_ns_p50", "value": float(np.percentile(a, 50))},
            {"name": name, "metric": "rtt_ns_p99", "value": float(np.percentile(a, 99))}]


# ---- switch rows ----------------------------------------------------------

class Switch:
    """A daemon with one venet-switch device on one bus."""

    def __init__(self, daemon, cls=SWITCH_CLASS, sets=None):
        self.d = daemon
        self.name = f"sw{len(daemon.req('tree')['devices'])}"
        self.sock = daemon.device(self.name, cls, "b" + self.name, sets)


def switch_stream(sw_, name, size, seconds, pairs=1, api="c", cpus=(0, 1), poll_us=0, ring=None):
    jobs = []
    for p in range(pairs):
        a, b = 2 * p + 1, 2 * p + 2
        if api == "c":
            send = _stream_send_c(a, b, size, seconds, poll_us=poll_us)
            recv = _stream_recv_c(seconds, poll_us=poll_us)
        else:
            send, recv = _stream_send_py(a, b, size, seconds), _stream_recv_py(size, seconds)
        jobs.append(Job([_open(sw_.sock, sw_.name, poll_us, ring), _learn(a, b), send], cpu=cpus[0],
                        name=f"{name} sender {a}"))
        jobs.append(Job([_open(sw_.sock, sw_.name, poll_us, ring), _learn(b, a), recv], cpu=cpus[1],
                        name=f"{name} receiver {b}"))
    res = run_jobs(jobs, timeout=seconds + 30)
    return _rate_rows(name, res[1::2])


def switch_pingpong(sw_, name, n, poll_us, cpus=(0, 1), size=64):
    out = np.ndarray(n, np.int64, buffer=mmap.mmap(-1, n * 8, mmap.MAP_SHARED))

    def ping(st):
        return sw.fe_ping(st["dev"].tx, st["dev"].rx, mac(2) + mac(1), size, n, out, WAIT_SIGNAL, poll_us * 1000)

    def pong(st):
        return sw.fe_pong(st["dev"].rx, st["dev"].tx, mac(1) + mac(2), size, n, WAIT_SIGNAL, poll_us * 1000)
    res = run_jobs([Job([_open(sw_.sock, sw_.name, poll_us), _learn(1, 2), ping], cpu=cpus[0], name="ping"),
                    Job([_open(sw_.sock, sw_.name, poll_us), _learn(2, 1), pong], cpu=cpus[1], name="pong")],
                   timeout=60)
    return _rtt_rows(name, out, res[0], n // 10)


def loopback_rows(daemon, quick, seconds):
    """The frontend loops through a venet-loopback device: one frontend,
    its frames come back to it (sender and receiver are two threads of one
    process)."""
    import threading
    sock = daemon.device("lo0", "venet-loopback", "blo0")
    rows = []
    n = 2000 if quick else 20000

    def stream(st):
        dev = st["dev"]
        box = {}
        t = threading.Thread(target=lambda: box.update(
            s=sw.fe_stream_send(dev.tx, mac(1) + mac(1), 1 << 62, BATCH, 64, seconds)))
        t.start()
        got, lost, bad, first, last = sw.fe_stream_recv(dev.rx, 1 << 62, 256, 0.3, seconds + 10)
        t.join()
        return {"got": got, "lost": lost, "bad": bad, "first": first, "last": last}
    res = run_jobs([Job([_open(sock, "lo0"), stream], name="loopback stream")], timeout=seconds + 30)
    rows += _rate_rows("loopback-stream-64-c", res)
    out = np.ndarray(n, np.int64, buffer=mmap.mmap(-1, n * 8, mmap.MAP_SHARED))
    res = run_jobs([Job([_open(sock, "lo0"), lambda st: sw.fe_ping(
        st["dev"].tx, st["dev"].rx, mac(1) + mac(1), 64, n, out)], name="loopback ping")], timeout=60)
    rows += _rtt_rows("loopback-pingpong-signal", out, res[0], n // 10)
    return rows


# ---- baselines ------------------------------------------------------------

def eventfd_relay(n, cpus=(0, 1)):
    """A -> relay -> B -> relay -> A over four eventfds: four wake-ups per
    round trip, as the switch path in signal mode (A's kick wakes the
    worker, the worker's wakes B, and back)."""
    a2r, r2b, b2r, r2a = (os.eventfd(0) for _ in range(4))
    out = np.ndarray(n, np.int64, buffer=mmap.mmap(-1, n * 8, mmap.MAP_SHARED))
    try:
        res = run_jobs([Job([lambda st: sw.efd_ping(a2r, r2a, n, out)], cpu=cpus[0], name="A"),
                        Job([lambda st: sw.efd_relay(a2r, r2b, b2r, r2a, n)], name="relay"),
                        Job([lambda st: sw.efd_pong(r2b, b2r, n)], cpu=cpus[1], name="B")], timeout=60)
    finally:
        for fd in (a2r, r2b, b2r, r2a):
            os.close(fd)
    return _rtt_rows("eventfd-relay-pingpong", out, res[0], n // 10)


def ring_pingpong(n, cpus):
    from bench import ring
    rows = ring.bench_ring_pingpong(ring.Pair(cpus), n, ring.MODE_POLL, "ring-pingpong-poll")
    return rows


def relay_pingpong(n, cpus):
    """Three pollers on two CPUs over bare cache lines, placed as the
    switch's ping-pong is (two ends on cpus[0], the relay on cpus[1]): the
    scheduling floor of a polled round trip through any third party."""
    from bench import ring
    return ring.bench_relay(cpus, n)


def spin(n, cpus, name="spin-pingpong-c"):
    from bench import ring
    return [dict(r, name=name) for r in ring.bench_spin(ring.Pair(cpus), n)]


class Veth:
    """A namespace with a veth pair va <-> vb, both up (root)."""

    def __init__(self):
        from tests.lab import Lab
        if os.geteuid() != 0:
            raise Unavailable("needs root (a namespace and a veth pair)")
        self.lab = Lab("vsb")
        try:
            self.ns = self.lab.netns("afp")
            from pyroute2 import IPRoute
            self.lab.veth(self.ns, self.ns, "va", "vb")
            with IPRoute(netns=self.ns) as ipr:
                for ifn in ("va", "vb"):
                    idx = ipr.link_lookup(ifname=ifn)[0]
                    ipr.link("set", index=idx, state="up")
        except BaseException:
            self.lab.close()
            raise

    def enter(self):
        from pyroute2 import netns as nslib
        nslib.setns(self.ns, flags=0)

    def close(self):
        self.lab.close()


def _afp_socket(veth, ifname, proto, ring=None):
    veth.enter()
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
    obj = ring(s.fileno()) if ring else None     # a ring goes before bind
    s.bind((ifname, proto))
    return s, obj


def afpacket_stream(veth, name, seconds, mmap_rings=False, cpus=(0, 1)):
    def send(st):
        s, tx = _afp_socket(veth, "va", 0, sw.MmapTx if mmap_rings else None)
        st["s"] = s
        if tx is not None:
            sent, ns, wrong = tx.run(mac(2) + mac(1), 64, 1 << 62, seconds)
            tx.close()
        else:
            sent, ns = sw.afp_send(s.fileno(), mac(2) + mac(1), 64, 1 << 62, seconds)
        return {"sent": sent, "ns": ns}

    def recv_open(st):
        st["s"], st["rx"] = _afp_socket(veth, "vb", ETHERTYPE, sw.MmapRx if mmap_rings else None)

    def recv(st):
        if st["rx"] is not None:
            got, lost, bad, first, last = st["rx"].run(1 << 62, 0.3, seconds + 10)
        else:
            got, lost, bad, first, last = sw.afp_recv(st["s"].fileno(), 1 << 62, 0.3, seconds + 10)
        return {"got": got, "lost": lost, "bad": bad, "first": first, "last": last}
    res = run_jobs([Job([lambda st: None, send], cpu=cpus[0], name=f"{name} sender"),
                    Job([recv_open, recv], cpu=cpus[1], name=f"{name} receiver")], timeout=seconds + 30)
    return _rate_rows(name, [res[1]])


def afpacket_pingpong(veth, n, cpus=(0, 1)):
    out = np.ndarray(n, np.int64, buffer=mmap.mmap(-1, n * 8, mmap.MAP_SHARED))

    def sock(ifname):
        def phase(st):
            st["s"], _ = _afp_socket(veth, ifname, ETHERTYPE)
        return phase
    res = run_jobs([Job([sock("va"), lambda st: sw.afp_ping(st["s"].fileno(), mac(2) + mac(1), 64, n, out)],
                        cpu=cpus[0], name="afpacket ping"),
                    Job([sock("vb"), lambda st: sw.afp_pong(st["s"].fileno(), mac(1) + mac(2), 64, n)],
                        cpu=cpus[1], name="afpacket pong")], timeout=60)
    return _rtt_rows("afpacket-pingpong", out, res[0], n // 10)


def memif_stream(seconds, cpus=(0, 1)):
    """Two dpdk-testpmd over net_memif: the client sends (txonly), the
    server counts (rxonly); the rate is the median of the server's Rx-pps
    lines after the first with traffic."""
    import re
    if shutil.which("dpdk-testpmd") is None:
        raise Unavailable("dpdk-testpmd is not installed (bench/install-clients.sh --dpdk)")
    if os.geteuid() != 0:
        raise Unavailable("dpdk-testpmd needs root here")
    d = tempfile.mkdtemp(prefix="venet-memif-", dir="/tmp")
    sock = os.path.join(d, "memif.sock")
    tag = f"{os.getpid()}"
    common = ["--no-pci", "--no-huge", "-m", "256"]
    srv_cmd = ["stdbuf", "-oL", "dpdk-testpmd", *common, f"--lcores=0@{cpus[0]},1@{cpus[0]}",
               f"--file-prefix=vswm{tag}", f"--vdev=net_memif0,role=server,socket={sock},socket-abstract=no",
               "--", "--nb-cores=1", "--stats-period=1", "--forward-mode=rxonly", "--total-num-mbufs=16384"]
    cli_cmd = ["stdbuf", "-oL", "dpdk-testpmd", *common, f"--lcores=0@{cpus[1]},1@{cpus[1]}",
               f"--file-prefix=vswc{tag}", f"--vdev=net_memif0,role=client,socket={sock},socket-abstract=no",
               "--", "--nb-cores=1", "--stats-period=1", "--forward-mode=txonly", "--txpkts=64",
               "--total-num-mbufs=16384"]
    procs = []
    try:
        srv = subprocess.Popen(srv_cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(srv)
        deadline = time.monotonic() + 15
        while not os.path.exists(sock):
            if srv.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"memif server did not start: {srv.stdout.read()[-400:]!r}")
            time.sleep(0.05)
        cli = subprocess.Popen(cli_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               stdin=subprocess.DEVNULL, start_new_session=True)
        procs.append(cli)
        rates, text = [], b""
        # The client's start takes seconds on a loaded machine: periods are
        # counted from the first with traffic (itself partial, skipped).
        want = 2 + max(1, int(seconds))
        end = time.monotonic() + seconds + 20
        while time.monotonic() < end and srv.poll() is None and len([r for r in rates if r > 0]) < want:
            if select.select([srv.stdout], [], [], 0.5)[0]:
                line = srv.stdout.readline()
                text += line
                m = re.search(rb"Rx-pps:\s+(\d+)", line)
                if m:
                    rates.append(int(m.group(1)))
        live = [r for r in rates if r > 0][1:]
        if not live:
            raise RuntimeError(f"memif: no traffic counted: {text[-400:]!r}")
        return [{"name": "memif-stream-64", "metric": "frames_per_s", "value": float(np.median(live))}]
    finally:
        for p in reversed(procs):       # the client first: it dies of SIGPIPE if the server goes first
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            if p.stdout:
                p.stdout.close()
        shutil.rmtree(d, ignore_errors=True)


# ---- the run --------------------------------------------------------------

SWITCH_ROWS = [("switch-stream-64-c", "frames_per_s"), ("switch-stream-64-py", "frames_per_s"),
               ("switch-stream-64-c-4fe", "frames_per_s"), ("switch-stream-1500-c", "frames_per_s"),
               ("switch-stream-1500-py", "frames_per_s"), ("switch-stream-1500-c-4fe", "frames_per_s"),
               ("switch-stream-64-c-poll", "frames_per_s"), ("switch-stream-64-c-r1024", "frames_per_s"),
               ("switch-stream-64-c-4fe-r1024", "frames_per_s"),
               ("switch-pingpong-poll", "rtt_ns_p50"), ("switch-pingpong-poll", "rtt_ns_p99"),
               ("switch-pingpong-signal", "rtt_ns_p50"), ("switch-pingpong-signal", "rtt_ns_p99")]


def _missing(names, why):
    return [{"name": n, "metric": m, "value": None, "note": why} for n, m in names]


def run(cpus=(0, 1), quick=False, loopback=False, progress=None, switch_class=SWITCH_CLASS):
    secs = 0.5 if quick else 2.0
    n = 2000 if quick else 20000
    rows, notes = [], {}

    def step(names, fn):
        try:
            new = fn()
        except Unavailable as e:
            new = _missing(names, str(e))
            notes[names[0][0]] = f"not available: {e}"
        except RuntimeError as e:
            new = _missing(names, f"failed: {e}")
            notes[names[0][0]] = f"failed: {e}"
        rows.extend(new)
        if progress:
            for r in new:
                progress(r)

    step([("spin-pingpong-c", "rtt_ns_p50")], lambda: spin(n * 10, cpus))
    d = Daemon()
    try:
        try:
            # Placement on two CPUs: the switch's worker has the second to
            # itself and the two frontends of a row share the first (they
            # poll yielding, or sleep), so none of three busy parties waits
            # a scheduler tick for a CPU (docs/switch.md, "Performance").
            fe = (cpus[0], cpus[0])
            where = {"cpu": str(cpus[1])}
            plain = Switch(d, switch_class, where)
        except Unavailable as e:
            why = f"{e}: the {switch_class} device class is not installed"
            rows.extend(_missing(SWITCH_ROWS, why))
            notes["switch"] = f"not available: {why}"
            if progress:
                progress({"name": "switch-*", "metric": "", "value": None, "note": why})
        else:
            try:
                polled = Switch(d, switch_class, dict(where, poll_us=str(POLL_US)))
            except Unavailable as e:
                # The frontends still poll; the worker does as the class does.
                polled = plain
                notes["switch-pingpong-poll"] = f"the device took no poll_us ({e}); frontends poll only"
            for size in (64, 1500):
                step([(f"switch-stream-{size}-c", "frames_per_s")],
                     lambda: switch_stream(plain, f"switch-stream-{size}-c", size, secs, cpus=fe))
                step([(f"switch-stream-{size}-py", "frames_per_s")],
                     lambda: switch_stream(plain, f"switch-stream-{size}-py", size, secs, api="py", cpus=fe))
                step([(f"switch-stream-{size}-c-4fe", "frames_per_s")],
                     lambda: switch_stream(plain, f"switch-stream-{size}-c-4fe", size, secs, pairs=2, cpus=fe))
            for fe_pairs, sfx in ((1, ""), (2, "-4fe")):
                step([(f"switch-stream-64-c{sfx}-r1024", "frames_per_s")],
                     lambda: switch_stream(plain, f"switch-stream-64-c{sfx}-r1024", 64, secs, pairs=fe_pairs,
                                           cpus=fe, ring=DEEP_RING))
            step([("switch-stream-64-c-poll", "frames_per_s")],
                 lambda: switch_stream(polled, "switch-stream-64-c-poll", 64, secs, cpus=fe, poll_us=POLL_US))
            step([("switch-pingpong-poll", "rtt_ns_p50")],
                 lambda: switch_pingpong(polled, "switch-pingpong-poll", n, POLL_US, fe))
            # As the eventfd relay's ends: one frontend on each CPU.
            step([("switch-pingpong-signal", "rtt_ns_p50")],
                 lambda: switch_pingpong(plain, "switch-pingpong-signal", n, 0, cpus))
        if loopback:
            step([("loopback-stream-64-c", "frames_per_s"), ("loopback-pingpong-signal", "rtt_ns_p50")],
                 lambda: loopback_rows(d, quick, secs))
    finally:
        d.stop()
    step([("ring-pingpong-poll", "rtt_ns_p50")], lambda: ring_pingpong(n * 10, cpus))
    step([("relay-pingpong-poll", "rtt_ns_p50")], lambda: relay_pingpong(n, cpus))
    step([("eventfd-relay-pingpong", "rtt_ns_p50")], lambda: eventfd_relay(n, cpus))
    afp = [("afpacket-stream-64", "frames_per_s"), ("afpacket-mmap-stream-64", "frames_per_s"),
           ("afpacket-pingpong", "rtt_ns_p50")]
    try:
        veth = Veth()
    except Unavailable as e:
        rows.extend(_missing(afp, str(e)))
        notes["afpacket"] = f"not available: {e}"
    else:
        try:
            step(afp[:1], lambda: afpacket_stream(veth, "afpacket-stream-64", secs, cpus=cpus))
            step(afp[1:2], lambda: afpacket_stream(veth, "afpacket-mmap-stream-64", secs, True, cpus=cpus))
            step(afp[2:], lambda: afpacket_pingpong(veth, n, cpus))
        finally:
            veth.close()
    step([("memif-stream-64", "frames_per_s")], lambda: memif_stream(max(secs, 2), cpus))
    step([("spin-pingpong-c-after", "rtt_ns_p50")], lambda: [
        r for r in spin(n * 2, cpus, "spin-pingpong-c-after") if r["metric"] == "rtt_ns_p50"])
    return rows, notes


TARGETS = [
    ("switch-stream-64-c", ">= 10 M/s"),
    ("switch-stream-64-c / best AF_PACKET", ">= 5"),
    ("switch-stream-64-py", ">= 2 M/s"),
    ("switch-pingpong-poll / ring-pingpong-poll", "<= 3"),
    ("switch-pingpong-signal / eventfd-relay-pingpong", "<= 1.1"),
    ("switch-stream-64-c-4fe / switch-stream-64-c", ">= 1.5"),
    ("switch-stream-64-c / memif-stream-64", "> 1 (the aim)"),
]


def ratios(rows):
    v = {(r["name"], r["metric"]): r["value"] for r in rows if r["value"] is not None}
    fps = lambda n: v.get((n, "frames_per_s"))          # noqa: E731
    p50 = lambda n: v.get((n, "rtt_ns_p50"))            # noqa: E731
    out = {}
    best_afp = max([x for x in (fps("afpacket-stream-64"), fps("afpacket-mmap-stream-64")) if x] or [0])
    pairs = [("switch-stream-64-c / best AF_PACKET", fps("switch-stream-64-c"), best_afp),
             ("switch-pingpong-poll / ring-pingpong-poll", p50("switch-pingpong-poll"), p50("ring-pingpong-poll")),
             ("relay-pingpong-poll / ring-pingpong-poll", p50("relay-pingpong-poll"), p50("ring-pingpong-poll")),
             ("switch-pingpong-poll / relay-pingpong-poll", p50("switch-pingpong-poll"), p50("relay-pingpong-poll")),
             ("switch-pingpong-signal / eventfd-relay-pingpong", p50("switch-pingpong-signal"),
              p50("eventfd-relay-pingpong")),
             ("switch-stream-64-c-4fe / switch-stream-64-c", fps("switch-stream-64-c-4fe"), fps("switch-stream-64-c")),
             ("switch-stream-64-c-4fe-r1024 / switch-stream-64-c-r1024", fps("switch-stream-64-c-4fe-r1024"),
              fps("switch-stream-64-c-r1024")),
             ("switch-stream-64-c / memif-stream-64", fps("switch-stream-64-c"), fps("memif-stream-64"))]
    for k, a, b in pairs:
        if a and b:
            out[k] = a / b
    return out


def placement(rows):
    """A sentence on where the host put the two vCPUs (the bare cache-line
    round trip, as `venet bench ring` reads it)."""
    v = {r["name"]: r["value"] for r in rows if r["metric"] == "rtt_ns_p50"}
    s, e = v.get("spin-pingpong-c"), v.get("spin-pingpong-c-after")
    if not s:
        return "vCPU placement: not measured"
    where = lambda x: "close" if x < 200 else "far apart"     # noqa: E731
    txt = f"vCPU placement: spin ping-pong {s:,.0f} ns at the start ({where(s)})"
    if e:
        txt += f", {e:,.0f} ns at the end ({where(e)})"
    return txt + " (about 100 ns when the two vCPUs sit close, about 380 ns when far)"


def format_table(rows):
    lines = [f"{'name':<28} {'metric':<14} {'value':>16}"]
    for r in rows:
        val = r["value"]
        if val is None:
            txt = r.get("note", "n/a")
            lines.append(f"{r['name']:<28} {r['metric']:<14} {'n/a':>16}  {txt}")
            continue
        if r["metric"].startswith("rtt_ns"):
            txt = f"{val:,.0f} ns"
        elif r["metric"] == "frames_per_s":
            txt = f"{val / 1e6:,.3f} M/s"
        else:
            txt = f"{val:.4f}"
        lines.append(f"{r['name']:<28} {r['metric']:<14} {txt:>16}")
    return "\n".join(lines)


def main(cpus=(0, 1), json_path=None, quick=False, loopback=False, out=sys.stdout):
    from venet.service import on_stop_signals

    def _interrupt():
        raise KeyboardInterrupt
    t0 = time.monotonic()
    restore = on_stop_signals(_interrupt)
    try:
        rows, notes = run(cpus, quick=quick, loopback=loopback,
                          progress=lambda r: print(f"  {r['name']:<28} {r['metric']:<14} "
                                                   f"{'done' if r['value'] is not None else 'n/a'}",
                                                   file=sys.stderr, flush=True))
    finally:
        restore()
    print(format_table(rows), file=out)
    rat = ratios(rows)
    if rat:
        print("\nratios (same run):", file=out)
        for k, val in rat.items():
            print(f"  {k:<52} {val:8.2f}", file=out)
    print(f"\n{placement(rows)}", file=out)
    print(f"({time.monotonic() - t0:.0f} s)", file=out)
    if json_path:
        with open(json_path, "w") as f:
            from bench.report import machine
            json.dump({"rows": rows, "notes": notes, "ratios": rat, "cpus": list(cpus),
                       "poll_us": POLL_US, "batch": BATCH, "placement": placement(rows),
                       "machine": machine()}, f, indent=1)
    return rows
