"""examples/async_responder.py's logic, without root: what it answers and
what it ignores, checked with scapy; and the whole example served through
a daemon's loopback device (the loopback reflects its replies back to it,
so that run checks the wiring, not an answer: tests/net/ pings it)."""
import importlib.util
import os
import pathlib

import pytest
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

REPO = pathlib.Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("async_responder", REPO / "examples" / "async_responder.py")
responder = importlib.util.module_from_spec(spec)
spec.loader.exec_module(responder)

MAC, IPADDR = "02:00:00:00:aa:01", "10.77.0.2"
PEER_MAC, PEER_IP = "02:00:00:00:00:01", "10.77.0.1"


def arp_request(pdst=IPADDR):
    return bytes(Ether(src=PEER_MAC, dst="ff:ff:ff:ff:ff:ff") /
                 ARP(op=1, hwsrc=PEER_MAC, psrc=PEER_IP, pdst=pdst))


def echo(dst=IPADDR, dmac=MAC, itype=8, payload=b"ping!"):
    return bytes(Ether(src=PEER_MAC, dst=dmac) / IP(src=PEER_IP, dst=dst) /
                 ICMP(type=itype, id=0x1234, seq=9) / payload)


def test_arp_request_for_us_is_answered():
    r = Ether(responder.respond(arp_request(), MAC, IPADDR))
    assert r.dst == PEER_MAC and r.src == MAC
    assert r[ARP].op == 2 and r[ARP].hwsrc == MAC and r[ARP].psrc == IPADDR
    assert r[ARP].hwdst == PEER_MAC and r[ARP].pdst == PEER_IP


def test_echo_request_is_answered_with_valid_checksums():
    raw = responder.respond(echo(), MAC, IPADDR)
    r = Ether(raw)
    assert r.dst == PEER_MAC and r[IP].src == IPADDR and r[IP].dst == PEER_IP
    assert r[ICMP].type == 0 and r[ICMP].id == 0x1234 and r[ICMP].seq == 9
    assert bytes(r[ICMP].payload) == b"ping!"
    # Checksums as the kernel will check them: recomputed by scapy, equal.
    again = IP(bytes(r[IP]))
    ip_sum, icmp_sum = again.chksum, again[ICMP].chksum
    del again.chksum
    del again[ICMP].chksum
    again = IP(bytes(again))
    assert (again.chksum, again[ICMP].chksum) == (ip_sum, icmp_sum)


@pytest.mark.parametrize("frame", [
    arp_request(pdst="10.77.0.9"),                              # someone else's address
    echo(dst="10.77.0.9"),                                      # not for us
    echo(dmac="02:00:00:00:00:77"),                             # another station's frame
    echo(itype=0),                                              # a reply, not a request
    bytes(Ether(src=PEER_MAC, dst=MAC) / IP(src=PEER_IP, dst=IPADDR) / UDP(dport=7) / b"x"),
    b"\x00" * 14,                                               # a bare header
    b"\xff" * 60,                                               # garbage
], ids=["arp-other", "icmp-other-ip", "icmp-other-mac", "echo-reply", "udp", "bare", "garbage"])
def test_everything_else_is_ignored(frame):
    assert responder.respond(frame, MAC, IPADDR) is None


def test_serve_through_a_loopback(monkeypatch):
    """The example's own loop on a daemon's loopback.  A loopback reflects
    frames to the frontend that sent them, so the test sends the ARP
    request on the responder's own device (caught as it opens): the
    responder reads it, answers, and stops at --count 1."""
    import asyncio

    from tests.test_daemon import DaemonProc
    opened = []
    real_open = responder.aio.Bus.open

    async def spy(self, *a, **k):
        dev = await real_open(self, *a, **k)
        opened.append(dev)
        return dev
    monkeypatch.setattr(responder.aio.Bus, "open", spy)
    d = DaemonProc()
    try:
        d.req("bus-create", name="r")
        d.req("device-create", name="lr", **{"class": "venet-loopback"})
        d.req("bus-link", bus="r", device="lr")
        if os.geteuid() != 0:
            d.req("bus-allow", bus="r", uid=os.geteuid())

        async def go():
            task = asyncio.ensure_future(responder.serve(d.sock("r"), "lr", MAC, IPADDR, count=1))
            for _ in range(1000):               # bounded: at most about 10 s
                if opened or task.done():
                    break
                await asyncio.sleep(0.01)
            assert opened, "the responder did not open its device"
            assert await opened[0].send(arp_request())
            return await asyncio.wait_for(task, 10)
        with asyncio.Runner() as runner:
            assert runner.run(go()) == 1
    finally:
        d.cleanup()
