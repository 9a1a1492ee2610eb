# cython: language_level=3
"""venet's device ABI for Python, derived at build time from its single
source, venet/includes/venet_abi.h: the constants, the names of the refusal
reasons and TXC statuses, and the record layouts (numpy dtypes and
struct.Struct codecs built from the C compiler's sizeof and field offsets).
venet.abi is the Python face of this module."""
from libc.stdint cimport uint32_t
from venet.abi cimport *
from ioq._abi import record, struct_of

VERSION = VENET_VERSION
RING_TX = VENET_RING_TX
RING_RX = VENET_RING_RX
RING_EVQ = VENET_RING_EVQ
NRINGS = VENET_NRINGS
ETH_HLEN = VENET_ETH_HLEN
MIN_FRAME = VENET_MIN_FRAME
MIN_MTU = VENET_MIN_MTU
MAX_MTU = VENET_MAX_MTU
META_SIZE = sizeof(venet_meta_t)
EVENT_SIZE = sizeof(venet_event_t)
MAX_GSO_FRAME = VENET_MAX_GSO_FRAME
MAX_CHAIN = VENET_MAX_CHAIN
MIN_BUF_SIZE = VENET_MIN_BUF_SIZE

CAP_GROUP_SG = VENET_CAP_GROUP_SG
CAP_GROUP_EVENTQ = VENET_CAP_GROUP_EVENTQ
CAP_SG = <uint32_t>VENET_CAP_SG
CAP_TSO4 = <uint32_t>VENET_CAP_TSO4
CAP_TSO6 = <uint32_t>VENET_CAP_TSO6
CAP_ECN = <uint32_t>VENET_CAP_ECN
CAP_UFO = <uint32_t>VENET_CAP_UFO
CAP_CSUM = <uint32_t>VENET_CAP_CSUM
CAP_USO = <uint32_t>VENET_CAP_USO
CAP_EVQ_LINKSTATE = <uint32_t>VENET_CAP_EVQ_LINKSTATE
CAP_EVQ_TXC = <uint32_t>VENET_CAP_EVQ_TXC

F_NEEDS_CSUM = <uint32_t>VENET_F_NEEDS_CSUM
F_GSO = <uint32_t>VENET_F_GSO
F_ECN = <uint32_t>VENET_F_ECN
F_TXC = <uint32_t>VENET_F_TXC
F_MORE = <uint32_t>VENET_F_MORE

GSO_TCPV4 = VENET_GSO_TCPV4
GSO_UDP = VENET_GSO_UDP
GSO_TCPV6 = VENET_GSO_TCPV6
GSO_UDP_L4 = VENET_GSO_UDP_L4

EV_LINKSTATE = VENET_EV_LINKSTATE
EV_TXC = VENET_EV_TXC

# META_REASONS[reason]: the pumps count a refused offload record of that
# reason as drop_meta_<name> (index 0, "ok", is no refusal).
META_REASONS = tuple(venet_meta_reason_names[i].decode() for i in range(VENET_META_NREASONS))
# TXC_STATUS[status]: the name of an EV_TXC event's status (b >> 32).
TXC_STATUS = tuple(venet_txc_status_names[i].decode() for i in range(VENET_TXC_NSTATUS))
TXC_META_BASE = VENET_TXC_META_BASE     # + a META reason: a refused record's status

cdef venet_meta_t _m
cdef venet_event_t _e


cdef size_t _off(void *field, void *rec) noexcept:
    return <size_t>(<char *>field - <char *>rec)


# The offload record before a frame's data (the padding stays unnamed).
META_DTYPE = record([("csum_start", _off(&_m.csum_start, &_m), "u2"),
                     ("csum_offset", _off(&_m.csum_offset, &_m), "u2"),
                     ("gso_type", _off(&_m.gso_type, &_m), "u1"),
                     ("gso_hdrlen", _off(&_m.gso_hdrlen, &_m), "u2"),
                     ("gso_size", _off(&_m.gso_size, &_m), "u2")], sizeof(venet_meta_t))
# An event in its EVQ buffer.
EVENT_DTYPE = record([("type", _off(&_e.type, &_e), "u4"), ("size", _off(&_e.size, &_e), "u4"),
                      ("a", _off(&_e.a, &_e), "u8"), ("b", _off(&_e.b, &_e), "u8")],
                     sizeof(venet_event_t))
META_STRUCT = struct_of(META_DTYPE)
EVENT_STRUCT = struct_of(EVENT_DTYPE)
