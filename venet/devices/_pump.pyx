# cython: language_level=3, boundscheck=False, wraparound=False
"""The frame pump between a tap fd and two ioq rings, GIL released.

One loop serves both ends of venet:
  backend (venet bridge): in = TX ring (frontend's frames -> tap),
                          out = RX ring (tap -> frontend)
  frontend (venet attach): in = RX ring (-> its own tap),
                           out = TX ring (its tap -> backend)

Frames read from the tap go straight into the out ring's paired buffers in
shared memory; frames popped from the in ring are written to the tap from
shared memory (writev for SG chains).  Work is batched under a budget; the
loop sleeps in epoll only after arming both signals and re-checking (no
lost wake-ups), optionally after a bounded busy-poll.
"""
import os
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EAGAIN, EINTR
from posix.unistd cimport read, write
from posix.uio cimport iovec, writev
from shmsignal.includes.atomics cimport venet_now_ns, venet_cpu_relax
from shmsignal.includes.osdefs cimport *
from shmsignal.shmsig cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring
from venet.abi cimport VENET_MIN_FRAME

cdef enum:
    MAX_BUDGET = 256
    SG_SCRATCH = 512
    EV_IN = 1
    EV_OUT = 2
    EV_TAP = 3
    EV_STOP = 4
    # Frame flags the pump does not yet know how to honour (offloads are
    # negotiated off until issue 5): such frames are dropped and counted.
    UNSUPPORTED_FLAGS = 0xffff0000
    MIN_POLL_NS = 20_000        # the shortest adaptive poll window


cdef struct pump_stats_t:
    uint64_t to_tap_frames
    uint64_t to_tap_bytes
    uint64_t from_tap_frames
    uint64_t from_tap_bytes
    uint64_t drop_bad_desc         # refused by ioq validation (see ring stats)
    uint64_t drop_short            # shorter than an Ethernet header
    uint64_t drop_offload          # metadata flags not negotiated
    uint64_t drop_tap_write        # the kernel refused the frame
    uint64_t out_ring_full         # tap reads deferred: frontend not keeping up
    uint64_t tap_read_errors
    uint64_t wakeups
    uint64_t busy_polls


cdef class Pump:
    cdef Ring inr
    cdef Ring outr
    cdef int tap_fd
    cdef int epfd
    cdef int stop_fd
    cdef uint64_t pair_off
    cdef uint32_t buf_size
    cdef uint32_t budget
    cdef int64_t poll_ns
    cdef bint tap_armed
    cdef pump_stats_t st
    cdef readonly bint running
    cdef ioq_item_t items[256]
    cdef ioq_sg_t sg[512]
    cdef iovec iov[256]

    def __cinit__(self, Ring inr not None, Ring outr not None, int tap_fd, *, poll_us=0,
                  int budget=64):
        if inr.role != 1 or outr.role != 0:
            raise ValueError("the pump consumes `inr` and produces on `outr`")
        if not 1 <= budget <= MAX_BUDGET:
            raise ValueError(f"budget must be 1..{MAX_BUDGET}")
        pb = outr.region.paired_base(outr.index)
        if pb is None:
            raise ValueError("the out ring has no paired buffers")
        self.inr = inr
        self.outr = outr
        self.tap_fd = tap_fd
        self.pair_off = outr.region.buffer_offset(pb)
        self.buf_size = outr.region.buf_size
        self.budget = budget
        self.poll_ns = <int64_t>(poll_us * 1000)
        self.epfd = -1
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        # The kick eventfds are edge-triggered: every write by the peer is
        # an edge, so the pump never needs to read them to re-arm (one
        # syscall less per wake-up).  The peer kicks again only after we
        # clear `pending`, which we do for each edge.
        self._add(inr.r.sig.wait_fd, EV_IN, EPOLLET)
        self._add(outr.r.sig.wait_fd, EV_OUT, EPOLLET)
        self._add(self.stop_fd, EV_STOP)
        self._add(tap_fd, EV_TAP)
        self.tap_armed = True

    cdef _add(self, int fd, uint64_t tag, uint32_t extra=0):
        cdef epoll_event ev
        ev.events = EPOLLIN | extra
        ev.data.u64 = tag
        if fd >= 0 and epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, f"epoll_ctl add fd {fd}")

    cdef void _arm_tap(self, bint on) noexcept nogil:
        cdef epoll_event ev
        if on == self.tap_armed:
            return
        ev.events = EPOLLIN if on else 0
        ev.data.u64 = EV_TAP
        epoll_ctl(self.epfd, EPOLL_CTL_MOD, self.tap_fd, &ev)
        self.tap_armed = on

    def __dealloc__(self):
        if self.epfd >= 0:
            os.close(self.epfd)
        if self.stop_fd >= 0:
            os.close(self.stop_fd)

    def stop(self):
        """Ask run() to return (safe from any thread)."""
        os.eventfd_write(self.stop_fd, 1)

    cdef uint32_t _ring_to_tap(self) noexcept nogil:
        cdef ioq_ring_t *r = &self.inr.r
        cdef uint32_t k, i, j, used
        cdef ioq_item_t *it
        cdef ssize_t w
        k = ioq_pop(r, self.items, self.budget, self.sg, SG_SCRATCH, &used)
        for i in range(k):
            it = &self.items[i]
            if it.status != IOQ_OK:
                self.st.drop_bad_desc += 1
                continue
            if it.len < VENET_MIN_FRAME:
                self.st.drop_short += 1
                continue
            if it.flags & UNSUPPORTED_FLAGS:
                self.st.drop_offload += 1
                continue
            if it.sg_count == 0:
                w = write(self.tap_fd, r.base + it.offset, it.len)
            else:
                for j in range(it.sg_count):
                    self.iov[j].iov_base = r.base + self.sg[it.sg_first + j].offset
                    self.iov[j].iov_len = self.sg[it.sg_first + j].len
                w = writev(self.tap_fd, self.iov, it.sg_count)
            if w == <ssize_t>it.len:
                self.st.to_tap_frames += 1
                self.st.to_tap_bytes += it.len
            else:
                self.st.drop_tap_write += 1
        if k:
            ioq_release(r)
            shmsig_inject(&r.sig)
        return k

    cdef uint32_t _tap_to_ring(self, bint *empty, bint *full) noexcept nogil:
        """Read up to budget frames into the out ring; returns how many.
        Sets *empty when the tap said EAGAIN, *full when the ring had no
        free slot."""
        cdef ioq_ring_t *r = &self.outr.r
        cdef uint32_t n = self.budget, got = 0
        cdef ioq_desc_t *d = ioq_reserve(r, &n)
        cdef uint64_t off
        cdef ssize_t len_
        empty[0] = False
        full[0] = n == 0
        if n == 0:
            self.st.out_ring_full += 1
            return 0
        while got < n:
            off = self.pair_off + <uint64_t>((r.head + got) & r.mask) * self.buf_size
            len_ = read(self.tap_fd, r.base + off, self.buf_size)
            if len_ <= 0:
                if len_ < 0 and errno != EAGAIN and errno != EINTR:
                    self.st.tap_read_errors += 1
                empty[0] = True
                break
            d[got].cookie = r.head + got
            d[got].offset = off
            d[got].len = <uint32_t>len_
            d[got].flags = 0
            d[got].user = 0
            self.st.from_tap_bytes += <uint64_t>len_
            got += 1
        if got:
            ioq_commit(r, got)
            self.st.from_tap_frames += got
            shmsig_inject(&r.sig)
        return got

    def run(self, double timeout=-1):
        """Pump until stop() (or `timeout` seconds, for tests).  Returns
        'stopped', 'timeout' or 'broken' (the peer corrupted a ring index)."""
        cdef epoll_event evs[8]
        cdef int n
        cdef uint32_t did
        cdef uint64_t deadline = 0, pdead
        cdef bint stop = False, out_full = False, recent = False
        # The tap is read only while it may hold frames: until a read says
        # EAGAIN, then again once epoll reports it readable.  (Reading it
        # on every turn cost two EAGAIN reads per wake-up.)
        cdef bint tap_ready = True, tap_empty
        cdef int64_t window = self.poll_ns
        cdef int64_t floor_ns = MIN_POLL_NS if MIN_POLL_NS < self.poll_ns else self.poll_ns
        cdef int ms
        if timeout >= 0:
            deadline = venet_now_ns() + <uint64_t>(timeout * 1e9)
        self.running = True
        with nogil:
            while not stop:
                # Consume the 'work pending' marks before looking for work,
                # so that work published after this point marks us again.
                shmsig_take(&self.inr.r.sig)
                if shmsig_take(&self.outr.r.sig):
                    out_full = False
                did = self._ring_to_tap()
                if tap_ready:
                    did += self._tap_to_ring(&tap_empty, &out_full)
                    if tap_empty:
                        tap_ready = False
                # While the out ring is full, the tap's readiness must not
                # wake us: frames wait in the tap queue until space returns.
                self._arm_tap(not out_full)
                if self.inr.r.broken or self.outr.r.broken:
                    break
                if did:
                    recent = True
                    continue
                if self.poll_ns > 0 and recent:
                    # Only right after work: a wake-up that found nothing
                    # (the 1 s epoll timeout, a spurious kick) must not buy
                    # a poll window, or an idle pump would spin 2% a second.
                    recent = False
                    # Bounded busy-poll: the ring's next slot, and the fds
                    # (tap, kicks, stop) through a non-blocking epoll.
                    pdead = venet_now_ns() + <uint64_t>window
                    n = 0
                    while venet_now_ns() < pdead:
                        if ioq_peek(&self.inr.r):
                            break
                        n = epoll_wait(self.epfd, evs, 8, 0)
                        if n > 0:
                            break
                        # Yield, not PAUSE: on 2 vCPUs the task we wait for
                        # (the other pump, the app) is often queued behind
                        # us on this CPU.  Spinning with PAUSE held it off
                        # for the whole window: at --poll-us 1000, ping rtt
                        # 1930 us; yielding, 105 us (no poll: 216 us).
                        sched_yield()
                    if n > 0:
                        self._drain_events(evs, n, &stop, &out_full, &tap_ready)
                    if n > 0 or ioq_peek(&self.inr.r):
                        # Adaptive: a window that caught work doubles (up to
                        # --poll-us), one that expired empty halves, so
                        # sporadic frames (neighbour discovery on an idle
                        # link) stop buying full windows.
                        self.st.busy_polls += 1
                        window = window * 2 if window * 2 < self.poll_ns else self.poll_ns
                        continue
                    window = window // 2 if window // 2 > floor_ns else floor_ns
                # Arm, re-check, sleep.
                if shmsig_enable(&self.inr.r.sig):
                    shmsig_disable(&self.inr.r.sig)
                    continue
                if out_full and shmsig_enable(&self.outr.r.sig):
                    shmsig_disable(&self.outr.r.sig)
                    out_full = False
                    continue
                ms = 1000
                if deadline:
                    if venet_now_ns() >= deadline:
                        break
                    ms = <int>((deadline - venet_now_ns()) // 1000000) + 1
                    if ms > 1000:
                        ms = 1000
                n = epoll_wait(self.epfd, evs, 8, ms)
                shmsig_disable(&self.inr.r.sig)
                shmsig_disable(&self.outr.r.sig)
                if n > 0:
                    self.st.wakeups += 1
                    self._drain_events(evs, n, &stop, &out_full, &tap_ready)
        self.running = False
        if self.inr.r.broken or self.outr.r.broken:
            return "broken"
        return "stopped" if stop else "timeout"

    cdef void _drain_events(self, epoll_event *evs, int n, bint *stop, bint *out_full,
                            bint *tap_ready) noexcept nogil:
        cdef int i
        cdef uint64_t cnt, tag
        for i in range(n):
            tag = evs[i].data.u64
            if tag == EV_IN:
                shmsig_allow_kick(&self.inr.r.sig)
            elif tag == EV_OUT:
                shmsig_allow_kick(&self.outr.r.sig)
                out_full[0] = False
            elif tag == EV_TAP:
                tap_ready[0] = True
            elif tag == EV_STOP:
                read(self.stop_fd, &cnt, 8)
                stop[0] = True

    def stats(self):
        s = dict(self.st)
        s["in_ring"] = self.inr.stats()
        s["out_ring"] = self.outr.stats()
        return s
