"""venet-switch: frontends on one switch, through the frontend API, no root.

Each test serves one or two buses (a bridge.Bridge per bus, in a thread of
its own) holding the same SwitchDevice, and talks to it with
venet.frontend; frames are built and checked with scapy.
"""
import hashlib
import os
import threading
import time

import pytest
from scapy.all import ARP, IP, TCP, UDP, Ether, IPv6, raw

from tests.conftest import wait_until
from venet import abi, bridge
from venet import frontend as fe
from venet.devices.switch import SwitchDevice

BCAST = "ff:ff:ff:ff:ff:ff"


class Bus:
    def __init__(self, path, devices):
        self.bridge = bridge.Bridge(path, devices, bus=os.path.basename(path))
        self.bridge.listen()
        self.thread = threading.Thread(target=self.bridge.serve, daemon=True)
        self.thread.start()
        self.path = path

    def close(self):
        self.bridge.stop()
        self.thread.join(10)
        self.bridge.devices.clear()     # the switch is the test's, closed by it
        self.bridge.close()


@pytest.fixture
def lab(tmp_path):
    made = {"switches": [], "buses": [], "fronts": []}

    def switch(**kw):
        sw = SwitchDevice("sw0", **kw)
        made["switches"].append(sw)
        return sw

    def bus(sw, name="b0"):
        b = Bus(str(tmp_path / f"{name}.sock"), [sw])
        made["buses"].append(b)
        return b

    def front(b, **kw):
        conn = fe.connect(b.path)
        made["fronts"].append(conn)
        return conn.open("sw0", **kw)

    yield type("Lab", (), {"switch": staticmethod(switch), "bus": staticmethod(bus),
                           "front": staticmethod(front), "made": made})
    for c in made["fronts"]:
        try:
            c.close()
        except Exception:
            pass
    for b in made["buses"]:
        b.close()
    for sw in made["switches"]:
        sw.close()


def eth(dst, src, tag=0, n=60):
    f = raw(Ether(dst=dst, src=src, type=0x88b5) / tag.to_bytes(4, "big"))
    return f + bytes(max(0, n - len(f)))


def drain(dev, timeout=0.3):
    out = []
    while True:
        f = dev.recv(timeout=timeout)
        if f is None:
            return out
        out.append(f)


def port_of(sw, dev):
    for p in sw.ports.values():
        if p.mac == dev.mac:
            return p
    raise KeyError(dev.mac)


def three(lab, **kw):
    sw = lab.switch(**kw)
    b = lab.bus(sw)
    return sw, [lab.front(b) for _ in range(3)]


def test_ports_get_distinct_macs_and_flood_then_learn(lab):
    sw, (a, b, c) = three(lab)
    assert len({a.mac, b.mac, c.mac}) == 3
    # Unknown destination: flooded to both others, not back to the sender.
    assert a.send(eth(b.mac, a.mac, 1), timeout=2)
    assert wait_until(lambda: b.recv(timeout=0.5), what="b's flooded frame")[14:18] == (1).to_bytes(4, "big")
    assert wait_until(lambda: c.recv(timeout=0.5), what="c's flooded frame")[14:18] == (1).to_bytes(4, "big")
    assert drain(a, 0.1) == []
    # b answers a: a is learned, so only a gets it.
    assert b.send(eth(a.mac, b.mac, 2), timeout=2)
    assert a.recv(timeout=2)[14:18] == (2).to_bytes(4, "big")
    assert drain(c, 0.2) == []
    # Now both are learned: a to b reaches b only.
    for i in range(10):
        assert a.send(eth(b.mac, a.mac, 100 + i), timeout=2)
    got = [b.recv(timeout=2) for _ in range(10)]
    assert [int.from_bytes(g[14:18], "big") for g in got] == list(range(100, 110))
    assert drain(c, 0.2) == []
    pa, pb = port_of(sw, a).counters(), port_of(sw, b).counters()
    assert pa["floods"] == 1 and pa["unicast"] == 10 and pa["rx_frames"] == 11
    assert pb["unicast"] == 1 and pb["tx_frames"] == 11
    assert sw.engine.stats()["mac_entries"] == 2


def test_broadcast_and_multicast_flood_and_are_not_learned(lab):
    sw, (a, b, c) = three(lab)
    assert a.send(eth(BCAST, a.mac, 7), timeout=2)
    assert a.send(eth("01:00:5e:00:00:01", a.mac, 8), timeout=2)
    # A multicast source is never learned.
    assert a.send(eth(BCAST, "03:00:00:00:00:01", 9), timeout=2)
    for d in (b, c):
        got = [int.from_bytes(f[14:18], "big") for f in [d.recv(timeout=2) for _ in range(3)]]
        assert got == [7, 8, 9]
    assert drain(a, 0.1) == []
    assert "03:00:00:00:00:01" not in sw.engine.macs()
    assert port_of(sw, a).counters()["floods"] == 3
    assert sw.engine.stats()["floods"] == 3


def test_ageing_forgets_a_silent_mac(lab):
    sw, (a, b, c) = three(lab, ageing_s=2)
    assert b.send(eth(BCAST, b.mac, 1), timeout=2)      # b learned
    assert a.recv(timeout=2) is not None and c.recv(timeout=2) is not None
    assert a.send(eth(b.mac, a.mac, 2), timeout=2)
    assert b.recv(timeout=2) is not None
    assert drain(c, 0.1) == []                          # unicast while learned
    # The engine sweeps aged entries at least once a second.
    wait_until(lambda: b.mac not in sw.engine.macs(), timeout=6, what="b's entry to age out")
    assert sw.engine.stats()["mac_aged"] >= 1
    assert a.send(eth(b.mac, a.mac, 3), timeout=2)
    # Aged out: flooded again, so c sees it.
    assert c.recv(timeout=2)[14:18] == (3).to_bytes(4, "big")


def test_mac_table_cap_counts_what_it_cannot_learn(lab):
    sw, (a, b, c) = three(lab, mac_table_size=4)
    for i in range(10):
        assert a.send(eth(BCAST, f"02:00:00:00:10:{i:02x}", i), timeout=2)
    wait_until(lambda: sw.engine.stats()["frames"] >= 10, what="the frames to be switched")
    st = sw.engine.stats()
    assert st["mac_entries"] == 4
    assert st["mac_table_full"] == 6
    # Every frame was still flooded.
    assert len(drain(b, 0.3)) == 10


def test_two_buses_joined_by_one_switch(lab):
    sw = lab.switch()
    b1, b2 = lab.bus(sw, "one"), lab.bus(sw, "two")
    a, b = lab.front(b1), lab.front(b2)
    assert a.send(eth(BCAST, a.mac, 1), timeout=2)
    assert b.recv(timeout=2)[14:18] == (1).to_bytes(4, "big")
    assert b.send(eth(a.mac, b.mac, 2), timeout=2)
    assert a.recv(timeout=2)[14:18] == (2).to_bytes(4, "big")
    assert len(sw.ports) == 2


def test_closing_a_frontend_removes_its_port_and_macs(lab):
    sw, (a, b, c) = three(lab)
    assert c.send(eth(BCAST, c.mac, 1), timeout=2)
    wait_until(lambda: c.mac in sw.engine.macs(), what="c learned")
    c.bus.close()
    wait_until(lambda: len(sw.ports) == 2, what="c's port to go")
    assert c.mac not in sw.engine.macs()
    assert a.send(eth(b.mac, a.mac, 2), timeout=2)
    assert b.recv(timeout=2) is not None


def test_a_frontend_that_never_reads_costs_only_itself(lab):
    sw, (a, b, c) = three(lab)
    assert b.send(eth(BCAST, b.mac, 0), timeout=2)
    assert c.send(eth(BCAST, c.mac, 0), timeout=2)
    drain(a, 0.2)
    drain(b, 0.2)
    # c never reads again; a floods broadcasts in bursts smaller than b's
    # ring, and b, which reads each burst, loses none of them.
    n, burst = 640, 64
    seen = []
    for i in range(0, n, burst):
        for j in range(i, i + burst):
            assert a.send(eth(BCAST, a.mac, j), timeout=2)
        for _ in range(burst):
            f = b.recv(timeout=2)
            assert f is not None, f"b lost a frame of the burst from {i}"
            seen.append(f)
    assert drain(b, 0.2) == []
    assert [int.from_bytes(f[14:18], "big") for f in seen] == list(range(n))
    pc = port_of(sw, c).counters()
    assert pc["drop_rx_full"] > 0
    assert pc["tx_frames"] + pc["drop_rx_full"] == n + 1     # + b's first broadcast
    assert port_of(sw, b).counters()["drop_rx_full"] == 0


def tcp_super(src, dst, payload, v6=False):
    ip = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.77.0.1", dst="10.77.0.2", id=100)
    return raw(Ether(dst=dst, src=src) / ip / TCP(sport=4000, dport=5000, seq=1, flags="PA") / payload)


def partial(frame, l4, proto, v6=False):
    """The frame with its L4 checksum field holding the pseudo-header sum
    (what a sender with a partial checksum writes) and the record's csum_start."""
    from venet import offload
    f = bytearray(frame)
    off = 16 if proto == 6 else 6
    ln = len(f) - l4
    if v6:
        ph = bytes(f[22:54]) + ln.to_bytes(4, "big") + bytes(3) + bytes([proto])
    else:
        ph = bytes(f[26:34]) + bytes([0, proto]) + ln.to_bytes(2, "big")
    s = sum(int.from_bytes(ph[i:i + 2], "big") for i in range(0, len(ph), 2))
    while s >> 16:
        s = (s & 0xffff) + (s >> 16)
    f[l4 + off:l4 + off + 2] = s.to_bytes(2, "big")
    return bytes(f), off


@pytest.mark.parametrize("v6", [False, True])
def test_gso_passes_whole_to_an_offloading_port_and_segmented_to_a_plain_one(lab, v6):
    from venet import offload
    sw = lab.switch()
    b = lab.bus(sw)
    a = lab.front(b, offloads="all")
    g = lab.front(b, offloads="all")
    p = lab.front(b)
    assert a.offloads & abi.CAP_TSO4 and not p.offloads
    payload = os.urandom(20000)
    frame = tcp_super(a.mac, BCAST, payload, v6)
    l4 = 14 + (40 if v6 else 20)
    frame, coff = partial(frame, l4, 6, v6)
    meta = offload.Meta(csum_start=l4, csum_offset=coff, gso_type=abi.GSO_TCPV6 if v6 else abi.GSO_TCPV4,
                        gso_size=1400, hdr_len=l4 + 20)
    assert a.send(frame, timeout=2, meta=meta)
    got = g.recv_frame(timeout=2)
    assert got is not None
    data, m = got
    assert data == frame and m is not None and m.gso_size == 1400
    segs = drain(p, 0.5)
    assert len(segs) == (len(payload) + 1399) // 1400
    joined = b""
    L4 = TCP
    for s in segs:
        e = Ether(s)
        assert len(s) <= 1514
        c = e[L4].chksum
        del e[L4].chksum
        if not v6:
            ic = e[IP].chksum
            del e[IP].chksum
        e2 = Ether(raw(e))
        assert e2[L4].chksum == c
        if not v6:
            assert e2[IP].chksum == ic
        joined += bytes(e[L4].payload)
    assert hashlib.sha256(joined).digest() == hashlib.sha256(payload).digest()
    pp = port_of(sw, p).counters()
    assert pp["segmented"] == 1 and pp["segments"] == len(segs)
    assert port_of(sw, g).counters()["gso_whole"] == 1


def test_uso_and_partial_checksums_to_a_plain_port(lab):
    from venet import offload
    sw = lab.switch()
    b = lab.bus(sw)
    a = lab.front(b, offloads="all")
    p = lab.front(b)
    payload = os.urandom(5000)
    frame = raw(Ether(dst=BCAST, src=a.mac) / IP(src="10.77.0.1", dst="10.77.0.2") /
                UDP(sport=1, dport=2) / payload)
    frame, coff = partial(frame, 34, 17)
    meta = offload.Meta(csum_start=34, csum_offset=coff, gso_type=abi.GSO_UDP_L4, gso_size=1000, hdr_len=42)
    assert a.send(frame, timeout=2, meta=meta)
    segs = drain(p, 0.5)
    assert len(segs) == 5
    joined = b""
    for s in segs:
        e = Ether(s)
        c = e[UDP].chksum
        del e[UDP].chksum
        del e[UDP].len
        assert Ether(raw(e))[UDP].chksum == c
        joined += bytes(e[UDP].payload)
    assert joined == payload
    # A partial checksum alone: finished for the plain port.
    small = raw(Ether(dst=BCAST, src=a.mac) / IP(src="10.77.0.1", dst="10.77.0.2") /
                UDP(sport=1, dport=2) / b"hello world")
    small, coff = partial(small, 34, 17)
    assert a.send(small, timeout=2, meta=offload.Meta(csum_start=34, csum_offset=coff))
    f = p.recv(timeout=2)
    e = Ether(f)
    c = e[UDP].chksum
    del e[UDP].chksum
    assert Ether(raw(e))[UDP].chksum == c
    assert port_of(sw, p).counters()["csum_finished"] == 1


def test_segmenter_against_scapy_frames():
    from venet.devices import _switch
    payload = os.urandom(7000)
    for v6 in (False, True):
        f = tcp_super("02:00:00:00:00:01", "02:00:00:00:00:02", payload, v6)
        segs = _switch.segment(f, abi.GSO_TCPV6 if v6 else abi.GSO_TCPV4, 1000, 54 if v6 else 34, mtu=1500)
        assert b"".join(bytes(Ether(s)[TCP].payload) for s in segs) == payload
        assert [Ether(s)[TCP].seq for s in segs] == [1 + 1000 * i for i in range(7)]
        assert [str(Ether(s)[TCP].flags) for s in segs] == ["A"] * 6 + ["PA"]
    with pytest.raises(ValueError, match="bad headers"):
        _switch.segment(f, abi.GSO_TCPV4, 1000, 54)
    with pytest.raises(ValueError, match="too big"):
        _switch.segment(tcp_super("02:00:00:00:00:01", "02:00:00:00:00:02", payload), abi.GSO_TCPV4,
                        3000, 34, mtu=1500)
    with pytest.raises(ValueError, match="not segmented"):
        _switch.segment(f, abi.GSO_UDP, 1000, 34)


def hostile_port(path, txc=True):
    """A frontend built from raw ioq (tests/hostile.py) opened on the
    switch: (control socket, Frontend, RawPeer on its TX ring)."""
    import socket

    from tests.conftest import RawPeer
    from tests.hostile import Frontend
    from venet import control
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect(path)
    control.call(s, control.HELLO, {"version": control.VERSION})
    info = control.call(s, control.OPEN, {"device": "sw0"})
    control.call(s, control.NEGCAP, {"device": "sw0", "group": abi.CAP_GROUP_SG, "bits": abi.CAP_SG})
    control.call(s, control.NEGCAP, {"device": "sw0", "group": abi.CAP_GROUP_EVENTQ,
                                     "bits": abi.CAP_EVQ_LINKSTATE | (abi.CAP_EVQ_TXC if txc else 0)})
    f = Frontend(ring=128, evq=64)
    control.call(s, control.REGISTER, {"device": "sw0"}, f.fds)
    control.call(s, control.LINKUP, {"device": "sw0"})
    return s, f, RawPeer(f.region, abi.RING_TX), info["mac"]


def test_a_hostile_port_changes_only_its_own_counters(lab):
    sw = lab.switch()
    b = lab.bus(sw)
    a, c = lab.front(b), lab.front(b)
    s, f, peer, hmac = hostile_port(b.path)
    try:
        base = f.region.paired_base(abi.RING_TX)
        good = eth(BCAST, hmac, 77)

        def put(pos, data):
            off = f.region.buffer_offset(base + pos % peer.count)
            peer.mm[off:off + len(data)] = data
            return off

        # 1. out of bounds
        peer.publish(1, 0, 60)
        # 2. a chain whose continuation carries NEEDS_CSUM
        off = put(1, good)
        peer.publish(2, off, 60, abi.F_MORE)
        off = put(2, good)
        peer.publish(3, off, 60, abi.F_NEEDS_CSUM)
        # 3. an offload record the port did not negotiate
        off = put(3, bytes(16) + good)
        peer.publish(4, off, 76, abi.F_NEEDS_CSUM)
        # 4. a flag bit venet does not know
        off = put(4, good)
        peer.publish(5, off, 60, 1 << 25)
        # 5. too short
        off = put(5, good[:10])
        peer.publish(6, off, 10)
        # 6. a chain longer than 64 descriptors
        for i in range(65):
            off = put(6 + i, good)
            peer.publish(7 + i, off, 60, abi.F_MORE)
        off = put(71, good)
        peer.publish(100, off, 60)
        # 7. finally a good one, with TXC
        off = put(72, good)
        peer.publish(200, off, 60, abi.F_TXC)
        os.eventfd_write(f.backend_waits[0], 1)
        got = wait_until(lambda: a.recv(timeout=0.5), what="the good frame")
        assert got[14:18] == (77).to_bytes(4, "big")
        assert c.recv(timeout=2)[14:18] == (77).to_bytes(4, "big")
        assert drain(a, 0.2) == [] and drain(c, 0.1) == []
        hp = port_of_mac(sw, hmac).counters()
        assert hp["drop_bad_desc"] == 1
        assert hp["drop_chain"] >= 2
        assert hp["drop_meta_not_negotiated"] == 1
        assert hp["drop_offload"] == 1
        assert hp["drop_short"] == 1
        assert hp["rx_frames"] == 1 and hp["floods"] == 1
        evs = f.events(2)     # the link-up, then the good frame's completion
        assert evs[0][0] == abi.EV_LINKSTATE
        assert evs[1][0] == abi.EV_TXC and evs[1][2] == 200 and evs[1][3] >> 32 == 0
        drops = [k for k in hp if k.startswith("drop_")]
        for d in (a, c):
            pc = port_of(sw, d).counters()
            assert all(pc[k] == 0 for k in drops), pc
            assert pc["tx_frames"] == 1
    finally:
        peer.close()
        s.close()
        wait_until(lambda: len(sw.ports) == 2, what="the hostile port to go")
        f.close()


def port_of_mac(sw, mac):
    for p in sw.ports.values():
        if p.mac == mac:
            return p
    raise KeyError(mac)


_STREAMER = r"""
import sys, time
sys.path.insert(0, {root!r})
from venet import frontend as fe
bus = fe.connect({path!r})
dev = bus.open("sw0")
f = bytes.fromhex("ffffffffffff") + bytes.fromhex(dev.mac.replace(":", "")) + b"\x88\xb5" + bytes(46)
print(dev.mac, flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    dev.send(f, timeout=0.2)
"""


def test_a_frontend_killed_under_a_stream_loses_its_port_only(lab, tmp_path):
    import signal
    import subprocess
    import sys
    sw = lab.switch()
    b = lab.bus(sw)
    a, c = lab.front(b), lab.front(b)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", _STREAMER.format(root=root, path=b.path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        kmac = proc.stdout.readline().strip()
        assert kmac, "the streaming frontend did not start"
        got = [a.recv(timeout=5) for _ in range(10)]
        assert all(g is not None and g[6:12] == bytes.fromhex(kmac.replace(":", "")) for g in got)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: len(sw.ports) == 2, what="the killed frontend's port to go")
        assert kmac not in sw.engine.macs()
        # The others keep going, both ways (what the stream left queued first).
        drain(a, 0.1), drain(c, 0.1)
        for i in range(50):
            assert a.send(eth(c.mac, a.mac, i), timeout=2)
        got = [c.recv(timeout=2) for _ in range(50)]
        assert [int.from_bytes(g[14:18], "big") for g in got] == list(range(50))
        assert c.send(eth(a.mac, c.mac, 99), timeout=2)
        assert drain(a, 0.5)[-1][14:18] == (99).to_bytes(4, "big")
        assert sw.engine.stats()["ports_removed"] >= 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def test_ports_come_and_go_while_traffic_flows(lab):
    sw = lab.switch()
    b = lab.bus(sw)
    a = lab.front(b)
    stop = threading.Event()
    frame = eth(BCAST, a.mac, 5)

    def stream():
        while not stop.is_set():
            a.send(frame, timeout=0.05)
    t = threading.Thread(target=stream, daemon=True)
    t.start()
    try:
        for i in range(20):
            conn = fe.connect(b.path)
            d = conn.open("sw0")
            assert d.recv(timeout=2) is not None
            conn.close()        # removed while a's broadcasts are being copied to it
        wait_until(lambda: len(sw.ports) == 1, what="the short-lived ports to go")
        assert sw.engine.stats()["ports_removed"] == 20
    finally:
        stop.set()
        t.join(5)
    assert port_of(sw, a).counters()["floods"] > 0
