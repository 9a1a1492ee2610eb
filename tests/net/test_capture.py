"""`venet capture` of a tap device under TCP through bridge + attach (root,
namespaces made by the test): the kernel's GSO frames are recorded one
frame each with their offload note, in both directions, every frame the
pump moved while the capture was attached is in the file, and the
traffic arrives whole."""
import signal
import subprocess
import sys

from scapy.utils import PcapNgReader

from tests.conftest import wait_until
from tests.net.conftest import ROOT
from tests.net.test_offload import A_IP, counters, pair, tcp_transfer


def test_tcp_through_bridge_and_attach_captured_as_gso_frames(netns, procs, sockdir, tmp_path):
    a, b, sock = pair(netns, procs, sockdir)
    out = tmp_path / "vt0.pcapng"
    cap = subprocess.Popen([sys.executable, "-m", "venet", "capture", "vt0", "--socket", sock,
                            "-w", str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: counters(sock)["captures"] == 1, 20, "the capture to attach")
        c0 = counters(sock)
        assert tcp_transfer(b, a, A_IP, 4 << 20)
        c1 = counters(sock)
        cap.send_signal(signal.SIGINT)
        _, err = cap.communicate(timeout=30)
    finally:
        if cap.poll() is None:
            cap.kill()
            cap.wait()
    assert cap.returncode == 0, err
    assert "0 dropped by the capture" in err, err
    with PcapNgReader(str(out)) as reader:
        pkts = list(reader)
    outs = [p for p in pkts if p.direction == 2]
    ins = [p for p in pkts if p.direction == 1]
    gso = [p for p in pkts if any(c.startswith(b"gso tcpv4") for c in (p.comments or []))]
    # Every frame the pump moved while the capture was attached is in the
    # file, GSO super-frames once each.
    assert len(outs) >= c1["to_tap_frames"] - c0["to_tap_frames"] > 0
    assert len(ins) >= c1["from_tap_frames"] - c0["from_tap_frames"] > 0
    assert len(gso) >= c1["to_tap_gso"] - c0["to_tap_gso"] > 0
    assert max(len(bytes(p)) for p in gso) > 9014
    assert sum(v for k, v in c1.items() if k.startswith("drop_")) == 0, c1
    assert counters(sock)["captures"] == 0
