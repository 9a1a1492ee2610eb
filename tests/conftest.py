import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root for network namespaces and taps")


def wait_until(pred, timeout, what):
    """Call pred() until it returns something true and return that; fail
    with "timed out after T s waiting for WHAT" once `timeout` seconds have
    passed.  The pause between calls grows from 1 ms to 50 ms, so a quick
    condition is seen at once and a slow one costs no busy CPU."""
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
        pause = min(pause * 2, 0.05)


def usable_cpus():
    return len(os.sched_getaffinity(0))


needs_two_cpus = pytest.mark.skipif(usable_cpus() < 2,
                                    reason="needs two usable CPUs (this process may use one)")
