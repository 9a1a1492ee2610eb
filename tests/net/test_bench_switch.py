"""`venet bench switch --quick`: every row of issue 13 is there, with a
figure or with the reason it could not be measured; no speed is asserted.
Needs root for the AF_PACKET rows (a namespace and a veth pair)."""
import json

import pytest

from tests.conftest import IS_ROOT

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (the AF_PACKET rows make a namespace)")

STREAMS = ["switch-stream-64-c", "switch-stream-64-py", "switch-stream-64-c-4fe",
           "switch-stream-1500-c", "switch-stream-1500-py", "switch-stream-1500-c-4fe",
           "switch-stream-64-c-r1024", "switch-stream-64-c-4fe-r1024",
           "afpacket-stream-64", "afpacket-mmap-stream-64", "memif-stream-64", "loopback-stream-64-c"]
RTTS = ["switch-pingpong-poll", "switch-pingpong-signal", "ring-pingpong-poll", "relay-pingpong-poll",
        "eventfd-relay-pingpong",
        "afpacket-pingpong", "loopback-pingpong-signal", "spin-pingpong-c"]


def test_bench_switch_quick_rows(tmp_path, capsys):
    from venet import cli, daemon
    from bench import switch
    out = tmp_path / "switch.json"
    assert cli.main(["bench", "switch", "--quick", "--loopback", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = {(r["name"], r["metric"]): r for r in data["rows"]}
    for name in STREAMS:
        assert (name, "frames_per_s") in rows, name
    for name in RTTS:
        assert (name, "rtt_ns_p50") in rows, name
    for r in data["rows"]:
        assert r["value"] is not None or r.get("note"), r
        assert r["value"] is None or r["value"] > 0 or r["metric"] == "loss_fraction", r
    have_switch = switch.SWITCH_CLASS in daemon.class_table()
    for key, r in rows.items():
        if key[0].startswith("switch-"):
            if have_switch:
                assert r["value"] is not None, r
            else:
                assert r["value"] is None and "venet-switch" in r["note"], r
    # What runs everywhere (root): the harness through a loopback device,
    # the ring and eventfd baselines, AF_PACKET over a veth pair.
    for name in ("loopback-stream-64-c", "afpacket-stream-64", "afpacket-mmap-stream-64"):
        assert rows[(name, "frames_per_s")]["value"], name
    for name in ("loopback-pingpong-signal", "ring-pingpong-poll", "eventfd-relay-pingpong",
                 "afpacket-pingpong", "spin-pingpong-c"):
        assert rows[(name, "rtt_ns_p50")]["value"], name
    memif = rows[("memif-stream-64", "frames_per_s")]
    assert memif["value"] or "dpdk-testpmd" in memif["note"] or "memif" in memif["note"]
    text = capsys.readouterr().out
    assert "vCPU placement: spin ping-pong" in text
    assert data["placement"].startswith("vCPU placement")
