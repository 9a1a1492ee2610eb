"""Tap devices: opened with the tun ioctls, configured with pyroute2.

The tap is opened with TUNSETIFF (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
without TUNSETPERSIST, so a tap this process creates disappears when its fd
is closed, even if the process is killed.  An existing (persistent) tap is
attached to and left in place.  Everything happens in the caller's current
network namespace.

Every frame read or written carries a 16-byte vnet header (TUNSETVNETHDRSZ:
the 10-byte virtio_net_hdr, then padding), the size of venet's offload
record, so the pump translates it in place.  Offloads start off
(TUNSETOFFLOAD 0: the kernel hands over only whole, checksummed frames);
set_offloads() switches on what a frontend negotiated.
"""
import errno
import fcntl
import os
import re
import struct
import sys

from pyroute2 import IPRoute

from venet import abi

# include/uapi/linux/if_tun.h (the _IOW/_IOR numbers of x86, arm and s390x)
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC
TUNSETCARRIER = 0x400454E2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
TUN_F_UFO, TUN_F_USO4, TUN_F_USO6 = 0x10, 0x20, 0x40
IFNAMSIZ = 16
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class TapError(Exception):
    """A tap that cannot be opened or configured (message is for people)."""


def check_name(name):
    if not name or len(name) >= IFNAMSIZ:
        raise TapError(f"interface name {name!r} must be 1 to {IFNAMSIZ - 1} characters")
    if not _NAME.match(name) or name in (".", ".."):
        raise TapError(f"interface name {name!r} may hold only letters, digits, '_', '.', '-'")
    return name


def link_index(ipr, name):
    idx = ipr.link_lookup(ifname=name)
    return idx[0] if idx else None


def open_tap(name):
    """Open (creating if needed) tap `name`.  Returns (fd, created)."""
    check_name(name)
    with IPRoute() as ipr:
        existed = link_index(ipr, name) is not None
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(f"cannot open /dev/net/tun: {e.strerror}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(),
                                                IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    except OSError as e:
        os.close(fd)
        hint = {errno.EBUSY: " (another process has it open)",
                errno.EINVAL: " (it exists but is not a single-queue tap)",
                errno.EPERM: " (needs CAP_NET_ADMIN)"}.get(e.errno, "")
        raise TapError(f"cannot open tap {name}: {e.strerror}{hint}") from None
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", abi.META_SIZE))
        try:
            # The header's byte order: little-endian, as venet's record.
            fcntl.ioctl(fd, TUNSETVNETLE, struct.pack("i", 1))
        except OSError:
            if sys.byteorder != "little":
                raise
        fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    except OSError as e:
        os.close(fd)
        raise TapError(f"cannot set up the vnet header of tap {name}: {e.strerror}") from None
    return fd, not existed


def tun_offload_flags(caps):
    """The TUNSETOFFLOAD flags for venet SG-group capability bits."""
    caps = abi.consistent_caps(caps)
    f = 0
    if caps & abi.CAP_CSUM:
        f |= TUN_F_CSUM
    if caps & abi.CAP_TSO4:
        f |= TUN_F_TSO4
    if caps & abi.CAP_TSO6:
        f |= TUN_F_TSO6
    if caps & abi.CAP_ECN:
        f |= TUN_F_TSO_ECN
    if caps & abi.CAP_USO:
        f |= TUN_F_USO4 | TUN_F_USO6
    return f


def set_offloads(fd, caps):
    """Let the kernel hand this tap's reader what `caps` allow (partial
    checksums, TSO, USO frames).  Writes accept any valid header anyway."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, tun_offload_flags(caps))
    except OSError as e:
        raise TapError(f"cannot set tap offloads: {e.strerror}") from None


def set_carrier(fd, on):
    """Switch the tap's carrier on or off (TUNSETCARRIER, Linux 4.17+).
    Without carrier the kernel sends nothing to the tap and reports the
    link down (NO-CARRIER) to its users, but the tap keeps its addresses
    and routes: a frontend whose backend went away says so this way, and
    traffic resumes with the carrier, without reconfiguring."""
    try:
        fcntl.ioctl(fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))
    except OSError as e:
        raise TapError(f"cannot switch the tap's carrier {'on' if on else 'off'}: "
                       f"{e.strerror}") from None


def supported_offloads(fd):
    """The offload bits this kernel's tun accepts, probed on `fd` (left
    with offloads off).  UFO is never among them: since Linux 4.14 the
    kernel makes no UFO frames (TUNSETOFFLOAD ignores TUN_F_UFO), so a
    frontend could never be handed one."""
    got = 0
    for bit in (abi.CAP_CSUM, abi.CAP_TSO4, abi.CAP_TSO6, abi.CAP_ECN, abi.CAP_USO):
        want = got | bit | abi.CAP_CSUM | (abi.CAP_TSO4 if bit == abi.CAP_ECN else 0)
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, tun_offload_flags(want))
            got |= bit
        except OSError:
            pass
    fcntl.ioctl(fd, TUNSETOFFLOAD, 0)
    return abi.consistent_caps(got)


def configure(name, *, mtu=None, mac=None, master=None, up=True):
    """Set MTU, MAC, master bridge and state of `name` (pyroute2/netlink)."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            raise TapError(f"interface {name} does not exist")
        kw = {}
        if mtu is not None:
            kw["mtu"] = mtu
        if mac is not None:
            kw["address"] = mac
        if master is not None:
            midx = link_index(ipr, master)
            if midx is None:
                raise TapError(f"master bridge {master} does not exist")
            kw["master"] = midx
        try:
            if kw:
                ipr.link("set", index=idx, **kw)
            if up:
                ipr.link("set", index=idx, state="up")
        except Exception as e:  # pyroute2 raises NetlinkError with the errno text
            raise TapError(f"cannot configure {name}: {e}") from None


def link_info(name):
    """(mac, mtu) of `name`."""
    with IPRoute() as ipr:
        idx = link_index(ipr, name)
        if idx is None:
            raise TapError(f"interface {name} does not exist")
        link = ipr.get_links(idx)[0]
        return link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU")
