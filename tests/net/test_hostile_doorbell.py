"""A frontend that makes the doorbells it shares blocking and full cannot
stall a real bridge: another client's control requests are still answered
(bug 3), with the bridge in a namespace of the test's own."""
import os
import socket
import time

import pytest

import ioq
import venet.frontend as fe
from tests import hostile
from venet import abi, control

REPLY_DEADLINE = 2.0


@pytest.fixture
def bridge(netns, procs, sockdir):
    ns = netns()
    sock = str(sockdir / "bus.sock")
    p = procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", sock)
    return sock, p


def _client(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    s.settimeout(REPLY_DEADLINE)
    s.connect(path)
    return s


def _open(s, events):
    control.call(s, control.HELLO, {"version": control.VERSION})
    control.call(s, control.OPEN, {"device": "vt0"})
    for gid, bits in ((abi.CAP_GROUP_SG, abi.CAP_SG), (abi.CAP_GROUP_EVENTQ, events)):
        control.call(s, control.NEGCAP, {"device": "vt0", "group": gid, "bits": bits})


def _others_are_served(path):
    """A second client gets its HELLO reply (and a LIST) in time."""
    t = time.monotonic()
    s = _client(path)
    try:
        assert control.call(s, control.HELLO, {"version": control.VERSION})["version"] == control.VERSION
        assert [d["name"] for d in control.call(s, control.LIST)["devices"]] == ["vt0"]
    finally:
        s.close()
    return time.monotonic() - t


def test_blocking_full_event_doorbell_at_linkup_stalls_nobody(bridge):
    """Doorbells of the right kinds, made blocking and full before LINKUP:
    the link-up event's kick must not block the control thread."""
    path, p = bridge
    hostile_fe = hostile.Frontend()
    s = _client(path)
    try:
        _open(s, abi.CAP_EVQ_LINKSTATE | abi.CAP_EVQ_TXC)
        hostile_fe.want_kicks()
        hostile_fe.misbehave()
        control.call(s, control.REGISTER, {"device": "vt0"}, hostile_fe.fds)
        control.send(s, control.LINKUP, {"device": "vt0"})
        assert _others_are_served(path) < REPLY_DEADLINE
        mtype, body, _ = control.recv(s)
        assert mtype == control.REPLY and body["link"] is True
        # And while traffic makes the pump kick the full RX doorbell.
        with fe.connect(path, timeout=REPLY_DEADLINE) as bus:
            assert bus.stats()["devices"][0]["link"]
        assert p.poll() is None
    finally:
        s.close()
        hostile_fe.drain()
        hostile_fe.close()


def test_shared_eventfds_are_refused_at_register_and_stall_nobody(bridge):
    """An old-style frontend: every doorbell an eventfd, the event ring's
    made blocking and saturated.  REGISTER is refused with the reason, and
    nobody waits."""
    path, p = bridge
    region = ioq.Region.create([16, 16, 16], buf_size=2048)
    s = _client(path)
    try:
        _open(s, abi.CAP_EVQ_LINKSTATE)
        fd, pairs = region.handoff()
        region.consumer(abi.RING_EVQ).arm()
        efd = pairs[abi.RING_EVQ][1]
        os.eventfd_write(efd, hostile.SATURATED)
        os.set_blocking(efd, True)
        fds = [fd] + [x for pair in pairs for x in pair]
        control.send(s, control.REGISTER, {"device": "vt0"}, fds)
        mtype, body, _ = control.recv(s)
        if mtype == control.REPLY:               # a backend that does not check fds
            control.send(s, control.LINKUP, {"device": "vt0"})
        else:
            assert mtype == control.ERROR
            assert "ring 0: the producer's doorbell" in body["error"]
            assert "is an eventfd, not one end of an AF_UNIX stream socketpair" in body["error"]
        assert _others_are_served(path) < REPLY_DEADLINE
        assert p.poll() is None
    finally:
        s.close()
        try:
            os.set_blocking(pairs[abi.RING_EVQ][1], False)
            os.eventfd_read(pairs[abi.RING_EVQ][1])     # let a blocked backend go
        except (OSError, NameError):
            pass
        region.close()


def test_a_well_behaved_frontend_works_with_socket_doorbells(bridge):
    path, _ = bridge
    with fe.connect(path, timeout=REPLY_DEADLINE) as bus:
        dev = bus.open("vt0", txc=True)
        assert dev.link
        kinds = [dev.region.doorbell_kinds(i) for i in range(abi.NRINGS)]
        import shmsignal
        S, E = shmsignal.FD_SOCKET, shmsignal.FD_EVENTFD
        assert kinds == [(S, E), (E, S), (E, S)]
        cookie = dev.send(hostile.frame(60), txc=True)
        deadline = time.monotonic() + REPLY_DEADLINE
        got = []
        while not got and time.monotonic() < deadline:
            got = [e for e in dev.events() if e[0] == abi.EV_TXC and e[1] == cookie]
            time.sleep(0.01)
        assert got and got[0][2] == 0            # ring 0, status sent
