"""The frontend (the vbus-enet driver, in a process of its own).

    with venet.connect("/run/venet.sock") as bus:
        dev = bus.open("vt0")
        dev.send(frame)
        frame = dev.recv(timeout=1)

The frontend creates and seals the device memory, registers it with the
backend and brings the link up.  It needs no privileges beyond access to
the control socket.
"""
import collections
import select
import socket
import struct
import time

import ioq
from venet import abi, control, offload
from venet import _frames

# How often a blocked recv() looks at the control socket for a dead backend.
_LIVENESS_SLICE = 0.2


class LinkDown(ConnectionError):
    """The device's link is down: the backend went away or took it down."""


def connect(path, timeout=5.0):
    """Connect to the bus served on `path`."""
    return Bus(path, timeout)


class Bus:
    def __init__(self, path, timeout=5.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
        except FileNotFoundError:
            self.sock.close()
            raise FileNotFoundError(f"no venet bridge socket at {path}") from None
        except PermissionError:
            self.sock.close()
            raise PermissionError(f"not allowed to connect to {path} (ask for its group)") from None
        hello = control.call(self.sock, control.HELLO, {"version": control.VERSION})
        self.bus = hello.get("bus")
        self.devices = {}

    def list(self):
        return control.call(self.sock, control.LIST)["devices"]

    def stats(self):
        return control.call(self.sock, control.STATS)

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
        txc: ask for TX completion events (send(..., txc=True))."""
        if isinstance(offloads, str):
            offloads = abi.parse_offloads(offloads)
        if name is None:
            devs = self.list()
            if len(devs) != 1:
                raise ValueError(f"the bus has {len(devs)} devices; name one")
            name = devs[0]["name"]
        dev = Device(self, name, ring_size, poll_us, offloads, buf_size, txc)
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
        self._pending = collections.deque()     # software-segmented frames not yet returned
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
            self.events()
        except BaseException:
            self.close()
            raise

    # ---- link and events ------------------------------------------------

    def events(self):
        """Drain the event queue: a list of (type, a, b)."""
        out = []
        while True:
            m = self.evq.get(timeout=0)
            if m is None:
                break
            if len(m) >= abi.EVENT_SIZE:
                etype, _size, a, b = struct.unpack_from("<IIQQ", m)
                if etype == abi.EV_LINKSTATE:
                    self.link = bool(a)
                out.append((etype, a, b))
        return out

    def _check_backend(self):
        """Raise LinkDown if the backend closed the control connection."""
        r, _, _ = select.select([self.bus.sock], [], [], 0)
        if r:
            try:
                data = self.bus.sock.recv(control.HDR.size + control.MAX_BODY, socket.MSG_PEEK)
            except OSError:
                data = b""
            if not data:
                self.link = False
                raise LinkDown(f"device {self.name}: the backend disconnected")

    # ---- frames ---------------------------------------------------------

    def send(self, frame, timeout=None, meta=None, txc=False):
        """Queue one Ethernet frame (bytes-like, 14..MTU+14 bytes; with a
        GSO `meta`, up to abi.MAX_GSO_FRAME).  meta: an offload.Meta the
        device negotiated (a partial checksum, a GSO super-frame).  Returns
        True, or False on timeout.  txc=True (the device was opened with
        txc=True) asks for an EV_TXC event once the backend is done with
        the frame: the call then returns the frame's cookie, which the
        event carries (events()), or None on timeout."""
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
        chained = flags or n > self._buf         # a record, a flag or several slots
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
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
        the backend goes away while we wait."""
        m = self._get(0)
        if m is not None:
            return m
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _LIVENESS_SLICE if deadline is None else min(_LIVENESS_SLICE, deadline - time.monotonic())
            if left <= 0:
                return None
            m = self._get(left)
            if m is not None:
                return m
            self._check_backend()

    def recv_frame(self, timeout=None):
        """The next frame as it arrived, with its metadata: (bytes, Meta or
        None).  On a device with offloads the frame may be a GSO
        super-frame or carry a partial checksum (offload.plain_frames()
        finishes it).  None on timeout."""
        if self._pending:
            return self._pending.popleft(), None
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _LIVENESS_SLICE if deadline is None else min(_LIVENESS_SLICE, deadline - time.monotonic())
            if left <= 0:
                return None
            got = _frames.recv_frame(self.rx, max(0.0, left))
            if got is not None:
                data, flags, rec = got
                return data, None if rec is None else offload.Meta.unpack(flags, rec)
            self._check_backend()

    def recv_nowait(self):
        """A frame if one is waiting, else None (and arms fileno())."""
        m = self._get(0)
        if m is None:
            if self.rx.arm():
                return self._get(0)
        return m

    def recv_batch(self, out, lens, timeout=None):
        """Copy up to len(out) frames into the rows of `out`; lengths into
        `lens`.  Returns the count (0 on timeout)."""
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
        control.call(self.bus.sock, control.FLUSHRX, {"device": self.name})
        n = 0
        while self._get(0) is not None:
            n += 1
        return n

    def arm(self):
        """True if a frame can be received now; otherwise ask to be kicked,
        so that fileno() becomes readable when one arrives (for select and
        epoll users).  Frames cut in software from a GSO frame wait in this
        object, not in the ring: they count as ready."""
        return bool(self._pending) or self.rx.arm()

    def fileno(self):
        """Readable when frames arrive after recv_nowait() returned None."""
        return self.rx.fileno()

    def stats(self):
        return {"tx": self.tx.stats(), "rx": self.rx.stats()}

    def close(self):
        if self.region is not None:
            try:
                control.call(self.bus.sock, control.CLOSE, {"device": self.name})
            except (OSError, control.RemoteError, control.ProtocolError):
                pass
            self.region.close()
            self.region = None
        self.bus.devices.pop(self.name, None)
        self.link = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
