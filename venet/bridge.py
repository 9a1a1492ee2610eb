"""The venet-tap backend: owns tap devices, serves one bus on a control
socket, and runs one Cython pump thread per device a frontend brought up.

Connection states: new -> hello'd -> (per device) open -> registered -> up.
Malformed or out-of-order messages close the connection with a logged
reason; refused requests (unknown device, device busy) get an ERROR reply.
When a frontend goes away (close, crash, kill -9), its devices are reset:
pump stopped, memory unmapped, ready for the next frontend.
"""
import logging
import os
import selectors
import socket
import stat
import struct
import threading

import ioq
from venet import abi, control, placement
from venet.control import ProtocolError, field
from venet.devices import tap as taplib
from venet.devices._pump import Pump

log = logging.getLogger("venet.bridge")


class DeviceError(Exception):
    pass


class Device:
    """One virtual-ethernet device of the bus, backed by a tap.

    The port fd may also be one end of a datagram socketpair standing in
    for the tap (tests without root): no tun ioctls are made then, and no
    offload is offered.
    """

    # How long reset/linkdown wait for the pump thread.  A pump that does
    # not stop in time is parked: its memory stays mapped while it lives.
    STOP_TIMEOUT = 5.0

    def __init__(self, name, tap_name, tap_fd, created, mac, mtu, poll_us=0,
                 offloads=abi.OFFLOAD_CAPS, cpu=placement.AUTO):
        self.name = name
        self.tap_name = tap_name
        self.tap_fd = tap_fd
        self.created = created
        self.mac = mac
        self.mtu = mtu
        self.poll_us = poll_us
        self.cpu = cpu              # --cpu: N, "auto" or "any" (venet/placement.py)
        self.pin = None             # the pump thread's CPU from its start (None: the scheduler's)
        self.owner = None
        self.caps = {}
        self.region = None
        self.pump = None
        self.thread = None
        self.evq = None
        self.link = False
        self.totals = {}            # counters of earlier sessions
        self.parked = []            # [thread, pump, region] of pumps that did not stop in time
        self.pumps_parked = 0
        self._stuck = False         # the last pump was parked: the region must outlive it
        self.is_tap = tap_fd >= 0 and not stat.S_ISSOCK(os.fstat(tap_fd).st_mode)
        # What this device offers per capability group: SG chains always,
        # offloads as far as the kernel's tun supports them.
        if self.is_tap:
            offloads = abi.consistent_caps(offloads & taplib.supported_offloads(tap_fd))
        else:
            offloads = 0
        self.offered = {abi.CAP_GROUP_SG: abi.CAP_SG | offloads,
                        abi.CAP_GROUP_EVENTQ: abi.CAP_EVQ_LINKSTATE | abi.CAP_EVQ_TXC}

    @property
    def offloads(self):
        """The negotiated offload bits (SG group)."""
        return abi.consistent_caps(self.caps.get(abi.CAP_GROUP_SG, 0)) & abi.OFFLOAD_CAPS

    def describe(self):
        return {"name": self.name, "type": abi.DEVICE_TYPE, "mac": self.mac, "mtu": self.mtu,
                "busy": self.owner is not None, "link": self.link,
                "offloads": abi.cap_names(self.offered[abi.CAP_GROUP_SG] & abi.OFFLOAD_CAPS)}

    def register(self, fds):
        self._reap()
        if len(fds) != 1 + 2 * abi.NRINGS:
            raise DeviceError(f"register needs 1 memfd and {abi.NRINGS} doorbell pairs, "
                              f"got {len(fds)} fds")
        pairs = [(fds[1 + 2 * i], fds[2 + 2 * i]) for i in range(abi.NRINGS)]
        try:
            # The backend's roles: every fd is checked for what it must be,
            # and the doorbells it rings are sockets it sends to without
            # ever blocking, whatever the frontend does to them.
            region = ioq.Region.attach(fds[0], pairs, roles=abi.BACKEND_ROLES)
        except ioq.RegionError as e:
            raise DeviceError(f"memory refused: {e}") from None
        except OSError as e:
            raise DeviceError(f"memory refused: {e.strerror or e}") from None
        try:
            if region.buf_size < abi.MIN_BUF_SIZE:
                # Frames longer than a buffer chain slots, but the first
                # buffer must hold the offload record and an Ethernet header.
                raise DeviceError(f"buffers of {region.buf_size} bytes are smaller than the "
                                  f"{abi.MIN_BUF_SIZE} a venet device needs")
            if region.size > 64 << 20:
                raise DeviceError(f"region of {region.size} bytes exceeds the 64 MiB per-device limit")
            if region.nrings != abi.NRINGS:
                raise DeviceError(f"region has {region.nrings} rings; a venet device has {abi.NRINGS}")
        except BaseException:
            region.close()
            raise
        self.region = region

    def linkup(self):
        if self.region is None:
            raise DeviceError("register memory before link up")
        if self.pump is not None:
            return
        self._reap()
        if self._stuck:
            raise DeviceError(f"device {self.name}: its previous pump has not stopped; "
                              f"link up refused until it does")
        caps = self.offloads
        try:
            tx = self.region.consumer(abi.RING_TX, max_len=abi.META_SIZE + abi.max_frame(self.mtu, caps))
            rx = self.region.producer(abi.RING_RX)
            self.evq = self.region.producer(abi.RING_EVQ)
        except (ioq.IoqError, ValueError) as e:
            raise DeviceError(f"rings refused: {e}") from None
        txc = self.caps.get(abi.CAP_GROUP_EVENTQ, 0) & abi.CAP_EVQ_TXC
        self.pin, bulk = placement.pump_args(self.cpu, self.name, placement.BRIDGE)
        try:
            self.pump = Pump(tx, rx, self.tap_fd, poll_us=self.poll_us, mtu=self.mtu, caps=caps,
                             txc_evq=self.evq if txc else None, bulk_cpu=bulk)
        except ValueError as e:
            raise DeviceError(str(e)) from None
        except OSError as e:
            raise DeviceError(f"pump refused: {e.strerror or e}") from None
        # The kernel may now hand the tap's reader what the frontend accepts.
        if self.is_tap:
            taplib.set_offloads(self.tap_fd, caps)
        # The event queue has one producer at a time: this thread before the
        # pump starts and after it has stopped, the pump (TXC) in between.
        self.event(abi.EV_LINKSTATE, 1)
        # The thread gets its pump, not the device: linkdown may drop
        # self.pump while a parked thread still runs it.
        self.thread = threading.Thread(target=self._run, args=(self.pump,), name=f"pump-{self.name}",
                                       daemon=True)
        self.thread.start()
        self.link = True

    def _run(self, pump):
        placement.pin_this_thread(self.pin, f"device {self.name}'s pump")
        result = pump.run()
        if result == "broken":
            log.warning("device %s: the frontend corrupted a ring index; link down", self.name)
            self.link = False

    def event(self, etype, a=0, b=0):
        if self.evq is not None and (self.caps.get(abi.CAP_GROUP_EVENTQ, 0) & abi.CAP_EVQ_LINKSTATE
                                     or etype != abi.EV_LINKSTATE):
            try:
                self.evq.put(struct.pack("<IIQQ", etype, abi.EVENT_SIZE, a, b), timeout=0)
            except ioq.IoqError:
                pass

    def linkdown(self):
        if self.pump is not None:
            self.pump.stop()
            self.thread.join(timeout=self.STOP_TIMEOUT)
            if self.thread.is_alive():
                # Never two producers on the event queue: no event then.  And
                # never unmap memory a live thread may touch: the region is
                # parked with the thread until it ends (reset, _reap).
                log.error("device %s: the pump did not stop within %.1f s; link-down event not "
                          "sent, its memory stays mapped until it does", self.name, self.STOP_TIMEOUT)
                self.parked.append([self.thread, self.pump, None])
                self.pumps_parked += 1
                self._stuck = True
            else:
                self.event(abi.EV_LINKSTATE, 0)
                self._fold_stats(self.pump.stats())
            self.pump = None
            self.thread = None
            if self.is_tap:
                try:
                    taplib.set_offloads(self.tap_fd, 0)
                except taplib.TapError as e:
                    log.warning("device %s: %s", self.name, e)
        self.link = False

    def reset(self):
        """Back to unowned: stop the pump, unmap the frontend's memory
        (unless a pump that did not stop may still touch it: parked)."""
        self.linkdown()
        self.evq = None
        if self.region is not None:
            if self._stuck and self.parked and self.parked[-1][2] is None:
                self.parked[-1][2] = self.region
            else:
                self.region.close()
            self.region = None
        self._stuck = False
        self.owner = None
        self.caps = {}
        self._reap()

    def _reap(self):
        """Release what parked pumps held once their threads have ended."""
        keep = []
        for entry in self.parked:
            thread, pump, region = entry
            if thread.is_alive():
                keep.append(entry)
                continue
            self._fold_stats(pump.stats())
            if region is not None:      # else it is still this session's: reset closes it
                region.close()
            log.warning("device %s: a parked pump has ended; its memory is released", self.name)
        self.parked = keep
        if not any(e[2] is None for e in keep):
            self._stuck = False

    def _fold_stats(self, s):
        for k, v in _flatten(s).items():
            self.totals[k] = self.totals.get(k, 0) + v

    def stats(self):
        out = dict(self.totals)
        out["pumps_parked"] = self.pumps_parked
        if self.pump is not None:
            for k, v in _flatten(self.pump.stats()).items():
                out[k] = out.get(k, 0) + v
        return {"device": self.name, "tap": self.tap_name, "link": self.link,
                "busy": self.owner is not None, "counters": out}

    def close(self):
        self.reset()
        if self.parked:
            # A live pump still uses the tap fd's number: closing it could
            # hand that number to another file under the pump.
            log.error("device %s: a pump has not stopped; its tap stays open", self.name)
            return
        if self.tap_fd >= 0:
            os.close(self.tap_fd)
            self.tap_fd = -1


def _flatten(s, prefix=""):
    out = {}
    for k, v in s.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        elif isinstance(v, (int, bool)) and not isinstance(v, str):
            out[f"{prefix}{k}"] = int(v)
    return out


class Connection:
    def __init__(self, sock):
        self.sock = sock
        self.hello = False
        self.devices = {}           # name -> Device opened by this connection


class Bridge:
    """One bus on one control socket."""

    def __init__(self, socket_path, devices, group=None, bus="default"):
        self.path = socket_path
        self.devices = {d.name: d for d in devices}
        self.group = group
        self.bus = bus
        self.sel = selectors.DefaultSelector()
        self.listener = None
        self.conns = {}
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def listen(self):
        if os.path.exists(self.path) or os.path.islink(self.path):
            if stat.S_ISSOCK(os.lstat(self.path).st_mode) and _alive(self.path):
                raise OSError(f"socket path {self.path} is in use by a running bridge")
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise OSError(f"socket path {self.path} exists and is not a socket")
            os.unlink(self.path)     # stale socket of a dead bridge
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.path)
        finally:
            os.umask(old)
        if self.group is not None:
            os.chown(self.path, -1, self.group)
            os.chmod(self.path, 0o660)
        else:
            os.chmod(self.path, 0o600)
        s.listen(16)
        s.setblocking(False)
        self.listener = s
        self.sel.register(s, selectors.EVENT_READ, "listen")
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")

    def stop(self):
        """Ask serve() to return (signal-safe)."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def serve(self):
        while True:
            for key, _ in self.sel.select(timeout=1.0):
                if key.data == "stop":
                    return
                if key.data == "listen":
                    self._accept()
                else:
                    self._service(key.data)

    def _accept(self):
        try:
            sock, _ = self.listener.accept()
        except BlockingIOError:
            return
        conn = Connection(sock)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def _drop(self, conn, reason=None):
        if reason:
            log.warning("closing control connection: %s", reason)
        for dev in conn.devices.values():
            dev.reset()
        conn.devices.clear()
        try:
            self.sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self.conns.pop(conn.sock.fileno(), None)
        conn.sock.close()

    def _service(self, conn):
        try:
            mtype, body, fds = control.recv(conn.sock)
        except control.Disconnected:
            self._drop(conn)
            return
        except (ProtocolError, OSError) as e:
            self._drop(conn, str(e))
            return
        try:
            reply = self._handle(conn, mtype, body, fds)
            control.send(conn.sock, control.REPLY, reply)
        except ProtocolError as e:
            self._drop(conn, f"{control.NAMES.get(mtype, mtype)}: {e}")
        except (DeviceError, taplib.TapError) as e:
            try:
                control.send(conn.sock, control.ERROR, {"error": str(e)})
            except OSError:
                self._drop(conn)
        except OSError:
            self._drop(conn)
        except Exception:
            # A bug of ours must cost one connection, not the bus.
            log.exception("closing control connection after an internal error")
            self._drop(conn)
        finally:
            for fd in fds:
                os.close(fd)

    def _device(self, conn, body):
        name = field(body, "device", str, hi=64)
        dev = conn.devices.get(name)
        if dev is None:
            raise ProtocolError(f"device {name!r} is not open on this connection")
        return dev

    def _handle(self, conn, mtype, body, fds):
        if mtype != control.REGISTER and fds:
            raise ProtocolError("file descriptors sent with a message that takes none")
        if not conn.hello:
            if mtype != control.HELLO:
                raise ProtocolError("the first message must be hello")
            v = field(body, "version", int, lo=0, hi=1 << 16)
            if v != control.VERSION:
                raise ProtocolError(f"frontend speaks version {v}, this bridge {control.VERSION}")
            conn.hello = True
            return {"version": control.VERSION, "bus": self.bus}
        if mtype == control.LIST:
            return {"devices": [d.describe() for d in self.devices.values()]}
        if mtype == control.STATS:
            return {"bus": self.bus, "devices": [d.stats() for d in self.devices.values()]}
        if mtype == control.OPEN:
            name = field(body, "device", str, hi=64)
            dev = self.devices.get(name)
            if dev is None:
                raise DeviceError(f"no device {name!r} on bus {self.bus}")
            if dev.owner is not None:
                raise DeviceError(f"device {name} is in use by another frontend")
            dev.owner = conn
            conn.devices[name] = dev
            return {"device": name, "mac": dev.mac, "mtu": dev.mtu, "version": abi.VERSION}
        dev = self._device(conn, body)
        if mtype == control.NEGCAP:
            gid = field(body, "group", int, lo=0, hi=0xffffffff)
            bits = field(body, "bits", int, lo=0, hi=0xffffffff)
            if dev.link:
                raise DeviceError("capabilities cannot change while the link is up")
            got = bits & dev.offered.get(gid, 0)
            if gid == abi.CAP_GROUP_SG:
                got = abi.consistent_caps(got)
            dev.caps[gid] = got
            return {"group": gid, "bits": got}
        if mtype == control.MACQUERY:
            return {"mac": dev.mac, "mtu": dev.mtu}
        if mtype == control.FLUSHRX:
            # In the original the backend held posted RX buffers and had to
            # hand them back.  Here RX buffers are paired with ring slots
            # the backend publishes at once: it holds none between pump
            # rounds, so there is nothing to return; the frontend drops
            # what is queued on its side.
            return {"held": 0}
        if mtype == control.REGISTER:
            if dev.region is not None:
                raise ProtocolError("memory already registered for this device")
            dev.register(list(fds))      # the region keeps dups; ours are closed below
            return {}
        if mtype == control.LINKUP:
            dev.linkup()
            return {"link": True}
        if mtype == control.LINKDOWN:
            dev.linkdown()
            return {"link": False}
        if mtype == control.CLOSE:
            dev.reset()
            conn.devices.pop(dev.name, None)
            return {}
        raise ProtocolError(f"unknown message type {mtype}")

    def close(self):
        for conn in list(self.conns.values()):
            self._drop(conn)
        for dev in self.devices.values():
            dev.close()
        if self.listener is not None:
            self.sel.unregister(self.listener)
            self.listener.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
        os.close(self._stop_r)
        os.close(self._stop_w)


def _alive(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()
