"""The long-running commands: `venet bridge`, `venet attach`, `venet stats`."""
import json
import logging
import os
import selectors
import signal
import sys
import threading
import time

from venet import control
from venet.errors import UsageError


def _enter_netns(ns):
    if ns:
        from pyroute2 import netns
        try:
            # flags=0: enter only.  pyroute2's default (O_CREAT) would make
            # a missing namespace instead of failing.
            netns.setns(ns, flags=0)
        except OSError as e:
            raise UsageError(f"cannot enter network namespace {ns}: {e.strerror}")


def on_stop_signals(fn):
    """Call fn on SIGINT/SIGTERM in this process only: a forked helper
    (pyroute2 forks for namespace work) that inherits the handler just dies
    as it would by default.  Returns a function restoring the old handlers."""
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        fn()
    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    return lambda: [signal.signal(sig, h) for sig, h in old.items()]


def bridge_bus_name(socket_path):
    """The bus of `venet bridge`: named after its socket's file name
    (bus.sock: "bus") where that is a valid bus name, else "default"."""
    import vbus
    stem = os.path.basename(socket_path)
    if stem.endswith(".sock"):
        stem = stem[:-len(".sock")]
    try:
        return vbus.names.check_name(stem, "bus name")
    except vbus.VbusError:
        return "default"


def _logging(prog, args):
    from venet import logs
    logs.setup(prog, getattr(args, "log_level", "info"), getattr(args, "log_json", False))


def _metrics(args, sel, snapshot):
    """Start the --metrics endpoint (None without the option); its scrapes
    are answered by the loop that owns `sel` (venet.metrics)."""
    if getattr(args, "metrics", None) is None:
        return None
    from venet import metrics
    m = metrics.MetricsServer(args.metrics, snapshot)
    try:
        m.start()
    except OSError as e:
        m.close()
        raise UsageError(str(e))
    sel.register(m.snapshot, selectors.EVENT_READ, m.snapshot)
    logging.info("metrics on http://%s:%d/metrics", m.host if ":" not in m.host else f"[{m.host}]",
                 m.port)
    return m


def run_bridge(args):
    """`venet bridge --tap ...`: a daemon (venet.daemon) holding one bus,
    served on --socket, with one venet-tap device; its run dir (the admin
    socket) is a private temporary directory, removed on exit."""
    import shutil
    import tempfile

    import vbus
    from venet import abi, classes, daemon
    from venet.devices import tap as taplib
    _logging("venet bridge", args)
    if os.geteuid() != 0:
        raise UsageError("venet bridge needs root (CAP_NET_ADMIN) to create taps")
    os.makedirs(os.path.dirname(os.path.abspath(args.socket)), mode=0o755, exist_ok=True)
    name = args.device or args.tap
    try:
        vbus.names.check_name(name, "device name")
    except vbus.VbusError as e:
        raise UsageError(f"{e}{'' if args.device else ' (name the device with --device)'}")
    bus = bridge_bus_name(args.socket)
    # The registry's cap on a bus's connections must not undercut the
    # bridge's own (--max-connections), which refuses with its own text.
    reg = vbus.Registry(daemon.class_table(),
                        max_connections=max(vbus.model.MAX_CONNECTIONS, args.max_connections))
    reg.create_bus(bus)
    if args.group is not None:
        # The socket's mode (0660, its group) lets the group's members
        # reach it; the bus's rule lets them on.
        reg.allow(bus, gid=args.group)
    _sweep_run_dirs()
    run_dir = tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-")
    d = daemon.Daemon(run_dir, reg, bus_sockets={bus: {
        "path": args.socket, "group": args.group, "max_connections": args.max_connections,
        "max_per_process": args.max_per_process}})
    m = None
    try:
        try:
            d.start()       # claims the socket first: a taken path fails before any tap is made
        except OSError as e:
            raise UsageError(str(e))
        # The metrics endpoint serves the namespace the bridge was started in
        # (the tap is made in its own namespace on a thread of its own).
        m = _metrics(args, d.sel, lambda: _daemon_snapshot(d))
        attrs = {"ifname": args.tap, "netns": args.netns or "", "mac": args.mac or "",
                 "offloads": abi.cap_names(args.offloads),
                 "poll_us": args.poll_us, "cpu": str(args.cpu)}
        if args.vhost_user:
            # The device's vhost_user attribute: a virtio driver may take the
            # frontend's place on it (docs/vhost-user.md).
            path, client = args.vhost_user
            attrs["vhost_user"] = path + (",client" if client else "")
        try:
            # Without --mtu an existing tap keeps its MTU (a new one has 1500).
            attrs["mtu"] = args.mtu or classes._in_netns(args.netns, lambda: _tap_mtu(args.tap))
            reg.create_device(name, classes.TapClass.name, attrs, buses=(bus,))
            dev = reg.device(name).instance.dev
            if args.master:
                def enslave():
                    taplib.configure(args.tap, master=args.master)
                    return taplib.link_info(args.tap)
                dev.mac, dev.mtu = classes._in_netns(args.netns, enslave)
        except (vbus.VbusError, taplib.TapError) as e:
            raise UsageError(str(e))
        on_stop_signals(d.stop)
        logging.info("tap %s (%s, mtu %d, offloads %s) on %s: bus %s of a daemon at %s",
                     args.tap, dev.mac, dev.mtu,
                     abi.cap_names(dev.offered[abi.CAP_GROUP_SG] & abi.OFFLOAD_CAPS), args.socket,
                     bus, d.run_dir)
        print(f"ready {args.socket}", flush=True)
        d.run()
    finally:
        try:
            if m is not None:
                m.close()
        finally:
            try:
                d.close()       # closing the tap fd removes a tap we created
            finally:
                shutil.rmtree(run_dir, ignore_errors=True)
    return 0


RUN_DIR_PREFIX = "venet-bridge-"


def _sweep_run_dirs():
    """Remove the private run dirs of bridges that were killed (SIGKILL
    leaves theirs): ours (same owner, mode 0700), named after a pid that
    no longer runs.  A live bridge's pid runs, so none is touched; a dead
    one's pid taken by another process is left for a later sweep."""
    import re
    import shutil
    import stat
    import tempfile
    top = tempfile.gettempdir()
    try:
        names = os.listdir(top)
    except OSError:
        return
    for n in names:
        m = re.fullmatch(re.escape(RUN_DIR_PREFIX) + r"(\d+)-[A-Za-z0-9_]+", n)
        if not m:
            continue
        path = os.path.join(top, n)
        try:
            st = os.lstat(path)
            if (not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid()
                    or stat.S_IMODE(st.st_mode) != 0o700):
                continue
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except (OSError, ValueError, OverflowError):
            continue


def _tap_mtu(name):
    """The MTU of interface `name` if it exists, else a new tap's (1500)."""
    from venet.devices import tap as taplib
    try:
        return taplib.link_info(name)[1]
    except taplib.TapError:
        return 1500


def run_attach(args):
    from venet import abi, frontend
    from venet.attach import Attachment
    from venet.devices import tap as taplib
    logging.basicConfig(level=logging.INFO, format="venet attach: %(message)s", stream=sys.stderr)
    # The frontend's own steps (dialling, reopening) only when they go
    # wrong: the attach logs each change of the link itself.
    logging.getLogger("venet.frontend").setLevel(logging.WARNING)
    reconnect = not args.no_reconnect
    unmap = True
    try:
        bus = frontend.connect(args.socket, reconnect=reconnect)
    except (FileNotFoundError, PermissionError, ConnectionRefusedError) as e:
        raise UsageError(str(e))
    except control.RemoteError as e:
        raise UsageError(f"bridge refused: {e}")
    try:
        try:
            dev = bus.open(args.device, poll_us=args.poll_us, offloads=args.offloads)
        except (control.RemoteError, ValueError) as e:
            raise UsageError(str(e))
        _enter_netns(args.netns)
        try:
            att = Attachment(dev, args.tap, poll_us=args.poll_us, cpu=args.cpu)
        except taplib.TapError as e:
            raise UsageError(str(e))
        stop = threading.Event()
        up = [True]

        def on_stop():
            stop.set()
            if not up[0]:
                bus.abort()     # a reconnection attempt in progress returns at once
        on_stop_signals(on_stop)
        att.start()
        logging.info("device %s on tap %s, offloads %s", dev.name, args.tap, abi.cap_names(dev.offloads))
        print(f"ready {args.tap}", flush=True)
        try:
            return _attach_loop(bus, dev, att, stop, up, reconnect)
        finally:
            if not att.close():
                # Unmapping the rings under a running pump would crash it.
                logging.error("the attach pump did not stop; leaving its memory mapped")
                unmap = False
    finally:
        if unmap:
            bus.close()


def _attach_loop(bus, dev, att, stop, up, reconnect):
    """Watch the bridge; with reconnect, take the tap's carrier down while
    it is gone and bring the device back when a bridge serves the socket.
    Returns the exit status."""
    from venet import abi, frontend
    from venet.devices import tap as taplib
    while not stop.is_set():
        if up[0]:
            if stop.wait(0.2):
                break
            lost = not bus.alive()
            if not lost and not att.running():
                if not reconnect:
                    logging.error("pump stopped: %s", att.result)
                    return 1
                logging.warning("pump stopped (%s): opening the device again", att.result)
                bus.reset()
                lost = True
            if lost:
                if not reconnect:
                    logging.error("device %s: the bridge went away", dev.name)
                    return 1
                try:
                    att.link_down()
                except taplib.TapError as e:
                    logging.error("%s", e)
                    return 1
                up[0] = False
                logging.warning("bridge gone: carrier off on %s; waiting for a bridge on %s "
                                "(retrying every %d ms at most)", att.tap_name, bus.path,
                                frontend.RETRY_MAX * 1000)
        else:
            if not dev.wait_link(timeout=0.2):
                continue
            if stop.is_set():
                break
            try:
                att.link_up()
            except taplib.TapError as e:
                logging.error("%s", e)
                return 1
            up[0] = True
            logging.info("bridge back: device %s up on %s, offloads %s", dev.name, att.tap_name,
                         abi.cap_names(dev.offloads))
    return 0


def _stats_socket(args):
    """The bus socket of `venet stats`: --socket, or --bus in --run-dir."""
    if getattr(args, "bus", None):
        return os.path.join(args.run_dir, "bus", args.bus + ".sock")
    return args.socket


def _stats_connect(args):
    from venet import frontend
    path = _stats_socket(args)
    try:
        return frontend.connect(path)
    except FileNotFoundError as e:
        if getattr(args, "bus", None):
            raise UsageError(f"no bus {args.bus!r} served in {args.run_dir} (no {path})")
        raise UsageError(str(e))
    except (PermissionError, ConnectionRefusedError) as e:
        raise UsageError(str(e))
    except control.RemoteError as e:
        raise UsageError(f"bridge refused: {e}")


def run_stats(args):
    bus = _stats_connect(args)
    if getattr(args, "watch", False):
        with bus:
            return _watch(bus, args)
    with bus:
        s = bus.stats()
    try:
        _print_stats(s, args.json)
    except BrokenPipeError:             # `venet stats | head`
        sys.stdout = open(os.devnull, "w")
    return 0


def _print_stats(s, as_json):
    if as_json:
        print(json.dumps(s, indent=1))
        return
    for d in s["devices"]:
        if "ports" in d:
            _print_switch(d)
            continue
        print(f"device {d['device']} (tap {d['tap']}): link {'up' if d['link'] else 'down'}, "
              f"{'in use' if d['busy'] else 'free'}")
        c = d["counters"]
        rows = [("to tap (frontend tx)", "to_tap_frames", "to_tap_bytes"),
                ("from tap (frontend rx)", "from_tap_frames", "from_tap_bytes")]
        for label, f, b in rows:
            print(f"  {label:<24} {c.get(f, 0):>12} frames {c.get(b, 0):>14} bytes")
        for k in sorted(c):
            if k.startswith("drop_") or k in ("out_ring_full", "tap_read_errors", "to_tap_gso",
                                              "from_tap_gso", "to_tap_csum", "from_tap_csum"):
                print(f"  {k:<24} {c[k]:>12}")
        for k in ("in_ring.kicks_sent", "in_ring.kicks_suppressed", "out_ring.kicks_sent",
                  "out_ring.kicks_suppressed", "in_ring.bad_total"):
            print(f"  {k:<24} {c.get(k, 0):>12}")
    ctl = s.get("control") or {}
    if ctl:
        print(f"control: {ctl.get('connections', 0)} connections of {ctl.get('max_connections', 0)}")
        for k in sorted(ctl):
            if ctl[k] and (k.startswith(("refused_", "dropped_")) or
                           k in ("accepted", "closed", "accept_errors", "requests_refused")):
                print(f"  {k:<24} {ctl[k]:>12}")


def _drops_text(c, prefix="drop_"):
    return ", ".join(f"{k[len(prefix):]} {v}" for k, v in sorted(c.items()) if k.startswith(prefix) and v)


def _print_switch(d):
    """A multi-open device (a venet-switch): its table, its ports summed,
    and a row per port (rx: what the port's frontend sent into the
    switch; tx: what the switch delivered to it).  STATS carries the
    busiest ports only when they are many (ports_omitted)."""
    c = d["counters"]
    print(f"device {d['device']} (switch): {c.get('ports', len(d['ports']))} port(s), "
          f"link {'up' if d['link'] else 'down'}")
    print(f"  MAC table {c.get('mac_entries', 0)}/{c.get('mac_table_size', 0)}: learned "
          f"{c.get('mac_learned', 0)}, moved {c.get('mac_moved', 0)}, aged {c.get('mac_aged', 0)}, "
          f"forgotten {c.get('mac_forgotten', 0)}, not learned (table full) {c.get('mac_table_full', 0)}")
    print(f"  frames {c.get('frames', 0)}, floods {c.get('floods', 0)}, turns {c.get('turns', 0)}, "
          f"wakeups {c.get('wakeups', 0)}; ports added {c.get('ports_added', 0)}, "
          f"removed {c.get('ports_removed', 0)}")
    head = f"  {'port':<10} {'rx frames':>12} {'rx bytes':>14} {'tx frames':>12} {'tx bytes':>14} " \
           f"{'floods':>10} {'drops':>10}"
    print(head)

    def row(label, p, prefix=""):
        drops = sum(v for k, v in p.items() if k.startswith(prefix + "drop_"))
        line = (f"  {label:<10} {p.get(prefix + 'rx_frames', 0):>12} {p.get(prefix + 'rx_bytes', 0):>14} "
                f"{p.get(prefix + 'tx_frames', 0):>12} {p.get(prefix + 'tx_bytes', 0):>14} "
                f"{p.get(prefix + 'floods', 0):>10} {drops:>10}")
        why = _drops_text(p, prefix + "drop_")
        print(line + (f"  ({why})" if why else ""))

    ports = d["ports"]
    for k in sorted(ports, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k)):
        row(k, ports[k])
    if d.get("ports_omitted"):
        print(f"  ... {d['ports_omitted']} more port(s) not shown (the busiest are; "
              f"`venet tree` lists every port)")
    row("all", c, "port_")
    print("  (rx: frames a port sent into the switch; tx: frames the switch delivered to it; "
          "all: every port, removed ones too)")


# ---- venet stats --watch --------------------------------------------------

# The counters a rate is shown for: (column, counter keys summed).
RATE_COLUMNS = (
    ("tx_frames", ("to_tap_frames",)),
    ("tx_bytes", ("to_tap_bytes",)),
    ("rx_frames", ("from_tap_frames",)),
    ("rx_bytes", ("from_tap_bytes",)),
    ("kicks", ("in_ring.kicks_sent", "out_ring.kicks_sent")),
)


def _rate_counters(d):
    """A device's counters under the names RATE_COLUMNS reads.  A switch
    (an entry with "ports") is seen from its frontends' side like a tap
    device: tx is what the ports sent into it (port_rx_*), rx what it
    delivered to them (port_tx_*), kicks and drops its ports' sums."""
    c = d["counters"]
    if "ports" not in d:
        return c
    out = {"to_tap_frames": c.get("port_rx_frames", 0), "to_tap_bytes": c.get("port_rx_bytes", 0),
           "from_tap_frames": c.get("port_tx_frames", 0), "from_tap_bytes": c.get("port_tx_bytes", 0),
           "in_ring.kicks_sent": c.get("port_kicks", 0)}
    out.update((k[5:], v) for k, v in c.items() if k.startswith("port_drop_"))
    return out


def _drop_keys(counters):
    """Reasons a frame was dropped, as counter keys: the pump's drop_*
    and the rings' bad descriptors."""
    return sorted(k for k in counters if k.startswith("drop_") or k.endswith(".bad_total"))


def _reason(key):
    return key[5:] if key.startswith("drop_") else key.replace("_ring.bad_total", "_ring_bad")


def rates(prev, cur, dt):
    """Per-second rates of each device in `cur` (a STATS reply) against
    `prev` (the one before, dt seconds earlier): a list of dicts with
    device, link, the RATE_COLUMNS, drops (the sum) and drops_by (reason
    -> rate, non-zero ones only).  A device new since `prev`, or whose
    counters went back (recreated), is measured from zero."""
    before = {d["device"]: _rate_counters(d) for d in (prev or {}).get("devices", ())}
    out = []
    for d in cur.get("devices", ()):
        c, p = _rate_counters(d), before.get(d["device"])
        if p is not None and any(c.get(k, 0) < v for k, v in p.items()):
            p = None
        p = p or {}

        def rate(keys):
            return sum(c.get(k, 0) - p.get(k, 0) for k in keys) / dt
        row = {"device": d["device"], "link": bool(d["link"]), "busy": bool(d["busy"])}
        for col, keys in RATE_COLUMNS:
            row[col] = rate(keys)
        by = {_reason(k): rate((k,)) for k in _drop_keys(c)}
        row["drops_by"] = {k: v for k, v in by.items() if v}
        row["drops"] = sum(by.values())
        out.append(row)
    return out


def _si(v, unit=""):
    for div, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f} {prefix}{unit}"
    return f"{v:.1f} {unit}".rstrip()


def _line(row, now):
    drops = ", ".join(f"{k} {_si(v)}/s" for k, v in sorted(row["drops_by"].items()))
    return (f"{now} {row['device']} link {'up' if row['link'] else 'down'}"
            f" tx {_si(row['tx_frames'])} frames/s {_si(row['tx_bytes'], 'B')}/s"
            f" rx {_si(row['rx_frames'])} frames/s {_si(row['rx_bytes'], 'B')}/s"
            f" drops {_si(row['drops'])}/s{' (' + drops + ')' if drops else ''}"
            f" kicks {_si(row['kicks'])}/s")


def _table(rows, interval, title):
    from rich.table import Table
    t = Table(title=title, caption=f"rates over {interval:g} s; Ctrl-C ends")
    for name, just in (("device", "left"), ("link", "left"), ("tx frames/s", "right"),
                       ("tx bytes/s", "right"), ("rx frames/s", "right"), ("rx bytes/s", "right"),
                       ("drops/s", "right"), ("drops by reason", "left"), ("kicks/s", "right")):
        t.add_column(name, justify=just)
    for r in rows:
        t.add_row(r["device"], "up" if r["link"] else "down", _si(r["tx_frames"]),
                  _si(r["tx_bytes"], "B"), _si(r["rx_frames"]), _si(r["rx_bytes"], "B"),
                  _si(r["drops"]), ", ".join(f"{k} {_si(v)}" for k, v in sorted(r["drops_by"].items())),
                  _si(r["kicks"]))
    return t


def _watch(bus, args):
    """Rates every --interval seconds (monotonic clock, the interval
    measured, not assumed) until Ctrl-C or --count samples; a rich table
    updated in place on a terminal, else one line per device per sample
    (JSON with --json).  Exit status 1 if the bridge goes away."""
    from venet import frontend
    interval, left = args.interval, args.count
    live = None
    if sys.stdout.isatty() and not args.json:
        from rich.live import Live
        live = Live(_table([], interval, f"venet stats: {_stats_socket(args)}"),
                    auto_refresh=False, transient=False)
    try:
        if live is not None:
            live.start()
        prev, t_prev = bus.stats(), time.monotonic()
        tick = t_prev
        while left is None or left > 0:
            tick += interval
            time.sleep(max(0.0, tick - time.monotonic()))
            try:
                cur = bus.stats()
            except (OSError, control.ProtocolError, frontend.LinkDown) as e:
                print(f"venet: the bridge on {_stats_socket(args)} went away ({e})", file=sys.stderr)
                return 1
            now = time.monotonic()
            dt = now - t_prev
            rows = rates(prev, cur, dt)
            prev, t_prev = cur, now
            stamp = time.strftime("%H:%M:%S")
            if live is not None:
                live.update(_table(rows, interval, f"venet stats: {_stats_socket(args)}  {stamp}"),
                            refresh=True)
            elif args.json:
                print(json.dumps({"time": time.time(), "interval": round(dt, 6),
                                  "devices": rows}), flush=True)
            else:
                for r in rows:
                    print(_line(r, stamp), flush=True)
            if tick < now - interval:       # fell behind (a stopped process): no catch-up burst
                tick = now
            if left is not None:
                left -= 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:             # `venet stats --watch | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    finally:
        if live is not None:
            live.stop()
    return 0


def run_daemon(args):
    import vbus
    from venet import daemon
    _logging("venet daemon", args)
    reg = None
    if args.config:
        try:
            reg = vbus.Registry.from_config(vbus.load_config(args.config), classes=daemon.class_table(),
                                            source=args.config)
        except vbus.VbusError as e:
            raise UsageError(str(e))
    d = daemon.Daemon(args.run_dir, reg, workers=args.workers)
    m = None
    try:
        try:
            d.start()
        except OSError as e:
            raise UsageError(str(e))
        m = _metrics(args, d.sel, lambda: _daemon_snapshot(d))
        on_stop_signals(d.stop)
        logging.info("serving %s (%d buses, %d devices)", d.run_dir, len(d.reg.buses()), len(d.reg.devices()))
        print(f"ready {d.admin_path}", flush=True)
        d.run()
    finally:
        try:
            if m is not None:
                m.close()
        finally:
            d.close()
    return 0


def _daemon_snapshot(d):
    """Every bus of the daemon, for a scrape (run in the daemon's loop)."""
    from venet import metrics
    out = []
    for name, br in list(d.bridges.items()):
        classes = {}
        for dname in list(br.devices):
            try:
                classes[dname] = d.reg.device(dname).class_name
            except Exception:       # gone meanwhile: the class is unknown, the counters are not
                classes[dname] = ""
        out.append(metrics.bus_snapshot(name, br, classes))
    return out


def run_admin(args):
    """One admin command: args.request(args) makes the request, args.show
    prints the result for people."""
    from venet import daemon
    req = args.request(args)
    try:
        result = daemon.request(args.run_dir, req)
    except daemon.AdminRefused as e:
        raise UsageError(str(e))
    except FileNotFoundError:
        raise UsageError(f"no daemon at {args.run_dir} (no admin.sock)")
    except PermissionError:
        raise UsageError(f"the admin socket {args.run_dir}/admin.sock serves root only")
    except (ConnectionRefusedError, OSError) as e:
        raise UsageError(f"cannot reach the daemon at {args.run_dir}: {e}")
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        args.show(result)
    return 0
