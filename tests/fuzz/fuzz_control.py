"""Fuzz venet.control.recv: one datagram (and some fds) over a SOCK_SEQPACKET
socketpair, as a peer would send it.

Input: byte 0 chooses the fds sent along (bits 0-2) and whether the harness
writes a correct header for the rest (bit 7: then byte 1 is the message type
and the remainder the body, so the fuzzer can work on the JSON); without
bit 7 the remainder is the whole datagram.

Allowed outcomes: (type, dict, fds) with every fd sent received, or
ProtocolError / Disconnected with every received fd closed.  Anything else
is a finding.
"""
import array
import os
import socket
import sys

from tests.fuzz._runner import Finding, fuzz_main
from venet import control

TARGET = "control"
MAX_DATAGRAM = control.HDR.size + control.MAX_BODY + 64

_pair = None


def _socks():
    global _pair
    if _pair is None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        b.settimeout(2.0)            # a datagram we sent must arrive; never hang
        _pair = (a, b)
    return _pair


def _make_fds(kind):
    """fds for a message: none, eventfds, a pipe end, more than MAX_FDS."""
    n = (0, 1, 7, 2, control.MAX_FDS, control.MAX_FDS + 1, 3, 0)[kind & 7]
    return [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(n)]


def _open_fds():
    return set(os.listdir("/proc/self/fd"))


def TestOneInput(data):
    if not data:
        return
    a, b = _socks()
    head, rest = data[0], data[1:]
    if head & 0x80 and rest:
        body = rest[1:]
        msg = control.HDR.pack(control.MAGIC, control.VERSION, rest[0], len(body)) + body
    else:
        msg = rest
    msg = msg[:MAX_DATAGRAM]
    fds = _make_fds(head)
    try:
        if fds:
            a.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            a.send(msg)
    finally:
        for fd in fds:
            os.close(fd)
    before = _open_fds()            # received fds are installed after this
    try:
        mtype, body, got = control.recv(b)
    except (control.ProtocolError, control.Disconnected):
        leaked = _open_fds() - before
        if leaked:
            raise Finding(f"fds {sorted(leaked)} left open after a refused message")
        return
    except Exception as e:
        raise Finding(f"control.recv raised {type(e).__name__}: {e}") from e
    if not isinstance(mtype, int) or not isinstance(body, dict):
        raise Finding(f"recv returned type {mtype!r} body {type(body).__name__}")
    for fd in got:
        os.close(fd)
    if len(got) != len(fds):
        raise Finding(f"{len(fds)} fds sent, {len(got)} returned with an accepted message")


def main(argv=None):
    fuzz_main(TARGET, TestOneInput, [control], argv, max_len=MAX_DATAGRAM + 2)


if __name__ == "__main__":
    main(sys.argv)
