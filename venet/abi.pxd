# venet device ABI, declared from its single source,
# venet/includes/venet_abi.h (the layout, a comment per field, and the
# static checks of every size and offset docs/abi.md gives).  venet._abi
# exports the same to Python (venet.abi is its Python face).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "venet_abi.h" nogil:
    enum:
        VENET_VERSION
        VENET_RING_TX
        VENET_RING_RX
        VENET_RING_EVQ
        VENET_NRINGS
        VENET_ETH_HLEN
        VENET_MIN_FRAME
        VENET_MIN_MTU
        VENET_MAX_MTU
        VENET_META_SIZE
        VENET_EVENT_SIZE
        VENET_MAX_GSO_FRAME
        VENET_MAX_CHAIN
        VENET_MIN_BUF_SIZE

    enum:
        VENET_CAP_GROUP_SG
        VENET_CAP_GROUP_EVENTQ
        VENET_CAP_SG
        VENET_CAP_TSO4
        VENET_CAP_TSO6
        VENET_CAP_ECN
        VENET_CAP_UFO
        VENET_CAP_CSUM
        VENET_CAP_USO
        VENET_CAP_EVQ_LINKSTATE
        VENET_CAP_EVQ_TXC

    enum:
        VENET_F_NEEDS_CSUM
        VENET_F_GSO
        VENET_F_ECN
        VENET_F_TXC
        VENET_F_MORE
        VENET_F_META

    enum:
        VENET_GSO_TCPV4
        VENET_GSO_UDP
        VENET_GSO_TCPV6
        VENET_GSO_UDP_L4

    ctypedef struct venet_meta_t:
        uint16_t csum_start
        uint16_t csum_offset
        uint8_t gso_type
        uint8_t _pad
        uint16_t gso_hdrlen
        uint16_t gso_size
        uint16_t _pad2
        uint32_t _pad3

    # Offload record refusals (venet/meta.pxd uses the short META_* names).
    enum:
        VENET_META_OK
        VENET_META_NOT_NEGOTIATED
        VENET_META_BAD_CSUM
        VENET_META_BAD_GSO
        VENET_META_TOO_LONG
        VENET_META_BAD_RECORD
        VENET_META_NREASONS

    const char *const venet_meta_reason_names[]

    enum:
        VENET_EV_LINKSTATE
        VENET_EV_TXC

    ctypedef struct venet_event_t:
        uint32_t type
        uint32_t size
        uint64_t a
        uint64_t b

    enum:
        VENET_TXC_SENT
        VENET_TXC_BAD_DESC
        VENET_TXC_BAD_CHAIN
        VENET_TXC_BAD_FLAGS
        VENET_TXC_META_BASE
        VENET_TXC_META_NOT_NEGOTIATED
        VENET_TXC_META_BAD_CSUM
        VENET_TXC_META_BAD_GSO
        VENET_TXC_META_TOO_LONG
        VENET_TXC_META_BAD_RECORD
        VENET_TXC_SHORT
        VENET_TXC_TAP_ERROR
        VENET_TXC_NSTATUS

    const char *const venet_txc_status_names[]
