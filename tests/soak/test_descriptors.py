"""1 M random and adversarial descriptor batches against a backend pump.

No root: the backend is a `venet.devices._pump.Pump` as `venet bridge` runs
it (its own mapping of the region, TX ring consumer with the device's
max_len, all offloads and TX completions negotiated), with one end of a
socketpair(AF_UNIX, SOCK_SEQPACKET) standing in for the tap.  The frontend
writes raw descriptors into the TX ring: plain frames, offload flags over
random and plausible records, unknown ioq and venet flags, spans outside
the pool or wrapping past 2^64, zero and huge lengths, short frames,
indirect tables (aligned or not, good and bad entries), chains of every
length (past VENET_MAX_CHAIN too), and descriptors whose offset and length
are rewritten right after they are published (the pump may already be
reading them).

The backend must survive (the pump still runs and still moves good frames
both ways afterwards), and its counters must balance: every frame the
frontend published (one per descriptor without F_MORE) was written to the
"tap" or counted in exactly one drop counter, and the socket's reader got
as many frames as the pump counts written.

Knobs: SOAK_DESC_BATCHES (default 1000000), SOAK_DESC_SECONDS (a time
bound, default 1800: the loop stops there and fails, saying how far it
got), SOAK_SEED (the summary line prints the seed of each run).
"""
import mmap
import os
import select
import socket
import struct
import threading
import time

import numpy as np
import pytest

import ioq
from venet import abi
from venet.devices._pump import Pump

from .conftest import env_int, summary

pytestmark = pytest.mark.soak

BATCHES = env_int("SOAK_DESC_BATCHES", 1_000_000)
SECONDS = env_int("SOAK_DESC_SECONDS", 1800)
RING = 256
BUF = 2048
MTU = 1500
CHUNK = 4096                # batches generated at once (numpy)
SG_BUFS = 32                # the last TX buffers hold indirect tables
USER_MASK = 0xffff0000
STOP = b"soak-drain-stop"
DROPS = ("drop_bad_desc", "drop_short", "drop_offload", "drop_chain", "drop_tap_write") + \
    tuple("drop_meta_" + r for r in abi.META_REASONS if r != "ok")

# Descriptor kinds and how often each is drawn.
KINDS = {
    "plain": 0.30,          # a good frame in a TX buffer
    "offload": 0.12,        # CSUM / GSO / ECN / TXC flags over a random or plausible record
    "user_flag": 0.04,      # a venet flag bit nobody defined
    "ioq_flag": 0.04,       # an ioq flag bit nobody defined
    "bounds": 0.08,         # anywhere in 2^64, any length
    "zero": 0.03,
    "huge": 0.04,           # longer than the device's max_len
    "pool_end": 0.05,       # straddling the end of the pool
    "wrap": 0.05,           # offset + len wraps past 2^64
    "short": 0.05,          # shorter than an Ethernet header
    "indirect": 0.12,       # SG tables, good or bad, aligned or not
    "garbage": 0.08,        # every field random
}
OFFLOAD_FLAGS = np.array([abi.F_NEEDS_CSUM, abi.F_GSO, abi.F_NEEDS_CSUM | abi.F_GSO,
                          abi.F_NEEDS_CSUM | abi.F_GSO | abi.F_ECN, abi.F_ECN, abi.F_TXC,
                          abi.F_NEEDS_CSUM | abi.F_TXC, abi.F_TXC | abi.F_GSO], dtype=np.uint32)


class Frontend:
    """The hostile side: owns the region, writes descriptors and buffers."""

    def __init__(self, rng):
        self.rng = rng
        self.region = ioq.Region.create([RING, RING, abi.EVQ_RING], buf_size=BUF, name="venet-soak")
        self.tx = self.region.producer(abi.RING_TX)
        self.rx = self.region.consumer(abi.RING_RX)
        self.evq = self.region.consumer(abi.RING_EVQ)
        r = self.region
        self.pool_lo, self.pool_hi = r.pool_offset, r.pool_offset + r.pool_size
        self.tx_base = r.buffer_offset(r.paired_base(abi.RING_TX))
        self.pool = np.frombuffer(r.view(self.pool_lo, r.pool_size), dtype=np.uint8)
        # A second mapping of the memfd, to rewrite published descriptors.
        fd, _ = r.handoff()
        self._mm = mmap.mmap(fd, r.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.ring = np.frombuffer(self._mm, dtype=ioq.DESC_DTYPE, count=RING,
                                  offset=r.ring_offset(abi.RING_TX) + ioq.RING_HDR_SIZE)
        self.max_len = abi.META_SIZE + abi.max_frame(MTU, abi.OFFLOAD_CAPS)
        self.write_tables()
        self.scribble_records(1.0)

    def buf_off(self, i):
        return self.tx_base + i * BUF

    def write_tables(self):
        """Indirect tables in the last SG_BUFS TX buffers: mostly good
        entries, some of zero length or outside the pool."""
        rng = self.rng
        n = SG_BUFS * BUF // ioq.SG_SIZE
        tbl = np.zeros(n, dtype=ioq.SG_DTYPE)
        bufs = rng.integers(0, RING - SG_BUFS, n)
        tbl["offset"] = self.tx_base + bufs * BUF + rng.integers(0, 256, n)
        tbl["len"] = rng.integers(1, 600, n)
        bad = rng.random(n)
        tbl["len"][bad < 0.03] = 0
        tbl["offset"][(bad >= 0.03) & (bad < 0.06)] = rng.integers(0, 2**63, n)[(bad >= 0.03) & (bad < 0.06)]
        tbl["reserved"][bad > 0.98] = 0xffffffff
        start = self.buf_off(RING - SG_BUFS) - self.pool_lo
        self.pool[start:start + tbl.nbytes] = tbl.view(np.uint8)

    def scribble_records(self, share):
        """Rewrite the leading 16 bytes (where an offload record sits) of a
        share of the TX buffers: half random, half plausible records."""
        rng = self.rng
        idx = np.flatnonzero(rng.random(RING - SG_BUFS) < share)
        if not len(idx):
            return
        recs = rng.integers(0, 256, (len(idx), abi.META_SIZE), dtype=np.uint8)
        plaus = rng.random(len(idx)) < 0.5
        fields = np.zeros(int(plaus.sum()), dtype=[("start", "<u2"), ("off", "<u2"), ("gtype", "u1"),
                                                   ("pad", "u1"), ("hdr", "<u2"), ("size", "<u2"),
                                                   ("rest", "u1", 6)])
        fields["start"] = rng.integers(14, 120, len(fields))
        fields["off"] = rng.choice([6, 16, 10], len(fields))
        fields["gtype"] = rng.integers(0, 5, len(fields))
        fields["hdr"] = rng.integers(0, 128, len(fields))
        fields["size"] = rng.choice([0, 1, 536, 1448, 9000], len(fields))
        recs[plaus] = fields.view(np.uint8).reshape(-1, abi.META_SIZE)
        for j, i in enumerate(idx):
            o = self.buf_off(i) - self.pool_lo
            self.pool[o:o + abi.META_SIZE] = recs[j]

    def chunk(self, nbatch):
        """(descriptors, batch end indices) for nbatch batches."""
        rng = self.rng
        sizes = rng.integers(1, 33, nbatch)
        longc = rng.random(nbatch) < 0.01
        sizes[longc] = rng.integers(60, 101, int(longc.sum()))
        n = int(sizes.sum())
        ends = np.cumsum(sizes)
        d = np.zeros(n, dtype=ioq.DESC_DTYPE)
        d["cookie"] = rng.integers(0, 2**63, n)
        d["user"] = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
        names = list(KINDS)
        kind = rng.choice(len(names), n, p=list(KINDS.values()))
        k = {name: kind == i for i, name in enumerate(names)}
        bufs = rng.integers(0, RING - SG_BUFS, n)
        good_off = self.tx_base + bufs * BUF + rng.integers(0, 64, n)
        d["offset"] = good_off
        d["len"] = rng.integers(14, MTU + 15, n)
        flags = np.zeros(n, dtype=np.uint32)
        flags[k["offload"]] = rng.choice(OFFLOAD_FLAGS, int(k["offload"].sum()))
        flags[k["user_flag"]] = (1 << rng.integers(21, 32, int(k["user_flag"].sum()))).astype(np.uint32)
        flags[k["ioq_flag"]] = (1 << rng.integers(1, 16, int(k["ioq_flag"].sum()))).astype(np.uint32)
        m = k["bounds"]
        d["offset"][m] = rng.integers(0, 2**64, int(m.sum()), dtype=np.uint64)
        d["len"][m] = rng.integers(0, 2**32, int(m.sum()), dtype=np.uint64)
        d["len"][k["zero"]] = 0
        m = k["huge"]
        d["len"][m] = rng.integers(self.max_len + 1, 2**32, int(m.sum()), dtype=np.uint64)
        m = k["pool_end"]
        d["offset"][m] = self.pool_hi - rng.integers(0, 4096, int(m.sum()))
        d["len"][m] = rng.integers(1, 8192, int(m.sum()))
        m = k["wrap"]
        d["offset"][m] = np.uint64(2**64 - 1) - rng.integers(0, 8191, int(m.sum()), dtype=np.uint64)
        d["len"][m] = rng.integers(1, 16384, int(m.sum()))
        d["len"][k["short"]] = rng.integers(1, 14, int(k["short"].sum()))
        m = k["indirect"]
        c = int(m.sum())
        toff = self.buf_off(RING - SG_BUFS) + rng.integers(0, SG_BUFS * BUF // 16 - 80, c) * 16
        mis = rng.random(c) < 0.1
        toff[mis] += rng.integers(1, 8, int(mis.sum()))
        tlen = rng.integers(0, 70, c) * ioq.SG_SIZE
        odd = rng.random(c) < 0.1
        tlen[odd] += rng.integers(1, 16, int(odd.sum()))
        d["offset"][m] = toff
        d["len"][m] = tlen
        flags[m] = ioq.F_INDIRECT | (rng.random(c) < 0.2) * abi.F_NEEDS_CSUM
        m = k["garbage"]
        c = int(m.sum())
        d["offset"][m] = rng.integers(0, 2**64, c, dtype=np.uint64)
        d["len"][m] = rng.integers(0, 2**32, c, dtype=np.uint64)
        flags[m] = rng.integers(0, 2**32, c, dtype=np.uint64).astype(np.uint32)
        # Chains: any descriptor may say "more follows"; the long batches are
        # one chain (60..100 descriptors, past the 64 a chain may have).
        more = rng.random(n) < 0.25
        starts = ends - sizes
        for s, e in zip(starts[longc], ends[longc]):
            more[s:e] = True
        more[ends[longc] - 1] = False
        flags = np.where(more, flags | abi.F_MORE, flags & ~np.uint32(abi.F_MORE))
        d["flags"] = flags
        return d, ends


def _drain(sock, wfd):
    """Child process: read the "tap" until the stop marker; report counts."""
    frames = nbytes = short = 0
    buf = bytearray(256 * 1024)
    while True:
        n = sock.recv_into(buf)
        if n == len(STOP) and bytes(buf[:n]) == STOP:
            break
        frames += 1
        nbytes += n
        if n < abi.META_SIZE + abi.ETH_HLEN:
            short += 1
    os.write(wfd, struct.pack("<QQQ", frames, nbytes, short))


def test_descriptor_batches():
    seed = int(os.environ.get("SOAK_SEED") or int.from_bytes(os.urandom(4), "little"))
    rng = np.random.default_rng(seed)
    fe = Frontend(rng)
    back_sock, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    back_sock.setblocking(False)
    back_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rpipe, wpipe = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            back_sock.close()
            os.close(rpipe)
            _drain(peer, wpipe)
        finally:
            os._exit(0)
    os.close(wpipe)
    fd, efds = fe.region.handoff()
    back = ioq.Region.attach(fd, efds)
    thread = None
    pump = None
    result = {}
    try:
        inr = back.consumer(abi.RING_TX, max_len=fe.max_len)
        outr = back.producer(abi.RING_RX)
        evq = back.producer(abi.RING_EVQ)
        pump = Pump(inr, outr, back_sock.fileno(), mtu=MTU, caps=abi.OFFLOAD_CAPS, txc_evq=evq)
        thread = threading.Thread(target=lambda: result.update(r=pump.run()), daemon=True)
        thread.start()

        t0 = time.monotonic()
        deadline = t0 + SECONDS
        done = descs = frames = txc_frames = rewrites = events = 0
        more_pending = False            # the previous descriptor said F_MORE
        while done < BATCHES and time.monotonic() < deadline:
            nb = min(CHUNK, BATCHES - done)
            d, ends = fe.chunk(nb)
            if done + nb >= BATCHES:
                d["flags"][-1] &= ~np.uint32(abi.F_MORE)    # close the last chain
            f = d["flags"]
            is_more = (f & abi.F_MORE) != 0
            prev = np.concatenate(([more_pending], is_more[:-1]))
            frames += int((~is_more).sum())
            txc_frames += int(((f & abi.F_TXC) != 0)[~prev].sum())
            more_pending = bool(is_more[-1])
            start = 0
            for i, end in enumerate(ends):
                end = int(end)
                n = end - start
                while fe.tx.free() < n:
                    if time.monotonic() > deadline + 60:
                        raise AssertionError("the pump stopped consuming the TX ring")
                    fe.tx.wait(0.5)
                pushed = fe.tx.push(d[start:end])
                assert pushed == n
                if i % 50 == 7:
                    # Rewrite what was just published: the pump may be
                    # validating these very slots right now.
                    head = (descs + n - 1) % RING
                    fe.ring["offset"][head] = rng.integers(0, 2**64, dtype=np.uint64)
                    fe.ring["len"][head] = rng.integers(0, 2**32, dtype=np.uint64)
                    rewrites += 1
                if i % 64 == 0:
                    while fe.evq.get(timeout=0) is not None:
                        events += 1
                descs += n
                start = end
            done += nb
            fe.scribble_records(0.1)
        elapsed = time.monotonic() - t0
        # Everything published was consumed (slots handed back), so every
        # write to the tap happened.
        while fe.tx.free() < RING:
            assert thread.is_alive(), f"the pump returned {result.get('r')!r}"
            assert time.monotonic() < deadline + 60, "the pump stopped consuming"
            fe.tx.wait(0.5)
        while fe.evq.get(timeout=0) is not None:
            events += 1
        assert thread.is_alive(), f"the pump returned {result.get('r')!r}"
        back_sock.send(STOP)
        r, _, _ = select.select([rpipe], [], [], 120)
        assert r, "the drain process did not report"
        drained, dbytes, dshort = struct.unpack("<QQQ", os.read(rpipe, 24))
        os.waitpid(child, 0)
        child = 0
        mid = pump.stats()

        # Still alive: good frames both ways.
        good = [bytes([i]) * 6 + b"\x02" * 6 + b"\x08\x00" + os.urandom(50 + i) for i in range(100)]
        for g in good:
            assert fe.tx.put(g, timeout=5)
        peer.settimeout(5)
        for g in good:
            got = peer.recv(4096)
            assert got == b"\0" * abi.META_SIZE + g
        for g in good:
            peer.send(b"\0" * abi.META_SIZE + g)
        for g in good:
            assert fe.rx.get(timeout=5) == g
        pump.stop()
        thread.join(10)
        assert not thread.is_alive()
        assert result["r"] == "stopped"
        st = pump.stats()
    finally:
        if pump is not None and thread is not None and thread.is_alive():
            pump.stop()
            thread.join(10)
        if child:
            os.kill(child, 9)
            os.waitpid(child, 0)
        os.close(rpipe)
        peer.close()
        back_sock.close()
        back.close()
        fe.ring = None
        fe.pool = None
        fe._mm.close()
        fe.region.close()

    drops = {k: mid[k] for k in DROPS}
    written = mid["to_tap_frames"]
    txc = mid["txc_events"] + mid["txc_lost"]
    summary("descriptors", batches=done, descs=descs, frames=frames, written=written,
            dropped=sum(drops.values()), drained=drained, rewrites=rewrites,
            txc_flagged=txc_frames, txc_events=mid["txc_events"], txc_lost=mid["txc_lost"],
            bad_total=mid["in_ring"]["bad_total"], seconds=round(elapsed, 1),
            batches_per_s=round(done / elapsed), seed=seed)
    assert done == BATCHES, f"only {done} of {BATCHES} batches within {SECONDS} s"
    # Frames in = frames out + counted drops.
    assert frames == written + sum(drops.values()), (frames, written, drops)
    # The "tap"'s reader got exactly what the pump counts as written.
    assert drained == written and dshort == 0, (drained, written, dshort)
    assert dbytes == mid["to_tap_bytes"] + abi.META_SIZE * written
    # No event for a frame that did not ask for one, none twice.
    assert txc <= txc_frames and events <= mid["txc_events"]
    # The 100 good frames each way after the storm.
    assert st["to_tap_frames"] == written + 100 and st["from_tap_frames"] == 100
