# shmsignal: a signal that lives in shared memory, bound to eventfds.
#
# The ABI (docs/abi.md, "shmsignal") and the whole nogil protocol are declared
# here as inline functions so that ioq and the venet pumps compile them into
# their own loops: no call through a module boundary on the hot path.
#
# One shared block serves two sides.  Side i owns side[i].enabled; the peer
# sets side[i].dirty and side[i].pending to wake side i; side i clears them.
#
#   inject (peer of i):  [publish work]; fence; if !dirty: dirty=1; fence;
#                        if enabled && !pending: pending=1; kick eventfd
#   wait   (side i):     if xchg(dirty,0): work.  else enabled=1; fence;
#                        if dirty: enabled=0 and go round.  else sleep on fd;
#                        on wake: pending=0; fence; enabled=0; take dirty.
#                        (the fd's count is drained before the next sleep)
#
# Both Dekker pairs (dirty vs enabled, pending vs dirty) are separated by full
# barriers, so one of the two sides always sees the other: no lost wake-up.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EINTR, EAGAIN
from posix.unistd cimport read, write
from shmsignal.includes.atomics cimport *
from shmsignal.includes.osdefs cimport pollfd, poll, POLLIN

cdef enum:
    SHMSIG_MAGIC = 0x56534947       # "VSIG"
    SHMSIG_VERSION = 1
    SHMSIG_SIZE = 192               # three cache lines
    SHMSIG_ALIGN = 64

# Shared layout.  Each side's flags sit on their own cache line so that the
# two directions of a ring never false-share.
cdef struct shmsig_side_t:
    uint8_t enabled     # written by the owning side: "kick me when dirty"
    uint8_t pending     # set by the peer when it kicks, cleared by the owner
    uint8_t dirty       # set by the peer on every inject, cleared by the owner
    uint8_t _pad[61]

cdef struct shmsig_shared_t:
    uint32_t magic      # written once by the creator
    uint32_t version    # written once by the creator
    uint8_t _pad[56]
    shmsig_side_t side[2]

# Private state of one endpoint (never in shared memory).
cdef struct shmsig_t:
    shmsig_shared_t *shm
    int me              # my side, 0 or 1
    int wait_fd         # eventfd the peer kicks to wake me (-1: poll only)
    int kick_fd         # eventfd I kick to wake the peer (-1: never kick)
    uint64_t kicks_sent
    uint64_t kicks_suppressed
    uint64_t wakeups    # sleeps that ended with work
    uint64_t spurious   # sleeps that ended with nothing to do
    uint64_t poll_hits  # waits satisfied inside the busy-poll window
    int stale           # wait_fd may hold a count we have not drained yet


cdef inline void shmsig_init_shared(shmsig_shared_t *shm) noexcept nogil:
    cdef int i
    for i in range(2):
        venet_store_relaxed_u8(&shm.side[i].enabled, 0)
        venet_store_relaxed_u8(&shm.side[i].pending, 0)
        venet_store_relaxed_u8(&shm.side[i].dirty, 0)
    shm.version = SHMSIG_VERSION
    venet_store_release_u32(&shm.magic, SHMSIG_MAGIC)


cdef inline int shmsig_check_shared(shmsig_shared_t *shm) noexcept nogil:
    """0 if the block carries our magic and version, else -1 / -2."""
    if venet_load_acquire_u32(&shm.magic) != SHMSIG_MAGIC:
        return -1
    if venet_load_relaxed_u32(&shm.version) != SHMSIG_VERSION:
        return -2
    return 0


cdef inline void shmsig_bind(shmsig_t *s, shmsig_shared_t *shm, int me,
                             int wait_fd, int kick_fd) noexcept nogil:
    s.shm = shm
    s.me = me
    s.wait_fd = wait_fd
    s.kick_fd = kick_fd
    s.kicks_sent = 0
    s.kicks_suppressed = 0
    s.wakeups = 0
    s.spurious = 0
    s.poll_hits = 0
    s.stale = 0


cdef inline int shmsig_kick_fd(int fd) noexcept nogil:
    cdef uint64_t one = 1
    cdef ssize_t r
    while True:
        r = write(fd, &one, 8)
        if r == 8:
            return 0
        if r < 0 and errno == EINTR:
            continue
        # EAGAIN: the counter is saturated, the peer is awake anyway.
        return 0 if (r < 0 and errno == EAGAIN) else -1


cdef inline int shmsig_inject(shmsig_t *s) noexcept nogil:
    """Tell the peer there is work.  Returns 1 if it kicked, 0 if suppressed,
    -1 if the kick failed (the peer's eventfd is gone)."""
    cdef shmsig_side_t *peer = &s.shm.side[1 - s.me]
    # Order the caller's publication (ring index) before we look at the flags.
    venet_fence_seq_cst()
    if venet_load_relaxed_u8(&peer.dirty) == 0:
        venet_store_relaxed_u8(&peer.dirty, 1)
        venet_fence_seq_cst()
    elif venet_load_relaxed_u8(&peer.enabled) == 0:
        # Already dirty and the peer is not asleep: it will see the work.
        s.kicks_suppressed += 1
        return 0
    if venet_load_relaxed_u8(&peer.enabled) and not venet_load_relaxed_u8(&peer.pending):
        venet_store_relaxed_u8(&peer.pending, 1)
        if s.kick_fd >= 0:
            s.kicks_sent += 1
            return 1 if shmsig_kick_fd(s.kick_fd) == 0 else -1
    s.kicks_suppressed += 1
    return 0


cdef inline void shmsig_disable(shmsig_t *s) noexcept nogil:
    venet_store_relaxed_u8(&s.shm.side[s.me].enabled, 0)


cdef inline int shmsig_enable(shmsig_t *s) noexcept nogil:
    """Arm notifications.  Returns 1 if work arrived meanwhile: the caller
    must then not sleep (this re-check is what makes wake-ups unlosable)."""
    cdef shmsig_side_t *mine = &s.shm.side[s.me]
    venet_store_relaxed_u8(&mine.enabled, 1)
    venet_fence_seq_cst()
    return venet_load_relaxed_u8(&mine.dirty) != 0


cdef inline int shmsig_take(shmsig_t *s) noexcept nogil:
    """Consume the 'work pending' mark: 1 if the peer injected since the last
    take.  After 1 the caller must drain everything it can see."""
    cdef shmsig_side_t *mine = &s.shm.side[s.me]
    if venet_load_relaxed_u8(&mine.dirty) == 0:
        return 0
    # XCHG is a full barrier: the clear is ordered before the caller's
    # following loads of the ring, so a concurrent inject re-marks us.
    return venet_xchg_u8(&mine.dirty, 0) != 0


cdef inline int shmsig_peek(shmsig_t *s) noexcept nogil:
    return venet_load_relaxed_u8(&s.shm.side[s.me].dirty) != 0


cdef inline void shmsig_drain(shmsig_t *s) noexcept nogil:
    cdef uint64_t cnt
    if s.wait_fd >= 0:
        read(s.wait_fd, &cnt, 8)        # non-blocking eventfd; EAGAIN is fine
    s.stale = 0


cdef inline void shmsig_allow_kick(shmsig_t *s) noexcept nogil:
    """A kick reached us: let the peer send the next one.  For waiters that
    do not need the fd drained (edge-triggered epoll sees every write)."""
    venet_store_relaxed_u8(&s.shm.side[s.me].pending, 0)
    venet_fence_seq_cst()


cdef inline void shmsig_ack(shmsig_t *s) noexcept nogil:
    """The wait fd was readable: drain its counter and allow the next kick."""
    shmsig_drain(s)
    shmsig_allow_kick(s)


cdef inline int shmsig_poll_window(shmsig_t *s, int64_t poll_ns) noexcept nogil:
    """Busy-poll our dirty flag for at most poll_ns.  1 if it was set."""
    cdef uint64_t deadline = venet_now_ns() + <uint64_t>poll_ns
    cdef unsigned int spins = 0
    while True:
        if venet_load_relaxed_u8(&s.shm.side[s.me].dirty):
            return 1
        venet_cpu_relax()
        spins += 1
        if (spins & 63) == 0 and venet_now_ns() >= deadline:
            return 0


cdef inline int shmsig_wait(shmsig_t *s, int64_t timeout_ns, int64_t poll_ns) noexcept nogil:
    """Wait until the peer injects.  timeout_ns < 0 waits forever.  Returns
    1 when signalled, 0 on timeout, -1 on a poll error (errno set), -2 when
    the peer's end of the eventfd reports an error or hang-up."""
    cdef uint64_t now, deadline = 0
    cdef int64_t left
    cdef int ms, r, took
    cdef pollfd pfd
    if shmsig_take(s):
        return 1
    if poll_ns > 0:
        if shmsig_poll_window(s, poll_ns if timeout_ns < 0 or poll_ns < timeout_ns else timeout_ns):
            s.poll_hits += 1
            shmsig_take(s)
            return 1
    if timeout_ns >= 0:
        deadline = venet_now_ns() + <uint64_t>timeout_ns
    pfd.fd = s.wait_fd
    pfd.events = POLLIN
    while True:
        if s.stale:
            # The count of the kick that last woke us: drained here, before
            # we arm, rather than on the wake-up path.  Work it announced is
            # marked by dirty, which the enable re-check below still sees.
            # pending is cleared again too: a kick sent between our wake-up
            # and this drain set it, and its count is the one we just read.
            shmsig_ack(s)
        if shmsig_enable(s):
            shmsig_disable(s)
            if shmsig_take(s):
                return 1
            continue
        if timeout_ns < 0:
            ms = -1
        else:
            now = venet_now_ns()
            if now >= deadline:
                shmsig_disable(s)
                return shmsig_take(s)
            left = <int64_t>(deadline - now)
            ms = <int>((left + 999999) // 1000000)
        if s.wait_fd < 0:
            shmsig_disable(s)
            return -1
        pfd.revents = 0
        r = poll(&pfd, 1, ms)
        shmsig_disable(s)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        if r > 0:
            if pfd.revents & POLLIN:
                # Allow the next kick at once; drain the fd lazily (above),
                # which keeps a read() off the wake-to-work path.
                venet_store_relaxed_u8(&s.shm.side[s.me].pending, 0)
                venet_fence_seq_cst()
                s.stale = 1
            else:
                return -2
        took = shmsig_take(s)
        if r > 0:
            if took:
                s.wakeups += 1      # woken by the peer's kick, with work
            else:
                s.spurious += 1
        if took:
            return 1
