"""The fuzz harnesses of tests/fuzz/ in the default run: each one's
TestOneInput over its committed corpus, then a few seconds of atheris.
`make fuzz` runs them for longer (docs/fuzzing.md)."""
import importlib
import os
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris; "
                    "scripts/install-deps.sh does it, CI has it)")

from tests.fuzz._runner import ROOT, seeds  # noqa: E402

TARGETS = ("control", "bridge", "ring", "pump")
SECONDS = 4                      # atheris time per harness in the default run
# Reproducers of known open bugs: each is expected to fail (strict) until
# its fix lands, then its entry goes.
KNOWN_OPEN = {
}


def _cases():
    for t in TARGETS:
        for name, _ in seeds(t):
            marks = ()
            if (t, name) in KNOWN_OPEN:
                marks = pytest.mark.xfail(strict=True, reason=KNOWN_OPEN[(t, name)])
            yield pytest.param(t, name, id=f"{t}/{name}", marks=marks)


@pytest.mark.parametrize("target,name", list(_cases()))
def test_corpus_input(target, name):
    if (target, name) in KNOWN_OPEN:
        # In a process of its own: these bugs close fds of the process.
        p = subprocess.run(
            [sys.executable, "-c", "import sys, importlib; from tests.fuzz._runner import seeds; "
             f"importlib.import_module('tests.fuzz.fuzz_{target}').TestOneInput("
             f"dict(seeds('{target}'))['{name}'])"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr[-3000:]
        return
    mod = importlib.import_module(f"tests.fuzz.fuzz_{target}")
    mod.TestOneInput(dict(seeds(target))[name])


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_briefly(target, tmp_path):
    # Seeds of bugs still open would end the run at once: left out here.
    seed_dir = tmp_path / "seeds"
    seed_dir.mkdir()
    for name, data in seeds(target):
        if (target, name) not in KNOWN_OPEN:
            (seed_dir / name).write_bytes(data)
    work = tmp_path / "work"
    work.mkdir()
    art = tmp_path / "artifacts"
    art.mkdir()
    p = subprocess.run(
        [sys.executable, "-m", f"tests.fuzz.fuzz_{target}", f"-max_total_time={SECONDS}",
         "-runs=3000", f"-artifact_prefix={art}/", str(work), str(seed_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=SECONDS + 60)
    found = sorted(os.listdir(art))
    if p.returncode != 0 or found:
        keep = os.path.join(ROOT, "build", "fuzz", "smoke-artifacts")
        os.makedirs(keep, exist_ok=True)
        for f in found:
            shutil.copy(art / f, keep)
        pytest.fail(f"fuzz_{target} found something (inputs kept in {keep}):\n{p.stderr[-4000:]}")
