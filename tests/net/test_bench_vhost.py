"""Smoke: `venet bench vhost`'s rows exist and hold numbers (no speed is
asserted), with short windows; its namespaces and sockets are gone after."""
import math
import shutil

import pytest

from tests.conftest import needs_root
from tests.net.conftest import netns_names, new_netns

pytestmark = pytest.mark.skipif(shutil.which("dpdk-testpmd") is None,
                                reason="dpdk-testpmd is not installed (Debian: apt-get install dpdk-dev)")

NEEDED = ["venet-vhost-rx-64", "venet-vhost-tx-64", "venet-vhost-rx-64-poll", "venet-vhost-tx-64-poll",
          "venet-vhost-loop-rx-64", "venet-vhost-loop-tx-64", "venet-vhost-loop-rx-64-poll", "venet-vhost-loop-tx-64-poll",
          "venet-vhost-reflect-rx-64", "venet-vhost-reflect-tx-64", "venet-vhost-reflect-rx-64-poll",
          "venet-vhost-reflect-tx-64-poll", "dpdk-vhost-rx-64", "dpdk-vhost-tx-64"]


@needs_root
def test_bench_vhost_rows():
    from bench import vhost
    before = netns_names()
    rows, notes = vhost.run(quick=True, progress=lambda m: None, secs=0.3, count=4)
    v = {r["name"]: (r["metric"], r["value"]) for r in rows}
    for name in NEEDED:
        assert v[name][0] == "frames_per_s", (name, notes)
        x = v[name][1]
        assert isinstance(x, float) and math.isfinite(x) and x > 0, (name, x, notes)
    for name in ("venet-vhost-ping", "venet-vhost-ping-signal", "dpdk-vhost-tap-ping"):
        assert v[name][0] == "rtt_us_p50" and v[name][1] > 0, (name, notes)
    assert v["venet-vhost-idle-cpu"][0] == "cpu_percent" and v["venet-vhost-idle-cpu"][1] >= 0
    assert new_netns(before, "vbh") == []
