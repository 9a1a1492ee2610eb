import mmap
import os
import threading
import time

import pytest

import shmsignal
from shmsignal import Signal, SignalError, new_eventfd
from tests.conftest import wait_until


@pytest.fixture
def pair():
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    a, b = new_eventfd(), new_eventfd()
    s0 = Signal(m, 64, 0, wait_fd=a, kick_fd=b, init=True)
    s1 = Signal(m, 64, 1, wait_fd=b, kick_fd=a)
    yield s0, s1
    del s0, s1
    os.close(a)
    os.close(b)


def test_layout_constants():
    assert shmsignal.SIZE == 192 and shmsignal.ALIGN == 64


def test_inject_suppressed_while_peer_not_waiting(pair):
    s0, s1 = pair
    assert s0.inject() is False            # peer did not ask to be woken
    assert s1.flags()[1]["dirty"] == 1
    assert s0.inject() is False
    assert s0.stats()["kicks_suppressed"] == 2 and s0.stats()["kicks_sent"] == 0
    assert s1.take() is True and s1.take() is False


def test_inject_kicks_once_when_enabled(pair):
    s0, s1 = pair
    assert s1.enable() is False
    assert s0.inject() is True
    assert s0.inject() is False            # kick pending: no second kick
    assert s0.stats()["kicks_sent"] == 1
    assert s1.wait(timeout=1) is True      # the dirty mark, taken without sleeping
    # pending is cleared only by a side that slept and saw its fd readable:
    # this wait did not sleep, so the kick is still outstanding and a
    # further inject may not kick again, however armed the side is.
    assert s1.flags()[1]["pending"] == 1
    assert s0.inject() is False
    assert s1.take() is True
    # The next sleep finds the old kick's count (a spurious wake-up), clears
    # pending and drains the fd; then the side sleeps out its timeout.
    assert s1.wait(timeout=0.05) is False
    assert s1.flags()[1]["pending"] == 0
    assert s1.stats()["spurious_wakeups"] == 1
    assert s1.enable() is False
    assert s0.inject() is True             # armed and nothing outstanding: kick
    assert s0.stats()["kicks_sent"] == 2


def test_enable_reports_work_that_arrived_while_disabled(pair):
    s0, s1 = pair
    s0.inject()
    assert s1.enable() is True             # the re-check that prevents lost wake-ups


def test_wait_timeout(pair):
    s0, s1 = pair
    t = time.monotonic()
    assert s1.wait(timeout=0.05) is False
    assert time.monotonic() - t >= 0.04
    s0.inject()
    assert s1.wait(timeout=0, poll_us=10) is True     # already marked: no poll needed
    assert s1.wait(timeout=0.0) is False
    assert s1.stats()["poll_hits"] == 0


def test_poll_window_sees_an_inject_without_sleeping(pair):
    """An inject that lands while wait() busy-polls ends the wait inside the
    window: counted as a poll hit, with no kick and no sleep."""
    s0, s1 = pair
    go = threading.Event()

    def injector():
        # Event.wait() needs the GIL back to return, and the main thread
        # holds it until wait() below has released it for its nogil part:
        # the inject comes after wait() started.
        if go.wait(5):
            s0.inject()

    # The inject could still beat wait()'s first look at the flag by a few
    # instructions (then it returns True without polling); a few tries
    # make a poll hit certain without changing what one proves.
    for _ in range(5):
        t = threading.Thread(target=injector)
        t.start()
        go.set()
        try:
            assert s1.wait(timeout=5, poll_us=2_000_000) is True
        finally:
            t.join()
            go.clear()
        if s1.stats()["poll_hits"]:
            break
    st = s1.stats()
    assert st["poll_hits"] == 1, st
    assert st["wakeups"] == 0 and st["spurious_wakeups"] == 0, st
    assert s0.stats()["kicks_sent"] == 0
    assert s1.flags()[1]["enabled"] == 0      # it never armed for a kick


def test_wait_wakes_on_kick_from_another_process(pair):
    s0, s1 = pair
    pid = _inject_when_armed(s0)
    try:
        assert s1.wait(timeout=5) is True
        assert s1.stats()["wakeups"] == 1
    finally:
        _reap(pid)


def test_no_lost_wakeups_across_processes(pair):
    """The peer waits for each of N numbered signals with no busy-poll;
    a lost wake-up would stall it until the timeout."""
    s0, s1 = pair
    n = 3000
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    counter = memoryview(m).cast("Q")
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            seen = 0
            deadline = time.monotonic() + 20
            while seen < n and time.monotonic() < deadline:
                if counter[0] > seen:
                    seen = counter[0]
                    continue
                s1.wait(timeout=2)
            code = 0 if seen == n else 1
        finally:
            os._exit(code)
    for i in range(1, n + 1):
        counter[0] = i
        s0.inject()
        if i % 7 == 0:
            time.sleep(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    counter.release()


@pytest.mark.parametrize("offset,err", [(-1, "does not fit"), (4000, "does not fit"),
                                        (65, "aligned")])
def test_bad_placement(offset, err):
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    with pytest.raises(SignalError, match=err):
        Signal(m, offset, 0)


def test_bad_magic_and_side():
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    with pytest.raises(SignalError, match="magic"):
        Signal(m, 0, 0)
    with pytest.raises(ValueError, match="side"):
        Signal(m, 0, 2, init=True)
    Signal(m, 0, 0, init=True)
    m[4:8] = (99).to_bytes(4, "little")
    with pytest.raises(SignalError, match="version"):
        Signal(m, 0, 0)


def test_wait_without_fd_raises():
    m = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
    s = Signal(m, 0, 0, init=True)
    with pytest.raises(OSError):
        s.wait(timeout=0.01)


def _inject_when_armed(sig, timeout=5):
    """Fork a process that injects once the peer has armed for a kick (its
    `enabled` flag, raised by wait() just before it sleeps).  It exits 1
    if the peer never arms."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            wait_until(lambda: sig.flags()[1 - sig.side]["enabled"], timeout, "the peer to arm")
            sig.inject()
            code = 0
        finally:
            os._exit(code)
    return pid


def _reap(pid):
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the injecting process failed"


def test_kick_left_undrained_does_not_mute_the_next_one(pair):
    """wait() drains the eventfd lazily (before it next sleeps, not when it
    wakes).  A kick sent in between must not leave `pending` set, or every
    later inject would be suppressed while the peer sleeps."""
    s0, s1 = pair
    pids = [_inject_when_armed(s0)]           # kick 1 arrives while s1 sleeps
    try:
        assert s1.wait(timeout=10) is True    # woken by it; its count not yet drained
        s1.enable()
        assert s0.inject() is True            # kick 2, before any drain
        assert s1.wait(timeout=10) is True    # dirty taken at once
        s1.disable()                          # so that only the next wait() arms it
        woken = s1.stats()["wakeups"]
        pids.append(_inject_when_armed(s0))
        assert s1.wait(timeout=10) is True
        # Woken by a kick, not rescued by the timeout path.
        assert s1.stats()["wakeups"] == woken + 1
    finally:
        for pid in pids:
            _reap(pid)
