"""`venet bench e2e`: venet beside the kernel path and the userspace pumps a
user would pick instead, measured by clients no one here wrote, in one run.

For every topology and repeat, two namespaces are made, joined, measured
and torn down (tests.lab.Lab).  Topologies:
  veth        a veth pair: the kernel-only path (the RFC's "bare metal")
  venet       tap -> venet bridge -> rings -> venet attach -> tap
  venet-poll  the same with --poll-us (bounded busy-poll after work)
  venet-nooff venet with --offloads none on both sides: every frame MTU-sized
  venet-pin   venet with both pump threads pinned to CPU 0 (--cpu 0)
  venet-any   venet with the pumps wherever the scheduler puts them (--cpu any;
              the default, --cpu auto, co-locates them during bulk traffic)
  venet-capture
              venet with `venet capture vt0 -w /dev/null` attached to the
              bridge's device (MTU 1500 only): what a capture costs the traffic
  socat       two socat processes: tap <-> Unix SOCK_SEQPACKET <-> tap
  pypump      bench/pypump.py, the same shape in plain Python
  testpmd     DPDK testpmd between two net_tap ports, if dpdk-testpmd exists
  veth-1cpu, venet-1cpu
              veth and venet with everything (pumps, sockperf client and
              server) on one CPU, round trips only: no vCPU is ever woken
              from idle, so venet-1cpu minus veth-1cpu is the pumps' own
              work per round trip (their ratio is to veth-1cpu)
Clients: sockperf ping-pong (64 and 1400 bytes: p50, p99, round trips/s),
ping -f (average round trip), iperf3 TCP (one stream, MTU 1500 and 9000),
and the CPU use of the pump processes during each client and while idle;
for iperf3 also CPU seconds per gigabit moved, of the pumps and of the
whole machine (clients and kernel included, so veth has one too).
Every figure is the median of the repeats, with min and max, and a ratio
to veth from the same run.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from tests.lab import Lab, cpu_seconds, rss_kib, run_in

A, B = "10.77.0.1", "10.77.0.2"
TOPOLOGIES = ("veth", "venet", "venet-poll", "venet-nooff", "venet-pin", "venet-any", "venet-capture",
              "socat", "pypump", "testpmd", "veth-1cpu", "venet-1cpu")
ONE_CPU = "-1cpu"
POLL_US = 20_000
CLIENT_TOOLS = ("sockperf", "iperf3", "socat", "ping")


class Skip(Exception):
    """A topology that cannot run here (the reason is reported)."""


class NotAtThisMtu(Exception):
    """A topology that runs, but not at this MTU (the reason is reported)."""


def build(lab, topo, mtu):
    """Two namespaces joined by `topo`, addressed A/B; returns (a, b, pump procs)."""
    a, b = lab.netns("a"), lab.netns("b")
    procs = []
    pin = []
    if topo.endswith(ONE_CPU):
        pin = ["--cpu", str(one_cpu())]
        topo = topo[:-len(ONE_CPU)]
    if topo == "veth":
        lab.veth(a, b, "vt0", "vt1")
    elif topo.startswith("venet"):
        sock = lab.socket_path()
        extra = {"venet-poll": ["--poll-us", str(POLL_US)],
                 "venet-nooff": ["--offloads", "none"],
                 "venet-pin": ["--cpu", "0"],
                 "venet-any": ["--cpu", "any"]}.get(topo, []) + pin
        procs.append(lab.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock,
                               "--mtu", str(mtu), *extra))
        lab.bus_socket = sock
        procs.append(lab.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", b, *extra))
        if topo == "venet-capture":
            if mtu != 1500:
                raise NotAtThisMtu("the capture row is measured at MTU 1500")
            # Not one of `procs`: those are the pumps, whose CPU is reported.
            lab.start([sys.executable, "-m", "venet", "capture", "vt0", "--socket", sock,
                       "-w", os.devnull], ready=None)
            _wait_capture(sock)
    elif topo == "socat":
        sock = lab.socket_path()
        tun = "TUN,tun-type=tap,iff-no-pi,iff-up,tun-name={}"
        # -b: socat's default 8 KiB buffer truncates jumbo frames
        procs.append(lab.start(["socat", "-b", "65536", tun.format("vt0"),
                                f"UNIX-LISTEN:{sock},type=5"], ns=a, ready=None))
        _wait_path(sock)
        procs.append(lab.start(["socat", "-b", "65536", tun.format("vt1"),
                                f"UNIX-CONNECT:{sock},type=5"], ns=b, ready=None))
    elif topo == "pypump":
        sock = lab.socket_path()
        procs.append(lab.start([sys.executable, "-m", "bench.pypump", "listen", sock, "vt0", a]))
        procs.append(lab.start([sys.executable, "-m", "bench.pypump", "connect", sock, "vt1", b]))
    elif topo == "testpmd":
        if shutil.which("dpdk-testpmd") is None:
            raise Skip("dpdk-testpmd is not installed (bench/install-clients.sh --dpdk)")
        if mtu > 1508:
            # Seen with DPDK 22.11: "Frame size (9014) > device max frame
            # size (1522)" and testpmd refuses to start.
            raise NotAtThisMtu("DPDK's net_tap takes frames of at most 1522 bytes")
        # testpmd runs in a namespace of its own, creates its two taps there,
        # busy-polls one core forwarding between them, and only once it
        # forwards are the taps moved into the two test namespaces.
        c = lab.netns("pmd")
        procs.append(lab.start(
            ["stdbuf", "-oL",            # line-buffered, so its "ready" line arrives
             "dpdk-testpmd", "--no-huge", "-m", "512", "--no-pci", "-l", "0,1",
             "--vdev=net_tap0,iface=vt0", "--vdev=net_tap1,iface=vt1", "--",
             "--forward-mode=io", "--auto-start", "--total-num-mbufs=8192",
             f"--mbuf-size={max(2176, mtu + 14 + 128 + 64)}", f"--max-pkt-len={mtu + 14}"],
            ns=c, ready="Press enter to exit", timeout=60, stdin=subprocess.PIPE))
        lab.move(c, "vt0", a)
        lab.move(c, "vt1", b)
    lab.addr(a, "vt0", A, mtu=mtu)
    lab.addr(b, "vt1", B, mtu=mtu)
    return a, b, procs


def _wait_capture(sock, timeout=20):
    from venet import frontend
    deadline = time.monotonic() + timeout
    while True:
        with frontend.connect(sock) as bus:
            if bus.stats()["devices"][0]["counters"].get("captures"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("venet capture did not attach")
        time.sleep(0.05)


def one_cpu():
    """The CPU the -1cpu topologies put everything on."""
    return min(os.sched_getaffinity(0))


def _wait_path(path, timeout=10):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)


def machine_cpu_seconds():
    """Busy CPU seconds of the whole machine so far (/proc/stat: all but
    idle and iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _cpu(procs):
    try:
        return sum(cpu_seconds(p.pid) for p in procs)
    except FileNotFoundError:
        return 0.0


class Run:
    """One build of one topology: runs the clients and collects samples."""

    def __init__(self, lab, topo, mtu, secs):
        self.lab, self.topo, self.mtu, self.secs = lab, topo, mtu, secs
        # The -1cpu topologies run their clients on the pumps' CPU too.
        self.pin = ["taskset", "-c", str(one_cpu())] if topo.endswith(ONE_CPU) else []
        self.a, self.b, self.procs = build(lab, topo, mtu)
        self.samples = []
        run_in(self.a, ["ping", "-c", "3", "-i", "0.05", "-W", "2", B])   # ARP, warm-up

    def add(self, client, metric, value, command):
        self.samples.append({"topology": self.topo, "client": client, "mtu": self.mtu,
                             "metric": metric, "value": value, "command": command})

    def timed(self, client, fn):
        c0, t0 = _cpu(self.procs), time.monotonic()
        b0 = self.bridge_counters()
        fn()
        if self.procs:
            self.add(client, "cpu_percent", 100 * (_cpu(self.procs) - c0) / (time.monotonic() - t0),
                     "CPU of the pump processes during the client")
        b1 = self.bridge_counters()
        if b0 and b1 and b1["wakeups"] > b0["wakeups"]:
            frames = sum(b1[k] - b0[k] for k in ("to_tap_frames", "from_tap_frames"))
            self.add(client, "frames_per_wakeup", frames / (b1["wakeups"] - b0["wakeups"]),
                     "frames the bridge pump moved per epoll wake-up (venet stats)")

    def bridge_counters(self):
        sock = getattr(self.lab, "bus_socket", None)
        if not sock:
            return None
        from venet import frontend
        with frontend.connect(sock) as bus:
            return bus.stats()["devices"][0]["counters"]

    def sockperf(self, size):
        client = f"sockperf-{size}"
        cmd = self.pin + ["sockperf", "ping-pong", "-i", B, "-p", "11111", "-t", str(self.secs),
                          "-m", str(size), "--full-rtt"]
        srv = self.lab.popen_in(self.b, self.pin + ["sockperf", "server", "-i", B, "-p", "11111"])
        time.sleep(0.3)
        try:
            def go():
                r = run_in(self.a, cmd, timeout=self.secs + 30)
                out = r.stdout
                p50 = re.search(r"percentile 50\.000 =\s+([\d.]+)", out)
                p99 = re.search(r"percentile 99\.000 =\s+([\d.]+)", out)
                valid = re.search(r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=\d+; "
                                  r"ReceivedMessages=(\d+)", out)
                if not (p50 and p99 and valid):
                    raise RuntimeError(f"{self.topo}: sockperf gave no figures: {out[-300:]}{r.stderr[-300:]}")
                text = " ".join(cmd)
                self.add(client, "rtt_us_p50", float(p50.group(1)), text)
                self.add(client, "rtt_us_p99", float(p99.group(1)), text)
                self.add(client, "rtt_per_s", int(valid.group(2)) / float(valid.group(1)), text)
            self.timed(client, go)
        finally:
            srv.terminate()
            srv.wait(timeout=5)

    def ping_flood(self):
        cmd = ["ping", "-n", "-q", "-f", "-c", str(2000 * self.secs), "-W", "2", B]

        def go():
            out = run_in(self.a, cmd, timeout=60).stdout
            m = re.search(r"= [\d.]+/([\d.]+)/", out)
            if not m:
                raise RuntimeError(f"{self.topo}: ping -f gave no figures: {out[-300:]}")
            self.add("ping-f", "rtt_us_avg", float(m.group(1)) * 1000, " ".join(cmd))
        self.timed("ping-f", go)

    def iperf3(self):
        client = f"iperf3-mtu{self.mtu}"
        cmd = ["iperf3", "-c", B, "-t", str(self.secs), "-J"]
        srv = self.lab.popen_in(self.b, ["iperf3", "-s", "-1", "-B", B])
        time.sleep(0.3)
        try:
            def go():
                p0, m0 = _cpu(self.procs), machine_cpu_seconds()
                r = run_in(self.a, cmd, timeout=self.secs + 30)
                p1, m1 = _cpu(self.procs), machine_cpu_seconds()
                try:
                    end = json.loads(r.stdout)["end"]["sum_received"]
                    bps, nbytes = end["bits_per_second"], end["bytes"]
                except (ValueError, KeyError):
                    raise RuntimeError(f"{self.topo}: iperf3 failed: {r.stdout[-300:]}{r.stderr[-300:]}")
                if bps <= 0:
                    raise RuntimeError(f"{self.topo}: iperf3 moved no data")
                text = " ".join(cmd)
                self.add(client, "gbit_per_s", bps / 1e9, text)
                gbit = nbytes * 8 / 1e9
                self.add(client, "machine_cpu_s_per_gbit", (m1 - m0) / gbit, text)
                if self.procs:
                    self.add(client, "pump_cpu_s_per_gbit", (p1 - p0) / gbit, text)
            self.timed(client, go)
        finally:
            if srv.poll() is None:
                srv.terminate()
            srv.wait(timeout=10)

    def idle(self):
        if not self.procs:
            return
        try:
            rss = [rss_kib(p.pid) / 1024 for p in self.procs]
        except FileNotFoundError:
            rss = None
        if rss:
            what = "resident memory of the pump processes after traffic (VmRSS)"
            self.add("idle", "rss_mib", sum(rss), what)
            if self.topo.startswith("venet"):
                self.add("idle", "rss_mib_bridge", rss[0], what)
                self.add("idle", "rss_mib_attach", rss[1], what)
        time.sleep(0.5)
        c0, t0 = _cpu(self.procs), time.monotonic()
        time.sleep(2)
        self.add("idle", "cpu_percent", 100 * (_cpu(self.procs) - c0) / (time.monotonic() - t0),
                 "CPU of the pump processes over 2 s, from 0.5 s after traffic")


def measure(topo, mtu, secs):
    with Lab("vnb") as lab:
        r = Run(lab, topo, mtu, secs)
        try:
            if topo.endswith(ONE_CPU):
                r.sockperf(64)
                return r.samples
            if mtu == 1500:
                r.sockperf(64)
                r.sockperf(1400)
                r.ping_flood()
                r.idle()
            r.iperf3()
        except RuntimeError as e:
            dead = [f"{p.args[0]} (pid {p.pid}) exited {p.returncode}: {p.stderr.read().strip()[-300:]}"
                    for p in r.procs if p.poll() is not None]
            raise RuntimeError("; ".join([str(e)] + dead)) from None
        return r.samples


def aggregate(samples):
    groups = {}
    for s in samples:
        groups.setdefault((s["topology"], s["client"], s["mtu"], s["metric"]), []).append(s)
    rows = []
    for (topo, client, mtu, metric), ss in groups.items():
        vals = [s["value"] for s in ss]
        rows.append({"topology": topo, "client": client, "mtu": mtu, "metric": metric,
                     "value": statistics.median(vals), "min": min(vals), "max": max(vals),
                     "runs": len(vals), "command": ss[0]["command"]})
    base = {(r["topology"], r["client"], r["mtu"], r["metric"]): r["value"] for r in rows
            if r["topology"] in ("veth", "veth" + ONE_CPU)}
    for r in rows:
        ref = "veth" + ONE_CPU if r["topology"].endswith(ONE_CPU) else "veth"
        b = base.get((ref, r["client"], r["mtu"], r["metric"]))
        r["ratio_to_veth"] = r["value"] / b if b else None
    order = {t: i for i, t in enumerate(TOPOLOGIES)}
    rows.sort(key=lambda r: (order[r["topology"]], r["mtu"], r["client"], r["metric"]))
    return rows


def run(quick=False, repeats=None, topologies=TOPOLOGIES, progress=None):
    missing = [t for t in CLIENT_TOOLS if shutil.which(t) is None]
    bad = [t for t in topologies if t not in TOPOLOGIES]
    if bad:
        raise RuntimeError(f"unknown topologies: {', '.join(bad)}")
    if missing:
        raise RuntimeError(f"missing clients: {', '.join(missing)} (run bench/install-clients.sh)")
    repeats = repeats or (1 if quick else 3)
    secs = 1 if quick else 3
    samples, notes = [], {}
    for rep in range(repeats):
        for topo in topologies:
            if topo in notes:
                continue
            for mtu in ((1500,) if quick or topo.endswith(ONE_CPU) else (1500, 9000)):
                try:
                    samples.extend(measure(topo, mtu, secs))
                    status = "done"
                except Skip as e:
                    notes[topo] = f"skipped: {e}"
                    break
                except NotAtThisMtu as e:
                    notes[f"{topo} mtu {mtu}"] = f"not measured: {e}"
                    continue
                except RuntimeError as e:
                    # One failed run is reported, not fatal: the medians
                    # use the runs that completed (see each row's "runs").
                    notes[f"{topo} mtu {mtu} run {rep + 1}"] = f"failed: {e}"
                    status = "FAILED"
                if progress:
                    progress(f"run {rep + 1}/{repeats}: {topo} mtu {mtu} {status}")
    return aggregate(samples), notes


def format_table(rows, notes):
    head = f"{'topology':<11} {'client':<14} {'mtu':>5} {'metric':<22} {'median':>10} {'min':>10} {'max':>10} {'x veth':>7}"
    lines = [head]
    for r in rows:
        rat = f"{r['ratio_to_veth']:.2f}" if r["ratio_to_veth"] is not None else ""
        lines.append(f"{r['topology']:<11} {r['client']:<14} {r['mtu']:>5} {r['metric']:<22} "
                     f"{r['value']:>10.2f} {r['min']:>10.2f} {r['max']:>10.2f} {rat:>7}")
    for what, why in notes.items():
        lines.append(f"{what}: {why}")
    return "\n".join(lines)


def write_out(rows, notes, out_dir):
    """A markdown table and PNG plots (matplotlib) in out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    from bench.report import e2e_table
    with open(os.path.join(out_dir, "e2e.md"), "w") as f:
        f.write("\n".join(e2e_table(rows, notes)) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    topos = [t for t in TOPOLOGIES if any(r["topology"] == t for r in rows)]

    def value(topo, client, mtu, metric):
        for r in rows:
            if (r["topology"], r["client"], r["mtu"], r["metric"]) == (topo, client, mtu, metric):
                return r["value"], r["min"], r["max"]
        return None

    def bars(ax, series, ylabel, title):
        if not series or not topos:
            ax.set_title(f"{title}: no results")
            return
        width = 0.8 / len(series)
        for i, (label, vals) in enumerate(series):
            xs = [j + i * width for j in range(len(topos))]
            ys = [v[0] if v else 0 for v in vals]
            err = [[v[0] - v[1] if v else 0 for v in vals], [v[2] - v[0] if v else 0 for v in vals]]
            ax.bar(xs, ys, width, yerr=err, label=label, capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(topos))], topos)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend()

    fig, ax = plt.subplots(figsize=(8, 4))
    bars(ax, [(f"{c} {m}", [value(t, c, 1500, f"rtt_us_{m}") for t in topos])
              for c in ("sockperf-64", "sockperf-1400") for m in ("p50", "p99")],
         "round trip (us)", "sockperf ping-pong round trip (median of runs, min-max bars)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "rtt.png"), dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 4))
    mtus = sorted({r["mtu"] for r in rows if r["client"].startswith("iperf3")})
    bars(ax, [(f"MTU {m}", [value(t, f"iperf3-mtu{m}", m, "gbit_per_s") for t in topos]) for m in mtus],
         "Gbit/s", "iperf3 TCP, one stream")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "tcp.png"), dpi=100)
    plt.close(fig)


def _interrupt():
    raise KeyboardInterrupt


def main(json_path=None, out_dir=None, quick=False, topologies=TOPOLOGIES, out=sys.stdout, repeats=None):
    from venet.service import on_stop_signals
    t0 = time.monotonic()
    # SIGTERM unwinds like Ctrl-C, so every Lab tears down what it made.
    restore = on_stop_signals(_interrupt)
    try:
        rows, notes = run(quick, repeats=repeats, topologies=topologies,
                          progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    finally:
        restore()
    print(format_table(rows, notes), file=out)
    print(f"({time.monotonic() - t0:.0f} s)", file=out)
    if json_path:
        with open(json_path, "w") as f:
            from bench.report import machine
            json.dump({"rows": rows, "notes": notes, "poll_us": POLL_US, "machine": machine()}, f,
                      indent=1)
    if out_dir:
        write_out(rows, notes, out_dir)
    return rows, notes
