# cython: language_level=3, boundscheck=False, wraparound=False
"""Python face of an ioq ring end: raw descriptors (numpy structured arrays
or any buffer of 32-byte records) and a message API over paired buffers.

No call allocates a Python object per descriptor: batches go through buffers.
"""
import os
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy
from libc.errno cimport errno
from cpython.buffer cimport (PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE,
                             PyBUF_SIMPLE, PyBUF_ND, PyBUF_C_CONTIGUOUS, PyBUF_FORMAT)
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from shmsignal.shmsig cimport *
from shmsignal.includes.osdefs cimport (epoll_create1, epoll_ctl, epoll_event, EPOLL_CLOEXEC,
                                        EPOLL_CTL_ADD, EPOLLIN, EPOLLET)
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._region cimport Region
from ioq._region import IoqError, _doorbell_kind, _set_ring_factory
from ioq._abi import BAD_REASONS

ROLE_PRODUCER = IOQ_ROLE_PRODUCER
ROLE_CONSUMER = IOQ_ROLE_CONSUMER


class RingBroken(IoqError):
    """The peer published an index that cannot be right; the ring is dead."""


cdef class Ring:
    """One end of ring `index` of a region: role 0 produces, 1 consumes.

    wait_fd/kick_fd default to the region's doorbell pair for the ring (an
    fd given here is an eventfd or a stream socket, told apart by fstat).
    A doorbell the region says must never be read (an eventfd the peer
    shares, after a checked attach) is watched through a private
    edge-triggered epoll fd, which is then what fileno() returns.
    poll_us bounds the busy-poll before sleeping in blocking calls.
    max_len (consumer) refuses buffers or chains longer than this.
    """

    def __cinit__(self, Region region not None, int index, int role, *, wait_fd=None,
                  kick_fd=None, poll_us=0, max_len=None):
        self._open = False
        self._descs = NULL
        self.items = NULL
        self.sg = NULL
        self._epfd = -1
        region._check_open()
        region._ring_index(index)
        if role not in (IOQ_ROLE_PRODUCER, IOQ_ROLE_CONSUMER):
            raise ValueError(f"role must be 0 (producer) or 1 (consumer), not {role}")
        region._role_allowed(index, role)
        cdef int wfd = -1, kfd = -1
        cdef int wk = SHMSIG_FD_EVENTFD, kk = SHMSIG_FD_EVENTFD
        cdef epoll_event ev
        if region.doorbells:
            pfd, cfd = region.doorbells[index]
            pk, ck = region.doorbell_kinds(index)
            wfd, kfd = (pfd, cfd) if role == IOQ_ROLE_PRODUCER else (cfd, pfd)
            wk, kk = (pk, ck) if role == IOQ_ROLE_PRODUCER else (ck, pk)
        if wait_fd is not None:
            wfd = wait_fd
            wk = _doorbell_kind(wfd)
        if kick_fd is not None:
            kfd = kick_fd
            kk = _doorbell_kind(kfd)
        if kk == SHMSIG_FD_EDGE:
            # Never written by this end: an EDGE fd is one it waits on.
            raise IoqError(f"ring {index}: the doorbell to ring is one this process must not write")
        if wk == SHMSIG_FD_EDGE and wfd >= 0:
            self._epfd = epoll_create1(EPOLL_CLOEXEC)
            if self._epfd < 0:
                raise OSError(errno, f"epoll_create1: {os.strerror(errno)}")
            self._have_epfd = True
            ev.events = EPOLLIN | EPOLLET
            ev.data.u64 = 0
            if epoll_ctl(self._epfd, EPOLL_CTL_ADD, wfd, &ev) < 0:
                raise OSError(errno, f"epoll_ctl add doorbell fd {wfd}: {os.strerror(errno)}")
        self.region = region
        self.index = index
        self.role = role
        PyObject_GetBuffer(region._mm, &self._view, PyBUF_WRITABLE)
        cdef ioq_ring_info_t *info = &region.hdr.rings[index]
        if ioq_init(&self.r, <char *>self._view.buf, info.offset, info.count,
                    region.hdr.pool_offset, region.hdr.pool_offset + region.hdr.pool_size,
                    region.hdr.max_sg, role, wfd, kfd) != 0:
            PyBuffer_Release(&self._view)
            raise RingBroken(f"ring {index}: shared indices are inconsistent")
        shmsig_set_kinds(&self.r.sig, wk, self._epfd if self._have_epfd else wfd, kk)
        if max_len is not None:
            if not 0 < max_len <= 0xffffffff:
                PyBuffer_Release(&self._view)
                raise ValueError(f"max_len {max_len} out of range")
            self.r.max_len = max_len
        self._open = True
        self.poll_us = poll_us
        pb = region.paired_base(index)
        ioq_set_pairs(&self.r, 0 if pb is None else region.buffer_offset(pb) if region.hdr.nbufs else 0,
                      region.hdr.buf_size)
        self.sg_cap = region.hdr.max_sg * 2
        self._descs = <ioq_desc_t *>malloc(sizeof(ioq_desc_t) * info.count)
        self.items = <ioq_item_t *>malloc(sizeof(ioq_item_t) * info.count)
        self.sg = <ioq_sg_t *>malloc(sizeof(ioq_sg_t) * self.sg_cap)
        if self._descs == NULL or self.items == NULL or self.sg == NULL:
            raise MemoryError()
        region._track(self)

    def __dealloc__(self):
        if self._open:
            PyBuffer_Release(&self._view)
        if self._have_epfd:
            os.close(self._epfd)
        free(self._descs)
        free(self.items)
        free(self.sg)

    def close(self):
        if self._open:
            self._open = False
            PyBuffer_Release(&self._view)
        if self._have_epfd:
            self._have_epfd = False
            os.close(self._epfd)
            self._epfd = -1
            self.r.sig.sleep_fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    cdef int usable(self, int role) except -1:
        """Raise unless the ring is open, unbroken and (role >= 0) this
        end plays `role`."""
        if not self._open:
            raise IoqError("ring is closed")
        if self.r.broken:
            raise RingBroken(f"ring {self.index}: the peer published an impossible index; "
                             "the ring must be reset")
        if role >= 0 and self.role != role:
            raise IoqError(f"this is the {'producer' if self.role == 0 else 'consumer'} end of the ring")
        return 0

    @property
    def closed(self):
        return not self._open

    @property
    def count(self):
        return self.r.count

    @property
    def max_len(self):
        return self.r.max_len

    @property
    def poll_us(self):
        return self._poll_ns / 1000.0

    @poll_us.setter
    def poll_us(self, value):
        if value < 0:
            raise ValueError("poll_us must not be negative")
        self._poll_ns = <int64_t>(value * 1000)

    def fileno(self):
        """The fd this end sleeps on: readable when the peer kicks."""
        return self.r.sig.sleep_fd

    def doorbell(self):
        """(wait fd, its kind, kick fd, its kind): the doorbells this end
        waits on and rings (kinds: shmsignal.FD_*)."""
        return (self.r.sig.wait_fd, self.r.sig.wait_kind, self.r.sig.kick_fd, self.r.sig.kick_kind)

    # ---- raw descriptors -------------------------------------------------

    def free(self):
        """Producer: slots free now."""
        self.usable(-1)
        return ioq_free(&self.r, self.r.count)

    def ready(self):
        """Consumer: descriptors ready to pop now."""
        self.usable(-1)
        return ioq_avail(&self.r)

    def push(self, descs, bint notify=True):
        """Producer: publish descriptors from a buffer of 32-byte records
        (ioq.DESC_DTYPE).  Returns how many fitted."""
        self.usable(IOQ_ROLE_PRODUCER)
        cdef Py_buffer b
        PyObject_GetBuffer(descs, &b, PyBUF_C_CONTIGUOUS)
        cdef uint32_t k
        try:
            if b.len % sizeof(ioq_desc_t):
                raise ValueError(f"descriptor buffer of {b.len} bytes is not a whole number of "
                                 f"{sizeof(ioq_desc_t)}-byte records")
            k = ioq_push(&self.r, <ioq_desc_t *>b.buf, <uint32_t>(b.len // sizeof(ioq_desc_t)))
        finally:
            PyBuffer_Release(&b)
        if k and notify:
            ioq_kick_peer(&self.r)
        return k

    def pop(self, items, sg=None):
        """Consumer: copy, validate and return descriptors into a buffer of
        40-byte records (ioq.ITEM_DTYPE).  Bad ones come back with a nonzero
        status and are counted.  Indirect lists are copied into `sg` (records
        of ioq.SG_DTYPE, at least max_sg of them).  Call release() when the
        buffers may be reused.  Returns the count."""
        self.usable(IOQ_ROLE_CONSUMER)
        cdef Py_buffer b, s
        cdef uint32_t k, used = 0
        cdef bint have_sg = sg is not None
        PyObject_GetBuffer(items, &b, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        try:
            if b.len % sizeof(ioq_item_t):
                raise ValueError(f"item buffer of {b.len} bytes is not a whole number of "
                                 f"{sizeof(ioq_item_t)}-byte records")
            if have_sg:
                PyObject_GetBuffer(sg, &s, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
                try:
                    if s.len // sizeof(ioq_sg_t) < self.r.max_sg:
                        raise ValueError(f"sg buffer must hold at least max_sg={self.r.max_sg} entries")
                    k = ioq_pop(&self.r, <ioq_item_t *>b.buf, <uint32_t>(b.len // sizeof(ioq_item_t)),
                                <ioq_sg_t *>s.buf, <uint32_t>(s.len // sizeof(ioq_sg_t)), &used)
                finally:
                    PyBuffer_Release(&s)
            else:
                k = ioq_pop(&self.r, <ioq_item_t *>b.buf, <uint32_t>(b.len // sizeof(ioq_item_t)),
                            NULL, 0, NULL)
        finally:
            PyBuffer_Release(&b)
        return k

    def release(self, bint notify=True):
        """Consumer: hand popped slots (and paired buffers) back."""
        self.usable(-1)
        ioq_release(&self.r)
        if notify:
            ioq_kick_peer(&self.r)

    def notify(self):
        """Wake the peer if it asked to be woken.  True if a kick was sent."""
        self.usable(-1)
        return ioq_kick_peer(&self.r) == 1

    def arm(self):
        """Drain this end's doorbell and ask to be kicked, so that fileno()
        becomes readable on the peer's next inject (for select/epoll users).
        Returns True if work is already there: consume it instead of waiting."""
        self.usable(-1)
        shmsig_ack(&self.r.sig)
        # Consume the 'work pending' mark before looking at the ring: left
        # set, it would make every later arm() say True and a select()
        # loop over an idle ring would spin.  An inject after this take
        # marks us again, which enable() sees.
        shmsig_take(&self.r.sig)
        if shmsig_enable(&self.r.sig):
            return True
        if self.role == IOQ_ROLE_CONSUMER:
            return ioq_peek(&self.r)
        return ioq_free(&self.r, 1) > 0

    def wait(self, timeout=None):
        """Wait for the peer: data (consumer) or space (producer).  Busy-polls
        poll_us first.  True if signalled, False on timeout."""
        self.usable(-1)
        return self.wait_peer(timeout) == 1

    cdef int wait_peer(self, object timeout) except -1:
        """Wait (GIL released) for the peer's next kick: 1 when kicked, 0
        on timeout (None: forever).  Busy-polls poll_us first."""
        cdef int64_t tns = -1 if timeout is None else <int64_t>(timeout * 1e9)
        cdef int rc
        if tns < -1:
            raise ValueError("timeout must not be negative")
        with nogil:
            rc = shmsig_wait(&self.r.sig, tns, self._poll_ns)
        if rc == -1:
            raise OSError(errno, os.strerror(errno) if errno else "ring has no doorbell to sleep on")
        if rc == -2:
            raise OSError(f"ring {self.index}: the doorbell reported an error or hang-up")
        return rc

    # ---- messages over paired buffers ------------------------------------

    cdef int need_pairs(self) except -1:
        """Raise unless the ring has paired buffers."""
        if self.r.pair_off == 0:
            raise IoqError(f"ring {self.index} has no paired buffers; use push()/pop() with your own buffers")
        return 0

    cdef int _wait_space(self, object timeout) except -1:
        """Producer: 1 when a slot is free, 0 on timeout."""
        while ioq_free(&self.r, 1) == 0:
            if self.r.broken:
                self.usable(-1)
            if self.wait_peer(timeout) == 0 and ioq_free(&self.r, 1) == 0:
                return 0
        return 1

    def put(self, data, timeout=None):
        """Producer: copy one message into the next paired buffer and publish
        it.  Blocks while the ring is full; returns False on timeout."""
        self.usable(IOQ_ROLE_PRODUCER)
        self.need_pairs()
        cdef const uint8_t[::1] mv
        cdef const char *src
        cdef Py_ssize_t n
        if type(data) is bytes:
            src = PyBytes_AS_STRING(data)
            n = len(<bytes>data)
        else:
            mv = memoryview(data).cast("B")
            n = mv.shape[0]
            src = <const char *>&mv[0] if n else NULL
        if n == 0 or n > self.r.buf_size:
            raise ValueError(f"message of {n} bytes: must be 1 to {self.r.buf_size} bytes")
        if ioq_free(&self.r, 1) == 0 and not self._wait_space(timeout):
            return False
        cdef ioq_desc_t d
        d.offset = ioq_pair(&self.r, self.r.head)
        memcpy(self.r.base + d.offset, src, n)
        d.cookie = self.r.head
        d.len = <uint32_t>n
        d.flags = 0
        d.user = 0
        d.seq = 0
        ioq_push(&self.r, &d, 1)
        ioq_kick_peer(&self.r)
        return True

    def put_batch(self, data, lens=None, timeout=None):
        """Producer: publish the rows of a C-contiguous 2-D uint8 buffer
        (one message per row; `lens` gives each row's length, default the
        row width).  Publishes as many as fit, blocking only while none fit.
        Returns how many were published (0 on timeout)."""
        self.usable(IOQ_ROLE_PRODUCER)
        self.need_pairs()
        cdef Py_buffer b, lb
        cdef bint have_lens = lens is not None
        cdef uint32_t i, k, rows, width, ln
        cdef uint32_t *lp = NULL
        cdef ioq_desc_t *d
        cdef uint64_t off
        PyObject_GetBuffer(data, &b, PyBUF_ND | PyBUF_C_CONTIGUOUS)
        try:
            if b.ndim != 2 or b.itemsize != 1:
                raise ValueError("data must be a C-contiguous 2-D buffer of bytes (rows x width)")
            rows = <uint32_t>b.shape[0]
            width = <uint32_t>b.shape[1]
            if have_lens:
                PyObject_GetBuffer(lens, &lb, PyBUF_ND | PyBUF_C_CONTIGUOUS)
                if lb.itemsize != 4 or lb.len // 4 < rows:
                    PyBuffer_Release(&lb)
                    raise ValueError("lens must be a uint32 array with one entry per row")
                lp = <uint32_t *>lb.buf
            try:
                if not have_lens and (width == 0 or width > self.r.buf_size):
                    raise ValueError(f"rows of {width} bytes: must be 1 to {self.r.buf_size} bytes")
                if rows == 0:
                    return 0
                if ioq_free(&self.r, 1) == 0 and not self._wait_space(timeout):
                    return 0
                k = ioq_free(&self.r, rows)
                if rows < k:
                    k = rows
                for i in range(k):
                    ln = lp[i] if have_lens else width
                    if ln == 0 or ln > width or ln > self.r.buf_size:
                        if i == 0:
                            raise ValueError(f"row {i}: length {ln} must be 1 to {min(width, self.r.buf_size)}")
                        k = i
                        break
                    d = &self._descs[i]
                    off = ioq_pair(&self.r, self.r.head + i)
                    memcpy(self.r.base + off, <char *>b.buf + <size_t>i * width, ln)
                    d.cookie = self.r.head + i
                    d.offset = off
                    d.len = ln
                    d.flags = 0
                    d.user = 0
                    d.seq = 0
                ioq_push(&self.r, self._descs, k)
                ioq_kick_peer(&self.r)
                return k
            finally:
                if have_lens:
                    PyBuffer_Release(&lb)
        finally:
            PyBuffer_Release(&b)

    cdef uint32_t _pop_some(self, uint32_t n, object timeout) except? 0xffffffff:
        """Consumer: pop up to n items into scratch, waiting while empty."""
        cdef uint32_t k
        cdef uint32_t used
        if n > self.r.count:
            n = self.r.count
        while True:
            k = ioq_pop(&self.r, self.items, n, self.sg, self.sg_cap, &used)
            if k:
                return k
            self.usable(-1)
            if self.wait_peer(timeout) == 0 and not ioq_peek(&self.r):
                self.usable(-1)
                return 0

    cdef uint32_t _copy_out(self, ioq_item_t *it, char *dst) noexcept:
        """Copy a validated item's payload (direct or SG) to dst."""
        cdef uint32_t j, done = 0
        cdef ioq_sg_t *e
        if it.sg_count == 0:
            memcpy(dst, self.r.base + it.offset, it.len)
            return it.len
        for j in range(it.sg_count):
            e = &self.sg[it.sg_first + j]
            memcpy(dst + done, self.r.base + e.offset, e.len)
            done += e.len
        return done

    def get(self, timeout=None):
        """Consumer: the next message as bytes (copied out of shared memory),
        or None on timeout.  Bad descriptors are skipped and counted."""
        self.usable(IOQ_ROLE_CONSUMER)
        cdef ioq_item_t *it
        cdef bytes out
        while True:
            if self._pop_some(1, timeout) == 0:
                return None
            it = &self.items[0]
            if it.status == IOQ_OK:
                out = PyBytes_FromStringAndSize(NULL, it.len)
                self._copy_out(it, PyBytes_AS_STRING(out))
                ioq_release(&self.r)
                ioq_kick_peer(&self.r)
                return out
            ioq_release(&self.r)

    def get_batch(self, out, lens, timeout=None):
        """Consumer: copy up to len(out) messages into the rows of a writable
        C-contiguous 2-D uint8 buffer and their lengths into `lens` (uint32).
        Waits while the ring is empty; returns the count (0 on timeout).  A
        message longer than a row stays in the ring and raises ValueError if
        it is the first."""
        self.usable(IOQ_ROLE_CONSUMER)
        cdef Py_buffer b, lb
        cdef uint32_t rows, width, k, i, got = 0
        cdef ioq_item_t *it
        PyObject_GetBuffer(out, &b, PyBUF_ND | PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
        try:
            PyObject_GetBuffer(lens, &lb, PyBUF_ND | PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE)
            try:
                if b.ndim != 2 or b.itemsize != 1:
                    raise ValueError("out must be a writable C-contiguous 2-D buffer of bytes")
                rows = <uint32_t>b.shape[0]
                width = <uint32_t>b.shape[1]
                if lb.itemsize != 4 or lb.len // 4 < rows:
                    raise ValueError("lens must be a writable uint32 array with one entry per row")
                if rows == 0:
                    return 0
                k = self._pop_some(rows, timeout)
                for i in range(k):
                    it = &self.items[i]
                    if it.status != IOQ_OK:
                        continue
                    if it.len > width:
                        # Give back this item and everything after it.
                        ioq_unpop(&self.r, it, k - i)
                        if got == 0 and i == 0:
                            raise ValueError(f"message of {it.len} bytes does not fit rows of {width}")
                        break
                    (<uint32_t *>lb.buf)[got] = self._copy_out(it, <char *>b.buf + <size_t>got * width)
                    got += 1
                ioq_release(&self.r)
                ioq_kick_peer(&self.r)
                return got
            finally:
                PyBuffer_Release(&lb)
        finally:
            PyBuffer_Release(&b)

    def stats(self):
        """Counters of this end (private to this process)."""
        s = {
            "role": "producer" if self.role == 0 else "consumer",
            "ops": self.r.ops,
            "ring_full": self.r.full,
            "bad_index": self.r.bad_index,
            "broken": bool(self.r.broken),
            "kicks_sent": self.r.sig.kicks_sent,
            "kicks_suppressed": self.r.sig.kicks_suppressed,
            "kicks_busy": self.r.sig.kicks_busy,
            "kicks_failed": self.r.sig.kicks_failed,
            "wakeups": self.r.sig.wakeups,
            "spurious_wakeups": self.r.sig.spurious,
            "poll_hits": self.r.sig.poll_hits,
        }
        for i in range(1, IOQ_NREASONS):
            s[BAD_REASONS[i]] = self.r.bad[i]
        s["bad_total"] = sum(self.r.bad[i] for i in range(1, IOQ_NREASONS))
        return s


_set_ring_factory(Ring)
