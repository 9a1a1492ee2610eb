"""`venet bench notify`: the RFC's experiment.  The same ring ping-pong and
stream, with four ways for a side to learn there is work:

  poll         busy-poll the ring; never sleep, never kick
  shmsignal    kick the peer's eventfd only when it asked to be woken (venet)
  always-kick  kick the peer's eventfd on every publication
  timer        never kick; the peer wakes every TIMER_US and looks (the
               tx-mitigation timer the RFC blamed for virtio-net's 3125 us)

Two pinned processes, as `venet bench ring`.  Reported: round trip p50,
stream messages/s (64-byte payloads, batches of 32), and kicks (eventfd
writes) and wake-ups per message, counted on both sides.
"""
import json
import mmap
import sys
import time

import numpy as np

import ioq
from bench import _ringbench as rb
from bench.ring import Pair

STRATEGIES = (("poll", 0), ("shmsignal", 1), ("always-kick", 2), ("timer", 3))
TIMER_US = 200


def _counts(*rings):
    return (sum(r.stats()["kicks_sent"] for r in rings),
            sum(r.stats()["wakeups"] + r.stats()["poll_hits"] for r in rings))


def pingpong(pair, mode, n):
    region = ioq.Region.create([64, 64], buf_size=64)
    shared = np.frombuffer(mmap.mmap(-1, 4096, mmap.MAP_SHARED), dtype=np.uint64)
    out = np.zeros(n, np.int64)
    try:
        def parent():
            tx, rx = region.producer(0), region.consumer(1)
            rb.ring_ping(tx, rx, n, out, mode, region.buffer_offset(0))
            shared[0:2] = _counts(tx, rx)

        def child():
            rx, tx = region.consumer(0), region.producer(1)
            rb.ring_pong(rx, tx, n, mode, region.buffer_offset(64))
            shared[2:4] = _counts(tx, rx)

        pair.run(parent, child)
        frames = 2 * n
        return (float(np.percentile(out[n // 10:], 50)), (shared[0] + shared[2]) / frames,
                (shared[1] + shared[3]) / frames)
    finally:
        region.close()


def stream(pair, mode, total, batch=32):
    region = ioq.Region.create([1024], buf_size=64)
    shared = np.frombuffer(mmap.mmap(-1, 4096, mmap.MAP_SHARED), dtype=np.uint64)
    res = {}
    try:
        pair_off = region.buffer_offset(region.paired_base(0))

        def parent():
            rx = region.consumer(0)
            t0 = time.perf_counter()
            got, errors = rb.ring_stream_recv(rx, total, batch, mode, 0)
            res["t"] = time.perf_counter() - t0
            if got != total or errors:
                raise RuntimeError(f"stream lost data: {got}/{total}, {errors} errors")
            shared[0:2] = _counts(rx)

        def child():
            tx = region.producer(0)
            rb.ring_stream_send(tx, total, batch, pair_off, 64, 64, mode, 0)
            shared[2:4] = _counts(tx)

        pair.run(parent, child)
        return total / res["t"], (shared[0] + shared[2]) / total, (shared[1] + shared[3]) / total
    finally:
        region.close()


def run(cpus=(0, 1), quick=False):
    rb.set_timer_us(TIMER_US)
    pair = Pair(cpus, grace=30)
    s = 10 if quick else 1
    rows = []
    for name, mode in STRATEGIES:
        n = (100_000 if mode == 0 else 2000 if mode == 3 else 10_000) // s
        rtt, kicks, wakes = pingpong(pair, mode, n)
        rows += [{"name": f"{name}-pingpong", "metric": "rtt_ns_p50", "value": rtt},
                 {"name": f"{name}-pingpong", "metric": "kicks_per_msg", "value": kicks},
                 {"name": f"{name}-pingpong", "metric": "wakeups_per_msg", "value": wakes}]
        total = (20_000_000 if mode in (0, 1) else 2_000_000) // s
        rate, kicks, wakes = stream(pair, mode, total)
        rows += [{"name": f"{name}-stream-b32", "metric": "msgs_per_s", "value": rate},
                 {"name": f"{name}-stream-b32", "metric": "kicks_per_msg", "value": kicks},
                 {"name": f"{name}-stream-b32", "metric": "wakeups_per_msg", "value": wakes}]
    return rows


def format_table(rows):
    by = {}
    for r in rows:
        by.setdefault(r["name"], {})[r["metric"]] = r["value"]
    lines = [f"{'strategy':<12} {'rtt p50':>12} {'kicks/msg':>10} {'wakes/msg':>10} "
             f"{'stream b32':>14} {'kicks/msg':>10} {'wakes/msg':>10}"]
    for name, _ in STRATEGIES:
        p, s = by[f"{name}-pingpong"], by[f"{name}-stream-b32"]
        lines.append(f"{name:<12} {p['rtt_ns_p50'] / 1000:>9.1f} us {p['kicks_per_msg']:>10.3f} "
                     f"{p['wakeups_per_msg']:>10.3f} {s['msgs_per_s'] / 1e6:>10.2f} M/s "
                     f"{s['kicks_per_msg']:>10.4f} {s['wakeups_per_msg']:>10.4f}")
    return "\n".join(lines)


def main(cpus=(0, 1), json_path=None, quick=False, out=sys.stdout):
    rows = run(cpus, quick)
    print(format_table(rows), file=out)
    print(f"(timer period {TIMER_US} us)", file=out)
    if json_path:
        with open(json_path, "w") as f:
            from bench.report import machine
            json.dump({"rows": rows, "timer_us": TIMER_US, "cpus": list(cpus), "machine": machine()},
                      f, indent=1)
    return rows
