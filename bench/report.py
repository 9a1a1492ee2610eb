"""Render docs/benchmarks.md from the JSON the benchmark commands wrote, so
the page is kept current by re-running commands, never by hand:

    make bench-ring bench-notify bench-e2e     # measure (writes docs/*.json)
    python -m bench.report                     # = make bench-docs

Prose lives here beside the tables it explains; figures come only from the
JSON files (each records when and where it was measured).
"""
import json
import os
import platform
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def machine():
    """Where a benchmark ran: stored in its JSON."""
    cpu = "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _load(name):
    path = os.path.join(DOCS, name)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _where(data):
    m = data.get("machine") or {}
    if not m:
        return "(machine not recorded)"
    return f"{m['date']}, {m['cpu']} x{m['cpus']}, Linux {m['kernel']}, Python {m['python']}"


def _fmt(metric, v):
    if v is None:
        return "n/a"
    if metric.startswith("rtt_ns"):
        return f"{v:,.0f} ns"
    if metric == "msgs_per_s":
        return f"{v / 1e6:,.2f} M/s"
    if metric == "gbit_per_s":
        return f"{v:.2f} Gbit/s"
    if metric.startswith("rtt_us"):
        return f"{v:.1f} us"
    if metric == "rtt_per_s":
        return f"{v:,.0f} /s"
    if metric == "cpu_percent":
        return f"{v:.1f}%"
    if metric.startswith("rss_mib"):
        return f"{v:.1f} MiB"
    if metric == "frames_per_wakeup":
        return f"{v:.1f}"
    if metric.endswith("cpu_s_per_gbit"):
        return f"{v:.3f} s/Gbit"
    return f"{v:.4g}"


def ring_section(data):
    rows = data["rows"]
    v = {(r["name"], r["metric"]): r["value"] for r in rows}
    spin = v.get(("spin-pingpong-c", "rtt_ns_p50"))
    out = ["## Ring core: `venet bench ring`", "",
           "```", "make bench-ring     # python -m venet bench ring --json docs/ring-bench.json", "```", "",
           f"Two processes pinned to CPUs {data.get('cpus', [0, 1])}; every row from one run "
           f"({_where(data)}).", "",
           "| name | metric | value |", "|---|---|---:|"]
    out += [f"| {r['name']} | {r['metric']} | {_fmt(r['metric'], r['value'])} |" for r in rows]
    rat = data.get("ratios", {})
    targets = [("ioq-pingpong-poll / spin-pingpong-c", "<= 1.5"),
               ("ioq-pingpong-signal / eventfd-pingpong", "<= 1.1"),
               ("ioq-stream-py-b1 / faster-fifo-b1", ">= 10"),
               ("ioq-stream-py-b32 / faster-fifo-b32", ">= 50")]
    out += ["", "Targets of issue 2 in this run:", "", "| target | limit | measured |", "|---|---|---:|"]
    out += [f"| {k} | {lim} | {rat[k]:.2f} |" for k, lim in targets if k in rat]
    for name, lim in (("ioq-stream-b32", 50e6), ("ioq-stream-b1", 10e6)):
        if (name, "msgs_per_s") in v:
            out.append(f"| {name} | >= {lim / 1e6:.0f} M/s | {v[(name, 'msgs_per_s')] / 1e6:.1f} M/s |")
    price = [(k, rat[k]) for k in ("ioq-stream-b1 / spsc-stream-c-b1", "ioq-stream-b32 / spsc-stream-c-b32")
             if k in rat]
    if price:
        out += ["", "What ioq's ABI costs against the bare C ring, same run: "
                + ", ".join(f"{k} = {r:.2f}" for k, r in price) + "."]
    after = v.get(("spin-pingpong-c-after", "rtt_ns_p50"))
    spin_txt = f"{spin:,.0f} ns" + (f" at the start and {after:,.0f} ns at the end" if after else "")
    out += ["", f"The bare cache-line round trip of this run, {spin_txt}, says where the two vCPUs "
            "sat: about 100 ns when close, about 380 ns when far.  The host moves them, "
            "sometimes within a run, and far apart one of them also runs slower: the bare C ring "
            "at batch 32 falls from about 220 to about 95 M msg/s.  Two findings from such "
            "placements (2026-11-25, 19:34-20:05 UTC): glibc's `memcpy` call for a runtime size "
            "took most of the ioq stream (b32 33-44 M msg/s, calling it on shared or private "
            "memory alike, 142-154 with no copy at all), so the stream copies 64 bytes with a "
            "constant-size copy, as the C ring always did (50-52); and publishing a batch last "
            "slot first took b32 from 45-49 to 50-52 M msg/s."]
    far = _load("ring-bench-far.json")     # optional: a whole run with the vCPUs far apart
    if far:
        fv = {(r["name"], r["metric"]): r["value"] for r in far["rows"]}
        fr = far.get("ratios", {})

        def m(name):
            return fv.get((name, "msgs_per_s"), 0) / 1e6
        out += ["", f"A whole run with the vCPUs far apart from start to end ({_where(far)}; spin "
                f"{fv.get(('spin-pingpong-c', 'rtt_ns_p50'), 0):,.0f} and "
                f"{fv.get(('spin-pingpong-c-after', 'rtt_ns_p50'), 0):,.0f} ns; "
                "`python -m venet bench ring --json docs/ring-bench-far.json`): "
                f"ioq-stream-b1 {m('ioq-stream-b1'):.1f}, -b32 {m('ioq-stream-b32'):.1f}, "
                f"-b256 {m('ioq-stream-b256'):.1f} M msg/s; the C ring {m('spsc-stream-c-b1'):.1f} "
                f"and {m('spsc-stream-c-b32'):.1f}; ioq-pingpong-poll / spin "
                f"{fr.get('ioq-pingpong-poll / spin-pingpong-c', 0):.2f}, ioq-pingpong-signal / "
                f"eventfd {fr.get('ioq-pingpong-signal / eventfd-pingpong', 0):.2f}, Python API / faster-fifo "
                f"{fr.get('ioq-stream-py-b1 / faster-fifo-b1', 0):.0f}x and "
                f"{fr.get('ioq-stream-py-b32 / faster-fifo-b32', 0):.0f}x."]
    out += ["",
            "- `spin-pingpong-c`: the limit, a bare busy-poll on one shared cache line (C, GIL released).",
            "- `ioq-pingpong-poll`: one descriptor each way through two rings, both polling.  The "
            "consumer polls the slot's own `seq` word, so one line moves per direction (an earlier "
            "layout that read the producer's index first measured 1.9x the spin).",
            "- `ioq-pingpong-signal`: both sides sleep in `shmsignal`; against a bare eventfd "
            "ping-pong.  The eventfd is drained before the next sleep, off the wake-to-work path.",
            "- `spsc-stream-c-bN`: the stream's limit, a bare C ring (two indices on their own "
            "lines, cached by the other side, and 64-byte messages in the slots themselves; no "
            "descriptors, buffer pool or validation), N per publication, sequence checked.  ioq "
            "moves a 32-byte descriptor beside each 64-byte buffer: 1.5 cache lines a message "
            "against 1.",
            "- `ioq-stream-bN`: 64-byte payloads copied into paired buffers, N per publication, "
            "sequence checked; `-py-` rows use the Python API as users call it (`put`/`get`, "
            "`put_batch`/`get_batch`), beside faster-fifo (`put`/`get`, `put_many`/`get_many`)."]
    return out


def notify_section(data):
    by = {}
    for r in data["rows"]:
        by.setdefault(r["name"], {})[r["metric"]] = r["value"]
    out = ["## The RFC's experiment: `venet bench notify`", "",
           "```", "make bench-notify   # python -m venet bench notify --json docs/notify-bench.json", "```", "",
           f"The same ring ping-pong and stream (64 B, batches of 32) with four ways to learn of "
           f"work ({_where(data)}; timer period {data.get('timer_us')} us).  Kicks are eventfd "
           "writes, counted on both sides, per message.", "",
           "| strategy | ping-pong rtt p50 | kicks/msg | stream b32 | kicks/msg | wake-ups/msg |",
           "|---|---:|---:|---:|---:|---:|"]
    for s in ("poll", "shmsignal", "always-kick", "timer"):
        p, st = by.get(f"{s}-pingpong"), by.get(f"{s}-stream-b32")
        if p and st:
            out.append(f"| {s} | {p['rtt_ns_p50'] / 1000:.1f} us | {p['kicks_per_msg']:.3f} | "
                       f"{st['msgs_per_s'] / 1e6:.1f} M/s | {st['kicks_per_msg']:.4f} | "
                       f"{st['wakeups_per_msg']:.4f} |")
    out += ["", "A ping-pong sleeps on both sides every time, so signalling only when asked sends "
            "as many kicks as kicking always; the difference is in a stream, where the consumer is "
            "usually awake: shmsignal suppresses almost every kick.  A timer never kicks and pays "
            "for it in latency, as the tx-mitigation timer of the RFC's virtio-net did (3125 us "
            "against venet's 65 us there)."]
    return out


def e2e_table(rows, notes):
    """The e2e rows (and notes) as markdown lines: used here and by
    `venet bench e2e --out`."""
    out = ["| topology | client | mtu | metric | median | min | max | x veth |",
           "|---|---|---:|---|---:|---:|---:|---:|"]
    for r in rows:
        rat = f"{r['ratio_to_veth']:.2f}" if r.get("ratio_to_veth") is not None else ""
        out.append(f"| {r['topology']} | {r['client']} | {r['mtu']} | {r['metric']} | "
                   f"{_fmt(r['metric'], r['value'])} | {_fmt(r['metric'], r['min'])} | "
                   f"{_fmt(r['metric'], r['max'])} | {rat} |")
    for what, why in (notes or {}).items():
        out.append(f"\n- {what}: {why.splitlines()[0][:300]}")
    return out


def e2e_section(data):
    rows = data["rows"]
    out = ["## Side by side: `venet bench e2e`", "",
           "```", "make bench-e2e      # bench/install-clients.sh, then",
           "                    # python -m venet bench e2e --json docs/e2e.json --out docs/e2e", "```", "",
           f"Each topology built in fresh namespaces, measured, torn down; medians of the runs "
           f"with min and max ({_where(data)}; venet-poll uses --poll-us {data.get('poll_us')}).  "
           "Ratios are to veth in the same run (the -1cpu rows: to veth-1cpu).", "",
           "![round trips](e2e/rtt.png)", "", "![TCP](e2e/tcp.png)", ""]
    out += e2e_table(rows, data.get("notes"))
    v = {(r["topology"], r["client"], r["mtu"], r["metric"]): r["value"] for r in rows}

    def g(t, c, m, metric):
        return v.get((t, c, m, metric))
    lines = []
    veth = g("veth", "sockperf-64", 1500, "rtt_us_p50")
    for t in ("venet", "venet-poll"):
        x = g(t, "sockperf-64", 1500, "rtt_us_p50")
        if veth and x:
            lines.append(f"- sockperf 64 B p50, {t}: {x:.1f} us = {x / veth:.2f}x veth "
                         f"(issue 3 target: {'1.3x' if t == 'venet' else '0.6x'}).")
    for mtu in (1500, 9000):
        x, s = g("venet-nooff", f"iperf3-mtu{mtu}", mtu, "gbit_per_s"), g("socat", f"iperf3-mtu{mtu}", mtu, "gbit_per_s")
        if x and s:
            lines.append(f"- TCP at MTU {mtu} without offloads (venet-nooff): {x:.2f} Gbit/s = "
                         f"{x / s:.1f}x socat (issue 3 target: 1.2x, before offloads).")
    rb, ra = g("venet", "idle", 1500, "rss_mib_bridge"), g("venet", "idle", 1500, "rss_mib_attach")
    if rb and ra:
        lines.append(f"- Resident memory after traffic: bridge {rb:.1f} MiB, attach {ra:.1f} MiB "
                     "(mostly the Python interpreter and numpy; the device's rings and buffers are "
                     "at most 2.4 MiB of shared memory, under the 4 MiB target).")
    v1, n1 = g("veth-1cpu", "sockperf-64", 1500, "rtt_us_p50"), g("venet-1cpu", "sockperf-64", 1500, "rtt_us_p50")
    x = g("venet", "sockperf-64", 1500, "rtt_us_p50")
    if veth and x and v1 and n1:
        lines.append(f"- The default mode's extra {x - veth:.1f} us over veth are the pumps' work: with "
                     f"everything on one CPU (no vCPU ever woken from idle) veth takes {v1:.1f} us and "
                     f"venet {n1:.1f} us, so the four pump hops of a round trip cost {n1 - v1:.1f} us "
                     f"of CPU, {(n1 - v1) / 4:.1f} us each (wake-up, tap read or write, kick, sleep); "
                     "on two CPUs a little of it overlaps the wake-ups.")
    idle = g("venet-poll", "idle", 1500, "cpu_percent")
    if idle is not None:
        lines.append(f"- Idle CPU of bridge+attach with --poll-us: {idle:.1f}% (target: under 2%).")
    if lines:
        out += ["", "Against issue 3's targets, from this run:", ""] + lines
    lines = []
    for mtu in (1500, 9000):
        c = f"iperf3-mtu{mtu}"
        x, vt, no = g("venet", c, mtu, "gbit_per_s"), g("veth", c, mtu, "gbit_per_s"), g("venet-nooff", c, mtu, "gbit_per_s")
        if x and vt:
            more = f"; {x / no:.1f}x venet without offloads ({no:.2f})" if no else ""
            lines.append(f"- TCP at MTU {mtu}: venet {x:.2f} Gbit/s = {x / vt:.2f}x veth "
                         f"(issue 5 target: 0.6x){more}.")
        cpu = [(t, g(t, c, mtu, "machine_cpu_s_per_gbit"), g(t, c, mtu, "pump_cpu_s_per_gbit"))
               for t in ("veth", "venet", "venet-nooff", "socat")]
        cpu = [f"{t} {m:.3f}" + (f" (pumps {p:.3f})" if p is not None else "") for t, m, p in cpu if m]
        if cpu:
            lines.append(f"- CPU seconds per Gbit at MTU {mtu}, whole machine: " + ", ".join(cpu) + ".")
    for topo, what in (("venet-any", "pumps where the scheduler puts them (--cpu any)"),
                       ("venet-pin", "both pumps always on CPU 0 (--cpu 0)")):
        for mtu in (1500, 9000):
            c = f"iperf3-mtu{mtu}"
            x, vt = g(topo, c, mtu, "gbit_per_s"), g("veth", c, mtu, "gbit_per_s")
            r = g(topo, "sockperf-64", 1500, "rtt_us_p50")
            if x and vt:
                lat = f"; its sockperf 64 B p50 {r:.1f} us" if r and mtu == 1500 else ""
                lines.append(f"- TCP at MTU {mtu}, {what}: {x:.2f} Gbit/s = {x / vt:.2f}x veth{lat}.")
    x, no = g("venet", "sockperf-64", 1500, "rtt_us_p50"), g("venet-nooff", "sockperf-64", 1500, "rtt_us_p50")
    if x and no:
        lines.append(f"- sockperf 64 B p50 with offloads {x:.1f} us, without {no:.1f} us "
                     f"({x / no:.2f}x; issue 5: unchanged or better).")
    if lines:
        out += ["", "Against issue 5's targets (offloads), from this run:", ""] + lines
    out += ["", "What the round trips are made of.  In the default mode every venet round trip "
            "wakes the bridge and the attach pump once each way on top of what veth pays, and on "
            "this VM waking a sleeping vCPU costs tens of microseconds: venet lands near 1.3x "
            "veth.  With `--poll-us` a pump that just moved a frame keeps looking for the next "
            "one for a bounded window, yielding the CPU between looks (on 2 vCPUs the process it "
            "waits for is often queued on its own CPU), so a conversation never pays a wake-up; "
            "the window adapts (doubles when it catches work, halves when it expires empty), so "
            "an idle link costs nothing.  testpmd gets its round trip by spinning a whole core, "
            "idle or not."]
    return out


def syscall_section(data):
    v = {r["name"]: r["value"] for r in data["rows"]}
    out = ["## Syscall batching: `venet bench syscalls`", "",
           "```", "make bench-syscalls  # python -m venet bench syscalls --json docs/syscall-bench.json",
           "```", "",
           f"Per call, in C loops on a tap opened as the pumps open it ({_where(data)}; "
           f"{data.get('calls')} calls).  The share is what a perfect batching interface "
           "(io_uring) could remove from each write: the syscall entry and exit.", "",
           "| call | ns per call | syscall share |", "|---|---:|---:|"]
    for name, ns in v.items():
        share = f"{100 * v['syscall'] / ns:.1f}%" if name.startswith("write") and v.get("syscall") else ""
        out.append(f"| {name} | {ns:,.0f} | {share} |")
    out += ["", "syscall: getppid(); read-empty: read() of the empty tap; write-60/1514: UDP frames "
            "the kernel delivers to a socket; write-gso: a 64 KiB UDP GSO frame the kernel cuts "
            "into 46 datagrams.  See docs/architecture.md (Offloads) for why the pumps have no "
            "io_uring path."]
    return out


def recheck_section(e2e_base, e2e_news, ring_base, ring_new):
    """The same benchmarks re-run on later code (docs/*-recheck.json): the
    ratios that matter, base run beside re-run."""
    out = ["## Re-checks on later code", "",
           "```",
           "python -m venet bench e2e --topologies veth,venet,venet-capture --repeats 3 --json docs/e2e-recheck.json",
           "python -m venet bench e2e --topologies veth,venet,venet-any,venet-pin --repeats 3 --json docs/e2e-recheck-2.json",
           "python -m venet bench e2e --topologies veth,venet --repeats 5 --json docs/e2e-recheck-3.json",
           "python -m venet bench ring --json docs/ring-recheck.json",
           "```", "",
           "After a change that touches the data path, the e2e and ring benchmarks are re-run and "
           "set against the full runs above; only ratios within one run are compared.", ""]
    for e2e_new in e2e_news:
        if not e2e_base:
            break
        def ratios(data):
            v = {(r["topology"], r["client"], r["mtu"], r["metric"]): r["value"] for r in data["rows"]}
            got = {}
            for client, mtu, metric in (("sockperf-64", 1500, "rtt_us_p50"),
                                        ("sockperf-64", 1500, "rtt_us_p99"),
                                        ("sockperf-1400", 1500, "rtt_us_p50"),
                                        ("iperf3-mtu1500", 1500, "gbit_per_s"),
                                        ("iperf3-mtu9000", 9000, "gbit_per_s")):
                a, b = v.get(("veth", client, mtu, metric)), v.get(("venet", client, mtu, metric))
                if a and b:
                    got[(client, metric)] = (a, b, b / a)
            return got
        base, new = ratios(e2e_base), ratios(e2e_new)
        out += [f"venet (bridge + attach) against veth: base {_where(e2e_base)}; re-run "
                f"{_where(e2e_new)}.", "",
                "| client | metric | veth | venet | venet/veth | re-run veth | re-run venet | re-run venet/veth |",
                "|---|---|---:|---:|---:|---:|---:|---:|"]
        for k in base:
            if k in new:
                a, b, r = base[k]
                c, d, q = new[k]
                out.append(f"| {k[0]} | {k[1]} | {a:.2f} | {b:.2f} | {r:.2f} | {c:.2f} | {d:.2f} | {q:.2f} |")
        out.append("")
        out += _capture_rows(e2e_new)
    if ring_base and ring_new:
        def vals(data):
            return {(r["name"], r["metric"]): r["value"] for r in data["rows"]}
        b, n = vals(ring_base), vals(ring_new)
        out += ["Ring core, same placement as the base run (spin-pingpong-c "
                f"{b.get(('spin-pingpong-c', 'rtt_ns_p50'))} ns, re-run "
                f"{n.get(('spin-pingpong-c', 'rtt_ns_p50'))} ns):", "",
                "| row | base | re-run | re-run/base |", "|---|---:|---:|---:|"]
        for key in (("ioq-pingpong-poll", "rtt_ns_p50"), ("ioq-pingpong-signal", "rtt_ns_p50"),
                    ("eventfd-pingpong", "rtt_ns_p50"), ("ioq-stream-b1", "msgs_per_s"),
                    ("ioq-stream-b32", "msgs_per_s"), ("spsc-stream-c-b32", "msgs_per_s"),
                    ("ioq-stream-py-b1", "msgs_per_s"), ("ioq-stream-py-b32", "msgs_per_s")):
            if b.get(key) and n.get(key):
                out.append(f"| {key[0]} {key[1]} | {b[key]:,.0f} | {n[key]:,.0f} | {n[key] / b[key]:.2f} |")
        out.append("")
    return out


def _capture_rows(data):
    """venet with a capture attached against venet without, same run (the
    target of issue 15: TCP at >= 0.8x, no traffic lost to the capture)."""
    v = {(r["topology"], r["client"], r["metric"]): r["value"] for r in data["rows"]}
    out = []
    for client, metric in (("iperf3-mtu1500", "gbit_per_s"), ("sockperf-64", "rtt_us_p50"),
                           ("sockperf-1400", "rtt_us_p50")):
        a, b = v.get(("venet", client, metric)), v.get(("venet-capture", client, metric))
        if a and b:
            out.append(f"| {client} | {metric} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    if not out:
        return []
    return (["The same run with `venet capture -w FILE` attached to the bridge's device "
             "(`venet-capture`), against it without:", "",
             "| client | metric | venet | venet + capture | ratio |", "|---|---|---:|---:|---:|"]
            + out + [""])


def isolation_section(data):
    v = {}
    for r in data["rows"]:
        v.setdefault(r["name"], {})[r["metric"]] = r["value"]
    out = ["## Isolation: `venet bench isolation`", "",
           "```", "python -m venet bench isolation --json docs/isolation.json", "```", "",
           "One bridge, two devices on one socket.  Frontend A misbehaves in one way per row "
           "(bench/isolation.py says how) while frontend B times HELLO, LIST and STATS round "
           "trips and sends a steady stream through its own device; each row sets B's figures "
           "with A misbehaving against a window with A absent, in the same run.  Targets (issue "
           "10): replies within 100 ms, B's rate at least 90%.", "",
           "| A does | B's replies p50 / p99 / max (ms) | unanswered | with A absent, p99 (ms) | B's rate | bridge | targets |",
           "|---|---:|---:|---:|---:|---|---|"]
    for name, f in v.items():
        out.append(f"| {name} | {f['ctl_p50_ms']:.2f} / {f['ctl_p99_ms']:.2f} / {f['ctl_max_ms']:.1f} "
                   f"| {f['ctl_timeouts']} | {f['ctl_p99_ms_idle']:.2f} | {100 * f['rate_ratio']:.1f}% "
                   f"| {'up' if f['bridge_alive'] else 'DEAD'} | {'met' if f['meets_targets'] else 'MISSED'} |")
    return out


def switch_section(data):
    """`venet bench switch` (docs/switch-bench.json): the table, the targets
    of issue 13, the vCPU placement, and a plot (docs/switch-bench.png)."""
    rows = data["rows"]
    out = ["## Switch: `venet bench switch`", "",
           "```", "python -m venet bench switch --json docs/switch-bench.json   # root: the AF_PACKET and memif rows",
           "```", "",
           f"Every row from one run ({_where(data)}); the two sides of each pair pinned to CPUs "
           f"{data.get('cpus', [0, 1])}, batches of {data.get('batch', 32)}, --poll-us "
           f"{data.get('poll_us', 'n/a')} on the poll rows.  A stream's rate is what its receiver "
           "got; frames the path dropped are its loss_fraction.  AF_PACKET runs over a veth pair "
           "in a namespace the bench makes; memif is two dpdk-testpmd (txonly -> rxonly).", "",
           "| name | metric | value |", "|---|---|---:|"]
    for r in rows:
        if r["value"] is None:
            txt = f"n/a ({r.get('note', '')})"
        elif r["metric"] == "frames_per_s":
            txt = f"{r['value'] / 1e6:,.3f} M/s"
        elif r["metric"] == "loss_fraction":
            txt = f"{100 * r['value']:.1f}%"
        else:
            txt = _fmt(r["metric"], r["value"])
        out.append(f"| {r['name']} | {r['metric']} | {txt} |")
    rat = data.get("ratios", {})
    v = {(r["name"], r["metric"]): r["value"] for r in rows}
    limits = [("switch-stream-64-c / best AF_PACKET", ">= 5"),
              ("switch-pingpong-poll / ring-pingpong-poll", "<= 3"),
              ("relay-pingpong-poll / ring-pingpong-poll", "(the floor: no ring work)"),
              ("switch-pingpong-poll / relay-pingpong-poll", "(the switch over the floor)"),
              ("switch-pingpong-signal / eventfd-relay-pingpong", "<= 1.1"),
              ("switch-stream-64-c-4fe / switch-stream-64-c", ">= 1.5"),
              ("switch-stream-64-c-4fe-r1024 / switch-stream-64-c-r1024", "(1024-slot rings)"),
              ("switch-stream-64-c / memif-stream-64", "> 1 (the aim)")]
    out += ["", "Targets of issue 13 in this run:", "", "| target | limit | measured |", "|---|---|---:|"]
    for name, lim in (("switch-stream-64-c", 10e6), ("switch-stream-64-py", 2e6)):
        got = v.get((name, "frames_per_s"))
        out.append(f"| {name} | >= {lim / 1e6:.0f} M/s | "
                   f"{'n/a' if got is None else f'{got / 1e6:.2f} M/s'} |")
    out += [f"| {k} | {lim} | {rat[k]:.2f} |" if k in rat else f"| {k} | {lim} | n/a |" for k, lim in limits]
    if data.get("placement"):
        out += ["", data["placement"] + "."]
    if _switch_plot(data):
        out += ["", "![switch streams](switch-bench.png)"]
    return out


def _switch_plot(data):
    """Stream rates as bars (docs/switch-bench.png); False without matplotlib
    or figures."""
    bars = [(r["name"], r["value"] / 1e6) for r in data["rows"]
            if r["metric"] == "frames_per_s" and r["value"] is not None]
    if not bars:
        return False
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.barh([b[0] for b in bars], [b[1] for b in bars])
    ax.set_xlabel("M frames/s (received)")
    ax.set_title("venet-switch streams beside AF_PACKET and memif (one run)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(os.path.join(DOCS, "switch-bench.png"), dpi=100)
    plt.close(fig)
    return True




def bus_section(data):
    """`venet bench bus` (issue 12): per-device costs, idle, frames per
    second, and the issue's targets against this run."""
    v = {(r["name"], r["metric"]): r["value"] for r in data["rows"]}
    out = ["## The bus: `venet bench bus`", "",
           "```", "python -m venet bench bus --json docs/bus-bench.json     # root; --quick: fewer devices",
           "```", "",
           f"One `venet daemon`, one bus; frontend processes create, link and open venet-loopback "
           f"devices, then venet-tap devices (taps in a namespace of the bench), one at a time, and "
           f"keep them open.  {'A --quick run. ' if data.get('quick') else ''}"
           f"Measured {_where(data)}.  bench/bus.py says how each figure is taken: memory is the "
           "daemon's RSS/PSS growth (smaps_rollup) less the frontends' shared regions, divided by the "
           "devices added; wake-ups are the context switches of all the daemon's threads.", "",
           "| name | metric | value |", "|---|---|---:|"]

    def fmt(metric, x):
        if "_ms_" in metric:
            return f"{x:.2f} ms"
        if metric.endswith("kib_per_device"):
            return f"{x:,.1f} KiB"
        if metric == "cpu_percent":
            return f"{x:.2f}%"
        if metric.endswith("_per_s"):
            return f"{x:,.0f} /s"
        return f"{x:g}"
    out += [f"| {r['name']} | {r['metric']} | {fmt(r['metric'], r['value'])} |" for r in data["rows"]]
    one, eight = v.get(("bus-loopback-1", "frames_per_s")), v.get(("bus-loopback-8", "frames_per_s"))
    targets = [
        ("idle CPU, all loopback devices open", "0.0%", ("bus-idle", "cpu_percent"),
         lambda x: x < 0.05, lambda x: f"{x:.2f}%"),
        ("idle wake-ups", "none periodic", ("bus-idle", "wakeups_per_s"),
         lambda x: x < 1, lambda x: f"{x:,.1f} /s"),
        ("daemon memory per device beyond its shared region", "<= 256 KiB",
         ("bus-device", "daemon_kib_per_device"), lambda x: x <= 256, lambda x: f"{x:,.1f} KiB"),
        ("shared region per device (default)", "<= 2.5 MiB", ("bus-device", "shm_kib_per_device"),
         lambda x: x <= 2560, lambda x: f"{x:,.0f} KiB"),
        ("create + link + open (+ first frame), median", "<= 5 ms",
         ("bus-device", "create_to_first_frame_ms_p50"), lambda x: x <= 5, lambda x: f"{x:.2f} ms"),
    ]
    out += ["", "Targets of issue 12 in this run:", "", "| target | limit | measured | |", "|---|---|---:|---|"]
    for what, limit, key, ok, show in targets:
        x = v.get(key)
        out.append(f"| {what} | {limit} | {'n/a' if x is None else show(x)} | "
                   f"{'' if x is None else 'met' if ok(x) else 'MISSED'} |")
    if one and eight:
        out.append(f"| frames/s with 8 devices vs 1 | >= 1.00x | {eight / one:.2f}x | "
                   f"{'met' if eight >= one else 'MISSED'} |")
    notes = data.get("notes") or []
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return out


def vhost_section(data):
    """`venet bench vhost` (issue 14): DPDK's virtio-user driver against
    venet's connector and DPDK's net_vhost, and the issue's targets."""
    v = {r["name"]: r["value"] for r in data["rows"]}
    out = ["## vhost-user: `venet bench vhost`", "",
           "```", "python -m venet bench vhost --json docs/vhost-bench.json   # root for the ping rows; "
           "--quick: 64 bytes only", "```", "",
           "dpdk-testpmd's `net_virtio_user` (no hugepages) is the driver on one CPU, the backend on the "
           "other.  venet-vhost-{rx,tx}-*: venet's connector on a venet-null device (testpmd txonly -> "
           "the device as a sink; the device as a source -> testpmd rxonly), in the shape of the "
           "dpdk-vhost rows (testpmd's `net_vhost` txonly -> rxonly each way); the rates are the "
           "engine's counters, testpmd's own in the notes.  venet-vhost-loop-*: on a venet-loopback "
           "(its port a socket: two syscalls per frame), the driver in `io` forwarding with `--tx-first`; "
           "venet-vhost-reflect-*: the same loop with no port (a FIFO in the engine), against "
           "dpdk-vhost-loop-*.  Ping rows: the three setups take turns for seven rounds, each row the "
           "median of its rounds.  rx = driver -> backend.  "
           f"{'A --quick run. ' if data.get('quick') else ''}Measured {_where(data)}; bench/vhost.py "
           "says how each figure is taken.", "",
           "| name | metric | value |", "|---|---|---:|"]

    from bench.vhost import fmt_value
    out += [f"| {r['name']} | {r['metric']} | {fmt_value(r['metric'], r['value'])} |" for r in data["rows"]]

    def ratio(a, b):
        return v[a] / v[b] if v.get(a) and v.get(b) else None
    out += ["", "Targets of issue 14 in this run:", "", "| target | limit | measured | |", "|---|---|---:|---|"]
    for d in ("rx", "tx"):
        for what, a, b, lim, ok in (
                (f"{d} 64 B, venet --poll-us / DPDK net_vhost", f"venet-vhost-{d}-64-poll", f"dpdk-vhost-{d}-64",
                 ">= 0.5x", lambda x: x >= 0.5),
                (f"{d} 64 B, venet signal mode / venet --poll-us", f"venet-vhost-{d}-64", f"venet-vhost-{d}-64-poll",
                 ">= 0.5x", lambda x: x >= 0.5)):
            x = ratio(a, b)
            out.append(f"| {what} | {lim} | {'n/a' if x is None else f'{x:.2f}x'} | "
                       f"{'' if x is None else 'met' if ok(x) else 'MISSED'} |")
    x = v.get("venet-vhost-idle-cpu")
    out.append(f"| signal mode idle CPU (the engine's worker) | 0% | {'n/a' if x is None else f'{x:.2f}%'} | "
               f"{'' if x is None else 'met' if x < 0.5 else 'MISSED'} |")
    x = ratio("venet-vhost-ping", "dpdk-vhost-tap-ping")
    out.append(f"| ping through the tap, venet / testpmd net_vhost+net_tap | <= 1.0x | "
               f"{'n/a' if x is None else f'{x:.2f}x'} | {'' if x is None else 'met' if x <= 1.0 else 'MISSED'} |")
    notes = data.get("notes") or []
    if notes:
        out += [""] + [f"- {n}" for n in notes]
    return out


def render():
    out = ["# Benchmarks", "",
           "Generated by `python -m bench.report` (`make bench-docs`) from the JSON files the "
           "commands below wrote; do not edit by hand.  The machine is a 2-vCPU VM: absolute "
           "figures move by tens of percent between runs and even within a session (the two "
           "vCPUs are placed close or far apart by the host), so compare rows of the same run.", ""]
    for name, section in (("ring-bench.json", ring_section), ("notify-bench.json", notify_section),
                          ("e2e.json", e2e_section), ("syscall-bench.json", syscall_section)):
        data = _load(name)
        if data:
            out += section(data) + [""]
        else:
            out += [f"({name} has not been produced yet.)", ""]
    if _load("switch-bench.json"):
        out += switch_section(_load("switch-bench.json")) + [""]
    if _load("isolation.json"):
        out += isolation_section(_load("isolation.json")) + [""]
    if _load("bus-bench.json"):
        out += bus_section(_load("bus-bench.json")) + [""]
    else:
        out += ["(bus-bench.json has not been produced yet: `python -m venet bench bus --json "
                "docs/bus-bench.json`.)", ""]
    if _load("vhost-bench.json"):
        out += vhost_section(_load("vhost-bench.json")) + [""]
    else:
        out += ["(vhost-bench.json has not been produced yet: `python -m venet bench vhost --json "
                "docs/vhost-bench.json`.)", ""]
    if _load("e2e-recheck.json") or _load("ring-recheck.json"):
        reruns = [d for d in (_load("e2e-recheck.json"), _load("e2e-recheck-2.json"),
                              _load("e2e-recheck-3.json")) if d]
        out += recheck_section(_load("e2e.json"), reruns,
                               _load("ring-bench.json"), _load("ring-recheck.json")) + [""]
    out += ["## pytest-benchmark suites", "",
            "```",
            "make bench          # python -m pytest bench --benchmark-only (ring, Python API,",
            "                    # frontend echo vs a plain tap fd, VenetSocket vs scapy's TunTapInterface)",
            "make bench-save     # store the reference under bench/baselines (commit it)",
            "make bench-compare  # compare with it; fails if a median doubled (the vCPU placement alone swings cross-process rows up to 3x)",
            "```", ""]
    return "\n".join(out)


def main():
    text = render()
    with open(os.path.join(DOCS, "benchmarks.md"), "w") as f:
        f.write(text)
    print(f"wrote docs/benchmarks.md ({len(text)} bytes)")


if __name__ == "__main__":
    sys.exit(main())
