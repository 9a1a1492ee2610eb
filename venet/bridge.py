"""The venet-tap backend: owns tap devices, serves one bus on a control
socket; the pump of each device a frontend brought up is a task of a vbus
worker pool (vbus/_worker.pyx), not a thread of its own.

Connection states: new -> hello'd -> (per device) open -> registered -> up.
Malformed or out-of-order messages close the connection with a logged
reason (sent first as an ERROR when the peer is reading); refused requests
(unknown device, device busy, a limit reached, memory refused) get an
ERROR reply and the connection stays.  Connections, devices per connection,
the time to HELLO and each connection's unread output are capped (see the
limits below Device), with counters in the STATS reply's "control" object.
When a frontend goes away (close, crash, kill -9), its devices are reset:
pump stopped, memory unmapped, ready for the next frontend.
"""
import atexit
import base64
import binascii
import bisect
import collections
import errno
import heapq
import itertools
import json
import logging
import os
import selectors
import socket
import stat
import struct
import threading
import time

import ioq
from venet import abi, control, logs, placement
from venet.control import ProtocolError, field
from venet.devices import tap as taplib
from venet.devices._pump import Pump
from vbus._worker import Pool
from venet.devices._capture import MAX_SNAPLEN, MIN_SNAPLEN, CaptureSet, FilterError, check_filter

log = logging.getLogger("venet.bridge")


class DeviceError(Exception):
    pass


class Device:
    """One virtual-ethernet device of the bus, backed by a tap.

    The port fd may also be one end of a datagram socketpair standing in
    for the tap (tests without root): no tun ioctls are made then, and no
    offload is offered.

    While the link is up the device's pump is a task of a vbus worker pool
    (`pool`, else the process's shared one): linkup adds it to the worker
    its `cpu` names, linkdown removes it (synchronous: the worker never
    blocks on a peer, so this is bounded) before the link-down event is
    posted and the memory may go.
    """

    # How long linkdown waits for the worker to let the pump go.  A worker
    # never blocks on a peer: only a bug makes this run out.
    REMOVE_TIMEOUT = 5.0

    def __init__(self, name, tap_name, tap_fd, created, mac, mtu, poll_us=0,
                 offloads=abi.OFFLOAD_CAPS, cpu=placement.AUTO, pool=None, null_frame=None):
        self.name = name
        self.tap_name = tap_name
        self.tap_fd = tap_fd
        # venet-null (venet/devices/null_port.pxd): tap_fd is its eventfd and
        # this the frame it gives (b"": a sink only); None: tap_fd is the port.
        self.null_frame = null_frame
        self.created = created
        self.mac = mac
        self.mtu = mtu
        self.poll_us = poll_us
        self.cpu = cpu              # --cpu: N, "auto" or "any" (venet/placement.py)
        self.pool = pool            # the vbus worker pool (None: the shared one)
        self.pin = None             # the CPU asked of the pool at link up (None: any worker)
        self.owner = None
        self.caps = {}
        self.region = None
        self.pump = None
        self.evq = None
        self.link = False
        self.totals = {}            # counters of earlier sessions
        # Pumps whose worker did not answer a remove in time (a bug: a
        # worker never blocks on a peer), with the memory and tap they may
        # still touch: kept for good, and no new pump on this port.
        self.wedged = []
        # linkup/linkdown/reset on the control thread; the worker's report
        # of a pump that ended on its own only takes it without waiting.
        self._lock = threading.RLock()
        self.is_tap = (tap_fd >= 0 and null_frame is None
                       and not stat.S_ISSOCK(os.fstat(tap_fd).st_mode))
        # Capture taps: the set outlives pumps (each pump of the device
        # gets it), captures come and go beside the owner.
        self.captures = CaptureSet()
        self.capture_maps = {}      # capture id -> (slot, ring, region)
        # What this device offers per capability group: SG chains always,
        # offloads as far as the kernel's tun supports them.
        if self.is_tap:
            offloads = abi.consistent_caps(offloads & taplib.supported_offloads(tap_fd))
        else:
            offloads = 0
        self.offered = {abi.CAP_GROUP_SG: abi.CAP_SG | offloads,
                        abi.CAP_GROUP_EVENTQ: abi.CAP_EVQ_LINKSTATE | abi.CAP_EVQ_TXC}

    @property
    def offloads(self):
        """The negotiated offload bits (SG group)."""
        return abi.consistent_caps(self.caps.get(abi.CAP_GROUP_SG, 0)) & abi.OFFLOAD_CAPS

    @property
    def worker(self):
        """The vbus Worker serving the pump (None: no pump served)."""
        return self.pump.worker if self.pump is not None else None

    def describe(self):
        return {"name": self.name, "type": abi.DEVICE_TYPE, "mac": self.mac, "mtu": self.mtu,
                "busy": self.owner is not None, "link": self.link,
                "offloads": abi.cap_names(self.offered[abi.CAP_GROUP_SG] & abi.OFFLOAD_CAPS)}

    def register(self, fds):
        self.region = attach_memory(fds)

    def _want_cpu(self):
        """The CPU whose worker should serve the pump (None: the least
        loaded worker): N, the device's bridge home under auto
        (venet/placement.py), None under any."""
        if self.cpu == placement.ANY:
            return None
        if self.cpu == placement.AUTO or self.cpu is None:
            return placement.device_cpus(self.name)[1]
        return int(self.cpu)

    def linkup(self):
        with self._lock:
            self._linkup()

    def _linkup(self):
        if self.region is None:
            raise DeviceError("register memory before link up")
        if self.pump is not None:
            if self.pump.worker is not None:
                return
            # The pump ended on its own (the frontend broke a ring index)
            # and its report has not taken the link down yet: do it now.
            self._linkdown()
        if self.wedged:
            # Two pumps on one port, one of them serving a previous
            # frontend's memory, must never be.
            raise DeviceError(f"device {self.name}: its previous pump's worker did not let it go; "
                              f"link up refused")
        caps = self.offloads
        try:
            tx = self.region.consumer(abi.RING_TX, max_len=abi.META_SIZE + abi.max_frame(self.mtu, caps))
            rx = self.region.producer(abi.RING_RX)
            self.evq = self.region.producer(abi.RING_EVQ)
        except (ioq.IoqError, ValueError) as e:
            raise DeviceError(f"rings refused: {e}") from None
        txc = self.caps.get(abi.CAP_GROUP_EVENTQ, 0) & abi.CAP_EVQ_TXC
        # The kernel may now hand the tap's reader what the frontend accepts.
        # Set before the pump exists: a refusal here leaves nothing to undo.
        if self.is_tap:
            try:
                taplib.set_offloads(self.tap_fd, caps)
            except taplib.TapError as e:
                raise DeviceError(str(e)) from None
        try:
            # No bulk_cpu: it moves a whole thread, and a worker is shared.
            pump = Pump(tx, rx, self.tap_fd, poll_us=self.poll_us, mtu=self.mtu, caps=caps,
                        txc_evq=self.evq if txc else None, capture=self.captures,
                        null_frame=self.null_frame)
        except (ValueError, OSError) as e:
            if self.is_tap:
                taplib.set_offloads(self.tap_fd, 0)
            if isinstance(e, ValueError):
                raise DeviceError(str(e)) from None
            raise DeviceError(f"pump refused: {e.strerror or e}") from None
        # The event queue has one producer at a time: this thread before the
        # pump is served and after it has been removed, the pump (TXC) in between.
        self.event(abi.EV_LINKSTATE, 1)
        self.pin = self._want_cpu()
        self.pump = pump
        self.link = True                # before add: a pump that breaks at once sets it False
        try:
            (self.pool or shared_pool()).add(pump, cpu=self.pin, on_done=self._pump_ended)
        except (RuntimeError, OSError, TimeoutError) as e:
            self.link = False
            self.pump = None
            self.event(abi.EV_LINKSTATE, 0)
            if self.is_tap:
                taplib.set_offloads(self.tap_fd, 0)
            raise DeviceError(f"pump refused: {e}") from None

    def _pump_ended(self, pump):
        """The worker dropped the pump after its DONE (a ring index broken):
        on the worker's thread, which must not wait for the control
        thread; if that one holds the device, its next linkup/linkdown
        finishes the job."""
        if pump is not self.pump:
            return
        log.warning("device %s: the frontend corrupted a ring index; link down", self.name,
                    extra=logs.fields("link_down", None, self.name))
        self.link = False
        if self._lock.acquire(blocking=False):
            try:
                if pump is self.pump:
                    self._linkdown()
            finally:
                self._lock.release()

    def event(self, etype, a=0, b=0):
        post_event(self, etype, a, b)

    def linkdown(self):
        with self._lock:
            self._linkdown()

    def _linkdown(self):
        pump = self.pump
        if pump is not None:
            self.pump = None
            try:
                if pump.worker is not None:
                    pump.worker.remove(pump, self.REMOVE_TIMEOUT)
            except TimeoutError as e:
                # Never two producers on the event queue: no event then.
                # And never unmap memory or close a tap a worker may touch.
                log.error("device %s: %s; link-down event not sent, its memory and tap stay "
                          "until the process ends", self.name, e)
                self.wedged.append(pump)
                self.link = False
                return
            self.event(abi.EV_LINKSTATE, 0)
            session = _flatten(pump.stats())
            self._fold_stats(session)
            _log_drops(self.name, session)
            if self.is_tap:
                try:
                    taplib.set_offloads(self.tap_fd, 0)
                except taplib.TapError as e:
                    log.warning("device %s: %s", self.name, e)
        self.link = False

    def reset(self):
        """Back to unowned: the pump removed, the frontend's memory unmapped
        (unless a wedged pump may still touch it)."""
        with self._lock:
            try:
                self._linkdown()
                if self.region is not None:
                    if self.wedged:
                        self.wedged.append(self.region)
                    else:
                        self.region.close()
            finally:
                self.evq = None
                self.region = None
                self.owner = None
                self.caps = {}

    def capture_start(self, cid, fds, prog, snaplen, direction):
        """Attach capture `cid`: its ring in the capturer's memory (fds:
        the memfd, then the ring's producer's and consumer's doorbells)."""
        if len(fds) != 3:
            raise DeviceError(f"capture_start needs 1 memfd and 1 doorbell pair, got {len(fds)} fds")
        try:
            region = ioq.Region.attach(fds[0], [(fds[1], fds[2])], roles=(0,),
                                       max_size=MAX_CAPTURE_REGION)
        except ioq.RegionError as e:
            raise DeviceError(f"capture memory refused: {e}") from None
        except OSError as e:
            raise DeviceError(f"capture memory refused: {e.strerror or e}") from None
        try:
            if region.nrings != 1:
                raise DeviceError(f"a capture region has 1 ring, not {region.nrings}")
            try:
                ring = region.producer(0)
            except (ioq.IoqError, ValueError) as e:
                raise DeviceError(f"capture ring refused: {e}") from None
            try:
                slot = self.captures.add(ring, prog, snaplen, direction)
            except FilterError as e:
                raise DeviceError(str(e)) from None
            except ValueError as e:
                raise DeviceError(f"capture refused: {e}") from None
        except BaseException:
            region.close()
            raise
        self.capture_maps[cid] = (slot, ring, region)

    def capture_stop(self, cid):
        """Detach capture `cid` and unmap its memory; its counters (None:
        it had ended already, with the device)."""
        if cid not in self.capture_maps:
            return None
        slot, ring, region = self.capture_maps.pop(cid)
        counters = self.captures.remove(slot)
        ring.close()
        region.close()
        return counters

    def capture_counters(self):
        """{capture id: counters} of the captures attached now."""
        return {cid: self.captures.counters(m[0]) for cid, m in self.capture_maps.items()}

    def _fold_stats(self, s):
        for k, v in _flatten(s).items():
            self.totals[k] = self.totals.get(k, 0) + v

    def stats(self):
        out = dict(self.totals)
        out["pumps_wedged"] = sum(1 for w in self.wedged if isinstance(w, Pump))
        out["captures"] = len(self.capture_maps)
        pump = self.pump
        if pump is not None:
            for k, v in _flatten(pump.stats()).items():
                out[k] = out.get(k, 0) + v
        worker = pump.worker if pump is not None else None
        return {"device": self.name, "tap": self.tap_name, "link": self.link,
                "busy": self.owner is not None, "counters": out,
                # the CPU of the worker serving the pump (None: none, or not pinned)
                "worker_cpu": worker.cpu if worker is not None and worker.cpu >= 0 else None}

    def close(self):
        for cid in list(self.capture_maps):
            self.capture_stop(cid)
        self.reset()
        if self.wedged:
            # A wedged pump still uses the tap fd's number: closing it could
            # hand that number to another file under the pump.
            log.error("device %s: a pump was not let go; its tap stays open", self.name)
            return
        if self.tap_fd >= 0:
            os.close(self.tap_fd)
            self.tap_fd = -1


def post_event(dev, etype, a=0, b=0):
    """Post an event on the event queue of `dev` (a Device, or a switch's
    port: anything with `evq` and `caps`), from the control thread while
    no pump or engine produces on it.  Link-state events only if the
    frontend negotiated them; a full queue loses the event (the control
    thread never waits on a frontend)."""
    if dev.evq is None:
        return
    if etype == abi.EV_LINKSTATE and not dev.caps.get(abi.CAP_GROUP_EVENTQ, 0) & abi.CAP_EVQ_LINKSTATE:
        return
    try:
        dev.evq.put(abi.EVENT_STRUCT.pack(etype, abi.EVENT_SIZE, a, b), timeout=0)
    except ioq.IoqError:
        pass


def attach_memory(fds):
    """A frontend's REGISTER: the region and doorbells of `fds` (the memfd,
    then a (producer, consumer) doorbell pair per ring) attached with the
    backend's roles and checked for what a venet device needs.  The
    Region, or DeviceError with the reason."""
    if len(fds) != 1 + 2 * abi.NRINGS:
        raise DeviceError(f"register needs 1 memfd and {abi.NRINGS} doorbell pairs, "
                          f"got {len(fds)} fds")
    pairs = [(fds[1 + 2 * i], fds[2 + 2 * i]) for i in range(abi.NRINGS)]
    try:
        # The backend's roles: every fd is checked for what it must be,
        # and the doorbells it rings are sockets it sends to without
        # ever blocking, whatever the frontend does to them.
        region = ioq.Region.attach(fds[0], pairs, roles=abi.BACKEND_ROLES,
                                   max_size=MAX_DEVICE_REGION)
    except ioq.RegionError as e:
        raise DeviceError(f"memory refused: {e}") from None
    except OSError as e:
        raise DeviceError(f"memory refused: {e.strerror or e}") from None
    try:
        if region.buf_size < abi.MIN_BUF_SIZE:
            # Frames longer than a buffer chain slots, but the first
            # buffer must hold the offload record and an Ethernet header.
            raise DeviceError(f"buffers of {region.buf_size} bytes are smaller than the "
                              f"{abi.MIN_BUF_SIZE} a venet device needs")
        if region.nrings != abi.NRINGS:
            raise DeviceError(f"region has {region.nrings} rings; a venet device has {abi.NRINGS}")
    except BaseException:
        region.close()
        raise
    return region


_shared = None
_shared_lock = threading.Lock()


def shared_pool():
    """The process's own worker pool, made at first use, for devices and
    bridges given none (one worker per usable CPU; joined at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Pool()
            atexit.register(_close_shared)
        return _shared


def _close_shared():
    global _shared
    pool, _shared = _shared, None
    if pool is not None:
        pool.close()


def _forget_shared():
    # A forked child has none of the parent's worker threads: it makes its
    # own pool when it needs one.
    global _shared, _shared_lock
    _shared = None
    _shared_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_shared)


def _log_drops(name, session):
    """The drops of a pump's session, one line when there were any: the
    pump (no Python per frame) cannot log them as they happen."""
    drops = {k[5:]: v for k, v in session.items() if k.startswith("drop_") and v}
    bad = {k: v for k, v in session.items() if k.endswith(".bad_total") and v}
    if drops or bad:
        what = ", ".join(f"{k} {v}" for k, v in sorted({**drops, **bad}.items()))
        # Rate-limited like every line a peer can cause at will (a frontend
        # can end sessions with drops in a loop).
        _drops_log(logging.WARNING, "drops", "device %s: frames dropped during the session that "
                   "ended: %s", name, what, device=name)


def _json_len(obj):
    # As control.encode() writes a body: its length in bytes (ASCII escapes).
    return len(json.dumps(obj, separators=(",", ":")))


def _wire_stats(s):
    """A device's stats as STATS sends them: zero counters left out (a
    client reads an absent counter as 0), which keeps a bus of many used
    devices to few pages."""
    c = s.get("counters")
    if not isinstance(c, dict):
        return s
    return dict(s, counters={k: v for k, v in c.items() if v})


def _flatten(s, prefix=""):
    out = {}
    for k, v in s.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, bool)) and not isinstance(v, str):
            out[f"{prefix}{k}"] = int(v)
    return out


# Control-plane limits (Bridge arguments override the first four).
MAX_DEVICE_REGION = 64 << 20    # a device's shared memory, refused past it before mapping
MAX_CAPTURE_REGION = 64 << 20   # a capture's ring and buffers, likewise
MAX_CAPTURES = 8                # captures one connection may hold at once
MAX_CONNECTIONS = 256           # connections served at once; more are refused
MAX_PER_PROCESS = 64            # connections one process (SO_PEERCRED pid) may hold
MAX_DEVICES = 16                # devices one connection may hold open
HANDSHAKE_TIMEOUT = 5.0         # seconds from accept to HELLO
OUTPUT_TIMEOUT = 10.0           # seconds pending output may go untaken by the peer
OUT_MAX_MSGS = 64               # a connection's output queue: messages ...
OUT_MAX_BYTES = 256 << 10       # ... and bytes
ACCEPT_PAUSE = 0.1              # listener rest after an accept() failure it cannot shed
ACCEPT_BATCH = 16               # connections taken per listener wake-up
FAREWELL_DRAIN = 64             # unread requests discarded before a last ERROR

_REQUESTS = frozenset((control.HELLO, control.LIST, control.OPEN, control.NEGCAP, control.REGISTER,
                       control.LINKUP, control.LINKDOWN, control.MACQUERY, control.CLOSE,
                       control.STATS, control.FLUSHRX, control.CAPTURE_START, control.CAPTURE_STOP))
_TAKES_FDS = frozenset((control.REGISTER, control.CAPTURE_START))
_PEERCRED = struct.Struct("3i")


class Refused(Exception):
    """A request the bridge declines: an ERROR reply, the connection stays."""


def _peercred(sock):
    try:
        return _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except OSError:
        return (0, -1, -1)


def _os_reason(e):
    name = errno.errorcode.get(e.errno)
    return f"{e.strerror} ({name})" if e.strerror and name else str(e)


class _Burst:
    """At most LIMIT log lines a second per kind of event; the rest are
    counted and reported with the next line let through.  What a peer can
    repeat at will (connections, refusals, drops) must not make the log, or
    a full stderr pipe, the thing that stalls the bridge."""
    LIMIT = 10

    def __init__(self, bus=None):
        self.bus = bus
        self.kinds = {}         # kind -> [window start, lines in it, suppressed]

    def __call__(self, level, kind, fmt, *args, conn=None, device=None):
        """One line of event `kind`; its fields (venet.logs): the bus, the
        device, the peer (conn, or the first Connection among args)."""
        now = time.monotonic()
        k = self.kinds.setdefault(kind, [now, 0, 0])
        if now - k[0] >= 1.0:
            k[0], k[1] = now, 0
        if k[1] >= self.LIMIT:
            k[2] += 1
            return
        k[1] += 1
        if k[2]:
            fmt += " (and %d more like it not logged)"
            args += (k[2],)
            k[2] = 0
        if conn is None:
            conn = next((a for a in args if isinstance(a, Connection)), None)
        log.log(level, fmt, *args, extra=logs.fields(kind, self.bus, device, conn))


_drops_log = _Burst()


def _farewell(sock, reason):
    """Best effort: the last ERROR to a connection about to be closed.  Its
    unread requests are discarded first (their fds closed), since closing
    a socket with input pending makes the peer's next read fail with
    ECONNRESET instead of showing the reason."""
    for _ in range(FAREWELL_DRAIN):
        try:
            data, anc, _, _ = sock.recvmsg(control.HDR.size + control.MAX_BODY + 1,
                                           socket.CMSG_SPACE(control.MAX_FDS * 4))
        except OSError:
            break
        control.close_fds(control.fds_of(anc))
        if not data and not anc:
            break
    try:
        sock.send(control.encode(control.ERROR, {"error": reason}))
    except (OSError, ValueError):
        pass


class Connection:
    """One control connection: non-blocking, its replies in a bounded queue
    the selector drains when the peer makes room."""

    def __init__(self, sock, cid, hello_deadline, creds):
        self.sock = sock
        self.fd = sock.fileno()
        self.id = cid
        self.pid, self.uid, self.gid = creds      # SO_PEERCRED at accept
        self.hello = False
        self.hello_deadline = hello_deadline
        self.devices = {}           # name -> Device opened by this connection
        self.captures = {}          # capture id -> Device it is attached to
        self.out = collections.deque()
        self.out_bytes = 0
        self.stall_deadline = None  # when pending output must have moved by
        self.stall_armed = False
        self.events = selectors.EVENT_READ
        self.closed = False
        self.context = None         # the daemon's (its vbus connection)

    def __str__(self):
        return f"connection {self.id} (pid {self.pid} uid {self.uid} gid {self.gid})"


class Bridge:
    """One bus on one control socket.

    One thread serves every connection and never blocks on any of them:
    all sockets are non-blocking, replies wait in a bounded per-connection
    queue, a connection with replies pending is not read, and deadlines
    (handshake, output stall, listener pause) wake the loop only when due.
    """

    def __init__(self, socket_path, devices, group=None, bus="default", *,
                 max_connections=MAX_CONNECTIONS, max_per_process=MAX_PER_PROCESS,
                 max_devices=MAX_DEVICES,
                 handshake_timeout=HANDSHAKE_TIMEOUT, output_timeout=OUTPUT_TIMEOUT,
                 admit=None, on_drop=None, pool=None):
        self.path = socket_path
        # The workers that serve the devices' pumps (None: the process's
        # shared pool); a device given none uses this bridge's.
        self.pool = pool
        for d in devices:
            if d.pool is None:
                d.pool = pool
        # The daemon's hooks: admit(sock) returns the connection's context or
        # raises Refused (access checked at accept); on_drop(conn) hears of
        # every connection closed.
        self.admit = admit
        self.on_drop = on_drop
        self.devices = {d.name: d for d in devices}
        self.group = group
        self.bus = bus
        self.max_connections = max_connections
        self.max_per_process = max_per_process
        self._per_pid = collections.Counter()   # live connections by peer pid
        self._log = _Burst(bus)
        self._waiting = collections.OrderedDict()  # fd -> connection that has not said HELLO
        self.max_devices = max_devices
        self.handshake_timeout = handshake_timeout
        self.output_timeout = output_timeout
        self.sel = selectors.DefaultSelector()
        self.listener = None
        self.listening = False
        self.conns = {}
        self.counters = {k: 0 for k in (
            "accepted", "closed", "refused_max_connections", "refused_max_per_process",
            "refused_no_fds", "accept_errors",
            "dropped_protocol", "dropped_handshake_timeout", "dropped_evicted", "dropped_output_full",
            "dropped_output_stall", "dropped_socket_error", "dropped_internal_error",
            "requests_refused", "refused_access", "dropped_device_removed", "dropped_revoked")}
        self._timers = []           # heap of (when, seq, what, conn)
        self._seq = itertools.count()
        self._ids = itertools.count(1)
        self._capture_ids = itertools.count(1)
        self._reserve = None        # a spare fd, given up to shed connections at EMFILE
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def listen(self):
        if os.path.exists(self.path) or os.path.islink(self.path):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode) and _alive(self.path):
                raise OSError(f"socket path {self.path} is in use by a running bridge")
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"socket path {self.path} exists and is not a socket")
            os.unlink(self.path)     # stale socket of a dead bridge
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        s.listen(64)
        s.setblocking(False)
        self.listener = s
        self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self.sel.register(s, selectors.EVENT_READ, "listen")
        self.listening = True
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")

    def stop(self):
        """Ask serve() to return (signal-safe)."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def serve(self):
        while self.poll(self.next_timeout()):
            pass

    def next_timeout(self):
        """Seconds until the next deadline (None: none armed).  Deadlines
        that no longer matter (a hello that came, a connection gone, output
        taken) are dropped first: an idle bus must not wake for them."""
        while self._timers and self._stale(self._timers[0]):
            _, _, what, conn = heapq.heappop(self._timers)
            if what == "stall":
                conn.stall_armed = False    # the next pending output arms it again
        if self._timers:
            return max(0.0, self._timers[0][0] - time.monotonic())
        return None

    @staticmethod
    def _stale(timer):
        _, _, what, conn = timer
        if what == "hello":
            return conn.closed or conn.hello
        if what == "stall":
            return conn.closed or conn.stall_deadline is None
        return False

    def poll(self, timeout):
        """One round of serve(): what is ready within `timeout`, then the due
        deadlines.  False once stop() was called.  A daemon serving many
        buses on one thread calls it when self.sel's fd is readable."""
        for key, events in self.sel.select(timeout):
            if key.data == "stop":
                return False
            if key.data == "listen":
                self._accept()
                continue
            if callable(key.data):          # a hook run in this thread (metrics.LoopSnapshot)
                key.data()
                continue
            conn = key.data
            try:
                if not conn.closed and events & selectors.EVENT_WRITE:
                    self._flush(conn)
                if not conn.closed and events & selectors.EVENT_READ:
                    self._service(conn)
            except Exception as e:
                # A bug of ours must cost one connection, not the bus.
                log.exception("%s: internal error", conn)
                self._drop(conn, "internal_error", f"internal error: {type(e).__name__}")
        self._run_timers()
        return True

    # ---- deadlines -------------------------------------------------------

    def _arm(self, when, what, conn=None):
        heapq.heappush(self._timers, (when, next(self._seq), what, conn))

    def _run_timers(self):
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, what, conn = heapq.heappop(self._timers)
            if what == "listen":
                self._resume_listener()
            elif conn.closed:
                continue
            elif what == "hello":
                if not conn.hello:
                    self._drop(conn, "handshake_timeout",
                               f"no hello within {self.handshake_timeout:g} s of connecting")
            elif what == "stall":
                conn.stall_armed = False
                if conn.stall_deadline is None:
                    continue
                if conn.stall_deadline <= now:
                    self._drop(conn, "output_stall",
                               f"replies not read for {self.output_timeout:g} s", farewell=False)
                else:
                    conn.stall_armed = True
                    self._arm(conn.stall_deadline, "stall", conn)

    # ---- connections -----------------------------------------------------

    def _accept(self):
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue                # the peer gave up before we took it
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._shed():
                    continue
                self.counters["accept_errors"] += 1
                self._pause_listener(e)
                return
            sock.setblocking(False)
            creds = _peercred(sock)
            if self._per_pid[creds[0]] >= self.max_per_process:
                self._refuse(sock, "refused_max_per_process",
                             f"too many connections from this process: one process may hold "
                             f"{self.max_per_process}", creds)
                continue
            # Access first: a peer not allowed on the bus makes no room.
            context = None
            if self.admit is not None:
                try:
                    context = self.admit(sock)
                except Refused:
                    sock.close()        # admit sent the refusal and logged it
                    continue
            if len(self.conns) >= self.max_connections and self._waiting:
                # Full, and someone has not even said HELLO: that one makes
                # room, so idle connections cannot lock newcomers out.
                _, oldest = self._waiting.popitem(last=False)
                self._drop(oldest, "evicted", "room made for a new connection before this one "
                                              "said hello")
            if len(self.conns) >= self.max_connections:
                self._refuse(sock, "refused_max_connections",
                             f"too many connections: this bridge serves at most {self.max_connections}",
                             creds)
                continue
            self.counters["accepted"] += 1
            conn = Connection(sock, next(self._ids), time.monotonic() + self.handshake_timeout, creds)
            conn.context = context
            self.conns[conn.fd] = conn
            self._per_pid[conn.pid] += 1
            self._waiting[conn.fd] = conn
            self.sel.register(sock, selectors.EVENT_READ, conn)
            self._arm(conn.hello_deadline, "hello", conn)
            self._log(logging.INFO, "opened", "%s opened", conn)

    def _shed(self):
        """Out of fds: give up the reserve to take one waiting connection
        and refuse it with a reason, so it does not wait in the backlog and
        the listener does not wake us again and again for it."""
        if self._reserve is None:
            return False
        os.close(self._reserve)
        self._reserve = None
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            sock = "none waiting"
        except OSError:
            sock = None
        if isinstance(sock, socket.socket):
            sock.setblocking(False)
            self._refuse(sock, "refused_no_fds", "the bridge is out of file descriptors")
        try:
            self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            pass
        return sock is not None

    def _refuse(self, sock, counter, reason, creds=None):
        self.counters[counter] += 1
        pid, uid, gid = creds or _peercred(sock)
        self._log(logging.WARNING, counter, "refused a connection from pid %d uid %d gid %d: %s",
                  pid, uid, gid, reason)
        _farewell(sock, reason)
        sock.close()

    def _pause_listener(self, e):
        log.warning("accept failed: %s; not accepting for %g s", _os_reason(e), ACCEPT_PAUSE)
        if self.listening:
            self.sel.unregister(self.listener)
            self.listening = False
        self._arm(time.monotonic() + ACCEPT_PAUSE, "listen")

    def _resume_listener(self):
        if not self.listening and self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, "listen")
            self.listening = True
        if self._reserve is None:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass

    def _drop(self, conn, why=None, reason=None, farewell=True):
        """Close a connection: why None for an orderly close, else the
        counter's suffix and the logged reason (also sent as a last ERROR
        when farewell and the peer is taking its replies)."""
        if conn.closed:
            return
        conn.closed = True
        if why is None:
            self.counters["closed"] += 1
            self._log(logging.INFO, "closed", "%s closed", conn)
        else:
            self.counters["dropped_" + why] += 1
            self._log(logging.WARNING, why, "%s dropped: %s", conn, reason)
            if farewell and not conn.out:
                _farewell(conn.sock, reason)
        for dev in conn.devices.values():
            self._log(logging.INFO, "reset", "%s: device %s reset (its connection closed)", conn,
                      dev.name, device=dev.name)
            try:
                dev.reset()
            except Exception:
                log.exception("device %s: reset failed", dev.name)
        conn.devices.clear()
        self._stop_captures(conn)
        conn.out.clear()
        if self.on_drop is not None:
            try:
                self.on_drop(conn)
            except Exception:
                log.exception("%s: on_drop failed", conn)
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.fd, None)
        self._waiting.pop(conn.fd, None)
        self._per_pid[conn.pid] -= 1
        if self._per_pid[conn.pid] <= 0:
            del self._per_pid[conn.pid]
        conn.sock.close()
        # A closed connection's deadlines stay in the heap until due; when
        # they outnumber the live ones, drop them now, so a burst of short
        # connections holds no memory for a handshake timeout's length.
        if len(self._timers) > 2 * len(self.conns) + 64:
            self._timers = [t for t in self._timers if t[3] is None or not t[3].closed]
            heapq.heapify(self._timers)

    def _interest(self, conn):
        events = selectors.EVENT_WRITE if conn.out else selectors.EVENT_READ
        if events != conn.events:
            self.sel.modify(conn.sock, events, conn)
            conn.events = events

    def _queue(self, conn, mtype, body):
        try:
            msg = control.encode(mtype, body)
        except ValueError as e:
            # A reply too large for the protocol (or a reason quoting
            # something long a peer chose): refused in a line of its own.
            log.error("%s: %s", conn, e)
            msg = control.encode(control.ERROR, {"error": f"the reply was too large: {e}"})
        if not conn.out:
            try:
                conn.sock.send(msg)
                return
            except BlockingIOError:
                pass
            except OSError as e:
                self._drop(conn, "socket_error", f"send failed: {_os_reason(e)}", farewell=False)
                return
        if len(conn.out) >= OUT_MAX_MSGS or conn.out_bytes + len(msg) > OUT_MAX_BYTES:
            self._drop(conn, "output_full", f"output queue full ({len(conn.out)} messages, "
                       f"{conn.out_bytes} bytes): the client does not read its replies", farewell=False)
            return
        conn.out.append(msg)
        conn.out_bytes += len(msg)
        if conn.stall_deadline is None:
            conn.stall_deadline = time.monotonic() + self.output_timeout
            if not conn.stall_armed:
                conn.stall_armed = True
                self._arm(conn.stall_deadline, "stall", conn)
        self._interest(conn)

    def _flush(self, conn):
        sent = False
        while conn.out:
            try:
                conn.sock.send(conn.out[0])
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno in (errno.EPIPE, errno.ECONNRESET):
                    self._drop(conn)
                else:
                    self._drop(conn, "socket_error", f"send failed: {_os_reason(e)}", farewell=False)
                return
            conn.out_bytes -= len(conn.out.popleft())
            sent = True
        if not conn.out:
            conn.stall_deadline = None
        elif sent:
            conn.stall_deadline = time.monotonic() + self.output_timeout
        self._interest(conn)

    def _service(self, conn):
        try:
            data, anc, flags, _ = conn.sock.recvmsg(control.HDR.size + control.MAX_BODY + 1,
                                                    socket.CMSG_SPACE(control.MAX_FDS * 4))
        except BlockingIOError:
            return
        except ConnectionResetError:
            self._drop(conn)
            return
        except OSError as e:
            self._drop(conn, "socket_error", f"receive failed: {_os_reason(e)}", farewell=False)
            return
        fds = control.fds_of(anc)
        try:
            if not data and not anc:
                self._drop(conn)
                return
            try:
                mtype, body = control.decode(data, flags, control.REQUEST_DEPTH)
            except ProtocolError as e:
                self._drop(conn, "protocol", str(e))
                return
            self._request(conn, mtype, body, fds)
        finally:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _request(self, conn, mtype, body, fds):
        name = control.NAMES.get(mtype, f"message type {mtype}")
        try:
            reply = self._handle(conn, mtype, body, fds)
        except ProtocolError as e:
            self._drop(conn, "protocol", f"{name}: {e}")
            return
        except (Refused, DeviceError, taplib.TapError, ioq.IoqError) as e:
            reason = str(e)
        except OSError as e:
            reason = f"{name} failed: {_os_reason(e)}"
        except Exception as e:
            # A bug of ours must cost one connection, not the bus.
            log.exception("%s: internal error handling %s", conn, name)
            self._drop(conn, "internal_error", f"internal error handling {name}: {type(e).__name__}")
            return
        else:
            self._queue(conn, control.REPLY, reply)
            return
        self.counters["requests_refused"] += 1
        dname = body.get("device") if isinstance(body, dict) else None
        self._log(logging.WARNING, "refused", "%s: %s refused: %s", conn, name, reason,
                  device=dname if isinstance(dname, str) else None)
        self._queue(conn, control.ERROR, {"error": reason})

    def _device(self, conn, body):
        name = field(body, "device", str, hi=64)
        dev = conn.devices.get(name)
        if dev is None:
            raise ProtocolError(f"device {name!r} is not open on this connection")
        return dev

    def _capture_start(self, conn, body, fds):
        """A capture tap on a device of this bus: whoever may open the
        device may capture it (the bus's access rules, checked at accept),
        and it need not own it."""
        name = field(body, "device", str, hi=64)
        snaplen = field(body, "snaplen", int, lo=0, hi=0xffffffff)
        direction = field(body, "direction", str, hi=8)
        text = field(body, "filter", str, hi=control.MAX_BODY)
        dev = self.devices.get(name)
        if dev is None:
            raise DeviceError(f"no device {name!r} on bus {self.bus}")
        if not hasattr(dev, "capture_start"):
            raise Refused(f"device {name!r} has no capture taps (a switch's ports are not "
                          f"captured yet; venet-tap and venet-loopback devices are)")
        if len(conn.captures) >= MAX_CAPTURES:
            raise Refused(f"this connection already holds {len(conn.captures)} captures, "
                          f"the most one connection may hold")
        if not MIN_SNAPLEN <= snaplen <= MAX_SNAPLEN:
            raise Refused(f"snaplen {snaplen} is out of range {MIN_SNAPLEN}..{MAX_SNAPLEN}")
        if direction not in ("in", "out", "both"):
            raise Refused(f"direction {direction!r} is not in, out or both")
        try:
            prog = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise Refused("the filter is not base64 of 8-byte BPF instructions") from None
        try:
            check_filter(prog)
        except FilterError as e:
            raise Refused(str(e)) from None
        cid = next(self._capture_ids)
        dev.capture_start(cid, list(fds), prog, snaplen, direction)
        conn.captures[cid] = dev
        self._log(logging.INFO, "capture", "%s: capture %d of device %s started (%s, snaplen %d, "
                  "%d filter instructions)", conn, cid, name, direction, snaplen, len(prog) // 8)
        return {"capture": cid, "device": name}

    def _stop_captures(self, conn):
        for cid, dev in list(conn.captures.items()):
            try:
                c = dev.capture_stop(cid)
                if c is not None:
                    self._log(logging.INFO, "capture", "%s: capture %d of device %s ended: %d "
                              "captured, %d dropped", conn, cid, dev.name, c["captured"], c["dropped"])
            except Exception:
                log.exception("device %s: capture %d: stop failed", dev.name, cid)
        conn.captures.clear()

    def device_gone(self, dev, reason):
        """`dev` left this bus: its captures made through this bus end, and
        each capturer is told with an EVENT (its connection stays)."""
        for conn in list(self.conns.values()):
            for cid, d in list(conn.captures.items()):
                if d is dev:
                    del conn.captures[cid]
                    c = dev.capture_stop(cid) or {}
                    self._queue(conn, control.EVENT, dict(c, event="capture_stopped", capture=cid,
                                                          reason=reason))

    def control_stats(self):
        """The control plane's counters (the "control" object of STATS)."""
        return dict(self.counters, connections=len(self.conns), max_connections=self.max_connections,
                    max_per_process=self.max_per_process, max_devices=self.max_devices)

    def stats_page(self, body):
        """A STATS reply: one page of the bus's devices, by name, that fits
        one reply whatever the bus holds (docs/abi.md, "STATS").  body:
        `device` (that one only), or `after` (the devices whose names sort
        after it) and `limit` (at most that many); `more` says whether
        devices are left after this page.  Zero counters are left out."""
        name = field(body, "device", str, hi=64, optional=True)
        after = field(body, "after", str, hi=64, optional=True)
        limit = field(body, "limit", int, lo=1, hi=1 << 31, optional=True)
        if name is not None:
            if name not in self.devices:
                raise DeviceError(f"no device {name!r} on bus {self.bus}")
            names = [name]
        else:
            names = sorted(self.devices)
            if after is not None:
                names = names[bisect.bisect_right(names, after):]
        page = {"bus": self.bus, "devices": [], "control": self.control_stats(), "more": False}
        # Sizes are those control.encode() will find: ASCII-escaped JSON
        # without spaces.  "more": false is the longer of its two values.
        used = _json_len(page)
        for n in names:
            if limit is not None and len(page["devices"]) >= limit:
                page["more"] = True
                break
            entry = _wire_stats(self.devices[n].stats())
            size = _json_len(entry) + 1         # and its comma
            if used + size > control.MAX_REPLY_BODY:
                if page["devices"]:
                    page["more"] = True
                    break
                # Alone and still too large (no device class makes one
                # this large): named, its counters left out, not refused.
                entry = {k: entry[k] for k in ("device", "tap", "link", "busy") if k in entry}
                entry.update(counters={}, truncated=True)
                size = _json_len(entry) + 1
            page["devices"].append(entry)
            used += size
        return page

    def list_page(self, body):
        """A LIST reply: the bus's devices by name, as many as fit one reply,
        after `after` if given; `more` says whether devices are left (the
        client asks again with `after` set to the last name it got)."""
        after = field(body, "after", str, hi=64, optional=True)
        names = sorted(self.devices)
        if after is not None:
            names = names[bisect.bisect_right(names, after):]
        page = {"devices": [], "more": False}
        used = _json_len(page)
        for n in names:
            entry = self.devices[n].describe()
            size = _json_len(entry) + 1         # and its comma
            if used + size > control.MAX_REPLY_BODY and page["devices"]:
                page["more"] = True
                break
            page["devices"].append(entry)
            used += size
        return page

    def _handle(self, conn, mtype, body, fds):
        if mtype not in _REQUESTS:
            raise ProtocolError(f"unknown message type {mtype}")
        if not conn.hello and mtype != control.HELLO:
            raise ProtocolError("the first message must be hello")
        if fds and mtype not in _TAKES_FDS:
            raise Refused(f"{control.NAMES[mtype]} takes no file descriptors "
                          f"(the {len(fds)} sent were closed)")
        if mtype == control.HELLO:
            if conn.hello:
                raise ProtocolError("hello was already received")
            v = field(body, "version", int, lo=0, hi=1 << 16)
            if v != control.VERSION:
                raise ProtocolError(f"frontend speaks version {v}, this bridge {control.VERSION}")
            conn.hello = True
            self._waiting.pop(conn.fd, None)
            return {"version": control.VERSION, "bus": self.bus}
        if mtype == control.LIST:
            return self.list_page(body)
        if mtype == control.STATS:
            return self.stats_page(body)
        if mtype == control.CAPTURE_START:
            return self._capture_start(conn, body, fds)
        if mtype == control.CAPTURE_STOP:
            cid = field(body, "capture", int, lo=0, hi=1 << 62)
            dev = conn.captures.pop(cid, None)
            if dev is None:
                raise Refused(f"no capture {cid} on this connection")
            c = dev.capture_stop(cid)
            return dict(c or {"ended": True}, capture=cid)
        if mtype == control.OPEN:
            name = field(body, "device", str, hi=64)
            dev = self.devices.get(name)
            if dev is None:
                raise DeviceError(f"no device {name!r} on bus {self.bus}")
            if dev.owner is conn or name in conn.devices:
                raise DeviceError(f"device {name} is already open on this connection")
            if dev.owner is not None:
                raise DeviceError(f"device {name} is in use by another frontend")
            if len(conn.devices) >= self.max_devices:
                raise Refused(f"this connection already holds {len(conn.devices)} devices, "
                              f"the most one connection may open")
            if getattr(dev, "multi_open", False):
                # A device many connections hold at once (a switch): each
                # gets a port of its own, with the interface of a
                # single-owner Device (its memory, caps, link, reset), so
                # everything below OPEN is the same for both.
                port = dev.open(conn)
                conn.devices[name] = port
                return {"device": name, "mac": port.mac, "mtu": port.mtu, "version": abi.VERSION}
            with dev._lock:
                # A vhost-user connector claims the device under the same lock.
                if dev.owner is not None:
                    raise DeviceError(f"device {name} is in use by another frontend")
                dev.owner = conn
            conn.devices[name] = dev
            self._log(logging.INFO, "open", "%s: device %s opened", conn, name, device=name)
            return {"device": name, "mac": dev.mac, "mtu": dev.mtu, "version": abi.VERSION}
        dev = self._device(conn, body)
        if mtype == control.NEGCAP:
            gid = field(body, "group", int, lo=0, hi=0xffffffff)
            bits = field(body, "bits", int, lo=0, hi=0xffffffff)
            if dev.link:
                raise DeviceError("capabilities cannot change while the link is up")
            got = bits & dev.offered.get(gid, 0)
            if gid == abi.CAP_GROUP_SG:
                got = abi.consistent_caps(got)
            if gid in dev.offered:      # an unknown group is granted nothing, and kept nowhere
                dev.caps[gid] = got
            return {"group": gid, "bits": got}
        if mtype == control.MACQUERY:
            return {"mac": dev.mac, "mtu": dev.mtu}
        if mtype == control.FLUSHRX:
            # In the original the backend held posted RX buffers and had to
            # hand them back.  Here RX buffers are paired with ring slots
            # the backend publishes at once: it holds none between pump
            # rounds, so there is nothing to return; the frontend drops
            # what is queued on its side.
            return {"held": 0}
        if mtype == control.REGISTER:
            if dev.region is not None:
                raise ProtocolError("memory already registered for this device")
            dev.register(list(fds))      # the region keeps dups; ours are closed by _service
            return {}
        if mtype == control.LINKUP:
            dev.linkup()
            self._log(logging.INFO, "link_up", "%s: device %s link up (offloads %s)", conn, dev.name,
                      abi.cap_names(dev.offloads), device=dev.name)
            return {"link": True}
        if mtype == control.LINKDOWN:
            dev.linkdown()
            self._log(logging.INFO, "link_down", "%s: device %s link down", conn, dev.name,
                      device=dev.name)
            return {"link": False}
        assert mtype == control.CLOSE
        self._log(logging.INFO, "reset", "%s: device %s closed and reset", conn, dev.name,
                  device=dev.name)
        dev.reset()
        conn.devices.pop(dev.name, None)
        return {}

    def close(self):
        for conn in list(self.conns.values()):
            self._drop(conn)
        for dev in self.devices.values():
            dev.close()
        if self.listener is not None:
            if self.listening:
                self.sel.unregister(self.listener)
                self.listening = False
            self.listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
        os.close(self._stop_r)
        os.close(self._stop_w)
        self.sel.close()            # its epoll fd: a daemon closes many bridges


def _alive(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
