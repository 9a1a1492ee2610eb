"""The venet-tap bridge end to end, inside namespaces made by each test."""
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest
from scapy.all import ARP, ICMP, IP, UDP, Ether, Raw, raw

import venet.frontend as fe
from tests.conftest import RawPeer, needs_two_cpus, wait_until
from tests.net.conftest import ROOT, add_addr, ns_ipr, ns_python, ns_python_bg, ping, thread_cpus

ME = "02:00:00:00:00:99"
KMAC = "02:00:00:00:00:01"
KIP, MYIP = "10.77.0.1", "10.77.0.2"


@pytest.fixture
def bridged(netns, procs, sockdir):
    """A bridge on tap vt0 in a fresh namespace with 10.77.0.1/24."""
    def make(*extra):
        ns = netns()
        sock = str(sockdir / "bus.sock")
        p = procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", sock, "--mac", KMAC, *extra)
        add_addr(ns, "vt0", KIP)
        with ns_ipr(ns) as ipr:    # a static neighbour: no ARP round before each test frame
            ipr.neigh("add", dst=MYIP, lladdr=ME, ifindex=ipr.link_lookup(ifname="vt0")[0], state=0x80)
        return ns, sock, p
    return make


def recv_match(dev, pred, timeout=3.0, limit=200):
    deadline = time.monotonic() + timeout
    for _ in range(limit):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        f = dev.recv(timeout=left)
        if f is None:
            return None
        pkt = Ether(f)
        if pred(pkt):
            return pkt
    return None


def test_arp_icmp_udp_broadcast(bridged):
    ns, sock, _ = bridged()
    with fe.connect(sock) as bus:
        assert [d["name"] for d in bus.list()] == ["vt0"]
        dev = bus.open("vt0")
        assert dev.mac == KMAC and dev.mtu == 1500 and dev.link
        # ARP, answered by the kernel behind the tap
        dev.send(raw(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ME, psrc=MYIP, pdst=KIP)))
        rep = recv_match(dev, lambda p: ARP in p and p[ARP].op == 2)
        assert rep is not None and rep[ARP].hwsrc == KMAC and rep[ARP].psrc == KIP
        # ICMP echo
        dev.send(raw(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / ICMP(id=7, seq=1) / b"venet"))
        rep = recv_match(dev, lambda p: ICMP in p and p[ICMP].type == 0)
        assert rep is not None and rep[ICMP].id == 7 and bytes(rep[Raw]) == b"venet"
        # UDP kernel -> frontend: a socket in the namespace sends to us
        code = ("import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                f"s.sendto(b'from-kernel', ('{MYIP}', 5555))")
        ns_python(ns, code)
        rep = recv_match(dev, lambda p: UDP in p and p[UDP].dport == 5555)
        assert rep is not None and bytes(rep[UDP].payload) == b"from-kernel"
        # UDP frontend -> kernel: a socket in the namespace receives it
        rx = ns_python_bg(ns, "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                              f"s.bind(('{KIP}', 6666)); s.settimeout(5); print('ready', flush=True);"
                              "print(s.recv(100).decode())", ready="ready")
        dev.send(raw(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / UDP(sport=1, dport=6666) / b"to-kernel"))
        assert rx.communicate(timeout=10)[0].strip() == "to-kernel"
        # broadcast reaches the frontend
        ns_python(ns, "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                      "s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1);"
                      "s.sendto(b'bcast', ('10.77.0.255', 7777))")
        rep = recv_match(dev, lambda p: UDP in p and p[UDP].dport == 7777)
        assert rep is not None and rep.dst == "ff:ff:ff:ff:ff:ff"


def test_flush_rx_and_memory_budget(bridged):
    from venet import abi
    ns, sock, _ = bridged("--mtu", "9000")
    with fe.connect(sock) as bus:
        dev = bus.open("vt0")
        assert dev.region.size <= abi.MEMORY_BUDGET
        for i in range(3):
            dev.send(raw(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / ICMP(seq=i)))
        wait_until(lambda: dev.rx.ready() >= 3, 5, "three echo replies in the RX ring")
        assert dev.flush_rx() >= 3
        assert dev.recv_nowait() is None


@pytest.mark.parametrize("mtu,buf_size", [(1500, None), (9000, None), (9000, 2048)])
def test_every_frame_size(bridged, mtu, buf_size):
    """buf_size 2048 at MTU 9000: frames past 2 KiB travel as F_MORE chains
    both ways (the pump reads one frame into several slots)."""
    ns, sock, _ = bridged("--mtu", str(mtu))
    with fe.connect(sock) as bus:
        dev = bus.open("vt0", buf_size=buf_size)
        assert dev.mtu == mtu
        hdr = 14 + 20 + 8
        sizes = sorted(set([60, 61, 64, 100, 128, 255, 256, 511, 512, 1000, 1024, 1499, 1500, 1513, 1514]
                           + ([2031, 2032, 2033, 2047, 2048, 2049, 4096, 8000, 9013, 9014]
                              if mtu == 9000 else [])))
        for i, size in enumerate(sizes):
            payload = bytes((i + j) & 0xff for j in range(size - hdr))
            dev.send(raw(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / ICMP(id=9, seq=i) / payload))
            rep = recv_match(dev, lambda p: ICMP in p and p[ICMP].type == 0 and p[ICMP].seq == i)
            assert rep is not None, f"no echo reply for a {size}-byte frame"
            assert len(raw(rep)) == size and bytes(rep[Raw]) == payload
        with pytest.raises(ValueError):
            dev.send(b"\0" * (mtu + 15))
        with pytest.raises(ValueError):
            dev.send(b"\0" * 13)


def test_bridge_attach_ping_and_tcp(netns, procs, sockdir):
    a, b = netns(), netns()
    sock = str(sockdir / "bus.sock")
    procs.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock)
    procs.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", b)
    add_addr(a, "vt0", KIP)
    add_addr(b, "vt1", MYIP)
    rtts, out = ping(a, MYIP, 5, interval=0.1)
    assert len(rtts) == 5, out
    # TCP: 4 MiB from b to a, checked by hash
    srv = ns_python_bg(a, "import socket,hashlib; s=socket.socket(); s.bind(('%s', 5001)); s.listen(1);"
                          "print('ready', flush=True);"
                          "s.settimeout(20); c,_=s.accept(); h=hashlib.sha256(); n=0\n"
                          "while True:\n d=c.recv(65536)\n if not d: break\n h.update(d); n+=len(d)\n"
                          "print(n, h.hexdigest())" % KIP, ready="ready")
    ns_python(b, "import socket,hashlib,os; data=bytes(range(256))*16384; s=socket.create_connection(('%s', 5001), timeout=20);"
                 "s.sendall(data); s.close()" % KIP)
    n, digest = srv.communicate(timeout=30)[0].split()
    import hashlib
    data = bytes(range(256)) * 16384
    assert int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()


def test_frontend_killed_backend_survives(bridged, procs):
    ns, sock, bridge = bridged()
    victim = subprocess.Popen([sys.executable, "-c", f"""
import sys, time; sys.path.insert(0, {ROOT!r})
import venet.frontend as fe
from scapy.all import Ether, IP, ICMP, raw
dev = fe.connect({sock!r}).open('vt0')
print('open', flush=True)
f = raw(Ether(src={ME!r}, dst={KMAC!r})/IP(src={MYIP!r}, dst={KIP!r})/ICMP())
while True:
    dev.send(f); dev.recv(timeout=0.01)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert victim.stdout.readline().strip() == "open"
        # Killed in the middle of its traffic: once the bridge has carried
        # some of it.
        with fe.connect(sock) as bus:
            wait_until(lambda: bus.stats()["devices"][0]["counters"]["to_tap_frames"] >= 20, 10,
                       "the victim's frames to reach the tap")
    finally:
        victim.kill()               # kill -9, by pid
        victim.wait()
        victim.stdout.close()
    assert bridge.poll() is None
    with fe.connect(sock) as bus:
        wait_until(lambda: not bus.list()[0]["busy"], 5, "the device to be free again")
        dev = bus.open("vt0")
        dev.send(raw(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ME, psrc=MYIP, pdst=KIP)))
        assert recv_match(dev, lambda p: ARP in p and p[ARP].op == 2) is not None


def test_backend_killed_gives_link_down(bridged):
    ns, sock, bridge = bridged()
    with fe.connect(sock) as bus:
        dev = bus.open("vt0")
        bridge.send_signal(signal.SIGKILL)
        bridge.wait()
        t = time.monotonic()
        with pytest.raises(fe.LinkDown):
            # Frames already in the ring are still delivered; then LinkDown.
            for _ in range(1000):
                dev.recv(timeout=1)
                if time.monotonic() - t > 10:
                    break
        assert time.monotonic() - t < 5
        assert not dev.link


def test_hostile_descriptors_cost_counted_drops(bridged):
    import ioq
    ns, sock, bridge = bridged()
    with fe.connect(sock) as bus:
        dev = bus.open("vt0")
        peer = RawPeer(dev.region, 0)
        good = dev.region.buffer_offset(0)
        bad = [(0, 64, 0), (good, 0, 0), (good, 1 << 20, 0), ((1 << 64) - 8, 64, 0),
               (good, 64, ioq.F_INDIRECT), (good, 64, 0x2)]
        try:
            for i, (off, ln, fl) in enumerate(bad):
                peer.publish(i, off, ln, fl)
            peer.publish(len(bad), good, 13, 0)             # shorter than an Ethernet header
        finally:
            peer.close()
        os.eventfd_write(dev.region.eventfds[0][1], 1)      # kick the backend

        def counted():
            c = bus.stats()["devices"][0]["counters"]
            return c if c["drop_bad_desc"] + c["drop_short"] >= len(bad) + 1 else None
        counters = wait_until(counted, 5, "the bridge to count the descriptors")
        assert (counters["drop_bad_desc"], counters["drop_short"]) == (len(bad), 1), counters
        assert counters["to_tap_frames"] == 0
        assert bridge.poll() is None


def test_group_grants_unprivileged_frontend(netns, procs):
    d = tempfile.mkdtemp(prefix="venet-grp-")
    os.chmod(d, 0o755)
    try:
        for grant in (True, False):
            ns = netns()
            sock = os.path.join(d, f"{grant}.sock")
            extra = ["--group", "nogroup"] if grant else []
            procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", sock, *extra)
            result = _as_nobody(lambda: fe.connect(sock).list()[0]["name"])
            if grant:
                assert result == "vt0"
            else:
                assert result.startswith("PermissionError") and "not allowed" in result
    finally:
        for f in os.listdir(d):
            os.unlink(os.path.join(d, f))
        os.rmdir(d)


def _as_nobody(fn):
    """Run fn in a forked child as nobody:nogroup (the interpreter lives
    under /root, so the child cannot exec it); returns its result or
    'ExcType: message'."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            _become_nobody()
            out = str(fn())
        except BaseException as e:
            out = f"{type(e).__name__}: {e}"
        os.write(w, out.encode()[:4000])
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    return data.decode()


def _become_nobody():
    import grp
    gid = grp.getgrnam("nogroup").gr_gid
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(65534, 65534, 65534)


@pytest.mark.parametrize("args,msg", [
    (["--tap", "vt0", "--mac", "zz:00:00:00:00:01"], "not a MAC address"),
    (["--tap", "vt0", "--mac", "01:00:00:00:00:01"], "multicast"),
    (["--tap", "vt0", "--mtu", "10000"], "out of range"),
    (["--tap", "vt0", "--mtu", "abc"], "must be a number"),
    (["--tap", "vt0", "--netns", "venet-no-such-ns"], "does not exist"),
    (["--tap", "a-name-far-too-long"], "1 to 15 characters"),
    (["--tap", "vt0", "--poll-us", "-1"], "poll-us"),
    (["--tap", "vt0", "--offloads", "csum,tso9"], "unknown offload 'tso9'"),
    (["--tap", "vt0", "--cpu", "4096"], "is not one this process may use"),
    (["--tap", "vt0", "--cpu", "sometimes"], "must be auto, any or a CPU number"),
])
def test_bad_command_lines(args, msg):
    r = subprocess.run([sys.executable, "-m", "venet", "bridge", *args], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) <= 2


def test_socket_path_taken(bridged, netns):
    ns, sock, _ = bridged()
    other = netns()
    r = subprocess.run([sys.executable, "-m", "venet", "bridge", "--tap", "vt0", "--netns", other,
                        "--socket", sock], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "in use" in r.stderr and "Traceback" not in r.stderr


def test_scapy_socket(bridged):
    from scapy.all import sendp, sniff
    from venet.scapy_socket import VenetSocket
    ns, sock, _ = bridged()
    with VenetSocket(socket_path=sock, iface="vt0") as s:
        # sr1 over our own socket: ARP answered by the kernel
        rep = s.sr1(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ME, psrc=MYIP, pdst=KIP),
                    timeout=3, verbose=False)
        assert rep is not None and rep[ARP].op == 2 and rep[ARP].hwsrc == KMAC
        rep = s.sr1(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / ICMP(id=3), timeout=3,
                    verbose=False)
        assert rep is not None and rep[ICMP].type == 0 and rep[ICMP].id == 3
        # sendp through the socket; a UDP listener in the namespace gets it
        rx = ns_python_bg(ns, "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                              f"s.bind(('{KIP}', 6667)); s.settimeout(5); print('ready', flush=True);"
                              "print(s.recv(100).decode())", ready="ready")
        sendp(Ether(src=ME, dst=KMAC) / IP(src=MYIP, dst=KIP) / UDP(dport=6667) / b"via-sendp",
              socket=s, verbose=False)
        assert rx.communicate(timeout=10)[0].strip() == "via-sendp"
        # sniff on the opened socket: what the kernel sent waits in the ring
        ns_python(ns, "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM);"
                      f"s.sendto(b'sniffed', ('{MYIP}', 5556))")
        pkts = sniff(opened_socket=s, timeout=5, count=1,
                     lfilter=lambda p: UDP in p and p[UDP].dport == 5556)
        assert len(pkts) == 1 and bytes(pkts[0][UDP].payload) == b"sniffed"


def test_master_bridge(netns, procs, sockdir):
    """--master enslaves the tap to a Linux bridge in its namespace."""
    ns = netns()
    with ns_ipr(ns) as ipr:
        ipr.link("add", ifname="br0", kind="bridge")
        br_idx = ipr.link_lookup(ifname="br0")[0]
    procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", str(sockdir / "m.sock"),
                "--master", "br0")
    with ns_ipr(ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname="vt0")[0])[0]
        assert link.get_attr("IFLA_MASTER") == br_idx


def test_missing_master_is_a_clear_error(netns, sockdir):
    ns = netns()
    r = subprocess.run([sys.executable, "-m", "venet", "bridge", "--tap", "vt0", "--netns", ns,
                        "--socket", str(sockdir / "x.sock"), "--master", "nobr0"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "master bridge nobr0 does not exist" in r.stderr
    assert "Traceback" not in r.stderr
    with ns_ipr(ns) as ipr:
        assert not ipr.link_lookup(ifname="vt0")          # the tap it made is gone
    assert not (sockdir / "x.sock").exists()


def test_tx_completion_events(bridged):
    from venet import abi
    ns, sock, _ = bridged()
    arp = raw(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ME, psrc=MYIP, pdst=KIP))
    with fe.connect(sock) as bus:
        plain = bus.open("vt0")
        assert not plain.txc
        with pytest.raises(ValueError, match="txc=True"):
            plain.send(arp, txc=True)
        plain.close()

        dev = bus.open("vt0", txc=True)
        assert dev.txc
        cookies = [dev.send(arp, txc=True) for _ in range(5)]
        assert None not in cookies and len(set(cookies)) == 5
        dev.send(arp)                               # no event asked for
        seen = []

        def five_events():
            seen.extend(e for e in dev.events() if e[0] == abi.EV_TXC)
            return len(seen) >= 5
        wait_until(five_events, 3, "five TX completion events")
        assert sorted(a for _, a, _ in seen) == sorted(cookies)
        assert all(b == abi.RING_TX for _, _, b in seen)
        # The sixth frame went out without one.  (An event for it would also
        # break the count of 45 below.)
        wait_until(lambda: bus.stats()["devices"][0]["counters"]["to_tap_frames"] == 6, 3,
                   "the sixth frame to reach the tap")
        assert [e for e in dev.events() if e[0] == abi.EV_TXC] == []
        # An event queue nobody drains: events beyond its 16 slots are lost,
        # counted, and the frames still go out.
        for _ in range(40):
            dev.send(arp, txc=True)
        def all_counted():
            c = bus.stats()["devices"][0]["counters"]
            return c if c["txc_events"] + c["txc_lost"] >= 45 else None
        c = wait_until(all_counted, 3, "45 TX completions posted or lost")
        assert c["txc_lost"] > 0 and c["txc_events"] + c["txc_lost"] == 45, c
        assert c["to_tap_frames"] == 46, c
        assert len([e for e in dev.events() if e[0] == abi.EV_TXC]) == abi.EVQ_RING


@needs_two_cpus            # on one CPU, pinned and unpinned threads look alike
def test_cpu_places_the_pump_on_that_cpus_worker(bridged):
    """--cpu N: the pump is a task of the worker pinned to CPU N; that
    worker is the only thread pinned there (not the main thread), and
    link up starts no thread."""
    cpu = str(max(os.sched_getaffinity(0)))
    ns, sock, bridge = bridged("--cpu", cpu)

    def pinned():
        return sorted(tid for tid, cpus in thread_cpus(bridge.pid).items() if cpus == cpu)
    before = thread_cpus(bridge.pid)
    assert len(pinned()) == 1, before       # the worker of CPU N, there from the start
    assert pinned() != [str(bridge.pid)], before        # not the main thread
    with fe.connect(sock) as bus:
        bus.open("vt0")                     # link up: the pump joins the worker
        d = bus.stats()["devices"][0]
        assert d["link"] and d["worker_cpu"] == int(cpu), d
        threads = thread_cpus(bridge.pid)
        assert set(threads) == set(before), threads
