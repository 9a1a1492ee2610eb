"""venet-switch with an uplink tap (root): the kernel of a lab namespace is
one more port.  A frontend answers ARP and ICMP for 10.77.0.2 with scapy;
the namespace (10.77.0.1 on the uplink tap) pings it, and a UDP datagram
from the namespace reaches the frontend."""
import threading

from scapy.all import ARP, ICMP, IP, UDP, Ether, raw

from tests.conftest import wait_until
from tests.net.conftest import add_addr, ping, run_in
from tests.test_switch import Bus
from venet import classes
from venet import frontend as fe

HOST = "10.77.0.2"


def responder(dev, stop, seen):
    while not stop.is_set():
        try:
            f = dev.recv(timeout=0.2)
        except fe.LinkDown:
            return
        if f is None:
            continue
        e = Ether(f)
        r = None
        if ARP in e and e[ARP].op == 1 and e[ARP].pdst == HOST:
            r = Ether(dst=e.src, src=dev.mac) / ARP(op=2, hwsrc=dev.mac, psrc=HOST, hwdst=e[ARP].hwsrc,
                                                   pdst=e[ARP].psrc)
        elif ICMP in e and e[ICMP].type == 8 and e[IP].dst == HOST:
            r = Ether(dst=e.src, src=dev.mac) / IP(src=HOST, dst=e[IP].src) / \
                ICMP(type=0, id=e[ICMP].id, seq=e[ICMP].seq) / bytes(e[ICMP].payload)
        elif UDP in e and e[IP].dst == HOST:
            seen.append(bytes(e[UDP].payload))
        if r is not None:
            dev.send(raw(r), timeout=1)


def test_ping_between_a_frontend_and_a_namespace_through_the_uplink(lab, tmp_path):
    ns = lab.netns("up")
    cls = classes.SwitchClass()
    inst = cls.create("sw0", cls.check_attrs({"uplink": f"tap:vsw0@{ns}"}, "sw0"))
    bus = stop = t = None
    try:
        sw = inst.dev
        bus = Bus(str(tmp_path / "b.sock"), [sw])
        add_addr(ns, "vsw0", "10.77.0.1")
        conn = fe.connect(bus.path)
        dev = conn.open("sw0")
        stop, seen = threading.Event(), []
        t = threading.Thread(target=responder, args=(dev, stop, seen), daemon=True)
        t.start()
        rtts, out = ping(ns, HOST, 3)
        assert len(rtts) == 3, out
        up = sw.engine.port_stats(sw.uplink[0])
        assert up["rx_frames"] >= 4 and up["tx_frames"] >= 4        # ARP and three echoes each way
        # A datagram from the kernel through the uplink.
        r = run_in(ns, ["python3", "-c",
                        "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                        f"s.sendto(b'v' * 1000, ('{HOST}', 9))"])
        assert r.returncode == 0, r.stderr
        wait_until(lambda: b"v" * 1000 in seen, what="the UDP datagram from the namespace")
        stop.set()
        t.join(5)       # the device is used by one thread at a time: the responder ends first
        conn.close()
        wait_until(lambda: not sw.ports, what="the frontend's port to go")
    finally:
        if stop is not None and t.is_alive():
            stop.set()
            t.join(5)
        if bus is not None:
            bus.close()
        inst.destroy()
