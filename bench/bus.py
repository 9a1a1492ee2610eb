"""`venet bench bus`: many devices on one daemon (issue 12, item 9).

One `venet daemon` (a subprocess with a run dir of its own) serves one bus,
`bench`.  Frontend processes ("holders", HOLDERS of them, forked from the
bench) create, link and open its devices one at a time, round-robin, and
keep them open: N_LOOP venet-loopback devices, then N_TAP venet-tap
devices whose taps live in a namespace the bench makes (and removes).

Measured:

- per device, in the holder that opens it: the time from `device-create`
  (an admin request) through `bus-link` and the frontend's `open` to the
  first frame back through it (loopback: the frame itself; tap: the
  kernel's ARP reply from the namespace, where 10.77.0.1/32 sits on lo);
  median and p90;
- the daemon's memory per device: RSS and PSS growth from
  /proc/PID/smaps_rollup, less the frontends' shared regions (the memfd
  mappings, summed from /proc/PID/smaps), divided by the devices added;
- shared memory per device: the region the frontend made (its size);
- idle, with every loopback device open (and again with the taps too):
  the daemon's utime+stime (/proc/PID/stat) and its threads' voluntary and
  involuntary context switches (/proc/PID/task/*/status) over a window;
- aggregate frames per second with 1, 8 and 64 loopback devices driven at
  once: up to 8 devices one holder process each, beyond that each holder
  drives several in turn (64: 8 processes x 8 devices).  A holder keeps a
  window of frames in flight per device with the frontend's batch calls
  (send_batch / recv_batch: ioq's put_batch / get_batch, no Python object
  per frame) and waits in poll() on the devices' fds when none has frames.

Everything runs as root (taps, namespaces); the lab (tests.lab.Lab) kills
what it started by pid and removes the namespace, also on SIGTERM/Ctrl-C.
"""
import json
import multiprocessing
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from tests.lab import ROOT, Lab, cpu_seconds

N_LOOP, N_TAP = 256, 64
QUICK_LOOP, QUICK_TAP = 64, 8          # --quick: fewer devices (64 keeps the 64-device drive)
HOLDERS = 8
DRIVES = (1, 8, 64)
IDLE_S, QUICK_IDLE_S = 5.0, 1.5
DRIVE_S, QUICK_DRIVE_S = 3.0, 1.0
BUS = "bench"
KIP, MYIP = "10.77.0.1", "10.77.0.2"
ME = "02:00:00:00:00:99"
FRAME_LEN = 60
BATCH = 32
WINDOW = 128                           # frames in flight per device (the loopback queue holds more)
FIRST_FRAME_TIMEOUT = 5.0


def _interrupt():
    raise KeyboardInterrupt


# ---- the daemon's side, from /proc -------------------------------------------

def daemon_memory(pid):
    """(rss, pss, shm_rss, shm_pss) in KiB: smaps_rollup's totals and the
    part of them in memfd mappings (the frontends' regions)."""
    tot = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, _, rest = line.partition(":")
            if k in ("Rss", "Pss"):
                tot[k] = int(rest.split()[0])
    shm = {"Rss": 0, "Pss": 0}
    in_memfd = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:
                in_memfd = len(head) == 6 and head[5].startswith("/memfd:")
            elif in_memfd and head and head[0] in ("Rss:", "Pss:"):
                shm[head[0][:-1]] += int(head[1])
    return tot["Rss"], tot["Pss"], shm["Rss"], shm["Pss"]


def context_switches(pid, main_only=False):
    """Voluntary + involuntary context switches of all of pid's threads
    (main_only: of its main thread, the control plane)."""
    n = 0
    for tid in [str(pid)] if main_only else os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                        n += int(line.split()[1])
        except OSError:
            pass                # a thread that ended meanwhile
    return n


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def idle(pid, secs):
    """(cpu percent, wake-ups per second, the main thread's wake-ups per
    second) of the daemon over `secs`."""
    c0, w0, m0, t0 = cpu_seconds(pid), context_switches(pid), context_switches(pid, True), time.monotonic()
    time.sleep(secs)
    c1, w1, m1, t1 = cpu_seconds(pid), context_switches(pid), context_switches(pid, True), time.monotonic()
    return 100.0 * (c1 - c0) / (t1 - t0), (w1 - w0) / (t1 - t0), (m1 - m0) / (t1 - t0)


# ---- holders: frontend processes ---------------------------------------------

def _frame(dst="ff:ff:ff:ff:ff:ff", arp=False):
    from scapy.all import ARP, Ether, raw
    if arp:
        return raw(Ether(src=ME, dst=dst) / ARP(op=1, hwsrc=ME, psrc=MYIP, pdst=KIP))
    return bytes.fromhex("020000000001") + bytes.fromhex(ME.replace(":", "")) + b"\x88\xb5" + \
        bytes(FRAME_LEN - 14)


class Holder:
    """A frontend process holding devices open, told what to do over a
    pipe.  Bus connections hold at most 16 devices each (the control
    plane's per-connection cap): a new one is made as needed."""

    def __init__(self, ctx, idx, run_dir, sock):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_holder_main, args=(child, run_dir, sock), name=f"holder-{idx}",
                                daemon=True)
        self.proc.start()
        child.close()

    def ask(self, *msg, timeout=60.0):
        self.conn.send(msg)
        return self.ask_reply(timeout)

    def send(self, *msg):
        self.conn.send(msg)

    def ask_reply(self, timeout):
        if not self.conn.poll(timeout):
            raise RuntimeError(f"holder {self.proc.pid} did not answer within {timeout:g} s")
        ok, value = self.conn.recv()
        if not ok:
            raise RuntimeError(f"holder {self.proc.pid}: {value}")
        return value

    def close(self):
        try:
            self.conn.send(("quit",))
        except OSError:
            pass
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()            # by pid
            self.proc.join(5)
        self.conn.close()


def _holder_main(conn, run_dir, sock):
    # The bench's signal handlers are not ours: the parent stops us by message
    # (or kills us by pid).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from venet import daemon, frontend
    _frame(arp=True)            # scapy's import, before any timing
    buses, devs = [], {}
    try:
        while True:
            msg = conn.recv()
            try:
                if msg[0] == "quit":
                    break
                if msg[0] == "add":
                    _, name, cls, attrs, arp = msg
                    t0 = time.perf_counter()
                    daemon.request(run_dir, {"op": "device-create", "name": name, "class": cls,
                                             "set": attrs})
                    daemon.request(run_dir, {"op": "bus-link", "bus": BUS, "device": name})
                    if not buses or len(buses[-1][1]) >= 16:
                        buses.append((frontend.connect(sock), []))
                    bus, held = buses[-1]
                    dev = bus.open(name)
                    held.append(dev)
                    f = _frame(arp=arp)
                    dev.send(f)
                    deadline = time.perf_counter() + FIRST_FRAME_TIMEOUT
                    while True:
                        got = dev.recv(timeout=max(0.0, deadline - time.perf_counter()))
                        if got is None:
                            raise RuntimeError(f"no frame back through {name} within "
                                               f"{FIRST_FRAME_TIMEOUT:g} s")
                        if (got[12:14] == b"\x08\x06" and got[20:22] == b"\x00\x02") if arp else got == f:
                            break
                    ms = (time.perf_counter() - t0) * 1e3
                    dev.flush_rx()
                    devs[name] = dev
                    conn.send((True, (ms, dev.region.size)))
                elif msg[0] == "drive":
                    _, names, secs, start = msg
                    conn.send((True, _drive([devs[n] for n in names], secs, start)))
                else:
                    conn.send((False, f"unknown message {msg[0]!r}"))
            except Exception as e:
                conn.send((False, f"{type(e).__name__}: {e}"))
    except (EOFError, KeyboardInterrupt):
        pass
    except BaseException:
        traceback.print_exc()
    finally:
        for bus, held in buses:
            try:
                bus.close()
            except Exception:
                pass


def _drive(devs, secs, start):
    """Keep WINDOW frames in flight on each device until start+secs;
    returns (frames back within the window, frames lost)."""
    frames = np.frombuffer(_frame() * BATCH, np.uint8).reshape(BATCH, FRAME_LEN).copy()
    out = np.zeros((BATCH, 2048), np.uint8)
    lens = np.zeros(BATCH, np.uint32)
    inflight = [0] * len(devs)
    last = [0.0] * len(devs)
    got = lost = 0
    fds = [d.fileno() for d in devs]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while time.monotonic() < start:
        time.sleep(min(0.01, max(0.0, start - time.monotonic())))
    end = start + secs
    now = time.monotonic()
    for i in range(len(devs)):
        last[i] = now
    while now < end:
        moved = False
        for i, d in enumerate(devs):
            room = WINDOW - inflight[i]
            if room >= BATCH:
                inflight[i] += d.send_batch(frames)
            n = d.recv_batch(out, lens, timeout=0)
            while n:
                got += n
                inflight[i] -= n
                moved = True
                last[i] = now
                n = d.recv_batch(out, lens, timeout=0) if inflight[i] > 0 else 0
        now = time.monotonic()
        if not moved:
            for i, d in enumerate(devs):
                if inflight[i] > 0 and now - last[i] > 0.5:
                    lost += inflight[i]         # dropped somewhere: start the window again
                    inflight[i], last[i] = 0, now
            if not any(d.arm() for d in devs):
                poller.poll(max(0, min(50, int((end - now) * 1000))))
            now = time.monotonic()
    # What was in flight at the end comes back after the window: drained, not counted.
    for i, d in enumerate(devs):
        deadline = time.monotonic() + 1.0
        while inflight[i] > 0 and time.monotonic() < deadline:
            n = d.recv_batch(out, lens, timeout=0.05)
            inflight[i] -= n
        d.flush_rx()
    return got, lost


# ---- the bench ---------------------------------------------------------------

def _fd_limit():
    """The daemon holds over a dozen descriptors per open device: its soft
    limit up to the hard one (a soft 1024 would not hold 256 devices)."""
    import resource
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _start_daemon(lab, run_dir):
    log = open(os.path.join(run_dir, "daemon.log"), "w")
    p = subprocess.Popen([sys.executable, "-m", "venet", "daemon", "--run-dir", run_dir,
                          "--log-level", "warning"], stdout=subprocess.PIPE, stderr=log, text=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), start_new_session=True,
                         preexec_fn=_fd_limit)
    log.close()
    lab.procs.append(p)             # lab.close() ends it by pid
    poller = select.poll()
    poller.register(p.stdout, select.POLLIN)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if poller.poll(200):
            line = p.stdout.readline()
            if line.startswith("ready"):
                return p
            if not line:
                break
    with open(os.path.join(run_dir, "daemon.log")) as f:
        raise RuntimeError(f"venet daemon did not start: {f.read().strip()[-300:]}")


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def run(quick=False, progress=print):
    from pyroute2 import IPRoute
    from venet import daemon as vdaemon
    n_loop, n_tap = (QUICK_LOOP, QUICK_TAP) if quick else (N_LOOP, N_TAP)
    idle_s, drive_s = (QUICK_IDLE_S, QUICK_DRIVE_S) if quick else (IDLE_S, DRIVE_S)
    rows, notes = [], []

    def row(name, metric, value):
        rows.append({"name": name, "metric": metric, "value": value})

    lab = Lab("vbb")
    run_dir = tempfile.mkdtemp(prefix="venet-bench-bus-")
    os.chmod(run_dir, 0o755)
    holders = []
    try:
        ns = lab.netns("taps")
        # No IPv6 on the taps: their neighbour discovery and MLD reports are
        # the kernel's traffic, which would wake the pumps during the idle
        # measurement; the bus alone is measured.
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw",
                        "net.ipv6.conf.default.disable_ipv6=1"], check=True)
        with IPRoute(netns=ns) as ipr:
            ipr.addr("add", index=ipr.link_lookup(ifname="lo")[0], address=KIP, prefixlen=32)
        d = _start_daemon(lab, run_dir)
        sock = vdaemon.request(run_dir, {"op": "bus-create", "name": BUS})["socket"]
        ctx = multiprocessing.get_context("fork")
        holders = [Holder(ctx, i, run_dir, sock) for i in range(HOLDERS)]
        time.sleep(0.2)
        mem0 = daemon_memory(d.pid)
        th0, fd0 = threads(d.pid), fds(d.pid)

        def add(names, cls, attrs, arp):
            times, sizes = [], []
            for i, name in enumerate(names):
                ms, size = holders[i % HOLDERS].ask("add", name, cls, attrs(i), arp)
                times.append(ms)
                sizes.append(size)
            return times, sizes

        def device_rows(name, n, times, sizes, before, after):
            rss = (after[0] - after[2]) - (before[0] - before[2])
            pss = (after[1] - after[3]) - (before[1] - before[3])
            row(name, "devices", n)
            row(name, "daemon_kib_per_device", rss / n)
            row(name, "daemon_pss_kib_per_device", pss / n)
            row(name, "shm_kib_per_device", statistics.mean(sizes) / 1024)
            row(name, "shm_touched_kib_per_device", ((after[2] - before[2]) / n))
            row(name, "create_to_first_frame_ms_p50", statistics.median(times))
            row(name, "create_to_first_frame_ms_p90", _pct(times, 0.9))
            row(name, "create_to_first_frame_ms_max", max(times))

        progress(f"creating, linking and opening {n_loop} venet-loopback devices")
        loops = [f"lo{i}" for i in range(n_loop)]
        times, sizes = add(loops, "venet-loopback", lambda i: {}, False)
        time.sleep(0.2)
        mem1 = daemon_memory(d.pid)
        device_rows("bus-device", n_loop, times, sizes, mem0, mem1)
        row("bus-device", "daemon_threads_per_device", (threads(d.pid) - th0) / n_loop)
        row("bus-device", "daemon_fds_per_device", (fds(d.pid) - fd0) / n_loop)

        progress(f"idle for {idle_s:g} s with {n_loop} loopback devices open")
        time.sleep(0.5)
        cpu, wake, main = idle(d.pid, idle_s)
        row("bus-idle", "devices_open", n_loop)
        row("bus-idle", "cpu_percent", cpu)
        row("bus-idle", "wakeups_per_s", wake)
        row("bus-idle", "main_thread_wakeups_per_s", main)

        for n in DRIVES:
            if n > n_loop:
                notes.append(f"bus-loopback-{n}: skipped, only {n_loop} loopback devices")
                continue
            procs = min(n, HOLDERS)
            progress(f"driving {n} loopback device(s) from {procs} process(es) for {drive_s:g} s")
            # Devices held by each holder (device i is held by holder i % HOLDERS).
            plan = {}
            for i in range(n):
                plan.setdefault(i % HOLDERS, []).append(loops[i])
            start = time.monotonic() + 0.3
            for h, names in plan.items():
                holders[h].send("drive", names, drive_s, start)
            got = lost = 0
            for h in plan:
                g, lo = holders[h].ask_reply(drive_s + 30)
                got, lost = got + g, lost + lo
            row(f"bus-loopback-{n}", "frames_per_s", got / drive_s)
            row(f"bus-loopback-{n}", "processes", procs)
            row(f"bus-loopback-{n}", "frames_lost", lost)

        if n_tap:
            progress(f"creating, linking and opening {n_tap} venet-tap devices in namespace {ns}")
            taps = [f"vb{i}" for i in range(n_tap)]
            mem2 = daemon_memory(d.pid)
            times, sizes = add(taps, "venet-tap", lambda i: {"netns": ns}, True)
            time.sleep(0.2)
            mem3 = daemon_memory(d.pid)
            device_rows("bus-device-tap", n_tap, times, sizes, mem2, mem3)
            progress(f"idle for {idle_s:g} s with all {n_loop + n_tap} devices open")
            time.sleep(0.5)
            cpu, wake, main = idle(d.pid, idle_s)
            row("bus-idle-all", "devices_open", n_loop + n_tap)
            row("bus-idle-all", "cpu_percent", cpu)
            row("bus-idle-all", "wakeups_per_s", wake)
            row("bus-idle-all", "main_thread_wakeups_per_s", main)
        if quick:
            notes.append(f"--quick: {n_loop} loopback and {n_tap} tap devices (the full run: "
                         f"{N_LOOP} and {N_TAP}), {idle_s:g} s idle windows, {drive_s:g} s drives")
        notes.append(f"frontends: {HOLDERS} holder processes, devices round-robin; a drive of N "
                     f"devices uses min(N, {HOLDERS}) processes, each driving its devices in turn; "
                     f"{WINDOW} frames of {FRAME_LEN} bytes in flight per device, batches of {BATCH}")
        for h in holders:
            h.close()
        holders = []
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(timeout=30)
        except subprocess.TimeoutExpired:
            notes.append("the daemon did not exit within 30 s of SIGTERM (killed)")
        return rows, notes
    finally:
        for h in holders:
            h.close()
        lab.close()
        shutil.rmtree(run_dir, ignore_errors=True)


def _fmt(metric, v):
    if metric.endswith("_ms_p50") or metric.endswith("_ms_p90") or metric.endswith("_ms_max"):
        return f"{v:.2f} ms"
    if metric.endswith("kib_per_device"):
        return f"{v:,.1f} KiB"
    if metric == "cpu_percent":
        return f"{v:.2f}%"
    if metric in ("frames_per_s", "wakeups_per_s"):
        return f"{v:,.0f} /s"
    return f"{v:g}"


def format_table(rows, notes):
    out = ["| name | metric | value |", "|---|---|---:|"]
    out += [f"| {r['name']} | {r['metric']} | {_fmt(r['metric'], r['value'])} |" for r in rows]
    return "\n".join(out + [""] + [f"- {n}" for n in notes])


def main(json_path=None, quick=False, out=sys.stdout):
    from venet.service import on_stop_signals
    t0 = time.monotonic()
    restore = on_stop_signals(_interrupt)       # SIGTERM unwinds like Ctrl-C: the lab is removed
    try:
        rows, notes = run(quick, progress=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
    finally:
        restore()
    print(format_table(rows, notes), file=out)
    print(f"({time.monotonic() - t0:.0f} s)", file=out)
    if json_path:
        from bench.report import machine
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "notes": notes, "quick": quick, "machine": machine()}, f, indent=1)
    return rows, notes
