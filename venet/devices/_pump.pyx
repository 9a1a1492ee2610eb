# cython: language_level=3, boundscheck=False, wraparound=False
"""The frame pump between a tap fd and two ioq rings, GIL released.

One loop serves both ends of venet:
  backend (venet bridge): in = TX ring (frontend's frames -> tap),
                          out = RX ring (tap -> frontend)
  frontend (venet attach): in = RX ring (-> its own tap),
                           out = TX ring (its tap -> backend)

Frames read from the tap go straight into the out ring's paired buffers in
shared memory; frames popped from the in ring are written to the tap from
shared memory with writev.  Work is batched under a budget; the loop sleeps
in epoll only after arming both signals and re-checking (no lost
wake-ups), optionally after a bounded busy-poll.

The tap always carries a 16-byte vnet header (IFF_VNET_HDR,
TUNSETVNETHDRSZ 16) in front of each frame.  A read lands it in the first
16 bytes of the slot's buffer, where it is rewritten in place as the venet
offload record (or skipped when the frame has no offload); a write takes it
from the pump's own memory, built from a private, validated copy of the
peer's record.  With GSO negotiated a read spans as many consecutive slots
as a 64 KiB frame needs (one readv, since consecutive paired buffers are
adjacent in memory) and is published as a VENET_F_MORE chain.

Doorbells: the pump never reads or writes a doorbell in a way that could
block.  It rings with shmsig_inject (a socket doorbell is rung with a
per-call non-blocking send); it watches its wait fds edge-triggered, so a
peer's eventfd is never read, and a socket doorbell (its own end of a
socketpair, on the frontend side) is drained with recv(MSG_DONTWAIT).
"""
import os
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EAGAIN, EINTR
from posix.unistd cimport read, write
from posix.uio cimport iovec, readv, writev
from libc.string cimport memcpy, memset
from shmsignal.includes.atomics cimport venet_now_ns, venet_cpu_relax
from shmsignal.includes.osdefs cimport *
from shmsignal.shmsig cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring
from venet.abi cimport *
from venet.meta cimport *

cdef extern from "<sched.h>" nogil:
    ctypedef struct cpu_set_t:
        pass
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
    SG_SCRATCH = 512
    MAX_IOV = 1 + 256           # the vnet header, then a frame's pieces
    EV_IN = 1
    EV_OUT = 2
    EV_TAP = 3
    EV_STOP = 4
    # Frame flags the pump honours (TXC only when negotiated); any other
    # bit of 16..31 costs the frame, counted in drop_offload.
    KNOWN_FLAGS = VENET_F_NEEDS_CSUM | VENET_F_GSO | VENET_F_ECN | VENET_F_MORE
    MIN_POLL_NS = 20_000        # the shortest adaptive poll window


cdef struct pump_stats_t:
    uint64_t to_tap_frames
    uint64_t to_tap_bytes
    uint64_t from_tap_frames
    uint64_t from_tap_bytes
    uint64_t drop_bad_desc         # refused by ioq validation (see ring stats)
    uint64_t drop_short            # shorter than an Ethernet header
    uint64_t drop_offload          # flags this pump does not honour
    uint64_t drop_meta[VENET_META_NREASONS]  # offload record refused, by META_* reason
    uint64_t drop_chain            # a VENET_F_MORE chain too long or malformed
    uint64_t drop_tap_write        # the kernel refused the frame
    uint64_t to_tap_gso            # frames with GSO metadata, each way
    uint64_t from_tap_gso
    uint64_t to_tap_csum           # frames with a partial checksum, each way
    uint64_t from_tap_csum
    uint64_t drop_rx_meta          # tap frames with offloads the peer did not negotiate
    uint64_t drop_rx_truncated     # tap frames longer than the buffers we offered
    uint64_t txc_events            # TX completion events posted
    uint64_t txc_lost              # ...not posted: the event queue was full
    uint64_t bulk_pins             # times the thread moved to bulk_cpu
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
    cdef readonly uint32_t caps     # negotiated offload bits (SG group)
    cdef uint32_t max_plain         # longest frame without GSO: MTU + 14
    cdef uint32_t read_slots        # slots one tap read may fill
    cdef uint32_t pop_want          # descriptors per pop: a whole chain fits
    cdef uint32_t hold              # popped-and-given-back slots of an incomplete chain
    cdef bint discard               # skipping the rest of a refused chain
    cdef uint8_t vhdr[16]           # the vnet header of the frame being written
    cdef Ring evq                   # event queue (producer) while running, for TXC
    cdef uint32_t known_flags       # KNOWN_FLAGS, plus TXC when negotiated
    cdef uint64_t evq_pair_off
    cdef uint32_t evq_buf_size
    cdef uint32_t txc_posted        # events published since the last inject
    cdef int bulk_cpu               # run here while moving bulk traffic (-1: never)
    cdef bint bulk_pinned
    cdef cpu_set_t saved_mask       # the thread's CPUs before it was pinned
    cdef uint64_t bulk_t0           # start of the current tick
    cdef uint64_t bulk_gso0         # GSO frames moved before it
    cdef uint64_t bulk_last         # the last tick that was bulk
    cdef ioq_item_t items[256]
    cdef ioq_sg_t sg[512]
    cdef iovec iov[257]

    def __cinit__(self, *args, **kwargs):
        # First, before any argument is even parsed: __dealloc__ runs after
        # a failed construction too, and closes only fds >= 0.
        self.epfd = -1
        self.stop_fd = -1

    def __init__(self, Ring inr not None, Ring outr not None, int tap_fd, *, poll_us=0,
                 int budget=64, int mtu=1500, unsigned int caps=0, Ring txc_evq=None,
                 int bulk_cpu=-1):
        """caps: the offload bits (venet.abi CAP_CSUM, CAP_TSO4, ...) both
        sides negotiated; the tap's TUNSETOFFLOAD must match them.
        txc_evq: the device's event queue (producer end), when TX
        completions were negotiated: while run() runs the pump is its only
        producer, and frames flagged VENET_F_TXC get an EV_TXC event.
        bulk_cpu: while the pump moves bulk traffic (GSO frames at about
        1 Gbit/s or more) its thread runs on this CPU only, and 200 ms
        after the bulk stops it gets its CPUs back.  Give a device's two
        pumps (bridge and attach) the same CPU: their kicks to each other
        then wake a thread on the same CPU, not across CPUs (-1: never)."""
        if self.epfd >= 0 or self.stop_fd >= 0:
            raise RuntimeError("a Pump is initialised once")
        if inr.role != 1 or outr.role != 0:
            raise ValueError("the pump consumes `inr` and produces on `outr`")
        if not 1 <= budget <= MAX_BUDGET:
            raise ValueError(f"budget must be 1..{MAX_BUDGET}")
        if not VENET_MIN_MTU <= mtu <= VENET_MAX_MTU:
            raise ValueError(f"mtu must be {VENET_MIN_MTU}..{VENET_MAX_MTU}")
        pb = outr.region.paired_base(outr.index)
        if pb is None:
            raise ValueError("the out ring has no paired buffers")
        self.inr = inr
        self.outr = outr
        self.tap_fd = tap_fd
        self.pair_off = outr.region.buffer_offset(pb)
        self.buf_size = outr.region.buf_size
        self.max_plain = mtu + VENET_ETH_HLEN
        if self.buf_size < VENET_META_SIZE + VENET_ETH_HLEN:
            raise ValueError(f"buffers of {self.buf_size} bytes cannot hold a vnet header "
                             f"and an Ethernet header")
        self.caps = caps
        cdef uint32_t read_max = VENET_META_SIZE + self.max_plain
        if caps & (VENET_CAP_TSO4 | VENET_CAP_TSO6 | VENET_CAP_USO | VENET_CAP_UFO):
            read_max = VENET_META_SIZE + VENET_MAX_GSO_FRAME
        self.read_slots = (read_max + self.buf_size - 1) // self.buf_size
        if self.read_slots > outr.r.count // 2 or self.read_slots > VENET_MAX_CHAIN:
            raise ValueError(f"a ring of {outr.r.count} slots of {self.buf_size} bytes is too "
                             f"small for frames of {read_max} bytes")
        self.budget = budget
        self.pop_want = budget if budget > VENET_MAX_CHAIN else VENET_MAX_CHAIN
        self.known_flags = KNOWN_FLAGS
        self.bulk_cpu = bulk_cpu
        if txc_evq is not None:
            if txc_evq.role != 0:
                raise ValueError("txc_evq must be the producer end of the event queue")
            epb = txc_evq.region.paired_base(txc_evq.index)
            if epb is None or txc_evq.region.buf_size < sizeof(venet_event_t):
                raise ValueError("the event queue needs paired buffers of an event's size")
            self.evq = txc_evq
            self.evq_pair_off = txc_evq.region.buffer_offset(epb)
            self.evq_buf_size = txc_evq.region.buf_size
            self.known_flags |= VENET_F_TXC
        self.poll_ns = <int64_t>(poll_us * 1000)
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        # The doorbells are edge-triggered: every kick by the peer is an
        # edge, so the pump never reads an eventfd to re-arm (one syscall
        # less per wake-up, and a peer's eventfd, whose flags the peer
        # controls, is never read at all).  A socket doorbell is drained
        # with a non-blocking recv so its queue stays short.  The peer kicks
        # again only after we clear `pending`, which we do for each edge.
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
        """Write the in ring's frames to the tap; returns descriptors used."""
        cdef ioq_ring_t *r = &self.inr.r
        cdef uint32_t k, i, e, used
        k = ioq_pop(r, self.items, self.pop_want, self.sg, SG_SCRATCH, &used)
        self.hold = 0
        i = 0
        while i < k:
            if self.discard:
                # The tail of a chain refused as too long.
                if not self.items[i].flags & VENET_F_MORE:
                    self.discard = False
                i += 1
                continue
            e = i
            while e < k and self.items[e].flags & VENET_F_MORE and e - i < VENET_MAX_CHAIN:
                e += 1
            if e - i >= VENET_MAX_CHAIN:
                self.st.drop_chain += 1
                self._txc(i, VENET_TXC_BAD_CHAIN)
                self.discard = True
                i += VENET_MAX_CHAIN
                continue
            if e == k:
                # The chain's end is not published yet (its producer
                # publishes slot by slot): give it back and look again
                # later.  pop_want >= VENET_MAX_CHAIN, so a chain that
                # starts a pop is never cut by the pop's own limit.
                ioq_unpop(r, &self.items[i], k - i)
                self.hold = k - i
                k = i
                break
            self._write_frame(i, e)
            i = e + 1
        if k:
            ioq_release(r)
            shmsig_inject(&r.sig)
        if self.txc_posted:
            self.txc_posted = 0
            shmsig_inject(&self.evq.r.sig)
        return k

    cdef void _bulk_check(self) noexcept nogil:
        """Co-locate with the peer pump while bulk traffic flows.  Why: on a
        VM a wake-up on another vCPU costs ~31 us against ~1 us on the same
        one, and at 64 KiB a frame the two pumps kick each other for nearly
        every frame.  Only bulk (GSO) traffic moves the thread: a
        conversation of small frames keeps the thread's own CPUs (its home
        under --cpu auto), which gave better round trips here."""
        cdef uint64_t now = venet_now_ns()
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

    cdef inline void _txc(self, uint32_t first, uint32_t status) noexcept nogil:
        """The frame starting at items[first] is done with (written, or
        refused for `status`): its EV_TXC event, if it asked for one."""
        if self.known_flags & VENET_F_TXC and self.items[first].flags & VENET_F_TXC:
            self._post_txc(self.items[first].cookie, status)

    cdef void _post_txc(self, uint64_t cookie, uint32_t status) noexcept nogil:
        """Tell the frontend we are done with the frame it tagged `cookie`,
        and what became of it (VENET_TXC_*)."""
        cdef ioq_ring_t *e = &self.evq.r
        cdef ioq_desc_t *d
        cdef venet_event_t *ev
        if ioq_free(e, 1) == 0:
            self.st.txc_lost += 1
            return
        d = ioq_slot(e, 0)
        d.offset = self.evq_pair_off + <uint64_t>(e.head & e.mask) * self.evq_buf_size
        ev = <venet_event_t *>(e.base + d.offset)
        ev.type = VENET_EV_TXC
        ev.size = sizeof(venet_event_t)
        ev.a = cookie
        ev.b = <uint64_t>VENET_RING_TX | (<uint64_t>status << 32)
        d.cookie = e.head
        d.len = sizeof(venet_event_t)
        d.flags = 0
        d.user = 0
        ioq_commit(e, 1)
        self.st.txc_events += 1
        self.txc_posted += 1

    cdef void _write_frame(self, uint32_t first, uint32_t last) noexcept nogil:
        """writev one frame, items[first..last], behind its vnet header."""
        cdef ioq_ring_t *r = &self.inr.r
        cdef ioq_item_t *it
        cdef uint32_t j, q, niov = 1, flags, st
        cdef uint64_t total = 0
        cdef uint32_t flen
        cdef venet_meta_t meta
        cdef virtio_net_hdr_t *vh = <virtio_net_hdr_t *>self.vhdr
        cdef ssize_t w
        for j in range(first, last + 1):
            it = &self.items[j]
            if it.status != IOQ_OK:
                self.st.drop_bad_desc += 1
                self._txc(first, VENET_TXC_BAD_DESC)
                return
            if j > first and (it.flags & ~(<uint32_t>VENET_F_MORE) & IOQ_DESC_F_USER_MASK
                              or it.sg_count):
                # Continuations carry only MORE; an SG list is a frame of its own.
                self.st.drop_chain += 1
                self._txc(first, VENET_TXC_BAD_CHAIN)
                return
            if it.sg_count == 0:
                self.iov[niov].iov_base = r.base + it.offset
                self.iov[niov].iov_len = it.len
                niov += 1
            else:
                if last > first:
                    self.st.drop_chain += 1
                    self._txc(first, VENET_TXC_BAD_CHAIN)
                    return
                for q in range(it.sg_count):
                    self.iov[niov].iov_base = r.base + self.sg[it.sg_first + q].offset
                    self.iov[niov].iov_len = self.sg[it.sg_first + q].len
                    niov += 1
            total += it.len
        flags = self.items[first].flags & IOQ_DESC_F_USER_MASK & ~(<uint32_t>VENET_F_MORE)
        if flags & ~self.known_flags:
            self.st.drop_offload += 1
            self._txc(first, VENET_TXC_BAD_FLAGS)
            return
        memset(self.vhdr, 0, VENET_META_SIZE)
        memset(&meta, 0, sizeof(meta))
        if flags & (VENET_F_NEEDS_CSUM | VENET_F_GSO):
            # The record leads the frame's first piece: copy it once, then
            # only the copy is looked at.
            if self.iov[1].iov_len < VENET_META_SIZE:
                self.st.drop_meta[META_BAD_CSUM] += 1
                self._txc(first, VENET_TXC_META_NOT_NEGOTIATED - 1 + META_BAD_CSUM)
                return
            memcpy(&meta, self.iov[1].iov_base, VENET_META_SIZE)
            self.iov[1].iov_base = <char *>self.iov[1].iov_base + VENET_META_SIZE
            self.iov[1].iov_len -= VENET_META_SIZE
            total -= VENET_META_SIZE
        if total < VENET_MIN_FRAME or total > VENET_MAX_GSO_FRAME:
            if total < VENET_MIN_FRAME:
                self.st.drop_short += 1
                self._txc(first, VENET_TXC_SHORT)
            else:
                self.st.drop_meta[META_TOO_LONG] += 1
                self._txc(first, VENET_TXC_META_TOO_LONG)
            return
        flen = <uint32_t>total
        st = venet_meta_check(&meta, flags, flen, self.caps, self.max_plain)
        if st != META_OK:
            self.st.drop_meta[st] += 1
            self._txc(first, VENET_TXC_META_NOT_NEGOTIATED - 1 + st)
            return
        if flags & (VENET_F_NEEDS_CSUM | VENET_F_GSO):
            venet_meta_to_virtio(&meta, flags, vh)
        self.iov[0].iov_base = self.vhdr
        self.iov[0].iov_len = VENET_META_SIZE
        w = writev(self.tap_fd, self.iov, niov)
        if w == <ssize_t>(flen + VENET_META_SIZE):
            self.st.to_tap_frames += 1
            self.st.to_tap_bytes += flen
            if flags & VENET_F_GSO:
                self.st.to_tap_gso += 1
            elif flags & VENET_F_NEEDS_CSUM:
                self.st.to_tap_csum += 1
            self._txc(first, VENET_TXC_SENT)
        else:
            self.st.drop_tap_write += 1
            self._txc(first, VENET_TXC_TAP_ERROR)

    cdef uint32_t _tap_to_ring(self, bint *empty, bint *full) noexcept nogil:
        """Read up to budget frames into the out ring; returns how many.
        Sets *empty when the tap said EAGAIN, *full when the ring had no
        room for a frame of the largest size we may be given."""
        cdef ioq_ring_t *r = &self.outr.r
        cdef uint32_t free_ = ioq_free(r, self.read_slots)
        cdef uint32_t used = 0, frames = 0, reads = 0, s, nslots, j, mflags, st, piece
        cdef uint64_t off, cap, to_end, left
        cdef ssize_t len_
        cdef int niov
        cdef virtio_net_hdr_t h
        cdef venet_meta_t meta
        cdef ioq_desc_t *d
        empty[0] = False
        full[0] = free_ < self.read_slots
        if full[0]:
            self.st.out_ring_full += 1
            return 0
        cap = <uint64_t>self.read_slots * self.buf_size
        # Bounded in reads, not frames: refused frames cost budget too.
        while reads < self.budget and free_ - used >= self.read_slots:
            reads += 1
            s = (r.head + used) & r.mask
            off = self.pair_off + <uint64_t>s * self.buf_size
            to_end = <uint64_t>(r.count - s) * self.buf_size
            if self.read_slots == 1:
                len_ = read(self.tap_fd, r.base + off, self.buf_size)
            else:
                # Consecutive slots' buffers are adjacent: at most two
                # pieces, split where the ring wraps.
                self.iov[0].iov_base = r.base + off
                self.iov[0].iov_len = cap if cap < to_end else to_end
                niov = 1
                if cap > to_end:
                    self.iov[1].iov_base = r.base + self.pair_off
                    self.iov[1].iov_len = cap - to_end
                    niov = 2
                len_ = readv(self.tap_fd, self.iov, niov)
            if len_ <= 0:
                if len_ < 0 and errno != EAGAIN and errno != EINTR:
                    self.st.tap_read_errors += 1
                empty[0] = True
                break
            if <uint64_t>len_ > cap:
                # tun reports the whole frame's length after copying what
                # fitted: the frame is cut, not worth forwarding.
                self.st.drop_rx_truncated += 1
                continue
            if len_ < VENET_META_SIZE + VENET_ETH_HLEN:
                self.st.drop_short += 1
                continue
            memcpy(&h, r.base + off, sizeof(virtio_net_hdr_t))
            st = venet_meta_from_virtio(&h, &meta, &mflags)
            if st == META_OK:
                st = venet_meta_check(&meta, mflags, <uint32_t>(len_ - VENET_META_SIZE),
                                      self.caps, 0xffffffff)
            if st != META_OK:
                self.st.drop_rx_meta += 1
                continue
            if mflags:
                memcpy(r.base + off, &meta, VENET_META_SIZE)
                if mflags & VENET_F_GSO:
                    self.st.from_tap_gso += 1
                else:
                    self.st.from_tap_csum += 1
            nslots = <uint32_t>((<uint64_t>len_ + self.buf_size - 1) // self.buf_size)
            left = <uint64_t>len_
            for j in range(nslots):
                d = ioq_slot(r, used + j)
                piece = <uint32_t>(left if left < self.buf_size else self.buf_size)
                d.cookie = r.head + used + j
                d.offset = self.pair_off + <uint64_t>((s + j) & r.mask) * self.buf_size
                d.len = piece
                d.flags = VENET_F_MORE if j + 1 < nslots else 0
                d.user = 0
                left -= piece
            d = ioq_slot(r, used)
            if mflags:
                d.flags |= mflags
            else:
                d.offset += VENET_META_SIZE
                d.len -= VENET_META_SIZE
            used += nslots
            frames += 1
            self.st.from_tap_bytes += <uint64_t>(len_ - VENET_META_SIZE)
            if frames == 1:
                # Publish the first frame and kick now, not after the read
                # that finds the tap empty: a sleeping peer starts waking
                # (tens of us on another vCPU) while we read on.  Under load
                # the peer is awake and the kick is suppressed anyway.
                ioq_commit(r, used)
                shmsig_inject(&r.sig)
                free_ -= used
                used = 0
        if used:
            ioq_commit(r, used)
            shmsig_inject(&r.sig)
        self.st.from_tap_frames += frames
        return frames

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
                if self.bulk_cpu >= 0:
                    self._bulk_check()
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
                        if ioq_peek_at(&self.inr.r, self.hold):
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
                    if n > 0 or ioq_peek_at(&self.inr.r, self.hold):
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
        if self.bulk_pinned:
            sched_setaffinity(0, sizeof(cpu_set_t), &self.saved_mask)
            self.bulk_pinned = False
        if self.inr.r.broken or self.outr.r.broken:
            return "broken"
        return "stopped" if stop else "timeout"

    cdef inline void _drain_socket(self, shmsig_t *sig) noexcept nogil:
        """A socket doorbell's queued kicks, taken with one non-blocking
        recv.  An eventfd doorbell is left alone (edge-triggered)."""
        if sig.wait_kind == SHMSIG_FD_SOCKET:
            shmsig_drain_fd(sig.wait_fd, SHMSIG_FD_SOCKET, -1)

    cdef void _drain_events(self, epoll_event *evs, int n, bint *stop, bint *out_full,
                            bint *tap_ready) noexcept nogil:
        cdef int i
        cdef uint64_t cnt, tag
        for i in range(n):
            tag = evs[i].data.u64
            if tag == EV_IN:
                self._drain_socket(&self.inr.r.sig)
                shmsig_allow_kick(&self.inr.r.sig)
            elif tag == EV_OUT:
                self._drain_socket(&self.outr.r.sig)
                shmsig_allow_kick(&self.outr.r.sig)
                out_full[0] = False
            elif tag == EV_TAP:
                tap_ready[0] = True
            elif tag == EV_STOP:
                read(self.stop_fd, &cnt, 8)
                stop[0] = True

    def stats(self):
        s = dict(self.st)
        meta = s.pop("drop_meta")
        for i in range(1, VENET_META_NREASONS):
            s["drop_meta_" + venet_meta_reason_names[i].decode()] = meta[i]
        s["in_ring"] = self.inr.stats()
        s["out_ring"] = self.outr.stats()
        return s
