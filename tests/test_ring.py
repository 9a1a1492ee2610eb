import numpy as np
import pytest

import ioq
from ioq import DESC_DTYPE, ITEM_DTYPE, SG_DTYPE, IoqError, Region, RingBroken
from tests.conftest import RawPeer


@pytest.fixture
def region():
    r = Region.create([8, 8], buf_size=64, max_sg=4)
    yield r
    r.close()


def items(n=8):
    return np.zeros(n, ITEM_DTYPE)


def test_push_pop_wrap_and_full(region):
    p, c = region.producer(0), region.consumer(0)
    d = np.zeros(5, DESC_DTYPE)
    out = items()
    for rnd in range(5):
        d["cookie"] = np.arange(5) + 5 * rnd
        d["offset"] = region.buffer_offset(0)
        d["len"] = 10
        assert p.push(d) == 5
        assert c.pop(out) == 5
        assert list(out["cookie"][:5]) == list(range(5 * rnd, 5 * rnd + 5))
        assert (out["status"][:5] == 0).all()
        c.release()
    assert p.push(np.concatenate([d, d])) == 8        # ring of 8: the rest does not fit
    assert p.push(d) == 0 and p.stats()["ring_full"] == 1
    assert c.ready() == 8
    assert c.pop(out[:3]) == 3
    assert p.push(d) == 0                             # not released yet: still full
    c.release()
    assert p.push(d) == 3


def test_messages_round_trip(region):
    p, c = region.producer(0), region.consumer(0)
    assert c.get(timeout=0) is None
    for i in range(20):
        assert p.put(bytes([i]) * (1 + i))
        assert c.get(timeout=0) == bytes([i]) * (1 + i)
    with pytest.raises(ValueError, match="1 to 64"):
        p.put(b"x" * 65)
    with pytest.raises(ValueError, match="1 to 64"):
        p.put(b"")
    p.put(memoryview(b"abc"))
    p.put(bytearray(b"def"))
    assert c.get(0) == b"abc" and c.get(0) == b"def"


def test_put_times_out_when_full(region):
    p = region.producer(0)
    for _ in range(8):
        assert p.put(b"x")
    assert p.put(b"y", timeout=0.01) is False


def test_batches(region):
    p, c = region.producer(0), region.consumer(0)
    data = np.arange(6 * 64, dtype=np.uint8).reshape(6, 64)
    lens = np.array([1, 2, 3, 64, 5, 6], np.uint32)
    assert p.put_batch(data, lens) == 6
    assert p.put_batch(data) == 2                     # only two slots left
    out = np.zeros((16, 64), np.uint8)
    ol = np.zeros(16, np.uint32)
    assert c.get_batch(out, ol, timeout=0) == 8
    assert list(ol[:8]) == [1, 2, 3, 64, 5, 6, 64, 64]
    for i in range(6):
        assert bytes(out[i, :lens[i]]) == bytes(data[i, :lens[i]])
    assert c.get_batch(out, ol, timeout=0) == 0
    with pytest.raises(ValueError, match="2-D"):
        p.put_batch(np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match="row 0"):
        p.put_batch(data, np.zeros(6, np.uint32))


def test_get_batch_leaves_oversized_message(region):
    p, c = region.producer(0), region.consumer(0)
    p.put(b"a" * 10)
    p.put(b"b" * 40)
    out = np.zeros((4, 16), np.uint8)
    ol = np.zeros(4, np.uint32)
    assert c.get_batch(out, ol, timeout=0) == 1
    with pytest.raises(ValueError, match="does not fit"):
        c.get_batch(out, ol, timeout=0)
    assert c.get(timeout=0) == b"b" * 40             # nothing was lost


def test_roles_and_closed(region):
    p, c = region.producer(0), region.consumer(0)
    with pytest.raises(IoqError, match="producer end"):
        p.get()
    with pytest.raises(IoqError, match="consumer end"):
        c.put(b"x")
    p.close()
    with pytest.raises(IoqError, match="closed"):
        p.put(b"x")
    region.close()
    with pytest.raises(IoqError, match="closed"):
        c.get(timeout=0)


def test_descriptor_changed_after_pop_changes_nothing(region):
    c = region.consumer(0)
    peer = RawPeer(region)
    buf = region.buffer_offset(0)
    peer.publish(7, buf, 16)
    out = items()
    assert c.pop(out) == 1
    peer.write_slot(0, 666, 1 << 40, 1 << 30)       # rewrite after publication
    assert (out[0]["cookie"], out[0]["offset"], out[0]["len"], out[0]["status"]) == (7, buf, 16, 0)


@pytest.mark.parametrize("desc,reason", [
    (lambda r: (1, r.buffer_offset(0), 0, 0), "zero_len"),
    (lambda r: (1, 0, 16, 0), "out_of_bounds"),                          # points at the header
    (lambda r: (1, r.pool_offset + r.pool_size - 8, 16, 0), "out_of_bounds"),
    (lambda r: (1, (1 << 64) - 8, 16, 0), "out_of_bounds"),              # wraps around
    (lambda r: (1, r.buffer_offset(0), 0xffffffff, 0), "out_of_bounds"),
    (lambda r: (1, r.buffer_offset(0), 16, 0x2), "bad_flags"),
    (lambda r: (1, r.buffer_offset(0), 24, ioq.F_INDIRECT), "bad_sg_table"),  # 24 % 16
    (lambda r: (1, r.buffer_offset(0), 16 * 5, ioq.F_INDIRECT), "bad_sg_table"),  # > max_sg
    (lambda r: (1, r.buffer_offset(0) + 4, 16, ioq.F_INDIRECT), "bad_sg_table"),  # misaligned
    (lambda r: (1, 64, 16, ioq.F_INDIRECT), "bad_sg_table"),             # table outside pool
])
def test_hostile_descriptors_are_counted_and_returned(region, desc, reason):
    c = region.consumer(0)
    peer = RawPeer(region)
    peer.publish(*desc(region))
    peer.publish(2, region.buffer_offset(1), 8)       # a good one after it
    out = items()
    sg = np.zeros(8, SG_DTYPE)
    assert c.pop(out, sg) == 2
    assert out[0]["status"] == ioq.BAD_REASONS.index(reason)
    assert out[1]["status"] == 0 and out[1]["cookie"] == 2
    st = c.stats()
    assert st[reason] == 1 and st["bad_total"] == 1


def test_user_flag_bits_pass_through(region):
    c = region.consumer(0)
    peer = RawPeer(region)
    peer.publish(1, region.buffer_offset(0), 8, flags=0xabcd0000, user=77)
    out = items()
    assert c.pop(out) == 1
    assert out[0]["status"] == 0 and out[0]["flags"] == 0xabcd0000 and out[0]["user"] == 77


def test_scatter_gather(region):
    c = region.consumer(0)
    peer = RawPeer(region)
    table = region.buffer_offset(0)
    b1, b2 = region.buffer_offset(1), region.buffer_offset(2)
    region.buffer(1)[:4] = b"abcd"
    region.buffer(2)[:3] = b"efg"
    peer.write_sg(table, [(b1, 4), (b2, 3)])
    peer.publish(9, table, 32, flags=ioq.F_INDIRECT)
    out = items()
    sg = np.zeros(8, SG_DTYPE)
    assert c.pop(out, sg) == 1
    it = out[0]
    assert it["status"] == 0 and it["len"] == 7 and it["sg_count"] == 2
    assert list(sg["offset"][:2]) == [b1, b2]
    peer.write_sg(table, [(0, 4096), (0, 4096)])      # rewritten after pop: copy stands
    assert list(sg["len"][:2]) == [4, 3]
    # The message API gathers the chain.
    peer.write_sg(table, [(b1, 4), (b2, 3)])
    peer.publish(10, table, 32, flags=ioq.F_INDIRECT)
    c.release()
    assert c.get(timeout=0) == b"abcdefg"


@pytest.mark.parametrize("entries", [[(0, 16)], [(1 << 63, 16)], [(None, 0)]])
def test_bad_sg_entries(region, entries):
    c = region.consumer(0)
    peer = RawPeer(region)
    table = region.buffer_offset(0)
    peer.write_sg(table, [(region.buffer_offset(1) if o is None else o, n) for o, n in entries])
    peer.publish(1, table, 16, flags=ioq.F_INDIRECT)
    out = items()
    sg = np.zeros(8, SG_DTYPE)
    assert c.pop(out, sg) == 1
    assert out[0]["status"] == ioq.BAD_REASONS.index("bad_sg_entry")


def test_indirect_without_sg_scratch_is_refused(region):
    c = region.consumer(0)
    peer = RawPeer(region)
    peer.publish(1, region.buffer_offset(0), 16, flags=ioq.F_INDIRECT)
    out = items()
    assert c.pop(out) == 1 and out[0]["status"] == ioq.BAD_REASONS.index("bad_sg_table")
    with pytest.raises(ValueError, match="max_sg"):
        c.pop(out, np.zeros(2, SG_DTYPE))


def test_max_len(region):
    c = region.consumer(0, max_len=32)
    peer = RawPeer(region)
    peer.publish(1, region.buffer_offset(0), 33)
    out = items()
    assert c.pop(out) == 1 and out[0]["status"] == ioq.BAD_REASONS.index("too_long")


def test_garbage_seq_is_not_ready(region):
    c = region.consumer(0)
    peer = RawPeer(region)
    peer.write_slot(0, 1, region.buffer_offset(0), 8, seq=12345)   # not position 0's seq
    assert c.pop(items()) == 0 and c.ready() == 0
    peer.write_slot(0, 1, region.buffer_offset(0), 8)
    assert c.ready() == 1


def test_garbage_consumer_index_breaks_the_producer_not_the_process(region):
    p = region.producer(0)
    peer = RawPeer(region)
    for _ in range(8):
        p.put(b"x")
    peer.set_cons(0x7fffffff)                         # claims slots never written
    with pytest.raises(RingBroken):
        p.put(b"y")
    assert p.stats()["bad_index"] == 1


def test_reattach_resumes_where_the_indices_are(region):
    p, c = region.producer(0), region.consumer(0)
    p.put(b"one")
    assert c.get(0) == b"one"
    p.put(b"two")
    fd, efds = region.handoff()
    with Region.attach(fd, efds) as other:
        c2 = other.consumer(0)
        assert c2.get(timeout=0) == b"two"


def test_fileno_is_the_wait_eventfd(region):
    p, c = region.producer(0), region.consumer(0)
    assert c.fileno() == region.eventfds[0][1] and p.fileno() == region.eventfds[0][0]


def test_abi_sizes_match_docs():
    assert (DESC_DTYPE.itemsize, ITEM_DTYPE.itemsize, SG_DTYPE.itemsize) == (32, 40, 16)
    assert ioq.HDR_SIZE == 320 and ioq.RING_HDR_SIZE == 320
    assert ioq.ring_bytes(256) == 320 + 32 * 256


def test_arm_is_true_only_while_there_is_something_to_do(region):
    """arm() is what select()-based users call before sleeping: True must
    mean work is there, or a loop over an idle ring spins."""
    p, c = region.producer(0), region.consumer(0)
    assert not c.arm()
    p.put(b"x")
    assert c.arm() and c.arm()              # still there until consumed
    assert c.get(timeout=0) == b"x"
    assert not c.arm() and not c.arm()
    import select
    assert select.select([c.fileno()], [], [], 0)[0] == []
    p.put(b"y")                             # armed: the producer kicks
    assert select.select([c.fileno()], [], [], 1)[0] == [c.fileno()]
    assert c.arm() and c.get(timeout=0) == b"y"
