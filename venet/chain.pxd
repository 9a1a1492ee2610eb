# venet's frame chains over an ioq ring, as inline nogil functions shared by
# the pumps (venet/devices/_pump.pyx) and the frontend's Python API
# (venet/_frames.pyx): one reader, one writer.
#
# A frame is one descriptor, one descriptor with an SG list, or a chain of
# descriptors in consecutive slots, each but the last flagged VENET_F_MORE
# (docs/abi.md, "venet device").  The reader finds a chain's end by peeking
# at the published slots' flags, then pops exactly that chain: no
# descriptor is popped twice, so a backlog of N frames costs N copies and
# validations.  The peeked flags are only a hint; venet_chain_check judges
# the popped, private copies, so a peer that rewrites a slot between the
# peek and the pop has its frame refused, never cut in two.
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy
from posix.uio cimport iovec
from ioq.abi cimport *
from ioq.ring cimport *
from venet.abi cimport *

cdef enum:
    VENET_CHAIN_TOO_LONG = 0xffffffff   # venet_chain_peek: no end within VENET_MAX_CHAIN
    # venet_chain_check: a frame's fate
    VENET_CHAIN_OK = 0
    VENET_CHAIN_BAD_DESC = 1    # ioq refused one of its descriptors
    VENET_CHAIN_BAD = 2         # not a well-formed chain
    # iovecs of one frame: a chain's buffers (VENET_MAX_CHAIN) or one SG
    # list's entries, whichever is more
    VENET_CHAIN_MAX_IOV = IOQ_MAX_SG_LIMIT


cdef inline uint32_t venet_chain_peek(ioq_ring_t *r, uint32_t *seen) noexcept nogil:
    """Consumer: how many descriptors the next frame spans, from the
    published slots' flags: 1 to VENET_MAX_CHAIN when its end is published;
    0 when it is not (*seen: how many of its slots are, 0 for an empty
    ring); VENET_CHAIN_TOO_LONG when VENET_MAX_CHAIN published slots all say
    MORE (*seen: VENET_MAX_CHAIN).  On a ring of fewer slots a chain that
    fills it never ends: the reader waits, as for any frame not published
    whole."""
    cdef uint32_t i, flags
    for i in range(VENET_MAX_CHAIN):
        if not ioq_peek_flags(r, i, &flags):
            seen[0] = i
            return 0
        if not flags & VENET_F_MORE:
            seen[0] = i + 1
            return i + 1
    seen[0] = VENET_MAX_CHAIN
    return VENET_CHAIN_TOO_LONG


cdef inline uint32_t venet_chain_pop(ioq_ring_t *r, ioq_item_t *items, uint32_t n,
                                     ioq_sg_t *sg, uint32_t sg_cap) noexcept nogil:
    """Consumer: pop the n descriptors a peek counted into items[0:n], their
    SG lists into sg (sg_cap >= the region's max_sg).  Returns how many were
    popped: fewer than n only if the peer took back a published slot.
    Scratch that runs out mid-chain is reused from its start: that takes
    two SG lists in one chain, which venet_chain_check refuses anyway."""
    cdef uint32_t k = 0, got, used
    while k < n:
        got = ioq_pop(r, items + k, n - k, sg, sg_cap, &used)
        if got == 0:
            break
        k += got
    return k


cdef inline uint32_t venet_chain_check(const ioq_item_t *items, uint32_t k, uint32_t n) noexcept nogil:
    """The popped copies items[0:k] of a frame a peek counted n long:
    VENET_CHAIN_OK, VENET_CHAIN_BAD_DESC (ioq refused a descriptor) or
    VENET_CHAIN_BAD (fewer than n popped, MORE missing before the end or
    present at it, a flag other than MORE on a continuation, an SG list in
    a chain).  The first problem met, in slot order, decides."""
    cdef uint32_t j, more
    for j in range(k):
        if items[j].status != IOQ_OK:
            return VENET_CHAIN_BAD_DESC
        more = VENET_F_MORE if j + 1 < n else 0
        if (items[j].flags & VENET_F_MORE) != more:
            return VENET_CHAIN_BAD
        if j > 0 and items[j].flags & IOQ_DESC_F_USER_MASK & ~(<uint32_t>VENET_F_MORE):
            return VENET_CHAIN_BAD
        if items[j].sg_count and n > 1:
            return VENET_CHAIN_BAD
    return VENET_CHAIN_OK if k == n else VENET_CHAIN_BAD


cdef inline uint32_t venet_chain_flags(const ioq_item_t *items) noexcept nogil:
    """A checked frame's VENET_F_* bits (those of its first descriptor),
    MORE left out."""
    return items[0].flags & IOQ_DESC_F_USER_MASK & ~(<uint32_t>VENET_F_MORE)


cdef inline uint32_t venet_chain_iov(const char *base, const ioq_item_t *items, uint32_t n,
                                     const ioq_sg_t *sg, iovec *iov, uint64_t *total) noexcept nogil:
    """A checked frame's pieces as iovecs into shared memory (at most
    VENET_CHAIN_MAX_IOV): each buffer of a chain, or the entries of its SG
    list.  Returns their count; *total is their bytes."""
    cdef uint32_t j, q, niov = 0
    cdef uint64_t t = 0
    for j in range(n):
        if items[j].sg_count == 0:
            iov[niov].iov_base = <char *>base + items[j].offset
            iov[niov].iov_len = items[j].len
            niov += 1
        else:
            for q in range(items[j].sg_count):
                iov[niov].iov_base = <char *>base + sg[items[j].sg_first + q].offset
                iov[niov].iov_len = sg[items[j].sg_first + q].len
                niov += 1
        t += items[j].len
    total[0] = t
    return niov


cdef inline bint venet_chain_record(iovec *iov, uint64_t *total, venet_meta_t *meta) noexcept nogil:
    """Take the offload record that leads a frame's first piece (flags
    NEEDS_CSUM or GSO): copied once into *meta, which alone is looked at
    from then on, and left out of iov[0] and *total.  False when the first
    piece is shorter than a record."""
    if iov[0].iov_len < VENET_META_SIZE:
        return False
    memcpy(meta, iov[0].iov_base, VENET_META_SIZE)
    iov[0].iov_base = <char *>iov[0].iov_base + VENET_META_SIZE
    iov[0].iov_len -= VENET_META_SIZE
    total[0] -= VENET_META_SIZE
    return True


cdef inline uint32_t venet_chain_fill(ioq_ring_t *r, uint32_t at, uint64_t length,
                                      uint32_t flags, uint32_t skip) noexcept nogil:
    """Producer: describe a frame of `length` bytes already written into the
    paired buffers of the free slots from `at` on (each buffer full but the
    last): MORE on every descriptor but the last, `flags` on the first,
    whose buffer is described from `skip` bytes in.  Returns the slots
    used; ioq_commit publishes them."""
    cdef uint32_t bs = r.buf_size
    cdef uint32_t nslots = <uint32_t>((length + bs - 1) // bs)
    cdef uint32_t j, pos
    cdef uint64_t left = length
    cdef ioq_desc_t *d
    for j in range(nslots):
        pos = r.head + at + j
        d = ioq_slot(r, at + j)
        d.cookie = pos
        d.offset = ioq_pair(r, pos)
        d.len = <uint32_t>(left if left < bs else bs)
        d.flags = VENET_F_MORE if j + 1 < nslots else 0
        d.user = 0
        left -= d.len
    d = ioq_slot(r, at)
    d.flags |= flags
    d.offset += skip
    d.len -= skip
    return nslots
