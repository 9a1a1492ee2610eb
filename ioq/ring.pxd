# ioq: the lockless single-producer/single-consumer ring, as inline nogil C
# functions so the pumps and benchmarks compile them into their own loops.
#
# Each side keeps private shadows: its own index (head), the last value it
# loaded of the peer's index (peer), and its own count and mask.  A
# peer-written index is loaded once, checked against our count, and only the
# local copy is used.  The consumer never reads the producer's index: a slot
# is ready when its seq says so (see ioq/includes/ioq_abi.h).  Each descriptor is copied once into private memory and
# validated there, so a peer rewriting it after publication changes nothing.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy
from shmsignal.includes.atomics cimport *
from shmsignal.shmsig cimport *
from ioq.abi cimport *

cdef enum:
    IOQ_ROLE_PRODUCER = 0
    IOQ_ROLE_CONSUMER = 1

cdef struct ioq_ring_t:
    char *base              # local mapping of the region
    uint64_t pool_lo        # [pool_lo, pool_hi): where buffers may point
    uint64_t pool_hi
    uint32_t *prod_p
    uint32_t *cons_p
    ioq_desc_t *desc
    uint32_t count
    uint32_t mask
    uint32_t head           # my index: next slot to fill (producer) / read (consumer)
    uint32_t peer           # producer: last loaded consumer index
    uint32_t released       # consumer: last cons index published
    uint32_t max_sg
    uint32_t max_len        # consumer: longest buffer or chain accepted
    uint64_t pair_off       # paired buffer of slot 0 (0: the ring has none)
    uint32_t buf_size       # bytes of each paired buffer
    int role
    int broken              # the peer published an impossible index
    shmsig_t sig
    uint64_t ops            # descriptors pushed (producer) or popped (consumer)
    uint64_t full           # producer: pushes that found the ring full
    uint64_t bad_index
    uint64_t bad[IOQ_NREASONS]  # per IOQ_BAD_* reason (index 0 unused)


cdef inline uint32_t ioq_free(ioq_ring_t *r, uint32_t want) noexcept nogil:
    """Producer: free slots, reloading the consumer index only when the
    cached value shows fewer than `want` (one shared load per refill, not
    per push)."""
    cdef uint32_t used = r.head - r.peer
    cdef uint32_t c
    if r.broken:
        return 0
    if r.count - used >= want:
        return r.count - used
    c = shm_load_acquire_u32(r.cons_p)
    if <uint32_t>(r.head - c) > r.count:
        # The consumer claims to have read slots we never wrote.
        r.bad_index += 1
        r.broken = 1
        return 0
    r.peer = c
    return r.count - (r.head - c)


cdef inline void ioq_commit(ioq_ring_t *r, uint32_t k) noexcept nogil:
    """Producer: publish k slots filled from head (by ioq_push, or in place
    after ioq_reserve).  Each slot's seq is stored after its fields, and the
    slots last to first: the consumer, which reads from head on, sees the
    whole batch the moment it sees its first slot.  First to last, a
    consumer waiting at head could chase the producer through the batch a
    slot at a time, pulling each line back between the producer's stores
    (two descriptors share a line); last to first, it polls only the first
    slot's line until the batch is whole (docs/architecture.md, "Ring
    core", has the measurement)."""
    cdef uint32_t i, pos
    i = k
    while i > 0:
        i -= 1
        pos = r.head + i
        shm_store_release_u32(&r.desc[pos & r.mask].seq, pos + 1)
    r.head += k
    shm_store_release_u32(r.prod_p, r.head)
    r.ops += k


cdef inline uint32_t ioq_push(ioq_ring_t *r, const ioq_desc_t *d, uint32_t n) noexcept nogil:
    """Producer: publish up to n descriptors; returns how many fitted."""
    cdef uint32_t k = ioq_free(r, n)
    cdef uint32_t i
    cdef ioq_desc_t *slot
    if n < k:
        k = n
    if k == 0:
        if n:
            r.full += 1
        return 0
    for i in range(k):
        slot = &r.desc[(r.head + i) & r.mask]
        slot.cookie = d[i].cookie
        slot.offset = d[i].offset
        slot.len = d[i].len
        slot.flags = d[i].flags
        slot.user = d[i].user
    ioq_commit(r, k)
    return k


cdef inline ioq_desc_t *ioq_reserve(ioq_ring_t *r, uint32_t *n) noexcept nogil:
    """Producer, zero-copy: the next slot to fill in place, with n set to how
    many consecutive slots are free before the ring wraps.  Fill them, then
    ioq_commit(r, k)."""
    cdef uint32_t k = ioq_free(r, n[0])
    cdef uint32_t to_end = r.count - (r.head & r.mask)
    if k > to_end:
        k = to_end
    if k < n[0]:
        n[0] = k
    return &r.desc[r.head & r.mask]


cdef inline ioq_desc_t *ioq_slot(ioq_ring_t *r, uint32_t i) noexcept nogil:
    """Producer, zero-copy across the wrap: the descriptor of the i-th free
    slot after head (i below what ioq_free returned).  Fill it in place;
    ioq_commit publishes."""
    return &r.desc[(r.head + i) & r.mask]


cdef inline bint ioq_peek(ioq_ring_t *r) noexcept nogil:
    """Consumer: is the next slot published?"""
    return shm_load_acquire_u32(&r.desc[r.head & r.mask].seq) == r.head + 1


cdef inline bint ioq_peek_at(ioq_ring_t *r, uint32_t i) noexcept nogil:
    """Consumer: is the slot i places after the next one published?"""
    return shm_load_acquire_u32(&r.desc[(r.head + i) & r.mask].seq) == r.head + i + 1


cdef inline bint ioq_peek_flags(ioq_ring_t *r, uint32_t i, uint32_t *flags) noexcept nogil:
    """Consumer: is the slot i places after the next one published?  If so,
    *flags is its flags word as it reads now: a hint for deciding how many
    slots to pop, never a fact to act on (the peer may rewrite the slot
    before the pop; only the popped, validated copy counts)."""
    cdef ioq_desc_t *slot = &r.desc[(r.head + i) & r.mask]
    if shm_load_acquire_u32(&slot.seq) != r.head + i + 1:
        return False
    flags[0] = shm_load_relaxed_u32(&slot.flags)
    return True


cdef inline uint64_t ioq_pair(ioq_ring_t *r, uint32_t pos) noexcept nogil:
    """Offset from the region base of the paired buffer of ring position
    `pos` (any position: it is taken modulo the ring).  Only for a ring with
    paired buffers (pair_off != 0)."""
    return r.pair_off + <uint64_t>(pos & r.mask) * r.buf_size


cdef inline void ioq_set_pairs(ioq_ring_t *r, uint64_t pair_off, uint32_t buf_size) noexcept nogil:
    """After ioq_init: slot i owns the buffer at pair_off + i * buf_size."""
    r.pair_off = pair_off
    r.buf_size = buf_size


cdef inline uint32_t ioq_avail(ioq_ring_t *r) noexcept nogil:
    """Consumer: how many slots are published now (scans the slots)."""
    cdef uint32_t k = 0
    while k < r.count and shm_load_acquire_u32(&r.desc[(r.head + k) & r.mask].seq) == r.head + k + 1:
        k += 1
    return k


cdef inline uint32_t ioq_check_span(ioq_ring_t *r, uint64_t off, uint32_t length) noexcept nogil:
    if length == 0:
        return IOQ_BAD_ZERO_LEN
    if off < r.pool_lo or off > r.pool_hi or <uint64_t>length > r.pool_hi - off:
        return IOQ_BAD_BOUNDS
    return IOQ_OK


cdef inline uint32_t ioq_validate(ioq_ring_t *r, ioq_item_t *it, ioq_sg_t *sg,
                                  uint32_t sg_room) noexcept nogil:
    """Validate the private copy in *it.  For an indirect descriptor, copy its
    entries once into sg[0:count] and validate the copies."""
    cdef uint32_t n, i, st
    cdef uint64_t total = 0
    cdef uint64_t eoff
    cdef uint32_t elen
    cdef ioq_sg_t *tbl
    if it.flags & ~(<uint32_t>IOQ_DESC_F_USER_MASK) & ~(<uint32_t>IOQ_DESC_F_KNOWN):
        return IOQ_BAD_FLAGS
    if not (it.flags & IOQ_DESC_F_INDIRECT):
        st = ioq_check_span(r, it.offset, it.len)
        if st == IOQ_OK and it.len > r.max_len:
            return IOQ_BAD_TOO_LONG
        return st
    if it.len == 0 or it.len % IOQ_SG_SIZE or (it.offset & 7):
        return IOQ_BAD_SG_TABLE
    n = it.len // IOQ_SG_SIZE
    if n > r.max_sg or n > sg_room or ioq_check_span(r, it.offset, it.len) != IOQ_OK:
        return IOQ_BAD_SG_TABLE
    tbl = <ioq_sg_t *>(r.base + it.offset)
    for i in range(n):
        # One read of each field; only the copy is used from here on.
        eoff = shm_load_relaxed_u64(&tbl[i].offset)
        elen = shm_load_relaxed_u32(&tbl[i].len)
        sg[i].offset = eoff
        sg[i].len = elen
        sg[i].reserved = 0
        if ioq_check_span(r, eoff, elen) != IOQ_OK:
            return IOQ_BAD_SG_ENTRY
        total += elen
    if total > r.max_len:
        return IOQ_BAD_TOO_LONG
    it.sg_count = n
    it.len = <uint32_t>total
    return IOQ_OK


cdef inline uint32_t ioq_pop(ioq_ring_t *r, ioq_item_t *out, uint32_t n,
                             ioq_sg_t *sg, uint32_t sg_cap, uint32_t *sg_used) noexcept nogil:
    """Consumer: copy, validate and return up to n descriptors.  A bad one is
    returned with its status set and counted, never followed.  The slots are
    not handed back to the producer until ioq_release().  sg may be NULL
    (indirect descriptors are then refused as IOQ_BAD_SG_TABLE)."""
    cdef uint32_t k = 0
    cdef uint32_t i, st, used = 0
    cdef ioq_desc_t d
    cdef ioq_desc_t *slot
    cdef ioq_item_t *it
    if n > r.count:
        n = r.count
    for i in range(n):
        slot = &r.desc[(r.head + i) & r.mask]
        if shm_load_acquire_u32(&slot.seq) != r.head + i + 1:
            break
        k = i + 1
        memcpy(&d, slot, sizeof(ioq_desc_t))
        it = &out[i]
        it.cookie = d.cookie
        it.offset = d.offset
        it.len = d.len
        it.flags = d.flags
        it.user = d.user
        it.sg_first = used
        it.sg_count = 0
        if sg != NULL:
            st = ioq_validate(r, it, sg + used, sg_cap - used)
        elif d.flags & IOQ_DESC_F_INDIRECT:
            st = IOQ_BAD_SG_TABLE
        else:
            st = ioq_validate(r, it, NULL, 0)
        it.status = st
        if st != IOQ_OK:
            r.bad[st] += 1
            it.sg_count = 0
        used += it.sg_count
        if sg != NULL and sg_cap - used < r.max_sg:
            # Not enough scratch for another worst-case chain: stop here.
            break
    r.head += k
    r.ops += k
    if sg_used != NULL:
        sg_used[0] = used
    return k


cdef inline void ioq_unpop(ioq_ring_t *r, const ioq_item_t *items, uint32_t k) noexcept nogil:
    """Consumer: give back the last k popped, not yet released, descriptors
    (`items` points at the first of them): the next pop copies and
    validates them again.  For a consumer that finds it cannot take an
    item after all (Ring.get_batch: a message wider than a row); to read
    only whole groups of descriptors, peek first (ioq_peek_flags)."""
    cdef uint32_t i
    if k > r.head - r.released:
        k = r.head - r.released
    for i in range(k):
        if items[i].status != IOQ_OK:
            r.bad[items[i].status] -= 1
    r.head -= k
    r.ops -= k


cdef inline void ioq_release(ioq_ring_t *r) noexcept nogil:
    """Consumer: hand every popped slot (and its paired buffer) back."""
    if r.released != r.head:
        r.released = r.head
        shm_store_release_u32(r.cons_p, r.head)


# The ring's doorbell, reached through ioq so that the layer above never
# touches the shmsignal state inside ioq_ring_t.

cdef inline int ioq_kick_peer(ioq_ring_t *r) noexcept nogil:
    """Tell the peer there is work (producer: descriptors; consumer: slots
    released).  1 if it was kicked, 0 if it did not need to be, -1 if its
    doorbell refused (counted).  Never blocks."""
    return shmsig_inject(&r.sig)


cdef inline int ioq_take(ioq_ring_t *r) noexcept nogil:
    """1 if the peer kicked (or marked work) since the last take."""
    return shmsig_take(&r.sig)


cdef inline int ioq_arm(ioq_ring_t *r) noexcept nogil:
    """Ask to be kicked.  1 if work arrived meanwhile: then do not sleep
    (ioq_disarm and look again)."""
    return shmsig_enable(&r.sig)


cdef inline void ioq_disarm(ioq_ring_t *r) noexcept nogil:
    shmsig_disable(&r.sig)


cdef inline int ioq_wait_fd(ioq_ring_t *r) noexcept nogil:
    """The doorbell the peer rings, for an edge-triggered epoll (EPOLLET):
    every kick is an edge, so it need never be read to re-arm."""
    return r.sig.wait_fd


cdef inline void ioq_kicked(ioq_ring_t *r) noexcept nogil:
    """The wait fd reported an edge: let the peer kick again.  A socket
    doorbell is drained with one non-blocking recv so its queue stays
    short; an eventfd (perhaps the peer's, whose flags it controls) is
    never read."""
    if r.sig.wait_kind == SHMSIG_FD_SOCKET:
        shmsig_drain_fd(r.sig.wait_fd, SHMSIG_FD_SOCKET, -1)
    shmsig_allow_kick(&r.sig)


cdef inline int ioq_init(ioq_ring_t *r, char *base, uint64_t ring_off, uint32_t count,
                         uint64_t pool_lo, uint64_t pool_hi, uint32_t max_sg,
                         int role, int wait_fd, int kick_fd) noexcept nogil:
    """Bind a private ring state to a ring in a validated region.  The
    starting indices are the ones in shared memory (a re-attach resumes),
    checked for consistency; -1 if they are impossible."""
    cdef uint32_t p, c
    cdef int i
    cdef ioq_ring_hdr_t *h = <ioq_ring_hdr_t *>(base + ring_off)
    r.base = base
    r.pool_lo = pool_lo
    r.pool_hi = pool_hi
    r.prod_p = &h.prod
    r.cons_p = &h.cons
    r.desc = h.desc
    r.count = count
    r.mask = count - 1
    r.max_sg = max_sg
    r.max_len = <uint32_t>(pool_hi - pool_lo) if pool_hi - pool_lo < 0xffffffffu else 0xffffffffu
    r.pair_off = 0
    r.buf_size = 0
    r.role = role
    r.broken = 0
    r.ops = 0
    r.full = 0
    r.bad_index = 0
    for i in range(IOQ_NREASONS):
        r.bad[i] = 0
    p = shm_load_acquire_u32(r.prod_p)
    c = shm_load_acquire_u32(r.cons_p)
    if <uint32_t>(p - c) > count:
        return -1
    if role == IOQ_ROLE_PRODUCER:
        r.head = p
        r.peer = c
    else:
        r.head = c
        r.peer = c
    r.released = c
    shmsig_bind(&r.sig, &h.sig,
                role, wait_fd, kick_fd)
    return 0
