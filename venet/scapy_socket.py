"""A scapy SuperSocket over a venet frontend device.

    from scapy.all import Ether, ARP, sendp, sniff
    with VenetSocket(socket_path="/run/venet/venet.sock", device="vt0") as s:
        sendp(Ether() / ARP(pdst="10.77.0.1"), socket=s)
        reply = s.sr1(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst="10.77.0.1"), timeout=2)
        pkts = sniff(opened_socket=s, count=3, timeout=5)

It has a real fd to wait on (the RX ring's eventfd), armed by select()
only when no frame is waiting, so scapy's select loop sleeps in the kernel
and wakes on the backend's kick.
"""
import select as _select
import time

from scapy.config import conf
from scapy.layers.l2 import Ether
from scapy.packet import Packet
from scapy.supersocket import SuperSocket

from venet import frontend


class VenetSocket(SuperSocket):
    desc = "a venet device through its shared-memory rings"
    nonblocking_socket = True

    def __init__(self, device=None, *, socket_path=None, iface=None, **kwargs):
        """Wrap an open frontend.Device, or open `iface` (a device name; None
        for the only one) on the bus at socket_path.  Other keyword arguments
        scapy passes (promisc, filter, type) are accepted and ignored: the
        device delivers every frame sent to it."""
        self._bus = None
        if device is None or isinstance(device, str):
            if socket_path is None:
                raise ValueError("give an open venet device or a socket_path")
            self._bus = frontend.connect(socket_path)
            try:
                device = self._bus.open(device if isinstance(device, str) else iface)
            except BaseException:
                self._bus.close()
                raise
        self.device = device
        self.ins = self.outs = None
        self.iface = iface or device.name
        self.promisc = True
        self.basecls = Ether

    def fileno(self):
        return self.device.fileno()

    def send(self, x):
        sx = bytes(x)
        if isinstance(x, Packet):
            try:
                x.sent_time = time.time()
            except AttributeError:
                pass
        self.device.send(sx)
        return len(sx)

    def recv_raw(self, x=65535):
        frame = self.device.recv_nowait()
        if frame is None:
            return None, None, None
        return self.basecls, frame, time.time()

    @staticmethod
    def select(sockets, remain=conf.recv_poll_rate):
        ready = []
        waiting = []
        for s in sockets:
            if isinstance(s, VenetSocket):
                # arm() asks to be kicked; True = a frame is already
                # waiting (in the ring, or cut from a GSO frame).
                (ready if s.device.arm() else waiting).append(s)
            else:
                waiting.append(s)
        if ready:
            return ready
        try:
            r, _, _ = _select.select(waiting, [], [], remain)
        except InterruptedError:
            return []
        return r

    def close(self):
        if self.closed:
            return
        self.closed = True
        if self._bus is not None:
            self._bus.close()
