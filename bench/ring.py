"""`venet bench ring`: the ring core against its baselines, in one run.

Two processes pinned to two CPUs.  Round trips are timed per exchange by the
ping side (C clock in the C loops); streams are timed by the receiver from a
shared start signal to the last message.  Every figure in a run is measured
in that run, so ratios between rows are meaningful on a noisy machine.
"""
import json
import mmap
import multiprocessing
import os
import signal
import sys
import time
import traceback

import numpy as np

import ioq
from bench import _ringbench as rb

MODE_POLL, MODE_SIGNAL = 0, 1
MSG = 64


class Pair:
    """Fork a pinned child running `child()`; the parent pins itself and runs
    `parent()` once the child is ready.  The child is killed (by pid) if it
    outlives the parent's measurement by more than `grace` seconds."""

    def __init__(self, cpus, grace=10.0):
        allowed = os.sched_getaffinity(0)
        for c in cpus:
            if c not in allowed:
                raise ValueError(f"CPU {c} is not available here (this process may use "
                                 f"{sorted(allowed)})")
        if len(set(cpus)) != 2:
            # Two busy-pollers on one CPU only take turns at the scheduler's tick.
            raise ValueError("the two sides need two different CPUs (the busy-poll rows "
                             "spin on both at once)")
        self.cpus = cpus
        self.grace = grace

    def run(self, parent, child):
        r, w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(r)
                os.close(go_w)
                os.sched_setaffinity(0, {self.cpus[1]})
                os.write(w, b"r")
                os.read(go_r, 1)
                child()
            except BaseException:
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        os.close(go_r)
        old = os.sched_getaffinity(0)
        try:
            os.sched_setaffinity(0, {self.cpus[0]})
            if os.read(r, 1) != b"r":
                raise RuntimeError("benchmark child died before it was ready")
            os.write(go_w, b"g")
            return parent()
        finally:
            os.sched_setaffinity(0, old)
            os.close(r)
            os.close(go_w)
            self._reap(pid)

    def _reap(self, pid):
        deadline = time.monotonic() + self.grace
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                if os.waitstatus_to_exitcode(status) != 0:
                    raise RuntimeError("benchmark child failed")
                return
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise RuntimeError("benchmark child did not finish; killed")


def _pctl(ns, warm):
    a = np.asarray(ns[warm:], dtype=np.int64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def rtt_rows(name, ns, warm):
    p50, p99 = _pctl(ns, warm)
    return [{"name": name, "metric": "rtt_ns_p50", "value": p50},
            {"name": name, "metric": "rtt_ns_p99", "value": p99}]


# ---- round trips ----------------------------------------------------------

def bench_spin(pair, n):
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    out = np.zeros(n, np.int64)
    pair.run(lambda: rb.spin_ping(m, n, out), lambda: rb.spin_pong(m, n))
    return rtt_rows("spin-pingpong-c", out, n // 10)


def bench_relay(cpus, n, name="relay-pingpong-poll"):
    """A polled ping-pong through a third party (bench/_ringbench.pyx,
    relay_*): the two ends on cpus[0], the relay on cpus[1], the placement
    `venet bench switch` gives two frontends and the switch's worker."""
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    out = np.zeros(n, np.int64)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.sched_setaffinity(0, {cpus[0]})
            rb.relay_pong(m, n)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    try:
        Pair(cpus).run(lambda: rb.relay_ping(m, n, out), lambda: rb.relay_fwd(m, n))
    finally:
        Pair(cpus)._reap(pid)
    return rtt_rows(name, out, n // 10)


def bench_ring_pingpong(pair, n, mode, name, poll_us=0):
    region = ioq.Region.create([64, 64], buf_size=64)
    try:
        buf_a = region.buffer_offset(0)
        buf_b = region.buffer_offset(64)
        out = np.zeros(n, np.int64)

        def parent():
            tx, rx = region.producer(0), region.consumer(1)
            rb.ring_ping(tx, rx, n, out, mode, buf_a)

        def child():
            rx, tx = region.consumer(0), region.producer(1)
            rb.ring_pong(rx, tx, n, mode, buf_b)

        pair.run(parent, child)
        return rtt_rows(name, out, n // 10)
    finally:
        region.close()


def bench_fd_pingpong(pair, n, kind):
    if kind == "eventfd":
        a, b = os.eventfd(0), os.eventfd(0)
        ping_w, ping_r, pong_r, pong_w, size = a, b, a, b, 8
        fds = [a, b]
    else:
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        ping_w, ping_r, pong_r, pong_w, size = w1, r2, r1, w2, 1
        fds = [r1, w1, r2, w2]
    out = np.zeros(n, np.int64)
    try:
        pair.run(lambda: rb.fd_ping(ping_w, ping_r, size, n, out),
                 lambda: rb.fd_pong(pong_r, pong_w, size, n))
    finally:
        for fd in fds:
            os.close(fd)
    return rtt_rows(f"{kind}-pingpong", out, n // 10)


def bench_mp_pipe(pair, n):
    a, b = multiprocessing.Pipe()
    out = np.zeros(n, np.int64)
    msg = b"x" * MSG

    def parent():
        now = time.perf_counter_ns
        for i in range(n):
            t0 = now()
            a.send_bytes(msg)
            a.recv_bytes()
            out[i] = now() - t0

    def child():
        for _ in range(n):
            b.send_bytes(b.recv_bytes())

    try:
        pair.run(parent, child)
    finally:
        a.close()
        b.close()
    return rtt_rows("mp-pipe-pingpong", out, n // 10)


# ---- streams --------------------------------------------------------------

def _rate(name, count, seconds):
    return {"name": name, "metric": "msgs_per_s", "value": count / seconds}


def bench_spsc_stream(pair, total, batch):
    """The bare C ring (no descriptors, no pool, no checks): ioq's limit."""
    m = mmap.mmap(-1, rb.SPSC_BYTES, mmap.MAP_SHARED)
    try:
        res = {}

        def parent():
            t0 = time.perf_counter()
            got, errors = rb.spsc_stream_recv(m, total, batch)
            res["t"] = time.perf_counter() - t0
            if got != total or errors:
                raise RuntimeError(f"C ring lost data: got {got}/{total}, {errors} errors")

        pair.run(parent, lambda: rb.spsc_stream_send(m, total, batch))
        return [_rate(f"spsc-stream-c-b{batch}", total, res["t"])]
    finally:
        m.close()


def bench_ring_stream(pair, total, batch):
    region = ioq.Region.create([1024], buf_size=64)
    try:
        pair_off = region.buffer_offset(region.paired_base(0))
        res = {}

        def parent():
            rx = region.consumer(0)
            t0 = time.perf_counter()
            got, errors = rb.ring_stream_recv(rx, total, min(batch, 256))
            res["t"] = time.perf_counter() - t0
            if got != total or errors:
                raise RuntimeError(f"stream lost data: got {got}/{total}, {errors} errors")

        def child():
            tx = region.producer(0)
            rb.ring_stream_send(tx, total, batch, pair_off, 64, MSG)

        pair.run(parent, child)
        return [_rate(f"ioq-stream-b{batch}", total, res["t"])]
    finally:
        region.close()


def bench_ring_stream_py(pair, total, batch, poll_us=50):
    """The message API as a Python user calls it: put/get, put_batch/get_batch."""
    region = ioq.Region.create([1024], buf_size=64)
    try:
        res = {}

        def parent():
            rx = region.consumer(0, poll_us=poll_us)
            got = 0
            t0 = time.perf_counter()
            if batch == 1:
                get = rx.get
                for _ in range(total):
                    if get(timeout=5.0) is None:
                        raise RuntimeError("python stream stalled")
                got = total
            else:
                out = np.empty((batch, MSG), np.uint8)
                lens = np.empty(batch, np.uint32)
                get_batch = rx.get_batch
                while got < total:
                    k = get_batch(out, lens, timeout=5.0)
                    if k == 0:
                        raise RuntimeError("python stream stalled")
                    got += k
            res["t"] = time.perf_counter() - t0

        def child():
            tx = region.producer(0, poll_us=poll_us)
            if batch == 1:
                msg = b"m" * MSG
                put = tx.put
                for _ in range(total):
                    put(msg)
            else:
                block = np.full((batch, MSG), 0x6d, np.uint8)
                put_batch = tx.put_batch
                sent = 0
                while sent < total:
                    sent += put_batch(block[: min(batch, total - sent)], timeout=5.0)

        pair.run(parent, child)
        return [_rate(f"ioq-stream-py-b{batch}", total, res["t"])]
    finally:
        region.close()


def bench_faster_fifo(pair, total, batch):
    try:
        from faster_fifo import Queue
    except ImportError:
        return [{"name": f"faster-fifo-b{batch}", "metric": "msgs_per_s", "value": None,
                 "note": "faster-fifo is not installed"}]
    q = Queue(max_size_bytes=4 * 1024 * 1024)
    res = {}
    msg = b"m" * MSG

    def parent():
        t0 = time.perf_counter()
        got = 0
        if batch == 1:
            for _ in range(total):
                q.get(timeout=5.0)
            got = total
        else:
            while got < total:
                got += len(q.get_many(timeout=5.0, max_messages_to_get=batch))
        res["t"] = time.perf_counter() - t0

    def child():
        if batch == 1:
            for _ in range(total):
                q.put(msg, timeout=5.0)
        else:
            block = [msg] * batch
            sent = 0
            while sent < total:
                k = min(batch, total - sent)
                q.put_many(block[:k], timeout=5.0)
                sent += k

    try:
        pair.run(parent, child)
    finally:
        q.close()
    return [_rate(f"faster-fifo-b{batch}", total, res["t"])]


def run(cpus=(0, 1), quick=False, progress=None):
    """All rows, in one run.  quick shrinks the counts (for tests)."""
    s = 10 if quick else 1
    pair = Pair(cpus)
    steps = [
        lambda: bench_spin(pair, 200_000 // s),
        lambda: bench_ring_pingpong(pair, 200_000 // s, MODE_POLL, "ioq-pingpong-poll"),
        lambda: bench_ring_pingpong(pair, 10_000 // s, MODE_SIGNAL, "ioq-pingpong-signal"),
        lambda: bench_fd_pingpong(pair, 10_000 // s, "eventfd"),
        lambda: bench_fd_pingpong(pair, 10_000 // s, "pipe"),
        lambda: bench_mp_pipe(pair, 10_000 // s),
        lambda: bench_spsc_stream(pair, 20_000_000 // s, 1),
        lambda: bench_spsc_stream(pair, 50_000_000 // s, 32),
        lambda: bench_ring_stream(pair, 20_000_000 // s, 1),
        lambda: bench_ring_stream(pair, 50_000_000 // s, 32),
        lambda: bench_ring_stream(pair, 50_000_000 // s, 256),
        lambda: bench_ring_stream_py(pair, 2_000_000 // s, 1),
        lambda: bench_ring_stream_py(pair, 10_000_000 // s, 32),
        lambda: bench_faster_fifo(pair, 300_000 // s, 1),
        lambda: bench_faster_fifo(pair, 1_000_000 // s, 32),
        # Again at the end: the host may move the vCPUs during a run, and
        # the streams move 2-3x with them (docs/benchmarks.md).
        lambda: [dict(r, name="spin-pingpong-c-after") for r in bench_spin(pair, 50_000 // s)
                 if r["metric"] == "rtt_ns_p50"],
    ]
    rows = []
    for step in steps:
        new = step()
        rows.extend(new)
        if progress:
            for row in new:
                progress(row)
    return rows


def ratios(rows):
    """The target ratios of issue 2, from one run's rows."""
    v = {(r["name"], r["metric"]): r["value"] for r in rows}

    def get(name, metric):
        return v.get((name, metric))

    out = {}
    spin = get("spin-pingpong-c", "rtt_ns_p50")
    efd = get("eventfd-pingpong", "rtt_ns_p50")
    if spin and get("ioq-pingpong-poll", "rtt_ns_p50"):
        out["ioq-pingpong-poll / spin-pingpong-c"] = get("ioq-pingpong-poll", "rtt_ns_p50") / spin
    if efd and get("ioq-pingpong-signal", "rtt_ns_p50"):
        out["ioq-pingpong-signal / eventfd-pingpong"] = get("ioq-pingpong-signal", "rtt_ns_p50") / efd
    for b in (1, 32):
        c, q = get(f"spsc-stream-c-b{b}", "msgs_per_s"), get(f"ioq-stream-b{b}", "msgs_per_s")
        if c and q:
            out[f"ioq-stream-b{b} / spsc-stream-c-b{b}"] = q / c
    for b in (1, 32):
        ff = get(f"faster-fifo-b{b}", "msgs_per_s")
        py = get(f"ioq-stream-py-b{b}", "msgs_per_s")
        if ff and py:
            out[f"ioq-stream-py-b{b} / faster-fifo-b{b}"] = py / ff
    return out


def format_table(rows):
    lines = [f"{'name':<24} {'metric':<12} {'value':>16}"]
    for r in rows:
        val = r["value"]
        if val is None:
            txt = r.get("note", "n/a")
        elif r["metric"].startswith("rtt_ns"):
            txt = f"{val:,.0f} ns"
        else:
            txt = f"{val / 1e6:,.2f} M/s"
        lines.append(f"{r['name']:<24} {r['metric']:<12} {txt:>16}")
    return "\n".join(lines)


def main(cpus=(0, 1), json_path=None, quick=False, out=sys.stdout):
    rows = run(cpus, quick=quick,
               progress=lambda r: print(f"  {r['name']:<24} {r['metric']:<12} done", file=sys.stderr))
    print(format_table(rows), file=out)
    rat = ratios(rows)
    if rat:
        print("\nratios (same run):", file=out)
        for k, val in rat.items():
            print(f"  {k:<44} {val:8.2f}", file=out)
    if json_path:
        with open(json_path, "w") as f:
            from bench.report import machine
            json.dump({"rows": rows, "ratios": rat, "cpus": list(cpus), "machine": machine()}, f,
                      indent=1)
    return rows
