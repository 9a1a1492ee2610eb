"""Fuzz the ioq consumer's descriptor validation (Ring.pop) against a model
written from docs/abi.md ("What the consumer checks").

Per input: a fresh region, the ring's shared indices set to a chosen start
(u32 wrap-around included), fuzzer-chosen descriptors, seq values and SG
tables written straight into the shared memory, as a hostile producer
would; then pop into ITEM_DTYPE (with or without SG scratch), release, and
pop again.  Every item, every validated SG copy, the counters and the
released index must be what the model says.  ioq is Cython, which atheris
does not instrument: coverage comes from this harness and the model, and
the native code is checked by the model's verdicts (and by ASan, see
docs/fuzzing.md).
"""
import mmap
import struct
import sys

import numpy as np

import ioq
from tests.fuzz._runner import Finding, fuzz_main

TARGET = "ring"
DESC = ioq.DESC_STRUCT
SG = ioq.SG_STRUCT
M32 = 0xffffffff
# The model names each refusal; the built table says its code.
OK, BAD_FLAGS, ZERO_LEN, BOUNDS, TOO_LONG, SG_TABLE, SG_ENTRY = (
    ioq.BAD_REASONS.index(n) for n in ("ok", "bad_flags", "zero_len", "out_of_bounds", "too_long",
                                       "bad_sg_table", "bad_sg_entry"))


def _span(lo, hi, off, ln):
    if ln == 0:
        return ZERO_LEN
    if off < lo or off > hi or ln > hi - off:
        return BOUNDS
    return OK


def _validate(mem, lo, hi, max_sg, max_len, d, room):
    """(status, len, sg copies) of one descriptor, from the doc's table."""
    off, ln, flags = d[1], d[2], d[3]
    if flags & 0xffff & ~ioq.F_INDIRECT:
        return BAD_FLAGS, ln, []
    if not flags & ioq.F_INDIRECT:
        st = _span(lo, hi, off, ln)
        if st == OK and ln > max_len:
            return TOO_LONG, ln, []
        return st, ln, []
    if ln == 0 or ln % 16 or off & 7:
        return SG_TABLE, ln, []
    n = ln // 16
    if n > max_sg or n > room or _span(lo, hi, off, ln) != OK:
        return SG_TABLE, ln, []
    entries = [SG.unpack_from(mem, off + 16 * i)[:2] for i in range(n)]
    if any(_span(lo, hi, eo, el) != OK for eo, el in entries):
        return SG_ENTRY, ln, []
    total = sum(el for _, el in entries)
    if total > max_len:
        return TOO_LONG, ln, []
    return OK, total, entries


def _model_pop(mem, ring_at, count, head, lo, hi, max_sg, max_len, n_items, sg_cap):
    items, sgs, used = [], [], 0
    for i in range(min(n_items, count)):
        pos = (head + i) & M32
        d = DESC.unpack_from(mem, ring_at + ioq.RING_HDR_SIZE + ioq.DESC_SIZE * (pos % count))
        if d[5] != (pos + 1) & M32:
            break
        if sg_cap is None:
            # Without scratch an indirect descriptor is refused before its
            # other flag bits are looked at (bad_sg_table, not bad_flags).
            if d[3] & ioq.F_INDIRECT:
                st, ln, ent = SG_TABLE, d[2], []
            else:
                st, ln, ent = _validate(mem, lo, hi, max_sg, max_len, d, 0)
        else:
            st, ln, ent = _validate(mem, lo, hi, max_sg, max_len, d, sg_cap - used)
        items.append((d[0], d[1], ln, d[3], d[4], st, used, len(ent)))
        sgs.extend(ent)
        used += len(ent)
        if sg_cap is not None and sg_cap - used < max_sg:
            break
    return items, sgs


def _u64(fdp, lo, hi, tables=()):
    """An offset: an SG table written, near the pool, anywhere."""
    k = fdp.ConsumeIntInRange(0, 3)
    if k == 3 and tables:
        return fdp.PickValueInList(tables)
    if k == 0:
        return fdp.ConsumeIntInRange(0, (1 << 64) - 1)
    if k == 1:
        return (hi - fdp.ConsumeIntInRange(0, 64)) & ((1 << 64) - 1)
    return lo + fdp.ConsumeIntInRange(0, hi - lo + 8)


def _len(fdp, lo, hi):
    k = fdp.ConsumeIntInRange(0, 3)
    if k == 0:
        return fdp.ConsumeIntInRange(0, M32)
    if k == 1:
        return 16 * fdp.ConsumeIntInRange(0, 10)
    if k == 2:
        return fdp.ConsumeIntInRange(0, 200)
    return fdp.ConsumeIntInRange(0, hi - lo + 16)


def _flags(fdp):
    k = fdp.ConsumeIntInRange(0, 3)
    if k == 0:
        return fdp.ConsumeIntInRange(0, M32)
    if k == 1:
        return ioq.F_INDIRECT | (fdp.ConsumeIntInRange(0, 0xffff) << 16)
    return fdp.ConsumeIntInRange(0, 0xffff) << 16


def TestOneInput(data):
    import atheris
    fdp = atheris.FuzzedDataProvider(data)
    count = 1 << fdp.ConsumeIntInRange(0, 4)
    buf_size = 64 * fdp.ConsumeIntInRange(1, 4)
    max_sg = fdp.ConsumeIntInRange(1, 8)
    region = ioq.Region.create([count, 2], buf_size=buf_size, max_sg=max_sg)
    mem = mmap.mmap(region.fd, region.size)
    try:
        lo, hi = region.pool_offset, region.pool_offset + region.pool_size
        ring_at = region.ring_offset(0)
        k = fdp.ConsumeIntInRange(0, 2)       # start: 0, just before the u32 wrap, anywhere
        head = 0 if k == 0 else (M32 - fdp.ConsumeIntInRange(0, 32)) if k == 1 else fdp.ConsumeIntInRange(0, M32)
        struct.pack_into("<I", mem, ring_at + ioq.RING_PROD_OFF, head)
        struct.pack_into("<I", mem, ring_at + ioq.RING_CONS_OFF, head)
        max_len = fdp.ConsumeIntInRange(1, hi - lo + 64) if fdp.ConsumeBool() else None
        # SG tables (and any bytes) in the pool.
        tables = []
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            at = lo + 8 * fdp.ConsumeIntInRange(0, (hi - lo) // 8 - 1)
            tables.append(at)
            for i in range(fdp.ConsumeIntInRange(1, 9)):
                if at + 16 * (i + 1) > hi:
                    break
                SG.pack_into(mem, at + 16 * i, _u64(fdp, lo, hi), _len(fdp, lo, hi), fdp.ConsumeIntInRange(0, M32))
        for i in range(fdp.ConsumeIntInRange(0, count)):
            pos = (head + i) & M32
            seq = (pos + 1) & M32 if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, M32)
            DESC.pack_into(mem, ring_at + ioq.RING_HDR_SIZE + ioq.DESC_SIZE * (pos % count),
                           fdp.ConsumeIntInRange(0, (1 << 64) - 1), _u64(fdp, lo, hi, tables),
                           _len(fdp, lo, hi),
                           _flags(fdp), fdp.ConsumeIntInRange(0, M32), seq)
        kw = {} if max_len is None else {"max_len": max_len}
        c = region.consumer(0, **kw)
        eff_max = max_len if max_len is not None else min(hi - lo, M32)
        bad = [0] * 7
        for rnd in range(2):
            n_items = fdp.ConsumeIntInRange(0, count + 2)
            sg_n = fdp.ConsumeIntInRange(0, 4 * max_sg) if fdp.ConsumeBool() else None
            items = np.zeros(n_items, ioq.ITEM_DTYPE)
            sg = None if sg_n is None else np.zeros(sg_n, ioq.SG_DTYPE)
            if sg is not None and sg_n < max_sg:
                try:
                    c.pop(items, sg)
                except ValueError:
                    continue
                raise Finding(f"pop took SG scratch of {sg_n} entries with max_sg {max_sg}")
            want, want_sg = _model_pop(mem, ring_at, count, head, lo, hi, max_sg, eff_max, n_items, sg_n)
            k = c.pop(items, sg)
            got = [tuple(int(x) for x in it) for it in items[:k]]
            if got != want:
                raise Finding(f"round {rnd} at {head:#x}: pop gave\n {got}\nthe model\n {want}")
            got_sg = [] if sg is None else [
                (int(sg[it[6] + j]["offset"]), int(sg[it[6] + j]["len"]))
                for it in want for j in range(it[7])]
            if got_sg != want_sg:
                raise Finding(f"validated SG copies {got_sg}, the model {want_sg}")
            if sg is not None and any(int(sg[it[6] + j]["reserved"]) for it in want for j in range(it[7])):
                raise Finding("an SG copy kept the peer's reserved field")
            for it in want:
                bad[it[5]] += 1
            st = c.stats()
            for r, name in enumerate(ioq.BAD_REASONS[1:], 1):
                if st[name] != bad[r]:
                    raise Finding(f"counter {name}={st[name]}, the model {bad[r]}")
            c.release(notify=False)
            head = (head + k) & M32
            cons = struct.unpack_from("<I", mem, ring_at + ioq.RING_CONS_OFF)[0]
            if cons != head:
                raise Finding(f"released index {cons:#x}, expected {head:#x}")
    finally:
        mem.close()
        region.close()


def main(argv=None):
    fuzz_main(TARGET, TestOneInput, [sys.modules[__name__]], argv, max_len=2048)


if __name__ == "__main__":
    main(sys.argv)
