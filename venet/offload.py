"""Offload metadata for Python users, and software fallbacks.

A frame on a device that negotiated offloads may come with a `Meta`: a
partial checksum to finish (NEEDS_CSUM: the kernel left the pseudo-header
sum in the checksum field) and/or a GSO super-frame to cut into segments of
`gso_size` payload bytes.  `plain_frames()` turns such a frame into the
wire frames a NIC would have sent; `Device.recv()` uses it so that users
who never asked for metadata never see any.

The checksum is numpy's sum over big-endian 16-bit words (no Python loop
per byte); segmentation rewrites the IPv4/IPv6 and TCP/UDP headers per
segment as the kernel's GSO does (IPv4 id +1 per segment, TCP sequence
advanced, FIN/PSH only on the last segment, CWR only on the first).
"""
import struct
from typing import NamedTuple

import numpy as np

from venet import abi

ETH_P_IP, ETH_P_IPV6, ETH_P_8021Q = 0x0800, 0x86DD, 0x8100
IPPROTO_TCP, IPPROTO_UDP = 6, 17
_REC = abi.META_STRUCT         # csum_start, csum_offset, gso_type, gso_hdrlen, gso_size


class Meta(NamedTuple):
    """The offload record of one frame (venet_meta_t) and its flags."""
    csum_start: int = 0
    csum_offset: int = 0
    gso_type: int = None        # abi.GSO_* or None
    gso_size: int = 0
    hdr_len: int = 0            # virtio's hdr_len: bytes to keep linear (a hint)
    needs_csum: bool = True
    ecn: bool = False

    @property
    def flags(self):
        f = abi.F_NEEDS_CSUM if self.needs_csum else 0
        if self.gso_type is not None:
            f |= abi.F_GSO
        if self.ecn:
            f |= abi.F_ECN
        return f

    def pack(self):
        return _REC.pack(self.csum_start, self.csum_offset,
                         0 if self.gso_type is None else self.gso_type, self.hdr_len, self.gso_size)

    @classmethod
    def unpack(cls, flags, record):
        start, off, gtype, hdr_len, size = _REC.unpack(record)
        gso = bool(flags & abi.F_GSO)
        return cls(start, off, gtype if gso else None, size if gso else 0, hdr_len if gso else 0,
                   bool(flags & abi.F_NEEDS_CSUM), bool(flags & abi.F_ECN))

    def caps_needed(self):
        """The SG-group capability bits a device must have negotiated."""
        bits = abi.CAP_CSUM
        if self.gso_type is not None:
            bits |= abi.GSO_CAP.get(self.gso_type, 0)
        if self.ecn:
            bits |= abi.CAP_ECN
        return bits


def csum_add(data, start=0):
    """Ones' complement sum (folded to 16 bits, not inverted) of `data`, as
    big-endian words, added to `start`."""
    b = np.frombuffer(data, dtype=np.uint8)
    if len(b) & 1:
        b = np.concatenate((b, np.zeros(1, np.uint8)))
    s = int(b.view(">u2").sum(dtype=np.uint64)) + start
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data, start=0):
    """The Internet checksum (RFC 1071) of `data`, seeded with `start`."""
    return ~csum_add(data, start) & 0xFFFF


def finish_checksum(frame, meta):
    """Fill in a partial checksum: the field at csum_start + csum_offset
    holds the pseudo-header sum; the result covers csum_start to the end."""
    start, off = meta.csum_start, meta.csum_offset
    if start < abi.ETH_HLEN or start + off + 2 > len(frame):
        raise ValueError(f"checksum at {start}+{off} lies outside a frame of {len(frame)} bytes")
    f = bytearray(frame)
    c = checksum(memoryview(f)[start:])
    if c == 0 and _l4_proto_at(f, start) == IPPROTO_UDP:
        c = 0xFFFF          # UDP sends "no checksum" as 0; a computed 0 goes as 0xffff
    f[start + off:start + off + 2] = c.to_bytes(2, "big")
    return bytes(f)


def _l4_proto_at(f, start):
    try:
        l3, proto, _l4 = _headers(f)
    except ValueError:
        return None
    return proto


def _headers(f):
    """(l3 offset, L4 protocol, l4 offset) of an Ethernet frame carrying
    IPv4 or IPv6 (one VLAN tag allowed; IPv6 extension headers are not)."""
    if len(f) < abi.ETH_HLEN:
        raise ValueError("frame shorter than an Ethernet header")
    l3 = 14
    etype = int.from_bytes(f[12:14], "big")
    if etype == ETH_P_8021Q:
        etype = int.from_bytes(f[16:18], "big")
        l3 = 18
    if etype == ETH_P_IP:
        if len(f) < l3 + 20 or f[l3] >> 4 != 4:
            raise ValueError("bad IPv4 header")
        ihl = (f[l3] & 0xF) * 4
        if ihl < 20 or len(f) < l3 + ihl:
            raise ValueError("bad IPv4 header length")
        return l3, f[l3 + 9], l3 + ihl
    if etype == ETH_P_IPV6:
        if len(f) < l3 + 40:
            raise ValueError("short IPv6 header")
        return l3, f[l3 + 6], l3 + 40
    raise ValueError(f"ethertype {etype:#06x} is neither IPv4 nor IPv6")


def _pseudo_sum(f, l3, proto, l4_len):
    if f[l3] >> 4 == 4:
        ph = bytes(f[l3 + 12:l3 + 20]) + struct.pack("!BBH", 0, proto, l4_len)
    else:
        ph = bytes(f[l3 + 8:l3 + 40]) + struct.pack("!IxxxB", l4_len, proto)
    return csum_add(ph)


def segment(frame, meta):
    """Cut a TCP (v4/v6) or UDP_L4 GSO frame into wire frames of at most
    gso_size payload bytes each, every header and checksum complete."""
    if meta.gso_type not in (abi.GSO_TCPV4, abi.GSO_TCPV6, abi.GSO_UDP_L4):
        raise ValueError(f"cannot segment GSO type {meta.gso_type} in software")
    if meta.gso_size <= 0:
        raise ValueError("GSO frame with an MSS of 0")
    f = bytes(frame)
    l3, proto, l4 = _headers(f)
    v4 = f[l3] >> 4 == 4
    want = IPPROTO_UDP if meta.gso_type == abi.GSO_UDP_L4 else IPPROTO_TCP
    if proto != want:
        raise ValueError(f"GSO type {abi.GSO_NAMES[meta.gso_type]} on an IP protocol {proto} frame")
    if proto == IPPROTO_TCP:
        if len(f) < l4 + 20:
            raise ValueError("short TCP header")
        l4_hlen = (f[l4 + 12] >> 4) * 4
        if l4_hlen < 20:
            raise ValueError("bad TCP header length")
    else:
        l4_hlen = 8
    hdr_end = l4 + l4_hlen
    if hdr_end > len(f):
        raise ValueError("headers run past the frame")
    payload = memoryview(f)[hdr_end:]
    mss = meta.gso_size
    out = []
    nseg = max(1, (len(payload) + mss - 1) // mss)
    seq = int.from_bytes(f[l4 + 4:l4 + 8], "big") if proto == IPPROTO_TCP else 0
    ip_id = int.from_bytes(f[l3 + 4:l3 + 6], "big") if v4 else 0
    for i in range(nseg):
        chunk = payload[i * mss:(i + 1) * mss]
        h = bytearray(f[:hdr_end])
        l4_len = l4_hlen + len(chunk)
        if v4:
            h[l3 + 2:l3 + 4] = (l4 - l3 + l4_len).to_bytes(2, "big")
            h[l3 + 4:l3 + 6] = ((ip_id + i) & 0xFFFF).to_bytes(2, "big")
            h[l3 + 10:l3 + 12] = b"\0\0"
            h[l3 + 10:l3 + 12] = checksum(h[l3:l4]).to_bytes(2, "big")
        else:
            h[l3 + 4:l3 + 6] = (l4 - l3 - 40 + l4_len).to_bytes(2, "big")
        if proto == IPPROTO_TCP:
            h[l4 + 4:l4 + 8] = ((seq + i * mss) & 0xFFFFFFFF).to_bytes(4, "big")
            fl = h[l4 + 13]
            if i < nseg - 1:
                fl &= ~0x09 & 0xFF          # FIN, PSH only on the last
            if i > 0:
                fl &= ~0x80 & 0xFF          # CWR only on the first
            h[l4 + 13] = fl
            cpos = l4 + 16
        else:
            h[l4 + 4:l4 + 6] = l4_len.to_bytes(2, "big")
            cpos = l4 + 6
        h[cpos:cpos + 2] = b"\0\0"
        c = checksum(bytes(h[l4:]) + bytes(chunk), _pseudo_sum(h, l3, proto, l4_len))
        if c == 0 and proto == IPPROTO_UDP:
            c = 0xFFFF
        h[cpos:cpos + 2] = c.to_bytes(2, "big")
        out.append(bytes(h) + bytes(chunk))
    return out


def plain_frames(frame, meta):
    """The wire frames for a frame and its Meta (None: the frame itself)."""
    if meta is None:
        return [bytes(frame)]
    if meta.gso_type is not None:
        return segment(frame, meta)
    if meta.needs_csum:
        return [finish_checksum(frame, meta)]
    return [bytes(frame)]
