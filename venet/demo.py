"""`venet demo`: two namespaces talking through tap -> bridge -> rings ->
attach -> tap.  Everything it makes (namespaces, taps, addresses, processes)
is removed on exit, Ctrl-C included.  Addresses: 10.77.0.1 and 10.77.0.2/24,
inside the namespaces only."""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from venet.cli import UsageError

ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"


def _venet(args, ns_note):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.Popen([sys.executable, "-m", "venet", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    import selectors
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(20) or not p.stdout.readline().startswith("ready"):
        p.kill()
        raise RuntimeError(f"{ns_note} did not start: {p.stderr.read().strip()}")
    return p


def _addr(ns, ifname, addr):
    from pyroute2 import IPRoute
    with IPRoute(netns=ns) as ipr:
        idx = None
        for _ in range(100):
            found = ipr.link_lookup(ifname=ifname)
            if found:
                idx = found[0]
                break
            time.sleep(0.05)
        if idx is None:
            raise RuntimeError(f"{ifname} did not appear in {ns}")
        ipr.addr("add", index=idx, address=addr, prefixlen=24)
        ipr.link("set", index=idx, state="up")
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=lo, state="up")


def ping(ns, dst, count, interval=0.2):
    """Run ping inside namespace `ns`; returns (rtts_ms, output)."""
    from pyroute2 import netns as nslib
    out = subprocess.run(["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst],
                         capture_output=True, text=True, timeout=count * interval + 30,
                         preexec_fn=lambda: nslib.setns(ns))
    rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", out.stdout)]
    return rtts, out.stdout + out.stderr


def _interrupt():
    raise KeyboardInterrupt


def run(args):
    if os.geteuid() != 0:
        raise UsageError("venet demo needs root: it creates network namespaces and taps")
    from pyroute2 import netns as nslib
    tag = uuid.uuid4().hex[:6]
    ns_a, ns_b = f"venet-demo-a-{tag}", f"venet-demo-b-{tag}"
    tmp = tempfile.mkdtemp(prefix="venet-demo-")
    sock = os.path.join(tmp, "bus.sock")
    procs = []
    made = []
    from venet.service import on_stop_signals, run_stats
    restore = on_stop_signals(_interrupt)     # SIGTERM ends the demo like Ctrl-C
    try:
        for ns in (ns_a, ns_b):
            nslib.create(ns)
            made.append(ns)
        poll = ["--poll-us", str(args.poll_us)] if args.poll_us else []
        print(f"namespaces {ns_a} and {ns_b}; bus {sock}")
        procs.append(_venet(["bridge", "--tap", "vt0", "--netns", ns_a, "--socket", sock, *poll],
                            "venet bridge"))
        procs.append(_venet(["attach", "--socket", sock, "--tap", "vt1", "--netns", ns_b, *poll],
                            "venet attach"))
        _addr(ns_a, "vt0", ADDR_A)
        _addr(ns_b, "vt1", ADDR_B)
        print(f"{ns_a}: vt0 {ADDR_A}/24  <- bridge -> rings -> attach ->  {ns_b}: vt1 {ADDR_B}/24")
        rtts, out = ping(ns_a, ADDR_B, args.count)
        if not rtts:
            print(out.strip())
            print("demo: no replies came back", file=sys.stderr)
            return 1
        rtts_s = sorted(rtts)
        print(f"ping {ADDR_A} -> {ADDR_B}: {len(rtts)}/{args.count} replies, "
              f"rtt min {rtts_s[0]:.3f} ms, median {rtts_s[len(rtts_s) // 2]:.3f} ms, "
              f"max {rtts_s[-1]:.3f} ms")
        sys.stdout.flush()
        run_stats(argparse.Namespace(socket=sock, json=False))
        return 0 if len(rtts) == args.count else 1
    except KeyboardInterrupt:
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for ns in made:
            try:
                nslib.remove(ns)
            except OSError:
                pass
        try:
            os.rmdir(tmp)
        except OSError:
            pass
        restore()
