import re
import subprocess
import sys

from tests.conftest import needs_root
from tests.net.conftest import ROOT, netns_names, new_netns


@needs_root
def test_demo_pings_across_and_cleans_up():
    before = netns_names()
    r = subprocess.run([sys.executable, "-m", "venet", "demo", "--count", "3"], capture_output=True,
                       text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3/3 replies" in r.stdout
    assert "to tap (frontend tx)" in r.stdout
    # The demo names the namespaces it made; they, and only they, must be gone.
    made = re.search(r"^namespaces (\S+) and (\S+);", r.stdout, re.M)
    assert made, r.stdout
    assert not set(made.groups()) & netns_names()
    assert new_netns(before, "venet-demo") == []
