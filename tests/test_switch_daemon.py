"""venet-switch served by `venet daemon`: one switch linked to two buses,
per-port counters in the tree, unlinking it closes every holder, misuse
of its attributes is one line.  No root needed."""
import pytest

from tests.conftest import wait_until
from tests.test_daemon import ME, DaemonProc
from venet import frontend
from venet.frontend import LinkDown


@pytest.fixture
def dmn():
    d = DaemonProc()
    yield d
    d.cleanup()


def eth(dst, src, tag):
    return bytes.fromhex(dst.replace(":", "") + src.replace(":", "")) + b"\x88\xb5" + \
        tag.to_bytes(4, "big") + bytes(42)


def test_one_switch_joins_two_buses_of_a_daemon(dmn):
    for b in ("a", "b"):
        dmn.req("bus-create", name=b)
        if ME != 0:
            dmn.req("bus-allow", bus=b, uid=ME)
    dmn.req("device-create", name="sw", **{"class": "venet-switch"}, set={"ageing_s": "60"})
    dmn.req("bus-link", bus="a", device="sw")
    dmn.req("bus-link", bus="b", device="sw")
    with frontend.connect(dmn.sock("a")) as ba, frontend.connect(dmn.sock("a")) as ba2, \
            frontend.connect(dmn.sock("b")) as bb:
        x, y, z = ba.open("sw"), ba2.open("sw"), bb.open("sw")
        assert x.send(eth("ff:ff:ff:ff:ff:ff", x.mac, 1), timeout=2)
        assert y.recv(timeout=2)[14:18] == (1).to_bytes(4, "big")
        assert z.recv(timeout=2)[14:18] == (1).to_bytes(4, "big")
        assert z.send(eth(x.mac, z.mac, 2), timeout=2)
        assert x.recv(timeout=2)[14:18] == (2).to_bytes(4, "big")
        t = dmn.tree()
        c = t["devices"]["sw"]["counters"]
        assert c["mac_table_size"] == 4096 and c["ports"] == 3 and c["mac_entries"] == 2
        assert any(k.startswith("port") and k.endswith(".floods") and v == 1 for k, v in c.items())
        assert c["port_tx_frames"] == 3
        # A live attribute changes; a fixed one is refused in one line.
        dmn.req("device-set", name="sw", key="ageing_s", value="30")
        r = dmn.cli("device", "set", "sw", "mtu=9000")
        assert r.returncode != 0 and "switch" in r.stderr and len(r.stderr.strip().splitlines()) == 1
        # Unlinked from bus a: both of a's frontends lose their ports; b's keeps its own.
        dmn.req("bus-unlink", bus="a", device="sw")
        for d in (x, y):
            with pytest.raises(LinkDown):
                d.recv(timeout=3)
        wait_until(lambda: dmn.tree()["devices"]["sw"]["counters"]["ports"] == 1, what="a's ports to go")


@pytest.mark.parametrize("value, msg", [("eth0", "tap:NAME"), ("tap:", "tap:NAME"),
                                        ("tap:x@bad/ns", "namespace")])
def test_a_bad_uplink_is_refused_in_one_line(dmn, value, msg):
    r = dmn.cli("device", "create", "sw", "--class", "venet-switch", "--set", f"uplink={value}")
    assert r.returncode == 2, r.stderr
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "sw" not in dmn.tree()["devices"]


def test_venet_tree_shows_the_switch_ports_and_table(dmn):
    dmn.req("bus-create", name="a")
    if ME != 0:
        dmn.req("bus-allow", bus="a", uid=ME)
    dmn.req("device-create", name="sw", **{"class": "venet-switch"}, set={"mac_table_size": "64"})
    dmn.req("bus-link", bus="a", device="sw")
    with frontend.connect(dmn.sock("a")) as b1, frontend.connect(dmn.sock("a")) as b2:
        x, y = b1.open("sw"), b2.open("sw")
        assert x.send(eth("ff:ff:ff:ff:ff:ff", x.mac, 1), timeout=2)
        assert y.recv(timeout=2) is not None
        r = dmn.cli("tree")
        assert r.returncode == 0, r.stderr
        assert "2 port(s), MAC table 1/64 (full 0), floods 1" in r.stdout
        assert "floods=1" in r.stdout and "rx_frames=1" in r.stdout and "tx_frames=1" in r.stdout
