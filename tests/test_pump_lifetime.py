"""The pump's lifetime: refused constructions close nothing they did not
open, a pump is let go promptly whatever the frontend does, memory is never
unmapped under a pump a worker may still serve, and every TXC frame gets
its event."""
import gc
import os
import socket
import threading
import time

import numpy as np
import pytest

from ioq import DESC_DTYPE, Region
from tests import hostile
from tests.conftest import wait_until
from vbus._worker import Pool
from venet import abi
from venet.devices._pump import Pump

DEADLINE = 3.0


# ---- bug 2: a refused Pump closes no fd it does not own -------------------

def _identity(fd):
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def test_refused_pump_constructions_close_no_live_fd():
    """fd 0 (and any other) survives pumps refused at every stage: argument
    parsing, the checks before the pump's own fds exist."""
    sentinel_r, sentinel_w = os.pipe()
    saved0 = os.dup(0)
    os.dup2(sentinel_r, 0)
    fds = {fd: _identity(fd) for fd in map(int, os.listdir("/proc/self/fd")) if _fd_ok(fd)}
    region = Region.create([2, 2, 2], buf_size=256)          # ioq accepts it, the pump does not
    small = Region.create([8, 8], buf_size=256, nbufs=4)      # too few buffers to pair
    try:
        rx, tx = region.consumer(1), region.producer(0)
        attempts = [
            lambda: Pump(None, None, -1),                                 # TypeError in parsing
            lambda: Pump(rx, tx, -1, budget=0),                           # ValueError
            lambda: Pump(rx, tx, -1),                                     # ring too small
            lambda: Pump(small.consumer(0), small.producer(1), -1),       # no paired buffers
            lambda: Pump(rx, tx, -1, mtu=10),
        ]
        for attempt in attempts * 2:
            with pytest.raises((TypeError, ValueError)):
                attempt()
            gc.collect()
        for fd, ident in fds.items():
            assert _fd_ok(fd) and _identity(fd) == ident, f"fd {fd} was closed or replaced"
    finally:
        small.close()
        region.close()
        os.dup2(saved0, 0)
        os.close(saved0)
        os.close(sentinel_r)
        os.close(sentinel_w)


def _fd_ok(fd):
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_a_pump_is_initialised_once():
    region = Region.create([64, 64, 16], buf_size=2048)
    try:
        p = Pump(region.consumer(0), region.producer(1), -1)
        with pytest.raises(RuntimeError, match="once"):
            p.__init__(region.consumer(0), region.producer(1), -1)
    finally:
        del p
        gc.collect()
        region.close()


# ---- bug 4: the pump is let go promptly; memory outlives a pump that was not

def test_pump_stops_promptly_while_the_frontend_blocks_its_doorbells():
    """A frontend that made every shared doorbell blocking and full, under
    RX traffic and TXC frames: link down still takes the pump off its
    worker in time (the remove is synchronous)."""
    def scenario():
        fe = hostile.Frontend()
        port, outside = hostile.port_pair()
        dev = hostile.device(port.detach())
        dev.register(fe.fds)
        fe.want_kicks()
        fe.misbehave()
        fe.want_kicks()
        dev.linkup()
        pump = dev.pump
        for i in range(40):
            outside.send(b"\0" * 16 + hostile.frame(60, i))
        _send_tx(fe, [(hostile.frame(60), abi.F_TXC)] * 4, notify=False)
        deadline = time.monotonic() + DEADLINE
        while dev.pump.stats()["from_tap_frames"] < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        t0 = time.monotonic()
        dev.linkdown()
        assert time.monotonic() - t0 < DEADLINE, "link down waited while the frontend blocked its doorbells"
        assert pump.worker is None and not pump.running and dev.wedged == []
        dev.close()
        fe.close()
    hostile.run_isolated(scenario, 3 * DEADLINE)


def _break_rx(fe):
    """Corrupt the RX ring's consumer index as a hostile frontend would;
    returns the mapping (to close)."""
    import mmap
    import struct as _s
    import ioq
    mm = mmap.mmap(fe.fds[0], fe.region.size)
    # The RX consumer's index claims slots the backend never wrote.
    _s.pack_into("<I", mm, fe.region.ring_offset(abi.RING_RX) + ioq.RING_CONS_OFF, 0x7fff0000)
    return mm


def _flood(outside, fe):
    frame = bytes(abi.META_SIZE) + hostile.frame(60)
    for _ in range(2 * fe.region.ring_count(abi.RING_RX)):
        try:
            outside.send(frame)
        except BlockingIOError:
            break


def test_memory_of_a_pump_its_worker_did_not_let_go_stays_mapped():
    """A worker that does not answer a remove in time (only a bug could
    make one: here another task's DONE report blocks its thread): the
    pump is wedged, its memory stays mapped and its tap open, no link-down
    event is posted (the pump may still produce on the event queue), and
    link up is refused, also for the next frontend after a reset, since two
    pumps on one port, one serving the previous frontend's memory, must
    never be.  Once the worker moves on, it drops the pump."""
    from venet.bridge import DeviceError
    pool = Pool(1, pin=False)
    go = threading.Event()
    fe_b, fe, fe2 = hostile.Frontend(), hostile.Frontend(), hostile.Frontend()
    port_b, outside_b = hostile.port_pair()
    port, outside = hostile.port_pair()
    breaker = hostile.device(port_b.detach())
    breaker.pool = pool
    breaker._pump_ended = lambda pump: go.wait(3 * DEADLINE)       # a report that blocks the worker
    dev = hostile.device(port.detach())
    dev.pool = pool
    dev.REMOVE_TIMEOUT = 0.2
    mm = None
    region = None
    try:
        breaker.register(fe_b.fds)
        breaker.linkup()
        dev.register(fe.fds)
        dev.linkup()
        assert fe.events(1)[0][2] == 1
        assert dev.worker is breaker.worker
        mm = _break_rx(fe_b)
        _flood(outside_b, fe_b)
        wait_until(lambda: breaker.pump.worker is None, DEADLINE, "the breaker's pump to be dropped")
        region = dev.region
        dev.reset()                             # the frontend left; the worker does not answer
        assert dev.stats()["counters"]["pumps_wedged"] == 1
        assert not region.closed, "memory unmapped under a pump its worker may still serve"
        assert dev.owner is None and dev.region is None
        assert fe.events(1, timeout=0.2) == [], "a link-down event posted beside a live producer"
        dev.owner = object()
        dev.caps = {abi.CAP_GROUP_SG: abi.CAP_SG, abi.CAP_GROUP_EVENTQ: abi.CAP_EVQ_LINKSTATE}
        dev.register(fe2.fds)
        with pytest.raises(DeviceError, match="did not let it go"):
            dev.linkup()
        assert not dev.link
        dev.close()
        assert dev.tap_fd >= 0, "the tap of a wedged pump was closed"
        go.set()
        pump = dev.wedged[0]
        wait_until(lambda: pump.worker.ntasks == 0, DEADLINE,
                   "the worker to drop the wedged pump after all")
    finally:
        go.set()
        pool.close()
        if mm is not None:
            mm.close()
        for x in dev.wedged:
            if isinstance(x, Region):
                x.close()
        if dev.tap_fd >= 0:
            os.close(dev.tap_fd)
        breaker.close()
        for x in (fe_b, fe, fe2):
            x.close()
        outside.close()
        outside_b.close()


# ---- bug 8: every TXC frame gets its event, saying what became of it ------

# An EV_TXC event's b: ring in bits 0..31, this status in bits 32..63.
STATUS = {name: code for code, name in enumerate(abi.TXC_STATUS)}


def _send_tx(fe, frames, notify=True):
    """Publish frames (bytes, flags) or raw (offset, len, flags) tuples on
    the TX ring, one descriptor each; returns their cookies.  notify=False:
    no kick (a frontend that saturated the backend's eventfd would block
    itself kicking it)."""
    region = fe.region
    base = region.paired_base(abi.RING_TX)
    descs = np.zeros(len(frames), dtype=DESC_DTYPE)
    cookies = []
    for i, f in enumerate(frames):
        slot = (fe.tx.stats()["ops"] + i) % region.ring_count(abi.RING_TX)
        off = region.buffer_offset(base + slot)
        if isinstance(f[0], bytes):
            data, flags = f
            region.view(off, len(data))[:] = data
            ln = len(data)
        else:
            off, ln, flags = f
        cookie = 1000 + i
        descs[i] = (cookie, off, ln, flags, 0, 0)
        cookies.append(cookie)
    assert fe.tx.push(descs, notify) == len(frames)
    return cookies


@pytest.fixture
def txc_device():
    fe = hostile.Frontend(ring=64, evq=64)
    port, outside = hostile.port_pair()
    dev = hostile.device(port.detach(), txc=True)
    dev.register(fe.fds)
    dev.linkup()
    assert fe.events(1) == [(abi.EV_LINKSTATE, abi.EVENT_SIZE, 1, 0)]
    yield fe, dev, outside
    dev.close()
    fe.close()
    outside.close()


def _statuses(fe, cookies):
    evs = fe.events(len(cookies))
    assert all(e[0] == abi.EV_TXC and e[1] == abi.EVENT_SIZE for e in evs)
    got = {e[2]: (e[3] & 0xffffffff, e[3] >> 32) for e in evs}
    return {c: got.get(c) for c in cookies}


def test_txc_event_for_every_frame_sent_or_refused(txc_device):
    fe, dev, outside = txc_device
    ok = hostile.frame(60)
    pool_end = fe.region.pool_offset + fe.region.pool_size
    cases = [
        ((ok, abi.F_TXC), "sent"),
        ((pool_end - 8, 64, abi.F_TXC), "bad_desc"),                  # out of the pool
        ((ok, abi.F_TXC | (1 << 21)), "bad_flags"),                   # a bit nobody defined
        ((ok[:10], abi.F_TXC), "short"),
        ((ok[:10], abi.F_TXC | abi.F_NEEDS_CSUM), "short"),        # no room for its record
        ((b"\0" * 16 + ok, abi.F_TXC | abi.F_NEEDS_CSUM), "meta_not_negotiated"),
        ((ok + b"\0" * (1520 - len(ok)), abi.F_TXC), "meta_too_long"),   # over MTU + 14
        ((ok, 0), None),                                              # no TXC asked: no event
    ]
    cookies = _send_tx(fe, [c[0] for c in cases])
    want = {c: (abi.RING_TX, STATUS[s]) for c, (_, s) in zip(cookies, cases) if s}
    assert _statuses(fe, list(want)) == want
    assert fe.events(1, timeout=0.2) == []                    # nothing for the frame without TXC
    c = dev.pump.stats()
    assert (c["to_tap_frames"], c["drop_bad_desc"], c["drop_offload"], c["drop_short"],
            c["drop_meta_not_negotiated"], c["drop_meta_too_long"]) == (2, 1, 1, 2, 1, 1)
    assert c["txc_events"] == 7


def test_txc_event_for_refused_chains(txc_device):
    fe, dev, outside = txc_device
    ok = hostile.frame(60)
    # A chain whose continuation carries a flag other than MORE.
    cookies = _send_tx(fe, [(ok, abi.F_TXC | abi.F_MORE), (ok, abi.F_NEEDS_CSUM)])
    assert _statuses(fe, cookies[:1]) == {cookies[0]: (abi.RING_TX, STATUS["bad_chain"])}
    # A chain of more than MAX_CHAIN descriptors: the pump refuses it once
    # it has seen MAX_CHAIN of them with MORE, and skips its tail.
    deadline = time.monotonic() + DEADLINE
    while fe.tx.free() < abi.MAX_CHAIN and time.monotonic() < deadline:
        time.sleep(0.01)
    long_chain = [(ok[:20], abi.F_MORE | abi.F_TXC)] + [(ok[:20], abi.F_MORE)] * (abi.MAX_CHAIN - 1)
    first = _send_tx(fe, long_chain)[0]
    assert _statuses(fe, [first]) == {first: (abi.RING_TX, STATUS["bad_chain"])}
    deadline = time.monotonic() + DEADLINE
    while fe.tx.free() < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    _send_tx(fe, [(ok[:20], 0)])                                      # the tail
    cookies = _send_tx(fe, [(ok, abi.F_TXC)])
    assert _statuses(fe, cookies) == {cookies[0]: (abi.RING_TX, 0)}
    assert dev.pump.stats()["drop_chain"] == 2


def test_txc_event_when_the_tap_refuses_the_write(txc_device):
    fe, dev, outside = txc_device
    socket.socket(fileno=os.dup(dev.tap_fd)).shutdown(socket.SHUT_WR)
    cookies = _send_tx(fe, [(hostile.frame(60), abi.F_TXC)])
    assert _statuses(fe, cookies) == {cookies[0]: (abi.RING_TX, STATUS["tap_error"])}
    assert dev.pump.stats()["drop_tap_write"] == 1


def test_events_read_by_the_frontend_api_stay_compatible():
    """venet.frontend.Device.events() unpacks (type, a, b) from the same
    24-byte record; a sent frame's b is still 0 (ring 0, status 0)."""
    rec = abi.EVENT_STRUCT.pack(abi.EV_TXC, abi.EVENT_SIZE, 7, 0)
    assert len(rec) == abi.EVENT_SIZE == 24
    assert {name: i for i, name in enumerate(abi.TXC_STATUS)} == STATUS


# ---- a tap that refuses its offloads at link-up ----------------------------

def test_a_refused_link_up_leaves_nothing_half_made(monkeypatch):
    """The tap refusing TUNSETOFFLOAD at LINKUP is a plain refusal: no pump
    is left without a thread, so LINKDOWN, a later LINKUP and the reset
    that follows a frontend's exit all still work."""
    from venet import bridge
    from venet.devices import tap as taplib
    fe = hostile.Frontend()
    port, outside = hostile.port_pair()
    dev = hostile.device(port.detach())
    calls = []

    def refuse(fd, caps):
        calls.append(caps)
        if caps:
            raise taplib.TapError("cannot set tap offloads: Invalid argument")
    monkeypatch.setattr(taplib, "set_offloads", refuse)
    try:
        dev.register(fe.fds)
        dev.is_tap = True
        dev.caps[abi.CAP_GROUP_SG] = abi.CAP_SG | abi.CAP_CSUM
        with pytest.raises(bridge.DeviceError, match="cannot set tap offloads"):
            dev.linkup()
        assert dev.pump is None and not dev.link
        dev.linkdown()
        dev.caps[abi.CAP_GROUP_SG] = abi.CAP_SG
        dev.linkup()
        assert dev.link and dev.pump.running
        dev.reset()
        assert dev.pump is None and dev.region is None
    finally:
        dev.is_tap = False
        dev.close()
        fe.close()
        outside.close()


def test_link_up_after_the_frontend_broke_a_ring_is_not_a_lie():
    """A pump that ended because the frontend corrupted a ring index: its
    worker drops it and the device takes the link down (its event posted);
    the next LINKUP does not answer link up with no pump running (it once
    did): on the broken ring it is refused."""
    import mmap
    import struct as _s
    import ioq
    from venet.bridge import DeviceError
    fe = hostile.Frontend()
    port, outside = hostile.port_pair()
    dev = hostile.device(port.detach())
    mm = None
    try:
        dev.register(fe.fds)
        dev.linkup()
        assert [e[2] for e in fe.events(1)] == [1]
        mm = mmap.mmap(fe.fds[0], fe.region.size)
        # The RX consumer's index claims slots the backend never wrote.
        _s.pack_into("<I", mm, fe.region.ring_offset(abi.RING_RX) + ioq.RING_CONS_OFF, 0x7fff0000)
        frame = bytes(abi.META_SIZE) + hostile.frame(60)
        for _ in range(2 * fe.region.ring_count(abi.RING_RX)):
            try:
                outside.send(frame)
            except BlockingIOError:
                break
        wait_until(lambda: dev.pump is None and not dev.link, DEADLINE, "the link to go down")
        with pytest.raises(DeviceError, match="rings refused"):
            dev.linkup()
        assert not dev.link
        assert 0 in [e[2] for e in fe.events(1) if e[0] == abi.EV_LINKSTATE]
    finally:
        if mm is not None:
            mm.close()
        dev.close()
        fe.close()
        outside.close()
