"""`venet daemon` rows that need root: access by uid, gid and pid with
frontends running as nobody, admin refused to a non-root user, and a
venet-tap device made in a lab namespace."""
import contextlib
import grp
import io
import os

import pytest

from tests.conftest import IS_ROOT, wait_until
from tests.net.conftest import ns_ipr
from tests.test_daemon import DaemonProc, frame
from venet import cli, daemon, frontend

pytestmark = pytest.mark.skipif(not IS_ROOT, reason="needs root (setuid to nobody, taps)")

NOBODY = 65534


def _become_nobody():
    gid = grp.getgrnam("nogroup").gr_gid
    os.setgroups([gid])
    os.setresgid(gid, gid, gid)
    os.setresuid(NOBODY, NOBODY, NOBODY)


class Nobody:
    """A forked child as nobody:nogroup that runs fn once told to go (so
    its pid can be put in a rule first); result() is what fn returned, or
    'ExcType: message'."""

    def __init__(self, fn):
        self.go_r, self.go_w = os.pipe()
        self.res_r, res_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            try:
                os.close(self.go_w)
                _become_nobody()
                os.read(self.go_r, 1)
                out = str(fn())
            except BaseException as e:
                out = f"{type(e).__name__}: {e}"
            os.write(res_w, out.encode()[:4000])
            os._exit(0)
        os.close(res_w)
        os.close(self.go_r)

    def result(self):
        try:
            os.write(self.go_w, b"g")
        except BrokenPipeError:
            pass
        os.close(self.go_w)
        data = b""
        while chunk := os.read(self.res_r, 4096):
            data += chunk
        os.close(self.res_r)
        os.waitpid(self.pid, 0)
        return data.decode()


def as_nobody(fn):
    return Nobody(fn).result()


def lister(path):
    def fn():
        with frontend.connect(path) as bus:
            return ",".join(d["name"] for d in bus.list())
    return fn


@pytest.fixture
def dmn():
    d = DaemonProc()
    for b, dev in (("a", "la"), ("b", "lb")):
        d.req("bus-create", name=b)
        d.req("device-create", name=dev, **{"class": "venet-loopback"})
        d.req("bus-link", bus=b, device=dev)
    yield d
    d.cleanup()


def test_access_by_uid_and_gid(dmn):
    assert "access to bus 'a' refused (pid" in as_nobody(lister(dmn.sock("a")))
    dmn.req("bus-allow", bus="a", uid=NOBODY)
    assert as_nobody(lister(dmn.sock("a"))) == "la"
    assert "access to bus 'b' refused" in as_nobody(lister(dmn.sock("b")))
    dmn.req("bus-allow", bus="b", gid=grp.getgrnam("nogroup").gr_gid)
    assert as_nobody(lister(dmn.sock("b"))) == "lb"
    dmn.req("bus-deny", bus="a", uid=NOBODY)          # deny wins, and is logged with the creds
    assert "access to bus 'a' refused" in as_nobody(lister(dmn.sock("a")))
    assert f"uid {NOBODY}" in dmn.log()


def test_access_by_pid_covers_its_children_only(dmn):
    def child_and_grandchild():
        first = lister(dmn.sock("a"))()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                out = lister(dmn.sock("a"))()
            except BaseException as e:
                out = f"{type(e).__name__}: {e}"
            os.write(w, out.encode())
            os._exit(0)
        os.close(w)
        got = os.read(r, 4000).decode()
        os.close(r)
        os.waitpid(pid, 0)
        return f"{first}|{got}"
    allowed = Nobody(child_and_grandchild)
    other = Nobody(lister(dmn.sock("a")))
    dmn.req("bus-allow", bus="a", pid=allowed.pid)
    assert allowed.result() == "la|la"
    assert "access to bus 'a' refused" in other.result()


def test_a_revoked_frontend_is_disconnected(dmn):
    dmn.req("bus-allow", bus="a", uid=NOBODY)
    ready_r, ready_w = os.pipe()

    def hold():
        os.close(ready_r)
        bus = frontend.connect(dmn.sock("a"))
        bus.list()
        os.write(ready_w, b"r")        # connected: the parent denies now
        wait_until(lambda: not bus.alive(), timeout=20, what="the daemon to close the connection")
        return "closed"
    child = Nobody(hold)
    os.close(ready_w)
    os.write(child.go_w, b"g")
    assert os.read(ready_r, 1) == b"r"
    os.close(ready_r)
    dmn.req("bus-deny", bus="a", uid=NOBODY)
    assert child.result() == "closed"
    assert dmn.tree()["buses"]["a"]["connections"] == []


def test_admin_is_root_only(dmn):
    before = dmn.tree()

    def run_cli():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = cli.main(["bus", "create", "x", "--run-dir", dmn.run_dir])
        return f"{rc} {err.getvalue().strip()}"
    out = as_nobody(run_cli)
    assert out == f"2 venet: error: the admin socket {dmn.run_dir}/admin.sock serves root only"
    # Past the file mode, the daemon checks the peer's uid itself.
    os.chmod(os.path.join(dmn.run_dir, "admin.sock"), 0o666)
    out = as_nobody(lambda: daemon.request(dmn.run_dir, {"op": "bus-create", "name": "x"}))
    assert out == "AdminRefused: the admin socket serves root only"
    assert dmn.tree() == before
    assert "admin connection from pid" in dmn.log() and f"uid {NOBODY}" in dmn.log()


def test_tap_device_in_a_namespace(dmn, netns):
    ns = netns()
    r = dmn.cli("device", "create", "t0", "--class", "venet-tap", "--set", f"netns={ns}",
                "--set", "ifname=vdt0", "--set", "mtu=2000", "--set", "mac=02:00:00:00:0d:01")
    assert r.returncode == 0, r.stderr
    dmn.req("bus-link", bus="a", device="t0")
    with ns_ipr(ns) as ipr:
        idx = ipr.link_lookup(ifname="vdt0")
        assert idx
        link = ipr.get_links(idx[0])[0]
        assert link.get_attr("IFLA_MTU") == 2000 and link.get_attr("IFLA_ADDRESS") == "02:00:00:00:0d:01"
    assert not os.path.exists("/sys/class/net/vdt0")          # not in the daemon's namespace
    with frontend.connect(dmn.sock("a")) as bus:
        assert sorted(d["name"] for d in bus.list()) == ["la", "t0"]
        dev = bus.open("t0")
        for i in range(5):
            assert dev.send(frame(100, i), timeout=5)

        def rx():
            with ns_ipr(ns) as ipr:
                return ipr.get_links(idx[0])[0].get_attr("IFLA_STATS64")["rx_packets"] >= 5
        wait_until(rx, timeout=10, what="frames on the tap")
    r = dmn.cli("device", "create", "t1", "--class", "venet-tap", "--set", "netns=venet-no-such-ns")
    assert r.returncode == 2 and "cannot enter network namespace venet-no-such-ns" in r.stderr
    dmn.req("device-destroy", name="t0")
    with ns_ipr(ns) as ipr:
        wait_until(lambda: not ipr.link_lookup(ifname="vdt0"), timeout=10, what="the tap to go")


def test_tap_removed_when_the_daemon_stops(dmn, netns):
    ns = netns()
    dmn.req("device-create", name="t0", set={"netns": ns, "ifname": "vdt1"}, **{"class": "venet-tap"})
    with ns_ipr(ns) as ipr:
        assert ipr.link_lookup(ifname="vdt1")
        assert dmn.stop() == 0
        assert not ipr.link_lookup(ifname="vdt1")
