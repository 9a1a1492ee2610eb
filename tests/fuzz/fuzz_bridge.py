"""Fuzz the bridge's request handling: one client session per input against a
real venet.bridge.Bridge (its serve() loop in a thread, on a socket in a
temporary directory) with two devices that have no tap (tap_fd=-1).

The harness talks only the public protocol, so it keeps working when the
bridge's internals change: it sends each message, waits for its answer,
and after the session checks with a fresh client (HELLO, LIST) that the
bridge still answers and let go of every device.

Input: a sequence of records `u8 flags | u8 type | u16 length (LE) | body`:
  flags bits 0-1: fds sent along: none, a region's memfd and eventfd pairs
                  (bits 4-5 choose its shape), 7 wrong fds, one eventfd
  flags bit 2:    the body is the whole datagram (no header written)
  flags bit 3:    the harness writes the JSON body from the record's bytes
                  (device name choice, u32 group, u32 bits), else they are
                  the body as is

Allowed outcomes of each message: a REPLY, an ERROR, or the connection
closed.  Findings: the serve() thread dying, an exception logged by the
bridge (its "internal error" safety net), an ERROR-level log, no answer
within 2 s, a malformed answer, a device still owned after its client left,
or an fd the harness owns (0, 1, 2) closed or replaced under it.
"""
import json
import logging
import os
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time

import ioq
from tests.fuzz._runner import Finding, fuzz_main
from venet import bridge, control
from venet.devices import tap as taplib

TARGET = "bridge"
ANSWER_S = 2.0
MAX_RECORDS = 24
DEVICE_NAMES = ("d0", "d1", "nope", "", "d0 ", "x" * 65)
# (ring counts, buf_size, nbufs): accepted ones, and ones the pump refuses.
# (The pump needs half the RX ring to hold the largest frame: 16 slots of
# 256 bytes at MTU 1500, 2 KiB buffers for both devices.)
SHAPES = (((16, 16, 8), 256, None), ((16, 16, 4), 2048, None),
          ((2, 2, 2), 256, None), ((8, 8, 8), 256, 4))

_set_offloads = taplib.set_offloads


def _set_offloads_tapless(fd, caps):
    """A tap-less device (fd -1) stands for a tap that takes any offloads."""
    if fd < 0:
        return
    _set_offloads(fd, caps)


class _Log(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.bad = []

    def emit(self, record):
        if record.exc_info or record.levelno >= logging.ERROR:
            self.bad.append(record)


class _Bus:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="venet-fuzz-")
        self.path = os.path.join(self.dir, "bus.sock")
        devs = [bridge.Device("d0", "none0", -1, False, "02:00:00:00:00:01", 1500, cpu="any"),
                bridge.Device("d1", "none1", -1, False, "02:00:00:00:00:02", 9000, cpu="any")]
        self.bridge = bridge.Bridge(self.path, devs, bus="fuzz")
        self.bridge.listen()
        self.error = None
        self.thread = threading.Thread(target=self._serve, name="fuzz-bridge", daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.bridge.serve()
        except BaseException as e:           # what would have ended the process
            self.error = e

    def close(self):
        if self.error is None:
            self.bridge.stop()
            self.thread.join(5)
            try:
                self.bridge.close()
            except Exception:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


_bus = None
_log = _Log()
_std = None


def _setup():
    global _bus, _std
    if _bus is None:
        taplib.set_offloads = _set_offloads_tapless
        lg = logging.getLogger("venet.bridge")
        if _log not in lg.handlers:
            lg.addHandler(_log)
            lg.propagate = False         # refusals are logged as warnings: not noise here
            lg.setLevel(logging.DEBUG)
        _bus = _Bus()
        _std = [_ident(fd) for fd in (0, 1, 2)]
    return _bus


def _ident(fd):
    try:
        st = os.fstat(fd)
        return (st.st_dev, st.st_ino, st.st_mode)
    except OSError:
        return None


def _client(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(0.05)
    s.connect(path)
    return s


def _answer(bus, s, what):
    """REPLY body, ERROR text, or None when the bridge closed the connection."""
    deadline = time.monotonic() + ANSWER_S
    while True:
        try:
            mtype, body, fds = control.recv(s)
        except control.Disconnected:
            return None
        except ConnectionResetError:
            return None
        except socket.timeout:
            _check_bus(bus)                    # a dead serve() answers nothing
            if time.monotonic() < deadline:
                continue
            raise Finding(f"no answer to {what} within {ANSWER_S} s") from None
        except control.ProtocolError as e:
            raise Finding(f"malformed answer to {what}: {e}") from None
        control.close_fds(fds)
        if fds:
            raise Finding(f"the bridge sent fds with its answer to {what}")
        if mtype == control.REPLY:
            return ("reply", body)
        if mtype == control.ERROR:
            if not isinstance(body.get("error"), str):
                raise Finding(f"ERROR without a reason for {what}: {body!r}")
            return ("error", body["error"])
        if mtype != control.EVENT or time.monotonic() > deadline:
            raise Finding(f"answer of type {mtype} to {what}")


def _records(data):
    i = 0
    while i + 4 <= len(data):
        flags, mtype, ln = struct.unpack_from("<BBH", data, i)
        i += 4
        yield flags, mtype, data[i:i + ln]
        i += ln


def _body(flags, raw):
    if not flags & 8:
        return raw
    raw = raw.ljust(9, b"\0")
    group, bits = struct.unpack_from("<II", raw, 1)
    body = {"device": DEVICE_NAMES[raw[0] % len(DEVICE_NAMES)], "version": 1,
            "group": group, "bits": bits}
    return json.dumps(body).encode()


def _fds(flags, keep):
    kind = flags & 3
    if kind == 0:
        return []
    if kind == 1:
        rings, bs, nbufs = SHAPES[(flags >> 4) & 3]
        r = ioq.Region.create(rings, buf_size=bs, nbufs=nbufs)
        keep.append(r)
        fd, pairs = r.handoff()
        return [fd] + [x for p in pairs for x in p]
    if kind == 2:
        # Wrong kinds: an unsealed memfd, then a pipe and eventfds.
        m = os.memfd_create("fuzz", os.MFD_CLOEXEC)
        os.ftruncate(m, 4096)
        r, w = os.pipe2(os.O_CLOEXEC)
        own = [m, r, w] + [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(4)]
        keep.append(own)
        return own
    e = os.eventfd(0, os.EFD_CLOEXEC)
    keep.append([e])
    return [e]


def _release(keep):
    for k in keep:
        if isinstance(k, list):
            for fd in k:
                os.close(fd)
        else:
            k.close()


def _check_bus(bus):
    if bus.error is not None:
        raise Finding(f"the bridge's serve() died: {type(bus.error).__name__}: {bus.error}") \
            from bus.error
    if _log.bad:
        rec = _log.bad[0]
        _log.bad.clear()
        raise Finding(f"the bridge logged: {rec.getMessage()}"
                      + (f" ({rec.exc_info[0].__name__}: {rec.exc_info[1]})" if rec.exc_info else ""))
    now = [_ident(fd) for fd in (0, 1, 2)]
    if now != _std:
        raise Finding(f"an fd of the process (0-2) was closed or replaced: {_std} -> {now}")


def _wait_released(bus):
    """Every device free again (its previous client gone), seen over the
    public protocol within ANSWER_S."""
    deadline = time.monotonic() + ANSWER_S
    with _client(bus.path) as s:
        control.send(s, control.HELLO, {"version": control.VERSION})
        if _answer(bus, s, "hello") is None:
            raise Finding("the bridge closed a fresh connection's HELLO")
        while True:
            control.send(s, control.LIST, {})
            a = _answer(bus, s, "list")
            if a is None or a[0] != "reply":
                raise Finding(f"LIST refused: {a!r}")
            busy = [d["name"] for d in a[1]["devices"] if d["busy"]]
            if not busy:
                return
            if time.monotonic() > deadline:
                raise Finding(f"devices {busy} still owned after their client left")
            time.sleep(0.001)


def TestOneInput(data):
    global _bus
    bus = _setup()
    keep = []
    try:
        try:
            with _client(bus.path) as s:
                for n, (flags, mtype, raw) in enumerate(_records(data)):
                    if n == MAX_RECORDS:
                        break
                    body = _body(flags, raw)
                    msg = body if flags & 4 else \
                        control.HDR.pack(control.MAGIC, control.VERSION, mtype, len(body)) + body
                    fds = _fds(flags, keep)
                    try:
                        if fds:
                            s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                               struct.pack(f"{len(fds)}i", *fds))])
                        else:
                            s.send(msg)
                    except (BrokenPipeError, ConnectionResetError):
                        break                 # dropped on an earlier message
                    except OSError as e:
                        if e.errno == 90:     # EMSGSIZE: not a message a peer can send
                            continue
                        raise
                    if _answer(bus, s, control.NAMES.get(mtype, f"type {mtype}")) is None:
                        break
                    _check_bus(bus)
            _check_bus(bus)
            _wait_released(bus)
            _check_bus(bus)
        except Finding:
            if bus.error is not None or [_ident(fd) for fd in (0, 1, 2)] != _std:
                _bus = None                   # no state worth keeping (keep-going mode)
                bus.close()
                if _ident(0) is None:
                    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            raise
    finally:
        _release(keep)


def main(argv=None):
    fuzz_main(TARGET, TestOneInput, [bridge, control], argv, max_len=8192)


if __name__ == "__main__":
    main(sys.argv)
