# cython: language_level=3, boundscheck=False, wraparound=False
"""The loops of `venet bench switch`, in C with the GIL released: a venet
frontend driving its device's rings directly (what `venet.frontend` does
per call, here per batch with no Python object per frame), a two-hop
eventfd relay, and the AF_PACKET baselines (send/recv per frame, and
PACKET_MMAP TPACKET_V3 rings with PACKET_QDISC_BYPASS).

Every frame the loops send is Ethernet: dst, src, ethertype ETHERTYPE (the
IEEE's "local experimental" 0x88b5), two zero bytes, then the 64-bit
sequence number at offset SEQ_OFF; the rest is the template's fill.  A
receiver counts only frames of that ethertype and treats a jump in the
sequence as frames lost on the way (a switch drops when a port's RX ring
is full; the kernel drops when a backlog or socket buffer is).

Every loop is bounded by a count and a wall-clock limit, so a dead peer
cannot hang the benchmark.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EINTR, EAGAIN, ENOBUFS
from posix.unistd cimport read, write
from shmsignal.includes.osdefs cimport pollfd, poll, POLLIN, POLLOUT, POLLERR, sched_yield
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from shmsignal.includes.atomics cimport *
from shmsignal.shmsig cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring

ETHERTYPE = 0x88b5
DEF SEQ_OFF = 16
SEQ_OFFSET = SEQ_OFF
DEF MAX_FRAME = 9216
DEF MAX_BATCH = 256
DEF SPIN_BACKOFF = 64
DEF YIELD_SPINS = 4          # signal checks between two sched_yield of a poll

# How a frontend loop waits for its ring (ring empty, or full):
cdef enum:
    WAIT_SPIN = 0       # busy-poll, never sleep
    WAIT_SIGNAL = 1     # shmsignal: poll up to poll_ns (yielding), then sleep until kicked


cdef inline uint64_t _deadline(double seconds) noexcept nogil:
    return shm_now_ns() + <uint64_t>(seconds * 1e9)


cdef inline bint _poll_yield(ioq_ring_t *r, int64_t poll_ns) noexcept nogil:
    """Busy-poll the ring's signal for up to poll_ns without arming it (the
    peer need not kick): PAUSEs, then a sched_yield, again and again.  The
    yield is what lets three busy parties (two frontends and the switch's
    worker) share two CPUs: whoever holds the work runs within a yield, not
    after a scheduler tick.  True when the peer signalled."""
    cdef uint64_t deadline = shm_now_ns() + <uint64_t>poll_ns
    cdef int i
    while True:
        for i in range(YIELD_SPINS):
            if shmsig_take(&r.sig):
                return True
            shm_cpu_relax()
        if shm_now_ns() >= deadline:
            return False
        sched_yield()


cdef inline void _wait(ioq_ring_t *r, int mode, int64_t poll_ns) noexcept nogil:
    cdef int i
    if mode == WAIT_SPIN:
        for i in range(SPIN_BACKOFF):
            shm_cpu_relax()
    else:
        if poll_ns > 0 and _poll_yield(r, poll_ns):
            return
        # A bounded sleep: a 100 ms slice, so the deadline is looked at.
        shmsig_wait(&r.sig, 100_000_000, 0)


cdef inline bint _ours(const uint8_t *p, uint32_t n) noexcept nogil:
    return n >= SEQ_OFF + 8 and p[12] == 0x88 and p[13] == 0xb5


cdef inline uint64_t _seq(const uint8_t *p) noexcept nogil:
    cdef uint64_t s
    memcpy(&s, p + SEQ_OFF, 8)
    return s


cdef int _template(object hdr, uint32_t size, uint8_t *out) except -1:
    """out[0:size] = a frame: hdr (dst, src: 12 bytes), the ethertype, the
    fill.  size: 64..MAX_FRAME."""
    cdef bytes h = bytes(hdr)
    cdef uint32_t i
    if len(h) != 12:
        raise ValueError("hdr must be 12 bytes: destination and source MAC")
    if size < 64 or size > MAX_FRAME:
        raise ValueError(f"frame size must be 64..{MAX_FRAME}")
    memcpy(out, <const char *>h, 12)
    out[12] = 0x88
    out[13] = 0xb5
    out[14] = 0
    out[15] = 0
    for i in range(SEQ_OFF, size):
        out[i] = <uint8_t>(i * 7)
    return 0


# ---- a venet frontend's stream and ping-pong over its device's rings ------

def fe_stream_send(Ring tx, hdr, uint64_t total, uint32_t batch, uint32_t size,
                   double seconds, int mode=WAIT_SIGNAL, int64_t poll_ns=0):
    """Publish up to `total` frames of `size` bytes in batches of `batch`,
    each copied into its slot's paired buffer; stop at `seconds`.  Returns
    (frames sent, ns spent)."""
    cdef ioq_ring_t *r = &tx.r
    cdef uint8_t tmpl[MAX_FRAME]
    cdef uint64_t seq = 0, off, t0, deadline
    cdef uint32_t k, i, want
    cdef ioq_desc_t *d
    if r.pair_off == 0 or size > r.buf_size:
        raise ValueError(f"frames of {size} bytes do not fit the ring's {r.buf_size}-byte buffers")
    if batch == 0 or batch > r.count:
        raise ValueError(f"batch must be 1..{r.count}")
    _template(hdr, size, tmpl)
    t0 = shm_now_ns()
    deadline = _deadline(seconds)
    with nogil:
        while seq < total:
            if shm_now_ns() > deadline:
                break
            want = batch if total - seq >= batch else <uint32_t>(total - seq)
            k = ioq_free(r, want)
            if k < want:
                _wait(r, mode, poll_ns)
                continue
            for i in range(want):
                off = ioq_pair(r, r.head + i)
                if size == 64:
                    memcpy(r.base + off, tmpl, 64)       # a constant size: inlined
                else:
                    memcpy(r.base + off, tmpl, size)
                memcpy(r.base + off + SEQ_OFF, &seq, 8)
                seq += 1
                d = ioq_slot(r, i)
                d.cookie = seq
                d.offset = off
                d.len = size
                d.flags = 0
                d.user = 0
            ioq_commit(r, want)
            ioq_kick_peer(r)
    return seq, shm_now_ns() - t0


def fe_stream_recv(Ring rx, uint64_t total, uint32_t batch, double idle_s, double seconds,
                   int mode=WAIT_SIGNAL, int64_t poll_ns=0):
    """Pop frames until the one of sequence total-1 arrives, nothing has
    come for `idle_s` after the first, or `seconds` passed.  Returns
    (received, lost, bad, first_ns, last_ns): lost counts the sequence
    numbers skipped, bad the descriptors refused or frames out of order."""
    cdef ioq_ring_t *r = &rx.r
    cdef ioq_item_t items[MAX_BATCH]
    cdef uint64_t got = 0, lost = 0, bad = 0, expect = 0, s, now
    cdef uint64_t first = 0, last = 0, deadline = _deadline(seconds)
    cdef uint64_t idle_ns = <uint64_t>(idle_s * 1e9)
    cdef uint32_t k, i
    cdef const uint8_t *p
    cdef bint done = False
    if batch == 0 or batch > MAX_BATCH:
        raise ValueError(f"batch must be 1..{MAX_BATCH}")
    with nogil:
        while not done:
            k = ioq_pop(r, items, batch, NULL, 0, NULL)
            if k == 0:
                now = shm_now_ns()
                if now > deadline or (got and now - last > idle_ns):
                    break
                _wait(r, mode, poll_ns)
                continue
            now = shm_now_ns()
            for i in range(k):
                if items[i].status != IOQ_OK:
                    bad += 1
                    continue
                p = <const uint8_t *>(r.base + items[i].offset)
                if not _ours(p, items[i].len):
                    continue
                s = _seq(p)
                if s < expect:
                    bad += 1
                    continue
                lost += s - expect
                expect = s + 1
                if got == 0:
                    first = now
                got += 1
                last = now
                if expect >= total:
                    done = True
            ioq_release(r)
            ioq_kick_peer(r)
    return got, lost, bad, first, last


cdef inline int _send1(ioq_ring_t *r, const uint8_t *tmpl, uint32_t size, uint64_t seq) noexcept nogil:
    cdef uint64_t off
    cdef ioq_desc_t *d
    if ioq_free(r, 1) == 0:
        return -1
    off = ioq_pair(r, r.head)
    memcpy(r.base + off, tmpl, size)
    memcpy(r.base + off + SEQ_OFF, &seq, 8)
    d = ioq_slot(r, 0)
    d.cookie = seq
    d.offset = off
    d.len = size
    d.flags = 0
    d.user = 0
    ioq_commit(r, 1)
    ioq_kick_peer(r)
    return 0


cdef inline int _recv_seq(ioq_ring_t *r, uint64_t *seq, int mode, int64_t poll_ns,
                          uint64_t deadline) noexcept nogil:
    """Wait for one frame of ours; its sequence into *seq.  -1 at the
    deadline.  Other frames are dropped."""
    cdef ioq_item_t it
    cdef const uint8_t *p
    cdef int found
    cdef unsigned int spins = 0
    while True:
        if ioq_pop(r, &it, 1, NULL, 0, NULL) == 1:
            found = 0
            if it.status == IOQ_OK:
                p = <const uint8_t *>(r.base + it.offset)
                if _ours(p, it.len):
                    seq[0] = _seq(p)
                    found = 1
            ioq_release(r)
            ioq_kick_peer(r)
            if found:
                return 0
            continue
        if mode == WAIT_SPIN:
            shm_cpu_relax()
            spins += 1
            if (spins & 4095) == 0 and shm_now_ns() > deadline:
                return -1
        else:
            if shm_now_ns() > deadline:
                return -1
            _wait(r, mode, poll_ns)


def fe_ping(Ring tx, Ring rx, hdr, uint32_t size, Py_ssize_t n, out, int mode=WAIT_SIGNAL,
            int64_t poll_ns=0, double seconds=30.0):
    """n round trips of one frame each: send sequence i, wait for a frame
    of ours carrying i (a late one of an earlier round is skipped).  Each
    round trip's ns into `out` (int64, n entries).  Returns how many
    round trips completed."""
    cdef Py_buffer o
    cdef uint8_t tmpl[MAX_FRAME]
    cdef int64_t *ns
    cdef Py_ssize_t i = 0
    cdef uint64_t t0, s, deadline
    cdef int err = 0
    if size > tx.r.buf_size:
        raise ValueError(f"frames of {size} bytes do not fit the ring's buffers")
    _template(hdr, size, tmpl)
    PyObject_GetBuffer(out, &o, PyBUF_WRITABLE)
    if o.len < n * 8:
        PyBuffer_Release(&o)
        raise ValueError("output buffer too small")
    ns = <int64_t *>o.buf
    deadline = _deadline(seconds)
    with nogil:
        while i < n:
            t0 = shm_now_ns()
            while _send1(&tx.r, tmpl, size, <uint64_t>i) != 0:
                if shm_now_ns() > deadline:
                    err = 1
                    break
                _wait(&tx.r, mode, poll_ns)
            if err:
                break
            while True:
                if _recv_seq(&rx.r, &s, mode, poll_ns, deadline) != 0:
                    err = 1
                    break
                if s == <uint64_t>i:
                    break
            if err:
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
            i += 1
    PyBuffer_Release(&o)
    return i


def fe_pong(Ring rx, Ring tx, hdr, uint32_t size, Py_ssize_t n, int mode=WAIT_SIGNAL,
            int64_t poll_ns=0, double seconds=30.0):
    """Answer n frames of ours: each reply carries the sequence of the
    frame it answers, behind `hdr`.  Returns how many were answered."""
    cdef uint8_t tmpl[MAX_FRAME]
    cdef Py_ssize_t i = 0
    cdef uint64_t s, deadline
    cdef int err = 0
    _template(hdr, size, tmpl)
    deadline = _deadline(seconds)
    with nogil:
        while i < n:
            if _recv_seq(&rx.r, &s, mode, poll_ns, deadline) != 0:
                break
            while _send1(&tx.r, tmpl, size, s) != 0:
                if shm_now_ns() > deadline:
                    err = 1
                    break
                _wait(&tx.r, mode, poll_ns)
            if err:
                break
            i += 1
    return i


# ---- the two-hop eventfd relay: A -> relay -> B and back -------------------

cdef int _efd_read(int fd) noexcept nogil:
    cdef uint64_t v
    cdef ssize_t r
    while True:
        r = read(fd, &v, 8)
        if r == 8:
            return 0
        if r < 0 and errno == EINTR:
            continue
        return -1


cdef int _efd_write(int fd) noexcept nogil:
    cdef uint64_t v = 1
    cdef ssize_t r
    while True:
        r = write(fd, &v, 8)
        if r == 8:
            return 0
        if r < 0 and errno == EINTR:
            continue
        return -1


def efd_relay(int from_a, int to_b, int from_b, int to_a, Py_ssize_t n, double seconds=30.0):
    """The relay of the eventfd baseline, as a switch worker waits: on both
    inputs at once (poll), forwarding each wake-up to the other side.
    Returns how many round trips it relayed (both hops)."""
    cdef pollfd pfd[2]
    cdef Py_ssize_t back = 0
    cdef uint64_t deadline = _deadline(seconds)
    cdef int rc
    pfd[0].fd = from_a
    pfd[0].events = POLLIN
    pfd[1].fd = from_b
    pfd[1].events = POLLIN
    with nogil:
        while back < n and shm_now_ns() < deadline:
            rc = poll(pfd, 2, 100)
            if rc < 0 and errno != EINTR:
                break
            if rc <= 0:
                continue
            if pfd[0].revents & POLLIN:
                if _efd_read(from_a) or _efd_write(to_b):
                    break
            if pfd[1].revents & POLLIN:
                if _efd_read(from_b) or _efd_write(to_a):
                    break
                back += 1
    return back


def efd_ping(int to_relay, int from_relay, Py_ssize_t n, out):
    """A's side: n round trips; each one's ns into out (int64)."""
    cdef Py_buffer o
    cdef int64_t *ns
    cdef Py_ssize_t i = 0
    cdef uint64_t t0
    PyObject_GetBuffer(out, &o, PyBUF_WRITABLE)
    if o.len < n * 8:
        PyBuffer_Release(&o)
        raise ValueError("output buffer too small")
    ns = <int64_t *>o.buf
    with nogil:
        while i < n:
            t0 = shm_now_ns()
            if _efd_write(to_relay) or _efd_read(from_relay):
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
            i += 1
    PyBuffer_Release(&o)
    return i


def efd_pong(int from_relay, int to_relay, Py_ssize_t n):
    cdef Py_ssize_t i = 0
    with nogil:
        while i < n:
            if _efd_read(from_relay) or _efd_write(to_relay):
                break
            i += 1
    return i


# ---- AF_PACKET: send/recv per frame --------------------------------------

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    ssize_t c_recv "recv"(int fd, void *buf, size_t n, int flags)
    int setsockopt(int fd, int level, int name, const void *val, unsigned int len)
    enum:
        MSG_DONTWAIT
        SOL_PACKET

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED
        MAP_LOCKED
    void *MAP_FAILED

cdef extern from "<linux/if_packet.h>" nogil:
    enum:
        PACKET_VERSION
        PACKET_RX_RING
        PACKET_TX_RING
        PACKET_QDISC_BYPASS
        TPACKET_V3
        TP_STATUS_KERNEL
        TP_STATUS_USER
        TP_STATUS_AVAILABLE
        TP_STATUS_SEND_REQUEST
        TP_STATUS_SENDING
        TP_STATUS_WRONG_FORMAT
    struct tpacket_req3:
        unsigned int tp_block_size
        unsigned int tp_block_nr
        unsigned int tp_frame_size
        unsigned int tp_frame_nr
        unsigned int tp_retire_blk_tov
        unsigned int tp_sizeof_priv
        unsigned int tp_feature_req_word
    struct tpacket3_hdr:
        uint32_t tp_next_offset
        uint32_t tp_sec
        uint32_t tp_nsec
        uint32_t tp_snaplen
        uint32_t tp_len
        uint32_t tp_status
        uint16_t tp_mac
        uint16_t tp_net
    struct tpacket_hdr_v1:
        uint32_t block_status
        uint32_t num_pkts
        uint32_t offset_to_first_pkt
    union tpacket_bd_header_u:
        tpacket_hdr_v1 bh1
    struct tpacket_block_desc:
        uint32_t version
        uint32_t offset_to_priv
        tpacket_bd_header_u hdr


def afp_send(int fd, hdr, uint32_t size, uint64_t total, double seconds):
    """send() one frame per call on a bound AF_PACKET socket.  A full
    queue (ENOBUFS, EAGAIN) is retried after a poll.  Returns (sent, ns)."""
    cdef uint8_t tmpl[MAX_FRAME]
    cdef uint64_t seq = 0, t0, deadline
    cdef ssize_t r
    cdef pollfd pfd
    _template(hdr, size, tmpl)
    pfd.fd = fd
    pfd.events = POLLOUT
    t0 = shm_now_ns()
    deadline = _deadline(seconds)
    with nogil:
        while seq < total:
            memcpy(tmpl + SEQ_OFF, &seq, 8)
            r = c_send(fd, tmpl, size, 0)
            if r == <ssize_t>size:
                seq += 1
                if (seq & 1023) == 0 and shm_now_ns() > deadline:
                    break
                continue
            if shm_now_ns() > deadline:
                break
            if r < 0 and (errno == ENOBUFS or errno == EAGAIN):
                poll(&pfd, 1, 1)
            elif r < 0 and errno != EINTR:
                break
    return seq, shm_now_ns() - t0


def afp_recv(int fd, uint64_t total, double idle_s, double seconds):
    """recv() one frame per call (the socket is bound to ETHERTYPE).
    Returns (received, lost, bad, first_ns, last_ns) as fe_stream_recv."""
    cdef uint8_t buf[MAX_FRAME]
    cdef uint64_t got = 0, lost = 0, bad = 0, expect = 0, s, now, first = 0, last = 0
    cdef uint64_t deadline = _deadline(seconds), idle_ns = <uint64_t>(idle_s * 1e9)
    cdef ssize_t r
    cdef pollfd pfd
    pfd.fd = fd
    pfd.events = POLLIN
    with nogil:
        while expect < total:
            r = c_recv(fd, buf, MAX_FRAME, MSG_DONTWAIT)
            now = shm_now_ns()
            if r < 0:
                if errno != EAGAIN and errno != EINTR:
                    break
                if now > deadline or (got and now - last > idle_ns):
                    break
                poll(&pfd, 1, 100)
                continue
            if not _ours(buf, <uint32_t>r):
                continue
            s = _seq(buf)
            if s < expect:
                bad += 1
                continue
            lost += s - expect
            expect = s + 1
            if got == 0:
                first = now
            got += 1
            last = now
    return got, lost, bad, first, last


def afp_ping(int fd, hdr, uint32_t size, Py_ssize_t n, out, double seconds=30.0):
    """Round trips over AF_PACKET: send, then recv until our sequence comes
    back.  Returns how many completed."""
    cdef Py_buffer o
    cdef uint8_t tmpl[MAX_FRAME]
    cdef uint8_t buf[MAX_FRAME]
    cdef int64_t *ns
    cdef Py_ssize_t i = 0
    cdef uint64_t t0, seq, deadline
    cdef ssize_t r
    cdef pollfd pfd
    cdef int err = 0
    _template(hdr, size, tmpl)
    PyObject_GetBuffer(out, &o, PyBUF_WRITABLE)
    if o.len < n * 8:
        PyBuffer_Release(&o)
        raise ValueError("output buffer too small")
    ns = <int64_t *>o.buf
    pfd.fd = fd
    pfd.events = POLLIN
    deadline = _deadline(seconds)
    with nogil:
        while i < n and not err:
            t0 = shm_now_ns()
            seq = <uint64_t>i
            memcpy(tmpl + SEQ_OFF, &seq, 8)
            if c_send(fd, tmpl, size, 0) != <ssize_t>size:
                break
            while True:
                r = c_recv(fd, buf, MAX_FRAME, 0)
                if r < 0:
                    if errno == EINTR or errno == EAGAIN:
                        if shm_now_ns() > deadline:
                            err = 1
                            break
                        continue
                    err = 1
                    break
                if _ours(buf, <uint32_t>r) and _seq(buf) == seq:
                    break
            if err:
                break
            ns[i] = <int64_t>(shm_now_ns() - t0)
            i += 1
    PyBuffer_Release(&o)
    return i


def afp_pong(int fd, hdr, uint32_t size, Py_ssize_t n, double seconds=30.0):
    """Answer n frames of ours with `hdr` in front and the same sequence."""
    cdef uint8_t tmpl[MAX_FRAME]
    cdef uint8_t buf[MAX_FRAME]
    cdef Py_ssize_t i = 0
    cdef uint64_t deadline
    cdef ssize_t r
    _template(hdr, size, tmpl)
    deadline = _deadline(seconds)
    with nogil:
        while i < n:
            r = c_recv(fd, buf, MAX_FRAME, 0)
            if r < 0:
                if (errno == EINTR or errno == EAGAIN) and shm_now_ns() < deadline:
                    continue
                break
            if not _ours(buf, <uint32_t>r):
                continue
            memcpy(tmpl + SEQ_OFF, buf + SEQ_OFF, 8)
            if c_send(fd, tmpl, size, 0) != <ssize_t>size:
                break
            i += 1
    return i


# ---- AF_PACKET with PACKET_MMAP TPACKET_V3 rings --------------------------

DEF TX_FRAME = 2048         # a TX slot: the tpacket3_hdr, then the frame at TX_DATA
DEF TX_DATA = 48            # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))


cdef int _sockopt_int(int fd, int name, int v) except -1:
    if setsockopt(fd, SOL_PACKET, name, &v, sizeof(int)) != 0:
        raise OSError(errno, f"setsockopt({name}) failed")
    return 0


cdef class MmapTx:
    """A TPACKET_V3 TX ring with PACKET_QDISC_BYPASS on an AF_PACKET socket
    not yet bound (the ring must come first): run() fills up to `batch`
    free slots, marks them SEND_REQUEST, and one send() flushes them."""
    cdef int fd
    cdef char *ring
    cdef size_t ring_len
    cdef uint32_t nframes

    def __cinit__(self, int fd, uint32_t frames=1024):
        cdef tpacket_req3 req
        self.fd = fd
        self.ring = NULL
        _sockopt_int(fd, PACKET_VERSION, TPACKET_V3)
        _sockopt_int(fd, PACKET_QDISC_BYPASS, 1)
        memset(&req, 0, sizeof(req))
        req.tp_block_size = 1 << 16
        req.tp_frame_size = TX_FRAME
        req.tp_block_nr = frames * TX_FRAME // req.tp_block_size
        req.tp_frame_nr = req.tp_block_nr * (req.tp_block_size // TX_FRAME)
        if setsockopt(fd, SOL_PACKET, PACKET_TX_RING, &req, sizeof(req)) != 0:
            raise OSError(errno, "PACKET_TX_RING (TPACKET_V3) refused")
        self.ring_len = <size_t>req.tp_block_size * req.tp_block_nr
        self.ring = <char *>mmap(NULL, self.ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if <void *>self.ring == MAP_FAILED:
            self.ring = NULL
            raise OSError(errno, "mmap of the TX ring failed")
        self.nframes = req.tp_frame_nr

    def run(self, hdr, uint32_t size, uint64_t total, double seconds, uint32_t batch=32):
        """Bind the socket first.  Returns (sent, ns, slots the kernel
        found malformed)."""
        cdef uint8_t tmpl[MAX_FRAME]
        cdef uint64_t seq = 0, t0, deadline, wrong = 0
        cdef uint32_t pos = 0, k, st, queued
        cdef tpacket3_hdr *h
        cdef pollfd pfd
        cdef ssize_t r
        _template(hdr, size, tmpl)
        pfd.fd = self.fd
        pfd.events = POLLOUT
        t0 = shm_now_ns()
        deadline = _deadline(seconds)
        with nogil:
            while seq < total:
                if shm_now_ns() > deadline:
                    break
                queued = 0
                for k in range(batch):
                    if seq + queued >= total:
                        break
                    h = <tpacket3_hdr *>(self.ring + <size_t>((pos + queued) % self.nframes) * TX_FRAME)
                    st = shm_load_acquire_u32(&h.tp_status)
                    if st & TP_STATUS_WRONG_FORMAT:
                        wrong += 1
                    elif st != TP_STATUS_AVAILABLE:
                        break
                    memcpy(<char *>h + TX_DATA, tmpl, size)
                    (<uint64_t *>(<char *>h + TX_DATA + SEQ_OFF))[0] = seq + queued
                    h.tp_len = size
                    h.tp_snaplen = size
                    h.tp_next_offset = 0
                    shm_store_release_u32(&h.tp_status, TP_STATUS_SEND_REQUEST)
                    queued += 1
                if queued:
                    pos = (pos + queued) % self.nframes
                    seq += queued
                    r = c_send(self.fd, NULL, 0, MSG_DONTWAIT)
                    continue
                # Ring full: flush and wait for the kernel to free slots.
                c_send(self.fd, NULL, 0, MSG_DONTWAIT)
                poll(&pfd, 1, 1)
        return seq, shm_now_ns() - t0, wrong

    def close(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL

    def __dealloc__(self):
        self.close()


cdef class MmapRx:
    """A TPACKET_V3 RX ring on an AF_PACKET socket not yet bound (the ring
    must come first): blocks of frames the kernel fills, handed back one
    block at a time."""
    cdef int fd
    cdef char *ring
    cdef size_t ring_len
    cdef uint32_t block_size, nblocks

    def __cinit__(self, int fd, uint32_t block_size=1 << 18, uint32_t nblocks=32):
        cdef tpacket_req3 req
        self.fd = fd
        self.ring = NULL
        _sockopt_int(fd, PACKET_VERSION, TPACKET_V3)
        memset(&req, 0, sizeof(req))
        req.tp_block_size = block_size
        req.tp_block_nr = nblocks
        req.tp_frame_size = TX_FRAME
        req.tp_frame_nr = block_size // TX_FRAME * nblocks
        req.tp_retire_blk_tov = 1           # ms: a partly filled block is handed over soon
        if setsockopt(fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof(req)) != 0:
            raise OSError(errno, "PACKET_RX_RING (TPACKET_V3) refused")
        self.ring_len = <size_t>block_size * nblocks
        self.ring = <char *>mmap(NULL, self.ring_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if <void *>self.ring == MAP_FAILED:
            self.ring = NULL
            raise OSError(errno, "mmap of the RX ring failed")
        self.block_size = block_size
        self.nblocks = nblocks

    def run(self, uint64_t total, double idle_s, double seconds):
        """Bind the socket first.  As afp_recv; returns (received, lost, bad, first_ns, last_ns)."""
        cdef uint64_t got = 0, lost = 0, bad = 0, expect = 0, s, now, first = 0, last = 0
        cdef uint64_t deadline = _deadline(seconds), idle_ns = <uint64_t>(idle_s * 1e9)
        cdef uint32_t blk = 0, j, npk
        cdef tpacket_block_desc *bd
        cdef tpacket3_hdr *h
        cdef const uint8_t *p
        cdef pollfd pfd
        pfd.fd = self.fd
        pfd.events = POLLIN | POLLERR
        with nogil:
            while expect < total:
                bd = <tpacket_block_desc *>(self.ring + <size_t>blk * self.block_size)
                if not (shm_load_acquire_u32(&bd.hdr.bh1.block_status) & TP_STATUS_USER):
                    now = shm_now_ns()
                    if now > deadline or (got and now - last > idle_ns):
                        break
                    poll(&pfd, 1, 100)
                    continue
                now = shm_now_ns()
                npk = bd.hdr.bh1.num_pkts
                h = <tpacket3_hdr *>(<char *>bd + bd.hdr.bh1.offset_to_first_pkt)
                for j in range(npk):
                    p = <const uint8_t *>h + h.tp_mac
                    if _ours(p, h.tp_snaplen):
                        s = _seq(p)
                        if s < expect:
                            bad += 1
                        else:
                            lost += s - expect
                            expect = s + 1
                            if got == 0:
                                first = now
                            got += 1
                            last = now
                    h = <tpacket3_hdr *>(<char *>h + h.tp_next_offset)
                shm_store_release_u32(&bd.hdr.bh1.block_status, TP_STATUS_KERNEL)
                blk = (blk + 1) % self.nblocks
        return got, lost, bad, first, last

    def close(self):
        if self.ring != NULL:
            munmap(self.ring, self.ring_len)
            self.ring = NULL

    def __dealloc__(self):
        self.close()
