"""`venet daemon` with venet-loopback devices in a temporary run dir: admin
round trips and misuse, bus isolation, the config round trip, live
destroy under traffic, the frontend through a loopback, nothing leaked.
No root needed (root-only rows are in tests/net/test_daemon_tap.py)."""
import json
import os
import pathlib
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.conftest import wait_until
from venet import abi, control, daemon, frontend
from venet.frontend import LinkDown

REPO = pathlib.Path(__file__).resolve().parent.parent
ME = os.geteuid()


def frame(n=60, tag=0):
    return bytes.fromhex("020000000001020000000099") + b"\x08\x00" + bytes([tag & 0xff]) * (n - 14)


class DaemonProc:
    """`venet daemon` as a child process on its own run dir (mode 0755 so a
    frontend of another user can reach a bus socket).  stop() ends it by
    pid; the run dir is removed."""

    def __init__(self, run_dir=None, config=None, extra=()):
        self.own_dir = run_dir is None
        if run_dir is None:
            run_dir = tempfile.mkdtemp(prefix="venet-daemon-", dir="/tmp")
            os.chmod(run_dir, 0o755)
        self.run_dir = run_dir
        self.err = open(os.path.join(run_dir, "daemon.log"), "w+")
        cmd = [sys.executable, "-m", "venet", "daemon", "--run-dir", run_dir, *extra]
        if config:
            cmd += ["--config", str(config)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self.err,
                                     env=dict(os.environ, PYTHONPATH=str(REPO)))
        self.pid = self.proc.pid
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 20
        line = b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sel.select(deadline - time.monotonic()):
                line = self.proc.stdout.readline()
                break
        sel.close()
        if not line.startswith(b"ready"):
            self.stop()
            raise AssertionError(f"daemon did not start: {line!r} {self.log()}")

    def log(self):
        self.err.flush()
        with open(self.err.name) as f:
            return f.read()

    def cli(self, *args):
        return subprocess.run([sys.executable, "-m", "venet", *args, "--run-dir", self.run_dir],
                              cwd=REPO, capture_output=True, text=True, timeout=30,
                              env=dict(os.environ, PYTHONPATH=str(REPO)))

    def req(self, op, **kw):
        return daemon.request(self.run_dir, dict(op=op, **kw))

    def tree(self):
        return self.req("tree")

    def sock(self, bus):
        return os.path.join(self.run_dir, "bus", bus + ".sock")

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def threads(self):
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.err.close()
        return self.proc.returncode

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)


@pytest.fixture
def dmn():
    d = DaemonProc()
    yield d
    d.cleanup()


def setup_two(d):
    """Buses a and b, loopbacks la (on a) and lb (on b); this user allowed."""
    for b, dev in (("a", "la"), ("b", "lb")):
        d.req("bus-create", name=b)
        d.req("device-create", name=dev, **{"class": "venet-loopback"})
        d.req("bus-link", bus=b, device=dev)
        if ME != 0:
            d.req("bus-allow", bus=b, uid=ME)


def test_admin_round_trip_through_the_cli(dmn):
    assert dmn.cli("bus", "create", "t1").returncode == 0
    r = dmn.cli("device", "create", "lo0", "--class", "venet-loopback", "--set", "mtu=9000",
                "--set", "mac=02:AA:00:00:00:01")
    assert r.returncode == 0, r.stderr
    assert dmn.cli("bus", "link", "t1", "lo0").returncode == 0
    r = dmn.cli("bus", "list", "--json")
    assert r.returncode == 0
    buses = json.loads(r.stdout)
    assert [b["name"] for b in buses] == ["t1"] and buses[0]["devices"] == ["lo0"]
    assert os.path.exists(buses[0]["socket"])
    assert dmn.cli("device", "set", "lo0", "mtu=1500").returncode == 0
    t = json.loads(dmn.cli("tree", "--json").stdout)
    assert t["devices"]["lo0"]["attributes"] == {"mtu": 1500, "mac": "02:aa:00:00:00:01",
                                               "vhost_user": ""}
    assert t["devices"]["lo0"]["class"] == "venet-loopback"
    assert t["devices"]["lo0"]["interface"] == "virtual-ethernet"
    assert dmn.cli("bus", "allow", "t1", "--uid", "1234").returncode == 0
    assert dmn.tree()["buses"]["t1"]["access"]["allow"]["uid"] == [1234]
    assert dmn.cli("bus", "deny", "t1", "--uid", "1234").returncode == 0
    assert dmn.tree()["buses"]["t1"]["access"]["deny"]["uid"] == [1234]
    assert "bus t1: devices lo0" in dmn.cli("tree").stdout
    assert dmn.cli("bus", "unlink", "t1", "lo0").returncode == 0
    assert dmn.cli("device", "destroy", "lo0").returncode == 0
    assert dmn.cli("bus", "destroy", "t1").returncode == 0
    assert not os.path.exists(dmn.sock("t1"))
    assert dmn.tree() == {"version": 1, "buses": {}, "devices": {}}


@pytest.mark.parametrize("args,msg", [
    (["device", "create", "x0", "--class", "venet-lopback"], "no device class 'venet-lopback'"),
    (["device", "create", "l0", "--class", "venet-loopback"], "device 'l0' already exists"),
    (["bus", "create", "b0"], "bus 'b0' already exists"),
    (["bus", "link", "nobus", "l0"], "no bus 'nobus'"),
    (["bus", "link", "b0", "nodev"], "no device 'nodev'"),
    (["device", "create", "x1", "--class", "venet-loopback", "--set", "mtu=99999"], "out of range"),
    (["device", "create", "x1", "--class", "venet-loopback", "--set", "mac=01:00:00:00:00:01"],
     "multicast"),
    (["device", "create", "x1", "--class", "venet-loopback", "--set", "colour=red"],
     "has no attribute 'colour'"),
    (["device", "set", "l0", "mtu=abc"], "attribute 'mtu'"),
    (["device", "destroy", "nodev"], "no device 'nodev'"),
    (["bus", "create", "bad/name"], "bus name"),
    (["bus", "destroy", "nobus"], "no bus 'nobus'"),
])
def test_admin_misuse_is_one_line_exit_2_and_changes_nothing(dmn, args, msg):
    dmn.req("bus-create", name="b0")
    dmn.req("device-create", name="l0", **{"class": "venet-loopback"})
    before = dmn.tree()
    r = dmn.cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and msg in lines[0], r.stderr
    assert dmn.tree() == before


def test_admin_command_without_a_daemon_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "venet", "bus", "list", "--run-dir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2 and r.stderr.strip() == f"venet: error: no daemon at {tmp_path} (no admin.sock)"


def test_malformed_admin_requests_are_refused_and_the_daemon_stays(dmn):
    import socket
    for raw in (b"not json", b"[1]", json.dumps({"op": "nope"}).encode(), b"{" * 5000,
                json.dumps({"op": "bus-create", "name": 7}).encode()):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.settimeout(10)
        s.connect(os.path.join(dmn.run_dir, "admin.sock"))
        s.send(raw)
        reply = json.loads(s.recv(1 << 16))
        s.close()
        assert reply["ok"] is False and reply["error"]
    assert dmn.tree()["buses"] == {}


def test_malformed_config_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[devices.l0]\nclass = 'venet-loopback'\nattributes = { mtu = 9001 }\n")
    r = subprocess.run([sys.executable, "-m", "venet", "daemon", "--run-dir", str(tmp_path / "run"),
                        "--config", str(bad)], cwd=REPO, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "devices.l0.attributes.mtu" in lines[0] and "out of range" in lines[0]
    assert not (tmp_path / "run").exists() or not os.listdir(tmp_path / "run")


def test_frontend_sends_and_receives_through_a_loopback(dmn):
    dmn.req("bus-create", name="t")
    dmn.req("device-create", name="lo0", set={"mtu": "9000"}, **{"class": "venet-loopback"})
    dmn.req("bus-link", bus="t", device="lo0")
    if ME != 0:
        dmn.req("bus-allow", bus="t", uid=ME)
    with frontend.connect(dmn.sock("t")) as bus:
        assert [d["name"] for d in bus.list()] == ["lo0"]
        dev = bus.open("lo0")
        assert dev.mtu == 9000
        t = dmn.tree()
        (conn,) = t["buses"]["t"]["connections"]
        assert conn["devices"] == ["lo0"] and conn["pid"] == os.getpid()
        assert t["devices"]["lo0"]["connections"] == [conn["id"]]
        sent = [frame(60, 1), frame(1514, 2), frame(9014, 3)]
        for f in sent:
            assert dev.send(f, timeout=5)
        got = [dev.recv(timeout=5) for _ in sent]
        assert got == sent
        for i in range(200):                 # more than one ring's worth, in order
            assert dev.send(frame(100, i), timeout=5)
            assert dev.recv(timeout=5) == frame(100, i)
    c = dmn.tree()["devices"]["lo0"]["counters"]
    assert c["to_tap_frames"] == 203 and c["from_tap_frames"] == 203


def test_loopback_returns_gso_super_frames_when_offered(dmn):
    from scapy.all import IP, TCP, Ether, Raw, raw
    from venet.offload import Meta
    setup_two(dmn)
    with frontend.connect(dmn.sock("a")) as bus:
        dev = bus.open("la", offloads=abi.OFFLOAD_CAPS)
        assert dev.offloads & abi.CAP_TSO4
        f = raw(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / TCP() / Raw(b"z" * 20000))
        m = Meta(34, 16, abi.GSO_TCPV4, 1448, 54, True)
        assert dev.send(f, meta=m, timeout=5)
        data, meta = dev.recv_frame(timeout=5)
        assert data == f and meta.gso_type == abi.GSO_TCPV4 and meta.gso_size == 1448


def test_two_buses_see_only_their_own_devices(dmn):
    setup_two(dmn)
    with frontend.connect(dmn.sock("a")) as ba, frontend.connect(dmn.sock("b")) as bb:
        assert [d["name"] for d in ba.list()] == ["la"]
        assert [d["name"] for d in bb.list()] == ["lb"]
        for bus, other in ((ba, "lb"), (bb, "la")):
            for guess in (other, "nosuch", "../" + other, ""):
                with pytest.raises(control.RemoteError) as e:
                    bus.open(guess)
                assert "no device" in str(e.value)
        da, db = ba.open("la"), bb.open("lb")
        da.send(frame(60, 0xa), timeout=5)
        db.send(frame(60, 0xb), timeout=5)
        assert da.recv(timeout=5) == frame(60, 0xa)
        assert db.recv(timeout=5) == frame(60, 0xb)
        assert da.recv(timeout=0.05) is None and db.recv(timeout=0.05) is None
    # a device linked to both buses is still opened by one frontend at a time
    dmn.req("bus-link", bus="b", device="la")
    with frontend.connect(dmn.sock("a")) as ba, frontend.connect(dmn.sock("b")) as bb:
        ba.open("la")
        with pytest.raises(control.RemoteError, match="in use"):
            bb.open("la")


def test_a_device_linked_live_appears_to_a_connected_frontend(dmn):
    setup_two(dmn)
    with frontend.connect(dmn.sock("a")) as ba:
        assert [d["name"] for d in ba.list()] == ["la"]
        dmn.req("device-create", name="lc", **{"class": "venet-loopback"})
        dmn.req("bus-link", bus="a", device="lc")
        assert sorted(d["name"] for d in ba.list()) == ["la", "lc"]
        dev = ba.open("lc")
        dev.send(frame(), timeout=5)
        assert dev.recv(timeout=5) == frame()


def _traffic(dev, stop, seen):
    """Send and receive until LinkDown (recorded in seen) or stop."""
    i = 0
    while not stop.is_set():
        try:
            dev.send(frame(200, i), timeout=0.5)
            dev.recv(timeout=0.5)
        except LinkDown as e:
            seen.append(e)
            return
        except Exception as e:      # the test fails on it below
            seen.append(e)
            return
        i += 1


@pytest.mark.parametrize("how", ["device-destroy", "bus-unlink", "bus-destroy"])
def test_live_removal_under_traffic_gives_link_down(dmn, how):
    setup_two(dmn)
    bus = frontend.connect(dmn.sock("a"))
    other = frontend.connect(dmn.sock("b"))
    try:
        dev = bus.open("la")
        stop, seen = threading.Event(), []
        t = threading.Thread(target=_traffic, args=(dev, stop, seen))
        t.start()
        wait_until(lambda: dmn.tree()["devices"]["la"]["counters"].get("from_tap_frames", 0) > 50,
                   timeout=20, what="traffic through la")
        if how == "device-destroy":
            dmn.req("device-destroy", name="la")
        elif how == "bus-unlink":
            dmn.req("bus-unlink", bus="a", device="la")
        else:
            dmn.req("bus-destroy", name="a")
        t.join(timeout=20)
        assert not t.is_alive()
        assert len(seen) == 1 and isinstance(seen[0], LinkDown), seen
        events = dev.events()
        assert (abi.EV_LINKSTATE, 0, 0) in events
        # the other bus is untouched
        d2 = other.open("lb")
        d2.send(frame(), timeout=5)
        assert d2.recv(timeout=5) == frame()
        tree = dmn.tree()
        if how == "bus-unlink":
            assert tree["devices"]["la"]["buses"] == [] and tree["devices"]["la"]["connections"] == []
        assert tree["buses"].get("a", {"connections": []})["connections"] == []
    finally:
        stop.set()
        t.join(timeout=20)
        bus.close()
        other.close()


def test_config_round_trip_and_restart_serve_the_same_registry(dmn, tmp_path):
    setup_two(dmn)
    dmn.req("device-create", name="lc", set={"mtu": "4000", "mac": "02:00:00:00:00:0c"},
            **{"class": "venet-loopback"})
    dmn.req("bus-link", bus="a", device="lc")
    dmn.req("bus-link", bus="b", device="lc")
    dmn.req("bus-allow", bus="a", gid=4321)
    dmn.req("bus-deny", bus="b", uid=4322)
    saved = tmp_path / "saved.json"
    r = dmn.cli("tree", "--json")
    saved.write_text(r.stdout)
    before = dmn.tree()
    assert dmn.stop() == 0
    d2 = DaemonProc(config=saved)
    try:
        after = d2.tree()
        for t in (before, after):
            for dev in t["devices"].values():
                dev.pop("counters")
        assert after == before
        with frontend.connect(d2.sock("a")) as bus:
            assert sorted(d["name"] for d in bus.list()) == ["la", "lc"]
            dev = bus.open("lc")
            assert dev.mtu == 4000 and dev.mac == "02:00:00:00:00:0c"
            dev.send(frame(), timeout=5)
            assert dev.recv(timeout=5) == frame()
    finally:
        d2.cleanup()


def test_toml_config_with_the_documented_shape(tmp_path):
    cfg = tmp_path / "vbus.toml"
    cfg.write_text("""
[buses.tenant-a.access.allow]
uid = [1000]

[devices.lo0]
class = "venet-loopback"
buses = ["tenant-a"]
attributes = { mtu = 9000 }
""")
    d = DaemonProc(config=cfg)
    try:
        t = d.tree()
        assert t["buses"]["tenant-a"]["devices"] == ["lo0"]
        assert t["devices"]["lo0"]["attributes"]["mtu"] == 9000
        assert os.path.exists(d.sock("tenant-a"))
    finally:
        d.cleanup()


def test_sigterm_is_tidy_and_nothing_leaks(dmn):
    dmn.req("bus-create", name="warm")
    dmn.req("bus-destroy", name="warm")
    fds0, threads0 = dmn.fds(), dmn.threads()
    for round_ in range(3):
        setup_two(dmn)
        with frontend.connect(dmn.sock("a")) as bus:
            dev = bus.open("la")
            dev.send(frame(), timeout=5)
            assert dev.recv(timeout=5) == frame()
        with frontend.connect(dmn.sock("b")) as bus:
            dev = bus.open("lb")
            dev.send(frame(), timeout=5)
            assert dev.recv(timeout=5) == frame()
            dmn.req("device-destroy", name="lb")     # while open
        for b in ("a", "b"):
            dmn.req("bus-destroy", name=b)
        dmn.req("device-destroy", name="la")
        wait_until(lambda: dmn.fds() == fds0 and dmn.threads() == threads0, timeout=10,
                   what=f"fds back to {fds0} and threads to {threads0} (round {round_})")
    setup_two(dmn)
    bus = frontend.connect(dmn.sock("a"))
    try:
        bus.open("la")
        assert dmn.stop() == 0
    finally:
        bus.close()
    left = sorted(os.listdir(dmn.run_dir))
    assert "admin.sock" not in left and "bus" not in left, left      # sockets and their directory gone


def test_venet_classes_are_entry_points_and_importable():
    import tomllib
    import importlib
    from venet.classes import LoopbackClass, NullClass, TapClass
    eps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["vbus.device_classes"]
    assert eps == {"venet-loopback": "venet.classes:LoopbackClass", "venet-tap": "venet.classes:TapClass",
                   "venet-switch": "venet.classes:SwitchClass", "venet-null": "venet.classes:NullClass"}
    for name, target in eps.items():
        mod, attr = target.split(":")
        cls = getattr(importlib.import_module(mod), attr)
        assert cls.name == name and cls.interface == "virtual-ethernet"
    assert {a.name for a in TapClass.attrs} == {"ifname", "netns", "mtu", "mac", "offloads", "poll_us", "cpu",
                                              "vhost_user"}
    assert {a.name for a in LoopbackClass.attrs} == {"mtu", "mac", "vhost_user"}
    assert {a.name for a in NullClass.attrs} == {"mtu", "mac", "source", "vhost_user"}


def test_scapy_socket_works_against_a_daemon_bus(dmn):
    from scapy.all import IP, UDP, Ether, Raw
    from venet.scapy_socket import VenetSocket
    setup_two(dmn)
    s = VenetSocket(socket_path=dmn.sock("a"), iface="la")
    try:
        pkt = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(dst="10.9.9.9") / UDP() / Raw(b"hi")
        s.send(pkt)
        got = wait_until(lambda: s.recv(), timeout=10, what="the packet back")
        assert bytes(got) == bytes(pkt)
    finally:
        s.close()


def test_a_second_daemon_on_the_same_run_dir_is_refused(dmn):
    r = subprocess.run([sys.executable, "-m", "venet", "daemon", "--run-dir", dmn.run_dir],
                       cwd=REPO, capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1] == \
        f"venet: error: {dmn.run_dir}/admin.sock is in use by a running daemon"
    assert dmn.tree()["buses"] == {}        # the first one still serves
