"""Offload metadata without a kernel: the Meta record, the software
checksum and segmentation helpers (checked against scapy's own), and
frame chains over a ring (venet._frames)."""
import struct

import pytest
from scapy.all import IP, TCP, UDP, Ether, IPv6, Raw, raw

import ioq
from tests.conftest import RawPeer
from venet import _frames, abi
from venet.offload import Meta, checksum, csum_add, finish_checksum, plain_frames, segment


def test_meta_pack_unpack_round_trip():
    m = Meta(34, 16, abi.GSO_TCPV4, 1448, 66, True, True)
    assert m.flags == abi.F_NEEDS_CSUM | abi.F_GSO | abi.F_ECN
    assert len(m.pack()) == abi.META_SIZE
    assert Meta.unpack(m.flags, m.pack()) == m
    c = Meta(34, 6)
    assert c.flags == abi.F_NEEDS_CSUM and Meta.unpack(c.flags, c.pack()) == c
    assert m.caps_needed() == abi.CAP_CSUM | abi.CAP_TSO4 | abi.CAP_ECN


def test_checksum_matches_rfc1071_example():
    # RFC 1071 section 3's words 0001 f203 f4f5 f6f7 sum to ddf2 (before inversion).
    assert csum_add(bytes.fromhex("0001f203f4f5f6f7")) == 0xDDF2
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D
    assert checksum(b"\x01") == ~0x0100 & 0xFFFF        # odd length pads with zero


def _partial(pkt, l4):
    """What a kernel hands over with NEEDS_CSUM: the checksum field holds
    the pseudo-header sum, folded, not inverted."""
    full = Ether(raw(pkt))
    wire = raw(full)
    layer = full[l4]
    l4_off = len(wire) - len(raw(layer))
    ip = full[IP] if IP in full else full[IPv6]
    proto = 6 if l4 is TCP else 17
    l4_len = len(raw(layer))
    if IP in full:
        ph = raw(ip)[12:20] + struct.pack("!BBH", 0, proto, l4_len)
    else:
        ph = raw(ip)[8:40] + struct.pack("!IxxxB", l4_len, proto)
    off = 16 if l4 is TCP else 6
    f = bytearray(wire)
    f[l4_off + off:l4_off + off + 2] = csum_add(ph).to_bytes(2, "big")
    return bytes(f), Meta(l4_off, off), wire


@pytest.mark.parametrize("pkt,l4", [
    (Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(sport=1, dport=2) / Raw(b"x" * 1001), TCP),
    (Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=1, dport=2) / Raw(b"y" * 77), UDP),
    (Ether() / IPv6(src="fd77::1", dst="fd77::2") / TCP() / Raw(b"z" * 300), TCP),
    (Ether() / IPv6(src="fd77::1", dst="fd77::2") / UDP() / Raw(b"w" * 33), UDP),
])
def test_finish_checksum_equals_scapys(pkt, l4):
    partial, meta, wire = _partial(pkt, l4)
    assert partial != wire
    assert finish_checksum(partial, meta) == wire
    assert plain_frames(partial, meta) == [wire]


def test_finish_checksum_refuses_offsets_outside_the_frame():
    f = raw(Ether() / IP() / UDP() / Raw(b"a"))
    with pytest.raises(ValueError):
        finish_checksum(f, Meta(len(f) - 1, 6))
    with pytest.raises(ValueError):
        finish_checksum(f, Meta(4, 6))


def _gso_frame(v6, proto, payload, flags="PA"):
    ipl = IPv6(src="fd77::1", dst="fd77::2") if v6 else IP(src="10.77.0.1", dst="10.77.0.2", id=100)
    l4 = TCP(sport=5001, dport=40000, seq=1000, flags=flags, options=[("NOP", None)] * 12) \
        if proto == "tcp" else UDP(sport=5001, dport=40000)
    return raw(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ipl / l4 / Raw(payload))


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_segment_gives_the_wire_frames_a_nic_would(v6, proto):
    payload = bytes(range(256)) * 40 + b"tail"          # 10244 bytes: 8 segments of 1400
    gtype = {("tcp", False): abi.GSO_TCPV4, ("tcp", True): abi.GSO_TCPV6}.get((proto, v6), abi.GSO_UDP_L4)
    frame = _gso_frame(v6, proto, payload, flags="FPA")
    segs = segment(frame, Meta(0, 0, gtype, 1400, 0))
    assert len(segs) == 8
    got = b""
    for i, s in enumerate(segs):
        p = Ether(s)
        l4 = p[TCP] if proto == "tcp" else p[UDP]
        data = bytes(l4.payload)
        assert len(data) == (1400 if i < 7 else len(payload) - 7 * 1400)
        got += data
        # scapy recomputes every length and checksum: the segment must be unchanged
        p2 = Ether(s)
        if not v6:
            del p2[IP].len, p2[IP].chksum
            assert p[IP].id == 100 + i
        else:
            del p2[IPv6].plen
        if proto == "tcp":
            del p2[TCP].chksum
            assert p[TCP].seq == 1000 + 1400 * i
            assert ("F" in str(p[TCP].flags)) == (i == 7) and ("P" in str(p[TCP].flags)) == (i == 7)
        else:
            del p2[UDP].len, p2[UDP].chksum
        assert raw(p2) == s
    assert got == payload


def test_segment_refuses_what_it_cannot_cut():
    f = _gso_frame(False, "udp", b"x" * 3000)
    with pytest.raises(ValueError):
        segment(f, Meta(0, 0, abi.GSO_TCPV4, 1000, 0))      # a TCP type on a UDP frame
    with pytest.raises(ValueError):
        segment(f, Meta(0, 0, abi.GSO_UDP, 1000, 0))        # UFO: IP fragmentation
    with pytest.raises(ValueError):
        segment(f, Meta(0, 0, abi.GSO_UDP_L4, 0, 0))


# ---- frame chains over a ring ------------------------------------------

@pytest.fixture
def ring_pair():
    region = ioq.Region.create([16, 16], buf_size=256)
    yield region, region.producer(0), region.consumer(0)
    region.close()


@pytest.mark.parametrize("size", [1, 240, 256, 257, 1000, 3000])
def test_chain_round_trip(ring_pair, size):
    _, p, c = ring_pair
    frame = bytes((i * 7) & 0xFF for i in range(size))
    for rnd in range(5):        # across the wrap
        m = Meta(14, 6)
        assert _frames.send_frame(p, frame, m.flags, m.pack(), timeout=0)
        data, flags, rec = _frames.recv_frame(c, 0)
        assert data == frame and Meta.unpack(flags, rec) == m
        assert _frames.send_frame(p, frame[::-1], 0, None, timeout=0)
        assert _frames.recv_frame(c, 0) == (frame[::-1], 0, None)
    assert _frames.recv_frame(c, 0) is None
    assert c.stats()["bad_total"] == 0


def test_chain_waits_for_room_and_refuses_what_never_fits(ring_pair):
    _, p, c = ring_pair
    assert _frames.send_frame(p, b"x" * 3000, timeout=0)            # 12 of 16 slots
    assert not _frames.send_frame(p, b"x" * 1500, timeout=0.01)      # needs 6
    assert _frames.recv_frame(c, 0)[0] == b"x" * 3000
    assert _frames.send_frame(p, b"x" * 1500, timeout=0)
    with pytest.raises(ValueError):
        _frames.send_frame(p, b"x" * (17 * 256), timeout=0)          # more slots than the ring
    with pytest.raises(ValueError):
        _frames.send_frame(p, b"x", abi.F_MORE, timeout=0)


def test_hostile_chains_are_skipped_with_an_error():
    region = ioq.Region.create([128, 8], buf_size=64)
    try:
        peer, c = RawPeer(region), region.consumer(0)
        for _ in range(abi.MAX_CHAIN + 5):          # a chain too long, then its end
            peer.publish_paired(64, abi.F_MORE)
        peer.publish_paired(10, 0)
        peer.publish_paired(20, 0)                   # a good frame after it
        with pytest.raises(_frames.ChainError, match="longer than"):
            _frames.recv_frame(c, 0)
        assert len(_frames.recv_frame(c, 0)[0]) == 20
        peer.publish_paired(64, abi.F_MORE)          # a chain that never ends
        with pytest.raises(_frames.ChainError, match="not its end"):
            _frames.recv_frame(c, 0)
        peer.publish_paired(5, abi.F_NEEDS_CSUM)     # its end, with flags only a first may carry
        peer.publish_paired(5, abi.F_NEEDS_CSUM)     # a frame shorter than its record
        peer.publish_paired(30, 0)
        assert len(_frames.recv_frame(c, 0)[0]) == 30   # both bad frames were skipped
    finally:
        region.close()
