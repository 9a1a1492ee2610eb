# cython: language_level=3, boundscheck=False, wraparound=False
"""The frame pump between two ioq rings and a port (a tap fd), GIL released.

One loop serves both ends of venet:
  backend (venet bridge): in = TX ring (frontend's frames -> tap),
                          out = RX ring (tap -> frontend)
  frontend (venet attach): in = RX ring (-> its own tap),
                           out = TX ring (its tap -> backend)

The pump has a ring side (this module: the chain codec of venet/chain.pxd,
TX completions, the loop) and a port side (venet/devices/port.pxd: read or
write one frame behind its vnet header; the tap's is
venet/devices/tap_port.pxd).  Frames read from the port go straight into
the out ring's paired buffers in shared memory; frames popped from the in
ring are written to the port from shared memory, gathered.  Work is
batched under a budget.

The pump is a vbus task (vbus/worker.pxd): one call of its run callback is
one turn (in ring -> port, port -> in ring, then either MORE, or arm both
signals and re-check: IDLE, no lost wake-ups; or POLL, to be busy-polled
first).  The bridge's pumps share the workers of a vbus Pool; run() serves
one pump alone on a private worker in the calling thread (venet attach),
with the same turn.

Every frame crosses the port behind a 16-byte vnet header (for a tap:
IFF_VNET_HDR, TUNSETVNETHDRSZ 16).  A read lands it in the first 16 bytes
of the slot's buffer, where it is rewritten in place as the venet offload
record (or skipped when the frame has no offload); a write takes it from
the pump's own memory, built from a private, validated copy of the peer's
record.  With GSO negotiated a read spans as many consecutive slots as a
64 KiB frame needs (one readv, since consecutive paired buffers are
adjacent in memory) and is published as a VENET_F_MORE chain, the whole
frame at once.

Doorbells: the pump never reads or writes a doorbell in a way that could
block.  It rings with ioq_kick_peer (a socket doorbell is rung with a
per-call non-blocking send); it watches its wait fds edge-triggered, so a
peer's eventfd is never read, and a socket doorbell (its own end of a
socketpair, on the frontend side) is drained with recv(MSG_DONTWAIT)
(ioq_kicked).
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EAGAIN, EINTR
from posix.uio cimport iovec
from libc.string cimport memcpy, memset
from shmsignal.includes.atomics cimport shm_now_ns
from shmsignal.includes.osdefs cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring
from venet.abi cimport *
from venet.meta cimport *
from venet.chain cimport *
from venet.devices.events cimport venet_post_txc
from venet.devices.port cimport venet_port_t
from venet.devices.tap_port cimport tap_port_init
from venet.devices.null_port cimport null_new, null_port_init
from libc.stdlib cimport free
from vbus.worker cimport *
from vbus._worker cimport Task
from venet.devices.capture cimport venet_cap_tee_init, venet_cap_port
from venet.devices._capture cimport CaptureSet

cdef extern from "<sched.h>" nogil:
    int sched_setaffinity(int pid, size_t cpusetsize, const cpu_set_t *mask)
    int sched_getaffinity(int pid, size_t cpusetsize, cpu_set_t *mask)
    void CPU_ZERO(cpu_set_t *s)
    void CPU_SET(int cpu, cpu_set_t *s)

cdef enum:
    MAX_BUDGET = 256
    # Bulk co-location (bulk_cpu): looked at every BULK_TICK_NS of work; a
    # tick with BULK_MIN_GSO GSO frames (about 1 Gbit/s) is bulk; the pump
    # lets go of the CPU BULK_HOLD_NS after the last bulk tick.
    BULK_TICK_NS = 10_000_000
    BULK_MIN_GSO = 20
    BULK_HOLD_NS = 200_000_000
    # The pump's fds, as event bits of its turn.
    EV_IN = 1
    EV_OUT = 2
    EV_PORT = 4
    # Frame flags the pump honours (TXC only when negotiated); any other
    # bit of 16..31 costs the frame, counted in drop_offload.
    KNOWN_FLAGS = VENET_F_NEEDS_CSUM | VENET_F_GSO | VENET_F_ECN | VENET_F_MORE


cdef int _pump_run(vbus_task_t *t, uint32_t events) noexcept nogil:
    return (<Pump>t.ctx)._turn(events)


cdef bint _pump_peek(vbus_task_t *t) noexcept nogil:
    return ioq_peek_at(&(<Pump>t.ctx).inr.r, (<Pump>t.ctx).hold)


cdef class Pump(Task):

    def __cinit__(self, *args, **kwargs):
        self.port_i = -1

    def __dealloc__(self):
        free(self.nullp)

    def __init__(self, Ring inr not None, Ring outr not None, int tap_fd, *, poll_us=0,
                 int budget=64, int mtu=1500, unsigned int caps=0, Ring txc_evq=None,
                 int bulk_cpu=-1, CaptureSet capture=None, bytes null_frame=None):
        """caps: the offload bits (venet.abi CAP_CSUM, CAP_TSO4, ...) both
        sides negotiated; the tap's TUNSETOFFLOAD must match them.
        txc_evq: the device's event queue (producer end), when TX
        completions were negotiated: while run() runs the pump is its only
        producer, and frames flagged VENET_F_TXC get an EV_TXC event.
        bulk_cpu: while the pump moves bulk traffic (GSO frames at about
        1 Gbit/s or more) its thread runs on this CPU only, and 200 ms
        after the bulk stops it gets its CPUs back.  Give a device's two
        pumps (bridge and attach) the same CPU: their kicks to each other
        then wake a thread on the same CPU, not across CPUs (-1: never).
        capture: the device's capture taps (venet.devices._capture), which
        see every frame the port takes or gives while one is attached.
        null_frame: the port is venet-null's (venet/devices/null_port.pxd)
        and tap_fd its eventfd: frames sent are dropped, and a non-empty
        null_frame is given without end (None: the port is tap_fd)."""
        if self.task.run != NULL:
            raise RuntimeError("a Pump is initialised once")
        if inr.role != 1 or outr.role != 0:
            raise ValueError("the pump consumes `inr` and produces on `outr`")
        if not 1 <= budget <= MAX_BUDGET:
            raise ValueError(f"budget must be 1..{MAX_BUDGET}")
        if not VENET_MIN_MTU <= mtu <= VENET_MAX_MTU:
            raise ValueError(f"mtu must be {VENET_MIN_MTU}..{VENET_MAX_MTU}")
        if outr.r.pair_off == 0:
            raise ValueError("the out ring has no paired buffers")
        cdef uint32_t bs = outr.r.buf_size
        self.inr = inr
        self.outr = outr
        tap_port_init(&self.port, tap_fd)
        if null_frame is not None:
            if 0 < len(null_frame) < VENET_MIN_FRAME or len(null_frame) > mtu + VENET_ETH_HLEN:
                # A frame the pump would refuse would be read again at once.
                raise ValueError(f"a null port's frame is {VENET_MIN_FRAME}..{mtu + VENET_ETH_HLEN} bytes")
            self.nullp = null_new(<const uint8_t *><const char *>null_frame, len(null_frame))
            if self.nullp == NULL:
                raise MemoryError()
            null_port_init(&self.port, tap_fd, self.nullp)
        self.capset = capture
        venet_cap_tee_init(&self.tee, &self.port, NULL if capture is None else capture.set)
        self.io = &self.port
        self.max_plain = mtu + VENET_ETH_HLEN
        if bs < VENET_META_SIZE + VENET_ETH_HLEN:
            raise ValueError(f"buffers of {bs} bytes cannot hold a vnet header "
                             f"and an Ethernet header")
        self.caps = caps
        cdef uint32_t read_max = VENET_META_SIZE + self.max_plain
        if caps & (VENET_CAP_TSO4 | VENET_CAP_TSO6 | VENET_CAP_USO | VENET_CAP_UFO):
            read_max = VENET_META_SIZE + VENET_MAX_GSO_FRAME
        self.read_slots = (read_max + bs - 1) // bs
        if self.read_slots > outr.r.count // 2 or self.read_slots > VENET_MAX_CHAIN:
            raise ValueError(f"a ring of {outr.r.count} slots of {bs} bytes is too "
                             f"small for frames of {read_max} bytes")
        self.budget = budget
        self.pop_want = budget if budget > VENET_MAX_CHAIN else VENET_MAX_CHAIN
        self.known_flags = KNOWN_FLAGS
        self.bulk_cpu = bulk_cpu
        if txc_evq is not None:
            if txc_evq.role != 0:
                raise ValueError("txc_evq must be the producer end of the event queue")
            if txc_evq.r.pair_off == 0 or txc_evq.r.buf_size < sizeof(venet_event_t):
                raise ValueError("the event queue needs paired buffers of an event's size")
            self.evq = txc_evq
            self.known_flags |= VENET_F_TXC
        self.poll_ns = <int64_t>(poll_us * 1000)
        self.w.port_ready = True
        # The doorbells are edge-triggered: every kick by the peer is an
        # edge, so the pump never reads an eventfd to re-arm (one syscall
        # less per wake-up, and a peer's eventfd, whose flags the peer
        # controls, is never read at all); ioq_kicked drains a socket doorbell.
        # The peer kicks again only after we clear `pending`, which
        # ioq_kicked does for each edge.
        self._add(ioq_wait_fd(&inr.r), EV_IN, True)
        self._add(ioq_wait_fd(&outr.r), EV_OUT, True)
        # The port is level-triggered: its frames wait in the kernel while
        # the out ring is full, and it is taken out of the interest set then.
        self.port_i = self._add(self.port.fd, EV_PORT, False)
        self.task.poll_ns = self.poll_ns
        self.task.peek = _pump_peek
        self.task.run = _pump_run           # last: marks the pump initialised

    cdef int _add(self, int fd, uint32_t bit, bint edge):
        if fd < 0:
            return -1
        return vbus_task_fd(&self.task, fd, bit, edge)

    @property
    def broken(self):
        """The peer corrupted a ring index: the pump ended for good."""
        return bool(self.inr.r.broken or self.outr.r.broken)

    # ---- ring side ---------------------------------------------------------

    cdef uint32_t _ring_to_port(self) noexcept nogil:
        """Write the in ring's whole frames to the port, each chain peeked
        at, then popped exactly; returns descriptors used."""
        cdef ioq_ring_t *r = &self.inr.r
        cdef uint32_t done = 0, n, k, seen
        self.hold = 0
        self.io = venet_cap_port(&self.tee)
        while done < self.pop_want:
            n = venet_chain_peek(r, &seen)
            if seen == 0 or (n == 0 and not self.discard):
                self.hold = seen        # the published start of a chain
                break
            k = venet_chain_pop(r, self.items, seen, self.sg, SG_SCRATCH)
            if k == 0:
                break                   # the peer took its slots back
            done += k
            if self.discard:
                # The tail of a chain refused as too long, to its end.
                self.discard = n == 0 or n == VENET_CHAIN_TOO_LONG
            elif n == VENET_CHAIN_TOO_LONG:
                self.st.drop_chain += 1
                self._txc(VENET_TXC_BAD_CHAIN)
                self.discard = True
            else:
                self._write_frame(n, k)
        if done:
            ioq_release(r)
            ioq_kick_peer(r)
        if self.txc_posted:
            self.txc_posted = 0
            ioq_kick_peer(&self.evq.r)
        return done

    cdef inline void _txc(self, uint32_t status) noexcept nogil:
        """The frame in items[] is done with (written, or refused for
        `status`): its EV_TXC event, if it asked for one."""
        if not (self.known_flags & VENET_F_TXC and self.items[0].flags & VENET_F_TXC):
            return
        if venet_post_txc(&self.evq.r, self.items[0].cookie, status):
            self.st.txc_events += 1
            self.txc_posted += 1
        else:
            self.st.txc_lost += 1

    cdef void _write_frame(self, uint32_t n, uint32_t k) noexcept nogil:
        """Write one popped frame, items[0:k] of a chain peeked n long, to
        the port behind its vnet header, or refuse it (counted)."""
        cdef uint32_t st, niov, flags
        cdef uint64_t total
        cdef ssize_t w
        st = venet_chain_check(self.items, k, n)
        if st != VENET_CHAIN_OK:
            if st == VENET_CHAIN_BAD_DESC:
                self.st.drop_bad_desc += 1
                self._txc(VENET_TXC_BAD_DESC)
            else:
                self.st.drop_chain += 1
                self._txc(VENET_TXC_BAD_CHAIN)
            return
        niov = venet_chain_iov(self.inr.r.base, self.items, n, self.sg, &self.iov[1], &total)
        flags = venet_chain_flags(self.items)
        st = self._vnet_header(flags, &total)
        if st != VENET_TXC_SENT:
            self._txc(st)
            return
        self.iov[0].iov_base = self.vhdr
        self.iov[0].iov_len = VENET_META_SIZE
        w = self.io.send(self.io, self.iov, niov + 1)
        if w != <ssize_t>(total + VENET_META_SIZE):
            self.st.drop_tap_write += 1
            self._txc(VENET_TXC_TAP_ERROR)
            return
        self.st.to_tap_frames += 1
        self.st.to_tap_bytes += total
        if flags & VENET_F_GSO:
            self.st.to_tap_gso += 1
        elif flags & VENET_F_NEEDS_CSUM:
            self.st.to_tap_csum += 1
        self._txc(VENET_TXC_SENT)

    cdef uint32_t _vnet_header(self, uint32_t flags, uint64_t *total) noexcept nogil:
        """Build the vnet header of a checked frame (pieces in iov[1:],
        *total bytes) into vhdr, taking its offload record out of the
        frame.  VENET_TXC_SENT, or the frame's refusal (counted)."""
        cdef venet_meta_t meta
        cdef uint32_t st
        if flags & ~self.known_flags:
            self.st.drop_offload += 1
            return VENET_TXC_BAD_FLAGS
        memset(self.vhdr, 0, VENET_META_SIZE)
        memset(&meta, 0, sizeof(meta))
        if flags & VENET_F_META and not venet_chain_record(&self.iov[1], total, &meta):
            # No whole record in the first buffer: too short a frame to
            # carry one, or a record split across buffers.
            if total[0] < VENET_META_SIZE + VENET_MIN_FRAME:
                self.st.drop_short += 1
                return VENET_TXC_SHORT
            self.st.drop_meta[META_BAD_RECORD] += 1
            return VENET_TXC_META_BASE + META_BAD_RECORD
        if total[0] < VENET_MIN_FRAME:
            self.st.drop_short += 1
            return VENET_TXC_SHORT
        if total[0] > VENET_MAX_GSO_FRAME:
            self.st.drop_meta[META_TOO_LONG] += 1
            return VENET_TXC_META_TOO_LONG
        st = venet_meta_check(&meta, flags, <uint32_t>total[0], self.caps, self.max_plain)
        if st != META_OK:
            self.st.drop_meta[st] += 1
            return VENET_TXC_META_BASE + st
        if flags & VENET_F_META:
            venet_meta_to_virtio(&meta, flags, <virtio_net_hdr_t *>self.vhdr)
        return VENET_TXC_SENT

    # ---- port side ---------------------------------------------------------

    cdef uint32_t _port_to_ring(self, pump_wake_t *w) noexcept nogil:
        """Read up to budget frames from the port into the out ring; returns
        how many.  Clears w.port_ready when the port said EAGAIN, sets
        w.out_full when the ring had no room for a frame of the largest
        size we may be given."""
        cdef ioq_ring_t *r = &self.outr.r
        cdef uint32_t free_ = ioq_free(r, self.read_slots)
        cdef uint32_t used = 0, frames = 0, reads = 0
        cdef int got
        self.io = venet_cap_port(&self.tee)
        if free_ < self.read_slots:
            w.out_full = True
            self.st.out_ring_full += 1
            return 0
        # Bounded in reads, not frames: refused frames cost budget too.
        while reads < self.budget and free_ - used >= self.read_slots:
            reads += 1
            got = self._read_frame(used)
            if got < 0:
                w.port_ready = False
                break
            if got == 0:
                continue
            used += <uint32_t>got
            frames += 1
            if frames == 1:
                # Publish the first frame and kick now, not after the read
                # that finds the port empty: a sleeping peer starts waking
                # while we read on.  Under load the peer is awake and the
                # kick is suppressed anyway.
                ioq_commit(r, used)
                ioq_kick_peer(r)
                free_ -= used
                used = 0
        if used:
            ioq_commit(r, used)
            ioq_kick_peer(r)
        self.st.from_tap_frames += frames
        return frames

    cdef int _read_frame(self, uint32_t at) noexcept nogil:
        """Read one frame from the port into the paired buffers of the out
        ring's free slots from `at` on, and describe it there (not yet
        published).  Returns the slots it takes, 0 when it was refused
        (counted), -1 when the port had nothing to read."""
        cdef ioq_ring_t *r = &self.outr.r
        cdef uint32_t s = r.head + at, mflags
        cdef uint64_t cap = <uint64_t>self.read_slots * r.buf_size
        cdef uint64_t to_end = <uint64_t>(r.count - (s & r.mask)) * r.buf_size
        cdef char *buf = r.base + ioq_pair(r, s)
        cdef int niov = 1
        cdef ssize_t len_
        # Consecutive slots' buffers are adjacent: at most two pieces,
        # split where the ring wraps.
        self.iov[0].iov_base = buf
        self.iov[0].iov_len = cap if cap < to_end else to_end
        if cap > to_end:
            self.iov[1].iov_base = r.base + ioq_pair(r, 0)
            self.iov[1].iov_len = cap - to_end
            niov = 2
        len_ = self.io.recv(self.io, self.iov, niov)
        if len_ <= 0:
            if len_ < 0 and errno != EAGAIN and errno != EINTR:
                self.st.tap_read_errors += 1
            return -1
        if <uint64_t>len_ > cap:
            # tun reports the whole frame's length after copying what
            # fitted: the frame is cut, not worth forwarding.
            self.st.drop_rx_truncated += 1
            return 0
        if len_ < VENET_META_SIZE + VENET_ETH_HLEN:
            self.st.drop_short += 1
            return 0
        if not self._offload_record(buf, <uint32_t>len_, &mflags):
            return 0
        self.st.from_tap_bytes += <uint64_t>(len_ - VENET_META_SIZE)
        # Without offloads the frame is described past its vnet header.
        return <int>venet_chain_fill(r, at, <uint64_t>len_, mflags, 0 if mflags else VENET_META_SIZE)

    cdef bint _offload_record(self, char *buf, uint32_t length, uint32_t *mflags) noexcept nogil:
        """The vnet header leading a read frame of `length` bytes at buf,
        translated in place into venet's offload record (*mflags: its
        VENET_F_* bits, 0 for a plain frame).  False when the peer did not
        negotiate its offloads (counted)."""
        cdef virtio_net_hdr_buf_t hb
        cdef venet_meta_t meta
        cdef uint32_t st
        # Read once into private memory, all 16 bytes in one copy: a copy of
        # the 10-byte struct is stored in pieces that a wider load of its
        # fields then spans, and such a load waits for every older store to
        # drain, among them the frame's stores into shared memory.
        memcpy(hb.b, buf, 16)
        st = venet_meta_from_virtio(&hb.h, &meta, mflags)
        if st == META_OK:
            st = venet_meta_check(&meta, mflags[0], length - VENET_META_SIZE, self.caps, 0xffffffff)
        if st != META_OK:
            self.st.drop_rx_meta += 1
            return False
        if mflags[0]:
            memcpy(buf, &meta, VENET_META_SIZE)
            if mflags[0] & VENET_F_GSO:
                self.st.from_tap_gso += 1
            else:
                self.st.from_tap_csum += 1
        return True

    # ---- the loop ----------------------------------------------------------

    cdef void _bulk_check(self) noexcept nogil:
        """Co-locate with the peer pump while bulk traffic flows: a wake-up
        on another vCPU costs far more than on the same one, and at 64 KiB a
        frame the two pumps kick each other for nearly every frame.  Only
        bulk (GSO) traffic moves the thread: a conversation of small frames
        keeps the thread's own CPUs (its home under --cpu auto), which gives
        better round trips (docs/architecture.md, "Where the pumps run")."""
        cdef uint64_t now = shm_now_ns()
        cdef uint64_t gso = self.st.to_tap_gso + self.st.from_tap_gso
        cdef cpu_set_t one
        if now - self.bulk_t0 < BULK_TICK_NS:
            return
        if gso - self.bulk_gso0 >= BULK_MIN_GSO:
            self.bulk_last = now
            if not self.bulk_pinned:
                sched_getaffinity(0, sizeof(cpu_set_t), &self.saved_mask)
                CPU_ZERO(&one)
                CPU_SET(self.bulk_cpu, &one)
                if sched_setaffinity(0, sizeof(cpu_set_t), &one) == 0:
                    self.bulk_pinned = True
                    self.st.bulk_pins += 1
        elif self.bulk_pinned and now - self.bulk_last > BULK_HOLD_NS:
            sched_setaffinity(0, sizeof(cpu_set_t), &self.saved_mask)
            self.bulk_pinned = False
        self.bulk_t0 = now
        self.bulk_gso0 = gso

    cdef int _turn(self, uint32_t events) noexcept nogil:
        """One turn (the task's run callback): ring -> port, port -> ring,
        then MORE (work done: again after the worker's other tasks), POLL
        (none now, but some lately and a poll window asked for: not armed,
        the worker busy-polls first), IDLE (both signals armed and
        re-checked: sleep on the fds) or DONE (a ring index is broken)."""
        cdef uint32_t did
        cdef pump_wake_t *w = &self.w
        # The doorbells are edge-triggered: each edge is one kick, taken
        # here (a socket doorbell is drained, `pending` cleared).
        if events & EV_IN:
            ioq_kicked(&self.inr.r)
        if events & EV_OUT:
            ioq_kicked(&self.outr.r)
            w.out_full = False
        if events & EV_PORT:
            w.port_ready = True
        if events & VBUS_EV_POLLED:
            self.st.busy_polls += 1
        elif events & VBUS_EV_FDS:
            self.st.wakeups += 1
        if self.armed:
            ioq_disarm(&self.inr.r)
            ioq_disarm(&self.outr.r)
            self.armed = False
        # Consume the 'work pending' marks before looking for work, so that
        # work published after this point marks us again.
        ioq_take(&self.inr.r)
        if ioq_take(&self.outr.r):
            w.out_full = False
        did = self._ring_to_port()
        # The port is read only while it may hold frames: until a read says
        # EAGAIN, then again once epoll reports it readable (reading it on
        # every turn would cost two EAGAIN reads per wake-up).
        if w.port_ready:
            did += self._port_to_ring(w)
        # While the out ring is full, the port's readiness must not wake
        # us: frames wait in the port until space returns.
        if self.port_i >= 0:
            vbus_task_arm_fd(&self.task, self.port_i, not w.out_full)
        if self.inr.r.broken or self.outr.r.broken:
            return VBUS_TASK_DONE
        if self.alone and self.bulk_cpu >= 0:
            self._bulk_check()
        if did:
            self.recent = True
            return VBUS_TASK_MORE
        if self.poll_ns > 0 and self.recent and not events & VBUS_EV_ARM:
            # Only right after work: a wake-up that found nothing (a
            # spurious kick) must not buy a poll window, or an idle pump
            # would spin.
            self.recent = False
            return VBUS_TASK_POLL
        self.recent = False
        if ioq_arm(&self.inr.r):
            ioq_disarm(&self.inr.r)
            return VBUS_TASK_MORE
        if w.out_full and ioq_arm(&self.outr.r):
            ioq_disarm(&self.outr.r)
            ioq_disarm(&self.inr.r)
            w.out_full = False
            return VBUS_TASK_MORE
        self.armed = True
        return VBUS_TASK_IDLE

    def run(self, double timeout=-1):
        """Pump until stop() (or `timeout` seconds, for tests), alone on a
        private worker in the calling thread, sleeping in epoll with no
        timeout when idle.  Returns 'stopped', 'timeout' or 'broken' (the
        peer corrupted a ring index).  bulk_cpu applies here only: it moves
        the calling thread."""
        if self.running:
            raise RuntimeError("the pump is already being served")
        try:
            result = self.serve_alone(timeout, until_done=True)
        finally:
            # What the turns left behind belongs to this thread's run only.
            if self.armed:
                ioq_disarm(&self.inr.r)
                ioq_disarm(&self.outr.r)
                self.armed = False
            if self.bulk_pinned:
                sched_setaffinity(0, sizeof(cpu_set_t), &self.saved_mask)
                self.bulk_pinned = False
        if self.inr.r.broken or self.outr.r.broken:
            return "broken"
        return result

    def stats(self):
        s = dict(self.st)
        meta = s.pop("drop_meta")
        for i in range(1, VENET_META_NREASONS):
            s["drop_meta_" + venet_meta_reason_names[i].decode()] = meta[i]
        s["in_ring"] = self.inr.stats()
        s["out_ring"] = self.outr.stats()
        return s
