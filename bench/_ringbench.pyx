# cython: language_level=3, boundscheck=False, wraparound=False
"""The benchmark loops, in C with the GIL released, so that what is measured
is the ring, the signal or the syscall, never the interpreter.

Every ping loop records each round trip (ns) into an int64 buffer; the
ping side of each pair sends first.  Every loop is bounded by a count and a
wall-clock deadline so a dead peer cannot hang the benchmark.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EINTR, EAGAIN
from posix.unistd cimport read, write
from posix.time cimport nanosleep, timespec
from shmsignal.includes.osdefs cimport pollfd, poll, POLLIN
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from shmsignal.includes.atomics cimport *
from shmsignal.shmsig cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring

# How a side learns there is work (the RFC's experiment, `venet bench notify`):
cdef enum:
    MODE_POLL = 0       # busy-poll the ring, never sleep
    MODE_SIGNAL = 1     # shmsignal: kick only when the peer asked to be woken
    MODE_ALWAYS = 2     # kick the peer's eventfd on every publication
    MODE_TIMER = 3      # no kicks: the peer wakes on a timer and looks

DEF DEADLINE_NS = 60_000_000_000
# Pauses between polls of an empty (or full) ring in the stream loops: a
# consumer re-reading the slot the producer is writing steals that line
# from it; backing off lets the producer finish a batch.  (Measured with
# vCPUs 380 ns apart: b32 went from 32 to 42-45 M msg/s at 128-512.)
DEF SPIN_BACKOFF = 64

cdef int64_t TIMER_NS = 200_000


def set_timer_us(double us):
    """Period of MODE_TIMER's wake-ups."""
    global TIMER_NS
    TIMER_NS = <int64_t>(us * 1000)


cdef inline void _notify(ioq_ring_t *r, int mode) noexcept nogil:
    """After publishing (or releasing): tell the peer, as `mode` does."""
    if mode == MODE_SIGNAL:
        shmsig_inject(&r.sig)
    elif mode == MODE_ALWAYS:
        r.sig.kicks_sent += 1
        shmsig_kick_fd(r.sig.kick_fd, r.sig.kick_kind)


cdef inline void _sleep_step(ioq_ring_t *r, int mode, int64_t poll_ns) noexcept nogil:
    """Nothing to do: wait for the peer once, as `mode` does."""
    cdef pollfd pfd
    cdef uint64_t cnt
    cdef timespec ts
    cdef int i
    if mode == MODE_POLL:
        for i in range(SPIN_BACKOFF):
            shm_cpu_relax()
    elif mode == MODE_SIGNAL:
        shmsig_wait(&r.sig, 1_000_000_000, poll_ns)
    elif mode == MODE_ALWAYS:
        pfd.fd = r.sig.wait_fd
        pfd.events = POLLIN
        if poll(&pfd, 1, 1000) > 0:
            read(r.sig.wait_fd, &cnt, 8)
            r.sig.wakeups += 1
    else:
        ts.tv_sec = TIMER_NS // 1_000_000_000
        ts.tv_nsec = TIMER_NS % 1_000_000_000
        nanosleep(&ts, NULL)
        r.sig.wakeups += 1


cdef int64_t *_ns_buffer(object out, Py_buffer *b, Py_ssize_t n) except NULL:
    PyObject_GetBuffer(out, b, PyBUF_WRITABLE)
    if b.len < n * 8:
        PyBuffer_Release(b)
        raise ValueError("output buffer too small")
    return <int64_t *>b.buf


# ---- bare busy-poll on one shared cache line: the limit -------------------

def spin_ping(buf, Py_ssize_t n, out):
    """buf: a MAP_SHARED buffer of at least 64 bytes, zeroed."""
    cdef Py_buffer b, o
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    cdef int64_t *ns = _ns_buffer(out, &o, n)
    cdef uint32_t *line = <uint32_t *>b.buf
    cdef Py_ssize_t i
    cdef uint64_t t0, deadline = shm_now_ns() + DEADLINE_NS
    cdef int ok = 1
    cdef unsigned int spins = 0
    with nogil:
        for i in range(n):
            t0 = shm_now_ns()
            shm_store_release_u32(line, <uint32_t>(2 * i + 1))
            while shm_load_acquire_u32(line) != <uint32_t>(2 * i + 2):
                shm_cpu_relax()
                spins += 1
                if (spins & 4095) == 0 and shm_now_ns() > deadline:
                    ok = 0
                    break
            if not ok:
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
    PyBuffer_Release(&o)
    PyBuffer_Release(&b)
    if not ok:
        raise TimeoutError("spin peer did not answer")


def spin_pong(buf, Py_ssize_t n):
    cdef Py_buffer b
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    cdef uint32_t *line = <uint32_t *>b.buf
    cdef Py_ssize_t i
    cdef uint64_t deadline = shm_now_ns() + DEADLINE_NS
    cdef unsigned int spins = 0
    with nogil:
        for i in range(n):
            while shm_load_acquire_u32(line) != <uint32_t>(2 * i + 1):
                shm_cpu_relax()
                spins += 1
                if (spins & 1023) == 0 and shm_now_ns() > deadline:
                    break
            shm_store_release_u32(line, <uint32_t>(2 * i + 2))
    PyBuffer_Release(&b)


# ---- a polled ping-pong through a third party: the scheduling floor -------
#
# A -> R -> B -> R -> A, each hop one store to a cache line of its own and a
# spin on the next; every party yields every RELAY_YIELD spins, as a poller
# sharing a CPU must (three pollers on two CPUs).  No ring work at all: the
# least a switch between two polled frontends could cost on such a machine.

cdef extern from "<sched.h>" nogil:
    int sched_yield()

DEF RELAY_YIELD = 8


cdef inline bint _relay_wait(uint32_t *line, uint32_t want, uint64_t deadline) noexcept nogil:
    cdef unsigned int spins = 0
    while shm_load_acquire_u32(line) != want:
        spins += 1
        if spins % RELAY_YIELD == 0:
            sched_yield()
            if shm_now_ns() > deadline:
                return False
        else:
            shm_cpu_relax()
    return True


def relay_ping(buf, Py_ssize_t n, out):
    """buf: MAP_SHARED, 256 bytes, zeroed; lines at 0 (A->R), 64 (R->B),
    128 (B->R), 192 (R->A)."""
    cdef Py_buffer b, o
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    cdef int64_t *ns = _ns_buffer(out, &o, n)
    cdef char *base = <char *>b.buf
    cdef Py_ssize_t i
    cdef uint64_t t0, deadline = shm_now_ns() + DEADLINE_NS
    cdef bint ok = True
    with nogil:
        for i in range(n):
            t0 = shm_now_ns()
            shm_store_release_u32(<uint32_t *>base, <uint32_t>(i + 1))
            if not _relay_wait(<uint32_t *>(base + 192), <uint32_t>(i + 1), deadline):
                ok = False
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
    PyBuffer_Release(&o)
    PyBuffer_Release(&b)
    if not ok:
        raise TimeoutError("the relay did not answer")


def relay_fwd(buf, Py_ssize_t n):
    cdef Py_buffer b
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    cdef char *base = <char *>b.buf
    cdef Py_ssize_t i
    cdef uint64_t deadline = shm_now_ns() + DEADLINE_NS
    with nogil:
        for i in range(n):
            if not _relay_wait(<uint32_t *>base, <uint32_t>(i + 1), deadline):
                break
            shm_store_release_u32(<uint32_t *>(base + 64), <uint32_t>(i + 1))
            if not _relay_wait(<uint32_t *>(base + 128), <uint32_t>(i + 1), deadline):
                break
            shm_store_release_u32(<uint32_t *>(base + 192), <uint32_t>(i + 1))
    PyBuffer_Release(&b)


def relay_pong(buf, Py_ssize_t n):
    cdef Py_buffer b
    PyObject_GetBuffer(buf, &b, PyBUF_WRITABLE)
    cdef char *base = <char *>b.buf
    cdef Py_ssize_t i
    cdef uint64_t deadline = shm_now_ns() + DEADLINE_NS
    with nogil:
        for i in range(n):
            if not _relay_wait(<uint32_t *>(base + 64), <uint32_t>(i + 1), deadline):
                break
            shm_store_release_u32(<uint32_t *>(base + 128), <uint32_t>(i + 1))
    PyBuffer_Release(&b)


# ---- fd ping-pong: eventfd (8-byte counter) or pipe (1 byte) --------------

cdef int _fd_xfer(int fd, bint is_write, int size) noexcept nogil:
    cdef uint64_t v = 1
    cdef ssize_t r
    while True:
        r = write(fd, &v, size) if is_write else read(fd, &v, size)
        if r == size:
            return 0
        if r < 0 and errno == EINTR:
            continue
        return -1


def fd_ping(int wfd, int rfd, int size, Py_ssize_t n, out):
    cdef Py_buffer o
    cdef int64_t *ns = _ns_buffer(out, &o, n)
    cdef Py_ssize_t i
    cdef uint64_t t0
    cdef int err = 0
    with nogil:
        for i in range(n):
            t0 = shm_now_ns()
            if _fd_xfer(wfd, True, size) or _fd_xfer(rfd, False, size):
                err = 1
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
    PyBuffer_Release(&o)
    if err:
        raise OSError(errno, "fd ping-pong failed")


def fd_pong(int rfd, int wfd, int size, Py_ssize_t n):
    cdef Py_ssize_t i
    with nogil:
        for i in range(n):
            if _fd_xfer(rfd, False, size) or _fd_xfer(wfd, True, size):
                break


# ---- ioq ping-pong --------------------------------------------------------

cdef inline int _ring_send1(ioq_ring_t *r, uint64_t seq, uint64_t buf_off, int mode) noexcept nogil:
    cdef ioq_desc_t d
    d.cookie = seq
    d.offset = buf_off
    d.len = 64
    d.flags = 0
    d.user = 0
    d.seq = 0
    if ioq_push(r, &d, 1) != 1:
        return -1
    _notify(r, mode)
    return 0


cdef inline int _ring_recv1(ioq_ring_t *r, uint64_t seq, int mode, uint64_t deadline) noexcept nogil:
    """Wait for one descriptor; 0 if it carries `seq`, -1 on error/timeout."""
    cdef ioq_item_t it
    cdef unsigned int spins = 0
    while True:
        if ioq_pop(r, &it, 1, NULL, 0, NULL) == 1:
            ioq_release(r)
            return 0 if it.status == IOQ_OK and it.cookie == seq else -1
        if mode == MODE_POLL:
            # The tightest loop: a round trip here is the ring's own cost.
            shm_cpu_relax()
            spins += 1
            if (spins & 4095) == 0 and shm_now_ns() > deadline:
                return -1
        else:
            _sleep_step(r, mode, 0)
            if shm_now_ns() > deadline:
                return -1


def ring_ping(Ring tx, Ring rx, Py_ssize_t n, out, int mode, uint64_t buf_off):
    cdef Py_buffer o
    cdef int64_t *ns = _ns_buffer(out, &o, n)
    cdef Py_ssize_t i
    cdef uint64_t t0, deadline = shm_now_ns() + DEADLINE_NS
    cdef int err = 0
    with nogil:
        for i in range(n):
            t0 = shm_now_ns()
            if _ring_send1(&tx.r, i, buf_off, mode) or _ring_recv1(&rx.r, i, mode, deadline):
                err = 1
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
    PyBuffer_Release(&o)
    if err:
        raise RuntimeError(f"ring ping-pong failed at round trip {i}")


def ring_pong(Ring rx, Ring tx, Py_ssize_t n, int mode, uint64_t buf_off):
    cdef Py_ssize_t i
    cdef uint64_t deadline = shm_now_ns() + DEADLINE_NS
    cdef int err = 0
    with nogil:
        for i in range(n):
            if _ring_recv1(&rx.r, i, mode, deadline) or _ring_send1(&tx.r, i, buf_off, mode):
                err = 1
                break
    if err:
        raise RuntimeError(f"ring pong failed at {i}")


# ---- a bare C SPSC ring of 64-byte messages: the stream limit ------------
#
# What a ring costs with nothing but the two indices and the messages, each
# in its own 64-byte slot (Lamport's queue with cached peer indices, the
# shape of the "C SPSC ring" the targets were measured with).  No
# descriptors, no validation, no buffer pool: ioq-stream-bN over
# spsc-stream-c-bN is the price of ioq's ABI, on whatever pair of CPUs the
# host gave us this run.  Layout in a MAP_SHARED buffer of SPSC_BYTES:
#   +0 u32 head (producer)   +64 u32 tail (consumer)   +128 slots[SPSC_SLOTS]

DEF SPSC_SLOTS = 1024
DEF SPSC_SLOTS_OFF = 128
SPSC_BYTES = SPSC_SLOTS_OFF + SPSC_SLOTS * 64


cdef struct spsc_t:
    uint32_t *head_p
    uint32_t *tail_p
    char *slots


cdef int _spsc_open(object buf, Py_buffer *b, uint32_t batch, spsc_t *q) except -1:
    """Check the arguments and locate the ring in buf (released on error)."""
    PyObject_GetBuffer(buf, b, PyBUF_WRITABLE)
    if b.len < SPSC_BYTES or batch == 0 or batch > SPSC_SLOTS:
        PyBuffer_Release(b)
        raise ValueError(f"need a buffer of at least {SPSC_BYTES} bytes and a batch of 1..{SPSC_SLOTS}")
    q.head_p = <uint32_t *>b.buf
    q.tail_p = <uint32_t *>(<char *>b.buf + 64)
    q.slots = <char *>b.buf + SPSC_SLOTS_OFF
    return 0


def spsc_stream_send(buf, uint64_t total, uint32_t batch):
    """Push `total` 64-byte messages in batches; each starts with its
    sequence number.  Returns how many were sent before the deadline."""
    cdef Py_buffer b
    cdef spsc_t q
    cdef uint32_t head = 0, tail = 0, want, i
    cdef uint64_t seq = 0, deadline = shm_now_ns() + DEADLINE_NS
    cdef uint8_t payload[64]
    _spsc_open(buf, &b, batch, &q)
    memset(payload, 0xa5, 64)
    with nogil:
        while seq < total:
            want = batch if total - seq >= batch else <uint32_t>(total - seq)
            if SPSC_SLOTS - (head - tail) < want:
                tail = shm_load_acquire_u32(q.tail_p)
                if SPSC_SLOTS - (head - tail) < want:
                    if shm_now_ns() > deadline:
                        break
                    for i in range(SPIN_BACKOFF):
                        shm_cpu_relax()
                    continue
            for i in range(want):
                (<uint64_t *>payload)[0] = seq + i
                memcpy(q.slots + <size_t>((head + i) & (SPSC_SLOTS - 1)) * 64, payload, 64)
            head += want
            shm_store_release_u32(q.head_p, head)
            seq += want
    PyBuffer_Release(&b)
    return seq


def spsc_stream_recv(buf, uint64_t total, uint32_t batch):
    """Pop `total` messages, up to `batch` per turn, checking each carries
    the next sequence number.  Returns (received, errors)."""
    cdef Py_buffer b
    cdef spsc_t q
    cdef uint32_t head = 0, tail = 0, k, i
    cdef uint64_t seq = 0, errors = 0, deadline = shm_now_ns() + DEADLINE_NS
    _spsc_open(buf, &b, batch, &q)
    with nogil:
        while seq < total:
            if head == tail:
                head = shm_load_acquire_u32(q.head_p)
                if head == tail:
                    if shm_now_ns() > deadline:
                        break
                    for i in range(SPIN_BACKOFF):
                        shm_cpu_relax()
                    continue
            k = head - tail
            if k > batch:
                k = batch
            for i in range(k):
                if (<uint64_t *>(q.slots + <size_t>((tail + i) & (SPSC_SLOTS - 1)) * 64))[0] != seq:
                    errors += 1
                seq += 1
            tail += k
            shm_store_release_u32(q.tail_p, tail)
    PyBuffer_Release(&b)
    return seq, errors


# ---- ioq stream: 64-byte payloads copied into paired buffers --------------

cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # splitmix64 finaliser: the payload pattern is a function of the sequence
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111ebULL
    x ^= x >> 31
    return x


cdef inline void _fill(uint8_t *p, uint64_t seq, uint32_t size) noexcept nogil:
    cdef uint32_t w
    (<uint64_t *>p)[0] = seq
    for w in range(1, size // 8):
        (<uint64_t *>p)[w] = _mix(seq * 8 + w)


cdef inline bint _check(const uint8_t *p, uint64_t seq, uint32_t size) noexcept nogil:
    cdef uint32_t w
    if (<const uint64_t *>p)[0] != seq:
        return False
    for w in range(1, size // 8):
        if (<const uint64_t *>p)[w] != _mix(seq * 8 + w):
            return False
    return True


cdef inline bint _idle(ioq_ring_t *r, int mode, int64_t poll_ns, uint64_t deadline) noexcept nogil:
    """Nothing to do this turn (ring empty or full): wait once.  False once
    the deadline has passed."""
    if shm_now_ns() > deadline:
        return False
    _sleep_step(r, mode, poll_ns)
    return True


def ring_stream_send(Ring tx, uint64_t total, uint32_t batch, uint64_t pair_off, uint32_t buf_size,
                     uint32_t msg_size=64, int mode=MODE_POLL, int64_t poll_ns=0, bint verify=False):
    """Push `total` messages in batches.  Each payload starts with its
    sequence number; with verify the rest is a function of it (checked by
    the receiver).  `mode` (MODE_*) is how each side tells the other about
    new work or free space, and how it waits while the ring is full."""
    cdef ioq_ring_t *r = &tx.r
    cdef uint64_t seq = 0, off, deadline = shm_now_ns() + DEADLINE_NS
    cdef uint32_t k, i, want
    cdef ioq_desc_t *d
    cdef uint8_t payload[256]
    if batch > r.count or batch == 0 or msg_size < 8 or msg_size > 256 or msg_size > buf_size \
            or msg_size % 8:
        raise ValueError("bad batch or message size")
    memset(payload, 0xa5, 256)
    with nogil:
        while seq < total:
            want = batch if total - seq >= batch else <uint32_t>(total - seq)
            k = want
            d = ioq_reserve(r, &k)
            if k == 0:
                if not _idle(r, mode, poll_ns, deadline):
                    break
                continue
            for i in range(k):
                off = pair_off + <uint64_t>((r.head + i) & r.mask) * buf_size
                if verify:
                    _fill(<uint8_t *>(r.base + off), seq + i, msg_size)
                else:
                    (<uint64_t *>payload)[0] = seq + i
                    if msg_size == 64:
                        # A constant size, as the bare C ring copies, so the
                        # compiler inlines the copy.  With the vCPUs far
                        # apart the libc call for a runtime size cost most of
                        # the stream: b32 33-44 M msg/s calling it (to shared
                        # or private memory alike), 50-52 inlined, 142-154
                        # with no copy at all.
                        memcpy(r.base + off, payload, 64)
                    else:
                        memcpy(r.base + off, payload, msg_size)
                d[i].cookie = seq + i
                d[i].offset = off
                d[i].len = msg_size
                d[i].flags = 0
                d[i].user = 0
            ioq_commit(r, k)
            _notify(r, mode)
            seq += k
    return seq


def ring_stream_recv(Ring rx, uint64_t total, uint32_t batch, int mode=MODE_POLL,
                     int64_t poll_ns=0, bint verify=False):
    """Pop `total` messages in batches of up to `batch`, checking that each
    carries the next sequence number (and, with verify, its whole payload).
    Returns (received, errors)."""
    cdef ioq_ring_t *r = &rx.r
    cdef uint64_t seq = 0, errors = 0, deadline = shm_now_ns() + DEADLINE_NS
    cdef uint32_t k, i
    cdef ioq_item_t items[256]
    cdef const uint8_t *p
    if batch > 256 or batch == 0:
        raise ValueError("batch must be 1..256")
    with nogil:
        while seq < total:
            k = ioq_pop(r, items, batch, NULL, 0, NULL)
            if k == 0:
                if not _idle(r, mode, poll_ns, deadline):
                    break
                continue
            for i in range(k):
                p = <const uint8_t *>(r.base + items[i].offset)
                if items[i].status != IOQ_OK or items[i].cookie != seq:
                    errors += 1
                elif verify:
                    if not _check(p, seq, items[i].len):
                        errors += 1
                elif (<const uint64_t *>p)[0] != seq:
                    errors += 1
                seq += 1
            ioq_release(r)
            _notify(r, mode)
    return seq, errors
