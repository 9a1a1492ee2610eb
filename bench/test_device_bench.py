"""pytest-benchmark: the frontend API and the scapy socket, each beside its
baseline (root: namespaces and taps).  `make bench` runs them with the ring
suite.

One ICMP echo to the kernel behind the device per iteration:
  frontend  Device.send + Device.recv        vs  os.write/os.read on a tap fd
  scapy     VenetSocket.sr1                  vs  scapy's own TunTapInterface.sr1
"""
import fcntl
import os
import select
import struct

import pytest
from scapy.all import ICMP, IP, Ether, raw

from tests.lab import Lab, add_addr

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces and taps")

ME, KMAC = "02:00:00:00:00:99", "02:00:00:00:00:01"
MYIP, KIP = "10.77.0.2", "10.77.0.1"
ECHO = raw(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / ICMP(id=1) / (b"x" * 18))


def _neigh(ns, ifname):
    from pyroute2 import IPRoute
    with IPRoute(netns=ns) as ipr:
        ipr.neigh("add", dst=MYIP, lladdr=ME, ifindex=ipr.link_lookup(ifname=ifname)[0], state=0x80)


@pytest.fixture(scope="module")
def venet_dev():
    import venet.frontend as fe
    with Lab("vbb") as lab:
        ns = lab.netns("a")
        sock = lab.socket_path()
        lab.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", sock, "--mac", KMAC)
        add_addr(ns, "vt0", KIP)
        _neigh(ns, "vt0")
        with fe.connect(sock) as bus:
            yield bus.open("vt0")


def _open_tap_in(ns, name):
    """A plain tap fd opened inside `ns` (the process returns to its own)."""
    from pyroute2 import netns as nslib
    nslib.pushns(ns)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", name.encode(), 0x0002 | 0x1000))
        return fd
    finally:
        nslib.popns()


@pytest.fixture(scope="module")
def plain_tap():
    """A tap this process opens in a namespace, with the kernel's address."""
    from pyroute2 import IPRoute
    with Lab("vbt") as lab:
        ns = lab.netns("a")
        fd = _open_tap_in(ns, "vt0")
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="vt0")[0], address=KMAC)
        add_addr(ns, "vt0", KIP)
        _neigh(ns, "vt0")
        yield fd, ns
        os.close(fd)


def _reply_is_echo(frame):
    return len(frame) == len(ECHO) and frame[12:14] == b"\x08\x00" and frame[34] == 0


def test_frontend_echo(benchmark, venet_dev):
    benchmark.group = "device-echo"

    def echo():
        venet_dev.send(ECHO)
        while not _reply_is_echo(venet_dev.recv(timeout=1)):
            pass
    benchmark(echo)


def test_baseline_tap_fd_echo(benchmark, plain_tap):
    benchmark.group = "device-echo"
    fd, _ = plain_tap

    def echo():
        os.write(fd, ECHO)
        while True:
            select.select([fd], [], [], 1)
            if _reply_is_echo(os.read(fd, 65536)):
                return
    benchmark(echo)


def test_scapy_socket_sr1(benchmark, venet_dev):
    from venet.scapy_socket import VenetSocket
    benchmark.group = "scapy-sr1"
    s = VenetSocket(venet_dev)
    pkt = Ether(ECHO)
    benchmark(lambda: s.sr1(pkt, timeout=1, verbose=False))


def test_baseline_scapy_tuntap_sr1(benchmark, plain_tap):
    from pyroute2 import IPRoute
    from pyroute2 import netns as nslib
    from scapy.layers.tuntap import TunTapInterface
    benchmark.group = "scapy-sr1"
    _, ns = plain_tap
    nslib.pushns(ns)
    try:
        t = TunTapInterface("vt1", mode_tun=False)      # scapy's own tap socket
    finally:
        nslib.popns()
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname="vt1")[0]
        ipr.link("set", index=idx, state="up")
        ipr.addr("add", index=idx, address="10.77.5.1", prefixlen=24)
        ipr.neigh("add", dst="10.77.5.2", lladdr=ME, ifindex=idx, state=0x80)
        kmac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
    pkt = Ether(src=ME, dst=kmac) / IP(src="10.77.5.2", dst="10.77.5.1") / ICMP(id=1)
    try:
        benchmark(lambda: t.sr1(pkt, timeout=1, verbose=False))
    finally:
        t.close()
