"""`venet bench vhost`: DPDK's virtio-user driver (dpdk-testpmd, no
hugepages) against venet's vhost-user connector and against DPDK's own
vhost-user backend (net_vhost), in one run.

Rows (`--json FILE` writes {"rows": [{"name", "metric", "value"}, ...]}),
rx = driver -> backend, tx = backend -> driver:

  venet-vhost-{rx,tx}-{64,1500}[-poll]   frames_per_s.  venet's connector on
        a venet-null device, served by a one-worker pool of the bench's
        own: rx, testpmd txonly -> the device as a sink (the engine takes,
        checks and translates every chain, and the device drops the
        frame); tx, the device as a source of LEN-4-byte frames -> testpmd
        rxonly (the engine copies each frame into the driver's buffers).
        The shape of the dpdk-vhost rows.  The rates are the engine's own
        counters over the window (tx_frames: taken from the driver,
        rx_frames: given to it); testpmd's own figure is in the notes.
        -poll: the engine with poll_us (POLL_US); without: signal mode
        (kicks and calls).
  venet-vhost-loop-{rx,tx}-64[-poll]   frames_per_s.  The connector on a
        venet-loopback device (its port an AF_UNIX datagram socket
        connected to itself: one sendmsg and one recvmsg per frame), the
        driver in `io` forwarding with `--tx-first`: what it sends comes
        back and is sent again, both directions at once.
  venet-vhost-reflect-{rx,tx}-64[-poll]   frames_per_s.  The same loop with
        no port behind the engine: it gives what the driver sends straight
        back to the driver's RX queue through a FIFO of frames in its own
        memory (Engine reflect=256; a full FIFO refuses the frame, counted
        as tx_drop_port): the figure to set against dpdk-vhost-loop-*.
  venet-vhost-idle-cpu    cpu_percent of the engine's worker thread over a
        window with the driver connected and nothing to move (signal mode).
  dpdk-vhost-{rx,tx}-{64,1500}  frames_per_s.  testpmd net_vhost as the
        backend: driver txonly -> backend rxonly (rx), backend txonly ->
        driver rxonly (tx); the receiver's Rx-pps lines.
  dpdk-vhost-loop-{rx,tx}-64    the loop rows' shape with DPDK's backend:
        net_vhost in io forwarding to itself, the driver io --tx-first
        (the rates of both sides' Rx-pps).
  venet-vhost-ping        rtt_us_p50 (root): ping from a namespace through a
        venet-tap device (`venet bridge --vhost-user`) to testpmd in
        icmpecho mode, the bridge busy-polling as testpmd does
        (`--poll-us` PING_POLL_US, a window longer than the pings' gap).
  venet-vhost-ping-signal  the same in signal mode (no --poll-us): each
        ping wakes the bridge's worker from sleep, twice.
  dpdk-vhost-tap-ping     rtt_us_p50 (root): the same with testpmd bridging
        net_tap and net_vhost (io forwarding) instead of venet.

A row that cannot run here has value null and a note saying why.  The
backends run on CPU A, the driver on CPU B (the first two usable CPUs).
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TESTPMD = shutil.which("dpdk-testpmd")
POLL_US = 200                       # poll_us of the -poll rows
PING_POLL_US = 1_000_000            # the ping row's: more than the pings' gap, so the worker never sleeps
PING_ROUNDS = 7
DMAC = "02:00:00:00:00:77"
KIP, DIP = "10.77.0.1", "10.77.0.2"


class Unavailable(Exception):
    """A row that cannot run here (the reason is reported)."""


def _cpus():
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[0], cpus[1 % len(cpus)]


class Testpmd:
    """One dpdk-testpmd process (no hugepages, both lcores on one CPU),
    its statistics lines gathered by a reader thread."""

    n = 0

    def __init__(self, cpu, vdevs, mode, *extra, ns=None, tag="vb"):
        Testpmd.n += 1
        argv = ["stdbuf", "-oL", TESTPMD, "--no-pci", "--no-huge", "-m", "256",
                f"--lcores=0@{cpu},1@{cpu}", f"--file-prefix={tag}{os.getpid()}x{Testpmd.n}",
                *[f"--vdev={v}" for v in vdevs], "--", "--nb-cores=1", "--stats-period=1",
                "--total-num-mbufs=16384", f"--forward-mode={mode}", *extra]
        pre = None
        if ns:
            from tests.lab import _setns
            pre = _setns(ns)
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=pre)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    def text(self):
        return "".join(self.lines)

    def wait_for(self, what, timeout=20):
        deadline = time.monotonic() + timeout
        while what not in self.text():
            if self.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"testpmd did not get to {what!r}: {self.text()[-600:]}")
            time.sleep(0.05)

    def rates(self, key="Rx-pps"):
        """Each statistics period's figure (port 0's, the first of a period)."""
        return [int(x) for x in re.findall(rf"{key}:\s+(\d+)", self.text())]

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGINT)
            try:
                self.p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.reader.join(5)
        self.p.stdout.close()


def _steady(values, skip=2):
    """The median of the periods after the warm-up ones (fewer skipped when
    a short window gave fewer)."""
    live = [v for v in values[min(skip, max(len(values) - 1, 0)):] if v > 0]
    if not live:
        raise RuntimeError("no traffic counted")
    return float(statistics.median(live))


def _thread_cpu(tid):
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- venet's connector on a loopback ---------------------------------------

class VenetLoop:
    """A venet-loopback device (or, with `null` set, a venet-null device:
    null=0 a sink, null=LEN a source of LEN-byte frames) and its vhost-user
    connector in this process, on a pool of one worker pinned to `cpu`."""

    def __init__(self, path, cpu, poll_us=0, reflect=0, null=None):
        from vbus._worker import Pool
        from venet import bridge
        from venet.classes import loop_port, null_frame, null_port_fd
        from venet.vhost.backend import Connector
        self.pool = Pool(1, pin=False)
        w = self.pool.workers[0]
        # Pin the worker's thread (the pool pins to the i-th usable CPU).
        os.sched_setaffinity(w.tid, {cpu})
        # reflect: the engine's FIFO stands for the port; the loopback
        # socket is then only watched (nothing writes to it).
        mac = "02:00:00:00:00:01"
        if null is None:
            self.dev = bridge.Device("vbench0", "loopback", loop_port(), False, mac, 1500, pool=self.pool)
        else:
            self.dev = bridge.Device("vbench0", "null", null_port_fd(null), False, mac, 1500, pool=self.pool,
                                     null_frame=null_frame(mac, null))
        self.c = Connector(self.dev, path, poll_us=poll_us, reflect=reflect).start()

    def counters(self):
        return self.c.stats()

    def close(self):
        self.c.close()
        self.dev.close()
        self.pool.close()


def _window(v, tp, key, secs):
    """Once counter `key` of the connector `v` moves (driver `tp` started),
    a warm-up, then `secs` measured: each counter's rate per second, and
    "drops", the frames refused or dropped in the window (a count)."""
    deadline = time.monotonic() + 10
    while v.counters()[key] == 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no frames through venet: {tp.text()[-600:]}")
        time.sleep(0.05)
    time.sleep(0.5)                 # warm-up
    a, t0 = v.counters(), time.monotonic()
    time.sleep(secs)
    b, t1 = v.counters(), time.monotonic()
    out = {k: (b[k] - a.get(k, 0)) / (t1 - t0) for k in b}
    out["drops"] = sum(b[k] - a.get(k, 0) for k in b if k.startswith(("drop_", "tx_drop", "rx_drop")))
    return out


def venet_loop(dir_, length, poll_us, secs, cpus, reflect=0):
    path = os.path.join(dir_, f"venet-{length}-{poll_us}-{reflect}.sock")
    v = VenetLoop(path, cpus[0], poll_us, reflect)
    tp = None
    try:
        tp = Testpmd(cpus[1], [f"net_virtio_user0,path={path},queues=1,mac={DMAC}"], "io",
                     "--tx-first", f"--txpkts={length - 4}", tag="vbv")
        tp.wait_for("Port statistics")
        d = _window(v, tp, "tx_frames", secs)
        return {"rx": d["tx_frames"], "tx": d["rx_frames"], "drops": d["drops"],
                "wakeups_per_s": d["wakeups"], "calls_per_s": d["calls_sent"]}
    finally:
        if tp is not None:
            tp.stop()                   # the driver first
        v.close()


def venet_idle_cpu(dir_, secs, cpus):
    """The engine's worker thread's CPU share while a driver is connected
    and idle (testpmd rxonly, the loopback sends nothing)."""
    path = os.path.join(dir_, "venet-idle.sock")
    v = VenetLoop(path, cpus[0], 0)
    tp = None
    try:
        tp = Testpmd(cpus[1], [f"net_virtio_user0,path={path},queues=1,mac={DMAC}"], "rxonly", tag="vbi")
        tp.wait_for("Port statistics")
        deadline = time.monotonic() + 10
        while not v.counters()["rings_live"]:
            if time.monotonic() > deadline:
                raise RuntimeError("the driver's rings did not go live")
            time.sleep(0.05)
        time.sleep(0.5)
        tid = v.pool.workers[0].tid
        c0, t0 = _thread_cpu(tid), time.monotonic()
        time.sleep(secs)
        return 100.0 * (_thread_cpu(tid) - c0) / (time.monotonic() - t0)
    finally:
        if tp is not None:
            tp.stop()
        v.close()


def venet_null(dir_, length, poll_us, secs, cpus, direction):
    """rx: testpmd txonly -> a venet-null sink; tx: a venet-null source ->
    testpmd rxonly.  The engine's counters over the window."""
    path = os.path.join(dir_, f"venet-null-{direction}-{length}-{poll_us}.sock")
    v = VenetLoop(path, cpus[0], poll_us, null=length - 4 if direction == "tx" else 0)
    tp = None
    key = "tx_frames" if direction == "rx" else "rx_frames"
    try:
        tp = Testpmd(cpus[1], [f"net_virtio_user0,path={path},queues=1,mac={DMAC}"],
                     "txonly" if direction == "rx" else "rxonly",
                     *([f"--txpkts={length - 4}"] if direction == "rx" else []), tag="vbn")
        tp.wait_for("Port statistics")
        d = _window(v, tp, key, secs)
        return {"rate": d[key],
                # testpmd's own count, its best period (its periods do not
                # line up with the window)
                "driver_pps": max(tp.rates("Tx-pps" if direction == "rx" else "Rx-pps"), default=0),
                "wakeups_per_s": d["wakeups"], "calls_per_s": d["calls_sent"], "drops": d["drops"]}
    finally:
        if tp is not None:
            tp.stop()
        v.close()


# ---- DPDK's own backend ---------------------------------------------------

def dpdk_pair(dir_, length, back_mode, drive_mode, secs, cpus, extra_drive=()):
    """testpmd net_vhost (backend) and testpmd virtio-user (driver):
    (backend's Rx-pps, driver's Rx-pps)."""
    path = os.path.join(dir_, f"dpdk-{length}-{back_mode}.sock")
    tx = [f"--txpkts={length - 4}"]
    back = Testpmd(cpus[0], [f"net_vhost0,iface={path},queues=1"], back_mode,
                   *(tx if back_mode == "txonly" else ()), tag="vbb")
    drv = None
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            if back.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"net_vhost did not start: {back.text()[-600:]}")
            time.sleep(0.05)
        drv = Testpmd(cpus[1], [f"net_virtio_user0,path={path},queues=1,mac={DMAC}"], drive_mode,
                      *(tx if drive_mode in ("txonly", "io") else ()), *extra_drive, tag="vbd")
        drv.wait_for("Port statistics")
        # testpmd reports once a second: the first two periods are warm-up.
        time.sleep(max(secs, 1.0) + 2.5)
        return back.rates(), drv.rates()
    finally:
        if drv is not None:
            drv.stop()
        back.stop()


# ---- ping through a tap ---------------------------------------------------

def _ping_p50(ns, count):
    from tests.lab import ping
    rtts, out = ping(ns, DIP, count, interval=0.05)
    if len(rtts) < count // 2:
        raise RuntimeError(f"ping: {len(rtts)} of {count} answered: {out[-300:]}")
    return statistics.median(rtts[1:] or rtts) * 1000.0


def venet_ping(lab, count, cpus, poll_us=0, tag=""):
    """The bridge's worker on CPU A, as DPDK's backend in dpdk_tap_ping."""
    ns = lab.netns(f"vp{poll_us}{tag}")
    path = lab.socket_path(f"vh{poll_us}{tag}")
    br = lab.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", lab.socket_path(f"bus{poll_us}{tag}"),
                   "--mtu", "1500", "--poll-us", str(poll_us), "--vhost-user", path, "--cpu", str(cpus[0]))
    lab.addr(ns, "vt0", KIP)
    tp = Testpmd(cpus[1], [f"net_virtio_user0,path={path},queues=1,mac={DMAC}"], "icmpecho", tag="vbp")
    try:
        tp.wait_for("Port statistics")
        return _ping_p50(ns, count)
    finally:
        tp.stop()
        br.send_signal(signal.SIGTERM)
        br.wait(timeout=10)


def dpdk_tap_ping(lab, count, cpus, tag=""):
    ns = lab.netns(f"dp{tag}")
    path = lab.socket_path(f"dvh{tag}")
    back = Testpmd(cpus[0], [f"net_vhost0,iface={path},queues=1", "net_tap0,iface=dtap0"], "io",
                   ns=ns, tag="vbt")
    drv = None
    try:
        deadline = time.monotonic() + 15
        while not os.path.exists(path):
            if back.p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"net_vhost + net_tap did not start: {back.text()[-600:]}")
            time.sleep(0.05)
        drv = Testpmd(cpus[1], [f"net_virtio_user0,path={path},queues=1,mac={DMAC}"], "icmpecho",
                      tag="vbq")
        drv.wait_for("Port statistics")
        lab.addr(ns, "dtap0", KIP)
        return _ping_p50(ns, count)
    finally:
        if drv is not None:
            drv.stop()
        back.stop()


# ---- the run --------------------------------------------------------------

def run(quick=False, progress=print, secs=None, count=None):
    """secs: each rate's window; count: pings per ping row (the smoke test
    makes both small)."""
    secs = secs or (1.5 if quick else 4.0)
    count = count or (20 if quick else 100)
    sizes = (64,) if quick else (64, 1500)
    cpus = _cpus()
    rows, notes = [], []

    def row(name, metric, value):
        rows.append({"name": name, "metric": metric, "value": value})

    def step(names, fn, null_rows=True):
        """fn() or, when it cannot run, None with a note (and the rows
        `names` set to null unless null_rows is false)."""
        progress(", ".join(n for n, _ in names))
        try:
            got = fn()
        except Unavailable as e:
            why = f"not run: {e}"
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            why = f"failed: {str(e)[-300:]}"
        else:
            return got
        if null_rows:
            for n, m in names:
                row(n, m, None)
        notes.append(f"{names[0][0]}: {why}")
        return None

    if TESTPMD is None:
        raise Unavailable("dpdk-testpmd is not installed (Debian: apt-get install dpdk-dev, "
                          "or bench/install-clients.sh --dpdk)")
    if cpus[0] == cpus[1]:
        notes.append("one usable CPU: backend and driver share it; the rates are not comparable")
    dir_ = tempfile.mkdtemp(prefix="venet-bench-vhost-")
    try:
        for length in sizes:
            for poll_us, sfx in ((0, ""), (POLL_US, "-poll")):
                for d in ("rx", "tx"):
                    name = f"venet-vhost-{d}-{length}{sfx}"
                    got = step([(name, "frames_per_s")],
                               lambda: venet_null(dir_, length, poll_us, secs, cpus, d))
                    if got is not None:
                        row(name, "frames_per_s", got["rate"])
                        notes.append(f"{name}: testpmd's {'Tx' if d == 'rx' else 'Rx'}-pps "
                                     f"{got['driver_pps']:,.0f} (best period), engine wake-ups "
                                     f"{got['wakeups_per_s']:,.0f}/s, calls {got['calls_per_s']:,.0f}/s, "
                                     f"drops {got['drops']}")
            for (reflect, kind), (poll_us, sfx) in ((k, p) for k in ((0, "loop"), (256, "reflect"))
                                                    for p in ((0, ""), (POLL_US, "-poll"))):
                if length != 64:
                    break
                names = [(f"venet-vhost-{kind}-rx-{length}{sfx}", "frames_per_s"),
                         (f"venet-vhost-{kind}-tx-{length}{sfx}", "frames_per_s")]
                got = step(names, lambda: venet_loop(dir_, length, poll_us, secs, cpus, reflect=reflect))
                if got is not None:
                    row(names[0][0], "frames_per_s", got["rx"])
                    row(names[1][0], "frames_per_s", got["tx"])
                    notes.append(f"venet-vhost-{kind}-*-{length}{sfx}: engine wake-ups "
                                 f"{got['wakeups_per_s']:,.0f}/s, calls {got['calls_per_s']:,.0f}/s, "
                                 f"drops {got['drops']}")
            got = step([(f"dpdk-vhost-rx-{length}", "frames_per_s")],
                       lambda: _steady(dpdk_pair(dir_, length, "rxonly", "txonly", secs, cpus)[0]))
            if got is not None:
                row(f"dpdk-vhost-rx-{length}", "frames_per_s", got)
            got = step([(f"dpdk-vhost-tx-{length}", "frames_per_s")],
                       lambda: _steady(dpdk_pair(dir_, length, "txonly", "rxonly", secs, cpus)[1]))
            if got is not None:
                row(f"dpdk-vhost-tx-{length}", "frames_per_s", got)
        got = step([("dpdk-vhost-loop-rx-64", "frames_per_s"), ("dpdk-vhost-loop-tx-64", "frames_per_s")],
                   lambda: [_steady(r) for r in dpdk_pair(dir_, 64, "io", "io", secs, cpus, ("--tx-first",))])
        if got is not None:
            row("dpdk-vhost-loop-rx-64", "frames_per_s", got[0])
            row("dpdk-vhost-loop-tx-64", "frames_per_s", got[1])
        got = step([("venet-vhost-idle-cpu", "cpu_percent")],
                   lambda: venet_idle_cpu(dir_, 1.0 if quick else 3.0, cpus))
        if got is not None:
            row("venet-vhost-idle-cpu", "cpu_percent", got)
        ping_names = [("venet-vhost-ping", "rtt_us_p50"), ("venet-vhost-ping-signal", "rtt_us_p50"),
                      ("dpdk-vhost-tap-ping", "rtt_us_p50")]
        if os.geteuid() != 0:
            for n, m in ping_names:
                row(n, m, None)
            notes.append("ping rows: not run: they need root (a namespace and a tap)")
        else:
            from tests.lab import Lab
            lab = Lab("vbh")
            # Ping figures swing between runs (where the scheduler puts
            # ping, the host's placement of the vCPUs): the three setups
            # take turns, PING_ROUNDS rounds, and each row is the median of
            # its rounds' p50s.
            fns = (lambda r: venet_ping(lab, count, cpus, PING_POLL_US, tag=f"r{r}"),
                   lambda r: venet_ping(lab, count, cpus, tag=f"r{r}"),
                   lambda r: dpdk_tap_ping(lab, count, cpus, tag=f"r{r}"))
            got = {n: [] for n, _ in ping_names}
            try:
                for r in range(1 if quick else PING_ROUNDS):
                    for (n, m), fn in zip(ping_names, fns):
                        x = step([(n, m)], lambda: fn(r), null_rows=False)
                        if x is not None:
                            got[n].append(x)
            finally:
                lab.close()
            for n, m in ping_names:
                row(n, m, float(statistics.median(got[n])) if got[n] else None)
                if len(got[n]) > 1:
                    notes.append(f"{n}: p50 of each round {', '.join(f'{x:g}' for x in got[n])} us")
    finally:
        shutil.rmtree(dir_, ignore_errors=True)
    _targets(rows, notes)
    return rows, notes


def _targets(rows, notes):
    """The issue's targets, as ratios of this run's rows."""
    v = {r["name"]: r["value"] for r in rows}

    def ratio(a, b):
        return v[a] / v[b] if v.get(a) and v.get(b) else None
    for d in ("rx", "tx"):
        r = ratio(f"venet-vhost-{d}-64-poll", f"dpdk-vhost-{d}-64")
        rl = ratio(f"venet-vhost-loop-{d}-64-poll", f"dpdk-vhost-loop-{d}-64")
        s = ratio(f"venet-vhost-{d}-64", f"venet-vhost-{d}-64-poll")
        if r is not None:
            notes.append(f"target {d} 64: venet poll / DPDK net_vhost = {r:.2f} (aim >= 0.5)"
                         + (f"; / DPDK's loop of the same shape = {rl:.2f}" if rl is not None else ""))
        if s is not None:
            notes.append(f"target {d} 64: venet signal / venet poll = {s:.2f} (aim >= 0.5)")
        e = ratio(f"venet-vhost-reflect-{d}-64-poll", f"dpdk-vhost-loop-{d}-64")
        if e is not None:
            notes.append(f"{d} 64, the loop with no port: venet reflect poll / DPDK's loop = {e:.2f}")
    p = ratio("venet-vhost-ping", "dpdk-vhost-tap-ping")
    if p is not None:
        notes.append(f"target ping: venet (polling) / DPDK net_vhost+net_tap = {p:.2f} (aim <= 1.0)")
    p = ratio("venet-vhost-ping-signal", "dpdk-vhost-tap-ping")
    if p is not None:
        notes.append(f"ping, venet in signal mode / DPDK net_vhost+net_tap = {p:.2f}")


def fmt_value(metric, v):
    """A row's value as the tables show it (docs/benchmarks.md too)."""
    if v is None:
        return "n/a"
    if metric == "frames_per_s":
        return f"{v:,.0f} /s"
    if metric == "cpu_percent":
        return f"{v:.2f}%"
    if metric == "rtt_us_p50":
        return f"{v:,.0f} us"
    return f"{v:g}"


def format_table(rows, notes):
    out = ["| name | metric | value |", "|---|---|---:|"]
    out += [f"| {r['name']} | {r['metric']} | {fmt_value(r['metric'], r['value'])} |" for r in rows]
    return "\n".join(out + [""] + [f"- {n}" for n in notes])


def main(json_path=None, quick=False, out=sys.stdout):
    t0 = time.monotonic()
    rows, notes = run(quick, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    print(format_table(rows, notes), file=out)
    print(f"({time.monotonic() - t0:.0f} s)", file=out)
    if json_path:
        from bench.report import machine
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "notes": notes, "quick": quick, "machine": machine()}, f, indent=1)
    return rows, notes

