import mmap
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces and taps")


def wait_until(pred, timeout=5.0, what="the condition", interval=0.05):
    """Call pred() until it returns something true and return that; fail
    with "timed out after T s waiting for WHAT" once `timeout` seconds have
    passed.  The pause between calls grows from 1 ms to `interval`, so a
    quick condition is seen at once and a slow one costs no busy CPU."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        got = pred()
        if got:
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(min(pause, left))
        pause = min(pause * 2, interval)


def usable_cpus():
    return len(os.sched_getaffinity(0))


needs_two_cpus = pytest.mark.skipif(usable_cpus() < 2,
                                    reason="needs two usable CPUs (this process may use one)")


class RawPeer:
    """A raw view of one ring of a region, through a mapping of its own:
    plays a buggy or hostile peer, writing descriptors, SG tables and
    indices past every check of ioq's API.  Descriptors are ioq's records
    (ioq.DESC_DTYPE); each is written with its seq last, as a producer
    publishes it."""

    CONS_INDEX = 64        # the consumer index's offset in the ring header (docs/abi.md)

    def __init__(self, region, ring=0):
        import numpy as np

        import ioq
        self.region = region
        self.index = ring
        self.mm = mmap.mmap(region.fd, region.size)
        self.ring = region.ring_offset(ring)
        self.count = region.ring_count(ring)
        self.slots = np.frombuffer(self.mm, ioq.DESC_DTYPE, self.count,
                                   self.ring + ioq.RING_HDR_SIZE)
        self.pos = 0

    def close(self):
        del self.slots          # the array's export of the mapping must go first
        self.mm.close()

    def write_slot(self, pos, cookie, offset, length, flags=0, user=0, seq=None):
        slot = self.slots[pos % self.count]
        slot["cookie"], slot["offset"], slot["len"] = cookie, offset, length
        slot["flags"], slot["user"] = flags, user
        slot["seq"] = pos + 1 if seq is None else seq

    def publish(self, cookie, offset, length, flags=0, user=0, seq=None):
        """Write the next slot as given."""
        self.write_slot(self.pos, cookie, offset, length, flags, user, seq)
        self.pos += 1

    def publish_paired(self, length, flags=0):
        """Write the next slot pointing at its own paired buffer, cookie = position."""
        buf = self.region.paired_base(self.index) + self.pos % self.count
        self.publish(self.pos, self.region.buffer_offset(buf), length, flags)

    def set_cons(self, value):
        self.mm[self.ring + self.CONS_INDEX:self.ring + self.CONS_INDEX + 4] = value.to_bytes(4, "little")

    def write_sg(self, at, entries):
        import numpy as np

        import ioq
        table = np.frombuffer(self.mm, ioq.SG_DTYPE, len(entries), at)
        for i, (off, ln) in enumerate(entries):
            table[i] = (off, ln, 0)
        del table
