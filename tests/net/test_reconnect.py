"""Reconnection: `venet attach` and connect(reconnect=True) survive the
bridge's death (kill -9) and carry traffic again when a bridge serves the
socket, without reconfiguring.  The bridge's tap is persistent (made here,
in the test's namespace), so it keeps its address while no bridge holds it."""
import os
import signal
import socket
import time

import pytest
from scapy.all import ICMP, IP, Ether, raw

import venet.frontend as fe
from tests.net.conftest import add_addr, ns_ipr, ping
from venet import abi
from tests.conftest import wait_until as wait_for

ME = "02:00:00:00:00:99"
KMAC = "02:00:00:00:00:01"
KIP, MYIP = "10.78.0.1", "10.78.0.2"


def persistent_tap(ns, name, addr):
    with ns_ipr(ns) as ipr:
        ipr.link("add", ifname=name, kind="tuntap", mode="tap")
    add_addr(ns, name, addr)


def carrier(ns, ifname):
    with ns_ipr(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)
        return ipr.get_links(idx[0])[0].get_attr("IFLA_CARRIER") if idx else None


def addresses(ns, ifname):
    with ns_ipr(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return sorted(a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2))


def pings(ns, dst):
    rtts, _ = ping(ns, dst, 1, interval=0.2)
    return bool(rtts)


@pytest.fixture
def pair(netns, procs, sockdir):
    """Namespace a: persistent tap vt0 (10.78.0.1) served by a bridge;
    namespace b: `venet attach` on vt1 (10.78.0.2).  Returns a function
    starting (again) the bridge, and the attach, a, b."""
    a, b = netns(), netns()
    sock = str(sockdir / "bus.sock")
    persistent_tap(a, "vt0", KIP)

    def bridge():
        return procs.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock, "--mac", KMAC)
    br = bridge()
    att = procs.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", b)
    add_addr(b, "vt1", MYIP)
    return bridge, br, att, a, b


def test_backoff_schedule():
    b = fe.Backoff()
    assert b.due()
    expected = [0.01, 0.02, 0.04, 0.08, 0.1, 0.1, 0.1]
    delays = []
    for _ in expected:
        b.failed()
        delays.append(round(b.delay, 3))
    assert delays == expected
    assert not b.due()
    b.reset()
    assert b.due()


def test_attach_survives_bridge_kill(pair):
    bridge, br, att, a, b = pair
    rtts, out = ping(a, MYIP, 3, interval=0.1)
    assert len(rtts) == 3, out
    assert carrier(b, "vt1") == 1
    br.kill()                       # kill -9, by pid
    br.wait()
    wait_for(lambda: carrier(b, "vt1") == 0, 5, "the attach's tap carrier going off")
    assert att.poll() is None, att.stderr.read()
    bridge()                        # a bridge serves the socket again
    wait_for(lambda: carrier(b, "vt1") == 1, 10, "the attach's tap carrier coming back")
    # Nobody touched either tap: their addresses and routes are the old ones.
    wait_for(lambda: pings(a, MYIP), 10, "ping through the restarted bridge")
    rtts, out = ping(b, KIP, 3, interval=0.1)
    assert len(rtts) == 3, out
    assert addresses(b, "vt1") == [MYIP] and addresses(a, "vt0") == [KIP]
    assert att.poll() is None


def test_attach_no_reconnect_exits(netns, procs, sockdir):
    a, b = netns(), netns()
    sock = str(sockdir / "bus.sock")
    br = procs.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock)
    att = procs.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", b, "--no-reconnect")
    br.kill()
    br.wait()
    assert att.wait(timeout=10) == 1
    assert "went away" in att.stderr.read()


def test_sigterm_while_waiting_for_a_bridge(pair):
    bridge, br, att, a, b = pair
    br.kill()
    br.wait()
    wait_for(lambda: carrier(b, "vt1") == 0, 5, "the attach's tap carrier going off")
    assert att.poll() is None
    att.send_signal(signal.SIGTERM)
    assert att.wait(timeout=3) == 0, att.stderr.read()
    # Tidy: the tap it made is gone with it.
    with ns_ipr(b) as ipr:
        assert not ipr.link_lookup(ifname="vt1")


def test_sigterm_while_a_bridge_hangs_in_hello(pair, sockdir):
    """A socket that accepts and never answers: the attach's dial would
    wait for its 5 s timeout; SIGTERM must cut it short."""
    bridge, br, att, a, b = pair
    br.kill()
    br.wait()
    wait_for(lambda: carrier(b, "vt1") == 0, 5, "the attach's tap carrier going off")
    path = str(sockdir / "bus.sock")
    os.unlink(path)                 # the dead bridge's socket file
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        mute.bind(path)
        mute.listen(1)
        mute.settimeout(5)
        conn, _ = mute.accept()     # the attach is now waiting for HELLO's reply
        try:
            assert conn.recv(100)[:2] == b"VN"
            att.send_signal(signal.SIGTERM)
            assert att.wait(timeout=3) == 0, att.stderr.read()
        finally:
            conn.close()
    finally:
        mute.close()


def echo(dev, i):
    return raw(Ether(src=ME, dst=dev.mac) / IP(src=MYIP, dst=KIP) / ICMP(id=9, seq=i) / b"again")


def echo_reply(dev, timeout=3.0):
    """The next echo reply among what the device receives, or None."""
    deadline = time.monotonic() + timeout
    for _ in range(200):
        left = deadline - time.monotonic()
        f = dev.recv(timeout=left) if left > 0 else None
        if f is None:
            return None
        p = Ether(f)
        if ICMP in p and p[ICMP].type == 0 and p[ICMP].id == 9:
            return p
    return None


def test_frontend_reconnects(netns, procs, sockdir):
    a = netns()
    sock = str(sockdir / "bus.sock")
    persistent_tap(a, "vt0", KIP)
    # A static neighbour, no ARP round before each echo.  The bridge runs
    # without --mac: a new MAC would flush the namespace's neighbours.
    with ns_ipr(a) as ipr:
        ipr.neigh("add", dst=MYIP, lladdr=ME, ifindex=ipr.link_lookup(ifname="vt0")[0], state=0x80)

    def bridge():
        return procs.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock)
    br = bridge()
    with fe.connect(sock, reconnect=True) as bus:
        dev = bus.open("vt0")
        assert dev.link
        assert dev.send(echo(dev, 1)) and echo_reply(dev) is not None
        br.kill()                   # kill -9, by pid
        br.wait()
        # The outage is reported once, by a receive call...
        deadline = time.monotonic() + 5
        with pytest.raises(fe.LinkDown):
            while time.monotonic() < deadline:
                dev.recv(timeout=0.5)
        assert not dev.link
        # ...after which calls wait for the link as for frames, then time out.
        assert dev.recv(timeout=0.05) is None
        assert dev.send(echo(dev, 2), timeout=0.05) is False
        assert (abi.EV_LINKSTATE, 0, 0) in dev.events()
        bridge()
        evs = wait_for(lambda: [e for e in dev.events() if e[0] == abi.EV_LINKSTATE], 10,
                       "a link-up event")
        assert evs[-1][:2] == (abi.EV_LINKSTATE, 1), evs
        assert dev.link and bus.devices["vt0"] is dev
        assert dev.send(echo(dev, 3)) and echo_reply(dev) is not None
