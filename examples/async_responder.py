"""A tiny L2 responder on a venet device, with venet.aio and scapy: it
answers ARP requests for its address and ICMP echo requests sent to it,
and ignores everything else.

    python3 examples/async_responder.py --socket /run/venet/bus/b0.sock \
        --device vt0 --ip 10.77.0.2 [--mac 02:00:00:00:aa:01] [--uvloop]

With a venet-tap device whose tap has 10.77.0.1/24, `ping 10.77.0.2` in
the tap's namespace is answered by this process.  It prints "ready" once
the device is open; Ctrl-C or SIGTERM ends it.
"""
import argparse
import asyncio
import signal
import sys

from scapy.layers.inet import ICMP, IP
from scapy.layers.l2 import ARP, Ether

from venet import aio

DEFAULT_MAC = "02:00:00:00:aa:01"


def respond(frame, mac, ip):
    """The reply to one Ethernet frame (bytes), or None: an ARP reply to a
    request for `ip`, an echo reply to an echo request for `ip` sent to
    `mac` (or broadcast).  Frames that do not parse are ignored."""
    try:
        pkt = Ether(frame)
    except Exception:           # whatever a peer sends must not end the responder
        return None
    if ARP in pkt:
        a = pkt[ARP]
        if a.op == 1 and a.pdst == ip:
            return bytes(Ether(dst=pkt.src, src=mac) /
                         ARP(op=2, hwsrc=mac, psrc=ip, hwdst=a.hwsrc, pdst=a.psrc))
        return None
    if IP in pkt and ICMP in pkt and pkt[IP].dst == ip and pkt.dst.lower() in (mac, "ff:ff:ff:ff:ff:ff"):
        req = pkt[IP]
        icmp = req[ICMP]
        if icmp.type != 8 or req.frag or req.flags.MF:
            return None
        reply = (Ether(dst=pkt.src, src=mac) /
                 IP(src=ip, dst=req.src, ttl=64) /
                 ICMP(type=0, code=0, id=icmp.id, seq=icmp.seq) /
                 bytes(icmp.payload))
        return bytes(reply)
    return None


async def serve(path, device, mac, ip, count=None):
    """Answer frames until cancelled (or `count` replies); returns the
    number of replies sent."""
    sent = 0
    async with await aio.connect(path) as bus:
        dev = await bus.open(device)
        print("ready", flush=True)
        async for frame in dev:
            reply = respond(frame, mac, ip)
            if reply is None:
                continue
            if len(reply) < 60:
                reply += bytes(60 - len(reply))     # the Ethernet minimum, as a NIC pads
            await dev.send(reply)
            sent += 1
            if count is not None and sent >= count:
                break
    return sent


async def main_async(args):
    task = asyncio.ensure_future(serve(args.socket, args.device, args.mac.lower(), args.ip, args.count))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, help="the bus's control socket")
    p.add_argument("--device", help="the device (default: the only one)")
    p.add_argument("--ip", required=True, help="the IPv4 address to answer for")
    p.add_argument("--mac", default=DEFAULT_MAC, help=f"this responder's MAC (default {DEFAULT_MAC})")
    p.add_argument("--count", type=int, help="stop after this many replies")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = p.parse_args(argv)
    try:
        if args.uvloop:
            import uvloop
            uvloop.run(main_async(args))
        else:
            asyncio.run(main_async(args))
    except (FileNotFoundError, PermissionError, aio.LinkDown) as e:
        print(f"async_responder: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
