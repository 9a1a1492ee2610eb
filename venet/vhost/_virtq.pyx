# cython: language_level=3, boundscheck=False, wraparound=False
"""The virtqueue engine: serves a virtio-net driver's split virtqueues
against a device's port, GIL released (docs/vhost-user.md).

Queue 1 (TX, driver -> device): each avail chain is walked once into
private memory (vq_chain), its virtio header translated into the port's
16-byte vnet header through venet/meta.pxd (checked against what the driver
negotiated), and the frame written to the port gathered straight from the
driver's memory.  A refused chain is counted and still returned (used, 0
bytes), so the driver gets its buffers back.

Queue 0 (RX, device -> driver): a frame is read from the port into the
engine's own buffer (its length decides how many of the driver's buffers
it takes), then copied into one chain, or several with mergeable buffers.
A frame that finds no buffers waits here, and the port is not read until
buffers come back: nothing is lost for want of buffers.

Notifications: with EVENT_IDX the driver's kick is asked for by writing
avail_event before going idle, and a call is sent only when the driver's
used_event says so; without it, the used ring's NO_NOTIFY flag and the
avail ring's NO_INTERRUPT flag.  Either way the engine re-checks for work
after arming, so no kick is lost.
"""
import os
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdlib cimport calloc, free
from posix.unistd cimport read, write
from posix.uio cimport iovec
from shmsignal.includes.atomics cimport shm_now_ns
from shmsignal.includes.osdefs cimport *
from venet.abi cimport *
from venet.meta cimport *
from venet.devices.port cimport venet_port_t
from venet.devices.tap_port cimport tap_port_init
from venet.devices.null_port cimport null_new, null_port_init
from venet.devices.capture cimport venet_cap_tee_init, venet_cap_port
from venet.devices._capture cimport CaptureSet
from vbus.worker cimport *
from vbus._worker cimport Task

cdef extern from "<sys/mman.h>" nogil:
    void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset)
    int munmap(void *addr, size_t length)
    void *MAP_FAILED
    enum:
        PROT_READ
        PROT_WRITE
        MAP_SHARED

REASONS = ("ok", "bad_index", "bad_loop", "bad_addr", "bad_indirect", "bad_nested", "bad_dir",
           "bad_long", "bad_short")

cdef enum:
    MAX_BUDGET = 256


# ---- addresses -----------------------------------------------------------

cdef inline char *vq_gpa(vq_dev_t *d, uint64_t addr, uint64_t length) noexcept nogil:
    """Our pointer to guest bytes [addr, addr + length), all inside one
    region, or NULL."""
    cdef uint32_t i, k
    cdef vq_region_t *r
    cdef uint64_t off
    for k in range(d.nreg):
        i = (d.last_reg + k) % d.nreg
        r = &d.reg[i]
        if addr >= r.gpa:
            off = addr - r.gpa
            if off < r.size and length <= r.size - off:
                d.last_reg = i
                return r.host + off
    return NULL


cdef char *vq_uva(vq_dev_t *d, uint64_t addr, uint64_t length) noexcept nogil:
    """The same for an address in the driver's own address space (the
    ring addresses of SET_VRING_ADDR)."""
    cdef uint32_t i
    cdef vq_region_t *r
    cdef uint64_t off
    for i in range(d.nreg):
        r = &d.reg[i]
        if addr >= r.uva:
            off = addr - r.uva
            if off < r.size and length <= r.size - off:
                return r.host + off
    return NULL


# ---- chains --------------------------------------------------------------

cdef uint32_t vq_chain(vq_dev_t *d, vq_t *q, uint16_t head, bint writable,
                       uint32_t *nseg, uint64_t *total) noexcept nogil:
    """Walk the chain at `head` into d.segs[0:*nseg] (*total bytes).  Each
    descriptor is copied once into private memory and checked there; an
    indirect table is copied whole first.  VQ_OK or the reason it was
    refused."""
    cdef vring_desc_t dsc
    cdef const char *table = q.desc
    cdef uint32_t tnum = q.num, idx = head, count = 0
    cdef bint indirect = False
    cdef char *p
    nseg[0] = 0
    total[0] = 0
    while True:
        if idx >= tnum:
            return VQ_BAD_INDEX
        count += 1
        if count > tnum:
            return VQ_BAD_LOOP
        memcpy(&dsc, table + <size_t>idx * sizeof(vring_desc_t), sizeof(vring_desc_t))
        if dsc.flags & VRING_DESC_F_INDIRECT:
            if indirect:
                return VQ_BAD_NESTED
            if dsc.flags & VRING_DESC_F_NEXT or dsc.len == 0 or dsc.len % sizeof(vring_desc_t) or \
                    dsc.len // sizeof(vring_desc_t) > VQ_MAX_SEGS:
                return VQ_BAD_INDIRECT
            p = vq_gpa(d, dsc.addr, dsc.len)
            if p == NULL:
                return VQ_BAD_ADDR
            memcpy(d.itab, p, dsc.len)
            table = <const char *>d.itab
            tnum = dsc.len // sizeof(vring_desc_t)
            idx = 0
            count = 0
            indirect = True
            continue
        if (dsc.flags & VRING_DESC_F_WRITE != 0) != writable:
            return VQ_BAD_DIR
        if dsc.len:
            p = vq_gpa(d, dsc.addr, dsc.len)
            if p == NULL:
                return VQ_BAD_ADDR
            if nseg[0] >= VQ_MAX_SEGS:
                return VQ_BAD_LONG
            d.segs[nseg[0]].p = p
            d.segs[nseg[0]].len = dsc.len
            nseg[0] += 1
            total[0] += dsc.len
        if not dsc.flags & VRING_DESC_F_NEXT:
            return VQ_OK
        idx = dsc.next


cdef inline uint16_t vq_avail_idx(vq_t *q) noexcept nogil:
    return vq_load_acquire_u16(q.avail + 2)


cdef inline uint16_t vq_avail_head(vq_t *q, uint16_t i) noexcept nogil:
    return vq_load_relaxed_u16(q.avail + 4 + 2 * (i & q.mask))


cdef inline void vq_put_used(vq_t *q, uint16_t head, uint32_t length) noexcept nogil:
    cdef char *e = q.used + 4 + 8 * (q.used_idx & q.mask)
    vq_store_relaxed_u32(e, head)
    vq_store_relaxed_u32(e + 4, length)
    q.used_idx += 1


cdef inline uint32_t vq_pending(vq_dev_t *d, vq_t *q) noexcept nogil:
    """Avail entries not yet taken; a count past the queue size means the
    driver broke the ring: the queue stops (counted)."""
    cdef uint16_t n = <uint16_t>(vq_avail_idx(q) - q.last_avail)
    if n > q.num:
        q.broken = True
        d.st.avail_jump += 1
        return 0
    return n


cdef void vq_call(vq_dev_t *d, vq_t *q) noexcept nogil:
    """After publishing used entries: call the driver if it asked."""
    cdef uint16_t old = q.signalled, new = q.used_idx, ev
    cdef bint need
    cdef pollfd pfd
    cdef uint64_t one = 1
    vq_fence()          # the used idx store before the driver's wish is read
    if d.event_idx:
        ev = vq_load_relaxed_u16(q.avail + 4 + 2 * q.num)
        need = not q.signalled_valid or <uint16_t>(new - ev - 1) < <uint16_t>(new - old)
    else:
        need = not vq_load_relaxed_u16(q.avail) & VRING_AVAIL_F_NO_INTERRUPT
    q.signalled = new
    q.signalled_valid = True
    if not need or q.call_fd < 0:
        d.st.calls_suppressed += 1
        return
    # The call eventfd is the driver's: its O_NONBLOCK is the driver's to
    # change, and a write blocks when the counter is full.  Written only
    # when poll says a write would not block.
    pfd.fd = q.call_fd
    pfd.events = POLLOUT
    pfd.revents = 0
    if poll(&pfd, 1, 0) == 1 and pfd.revents & POLLOUT and write(q.call_fd, &one, 8) == 8:
        d.st.calls_sent += 1
    else:
        d.st.calls_failed += 1


cdef bint vq_arm(vq_dev_t *d, vq_t *q, uint16_t seen) noexcept nogil:
    """Ask for the driver's kick once its avail idx moves past `seen`;
    True when it has already (work arrived meanwhile)."""
    if d.event_idx:
        vq_store_relaxed_u16(q.used + 4 + 8 * q.num, seen)
    else:
        vq_store_relaxed_u16(q.used, 0)
    q.armed = True
    vq_fence()
    return vq_avail_idx(q) != seen


cdef inline void vq_disarm(vq_dev_t *d, vq_t *q) noexcept nogil:
    if q.armed:
        q.armed = False
        if not d.event_idx:
            vq_store_relaxed_u16(q.used, VRING_USED_F_NO_NOTIFY)


# ---- TX: driver -> port --------------------------------------------------

cdef uint32_t vq_tx(vq_dev_t *d) noexcept nogil:
    cdef vq_t *q = &d.q[VQ_TX]
    cdef uint32_t n = 0, pending, nseg, why
    cdef uint64_t total
    cdef uint16_t head
    if not q.ready or q.broken:
        return 0
    pending = vq_pending(d, q)
    if pending == 0:
        return 0
    vq_disarm(d, q)
    while n < d.budget and pending:
        head = vq_avail_head(q, q.last_avail)
        q.last_avail += 1
        pending -= 1
        n += 1
        why = vq_chain(d, q, head, False, &nseg, &total)
        if why == VQ_OK:
            vq_send(d, nseg, total)
        else:
            d.st.bad[why] += 1
        vq_put_used(q, head, 0)
    vq_store_release_u16(q.used + 2, q.used_idx)
    vq_call(d, q)
    return n


cdef void vq_send(vq_dev_t *d, uint32_t nseg, uint64_t total) noexcept nogil:
    """Write the frame in d.segs[0:nseg] to the port behind its header."""
    cdef virtio_net_hdr_buf_t vh         # VQ_HDR_ROOM bytes used
    cdef venet_meta_t meta
    cdef uint32_t i, k = 0, niov = 1, flags, st, c
    cdef uint32_t skip = d.hdr_len, got = 0
    cdef uint64_t flen
    cdef uint32_t fl32
    cdef ssize_t w
    if total < d.hdr_len + VENET_ETH_HLEN:
        d.st.bad[VQ_BAD_SHORT] += 1
        return
    flen = total - d.hdr_len
    fl32 = 0xffffffff
    if flen < fl32:
        fl32 = <uint32_t>flen
    # The header may be split across buffers: gathered into private memory.
    while got < d.hdr_len:
        c = d.segs[k].len if d.segs[k].len < d.hdr_len - got else d.hdr_len - got
        memcpy(vh.b + got, d.segs[k].p, c)
        got += c
        if c == d.segs[k].len:
            k += 1
            skip = 0
        else:
            skip = c
    # vh is private: read in place (a copy into a local struct is stored
    # in pieces that a wider load then spans, and that load waits for every
    # older store to drain, among them the copies into the driver's memory)
    st = venet_meta_from_virtio(&vh.h, &meta, &flags)
    if st == META_OK:
        st = venet_meta_check(&meta, flags, fl32, d.tx_caps, d.max_plain)
    if st != META_OK:
        d.st.tx_drop_meta += 1
        return
    memset(d.phdr.b, 0, 16)
    venet_meta_to_virtio(&meta, flags, &d.phdr.h)
    d.iov[0].iov_base = d.phdr.b
    d.iov[0].iov_len = 16
    for i in range(k, nseg):
        d.iov[niov].iov_base = d.segs[i].p + skip
        d.iov[niov].iov_len = d.segs[i].len - skip
        skip = 0
        niov += 1
    w = d.io.send(d.io, d.iov, niov)
    if w != <ssize_t>(flen + 16):
        d.st.tx_drop_port += 1
        return
    d.st.tx_frames += 1
    d.st.tx_bytes += flen


# ---- RX: port -> driver --------------------------------------------------

cdef enum:
    RX_DONE = 0
    RX_DROPPED = 1
    RX_NO_BUFFERS = 2
    RX_BROKEN = 3


cdef int vq_read_port(vq_dev_t *d) noexcept nogil:
    """Read one frame from the port into the bounce buffer, header made for
    the driver.  1: a frame is pending; 0: refused (counted); -1: the port
    is empty."""
    cdef ssize_t n
    cdef uint32_t flen, mflags, st
    cdef venet_meta_t meta
    cdef char *vh
    d.iov[0].iov_base = d.phdr.b
    d.iov[0].iov_len = 16
    d.iov[1].iov_base = d.bounce + VQ_HDR_ROOM
    d.iov[1].iov_len = d.bounce_cap - VQ_HDR_ROOM
    n = d.io.recv(d.io, d.iov, 2)
    if n < 0:
        if errno != EAGAIN and errno != EINTR:
            d.st.port_read_errors += 1
        return -1
    if n == 0:
        return -1
    if <uint64_t>n > 16 + d.iov[1].iov_len:
        d.st.rx_drop_truncated += 1
        return 0
    if n < 16 + VENET_ETH_HLEN:
        d.st.rx_drop_short += 1
        return 0
    flen = <uint32_t>(n - 16)
    # d.phdr is private: read in place (see vq_send)
    st = venet_meta_from_virtio(&d.phdr.h, &meta, &mflags)
    if st == META_OK:
        st = venet_meta_check(&meta, mflags, flen, d.rx_caps, 0xffffffff)
    if st != META_OK:
        d.st.rx_drop_meta += 1
        return 0
    d.rx_off = VQ_HDR_ROOM - d.hdr_len
    vh = d.bounce + d.rx_off
    memset(vh, 0, d.hdr_len)
    venet_meta_to_virtio(&meta, mflags, <virtio_net_hdr_t *>vh)
    if d.hdr_len == 12:
        vh[10] = 1          # num_buffers, rewritten in the driver's copy when more
    d.rx_len = d.hdr_len + flen
    return 1


cdef int vq_deliver(vq_dev_t *d, vq_t *q, uint32_t *avail) noexcept nogil:
    """Copy the pending frame into the driver's RX buffers (used entries
    written, not published).  *avail: avail entries known to be there."""
    cdef uint16_t save_avail = q.last_avail, save_used = q.used_idx, head
    cdef uint32_t remaining = d.rx_len, nseg, i, c, put, nbufs = 0, why
    cdef uint64_t total
    cdef const char *src = d.bounce + d.rx_off
    cdef char *nb0 = NULL
    cdef char *nb1 = NULL
    cdef uint32_t copied = 0
    cdef uint16_t nb
    while remaining:
        if avail[0] == 0:
            avail[0] = vq_pending(d, q)
            if q.broken:
                return RX_BROKEN
            if avail[0] == 0:
                q.wait_idx = q.last_avail        # the avail idx just read
                q.last_avail = save_avail
                q.used_idx = save_used
                return RX_NO_BUFFERS
        head = vq_avail_head(q, q.last_avail)
        q.last_avail += 1
        avail[0] -= 1
        why = vq_chain(d, q, head, True, &nseg, &total)
        if why != VQ_OK:
            # A driver that hands out bad receive buffers has broken its
            # ring: the queue stops (counted), the device stays.
            d.st.bad[why] += 1
            q.broken = True
            return RX_BROKEN
        put = 0
        for i in range(nseg):
            if not remaining:
                break
            c = d.segs[i].len if d.segs[i].len < remaining else remaining
            memcpy(d.segs[i].p, src, c)
            if d.hdr_len == 12 and copied <= 11:
                # where num_buffers (header bytes 10 and 11) landed
                if copied <= 10 < copied + c:
                    nb0 = d.segs[i].p + (10 - copied)
                if copied <= 11 < copied + c:
                    nb1 = d.segs[i].p + (11 - copied)
            copied += c
            src += c
            remaining -= c
            put += c
        if remaining and not d.mrg:
            # One buffer must hold the frame: it is dropped, the buffer kept.
            q.last_avail -= 1
            avail[0] += 1
            q.wait_idx = q.last_avail + avail[0]  # the avail idx as last read
            d.st.rx_drop_too_big += 1
            return RX_DROPPED
        vq_put_used(q, head, put)
        nbufs += 1
    if nbufs > 1:
        nb = <uint16_t>nbufs
        if nb0 != NULL:
            nb0[0] = <char>(nb & 0xff)
        if nb1 != NULL:
            nb1[0] = <char>(nb >> 8)
    d.st.rx_buffers += nbufs
    return RX_DONE


cdef uint32_t vq_rx(vq_dev_t *d) noexcept nogil:
    cdef vq_t *q = &d.q[VQ_RX]
    cdef uint32_t frames = 0, avail = 0, published = 0
    cdef int r
    if not q.ready or q.broken:
        return 0
    if q.waiting:
        if vq_avail_idx(q) == q.wait_idx:
            return 0
        q.waiting = False
    while frames < d.budget:
        if d.rx_len == 0:
            if not d.port_ready:
                break
            r = vq_read_port(d)
            if r < 0:
                d.port_ready = False
                break
            frames += 1
            if r == 0:
                continue
        r = vq_deliver(d, q, &avail)
        if r == RX_NO_BUFFERS:
            d.st.rx_wait_buffers += 1
            q.waiting = True
            break
        if r == RX_BROKEN:
            break
        if r == RX_DROPPED and d.port_endless:
            # Too big for the buffer at the head, and so is every frame of
            # an endless port: none is read until the driver posts others
            # (reading on would drop frames as fast as the CPU goes).
            d.rx_len = 0
            q.waiting = True
            break
        if r == RX_DONE:
            d.st.rx_frames += 1
            d.st.rx_bytes += d.rx_len - d.hdr_len
            published += 1
        d.rx_len = 0
        if published == 1:
            # The first frame goes out at once: a sleeping driver starts
            # waking while the rest are copied.
            vq_store_release_u16(q.used + 2, q.used_idx)
            vq_call(d, q)
    if q.used_idx != vq_load_relaxed_u16(q.used + 2):
        vq_store_release_u16(q.used + 2, q.used_idx)
        vq_call(d, q)
    return frames


# ---- the reflecting port (benchmarks) ------------------------------------

cdef extern from *:
    """
    #include <errno.h>
    static inline void vq_set_errno(int e) { errno = e; }
    """
    void vq_set_errno(int e) noexcept nogil


cdef ssize_t vq_reflect_send(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    cdef vq_reflect_t *r = <vq_reflect_t *>port.ctx
    cdef uint64_t total = 0
    cdef uint32_t off = 0
    cdef char *dst
    cdef int i
    for i in range(niov):
        total += iov[i].iov_len
    if r.head - r.tail == r.slots or total > r.slot:
        r.refused += 1
        vq_set_errno(EAGAIN)
        return -1
    dst = r.buf + <size_t>(r.head % r.slots) * r.slot
    for i in range(niov):
        memcpy(dst + off, iov[i].iov_base, iov[i].iov_len)
        off += <uint32_t>iov[i].iov_len
    r.len[r.head % r.slots] = off
    r.head += 1
    return off


cdef ssize_t vq_reflect_recv(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    cdef vq_reflect_t *r = <vq_reflect_t *>port.ctx
    cdef uint32_t n, off = 0, c
    cdef const char *src
    cdef int i
    if r.head == r.tail:
        vq_set_errno(EAGAIN)
        return -1
    n = r.len[r.tail % r.slots]
    src = r.buf + <size_t>(r.tail % r.slots) * r.slot
    for i in range(niov):
        if off >= n:
            break
        c = <uint32_t>iov[i].iov_len if iov[i].iov_len < n - off else n - off
        memcpy(iov[i].iov_base, src + off, c)
        off += c
    r.tail += 1
    return n                            # the whole frame, cut or not (port.pxd's contract)


# ---- the task ------------------------------------------------------------

cdef int _vq_run(vbus_task_t *t, uint32_t events) noexcept nogil:
    return (<Engine>t.ctx)._turn(events)


cdef bint _vq_peek(vbus_task_t *t) noexcept nogil:
    """Work visible without a syscall (for a busy-polling worker)."""
    cdef vq_dev_t *d = (<Engine>t.ctx).d
    cdef vq_t *q = &d.q[VQ_TX]
    if q.ready and not q.broken and vq_avail_idx(q) != q.last_avail:
        return True
    q = &d.q[VQ_RX]
    return q.waiting and q.ready and not q.broken and vq_avail_idx(q) != q.wait_idx


# ---- memory --------------------------------------------------------------

def map_region(int fd, uint64_t offset, uint64_t size):
    """mmap `size` bytes of fd from `offset` (any alignment), shared, read
    and write.  Returns (address of offset, base, length) for unmap."""
    cdef uint64_t page = os.sysconf("SC_PAGE_SIZE")
    cdef uint64_t start = offset - offset % page
    cdef uint64_t length = size + (offset - start)
    cdef void *p
    with nogil:
        p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, <long>start)
    if p == MAP_FAILED:
        raise OSError(errno, os.strerror(errno))
    return <uint64_t>p + (offset - start), <uint64_t>p, length


def unmap_region(uint64_t base, uint64_t length):
    munmap(<void *>base, length)


# ---- the engine ----------------------------------------------------------

cdef class Engine(Task):
    """A device's data plane for one virtio driver: the two queues of a
    queue pair over the memory table, against the port fd, as a task of
    the bus's worker pool (vbus/_worker.pyx): `pool.add(engine)` serves it,
    `pool.remove(engine)` (synchronous) lets it go.  The caller keeps the
    memory mapped and the fds open until the engine is removed (or run()
    has returned)."""

    def __cinit__(self, *args, **kwargs):
        self.port_i = -1
        self.d = <vq_dev_t *>calloc(1, sizeof(vq_dev_t))
        if self.d == NULL:
            raise MemoryError()

    def __init__(self, regions, queues, int port_fd, *, int hdr_len=12, bint mrg=True,
                 bint event_idx=False, unsigned int tx_caps=0, unsigned int rx_caps=0,
                 int mtu=1500, int budget=64, poll_us=0, CaptureSet capture=None,
                 unsigned int reflect=0, bytes null_frame=None):
        """regions: [(gpa, size, uva, host address)] (memory.MemoryTable);
        queues: two dicts (RX, TX) with num, desc, avail, used (driver
        addresses), base, kick_fd, call_fd.  poll_us: after a turn that
        did work, the worker busy-polls the rings this long before the
        engine asks for the driver's kicks (0: never).  capture: the
        device's capture taps (venet.devices._capture), which see every
        frame the port takes or gives while one is attached: `out` what the
        driver sent, `in` what it is given.  reflect: N > 0 puts a FIFO of
        N frames in memory in place of the port (port_fd is then only
        watched, never read or written): what the driver sends comes back
        to it with no syscall per frame, to measure the engine alone.
        null_frame: the port is venet-null's (venet/devices/null_port.pxd)
        and port_fd its eventfd: what the driver sends is dropped, and a
        non-empty null_frame is given to it without end."""
        cdef vq_dev_t *d = self.d
        cdef vq_t *q
        cdef uint32_t i
        if self.task.run != NULL:
            raise RuntimeError("an Engine is initialised once")
        if not 0 < len(regions) <= VQ_MAX_REGIONS:
            raise ValueError(f"1..{VQ_MAX_REGIONS} memory regions")
        if len(queues) != 2:
            raise ValueError("a queue pair: RX and TX")
        if hdr_len not in (10, 12) or not 1 <= budget <= MAX_BUDGET:
            raise ValueError("bad header length or budget")
        if not 0 <= poll_us <= 1_000_000:
            raise ValueError("poll_us must be 0..1000000")
        d.nreg = len(regions)
        for i, (gpa, size, uva, host) in enumerate(regions):
            d.reg[i].gpa = gpa
            d.reg[i].size = size
            d.reg[i].uva = uva
            d.reg[i].host = <char *><uint64_t>host
        d.hdr_len = hdr_len
        d.mrg = mrg
        d.event_idx = event_idx
        d.tx_caps = tx_caps
        d.rx_caps = rx_caps
        d.max_plain = mtu + VENET_ETH_HLEN
        d.budget = budget
        d.port_ready = True
        # The port is the device's own fd: never read blocking.
        os.set_blocking(port_fd, False)
        tap_port_init(&d.port, port_fd)
        if null_frame is not None:
            if 0 < len(null_frame) < VENET_MIN_FRAME or len(null_frame) > mtu + VENET_ETH_HLEN:
                # A frame the engine would refuse would be read again at once.
                raise ValueError(f"a null port's frame is {VENET_MIN_FRAME}..{mtu + VENET_ETH_HLEN} bytes")
            self.nullp = null_new(<const uint8_t *><const char *>null_frame, len(null_frame))
            if self.nullp == NULL:
                raise MemoryError()
            null_port_init(&d.port, port_fd, self.nullp)
            d.port_endless = len(null_frame) > 0
        if reflect:
            if reflect > 4096:
                raise ValueError("reflect: at most 4096 frames")
            d.reflect = <vq_reflect_t *>calloc(1, sizeof(vq_reflect_t))
            if d.reflect == NULL:
                raise MemoryError()
            d.reflect.slots = reflect
            d.reflect.slot = 16 + mtu + VENET_ETH_HLEN
            d.reflect.buf = <char *>calloc(reflect, d.reflect.slot)
            d.reflect.len = <uint32_t *>calloc(reflect, sizeof(uint32_t))
            if d.reflect.buf == NULL or d.reflect.len == NULL:
                raise MemoryError()
            d.port.ctx = d.reflect
            d.port.send = vq_reflect_send
            d.port.recv = vq_reflect_recv
        self.capset = capture
        venet_cap_tee_init(&d.tee, &d.port, NULL if capture is None else capture.set)
        d.io = &d.port
        d.bounce_cap = VQ_HDR_ROOM + VENET_MAX_GSO_FRAME
        d.bounce = <char *>calloc(1, d.bounce_cap)
        d.itab = <vring_desc_t *>calloc(VQ_MAX_SEGS, sizeof(vring_desc_t))
        d.segs = <vq_seg_t *>calloc(VQ_MAX_SEGS, sizeof(vq_seg_t))
        d.iov = <iovec *>calloc(VQ_MAX_SEGS + 1, sizeof(iovec))
        if d.bounce == NULL or d.itab == NULL or d.segs == NULL or d.iov == NULL:
            raise MemoryError()
        for i in range(2):
            cfg = queues[i]
            q = &d.q[i]
            num = cfg["num"]
            if not 1 <= num <= VQ_MAX_SIZE or num & (num - 1):
                raise ValueError(f"queue {i}: size {num} is not a power of 2 up to {VQ_MAX_SIZE}")
            q.num = num
            q.mask = num - 1
            q.desc = vq_uva(d, cfg["desc"], 16 * num)
            q.avail = vq_uva(d, cfg["avail"], 6 + 2 * num)
            q.used = vq_uva(d, cfg["used"], 6 + 8 * num)
            if q.desc == NULL or q.avail == NULL or q.used == NULL:
                raise ValueError(f"queue {i}: a ring address is outside the memory table")
            if <uint64_t>q.desc % 16 or <uint64_t>q.avail % 2 or <uint64_t>q.used % 4:
                raise ValueError(f"queue {i}: a ring address is misaligned")
            q.last_avail = cfg["base"]
            q.used_idx = cfg["base"]
            # A driver that reconnects to a new backend may give base 0
            # while its rings are far along (DPDK's virtio-user does): the
            # used idx in memory is where service stopped, since every
            # chain taken was returned at once.  Resumed from there.
            used_now = vq_load_acquire_u16(q.used + 2)
            if used_now != q.used_idx:
                q.last_avail = q.used_idx = used_now
                self.resynced += 1
            q.call_fd = cfg["call_fd"]
            q.armed = True          # the driver starts with notifications on
            q.ready = True
        # The kick eventfds are the driver's: watched edge-triggered (each
        # kick is an edge), never read.  The port is level-triggered: its
        # frames wait in the kernel while the driver has no RX buffers, and
        # it leaves the interest set then (want_port).
        for i, bit in ((VQ_RX, VQ_EV_KICK_RX), (VQ_TX, VQ_EV_KICK_TX)):
            kfd = queues[i]["kick_fd"]
            if kfd >= 0 and vbus_task_fd(&self.task, kfd, bit, True) < 0:
                raise ValueError("the engine's fd table is full")
        self.port_i = vbus_task_fd(&self.task, port_fd, VQ_EV_PORT, False)
        if self.port_i < 0:
            raise ValueError("the engine's fd table is full")
        d.want_port = True
        self.poll_ns = <int64_t>(poll_us * 1000)
        self.task.poll_ns = self.poll_ns
        self.task.peek = _vq_peek
        self.task.run = _vq_run             # last: marks the engine initialised

    def __dealloc__(self):
        free(self.nullp)
        if self.d != NULL:
            if self.d.reflect != NULL:
                free(self.d.reflect.buf)
                free(self.d.reflect.len)
                free(self.d.reflect)
            free(self.d.bounce)
            free(self.d.itab)
            free(self.d.segs)
            free(self.d.iov)
            free(self.d)
            self.d = NULL

    cdef int _turn(self, uint32_t events) noexcept nogil:
        """One turn (the task's run callback): driver -> port, port ->
        driver, then MORE (work done), POLL (none now but some just before,
        and a poll window asked for: the driver's kicks NOT asked for, the
        worker busy-polls the rings first), IDLE (kicks asked for and the
        rings re-checked after, so none is lost: sleep on the fds); never
        DONE (a queue the driver broke stops alone, the device stays)."""
        cdef vq_dev_t *d = self.d
        cdef uint32_t did
        cdef bint more
        cdef vq_t *rxq = &d.q[VQ_RX]
        cdef vq_t *txq = &d.q[VQ_TX]
        d.st.turns += 1
        if events & VBUS_EV_POLLED:
            d.st.busy_polls += 1
        elif events & VBUS_EV_FDS:
            d.st.wakeups += 1
        if events & VQ_EV_PORT:
            d.port_ready = True
        # Captures attached or not: looked at once per turn.
        d.io = venet_cap_port(&d.tee)
        # RX buffers are asked for only while a frame waits for them: a
        # driver refilling its RX ring kicks us for nothing otherwise.
        if rxq.armed and not rxq.waiting:
            vq_disarm(d, rxq)
        did = vq_tx(d)
        if did and d.reflect != NULL:
            d.port_ready = True         # no fd says so: the FIFO is ours
        did += vq_rx(d)
        # The port is watched only when a frame read from it has a place to
        # go, and never in reflect mode: the FIFO stands in for it, and the
        # fd, never read then, would keep a level-triggered worker spinning.
        d.want_port = (rxq.ready and not rxq.broken and d.rx_len == 0 and not rxq.waiting
                       and d.reflect == NULL)
        vbus_task_arm_fd(&self.task, self.port_i, d.want_port)
        if did:
            self.recent = True
            return VBUS_TASK_MORE
        if self.poll_ns > 0 and self.recent and not events & VBUS_EV_ARM:
            # Only right after work: a wake-up that found nothing must not
            # buy a poll window, or an idle engine would spin.
            self.recent = False
            return VBUS_TASK_POLL
        self.recent = False
        more = False
        if txq.ready and not txq.broken:
            more = vq_arm(d, txq, txq.last_avail)
        if not more and rxq.waiting and rxq.ready and not rxq.broken:
            # Waiting for receive buffers: ask for the kick that brings them.
            more = vq_arm(d, rxq, rxq.wait_idx)
        return VBUS_TASK_MORE if more else VBUS_TASK_IDLE

    def run(self, double timeout=-1):
        """Serve until stop() (or `timeout` s), alone on a private worker
        in the calling thread (tests; a device's engine is served by the
        pool).  Returns 'stopped' or 'timeout'."""
        return self.serve_alone(timeout)

    def last_avail(self, int i):
        """The queue's next avail index (GET_VRING_BASE)."""
        return self.d.q[i].last_avail

    def broken(self, int i):
        return bool(self.d.q[i].broken)

    def stats(self):
        s = dict(self.d.st)
        bad = s.pop("bad")
        for i in range(1, VQ_NREASONS):
            s["drop_" + REASONS[i]] = bad[i]
        s["base_resyncs"] = self.resynced
        if self.d.reflect != NULL:
            s["reflect_refused"] = self.d.reflect.refused
        s["rx_queue_broken"] = int(self.d.q[VQ_RX].broken)
        s["tx_queue_broken"] = int(self.d.q[VQ_TX].broken)
        return s
