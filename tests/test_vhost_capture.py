"""Capture taps on a device served over vhost-user (no root): the Python
virtio driver of tests/test_vhost_hostile.py moves frames each way while
captures are attached to the device, as `venet capture` attaches them
(docs/capture.md).  What the driver sends is seen `out` (written to the
port), what it is given `in` (read from the port), byte for byte; a
capture attached or detached while the engine serves the rings changes
nothing for the traffic."""
import ioq
from tests.conftest import wait_until
from tests.test_vhost_hostile import device, frame, port_frames, served  # noqa: F401 (fixtures)
from venet.capture import Frame
from venet.devices._capture import REC_SIZE


class Tap:
    """A capture of `dev` in memory of our own (the capturer's side of
    CAPTURE_START, without the control socket)."""

    def __init__(self, dev, cid, direction="both", prog=b"", snaplen=65535, slots=64):
        self.dev, self.cid = dev, cid
        buf = (REC_SIZE + 9100 + 63) // 64 * 64
        self.region = ioq.Region.create([slots], buf_size=buf, roles=(1,), name="vhost-capture-test")
        fd, pairs = self.region.handoff()
        self.ring = self.region.consumer(0)
        dev.capture_start(cid, [fd, *pairs[0]], prog, snaplen, direction)

    def frames(self, n, timeout=5):
        got = []

        def take():
            while len(got) < n:
                msg = self.ring.get(timeout=0)
                if msg is None:
                    return False
                got.append(Frame(msg))
            return True
        wait_until(take, timeout, f"{n} captured frames")
        return [(f.direction, bytes(f.data), f.orig_len) for f in got]

    def close(self):
        counters = self.dev.capture_stop(self.cid)
        self.ring.close()
        self.region.close()
        return counters


def test_frames_of_a_virtio_driver_are_captured_both_ways(served):
    c, dev, peer, driver = served
    d = driver()
    d.setup()
    wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
    both, only_in = Tap(dev, 1), Tap(dev, 2, direction="in")
    try:
        # out: TX chains (one with its header split across two buffers)
        sent = [frame(60, b"a"), frame(1514, b"b"), frame(200, b"c")]
        for k, f in enumerate(sent):
            d.tx(f, split=5 if k == 1 else 0)
        assert [g[16:] for g in port_frames(peer, 3)] == sent
        # in: frames from the port into the driver's RX buffers (one into
        # three mergeable buffers)
        d.post_rx(8, size=512)
        given = [frame(70, b"x"), frame(1400, b"y")]
        for f in given:
            peer.send(bytes(16) + f)
        got = []
        wait_until(lambda: got.extend(d.rx_frames()) or len(got) == 2, 5, "the frames in the RX ring")
        assert got == given
        want = [("out", f, len(f)) for f in sent] + [("in", f, len(f)) for f in given]
        assert both.frames(5) == want
        assert only_in.frames(2) == [("in", f, len(f)) for f in given]
        assert only_in.ring.get(timeout=0) is None
    finally:
        cb, ci = both.close(), only_in.close()
    assert (cb["seen"], cb["captured"], cb["dropped"]) == (5, 5, 0)
    assert (ci["seen"], ci["captured"]) == (2, 2)
    # Detached: the traffic goes on, nothing is offered to a capture.
    d.tx(frame(60, b"after"))
    assert port_frames(peer, 1)[0][16:] == frame(60, b"after")
    assert dev.stats()["counters"]["captures"] == 0


def test_a_capture_attached_before_the_driver_and_a_snaplen(served):
    c, dev, peer, driver = served
    tap = Tap(dev, 1, snaplen=64)
    try:
        d = driver()
        d.setup()
        wait_until(lambda: c.stats()["rings_live"], 5, "the rings to go live")
        big = frame(1000, b"s")
        d.tx(big)
        assert port_frames(peer, 1)[0][16:] == big
        assert tap.frames(1) == [("out", big[:64], len(big))]
    finally:
        counters = tap.close()
    assert counters["captured"] == 1
