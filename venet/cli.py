"""The `venet` command.

Errors a user can cause (bad arguments, a missing tap, a taken socket path)
print one line and exit with status 2; no traceback.

`venet bench ...` and `venet demo` run code of a source checkout (bench/,
tests/lab.py) that the installed package does not hold; they find it by
name at run time (_from_checkout), so nothing of the product imports it.
"""
import argparse
import sys

from venet.errors import UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _cpus(text):
    try:
        a, b = (int(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cpus wants two CPU numbers like 0,1, not {text!r}")
    if a < 0 or b < 0:
        raise argparse.ArgumentTypeError("CPU numbers must not be negative")
    return a, b


def build_parser():
    from venet import abi
    p = _Parser(prog="venet", description="venet: a userspace virtual-ethernet device over "
                                           "shared-memory rings")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    bench = sub.add_parser("bench", help="benchmarks")
    bsub = bench.add_subparsers(dest="what", metavar="WHAT", parser_class=_Parser)
    bsub.required = True
    ring = bsub.add_parser("ring", help="the ring core against its baselines, two pinned processes")
    ring.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ring.add_argument("--cpus", type=_cpus, default=(0, 1), metavar="A,B",
                      help="pin the two processes to CPUs A and B (default 0,1)")
    ring.add_argument("--quick", action="store_true", help="a tenth of the counts (smoke runs)")
    ring.set_defaults(func=_cmd_bench_ring)
    nt = bsub.add_parser("notify", help="the RFC's experiment: poll, shmsignal, always-kick and "
                                        "timer notifications through the rings")
    nt.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    nt.add_argument("--cpus", type=_cpus, default=(0, 1), metavar="A,B")
    nt.add_argument("--quick", action="store_true", help="a tenth of the counts")
    nt.set_defaults(func=_cmd_bench_notify)
    e2e = bsub.add_parser("e2e", help="venet against veth, socat, a Python pump (and DPDK "
                                      "testpmd) with sockperf, ping -f and iperf3 (root)")
    e2e.add_argument("--quick", action="store_true", help="one run, 1 s clients, MTU 1500 only")
    e2e.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    e2e.add_argument("--out", metavar="DIR", help="write a markdown table and PNG plots here")
    e2e.add_argument("--repeats", type=_repeats, metavar="N",
                     help="builds and measurements per topology and MTU (default 3; --quick 1)")
    e2e.add_argument("--topologies", type=_topologies, metavar="A,B,...",
                     help="a subset of veth,venet,venet-poll,venet-nooff,venet-pin,venet-any,venet-capture,socat,pypump,testpmd")
    e2e.set_defaults(func=_cmd_bench_e2e)

    swb = bsub.add_parser("switch", help="frontends through a venet-switch of a throwaway daemon, "
                                         "beside AF_PACKET over veth, an eventfd relay and DPDK memif")
    swb.add_argument("--quick", action="store_true", help="short windows and counts (under a minute)")
    swb.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    swb.add_argument("--cpus", type=_cpus, default=(0, 1), metavar="A,B",
                     help="pin the two sides of each pair to CPUs A and B (default 0,1)")
    swb.add_argument("--loopback", action="store_true",
                     help="also run the frontend loops through a venet-loopback device")
    swb.set_defaults(func=_cmd_bench_switch)

    iso = bsub.add_parser("isolation", help="frontend B's control replies and traffic while "
                                            "frontend A misbehaves, on one bridge (root)")
    iso.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    iso.add_argument("--quick", action="store_true", help="short windows (smoke runs)")
    iso.set_defaults(func=_cmd_bench_isolation)
    sc = bsub.add_parser("syscalls", help="what syscall batching could save the pumps: a bare "
                                          "syscall against tap reads and writes (root)")
    sc.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    sc.add_argument("--quick", action="store_true", help="a tenth of the calls")
    sc.set_defaults(func=_cmd_bench_syscalls)

    bb = bsub.add_parser("bus", help="many devices on one daemon: create-to-first-frame, memory, "
                                     "idle cost and frames per second of loopback devices (root)")
    bb.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bb.add_argument("--quick", action="store_true",
                    help="64 loopback and 8 tap devices, short windows (under a minute)")
    bb.set_defaults(func=_cmd_bench_bus)
    bv = bsub.add_parser("vhost", help="DPDK's virtio-user driver (dpdk-testpmd) against venet's vhost-user "
                                       "connector and DPDK's net_vhost: frames per second, ping (root)")
    bv.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bv.add_argument("--quick", action="store_true", help="64-byte frames only, short windows (under 2 minutes)")
    bv.set_defaults(func=_cmd_bench_vhost)

    br = sub.add_parser("bridge", help="the backend: a daemon with one bus and one tap device, "
                                       "served on a control socket")
    br.add_argument("--tap", required=True, type=_ifname, help="tap to create (or open if it exists)")
    br.add_argument("--netns", type=_netns, help="network namespace of the tap")
    br.add_argument("--socket", default=DEFAULT_SOCKET, type=_sockpath, metavar="PATH",
                    help=f"control socket (default {DEFAULT_SOCKET})")
    br.add_argument("--mtu", type=_mtu, help=f"MTU ({abi.MIN_MTU}..{abi.MAX_MTU})")
    br.add_argument("--mac", type=_mac, help="MAC address of the device (unicast)")
    br.add_argument("--master", type=_ifname, help="attach the tap to this Linux bridge")
    br.add_argument("--poll-us", type=_poll, default=0, metavar="N",
                    help="busy-poll up to N us before sleeping (default 0: never)")
    br.add_argument("--group", type=_group, help="let this group use the socket (mode 0660)")
    br.add_argument("--device", help="device name on the bus (default: the tap name)")
    br.add_argument("--cpu", type=_cpu, default="auto", metavar="N|auto|any",
                    help="which worker serves the device's pump (workers are pinned one per CPU): "
                         "the one on CPU N; auto (default) the one on the device's home CPU, "
                         "where the attach's pump joins it during bulk traffic; any: the least "
                         "loaded")
    br.add_argument("--offloads", type=_offloads, default="all", metavar="LIST",
                    help="offloads to offer frontends: all (default: what the kernel's tun "
                         "supports), none, or a list of csum,tso4,tso6,tso-ecn,uso")
    br.add_argument("--max-connections", type=_max_conns, default=256, metavar="N",
                    help="control connections served at once; more are refused with an "
                         "error (default 256)")
    br.add_argument("--max-per-process", type=_max_per_proc, default=64, metavar="N",
                    help="connections one process may hold at once (default 64)")
    _ops_options(br)
    br.add_argument("--vhost-user", type=_vhost_user, metavar="PATH[,client]",
                    help="also serve the device to a virtio driver (QEMU, DPDK) on this vhost-user "
                         "socket; ',client': dial the driver's socket (its server=1) instead")
    br.set_defaults(func=_cmd_bridge)

    at = sub.add_parser("attach", help="a frontend that shows the device as a tap of its own")
    at.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH")
    at.add_argument("--device", help="device to open (default: the only one)")
    at.add_argument("--tap", required=True, type=_ifname)
    at.add_argument("--netns", type=_netns)
    at.add_argument("--poll-us", type=_poll, default=0, metavar="N")
    at.add_argument("--cpu", type=_cpu, default="auto", metavar="N|auto|any",
                    help="where this side's pump thread runs: CPU N always; auto (default) the "
                         "CPU after the device's home, and the bridge's worker CPU during bulk "
                         "traffic; any: wherever the scheduler puts it")
    at.add_argument("--offloads", type=_offloads, default="all", metavar="LIST",
                    help="offloads to ask for and switch on the tap: all (default), none, "
                         "or a list of csum,tso4,tso6,tso-ecn,uso")
    at.add_argument("--no-reconnect", action="store_true",
                    help="exit (status 1) when the bridge goes away, instead of taking the tap's "
                         "carrier down and waiting for a bridge to serve the socket again")
    at.set_defaults(func=_cmd_attach)

    st = sub.add_parser("stats", help="per-device counters of a running bridge or daemon bus")
    where = st.add_mutually_exclusive_group()
    where.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                       help=f"a bridge's control socket (default {DEFAULT_SOCKET})")
    where.add_argument("--bus", type=_busname, metavar="NAME",
                       help="a bus of the daemon of --run-dir (its socket RUN_DIR/bus/NAME.sock)")
    st.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                    help=f"the daemon's run directory, with --bus (default {DEFAULT_RUN_DIR})")
    st.add_argument("--json", action="store_true", help="print JSON (with --watch: one object a line)")
    st.add_argument("--watch", action="store_true",
                    help="live rates per device (frames/s, bytes/s, drops/s by reason, kicks/s) "
                         "until Ctrl-C")
    st.add_argument("--interval", type=_interval, default=1.0, metavar="S",
                    help="seconds between samples with --watch (0.1..3600, default 1)")
    st.add_argument("--count", type=_count, metavar="N",
                    help="with --watch: stop after N samples")
    st.set_defaults(func=_cmd_stats)

    cp = sub.add_parser("capture", help="frames of a running device, to pcapng (-w) or as lines")
    cp.add_argument("device", metavar="DEVICE")
    where = cp.add_mutually_exclusive_group()
    where.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH",
                       help=f"the bus of a `venet bridge` (default {DEFAULT_SOCKET})")
    where.add_argument("--bus", type=_bus_name, metavar="BUS", help="a bus of `venet daemon`")
    cp.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                    help=f"the daemon's run directory, with --bus (default {DEFAULT_RUN_DIR})")
    cp.add_argument("-w", dest="write", metavar="FILE", help="write pcapng here (- for stdout)")
    cp.add_argument("-c", dest="count", type=_int_option("-c", 1, 1 << 62), metavar="COUNT",
                    help="stop after COUNT frames")
    cp.add_argument("--direction", choices=("in", "out", "both"), default="both",
                    help="in: to the frontend, out: from it (default both)")
    cp.add_argument("--snaplen", type=_int_option("--snaplen", 14, 262144), default=262144,
                    metavar="N", help="bytes kept of each frame (default 262144: all)")
    cp.add_argument("filter", nargs="*", metavar="FILTER",
                    help="a BPF filter expression (libpcap's, as for tcpdump)")
    cp.set_defaults(func=_cmd_capture)

    dm = sub.add_parser("demo", help="two namespaces pinging through bridge + attach")
    dm.add_argument("--count", type=int, default=20, help="pings (default 20)")
    dm.add_argument("--poll-us", type=_poll, default=0, metavar="N")
    dm.set_defaults(func=_cmd_demo)
    _admin_parsers(sub)
    return p


DEFAULT_RUN_DIR = "/run/venet"


def _kv(text):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _admin_parsers(sub):
    """`venet daemon` and the admin commands that talk to it."""
    dn = sub.add_parser("daemon", help="the vbus daemon: buses, devices and access, managed live")
    dn.add_argument("--config", metavar="FILE", help="TOML config, or the JSON of `venet tree --json`")
    dn.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                    help=f"admin.sock and bus/NAME.sock here (default {DEFAULT_RUN_DIR})")
    _ops_options(dn)
    dn.add_argument("--workers", type=_workers, default=None, metavar="N",
                    help="worker threads, one pinned per CPU, serving every device's pump and switch "
                         "engine on every bus (1..256; default: one per usable CPU)")
    dn.set_defaults(func=_cmd_daemon)

    def admin(parser, request, show):
        parser.add_argument("--run-dir", default=DEFAULT_RUN_DIR, metavar="DIR",
                            help=f"the daemon's run directory (default {DEFAULT_RUN_DIR})")
        parser.add_argument("--json", action="store_true", help="print the reply as JSON")
        parser.set_defaults(func=_cmd_admin, request=request, show=show)

    def done(_):
        pass

    def show_tree(t):
        for name, b in t["buses"].items():
            print(f"bus {name}: devices {', '.join(b['devices']) or '-'}; "
                  f"{len(b['connections'])} connection(s)")
        for name, d in t["devices"].items():
            attrs = " ".join(f"{k}={v}" for k, v in d["attributes"].items())
            print(f"device {name} ({d['class']}) on {', '.join(d['buses']) or '-'}: {attrs}")
            c = d.get("counters", {})
            if "mac_table_size" in c:       # a switch: its table and each port's counters
                print(f"  {c.get('ports', 0)} port(s), MAC table {c.get('mac_entries', 0)}/"
                      f"{c['mac_table_size']} (full {c.get('mac_table_full', 0)}), "
                      f"floods {c.get('floods', 0)}")
                ports = sorted({k.split(".", 1)[0] for k in c if k.startswith("port") and "." in k})
                for port in ports:
                    vals = " ".join(f"{k.split('.', 1)[1]}={v}" for k, v in sorted(c.items())
                                    if k.startswith(port + "."))
                    print(f"  {port}: {vals}")

    bus = sub.add_parser("bus", help="create, destroy, list buses; link devices; access rules")
    bsub = bus.add_subparsers(dest="what", metavar="ACTION", parser_class=_Parser)
    bsub.required = True
    for verb in ("create", "destroy"):
        x = bsub.add_parser(verb, help=f"{verb} a bus")
        x.add_argument("name")
        admin(x, lambda a, v=verb: {"op": f"bus-{v}", "name": a.name}, done)
    x = bsub.add_parser("list", help="the buses")
    admin(x, lambda a: {"op": "bus-list"},
          lambda r: [print(f"{b['name']}: devices {', '.join(b['devices']) or '-'}, "
                           f"{b['connections']} connection(s), {b['socket']}") for b in r])
    for verb in ("link", "unlink"):
        x = bsub.add_parser(verb, help=f"{verb} a device and a bus")
        x.add_argument("bus")
        x.add_argument("device")
        admin(x, lambda a, v=verb: {"op": f"bus-{v}", "bus": a.bus, "device": a.device}, done)
    for verb in ("allow", "deny"):
        x = bsub.add_parser(verb, help=f"{verb} a uid, gid or pid (and its descendants) on a bus")
        x.add_argument("bus")
        g = x.add_mutually_exclusive_group(required=True)
        for k in ("uid", "gid", "pid"):
            g.add_argument(f"--{k}", type=_id)
        admin(x, lambda a, v=verb: {"op": f"bus-{v}", "bus": a.bus, "uid": a.uid, "gid": a.gid,
                                    "pid": a.pid}, done)

    dev = sub.add_parser("device", help="create, change, destroy devices")
    dsub = dev.add_subparsers(dest="what", metavar="ACTION", parser_class=_Parser)
    dsub.required = True
    x = dsub.add_parser("create", help="a device of a class")
    x.add_argument("name")
    x.add_argument("--class", dest="cls", required=True, metavar="CLASS")
    x.add_argument("--set", type=_kv, action="append", default=[], metavar="KEY=VALUE")
    admin(x, lambda a: {"op": "device-create", "name": a.name, "class": a.cls, "set": dict(a.set)}, done)
    x = dsub.add_parser("set", help="change an attribute")
    x.add_argument("name")
    x.add_argument("kv", type=_kv, metavar="KEY=VALUE")
    admin(x, lambda a: {"op": "device-set", "name": a.name, "key": a.kv[0], "value": a.kv[1]}, done)
    x = dsub.add_parser("destroy", help="destroy a device (closing it if open)")
    x.add_argument("name")
    admin(x, lambda a: {"op": "device-destroy", "name": a.name}, done)

    tr = sub.add_parser("tree", help="the whole registry (--json: a config `venet daemon` accepts)")
    admin(tr, lambda a: {"op": "tree"}, show_tree)


def _ops_options(parser):
    """--metrics, --log-level and --log-json of `venet daemon` and `venet bridge`."""
    parser.add_argument("--metrics", type=_metrics_addr, metavar="HOST:PORT",
                        help="serve Prometheus metrics on http://HOST:PORT/metrics (HOST defaults "
                             "to 127.0.0.1; default: no metrics)")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-json", action="store_true", help="log one JSON object per line")


def _metrics_addr(text):
    from venet.metrics import parse_address
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _interval(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--interval must be a number of seconds, not {text!r}")
    if not 0.1 <= v <= 3600:
        raise argparse.ArgumentTypeError("--interval must be 0.1..3600 seconds")
    return v


def _busname(text):
    import vbus
    try:
        return vbus.names.check_name(text, "bus name")
    except vbus.VbusError as e:
        raise argparse.ArgumentTypeError(str(e))


def _id(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not 0 <= v < 1 << 32:
        raise argparse.ArgumentTypeError(f"{v} is out of range")
    return v


def _cmd_daemon(args):
    from venet.service import run_daemon
    return run_daemon(args)


def _cmd_admin(args):
    from venet.service import run_admin
    return run_admin(args)


DEFAULT_SOCKET = "/run/venet/venet.sock"


def _ifname(text):
    from venet.devices.tap import TapError, check_name
    try:
        return check_name(text)
    except TapError as e:
        raise argparse.ArgumentTypeError(str(e))


def _netns(text):
    import os
    if "/" in text or not text or not os.path.exists(f"/run/netns/{text}"):
        raise argparse.ArgumentTypeError(f"network namespace {text!r} does not exist")
    return text


def _sockpath(text):
    import os
    d = os.path.dirname(os.path.abspath(text)) or "/"
    if len(text.encode()) > 107:
        raise argparse.ArgumentTypeError("socket path is longer than 107 bytes")
    if not os.path.isdir(d) and d != "/run/venet":
        raise argparse.ArgumentTypeError(f"directory {d} does not exist")
    return text


def _offloads(text):
    from venet import abi
    try:
        return abi.parse_offloads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _mtu(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"MTU must be a number, not {text!r}")
    from venet import abi
    try:
        return abi.check_mtu(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _mac(text):
    import re
    if not re.fullmatch(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a MAC address like 02:00:00:00:00:01")
    if int(text[:2], 16) & 1:
        raise argparse.ArgumentTypeError(f"{text} is a multicast address; a device needs a unicast one")
    if text.replace(":", "") in ("000000000000",):
        raise argparse.ArgumentTypeError("the all-zero MAC address is not allowed")
    return text.lower()


def _int_option(name, lo, hi):
    """A parser for an integer option in lo..hi."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, not {text!r}")
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be {lo}..{hi}")
        return v
    return parse


_poll = _int_option("--poll-us", 0, 1_000_000)
_repeats = _int_option("--repeats", 1, 20)
_max_conns = _int_option("--max-connections", 1, 65536)
_max_per_proc = _int_option("--max-per-process", 1, 65536)
_workers = _int_option("--workers", 1, 256)
_count = _int_option("--count", 1, 1_000_000)


def _cpu(text):
    import os
    from venet import placement
    if text in (placement.AUTO, placement.ANY):
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cpu must be auto, any or a CPU number, not {text!r}")
    allowed = sorted(os.sched_getaffinity(0))
    if v not in allowed:
        raise argparse.ArgumentTypeError(f"CPU {v} is not one this process may use "
                                         f"({','.join(map(str, allowed))})")
    return v


def _group(text):
    import grp
    try:
        return int(text) if text.isdigit() else grp.getgrnam(text).gr_gid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no group {text!r}")


def _vhost_user(text):
    from venet.vhost.backend import parse_spec
    try:
        return parse_spec(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))


def _cmd_bridge(args):
    from venet import service
    return service.run_bridge(args)


def _cmd_attach(args):
    from venet import service
    return service.run_attach(args)


def _cmd_stats(args):
    from venet import service
    return service.run_stats(args)


def _from_checkout(name, command):
    """Import module `name` of bench/ or tests/, which a source checkout has
    and the installed package does not: where it is missing, a UsageError
    that says where `venet COMMAND` runs (or, in a checkout not built yet,
    to build it)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing = e.name or ""
        top = missing.split(".")[0]
        if top not in ("bench", "tests"):
            raise
        if not (isinstance(e, ModuleNotFoundError) and missing in (top, name)):
            unbuilt = _unbuilt(sys.modules.get(top))
            if not unbuilt:
                raise
            raise UsageError(f"{top}.{unbuilt[0]} is not built: run `make build` in the checkout")
        raise UsageError(f"{top}/ is not part of the installed venet: run `python3 -m venet "
                         f"{command}` in a source checkout of venet (after `make build`)")


def _unbuilt(package):
    """Names of the Cython modules of `package` with no built extension
    beside their .pyx."""
    import os
    from importlib.machinery import EXTENSION_SUFFIXES
    out = []
    for d in getattr(package, "__path__", ()):
        for f in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(f)
            if ext == ".pyx" and not any(os.path.exists(os.path.join(d, stem + suffix))
                                         for suffix in EXTENSION_SUFFIXES):
                out.append(stem)
    return out


def _cmd_capture(args):
    from venet import capture
    return capture.run(args)


def _bus_name(text):
    from vbus.errors import BadName
    from vbus.names import check_name
    try:
        return check_name(text, "bus name")
    except BadName as e:
        raise argparse.ArgumentTypeError(str(e))


def _cmd_demo(args):
    from venet import demo
    return demo.run(args, _from_checkout("tests.lab", "demo"))


def _cmd_bench_ring(args):
    ring = _from_checkout("bench.ring", "bench ring")
    try:
        ring.main(cpus=args.cpus, json_path=args.json, quick=args.quick)
    except ValueError as e:
        raise UsageError(str(e))
    return 0


def _cmd_bench_notify(args):
    notify = _from_checkout("bench.notify", "bench notify")
    try:
        notify.main(cpus=args.cpus, json_path=args.json, quick=args.quick)
    except ValueError as e:
        raise UsageError(str(e))
    return 0


def _topologies(text):
    try:
        TOPOLOGIES = _from_checkout("bench.e2e", "bench e2e").TOPOLOGIES
    except UsageError as e:
        raise argparse.ArgumentTypeError(str(e))
    names = tuple(t for t in text.split(",") if t)
    bad = [t for t in names if t not in TOPOLOGIES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown topology {','.join(bad) or text!r}; "
                                         f"choose from {','.join(TOPOLOGIES)}")
    return names


def _cmd_bench_syscalls(args):
    import os
    if os.geteuid() != 0:
        raise UsageError("venet bench syscalls needs root (it makes a namespace and a tap)")
    syscalls = _from_checkout("bench.syscalls", "bench syscalls")
    syscalls.main(json_path=args.json, n=syscalls.N // 10 if args.quick else syscalls.N)
    return 0


def _cmd_bench_e2e(args):
    import os
    if os.geteuid() != 0:
        raise UsageError("venet bench e2e needs root: it creates network namespaces and taps")
    e2e = _from_checkout("bench.e2e", "bench e2e")
    try:
        e2e.main(json_path=args.json, out_dir=args.out, quick=args.quick, repeats=args.repeats,
                 topologies=args.topologies or e2e.TOPOLOGIES)
    except RuntimeError as e:
        raise UsageError(str(e))
    return 0


def _cmd_bench_switch(args):
    switch = _from_checkout("bench.switch", "bench switch")
    try:
        switch.main(cpus=args.cpus, json_path=args.json, quick=args.quick, loopback=args.loopback)
    except ValueError as e:
        raise UsageError(str(e))
    return 0


def _cmd_bench_isolation(args):
    import os
    if os.geteuid() != 0:
        raise UsageError("venet bench isolation needs root: it creates a namespace and taps")
    isolation = _from_checkout("bench.isolation", "bench isolation")
    try:
        isolation.main(json_path=args.json, quick=args.quick)
    except RuntimeError as e:
        raise UsageError(str(e))
    return 0


def _cmd_bench_bus(args):
    import os
    if os.geteuid() != 0:
        raise UsageError("venet bench bus needs root: it creates a network namespace and taps")
    bus = _from_checkout("bench.bus", "bench bus")
    try:
        bus.main(json_path=args.json, quick=args.quick)
    except RuntimeError as e:
        raise UsageError(str(e))
    return 0


def _cmd_bench_vhost(args):
    vhost = _from_checkout("bench.vhost", "bench vhost")
    try:
        vhost.main(json_path=args.json, quick=args.quick)
    except vhost.Unavailable as e:
        raise UsageError(f"venet bench vhost: {e}")
    return 0


def main(argv=None):
    import os
    # numpy's OpenBLAS starts a worker thread per CPU at import; the venet
    # processes do no linear algebra, and on 2 vCPUs a spinning BLAS worker
    # is one more thread beside the pumps.  (Must precede the first import.)
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # A capture's filter words may follow its options, as tcpdump's do
        # (argparse takes the positionals in one go, before them).
        if getattr(args, "cmd", None) == "capture" and not any(x.startswith("-") for x in extra):
            args.filter += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except UsageError as e:
        print(f"venet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
