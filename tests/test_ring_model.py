"""The ring held against a plain deque, driven by hypothesis.

Descriptors popped without release() keep their slots and paired buffers:
the producer must count them as in flight and must not write into their
buffers until release() (or the release a get()/get_batch() does) hands
them back.  The model keeps what was popped and checks both, in every
state, popped-but-unreleased ones included."""
import collections
import mmap

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ioq import ITEM_DTYPE, Region

SLOTS = 8


class RingModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.region = Region.create([SLOTS], buf_size=64)
        self.mem = mmap.mmap(self.region.fd, self.region.size)
        self.p = self.region.producer(0)
        self.c = self.region.consumer(0)
        self.model = collections.deque()      # published, not yet popped
        self.held = []                        # popped, not yet released: (offset, payload)
        self.out = np.zeros(SLOTS, ITEM_DTYPE)

    def teardown(self):
        self.mem.close()
        self.region.close()

    def in_flight(self):
        return len(self.model) + len(self.held)

    @rule(data=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=10))
    def put_batch(self, data):
        rows = np.zeros((len(data), 64), np.uint8)
        lens = np.array([len(d) for d in data], np.uint32)
        for i, d in enumerate(data):
            rows[i, :len(d)] = np.frombuffer(d, np.uint8)
        k = self.p.put_batch(rows, lens, timeout=0)
        assert k == min(len(data), SLOTS - self.in_flight())
        self.model.extend(data[:k])

    @rule()
    def get(self):
        got = self.c.get(timeout=0)
        if self.model:
            assert got == self.model.popleft()
            self.held = []                    # get() released everything popped
        else:
            assert got is None                # nothing popped, nothing released

    @rule(n=st.integers(1, SLOTS))
    def get_batch(self, n):
        out = np.zeros((n, 64), np.uint8)
        lens = np.zeros(n, np.uint32)
        k = self.c.get_batch(out, lens, timeout=0)
        assert k == min(n, len(self.model))
        for i in range(k):
            assert bytes(out[i, :lens[i]]) == self.model.popleft()
        self.held = []                        # get_batch() always releases

    @rule(n=st.integers(1, SLOTS))
    def pop_without_release(self, n):
        k = self.c.pop(self.out[:n])
        assert k == min(n, len(self.model))
        for i in range(k):
            want = self.model.popleft()
            item = self.out[i]
            assert item["status"] == 0 and item["len"] == len(want)
            self.held.append((int(item["offset"]), want))

    @rule()
    def release(self):
        self.c.release()
        self.held = []

    @invariant()
    def counts_agree(self):
        assert self.p.free() == SLOTS - self.in_flight()
        assert self.c.ready() == len(self.model)

    @invariant()
    def held_buffers_untouched(self):
        for off, want in self.held:
            assert self.mem[off:off + len(want)] == want


RingModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRingModel = RingModel.TestCase
