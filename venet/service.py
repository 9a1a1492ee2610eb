"""The long-running commands: `venet bridge`, `venet attach`, `venet stats`."""
import json
import logging
import os
import signal
import sys
import threading

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


def run_bridge(args):
    from venet import abi, bridge
    from venet.devices import tap as taplib
    logging.basicConfig(level=logging.INFO, format="venet bridge: %(message)s", stream=sys.stderr)
    if os.geteuid() != 0:
        raise UsageError("venet bridge needs root (CAP_NET_ADMIN) to create taps")
    os.makedirs(os.path.dirname(os.path.abspath(args.socket)), mode=0o755, exist_ok=True)
    # Claim the socket first: a taken path fails before any tap is made.
    br = bridge.Bridge(args.socket, [], group=args.group,
                       max_connections=args.max_connections,
                       max_per_process=args.max_per_process)
    vhost = None
    try:
        try:
            br.listen()
        except OSError as e:
            raise UsageError(str(e))
        _enter_netns(args.netns)
        try:
            fd, created = taplib.open_tap(args.tap)
        except taplib.TapError as e:
            raise UsageError(str(e))
        dev = bridge.Device(args.device or args.tap, args.tap, fd, created, None, None,
                            poll_us=args.poll_us, offloads=args.offloads, cpu=args.cpu)
        br.devices[dev.name] = dev      # from here br.close() closes the tap
        try:
            taplib.configure(args.tap, mtu=args.mtu, mac=args.mac, master=args.master)
            dev.mac, dev.mtu = taplib.link_info(args.tap)
        except taplib.TapError as e:
            raise UsageError(str(e))
        if args.vhost_user:
            from venet.vhost.backend import Connector
            path, client = args.vhost_user
            try:
                vhost = Connector(dev, path, client=client, poll_us=args.poll_us).start()
            except OSError as e:
                raise UsageError(f"--vhost-user {path}: {e.strerror or e}")
        on_stop_signals(br.stop)
        logging.info("tap %s (%s, mtu %d, offloads %s) on %s", args.tap, dev.mac, dev.mtu,
                     abi.cap_names(dev.offered[abi.CAP_GROUP_SG] & abi.OFFLOAD_CAPS), args.socket)
        print(f"ready {args.socket}", flush=True)
        br.serve()
    finally:
        if vhost is not None:
            vhost.close()   # first: the engine stops before the tap is closed
        br.close()          # closing the tap fd removes a tap we created
    return 0


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


def run_stats(args):
    from venet import frontend
    try:
        bus = frontend.connect(args.socket)
    except (FileNotFoundError, PermissionError, ConnectionRefusedError) as e:
        raise UsageError(str(e))
    with bus:
        s = bus.stats()
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    for d in s["devices"]:
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
    return 0


def run_daemon(args):
    import vbus
    from venet import daemon
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="venet daemon: %(message)s",
                        stream=sys.stderr)
    reg = None
    if args.config:
        try:
            reg = vbus.Registry.from_config(vbus.load_config(args.config), classes=daemon.class_table(),
                                            source=args.config)
        except vbus.VbusError as e:
            raise UsageError(str(e))
    d = daemon.Daemon(args.run_dir, reg)
    try:
        try:
            d.start()
        except OSError as e:
            raise UsageError(str(e))
        on_stop_signals(d.stop)
        logging.info("serving %s (%d buses, %d devices)", d.run_dir, len(d.reg.buses()), len(d.reg.devices()))
        print(f"ready {d.admin_path}", flush=True)
        d.run()
    finally:
        d.close()
    return 0


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
