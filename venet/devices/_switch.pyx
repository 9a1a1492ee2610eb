# cython: language_level=3, boundscheck=False, wraparound=False
"""The venet-switch data path: a learning L2 switch over N ports, in C.

A port is a frontend's rings (its TX ring consumed, its RX ring and event
queue produced), or a tap (the uplink).  One turn (sw_run) serves every
port once: up to SW_BATCH frames popped from its TX ring, each chain and
offload record validated once with the pump's codec (venet/chain.pxd,
venet/meta.pxd), the source MAC learned, the destination looked up, the
frame copied once into each destination's RX paired buffers, the batch
released, and each destination published per batch; at the turn's end
each port with news is signalled once (a kick goes only to a side that
asked to be woken: ioq_kick_peer; under load it waits: sw_signal).  A
destination with no room loses the frame, counted on it; nothing waits.

The switch is a task of a vbus worker pool (vbus/worker.pxd): its one fd
is its own epoll (each port's TX doorbell, edge-triggered; a tap port's
fd), watched edge-triggered, and a turn returns MORE while work is left
and IDLE only after arming every port's TX signal and finding nothing
published meanwhile (no lost wake-up).  MAC ageing needs no timer: a lookup refuses an entry older than
the ageing time, and a periodic sweep during turns reclaims the slots, so
an idle switch is never woken.

Port changes take the switch's lock, which a turn holds while it touches
port memory: once remove_port() returns, the engine never touches that
port's rings again, so its region may be unmapped.
"""
import os
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, malloc, free
from libc.string cimport memcpy, memset
from libc.errno cimport errno, EAGAIN, EINTR
from posix.unistd cimport read
from posix.uio cimport iovec, readv, writev
from shmsignal.includes.atomics cimport shm_now_ns, shm_load_relaxed_u8
from shmsignal.includes.osdefs cimport *
from ioq.abi cimport *
from ioq.ring cimport *
from ioq._ring cimport Ring
from venet.abi cimport *
from venet.meta cimport *
from venet.chain cimport *
from venet.devices.events cimport venet_post_txc
from vbus.worker cimport *
from vbus._worker cimport Task

cdef extern from "venet_gso.h" nogil:
    ctypedef int (*venet_gso_emit_t)(void *arg, const uint8_t *seg, uint32_t len) noexcept nogil
    int venet_csum_finish(uint8_t *f, uint32_t len, uint32_t start, uint32_t off)
    int venet_gso_segment(const uint8_t *f, uint32_t len, uint32_t gso_type, uint32_t mss,
                          uint32_t csum_start, int ecn, uint8_t *seg, uint32_t seg_cap,
                          venet_gso_emit_t emit, void *arg)
    int VENET_GSO_ERR_HEADERS, VENET_GSO_ERR_TOO_BIG, VENET_GSO_ERR_TYPE, VENET_GSO_ERR_EMIT

cdef enum:
    KNOWN_FLAGS = VENET_F_NEEDS_CSUM | VENET_F_GSO | VENET_F_ECN | VENET_F_MORE
    LIN_SIZE = VENET_MAX_GSO_FRAME + 64
    SEG_SIZE = VENET_MAX_MTU + VENET_ETH_HLEN + 64
    TAPBUF_SIZE = VENET_META_SIZE + VENET_MAX_GSO_FRAME + 64
    SWEEP_NS = 1_000_000_000

cdef uint64_t MAC_USED = 1ULL << 63
cdef uint64_t TAG_STOP = 0xffffffffffffffffULL
cdef uint64_t LOW32 = 0xffffffffULL


# ---- the MAC table: open addressing, linear probing, backward-shift delete --

cdef inline uint32_t mac_home(sw_t *sw, uint64_t key) noexcept nogil:
    return <uint32_t>((key * 0x9E3779B97F4A7C15ULL) >> (64 - sw.mac_bits)) & sw.mac_mask


cdef inline int64_t mac_find(sw_t *sw, uint64_t key) noexcept nogil:
    cdef uint32_t i = mac_home(sw, key)
    while sw.mac[i].key != 0:
        if sw.mac[i].key == key:
            return i
        i = (i + 1) & sw.mac_mask
    return -1


cdef void mac_delete(sw_t *sw, uint32_t i) noexcept nogil:
    cdef uint32_t j = i, k
    cdef bint stay
    while True:
        j = (j + 1) & sw.mac_mask
        if sw.mac[j].key == 0:
            break
        k = mac_home(sw, sw.mac[j].key)
        # Does the entry at j belong between i (exclusive) and j?  Then it stays.
        if i <= j:
            stay = i < k and k <= j
        else:
            stay = i < k or k <= j
        if stay:
            continue
        sw.mac[i] = sw.mac[j]
        i = j
    sw.mac[i].key = 0
    sw.mac_count -= 1


cdef int mac_learn(sw_t *sw, uint64_t mac, uint32_t slot) noexcept nogil:
    """0: known on this port (refreshed), 1: learned or moved here, -1: not
    learned (the table is full)."""
    cdef uint64_t key = mac | MAC_USED
    cdef int64_t at = mac_find(sw, key)
    cdef uint32_t i
    cdef sw_port_t *p = &sw.ports[slot]
    if at >= 0:
        if sw.mac[at].port != slot or sw.mac[at].gen != p.gen:
            sw.mac[at].port = slot
            sw.mac[at].gen = p.gen
            sw.st.mac_moved += 1
            sw.mac[at].seen_ns = sw.now
            return 1
        sw.mac[at].seen_ns = sw.now
        return 0
    if sw.mac_count >= sw.mac_size:
        sw.st.mac_table_full += 1
        return -1
    i = mac_home(sw, key)
    while sw.mac[i].key != 0:
        i = (i + 1) & sw.mac_mask
    sw.mac[i].key = key
    sw.mac[i].seen_ns = sw.now
    sw.mac[i].port = slot
    sw.mac[i].gen = p.gen
    sw.mac_count += 1
    sw.st.mac_learned += 1
    return 1


cdef int64_t mac_lookup(sw_t *sw, uint64_t mac) noexcept nogil:
    """The live port slot of a learned MAC, or -1 (unknown, aged out, or
    its port gone)."""
    cdef int64_t at = mac_find(sw, mac | MAC_USED)
    cdef uint32_t slot
    if at < 0:
        return -1
    slot = sw.mac[at].port
    if sw.now - sw.mac[at].seen_ns > sw.ageing_ns:
        mac_delete(sw, <uint32_t>at)
        sw.st.mac_aged += 1
        return -1
    if not sw.ports[slot].used or sw.ports[slot].gen != sw.mac[at].gen:
        mac_delete(sw, <uint32_t>at)
        sw.st.mac_forgotten += 1
        return -1
    return slot


cdef void mac_sweep(sw_t *sw, int64_t slot) noexcept nogil:
    """Delete aged entries, and (slot >= 0) every entry of that port."""
    cdef uint32_t i = 0
    cdef mac_ent_t *e
    while i <= sw.mac_mask:
        e = &sw.mac[i]
        if e.key != 0:
            if slot >= 0 and e.port == <uint32_t>slot:
                mac_delete(sw, i)
                sw.st.mac_forgotten += 1
                continue            # an entry may have moved into i: look again
            if sw.now - e.seen_ns > sw.ageing_ns:
                mac_delete(sw, i)
                sw.st.mac_aged += 1
                continue
        i += 1


# ---- delivery -----------------------------------------------------------

cdef inline uint64_t mac48(const uint8_t *p) noexcept nogil:
    return (<uint64_t>p[0] << 40) | (<uint64_t>p[1] << 32) | (<uint64_t>p[2] << 24) | \
           (<uint64_t>p[3] << 16) | (<uint64_t>p[4] << 8) | p[5]


cdef uint64_t gather(const iovec *iov, uint32_t niov, uint8_t *dst, uint64_t want) noexcept nogil:
    """Copy the first `want` bytes of the pieces into dst; returns the bytes copied."""
    cdef uint64_t got = 0, n
    cdef uint32_t i
    for i in range(niov):
        if got >= want:
            break
        n = iov[i].iov_len
        if n > want - got:
            n = want - got
        memcpy(dst + got, iov[i].iov_base, n)
        got += n
    return got


cdef void ring_put(ioq_ring_t *r, uint32_t at, const uint8_t *rec, const iovec *iov,
                   uint32_t niov, uint64_t length) noexcept nogil:
    """Write a record (16 bytes, or none) and the pieces into the paired
    buffers of the free slots from `at` on, each buffer full but the last."""
    cdef uint32_t bs = r.buf_size, slot = 0, used = 0, i
    cdef uint64_t n, room, left
    cdef char *src
    cdef char *buf = r.base + ioq_pair(r, r.head + at)
    if rec != NULL:
        memcpy(buf, rec, VENET_META_SIZE)
        used = VENET_META_SIZE
    for i in range(niov):
        src = <char *>iov[i].iov_base
        left = iov[i].iov_len
        while left:
            if used == bs:
                slot += 1
                used = 0
                buf = r.base + ioq_pair(r, r.head + at + slot)
            room = bs - used
            n = left if left < room else room
            memcpy(buf + used, src, n)
            used += <uint32_t>n
            src += n
            left -= n


cdef inline void put_one(ioq_ring_t *r, uint32_t at, const iovec *iov, uint32_t niov,
                         uint64_t length) noexcept nogil:
    """A plain frame that fits one buffer: copied into the paired buffer
    of free slot `at`, its descriptor written field by field and never read
    back (the line is the frontend's until we write it: a read would wait
    for it, a store need not)."""
    cdef uint32_t pos = r.head + at, i
    cdef uint64_t off = ioq_pair(r, pos)
    cdef char *buf = r.base + off
    cdef ioq_desc_t *d = ioq_slot(r, at)
    if niov == 1:
        memcpy(buf, iov[0].iov_base, length)
    else:
        for i in range(niov):
            memcpy(buf, iov[i].iov_base, iov[i].iov_len)
            buf += iov[i].iov_len
    d.cookie = pos
    d.offset = off
    d.len = <uint32_t>length
    d.flags = 0
    d.user = 0


cdef bint port_put(sw_t *sw, sw_port_t *q, const uint8_t *rec, const iovec *iov, uint32_t niov,
                   uint64_t total, uint32_t flags, const venet_meta_t *meta) noexcept nogil:
    """One frame to port q as it is (with its record when rec is given):
    into its RX ring's next free slots (published at the batch's end), or
    to its tap.  Counted on q; False when q could not take it."""
    cdef uint64_t length = total + (VENET_META_SIZE if rec != NULL else 0)
    cdef ioq_ring_t *r
    cdef uint32_t need
    cdef ssize_t w
    cdef iovec tiov[SW_MAX_IOV + 1]
    cdef uint8_t vhdr[VENET_META_SIZE]
    cdef uint32_t i
    if length > q.max_rx:
        q.st.drop_rx_too_long += 1
        return False
    if q.kind == SW_KIND_TAP:
        memset(vhdr, 0, VENET_META_SIZE)
        if rec != NULL:
            venet_meta_to_virtio(meta, flags, <virtio_net_hdr_t *>vhdr)
        tiov[0].iov_base = vhdr
        tiov[0].iov_len = VENET_META_SIZE
        for i in range(niov):
            tiov[i + 1] = iov[i]
        w = writev(q.fd, tiov, niov + 1)
        if w != <ssize_t>(total + VENET_META_SIZE):
            if w < 0 and errno == EAGAIN:
                q.st.drop_rx_full += 1
            else:
                q.st.drop_tap_write += 1
            return False
    else:
        r = q.rx
        need = <uint32_t>((length + r.buf_size - 1) // r.buf_size)
        if ioq_free(r, q.rx_pend + need) < q.rx_pend + need:
            q.st.drop_rx_full += 1
            return False
        if need == 1 and rec == NULL:
            put_one(r, q.rx_pend, iov, niov, length)
            q.rx_pend += 1
        else:
            ring_put(r, q.rx_pend, rec, iov, niov, length)
            q.rx_pend += venet_chain_fill(r, q.rx_pend, length, flags if rec != NULL else 0, 0)
    q.st.tx_frames += 1
    q.st.tx_bytes += total
    return True


cdef struct emit_ctx_t:
    sw_t *sw
    sw_port_t *q


cdef int emit_segment(void *arg, const uint8_t *seg, uint32_t n) noexcept nogil:
    cdef emit_ctx_t *c = <emit_ctx_t *>arg
    cdef iovec one
    one.iov_base = <void *>seg
    one.iov_len = n
    port_put(c.sw, c.q, NULL, &one, 1, n, 0, NULL)
    c.q.st.segments += 1
    return 0


cdef bint linearize(sw_t *sw, const iovec *iov, uint32_t niov, uint64_t total) noexcept nogil:
    """A private copy of the frame in sw.lin (once per frame)."""
    if sw.lin_state == 0:
        if total > LIN_SIZE:
            return False
        gather(iov, niov, sw.lin, total)
        sw.lin_state = 1
    return True


cdef void deliver(sw_t *sw, sw_port_t *q, const iovec *iov, uint32_t niov, uint64_t total,
                  uint32_t flags, venet_meta_t *meta) noexcept nogil:
    """Frame to port q in the form q negotiated: whole (with its record) if
    q takes its offloads, else segmented or with its checksum finished."""
    cdef uint32_t need
    cdef emit_ctx_t ctx
    cdef iovec one
    cdef int rc
    if flags & VENET_F_GSO:
        need = VENET_CAP_CSUM | venet_gso_cap(meta.gso_type)
        if flags & VENET_F_ECN:
            need |= VENET_CAP_ECN
        if q.caps & need == need:
            if port_put(sw, q, <uint8_t *>meta, iov, niov, total, flags, meta):
                q.st.gso_whole += 1
            return
        if not linearize(sw, iov, niov, total):
            q.st.drop_segment += 1
            return
        ctx.sw = sw
        ctx.q = q
        rc = venet_gso_segment(sw.lin, <uint32_t>total, meta.gso_type, meta.gso_size, meta.csum_start,
                               1 if flags & VENET_F_ECN else 0, sw.seg, sw.max_plain,
                               emit_segment, &ctx)
        if rc < 0:
            q.st.drop_segment += 1
        else:
            q.st.segmented += 1
        return
    if flags & VENET_F_NEEDS_CSUM:
        if q.caps & VENET_CAP_CSUM:
            port_put(sw, q, <uint8_t *>meta, iov, niov, total, flags, meta)
            return
        if not linearize(sw, iov, niov, total):
            q.st.drop_segment += 1
            return
        if sw.lin_state == 1:
            if venet_csum_finish(sw.lin, <uint32_t>total, meta.csum_start, meta.csum_offset) < 0:
                q.st.drop_segment += 1
                return
            sw.lin_state = 2
        one.iov_base = sw.lin
        one.iov_len = total
        if port_put(sw, q, NULL, &one, 1, total, 0, NULL):
            q.st.csum_finished += 1
        return
    port_put(sw, q, NULL, iov, niov, total, 0, NULL)


cdef void forward(sw_t *sw, uint32_t slot, const iovec *iov, uint32_t niov, uint64_t total,
                  uint32_t flags, venet_meta_t *meta) noexcept nogil:
    """A checked frame from port `slot`: learn, look up, deliver."""
    cdef sw_port_t *p = &sw.ports[slot]
    cdef uint8_t eth[VENET_ETH_HLEN]
    cdef uint64_t dst, src
    cdef int64_t to
    cdef uint32_t i, q
    cdef int learnt
    gather(iov, niov, eth, VENET_ETH_HLEN)      # the one read of the addresses
    dst = mac48(eth)
    src = mac48(eth + 6)
    sw.lin_state = 0
    p.st.rx_frames += 1
    p.st.rx_bytes += total
    sw.st.frames += 1
    # The batch's cache (sw.c_*, reset by ring_turn and tap_turn) stands for
    # the table while nothing else changes it: sw.now, the ports and the
    # other entries are fixed during a turn; a learn that changes the table
    # drops the cached look-up.
    if not eth[6] & 1 and (src | MAC_USED) != sw.c_src:
        learnt = mac_learn(sw, src, slot)
        if learnt > 0:
            sw.c_dst = 0
        sw.c_src = (src | MAC_USED) if learnt >= 0 else 0
    if eth[0] & 1:
        to = -1
    elif (dst | MAC_USED) == sw.c_dst:
        to = sw.c_to
    else:
        to = mac_lookup(sw, dst)
        sw.c_dst = dst | MAC_USED
        sw.c_to = to
    if to >= 0:
        if <uint32_t>to == slot:
            p.st.filtered += 1
            return
        p.st.unicast += 1
        deliver(sw, &sw.ports[to], iov, niov, total, flags, meta)
        return
    p.st.floods += 1
    sw.st.floods += 1
    for i in range(sw.nact):
        q = sw.act[i]
        if q != slot:
            deliver(sw, &sw.ports[q], iov, niov, total, flags, meta)


# ---- a port's turn --------------------------------------------------------

cdef inline void txc(sw_t *sw, sw_port_t *p, uint32_t status) noexcept nogil:
    if p.evq == NULL or not sw.items[0].flags & VENET_F_TXC:
        return
    if venet_post_txc(p.evq, sw.items[0].cookie, status):
        p.st.txc_events += 1
        p.txc_posted += 1
    else:
        p.st.txc_lost += 1


cdef uint32_t check_frame(sw_t *sw, sw_port_t *p, uint32_t flags, iovec *iov, uint64_t *total,
                          venet_meta_t *meta) noexcept nogil:
    """The pump's checks of a chained frame's flags and record (the record
    taken out of iov[0] into *meta).  VENET_TXC_SENT or the refusal,
    counted on p."""
    cdef uint32_t st
    if flags & ~p.known_flags:
        p.st.drop_offload += 1
        return VENET_TXC_BAD_FLAGS
    memset(meta, 0, sizeof(venet_meta_t))
    if flags & VENET_F_META and not venet_chain_record(iov, total, meta):
        if total[0] < VENET_META_SIZE + VENET_MIN_FRAME:
            p.st.drop_short += 1
            return VENET_TXC_SHORT
        p.st.drop_meta[META_BAD_RECORD] += 1
        return VENET_TXC_META_BASE + META_BAD_RECORD
    if total[0] < VENET_MIN_FRAME:
        p.st.drop_short += 1
        return VENET_TXC_SHORT
    if total[0] > VENET_MAX_GSO_FRAME:
        p.st.drop_meta[META_TOO_LONG] += 1
        return VENET_TXC_META_TOO_LONG
    st = venet_meta_check(meta, flags, <uint32_t>total[0], p.caps, sw.max_plain)
    if st != META_OK:
        p.st.drop_meta[st] += 1
        return VENET_TXC_META_BASE + st
    return VENET_TXC_SENT


cdef void ring_frame(sw_t *sw, uint32_t slot, uint32_t n, uint32_t k) noexcept nogil:
    """One popped frame of a ring port: items[0:k] of a chain peeked n long."""
    cdef sw_port_t *p = &sw.ports[slot]
    cdef uint32_t st, niov, flags
    cdef uint64_t total
    cdef venet_meta_t meta
    st = venet_chain_check(sw.items, k, n)
    if st != VENET_CHAIN_OK:
        if st == VENET_CHAIN_BAD_DESC:
            p.st.drop_bad_desc += 1
            txc(sw, p, VENET_TXC_BAD_DESC)
        else:
            p.st.drop_chain += 1
            txc(sw, p, VENET_TXC_BAD_CHAIN)
        return
    niov = venet_chain_iov(p.tx.base, sw.items, n, sw.sg, sw.iov, &total)
    flags = venet_chain_flags(sw.items)
    st = check_frame(sw, p, flags, sw.iov, &total, &meta)
    if st == VENET_TXC_SENT:
        forward(sw, slot, sw.iov, niov, total, flags & (VENET_F_META | VENET_F_ECN), &meta)
    txc(sw, p, st)


cdef uint32_t ring_turn(sw_t *sw, uint32_t slot) noexcept nogil:
    """Up to SW_BATCH frames from a ring port's TX ring; returns descriptors taken."""
    cdef sw_port_t *p = &sw.ports[slot]
    cdef ioq_ring_t *r = p.tx
    cdef uint32_t done = 0, frames = 0, n, k, seen
    if r.broken or p.rx.broken:
        p.st.broken += 1
        return 0
    sw.c_src = sw.c_dst = 0
    ioq_take(r)
    while frames < SW_BATCH:
        n = venet_chain_peek(r, &seen)
        if seen == 0 or (n == 0 and not p.discard):
            break
        k = venet_chain_pop(r, sw.items, seen, sw.sg, SW_SG_SCRATCH)
        if k == 0:
            break
        done += k
        if p.discard:
            p.discard = n == 0 or n == VENET_CHAIN_TOO_LONG
            continue
        frames += 1
        if n == VENET_CHAIN_TOO_LONG:
            p.st.drop_chain += 1
            txc(sw, p, VENET_TXC_BAD_CHAIN)
            p.discard = True
            continue
        ring_frame(sw, slot, n, k)
    if frames == SW_BATCH:
        sw.more = True
    if done:
        ioq_release(r)
        if p.tx_unsig == 0:
            p.tx_since = sw.now
        p.tx_unsig += done
    if p.txc_posted:
        p.txc_posted = 0
        ioq_kick_peer(p.evq)
    return done


cdef uint32_t tap_turn(sw_t *sw, uint32_t slot) noexcept nogil:
    """Up to SW_BATCH frames read from a tap port."""
    cdef sw_port_t *p = &sw.ports[slot]
    cdef uint32_t frames = 0, reads = 0, mflags, st
    cdef ssize_t got
    cdef iovec one
    cdef virtio_net_hdr_t h
    cdef venet_meta_t meta
    sw.c_src = sw.c_dst = 0
    # Bounded in reads: refused frames and interrupted reads cost budget too.
    while p.tap_ready and reads < SW_BATCH:
        reads += 1
        got = read(p.fd, sw.tapbuf, TAPBUF_SIZE)
        if got < 0:
            if errno != EINTR:
                p.tap_ready = False     # EAGAIN: empty until epoll says otherwise
            continue
        if got == 0:
            p.tap_ready = False
            break
        frames += 1
        if got < VENET_META_SIZE + VENET_ETH_HLEN:
            p.st.drop_short += 1
            continue
        memcpy(&h, sw.tapbuf, sizeof(virtio_net_hdr_t))
        st = venet_meta_from_virtio(&h, &meta, &mflags)
        if st == META_OK:
            st = venet_meta_check(&meta, mflags, <uint32_t>(got - VENET_META_SIZE), p.caps, 0xffffffff)
        if st != META_OK:
            p.st.drop_rx_meta += 1
            continue
        one.iov_base = sw.tapbuf + VENET_META_SIZE
        one.iov_len = got - VENET_META_SIZE
        forward(sw, slot, &one, 1, <uint64_t>(got - VENET_META_SIZE), mflags, &meta)
    if p.tap_ready:
        sw.more = True
    return frames


cdef void flush(sw_t *sw) noexcept nogil:
    """Publish what the batch put in each port's RX ring (a polling
    frontend sees it at once); the signals wait for the turn's end."""
    cdef uint32_t i
    cdef sw_port_t *q
    for i in range(sw.nact):
        q = &sw.ports[sw.act[i]]
        if q.rx_pend:
            ioq_commit(q.rx, q.rx_pend)
            if not q.kick_due:
                q.kick_due = True
                q.rx_since = sw.now
            q.rx_unsig += q.rx_pend
            q.rx_pend = 0


cdef inline bint peer_asleep(ioq_ring_t *r) noexcept nogil:
    """The peer asked to be kicked: signalling it now costs a syscall (and
    a wake-up).  A peer that has not is signalled at once: that is a store."""
    return shm_load_relaxed_u8(&r.sig.shm.side[1 - r.sig.me].enabled) != 0


cdef void sw_signal(sw_t *sw) noexcept nogil:
    """End of a turn: signal each port with news (frames published for it,
    TX slots released), once however many senders fed it.  When the turn
    took every frame it saw, all of them now.  When frames were left behind
    (a batch was full: the switch turns again at once) a port that sleeps
    is kicked only once it has a share of its ring to read (or to fill),
    or its news is SW_SIGNAL_DEFER_NS old: under load one wake-up then
    carries many batches, not one."""
    cdef uint32_t i
    cdef sw_port_t *q
    cdef bint now = not sw.more
    for i in range(sw.nact):
        q = &sw.ports[sw.act[i]]
        if q.kind != SW_KIND_RING:
            continue
        if q.kick_due and (now or q.rx_unsig >= q.rx.count // SW_RX_SIGNAL_PART
                           or sw.now - q.rx_since >= SW_SIGNAL_DEFER_NS or not peer_asleep(q.rx)):
            q.kick_due = False
            q.rx_unsig = 0
            if ioq_kick_peer(q.rx) > 0:
                q.st.kicks += 1
        if q.tx_unsig and (now or q.tx_unsig >= q.tx.count // SW_TX_SIGNAL_PART
                           or sw.now - q.tx_since >= SW_SIGNAL_DEFER_NS or not peer_asleep(q.tx)):
            q.tx_unsig = 0
            ioq_kick_peer(q.tx)


cdef int sw_run(sw_t *sw, uint32_t events) noexcept nogil:
    """One turn over every port: VBUS_TASK_MORE while work is left (a
    batch was full; with busy-polling, after any work), VBUS_TASK_POLL
    right after work when busy-polling was asked (signals left unarmed: the
    peers need not kick while the worker polls), else VBUS_TASK_IDLE once
    every signal is armed and nothing arrived meanwhile."""
    cdef uint32_t i, did = 0, slot
    cdef bint work = False
    cdef sw_port_t *p
    pthread_mutex_lock(&sw.lock)
    sw.now = shm_now_ns()
    sw.st.turns += 1
    sw.more = False
    if sw.now >= sw.next_sweep:
        mac_sweep(sw, -1)
        sw.next_sweep = sw.now + SWEEP_NS
    for i in range(sw.nact):
        slot = sw.act[i]
        if sw.ports[slot].kind == SW_KIND_TAP:
            did += tap_turn(sw, slot)
        else:
            did += ring_turn(sw, slot)
        flush(sw)
    sw_signal(sw)
    if did and (sw.more or sw.poll_ns > 0):
        sw.recent = True
        pthread_mutex_unlock(&sw.lock)
        return VBUS_TASK_MORE
    if not did and sw.poll_ns > 0 and sw.recent and not events & VBUS_EV_ARM:
        sw.recent = False
        pthread_mutex_unlock(&sw.lock)
        return VBUS_TASK_POLL
    # Not busy-polling and this turn took every frame it saw (or none): arm
    # now, not after one more turn that would find nothing (on the CPU it
    # shares with a frontend just kicked, that turn delays the frontend).
    sw.recent = did != 0
    # Arm, then re-check: a frame published after the turn looked is seen
    # here, or its producer sees `enabled` and kicks.
    for i in range(sw.nact):
        p = &sw.ports[sw.act[i]]
        if p.kind == SW_KIND_TAP:
            if p.tap_ready:
                work = True
        elif not p.tx.broken and ioq_arm(p.tx):
            work = True
    if work:
        for i in range(sw.nact):
            p = &sw.ports[sw.act[i]]
            if p.kind == SW_KIND_RING:
                ioq_disarm(p.tx)
    pthread_mutex_unlock(&sw.lock)
    return VBUS_TASK_MORE if work else VBUS_TASK_IDLE


cdef bint sw_peek(sw_t *sw) noexcept nogil:
    """Is there work (the worker pool's `peek`)?  A port being added or
    removed holds the lock: then a turn looks (the rings of a port being
    removed may be unmapped as soon as its removal returns)."""
    cdef uint32_t i
    cdef sw_port_t *p
    cdef bint work = False
    if pthread_mutex_trylock(&sw.lock) != 0:
        return True
    for i in range(sw.nact):
        p = &sw.ports[sw.act[i]]
        if p.kind == SW_KIND_TAP:
            if p.tap_ready:
                work = True
                break
        elif ioq_peek(p.tx):
            work = True
            break
    pthread_mutex_unlock(&sw.lock)
    return work


cdef void sw_mark(sw_t *sw, epoll_event *evs, int n) noexcept nogil:
    """Under the lock: what the switch's epoll reported, each readable tap
    and each rung doorbell."""
    cdef int i
    cdef uint32_t slot, gen
    cdef sw_port_t *p
    for i in range(n):
        slot = <uint32_t>(evs[i].data.u64 & LOW32)
        gen = <uint32_t>(evs[i].data.u64 >> 32)
        if slot >= SW_MAX_PORTS:
            continue
        p = &sw.ports[slot]
        if not p.used or p.gen != gen:
            continue            # a port removed since the event was queued
        if p.kind == SW_KIND_TAP:
            p.tap_ready = True
        else:
            ioq_kicked(p.tx)


cdef void sw_woken(sw_t *sw, epoll_event *evs, int n) noexcept nogil:
    """After a sleep: disarm every port, take the events the switch's epoll
    reported (none when it was not read), and let every port whose kick
    reached us kick again (its `pending` is set: whichever doorbell woke
    us, the turn that follows looks at every port)."""
    cdef uint32_t j
    cdef sw_port_t *p
    pthread_mutex_lock(&sw.lock)
    for j in range(sw.nact):
        p = &sw.ports[sw.act[j]]
        if p.kind == SW_KIND_RING:
            ioq_disarm(p.tx)
    sw_mark(sw, evs, n)
    for j in range(sw.nact):
        p = &sw.ports[sw.act[j]]
        if p.kind == SW_KIND_RING and shm_load_relaxed_u8(&p.tx.sig.shm.side[p.tx.sig.me].pending):
            ioq_kicked(p.tx)
    sw.st.wakeups += 1
    pthread_mutex_unlock(&sw.lock)


cdef int sw_events(sw_t *sw, int timeout_ms) noexcept nogil:
    """Wait up to timeout_ms (0: do not wait) on the switch's epoll and take
    everything it holds: each rung doorbell's edge (ioq_kicked, so its peer
    may kick again), each readable tap.  Returns -1 after stop(), else how
    many events.  The pool watches that epoll edge-triggered, so what is
    left in it would not be reported again: it is read until it is empty."""
    cdef epoll_event evs[32]
    cdef int n, i, total = 0
    cdef uint64_t cnt
    cdef bint stop = False
    cdef bint first = True
    while True:
        n = epoll_wait(sw.epfd, evs, 32, timeout_ms if first else 0)
        if n < 0:
            if first:
                sw_woken(sw, evs, 0)
            break
        for i in range(n):
            if evs[i].data.u64 == TAG_STOP:
                cnt = 0
                read(sw.stop_fd, &cnt, 8)
                # 1 per stop(), 2 per wake(): an odd count holds a stop.
                if cnt & 1:
                    stop = True
                evs[i].data.u64 = SW_MAX_PORTS
        if first:
            sw_woken(sw, evs, n)
            first = False
        else:
            pthread_mutex_lock(&sw.lock)
            sw_mark(sw, evs, n)
            pthread_mutex_unlock(&sw.lock)
        total += n
        if n < 32:
            break
    return -1 if stop else total


cdef int sw_task_run(sw_t *sw, uint32_t events) noexcept nogil:
    """The worker pool's `run` for a switch whose one fd is its own epoll
    (Switch.task_fd: readable when a port's doorbell rang, a tap has
    frames, or stop() was called).  events != 0: that fd was reported.
    Without taps nothing needs to be read from it: a rung doorbell is an
    edge the pool's epoll saw (it watches this one edge-triggered, and every
    doorbell's edge makes a new one), the stop() of a pool task is the
    pool's remove, and every port is looked at by the turn anyway; so a
    wake-up costs no second epoll_wait.  With taps, or on the first turn,
    it is read (sw_events).  VBUS_TASK_DONE after stop(), else as sw_run."""
    if events & (VBUS_EV_FDS | VBUS_EV_ADDED):
        if sw.ntaps or events & VBUS_EV_ADDED:
            if sw_events(sw, 0) < 0:
                return VBUS_TASK_DONE
        else:
            sw_woken(sw, NULL, 0)
    return sw_run(sw, events)


cdef int _task_run(vbus_task_t *t, uint32_t events) noexcept nogil:
    return sw_task_run(<sw_t *>t.ctx, events)


cdef bint _task_peek(vbus_task_t *t) noexcept nogil:
    return sw_peek(<sw_t *>t.ctx)


cdef class Switch:
    """The switch's engine and its ports.  Thread-safe: ports are added and
    removed from the control plane while the engine runs."""

    def __cinit__(self, *args, **kwargs):
        self.epfd = -1
        self.stop_fd = -1
        self.sw = NULL

    def __init__(self, int mtu=1500, int mac_table_size=4096, double ageing_s=300):
        if self.sw != NULL:
            raise RuntimeError("a Switch is initialised once")
        if not VENET_MIN_MTU <= mtu <= VENET_MAX_MTU:
            raise ValueError(f"mtu must be {VENET_MIN_MTU}..{VENET_MAX_MTU}")
        if not 1 <= mac_table_size <= 1 << 20:
            raise ValueError("mac_table_size must be 1..1048576")
        self.sw = <sw_t *>calloc(1, sizeof(sw_t))
        if self.sw == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.sw.lock, NULL)
        self.sw.max_plain = mtu + VENET_ETH_HLEN
        cdef uint32_t bits = 1
        while (1u << bits) < 2 * <uint32_t>mac_table_size:
            bits += 1
        self.sw.mac_bits = bits
        self.sw.mac_mask = (1u << bits) - 1
        self.sw.mac_size = mac_table_size
        self.sw.mac = <mac_ent_t *>calloc(1u << bits, sizeof(mac_ent_t))
        self.sw.lin = <uint8_t *>malloc(LIN_SIZE)
        self.sw.seg = <uint8_t *>malloc(SEG_SIZE)
        self.sw.tapbuf = <uint8_t *>malloc(TAPBUF_SIZE)
        if self.sw.mac == NULL or self.sw.lin == NULL or self.sw.seg == NULL or self.sw.tapbuf == NULL:
            raise MemoryError()
        self.sw.next_gen = 1
        self.set_ageing(ageing_s)
        self.rings = {}
        self.stop_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.epfd = epoll_create1(EPOLL_CLOEXEC)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        self.sw.epfd = self.epfd
        self.sw.stop_fd = self.stop_fd
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = TAG_STOP
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, self.stop_fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl")
        # One fd for the worker: the switch's own epoll, edge-triggered (each
        # doorbell's edge inside it is an edge of it: sw_task_run).
        self.task.ctx = <void *>self.sw
        self.task.peek = _task_peek
        if vbus_task_fd(&self.task, self.epfd, 1, True) < 0:
            raise RuntimeError("the switch's task has no room for its fd")
        self.task.run = _task_run

    def __dealloc__(self):
        if self.epfd >= 0:
            os.close(self.epfd)
        if self.stop_fd >= 0:
            os.close(self.stop_fd)
        if self.sw != NULL:
            free(self.sw.mac)
            free(self.sw.lin)
            free(self.sw.seg)
            free(self.sw.tapbuf)
            pthread_mutex_destroy(&self.sw.lock)
            free(self.sw)

    @property
    def mtu(self):
        return self.sw.max_plain - VENET_ETH_HLEN

    @property
    def mac_table_size(self):
        return self.sw.mac_size

    def set_ageing(self, double seconds):
        if not 0 < seconds <= 1e6:
            raise ValueError("ageing must be more than 0 and at most 1000000 seconds")
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            self.sw.ageing_ns = <uint64_t>(seconds * 1e9)
            self.sw.next_sweep = 0
            pthread_mutex_unlock(&self.sw.lock)

    cdef int _add(self, sw_port_t *p) except -1:
        """Put a filled-in port into a free slot; returns the slot."""
        cdef uint32_t slot
        cdef int fd = p.fd if p.kind == SW_KIND_TAP else ioq_wait_fd(p.tx)
        cdef epoll_event ev
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            for slot in range(SW_MAX_PORTS):
                if not self.sw.ports[slot].used:
                    break
            else:
                slot = SW_MAX_PORTS
            if slot < SW_MAX_PORTS:
                p.gen = self.sw.next_gen
                self.sw.next_gen += 1
                p.used = 1
                self.sw.ports[slot] = p[0]
                self.sw.act[self.sw.nact] = slot
                self.sw.nact += 1
                if p.kind == SW_KIND_TAP:
                    self.sw.ntaps += 1
                self.sw.st.ports_added += 1
            pthread_mutex_unlock(&self.sw.lock)
        if slot == SW_MAX_PORTS:
            raise ValueError(f"the switch has {SW_MAX_PORTS} ports, the most it can hold")
        ev.events = EPOLLIN | (EPOLLET if p.kind == SW_KIND_RING else 0)
        ev.data.u64 = (<uint64_t>p.gen << 32) | slot
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            e = errno
            self._drop(slot)
            raise OSError(e, f"epoll_ctl add fd {fd}")
        # Frames may already wait: the engine looks at once.
        os.eventfd_write(self.stop_fd, 2)
        return slot

    def add_ring_port(self, Ring tx not None, Ring rx not None, Ring evq=None, unsigned int caps=0):
        """A frontend's port: its TX ring (our consumer end), RX ring (our
        producer end, paired buffers) and, with TXC negotiated, its event
        queue (our producer end: the switch is its only producer until
        remove_port).  caps: its negotiated SG-group bits.  Returns the slot."""
        cdef sw_port_t p
        cdef uint32_t max_frame, slots
        if tx.role != 1 or rx.role != 0:
            raise ValueError("a port's tx ring is consumed and its rx ring produced by the switch")
        if rx.r.pair_off == 0 or rx.r.buf_size < VENET_META_SIZE + VENET_ETH_HLEN:
            raise ValueError("the rx ring needs paired buffers of at least 30 bytes")
        memset(&p, 0, sizeof(p))
        p.kind = SW_KIND_RING
        p.tx = &tx.r
        p.rx = &rx.r
        p.fd = -1
        p.caps = caps
        p.known_flags = KNOWN_FLAGS
        max_frame = self.sw.max_plain
        if caps & (VENET_CAP_TSO4 | VENET_CAP_TSO6 | VENET_CAP_USO | VENET_CAP_UFO):
            max_frame = VENET_MAX_GSO_FRAME
        if caps & VENET_CAP_CSUM:
            max_frame += VENET_META_SIZE
        slots = (max_frame + rx.r.buf_size - 1) // rx.r.buf_size
        if slots > rx.r.count // 2 or slots > VENET_MAX_CHAIN:
            raise ValueError(f"a ring of {rx.r.count} slots of {rx.r.buf_size} bytes is too small "
                             f"for frames of {max_frame} bytes (it must hold two)")
        p.max_rx = max_frame
        if evq is not None:
            if evq.role != 0 or evq.r.pair_off == 0 or evq.r.buf_size < sizeof(venet_event_t):
                raise ValueError("the event queue must be our producer end with paired buffers")
            p.evq = &evq.r
            p.known_flags |= VENET_F_TXC
        slot = self._add(&p)
        self.rings[slot] = (tx, rx, evq)
        return slot

    def add_tap_port(self, int fd, unsigned int caps=0):
        """A tap (non-blocking, IFF_VNET_HDR, TUNSETVNETHDRSZ 16) as a port;
        caps: the offloads its TUNSETOFFLOAD was given.  The fd stays the
        caller's; it must outlive remove_port."""
        cdef sw_port_t p
        memset(&p, 0, sizeof(p))
        p.kind = SW_KIND_TAP
        p.fd = fd
        p.tap_ready = True
        p.caps = caps
        p.known_flags = KNOWN_FLAGS
        p.max_rx = VENET_MAX_GSO_FRAME if caps & (VENET_CAP_TSO4 | VENET_CAP_TSO6 | VENET_CAP_USO) \
            else self.sw.max_plain
        p.max_rx += VENET_META_SIZE
        slot = self._add(&p)
        self.rings[slot] = None
        return slot

    def remove_port(self, uint32_t slot):
        """Take a port out and forget its MACs.  When this returns the
        engine no longer touches the port's memory.  Returns its counters."""
        if slot >= SW_MAX_PORTS or slot not in self.rings:
            raise KeyError(f"no port {slot}")
        stats = self._drop(slot)
        del self.rings[slot]
        return stats

    def _drop(self, uint32_t slot):
        cdef sw_port_t *p = &self.sw.ports[slot]
        cdef int fd
        cdef uint32_t i, j = 0
        with nogil:
            pthread_mutex_lock(&self.sw.lock)
            fd = p.fd if p.kind == SW_KIND_TAP else ioq_wait_fd(p.tx)
            if p.used and p.kind == SW_KIND_TAP:
                self.sw.ntaps -= 1
            p.used = 0
            for i in range(self.sw.nact):
                if self.sw.act[i] != slot:
                    self.sw.act[j] = self.sw.act[i]
                    j += 1
            self.sw.nact = j
            self.sw.now = shm_now_ns()
            mac_sweep(self.sw, slot)
            self.sw.st.ports_removed += 1
            pthread_mutex_unlock(&self.sw.lock)
            epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
        return _port_dict(p)

    def port_stats(self, uint32_t slot):
        if slot >= SW_MAX_PORTS or slot not in self.rings:
            raise KeyError(f"no port {slot}")
        return _port_dict(&self.sw.ports[slot])

    def ports(self):
        return sorted(self.rings)

    cdef void _sweep(self) noexcept nogil:
        # Aged entries are refused by lookups already; a look at the table
        # from the control plane reclaims them too, as a turn's sweep would
        # (an idle switch takes no turns).
        pthread_mutex_lock(&self.sw.lock)
        self.sw.now = shm_now_ns()
        mac_sweep(self.sw, -1)
        pthread_mutex_unlock(&self.sw.lock)

    def stats(self):
        with nogil:
            self._sweep()
        s = dict(self.sw.st)
        s["mac_entries"] = self.sw.mac_count
        s["mac_table_size"] = self.sw.mac_size
        s["ports"] = self.sw.nact
        return s

    def macs(self):
        """The live table: {"02:..": slot}."""
        out = {}
        cdef uint32_t i
        cdef uint64_t m
        with nogil:
            self._sweep()
        for i in range(self.sw.mac_mask + 1):
            m = self.sw.mac[i].key
            if m:
                m &= ~MAC_USED
                out[":".join(f"{(m >> (40 - 8 * b)) & 0xff:02x}" for b in range(6))] = self.sw.mac[i].port
        return out

    # ---- serving: a task of a vbus worker pool ---------------------------

    def serve(self, pool, cpu=None):
        """Serve the switch on a worker of `pool` (vbus._worker.Pool)."""
        if self.worker is not None:
            raise RuntimeError("the switch engine is already served")
        pool.add(self, cpu=cpu)
        self.running = True

    def stop(self, timeout=5.0):
        """Take the switch off its worker; True once the worker has let it
        go (it never touches the switch again)."""
        if self.worker is None:
            self.running = False
            return True
        try:
            self.worker.remove(self, timeout)
        except TimeoutError:
            return False
        self.running = False
        return True

    def set_poll(self, int poll_us):
        """Busy-poll up to poll_us after work (0: sleep at once)."""
        if not 0 <= poll_us <= 1_000_000:
            raise ValueError("poll_us must be 0..1000000")
        self.sw.poll_ns = <int64_t>poll_us * 1000
        self.task.poll_ns = self.sw.poll_ns

    def wake(self):
        """Make the engine take one turn now (a port was added with frames
        already queued; an attribute changed)."""
        os.eventfd_write(self.stop_fd, 2)


cdef dict _port_dict(sw_port_t *p):
    s = dict(p.st)
    meta = s.pop("drop_meta")
    for i in range(1, VENET_META_NREASONS):
        s["drop_meta_" + venet_meta_reason_names[i].decode()] = meta[i]
    return s


def checksum_finish(frame, int csum_start, int csum_offset):
    """Test hook: the frame with its partial checksum finished (bytes)."""
    buf = bytearray(frame)
    cdef uint8_t[::1] v = buf
    if venet_csum_finish(&v[0], len(buf), csum_start, csum_offset) < 0:
        raise ValueError("the checksum field lies outside the frame")
    return bytes(buf)


cdef int _collect(void *arg, const uint8_t *seg, uint32_t n) noexcept nogil:
    with gil:
        (<list>arg).append((<const char *>seg)[:n])
    return 0


def segment(frame, int gso_type, int gso_size, int csum_start, bint ecn=False, int mtu=1500):
    """Test hook: the segments of a super-frame (the engine's C segmenter),
    as a list of bytes; ValueError naming why it cannot be segmented."""
    data = bytes(frame)
    if len(data) > LIN_SIZE:
        raise ValueError("frame too long")
    out = []
    seg = bytearray(SEG_SIZE)
    cdef uint8_t[::1] sv = seg
    cdef const uint8_t[::1] fv = data
    rc = venet_gso_segment(&fv[0], len(data), gso_type, gso_size, csum_start, ecn, &sv[0],
                           mtu + VENET_ETH_HLEN, _collect, <void *>out)
    if rc < 0:
        raise ValueError({VENET_GSO_ERR_HEADERS: "bad headers", VENET_GSO_ERR_TOO_BIG: "segment too big",
                          VENET_GSO_ERR_TYPE: "type not segmented"}.get(rc, "refused"))
    return out
