"""vhost-user: a connector through which a virtio-net driver (a QEMU guest,
a DPDK application) reaches one virtual-ethernet device of the bus.

A connector is not a device: it takes the place of a venet frontend on the
device it serves (one owner at a time: a device a frontend holds refuses
the driver, and the other way round), and drives the device's port with the
virtqueue engine (_virtq.pyx) instead of the venet pump.

Connector: the socket side.  Server mode listens on PATH and serves one
driver at a time; client mode (the driver's `server=1`) dials PATH and dials
again, every RETRY seconds, whenever the connection is gone.  One thread
runs the control plane (a selector: socket, stop pipe, and a timer only
while a message is half-read or a dial is due); the engine is a task of the
device's worker pool while the driver's rings are live.

Session: one connection's state machine.  Each message is read whole
(header with its fds, then the payload; a message must arrive within
MESSAGE_TIMEOUT, with at most MAX_FDS fds however it is cut), parsed
strictly (protocol.py) and answered as the specification says.  Replies
never block the control thread: what the socket does not take waits in a
bounded queue (OUT_MAX_BYTES) written when it is writable; a driver that
leaves more unread is dropped.  A malformed, oversized, out-of-order or
unsupported message closes the connection with a logged reason; the device
is reset and serves the next driver.
"""
import errno
import logging
import os
import selectors
import socket
import stat
import threading
import time

from venet import abi
from venet.vhost import protocol as P
from venet.vhost.memory import MemoryRefused, MemoryTable

log = logging.getLogger("venet.vhost")

MESSAGE_TIMEOUT = 2.0           # seconds a message may take to arrive whole
OUT_MAX_BYTES = 64 << 10        # replies a driver may leave unread before it is dropped
RETRY = 0.1                     # client mode: pause between dials
ENGINE_STOP_TIMEOUT = 5.0
NQUEUES = 2                     # one queue pair: 0 = RX (to the driver), 1 = TX

PROTOCOL_FEATURES = P.bit(P.PROTO_MQ) | P.bit(P.PROTO_REPLY_ACK) | P.bit(P.PROTO_STATUS)
BASE_FEATURES = (P.bit(P.F_VERSION_1) | P.bit(P.NET_F_MRG_RXBUF) | P.bit(P.RING_F_EVENT_IDX) |
                 P.bit(P.RING_F_INDIRECT_DESC) | P.bit(P.USER_F_PROTOCOL_FEATURES) |
                 P.bit(P.F_ANY_LAYOUT))
# venet offload bit -> (the driver may send it, the driver may be given it)
OFFLOAD_BITS = {abi.CAP_CSUM: (P.NET_F_CSUM, P.NET_F_GUEST_CSUM),
                abi.CAP_TSO4: (P.NET_F_HOST_TSO4, P.NET_F_GUEST_TSO4),
                abi.CAP_TSO6: (P.NET_F_HOST_TSO6, P.NET_F_GUEST_TSO6),
                abi.CAP_ECN: (P.NET_F_HOST_ECN, P.NET_F_GUEST_ECN)}


def offered_features(offloads):
    f = BASE_FEATURES
    for cap, (host, guest) in OFFLOAD_BITS.items():
        if offloads & cap:
            f |= P.bit(host) | P.bit(guest)
    return f


def caps_of(features):
    """(tx_caps, rx_caps): the venet offload bits the driver may send, and
    may be given, under these acked features."""
    tx = rx = 0
    for cap, (host, guest) in OFFLOAD_BITS.items():
        if features & P.bit(host):
            tx |= cap
        if features & P.bit(guest):
            rx |= cap
    return abi.consistent_caps(tx), abi.consistent_caps(rx)


def _is_eventfd(fd):
    try:
        return os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
    except OSError:
        return False


def _close(fd):
    if fd is not None and fd >= 0:
        try:
            os.close(fd)
        except OSError:
            pass


class _Ring:
    def __init__(self):
        self.num = None
        self.base = 0
        self.addr = None
        self.kick = -1
        self.call = -1
        self.kicked = False         # SET_VRING_KICK seen: the ring is started
        self.enabled = False

    def close(self):
        _close(self.kick)
        _close(self.call)
        self.kick = self.call = -1


class Session:
    """One driver connection's state: features, memory, the two rings, and
    the engine while they are live."""

    def __init__(self, conn, sock):
        self.c = conn               # the Connector
        self.sock = sock
        self.features = 0
        self.protocol = 0
        self.status = 0
        self.mem = None
        self.rings = [_Ring(), _Ring()]
        self.engine = None
        # message being read
        self.hdr = b""
        self.payload = b""
        self.fds = []
        self.want = None            # (request, flags, size) once the header is in
        self.deadline = None
        # replies the socket did not take yet: written when it is writable;
        # meanwhile the driver is not read, and they must move by out_deadline
        self.out = bytearray()
        self.out_deadline = None
        self.events = selectors.EVENT_READ

    # ---- reading -----------------------------------------------------------

    def readable(self):
        """Read what the socket holds of the current message; handle each
        message completed.  False when the connection is to be closed (the
        reason is logged)."""
        for _ in range(64):         # bounded: other work (stop) gets its turn
            try:
                if self.want is None:
                    data, anc, flags, _ = self.sock.recvmsg(P.HDR.size - len(self.hdr),
                                                            socket.CMSG_SPACE(P.MAX_FDS * 4))
                else:
                    data, anc, flags, _ = self.sock.recvmsg(self.want[2] - len(self.payload),
                                                            socket.CMSG_SPACE(P.MAX_FDS * 4))
            except BlockingIOError:
                return True
            except OSError as e:
                return self.c._closed(self, f"receive failed: {e.strerror}")
            self.fds += _fds_of(anc)
            if flags & (socket.MSG_CTRUNC | getattr(socket, "MSG_TRUNC", 0)):
                return self.c._closed(self, f"more than {P.MAX_FDS} file descriptors with one message")
            # Counted after every read, not once the header is whole: fds may
            # ride with each piece of a payload, and a message carries at most
            # MAX_FDS of them, however it is cut.
            if len(self.fds) > P.MAX_FDS:
                return self.c._closed(self, f"{len(self.fds)} fds with one message, "
                                            f"at most {P.MAX_FDS} accepted")
            if not data:
                if self.hdr or self.want:
                    got = len(self.hdr) if self.want is None else len(self.payload)
                    of = P.HDR.size if self.want is None else self.want[2]
                    return self.c._closed(self, f"message cut short ({got} of {of} bytes), then "
                                                f"the driver closed the connection")
                return self.c._closed(self, None)
            if self.deadline is None:
                self.deadline = time.monotonic() + MESSAGE_TIMEOUT
            if self.want is None:
                self.hdr += data
                if len(self.hdr) < P.HDR.size:
                    continue
                try:
                    self.want = P.header(self.hdr)
                except P.ProtocolError as e:
                    return self.c._closed(self, str(e))
                if self.want[2]:
                    continue
            else:
                self.payload += data
                if len(self.payload) < self.want[2]:
                    continue
            request, mflags, _ = self.want
            payload, fds = self.payload, self.fds
            self.hdr, self.payload, self.fds, self.want, self.deadline = b"", b"", [], None, None
            try:
                ok = self.message(request, mflags, payload, fds)
            finally:
                for fd in fds:
                    _close(fd)
            if not ok:
                return False
            if self.out:
                # Replies wait: the driver is read again once it has taken
                # them (backpressure, as venet/bridge.py does).
                return True
        return True

    def expired(self, now):
        return self.deadline is not None and now >= self.deadline

    def stalled(self, now):
        return self.out_deadline is not None and now >= self.out_deadline

    def next_deadline(self):
        d = [t for t in (self.deadline, self.out_deadline) if t is not None]
        return min(d) if d else None

    def send(self, data):
        """Queue a reply: written at once if the socket takes it, else when
        it becomes writable.  Never blocks (the connector thread serves
        drop() and close() too); OutputFull when the driver has left more
        than OUT_MAX_BYTES of replies unread."""
        if not self.out:
            try:
                n = self.sock.send(data, socket.MSG_NOSIGNAL)
            except BlockingIOError:
                n = 0
            data = data[n:]
            if not data:
                return
        if len(self.out) + len(data) > OUT_MAX_BYTES:
            raise OutputFull(f"output queue full ({len(self.out)} bytes of replies unread, at most "
                             f"{OUT_MAX_BYTES}): the driver does not read its replies")
        self.out += data
        if self.out_deadline is None:
            self.out_deadline = time.monotonic() + MESSAGE_TIMEOUT
        self.c._interest(self)

    def writable(self):
        """Write what the socket takes of the queued replies.  False when
        the connection is to be closed."""
        try:
            n = self.sock.send(self.out, socket.MSG_NOSIGNAL)
        except BlockingIOError:
            return True
        except (BrokenPipeError, ConnectionResetError):
            return self.c._closed(self, None)
        except OSError as e:
            return self.c._closed(self, f"reply failed: {e.strerror or e}")
        del self.out[:n]
        if not self.out:
            self.out_deadline = None
            self.c._interest(self)
        elif n:
            self.out_deadline = time.monotonic() + MESSAGE_TIMEOUT
        return True

    # ---- messages ----------------------------------------------------------

    def message(self, request, flags, payload, fds):
        name = P.name(request)
        self.c.counters["messages"] += 1
        try:
            out = self.handle(request, payload, fds)
        except P.ProtocolError as e:
            return self.c._closed(self, f"{name}: {e}" if not str(e).startswith(name) else str(e))
        except MemoryRefused as e:
            return self.c._closed(self, f"{name}: {e}")
        except Exception as e:      # a bug of ours costs this connection, not the device
            log.exception("vhost-user %s: internal error handling %s", self.c.path, name)
            return self.c._closed(self, f"internal error handling {name}: {type(e).__name__}")
        try:
            if out is not None:
                self.send(P.reply(request, out))
            elif flags & P.F_NEED_REPLY and self.protocol & P.bit(P.PROTO_REPLY_ACK):
                self.send(P.reply(request, P.U64.pack(0)))
        except OutputFull as e:
            self.c.counters["dropped_output_full"] += 1
            return self.c._closed(self, str(e))
        except OSError as e:
            return self.c._closed(self, f"reply to {name} failed: {e.strerror or e}")
        try:
            self.reconcile()
        except P.ProtocolError as e:
            return self.c._closed(self, f"after {name}: {e}")
        return True

    def _ring(self, index, request):
        if index >= NQUEUES:
            raise P.ProtocolError(f"queue {index}: this device has one queue pair (queues 0 and 1)")
        return self.rings[index]

    def _nofds(self, request, fds):
        if fds:
            raise P.ProtocolError(f"{len(fds)} unexpected file descriptors")

    def handle(self, r, payload, fds):
        """The reply payload (bytes) or None."""
        if r not in (P.SET_MEM_TABLE, P.SET_VRING_KICK, P.SET_VRING_CALL, P.SET_VRING_ERR):
            self._nofds(r, fds)
        if r == P.GET_FEATURES:
            P.empty(r, payload)
            return P.U64.pack(self.c.features())
        if r == P.SET_FEATURES:
            v = P.u64(r, payload)
            extra = v & ~self.c.features()
            if extra:
                raise P.ProtocolError(f"the driver acked features 0x{extra:x} this device did not offer")
            if v != self.features:
                self.stop_engine()
            self.features = v
            return None
        if r == P.SET_OWNER:
            P.empty(r, payload)
            return None
        if r in (P.RESET_OWNER, P.RESET_DEVICE):
            P.empty(r, payload)
            self.reset()
            return None
        if r == P.GET_PROTOCOL_FEATURES:
            P.empty(r, payload)
            return P.U64.pack(PROTOCOL_FEATURES)
        if r == P.SET_PROTOCOL_FEATURES:
            v = P.u64(r, payload)
            if v & ~PROTOCOL_FEATURES:
                raise P.ProtocolError(f"the driver acked protocol features 0x{v & ~PROTOCOL_FEATURES:x} "
                                      f"this device did not offer")
            self.protocol = v
            return None
        if r == P.GET_QUEUE_NUM:
            P.empty(r, payload)
            return P.U64.pack(1)
        if r == P.SET_MEM_TABLE:
            regions = P.memory(r, payload)
            mem = MemoryTable(regions, fds)
            self.stop_engine()
            if self.mem is not None:
                self.mem.close()
            self.mem = mem
            self.c.counters["memory_tables"] += 1
            if mem.unsealed:
                self.c.counters["memory_unsealed"] += 1
            return None
        if r == P.SET_VRING_NUM:
            index, num = P.state(r, payload)
            ring = self._ring(index, r)
            if not 1 <= num <= 32768 or num & (num - 1):
                raise P.ProtocolError(f"queue {index}: size {num} is not a power of 2 up to 32768")
            self.stop_engine()
            ring.num = num
            return None
        if r == P.SET_VRING_ADDR:
            a = P.vring_addr(r, payload)
            ring = self._ring(a["index"], r)
            if a["flags"] & ~P.VRING_F_LOG or a["flags"] & P.VRING_F_LOG:
                raise P.ProtocolError(f"queue {a['index']}: dirty logging (flags 0x{a['flags']:x}) "
                                      f"is not supported")
            self.stop_engine()
            ring.addr = a
            return None
        if r == P.SET_VRING_BASE:
            index, num = P.state(r, payload)
            ring = self._ring(index, r)
            if num > 0xffff:
                raise P.ProtocolError(f"queue {index}: base {num} does not fit a split ring's 16 bits")
            self.stop_engine()
            ring.base = num
            return None
        if r == P.GET_VRING_BASE:
            index, _ = P.state(r, payload)
            ring = self._ring(index, r)
            # Asked of rings never set up too (a driver reconnecting to a
            # new backend): answered with what we know.
            self.stop_engine()
            ring.kicked = False
            return P.STATE.pack(index, ring.base)
        if r in (P.SET_VRING_KICK, P.SET_VRING_CALL, P.SET_VRING_ERR):
            index, has_fd = P.vring_file(r, payload)
            ring = self._ring(index, r)
            if has_fd != (len(fds) == 1) or len(fds) > 1:
                raise P.ProtocolError(f"queue {index}: {len(fds)} fds, "
                                      f"{'one' if has_fd else 'none'} expected")
            if fds and not _is_eventfd(fds[0]):
                raise P.ProtocolError(f"queue {index}: the fd is not an eventfd")
            if r == P.SET_VRING_ERR:
                return None         # never signalled: the fd is closed with the message
            if r == P.SET_VRING_KICK and not has_fd:
                raise P.ProtocolError(f"queue {index}: a ring without a kick eventfd (polling) "
                                      f"is not supported")
            self.stop_engine()
            fd = os.dup(fds[0]) if fds else -1
            if r == P.SET_VRING_KICK:
                _close(ring.kick)
                ring.kick = fd
                ring.kicked = True
                if not self.features & P.bit(P.USER_F_PROTOCOL_FEATURES):
                    ring.enabled = True
            else:
                _close(ring.call)
                ring.call = fd
            return None
        if r == P.SET_VRING_ENABLE:
            index, num = P.state(r, payload)
            ring = self._ring(index, r)
            if num > 1:
                raise P.ProtocolError(f"queue {index}: enable {num}, 0 or 1 expected")
            if not num:
                self.stop_engine()
            ring.enabled = bool(num)
            return None
        if r == P.SET_STATUS:
            v = P.u64(r, payload)
            if not self.protocol & P.bit(P.PROTO_STATUS):
                raise P.ProtocolError("status was not negotiated")
            if v > 0xff:
                raise P.ProtocolError(f"status 0x{v:x} does not fit 8 bits")
            self.status = v
            if v == 0:
                self.reset()
            return None
        if r == P.GET_STATUS:
            P.empty(r, payload)
            if not self.protocol & P.bit(P.PROTO_STATUS):
                raise P.ProtocolError("status was not negotiated")
            return P.U64.pack(self.status)
        if r in P.NAMES:
            raise P.ProtocolError("not supported by this backend (its feature was not offered)")
        raise P.ProtocolError(f"unknown request {r}")

    # ---- the engine --------------------------------------------------------

    def ready(self):
        return self.mem is not None and all(
            g.num and g.addr and g.kicked and g.enabled for g in self.rings)

    def reconcile(self):
        """Start the engine once both rings are live."""
        if self.engine is not None or not self.ready():
            return
        self.c._start(self)

    def stop_engine(self):
        if self.engine is None:
            return
        self.c._stop(self)

    def reset(self):
        self.stop_engine()
        for g in self.rings:
            g.close()
        self.rings = [_Ring(), _Ring()]
        self.features = 0
        self.status = 0
        if self.mem is not None:
            self.mem.close()
            self.mem = None

    def close(self):
        self.reset()
        for fd in self.fds:
            _close(fd)
        self.fds = []
        try:
            self.sock.close()
        except OSError:
            pass


def _fds_of(anc):
    fds = []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(data) // 4
            fds += list(memoryview(data[:n * 4]).cast("i"))
    return fds


class DeviceBusy(Exception):
    pass


class OutputFull(Exception):
    """A driver left too many replies unread (the reason)."""


class Connector:
    """A vhost-user socket serving one device (bridge.Device: its port fd,
    MTU, offered offloads and owner)."""

    def __init__(self, dev, path, client=False, poll_us=None, reflect=0):
        self.dev = dev
        # > 0 (benchmarks): the engine gives the driver's frames back to it
        # through a FIFO of this many frames instead of the device's port.
        self.reflect = reflect
        self.path = path
        self.client = client
        self.poll_us = poll_us
        self.counters = {k: 0 for k in (
            "connections", "closed", "messages", "memory_tables", "memory_unsealed", "dropped_protocol",
            "dropped_timeout", "dropped_output_full", "dropped_output_stall", "refused_busy",
            "refused_second", "engine_starts", "dial_failures")}
        self.totals = {}            # engine counters of earlier sessions
        self.wedged = []            # engines a worker did not let go (a bug), with their memory
        self.session = None
        self.listener = None
        self.last_reason = None
        self.sel = selectors.DefaultSelector()
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")
        self.thread = None
        self._next_dial = 0.0
        self.lock = threading.Lock()

    # ---- life --------------------------------------------------------------

    def start(self):
        if not self.client:
            self._listen()
        self.thread = threading.Thread(target=self._serve, name=f"vhost-{self.dev.name}", daemon=True)
        self.thread.start()
        return self

    def _listen(self):
        path = self.path
        if os.path.lexists(path):
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(path)
                raise OSError(errno.EADDRINUSE, f"{path} is in use by another process")
            except (ConnectionRefusedError, FileNotFoundError):
                os.unlink(path)
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(path)
            os.chmod(path, 0o600)
            s.listen(4)
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self.listener = s
        self.sel.register(s, selectors.EVENT_READ, "listen")

    def close(self):
        """Stop serving: the driver's connection closed, the device released."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=ENGINE_STOP_TIMEOUT + 2)
        with self.lock:
            if self.session is not None:
                self._end(self.session)
        if self.listener is not None:
            self.listener.close()
            self.listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        self.sel.close()
        _close(self._stop_r)
        _close(self._stop_w)
        self._stop_r = self._stop_w = -1

    def drop(self, reason):
        """Close the current driver's connection (it may come back)."""
        with self.lock:
            if self.session is not None:
                self._closed(self.session, reason)

    def _serve(self):
        while True:
            # No timer without a reason: an idle connector sleeps until the
            # driver, a dial's time or stop() wakes it.
            timeout = None
            with self.lock:
                if self.client and self.session is None:
                    timeout = max(0.0, self._next_dial - time.monotonic())
                elif self.session is not None and self.session.next_deadline() is not None:
                    timeout = max(0.0, self.session.next_deadline() - time.monotonic())
            for key, events in self.sel.select(timeout):
                if key.data == "stop":
                    return
                with self.lock:
                    if key.data == "listen":
                        self._accept()
                        continue
                    # Each step re-checks the session: the one before may
                    # have closed it.
                    if events & selectors.EVENT_WRITE and key.data is self.session:
                        key.data.writable()
                    if events & selectors.EVENT_READ and key.data is self.session:
                        key.data.readable()
            with self.lock:
                now = time.monotonic()
                if self.session is not None and self.session.expired(now):
                    self.counters["dropped_timeout"] += 1
                    self._closed(self.session, f"message cut short: not whole within {MESSAGE_TIMEOUT} s")
                if self.session is not None and self.session.stalled(now):
                    self.counters["dropped_output_stall"] += 1
                    self._closed(self.session, f"replies unread for {MESSAGE_TIMEOUT} s: the driver "
                                               f"does not read its replies")
                if self.client and self.session is None and now >= self._next_dial:
                    self._dial()

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        if self.session is not None:
            self.counters["refused_second"] += 1
            log.warning("vhost-user %s: a second driver refused: device %s is served to one at a time",
                        self.path, self.dev.name)
            sock.close()
            return
        self._begin(sock)

    def _dial(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.settimeout(1.0)
            s.connect(self.path)
        except OSError:
            s.close()
            self.counters["dial_failures"] += 1
            self._next_dial = time.monotonic() + RETRY
            return
        self._begin(s)

    def _begin(self, sock):
        sock.setblocking(False)
        self.counters["connections"] += 1
        self.session = Session(self, sock)
        self.sel.register(sock, selectors.EVENT_READ, self.session)
        log.info("vhost-user %s: driver connected to device %s", self.path, self.dev.name)

    def _interest(self, session):
        """While replies wait the socket is watched for writing only: the
        driver is not read until it has taken them."""
        events = selectors.EVENT_WRITE if session.out else selectors.EVENT_READ
        if events != session.events and session is self.session:
            self.sel.modify(session.sock, events, session)
            session.events = events

    def _closed(self, session, reason):
        """End a session: reason None for the driver's orderly close, else
        the logged reason.  Returns False (for readable())."""
        if reason is None:
            self.counters["closed"] += 1
            log.info("vhost-user %s: driver disconnected from device %s", self.path, self.dev.name)
        else:
            self.counters["dropped_protocol"] += 1
            self.last_reason = reason
            log.warning("vhost-user %s: connection closed: %s", self.path, reason)
        self._end(session)
        return False

    def _end(self, session):
        try:
            self.sel.unregister(session.sock)
        except (KeyError, ValueError):
            pass
        session.close()
        if self.session is session:
            self.session = None
        self._next_dial = time.monotonic() + RETRY

    # ---- the device --------------------------------------------------------

    def features(self):
        return offered_features(self.dev.offered.get(abi.CAP_GROUP_SG, 0) & abi.OFFLOAD_CAPS)

    def _start(self, s):
        from venet import bridge
        from venet.vhost._virtq import Engine
        dev = self.dev
        f = s.features
        tx_caps, rx_caps = caps_of(f)
        hdr_len = 12 if f & (P.bit(P.F_VERSION_1) | P.bit(P.NET_F_MRG_RXBUF)) else 10
        queues = []
        for g in s.rings:
            a = g.addr
            queues.append({"num": g.num, "desc": a["desc"], "avail": a["avail"], "used": a["used"],
                           "base": g.base, "kick_fd": g.kick, "call_fd": g.call})
        poll_us = self.poll_us if self.poll_us is not None else getattr(dev, "poll_us", 0)
        if self.wedged:
            raise P.ProtocolError(f"device {dev.name}: a previous engine's worker did not let it go")
        if getattr(dev, "wedged", None):
            # A venet frontend's pump that a worker did not let go may still
            # use the port: never a second user of it (as Device._linkup).
            raise P.ProtocolError(f"device {dev.name}: its previous pump's worker did not let it go")
        try:
            eng = Engine(s.mem.regions, queues, dev.tap_fd, hdr_len=hdr_len,
                         mrg=bool(f & P.bit(P.NET_F_MRG_RXBUF)),
                         event_idx=bool(f & P.bit(P.RING_F_EVENT_IDX)), tx_caps=tx_caps, rx_caps=rx_caps,
                         mtu=dev.mtu, poll_us=poll_us, capture=getattr(dev, "captures", None),
                         reflect=self.reflect, null_frame=getattr(dev, "null_frame", None))
        except ValueError as e:
            raise P.ProtocolError(str(e)) from None
        # The claim and the daemon's OPEN are both made under the device's
        # lock: never two owners.
        with dev._lock:
            if dev.owner is not None and dev.owner is not self:
                self.counters["refused_busy"] += 1
                raise P.ProtocolError(f"device {dev.name} is in use by a venet frontend")
            dev.owner = self
        if getattr(dev, "is_tap", False):
            from venet.devices import tap as taplib
            try:
                taplib.set_offloads(dev.tap_fd, rx_caps)
            except taplib.TapError as e:
                log.warning("device %s: %s", dev.name, e)
        pin = dev._want_cpu() if hasattr(dev, "_want_cpu") else None
        try:
            (getattr(dev, "pool", None) or bridge.shared_pool()).add(eng, cpu=pin)
        except (RuntimeError, OSError, TimeoutError) as e:
            self._release(dev)
            raise P.ProtocolError(f"device {dev.name}: the worker pool refused the engine: {e}") from None
        s.engine = eng
        dev.link = True
        self.counters["engine_starts"] += 1
        log.info("vhost-user %s: device %s serving the driver's rings (features 0x%x)",
                 self.path, dev.name, f)

    def _release(self, dev):
        if getattr(dev, "is_tap", False):
            from venet.devices import tap as taplib
            try:
                taplib.set_offloads(dev.tap_fd, 0)
            except taplib.TapError:
                pass
        with dev._lock:
            if dev.owner is self:
                dev.owner = None

    def _stop(self, s):
        eng = s.engine
        s.engine = None
        dev = self.dev
        dev.link = False
        w = eng.worker
        if w is not None:
            try:
                # Synchronous: once it returns the worker never touches the
                # engine, so the driver's memory may be unmapped.
                w.remove(eng, ENGINE_STOP_TIMEOUT)
            except TimeoutError as e:
                # A worker never blocks on a peer: only a bug gets here.  The
                # memory and fds it may touch stay for good, and the device
                # is served to no driver again.
                log.error("device %s: the virtqueue engine was not let go (%s); its memory stays "
                          "mapped", dev.name, e)
                self.wedged.append((eng, s.mem, s.rings))
                if isinstance(getattr(dev, "wedged", None), list):
                    # The engine may still use the port: the device then
                    # refuses a pump's link-up and keeps the port's fd open.
                    dev.wedged.append(eng)
                s.mem = None
                s.rings = [_Ring(), _Ring()]
                return
        for i, g in enumerate(s.rings):
            g.base = eng.last_avail(i)
        for k, v in eng.stats().items():
            self.totals[k] = self.totals.get(k, 0) + v
        self._release(dev)

    def stats(self):
        """Counters: the control plane's and the engine's (all sessions)."""
        out = dict(self.counters)
        # One C-level copy: the connector thread adds keys to totals when an
        # engine stops, and this runs on the caller's (admin) thread.
        out.update(self.totals)
        s = self.session
        eng = s.engine if s is not None else None
        if eng is not None:
            for k, v in eng.stats().items():
                out[k] = out.get(k, 0) + v
        out["driver_connected"] = int(s is not None)
        out["rings_live"] = int(eng is not None)
        return out


def parse_spec(text):
    """`PATH[,client]` -> (path, client), ValueError with the reason."""
    path, _, opt = text.partition(",")
    if opt not in ("", "client", "server"):
        raise ValueError(f"{opt!r}: after the path only ',client' (dial the driver's socket) is allowed")
    if not path.startswith("/"):
        raise ValueError(f"{path!r} is not an absolute path")
    if len(path.encode()) > 107:
        raise ValueError(f"a socket path is at most 107 bytes, {path!r} is {len(path.encode())}")
    if not os.path.isdir(os.path.dirname(path) or "/"):
        raise ValueError(f"directory {os.path.dirname(path)} does not exist")
    return path, opt == "client"
