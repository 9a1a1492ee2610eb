# Capture taps in the data path (docs/capture.md): C-level, GIL released.
#
# A device's captures live in one venet_capset_t (owned by a
# venet.devices._capture.CaptureSet).  Its pump reaches its port through
# `io`: the port itself while no capture is attached, or a tee (a port of
# its own, venet/devices/port.pxd) that passes every frame to the real port
# and copies it to each capture whose direction and filter take it.  The
# pump picks between the two once per batch (venet_cap_port): with no
# capture attached the data path pays that one load and test per batch.
#
# The set's mutex is taken by the pump per frame while captures are
# attached, and by the control thread only to attach or detach a capture
# (never across anything a peer controls): after a detach returns, the pump
# no longer touches that capture's ring, and its memory may be unmapped.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from posix.uio cimport iovec
from posix.time cimport clock_gettime, timespec, CLOCK_REALTIME
from shmsignal.includes.atomics cimport shm_load_relaxed_u32
from ioq.abi cimport ioq_desc_t
from ioq.ring cimport ioq_ring_t, ioq_free, ioq_commit, ioq_slot, ioq_pair, ioq_kick_peer
from venet.devices.port cimport venet_port_t

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, const void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef extern from "venet_bpf.h" nogil:
    ctypedef struct venet_bpf_insn_t:
        uint16_t code
        uint8_t jt
        uint8_t jf
        uint32_t k
    ctypedef struct venet_bpf_seg_t:
        const uint8_t *base
        uint32_t len
    ctypedef struct venet_bpf_pkt_t:
        const venet_bpf_seg_t *seg
        uint32_t nseg
        uint32_t len
    enum:
        VENET_BPF_MAXINSNS
        VENET_BPF_OK
        VENET_BPF_NREASONS
    const char *venet_bpf_reason[]
    int venet_bpf_check(const venet_bpf_insn_t *p, uint32_t n, uint32_t *at)
    uint32_t venet_bpf_run(const venet_bpf_insn_t *p, uint32_t n, const venet_bpf_pkt_t *pkt)

cdef extern from "venet_capture.h" nogil:
    ctypedef struct venet_cap_rec_t:
        uint64_t ts_ns
        uint32_t orig_len
        uint32_t cap_len
        uint64_t drops
        uint8_t dir
        uint8_t gso_type
        uint16_t gso_size
        uint8_t hdr_flags
        uint8_t pad[3]
    enum:
        VENET_CAP_REC_SIZE
        VENET_CAP_MAX
        VENET_CAP_MIN_SNAPLEN
        VENET_CAP_MAX_SNAPLEN
        VENET_CAP_DIR_IN
        VENET_CAP_DIR_OUT

cdef enum:
    CAP_VHDR = 16               # the vnet header in front of every frame at the port
    CAP_MAX_SEG = 260           # pieces of one frame: a chain's SG list and its header


cdef struct venet_cap_t:
    bint used
    ioq_ring_t *r               # the capture ring (producer end; a Ring the CaptureSet holds)
    venet_bpf_insn_t *prog      # checked copy of the filter (NULL: every frame)
    uint32_t nprog
    uint32_t snaplen
    uint32_t dirs               # VENET_CAP_DIR_* bits taken
    uint64_t seen               # frames of its directions the pump handled
    uint64_t captured           # ...put on its ring
    uint64_t filtered           # ...refused by its filter
    uint64_t dropped            # ...lost: its ring was full


cdef struct venet_capset_t:
    pthread_mutex_t lock
    uint32_t active             # captures attached (read by the pump without the lock)
    venet_cap_t cap[VENET_CAP_MAX]


cdef struct venet_cap_tee_t:
    venet_port_t port           # first: the tee is passed to its functions as its port
    venet_port_t *inner         # the pump's real port
    venet_capset_t *set         # NULL: the pump has no capture set


cdef inline void venet_cap_frame(venet_capset_t *set, iovec *iov, int niov, uint64_t n,
                                 uint8_t dir) noexcept nogil:
    """Offer one frame of n bytes (vnet header first) in iov[0:niov] to
    every capture of `dir`."""
    cdef venet_bpf_seg_t seg[CAP_MAX_SEG]
    cdef venet_bpf_pkt_t pkt
    cdef venet_cap_t *c
    cdef venet_cap_rec_t *rec
    cdef ioq_desc_t *d
    cdef timespec ts
    cdef uint8_t *vh = <uint8_t *>iov[0].iov_base
    cdef uint64_t left = n - CAP_VHDR, off
    cdef uint32_t i, ns = 0, keep, done, take, s
    cdef int j
    cdef bint have_ts = False
    cdef char *buf
    if n <= CAP_VHDR or n - CAP_VHDR > <uint64_t>0xffffffffu or iov[0].iov_len < CAP_VHDR:
        return
    # The frame's pieces, past its vnet header, cut at n bytes.
    off = CAP_VHDR
    for j in range(niov):
        if left == 0 or ns == CAP_MAX_SEG:
            break
        if iov[j].iov_len <= off:
            off -= iov[j].iov_len
            continue
        take = <uint32_t>(iov[j].iov_len - off) if iov[j].iov_len - off < left else <uint32_t>left
        seg[ns].base = <const uint8_t *>iov[j].iov_base + off
        seg[ns].len = take
        ns += 1
        left -= take
        off = 0
    pkt.seg = seg
    pkt.nseg = ns
    pkt.len = <uint32_t>(n - CAP_VHDR - left)
    pthread_mutex_lock(&set.lock)
    for i in range(VENET_CAP_MAX):
        c = &set.cap[i]
        if not c.used or not (c.dirs & dir):
            continue
        c.seen += 1
        keep = pkt.len
        if c.nprog:
            keep = venet_bpf_run(c.prog, c.nprog, &pkt)
            if keep == 0:
                c.filtered += 1
                continue
        if keep > pkt.len:
            keep = pkt.len
        if keep > c.snaplen:
            keep = c.snaplen
        if keep > c.r.buf_size - VENET_CAP_REC_SIZE:
            keep = c.r.buf_size - VENET_CAP_REC_SIZE
        if ioq_free(c.r, 1) == 0:
            # Full (or the capturer broke its ring index): this capture
            # loses the frame; the traffic does not wait.
            c.dropped += 1
            continue
        if not have_ts:
            clock_gettime(CLOCK_REALTIME, &ts)
            have_ts = True
        buf = c.r.base + ioq_pair(c.r, c.r.head)
        rec = <venet_cap_rec_t *>buf
        rec.ts_ns = <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec
        rec.orig_len = pkt.len
        rec.cap_len = keep
        rec.drops = c.dropped
        rec.dir = dir
        rec.hdr_flags = vh[0]
        rec.gso_type = vh[1]
        rec.gso_size = <uint16_t>(vh[4] | (vh[5] << 8)) if vh[1] else 0
        rec.pad[0] = 0
        rec.pad[1] = 0
        rec.pad[2] = 0
        done = 0
        s = 0
        while done < keep:
            take = seg[s].len if seg[s].len < keep - done else keep - done
            memcpy(buf + VENET_CAP_REC_SIZE + done, seg[s].base, take)
            done += take
            s += 1
        d = ioq_slot(c.r, 0)
        d.cookie = c.r.head
        d.offset = ioq_pair(c.r, c.r.head)
        d.len = VENET_CAP_REC_SIZE + keep
        d.flags = 0
        d.user = 0
        ioq_commit(c.r, 1)
        ioq_kick_peer(c.r)
        c.captured += 1
    pthread_mutex_unlock(&set.lock)


cdef inline ssize_t venet_cap_send(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    cdef venet_cap_tee_t *tee = <venet_cap_tee_t *>port
    cdef ssize_t w = tee.inner.send(tee.inner, iov, niov)
    cdef uint64_t total = 0
    cdef int i
    if w > CAP_VHDR:
        for i in range(niov):
            total += iov[i].iov_len
        if <uint64_t>w == total:        # only frames the port took whole
            venet_cap_frame(tee.set, iov, niov, total, VENET_CAP_DIR_OUT)
    return w


cdef inline ssize_t venet_cap_recv(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    cdef venet_cap_tee_t *tee = <venet_cap_tee_t *>port
    cdef ssize_t r = tee.inner.recv(tee.inner, iov, niov)
    cdef uint64_t room = 0
    cdef int i
    if r > CAP_VHDR:
        for i in range(niov):
            room += iov[i].iov_len
        if <uint64_t>r <= room:         # a frame cut by the read is refused by the pump anyway
            venet_cap_frame(tee.set, iov, niov, <uint64_t>r, VENET_CAP_DIR_IN)
    return r


cdef inline void venet_cap_tee_init(venet_cap_tee_t *tee, venet_port_t *inner,
                                    venet_capset_t *set) noexcept nogil:
    tee.inner = inner
    tee.set = set
    tee.port.ctx = NULL
    tee.port.fd = inner.fd
    tee.port.recv = venet_cap_recv
    tee.port.send = venet_cap_send


cdef inline venet_port_t *venet_cap_port(venet_cap_tee_t *tee) noexcept nogil:
    """The port a pump's batch uses: the tee while a capture is attached."""
    if tee.set != NULL and shm_load_relaxed_u32(&tee.set.active):
        return &tee.port
    return tee.inner
