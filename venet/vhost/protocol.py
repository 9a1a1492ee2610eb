"""vhost-user messages: layouts, codes and strict parsing.

The layouts are those of QEMU's docs/interop/vhost-user.rst: a 12-byte
header (request, flags, payload size; little endian), then the payload;
file descriptors ride with the header as SCM_RIGHTS.  Every parser here
checks the payload's exact size and every field's range and raises
ProtocolError with a one-line reason; the backend then closes that
connection (the device stays usable).
"""
import struct

HDR = struct.Struct("<III")
U64 = struct.Struct("<Q")
STATE = struct.Struct("<II")            # vhost_vring_state: index, num
ADDR = struct.Struct("<IIQQQQ")          # index, flags, desc, used, avail, log (user addresses)
MEM_HDR = struct.Struct("<II")          # nregions, padding
REGION = struct.Struct("<QQQQ")         # guest_phys_addr, memory_size, userspace_addr, mmap_offset

VERSION = 0x1
F_VERSION_MASK = 0x3
F_REPLY = 0x4
F_NEED_REPLY = 0x8
KNOWN_FLAGS = F_VERSION_MASK | F_REPLY | F_NEED_REPLY

MAX_PAYLOAD = 4096                      # larger than any message we accept
MAX_FDS = 8
MAX_REGIONS = 8                         # VHOST_MEMORY_BASELINE_NREGIONS
VRING_F_LOG = 0x1                       # vhost_vring_addr.flags
VRING_NOFD = 0x100                      # vhost_vring_file: no fd (the driver polls)
VRING_IDX_MASK = 0xff

# Front-end requests
GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
SEND_RARP = 19
NET_SET_MTU = 20
SET_BACKEND_REQ_FD = 21
IOTLB_MSG = 22
GET_CONFIG = 24
SET_CONFIG = 25
RESET_DEVICE = 34
GET_MAX_MEM_SLOTS = 36
SET_STATUS = 39
GET_STATUS = 40

NAMES = {globals()[k]: k for k in (
    "GET_FEATURES", "SET_FEATURES", "SET_OWNER", "RESET_OWNER", "SET_MEM_TABLE", "SET_LOG_BASE",
    "SET_LOG_FD", "SET_VRING_NUM", "SET_VRING_ADDR", "SET_VRING_BASE", "GET_VRING_BASE",
    "SET_VRING_KICK", "SET_VRING_CALL", "SET_VRING_ERR", "GET_PROTOCOL_FEATURES",
    "SET_PROTOCOL_FEATURES", "GET_QUEUE_NUM", "SET_VRING_ENABLE", "SEND_RARP", "NET_SET_MTU",
    "SET_BACKEND_REQ_FD", "IOTLB_MSG", "GET_CONFIG", "SET_CONFIG", "RESET_DEVICE",
    "GET_MAX_MEM_SLOTS", "SET_STATUS", "GET_STATUS")}

# Virtio feature bits (the virtio spec; include/uapi/linux/virtio_net.h)
NET_F_CSUM = 0
NET_F_GUEST_CSUM = 1
NET_F_GUEST_TSO4 = 7
NET_F_GUEST_TSO6 = 8
NET_F_GUEST_ECN = 9
NET_F_HOST_TSO4 = 11
NET_F_HOST_TSO6 = 12
NET_F_HOST_ECN = 13
NET_F_MRG_RXBUF = 15
F_ANY_LAYOUT = 27
RING_F_INDIRECT_DESC = 28
RING_F_EVENT_IDX = 29
USER_F_PROTOCOL_FEATURES = 30           # vhost-user's own bit
F_VERSION_1 = 32
F_RING_PACKED = 34
F_IN_ORDER = 35

# Protocol feature bits
PROTO_MQ = 0
PROTO_REPLY_ACK = 3
PROTO_STATUS = 16

# Device status bits
STATUS_DRIVER_OK = 0x4
STATUS_FAILED = 0x80


def bit(n):
    return 1 << n


class ProtocolError(Exception):
    """The driver broke the protocol: the connection is closed with this reason."""


def name(code):
    return NAMES.get(code, f"request {code}")


def header(data):
    """(request, flags, size) of a 12-byte header, checked."""
    request, flags, size = HDR.unpack(data)
    if flags & F_VERSION_MASK != VERSION:
        raise ProtocolError(f"{name(request)}: protocol version {flags & F_VERSION_MASK}, "
                            f"this backend speaks {VERSION}")
    if flags & ~KNOWN_FLAGS:
        raise ProtocolError(f"{name(request)}: unknown flags 0x{flags:x}")
    if flags & F_REPLY:
        raise ProtocolError(f"{name(request)}: a reply where a request was expected")
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"{name(request)}: payload of {size} bytes, at most {MAX_PAYLOAD} accepted")
    return request, flags, size


def reply(request, payload):
    """A reply: the same request code, flags exactly version | REPLY (0x5),
    which is all DPDK's driver accepts."""
    return HDR.pack(request, VERSION | F_REPLY, len(payload)) + payload


def _size(request, payload, want):
    if len(payload) != want:
        raise ProtocolError(f"{name(request)}: payload of {len(payload)} bytes, expected {want}")


def empty(request, payload):
    _size(request, payload, 0)


def u64(request, payload):
    _size(request, payload, U64.size)
    return U64.unpack(payload)[0]


def state(request, payload):
    """(index, num) of a vhost_vring_state."""
    _size(request, payload, STATE.size)
    return STATE.unpack(payload)


def vring_addr(request, payload):
    _size(request, payload, ADDR.size)
    index, flags, desc, used, avail, log = ADDR.unpack(payload)
    return {"index": index, "flags": flags, "desc": desc, "used": used, "avail": avail, "log": log}


def vring_file(request, payload):
    """(index, has_fd) of a vhost_vring_file u64."""
    v = u64(request, payload)
    if v & ~(VRING_IDX_MASK | VRING_NOFD):
        raise ProtocolError(f"{name(request)}: unknown bits in 0x{v:x}")
    return v & VRING_IDX_MASK, not v & VRING_NOFD


def memory(request, payload):
    """[(gpa, size, uva, mmap_offset)] of a memory table."""
    if len(payload) < MEM_HDR.size:
        raise ProtocolError(f"{name(request)}: payload of {len(payload)} bytes is cut short")
    n, _pad = MEM_HDR.unpack_from(payload)
    if not 1 <= n <= MAX_REGIONS:
        raise ProtocolError(f"{name(request)}: {n} regions, 1..{MAX_REGIONS} accepted")
    # QEMU sends the whole VHOST_MEMORY_BASELINE_NREGIONS array; DPDK only
    # the regions it fills.  Either way every region named must be there.
    if len(payload) < MEM_HDR.size + n * REGION.size or len(payload) > MEM_HDR.size + MAX_REGIONS * REGION.size:
        raise ProtocolError(f"{name(request)}: payload of {len(payload)} bytes for {n} regions")
    return [REGION.unpack_from(payload, MEM_HDR.size + i * REGION.size) for i in range(n)]
