"""The `venet` command.

Errors a user can cause (bad arguments, a missing tap, a taken socket path)
print one line and exit with status 2; no traceback.
"""
import argparse
import sys


class UsageError(Exception):
    """A mistake on the command line or in the environment it names."""


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
    return p


def _cmd_bench_ring(args):
    from bench import ring
    try:
        ring.main(cpus=args.cpus, json_path=args.json, quick=args.quick)
    except ValueError as e:
        raise UsageError(str(e))
    return 0


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"venet: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
