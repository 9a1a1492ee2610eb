"""Isolation between frontends of one bus: while frontend A misbehaves in
each way of issue 10, does frontend B still get its control replies
within 100 ms and keep >= 90% of its traffic rate?

    python3 -m bench.isolation [--json FILE] [--quick]     (root)
    venet bench isolation [--json FILE] [--quick]

One bridge (a fresh one per scenario, in a namespace of its own) serves
two devices on one control socket: "a" on tap ta0 and "b" on tap tb0.
`venet bridge` serves one tap, so this bench runs the same Bridge and
Device classes itself (the `_serve` role below) with two.  It keeps the
soft RLIMIT_NOFILE of 1024 most services get.

Frontend B is two things at once, measured over the same window:
  - traffic: a process that owns device "b" and offers --rate frames/s
    (60-byte frames, bursts of 64, put without waiting: a full ring
    loses the burst's rest); its rate is what reaches tb0, from the
    kernel's rx_packets counter of tb0;
  - control: this process, probing in a loop: connect + HELLO on a fresh
    connection, then LIST and STATS on a long-lived one; each round trip
    timed, a reply not there in --probe-timeout counts as that long.
Each scenario measures a window with A absent, then starts A and, once A
says its misbehaviour is in effect, measures a second window; the
figures of the two windows are compared (same bridge, same run).

A's ways (the `_misbehave` role), after issue 10:
  control       A opens its device and stays idle (the noise floor)
  nesting       a deep-nesting JSON datagram before HELLO, on a new
                connection every 10 ms
  no-read       HELLO, OPEN, then STATS requests never read
  idle-conns    1000 connections that never say anything
  doorbell-evq  every doorbell it shares made blocking and full, kicks
                enabled, LINKUP; leaves half-way through the window
  doorbell-rx   every doorbell it shares made blocking and full, kicks
                enabled, frames sent to ta0; leaves half-way through
  hostile-desc  random and malformed descriptors at full rate
  stalled-rx    never reads its RX ring while frames are sent to ta0

Rows: {"rows": [{"name": scenario, "metric": ..., "value": ...}]}; for
each scenario ctl_{p50,p99,max}_ms and ctl_timeouts with A misbehaving
(the same with an _idle suffix for A absent), rate_fps, rate_idle_fps,
rate_ratio, bridge_alive and meets_targets (1 when the replies' p99 and
max are within 100 ms and rate_ratio >= 0.9).
"""
import argparse
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

import numpy as np

SCENARIOS = ("control", "nesting", "no-read", "idle-conns", "doorbell-evq", "doorbell-rx",
             "hostile-desc", "stalled-rx")
TARGET_MS = 100.0
TARGET_RATIO = 0.9
BRIDGE_NOFILE = 1024
IDLE_CONNS = 1000
INJECT_FPS = 20000          # frames/s sent to ta0 in the scenarios that need traffic for A
B_MAC = "02:00:00:00:0b:01"


# ---- the roles (separate processes) -------------------------------------

def _serve(sock, taps):
    """The bridge: two devices "a" and "b" on one control socket."""
    import logging
    from venet import bridge
    from venet.devices import tap as taplib
    from venet.service import on_stop_signals
    logging.basicConfig(level=logging.WARNING, format="isolation bridge: %(message)s",
                        stream=sys.stderr)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(BRIDGE_NOFILE, hard), hard))
    br = bridge.Bridge(sock, [])
    try:
        br.listen()
        for name, tap in zip("ab", taps):
            fd, created = taplib.open_tap(tap)
            dev = bridge.Device(name, tap, fd, created, None, None)
            br.devices[name] = dev
            taplib.configure(tap, mtu=1500)
            dev.mac, dev.mtu = taplib.link_info(tap)
        on_stop_signals(br.stop)
        print("ready", flush=True)
        br.serve()
    finally:
        br.close()


def _frames(n, dst="02:00:00:00:00:99", src=B_MAC):
    """n 60-byte frames to a MAC nobody has (the kernel drops them early)."""
    f = np.zeros((n, 60), dtype=np.uint8)
    f[:, 0:6] = np.frombuffer(bytes.fromhex(dst.replace(":", "")), dtype=np.uint8)
    f[:, 6:12] = np.frombuffer(bytes.fromhex(src.replace(":", "")), dtype=np.uint8)
    f[:, 12:14] = (0x88, 0xb5)          # IEEE local experimental ethertype
    f[:, 14:18] = np.arange(n, dtype=">u4").view(np.uint8).reshape(n, 4)
    return f


def _traffic(sock, device, rate):
    """Frontend B's traffic: `rate` frames/s offered to its device."""
    from venet import frontend
    bus = frontend.connect(sock)
    dev = bus.open(device)
    frames = _frames(64)
    print("ready", flush=True)
    t0 = time.monotonic()
    offered = 0
    while True:
        due = t0 + offered / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.1:
            t0, offered = now, 0        # fell behind (descheduled): do not burst to catch up
        dev.send_batch(frames)
        offered += len(frames)


def _inject(ns_tap, rate, stop_at=None):
    """Send `rate` frames/s to tap `ns_tap` from inside its namespace (the
    kernel transmits them on the tap: the bridge's pump reads them)."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ns_tap, 0))
    s.setblocking(False)
    frames = [bytes(f) for f in _frames(32, dst="ff:ff:ff:ff:ff:ff", src="02:00:00:00:0a:02")]
    t0 = time.monotonic()
    sent = 0
    while stop_at is None or time.monotonic() < stop_at:
        due = t0 + sent / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        elif now - due > 0.1:
            t0, sent = now, 0
        for f in frames:
            try:
                s.send(f)
            except (BlockingIOError, OSError):
                break
        sent += len(frames)


def _raw_device(sock, device, events):
    """Frontend A by hand, up to (not including) REGISTER: (socket, region)."""
    import ioq
    from venet import abi, control
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(5)
    s.connect(sock)
    control.call(s, control.HELLO, {"version": control.VERSION})
    control.call(s, control.OPEN, {"device": device})
    control.call(s, control.NEGCAP, {"device": device, "group": abi.CAP_GROUP_SG, "bits": abi.CAP_SG})
    control.call(s, control.NEGCAP, {"device": device, "group": abi.CAP_GROUP_EVENTQ, "bits": events})
    region = ioq.Region.create([256, 256, abi.EVQ_RING], buf_size=abi.buf_size_for(1500),
                               name=f"venet-{device}", roles=abi.FRONTEND_ROLES)
    return s, region


def _register(s, region, device):
    from venet import control
    fd, efds = region.handoff()
    control.call(s, control.REGISTER, {"device": device}, [fd] + [x for p in efds for x in p])


def _saturate(pairs):
    """Every doorbell frontend A shares made blocking and full: the eventfds
    the backend waits on at their counter's maximum (a write(1) by anyone
    would block), the socket ends the backend rings with their queues full
    (a blocking send would wait for a reader that never comes)."""
    from venet import abi
    for ring, pair in enumerate(pairs):
        role = abi.FRONTEND_ROLES[ring]
        waits, rings = pair[1 - role], pair[role]
        os.set_blocking(waits, False)
        try:
            os.eventfd_write(waits, 0xfffffffffffffffe)
        except BlockingIOError:
            pass
        os.set_blocking(waits, True)
        s = socket.socket(fileno=os.dup(rings))
        s.setblocking(False)
        try:
            while True:
                s.send(b"k" * 4096)
        except BlockingIOError:
            pass
        s.setblocking(True)                 # the shared description: blocking from now on
        s.close()


def _misbehave(kind, sock, tap, window):
    from venet import abi, control, frontend
    ready = lambda: print("misbehaving", flush=True)     # noqa: E731
    if kind == "control":
        bus = frontend.connect(sock)
        bus.open("a")
        ready()
        while True:
            time.sleep(1)
    if kind == "nesting":
        body = b"[" * 8000
        msg = b"VN\x01\x01" + struct.pack("<I", len(body)) + body
        first = True
        while True:
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.settimeout(1)
                s.connect(sock)
                s.send(msg)
                s.close()
            except OSError:
                pass
            if first:
                ready()
                first = False
            time.sleep(0.01)
    if kind == "no-read":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(5)
        s.connect(sock)
        control.call(s, control.HELLO, {"version": control.VERSION})
        control.call(s, control.OPEN, {"device": "a"})
        s.setblocking(False)
        msg = control.encode(control.STATS, {})
        sent = 0
        said = False
        while True:
            try:
                s.send(msg)
                sent += 1
            except BlockingIOError:
                if not said:
                    ready()
                    said = True
                select.select([], [s], [], 0.05)
            except OSError:
                time.sleep(0.05)
            if sent == 1000 and not said:
                ready()
                said = True
    if kind == "idle-conns":
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, IDLE_CONNS + 256), hard))
        held = []
        deadline = time.monotonic() + 20
        while len(held) < IDLE_CONNS and time.monotonic() < deadline:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.setblocking(False)
            try:
                s.connect(sock)
                held.append(s)
            except BlockingIOError:
                s.close()
                time.sleep(0.001)
            except OSError:
                s.close()
                break
        print(f"held {len(held)}", file=sys.stderr, flush=True)
        ready()
        while True:
            time.sleep(1)
    if kind in ("doorbell-evq", "doorbell-rx"):
        evq = kind == "doorbell-evq"
        s, region = _raw_device(sock, "a", abi.CAP_EVQ_LINKSTATE)
        _, efds = region.handoff()
        ring = abi.RING_EVQ if evq else abi.RING_RX
        cons = region.consumer(ring)
        _register(s, region, "a")
        if evq:
            cons.arm()                      # ask to be kicked, then make the kick block
            _saturate(efds)
            s.send(control.encode(control.LINKUP, {"device": "a"}))
        else:
            control.call(s, control.LINKUP, {"device": "a"})
            cons.arm()
            _saturate(efds)
        ready()
        leave = time.monotonic() + window / 2
        if evq:
            time.sleep(max(0.0, leave - time.monotonic()))
        else:
            _inject(tap, INJECT_FPS, stop_at=leave)
        os._exit(0)                         # gone without a word
    if kind == "hostile-desc":
        import ioq
        bus = frontend.connect(sock)
        dev = bus.open("a")
        rng = np.random.default_rng(1)
        n = 1 << 16
        d = np.zeros(n, dtype=ioq.DESC_DTYPE)
        r = dev.region
        lo = r.pool_offset
        d["offset"] = np.where(rng.random(n) < 0.5, lo + rng.integers(0, r.pool_size, n),
                               rng.integers(0, 2**63, n))
        d["len"] = rng.choice([0, 1, 13, 60, 1514, 1515, 70000, 2**31], n)
        d["flags"] = rng.choice([0, 0, ioq.F_INDIRECT, abi.F_MORE, abi.F_NEEDS_CSUM, abi.F_GSO,
                                 1 << 31, 0x2], n)
        d["cookie"] = rng.integers(0, 2**63, n)
        ready()
        i = 0
        while True:
            k = dev.tx.free()
            if k == 0:
                dev.tx.wait(0.1)
                continue
            k = min(k, n - i)
            i = (i + dev.tx.push(d[i:i + k])) % n
    if kind == "stalled-rx":
        bus = frontend.connect(sock)
        bus.open("a")                       # and never reads it
        ready()
        _inject(tap, INJECT_FPS)
    raise SystemExit(f"unknown misbehaviour {kind}")


# ---- the measurement (this process) ---------------------------------------

class Prober:
    """B's control plane: HELLO on a fresh connection, LIST and STATS on a
    long-lived one, each round trip timed."""

    def __init__(self, sock, timeout):
        self.path = sock
        self.timeout = timeout
        self.conn = None

    def _connect(self):
        from venet import control
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
            control.call(s, control.HELLO, {"version": control.VERSION})
        except BaseException:
            s.close()
            raise
        return s

    def _timed(self, fn):
        t = time.perf_counter()
        try:
            fn()
        except Exception as e:
            if os.environ.get("ISO_DEBUG"):
                print("probe:", type(e).__name__, e, file=sys.stderr)
            return None
        return (time.perf_counter() - t) * 1000

    def round(self):
        """One probe of each kind: [(kind, ms or None for no reply)]."""
        from venet import control
        out = []
        ms = self._timed(lambda: self._connect().close())
        out.append(("hello", ms))
        for kind, mtype in (("list", control.LIST), ("stats", control.STATS)):
            if self.conn is None:
                try:
                    self.conn = self._connect()
                except Exception:
                    out.append((kind, None))
                    continue
            ms = self._timed(lambda: control.call(self.conn, mtype))
            if ms is None:
                # A late reply would answer the next request: start afresh.
                self.conn.close()
                self.conn = None
            out.append((kind, ms))
        return out

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def _rx_packets(ns, ifname):
    """The kernel's rx_packets of `ifname` in `ns`, from `ip -j -s link`
    run inside it (a pyroute2 socket made for the namespace now and then
    did not find the link here)."""
    from tests.lab import run_in
    r = run_in(ns, ["ip", "-j", "-s", "link", "show", "dev", ifname], timeout=10)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)[0]["stats64"]["rx"]["packets"]


def _window(prober, ns, secs):
    """Probe for `secs` while B's traffic runs: (latencies by kind, rate)."""
    lat = {"hello": [], "list": [], "stats": []}
    timeouts = 0
    r0, t0 = _rx_packets(ns, "tb0"), time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        for kind, ms in prober.round():
            if ms is None:
                timeouts += 1
                ms = prober.timeout * 1000
            lat[kind].append(ms)
        time.sleep(0.02)
    r1, t1 = _rx_packets(ns, "tb0"), time.monotonic()
    rate = None if r0 is None or r1 is None else (r1 - r0) / (t1 - t0)
    return lat, timeouts, rate


def _figures(lat, timeouts, suffix=""):
    allv = np.array([v for vs in lat.values() for v in vs] or [float("nan")])
    return {f"ctl_p50_ms{suffix}": float(np.percentile(allv, 50)),
            f"ctl_p99_ms{suffix}": float(np.percentile(allv, 99)),
            f"ctl_max_ms{suffix}": float(allv.max()),
            f"ctl_probes{suffix}": int(sum(len(v) for v in lat.values())),
            f"ctl_timeouts{suffix}": timeouts}


def run_scenario(lab, kind, window, rate, probe_timeout, out):
    ns = lab.netns(f"i{SCENARIOS.index(kind)}")
    sock = lab.socket_path(f"iso-{SCENARIOS.index(kind)}")
    me = [sys.executable, "-m", "bench.isolation"]
    procs = []
    started = False
    try:
        srv = lab.start(me + ["_serve", sock, "ta0", "tb0"], ns=ns)
        procs.append(srv)
        procs.append(lab.start(me + ["_traffic", sock, "b", str(rate)]))
        prober = Prober(sock, probe_timeout)
        idle = _window(prober, ns, window)
        try:
            procs.append(lab.start(me + ["_misbehave", kind, sock, "ta0", str(window)], ns=ns,
                                   ready="misbehaving", timeout=30))
            started = True
        except RuntimeError as e:
            # Measured all the same, but a scenario A never played proves
            # nothing: it cannot meet the targets.
            print(f"{kind}: frontend A did not get going: {e}", file=out, flush=True)
        bad = _window(prober, ns, window)
        prober.close()
        alive = srv.poll() is None
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
            p.wait()
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
            lab.procs.remove(p)
    fig = _figures(*bad[:2])
    fig.update(_figures(*idle[:2], suffix="_idle"))
    fig["rate_idle_fps"] = idle[2] or 0.0
    fig["rate_fps"] = bad[2] or 0.0
    fig["rate_ratio"] = fig["rate_fps"] / fig["rate_idle_fps"] if fig["rate_idle_fps"] else 0.0
    fig["bridge_alive"] = int(alive)
    fig["misbehaved"] = int(started)
    fig["meets_targets"] = int(started and alive and fig["ctl_p99_ms"] <= TARGET_MS and fig["ctl_max_ms"] <= TARGET_MS
                               and fig["ctl_timeouts"] == 0 and fig["rate_ratio"] >= TARGET_RATIO)
    print(f"{kind:<13} ctl p50/p99/max {fig['ctl_p50_ms']:8.2f} {fig['ctl_p99_ms']:8.2f} "
          f"{fig['ctl_max_ms']:8.1f} ms, {fig['ctl_timeouts']:3d} unanswered "
          f"(A absent: {fig['ctl_p99_ms_idle']:.2f} ms p99) | B rate {fig['rate_fps']:8.0f} fps "
          f"of {fig['rate_idle_fps']:8.0f} ({100 * fig['rate_ratio']:5.1f}%) | bridge "
          f"{'up' if alive else 'DEAD'} | {'ok' if fig['meets_targets'] else 'MISSED'}"
          f"{'' if started else ' (A never misbehaved)'}",
          file=out, flush=True)
    return fig


def main(json_path=None, quick=False, scenarios=SCENARIOS, out=sys.stdout, window=None, rate=None,
         probe_timeout=None):
    from tests.lab import Lab
    if os.geteuid() != 0:
        raise RuntimeError("the isolation bench needs root: it creates a namespace and taps")
    window = window or (1.5 if quick else 4.0)
    rate = rate or (10000 if quick else 20000)
    probe_timeout = probe_timeout or (0.5 if quick else 2.0)
    print(f"isolation: {window} s windows, B offers {rate} frames/s, probes time out after "
          f"{probe_timeout} s; targets: replies within {TARGET_MS:.0f} ms, rate >= "
          f"{100 * TARGET_RATIO:.0f}%", file=out, flush=True)
    # numpy's OpenBLAS would start a thread per CPU in every role process.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    rows = []
    with Lab("viso") as lab:
        for kind in scenarios:
            fig = run_scenario(lab, kind, window, rate, probe_timeout, out)
            rows += [{"name": kind, "metric": k, "value": v} for k, v in fig.items()]
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
            f.write("\n")
    return rows


def _cli(argv):
    roles = {"_serve": lambda a: _serve(a[0], a[1:]),
             "_traffic": lambda a: _traffic(a[0], a[1], float(a[2])),
             "_misbehave": lambda a: _misbehave(a[0], a[1], a[2], float(a[3]))}
    if argv and argv[0] in roles:
        return roles[argv[0]](argv[1:]) or 0
    p = argparse.ArgumentParser(prog="python3 -m bench.isolation", description=__doc__.split("\n")[0])
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.add_argument("--quick", action="store_true", help="short windows (smoke runs)")
    p.add_argument("--scenarios", help=f"a subset of {','.join(SCENARIOS)}")
    args = p.parse_args(argv)
    chosen = SCENARIOS
    if args.scenarios:
        chosen = tuple(s for s in args.scenarios.split(",") if s)
        bad = [s for s in chosen if s not in SCENARIOS]
        if bad or not chosen:
            p.error(f"unknown scenario {','.join(bad) or args.scenarios!r}; choose from {','.join(SCENARIOS)}")
    try:
        main(json_path=args.json, quick=args.quick, scenarios=chosen)
    except RuntimeError as e:
        print(f"bench.isolation: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_cli(sys.argv[1:]))
