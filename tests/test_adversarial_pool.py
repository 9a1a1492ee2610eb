"""The worker pool against hostile frontends (no root; ports are datagram
socketpairs): a link-down racing the worker's DONE report of a pump whose
frontend broke its ring index, on one worker shared with a healthy
device; the pool's task count and the process's fds and threads after
the cycles."""
import mmap
import os
import struct
import threading

import ioq
from tests import hostile
from tests.conftest import wait_until
from vbus._worker import Pool
from venet import _frames, abi

WAIT = 10
PLAIN = bytes(abi.META_SIZE)


def frame(n=60, tag=0):
    return bytes.fromhex("020000000001020000000099") + b"\x08\x00" + bytes([tag & 0xff]) * (n - 14)


def nfds():
    return len(os.listdir("/proc/self/fd"))


def test_linkdown_racing_a_done_report_leaves_the_pool_consistent():
    pool = Pool(1, pin=False)
    good_fe = hostile.Frontend(ring=64)
    good_port, good_wire = hostile.port_pair()
    good = hostile.device(good_port.detach())
    good.pool = pool
    try:
        good.register(good_fe.fds)
        good.linkup()
        fds0, threads0 = nfds(), threading.active_count()
        for cycle in range(30):
            # A device of its own each cycle: frames a broken session left
            # in the port would fill the next session's ring before the
            # frontend breaks it.
            bad_port, bad_wire = hostile.port_pair()
            bad = hostile.device(bad_port.detach())
            bad.pool = pool
            fe = hostile.Frontend(ring=16)
            mm = mmap.mmap(fe.fds[0], fe.region.size)
            try:
                bad.register(fe.fds)
                bad.linkup()
                # The frontend breaks its RX consumer index; frames from the
                # port make the pump find it and return DONE ...
                struct.pack_into("<I", mm, fe.region.ring_offset(abi.RING_RX) + ioq.RING_CONS_OFF,
                                 0x7fff0000)
                for _ in range(40):
                    try:
                        bad_wire.send(PLAIN + frame())
                    except BlockingIOError:
                        break
                # ... while the control thread takes the link down, at a
                # point that moves from cycle to cycle.
                if cycle % 3 == 1:
                    wait_until(lambda: not bad.link, WAIT, "the DONE report")
                bad.reset()
                assert bad.pump is None and not bad.wedged
                # The healthy device on the same worker goes on.
                good_wire.send(PLAIN + frame(60, cycle))
                assert _frames.recv_frame(good_fe.rx, timeout=WAIT) == (frame(60, cycle), 0, None)
                assert pool.stats()[0]["tasks"] == 1, pool.stats()
            finally:
                bad.close()
                bad_wire.close()
                mm.close()
                fe.close()
        wait_until(lambda: nfds() <= fds0, 5, f"fds back to {fds0} (now {nfds()})")
        assert threading.active_count() <= threads0
    finally:
        good.close()
        pool.close()
        good_fe.close()
        good_wire.close()
