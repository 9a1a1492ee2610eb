"""SOAK_MINUTES (default 10) of iperf3 plus ping through bridge + attach.

One iperf3 TCP stream from B to A and a ping every 0.2 s the whole time.
Every 5 s the VmRSS, fds and threads of both venet processes are read from
/proc.  After a warm-up (a tenth of the run, at least 10 s) both must stay
flat: VmRSS within 5% of its value at the end of the warm-up, the same fds
and threads.  Ping may lose at most SOAK_PING_LOSS percent (default 1).

Counters balance at the end, once traffic has stopped and every counter
has settled: what the kernel handed the two pumps (tx_packets of both
taps) equals what they handed it back (rx_packets of both taps) plus the
drops the bridge counts.  The attach's own counters are not visible from
outside, so a frame its pump dropped shows up as a difference.

SOAK_IPERF_BITRATE (iperf3 -b, default 0: unlimited) paces the stream.
"""
import json
import os
import re
import subprocess
import time

import pytest

from venet import frontend

from .conftest import MINUTES, fd_kinds, last_words, link_stats, rss_kib, summary, wait_for
from .rig import A, Rig

pytestmark = pytest.mark.soak

SAMPLE_S = 5.0
RSS_LIMIT = 0.05
PING_LOSS = float(os.environ.get("SOAK_PING_LOSS", "1"))
BITRATE = os.environ.get("SOAK_IPERF_BITRATE", "0")
STABLE = ("fds", "memfds", "eventfds", "sockets", "threads")


def _counters(rig):
    with frontend.connect(rig.sock) as bus:
        c = bus.stats()["devices"][0]["counters"]
    return {"bridge": c, "vb0": link_stats(rig.a, "vb0"), "va0": link_stats(rig.b, "va0")}


def test_iperf_and_ping(lab):
    secs = max(10, int(MINUTES * 60))
    warm = max(10.0, secs / 10)
    rig = Rig(lab)
    rig.start_bridge()
    rig.start_attach()
    rig.reachable()
    procs = {"bridge": rig.bridge.pid, "attach": rig.attach.pid}

    ilog = os.path.join(lab.tmp, "iperf3.json")
    plog = os.path.join(lab.tmp, "ping.txt")
    srv = rig.spawn(rig.a, ["iperf3", "-s", "-1", "-B", A])
    t0 = time.monotonic()
    cli = None
    while True:
        # The server may not listen yet; a client that fails at once is retried.
        if cli is not None and os.path.exists(ilog):
            os.unlink(ilog)
        cli = rig.spawn(rig.b, ["iperf3", "-c", A, "-t", str(secs), "-b", BITRATE, "-i", "10",
                                "-J", "--logfile", ilog])
        try:
            cli.wait(0.5)
        except subprocess.TimeoutExpired:
            break
        assert time.monotonic() - t0 < 10, "iperf3 could not connect"
    ping = rig.spawn(rig.b, ["sh", "-c", f"exec ping -n -i 0.2 -w {secs} {A} > {plog} 2>&1"])

    samples = []            # (t, {proc: (rss, counts)})
    ref = None
    next_t = time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        for name, p in (("bridge", rig.bridge), ("attach", rig.attach)):
            assert p.poll() is None, f"{name} died: {last_words(p)}"
        now = time.monotonic()
        snap = {n: (rss_kib(pid), fd_kinds(pid)) for n, pid in procs.items()}
        samples.append((now - t0, snap))
        if ref is None and now - t0 >= warm:
            ref = snap
        next_t += SAMPLE_S
        time.sleep(max(0.0, min(next_t, end) - time.monotonic()))

    wait_for(lambda: cli.poll() is not None and ping.poll() is not None, 60,
             "iperf3 and ping to finish")
    srv.wait(10)
    report = json.load(open(ilog))
    assert "error" not in report, report.get("error")
    gbit = report["end"]["sum_received"]["bits_per_second"] / 1e9
    retrans = report["end"]["sum_sent"].get("retransmits", 0)
    out = open(plog).read()
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert m, out[-300:]
    sent, got = int(m.group(1)), int(m.group(2))
    loss = 100.0 * (sent - got) / max(sent, 1)

    # Settled counters: two readings 0.5 s apart agree.
    prev = [_counters(rig)]

    def settled():
        now = _counters(rig)
        ok = now == prev[0]
        prev[0] = now
        return ok
    wait_for(settled, 30, "the counters to settle", interval=0.5)
    c = prev[0]
    br = c["bridge"]
    drops = sum(v for k, v in br.items() if k.startswith("drop_"))
    frames_in = c["va0"]["tx_packets"] + c["vb0"]["tx_packets"]
    frames_out = c["va0"]["rx_packets"] + c["vb0"]["rx_packets"]

    after = [s for s in samples if s[0] >= warm]
    growth = {}
    for n in procs:
        r0 = ref[n][0] if ref else samples[-1][1][n][0]
        growth[n] = max((abs(s[1][n][0] - r0) / r0 for s in after), default=0.0)
    summary("iperf+ping", minutes=round(secs / 60, 2), gbit_per_s=round(gbit, 3),
            retransmits=retrans, ping_sent=sent, ping_lost=sent - got, ping_loss_pct=round(loss, 3),
            frames_in=frames_in, frames_out=frames_out, bridge_drops=drops,
            b2a=f"{c['va0']['tx_packets']}->{br.get('to_tap_frames')}->{c['vb0']['rx_packets']}",
            a2b=f"{c['vb0']['tx_packets']}->{br.get('from_tap_frames')}->{c['va0']['rx_packets']}",
            tap_queue_drops=c["va0"]["tx_dropped"] + c["vb0"]["tx_dropped"],
            rss_kib_bridge=samples[-1][1]["bridge"][0], rss_kib_attach=samples[-1][1]["attach"][0],
            rss_dev_pct_bridge=round(100 * growth["bridge"], 2),
            rss_dev_pct_attach=round(100 * growth["attach"], 2), samples=len(samples))
    assert ref is not None and after, "the run was shorter than its warm-up"
    for n in procs:
        assert growth[n] <= RSS_LIMIT, \
            f"{n}: VmRSS moved {100 * growth[n]:.1f}% from {ref[n][0]} KiB after the warm-up"
        for t, snap in after:
            assert {k: snap[n][1][k] for k in STABLE} == {k: ref[n][1][k] for k in STABLE}, \
                f"{n} at {t:.0f} s: {snap[n][1]} against {ref[n][1]} after the warm-up"
    assert gbit > 0
    assert loss <= PING_LOSS, f"ping lost {sent - got} of {sent}"
    assert frames_in == frames_out + drops, c
