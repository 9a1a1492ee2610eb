"""--cpu: the pure part of where pumps run (venet/placement.py).  Whether
the threads really move is tested end to end in tests/net/test_offload.py."""
import os
import threading
import zlib

import pytest

from venet import placement


def test_auto_homes_are_neighbours_from_the_device_name():
    cpus = [2, 5, 7]
    i = zlib.crc32(b"vt0") % 3
    bulk, bridge_home, frontend_home = placement.device_cpus("vt0", cpus)
    assert bulk == bridge_home == cpus[i]
    assert frontend_home == cpus[(i + 1) % 3]


def test_one_cpu_puts_everything_on_it():
    assert placement.device_cpus("vt0", [3]) == (3, 3, 3)


def test_names_spread_devices_over_cpus():
    cpus = list(range(8))
    assert len({placement.bulk_cpu(f"dev{n}", cpus) for n in range(64)}) > 4


def test_pump_args():
    bulk, bridge_home, frontend_home = placement.device_cpus("eth7")
    assert placement.pump_args("auto", "eth7", placement.BRIDGE) == (bridge_home, bulk)
    assert placement.pump_args("auto", "eth7", placement.FRONTEND) == (frontend_home, bulk)
    assert placement.pump_args("any", "eth7", placement.BRIDGE) == (None, -1)
    assert placement.pump_args("1", "eth7", placement.FRONTEND) == (1, -1)
    with pytest.raises(ValueError, match="side"):
        placement.pump_args("auto", "eth7", "middle")


def test_pin_this_thread_pins_only_the_caller_and_survives_a_cpu_gone(caplog):
    cpu = max(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    got = {}

    def body():
        placement.pin_this_thread(cpu, "test thread")
        got["pinned"] = os.sched_getaffinity(0)
        placement.pin_this_thread(4096, "test thread")      # no such CPU: a warning, no exception
        got["after"] = os.sched_getaffinity(0)
    t = threading.Thread(target=body)
    t.start()
    t.join()
    assert got == {"pinned": {cpu}, "after": {cpu}}
    assert os.sched_getaffinity(0) == before
    assert "cannot run on CPU 4096" in caplog.text
