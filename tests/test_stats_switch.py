"""`venet stats` of a venet-switch: its table, its ports summed and a row
per port, and a STATS reply that stays within the control protocol's
64 KiB however many ports the switch has (the busiest ports' detail, the
rest counted in ports_omitted).  No root: a bridge.Bridge serving a
switch in a thread, frontends in this process."""
import json
import os
import resource
import subprocess
import sys
import threading

import pytest

from tests.conftest import wait_until
from venet import bridge, control
from venet import frontend as fe
from venet.devices import switch as swmod
from venet.devices.switch import SwitchDevice
from venet.service import rates

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_PORTS = 256                     # docs/switch.md, "Limits"


def bcast(src_id):
    return b"\xff" * 6 + b"\x02" + src_id.to_bytes(5, "big") + b"\x88\xb5" + bytes(46)


@pytest.fixture
def served(tmp_path):
    """A switch on bus b0 of a bridge in a thread; yields (switch, path)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192 <= hard or (soft < 8192 and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, hard))
    sw = SwitchDevice("sw0")
    path = str(tmp_path / "b0.sock")
    b = bridge.Bridge(path, [sw], bus="b0", max_connections=1024, max_per_process=1024)
    b.listen()
    t = threading.Thread(target=b.serve, daemon=True)
    t.start()
    try:
        yield sw, path
    finally:
        b.stop()
        t.join(10)
        b.devices.clear()
        b.close()
        sw.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_full_switch_fits_one_stats_reply_and_prints_per_port(served):
    sw, path = served
    conns = []
    try:
        for i in range(MAX_PORTS):
            c = fe.connect(path)
            conns.append(c)
            dev = c.open("sw0", ring_size=64)
            assert dev.send(bcast(i), timeout=2)
        # Every broadcast reaches every other port or is counted as dropped there.
        wait_until(lambda: sw.counters()[0].get("port_rx_frames", 0) == MAX_PORTS, what="frames in")
        with fe.connect(path) as c:
            s = c.stats()           # a reply over 64 KiB would be an ERROR here
        (d,) = s["devices"]
        assert len(control.encode(control.REPLY, s)) <= control.HDR.size + control.MAX_REPLY_BODY
        assert d["counters"]["ports"] == MAX_PORTS
        assert len(d["ports"]) + d["ports_omitted"] == MAX_PORTS and len(d["ports"]) > 0
        assert all(p.get("rx_frames") == 1 for p in d["ports"].values())

        r = subprocess.run([sys.executable, "-m", "venet", "stats", "--socket", path], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = r.stdout
        assert f"device sw0 (switch): {MAX_PORTS} port(s), link up" in out
        assert "to tap" not in out.split("device sw0", 1)[1].split("control:")[0]
        assert "MAC table 256/4096: learned 256" in out
        rows = [ln.split() for ln in out.splitlines() if ln.strip().split(" ")[0].isdigit()]
        assert len(rows) == len(d["ports"])
        (total,) = [ln.split() for ln in out.splitlines() if ln.strip().startswith("all ")]
        assert int(total[1]) == MAX_PORTS                      # rx frames, every port summed
        if d["ports_omitted"]:
            assert f"{d['ports_omitted']} more port(s) not shown" in out
    finally:
        for c in conns:
            c.close()


def _worst_ports(keys, n):
    """n ports whose every counter is at its largest (the longest JSON)."""
    big = (1 << 64) - 1
    return {i: {k: big - i for k in keys} for i in range(1, n + 1)}


def test_per_port_detail_is_bounded_even_with_every_counter_huge(served, monkeypatch):
    sw, path = served
    with fe.connect(path) as c:
        c.open("sw0", ring_size=64)
        (port,) = sw.ports.values()
        keys = sorted(sw.engine.port_stats(port.slot))
    assert "rx_frames" in keys and "drop_rx_full" in keys and len(keys) > 20
    flat, _ = sw.counters()
    per = _worst_ports(keys, MAX_PORTS - 1)
    per["uplink"] = {k: 7 for k in keys}
    flat.update({f"port_{k}": (1 << 64) - 1 for k in keys})
    monkeypatch.setattr(sw, "counters", lambda: (flat, per))
    entry = sw.stats()
    size = len(json.dumps(entry["ports"], separators=(",", ":")))
    assert size <= swmod.STATS_PORT_BYTES
    assert entry["ports_omitted"] > 0 and len(entry["ports"]) + entry["ports_omitted"] == MAX_PORTS
    # The busiest first: port 1 has the largest counters, the uplink the smallest.
    assert "1" in entry["ports"] and "uplink" not in entry["ports"]
    # Three such switches and a busy bus's control counters: still one reply.
    body = {"bus": "b0", "devices": [entry] * 3,
            "control": {f"refused_{i}": (1 << 64) - 1 for i in range(40)}}
    assert len(control.encode(control.REPLY, body)) <= control.HDR.size + control.MAX_REPLY_BODY


def test_port_detail_order_and_budget():
    per = {1: {"rx_frames": 5}, 2: {"rx_frames": 50, "drop_rx_full": 3}, 3: {}, "uplink": {"tx_frames": 9}}
    shown, omitted = swmod.port_detail(per)
    assert list(shown) == ["2", "uplink", "1", "3"] and omitted == 0
    assert shown["3"] == {} and shown["2"] == {"rx_frames": 50, "drop_rx_full": 3}
    one = len(json.dumps({"2": per[2]}, separators=(",", ":")))
    shown, omitted = swmod.port_detail(per, budget=one)
    assert list(shown) == ["2"] and omitted == 3


def test_watch_rates_of_a_switch_come_from_its_ports():
    def entry(**c):
        return {"device": "sw0", "link": True, "busy": False, "ports": {}, "counters": c}
    prev = {"devices": [entry(port_rx_frames=10, port_rx_bytes=600, port_tx_frames=20,
                              port_tx_bytes=1200, port_kicks=4, port_drop_rx_full=1, frames=10)]}
    cur = {"devices": [entry(port_rx_frames=30, port_rx_bytes=1800, port_tx_frames=60,
                             port_tx_bytes=3600, port_kicks=8, port_drop_rx_full=5, frames=30)]}
    (r,) = rates(prev, cur, 2.0)
    assert (r["tx_frames"], r["tx_bytes"], r["rx_frames"], r["rx_bytes"]) == (10, 600, 20, 1200)
    assert r["kicks"] == 2 and r["drops_by"] == {"rx_full": 2} and r["drops"] == 2
