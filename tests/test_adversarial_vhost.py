"""Adversarial vhost-user drivers (no root; the device's port is one end
of a datagram socketpair, as in tests/test_vhost_hostile.py): what a
driver can make the connector hold or wait for.

- file descriptors riding with every piece of one message's payload;
- a driver that never reads its replies;
- a second driver while one is served;
- a message of each size at the protocol's boundaries.
"""
import os
import select
import socket
import struct
import threading
import time

import pytest

from tests.conftest import wait_until
from tests.test_vhost_hostile import device, served, works  # noqa: F401 (fixtures)
from venet.vhost import backend
from venet.vhost import protocol as P


def nfds():
    return len(os.listdir("/proc/self/fd"))


def raw(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s


def send_fds(sock, data, fds):
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    return sock.sendmsg([data], anc)


def test_fds_with_each_piece_of_a_payload_are_bounded(served):
    """A driver sends SET_MEM_TABLE's header, then its payload one byte
    per sendmsg, each with 8 fds.  The backend must not hold more than
    one message's worth (MAX_FDS) of them: the connection is refused."""
    c, dev, peer, driver = served
    s = raw(c.path)
    e = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        before = nfds()
        send_fds(s, P.HDR.pack(P.SET_MEM_TABLE, P.VERSION, P.MAX_PAYLOAD), [])
        sent = 0
        for _ in range(200):
            try:
                send_fds(s, b"\0", [e] * P.MAX_FDS)
            except (BrokenPipeError, ConnectionResetError):
                break           # refused: what we want
            sent += 1
        # Let the connector take what it was sent (or close the connection).
        wait_until(lambda: c.stats()["dropped_protocol"] >= 1
                   or nfds() - before >= sent * P.MAX_FDS // 2, 5,
                   "the connector to take the fds or refuse the connection")
        held = nfds() - before
        assert held <= 2 * P.MAX_FDS, f"the connector holds {held} fds from one message"
        assert c.stats()["dropped_protocol"] >= 1
    finally:
        s.close()
        os.close(e)
    works(c, peer, driver)


def test_a_driver_that_never_reads_replies_blocks_no_one(served, monkeypatch):
    # A long timeout shows the wait; the default (2 s) only shortens it.
    monkeypatch.setattr(backend, "MESSAGE_TIMEOUT", 20.0)
    c, dev, peer, driver = served
    s = raw(c.path)
    s.setblocking(False)
    try:
        msg = P.HDR.pack(P.GET_FEATURES, P.VERSION, 0)
        for _ in range(20000):
            try:
                s.send(msg)
            except BlockingIOError:
                break
        # The connector has answered until the driver's queue was full.
        wait_until(lambda: c.stats()["messages"] > 50, 5, "replies to pile up")
        done = threading.Event()
        t = threading.Thread(target=lambda: (c.drop("test: the lead drops the driver"), done.set()),
                             daemon=True)
        t.start()
        assert done.wait(3), "Connector.drop() waited for a driver that does not read its replies"
    finally:
        s.close()               # unblocks a blocked sendall (EPIPE)
    wait_until(lambda: c.stats()["driver_connected"] == 0, 25, "the driver to be gone")


def _flood(c, s, counter, seconds=10):
    """Send GET_FEATURES (whole messages) without reading a reply until
    the connector counts `counter`, or the connection is gone."""
    burst = P.HDR.pack(P.GET_FEATURES, P.VERSION, 0) * 100
    left = burst
    deadline = time.monotonic() + seconds
    while c.stats()[counter] == 0 and time.monotonic() < deadline:
        try:
            left = left[s.send(left):] or burst     # whole messages, however cut
        except BlockingIOError:
            select.select([], [s], [], 0.05)
        except (BrokenPipeError, ConnectionResetError):
            break


@pytest.mark.parametrize("case", ["stall", "full"])
def test_a_driver_that_never_reads_replies_is_dropped(served, monkeypatch, case):
    """Replies the driver does not read wait (it is not read meanwhile);
    if they do not move within MESSAGE_TIMEOUT, or exceed OUT_MAX_BYTES,
    the driver is dropped with a reason, and the device serves the next
    one."""
    if case == "stall":
        monkeypatch.setattr(backend, "MESSAGE_TIMEOUT", 0.3)
        counter, reason = "dropped_output_stall", "replies unread for 0.3 s"
    else:
        monkeypatch.setattr(backend, "OUT_MAX_BYTES", 8)     # less than one reply
        counter, reason = "dropped_output_full", "output queue full"
    c, dev, peer, driver = served
    s = raw(c.path)
    s.setblocking(False)
    try:
        _flood(c, s, counter)
        wait_until(lambda: c.stats()[counter] == 1 and c.stats()["driver_connected"] == 0, 5,
                   f"the driver to be dropped ({counter})")
        assert reason in c.last_reason and "the driver does not read its replies" in c.last_reason, \
            c.last_reason
    finally:
        s.close()
    works(c, peer, driver)


def test_a_second_driver_while_one_is_served_is_refused_and_the_first_goes_on(served):
    c, dev, peer, driver = served
    d = works(c, peer, driver)
    before = nfds()
    for _ in range(20):
        s = raw(c.path)
        # Refused: the connector closes it without reading anything.
        try:
            s.sendall(P.HDR.pack(P.GET_FEATURES, P.VERSION, 0))
            assert s.recv(64) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.close()
    wait_until(lambda: c.stats()["refused_second"] >= 20, 5, "20 refusals")
    assert nfds() <= before
    assert c.stats()["driver_connected"] == 1
    # The first still moves frames.
    d.tx(b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01\x08\x00" + b"z" * 50)
    wait_until(lambda: _recv(peer), 5, "the first driver's frame on the port")


def _recv(peer):
    try:
        return peer.recv(70000)
    except BlockingIOError:
        return None


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 11, 12, P.MAX_PAYLOAD - 1, P.MAX_PAYLOAD,
                                  P.MAX_PAYLOAD + 1, 0xffffffff])
@pytest.mark.parametrize("request_", [P.SET_FEATURES, P.SET_VRING_NUM, P.SET_VRING_ADDR,
                                      P.SET_MEM_TABLE, P.GET_FEATURES, 0, 0xffffffff])
def test_every_payload_size_is_answered_or_refused_with_a_reason(served, size, request_):
    """Each request with a payload of each boundary size (zeros): either
    handled (the connection stays and answers GET_FEATURES), or closed
    with a reason; never an internal error, and the device serves the next
    driver."""
    c, dev, peer, driver = served
    s = raw(c.path)
    try:
        try:
            s.sendall(P.HDR.pack(request_, P.VERSION | P.F_NEED_REPLY, size))
            if size <= P.MAX_PAYLOAD:
                s.sendall(bytes(size))
            # Then a request whose reply shows the connection is still served.
            s.sendall(P.HDR.pack(P.GET_FEATURES, P.VERSION, 0))
        except (BrokenPipeError, ConnectionResetError):
            pass                # refused already
        got = b""
        s.settimeout(5)
        while True:
            try:
                chunk = s.recv(4096)
            except ConnectionResetError:
                break           # closed with our requests unread: a refusal
            if not chunk:
                break
            got += chunk
            if got.endswith(P.reply(P.GET_FEATURES, P.U64.pack(c.features()))):
                break
    finally:
        s.close()
    wait_until(lambda: c.stats()["driver_connected"] == 0, 5, "the connection to end")
    assert "internal error" not in (c.last_reason or ""), c.last_reason
    works(c, peer, driver)
