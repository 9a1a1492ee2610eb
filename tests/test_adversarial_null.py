"""Hostile and odd use of venet-null, written from its docs alone
(docs/vbus.md "venet-null", docs/vhost-user.md), against `venet daemon`
(no root): bad attribute values through the CLI and the admin API, a
source at the smallest and largest lengths with mtu 9000, a frontend that
opens a source and closes at once many times, captures with filters on a
source, offloads negotiated on a sink and GSO frames sent to it, vhost-user
drivers (the Python driver of tests/test_vhost_hostile.py) on a sink and a
source, destroy while open.  What the docs promise must hold; nothing a
peer does may crash the daemon or leak its fds."""
import os
import struct

import pytest

from tests.conftest import wait_until
from tests.test_daemon import DaemonProc, frame
from tests.test_vhost_hostile import FEATURES, GPA, Driver
from venet import abi, frontend
from venet.classes import null_frame
from venet.daemon import AdminRefused
from venet.frontend import LinkDown
from venet.vhost import protocol as P

ME = os.geteuid()


@pytest.fixture(scope="module")
def dmn():
    d = DaemonProc()
    d.n = 0
    d.req("bus-create", name="adv")
    if ME != 0:
        d.req("bus-allow", bus="adv", uid=ME)
    yield d
    d.cleanup()


def _null(dmn, **attrs):
    """A venet-null device on bus 'adv' with these attributes: its name."""
    dmn.n += 1
    name = f"an{dmn.n}"
    dmn.req("device-create", name=name, set={k: str(v) for k, v in attrs.items()},
            **{"class": "venet-null"})
    dmn.req("bus-link", bus="adv", device=name)
    return name


def _counters(dmn, name):
    return dmn.tree()["devices"][name]["counters"]


def _mac(dmn, name):
    with frontend.connect(dmn.sock("adv")) as bus:
        return next(d["mac"] for d in bus.list() if d["name"] == name)


def _baseline(dmn):
    """The daemon's fds once no connection is left on bus 'adv'."""
    wait_until(lambda: not dmn.tree()["buses"]["adv"]["connections"], 10, "no connection on the bus")
    # The admin request's own socket may still be open for a moment.
    seen = []
    for _ in range(5):
        seen.append(dmn.fds())
        threading_wait(0.02)
    return min(seen)


def _quiet_fds(dmn, baseline):
    """The daemon's fds back to `baseline` (connections and engines gone)."""
    return wait_until(lambda: dmn.fds() <= baseline, 10, f"the daemon's fds back to {baseline}")


# ---- attributes -------------------------------------------------------------

BAD_CREATE = [
    # (attributes, what the one-line error must contain)
    ({"source": "30"}, "source 30: a frame is 60..1514 bytes with mtu 1500 (0: no source)"),
    ({"source": "59"}, "source 59: a frame is 60..1514 bytes with mtu 1500"),
    ({"source": "1515"}, "source 1515: a frame is 60..1514 bytes with mtu 1500"),
    ({"source": "83", "mtu": "68"}, "source 83: a frame is 60..82 bytes with mtu 68"),
    ({"source": "9015", "mtu": "9000"}, "source"),
    ({"source": "-1"}, "source"),
    ({"source": "sixty"}, "source"),
    ({"source": "1e3"}, "source"),
    ({"mtu": "67"}, "mtu"),
    ({"mtu": "9001"}, "mtu"),
    ({"mac": "01:00:00:00:00:01"}, "multicast"),
    ({"mac": "00:00:00:00:00:00"}, "all-zero"),
    ({"mac": "zz:00:00:00:00:01"}, "MAC"),
    ({"nosuch": "1"}, "nosuch"),
    ({"vhost_user": "relative/x.sock"}, "absolute"),
]


@pytest.mark.parametrize("attrs, why", BAD_CREATE, ids=[",".join(a) + "=" + ",".join(a.values())
                                                        for a, _ in BAD_CREATE])
def test_bad_attributes_are_refused_by_the_cli_and_the_admin_api(dmn, attrs, why):
    before = _baseline(dmn)
    args = [x for k, v in attrs.items() for x in ("--set", f"{k}={v}")]
    r = dmn.cli("device", "create", "badnull", "--class", "venet-null", *args)
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and why in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    with pytest.raises(AdminRefused) as e:
        dmn.req("device-create", name="badnull", set=attrs, **{"class": "venet-null"})
    assert why in str(e.value)
    assert "badnull" not in dmn.tree()["devices"]
    # A refused create leaves no eventfd behind.
    _quiet_fds(dmn, before)


def test_edge_lengths_are_accepted(dmn):
    for attrs in ({"source": "60", "mtu": "68"}, {"source": "82", "mtu": "68"},
                  {"source": "0", "mtu": "68"}, {"source": "9014", "mtu": "9000"}):
        name = _null(dmn, **attrs)
        got = dmn.tree()["devices"][name]["attributes"]
        assert got["source"] == int(attrs["source"]) and got["mtu"] == int(attrs["mtu"])


def test_source_cannot_change_while_open(dmn):
    name = _null(dmn, source=64)
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        assert dev.recv(timeout=5) is not None
        r = dmn.cli("device", "set", name, "source=0")
        assert r.returncode == 2 and "source" in r.stderr, r.stderr
        assert dmn.tree()["devices"][name]["attributes"]["source"] == 64
        assert dev.recv(timeout=5) is not None


def test_a_new_source_set_while_closed_is_what_the_device_gives(dmn):
    name = _null(dmn, source=64)
    r = dmn.cli("device", "set", name, "source=0")
    assert r.returncode == 0, r.stderr
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        # The tree says source 0: a sink only, so nothing may come.
        assert dev.recv(timeout=0.5) is None


def test_a_new_mac_set_while_closed_is_the_source_frames_source_address(dmn):
    name = _null(dmn, source=64)
    assert dmn.cli("device", "set", name, "mac=02:11:22:33:44:55").returncode == 0
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        f = dev.recv(timeout=5)
        assert f == null_frame("02:11:22:33:44:55", 64)


@pytest.mark.parametrize("key, value, source", [("source", "5", 0), ("source", "9000", 0),
                                                ("mtu", "68", 1514)])
def test_a_set_that_breaks_source_within_mtu_is_refused(dmn, key, value, source):
    name = _null(dmn, source=source)
    r = dmn.cli("device", "set", name, f"{key}={value}")
    assert r.returncode == 2 and "source" in r.stderr, (r.returncode, r.stderr)


# ---- a venet frontend ---------------------------------------------------------

@pytest.mark.parametrize("length", [60, 61, 1514, 4096, 9014])
def test_a_source_at_the_edges_with_mtu_9000(dmn, length):
    name = _null(dmn, source=length, mtu=9000)
    want = null_frame(_mac(dmn, name), length)
    assert len(want) == length and want[:6] == b"\xff" * 6 and want[12:14] == b"\x88\xb5"
    assert want[14:] == bytes(length - 14)
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        assert dev.mtu == 9000
        got = [dev.recv(timeout=5) for _ in range(300)]
        assert got == [want] * 300
        # A sink at the same time: the largest frame the MTU allows is taken.
        assert dev.send(frame(9014, 7), timeout=5)
        wait_until(lambda: _counters(dmn, name).get("to_tap_frames") == 1, 5, "the frame dropped")
    # Counted per frame and per read: equal once the pump is at rest.
    c = wait_until(lambda: (lambda c: c if c["from_tap_bytes"] == c["from_tap_frames"] * length else None)(
        _counters(dmn, name)), 5, "the source's counters to agree")
    assert c["to_tap_bytes"] == 9014 and c["from_tap_frames"] >= 300
    assert not any(v for k, v in c.items() if k.startswith("drop_")), c


def test_a_sink_refuses_frames_past_its_mtu_and_stays(dmn):
    name = _null(dmn, mtu=68)
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        with pytest.raises(ValueError):
            dev.send(frame(83), timeout=1)
        for n in (60, 82):
            assert dev.send(frame(n), timeout=5)
        wait_until(lambda: _counters(dmn, name).get("to_tap_frames") == 2, 5, "two frames taken")
        assert dev.recv(timeout=0.2) is None


@pytest.mark.parametrize("kw, why", [
    (dict(buf_size=64), "buffers of 64 bytes"),
    (dict(ring_size=64, buf_size=256, offloads=abi.OFFLOAD_CAPS), "too small for frames"),
])
def test_a_frontend_whose_rings_cannot_hold_the_source_is_told_why(dmn, kw, why):
    name = _null(dmn, source=9014, mtu=9000)
    with frontend.connect(dmn.sock("adv")) as bus:
        with pytest.raises(Exception) as e:
            bus.open(name, **kw)
        assert why in str(e.value)
    with frontend.connect(dmn.sock("adv")) as bus:
        assert len(bus.open(name).recv(timeout=5)) == 9014


def test_open_and_close_a_source_at_once_many_times(dmn):
    name = _null(dmn, source=1514)
    before = _baseline(dmn)
    for k in range(60):
        with frontend.connect(dmn.sock("adv")) as bus:
            dev = bus.open(name)
            if k % 3 == 0:
                assert dev.recv(timeout=5) is not None
            dev.close()
    _quiet_fds(dmn, before)
    # Still a working source for the next frontend.
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        assert dev.recv(timeout=5) == null_frame(_mac(dmn, name), 1514)


def test_offloads_on_a_sink_and_gso_frames_sent_to_it(dmn):
    from scapy.all import IP, TCP, UDP, Ether, Raw, raw
    from venet.offload import Meta
    name = _null(dmn)
    with frontend.connect(dmn.sock("adv")) as bus:
        assert set(abi.cap_names(abi.OFFLOAD_CAPS).split(",")) <= \
            set(next(d["offloads"] for d in bus.list() if d["name"] == name).split(","))
        dev = bus.open(name, offloads=abi.OFFLOAD_CAPS)
        assert dev.offloads & abi.CAP_TSO4 and dev.offloads & abi.CAP_TSO6
        t4 = raw(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / TCP() / Raw(b"z" * 60000))
        assert dev.send(t4, meta=Meta(34, 16, abi.GSO_TCPV4, 1448, 54), timeout=5)
        u = raw(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / UDP() / Raw(b"u" * 300))
        assert dev.send(u, meta=Meta(34, 6), timeout=5)
        # gso_size 0 is a malformed super-frame: refused and counted, the device stays.
        assert dev.send(t4, meta=Meta(34, 16, abi.GSO_TCPV4, 0, 54), timeout=5)
        assert dev.send(frame(100), timeout=5)
        c = wait_until(lambda: (lambda c: c if c.get("to_tap_frames") == 3 else None)(
            _counters(dmn, name)), 5, "three frames taken")
        assert c["to_tap_gso"] == 1 and c["to_tap_csum"] == 1
        assert c["to_tap_bytes"] == len(t4) + len(u) + 100
        assert sum(v for k, v in c.items() if k.startswith("drop_meta")) == 1, c
        assert dev.recv(timeout=0.2) is None


def test_a_source_with_offloads_gives_plain_frames(dmn):
    name = _null(dmn, source=200)
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name, offloads=abi.OFFLOAD_CAPS)
        for _ in range(50):
            data, meta = dev.recv_frame(timeout=5)
            assert data == null_frame(_mac(dmn, name), 200) and meta is None


def test_captures_with_filters_on_a_source(dmn):
    pytest.importorskip("scapy.all")
    from venet import capture
    name = _null(dmn, source=100)
    want = null_frame(_mac(dmn, name), 100)
    with capture.Capture(dmn.sock("adv"), name, filter="ether proto 0x88b5", direction="in") as take, \
            capture.Capture(dmn.sock("adv"), name, filter="ip") as refuse, \
            capture.Capture(dmn.sock("adv"), name, snaplen=64, ring_bytes=0) as slow:
        with frontend.connect(dmn.sock("adv")) as bus:
            dev = bus.open(name)
            got = [dev.recv(timeout=5) for _ in range(2000)]
            assert got == [want] * 2000
        frames = []
        wait_until(lambda: frames.append(take.next(timeout=0.1)) or
                   len([f for f in frames if f]) >= 100, 5, "100 captured frames")
        f = next(f for f in frames if f)
        assert f.data == want and f.orig_len == 100 and f.direction == "in"
        ct, cr, cs = take.stop(), refuse.stop(), slow.stop()
    # What the frontend took was seen by every capture; the filter that
    # takes no 0x88b5 frame filtered them all; the one never read dropped.
    assert ct["seen"] >= 2000 and ct["captured"] + ct["dropped"] == ct["seen"] and ct["filtered"] == 0
    assert cr["seen"] >= 2000 and cr["filtered"] == cr["seen"] and cr["captured"] == 0
    assert cs["seen"] >= 2000 and cs["dropped"] > 0
    c = _counters(dmn, name)
    assert c["captures"] == 0


def test_destroy_a_source_while_a_frontend_reads_it(dmn):
    name = _null(dmn, source=64)
    before = _baseline(dmn)
    with frontend.connect(dmn.sock("adv")) as bus:
        dev = bus.open(name)
        assert dev.recv(timeout=5) is not None
        dmn.req("device-destroy", name=name)
        assert name not in dmn.tree()["devices"]

        def gone():
            try:
                while dev.recv(timeout=0.05) is not None:
                    pass
            except LinkDown:
                return True
            return False
        wait_until(gone, 10, "the frontend to see the device go")
    _quiet_fds(dmn, before - 1)         # the device's eventfd closed


# ---- vhost-user ---------------------------------------------------------------

def _vhost(dmn, tmp_path, features=FEATURES, **attrs):
    """A venet-null served over vhost-user, a driver set up on it."""
    path = str(tmp_path / "vn.sock")
    name = _null(dmn, vhost_user=path, **attrs)
    d = Driver(path, features=features)
    try:
        d.setup()
        wait_until(lambda: _counters(dmn, name).get("vhost_rings_live"), 5, "the rings to go live")
    except BaseException:
        d.close()
        raise
    return name, d


def _vhdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset, 1)


def _tx_raw(d, pkt):
    """Send header and frame as the driver's next TX chain (one buffer)."""
    q, i = 1, d.next_desc[1] % (d.qsize // 2) * 2
    # Each in 64 KiB of its own past the driver's own buffers (1 MiB + 64 x 2 KiB).
    off = 0x200000 + (d.next_desc[1] % 16) * 0x10000
    d.next_desc[1] += 1
    d.mm[off:off + len(pkt)] = pkt
    d.put_desc(q, i, GPA + off, len(pkt))
    d.publish(q, i)


def test_vhost_driver_on_a_sink_and_a_frontend_refused_meanwhile(dmn, tmp_path):
    name, d = _vhost(dmn, tmp_path)
    try:
        # The driver has 32 TX chains: a batch is returned before the next reuses them.
        for batch in (0, 32):
            for k in range(batch, batch + 32):
                d.tx(frame(60 + k * 23, k))
            wait_until(lambda: d.used_idx(1) == batch + 32, 5, "every TX buffer returned")
        c = _counters(dmn, name)
        assert c["vhost_tx_frames"] == 64 and c["vhost_tx_bytes"] == sum(60 + k * 23 for k in range(64))
        assert c["vhost_rx_frames"] == 0
        with frontend.connect(dmn.sock("adv")) as bus:
            with pytest.raises(Exception) as e:
                bus.open(name)
            assert "in use" in str(e.value) or "busy" in str(e.value), e.value
    finally:
        d.close()


def test_vhost_gso_frames_to_a_sink(dmn, tmp_path):
    from scapy.all import IP, TCP, Ether, Raw, raw
    f = FEATURES | P.bit(P.NET_F_CSUM) | P.bit(P.NET_F_HOST_TSO4)
    name, d = _vhost(dmn, tmp_path, features=f)
    try:
        t4 = raw(Ether() / IP(src="10.77.0.1", dst="10.77.0.2") / TCP() / Raw(b"z" * 16000))
        _tx_raw(d, _vhdr(1, 1, 54, 1448, 34, 16) + t4)           # TCPv4 GSO, partial checksum
        _tx_raw(d, _vhdr(1, 4, 74, 1428, 54, 16) + t4)           # TCPv6 GSO: not negotiated
        _tx_raw(d, _vhdr(0, 0) + t4)                             # longer than the MTU, no GSO
        _tx_raw(d, _vhdr(0, 0) + frame(1514))
        wait_until(lambda: d.used_idx(1) == 4, 5, "every TX buffer returned")
        c = _counters(dmn, name)
        assert c["vhost_tx_frames"] == 2 and c["vhost_tx_bytes"] == len(t4) + 1514, c
        assert c["vhost_tx_drop_meta"] == 2, c
    finally:
        d.close()


def test_vhost_source_waits_for_enough_mergeable_buffers(dmn, tmp_path):
    name, d = _vhost(dmn, tmp_path, source=1514)
    try:
        want = null_frame(_mac(dmn, name), 1514)
        d.post_rx(16, size=256)                 # mergeable: 6 buffers a frame
        got = []
        wait_until(lambda: got.extend(d.rx_frames()) or len(got) >= 2, 5, "2 frames")
        assert got == [want] * 2
        # No buffers left: the engine waits for them, it does not spin.
        wait_until(lambda: _counters(dmn, name).get("vhost_rx_wait_buffers", 0) >= 1, 5,
                   "the engine to wait for buffers")
        a = _counters(dmn, name)["vhost_turns"]
        threading_wait(0.3)
        assert _counters(dmn, name)["vhost_turns"] - a < 10
    finally:
        d.close()


def test_vhost_source_into_too_small_buffers_without_mrg_goes_quiet(dmn, tmp_path):
    name, d = _vhost(dmn, tmp_path, features=FEATURES & ~P.bit(P.NET_F_MRG_RXBUF), source=1514)
    try:
        d.post_rx(4, size=256)
        wait_until(lambda: _counters(dmn, name).get("vhost_rx_drop_too_big", 0) >= 1, 5,
                   "a frame too big for the buffers")
        a = _counters(dmn, name)
        threading_wait(0.3)
        b = _counters(dmn, name)
        # A source whose every frame is too big: nothing more can be done
        # until the driver posts other buffers.
        assert b["vhost_turns"] - a["vhost_turns"] < 10, (a["vhost_turns"], b["vhost_turns"])
    finally:
        d.close()


def test_vhost_drivers_come_and_go_on_a_source(dmn, tmp_path):
    name = _null(dmn, source=128, vhost_user=str(tmp_path / "cg.sock"))
    want = null_frame(_mac(dmn, name), 128)
    before = _baseline(dmn)
    for k in range(15):
        d = Driver(str(tmp_path / "cg.sock"))
        try:
            d.setup(base=0)
            wait_until(lambda: _counters(dmn, name).get("vhost_rings_live"), 5, "the rings to go live")
            if k % 2:
                d.post_rx(2)
                got = []
                wait_until(lambda: got.extend(d.rx_frames()) or len(got) >= 2, 5, "2 frames")
                assert got == [want] * 2
        finally:
            d.close()
        wait_until(lambda: not _counters(dmn, name).get("vhost_driver_connected"), 5, "the driver gone")
    _quiet_fds(dmn, before)
    c = _counters(dmn, name)
    assert c["vhost_engine_starts"] == 15 and c["vhost_rx_frames"] == 14


def test_destroy_a_source_while_a_vhost_driver_reads_it(dmn, tmp_path):
    before = _baseline(dmn)
    name, d = _vhost(dmn, tmp_path, source=64)
    try:
        d.post_rx(8)
        got = []
        wait_until(lambda: got.extend(d.rx_frames()) or len(got) >= 8, 5, "8 frames")
        dmn.req("device-destroy", name=name)
        # The driver's socket is closed by the backend.
        d.sock.settimeout(5)
        assert d.sock.recv(1) == b""
    finally:
        d.close()
    assert name not in dmn.tree()["devices"]
    assert not os.path.exists(str(tmp_path / "vn.sock"))
    _quiet_fds(dmn, before)
    # The daemon still serves.
    assert dmn.proc.poll() is None


def threading_wait(secs):
    import threading
    threading.Event().wait(secs)
