# cython: language_level=3, boundscheck=False, wraparound=False
"""Frames with offload records and VENET_F_MORE chains, for the frontend's
Python API.  The chain codec (venet/chain.pxd) is the one the pumps use.

ioq's message API (Ring.put/get) moves one buffer per message; a venet
frame may need several (a 64 KiB GSO frame spans many paired buffers) and
may lead with a 16-byte offload record.  These two functions add that
layer over a Ring without a Python object per descriptor.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from posix.uio cimport iovec
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring
from ioq import IoqError
from venet.abi cimport *
from venet.chain cimport *


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
    ring.usable(IOQ_ROLE_PRODUCER)
    ring.need_pairs()
    cdef const uint8_t[::1] src = memoryview(data).cast("B")
    cdef const uint8_t[::1] rec
    cdef uint32_t mlen = 0, n = <uint32_t>src.shape[0], total, nslots, j, piece, at = 0
    cdef ioq_ring_t *r = &ring.r
    cdef uint32_t bs = r.buf_size
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
        ring.usable(-1)
        if ring.wait_peer(timeout) == 0 and ioq_free(r, nslots) < nslots:
            return None if want_cookie else False
    cdef uint64_t cookie = r.head
    for j in range(nslots):
        dst = r.base + ioq_pair(r, r.head + j)
        piece = bs
        if j == 0 and mlen:
            memcpy(dst, &rec[0], mlen)
            dst += mlen
            piece -= mlen
        if piece > n - at:
            piece = n - at
        memcpy(dst, &src[at], piece)
        at += piece
    venet_chain_fill(r, 0, total, flags, 0)
    ioq_commit(r, nslots)
    ioq_kick_peer(r)
    return cookie if want_cookie else True


def recv_frame(Ring ring not None, timeout=None):
    """The next frame as (data, flags, record): record is the 16-byte
    offload record (bytes) when flags carry NEEDS_CSUM or GSO, else None,
    and data is the frame after it.  None on timeout.  A frame made of bad
    descriptors is skipped (counted by the ring); a chain too long raises
    ChainError after skipping it, and so does a chain whose end is still
    not published when the timeout expires."""
    ring.usable(IOQ_ROLE_CONSUMER)
    cdef ioq_ring_t *r = &ring.r
    cdef uint32_t n, k, seen
    cdef iovec iov[VENET_CHAIN_MAX_IOV]
    while True:
        n = venet_chain_peek(r, &seen)
        if n == 0:
            ring.usable(-1)
            if ring.wait_peer(timeout) == 0 and venet_chain_peek(r, &seen) == 0:
                if seen:
                    raise ChainError(f"ring {ring.index}: the peer published the start of a "
                                     "frame chain and not its end")
                return None
            continue
        if n == VENET_CHAIN_TOO_LONG:
            _skip_chain(ring)
            raise ChainError(f"ring {ring.index}: a frame chain longer than "
                             f"{VENET_MAX_CHAIN} descriptors was skipped")
        k = venet_chain_pop(r, ring.items, n, ring.sg, ring.sg_cap)
        got = _take_frame(ring, n, k, iov)
        ioq_release(r)
        ioq_kick_peer(r)
        if got is not None:
            return got


cdef object _take_frame(Ring ring, uint32_t n, uint32_t k, iovec *iov):
    """(data, flags, record) of the k popped descriptors of a frame counted
    n long, copied out of shared memory; None if it is refused."""
    cdef ioq_item_t *items = ring.items
    cdef uint64_t total
    cdef uint32_t niov, flags, i
    cdef venet_meta_t meta
    cdef object rec = None
    cdef bytes out
    cdef char *dst
    if venet_chain_check(items, k, n) != VENET_CHAIN_OK:
        return None
    niov = venet_chain_iov(ring.r.base, items, n, ring.sg, iov, &total)
    flags = venet_chain_flags(items)
    if flags & VENET_F_META:
        # The record lies whole in the frame's first piece (as the pumps
        # require): a direct buffer, or an SG list's first entry.
        if not venet_chain_record(iov, &total, &meta):
            return None
        rec = PyBytes_FromStringAndSize(<char *>&meta, VENET_META_SIZE)
    if total == 0:
        return None
    out = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>total)
    dst = PyBytes_AS_STRING(out)
    for i in range(niov):
        memcpy(dst, iov[i].iov_base, iov[i].iov_len)
        dst += iov[i].iov_len
    return out, flags, rec


cdef void _skip_chain(Ring ring):
    """Pop and release a chain too long, up to and including its first
    descriptor without MORE, as far as it is published."""
    cdef ioq_ring_t *r = &ring.r
    cdef uint32_t n, seen
    while True:
        n = venet_chain_peek(r, &seen)
        if seen == 0:
            break
        venet_chain_pop(r, ring.items, seen, ring.sg, ring.sg_cap)
        ioq_release(r)
        if n != 0 and n != VENET_CHAIN_TOO_LONG:
            break
    ioq_kick_peer(r)
