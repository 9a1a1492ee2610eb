"""`venet bridge --tap ...` is a daemon (venet.daemon) with one bus and one
venet-tap device: its private run dir holds an admin socket that reflects
that registry and takes admin commands, and a clean exit removes it."""
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile

import pytest

import venet.frontend as fe
from tests.net.conftest import ROOT, ns_ipr
from venet import service


def run_dirs(pid):
    return glob.glob(os.path.join(tempfile.gettempdir(), f"{service.RUN_DIR_PREFIX}{pid}-*"))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "venet", *args], capture_output=True, text=True,
                          timeout=30, cwd=ROOT)


@pytest.fixture
def bridge(netns, procs, sockdir):
    def make(*extra, sock="br0.sock"):
        ns = netns()
        path = str(sockdir / sock)
        p = procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", path, *extra)
        dirs = run_dirs(p.pid)
        assert len(dirs) == 1, dirs
        return ns, path, p, dirs[0]
    return make


def test_the_bridge_is_a_daemon_with_one_bus(bridge):
    ns, sock, p, run_dir = bridge("--mac", "02:00:00:00:00:07", "--poll-us", "5")
    assert os.stat(run_dir).st_mode & 0o777 == 0o700
    with fe.connect(sock) as bus:
        assert bus.bus == "br0"                         # the bus is named after the socket
        assert bus.stats()["bus"] == "br0"
        bus.open("vt0")
        r = cli("tree", "--json", "--run-dir", run_dir)
        assert r.returncode == 0, r.stderr
        tree = json.loads(r.stdout)
    assert list(tree["buses"]) == ["br0"] and tree["buses"]["br0"]["devices"] == ["vt0"]
    dev = tree["devices"]["vt0"]
    assert dev["class"] == "venet-tap" and dev["buses"] == ["br0"]
    assert dev["attributes"]["ifname"] == "vt0" and dev["attributes"]["netns"] == ns
    assert dev["attributes"]["mac"] == "02:00:00:00:00:07" and dev["attributes"]["poll_us"] == 5
    conns = tree["buses"]["br0"]["connections"]
    assert [c["devices"] for c in conns] == [["vt0"]]
    r = cli("bus", "list", "--json", "--run-dir", run_dir)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["socket"] == sock


def test_a_device_added_live_through_the_admin_socket(bridge):
    """The bridge's bus takes more devices like any daemon bus: a loopback
    created and linked appears to a frontend already connected."""
    ns, sock, p, run_dir = bridge()
    with fe.connect(sock) as bus:
        assert [d["name"] for d in bus.list()] == ["vt0"]
        for args in (("device", "create", "lo0", "--class", "venet-loopback"),
                     ("bus", "link", "br0", "lo0")):
            r = cli(*args, "--run-dir", run_dir)
            assert r.returncode == 0, r.stderr
        assert sorted(d["name"] for d in bus.list()) == ["lo0", "vt0"]
        dev = bus.open("lo0")
        f = bytes.fromhex("020000000001020000000099") + b"\x08\x00" + b"\x01" * 46
        dev.send(f)
        assert dev.recv(timeout=3) == f


def test_group_is_an_access_rule_of_the_bus(bridge):
    import grp
    gid = grp.getgrnam("nogroup").gr_gid
    ns, sock, p, run_dir = bridge("--group", "nogroup")
    assert os.stat(sock).st_mode & 0o777 == 0o660 and os.stat(sock).st_gid == gid
    tree = json.loads(cli("tree", "--json", "--run-dir", run_dir).stdout)
    assert tree["buses"]["br0"]["access"]["allow"]["gid"] == [gid]


def test_clean_exit_removes_run_dir_socket_and_tap(bridge):
    ns, sock, p, run_dir = bridge()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=10) == 0
    assert not os.path.exists(run_dir) and not os.path.exists(sock)
    with ns_ipr(ns) as ipr:
        assert not ipr.link_lookup(ifname="vt0")


def test_a_killed_bridges_run_dir_is_swept_by_the_next(bridge):
    ns, sock, p, run_dir = bridge(sock="a.sock")
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.isdir(run_dir)                   # SIGKILL leaves it
    bridge(sock="b.sock")
    assert not os.path.exists(run_dir)


def test_bad_device_name_is_one_line(netns, sockdir):
    r = subprocess.run([sys.executable, "-m", "venet", "bridge", "--tap", "vt0", "--netns", netns(),
                        "--socket", str(sockdir / "x.sock"), "--device=-bad"],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "device name '-bad' may hold only" in r.stderr
    assert "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "venet", "bridge", "--tap", "_t0", "--netns", netns(),
                        "--socket", str(sockdir / "y.sock")],
                       capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2 and "name the device with --device" in r.stderr
    assert not (sockdir / "x.sock").exists() and not (sockdir / "y.sock").exists()


def test_existing_tap_keeps_its_mtu(netns, procs, sockdir):
    """Without --mtu, a tap that exists keeps its MTU, as before the daemon."""
    ns = netns()
    with ns_ipr(ns) as ipr:
        ipr.link("add", ifname="vt0", kind="tuntap", mode="tap")
        ipr.link("set", index=ipr.link_lookup(ifname="vt0")[0], mtu=4000)
    sock = str(sockdir / "m.sock")
    procs.venet("bridge", "--tap", "vt0", "--netns", ns, "--socket", sock)
    with fe.connect(sock) as bus:
        assert bus.list()[0]["mtu"] == 4000
