"""kill -9 loops during iperf3 through `venet bridge` + `venet attach`.

Namespace A holds the bridge's tap (vb0, 10.77.9.1), namespace B the
attach's (va0, 10.77.9.2).  Each round starts an iperf3 TCP stream from B
to A, waits until frames flow through the bridge (vb0's counters move),
then SIGKILLs one side at a random moment.  After each kill the survivor's
fds (memfds, eventfds, sockets), threads and the taps of both namespaces
must return to their baseline, counted from /proc and with pyroute2.

Frontend kills (SOAK_KILL_FRONTEND, default 100): the bridge survives and
frees the device: baseline = the bridge before any frontend came.  The
attach is started again for the next round.

Backend kills (SOAK_KILL_BACKEND, default 20): the attach survives (it
reconnects, keeping its tap and addresses), the bridge is started again;
after it the attach must move traffic again, and its fds and threads must
be those it had after the first reconnection (given 15 s to become again
what they were before the first kill; the summary shows both).
"""
import random
import time

import pytest

from .conftest import env_int, fd_kinds, kill9, last_words, link_stats, reap, same_as, summary, taps, wait_for
from .rig import Rig

pytestmark = pytest.mark.soak

FRONTEND_KILLS = env_int("SOAK_KILL_FRONTEND", 100)
BACKEND_KILLS = env_int("SOAK_KILL_BACKEND", 20)
RECOVER_S = 15          # how long a survivor may take to return to its baseline


def test_kill_frontend(lab):
    rig = Rig(lab)
    rig.start_bridge()
    base = fd_kinds(rig.bridge.pid)
    worst = 0.0
    moved = 0
    t0 = time.monotonic()
    for i in range(FRONTEND_KILLS):
        rig.start_attach()
        rig.reachable()
        s0 = link_stats(rig.a, "vb0")["rx_packets"]
        srv, cli = rig.iperf_running()
        time.sleep(random.uniform(0, 0.5))
        kill9(rig.attach)
        t_kill = time.monotonic()
        moved += link_stats(rig.a, "vb0")["rx_packets"] - s0
        reap(lab, rig.attach)
        reap(lab, cli)
        reap(lab, srv)
        assert rig.bridge.poll() is None, f"round {i}: the bridge died: {last_words(rig.bridge)}"
        check = same_as(base, rig.bridge.pid)
        try:
            wait_for(check, RECOVER_S, "the bridge's fds and threads back to baseline")
            wait_for(lambda: taps(rig.b) == [] and taps(rig.a) == ["vb0"], RECOVER_S,
                     "the attach's tap gone, the bridge's kept")
        except AssertionError as e:
            raise AssertionError(f"round {i}: {e}: baseline {base}, now {check.last}") from None
        worst = max(worst, time.monotonic() - t_kill)
    summary("kill-frontend", kills=FRONTEND_KILLS, bridge_baseline=_short(base),
            worst_recovery_s=round(worst, 2), frames_moved=moved,
            seconds=round(time.monotonic() - t0))


def test_kill_backend(lab):
    rig = Rig(lab)
    rig.start_bridge()
    rig.start_attach()
    rig.reachable()
    first = fd_kinds(rig.attach.pid)
    base = None
    worst = 0.0
    moved = 0
    t0 = time.monotonic()
    for i in range(BACKEND_KILLS):
        s0 = link_stats(rig.a, "vb0")["rx_packets"]
        srv, cli = rig.iperf_running()
        time.sleep(random.uniform(0, 0.5))
        moved += link_stats(rig.a, "vb0")["rx_packets"] - s0
        kill9(rig.bridge)
        t_kill = time.monotonic()
        reap(lab, rig.bridge)
        reap(lab, cli)
        reap(lab, srv)
        wait_for(lambda: taps(rig.a) == [], RECOVER_S, "the dead bridge's tap to go")
        rig.start_bridge()
        # The attach must outlive its bridge (reconnect), keeping its tap
        # and its addresses: traffic resumes without reconfiguring.
        try:
            rig.reachable(timeout=RECOVER_S)
        except AssertionError:
            if rig.attach.poll() is not None:
                raise AssertionError(
                    f"round {i}: venet attach exited ({rig.attach.returncode}) when its bridge "
                    f"died: {last_words(rig.attach)}") from None
            raise
        if base is None:
            # The baseline is the attach after its first reconnection: what
            # a reconnecting frontend keeps for good (a retry thread, say)
            # may differ from before, but must not grow from round to round.
            check = same_as(first, rig.attach.pid)
            try:
                wait_for(check, RECOVER_S, "the attach's fds and threads to settle")
            except AssertionError:
                pass
            base = fd_kinds(rig.attach.pid)
        check = same_as(base, rig.attach.pid)
        try:
            wait_for(check, RECOVER_S, "the attach's fds and threads back to baseline")
        except AssertionError as e:
            raise AssertionError(f"round {i}: {e}: baseline {base}, now {check.last}") from None
        assert taps(rig.a) == ["vb0"] and taps(rig.b) == ["va0"]
        worst = max(worst, time.monotonic() - t_kill)
    summary("kill-backend", kills=BACKEND_KILLS, attach_before=_short(first),
            attach_baseline=_short(base), worst_recovery_s=round(worst, 2), frames_moved=moved,
            seconds=round(time.monotonic() - t0))


def _short(c):
    return "/".join(f"{k}:{v}" for k, v in c.items())
