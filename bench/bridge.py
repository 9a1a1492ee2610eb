"""`venet bench bridge`: round trips and TCP through venet against a veth
pair, in one run, between namespaces made for each topology.

Topologies:
  veth        a veth pair: the kernel-only path
  venet       tap -> venet bridge -> rings -> venet attach -> tap, default mode
  venet-poll  the same with --poll-us (bounded busy-poll in both pumps)
Clients: ping (p50/p99 round trip), a one-stream TCP transfer written in
Python (Gbit/s; the clients of issue 4, sockperf and iperf3, replace it
there), and the venet processes' CPU use while idle and during TCP.
"""
import json
import re
import statistics
import sys
import time

from venet.topology import Lab, cpu_seconds, ping, rss_kib, run_in

A, B = "10.77.0.1", "10.77.0.2"
TOPOLOGIES = ("veth", "venet", "venet-poll")
# venet-poll's window: longer than the gaps of the ping (10 ms), so the
# pumps stay awake through a ping session and sleep 20 ms after it ends.
POLL_US = 20_000

RECEIVER = """
import socket, time, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); s.settimeout(30)
c, _ = s.accept(); n = 0; t0 = None
buf = bytearray(1 << 20)
while True:
    k = c.recv_into(buf)
    if not k:
        break
    if t0 is None:
        t0 = time.perf_counter()
    n += k
print(n, time.perf_counter() - t0)
"""
SENDER = """
import socket, time, sys
c = socket.create_connection((sys.argv[1], 5201), timeout=30)
data = b"v" * (1 << 18); end = time.perf_counter() + float(sys.argv[2])
while time.perf_counter() < end:
    c.sendall(data)
c.close()
"""


def build(lab, topo, mtu):
    """Two namespaces joined by `topo`; returns (ns_a, ns_b, venet procs)."""
    a, b = lab.netns(f"{topo}-{mtu}-a"), lab.netns(f"{topo}-{mtu}-b")
    procs = []
    if topo == "veth":
        lab.veth(a, b, "vt0", "vt1", mtu=mtu)
    else:
        sock = lab.socket_path(f"{topo}-{mtu}")
        extra = ["--poll-us", str(POLL_US)] if topo == "venet-poll" else []
        procs.append(lab.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock,
                               "--mtu", str(mtu), *extra))
        procs.append(lab.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", b, *extra))
    lab.addr(a, "vt0", A)
    lab.addr(b, "vt1", B)
    return a, b, procs


def _cpu(procs):
    return sum(cpu_seconds(p.pid) for p in procs)


def measure(lab, topo, mtu, ping_count, tcp_secs, do_ping, sweep=False):
    rows = []
    a, b, procs = build(lab, topo, mtu)

    def row(client, metric, value, command):
        rows.append({"topology": topo, "client": client, "mtu": mtu, "metric": metric,
                     "value": value, "command": command})

    ping(a, B, 3, 0.05)                                  # ARP and warm-up
    if do_ping:
        cmd = f"ping -c {ping_count} -i 0.01 {B}"
        rtts, out = ping(a, B, ping_count, 0.01)
        if len(rtts) < ping_count * 0.9:
            raise RuntimeError(f"{topo}: ping lost replies: {out[-300:]}")
        q = statistics.quantiles(rtts, n=100)
        row("ping", "rtt_us_p50", statistics.median(rtts) * 1000, cmd)
        row("ping", "rtt_us_p99", q[98] * 1000, cmd)
        if sweep:
            # The same round trip at other gaps between pings: how much of
            # it is waking halted vCPUs (docs/benchmarks.md).
            for interval in (0.002, 0.05):
                rtts, _ = ping(a, B, 200, interval)
                row(f"ping-i{interval * 1000:g}ms", "rtt_us_p50", statistics.median(rtts) * 1000,
                    f"ping -c 200 -i {interval} {B}")
            out = run_in(a, ["ping", "-n", "-q", "-f", "-c", "5000", B], timeout=60).stdout
            m = re.search(r"= [\d.]+/([\d.]+)/", out)
            if m:
                row("ping-flood", "rtt_us_avg", float(m.group(1)) * 1000, f"ping -f -c 5000 {B}")
        if procs:
            time.sleep(0.5)        # past any busy-poll window of the last ping
            c0, t0 = _cpu(procs), time.monotonic()
            time.sleep(2)
            row("idle", "cpu_percent", 100 * (_cpu(procs) - c0) / (time.monotonic() - t0),
                "CPU of bridge+attach over 2 s, from 0.5 s after traffic")
            for name, p in zip(("bridge", "attach"), procs):
                row("rss", f"{name}_rss_kib", rss_kib(p.pid), "VmRSS")
    rx = lab.popen_in(b, [sys.executable, "-c", RECEIVER, B])
    time.sleep(0.3)
    c0, t0 = (_cpu(procs), time.monotonic())
    tx = run_in(a, [sys.executable, "-c", SENDER, B, str(tcp_secs)], timeout=tcp_secs + 60)
    out, err = rx.communicate(timeout=60)
    if tx.returncode or not out.strip():
        raise RuntimeError(f"{topo}: TCP transfer failed: {tx.stderr[-300:]} {err[-300:]}")
    n, secs = out.split()
    cmd = f"python TCP, one stream, {tcp_secs} s, MTU {mtu}"
    row("tcp", "gbit_per_s", int(n) * 8 / float(secs) / 1e9, cmd)
    if procs:
        row("tcp", "cpu_percent", 100 * (_cpu(procs) - c0) / (time.monotonic() - t0),
            "CPU of bridge+attach during TCP")
    return rows


def run(quick=False, progress=None):
    ping_count = 200 if quick else 1000
    tcp_secs = 1 if quick else 5
    mtus = (1500,) if quick else (1500, 9000)
    rows = []
    for topo in TOPOLOGIES:
        for mtu in mtus:
            with Lab("vbench") as lab:
                new = measure(lab, topo, mtu, ping_count, tcp_secs, do_ping=(mtu == 1500),
                              sweep=not quick and mtu == 1500)
            rows.extend(new)
            if progress:
                progress(f"{topo} mtu {mtu} done")
    return rows


def ratios(rows):
    base = {(r["client"], r["mtu"], r["metric"]): r["value"] for r in rows if r["topology"] == "veth"}
    for r in rows:
        b = base.get((r["client"], r["mtu"], r["metric"]))
        r["ratio_to_veth"] = r["value"] / b if b else None
    return rows


def format_table(rows):
    lines = [f"{'topology':<12} {'client':<13} {'mtu':>5} {'metric':<16} {'value':>12} {'x veth':>8}"]
    for r in rows:
        rat = f"{r['ratio_to_veth']:.2f}" if r.get("ratio_to_veth") else ""
        lines.append(f"{r['topology']:<12} {r['client']:<13} {r['mtu']:>5} {r['metric']:<16} "
                     f"{r['value']:>12.2f} {rat:>8}")
    return "\n".join(lines)


def main(json_path=None, quick=False, out=sys.stdout):
    rows = ratios(run(quick, progress=lambda m: print(f"  {m}", file=sys.stderr)))
    print(format_table(rows), file=out)
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"rows": rows, "poll_us": POLL_US}, f, indent=1)
    return rows
