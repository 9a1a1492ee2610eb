import subprocess
import sys

from tests.conftest import needs_root
from tests.net.conftest import ROOT


@needs_root
def test_demo_pings_across_and_cleans_up():
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    r = subprocess.run([sys.executable, "-m", "venet", "demo", "--count", "3"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3/3 replies" in r.stdout
    assert "to tap (frontend tx)" in r.stdout
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "venet-demo" not in after and before == after
