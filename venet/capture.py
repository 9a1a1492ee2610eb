"""`venet capture`: the frames of a running device, to pcapng or as lines.

The capturer is a client of the device's bus (docs/capture.md): it
compiles its filter with libpcap (through scapy's bindings) into classic
BPF, creates and seals a region of one ring, and sends CAPTURE_START with
the instructions and the region's fds.  The backend's pump then copies
each frame its filter takes into that ring, or drops it for this capture
when the ring is full; the traffic never waits for a capturer.  Python per
frame is fine here: it is the capturer's own time.

The pcapng writer is ours (a few blocks): scapy's PcapNgWriter records no
direction, and the direction is half of what a capture of a device shows.
"""
import base64
import ctypes
import datetime
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time

from venet import control
from venet.errors import UsageError

REC = struct.Struct("<QIIQBBHB3x")      # venet/includes/venet_capture.h, venet_cap_rec_t
REC_SIZE = REC.size
DIR_IN, DIR_OUT = 1, 2
DIR_NAMES = {DIR_IN: "in", DIR_OUT: "out"}
MIN_SNAPLEN = 14
MAX_SNAPLEN = 262144
DEFAULT_SNAPLEN = MAX_SNAPLEN
MAX_FRAME = 65536 + 14 + 4              # the longest frame a device moves (a GSO super-frame)
RING_BYTES = 32 << 20                   # the capture ring's buffers, by default
MIN_SLOTS, MAX_SLOTS = 16, 4096
# A filter travels in CAPTURE_START's body, base64, within the 8192 bytes
# of a request: this many instructions fit with room for the other fields.
MAX_FILTER_INSNS = 700
COALESCE = 0.01                         # seconds the capturer lets frames gather after a kick
GSO_NAMES = {1: "tcpv4", 3: "udp", 4: "tcpv6", 5: "udp_l4"}
PCAP_NETMASK_UNKNOWN = 0xffffffff
LINKTYPE_ETHERNET = 1


def compile_filter(expr):
    """Classic BPF (8-byte little-endian instructions) for a libpcap filter
    expression on Ethernet frames; b"" for no filter."""
    if not expr:
        return b""
    try:
        from scapy.libs.winpcapy import (bpf_program, pcap_close, pcap_compile, pcap_freecode,
                                         pcap_geterr, pcap_open_dead)
    except (ImportError, OSError):
        raise UsageError("a filter needs libpcap (and scapy): install libpcap, or capture "
                         "without a filter") from None
    handle = pcap_open_dead(LINKTYPE_ETHERNET, MAX_SNAPLEN)
    prog = bpf_program()
    try:
        if pcap_compile(handle, ctypes.byref(prog), expr.encode(), 1, PCAP_NETMASK_UNKNOWN) == -1:
            why = bytes(bytearray(pcap_geterr(handle))).split(b"\0", 1)[0].decode(errors="replace")
            raise UsageError(f"bad filter {expr!r}: {why}")
        try:
            out = b"".join(struct.pack("<HBBI", i.code & 0xffff, i.jt & 0xff, i.jf & 0xff, i.k & 0xffffffff)
                           for i in prog.bf_insns[:prog.bf_len])
        finally:
            pcap_freecode(ctypes.byref(prog))
    finally:
        pcap_close(handle)
    if len(out) // 8 > MAX_FILTER_INSNS:
        raise UsageError(f"filter {expr!r} compiles to {len(out) // 8} instructions; a capture "
                         f"takes at most {MAX_FILTER_INSNS}")
    return out


class Frame:
    """One captured frame: its record's fields and the bytes kept."""
    __slots__ = ("ts_ns", "orig_len", "data", "drops", "dir", "gso_type", "gso_size", "hdr_flags")

    def __init__(self, msg):
        if len(msg) < REC_SIZE:
            raise ValueError(f"a capture record of {len(msg)} bytes is shorter than {REC_SIZE}")
        (self.ts_ns, self.orig_len, cap_len, self.drops, self.dir, self.gso_type, self.gso_size,
         self.hdr_flags) = REC.unpack_from(msg)
        if cap_len != len(msg) - REC_SIZE or cap_len > self.orig_len:
            raise ValueError(f"a capture record says {cap_len} bytes of {self.orig_len}, "
                             f"{len(msg) - REC_SIZE} follow")
        self.data = msg[REC_SIZE:]

    @property
    def direction(self):
        return DIR_NAMES.get(self.dir, "?")

    def note(self):
        """The offload note: how the pump moved the frame ('' for a plain one)."""
        parts = []
        if self.gso_type & 0x7f:
            parts.append(f"gso {GSO_NAMES.get(self.gso_type & 0x7f, self.gso_type & 0x7f)} "
                         f"size {self.gso_size}" + (" ecn" if self.gso_type & 0x80 else ""))
        if self.hdr_flags & 1:
            parts.append("checksum partial")
        return ", ".join(parts)


class Capture:
    """A capture of device `device` on the bus served at `path`.

    frames = Capture(path, "d0", filter="icmp"); frames.next(timeout) gives
    a Frame or None; stop() detaches it and returns the backend's counters
    (seen, captured, filtered, dropped).  Closing the connection (or
    dying) detaches it too."""

    def __init__(self, path, device, *, snaplen=DEFAULT_SNAPLEN, direction="both", filter="",
                 ring_bytes=RING_BYTES, timeout=5.0):
        import ioq
        from venet import frontend
        if not MIN_SNAPLEN <= snaplen <= MAX_SNAPLEN:
            raise ValueError(f"snaplen must be {MIN_SNAPLEN}..{MAX_SNAPLEN}")
        prog = compile_filter(filter) if isinstance(filter, str) else bytes(filter)
        self.device = device
        self.snaplen = snaplen
        self.counters = None
        self.ended = None           # why the backend ended the capture, if it did
        self.region = self.ring = None
        self.bus = frontend.connect(path, timeout=timeout)
        try:
            buf = (REC_SIZE + min(snaplen, MAX_FRAME) + 63) // 64 * 64
            slots = MIN_SLOTS
            while slots * 2 <= MAX_SLOTS and slots * 2 * buf <= ring_bytes:
                slots *= 2
            self.region = ioq.Region.create([slots], buf_size=buf, roles=(1,), name="venet-capture")
            fd, pairs = self.region.handoff()
            self.ring = self.region.consumer(0)
            reply = control.call(self.bus.sock, control.CAPTURE_START,
                                 {"device": device, "snaplen": snaplen, "direction": direction,
                                  "filter": base64.b64encode(prog).decode()},
                                 [fd, *pairs[0]])
            self.id = reply["capture"]
        except BaseException:
            self.close()
            raise

    def fileno(self):
        """Readable when the backend kicks the ring (after arm())."""
        return self.ring.fileno()

    def next(self, timeout=None):
        """The next frame, or None when none came within `timeout`."""
        msg = self.ring.get(timeout=timeout)
        return None if msg is None else Frame(msg)

    def poll_control(self):
        """Look at the control socket without waiting: False once the
        backend is gone or has ended this capture (self.ended says why)."""
        sock = self.bus.sock
        while True:
            # select, not MSG_DONTWAIT: the socket has a timeout, and Python
            # waits for it before a recv in timeout mode.
            if not select.select([sock], [], [], 0)[0]:
                return True
            try:
                data = sock.recv(control.HDR.size + control.MAX_REPLY_BODY, socket.MSG_PEEK)
            except OSError as e:
                self.ended = f"the control connection failed: {e.strerror or e}"
                return False
            if not data:
                self.ended = "the bus went away"
                return False
            try:
                mtype, body, fds = control.recv(sock)
            except (control.ProtocolError, control.Disconnected, OSError) as e:
                self.ended = f"the control connection failed: {e}"
                return False
            control.close_fds(fds)
            if mtype == control.EVENT and body.get("event") == "capture_stopped" \
                    and body.get("capture") == self.id:
                self.counters = {k: body.get(k, 0) for k in ("seen", "captured", "filtered", "dropped")}
                self.ended = body.get("reason", "the backend ended the capture")
                return False

    def stop(self):
        """Detach; the backend's counters (None if it is gone)."""
        if self.counters is None and self.ended is None and self.bus is not None:
            try:
                reply = control.call(self.bus.sock, control.CAPTURE_STOP, {"capture": self.id})
                self.counters = {k: reply.get(k, 0) for k in ("seen", "captured", "filtered", "dropped")}
            except (OSError, control.ProtocolError, control.RemoteError):
                pass
        return self.counters

    def close(self):
        if self.bus is not None:
            self.bus.close()
            self.bus = None
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.region is not None:
            self.region.close()
            self.region = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---- pcapng ---------------------------------------------------------------

def _opt(code, value):
    pad = (-len(value)) % 4
    return struct.pack("<HH", code, len(value)) + value + b"\0" * pad


def _block(btype, body):
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


class PcapNgWriter:
    """pcapng (draft-ietf-opsawg-pcapng): one Section Header Block, one
    Interface Description Block (Ethernet, the snaplen, the device's name,
    nanosecond timestamps), then one Enhanced Packet Block per frame with
    its direction in epb_flags and the offload note as a comment."""

    def __init__(self, f, ifname, snaplen):
        self.f = f
        shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, b"venet capture") + _opt(0, b"")
        self.f.write(_block(0x0A0D0D0A, shb))
        idb = (struct.pack("<HHI", LINKTYPE_ETHERNET, 0, snaplen)
               + _opt(2, ifname.encode()[:255]) + _opt(9, b"\x09") + _opt(0, b""))
        self.f.write(_block(0x00000001, idb))

    def write(self, frame):
        data = frame.data
        ts = frame.ts_ns
        body = struct.pack("<IIIII", 0, ts >> 32, ts & 0xffffffff, len(data), frame.orig_len)
        body += data + b"\0" * ((-len(data)) % 4)
        body += _opt(2, struct.pack("<I", frame.dir & 3))
        note = frame.note()
        if note:
            body += _opt(1, note.encode())
        body += _opt(0, b"")
        self.f.write(_block(0x00000006, body))

    def flush(self):
        self.f.flush()


def summary(frame):
    """One line per frame, like tcpdump's."""
    t = datetime.datetime.fromtimestamp(frame.ts_ns / 1e9).strftime("%H:%M:%S.%f")
    try:
        import scapy.layers.inet  # noqa: F401  (registers IPv4 under Ethernet)
        import scapy.layers.inet6  # noqa: F401
        from scapy.layers.l2 import Ether
        what = Ether(frame.data).summary()
    except Exception:               # scapy missing, or a frame it cannot take apart
        what = frame.data[:14].hex()
    note = frame.note()
    cut = f" (captured {len(frame.data)})" if len(frame.data) < frame.orig_len else ""
    return (f"{t} {frame.direction:<3} {what}, length {frame.orig_len}{cut}"
            + (f" [{note}]" if note else ""))


# ---- the command ----------------------------------------------------------

def socket_path(args):
    if args.bus is not None:
        return os.path.join(args.run_dir, "bus", args.bus + ".sock")
    return args.socket


def run(args):
    """`venet capture` (venet/cli.py parses the arguments)."""
    prog = compile_filter(" ".join(args.filter))
    path = socket_path(args)
    out = None
    if args.write == "-":
        out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    elif args.write:
        try:
            out = open(args.write, "wb")
        except OSError as e:
            raise UsageError(f"cannot write {args.write}: {e.strerror}") from None
    try:
        try:
            cap = Capture(path, args.device, snaplen=args.snaplen, direction=args.direction, filter=prog)
        except FileNotFoundError:
            raise UsageError(f"no venet bridge socket at {path}") from None
        except PermissionError:
            raise UsageError(f"not allowed to connect to {path}") from None
        except ConnectionRefusedError:
            raise UsageError(f"nothing serves {path} (a stale socket?)") from None
        except control.RemoteError as e:
            raise UsageError(str(e)) from None
        with cap:
            return _loop(cap, args, out)
    finally:
        if out is not None:
            out.close()


def _loop(cap, args, out):
    writer = PcapNgWriter(out, args.device, args.snaplen) if out is not None else None
    emit = writer.write if writer is not None else lambda f: print(summary(f), flush=True)
    count = 0
    stopping = []
    # Ctrl-C and SIGTERM only raise a flag: a frame is never cut half
    # written, and what the ring holds is still taken after the stop.
    old = {sig: signal.signal(sig, lambda *a: stopping.append(1))
           for sig in (signal.SIGTERM, signal.SIGINT)}
    sel = selectors.DefaultSelector()
    sel.register(cap.bus.sock, selectors.EVENT_READ)
    sel.register(cap.fileno(), selectors.EVENT_READ)
    try:
        while not stopping and (not args.count or count < args.count):
            f = cap.next(timeout=0)
            if f is None:
                if not cap.poll_control():
                    break
                # Sleep until the ring is kicked or the control socket speaks.
                if cap.ring.arm():
                    continue
                if sel.select(0.5):
                    # Let frames gather before taking them: one wake-up
                    # (and one kick by the pump) per COALESCE, not per
                    # frame, while traffic flows; none while it does not.
                    time.sleep(COALESCE)
                continue
            count += 1
            emit(f)
        # Detach first, then take what the backend put on the ring before
        # it let go: every frame it counts as captured reaches the output.
        counters = cap.stop()
        while not args.count or count < args.count:
            f = cap.next(timeout=0)
            if f is None:
                break
            count += 1
            emit(f)
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        sel.close()
        if writer is not None:
            writer.flush()
    dropped = counters["dropped"] if counters else "unknown"
    msg = f"{count} frames captured, {dropped} dropped by the capture"
    if counters and counters.get("filtered"):
        msg += f", {counters['filtered']} not taken by the filter"
    print(msg, file=sys.stderr)
    if cap.ended:
        print(f"venet capture: {cap.ended}", file=sys.stderr)
        return 1
    return 0
