"""The reference pump Python users write today: a tap and a Unix
SOCK_SEQPACKET socket, os.read/os.write and select, one frame per syscall.
Two of these (listen + connect) join two namespaces, as socat does.

    python -m bench.pypump listen  PATH TAP NETNS
    python -m bench.pypump connect PATH TAP NETNS

Prints 'ready' once the tap is open and the socket bound or connected.
Used by `venet bench e2e` as the 'pypump' topology.
"""
import fcntl
import os
import select
import socket
import struct
import sys

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def main(argv):
    role, path, tap_name, netns = argv
    from pyroute2 import netns as nslib
    nslib.setns(netns, flags=0)
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", tap_name.encode(), IFF_TAP | IFF_NO_PI))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if role == "listen":
        sock.bind(path)
        sock.listen(1)
        print("ready", flush=True)
        sock, _ = sock.accept()
    else:
        sock.connect(path)
        print("ready", flush=True)
    fd = sock.fileno()
    while True:
        r, _, _ = select.select([tap, fd], [], [])
        if tap in r:
            os.write(fd, os.read(tap, 65536))
        if fd in r:
            frame = os.read(fd, 65536)
            if not frame:
                return 0
            try:
                os.write(tap, frame)
            except OSError:
                pass        # e.g. EIO while our tap is still down: drop the frame


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
