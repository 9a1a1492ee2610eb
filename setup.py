"""Build the Cython extensions.  Metadata lives in pyproject.toml.

VENET_CYTHON_TRACE=1 builds with line tracing (coverage, profilers);
VENET_DEBUG=1 builds with -O0 -g and Cython's bounds checks.
VENET_ASAN=1 builds with AddressSanitizer (-fsanitize=address
-fno-omit-frame-pointer, compiled and linked).  CPython itself is not
instrumented, so the runtime must be loaded first and leak checks are off
(CPython keeps memory until exit).  Add --force to build_ext when
switching, or setuptools keeps the objects of the other build:

    LD_PRELOAD=$(gcc -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0 \
        python3 -m pytest -q -k hostile tests tests/test_fuzz_smoke.py

`make asan-test` does this in a copy of the tree (build/asan/), so the
in-place build that `make test` uses is never an ASan one; see
docs/fuzzing.md.

The benchmark extensions (bench.*) are built only in place, for a checkout
(`make build`); a wheel holds shmsignal, ioq and venet alone (the packages
pyproject.toml lists).
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("VENET_DEBUG") == "1"
INCLUDE = ["shmsignal/includes", "ioq/includes", "venet/includes", "venet/vhost/includes"]
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O2", "-march=x86-64-v2" if os.uname().machine == "x86_64" else "-O2"]
ASAN = ["-fsanitize=address", "-fno-omit-frame-pointer"] if os.environ.get("VENET_ASAN") == "1" else []

MODULES = [
    "shmsignal._signal",
    "ioq._abi",
    "ioq._region",
    "ioq._ring",
    "vbus._worker",
    "bench._ringbench",
    "bench._sysbench",
    "bench._swbench",
    "venet._abi",
    "venet.devices._capture",
    "venet.devices._pump",
    "venet._frames",
    "venet.devices._switch",
    "venet.vhost._virtq",
]


def ext(name):
    return Extension(name, [name.replace(".", "/") + ".pyx"], include_dirs=INCLUDE,
                     extra_compile_args=CFLAGS + ASAN + ["-g"] * bool(ASAN) + ["-Wno-unused-function"],
                     extra_link_args=ASAN)


CHECKOUT_ONLY = ("bench.",)


class BuildExt(build_ext):
    """build_ext that leaves the checkout-only extensions out of anything
    but an in-place build, so that `pip wheel .` and `pip install .` carry
    no benchmark code."""

    def finalize_options(self):
        super().finalize_options()
        self.left_out = []
        if not self.inplace:
            self.left_out = [e.name for e in self.extensions if e.name.startswith(CHECKOUT_ONLY)]
            self.extensions = [e for e in self.extensions if e.name not in self.left_out]

    def run(self):
        super().run()
        # An in-place build compiles into build/lib* too, and a wheel takes
        # everything it finds there.
        for name in self.left_out:
            path = self.get_ext_fullpath(name)
            if os.path.exists(path):
                os.unlink(path)


directives = {"language_level": "3", "boundscheck": DEBUG, "wraparound": False,
              "cdivision": True, "embedsignature": True}
if os.environ.get("VENET_CYTHON_TRACE") == "1":
    directives["linetrace"] = True

setup(cmdclass={"build_ext": BuildExt},
      ext_modules=cythonize([ext(m) for m in MODULES], compiler_directives=directives,
                            include_path=["."]))
