# venet device ABI: what rides on the ioq rings of one virtual-ethernet
# device.  docs/abi.md ("venet device") describes the same in prose.
#
# A device region (created and sealed by the frontend) holds three rings:
#   ring 0  TX   frontend -> backend: frames to transmit
#   ring 1  RX   backend -> frontend: received frames
#   ring 2  EVQ  backend -> frontend: events
# with paired buffers (one per slot) of buf_size >= MTU + 14 bytes.  A TX
# frame may also be an indirect SG chain.  Descriptor `user` carries the
# frame-metadata word below; `flags` bits 16.. carry VENET_F_*.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef enum:
    VENET_VERSION = 1
    VENET_RING_TX = 0
    VENET_RING_RX = 1
    VENET_RING_EVQ = 2
    VENET_NRINGS = 3
    VENET_ETH_HLEN = 14
    VENET_MIN_FRAME = 14
    VENET_MAX_MTU = 9000

# Device functions (the original's numbering).
cdef enum:
    VENET_FUNC_LINKUP = 0
    VENET_FUNC_LINKDOWN = 1
    VENET_FUNC_MACQUERY = 2
    VENET_FUNC_NEGCAP = 3
    VENET_FUNC_FLUSHRX = 4

# Capability groups and bits (the original's values).
cdef enum:
    VENET_CAP_GROUP_SG = 0
    VENET_CAP_GROUP_EVENTQ = 1
    VENET_CAP_SG = 1 << 0
    VENET_CAP_TSO4 = 1 << 1
    VENET_CAP_TSO6 = 1 << 2
    VENET_CAP_ECN = 1 << 3
    VENET_CAP_UFO = 1 << 4
    VENET_CAP_EVQ_LINKSTATE = 1 << 0
    VENET_CAP_EVQ_TXC = 1 << 1

# Frame metadata in descriptor flags bits 16..31 (checksum/GSO, as
# venet_sg's flags; ioq passes them through untouched).
cdef enum:
    VENET_F_NEEDS_CSUM = 1 << 16
    VENET_F_GSO = 1 << 17
    VENET_F_ECN = 1 << 18
    VENET_F_TXC = 1 << 19       # frontend asks for a TX completion event

# The offload record: with VENET_F_NEEDS_CSUM or VENET_F_GSO set, the first
# 16 bytes of the frame's (first) buffer are this record, then the frame.
cdef struct venet_meta_t:
    uint16_t csum_start
    uint16_t csum_offset
    uint8_t gso_type            # VENET_GSO_*: TCPV4 0, UDP 1, TCPV6 2 (venet_sg's codes)
    uint8_t _pad
    uint16_t gso_hdrlen
    uint16_t gso_size
    uint16_t _pad2
    uint32_t _pad3

# Events, each in its own EVQ buffer: header then body.
cdef enum:
    VENET_EV_LINKSTATE = 0
    VENET_EV_TXC = 1

cdef struct venet_event_t:
    uint32_t type
    uint32_t size               # bytes of the whole event
    uint64_t a                  # LINKSTATE: state (0 down, 1 up); TXC: cookie
    uint64_t b                  # TXC: ring id
