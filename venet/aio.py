"""The frontend for coroutines, on top of venet.frontend.

    from venet import aio

    bus = await aio.connect("/run/venet/bus/b0.sock")
    dev = await bus.open("vt0")
    await dev.send(frame)               # waits while the TX ring is full
    frame = await dev.recv()            # waits for a frame
    async for frame in dev: ...         # every frame, until LinkDown
    await bus.close()

Waiting is done by the event loop, not by a thread: a coroutine that finds
its ring empty (recv) or full (send) arms the ring's doorbell and waits
for its fd with loop.add_reader(), so it works on any loop that has
add_reader (asyncio's selector loop, uvloop).  While any coroutine of a
bus waits, the bus's control socket is watched as well: when the backend
goes away every waiting coroutine gets frontend.LinkDown at once.

Control exchanges (connect, open, list, stats, close) run in the loop's
default executor, holding the bus's lock, so a slow exchange never stalls
the loop and the liveness watch never reads a reply meant for them.

Cancellation: the only await of recv() and send() is the wait for the fd.
A cancelled recv() has taken no frame; a cancelled send() has queued
nothing (a frame is queued whole, in one non-blocking call, or not at
all).  send_batch() and recv_batch() wait until they can move at least
one frame, then move what fits without waiting and return the count; a
cancelled one has moved nothing.

One recv-side call (recv, recv_frame, recv_batch, iteration) and one
send-side call may wait on a device at a time, as with the threaded API's
one thread per device.  Reconnection (frontend.connect(reconnect=True))
is not offered here: after LinkDown, connect and open again.
"""
import asyncio
import select
import time

from venet import _frames, frontend, offload
from venet.frontend import LinkDown

__all__ = ["connect", "Bus", "Device", "LinkDown"]

# When a ring's doorbell was armed but the operation still cannot proceed
# (a chained frame needs more slots than the one free), the peer's next
# release kicks; this bounds the wait in case it does not need to.
_RETRY = 0.01
# The control socket stays readable while a reply for an exchange in an
# executor thread waits there: look again after this, not in a busy loop.
_CONTROL_RECHECK = 0.2


async def connect(path, timeout=5.0):
    """Connect to the bus served on `path` (the errors of
    frontend.connect: FileNotFoundError, PermissionError, ...)."""
    loop = asyncio.get_running_loop()
    fbus = await loop.run_in_executor(None, lambda: frontend.connect(path, timeout))
    return Bus(fbus, loop)


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


class Bus:
    """A connected bus (wraps a frontend.Bus: `.sync`)."""

    def __init__(self, fbus, loop):
        self.sync = fbus
        self.path = fbus.path
        self._loop = loop
        self._waiters = set()
        self._fd = fbus.sock.fileno()
        self._watching = False
        self._recheck = None
        self._down = None           # the LinkDown every later wait raises
        self.devices = {}

    async def _call(self, fn, *args):
        def locked():
            with self.sync._lock:
                return fn(*args)
        return await self._loop.run_in_executor(None, locked)

    async def list(self):
        return await self._call(self.sync.list)

    async def stats(self):
        return await self._call(self.sync.stats)

    async def open(self, name=None, **kw):
        """Open a device (the keyword arguments of frontend.Bus.open:
        ring_size, poll_us, offloads, buf_size, txc)."""
        if self.sync.reconnect:
            raise ValueError("venet.aio does not reconnect")
        fdev = await self._call(lambda: self.sync.open(name, **kw))
        dev = Device(self, fdev)
        self.devices[fdev.name] = dev
        return dev

    async def close(self):
        self._unwatch()
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_exception(LinkDown(f"bus {self.path}: closed"))
        await self._call(self.sync.close)
        self.devices.clear()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()

    # ---- liveness: the control socket, watched while someone waits -------

    def _check(self):
        """Raise LinkDown if the backend has gone (a non-blocking look)."""
        if self._down is None and not self.sync.alive():
            self._down = LinkDown(f"bus {self.path}: the backend disconnected")
        if self._down is not None:
            raise LinkDown(str(self._down))

    def _watch(self):
        self._recheck = None
        if not self._watching and self._waiters and self._down is None:
            self._loop.add_reader(self._fd, self._on_control)
            self._watching = True

    def _unwatch(self):
        if self._watching:
            self._loop.remove_reader(self._fd)
            self._watching = False
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None

    def _on_control(self):
        self._unwatch()
        try:
            self._check()
        except LinkDown as e:
            for fut in list(self._waiters):
                if not fut.done():
                    fut.set_exception(LinkDown(str(e)))
            return
        # Alive; still readable means a reply for an exchange in progress
        # in an executor thread: look again later rather than spin.
        if select.select([self._fd], [], [], 0)[0]:
            self._recheck = self._loop.call_later(_CONTROL_RECHECK, self._watch)
        else:
            self._watch()

    async def _wait(self, fd, timeout=None):
        """Wait until fd is readable (or timeout); LinkDown if the backend
        goes away meanwhile."""
        self._check()
        fut = self._loop.create_future()
        self._loop.add_reader(fd, _wake, fut)
        self._waiters.add(fut)
        self._watch()
        try:
            if timeout is None:
                await fut
            else:
                try:
                    await asyncio.wait_for(asyncio.shield(fut), timeout)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._loop.remove_reader(fd)
            self._waiters.discard(fut)
            if not self._waiters:
                self._unwatch()
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()     # retrieved: no "never retrieved" warning


class Device:
    """An open device (wraps a frontend.Device: `.sync`)."""

    def __init__(self, bus, fdev):
        self.bus = bus
        self.sync = fdev
        self.name = fdev.name
        self.mac, self.mtu, self.offloads = fdev.mac, fdev.mtu, fdev.offloads
        self._busy = {"recv": False, "send": False}

    def _enter(self, side):
        if self._busy[side]:
            raise RuntimeError(f"device {self.name}: another coroutine is already in a {side} call")
        self._busy[side] = True

    # ---- receive -----------------------------------------------------------

    async def _recv_with(self, take, timeout):
        """take() -> a result or None (nothing ready); waits between tries."""
        self._enter("recv")
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                got = take()
                if got is not None:
                    return got
                if self.sync.arm():         # ready after all: take it now
                    continue
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                await self.bus._wait(self.sync.fileno(), left)
        finally:
            self._busy["recv"] = False

    async def recv(self, timeout=None):
        """The next frame (bytes, plain), waiting for it; None after
        `timeout` seconds (None: no limit).  LinkDown if the backend goes
        away."""
        return await self._recv_with(lambda: self.sync._get(0) if self._up() else None, timeout)

    async def recv_frame(self, timeout=None):
        """The next frame with its offload metadata: (bytes, Meta or None)."""
        return await self._recv_with(lambda: self._take_frame() if self._up() else None, timeout)

    def _take_frame(self):
        s = self.sync
        if s._pending:
            return s._pending.popleft(), None
        got = _frames.recv_frame(s.rx, 0)
        if got is None:
            return None
        data, flags, rec = got
        return data, None if rec is None else offload.Meta.unpack(flags, rec)

    async def recv_batch(self, out, lens, timeout=None):
        """Wait for at least one frame, then copy up to len(out) into the
        rows of `out` (lengths into `lens`); returns the count (0 at the
        timeout)."""
        got = await self._recv_with(lambda: (self.sync._recv_batch(out, lens, 0) or None)
                                    if self._up() else None, timeout)
        return got or 0

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self.recv()

    # ---- send --------------------------------------------------------------

    async def _send_with(self, put, failed, timeout):
        self._enter("send")
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                self._up()
                got = put()
                if got != failed:
                    return got
                armed_ready = self.sync.tx.arm()
                if armed_ready:
                    # A slot is free but the frame needs more: the release
                    # of the next one kicks us; _RETRY bounds the wait.
                    got = put()
                    if got != failed:
                        return got
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return failed
                wait = left if not armed_ready else min(_RETRY, left if left is not None else _RETRY)
                await self.bus._wait(self.sync.tx.fileno(), wait)
        finally:
            self._busy["send"] = False

    async def send(self, frame, timeout=None, meta=None, txc=False):
        """Queue one frame, waiting while the ring is full.  True (with
        txc=True: the frame's cookie), or False (None) after `timeout`."""
        failed = None if txc else False
        return await self._send_with(lambda: self.sync.send(frame, timeout=0, meta=meta, txc=txc),
                                     failed, timeout)

    async def send_batch(self, frames, lens=None, timeout=None):
        """Wait until at least one row of `frames` fits, then queue as many
        as fit; returns how many were queued (0 at the timeout)."""
        return await self._send_with(lambda: self.sync.send_batch(frames, lens), 0, timeout)

    # ---- the rest ----------------------------------------------------------

    def _up(self):
        """Raise LinkDown once the backend is known to be gone."""
        if self.bus._down is not None:
            raise LinkDown(str(self.bus._down))
        return True

    def events(self):
        return self.sync.events()

    def stats(self):
        return self.sync.stats()

    async def close(self):
        await self.bus._call(self.sync.close)
        self.bus.devices.pop(self.name, None)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
