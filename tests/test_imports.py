"""The product's import graph: layers point down only (shmsignal <- ioq <-
vbus <- venet), no cycles, and nothing of bench/ or tests/, which are not part of
the installed package.  The graph is read from the sources (ast for .py; the
import and cimport lines of .pyx/.pxd), module-level and function-level
imports alike; each product module is then imported alone in a fresh
interpreter that sees only the product packages, as an installed
wheel would."""
import ast
import os
import re
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRODUCT = ("shmsignal", "ioq", "vbus", "venet")
LAYER = {"shmsignal": 0, "ioq": 1, "vbus": 2, "venet": 3}
CHECKOUT_ONLY = ("bench", "tests")
SOURCES = (".py", ".pyx", ".pxd")

# `from X cimport ...`, `from X import ...`, `cimport X, Y`, `import X as Z`:
# the statements of a Cython file, read without compiling it.
_CY_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+(c?)import[ \t]+(\([^)]*\)|.*(?:\\\n.*)*)", re.M)
_CY_IMPORT = re.compile(r"^[ \t]*(c?)import[ \t]+([\w.]+(?:[ \t]+as[ \t]+\w+)?(?:[ \t]*,[ \t]*[\w.]+(?:[ \t]+as[ \t]+\w+)?)*)",
                        re.M)
_CY_STRINGS = re.compile(r'("""|\'\'\')(?:.|\n)*?\1|#[^\n]*')


def find_modules(root, packages=PRODUCT):
    """{dotted name: [paths]} of every .py/.pyx/.pxd under `packages` (a
    .pyx and its .pxd are one module; a package is its __init__).  A .pxd
    beside a .py and no .pyx only declares C for cimport: it is a module
    of its own, NAME:pxd (venet/abi.pxd is not venet/abi.py)."""
    mods = {}
    for pkg in packages:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, pkg)):
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "__pycache__"))]
            for f in filenames:
                stem, ext = os.path.splitext(f)
                if ext not in SOURCES:
                    continue
                rel = os.path.relpath(os.path.join(dirpath, stem), root).split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                mods.setdefault(".".join(rel), []).append(os.path.join(dirpath, f))
    for name, paths in list(mods.items()):
        exts = {os.path.splitext(p)[1] for p in paths}
        if ".pxd" in exts and ".py" in exts and ".pyx" not in exts:
            mods[name + PXD] = [p for p in paths if p.endswith(".pxd")]
            mods[name] = [p for p in paths if not p.endswith(".pxd")]
    return mods


PXD = ":pxd"


def _is_package(paths):
    return any(os.path.basename(p).startswith("__init__.") for p in paths)


def _absolute(module, is_pkg, level, name):
    """The absolute name of `from <level dots><name>` inside `module`."""
    if not level:
        return name
    base = module.split(".")
    base = base[:len(base) - level + (1 if is_pkg else 0)]
    return ".".join(base + ([name] if name else []))


def raw_imports(path, module, is_pkg):
    """Dotted names a source file imports, anywhere in it: for `from X
    import a` both X and X.a (the caller keeps those that are modules)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    names = set()
    if path.endswith(".py"):
        for node in ast.walk(ast.parse(text, path)):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(module, is_pkg, node.level, node.module or "")
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        return names
    text = _CY_STRINGS.sub("", text)
    for m in _CY_FROM.finditer(text):
        dots = len(m.group(1)) - len(m.group(1).lstrip("."))
        base = _absolute(module, is_pkg, dots, m.group(1).lstrip("."))
        mark = PXD if m.group(2) else ""
        names.add(base + mark)
        for a in m.group(3).strip("()").replace("\\\n", " ").split(","):
            a = a.split(" as ")[0].strip()
            if a and a != "*":
                names.add(f"{base}.{a}{mark}")
    for m in _CY_IMPORT.finditer(text):
        mark = PXD if m.group(1) else ""
        names.update(a.split(" as ")[0].strip() + mark for a in m.group(2).split(","))
    return names


def import_graph(root, packages=PRODUCT, outside=CHECKOUT_ONLY):
    """(edges, foreign): edges {module: set of product modules it imports,
    the packages that run on the way included}; foreign {module: names of
    `outside` packages it imports}."""
    mods = find_modules(root, packages)
    edges, foreign = {}, {}
    for mod, paths in mods.items():
        is_pkg = _is_package(paths)
        out = set()
        for path in paths:
            for name in raw_imports(path, mod, is_pkg):
                # A cimport reaches a declaration-only .pxd where there is
                # one, else the module its .pxd belongs to.
                if name.endswith(PXD) and name not in mods:
                    name = name[:-len(PXD)]
                top = name.split(".")[0]
                if top in outside:
                    foreign.setdefault(mod, set()).add(name)
                    continue
                if top not in packages:
                    continue
                parts = name.split(".")
                # Importing a.b.c runs a, a.b and a.b.c; a module's own
                # packages are already running when it is imported.
                for i in range(1, len(parts) + 1):
                    target = ".".join(parts[:i])
                    if target in mods and target != mod and not mod.startswith(target + "."):
                        out.add(target)
        edges[mod] = out
    return edges, foreign


def cycles(edges):
    """The strongly connected components with more than one module
    (Tarjan), each as a sorted list."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def upward(edges, layer=LAYER):
    """Imports from a lower layer into a higher one, as 'a -> b'."""
    return sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                  if layer[b.split(".")[0]] > layer[a.split(".")[0]])


def python_only(root, edges):
    """The edges written in .py files only (a Cython file's cimports of
    another Cython module are left out)."""
    mods = find_modules(root)
    py = {m for m, paths in mods.items() if any(p.endswith(".py") for p in paths)}
    return {a: {b for b in t if b in py} for a, t in edges.items() if a in py}


# --- the checker itself must be able to fail ---------------------------------

def _tree(tmp_path, files):
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return str(tmp_path)


def test_checker_finds_a_cycle_an_upward_import_and_a_checkout_import(tmp_path):
    root = _tree(tmp_path, {
        "shmsignal/__init__.py": "",
        "shmsignal/_signal.pyx": "from libc.string cimport memcpy\nfrom ioq.abi cimport ioq_desc_t\n",
        "ioq/__init__.py": "from ioq._ring import Ring\n",
        "ioq/abi.pxd": "cdef struct ioq_desc_t:\n    int x\n",
        "ioq/_ring.pyx": "from libc.stdint cimport (uint32_t,\n    uint64_t)\n"
                         "# from venet import abi (a comment, not an import)\n"
                         "from ioq._region cimport Region\n",
        "ioq/_region.pyx": "def producer():\n    from ioq._ring import Ring\n",
        "venet/__init__.py": "",
        "venet/cli.py": "def run():\n    from venet import service\n    from bench import ring\n",
        "venet/service.py": "from .cli import UsageError\n",
        "venet/devices/__init__.py": "",
        "venet/devices/tap.py": "from .. import abi\nimport tests.lab as lab\n",
        "venet/abi.py": "'''from venet import cli (prose, not an import)'''\n",
    })
    edges, foreign = import_graph(root)
    assert cycles(edges) == [["ioq._region", "ioq._ring"], ["venet.cli", "venet.service"]]
    assert upward(edges) == ["shmsignal._signal -> ioq", "shmsignal._signal -> ioq.abi"]
    assert foreign == {"venet.cli": {"bench", "bench.ring"}, "venet.devices.tap": {"tests.lab"}}
    assert edges["venet.devices.tap"] == {"venet.abi"}
    assert "venet.cli" not in edges["venet.abi"]
    assert cycles(python_only(root, edges)) == [["venet.cli", "venet.service"]]


# --- the product -------------------------------------------------------------

@pytest.fixture(scope="module")
def graph():
    return import_graph(ROOT)


def test_product_imports_nothing_of_bench_or_tests(graph):
    _, foreign = graph
    assert foreign == {}, f"product modules import checkout-only packages: {foreign}"


def test_layers_point_down(graph):
    edges, _ = graph
    assert upward(edges) == [], "shmsignal <- ioq <- vbus <- venet: a lower layer imports a higher one"


def test_no_import_cycle_in_python_modules(graph):
    edges, _ = graph
    assert cycles(python_only(ROOT, edges)) == []


def test_no_import_cycle(graph):
    edges, _ = graph
    assert cycles(edges) == []


def _product_only_tree(tmp_path):
    """A directory holding only the product packages (links to the built
    checkout's), as site-packages holds them after installing the wheel."""
    for pkg in PRODUCT:
        os.symlink(os.path.join(ROOT, pkg), tmp_path / pkg)
    return str(tmp_path)


def _run_isolated(tree, code, timeout=60):
    """python -I (no PYTHONPATH, no current directory on the path) with only
    `tree` added to sys.path."""
    return subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {tree!r}); {code}"],
                          capture_output=True, text=True, timeout=timeout, cwd=tree)


def test_each_module_imports_alone_without_bench_or_tests(tmp_path):
    tree = _product_only_tree(tmp_path)
    mods = find_modules(ROOT)
    runnable = sorted(m for m, paths in mods.items()
                      if any(p.endswith((".py", ".pyx")) for p in paths) and not m.endswith("__main__"))
    assert {"shmsignal", "ioq._ring", "venet.cli", "venet.devices._pump"} <= set(runnable)
    check = ("import importlib; importlib.import_module(MOD); "
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('bench', 'tests')); "
             "assert not bad, bad")
    failed = {}
    for mod in runnable:
        r = _run_isolated(tree, check.replace("MOD", repr(mod)))
        if r.returncode != 0:
            failed[mod] = r.stderr.strip().splitlines()[-1:]
    assert failed == {}


@pytest.mark.parametrize("argv,needs", [
    (["bench", "ring", "--quick"], "bench"),
    (["bench", "e2e", "--topologies", "veth"], "bench"),
    (["demo"], "tests"),
])
def test_checkout_commands_say_how_to_get_them(tmp_path, argv, needs):
    """Where bench/ and tests/ are not importable (an installed wheel),
    `venet bench ...` and `venet demo` exit 2 with one line saying where
    they run."""
    tree = _product_only_tree(tmp_path)
    r = _run_isolated(tree, f"from venet.cli import main; sys.exit(main({argv!r}))")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert f"{needs}/ is not part of the installed venet" in lines[0]
    assert "source checkout" in lines[0]


def test_not_built_checkout_says_build(tmp_path):
    """A checkout whose benchmark extension was never built is told to
    build, not that it is no checkout."""
    tree = _product_only_tree(tmp_path)
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")
    (tmp_path / "bench" / "_ringbench.pyx").write_text("")
    (tmp_path / "bench" / "ring.py").write_text("from bench import _ringbench\n")
    r = _run_isolated(tree, "from venet.cli import main; sys.exit(main(['bench', 'ring']))")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == "venet: error: bench._ringbench is not built: run `make build` in the checkout"


def test_wheel_packages_are_the_product():
    """The packages pyproject.toml puts into a wheel: every package under
    shmsignal/, ioq/, vbus/ and venet/, and nothing else."""
    tomllib = pytest.importorskip("tomllib")
    from setuptools import find_packages
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)["tool"]["setuptools"]
    packages = cfg["packages"]
    found = (set(packages) if isinstance(packages, list)
             else set(find_packages(ROOT, include=packages["find"]["include"])))
    expected = {m for m, paths in find_modules(ROOT).items() if _is_package(paths)}
    assert found == expected
    assert not {p for p in found if p.split(".")[0] in CHECKOUT_ONLY}


def _pyproject():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_wheel_holds_every_declaration_and_header(tmp_path):
    """Beside the built modules a wheel carries each package's .pxd, .pyx
    and includes/*.h (what a cimport of venet, or a rebuild, needs: the
    vhost engine's and the capture's headers too), never Cython's
    generated .c.  setuptools' build_py is the step of `pip wheel .` that
    copies them; it compiles nothing."""
    out = tmp_path / "lib"
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = {os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs}
    want = set()
    for pkg in PRODUCT:
        for d, dirs, fs in os.walk(os.path.join(ROOT, pkg)):
            dirs[:] = [x for x in dirs if not x.startswith((".", "__pycache__"))]
            want |= {os.path.relpath(os.path.join(d, f), ROOT) for f in fs
                     if f.endswith((".py", ".pyx", ".pxd", ".h"))}
    assert want - got == set(), "left out of the wheel"
    assert {p for p in got if p.endswith(".c")} == set()
    assert {p.split(os.sep)[0] for p in got} == set(PRODUCT)
    for must in ("venet/vhost/includes/vq_atomics.h", "venet/includes/venet_capture.h",
                 "venet/devices/_switch.pxd", "vbus/worker.pxd"):
        assert must in got


def test_every_device_class_has_its_entry_point():
    """`vbus.device_classes` entry points name every class venet defines,
    each under the class's own name (how a daemon of an installed venet
    finds them)."""
    import inspect

    import vbus
    from venet import classes
    eps = _pyproject()["project"]["entry-points"]["vbus.device_classes"]
    defined = {c.name: f"venet.classes:{n}" for n, c in inspect.getmembers(classes, inspect.isclass)
               if issubclass(c, vbus.DeviceClass) and c.__module__ == classes.__name__}
    assert {"venet-tap", "venet-loopback", "venet-switch"} <= set(defined)
    assert eps == defined


# import name -> distribution name, where they differ
_DIST = {"prometheus_client": "prometheus-client", "faster_fifo": "faster-fifo"}
# compile-time names of Cython files, not packages
_CYTHON = {"libc", "posix", "cpython", "cython", "libcpp"}


def test_runtime_dependencies_cover_the_product_imports():
    """Every third-party package a product module imports is a runtime
    dependency, or an optional extra when it is imported only on request
    (uvloop)."""
    cfg = _pyproject()["project"]
    names = lambda reqs: {re.split(r"[<>=!~ \[;]", r, 1)[0].lower() for r in reqs}
    required = names(cfg["dependencies"])
    optional = set().union(*(names(v) for k, v in cfg["optional-dependencies"].items() if k != "test"))
    third = set()
    for mod, paths in find_modules(ROOT).items():
        for p in paths:
            for name in raw_imports(p, mod, _is_package(paths)):
                top = name.split(".")[0].split(":")[0]
                if top and top not in sys.stdlib_module_names and top not in PRODUCT + CHECKOUT_ONLY \
                        and top not in _CYTHON:
                    third.add(_DIST.get(top, top).lower())
    assert {"prometheus-client", "rich", "numpy", "scapy", "pyroute2"} <= third
    assert third - required - optional == set(), "imported but not declared in pyproject.toml"
    assert "uvloop" in optional
