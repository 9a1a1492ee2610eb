"""A frontend that misbehaves with the fds it shares, and a backend Device
whose tap is a socketpair end, for tests that need no root.

The frontend is built with the plain ioq API only (trusting eventfds from
Region.create, then a stream socketpair by hand for each doorbell the
backend rings), so the same test runs against a backend that checks fds and
one that does not.
"""
import os
import pickle
import select
import signal
import socket
import threading
import time
import traceback

import ioq
from venet import abi, bridge

SATURATED = 0xfffffffffffffffe      # the most an eventfd counter holds: a write then blocks
MAC = "02:00:00:00:00:42"
# The frontend produces on TX and consumes RX and events (venet.abi's
# FRONTEND_ROLES; spelled out so that this file works on older backends).
FRONTEND_ROLES = (0, 1, 1)


class Frontend:
    """The device memory and doorbells a frontend hands to the backend."""

    def __init__(self, ring=16, evq=16, buf_size=2048):
        self.region = ioq.Region.create([ring, ring, evq], buf_size=buf_size)
        fd, pairs = self.region.handoff()
        self.fds = [fd]
        self.mine = []          # per ring: the socket end this frontend waits on
        self.theirs = []        # per ring: the end the backend rings
        self.backend_waits = []  # per ring: the eventfd the backend waits on
        for i, (p, c) in enumerate(pairs):
            role = FRONTEND_ROLES[i]
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            a.setblocking(False)
            b.setblocking(False)
            pair = [p, c]
            pair[role] = b.fileno()
            self.backend_waits.append(pair[1 - role])
            self.mine.append(a)
            self.theirs.append(b)
            self.fds += pair
        self.tx = self.region.producer(abi.RING_TX, wait_fd=self.mine[0].fileno())
        self.rx = self.region.consumer(abi.RING_RX, wait_fd=self.mine[1].fileno())
        self.evq = self.region.consumer(abi.RING_EVQ, wait_fd=self.mine[2].fileno())

    def misbehave(self):
        """Clear O_NONBLOCK on every doorbell shared with the backend and
        saturate them: eventfd counters at their maximum, socket queues full."""
        for fd in self.backend_waits:
            os.set_blocking(fd, False)
            try:
                os.eventfd_write(fd, SATURATED)
            except BlockingIOError:
                pass
            os.set_blocking(fd, True)
        for b in self.theirs:
            fill(b)
            b.setblocking(True)

    def want_kicks(self):
        """Ask to be kicked on every ring this frontend waits on."""
        self.rx.arm()
        self.evq.arm()
        self.tx.arm()

    def drain(self):
        """Read everything queued on our socket ends (what a well-behaved
        frontend does; unblocks a backend stuck in a blocking write)."""
        for a in self.mine:
            try:
                while a.recv(65536):
                    pass
            except BlockingIOError:
                pass

    def events(self, want, timeout=3.0):
        """Read `want` events (type, size, a, b) from the event ring."""
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            m = self.evq.get(timeout=max(0.0, min(0.2, deadline - time.monotonic())))
            if m is not None:
                out.append(abi.EVENT_STRUCT.unpack_from(m))
        return out

    def close(self):
        self.region.close()
        for s in self.mine + self.theirs:
            s.close()


def fill(sock):
    """Fill a stream socket's send side until it would block."""
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"k" * 4096)
    except BlockingIOError:
        pass
    try:
        while True:
            sock.send(b"k")
    except BlockingIOError:
        pass


def port_pair():
    """(the bridge's end, the test's end) of a datagram socketpair that
    stands in for a tap: one frame per datagram, behind a 16-byte vnet
    header."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def device(port_fd, txc=True, mtu=1500):
    """A backend Device on a socketpair port, opened and negotiated as the
    bridge does for a frontend."""
    dev = bridge.Device("vt0", "port", port_fd, False, MAC, mtu, cpu="any")
    dev.owner = object()
    dev.caps = {abi.CAP_GROUP_SG: abi.CAP_SG,
                abi.CAP_GROUP_EVENTQ: abi.CAP_EVQ_LINKSTATE | (abi.CAP_EVQ_TXC if txc else 0)}
    return dev


def frame(n=60, tag=0):
    """An Ethernet frame of n bytes."""
    body = bytes([tag & 0xff]) * (n - 14)
    return bytes.fromhex("020000000001") + bytes.fromhex("020000000099") + b"\x08\x00" + body


def call_with_deadline(fn, timeout):
    """Run fn in a thread; (finished, result or exception).  A call that
    blocks is left behind in its daemon thread."""
    box = {}

    def run():
        try:
            box["r"] = fn()
        except BaseException as e:     # handed to the caller
            box["r"] = e
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), box.get("r"), t


def run_isolated(fn, timeout):
    """Run fn() in a forked child and return its result.  A backend call
    that blocks a thread (with the GIL held, nothing else in the process
    would run) then costs the child, killed at the deadline, not the test
    run: AssertionError says so.  An exception in fn comes back as an
    AssertionError carrying its traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            os.close(r)
            try:
                out = ("ok", fn())
            except BaseException:
                out = ("err", traceback.format_exc())
            data = pickle.dumps(out)
            while data:
                data = data[os.write(w, data):]
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                raise AssertionError(f"the scenario did not finish within {timeout} s: "
                                     "a backend call blocked")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    if not chunks:
        raise AssertionError("the scenario's process died without a word")
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "err":
        raise AssertionError("in the scenario's process:\n" + value)
    return value
