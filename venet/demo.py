"""`venet demo`: two namespaces talking through tap -> bridge -> rings ->
attach -> tap.  Everything it makes (namespaces, taps, addresses, processes)
is removed on exit, Ctrl-C included.  Addresses: 10.77.0.1 and 10.77.0.2/24,
inside the namespaces only."""
import argparse
import os
import sys

from venet.errors import UsageError

ADDR_A, ADDR_B = "10.77.0.1", "10.77.0.2"


def _interrupt():
    raise KeyboardInterrupt


def run(args, labkit):
    """`labkit` is tests/lab.py of the checkout (the namespaces and processes
    harness), which the installed package does not hold."""
    if os.geteuid() != 0:
        raise UsageError("venet demo needs root: it creates network namespaces and taps")
    from venet.service import on_stop_signals, run_stats
    restore = on_stop_signals(_interrupt)     # SIGTERM ends the demo like Ctrl-C
    lab = labkit.Lab("venet-demo")
    try:
        ns_a, ns_b = lab.netns("a"), lab.netns("b")
        sock = lab.socket_path()
        poll = ["--poll-us", str(args.poll_us)] if args.poll_us else []
        print(f"namespaces {ns_a} and {ns_b}; bus {sock}")
        lab.venet("bridge", "--tap", "vt0", "--netns", ns_a, "--socket", sock, *poll)
        lab.venet("attach", "--socket", sock, "--tap", "vt1", "--netns", ns_b, *poll)
        lab.addr(ns_a, "vt0", ADDR_A)
        lab.addr(ns_b, "vt1", ADDR_B)
        print(f"{ns_a}: vt0 {ADDR_A}/24  <- bridge -> rings -> attach ->  {ns_b}: vt1 {ADDR_B}/24")
        rtts, out = labkit.ping(ns_a, ADDR_B, args.count)
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
    except RuntimeError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        lab.close()
        restore()
