"""Build the Cython extensions.  Metadata lives in pyproject.toml.

VENET_CYTHON_TRACE=1 builds with line tracing (coverage, profilers);
VENET_DEBUG=1 builds with -O0 -g and Cython's bounds checks.
"""
import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("VENET_DEBUG") == "1"
INCLUDE = ["shmsignal/includes", "ioq", "venet"]
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O2", "-march=x86-64-v2" if os.uname().machine == "x86_64" else "-O2"]

MODULES = [
    "shmsignal._signal",
    "ioq._region",
    "ioq._ring",
    "bench._ringbench",
    "bench._sysbench",
    "venet.devices._pump",
    "venet._frames",
]


def ext(name):
    return Extension(name, [name.replace(".", "/") + ".pyx"], include_dirs=INCLUDE,
                     extra_compile_args=CFLAGS + ["-Wno-unused-function"])


directives = {"language_level": "3", "boundscheck": DEBUG, "wraparound": False,
              "cdivision": True, "embedsignature": True}
if os.environ.get("VENET_CYTHON_TRACE") == "1":
    directives["linetrace"] = True

setup(ext_modules=cythonize([ext(m) for m in MODULES], compiler_directives=directives,
                            include_path=["."]))
