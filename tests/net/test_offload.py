"""Offloads end to end, as root, in namespaces each test makes: TCP and UDP
through bridge + attach as large segments, mixed peers, what a Python
frontend sees, and hostile metadata dropped and counted before the kernel."""
import hashlib
import os
import threading
import time

import pytest
from scapy.all import ARP, IP, UDP, Ether, Raw, raw

import ioq
import venet.frontend as fe
from tests.net.conftest import add_addr, ns_ipr, ns_python, ns_python_bg, ping, run_in, thread_cpus
from venet import _frames, abi
from venet.offload import Meta

A_IP, B_IP = "10.77.0.1", "10.77.0.2"
ME, KMAC = "02:00:00:00:00:99", "02:00:00:00:00:01"


def pair(netns, procs, sockdir, mtu=1500, bridge_off="all", attach_off="all"):
    a, b = netns(), netns()
    sock = str(sockdir / "bus.sock")
    procs.venet("bridge", "--tap", "vt0", "--netns", a, "--socket", sock, "--mtu", str(mtu),
                "--offloads", bridge_off)
    procs.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", b, "--offloads", attach_off)
    add_addr(a, "vt0", A_IP, mtu=mtu)
    add_addr(b, "vt1", B_IP, mtu=mtu)
    return a, b, sock


def counters(sock):
    with fe.connect(sock) as bus:
        return bus.stats()["devices"][0]["counters"]


def csum_errors(ns):
    """InCsumErrors of Tcp and Udp in this namespace's /proc/net/snmp."""
    text = run_in(ns, ["cat", "/proc/net/snmp"]).stdout.splitlines()
    out = {}
    for head, vals in zip(text[::2], text[1::2]):
        proto = head.split(":")[0]
        if proto in ("Tcp", "Udp"):
            row = dict(zip(head.split()[1:], vals.split()[1:]))
            out[proto] = int(row["InCsumErrors"])
    return out


def tcp_transfer(src, dst, dst_ip, nbytes, port=5001):
    """Send nbytes from namespace src to a server in dst; return True if the
    server got them all, checked by hash."""
    srv = ns_python_bg(dst, f"""
import socket, hashlib
s = socket.socket(socket.AF_INET6 if ':' in '{dst_ip}' else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('{dst_ip}', {port})); s.listen(1); s.settimeout(20)
print('ready', flush=True)
c, _ = s.accept(); c.settimeout(20); h = hashlib.sha256(); n = 0
while True:
    d = c.recv(1 << 16)
    if not d: break
    h.update(d); n += len(d)
print(n, h.hexdigest())
""", ready="ready")
    try:
        ns_python(src, f"""
import socket
block = bytes(range(256)) * 256
s = socket.create_connection(('{dst_ip}', {port}), timeout=20)
for _ in range({nbytes} // len(block)): s.sendall(block)
s.close()
""", timeout=60)
        n, digest = srv.communicate(timeout=60)[0].split()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    data = bytes(range(256)) * 256 * (nbytes // 65536)
    return int(n) == len(data) and digest == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("mtu", [1500, 9000])
def test_tcp_both_ways_travels_as_large_segments(netns, procs, sockdir, mtu):
    a, b, sock = pair(netns, procs, sockdir, mtu)
    c0 = counters(sock)
    assert tcp_transfer(b, a, A_IP, 16 << 20)
    c1 = counters(sock)
    assert tcp_transfer(a, b, B_IP, 16 << 20, port=5002)
    c = counters(sock)
    # Both directions carried GSO frames through the rings (the frontend's
    # to the bridge's tap; the bridge's tap's to the frontend)...
    assert c1["to_tap_gso"] > c0["to_tap_gso"] and c["from_tap_gso"] > c1["from_tap_gso"], c
    # ...and far fewer data frames than MSS-sized ones would have been.
    # Each direction is counted while it carried the data: the other way
    # carries only ACKs then, as many as the receiver chooses to send (at
    # MTU 9000 they alone outnumbered a quarter of the MSS count).
    mss_frames = (16 << 20) // (mtu - 52)
    assert c1["to_tap_frames"] - c0["to_tap_frames"] < mss_frames // 4, (c0, c1)
    assert c["from_tap_frames"] - c1["from_tap_frames"] < mss_frames // 4, (c1, c)
    assert sum(v for k, v in c.items() if k.startswith("drop_")) == 0, c
    assert csum_errors(a) == {"Tcp": 0, "Udp": 0} and csum_errors(b) == {"Tcp": 0, "Udp": 0}


def test_tcp_over_ipv6_uses_tso6(netns, procs, sockdir):
    a, b, sock = pair(netns, procs, sockdir)
    for ns, ip in ((a, "fd77::1"), (b, "fd77::2")):
        ifname = "vt0" if ns == a else "vt1"
        # No duplicate address detection: the address is usable at once.
        ns_python(ns, f"open('/proc/sys/net/ipv6/conf/{ifname}/accept_dad', 'w').write('0')")
        add_addr(ns, ifname, ip, prefixlen=64)
    assert tcp_transfer(b, a, "fd77::1", 8 << 20)
    c = counters(sock)
    assert c["to_tap_gso"] > 0, c
    assert sum(v for k, v in c.items() if k.startswith("drop_")) == 0, c
    assert csum_errors(a)["Tcp"] == 0


@pytest.mark.parametrize("bridge_off,attach_off,gso", [
    ("none", "all", False),     # the bridge offers nothing: plain frames both ways
    ("all", "none", False),     # the frontend asks for nothing
    ("all", "csum", False),     # checksums only: MSS-sized frames with partial checksums
])
def test_mixed_peers_negotiate_the_intersection(netns, procs, sockdir, bridge_off, attach_off, gso):
    a, b, sock = pair(netns, procs, sockdir, 1500, bridge_off, attach_off)
    assert tcp_transfer(b, a, A_IP, 2 << 20)
    assert tcp_transfer(a, b, B_IP, 2 << 20, port=5002)
    c = counters(sock)
    assert c["to_tap_gso"] == 0 and c["from_tap_gso"] == 0, c
    csum = "csum" in (bridge_off, attach_off) or "none" not in (bridge_off, attach_off)
    assert (c["to_tap_csum"] > 0 and c["from_tap_csum"] > 0) == csum, c
    assert sum(v for k, v in c.items() if k.startswith("drop_")) == 0, c
    # Plain frames reach a kernel that checks their checksums: none wrong.
    assert csum_errors(a) == {"Tcp": 0, "Udp": 0} and csum_errors(b) == {"Tcp": 0, "Udp": 0}


USO_SENDER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if {gso}:
    s.setsockopt(17, 103, 1400)            # SOL_UDP, UDP_SEGMENT: 1400-byte datagrams
for i in range({sends}):
    buf = b''.join(bytes([i, j]) * 700 for j in range(10))    # ten datagrams' worth
    if {gso}:
        s.sendto(buf, ('{dst}', 9000))
    else:
        for j in range(10):
            s.sendto(buf[j * 1400:(j + 1) * 1400], ('{dst}', 9000))
    time.sleep(0.002)
"""


@pytest.mark.parametrize("attach_off", ["all", "none"])
def test_udp_segmentation_offload(netns, procs, sockdir, attach_off):
    a, b, sock = pair(netns, procs, sockdir, 1500, "all", attach_off)
    sends = 40
    srv = ns_python_bg(a, f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
s.bind(('{A_IP}', 9000)); s.settimeout(3)
print('ready', flush=True)
seen = set(); bad = 0
try:
    while len(seen) < {sends * 10}:
        d = s.recv(65536)
        if len(d) != 1400 or d != d[:2] * 700: bad += 1
        seen.add(d[:2])
except socket.timeout:
    pass
print(len(seen), bad)
""", ready="ready")
    try:
        ns_python(b, USO_SENDER.format(gso=True, sends=sends, dst=A_IP))
        got, bad = map(int, srv.communicate(timeout=30)[0].split())
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    assert bad == 0 and got == sends * 10
    c = counters(sock)
    assert (c["to_tap_gso"] > 0) == (attach_off == "all"), c
    assert csum_errors(a)["Udp"] == 0


@pytest.fixture
def kernel_side(netns, procs, sockdir):
    ns = netns()
    # No IPv6 on the tap: its neighbour discovery and MLD reports would put
    # frames of their own on the ring at any moment, and some tests count
    # exactly what their sender sent.
    run_in(ns, ["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"])
    sock = str(sockdir / "bus.sock")
    procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", sock, "--mac", KMAC)
    add_addr(ns, "vt0", A_IP)
    with ns_ipr(ns) as ipr:
        ipr.neigh("add", dst=B_IP, lladdr=ME, ifindex=ipr.link_lookup(ifname="vt0")[0], state=0x80)
    return ns, sock


def _udp_frames(dev, want, timeout=5.0, raw_frames=False):
    """Frames of UDP port 9000 received, until `want` payload bytes."""
    out, nbytes = [], 0
    deadline = time.monotonic() + timeout
    while nbytes < want and time.monotonic() < deadline:
        got = dev.recv_frame(timeout=0.5) if raw_frames else dev.recv(timeout=0.5)
        if got is None:
            continue
        f, meta = got if raw_frames else (got, None)
        p = Ether(f)
        if UDP in p and p[UDP].dport == 9000:
            out.append((f, meta))
            nbytes += len(p[UDP].payload)
    return out


def _checksum_ok(f):
    p = Ether(f)
    c = p[UDP].chksum
    del p[UDP].chksum
    return Ether(raw(p))[UDP].chksum == c


def test_frontend_sees_metadata_only_if_it_asked(kernel_side):
    ns, sock = kernel_side
    sender = USO_SENDER.format(gso=True, sends=3, dst=B_IP)
    with fe.connect(sock) as bus:
        plain = bus.open("vt0")
        assert plain.offloads == 0
        ns_python(ns, sender)
        frames = _udp_frames(plain, 3 * 14000)
        assert len(frames) == 30
        assert all(len(f) <= 1514 and _checksum_ok(f) for f, _ in frames)
        plain.close()

        dev = bus.open("vt0", offloads="all")
        assert dev.offloads & abi.CAP_USO and dev.offloads & abi.CAP_CSUM
        ns_python(ns, sender)
        got = _udp_frames(dev, 3 * 14000, raw_frames=True)
        metas = [m for _, m in got]
        assert any(m is not None and m.gso_type == abi.GSO_UDP_L4 and m.gso_size == 1400 for m in metas)
        # recv() hands the same traffic over as plain, checksummed frames.
        ns_python(ns, sender)
        frames = _udp_frames(dev, 3 * 14000)
        assert len(frames) == 30
        assert all(len(f) <= 1514 and _checksum_ok(f) for f, _ in frames)
        payloads = sorted(bytes(Ether(f)[UDP].payload)[:2] for f, _ in frames)
        assert payloads == sorted(bytes([i, j]) for i in range(3) for j in range(10))
        # Segments cut in software wait in the device object, not the ring:
        # arm() (what select-based users call) must count them as ready.
        ns_python(ns, USO_SENDER.format(gso=True, sends=1, dst=B_IP))
        first = _udp_frames(dev, 1400)
        assert len(first) == 1 and dev._pending and dev.rx.ready() == 0
        assert dev.arm()
        assert len(_udp_frames(dev, 9 * 1400)) == 9


def test_send_with_metadata_reaches_the_kernel(kernel_side):
    """A frontend hands the kernel a partial checksum and a UDP GSO frame;
    a socket behind the tap gets every datagram, intact."""
    ns, sock = kernel_side
    srv = ns_python_bg(ns, f"""
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('{A_IP}', 9000)); s.settimeout(3)
print('ready', flush=True)
got = []
try:
    while len(got) < 11: got.append(s.recv(65536))
except socket.timeout:
    pass
print(len(got), sum(len(d) for d in got), len(set(got)))
""", ready="ready")
    try:
        with fe.connect(sock) as bus:
            dev = bus.open("vt0", offloads="csum,uso")
            base = Ether(src=ME, dst=KMAC) / IP(src=B_IP, dst=A_IP) / UDP(sport=4000, dport=9000)
            one = bytearray(raw(base / Raw(b"single")))
            one[40:42] = b"\x00\x00"            # a checksum seed of 0 is still "partial"
            dev.send(bytes(one), meta=Meta(34, 6))
            payload = b"".join(bytes([j]) * 1000 for j in range(10))
            big = raw(base / Raw(payload))
            dev.send(big, meta=Meta(34, 6, abi.GSO_UDP_L4, 1000, 42))
            n, total, distinct = srv.communicate(timeout=20)[0].split()
    finally:
        if srv.poll() is None:
            srv.kill()
            srv.wait()
    # The seed-0 single frame is summed by the kernel (its checksum is
    # "partial"), the GSO one cut into ten 1000-byte datagrams.
    assert (int(n), int(total), int(distinct)) == (11, 6 + 10000, 11)
    assert csum_errors(ns)["Udp"] == 0


def rx_packets(ns, ifname="vt0"):
    with ns_ipr(ns) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]
        return link.get_attr("IFLA_STATS64")["rx_packets"]


def test_hostile_metadata_is_dropped_and_counted(kernel_side):
    ns, sock = kernel_side
    frame = raw(Ether(src=ME, dst=KMAC) / IP(src=B_IP, dst=A_IP) / UDP(sport=1, dport=9) / Raw(b"x" * 3000))
    n = len(frame)
    bad = [
        (Meta(34, 6, abi.GSO_UDP_L4, 0, 42), "bad_gso"),            # MSS 0
        (Meta(34, 6, abi.GSO_UDP_L4, 1000, n + 1), "bad_gso"),      # header length past the frame
        (Meta(34, n, abi.GSO_UDP_L4, 1000, 42), "bad_csum"),        # checksum offset past the frame
        (Meta(n - 1, 6), "bad_csum"),                               # checksum start near the end
        (Meta(2, 6), "bad_csum"),                                   # inside the Ethernet header
        (Meta(34, 6, abi.GSO_UDP_L4, 1000, 42, needs_csum=False), "bad_gso"),
        (Meta(34, 16, abi.GSO_TCPV4, 1000, 54), "not_negotiated"),  # TSO4 not asked for
        (Meta(34, 16, abi.GSO_TCPV4, 1000, 54, ecn=True), "not_negotiated"),
        (Meta(34, 6, 7, 1000, 42), "bad_gso"),                      # no such GSO type
    ]
    with fe.connect(sock) as bus:
        dev = bus.open("vt0", offloads="csum,uso")
        before = rx_packets(ns)
        for m, _ in bad:
            assert _frames.send_frame(dev.tx, frame, m.flags, m.pack(), timeout=1)
        # A GSO frame past 64 KiB (as a chain), a frame asking for a TX
        # completion (not offered), and a chain longer than any frame.
        huge = frame + b"\0" * 64000
        big_meta = Meta(34, 6, abi.GSO_UDP_L4, 1000, 42)
        assert _frames.send_frame(dev.tx, huge, big_meta.flags, big_meta.pack(), timeout=1)
        assert _frames.send_frame(dev.tx, frame[:100], abi.F_TXC, timeout=1)
        publish_raw(dev, [(64, abi.F_MORE)] * (abi.MAX_CHAIN + 1) + [(64, 0)])
        # Then a good frame: the device still works.
        dev.send(raw(Ether(src=ME, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=ME, psrc=B_IP, pdst=A_IP)))
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            f = dev.recv(timeout=0.5)
            if f is not None and ARP in Ether(f) and Ether(f)[ARP].op == 2:
                break
        else:
            pytest.fail("no ARP reply after the hostile frames")
        c = bus.stats()["devices"][0]["counters"]
        want = {}
        for _, reason in bad:
            want[reason] = want.get(reason, 0) + 1
        for reason, count in want.items():
            assert c[f"drop_meta_{reason}"] == count, (reason, c)
        assert c["drop_meta_too_long"] == 1 and c["drop_offload"] == 1 and c["drop_chain"] == 1, c
        assert c["to_tap_frames"] == 1, c
        # Nothing refused reached the kernel: the tap received one frame.
        assert rx_packets(ns) - before == 1


def publish_raw(dev, descs):
    """Publish (length, flags) descriptors on a device's TX ring as given,
    past the frame API's checks."""
    import numpy as np
    d = np.zeros(len(descs), ioq.DESC_DTYPE)
    d["offset"] = dev.region.buffer_offset(0)
    d["len"] = [ln for ln, _ in descs]
    d["flags"] = [fl for _, fl in descs]
    deadline = time.monotonic() + 3
    done = 0
    while done < len(d) and time.monotonic() < deadline:
        done += dev.tx.push(d[done:])
    assert done == len(d)


def test_scapy_socket_delivers_plain_checksummed_frames(kernel_side):
    """Over a device without offloads (its default) and over one opened with
    them: either way sniff() sees wire frames with correct checksums."""
    from scapy.all import sniff
    from venet.scapy_socket import VenetSocket
    ns, sock = kernel_side
    with fe.connect(sock) as bus:
        for offloads in (0, "all"):
            dev = bus.open("vt0", offloads=offloads)
            assert bool(dev.offloads) == (offloads == "all")
            s = VenetSocket(device=dev)
            # What the kernel sends waits in the ring until sniff() reads it.
            ns_python(ns, USO_SENDER.format(gso=True, sends=2, dst=B_IP))
            pkts = sniff(opened_socket=s, timeout=5, count=20,
                         lfilter=lambda p: UDP in p and p[UDP].dport == 9000)
            assert len(pkts) == 20
            assert all(len(raw(p)) <= 1514 and _checksum_ok(raw(p)) for p in pkts)
            dev.close()


def test_auto_placement_homes_and_bulk(netns, procs, sockdir):
    """--cpu auto (the default): the bridge's pump is served by the worker
    of the device's bulk CPU (workers are pinned, one per CPU, and never
    move), the attach's pump starts on the next CPU; during a bulk TCP
    transfer the attach's pump joins the bridge's worker's CPU, and a
    small-frame conversation afterwards sends it home."""
    from venet import placement
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs to tell the two homes apart")
    a, b, sock = pair(netns, procs, sockdir)
    bridge, attach = procs.procs[-2:]
    bulk, bridge_home, attach_home = map(str, placement.device_cpus("vt0"))
    assert bulk == bridge_home != attach_home

    def pinned(p):
        """CPU lists of the threads of p pinned to one CPU: the attach's
        pump, or the bridge's workers (one per CPU)."""
        return sorted(cpus for cpus in thread_cpus(p.pid).values() if cpus.isdigit())

    def settle(want_bridge, want_attach, within=3.0):
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and (pinned(bridge), pinned(attach)) != (want_bridge, want_attach):
            time.sleep(0.02)
        return pinned(bridge), pinned(attach)

    workers = sorted(map(str, os.sched_getaffinity(0)))      # the bridge's, pinned for good
    assert settle(workers, [attach_home]) == (workers, [attach_home])
    assert bus_worker_cpu(sock) == int(bridge_home)
    seen = {"attach on the bulk CPU": False, "bridge away from it": False}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if pinned(attach) == [bulk]:
                seen["attach on the bulk CPU"] = True
            if pinned(bridge) != workers:
                seen["bridge away from it"] = True
            time.sleep(0.01)
    w = threading.Thread(target=watch)
    w.start()
    try:
        assert tcp_transfer(b, a, A_IP, 64 << 20)
    finally:
        stop.set()
        w.join()
    assert seen == {"attach on the bulk CPU": True, "bridge away from it": False}
    assert bus_worker_cpu(sock) == int(bridge_home)      # a pooled pump is never moved
    assert counters(sock)["bulk_pins"] == 0
    # Small frames for longer than the 200 ms hold: the attach's pump goes home.
    rtts, out = ping(a, B_IP, 10, interval=0.05)
    assert len(rtts) == 10, out
    assert settle(workers, [attach_home]) == (workers, [attach_home])


def bus_worker_cpu(sock):
    with fe.connect(sock) as bus:
        return bus.stats()["devices"][0]["worker_cpu"]


def test_frames_queued_under_an_earlier_frontends_offloads_never_reach_a_plain_one(kernel_side):
    """The tap's queue can hold GSO frames made while an offloading frontend
    was attached; after it leaves, a frontend without offloads must see only
    plain frames (the stale ones are dropped and counted)."""
    ns, sock = kernel_side
    with fe.connect(sock) as bus:
        greedy = bus.open("vt0", offloads="all", ring_size=128)     # and never reads
        ns_python(ns, USO_SENDER.format(gso=True, sends=60, dst=B_IP))
        greedy.close()                  # link down: the tap's offloads go off
        plain = bus.open("vt0")
        frames = []
        while True:
            f = plain.recv(timeout=0.5)
            if f is None:
                break
            frames.append(f)
        c = bus.stats()["devices"][0]["counters"]
        assert c["drop_rx_meta"] > 0, c                 # stale GSO frames were there
        udp = [f for f in frames if UDP in Ether(f)]
        assert all(len(f) <= 1514 and _checksum_ok(f) for f in udp)
