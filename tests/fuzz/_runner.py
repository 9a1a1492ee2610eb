"""What the fuzz harnesses share: instrumenting our Python modules, the
defaults of a bounded atheris run, and a keep-going mode.

A harness module defines TestOneInput(data) and calls fuzz_main() from its
main().  Run one with `python3 -m tests.fuzz.fuzz_control [libFuzzer flags]
[corpus dirs]`; with no corpus dir it reads its seeds from
tests/fuzz/corpus/<target>/ and writes what it learns to
build/fuzz/corpus/<target>/ (never into the committed seeds).

A finding is any exception TestOneInput lets out: libFuzzer stops and writes
the input to build/fuzz/artifacts/<target>-crash-<sha1>.  With
VENET_FUZZ_KEEP_GOING=1 a finding is printed and saved there instead and
the run goes on (each distinct finding once), so that a known bug does not
end the exploration.
"""
import hashlib
import inspect
import os
import sys
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(ROOT, "tests", "fuzz", "corpus")
BUILD = os.path.join(ROOT, "build", "fuzz")


class Finding(AssertionError):
    """An outcome the harness forbids (an invariant broken)."""


def seeds(target):
    """The committed seed inputs of a target, as (name, bytes), sorted."""
    d = os.path.join(CORPUS, target)
    out = []
    for name in sorted(os.listdir(d)):
        with open(os.path.join(d, name), "rb") as f:
            out.append((name, f.read()))
    return out


def instrument(*modules):
    """Atheris coverage for every function and method defined in `modules`
    (already imported, so instrument_imports() would miss them)."""
    import atheris
    for mod in modules:
        for obj in list(vars(mod).values()):
            if inspect.isfunction(obj) and obj.__module__ == mod.__name__:
                atheris.instrument_func(obj)
            elif inspect.isclass(obj) and obj.__module__ == mod.__name__:
                for attr in list(vars(obj).values()):
                    if isinstance(attr, (staticmethod, classmethod)):
                        attr = attr.__func__
                    if isinstance(attr, property):
                        for f in (attr.fget, attr.fset):
                            if f is not None:
                                atheris.instrument_func(f)
                    elif inspect.isfunction(attr):
                        atheris.instrument_func(attr)


def _keep_going(target, test_one_input):
    seen = set()

    def wrapped(data):
        try:
            test_one_input(data)
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)
            where = tb[-1] if tb else None
            sig = (type(e).__name__, where.filename if where else "", where.lineno if where else 0)
            if sig in seen:
                return
            seen.add(sig)
            os.makedirs(os.path.join(BUILD, "artifacts"), exist_ok=True)
            path = os.path.join(BUILD, "artifacts",
                                f"{target}-finding-{hashlib.sha1(data).hexdigest()}")
            with open(path, "wb") as f:
                f.write(data)
            sys.stderr.write(f"\n=== FINDING ({target}) saved as {path}\n")
            traceback.print_exception(e, file=sys.stderr)
            sys.stderr.flush()
    return wrapped


def fuzz_main(target, test_one_input, modules, argv=None, max_len=4096):
    """Run atheris on test_one_input, bounded by -max_total_time (default
    FUZZ_SECONDS, else 60 s), with the corpus directories described above
    unless the command line names its own."""
    import atheris
    argv = list(sys.argv if argv is None else argv)
    flags = [a for a in argv[1:] if a.startswith("-")]
    dirs = [a for a in argv[1:] if not a.startswith("-")]
    if not any(f.startswith("-max_total_time=") or f.startswith("-runs=") for f in flags):
        flags.append(f"-max_total_time={int(os.environ.get('FUZZ_SECONDS', '60'))}")
    if not any(f.startswith("-max_len=") for f in flags):
        flags.append(f"-max_len={max_len}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        os.makedirs(os.path.join(BUILD, "artifacts"), exist_ok=True)
        flags.append(f"-artifact_prefix={os.path.join(BUILD, 'artifacts', target)}-")
    if not dirs:
        work = os.path.join(BUILD, "corpus", target)
        os.makedirs(work, exist_ok=True)
        dirs = [work, os.path.join(CORPUS, target)]
    instrument(*modules)
    if os.environ.get("VENET_FUZZ_KEEP_GOING") == "1":
        test_one_input = _keep_going(target, test_one_input)
    atheris.Setup([argv[0]] + flags + dirs, test_one_input)
    atheris.Fuzz()
