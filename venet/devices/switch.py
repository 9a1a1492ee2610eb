"""The venet-switch's control plane: a device many connections open at
once (multi_open), each connection's OPEN giving it a port of its own on
the switch's C engine (venet/devices/_switch.pyx).

A SwitchPort has the interface of a single-owner bridge.Device (name, mac,
mtu, offered, caps, region, link; register, linkup, linkdown, reset), so
the bridge drives a port with the same code as a tap; only OPEN differs
(bridge.Bridge._handle asks a multi_open device for a port).  The switch
may be in the control planes of several buses: their frontends all get
ports on the same engine.
"""
import hashlib
import json
import logging
import os
import threading

import ioq
from venet import abi
from venet.devices._switch import Switch

log = logging.getLogger("venet.switch")

# The offloads a switch port may negotiate: every one the engine passes
# whole or segments, not UFO (IP fragmentation is not done here, and no
# kernel since 4.14 makes UFO frames).
SWITCH_OFFLOADS = abi.OFFLOAD_CAPS & ~abi.CAP_UFO


def port_mac(device, port_id):
    """A stable locally administered unicast MAC for port `port_id` of a switch."""
    h = hashlib.sha256(f"{device}/{port_id}".encode()).digest()
    return "02:" + ":".join(f"{b:02x}" for b in h[:5])


# A STATS page is one control message of at most 64 KiB (docs/abi.md)
# holding as many devices as fit, so a switch's per-port detail is kept to
# a share of it: the busiest ports, as long as their counters fit.  Every
# port is still summed in the device's port_* counters, and the admin
# tree (`venet tree --json`) lists every port.
STATS_PORT_BYTES = 16 << 10


def _activity(counters):
    return sum(v for k, v in counters.items()
               if k in ("rx_frames", "tx_frames") or k.startswith("drop_"))


def port_detail(per, budget=STATS_PORT_BYTES):
    """({port: its non-zero counters}, ports left out): the busiest ports
    (frames and drops) first, then by id, while their JSON fits `budget`
    bytes."""
    order = sorted(per.items(), key=lambda kv: (-_activity(kv[1]), isinstance(kv[0], str), kv[0]))
    shown, used = {}, 0
    for k, s in order:
        entry = {n: v for n, v in s.items() if v}
        size = len(json.dumps({str(k): entry}, separators=(",", ":")))
        if used + size > budget:
            break
        shown[str(k)] = entry
        used += size
    return shown, len(per) - len(shown)


def parse_uplink(text):
    """'tap:NAME[@NETNS]' -> (NAME, NETNS or ''); '' -> None.  ValueError
    with the accepted form otherwise."""
    if not text:
        return None
    kind, _, rest = text.partition(":")
    name, _, netns = rest.partition("@")
    if kind != "tap" or not name:
        raise ValueError(f"{text!r} is not an uplink: write tap:NAME or tap:NAME@NETNS")
    return name, netns


class SwitchDevice:
    """One venet-switch: the engine, its ports, an optional uplink tap."""

    multi_open = True
    owner = None                    # never owned: every OPEN gets a port

    def __init__(self, name, mtu=1500, offloads=SWITCH_OFFLOADS, mac_table_size=4096, ageing_s=300,
                 poll_us=0, cpu=None):
        self.name = name
        self.cpu = cpu              # the CPU whose worker serves the engine (None: least loaded)
        self._pool = None
        self.mtu = mtu
        self.mac = port_mac(name, "switch")
        self.tap_name = "switch"
        self.engine = Switch(mtu=mtu, mac_table_size=mac_table_size, ageing_s=ageing_s)
        self.offered = {abi.CAP_GROUP_SG: abi.CAP_SG | abi.consistent_caps(offloads & SWITCH_OFFLOADS),
                        abi.CAP_GROUP_EVENTQ: abi.CAP_EVQ_LINKSTATE | abi.CAP_EVQ_TXC}
        self.ports = {}             # port id -> SwitchPort
        self._ids = 0
        self.totals = {}            # counters of removed ports, summed
        self.uplink = None          # (slot, fd, ifname)
        self._lock = threading.Lock()
        self.engine.set_poll(poll_us)

    # ---- the worker serving the engine --------------------------------

    @property
    def pool(self):
        return self._pool

    @pool.setter
    def pool(self, pool):
        """The bus's worker pool (set by the bridge or the daemon that
        serves the device): the engine becomes one of its tasks."""
        self._pool = pool
        if pool is not None:
            self._serve()

    def _serve(self):
        if self.engine.worker is None:
            from venet import bridge
            self.engine.serve(self._pool or bridge.shared_pool(), cpu=self.cpu)

    # ---- what the bridge asks of a device -----------------------------

    @property
    def link(self):
        return any(p.link for p in list(self.ports.values()))

    def open(self, conn):
        with self._lock:
            self._ids += 1
            port = SwitchPort(self, conn, self._ids)
            self.ports[port.id] = port
        return port

    def describe(self):
        return {"name": self.name, "type": abi.DEVICE_TYPE, "mac": self.mac, "mtu": self.mtu,
                "busy": False, "link": self.link,
                "offloads": abi.cap_names(self.offered[abi.CAP_GROUP_SG] & abi.OFFLOAD_CAPS)}

    def counters(self):
        """Flat counters: the engine's, the sum over every port (live and
        gone) as port_*, and each live port's as portN.*."""
        out = dict(self.engine.stats())
        total = dict(self.totals)
        per = {}
        for port in list(self.ports.values()):
            s = port.counters()
            per[port.id] = s
            for k, v in s.items():
                total[k] = total.get(k, 0) + v
        if self.uplink is not None:
            s = self.engine.port_stats(self.uplink[0])
            per["uplink"] = s
            for k, v in s.items():
                total[k] = total.get(k, 0) + v
        for k, v in total.items():
            out["port_" + k] = v
        return out, per

    def stats(self):
        flat, per = self.counters()
        ports, omitted = port_detail(per)
        return {"device": self.name, "tap": self.tap_name, "link": self.link, "busy": False,
                "counters": flat, "ports": ports, "ports_omitted": omitted}

    def _gone(self, port, stats):
        with self._lock:
            self.ports.pop(port.id, None)
            for k, v in stats.items():
                self.totals[k] = self.totals.get(k, 0) + v

    def reset(self):
        for port in list(self.ports.values()):
            port.reset()

    # ---- uplink -------------------------------------------------------

    def set_uplink(self, fd, ifname, caps):
        """Add the tap `fd` (taken over: closed with the switch) as a port."""
        from venet.devices import tap as taplib
        caps = abi.consistent_caps(caps & SWITCH_OFFLOADS & taplib.supported_offloads(fd))
        taplib.set_offloads(fd, caps)
        slot = self.engine.add_tap_port(fd, caps)
        self.uplink = (slot, fd, ifname)

    def close(self):
        self.reset()
        if self.uplink is not None:
            slot, fd, _ = self.uplink
            self.engine.remove_port(slot)
            self.uplink = None
            os.close(fd)
        if not self.engine.stop():
            log.error("switch %s: its worker did not let the engine go", self.name)


class SwitchPort:
    """One connection's port on a switch, driven by the bridge as a Device."""

    def __init__(self, dev, conn, port_id):
        self.dev = dev
        self.owner = conn
        self.id = port_id
        self.name = dev.name
        self.mac = port_mac(dev.name, port_id)
        self.mtu = dev.mtu
        self.offered = dev.offered
        self.caps = {}
        self.region = None
        self.evq = None
        self.slot = None
        self.link = False
        self.totals = {}
        self.closed = False

    @property
    def offloads(self):
        return abi.consistent_caps(self.caps.get(abi.CAP_GROUP_SG, 0)) & abi.OFFLOAD_CAPS

    def register(self, fds):
        from venet import bridge
        self.region = bridge.attach_memory(fds)

    def linkup(self):
        from venet import bridge
        if self.region is None:
            raise bridge.DeviceError("register memory before link up")
        if self.slot is not None:
            return
        caps = self.offloads
        try:
            tx = self.region.consumer(abi.RING_TX, max_len=abi.META_SIZE + abi.max_frame(self.mtu, caps))
            rx = self.region.producer(abi.RING_RX)
            evq = self.region.producer(abi.RING_EVQ)
        except (ioq.IoqError, ValueError) as e:
            raise bridge.DeviceError(f"rings refused: {e}") from None
        self.evq = evq
        txc = self.caps.get(abi.CAP_GROUP_EVENTQ, 0) & abi.CAP_EVQ_TXC
        # The event queue has one producer at a time: this thread before
        # the port joins the engine and after it has left, the engine
        # (TXC) in between.
        self.event(abi.EV_LINKSTATE, 1)
        try:
            self.dev._serve()
            self.slot = self.dev.engine.add_ring_port(tx, rx, evq if txc else None, caps)
        except (ValueError, OSError) as e:
            self.event(abi.EV_LINKSTATE, 0)
            raise bridge.DeviceError(f"rings refused: {e}") from None
        self.link = True

    def event(self, etype, a=0, b=0):
        from venet import bridge
        bridge.post_event(self, etype, a, b)

    def linkdown(self):
        if self.slot is not None:
            # When remove_port returns the engine no longer touches our
            # rings: the event queue is ours again, the memory may go.
            s = self.dev.engine.remove_port(self.slot)
            self.slot = None
            for k, v in s.items():
                self.totals[k] = self.totals.get(k, 0) + v
            self.event(abi.EV_LINKSTATE, 0)
        self.link = False

    def counters(self):
        out = dict(self.totals)
        if self.slot is not None:
            try:
                for k, v in self.dev.engine.port_stats(self.slot).items():
                    out[k] = out.get(k, 0) + v
            except KeyError:
                pass
        return out

    def stats(self):
        return {"device": self.name, "tap": f"switch port {self.id}", "link": self.link,
                "busy": True, "counters": self.counters()}

    def reset(self):
        """The connection closed the device or went away: the port leaves
        the switch, its MACs are forgotten, its memory is unmapped."""
        try:
            self.linkdown()
        finally:
            if self.region is not None:
                self.region.close()
            self.region = None
            self.evq = None
            self.caps = {}
            if not self.closed:
                self.closed = True
                self.dev._gone(self, self.counters())
