import json
import subprocess
import sys

from tests.conftest import needs_root
from tests.net.conftest import ROOT


@needs_root
def test_bench_bridge_quick(tmp_path):
    """Smoke: every topology builds, measures and is torn down."""
    out = tmp_path / "bridge.json"
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    r = subprocess.run([sys.executable, "-m", "venet", "bench", "bridge", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    rows = json.loads(out.read_text())["rows"]
    got = {(row["topology"], row["client"], row["metric"]) for row in rows}
    for topo in ("veth", "venet", "venet-poll"):
        assert (topo, "ping", "rtt_us_p50") in got and (topo, "tcp", "gbit_per_s") in got
    assert all(row["value"] >= 0 for row in rows)
    assert subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout == before
