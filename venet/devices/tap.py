"""Tap devices: opened with the tun ioctls, configured with pyroute2.

The tap is opened with TUNSETIFF (IFF_TAP | IFF_NO_PI) without TUNSETPERSIST,
so a tap this process creates disappears when its fd is closed, even if the
process is killed.  An existing (persistent) tap is attached to and left in
place.  Everything happens in the caller's current network namespace.
"""
import errno
import fcntl
import os
import re
import struct

from pyroute2 import IPRoute

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
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
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError as e:
        os.close(fd)
        hint = {errno.EBUSY: " (another process has it open)",
                errno.EINVAL: " (it exists but is not a single-queue tap)",
                errno.EPERM: " (needs CAP_NET_ADMIN)"}.get(e.errno, "")
        raise TapError(f"cannot open tap {name}: {e.strerror}{hint}") from None
    return fd, not existed


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
