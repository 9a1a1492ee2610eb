"""The control channel: length-checked messages over a Unix SOCK_SEQPACKET
socket, file descriptors passed with SCM_RIGHTS.

Wire format of one message (one datagram):
    magic b"VN" | u8 version | u8 type | u32 body length | body (UTF-8 JSON object)
The body length must equal the datagram's remainder and be at most
MAX_BODY for a request, MAX_REPLY_BODY for a reply.  A request's body is a flat object (values: numbers, strings,
booleans, null, or lists of at most MAX_LIST of those); a reply's nests at
most REPLY_DEPTH levels.  Anything else is a protocol error: the receiver
closes that connection with a logged reason.  One socket is one bus: a frontend sees
only the devices of the bus it connected to.
"""
import array
import json
import os
import re
import socket
import struct

MAGIC = b"VN"
VERSION = 1
HDR = struct.Struct("<2sBBI")
MAX_BODY = 8192                 # a request's body
MAX_REPLY_BODY = 65536          # a reply's (STATS of many devices)
MAX_FDS = 16

HELLO, LIST, OPEN, NEGCAP, REGISTER, LINKUP, LINKDOWN, MACQUERY, CLOSE, STATS, FLUSHRX = range(1, 12)
# Capture taps (docs/capture.md): beside a device's owner, not through it.
CAPTURE_START, CAPTURE_STOP = 12, 13
REPLY, ERROR, EVENT = 64, 65, 66
NAMES = {HELLO: "hello", LIST: "list", OPEN: "open", NEGCAP: "negcap", REGISTER: "register",
         LINKUP: "linkup", LINKDOWN: "linkdown", MACQUERY: "macquery", CLOSE: "close",
         STATS: "stats", FLUSHRX: "flushrx", CAPTURE_START: "capture_start",
         CAPTURE_STOP: "capture_stop", REPLY: "reply", ERROR: "error", EVENT: "event"}


class ProtocolError(Exception):
    """A malformed or out-of-order message: the connection must be closed."""


class RemoteError(Exception):
    """The other side refused a request (its reason is the message)."""


class Disconnected(ConnectionError):
    """The other side closed the control connection."""


def max_body(mtype):
    """The largest body a message of this type may carry."""
    return MAX_REPLY_BODY if mtype >= REPLY else MAX_BODY


def encode(mtype, body):
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > max_body(mtype):
        raise ValueError(f"control message body of {len(data)} bytes exceeds {max_body(mtype)}")
    return HDR.pack(MAGIC, VERSION, mtype, len(data)) + data


def send(sock, mtype, body=None, fds=()):
    msg = encode(mtype, body or {})
    if fds:
        sock.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(msg)


def close_fds(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


# Request bodies (what a frontend sends) are flat: an object whose values
# are numbers, strings, booleans, null or lists of those.  Replies nest a
# little (STATS: a list of objects holding objects).  Nesting is counted on
# the raw text before it is parsed, so no input can drive the parser's
# recursion anywhere near the interpreter's limit.
REQUEST_DEPTH = 2
REPLY_DEPTH = 8
MAX_LIST = 64

# A JSON string, or an unterminated one up to the end: the match never
# fails once started, so scanning stays linear in the body's length.
_STRING = re.compile(r'"(?:[^"\\]+|\\[\s\S])*(?:"|\\?\Z)')
_BRACKET = re.compile(r"[\[\]{}]")


def _depth(text):
    depth = deepest = 0
    for b in _BRACKET.findall(_STRING.sub("", text)):
        if b in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _scalar(v):
    return v is None or isinstance(v, (bool, int, float, str))


def decode(data, flags=0, max_depth=REPLY_DEPTH):
    """(type, body dict) of one datagram, or ProtocolError with the reason.
    max_depth=REQUEST_DEPTH also requires the flat shape of a request."""
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        raise ProtocolError("message or its file descriptors were truncated")
    if len(data) < HDR.size:
        raise ProtocolError(f"message of {len(data)} bytes is shorter than the header")
    magic, version, mtype, blen = HDR.unpack_from(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {bytes(magic)!r}")
    if version != VERSION:
        raise ProtocolError(f"protocol version {version}, expected {VERSION}")
    if blen > max_body(mtype):
        raise ProtocolError(f"body of {blen} bytes exceeds {max_body(mtype)}")
    if blen != len(data) - HDR.size:
        raise ProtocolError(f"body length {blen} does not match the {len(data) - HDR.size} bytes sent")
    try:
        text = bytes(data[HDR.size:]).decode()
    except UnicodeDecodeError:
        raise ProtocolError("body is not valid UTF-8") from None
    if _depth(text) > max_depth:
        raise ProtocolError(f"body nests deeper than {max_depth} levels")
    try:
        body = json.loads(text)
    except Exception:
        # ValueError for bad JSON and for integers of too many digits;
        # anything else the parser might raise is still the peer's input.
        raise ProtocolError("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ProtocolError("body is not a JSON object")
    if max_depth <= REQUEST_DEPTH:
        for k, v in body.items():
            if _scalar(v):
                continue
            if isinstance(v, list) and len(v) <= MAX_LIST and all(_scalar(x) for x in v):
                continue
            raise ProtocolError(f"field {k!r} is not a number, string or short list of them")
    return mtype, body


def fds_of(anc):
    """The file descriptors passed in a recvmsg() ancillary list."""
    fds = []
    for level, ctype, cdata in anc:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            a = array.array("i")
            a.frombytes(cdata[: len(cdata) - len(cdata) % a.itemsize])
            fds.extend(a)
    return fds


def recv(sock, max_depth=REPLY_DEPTH):
    """(type, body dict, fds).  Raises Disconnected on EOF, ProtocolError on
    anything malformed (received fds are closed first)."""
    data, anc, flags, _ = sock.recvmsg(HDR.size + MAX_REPLY_BODY + 1, socket.CMSG_SPACE(MAX_FDS * 4))
    fds = fds_of(anc)
    try:
        if not data and not anc:
            raise Disconnected("control connection closed")
        mtype, body = decode(data, flags, max_depth)
        return mtype, body, fds
    except BaseException:
        close_fds(fds)
        raise


def field(body, name, kind, *, lo=None, hi=None, optional=False, default=None):
    """A typed field of a message body, checked; ProtocolError if wrong."""
    if name not in body:
        if optional:
            return default
        raise ProtocolError(f"missing field {name!r}")
    v = body[name]
    if kind is int and (isinstance(v, bool) or not isinstance(v, int)):
        raise ProtocolError(f"field {name!r} must be an integer")
    if kind is str and not isinstance(v, str):
        raise ProtocolError(f"field {name!r} must be a string")
    if kind is int and ((lo is not None and v < lo) or (hi is not None and v > hi)):
        raise ProtocolError(f"field {name!r}={v} out of range {lo}..{hi}")
    if kind is str and hi is not None and len(v) > hi:
        raise ProtocolError(f"field {name!r} longer than {hi}")
    return v


def call(sock, mtype, body=None, fds=()):
    """Send a request and wait for its reply body.  EVENT messages that
    arrive in between are skipped (device events travel on the EVQ ring)."""
    send(sock, mtype, body, fds)
    while True:
        rtype, rbody, rfds = recv(sock)
        close_fds(rfds)
        if rtype == REPLY:
            return rbody
        if rtype == ERROR:
            raise RemoteError(rbody.get("error", "request refused"))
        if rtype == EVENT:
            continue
        raise ProtocolError(f"unexpected {NAMES.get(rtype, rtype)} while waiting for a reply")
