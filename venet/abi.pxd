# venet device ABI: what rides on the ioq rings of one virtual-ethernet
# device.  docs/abi.md ("venet device") describes the same in prose.
#
# A device region (created and sealed by the frontend) holds three rings:
#   ring 0  TX   frontend -> backend: frames to transmit
#   ring 1  RX   backend -> frontend: received frames
#   ring 2  EVQ  backend -> frontend: events
# with paired buffers (one per slot) of buf_size >= 16 + MTU + 14 bytes.  A
# frame is one descriptor, an indirect SG list, or (offloads negotiated) a
# chain of descriptors in consecutive slots linked by VENET_F_MORE.
# Descriptor `flags` bits 16.. carry VENET_F_*; `user` is unused (0).
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
    VENET_META_SIZE = 16        # sizeof(venet_meta_t); also the tap's vnet header size
    # A GSO frame: 64 KiB of IP datagram plus an Ethernet header and a VLAN
    # tag (the tap's gso_max_size is 64 KiB unless BIG TCP is configured).
    VENET_MAX_GSO_FRAME = 65536 + 14 + 4
    VENET_MAX_CHAIN = 64        # descriptors in one VENET_F_MORE chain

# Device functions (the original's numbering).
cdef enum:
    VENET_FUNC_LINKUP = 0
    VENET_FUNC_LINKDOWN = 1
    VENET_FUNC_MACQUERY = 2
    VENET_FUNC_NEGCAP = 3
    VENET_FUNC_FLUSHRX = 4

# Capability groups and bits (the original's values; CSUM and USO are ours:
# the original tied checksum offload to SG, and 1 << 5 was its PMTD).
cdef enum:
    VENET_CAP_GROUP_SG = 0
    VENET_CAP_GROUP_EVENTQ = 1
    VENET_CAP_SG = 1 << 0
    VENET_CAP_TSO4 = 1 << 1
    VENET_CAP_TSO6 = 1 << 2
    VENET_CAP_ECN = 1 << 3
    VENET_CAP_UFO = 1 << 4
    VENET_CAP_CSUM = 1 << 6     # partial checksums (csum_start/offset) both ways
    VENET_CAP_USO = 1 << 7      # UDP segmentation (the kernel's UDP_L4 GSO)
    VENET_CAP_EVQ_LINKSTATE = 1 << 0
    VENET_CAP_EVQ_TXC = 1 << 1

# Frame metadata in descriptor flags bits 16..31 (checksum/GSO, as
# venet_sg's flags; ioq passes them through untouched).
cdef enum:
    VENET_F_NEEDS_CSUM = 1 << 16
    VENET_F_GSO = 1 << 17
    VENET_F_ECN = 1 << 18
    VENET_F_TXC = 1 << 19       # frontend asks for a TX completion event
    # The frame continues in the next slot's descriptor (as AF_XDP's
    # XDP_PKT_CONTD): set on every descriptor of a chain but the last.
    VENET_F_MORE = 1 << 20
    VENET_F_META = VENET_F_NEEDS_CSUM | VENET_F_GSO

# GSO types (venet_sg's codes; USO is ours).  virtio_net_hdr's differ:
# TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5.
cdef enum:
    VENET_GSO_TCPV4 = 0
    VENET_GSO_UDP = 1
    VENET_GSO_TCPV6 = 2
    VENET_GSO_UDP_L4 = 3

# The offload record: with VENET_F_NEEDS_CSUM or VENET_F_GSO set on a
# frame's first descriptor, the first 16 bytes of its data are this record,
# then the frame.  Little-endian; every field written by the frame's producer.
cdef struct venet_meta_t:
    uint16_t csum_start         # checksum from here (frame offset) to the end...
    uint16_t csum_offset        # ...stored at csum_start + csum_offset
    uint8_t gso_type            # VENET_GSO_*
    uint8_t _pad
    uint16_t gso_hdrlen         # bytes the receiver should keep linear (virtio's hdr_len: at least the headers)
    uint16_t gso_size           # payload bytes per segment (MSS)
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
    uint64_t b                  # TXC: ring id in bits 0..31, VENET_TXC_* status in bits 32..63

# What became of a frame flagged VENET_F_TXC (its EV_TXC event's status).
# Each refusal matches the pump's drop counter of the same name.
cdef enum:
    VENET_TXC_SENT = 0              # written to the tap
    VENET_TXC_BAD_DESC = 1          # a descriptor ioq refused (drop_bad_desc)
    VENET_TXC_BAD_CHAIN = 2         # a malformed or too long MORE chain (drop_chain)
    VENET_TXC_BAD_FLAGS = 3         # a flag this device does not honour (drop_offload)
    VENET_TXC_META_NOT_NEGOTIATED = 4   # 3 + the META_* reason (drop_meta_*)
    VENET_TXC_META_BAD_CSUM = 5
    VENET_TXC_META_BAD_GSO = 6
    VENET_TXC_META_TOO_LONG = 7
    VENET_TXC_SHORT = 8             # shorter than an Ethernet header (drop_short)
    VENET_TXC_TAP_ERROR = 9         # the kernel refused the write (drop_tap_write)
