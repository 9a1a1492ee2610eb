"""The ring held against a plain deque, driven by hypothesis."""
import collections

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ioq import ITEM_DTYPE, Region


class RingModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.region = Region.create([8], buf_size=64)
        self.p = self.region.producer(0)
        self.c = self.region.consumer(0)
        self.model = collections.deque()      # published, not yet popped
        self.popped_unreleased = 0
        self.seq = 0
        self.out = np.zeros(8, ITEM_DTYPE)

    def teardown(self):
        self.region.close()

    def in_flight(self):
        return len(self.model) + self.popped_unreleased

    @rule(data=st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=10))
    def put_batch(self, data):
        rows = np.zeros((len(data), 64), np.uint8)
        lens = np.array([len(d) for d in data], np.uint32)
        for i, d in enumerate(data):
            rows[i, :len(d)] = np.frombuffer(d, np.uint8)
        k = self.p.put_batch(rows, lens, timeout=0)
        assert k == min(len(data), 8 - self.in_flight())
        self.model.extend(data[:k])

    @precondition(lambda self: self.popped_unreleased == 0)
    @rule()
    def get(self):
        got = self.c.get(timeout=0)
        if self.model:
            assert got == self.model.popleft()
        else:
            assert got is None

    @precondition(lambda self: self.popped_unreleased == 0)
    @rule(n=st.integers(1, 8))
    def get_batch(self, n):
        out = np.zeros((n, 64), np.uint8)
        lens = np.zeros(n, np.uint32)
        k = self.c.get_batch(out, lens, timeout=0)
        assert k == min(n, len(self.model))
        for i in range(k):
            assert bytes(out[i, :lens[i]]) == self.model.popleft()

    @rule(n=st.integers(1, 8))
    def pop_without_release(self, n):
        k = self.c.pop(self.out[:n])
        assert k == min(n, len(self.model))
        for _ in range(k):
            self.model.popleft()
        self.popped_unreleased += k

    @rule()
    def release(self):
        self.c.release()
        self.popped_unreleased = 0

    @invariant()
    def counts_agree(self):
        assert self.p.free() == 8 - self.in_flight() or self.popped_unreleased
        assert self.c.ready() == len(self.model)


RingModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
TestRingModel = RingModel.TestCase
