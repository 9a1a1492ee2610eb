"""The frontend (the vbus-enet driver, in a process of its own).

    import venet.frontend as fe

    with fe.connect("/run/venet/venet.sock") as bus:
        dev = bus.open("vt0")
        dev.send(frame)
        frame = dev.recv(timeout=1)

The frontend creates and seals the device memory, registers it with the
backend and brings the link up.  It needs no privileges beyond access to
the control socket.

Reconnection (connect(path, reconnect=True)): when the backend goes away
(its process dies, it closes the control connection), every device of the
bus goes down and the bus connects again, retrying 10 ms after the loss,
then doubling the delay up to 100 ms between attempts, for as long as the
process wants.  Each device is then opened again with the settings it was
opened with (name, ring_size, poll_us, offloads, buf_size, txc), in a new
memory region; the Device object stays the same.  What the user sees:

- LinkDown is raised once per outage, by the first send or receive call
  (send, send_nowait, send_batch, recv, recv_frame, recv_into,
  recv_nowait, recv_batch) that finds the device down; a call blocked
  when the backend goes away raises it within 0.2 s.
- Afterwards these calls wait for the link as they wait for frames or for
  ring space: up to their timeout, reconnecting at the back-off, then
  return what a timeout returns (None, False or 0); once the device is up
  again they carry on in the same call.
- events() reports the outage as (EV_LINKSTATE, 0, 0) and the return as
  the backend's (EV_LINKSTATE, 1, 0) of the reopened device; events()
  never raises LinkDown and never waits: on a down device it makes one
  attempt when one is due, so calling it now and then is enough to get
  the device back.
- A frame queued with send() just before the outage may be lost, as on a
  wire; frames received and not yet read are kept.  fileno() changes with
  each reopening (and raises LinkDown while the device is down);
  `offloads`, `mtu` and `mac` are those of the backend that serves it now.

Reconnection is lazy: it runs in the thread that uses the device, inside
its calls, under the bus's lock, and never in a thread of its own.  A
background thread would have to swap a device's memory while the user's
thread may be inside a ring call with the GIL released (a crash), so every
call on the data path would need a lock; done lazily, no data-path call
needs one, and nothing is lost by waiting for the next call, since no
frame can flow before the user makes one.  As before, one device is used
by one thread at a time; different devices of a bus may be used by
different threads.
"""
import collections
import logging
import select
import socket
import threading
import time

import ioq
from venet import abi, control, offload
from venet import _frames

log = logging.getLogger("venet.frontend")

# How often a blocked recv() looks at the control socket for a dead backend.
_LIVENESS_SLICE = 0.2
# Reconnection back-off: the first retry after this, doubling up to the cap.
RETRY_FIRST = 0.01
RETRY_MAX = 0.1
# Errors of a control exchange that mean the connection is gone or unusable.
_CONN_ERRORS = (OSError, control.ProtocolError)


# Pages `Bus.stats()` asks for at the most: each holds at least one
# device, a bus far fewer than this many.
STATS_MAX_PAGES = 1 << 16


class Counters(dict):
    """A device's counters as STATS sends them (zero ones left out): an
    absent name reads as 0 (without being added); get() and `in` see only
    what was sent."""

    def __missing__(self, key):
        return 0


def _stats_view(s):
    for d in s.get("devices") or ():
        if isinstance(d.get("counters"), dict):
            d["counters"] = Counters(d["counters"])
        if isinstance(d.get("ports"), dict):
            d["ports"] = {k: Counters(v) if isinstance(v, dict) else v for k, v in d["ports"].items()}
    return s


class LinkDown(ConnectionError):
    """The device's link is down: the backend went away or took it down."""


def connect(path, timeout=5.0, reconnect=False):
    """Connect to the bus served on `path`.  timeout bounds each control
    exchange (and each reconnection attempt).  reconnect=True: survive the
    backend's death, see the module's docstring; the first connection must
    still succeed (errors are raised as without it)."""
    return Bus(path, timeout, reconnect)


class Backoff:
    """Delays between attempts: RETRY_FIRST, doubling, at most RETRY_MAX."""

    def __init__(self, first=RETRY_FIRST, cap=RETRY_MAX):
        self.first, self.cap = first, cap
        self.reset()

    def reset(self):
        """The next attempt is due at once."""
        self.delay = 0.0
        self.next_at = 0.0

    def failed(self):
        self.delay = self.first if self.delay == 0 else min(self.cap, self.delay * 2)
        self.next_at = time.monotonic() + self.delay

    def due(self):
        return time.monotonic() >= self.next_at


class Bus:
    def __init__(self, path, timeout=5.0, reconnect=False):
        self.path = path
        self.timeout = timeout
        self.reconnect = reconnect
        self.devices = {}
        self.sock = None
        self._lock = threading.RLock()
        self._dialing = None
        self._aborted = False
        self._retry = Backoff()
        self._why = None                # the reason of the last failed attempt (logged once)
        try:
            self.sock, hello = self._dial()
        except FileNotFoundError:
            raise FileNotFoundError(f"no venet bridge socket at {path}") from None
        except PermissionError:
            raise PermissionError(f"not allowed to connect to {path} (ask for its group)") from None
        self.bus = hello.get("bus")
        # Connections are numbered; a device is up when it was opened on the
        # live one (_live is -1 while there is none).  Without reconnect both
        # stay 0: the check on the data path is one comparison.
        self._gen = 0
        self._live = 0

    def _dial(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self._dialing = sock
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.path)
            hello = control.call(sock, control.HELLO, {"version": control.VERSION})
        except BaseException:
            sock.close()
            raise
        finally:
            self._dialing = None
        return sock, hello

    @property
    def connected(self):
        return self._live == self._gen and not self._aborted

    def alive(self):
        """False when the backend has closed this bus's control connection
        (a non-blocking look; nothing is consumed).  With reconnect=True a
        connection found dead is given up at once: every device of the bus
        goes down at its next call, and reconnection starts."""
        if not self.connected:
            return False
        gen = self._gen
        while select.select([self.sock], [], [], 0)[0]:
            try:
                data = self.sock.recv(control.HDR.size + control.MAX_REPLY_BODY, socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:
                self._lost(gen)
                return False
            # An unsolicited EVENT message would hide the end of the stream
            # behind it: take it (as control.call() skips it).  Anything else
            # is the reply to a request in progress in another thread.
            if data[3:4] != bytes([control.EVENT]) or not self._lock.acquire(blocking=False):
                break
            try:
                control.close_fds(control.recv(self.sock)[2])
            except (OSError, control.ProtocolError):
                self._lost(gen)
                return False
            finally:
                self._lock.release()
        return True

    def reset(self):
        """Give up the current connection and reconnect (reconnect=True
        only): for a frontend that finds its link unusable while the
        backend is still there.  The backend resets the devices of a
        connection that closes."""
        if not self.reconnect:
            raise ValueError("reset() needs a bus connected with reconnect=True")
        self._lost(self._gen)

    def _lost(self, gen):
        """Connection `gen` is gone (reconnect=True)."""
        if not self.reconnect:
            return
        with self._lock:
            if gen != self._live or self._live < 0:
                return
            self._live = -1
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._retry.reset()
            self._why = None
            log.info("bus %s: the backend went away; reconnecting", self.path)

    def _connect_if_due(self):
        """True when the bus is connected, dialling again if an attempt is
        due; never waits longer than one attempt (bounded by timeout)."""
        if self._live == self._gen:
            return not self._aborted
        if self._aborted or not self._retry.due():
            return False
        try:
            sock, hello = self._dial()
        except (OSError, control.ProtocolError, control.RemoteError) as e:
            self._retry.failed()
            if self._why is None:           # once per outage, not per attempt
                self._why = f"{type(e).__name__}: {e}"
                log.info("bus %s: no backend yet (%s); retrying every %d ms at most",
                         self.path, e, RETRY_MAX * 1000)
            return False
        old, self.sock = self.sock, sock
        old.close()
        self.bus = hello.get("bus")
        self._gen += 1
        self._live = self._gen
        self._retry.reset()
        self._why = None
        log.info("bus %s: connected again", self.path)
        return True

    def abort(self):
        """Stop reconnecting and cut the control connection, from a signal
        handler or another thread: a call blocked on the backend (or on an
        attempt to reach it) returns at once; afterwards every call that
        needs the backend raises LinkDown or returns what a timeout does."""
        self._aborted = True
        for s in (self._dialing, self.sock):
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _control(self, mtype, body=None):
        """A bus-level request; with reconnect=True a dead backend is tried
        once more (if an attempt is due) and then reported as LinkDown."""
        if not self.reconnect:
            return control.call(self.sock, mtype, body)
        with self._lock:
            if not self._connect_if_due():
                raise LinkDown(f"bus {self.path}: no backend (reconnecting)")
            gen = self._gen
            try:
                return control.call(self.sock, mtype, body)
            except _CONN_ERRORS as e:
                self._lost(gen)
                raise LinkDown(f"bus {self.path}: the backend went away ({e})") from None

    def list(self):
        """Every device of the bus (LIST, a page at a time)."""
        return self._paged(control.LIST, "name")["devices"]

    def stats(self, device=None):
        """The bus's counters: {"bus", "devices": [...], "control"}, every
        device of the bus (device=NAME: that one only; RemoteError if the
        bus has none of that name).  The bridge answers STATS a page at a
        time, each one reply long, so the devices are not read at one
        instant but within the few milliseconds the pages take.  The bridge
        leaves zero counters out: a device's `counters` (and a switch's
        per-port ones) read an absent name as 0."""
        if device is not None:
            s = self._control(control.STATS, {"device": device})
            s.pop("more", None)
            return _stats_view(s)
        return _stats_view(self._paged(control.STATS, "device"))

    def _paged(self, mtype, key):
        """A request the bridge answers a page at a time (LIST, STATS):
        the devices of every page, by name (`key`), in one reply.  The
        pages are asked for in turn with `after`, the last name got."""
        s = self._control(mtype)
        devices = list(s.get("devices") or ())
        pages = 1
        while s.get("more") and devices:
            after = devices[-1].get(key)
            if not isinstance(after, str) or pages >= STATS_MAX_PAGES:
                raise control.ProtocolError(f"{control.NAMES[mtype]} paging went wrong after "
                                            f"{pages} pages ({len(devices)} devices)")
            s = self._control(mtype, {"after": after})
            page = s.get("devices") or []
            if not page and s.get("more"):
                raise control.ProtocolError(f"{control.NAMES[mtype]} page after {after!r} is empty "
                                            f"and claims more: no progress")
            if page and not (isinstance(page[0].get(key), str) and page[0][key] > after):
                raise control.ProtocolError(f"{control.NAMES[mtype]} page after {after!r} starts "
                                            f"at {page[0].get(key)!r}: no progress")
            devices.extend(page)
            pages += 1
        s["devices"] = devices
        s.pop("more", None)
        return s

    def open(self, name=None, *, ring_size=None, poll_us=0, offloads=0, buf_size=None, txc=False):
        """Open a device (the only one if name is None) and bring its link up.
        ring_size defaults to the largest that keeps the device's memory
        within abi.MEMORY_BUDGET for its MTU.  offloads: the SG-group bits
        to ask for (abi.CAP_CSUM, CAP_TSO4, ...), "all", or a list such as
        "csum,tso4"; `Device.offloads` holds what the backend granted.
        Without offloads every frame is plain; with them, recv_frame()
        shows their metadata and recv() still returns plain frames.
        buf_size (a multiple of 64, at least abi.MIN_BUF_SIZE) overrides
        abi.buf_size_for(mtu); frames longer than a buffer then chain.
        txc: ask for TX completion events (send(..., txc=True)).
        With reconnect=True the device is opened again with these same
        settings whenever the bus reconnects."""
        if isinstance(offloads, str):
            offloads = abi.parse_offloads(offloads)
        if name is None:
            devs = self.list()
            if len(devs) != 1:
                raise ValueError(f"the bus has {len(devs)} devices; name one")
            name = devs[0]["name"]
        with self._lock:
            if not self.reconnect:
                dev = Device(self, name, ring_size, poll_us, offloads, buf_size, txc)
            else:
                if not self._connect_if_due():
                    raise LinkDown(f"bus {self.path}: no backend (reconnecting)")
                gen = self._gen
                try:
                    dev = Device(self, name, ring_size, poll_us, offloads, buf_size, txc)
                except _CONN_ERRORS as e:
                    self._lost(gen)
                    raise LinkDown(f"bus {self.path}: the backend went away ({e})") from None
        self.devices[name] = dev
        return dev

    def close(self):
        for d in list(self.devices.values()):
            d.close()
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Device:
    def __init__(self, bus, name, ring_size, poll_us, offloads=0, buf_size=None, txc=False):
        self.bus = bus
        self.name = name
        self.region = None
        self.tx = self.rx = self.evq = None
        self.link = False
        self._pending = collections.deque()     # software-segmented frames not yet returned
        self._settings = (ring_size, poll_us, offloads, buf_size, txc)
        self._closed = False
        self._events = collections.deque()      # link changes seen here, for events()
        self._unreported = False                # an outage no send/recv has raised yet
        self._retry = Backoff()                 # reopening, when the backend refuses it
        self._why = None
        self._gen = bus._gen                    # the bus connection the device is open on
        self._open(ring_size, poll_us, offloads, buf_size, txc)
        self.events()                           # the link-up event of the first opening

    def _open(self, ring_size, poll_us, offloads, buf_size, txc):
        """OPEN, NEGCAP, REGISTER a new region, LINKUP, on the bus's socket."""
        bus, name = self.bus, self.name
        info = control.call(bus.sock, control.OPEN, {"device": name})
        try:
            self.mac = info["mac"]
            self.mtu = info["mtu"]
            self.caps = {}
            want = abi.CAP_SG | abi.consistent_caps(offloads & abi.OFFLOAD_CAPS)
            events = abi.CAP_EVQ_LINKSTATE | (abi.CAP_EVQ_TXC if txc else 0)
            for gid, bits in ((abi.CAP_GROUP_SG, want), (abi.CAP_GROUP_EVENTQ, events)):
                r = control.call(bus.sock, control.NEGCAP, {"device": name, "group": gid, "bits": bits})
                self.caps[gid] = r["bits"] & bits
            # Only what both asked for and granted, made consistent.
            self.offloads = abi.consistent_caps(self.caps[abi.CAP_GROUP_SG]) & abi.OFFLOAD_CAPS
            self.txc = bool(self.caps[abi.CAP_GROUP_EVENTQ] & abi.CAP_EVQ_TXC)
            self._max_frame = abi.max_frame(self.mtu, self.offloads)
            buf = buf_size or abi.buf_size_for(self.mtu)
            # Frames may arrive as chains (or with records) only with
            # offloads or when an MTU frame and the tap's header overflow
            # one buffer; otherwise the one-buffer fast path serves.
            self._chained = bool(self.offloads) or abi.META_SIZE + self.mtu + abi.ETH_HLEN > buf
            self._buf = buf
            ring_size = ring_size or abi.ring_size_for(self.mtu)
            self.region = ioq.Region.create([ring_size, ring_size, abi.EVQ_RING],
                                            buf_size=self._buf, name=f"venet-{name}",
                                            roles=abi.FRONTEND_ROLES)
            fd, efds = self.region.handoff()
            fds = [fd] + [x for pair in efds for x in pair]
            control.call(bus.sock, control.REGISTER, {"device": name}, fds)
            self.tx = self.region.producer(abi.RING_TX, poll_us=poll_us)
            self.rx = self.region.consumer(abi.RING_RX, poll_us=poll_us)
            self.evq = self.region.consumer(abi.RING_EVQ)
            self.link = control.call(bus.sock, control.LINKUP, {"device": name})["link"]
        except BaseException:
            self._release()
            raise

    # ---- link and events ------------------------------------------------

    def events(self):
        """Drain the event queue: a list of (type, a, b).  With
        reconnect=True it also reports the link's changes: (EV_LINKSTATE, 0,
        0) when the backend went away, then, once the device is open again,
        the backend's (EV_LINKSTATE, 1, 0).  It looks at the control socket
        each time (one non-blocking select), and on a down device makes one
        reconnection attempt if one is due; it never waits for the backend
        and never raises LinkDown."""
        if self.bus.reconnect and not self._closed:
            if self._gen == self.bus._live:
                self.bus.alive()            # gives up a dead connection
            if self._gen != self.bus._live:
                self._go_down()
                self._reopen()
        out = list(self._events)
        self._events.clear()
        while self.evq is not None:
            m = self.evq.get(timeout=0)
            if m is None:
                break
            if len(m) >= abi.EVENT_SIZE:
                etype, _size, a, b = abi.EVENT_STRUCT.unpack_from(m)
                if etype == abi.EV_LINKSTATE:
                    self.link = bool(a)
                out.append((etype, a, b))
        return out

    def wait_link(self, timeout=None):
        """Wait until the device is up (reconnect=True: reconnecting at the
        back-off while it is down).  True if it is up, False at the timeout
        or after bus.abort().  It counts as seeing the outage: a later call
        does not raise LinkDown for it.  Without reconnect: True while the
        backend is there, False at once when it is gone."""
        if self._closed:
            raise ValueError(f"device {self.name} is closed")
        if not self.bus.reconnect:
            return self.bus.alive()
        if self._gen == self.bus._live and self.bus.alive():
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        up = self._wait_up(deadline, report=False)
        self._unreported = False
        return up

    def _check_backend(self):
        """Raise LinkDown if the backend closed the control connection.
        With reconnect=True the device goes down first, and this LinkDown
        is the outage's one report."""
        if not self.bus.reconnect:
            if not self.bus.alive():
                self.link = False
                raise LinkDown(f"device {self.name}: the backend disconnected")
            return
        if self._gen == self.bus._live and self.bus.alive():
            return
        self._go_down()
        self._unreported = False
        raise LinkDown(f"device {self.name}: the backend went away (reconnecting)")

    def _go_down(self):
        """Drop the memory of a connection that is gone (reconnect=True);
        the backend reset the device when the connection closed."""
        if self._gen is None:
            return
        self.bus._lost(self._gen)
        self._gen = None
        self._release(close_msg=False)
        self._events.append((abi.EV_LINKSTATE, 0, 0))
        self._unreported = True

    def _wait_up(self, deadline, report=True):
        """The slow path of every call while the device is not open on the
        bus's live connection: raise LinkDown for a new outage (report), or
        reconnect, waiting until `deadline` (None: no limit; a past one: a
        single attempt if due).  True once the device is up again."""
        if self._closed:
            raise ValueError(f"device {self.name} is closed")
        if not self.bus.reconnect:
            raise LinkDown(f"device {self.name}: the backend disconnected")
        self._go_down()
        if report and self._unreported:
            self._unreported = False
            raise LinkDown(f"device {self.name}: the backend went away (reconnecting)")
        bus = self.bus
        while True:
            if self._reopen():
                return True
            now = time.monotonic()
            if bus._aborted or (deadline is not None and now >= deadline):
                return False
            nxt = self._retry.next_at if bus._live == bus._gen else bus._retry.next_at
            wait = min(max(nxt - now, 0.001), RETRY_MAX)
            if deadline is not None:
                wait = min(wait, deadline - now)
            time.sleep(wait)

    def _reopen(self):
        """One attempt (if due) to reconnect the bus and open this device
        again with its settings.  True when it is up."""
        bus = self.bus
        with bus._lock:
            if self._gen is not None and self._gen == bus._live:
                return True                     # another thread's call did it
            if not bus._connect_if_due() or not self._retry.due():
                return False
            gen = bus._gen
            try:
                self._open(*self._settings)
            except _CONN_ERRORS:
                bus._lost(gen)
                return False
            except Exception as e:              # refused or unusable: retried
                self._retry.failed()
                if self._why is None:       # once per outage, not per attempt
                    self._why = f"{type(e).__name__}: {e}"
                    log.warning("device %s: cannot open it again (%s); retrying every %d ms at most",
                                self.name, self._why, RETRY_MAX * 1000)
                return False
            self._gen = gen
            self._retry.reset()
            self._why = None
            self._unreported = False
            if not self.caps[abi.CAP_GROUP_EVENTQ] & abi.CAP_EVQ_LINKSTATE:
                self._events.append((abi.EV_LINKSTATE, 1, 0))   # the backend posts none
            log.info("device %s: link up again", self.name)
            return True

    # ---- frames ---------------------------------------------------------

    def send(self, frame, timeout=None, meta=None, txc=False):
        """Queue one Ethernet frame (bytes-like, 14..MTU+14 bytes; with a
        GSO `meta`, up to abi.MAX_GSO_FRAME).  meta: an offload.Meta the
        device negotiated (a partial checksum, a GSO super-frame).  Returns
        True, or False on timeout.  txc=True (the device was opened with
        txc=True) asks for an EV_TXC event once the backend is done with
        the frame: the call then returns the frame's cookie, which the
        event carries (events()), or None on timeout.  Raises LinkDown when
        the backend is gone (with reconnect=True: once per outage, then it
        waits for the link up to `timeout`)."""
        n = len(frame)
        limit = self.mtu + abi.ETH_HLEN if meta is None or meta.gso_type is None else self._max_frame
        if not abi.MIN_FRAME <= n <= limit:
            raise ValueError(f"frame of {n} bytes: must be {abi.MIN_FRAME} to {limit}")
        flags, rec = 0, None
        if meta is not None:
            missing = meta.caps_needed() & ~self.offloads
            if missing:
                raise ValueError(f"device {self.name} did not negotiate {abi.cap_names(missing)}")
            flags, rec = meta.flags, meta.pack()
        if txc:
            if not self.txc:
                raise ValueError(f"device {self.name} was not opened with txc=True")
            flags |= abi.F_TXC
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._gen != self.bus._live and not self._wait_up(deadline):
                return None if txc else False
            chained = flags or n > self._buf         # a record, a flag or several slots
            t = _LIVENESS_SLICE if timeout is None else \
                max(0.0, min(_LIVENESS_SLICE, deadline - time.monotonic()))
            if chained:
                got = _frames.send_frame(self.tx, frame, flags, rec, t, txc)
            else:
                got = self.tx.put(frame, timeout=t)
            if got is not None and got is not False:
                return got
            self._check_backend()
            if deadline is not None and time.monotonic() >= deadline:
                return None if txc else False

    def send_nowait(self, frame):
        """Queue a frame if a slot is free; False if the ring is full."""
        return self.send(frame, timeout=0)

    def send_batch(self, frames, lens=None):
        """Queue the rows of a 2-D uint8 array (lengths in `lens`); returns
        how many were queued (as many as fit, without waiting)."""
        if self._gen != self.bus._live and not self._wait_up(time.monotonic()):
            return 0
        if frames.shape[1] <= self._buf:
            return self.tx.put_batch(frames, lens, timeout=0)
        # Rows wider than a buffer: frames of more than one slot, one by one.
        n = 0
        for i in range(frames.shape[0]):
            ln = frames.shape[1] if lens is None else int(lens[i])
            if not abi.MIN_FRAME <= ln <= self.mtu + abi.ETH_HLEN:
                if n == 0:
                    raise ValueError(f"row {i}: frame of {ln} bytes: must be {abi.MIN_FRAME} to "
                                     f"{self.mtu + abi.ETH_HLEN}")
                break
            if not _frames.send_frame(self.tx, frames[i, :ln], 0, None, 0):
                break
            n += 1
        return n

    def _get(self, timeout):
        """One plain frame or None, without liveness checks."""
        if self._pending:
            return self._pending.popleft()
        if not self._chained:
            return self.rx.get(timeout=timeout)
        got = _frames.recv_frame(self.rx, timeout)
        if got is None:
            return None
        data, flags, rec = got
        if rec is None:
            return data
        frames = offload.plain_frames(data, offload.Meta.unpack(flags, rec))
        self._pending.extend(frames[1:])
        return frames[0]

    def recv(self, timeout=None):
        """The next frame as bytes, plain (checksummed, no larger than the
        MTU) whatever was negotiated; None on timeout.  Raises LinkDown if
        the backend goes away while we wait (with reconnect=True: once per
        outage, then it waits for the link and its frames up to
        `timeout`)."""
        if self._pending:
            return self._pending.popleft()
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._gen != self.bus._live and not self._wait_up(deadline):
            return None
        m = self._get(0)
        if m is not None:
            return m
        while True:
            left = _LIVENESS_SLICE if deadline is None else min(_LIVENESS_SLICE, deadline - time.monotonic())
            if left <= 0:
                return None
            m = self._get(left)
            if m is not None:
                return m
            self._check_backend()
            if self._gen != self.bus._live and not self._wait_up(deadline):
                return None

    def recv_frame(self, timeout=None):
        """The next frame as it arrived, with its metadata: (bytes, Meta or
        None).  On a device with offloads the frame may be a GSO
        super-frame or carry a partial checksum (offload.plain_frames()
        finishes it).  None on timeout.  LinkDown as for recv()."""
        if self._pending:
            return self._pending.popleft(), None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._gen != self.bus._live and not self._wait_up(deadline):
                return None
            left = _LIVENESS_SLICE if deadline is None else min(_LIVENESS_SLICE, deadline - time.monotonic())
            if left <= 0:
                return None
            got = _frames.recv_frame(self.rx, max(0.0, left))
            if got is not None:
                data, flags, rec = got
                return data, None if rec is None else offload.Meta.unpack(flags, rec)
            self._check_backend()

    def recv_nowait(self):
        """A frame if one is waiting, else None (and arms fileno()).  It
        does not look at the control socket: a select() or epoll user
        learns of a dead backend from events() or a call with a timeout."""
        if self._pending:
            return self._pending.popleft()
        if self._gen != self.bus._live and not self._wait_up(time.monotonic()):
            return None
        m = self._get(0)
        if m is None:
            if self.rx.arm():
                return self._get(0)
        return m

    def _recv_batch(self, out, lens, timeout):
        if not self._chained and not self._pending:
            return self.rx.get_batch(out, lens, timeout=timeout)
        n = 0
        width = out.shape[1]
        while n < len(out):
            m = self._get(timeout if n == 0 else 0)
            if m is None:
                break
            if len(m) > width:
                self._pending.appendleft(m)
                if n == 0:
                    raise ValueError(f"frame of {len(m)} bytes does not fit rows of {width}")
                break
            out[n, :len(m)] = memoryview(m)
            lens[n] = len(m)
            n += 1
        return n

    def recv_batch(self, out, lens, timeout=None):
        """Copy up to len(out) frames into the rows of `out`; lengths into
        `lens`.  Returns the count (0 on timeout).  With reconnect=True it
        raises LinkDown as recv() does."""
        if not self.bus.reconnect:
            if self._gen != self.bus._live:
                self._wait_up(None)         # raises: the device is closed
            return self._recv_batch(out, lens, timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._gen != self.bus._live and not self._wait_up(deadline):
                return 0
            left = _LIVENESS_SLICE if deadline is None else \
                max(0.0, min(_LIVENESS_SLICE, deadline - time.monotonic()))
            n = self._recv_batch(out, lens, left)
            if n:
                return n
            self._check_backend()
            if deadline is not None and time.monotonic() >= deadline:
                return 0

    def recv_into(self, buffer, timeout=None):
        """Copy the next frame into `buffer`; returns its length, or 0 on
        timeout."""
        m = self.recv(timeout)
        if m is None:
            return 0
        mv = memoryview(buffer).cast("B")
        if len(m) > len(mv):
            self._pending.appendleft(m)     # kept for the next call
            raise ValueError(f"frame of {len(m)} bytes does not fit a buffer of {len(mv)}")
        mv[:len(m)] = m
        return len(m)

    def flush_rx(self):
        """Drop every received frame not yet read (the FLUSHRX function);
        returns how many were dropped."""
        n = 0
        if self._gen != self.bus._live and not self._wait_up(time.monotonic(), report=False):
            while self._pending:
                self._pending.popleft()
                n += 1
            return n
        gen = self._gen
        try:
            control.call(self.bus.sock, control.FLUSHRX, {"device": self.name})
        except _CONN_ERRORS as e:
            if not self.bus.reconnect:
                raise
            self.bus._lost(gen)
            raise LinkDown(f"device {self.name}: the backend went away ({e})") from None
        while self._get(0) is not None:
            n += 1
        return n

    def arm(self):
        """True if a frame can be received now; otherwise ask to be kicked,
        so that fileno() becomes readable when one arrives (for select and
        epoll users).  Frames cut in software from a GSO frame wait in this
        object, not in the ring: they count as ready.  False while the link
        is down (reconnect=True; one attempt is made if due)."""
        if self._pending:
            return True
        if self._gen != self.bus._live and not self._wait_up(time.monotonic(), report=False):
            return False
        return self.rx.arm()

    def fileno(self):
        """Readable when frames arrive after recv_nowait() returned None.
        With reconnect=True it is a new fd after each reopening, and
        LinkDown is raised while the link is down."""
        if self._gen != self.bus._live:
            if self._closed or not self.bus.reconnect:
                self._wait_up(None)         # raises
            raise LinkDown(f"device {self.name}: the link is down (reconnecting)")
        return self.rx.fileno()

    def stats(self):
        """Ring counters of the current opening ({} each while down)."""
        if self.tx is None:
            return {"tx": {}, "rx": {}}
        return {"tx": self.tx.stats(), "rx": self.rx.stats()}

    def _release(self, close_msg=True):
        """Close the region; close_msg: tell the backend (CLOSE) first."""
        if close_msg:
            try:
                control.call(self.bus.sock, control.CLOSE, {"device": self.name})
            except (OSError, control.RemoteError, control.ProtocolError):
                pass
        if self.region is not None:
            try:
                self.region.close()
            except BufferError:
                pass        # a memoryview of it is alive: unmapped when the last goes
            self.region = None
        self.tx = self.rx = self.evq = None
        self.link = False

    def close(self):
        if not self._closed:
            self._release(close_msg=self.region is not None and self._gen == self.bus._live)
            self._closed = True
            self._gen = None
        self.bus.devices.pop(self.name, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
