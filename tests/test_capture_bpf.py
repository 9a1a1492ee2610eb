"""The capture filter: our cBPF checker and interpreter
(venet/includes/venet_bpf.h) against libpcap-compiled filters on
scapy-built frames, and programs the backend must refuse."""
import ctypes
import ctypes.util
import struct

import pytest

from venet import capture
from venet.devices import _capture

scapy = pytest.importorskip("scapy.all")
from scapy.all import ARP, ICMP, IP, TCP, UDP, Dot1Q, Ether, ICMPv6EchoRequest, IPv6, Raw, raw  # noqa: E402

MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
FRAMES = {
    "icmp": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / ICMP(),
    "tcp80": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(sport=1234, dport=80) / Raw(b"x" * 40),
    "tcp22": Ether(**MAC) / IP(src="10.77.0.3", dst="10.77.0.2") / TCP(sport=22, dport=5555),
    "udp53": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=5353, dport=53) / Raw(b"q"),
    "arp": Ether(**MAC) / ARP(psrc="10.77.0.1", pdst="10.77.0.2"),
    "vlan_icmp": Ether(**MAC) / Dot1Q(vlan=7) / IP(src="10.77.0.1", dst="10.77.0.2") / ICMP(),
    "vlan_tcp": Ether(**MAC) / Dot1Q(vlan=9) / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(dport=80),
    "ip6_tcp": Ether(**MAC) / IPv6(src="fd77::1", dst="fd77::2") / TCP(dport=443),
    "ip6_icmp": Ether(**MAC) / IPv6(src="fd77::1", dst="fd77::2") / ICMPv6EchoRequest(),
    "frag_udp": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2", flags="MF", frag=0) / UDP(dport=53),
    "frag2": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2", frag=10, proto=17) / Raw(b"y" * 30),
    "ipopts_tcp": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2", options=b"\x01" * 8) / TCP(dport=80),
    "big": Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(dport=80) / Raw(b"z" * 8960),
}
FILTERS = ["icmp", "tcp", "udp", "arp", "ip6", "vlan", "vlan and icmp", "vlan 9", "tcp port 80",
           "port 53", "ip6 and tcp", "icmp6", "host 10.77.0.3", "net 10.77.0.0/24 and not icmp",
           "greater 1000", "less 64", "ip[6:2] & 0x1fff != 0", "tcp[tcpflags] & tcp-syn != 0",
           "ether src 02:00:00:00:00:01", "ether[0] & 1 = 0", "len >= 60 and len <= 100"]


class _Hdr(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long), ("caplen", ctypes.c_uint32),
                ("len", ctypes.c_uint32)]


def libpcap_match(expr, frame):
    """The reference: libpcap's own matcher (pcap_offline_filter) running
    the program libpcap compiled for the same expression."""
    from scapy.arch.common import compile_filter
    lib = ctypes.CDLL(ctypes.util.find_library("pcap"))
    prog = compile_filter(expr, linktype=1)
    data = raw(frame)
    hdr = _Hdr(0, 0, len(data), len(data))
    return lib.pcap_offline_filter(ctypes.byref(prog), ctypes.byref(hdr), data) != 0


@pytest.mark.parametrize("expr", FILTERS)
def test_interpreter_agrees_with_libpcap(expr):
    prog = capture.compile_filter(expr)
    _capture.check_filter(prog)
    for name, f in FRAMES.items():
        want = libpcap_match(expr, f)
        for pieces in (1, 3, 7):
            got = _capture.run_filter(prog, raw(f), pieces)
            assert (got != 0) == want, f"{expr!r} on {name} in {pieces} pieces: ours {got}, libpcap {want}"


def test_icmp_filter_takes_only_icmp():
    prog = capture.compile_filter("icmp")
    taken = {n for n, f in FRAMES.items() if _capture.run_filter(prog, raw(f))}
    assert taken == {"icmp"}


def test_return_value_is_the_bytes_kept():
    prog = capture.compile_filter("tcp")
    assert _capture.run_filter(prog, raw(FRAMES["big"])) >= len(raw(FRAMES["big"]))
    assert _capture.run_filter(b"", raw(FRAMES["icmp"])) == len(raw(FRAMES["icmp"]))


def ins(code, jt=0, jf=0, k=0):
    return struct.pack("<HBBI", code, jt, jf, k)


RET_K = 0x06
BAD = [
    (b"", None),                                                    # no filter: fine, not checked here
    (ins(0x20, k=0)[:7], "whole 8-byte instructions"),
    (ins(0x20, k=12), "does not end in a return"),
    (ins(0xff) + ins(RET_K, k=1), "unknown opcode"),
    (ins(0x05, k=1) + ins(RET_K, k=1), "a jump leaves the program"),
    (ins(0x15, jt=0, jf=2, k=1) + ins(RET_K, k=1), "a jump leaves the program"),
    (ins(0x60, k=16) + ins(RET_K, k=1), "scratch memory index out of range"),
    (ins(0x02, k=99) + ins(RET_K, k=1), "scratch memory index out of range"),
    (ins(0x34, k=0) + ins(RET_K, k=1), "division by the constant 0"),
    (ins(0x94, k=0) + ins(RET_K, k=1), "division by the constant 0"),
    (ins(0x64, k=32) + ins(RET_K, k=1), "a shift by 32 or more"),
    (ins(0x30, k=0xfffff000) + ins(RET_K, k=1), "ancillary"),
    (ins(RET_K, k=1) * 4097, "at most 4096 instructions"),
]


@pytest.mark.parametrize("prog,why", BAD[1:])
def test_checker_refuses(prog, why):
    with pytest.raises(_capture.FilterError, match=why):
        _capture.check_filter(prog)


def test_loads_out_of_the_frame_refuse_it():
    # ld [k] past the end, ld [x+k] with x+k wrapping, ldx msh past the end
    for prog in (ins(0x20, k=100) + ins(RET_K, k=1),
                 ins(0x01, k=0xffffffff) + ins(0x50, k=2) + ins(RET_K, k=1),
                 ins(0xb1, k=60) + ins(RET_K, k=1),
                 ins(0x01, k=0) + ins(0x3c) + ins(RET_K, k=1)):          # A /= X with X = 0
        _capture.check_filter(prog)
        assert _capture.run_filter(prog, b"\x45" * 60) == 0
    # and a load inside it, across pieces, is taken
    prog = ins(0x20, k=56) + ins(0x15, jt=0, jf=1, k=0x01020304) + ins(RET_K, k=9) + ins(RET_K, k=0)
    frame = bytes(56) + b"\x01\x02\x03\x04"
    assert [_capture.run_filter(prog, frame, p) for p in (1, 2, 5, 16)] == [9] * 4


def test_bad_expression_is_a_usage_error():
    from venet.errors import UsageError
    with pytest.raises(UsageError, match="bad filter 'tcp port': .*syntax error"):
        capture.compile_filter("tcp port")
