"""pytest-benchmark suite for the ring core (opt in: `make bench`, i.e.
`pytest bench --benchmark-only`).

Each cross-process measurement is one benchmark whose timed unit is a
whole run of the loop; the figure of merit (round trip p50 or messages/s)
is stored in extra_info beside its baseline from the same session.  The
in-process ones time single calls of the Python API.
"""
import os

import numpy as np
import pytest

import ioq
from bench import ring

CPUS = sorted(os.sched_getaffinity(0))
if len(CPUS) < 2:
    pytest.skip("the cross-process ring benchmarks need two CPUs", allow_module_level=True)
PAIR = ring.Pair((CPUS[0], CPUS[-1]))


def _record(benchmark, fn):
    rows = benchmark.pedantic(fn, rounds=3, iterations=1)
    for r in rows:
        benchmark.extra_info[f"{r['name']}:{r['metric']}"] = r["value"]


@pytest.mark.parametrize("name,fn", [
    ("spin-pingpong-c", lambda: ring.bench_spin(PAIR, 50_000)),
    ("ioq-pingpong-poll", lambda: ring.bench_ring_pingpong(PAIR, 50_000, ring.MODE_POLL, "ioq-pingpong-poll")),
    ("ioq-pingpong-signal", lambda: ring.bench_ring_pingpong(PAIR, 3000, ring.MODE_SIGNAL, "ioq-pingpong-signal")),
    ("eventfd-pingpong", lambda: ring.bench_fd_pingpong(PAIR, 3000, "eventfd")),
    ("pipe-pingpong", lambda: ring.bench_fd_pingpong(PAIR, 3000, "pipe")),
    ("mp-pipe-pingpong", lambda: ring.bench_mp_pipe(PAIR, 3000)),
])
def test_pingpong(benchmark, name, fn):
    benchmark.group = "pingpong"
    _record(benchmark, fn)


@pytest.mark.parametrize("name,fn", [
    ("spsc-stream-c-b1", lambda: ring.bench_spsc_stream(PAIR, 5_000_000, 1)),
    ("spsc-stream-c-b32", lambda: ring.bench_spsc_stream(PAIR, 10_000_000, 32)),
    ("ioq-stream-b1", lambda: ring.bench_ring_stream(PAIR, 5_000_000, 1)),
    ("ioq-stream-b32", lambda: ring.bench_ring_stream(PAIR, 10_000_000, 32)),
    ("ioq-stream-b256", lambda: ring.bench_ring_stream(PAIR, 10_000_000, 256)),
    ("ioq-stream-py-b1", lambda: ring.bench_ring_stream_py(PAIR, 500_000, 1)),
    ("ioq-stream-py-b32", lambda: ring.bench_ring_stream_py(PAIR, 2_000_000, 32)),
    ("faster-fifo-b1", lambda: ring.bench_faster_fifo(PAIR, 100_000, 1)),
    ("faster-fifo-b32", lambda: ring.bench_faster_fifo(PAIR, 300_000, 32)),
])
def test_stream(benchmark, name, fn):
    benchmark.group = "stream"
    _record(benchmark, fn)


@pytest.fixture
def ends():
    r = ioq.Region.create([1024], buf_size=64)
    yield r.producer(0), r.consumer(0)
    r.close()


def test_put_get_one(benchmark, ends):
    benchmark.group = "python-api"
    p, c = ends
    msg = b"x" * 64

    def one():
        p.put(msg)
        c.get(timeout=0)
    benchmark(one)


def test_put_get_batch32(benchmark, ends):
    benchmark.group = "python-api"
    p, c = ends
    block = np.zeros((32, 64), np.uint8)
    out = np.zeros((32, 64), np.uint8)
    lens = np.zeros(32, np.uint32)

    def batch():
        p.put_batch(block)
        c.get_batch(out, lens, timeout=0)
    benchmark(batch)


def test_raw_push_pop_batch32(benchmark, ends):
    benchmark.group = "python-api"
    p, c = ends
    d = np.zeros(32, ioq.DESC_DTYPE)
    d["offset"] = p.region.buffer_offset(0)
    d["len"] = 64
    items = np.zeros(32, ioq.ITEM_DTYPE)

    def batch():
        p.push(d, notify=False)
        c.pop(items)
        c.release(notify=False)
    benchmark(batch)
