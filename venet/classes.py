"""The venet device classes of the vbus: `venet-tap`, `venet-loopback`,
`venet-null` and `venet-switch` (venet/devices/switch.py), all presenting the
"virtual-ethernet" interface, so the one frontend (venet.frontend) drives
any of them with the same code.

Each instance wraps a `venet.bridge.Device` (the pump and its rings); the
daemon puts that Device in the control plane of every bus it is linked to.

venet-loopback's port is one AF_UNIX datagram socket connected to itself:
what the pump writes (a frame behind its vnet header, one datagram) is
queued in that socket's own receive queue and read back by the same pump.
The kernel keeps the bounded queue and the readiness for epoll; no thread,
no Python object per frame.  A connected datagram socket takes datagrams
from its peer only (the kernel refuses any other sender), so nothing but
the pump can put a frame into it.
"""
import hashlib
import os
import re
import socket
import threading

from vbus import Attr, DeviceClass, DeviceInstance
from vbus.errors import DeviceError as VbusDeviceError
from venet import abi, placement

INTERFACE = abi.DEVICE_TYPE          # "virtual-ethernet"
LOOP_QUEUE_BYTES = 1 << 20           # the loopback's queue, per direction of its one socket


def _mac(text):
    if text == "":
        return text
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", text):
        raise ValueError(f"{text!r} is not a MAC address like 02:00:00:00:00:01")
    if int(text[:2], 16) & 1:
        raise ValueError(f"{text} is a multicast address; a device needs a unicast one")
    if text.replace(":", "") == "000000000000":
        raise ValueError("the all-zero MAC address is not allowed")
    return text.lower()


def _offloads(text):
    return abi.cap_names(abi.parse_offloads(text))


def _cpu(text):
    if text in (placement.AUTO, placement.ANY):
        return text
    try:
        v = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not auto, any or a CPU number") from None
    if v < 0:
        raise ValueError("a CPU number must not be negative")
    return str(v)


def _ifname(text):
    if text and (len(text) > 15 or not re.fullmatch(r"[A-Za-z0-9_.-]+", text)):
        raise ValueError(f"{text!r} is not an interface name (1 to 15 of letters, digits, _ . -)")
    return text


def _vhost_user(text):
    """`PATH[,client]`: a vhost-user socket through which a virtio driver
    reaches the device (docs/vhost-user.md); empty: none."""
    if text == "":
        return text
    from venet.vhost.backend import parse_spec
    path, client = parse_spec(text)
    return path + (",client" if client else "")


_VHOST = Attr("vhost_user", str, "", max_len=120, check=_vhost_user, live=True,
              doc="PATH[,client]: serve the device to a virtio driver over vhost-user (empty: none)")


def default_mac(name):
    """A stable locally administered unicast MAC for a device name."""
    h = hashlib.sha256(name.encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


_MTU = dict(min=abi.MIN_MTU, max=abi.MAX_MTU)


class _Instance(DeviceInstance):
    """A vbus device instance holding a bridge.Device."""

    # The class's live attributes (Attr live=True); _started sets them.
    live = frozenset()

    def __init__(self, dev):
        self.dev = dev
        self.vhost = None           # the vhost-user Connector, while vhost_user is set

    def check_closed(self, name):
        """A non-live attribute changes only while no frontend or virtio
        driver holds the device.  The daemon's control plane, not the vbus
        registry, tracks who opened a venet device: the device's owner is
        the one record of it."""
        if name not in self.live and self.dev.owner is not None:
            raise VbusDeviceError(f"attribute '{name}' of device '{self.dev.name}' can change only "
                                  f"while the device is closed (it is open)")

    def vhost_user(self, value):
        """Serve the device over vhost-user at `value` (PATH[,client]), or stop."""
        from venet.vhost.backend import Connector, parse_spec
        if self.vhost is not None:
            self.vhost.close()
            self.vhost = None
        if value:
            path, client = parse_spec(value)
            try:
                # The engine takes the device's poll_us (live) at each start.
                self.vhost = Connector(self.dev, path, client=client).start()
            except OSError as e:
                raise VbusDeviceError(f"vhost_user {path}: {e.strerror or e}") from None

    def set(self, name, value):
        self.check_closed(name)
        if name == "vhost_user":
            self.vhost_user(value)
        elif name == "mac":
            self.dev.mac = value or default_mac(self.dev.name)
        elif name == "mtu":
            self.dev.mtu = value
        elif name == "poll_us":
            self.dev.poll_us = value
        elif name == "cpu":
            self.dev.cpu = value if value in (placement.AUTO, placement.ANY) else int(value)

    def reset(self):
        if self.vhost is not None:
            self.vhost.drop("the device was reset")
        self.dev.reset()

    def counters(self):
        c = self.dev.stats()["counters"]
        out = {k: v for k, v in c.items() if "." not in k}
        if self.vhost is not None:
            out.update({"vhost_" + k: v for k, v in self.vhost.stats().items()})
        return out

    def destroy(self):
        if self.vhost is not None:
            self.vhost.close()
            self.vhost = None
        self.dev.close()


def loop_port():
    """The loopback's port: a datagram socket connected to itself (its own
    autobound abstract address).  Returns the fd, non-blocking."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        s.bind("")                      # autobind: a unique abstract address
        s.connect(s.getsockname())
        # A datagram larger than the send buffer is refused: room for the
        # largest frame, and a queue of many.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, LOOP_QUEUE_BYTES)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LOOP_QUEUE_BYTES)
        return s.detach()
    except BaseException:
        s.close()
        raise


class LoopbackClass(DeviceClass):
    name = "venet-loopback"
    interface = INTERFACE
    multi_open = False
    doc = "what a frontend sends comes back to it (no root needed)"
    attrs = (
        Attr("mtu", int, 1500, **_MTU, doc="largest payload"),
        Attr("mac", str, "", max_len=17, check=_mac, doc="the device's MAC (empty: derived from the name)"),
        _VHOST,
    )

    def create(self, name, attrs):
        from venet import bridge
        fd = loop_port()
        try:
            dev = bridge.Device(name, "loopback", fd, False, attrs["mac"] or default_mac(name),
                                attrs["mtu"], cpu=placement.ANY)
        except BaseException:
            os.close(fd)
            raise
        # Every offload is offered: a frame comes back to the frontend that
        # sent it, which negotiated the same offloads, so a GSO super-frame or
        # a partial checksum goes back as it came, its record unchanged.
        dev.offered[abi.CAP_GROUP_SG] = abi.CAP_SG | abi.OFFLOAD_CAPS
        return _started(_Instance(dev), attrs, self)


NULL_ETHERTYPE = 0x88B5             # IEEE 802 local experimental: never a real protocol's frame
NULL_MIN_FRAME = 60                 # the shortest Ethernet frame (no FCS)


def null_frame(mac, length):
    """The frame a venet-null source gives: broadcast from `mac`, the local
    experimental EtherType, zero payload; `length` bytes (no FCS)."""
    if length == 0:
        return b""
    src = bytes.fromhex(mac.replace(":", ""))
    return (b"\xff" * 6 + src + NULL_ETHERTYPE.to_bytes(2, "big")).ljust(length, b"\0")


class NullClass(DeviceClass):
    name = "venet-null"
    interface = INTERFACE
    multi_open = False
    doc = "drops what it is sent; with source=LEN gives frames without end (benchmarks; no root)"
    attrs = (
        Attr("mtu", int, 1500, **_MTU, doc="largest payload"),
        Attr("mac", str, "", max_len=17, check=_mac, doc="the device's MAC (empty: derived from the name)"),
        Attr("source", int, 0, min=0, max=abi.MAX_MTU + 14,
             doc="0: a sink only; LEN (60..mtu+14): also a source of LEN-byte frames (broadcast, "
                 "EtherType 0x88b5), given as fast as they are taken"),
        _VHOST,
    )

    def create(self, name, attrs):
        from venet import bridge
        length, mtu = attrs["source"], attrs["mtu"]
        _check_source(length, mtu)
        mac = attrs["mac"] or default_mac(name)
        fd = null_port_fd(length)
        try:
            dev = bridge.Device(name, "null", fd, False, mac, mtu, cpu=placement.ANY,
                                null_frame=null_frame(mac, length))
        except BaseException:
            os.close(fd)
            raise
        # It accepts any frame (it drops them) and gives plain ones only.
        dev.offered[abi.CAP_GROUP_SG] = abi.CAP_SG | abi.OFFLOAD_CAPS
        return _started(_NullInstance(dev), attrs, self)


def _check_source(length, mtu):
    if length and not NULL_MIN_FRAME <= length <= mtu + 14:
        raise VbusDeviceError(f"source {length}: a frame is {NULL_MIN_FRAME}..{mtu + 14} bytes "
                              f"with mtu {mtu} (0: no source)")


def null_port_fd(length):
    """venet-null's port fd: an eventfd never read or written after this,
    always readable for a source (length > 0), never for a sink
    (venet/devices/null_port.pxd)."""
    return os.eventfd(1 if length else 0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


class _NullInstance(_Instance):
    """venet-null: `source`, `mac` and `mtu` change while it is closed (each
    pump or engine copies the frame when it starts)."""

    def set(self, name, value):
        self.check_closed(name)
        source = len(self.dev.null_frame)
        if name == "source":
            _check_source(value, self.dev.mtu)
            source = value
        elif name == "mtu":
            _check_source(source, value)
        super().set(name, value)
        if name in ("source", "mac"):
            self.dev.null_frame = null_frame(self.dev.mac, source)
            # The fd's readiness follows: drained, then one for a source.
            try:
                os.eventfd_read(self.dev.tap_fd)
            except BlockingIOError:
                pass
            if source:
                os.eventfd_write(self.dev.tap_fd, 1)


def _started(inst, attrs, cls):
    """The instance of a `cls` device, serving vhost-user if its attributes
    say so."""
    inst.live = frozenset(a.name for a in cls.attrs if a.live)
    if attrs.get("vhost_user"):
        try:
            inst.vhost_user(attrs["vhost_user"])
        except BaseException:
            inst.destroy()
            raise
    return inst


def _in_netns(netns, fn):
    """Run fn in network namespace `netns` (a name under /var/run/netns)
    on a thread of its own: setns moves the calling thread only, so the
    daemon's other threads stay where they are."""
    if not netns:
        return fn()
    out = {}

    def run():
        try:
            from pyroute2 import netns as nsmod
            try:
                nsmod.setns(netns, flags=0)
            except OSError as e:
                raise VbusDeviceError(f"cannot enter network namespace {netns}: {e.strerror}") from None
            out["v"] = fn()
        except BaseException as e:
            out["e"] = e
    t = threading.Thread(target=run, name="venet-netns")
    t.start()
    t.join()
    if "e" in out:
        raise out["e"]
    return out["v"]


class TapClass(DeviceClass):
    name = "venet-tap"
    interface = INTERFACE
    multi_open = False
    doc = "a tap device (root)"
    attrs = (
        Attr("ifname", str, "", max_len=15, check=_ifname, doc="the tap (empty: the device's name)"),
        Attr("netns", str, "", pattern=r"[A-Za-z0-9_.-]*", max_len=64, doc="network namespace of the tap"),
        Attr("mtu", int, 1500, **_MTU),
        Attr("mac", str, "", max_len=17, check=_mac, doc="empty: the kernel's"),
        Attr("offloads", str, "all", max_len=64, check=_offloads),
        Attr("poll_us", int, 0, min=0, max=1_000_000, live=True),
        Attr("cpu", str, placement.AUTO, max_len=8, check=_cpu),
        _VHOST,
    )

    def create(self, name, attrs):
        from venet import bridge
        from venet.devices import tap as taplib
        ifname = attrs["ifname"] or name
        if len(ifname) > 15:
            raise VbusDeviceError(f"device name '{name}' is too long for a tap: set ifname")

        def make():
            try:
                fd, created = taplib.open_tap(ifname)
            except taplib.TapError as e:
                raise VbusDeviceError(str(e)) from None
            try:
                taplib.configure(ifname, mtu=attrs["mtu"], mac=attrs["mac"] or None)
                mac, mtu = taplib.link_info(ifname)
            except BaseException as e:
                os.close(fd)
                if isinstance(e, taplib.TapError):
                    raise VbusDeviceError(str(e)) from None
                raise
            return fd, created, mac, mtu
        fd, created, mac, mtu = _in_netns(attrs["netns"], make)
        cpu = attrs["cpu"]
        try:
            dev = bridge.Device(name, ifname, fd, created, mac, mtu, poll_us=attrs["poll_us"],
                                offloads=abi.parse_offloads(attrs["offloads"]),
                                cpu=cpu if cpu in (placement.AUTO, placement.ANY) else int(cpu))
        except BaseException:
            os.close(fd)
            raise
        return _started(_TapInstance(dev, attrs["netns"]), attrs, self)


class _TapInstance(_Instance):
    def __init__(self, dev, netns):
        super().__init__(dev)
        self.netns = netns

    def set(self, name, value):
        from venet.devices import tap as taplib
        self.check_closed(name)
        if name in ("mtu", "mac"):
            # Only while closed (these attributes are not live): the tap is idle.
            def apply():
                try:
                    taplib.configure(self.dev.tap_name, **{name: value or None})
                    return taplib.link_info(self.dev.tap_name)
                except taplib.TapError as e:
                    raise VbusDeviceError(str(e)) from None
            self.dev.mac, self.dev.mtu = _in_netns(self.netns, apply)
        elif name in ("ifname", "netns", "offloads"):
            raise VbusDeviceError(f"attribute '{name}' is fixed once the device exists; "
                                  f"destroy and create it again")
        else:
            super().set(name, value)


def _uplink(text):
    from venet.devices.switch import parse_uplink
    got = parse_uplink(text)
    if got is not None:
        _ifname(got[0])
        if got[1] and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", got[1]):
            raise ValueError(f"{got[1]!r} is not a network namespace name")
    return text


class SwitchClass(DeviceClass):
    name = "venet-switch"
    interface = INTERFACE
    multi_open = True
    doc = "a learning L2 switch: every frontend that opens it gets a port (no root needed)"
    attrs = (
        Attr("mtu", int, 1500, **_MTU, doc="largest payload, the same on every port"),
        Attr("offloads", str, "all", max_len=64, check=_offloads,
             doc="what ports may negotiate (UFO never)"),
        Attr("mac_table_size", int, 4096, min=1, max=1 << 20, doc="MACs learned at most"),
        Attr("ageing_s", int, 300, min=1, max=1_000_000, live=True,
             doc="seconds a learned MAC lives unseen"),
        Attr("uplink", str, "", max_len=96, check=_uplink,
             doc="tap:NAME[@NETNS]: a tap as one more port (root)"),
        Attr("poll_us", int, 0, min=0, max=1_000_000, live=True,
             doc="busy-poll up to this long after work before sleeping"),
        Attr("cpu", str, placement.ANY, max_len=8, check=_cpu,
             doc="the CPU whose worker serves the switch (any: the least loaded)"),
    )

    def create(self, name, attrs):
        from venet.devices.switch import SwitchDevice
        dev = SwitchDevice(name, mtu=attrs["mtu"], offloads=abi.parse_offloads(attrs["offloads"]),
                           mac_table_size=attrs["mac_table_size"], ageing_s=attrs["ageing_s"],
                           poll_us=attrs["poll_us"],
                           cpu=None if attrs["cpu"] in (placement.AUTO, placement.ANY) else int(attrs["cpu"]))
        try:
            if attrs["uplink"]:
                _add_uplink(dev, attrs["uplink"])
        except BaseException:
            dev.close()
            raise
        return _SwitchInstance(dev, attrs)


def _add_uplink(dev, text):
    from venet.devices import tap as taplib
    from venet.devices.switch import parse_uplink
    ifname, netns = parse_uplink(text)

    def make():
        try:
            fd, _ = taplib.open_tap(ifname)
        except taplib.TapError as e:
            raise VbusDeviceError(f"uplink: {e}") from None
        try:
            taplib.configure(ifname, mtu=dev.mtu)
        except BaseException as e:
            os.close(fd)
            if isinstance(e, taplib.TapError):
                raise VbusDeviceError(f"uplink: {e}") from None
            raise
        return fd
    fd = _in_netns(netns, make)
    try:
        dev.set_uplink(fd, ifname, dev.offered[abi.CAP_GROUP_SG])
    except BaseException:
        os.close(fd)
        raise


class _SwitchInstance(DeviceInstance):
    def __init__(self, dev, attrs):
        self.dev = dev
        self.attrs = dict(attrs)

    def set(self, name, value):
        if name == "ageing_s":
            self.dev.engine.set_ageing(value)
        elif name == "poll_us":
            self.dev.engine.set_poll(value)
        elif name in ("mtu", "mac_table_size", "offloads", "uplink", "cpu"):
            raise VbusDeviceError(f"attribute '{name}' of a switch is fixed once the device exists; "
                                  f"destroy and create it again")

    def reset(self):
        self.dev.reset()

    def counters(self):
        flat, per = self.dev.counters()
        out = dict(flat)
        for pid, s in per.items():
            for k, v in s.items():
                if v:
                    out[f"port{pid}.{k}"] = v
        return out

    def destroy(self):
        self.dev.close()
