import glob
import json
import math
import subprocess
import sys
import tempfile

from tests.conftest import needs_root
from tests.net.conftest import ROOT, netns_names, new_netns

NEEDED = [("bus-idle", "cpu_percent"), ("bus-idle", "wakeups_per_s"),
          ("bus-device", "daemon_kib_per_device"), ("bus-device", "shm_kib_per_device"),
          ("bus-device", "create_to_first_frame_ms_p50"), ("bus-loopback-1", "frames_per_s"),
          ("bus-loopback-8", "frames_per_s"), ("bus-loopback-64", "frames_per_s")]


@needs_root
def test_bench_bus_quick(tmp_path):
    """Smoke: the rows the issue asks for, as sane numbers (not speeds), and
    the bench's namespace, daemon and run dir gone after."""
    out = tmp_path / "bus.json"
    before = netns_names()
    dirs = set(glob.glob(f"{tempfile.gettempdir()}/venet-bench-bus-*"))
    r = subprocess.run([sys.executable, "-m", "venet", "bench", "bus", "--quick", "--json", str(out)],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "--quick: 64 loopback and 8 tap devices" in r.stdout
    data = json.loads(out.read_text())
    v = {(row["name"], row["metric"]): row["value"] for row in data["rows"]}
    for need in NEEDED:
        assert need in v, need
    assert all(isinstance(x, (int, float)) and math.isfinite(x) and x >= 0 for x in v.values()), v
    assert 0 <= v[("bus-idle", "cpu_percent")] <= 200
    assert v[("bus-idle", "devices_open")] == 64
    assert v[("bus-device", "shm_kib_per_device")] > 0
    assert 0 < v[("bus-device", "create_to_first_frame_ms_p50")] <= v[("bus-device", "create_to_first_frame_ms_p90")]
    for n in (1, 8, 64):
        assert v[(f"bus-loopback-{n}", "frames_per_s")] > 0
    assert v[("bus-device-tap", "devices")] == 8
    assert new_netns(before, "vbb") == []           # the bench's lab is gone
    assert set(glob.glob(f"{tempfile.gettempdir()}/venet-bench-bus-*")) <= dirs


def test_bench_bus_report_renders(tmp_path, monkeypatch):
    """bench.report's Bus section from a bus-bench.json, targets judged."""
    from bench import report
    rows = [{"name": n, "metric": m, "value": 1.0} for n, m in NEEDED]
    monkeypatch.setattr(report, "DOCS", str(tmp_path))
    (tmp_path / "bus-bench.json").write_text(json.dumps({"rows": rows, "notes": ["a note"]}))
    text = report.render()
    assert "## The bus: `venet bench bus`" in text
    assert "| bus-loopback-64 | frames_per_s | 1 /s |" in text
    assert "| frames/s with 8 devices vs 1 | >= 1.00x | 1.00x | met |" in text
    assert "- a note" in text
