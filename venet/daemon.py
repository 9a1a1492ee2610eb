"""`venet daemon`: the vbus served live.

One thread serves everything: the admin socket (RUN_DIR/admin.sock, root
only) and one control socket per bus (RUN_DIR/bus/NAME.sock), each bus a
venet.bridge.Bridge whose selector is polled from the daemon's own, so no
client can block another and no lock is needed between admin changes and
bus traffic.  The pumps of every open device, on every bus, are tasks of
one vbus worker pool (`--workers N`, default one per usable CPU): the
daemon's thread count does not grow with its devices.

The registry (vbus.Registry) is the truth; this module is its observer:
a bus created gets its Bridge, a device linked appears in its bus's
control plane, a device unlinked or destroyed while open is taken down
(link-down event, pump stopped) and its frontend's connection closed, so
the frontend's next recv raises LinkDown.

Admin protocol: one JSON object per SOCK_SEQPACKET message,
{"op": OP, ...arguments}; the reply {"ok": true, "result": ...} or
{"ok": false, "error": "one line", "code": "..."}.  See docs/vbus.md.
"""
import errno
import json
import logging
import os
import selectors
import socket
import stat
import time

import vbus
from vbus._worker import Pool
from venet import bridge

log = logging.getLogger("venet.daemon")

ADMIN_MAX_REQUEST = 64 << 10
ADMIN_SNDBUF = 8 << 20          # room for a large tree in one reply
ADMIN_MAX_CONNECTIONS = 16
REFUSE_HOLD = 5.0               # seconds a refused connection waits for its hello
REFUSE_MAX = 64                 # refused connections held at once; more are closed at once


def class_table():
    """Every installed device class (entry points), and venet's own even
    when the package's metadata is not installed (a source checkout)."""
    from venet import classes
    table = vbus.ClassTable.discover()
    for cls in (classes.LoopbackClass, classes.NullClass, classes.TapClass, classes.SwitchClass):
        if cls.name not in table:
            table.register(cls)
    return table


class AdminError(Exception):
    code = "bad-request"


def _alive(path):
    return bridge._alive(path)


def _claim(path):
    """Remove a stale socket at path; refuse a live one or a non-socket."""
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{path} exists and is not a socket")
        if _alive(path):
            raise OSError(f"{path} is in use by a running daemon")
        os.unlink(path)


class Daemon(vbus.Observer):
    def __init__(self, run_dir, registry=None, *, bus_sockets=None, workers=None):
        """`bus_sockets`: {bus name: options} for buses served on a socket of
        their own instead of RUN_DIR/bus/NAME.sock (`venet bridge`): "path",
        and the Bridge's "group", "max_connections", "max_per_process".
        Such a socket keeps the Bridge's file mode (0600, or 0660 for its
        group), so the kernel refuses other users before access rules do.
        `workers`: the pool's size (None: one per usable CPU)."""
        self.workers = workers
        self.pool = None
        self.run_dir = os.path.abspath(run_dir)
        self.bus_dir = os.path.join(self.run_dir, "bus")
        self.admin_path = os.path.join(self.run_dir, "admin.sock")
        self.reg = registry if registry is not None else vbus.Registry(class_table())
        self.bus_sockets = dict(bus_sockets or {})
        self.bridges = {}
        self.sel = selectors.DefaultSelector()
        self.admin = None
        self.admins = {}
        self.refusing = {}          # fd -> (socket, reason, deadline): refused, awaiting hello
        self._stop_r, self._stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.sel.register(self._stop_r, selectors.EVENT_READ, "stop")

    # ---- life ------------------------------------------------------------

    def start(self):
        if self.pool is None:
            self.pool = Pool(self.workers)
        os.makedirs(self.run_dir, mode=0o755, exist_ok=True)
        os.makedirs(self.bus_dir, mode=0o755, exist_ok=True)
        os.chmod(self.bus_dir, 0o755)       # frontends of any user reach their bus socket
        _claim(self.admin_path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            s.bind(self.admin_path)
        finally:
            os.umask(old)
        os.chmod(self.admin_path, 0o600)
        s.listen(16)
        s.setblocking(False)
        self.admin = s
        self.sel.register(s, selectors.EVENT_READ, "admin")
        self.reg.add_observer(self)
        for name in self.reg.buses():
            bus = self.reg.bus(name)
            self.bus_created(bus)
            for dname in bus.devices:
                self.device_linked(bus, self.reg.device(dname))

    def stop(self):
        """Ask run() to return (signal-safe)."""
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass

    def run(self):
        while True:
            timeouts = [t for t in (br.next_timeout() for br in self.bridges.values()) if t is not None]
            if self.refusing:
                timeouts.append(max(0.0, min(r[2] for r in self.refusing.values()) - time.monotonic()))
            for key, _ in self.sel.select(min(timeouts) if timeouts else None):
                what = key.data
                if what == "stop":
                    return
                if what == "admin":
                    self._admin_accept()
                elif callable(what):        # a hook run in this thread (metrics.LoopSnapshot)
                    what()
                elif isinstance(what, tuple):
                    self._refuse_now(what[1])
                elif isinstance(what, bridge.Bridge):
                    if not getattr(what, "gone", False):
                        what.poll(0)
                else:
                    self._admin_serve(what)
            for br in list(self.bridges.values()):
                br._run_timers()
            now = time.monotonic()
            for fd, (_, _, deadline) in list(self.refusing.items()):
                if deadline <= now:
                    self._refuse_now(fd)

    def close(self):
        """Tidy exit: connections closed, devices destroyed (taps we made
        removed, pumps stopped), sockets unlinked, the empty bus directory
        removed."""
        try:
            self.reg.shutdown()
        finally:
            self.reg.remove_observer(self)
            for br in list(self.bridges.values()):
                self._close_bridge(br)
            self.bridges.clear()
            for s in list(self.admins.values()):
                s.close()
            self.admins.clear()
            for fd in list(self.refusing):
                self._refuse_now(fd)
            if self.admin is not None:
                self.admin.close()
                self.admin = None
                try:
                    os.unlink(self.admin_path)
                except FileNotFoundError:
                    pass
                try:
                    os.rmdir(self.bus_dir)      # ours, empty once the buses are gone
                except OSError:
                    pass
            self.sel.close()
            os.close(self._stop_r)
            os.close(self._stop_w)
            if self.pool is not None:
                self.pool.close()       # after the devices: their pumps removed first
                self.pool = None

    # ---- the registry's observer ------------------------------------------

    def socket_path(self, bus):
        own = self.bus_sockets.get(bus)
        return own["path"] if own else os.path.join(self.bus_dir, bus + ".sock")

    def bus_created(self, bus):
        own = self.bus_sockets.get(bus.name)
        path = self.socket_path(bus.name)
        kw = {k: own[k] for k in ("group", "max_connections", "max_per_process") if k in own} if own else {}
        br = bridge.Bridge(path, [], bus=bus.name, admit=lambda sock, b=bus.name: self._admit(b, sock),
                           on_drop=self._dropped, pool=self.pool, **kw)
        try:
            if not own:
                _claim(path)
            br.listen()             # its own claim says "in use by a running bridge"
        except OSError:
            br.close()
            raise
        if not own:
            os.chmod(path, 0o666)   # who may use the bus is decided at accept, from SO_PEERCRED
        self.bridges[bus.name] = br
        self.sel.register(br.sel.fileno(), selectors.EVENT_READ, br)

    def bus_destroyed(self, bus):
        br = self.bridges.pop(bus.name, None)
        if br is not None:
            self._close_bridge(br)

    def _close_bridge(self, br):
        br.gone = True
        try:
            self.sel.unregister(br.sel.fileno())
        except (KeyError, ValueError):
            pass
        br.devices.clear()      # devices belong to the registry: not closed with the bus
        br.close()

    def device_linked(self, bus, device):
        br = self.bridges.get(bus.name)
        if br is not None:
            device.instance.dev.pool = self.pool
            br.devices[device.name] = device.instance.dev

    def device_unlinked(self, bus, device):
        br = self.bridges.get(bus.name)
        if br is None:
            return
        dev = br.devices.pop(device.name, None)
        if dev is None:
            return
        br.device_gone(dev, f"device '{device.name}' was removed from bus '{bus.name}'")
        # Every connection of this bus holding it: the owner of a tap or
        # loopback, each port's connection of a switch.
        for conn in [c for c in br.conns.values() if c.devices.get(device.name) is not None]:
            held = conn.devices.pop(device.name)
            reason = f"device '{device.name}' was removed from bus '{bus.name}'"
            br._log(logging.INFO, "reset", "%s: %s while open: link down, connection closed", conn,
                    reason, device=device.name)
            # reset() stops the pump and posts the link-down event before it
            # unmaps the frontend's memory; closing the connection then makes
            # the frontend's next call raise LinkDown.
            held.reset()
            # No farewell ERROR: the frontend takes an unread message for the
            # reply to a request in progress and would not see the end behind it.
            br._drop(conn, "device_removed", reason, farewell=False)

    def connection_closed(self, conn, reason):
        br = self.bridges.get(conn.bus)
        if br is None:
            return
        for c in list(br.conns.values()):
            if c.context is conn and not c.closed:
                br._drop(c, "revoked", reason, farewell=False)

    def tree(self):
        """The registry's tree, with what each connection holds open: the
        control plane (not the registry) tracks opens."""
        t = self.reg.tree()
        for name, br in self.bridges.items():
            held = {c.context.id: sorted(c.devices) for c in br.conns.values()
                    if c.context is not None and not c.closed}
            for entry in t["buses"].get(name, {}).get("connections", []):
                entry["devices"] = held.get(entry["id"], [])
                for dev in entry["devices"]:
                    if dev in t["devices"]:
                        t["devices"][dev]["connections"] = sorted(
                            set(t["devices"][dev]["connections"]) | {entry["id"]})
        return t

    # ---- bus connections --------------------------------------------------

    def _admit(self, bus, sock):
        try:
            creds = vbus.Creds.from_socket(sock)
            vconn = self.reg.connect(bus, creds)
        except vbus.AccessDenied as e:
            br = self.bridges.get(bus)
            if br is not None:
                br.counters["refused_access"] += 1
                br._log(logging.WARNING, "refused_access", "%s: %s", e, getattr(e, "why", ""))
            self._refuse_later(sock, str(e))
            raise bridge.Refused(str(e)) from None
        except (vbus.VbusError, OSError) as e:
            log.warning("bus %s: connection refused: %s", bus, e)
            self._refuse_later(sock, str(e))
            raise bridge.Refused(str(e)) from None
        return vconn

    def _refuse_later(self, sock, reason, farewell=bridge._farewell):
        """The reason goes as the reply to the client's first request: a
        socket closed before the client sent it would fail its send with
        EPIPE, the reason unread.  A copy of the socket waits (bounded in
        number and time) for that request; the caller closes its own."""
        if len(self.refusing) >= REFUSE_MAX:
            farewell(sock, reason)
            return
        try:
            held = sock.dup()
        except OSError:
            farewell(sock, reason)
            return
        held.setblocking(False)
        self.refusing[held.fileno()] = (held, (farewell, reason), time.monotonic() + REFUSE_HOLD)
        self.sel.register(held, selectors.EVENT_READ, ("refuse", held.fileno()))

    def _refuse_now(self, fd):
        held, (farewell, reason), _ = self.refusing.pop(fd, (None, (None, None), None))
        if held is None:
            return
        try:
            self.sel.unregister(held)
        except (KeyError, ValueError):
            pass
        farewell(held, reason)
        held.close()

    def _dropped(self, conn):
        if conn.context is not None:
            self.reg.disconnect(conn.context)

    # ---- admin -----------------------------------------------------------

    def _admin_accept(self):
        for _ in range(16):
            try:
                s, _ = self.admin.accept()
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("admin accept failed: %s", e)
                return
            s.setblocking(False)
            pid, uid, gid = bridge._peercred(s)
            # Root administers; a daemon run by another user (loopback
            # devices need no root) is administered by that user too.
            admin = uid in (0, os.geteuid())
            if not admin or len(self.admins) >= ADMIN_MAX_CONNECTIONS:
                why = ("the admin socket serves root only" if not admin
                       else f"too many admin connections (at most {ADMIN_MAX_CONNECTIONS})")
                log.warning("admin connection from pid %d uid %d gid %d refused: %s", pid, uid, gid, why)
                self._refuse_later(s, why, _admin_farewell)
                s.close()
                continue
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, ADMIN_SNDBUF)
            except OSError:
                pass
            self.admins[s.fileno()] = s
            self.sel.register(s, selectors.EVENT_READ, s)

    def _admin_close(self, s):
        self.admins.pop(s.fileno(), None)
        try:
            self.sel.unregister(s)
        except (KeyError, ValueError):
            pass
        s.close()

    def _admin_serve(self, s):
        try:
            data, anc, flags, _ = s.recvmsg(ADMIN_MAX_REQUEST + 1, socket.CMSG_SPACE(16 * 4))
        except BlockingIOError:
            return
        except OSError:
            self._admin_close(s)
            return
        from venet import control
        control.close_fds(control.fds_of(anc))      # the admin protocol takes no fds
        if not data:
            self._admin_close(s)
            return
        try:
            if len(data) > ADMIN_MAX_REQUEST or flags & socket.MSG_TRUNC:
                raise AdminError(f"request larger than {ADMIN_MAX_REQUEST} bytes")
            try:
                req = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError) as e:
                raise AdminError(f"request is not JSON: {str(e)[:80]}") from None
            if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                raise AdminError('a request is an object with "op"')
            reply = {"ok": True, "result": self.admin_request(req)}
        except (AdminError, vbus.VbusError) as e:
            reply = {"ok": False, "error": str(e), "code": getattr(e, "code", "error")}
        except Exception as e:
            log.exception("admin request failed")
            reply = {"ok": False, "error": f"internal error: {type(e).__name__}: {e}", "code": "internal"}
        try:
            s.send(json.dumps(reply).encode())
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.warning("admin reply not sent: %s", e)
            self._admin_close(s)

    def admin_request(self, req):
        op = req["op"]
        fn = _OPS.get(op)
        if fn is None:
            raise AdminError(f"unknown admin op {op[:40]!r} (known: {', '.join(sorted(_OPS))})")
        return fn(self, req)


def _admin_farewell(sock, reason):
    """Drop what the refused admin client sent, then answer it."""
    for _ in range(4):
        try:
            _, anc, _, _ = sock.recvmsg(ADMIN_MAX_REQUEST + 1, socket.CMSG_SPACE(16 * 4))
        except OSError:
            break
        from venet import control
        control.close_fds(control.fds_of(anc))
    try:
        sock.send(json.dumps({"ok": False, "error": reason, "code": "access-denied"}).encode())
    except OSError:
        pass


def _str(req, key):
    v = req.get(key)
    if not isinstance(v, str):
        raise AdminError(f'"{key}" must be a string')
    return v


def _bus_create(d, req):
    name = _str(req, "name")
    path = d.socket_path(name)
    if len(path.encode()) > 107:
        raise AdminError(f"the socket path of bus {name[:40]!r} would be longer than 107 bytes: "
                         f"use a shorter name or run directory")
    d.reg.create_bus(name)
    if name not in d.bridges:       # the observer could not serve it: undo
        d.reg.destroy_bus(name, force=True)
        raise AdminError(f"bus '{name}' could not be served on {path} (see the daemon's log)")
    return {"bus": name, "socket": path}


def _bus_list(d, req):
    out = []
    for name in d.reg.buses():
        b = d.reg.bus(name)
        out.append({"name": name, "devices": list(b.devices), "connections": len(b.connections),
                    "socket": d.socket_path(name)})
    return out


def _device_create(d, req):
    name, cname = _str(req, "name"), _str(req, "class")
    sets = req.get("set") or {}
    if not isinstance(sets, dict) or not all(isinstance(v, str) for v in sets.values()):
        raise AdminError('"set" must be an object of KEY: "VALUE" strings')
    cls = d.reg.classes.get(cname)
    if name in d.reg.devices():
        raise vbus.Exists(f"device '{name}' already exists")
    attrs = {k: cls.check_value(k, v, name, text=True) for k, v in sets.items()}
    d.reg.create_device(name, cname, attrs)
    return d.reg.tree()["devices"][name]


def _device_set(d, req):
    name, key, value = _str(req, "name"), _str(req, "key"), _str(req, "value")
    return {key: d.reg.set_attr(name, key, value, text=True)}


def _rule(d, req, action):
    bus = _str(req, "bus")
    ids = {k: req[k] for k in ("uid", "gid", "pid") if req.get(k) is not None}
    if len(ids) != 1 or not all(isinstance(v, int) and not isinstance(v, bool) for v in ids.values()):
        raise AdminError("give exactly one of uid, gid, pid (an integer)")
    getattr(d.reg, action)(bus, **ids)
    return d.reg.tree()["buses"][bus]["access"]


_OPS = {
    "bus-create": _bus_create,
    "bus-destroy": lambda d, r: (d.reg.destroy_bus(_str(r, "name"), force=True), {})[1],
    "bus-list": _bus_list,
    "bus-link": lambda d, r: (d.reg.link(_str(r, "bus"), _str(r, "device")), {})[1],
    "bus-unlink": lambda d, r: (d.reg.unlink(_str(r, "bus"), _str(r, "device"), force=True), {})[1],
    "bus-allow": lambda d, r: _rule(d, r, "allow"),
    "bus-deny": lambda d, r: _rule(d, r, "deny"),
    "device-create": _device_create,
    "device-set": _device_set,
    "device-destroy": lambda d, r: (d.reg.destroy_device(_str(r, "name"), force=True), {})[1],
    "tree": lambda d, r: d.tree(),
}


def request(run_dir, req, timeout=30.0):
    """One admin request to the daemon of run_dir: the reply's result, or
    AdminRefused / OSError."""
    path = os.path.join(run_dir, "admin.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(path)
        s.send(json.dumps(req).encode())
        data = s.recv(ADMIN_SNDBUF)
    finally:
        s.close()
    if not data:
        raise AdminRefused("the daemon closed the admin connection without a reply", "closed")
    reply = json.loads(data)
    if not reply.get("ok"):
        raise AdminRefused(reply.get("error", "refused"), reply.get("code", "error"))
    return reply.get("result")


class AdminRefused(Exception):
    def __init__(self, msg, code):
        super().__init__(msg)
        self.code = code
