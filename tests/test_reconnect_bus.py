"""The bus side of connect(reconnect=True) against a stand-in backend that
speaks only HELLO and LIST (no root: no taps)."""
import os
import socket
import threading
import time

import pytest

import venet.frontend as fe
from venet import control


class FakeBackend:
    """A control socket on `path` answering HELLO and LIST; kill() drops
    every connection and stops listening, leaving the socket file (as a
    kill -9 does), start() serves the path again."""

    def __init__(self, path):
        self.path = path
        self.conns = []
        self.lsock = None
        self.thread = None

    def start(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.lsock.bind(self.path)
        self.lsock.listen(4)
        self.thread = threading.Thread(target=self._serve, args=(self.lsock,), daemon=True)
        self.thread.start()

    def _serve(self, lsock):
        while True:
            try:
                c, _ = lsock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self._conn, args=(c,), daemon=True).start()

    def _conn(self, c):
        while True:
            try:
                mtype, body, fds = control.recv(c)
            except (OSError, control.ProtocolError):
                return
            if mtype == control.HELLO:
                control.send(c, control.REPLY, {"version": control.VERSION, "bus": "fake"})
            elif mtype == control.LIST:
                control.send(c, control.REPLY, {"devices": []})
            else:
                control.send(c, control.ERROR, {"error": "not here"})

    def event_then_close(self):
        """An unsolicited EVENT message, then the end of every connection."""
        for c in self.conns:
            control.send(c, control.EVENT, {})
        self.kill()

    def kill(self):
        self.lsock.shutdown(socket.SHUT_RDWR)
        self.lsock.close()
        self.thread.join(timeout=5)
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        self.conns = []


@pytest.fixture
def backend(tmp_path):
    b = FakeBackend(str(tmp_path / "bus.sock"))
    b.start()
    yield b
    if b.lsock.fileno() >= 0:
        b.kill()


def test_alive_sees_the_end_behind_an_event(backend):
    with fe.connect(backend.path) as bus:
        assert bus.alive()
        backend.event_then_close()
        deadline = time.monotonic() + 5
        while bus.alive():
            assert time.monotonic() < deadline, "the end of the connection was never seen"
            time.sleep(0.01)


def test_bus_reconnects_lazily(backend):
    with fe.connect(backend.path, reconnect=True) as bus:
        assert bus.list() == []
        backend.kill()
        assert not bus.alive() and not bus.connected
        with pytest.raises(fe.LinkDown):
            bus.list()                  # the backend is still away: one attempt, refused
        backend.start()
        deadline = time.monotonic() + 5
        while True:                     # lazy: the next due call connects again
            try:
                assert bus.list() == []
                break
            except fe.LinkDown:
                assert time.monotonic() < deadline, "the bus never reconnected"
                time.sleep(0.01)
        assert bus.connected and bus.alive()


def test_abort_stops_reconnecting(backend):
    with fe.connect(backend.path, reconnect=True) as bus:
        bus.abort()
        assert not bus.alive()
        with pytest.raises(fe.LinkDown):
            bus.list()
