# Frame offload metadata: the venet record (venet_meta_t, venet/includes/venet_abi.h) and
# the kernel's virtio_net_hdr (the tap's IFF_VNET_HDR header), translated
# both ways and validated.  Inline nogil C for the pumps and the frontend.
#
# Who trusts what: a pump validates every record its peer wrote before the
# kernel sees it (venet_meta_check), and validates what the kernel hands it
# against what its peer negotiated (a tap's queue may still hold frames
# made under an earlier peer's offloads).
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from venet.abi cimport *

# include/uapi/linux/virtio_net.h
cdef struct virtio_net_hdr_t:
    uint8_t flags
    uint8_t gso_type
    uint16_t hdr_len
    uint16_t gso_size
    uint16_t csum_start
    uint16_t csum_offset

# A port's 16-byte vnet header as bytes (copied or gathered in) and as the
# struct (read): one object, so no access breaks C's aliasing rules.
cdef union virtio_net_hdr_buf_t:
    virtio_net_hdr_t h
    uint8_t b[16]

cdef enum:
    VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
    VIRTIO_NET_HDR_F_DATA_VALID = 2
    VIRTIO_NET_HDR_GSO_NONE = 0
    VIRTIO_NET_HDR_GSO_TCPV4 = 1
    VIRTIO_NET_HDR_GSO_UDP = 3
    VIRTIO_NET_HDR_GSO_TCPV6 = 4
    VIRTIO_NET_HDR_GSO_UDP_L4 = 5
    VIRTIO_NET_HDR_GSO_ECN = 0x80
    GSO_BY_FRAGS = 0xffff       # the kernel's marker, never a real MSS

# Why a frame's metadata was refused (counted per reason by the pumps):
# venet_meta_reason in venet/includes/venet_abi.h, under short names.
cdef extern from "venet_abi.h" nogil:
    enum:
        META_OK "VENET_META_OK"
        META_NOT_NEGOTIATED "VENET_META_NOT_NEGOTIATED"
        META_BAD_CSUM "VENET_META_BAD_CSUM"
        META_BAD_GSO "VENET_META_BAD_GSO"
        META_TOO_LONG "VENET_META_TOO_LONG"
        META_BAD_RECORD "VENET_META_BAD_RECORD"
        META_NREASONS "VENET_META_NREASONS"

# The SG-group capability that allows each venet GSO type.
cdef inline uint32_t venet_gso_cap(uint32_t gso_type) noexcept nogil:
    if gso_type == VENET_GSO_TCPV4:
        return VENET_CAP_TSO4
    if gso_type == VENET_GSO_TCPV6:
        return VENET_CAP_TSO6
    if gso_type == VENET_GSO_UDP:
        return VENET_CAP_UFO
    if gso_type == VENET_GSO_UDP_L4:
        return VENET_CAP_USO
    return 0


cdef inline uint32_t venet_meta_check(const venet_meta_t *m, uint32_t flags, uint32_t frame_len,
                                      uint32_t caps, uint32_t max_plain) noexcept nogil:
    """Is this (private copy of a) record, with these descriptor flags, fit
    for a frame of frame_len bytes on a device that negotiated `caps`?
    max_plain is the longest frame without GSO (MTU + 14)."""
    cdef uint32_t need
    if not flags & (VENET_F_NEEDS_CSUM | VENET_F_GSO | VENET_F_ECN):
        return META_OK if frame_len <= max_plain else META_TOO_LONG
    if m._pad or m._pad2 or m._pad3:
        return META_BAD_RECORD
    if not caps & VENET_CAP_CSUM:
        return META_NOT_NEGOTIATED
    if flags & VENET_F_NEEDS_CSUM:
        if m.csum_start < VENET_ETH_HLEN or \
                <uint32_t>m.csum_start + m.csum_offset + 2 > frame_len:
            return META_BAD_CSUM
    if not flags & VENET_F_GSO:
        if flags & VENET_F_ECN:
            return META_BAD_GSO
        return META_OK if frame_len <= max_plain else META_TOO_LONG
    # A segment's checksum is always partial: GSO without NEEDS_CSUM is
    # refused rather than left to the kernel's guesswork.
    if not flags & VENET_F_NEEDS_CSUM or m.gso_type > VENET_GSO_UDP_L4:
        return META_BAD_GSO
    need = venet_gso_cap(m.gso_type)
    if flags & VENET_F_ECN:
        if m.gso_type == VENET_GSO_UDP or m.gso_type == VENET_GSO_UDP_L4:
            return META_BAD_GSO
        need |= VENET_CAP_ECN
    if caps & need != need:
        return META_NOT_NEGOTIATED
    if m.gso_size == 0 or m.gso_size == GSO_BY_FRAGS:
        return META_BAD_GSO
    # gso_hdrlen is virtio's hdr_len: how much of the frame the receiver
    # should make linear (the kernel fills it with skb_headlen, which may
    # reach past the headers), so it is bounded by the frame, no tighter.
    # The kernel validates the header layout itself (virtio_net_hdr_to_skb).
    if m.gso_hdrlen > frame_len:
        return META_BAD_GSO
    if frame_len > VENET_MAX_GSO_FRAME:
        return META_TOO_LONG
    return META_OK


cdef inline uint32_t venet_meta_from_virtio(const virtio_net_hdr_t *h, venet_meta_t *m,
                                            uint32_t *flags) noexcept nogil:
    """Kernel -> venet: fill *m and the descriptor flags from a private copy
    of the tap's header.  DATA_VALID (the kernel checked the checksum) has
    no venet meaning and is dropped."""
    cdef uint8_t t = h.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    m.csum_start = h.csum_start
    m.csum_offset = h.csum_offset
    m.gso_hdrlen = h.hdr_len
    m.gso_size = h.gso_size
    m._pad = 0
    m._pad2 = 0
    m._pad3 = 0
    flags[0] = VENET_F_NEEDS_CSUM if h.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM else 0
    if t == VIRTIO_NET_HDR_GSO_NONE:
        m.gso_type = 0
        m.gso_hdrlen = 0
        m.gso_size = 0
        return META_OK if not h.gso_type & VIRTIO_NET_HDR_GSO_ECN else META_BAD_GSO
    if t == VIRTIO_NET_HDR_GSO_TCPV4:
        m.gso_type = VENET_GSO_TCPV4
    elif t == VIRTIO_NET_HDR_GSO_TCPV6:
        m.gso_type = VENET_GSO_TCPV6
    elif t == VIRTIO_NET_HDR_GSO_UDP:
        m.gso_type = VENET_GSO_UDP
    elif t == VIRTIO_NET_HDR_GSO_UDP_L4:
        m.gso_type = VENET_GSO_UDP_L4
    else:
        return META_BAD_GSO
    flags[0] |= VENET_F_GSO
    if h.gso_type & VIRTIO_NET_HDR_GSO_ECN:
        flags[0] |= VENET_F_ECN
    return META_OK


cdef inline void venet_meta_to_virtio(const venet_meta_t *m, uint32_t flags,
                                      virtio_net_hdr_t *h) noexcept nogil:
    """venet -> kernel, from a record venet_meta_check accepted."""
    h.flags = VIRTIO_NET_HDR_F_NEEDS_CSUM if flags & VENET_F_NEEDS_CSUM else 0
    h.csum_start = m.csum_start if flags & VENET_F_NEEDS_CSUM else 0
    h.csum_offset = m.csum_offset if flags & VENET_F_NEEDS_CSUM else 0
    h.gso_type = VIRTIO_NET_HDR_GSO_NONE
    h.hdr_len = 0
    h.gso_size = 0
    if flags & VENET_F_GSO:
        if m.gso_type == VENET_GSO_TCPV4:
            h.gso_type = VIRTIO_NET_HDR_GSO_TCPV4
        elif m.gso_type == VENET_GSO_TCPV6:
            h.gso_type = VIRTIO_NET_HDR_GSO_TCPV6
        elif m.gso_type == VENET_GSO_UDP:
            h.gso_type = VIRTIO_NET_HDR_GSO_UDP
        else:
            h.gso_type = VIRTIO_NET_HDR_GSO_UDP_L4
        if flags & VENET_F_ECN:
            h.gso_type |= VIRTIO_NET_HDR_GSO_ECN
        h.hdr_len = m.gso_hdrlen
        h.gso_size = m.gso_size
