"""`venet bench syscalls`: is syscall batching worth it for the pumps?

A tap moves one frame per read or write (it is not a socket: no
recvmmsg/sendmmsg), so the only way to batch is io_uring, which saves the
syscall entry and exit per frame, not the kernel's work on the frame.
This measures both, in a namespace of its own, on a tap opened as the
pumps open it (IFF_VNET_HDR, 16-byte header):

  syscall      getppid(): entry and exit alone
  read-empty   read() of the empty tap (EAGAIN)
  write-60     write() of a 60-byte UDP frame the kernel delivers to a socket
  write-1514   the same at 1514 bytes
  write-gso    a 64 KiB UDP GSO frame (USO), cut by the kernel into 46 datagrams

and reports the share of each write that a perfect batching interface
could remove (syscall / write).
"""
import json
import os
import socket
import struct
import sys

N = 200_000
A_IP, PEER_IP = "10.77.0.1", "10.77.0.2"
KMAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"


def _frame(payload, gso=False):
    """Ethernet/IPv4/UDP from PEER to A:9000, behind a 16-byte vnet header."""
    from scapy.all import IP, UDP, Ether, Raw, raw
    from venet.offload import csum_add
    f = bytearray(raw(Ether(src=PEER_MAC, dst=KMAC) / IP(src=PEER_IP, dst=A_IP) /
                      UDP(sport=4000, dport=9000) / Raw(payload)))
    if not gso:
        return bytes(16) + bytes(f)
    # Partial checksum (the pseudo-header sum) and a UDP_L4 virtio header.
    ulen = len(f) - 34
    f[40:42] = csum_add(bytes(f[26:34]) + struct.pack("!BBH", 0, 17, ulen)).to_bytes(2, "big")
    hdr = struct.pack("<BBHHHH", 1, 5, 42, 1400, 34, 6) + bytes(6)
    return hdr + bytes(f)


def inner(n):
    """Runs inside the namespace: open the tap, measure, print JSON."""
    from bench import _sysbench as sb
    from venet.devices import tap as taplib
    fd, _ = taplib.open_tap("vs0")
    with open("/proc/sys/net/ipv6/conf/vs0/disable_ipv6", "w") as f:
        f.write("1")                # no neighbour discovery frames in the tap queue
    taplib.configure("vs0", mac=KMAC, up=True)
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="vs0")[0]
        ipr.addr("add", index=idx, address=A_IP, prefixlen=24)
        ipr.neigh("add", dst=PEER_IP, lladdr=PEER_MAC, ifindex=idx, state=0x80)
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((A_IP, 9000))         # frames end at a socket (its queue overflows: counted drops)
    try:
        for _ in range(1000):       # drain anything the kernel queued meanwhile
            if not _pending(fd):
                break
        rows = {"syscall": sb.bare_syscall_ns(n), "read-empty": sb.read_empty_ns(fd, n)}
        for name, frame, count in (("write-60", _frame(b"x" * 18), n),
                                   ("write-1514", _frame(b"x" * 1472), n // 4),
                                   ("write-gso", _frame(b"x" * 64000, gso=True), n // 100)):
            rows[name] = sb.write_ns(fd, frame, count)
        print(json.dumps(rows))
    finally:
        sink.close()
        os.close(fd)


def _pending(fd):
    try:
        os.read(fd, 70000)
        return True
    except BlockingIOError:
        return False


def main(json_path=None, n=N, out=sys.stdout):
    from tests.lab import Lab, run_in
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with Lab("vns") as lab:
        ns = lab.netns("s")
        r = run_in(ns, [sys.executable, "-m", "bench.syscalls", "--inner", str(n)], cwd=root,
                   timeout=300)
        if r.returncode != 0:
            raise RuntimeError(f"measurement failed: {r.stderr.strip()[-500:]}")
        rows = json.loads(r.stdout.strip().splitlines()[-1])
    lines = [f"{'call':<12} {'ns/call':>10} {'syscall share':>14}"]
    for name, v in rows.items():
        share = f"{100 * rows['syscall'] / v:.1f}%" if name.startswith("write") else ""
        lines.append(f"{name:<12} {v:>10.0f} {share:>14}")
    print("\n".join(lines), file=out)
    if json_path:
        from bench.report import machine
        with open(json_path, "w") as f:
            json.dump({"rows": [{"name": k, "metric": "ns_per_call", "value": v} for k, v in rows.items()],
                       "calls": n, "machine": machine()}, f, indent=1)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--inner":
        inner(int(sys.argv[2]))
    else:
        main(*sys.argv[1:2])
