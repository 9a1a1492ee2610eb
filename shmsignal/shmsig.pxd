# shmsignal: a signal that lives in shared memory, bound to doorbell fds.
#
# The ABI (docs/abi.md, "shmsignal") and the whole nogil protocol are declared
# here as inline functions so that ioq and the venet pumps compile them into
# their own loops: no call through a module boundary on the hot path.
#
# One shared block serves two sides.  Side i owns side[i].enabled; the peer
# sets side[i].dirty and side[i].pending to wake side i; side i clears them.
#
#   inject (peer of i):  [publish work]; fence; if !dirty: dirty=1; fence;
#                        if enabled && !pending: pending=1; ring the doorbell
#   wait   (side i):     if xchg(dirty,0): work.  else enabled=1; fence;
#                        if dirty: enabled=0 and go round.  else sleep on fd;
#                        on wake: pending=0; fence; enabled=0; take dirty.
#                        (the doorbell is drained before the next sleep)
#
# Both Dekker pairs (dirty vs enabled, pending vs dirty) are separated by full
# barriers, so one of the two sides always sees the other: no lost wake-up.
#
# A doorbell is an fd of one of these kinds (SHMSIG_FD_*):
#   EVENTFD  rung with write(8 bytes), drained with one read().  Both calls
#            obey the O_NONBLOCK flag of the open file description, which
#            every process holding the fd can change, and there is no
#            per-call non-blocking write for an eventfd: ring one only if
#            its holders are trusted.
#   SOCKET   one end of an AF_UNIX stream socketpair: rung with send(1 byte,
#            MSG_DONTWAIT | MSG_NOSIGNAL), drained with one recv(64 bytes,
#            MSG_DONTWAIT).  Non-blocking per call, whatever the flags.
#   EDGE     an eventfd a peer shares that this side must never read:
#            watched edge-triggered (every write is an edge) through a
#            private epoll fd, `sleep_fd`, which is what is drained.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EINTR, EAGAIN
from posix.unistd cimport read, write
from shmsignal.includes.atomics cimport *
from shmsignal.includes.osdefs cimport (pollfd, poll, POLLIN, POLLERR, POLLHUP, POLLNVAL,
                                        send, recv, MSG_DONTWAIT, MSG_NOSIGNAL,
                                        epoll_event, epoll_wait)

# The shared block, declared from its single source (the layout, a comment
# per field, the static checks): shmsignal/includes/shmsig_abi.h.
cdef extern from "shmsig_abi.h" nogil:
    enum:
        SHMSIG_MAGIC
        SHMSIG_VERSION
        SHMSIG_SIZE
        SHMSIG_ALIGN

    ctypedef struct shmsig_side_t:
        uint8_t enabled
        uint8_t pending
        uint8_t dirty

    ctypedef struct shmsig_shared_t:
        uint32_t magic
        uint32_t version
        shmsig_side_t side[2]

cdef enum:
    SHMSIG_DRAIN_BYTES = 64         # one drain takes up to this many queued kicks

cdef enum:
    SHMSIG_FD_EVENTFD = 0
    SHMSIG_FD_SOCKET = 1
    SHMSIG_FD_EDGE = 2

# shmsig_kick_fd results
cdef enum:
    SHMSIG_KICK_OK = 0
    SHMSIG_KICK_BUSY = 1            # earlier kicks are still unread: the peer will wake
    SHMSIG_KICK_FAILED = -1

# Private state of one endpoint (never in shared memory).
cdef struct shmsig_t:
    shmsig_shared_t *shm
    int me              # my side, 0 or 1
    int wait_fd         # doorbell the peer rings to wake me (-1: poll only)
    int wait_kind       # SHMSIG_FD_*: how wait_fd is drained (EDGE: never read)
    int sleep_fd        # what shmsig_wait sleeps on: wait_fd, or (EDGE) an epoll watching it
    int kick_fd         # doorbell I ring to wake the peer (-1: never kick)
    int kick_kind       # SHMSIG_FD_EVENTFD or SHMSIG_FD_SOCKET
    uint64_t kicks_sent
    uint64_t kicks_suppressed
    uint64_t kicks_busy     # kicks that found earlier ones still unread (not an error)
    uint64_t kicks_failed   # kicks the doorbell refused (peer gone, wrong fd)
    uint64_t wakeups    # sleeps that ended with work
    uint64_t spurious   # sleeps that ended with nothing to do
    uint64_t poll_hits  # waits satisfied inside the busy-poll window
    int stale           # wait_fd may hold a count we have not drained yet


cdef inline void shmsig_init_shared(shmsig_shared_t *shm) noexcept nogil:
    cdef int i
    for i in range(2):
        shm_store_relaxed_u8(&shm.side[i].enabled, 0)
        shm_store_relaxed_u8(&shm.side[i].pending, 0)
        shm_store_relaxed_u8(&shm.side[i].dirty, 0)
    shm.version = SHMSIG_VERSION
    shm_store_release_u32(&shm.magic, SHMSIG_MAGIC)


cdef inline int shmsig_check_shared(shmsig_shared_t *shm) noexcept nogil:
    """0 if the block carries our magic and version, else -1 / -2."""
    if shm_load_acquire_u32(&shm.magic) != SHMSIG_MAGIC:
        return -1
    if shm_load_relaxed_u32(&shm.version) != SHMSIG_VERSION:
        return -2
    return 0


cdef inline void shmsig_bind(shmsig_t *s, shmsig_shared_t *shm, int me,
                             int wait_fd, int kick_fd) noexcept nogil:
    s.shm = shm
    s.me = me
    s.wait_fd = wait_fd
    s.wait_kind = SHMSIG_FD_EVENTFD
    s.sleep_fd = wait_fd
    s.kick_fd = kick_fd
    s.kick_kind = SHMSIG_FD_EVENTFD
    s.kicks_sent = 0
    s.kicks_suppressed = 0
    s.kicks_busy = 0
    s.kicks_failed = 0
    s.wakeups = 0
    s.spurious = 0
    s.poll_hits = 0
    s.stale = 0


cdef inline void shmsig_set_kinds(shmsig_t *s, int wait_kind, int sleep_fd,
                                  int kick_kind) noexcept nogil:
    """After shmsig_bind (which assumes eventfds): what the doorbells are.
    sleep_fd: for an EDGE wait fd, a private epoll fd watching wait_fd with
    EPOLLET; otherwise wait_fd itself."""
    s.wait_kind = wait_kind
    s.sleep_fd = sleep_fd
    s.kick_kind = kick_kind


cdef inline int shmsig_kick_fd(int fd, int kind) noexcept nogil:
    """Ring a doorbell once.  SHMSIG_KICK_OK, SHMSIG_KICK_BUSY (an eventfd's
    counter is saturated, or a socket's queue is full: either way the peer
    has unread kicks and will wake) or SHMSIG_KICK_FAILED (errno set)."""
    cdef uint64_t one = 1
    cdef char b = 1
    cdef ssize_t r
    while True:
        if kind == SHMSIG_FD_SOCKET:
            r = send(fd, &b, 1, MSG_DONTWAIT | MSG_NOSIGNAL)
            if r == 1:
                return SHMSIG_KICK_OK
        else:
            r = write(fd, &one, 8)
            if r == 8:
                return SHMSIG_KICK_OK
        if r < 0 and errno == EINTR:
            continue
        if r < 0 and errno == EAGAIN:
            return SHMSIG_KICK_BUSY
        return SHMSIG_KICK_FAILED


cdef inline int shmsig_inject(shmsig_t *s) noexcept nogil:
    """Tell the peer there is work.  Returns 1 if it kicked, 0 if suppressed,
    -1 if the kick failed (the peer's doorbell is gone; counted, errno set).
    Never blocks, with a SOCKET kick fd whatever its flags."""
    cdef shmsig_side_t *peer = &s.shm.side[1 - s.me]
    # Order the caller's publication (ring index) before we look at the flags.
    shm_fence_seq_cst()
    if shm_load_relaxed_u8(&peer.dirty) == 0:
        shm_store_relaxed_u8(&peer.dirty, 1)
        shm_fence_seq_cst()
    elif shm_load_relaxed_u8(&peer.enabled) == 0:
        # Already dirty and the peer is not asleep: it will see the work.
        s.kicks_suppressed += 1
        return 0
    cdef int k
    if shm_load_relaxed_u8(&peer.enabled) and not shm_load_relaxed_u8(&peer.pending):
        shm_store_relaxed_u8(&peer.pending, 1)
        if s.kick_fd >= 0:
            s.kicks_sent += 1
            k = shmsig_kick_fd(s.kick_fd, s.kick_kind)
            if k == SHMSIG_KICK_BUSY:
                s.kicks_busy += 1
            elif k == SHMSIG_KICK_FAILED:
                s.kicks_failed += 1
                return -1
            return 1
    s.kicks_suppressed += 1
    return 0


cdef inline void shmsig_disable(shmsig_t *s) noexcept nogil:
    shm_store_relaxed_u8(&s.shm.side[s.me].enabled, 0)


cdef inline int shmsig_enable(shmsig_t *s) noexcept nogil:
    """Arm notifications.  Returns 1 if work arrived meanwhile: the caller
    must then not sleep (this re-check is what makes wake-ups unlosable)."""
    cdef shmsig_side_t *mine = &s.shm.side[s.me]
    shm_store_relaxed_u8(&mine.enabled, 1)
    shm_fence_seq_cst()
    return shm_load_relaxed_u8(&mine.dirty) != 0


cdef inline int shmsig_take(shmsig_t *s) noexcept nogil:
    """Consume the 'work pending' mark: 1 if the peer injected since the last
    take.  After 1 the caller must drain everything it can see."""
    cdef shmsig_side_t *mine = &s.shm.side[s.me]
    if shm_load_relaxed_u8(&mine.dirty) == 0:
        return 0
    # XCHG is a full barrier: the clear is ordered before the caller's
    # following loads of the ring, so a concurrent inject re-marks us.
    return shm_xchg_u8(&mine.dirty, 0) != 0


cdef inline void shmsig_drain_fd(int fd, int kind, int sleep_fd) noexcept nogil:
    """One drain of a doorbell: a read of up to SHMSIG_DRAIN_BYTES (a
    stream socket gives many kicks at once; an eventfd its whole count).
    EAGAIN is fine.  An EDGE fd itself is never read: its edge is."""
    cdef uint64_t buf[8]                # SHMSIG_DRAIN_BYTES
    cdef epoll_event ev
    if fd < 0:
        return
    if kind == SHMSIG_FD_SOCKET:
        recv(fd, buf, SHMSIG_DRAIN_BYTES, MSG_DONTWAIT)
    elif kind == SHMSIG_FD_EDGE:
        if sleep_fd >= 0 and sleep_fd != fd:
            epoll_wait(sleep_fd, &ev, 1, 0)
    else:
        read(fd, buf, SHMSIG_DRAIN_BYTES)   # the owner's non-blocking eventfd


cdef inline void shmsig_drain(shmsig_t *s) noexcept nogil:
    shmsig_drain_fd(s.wait_fd, s.wait_kind, s.sleep_fd)
    s.stale = 0


cdef inline void shmsig_allow_kick(shmsig_t *s) noexcept nogil:
    """A kick reached us: let the peer send the next one.  For waiters that
    do not need the fd drained (edge-triggered epoll sees every write)."""
    shm_store_relaxed_u8(&s.shm.side[s.me].pending, 0)
    shm_fence_seq_cst()


cdef inline void shmsig_ack(shmsig_t *s) noexcept nogil:
    """The wait fd was readable: drain it and allow the next kick."""
    shmsig_drain(s)
    shmsig_allow_kick(s)


cdef inline int shmsig_poll_window(shmsig_t *s, int64_t poll_ns) noexcept nogil:
    """Busy-poll our dirty flag for at most poll_ns.  1 if it was set."""
    cdef uint64_t deadline = shm_now_ns() + <uint64_t>poll_ns
    cdef unsigned int spins = 0
    while True:
        if shm_load_relaxed_u8(&s.shm.side[s.me].dirty):
            return 1
        shm_cpu_relax()
        spins += 1
        if (spins & 63) == 0 and shm_now_ns() >= deadline:
            return 0


cdef inline int shmsig_wait(shmsig_t *s, int64_t timeout_ns, int64_t poll_ns) noexcept nogil:
    """Wait until the peer injects.  timeout_ns < 0 waits forever.  Returns
    1 when signalled, 0 on timeout, -1 on a poll error (errno set), -2 when
    the doorbell reports an error or hang-up (the peer closed its end)."""
    cdef uint64_t now, deadline = 0
    cdef int64_t left
    cdef int ms, r, took
    cdef bint hup
    cdef pollfd pfd
    if shmsig_take(s):
        return 1
    if poll_ns > 0:
        if shmsig_poll_window(s, poll_ns if timeout_ns < 0 or poll_ns < timeout_ns else timeout_ns):
            s.poll_hits += 1
            shmsig_take(s)
            return 1
    if timeout_ns >= 0:
        deadline = shm_now_ns() + <uint64_t>timeout_ns
    pfd.fd = s.sleep_fd
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
            now = shm_now_ns()
            if now >= deadline:
                shmsig_disable(s)
                return shmsig_take(s)
            left = <int64_t>(deadline - now)
            ms = <int>((left + 999999) // 1000000)
        if s.sleep_fd < 0:
            shmsig_disable(s)
            return -1
        pfd.revents = 0
        r = poll(&pfd, 1, ms)
        shmsig_disable(s)
        if r < 0:
            if errno == EINTR:
                continue
            return -1
        hup = False
        if r > 0:
            if pfd.revents & POLLIN:
                # Allow the next kick at once; drain the fd lazily (above),
                # which keeps a read() off the wake-to-work path.
                shm_store_relaxed_u8(&s.shm.side[s.me].pending, 0)
                shm_fence_seq_cst()
                s.stale = 1
            # A socket whose peer closed stays readable (EOF): without this
            # the loop would spin until the timeout.
            hup = (pfd.revents & (POLLERR | POLLHUP | POLLNVAL)) != 0
        took = shmsig_take(s)
        if r > 0:
            if took:
                s.wakeups += 1      # woken by the peer's kick, with work
            else:
                s.spurious += 1
        if took:
            return 1
        if hup:
            return -2
