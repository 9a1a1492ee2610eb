# cython: language_level=3, boundscheck=False, wraparound=False
"""Frames with offload records and VENET_F_MORE chains, for the frontend's
Python API (the pumps do the same in C; see venet/devices/_pump.pyx).

ioq's message API (Ring.put/get) moves one buffer per message; a venet
frame may need several (a 64 KiB GSO frame spans many paired buffers) and
may lead with a 16-byte offload record.  These two functions add that
layer over a Ring without a Python object per descriptor.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from shmsignal.includes.atomics cimport venet_cpu_relax
from shmsignal.shmsig cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring
from ioq._region import IoqError
from venet.abi cimport *

# How long a consumer waits for the rest of a chain whose first slots are
# published: its producer publishes a whole chain in one loop, so a chain
# still short after this many looks is one a broken peer will never finish.
cdef enum:
    CHAIN_PATIENCE = 100000


class ChainError(IoqError):
    """The peer published a frame chain that is too long or never ends."""


def send_frame(Ring ring not None, data, unsigned int flags=0, meta=None, timeout=None,
               bint want_cookie=False):
    """Publish one frame (bytes-like), led by the 16-byte record `meta` if
    given, across as many consecutive paired buffers as it needs.  `flags`
    are the first descriptor's VENET_F_* bits.  Blocks while the ring lacks
    room; returns False on timeout (True on success, or with want_cookie
    the first descriptor's cookie, which a TX completion event echoes, or
    None on timeout)."""
    ring._require(IOQ_ROLE_PRODUCER)
    ring._need_pairs()
    cdef const uint8_t[::1] src = memoryview(data).cast("B")
    cdef const uint8_t[::1] rec
    cdef uint32_t mlen = 0, n = <uint32_t>src.shape[0], total, nslots, j, piece, at = 0
    cdef uint32_t bs = ring._buf_size
    cdef ioq_ring_t *r = &ring.r
    cdef ioq_desc_t *d
    cdef char *dst
    if meta is not None:
        rec = memoryview(meta).cast("B")
        if rec.shape[0] != VENET_META_SIZE:
            raise ValueError(f"an offload record is {VENET_META_SIZE} bytes, not {rec.shape[0]}")
        mlen = VENET_META_SIZE
    if n == 0:
        raise ValueError("empty frame")
    if flags & 0xffff or flags & VENET_F_MORE:
        raise ValueError("flags must be VENET_F_* bits other than MORE")
    total = mlen + n
    nslots = (total + bs - 1) // bs
    if nslots > VENET_MAX_CHAIN or nslots > r.count:
        raise ValueError(f"a frame of {n} bytes needs {nslots} buffers of {bs}; the limit is "
                         f"{min(<uint32_t>VENET_MAX_CHAIN, r.count)}")
    while ioq_free(r, nslots) < nslots:
        ring._live()
        if ring._wait(timeout) == 0 and ioq_free(r, nslots) < nslots:
            return None if want_cookie else False
    cdef uint64_t cookie = r.head
    for j in range(nslots):
        d = ioq_slot(r, j)
        d.offset = ring._pair_off + <uint64_t>((r.head + j) & r.mask) * bs
        d.cookie = r.head + j
        d.user = 0
        d.flags = VENET_F_MORE if j + 1 < nslots else 0
        dst = r.base + d.offset
        piece = bs
        if j == 0 and mlen:
            memcpy(dst, &rec[0], mlen)
            dst += mlen
            piece -= mlen
        if piece > n - at:
            piece = n - at
        memcpy(dst, &src[at], piece)
        at += piece
        d.len = piece + (mlen if j == 0 else 0)
    ioq_slot(r, 0).flags |= flags
    ioq_commit(r, nslots)
    shmsig_inject(&r.sig)
    return cookie if want_cookie else True


def recv_frame(Ring ring not None, timeout=None):
    """The next frame as (data, flags, record): record is the 16-byte
    offload record (bytes) when flags carry NEEDS_CSUM or GSO, else None,
    and data is the frame after it.  None on timeout.  A frame made of bad
    descriptors is skipped (counted by the ring); a chain too long raises
    ChainError after skipping it."""
    ring._require(IOQ_ROLE_CONSUMER)
    cdef ioq_ring_t *r = &ring.r
    cdef ioq_item_t *items = ring._items
    cdef uint32_t k, e, j, q, used, tries = 0, want = VENET_MAX_CHAIN + 1
    cdef uint64_t total
    cdef bint bad
    cdef bytes out
    cdef object rec
    cdef char *dst
    cdef uint32_t skip, flags, first_len
    cdef uint64_t first_off
    if want > r.count:
        want = r.count
    while True:
        k = ioq_pop(r, items, want, ring._sg, ring._sg_cap, &used)
        if k == 0:
            ring._live()
            if ring._wait(timeout) == 0 and not ioq_peek(r):
                return None
            continue
        e = 0
        while e < k and items[e].flags & VENET_F_MORE and e < VENET_MAX_CHAIN:
            e += 1
        if e >= VENET_MAX_CHAIN:
            # Skip the whole chain, however long, then report it.
            ioq_unpop(r, &items[e], k - e)
            ioq_release(r)
            _skip_chain(ring)
            shmsig_inject(&r.sig)
            raise ChainError(f"ring {ring.index}: a frame chain longer than {VENET_MAX_CHAIN} "
                             "descriptors was skipped")
        if e == k:
            ioq_unpop(r, items, k)
            tries += 1
            if tries > CHAIN_PATIENCE:
                raise ChainError(f"ring {ring.index}: the peer published the start of a frame "
                                 "chain and not its end")
            venet_cpu_relax()
            continue
        # items[0..e] is a whole frame; give the rest back.
        ioq_unpop(r, &items[e + 1], k - e - 1)
        bad = False
        total = 0
        for j in range(e + 1):
            if items[j].status != IOQ_OK or (j > 0 and (items[j].sg_count or
                                                        items[j].flags & 0xffff0000 & ~(<uint32_t>VENET_F_MORE))):
                bad = True
            total += items[j].len
        flags = items[0].flags & 0xffff0000 & ~(<uint32_t>VENET_F_MORE)
        skip = VENET_META_SIZE if flags & (VENET_F_NEEDS_CSUM | VENET_F_GSO) else 0
        # The record lies whole in the frame's first piece (as the pumps
        # require): a direct buffer, or an SG list's first entry.
        if items[0].sg_count:
            first_off = ring._sg[items[0].sg_first].offset
            first_len = ring._sg[items[0].sg_first].len
        else:
            first_off = items[0].offset
            first_len = items[0].len
        if bad or total <= skip or first_len < skip or (e > 0 and items[0].sg_count):
            ioq_release(r)
            shmsig_inject(&r.sig)
            continue
        rec = PyBytes_FromStringAndSize(r.base + first_off, skip) if skip else None
        out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>(total - skip))
        dst = PyBytes_AS_STRING(out)
        for j in range(e + 1):
            if items[j].sg_count == 0:
                dst = _take(dst, r.base + items[j].offset, items[j].len, &skip)
            else:
                for q in range(items[j].sg_count):
                    dst = _take(dst, r.base + ring._sg[items[j].sg_first + q].offset,
                                ring._sg[items[j].sg_first + q].len, &skip)
        ioq_release(r)
        shmsig_inject(&r.sig)
        return out, flags, rec


cdef inline char *_take(char *dst, const char *src, uint32_t n, uint32_t *skip) noexcept nogil:
    """Copy a piece, leaving out its first *skip bytes (the record, only
    ever in the first piece); returns where the next piece goes."""
    cdef uint32_t s = skip[0]
    memcpy(dst, src + s, n - s)
    skip[0] = 0
    return dst + (n - s)


cdef void _skip_chain(Ring ring):
    """Pop and release descriptors up to and including the next one without
    VENET_F_MORE, as far as they are published."""
    cdef ioq_ring_t *r = &ring.r
    cdef uint32_t k, i, used
    while True:
        k = ioq_pop(r, ring._items, 1, NULL, 0, &used)
        if k == 0:
            return
        ioq_release(r)
        if not ring._items[0].flags & VENET_F_MORE:
            return
