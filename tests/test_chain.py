"""The chain codec (venet/chain.pxd) through the frontend's recv_frame:
a chain's end is found by peeking, and a reader whose chain is not whole
yet sleeps for it (GIL released) instead of spinning."""
import threading

import ioq
from tests.conftest import RawPeer, wait_until
from venet import _frames, abi

WAIT = 10
SIG_SIDE1_ENABLED = 128 + 128       # ring start + shmsig block + side 1's line (docs/abi.md)


def test_recv_frame_sleeps_until_a_chain_is_whole():
    region = ioq.Region.create([16, 8], buf_size=64)
    peer = RawPeer(region)
    try:
        prod, cons = region.producer(0), region.consumer(0)
        region.view(region.buffer_offset(region.paired_base(0)), 128)[:] = bytes(range(128))
        peer.publish_paired(64, abi.F_MORE)             # a chain's first slot only
        got = {}

        def reader():
            try:
                got["frame"] = _frames.recv_frame(cons, WAIT)
            except Exception as e:                      # noqa: BLE001 - reported below
                got["frame"] = e

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        # Asleep on its doorbell, waiting for the end (not spinning, not
        # giving up while the timeout runs).
        wait_until(lambda: "frame" in got or peer.mm[peer.ring + SIG_SIDE1_ENABLED] == 1, WAIT,
                   "the reader to sleep for the chain's end")
        assert "frame" not in got, got
        peer.publish_paired(10, 0)
        prod.notify()
        t.join(WAIT)
        assert got["frame"] == (bytes(range(74)), 0, None)
        assert cons.stats()["bad_total"] == 0
    finally:
        peer.close()
        region.close()


def test_a_backlog_of_chains_is_read_in_order():
    region = ioq.Region.create([64, 8], buf_size=64)
    try:
        p, c = region.producer(0), region.consumer(0)
        frames = [bytes((n + i) & 0xff for i in range(n)) for n in (1, 64, 65, 200, 64 * 10, 3)]
        for f in frames:
            assert _frames.send_frame(p, f, timeout=0)
        for f in frames:
            assert _frames.recv_frame(c, 0) == (f, 0, None)
        assert _frames.recv_frame(c, 0) is None
        s = c.stats()
        assert s["ops"] == sum(-(-len(f) // 64) for f in frames) and s["bad_total"] == 0, s
    finally:
        region.close()
