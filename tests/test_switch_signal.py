"""venet-switch: its signals under load and the look-up cache of a batch
(docs/switch.md, "Signal mode"), through the frontend API, no root.

While a turn leaves frames behind, the switch holds back the kicks to
sleeping frontends until they carry a share of a ring (or grow old); these
tests check that nobody sleeping is forgotten, on either side of a port.
A batch's frames share one MAC look-up; a learn inside the batch must be
seen by the next frame.
"""
import threading
import time

import numpy as np

from tests.conftest import wait_until
from tests.test_switch import BCAST, drain, eth, lab, port_of, three  # noqa: F401  (lab: fixture)

RING = 1024         # deep rings: a batch of 256 takes the switch eight turns
NAP = 5.0           # a receive that lasts this long was ended by its timeout, not a kick


def receive(dev, out, lens):
    """recv_batch that fails when only its timeout woke it: the frames were
    there, the kick never came."""
    t0 = time.monotonic()
    n = dev.recv_batch(out, lens, timeout=NAP)
    assert time.monotonic() - t0 < NAP * 0.9, f"woken by the timeout, not a kick ({n} frames waited)"
    return n


def frames(dst, src, first, n, size=60):
    """n frames dst <- src tagged first..first+n-1 (as eth()), as rows."""
    return np.array([np.frombuffer(eth(dst, src, first + i, size), np.uint8) for i in range(n)])


def tags(rows, lens, k):
    return [int.from_bytes(bytes(rows[i, 14:18]), "big") for i in range(k) if lens[i] >= 18]


def learn(*devs):
    """Each sends a broadcast, then every one drains: all are known."""
    for d in devs:
        assert d.send(eth(BCAST, d.mac, 0), timeout=2)
    for d in devs:
        wait_until(lambda: len(drain(d, 0.05)) or True, what="the learning frames")
    for d in devs:
        drain(d, 0.2)


def test_a_learn_inside_a_batch_is_seen_by_the_next_frames_of_that_batch(lab):
    sw, (a, b, c) = three(lab)
    learn(a, b, c)
    pa = port_of(sw, a)
    before = pa.counters()
    z = "02:00:00:00:7a:7a"
    rows = np.concatenate([
        frames(b.mac, a.mac, 1, 1),     # to b: unicast
        frames(b.mac, b.mac, 2, 1),     # b's MAC now seen on a's port: moved, filtered
        frames(b.mac, a.mac, 3, 1),     # b is on a's port now: filtered
        frames(z, a.mac, 4, 1),         # unknown: flooded to b and c
        frames(c.mac, z, 5, 1),         # z learned on a's port; to c: unicast
        frames(z, a.mac, 6, 1),         # z is on a's port: filtered, not flooded
    ])
    # One commit: the switch takes the six in one turn, one batch.
    assert a.send_batch(rows) == 6
    got_b = wait_until(lambda: drain(b, 0.3), what="b's frames")
    got_c = wait_until(lambda: drain(c, 0.3), what="c's frames")
    assert sorted(int.from_bytes(f[14:18], "big") for f in got_b) == [1, 4]
    assert sorted(int.from_bytes(f[14:18], "big") for f in got_c) == [4, 5]
    assert drain(a, 0.1) == []
    after = pa.counters()
    assert after["unicast"] - before.get("unicast", 0) == 2
    assert after["filtered"] - before.get("filtered", 0) == 3
    assert after["floods"] - before.get("floods", 0) == 1
    assert sw.engine.macs()[z] == sw.engine.macs()[b.mac]


def test_a_sleeping_receiver_is_woken_by_every_round_of_a_stream(lab):
    """Rounds of 512 frames committed at once (the switch's batches are
    full, so its kicks wait) while the receiver, a thread of its own, sleeps
    in recv_batch with a long timeout: it must get each round whole."""
    sw = lab.switch()
    bus = lab.bus(sw)
    a, r = lab.front(bus, ring_size=RING), lab.front(bus, ring_size=RING)
    learn(a, r)
    rounds, per = 8, 512
    done = threading.Semaphore(0)
    got, errors = [], []

    def receiver():
        out = np.zeros((RING, 64), np.uint8)
        lens = np.zeros(RING, np.uint32)
        try:
            for k in range(rounds):
                mine = []
                while len(mine) < per:
                    n = receive(r, out, lens)
                    if not n:
                        errors.append(f"round {k}: the receiver was not woken ({len(mine)} of {per} frames)")
                        return
                    mine += tags(out, lens, n)
                got.append(mine)
                done.release()      # then straight back to sleep in recv_batch
        except Exception as e:      # reported by the main thread
            errors.append(repr(e))
        finally:
            done.release()

    t = threading.Thread(target=receiver)
    t.start()
    try:
        for k in range(rounds):
            block = frames(r.mac, a.mac, 1 + k * per, per)
            sent = 0
            while sent < per:
                n = a.send_batch(block[sent:sent + 256])
                assert n or a.tx.wait(10), "no room in an empty TX ring"
                sent += n
            assert done.acquire(timeout=30), f"round {k} was not received"
            assert not errors, errors
    finally:
        t.join(30)
    assert not errors, errors
    assert got == [list(range(1 + k * per, 1 + (k + 1) * per)) for k in range(rounds)]
    assert port_of(sw, r).counters().get("drop_rx_full", 0) == 0


def test_a_sender_waiting_for_room_is_woken_while_the_switch_drains(lab):
    """A sender that fills its TX ring and sleeps until room is signalled
    (the switch holds that signal back while it has frames left) is woken
    every time; a receiver that never reads loses frames, counted."""
    sw = lab.switch()
    bus = lab.bus(sw)
    a, r = lab.front(bus, ring_size=RING), lab.front(bus)
    learn(a, r)
    total = 16 * RING
    pa, pr = port_of(sw, a), port_of(sw, r)
    base, rbase = pa.counters()["rx_frames"], pr.counters()
    block = frames(r.mac, a.mac, 1, 256)
    sent = waits = 0
    while sent < total:
        n = a.send_batch(block[:min(256, total - sent)])
        if n == 0:
            waits += 1
            assert a.tx.wait(10), f"no room signalled after {sent} frames (wait {waits})"
        sent += n
    assert waits > 0, "the sender never filled its ring: nothing was tested"
    wait_until(lambda: pa.counters()["rx_frames"] - base >= total, what="the switch to take every frame")
    now = pr.counters()
    assert now["tx_frames"] - rbase["tx_frames"] + now.get("drop_rx_full", 0) == total


def test_two_senders_and_a_sleeping_receiver_lose_no_wakeup(lab):
    """Two ports full of frames at once (every turn leaves frames behind);
    one sleeping receiver gets what its ring can hold and is woken for the
    rest of it; nothing hangs."""
    sw, (a, b, r) = three(lab)
    learn(a, b, r)
    out = np.zeros((256, 64), np.uint8)
    lens = np.zeros(256, np.uint32)
    got, errors = [], []

    def send(dev, first):
        try:
            block = frames(r.mac, dev.mac, first, 96)
            for _ in range(4):
                n = 0
                while n < 96:
                    k = dev.send_batch(block[n:])
                    if k == 0 and not dev.tx.wait(10):
                        errors.append("no room signalled")
                        return
                    n += k
        except Exception as e:      # reported by the main thread
            errors.append(repr(e))

    pr = port_of(sw, r)
    base = pr.counters()["tx_frames"]
    ts = [threading.Thread(target=send, args=(d, f)) for d, f in ((a, 1), (b, 100001))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert not any(t.is_alive() for t in ts) and not errors, errors
    wait_until(lambda: pr.counters()["tx_frames"] - base + pr.counters().get("drop_rx_full", 0) >= 768,
               what="the switch to deliver or drop every frame")
    expect = pr.counters()["tx_frames"] - base
    assert expect, "nothing reached the receiver"
    while len(got) < expect:
        n = receive(r, out, lens)
        assert n, f"the receiver was not woken ({len(got)} of {expect} frames)"
        got += tags(out, lens, n)
    assert len(got) == expect
