"""`venet capture` through a venet-loopback device of `venet daemon` (no
root): pcapng read back by scapy, tcpdump and tshark with the frames that
were sent, both directions, jumbo and GSO frames; a filter; a slow
capturer; a capturer killed with SIGKILL; several captures at once; bad
arguments."""
import hashlib
import os
import shutil
import signal
import subprocess
import sys

import pytest

from tests.conftest import wait_until
from tests.test_daemon import REPO, DaemonProc, frame
from venet import abi, capture, control, frontend

ME = os.geteuid()
scapy = pytest.importorskip("scapy.all")
from scapy.all import ICMP, IP, TCP, UDP, Ether, Raw, raw  # noqa: E402

MAC = dict(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


@pytest.fixture(scope="module")
def dmn():
    d = DaemonProc()
    try:
        d.req("bus-create", name="t")
        d.req("device-create", name="lo0", set={"mtu": "9000"}, **{"class": "venet-loopback"})
        d.req("bus-link", bus="t", device="lo0")
        if ME != 0:
            d.req("bus-allow", bus="t", uid=ME)
        yield d
    finally:
        d.cleanup()


def counters(d):
    with frontend.connect(d.sock("t")) as bus:
        return bus.stats()["devices"][0]["counters"]


def attached(d, n):
    return wait_until(lambda: counters(d)["captures"] == n, 10, f"{n} captures attached")


def cli(d, *args, **kw):
    return subprocess.Popen([sys.executable, "-m", "venet", "capture", "lo0", "--bus", "t",
                             "--run-dir", d.run_dir, *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)), **kw)


def finish(p, timeout=20):
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        raise AssertionError(f"venet capture did not end: {err.decode()}")
    return p.returncode, out.decode(), err.decode()


def reap(p):
    """Kill `p` if it still runs, and close its pipes now (not whenever the
    garbage collector gets to them, in some later test)."""
    if p.poll() is None:
        p.kill()
    p.communicate()


def sha(b):
    return hashlib.sha256(bytes(b)).hexdigest()


def tcp_super_frame(n):
    return raw(Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(sport=5001, dport=80)
               / Raw(b"g" * n))


def test_pcapng_holds_the_frames_sent_both_ways(dmn, tmp_path):
    from scapy.utils import PcapNgReader

    from venet.offload import Meta
    out = tmp_path / "lo0.pcapng"
    plain = [frame(60, 1), frame(1514, 2), frame(9014, 3)]
    gso = tcp_super_frame(20000)
    p = cli(dmn, "-w", str(out), "-c", str(2 * (len(plain) + 1)))
    try:
        attached(dmn, 1)
        with frontend.connect(dmn.sock("t")) as bus:
            dev = bus.open("lo0", offloads=abi.OFFLOAD_CAPS)
            for f in plain:
                assert dev.send(f, timeout=5)
                assert dev.recv(timeout=5) == f
            assert dev.send(gso, meta=Meta(34, 16, abi.GSO_TCPV4, 1448, 54, True), timeout=5)
            data, meta = dev.recv_frame(timeout=5)
            assert data == gso and meta.gso_type == abi.GSO_TCPV4
        rc, _, err = finish(p)
    finally:
        reap(p)
    assert rc == 0, err
    assert "8 frames captured, 0 dropped by the capture" in err
    sent = plain + [gso]
    # Each frame went out of the frontend, then (the loopback) back in.
    want = [(sha(f), d) for f in sent for d in ("out", "in")]
    with PcapNgReader(str(out)) as reader:
        pkts = list(reader)
    got = [(sha(raw(p)), {1: "in", 2: "out"}.get(p.direction)) for p in pkts]
    assert got == want
    # The GSO super-frame is one frame each way, with its offload note.
    assert [len(raw(p)) for p in pkts][-2:] == [len(gso)] * 2
    assert [p.comments for p in pkts][-2:] == [[b"gso tcpv4 size 1448, checksum partial"]] * 2
    # tcpdump reads the same frames (rewritten as pcap, read back).
    if shutil.which("tcpdump"):
        conv = tmp_path / "conv.pcap"
        r = subprocess.run(["tcpdump", "-r", str(out), "-w", str(conv)], capture_output=True, timeout=30)
        assert r.returncode == 0, r.stderr
        from scapy.utils import rdpcap
        assert [sha(raw(p)) for p in rdpcap(str(conv))] == [h for h, _ in want]
        r = subprocess.run(["tcpdump", "-nn", "-r", str(out)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and len(r.stdout.splitlines()) == len(want), r.stderr
    if shutil.which("tshark"):
        r = subprocess.run(["tshark", "-r", str(out), "-T", "fields", "-e", "frame.len",
                            "-e", "frame.packet_flags_direction"], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        rows = [ln.split("\t") for ln in r.stdout.splitlines()]
        assert [int(x[0]) for x in rows] == [len(f) for f in sent for _ in (0, 1)]
        assert [int(x[1], 0) for x in rows] == [2, 1] * len(sent)


def test_summary_lines_and_an_icmp_filter(dmn):
    p = cli(dmn, "-c", "2", "icmp")
    try:
        attached(dmn, 1)
        frames = [raw(Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / TCP(dport=22)),
                  raw(Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(dport=53)),
                  raw(Ether(**MAC) / IP(src="10.77.0.1", dst="10.77.0.2") / ICMP(id=7))]
        with frontend.connect(dmn.sock("t")) as bus:
            dev = bus.open("lo0")
            for f in frames:
                assert dev.send(f, timeout=5)
                assert dev.recv(timeout=5) == f
        rc, out, err = finish(p)
    finally:
        reap(p)
    assert rc == 0, err
    lines = out.splitlines()
    assert len(lines) == 2, out
    assert " out " in lines[0] and " in " in lines[1]
    assert all("ICMP" in ln and "10.77.0.1 > 10.77.0.2" in ln for ln in lines), out
    assert "2 frames captured, 0 dropped by the capture, 4 not taken by the filter" in err


def test_several_captures_and_a_slow_one(dmn):
    """A capturer that reads nothing loses frames (counted); the frontend
    gets every frame; another capture at the same time gets them all."""
    n = 300
    with frontend.connect(dmn.sock("t")) as bus:
        dev = bus.open("lo0")
        slow = capture.Capture(dmn.sock("t"), "lo0", snaplen=128, ring_bytes=0)   # the fewest slots
        fast = capture.Capture(dmn.sock("t"), "lo0", direction="in")
        try:
            got = []
            seen = []
            for i in range(n):
                assert dev.send(frame(100, i), timeout=5)
                got.append(dev.recv(timeout=5))
                f = fast.next(timeout=5)
                seen.append(f.data if f else None)
            assert got == [frame(100, i) for i in range(n)]      # nothing lost for the traffic
            assert seen == got                                    # the fast capture kept up
            c = slow.stop()
            assert c["seen"] == 2 * n
            assert c["captured"] == capture.MIN_SLOTS and c["dropped"] == 2 * n - capture.MIN_SLOTS
            # Its ring holds the first frames, each record saying the drops before it (none).
            first = [slow.next(timeout=1) for _ in range(capture.MIN_SLOTS)]
            assert [f.data for f in first] == [x for i in range(capture.MIN_SLOTS // 2)
                                               for x in [frame(100, i)[:100]] * 2]
            assert {f.drops for f in first} == {0}
            assert fast.stop()["dropped"] == 0
        finally:
            slow.close()
            fast.close()
    c = counters(dmn)
    assert c["captures"] == 0 and c.get("drop_tap_write", 0) == 0


def test_a_capturer_killed_leaves_the_device_running(dmn):
    p = cli(dmn, "-w", os.devnull)
    try:
        attached(dmn, 1)
        with frontend.connect(dmn.sock("t")) as bus:
            dev = bus.open("lo0")
            for i in range(50):
                assert dev.send(frame(200, i), timeout=5)
                assert dev.recv(timeout=5) == frame(200, i)
            p.send_signal(signal.SIGKILL)
            p.communicate(timeout=10)
            attached(dmn, 0)
            for i in range(50):
                assert dev.send(frame(200, i), timeout=5)
                assert dev.recv(timeout=5) == frame(200, i)
            with capture.Capture(dmn.sock("t"), "lo0", filter="ether[14] = 0x2a") as cap:
                assert dev.send(frame(200, 0x2a), timeout=5) and dev.send(frame(200, 1), timeout=5)
                assert dev.recv(timeout=5) == frame(200, 0x2a) and dev.recv(timeout=5) == frame(200, 1)
                recs = [cap.next(timeout=5) for _ in range(2)]
                assert [(r.direction, r.data) for r in recs] == [("out", frame(200, 0x2a)),
                                                                 ("in", frame(200, 0x2a))]
                assert cap.next(timeout=0.1) is None
                assert cap.stop()["filtered"] == 2
    finally:
        reap(p)
    assert "Traceback" not in dmn.log()


def test_ctrl_c_ends_a_capture_cleanly(dmn):
    p = cli(dmn)
    try:
        attached(dmn, 1)
        p.send_signal(signal.SIGINT)
        rc, out, err = finish(p)
    finally:
        reap(p)
    assert rc == 0 and err.strip() == "0 frames captured, 0 dropped by the capture", err
    attached(dmn, 0)


def test_a_device_removed_from_the_bus_ends_its_captures(dmn):
    dmn.req("device-create", name="lo1", **{"class": "venet-loopback"})
    dmn.req("bus-link", bus="t", device="lo1")
    with capture.Capture(dmn.sock("t"), "lo1") as cap:
        dmn.req("bus-unlink", bus="t", device="lo1")
        wait_until(lambda: not cap.poll_control(), 10, "the capture to be ended")
        assert cap.ended == "device 'lo1' was removed from bus 't'"
        assert cap.counters["captured"] == 0
    dmn.req("device-destroy", name="lo1")


@pytest.mark.parametrize("args,want", [
    (["nosuch"], "no device 'nosuch' on bus t"),
    (["lo0", "tcp port"], "bad filter 'tcp port': can't parse filter expression: syntax error"),
    (["lo0", "-w", "/nonexistent/dir/x.pcapng"],
     "cannot write /nonexistent/dir/x.pcapng: No such file or directory"),
])
def test_bad_arguments_get_one_line_and_status_2(dmn, args, want):
    r = subprocess.run([sys.executable, "-m", "venet", "capture", "--bus", "t", "--run-dir", dmn.run_dir,
                        *args], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"venet: error: {want}"]
    assert counters(dmn)["captures"] == 0


def test_control_refusals_keep_the_connection(dmn):
    with frontend.connect(dmn.sock("t")) as bus:
        base = {"device": "lo0", "snaplen": 100, "direction": "both", "filter": ""}
        for body, want in [
            (dict(base, device="nosuch"), "no device 'nosuch' on bus t"),
            (dict(base, snaplen=5), "snaplen 5 is out of range 14..262144"),
            (dict(base, direction="up"), "direction 'up' is not in, out or both"),
            (dict(base, filter="***"), "the filter is not base64"),
            (dict(base, filter="/wAAAAAAAAAGAAAAAQAAAA=="), "filter refused at instruction 0: unknown opcode"),
            (base, "capture_start needs 1 memfd and 1 doorbell pair, got 0 fds"),
        ]:
            with pytest.raises(control.RemoteError, match=want):
                control.call(bus.sock, control.CAPTURE_START, body)
        with pytest.raises(control.RemoteError, match="no capture 99 on this connection"):
            control.call(bus.sock, control.CAPTURE_STOP, {"capture": 99})
        assert bus.list()[0]["name"] == "lo0"


def test_a_capturer_that_breaks_its_ring_loses_only_its_own_frames(dmn):
    from tests.conftest import RawPeer
    with frontend.connect(dmn.sock("t")) as bus:
        dev = bus.open("lo0")
        with capture.Capture(dmn.sock("t"), "lo0", ring_bytes=0) as cap:
            peer = RawPeer(cap.region, 0)
            try:
                peer.set_cons(12345)            # a consumer index it never had
            finally:
                peer.close()
            for i in range(20):
                assert dev.send(frame(80, i), timeout=5)
                assert dev.recv(timeout=5) == frame(80, i)
            # The backend reads the consumer index only once its cached view
            # of the ring is full: then it finds the index impossible.
            c = cap.stop()
            assert c["captured"] == capture.MIN_SLOTS and c["dropped"] == 40 - capture.MIN_SLOTS
    assert counters(dmn)["captures"] == 0
