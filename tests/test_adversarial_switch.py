"""Adversarial venet-switch use (no root; buses served in threads as in
tests/test_switch.py): every frame length across chain boundaries of
different buffer sizes, ports churning under two broadcast streams, a bus
destroyed under a switch that spans two, the process's descriptors
counted before and after."""
import os
import threading

from tests.conftest import wait_until
from tests.test_switch import BCAST, drain, eth, lab, port_of  # noqa: F401 (fixture)
from venet import abi
from venet import frontend as fe


def nfds():
    return len(os.listdir("/proc/self/fd"))


def test_every_length_crosses_chain_boundaries_intact(lab):
    sw = lab.switch()
    b = lab.bus(sw)
    # The sender chains every 256-byte buffer, the receiver every 320.
    a = lab.front(b, buf_size=256)
    c = lab.front(b, buf_size=320)
    c.send(eth(a.mac, c.mac, 1), timeout=5)         # learned: a -> c is unicast
    assert a.recv(timeout=5) is not None
    top = abi.max_frame(sw.mtu, 0)
    for n in range(abi.ETH_HLEN, top + 1):
        f = bytes.fromhex(c.mac.replace(":", "")) + bytes.fromhex(a.mac.replace(":", "")) \
            + b"\x88\xb5" + bytes((n + i) & 0xff for i in range(n - 14))
        assert a.send(f, timeout=5), n
        got = c.recv(timeout=5)
        assert got == f, f"length {n}: {None if got is None else len(got)} bytes came"
    assert drain(c, 0.1) == []
    pc = port_of(sw, a).counters()
    assert not any(v for k, v in pc.items() if k.startswith("drop_")), pc


def test_ports_churn_under_two_broadcast_streams(lab):
    sw = lab.switch()
    b = lab.bus(sw)
    senders = [lab.front(b), lab.front(b)]
    fds0 = nfds()
    stop = threading.Event()
    sent = [0, 0]

    def stream(i, dev):
        f = eth(BCAST, dev.mac, i, n=1200)
        while not stop.is_set():
            if dev.send(f, timeout=0.05):
                sent[i] += 1
    threads = [threading.Thread(target=stream, args=(i, d), daemon=True) for i, d in enumerate(senders)]
    for t in threads:
        t.start()
    try:
        for i in range(40):
            conn = fe.connect(b.path)
            # Small rings and chained buffers: the port fills at once and
            # leaves with frames half-copied to it.
            d = conn.open("sw0", ring_size=16, buf_size=256)
            if i % 2:
                assert d.recv(timeout=2) is not None
            conn.close()
        wait_until(lambda: len(sw.ports) == 2, what="the short-lived ports to go")
        before = list(sent)
        wait_until(lambda: all(s > x + 10 for s, x in zip(sent, before)), 5,
                   "the streams to go on after the churn")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    assert sw.engine.stats()["ports_removed"] == 40
    for d in senders:
        drain(d, 0.05)
    wait_until(lambda: nfds() <= fds0, 5, f"the process's fds back to {fds0} (now {nfds()})")


def test_a_bus_destroyed_under_a_switch_spanning_two(lab):
    sw = lab.switch()
    b0, b1 = lab.bus(sw, "b0"), lab.bus(sw, "b1")
    a, c = lab.front(b0), lab.front(b0)
    far = [lab.front(b1) for _ in range(3)]
    stop = threading.Event()

    def stream(dev):
        f = eth(BCAST, dev.mac, 9)
        while not stop.is_set():
            try:
                dev.send(f, timeout=0.05)
            except Exception:
                return      # its bus went away
    threads = [threading.Thread(target=stream, args=(d,), daemon=True) for d in far]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: a.recv(timeout=0.5), 5, "a frame from the other bus")
        lab.made["buses"].remove(b1)
        b1.close()          # the bus goes: its connections and their ports with it
        wait_until(lambda: len(sw.ports) == 2, 5, "the far bus's ports to go")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    drain(a, 0.1)
    drain(c, 0.1)
    for i in range(20):
        assert a.send(eth(c.mac, a.mac, i), timeout=5)
        got = c.recv(timeout=5)
        assert got is not None and got[14:18] == i.to_bytes(4, "big")
    assert drain(c, 0.1) == []
