"""Where a device's pumps run (`--cpu`, a device's `cpu` attribute).

A backend's pump is not a thread of its own: it is a task of the bus's
worker pool (vbus/_worker.pyx), whose workers are pinned one per CPU when
the pool is made and never move.  So for the backend (`venet bridge`,
`venet daemon`) the value picks the worker the pump is placed on:

  N     the worker pinned to CPU N
  any   the least loaded worker
  auto  (default) the worker of the device's home CPU, derived from the
        device's name (its bulk CPU)

The frontend side of `venet attach` runs its one pump on a private worker
in its own thread, and there the value places that thread:

  N     always on CPU N
  any   wherever the scheduler puts it
  auto  on the CPU after the device's home; while the pump moves bulk
        traffic (GSO frames at about 1 Gbit/s or more) it moves to the
        device's bulk CPU, where the backend's pump is, until its first
        turn of work 200 ms after the bulk stopped; then it goes home.

Why: the two pumps of a device kick each other for nearly every 64 KiB
frame, and on a VM a wake-up on another vCPU costs many times one on the
same CPU, so during bulk transfers the pumps meet on one CPU.  Small-frame
conversations go the other way: with both pumps on one CPU for good the
applications queue behind them, and left to the scheduler the pumps
migrate more than once per round trip; on two CPUs of their own each pump
draws its side's application next to it, and round trips are shorter and
steadier than the scheduler's.  A pooled worker serves other devices too,
so it never follows one device's bulk traffic: only the attach's pump
moves.  The measurements, with the commands that made them:
docs/architecture.md, "Where the pumps run" and "Workers".

The bridge and the attach are two processes that never discuss this: both
derive the CPUs from the device's name, so they agree, and different
devices spread over the CPUs.  A pinned worker cannot flee a CPU that
other work keeps busy: on such a machine choose `any`, or give the device
CPUs of its own with N.
"""
import logging
import os
import zlib

log = logging.getLogger("venet.placement")

AUTO, ANY = "auto", "any"
BRIDGE, FRONTEND = "bridge", "frontend"


def device_cpus(device_name, cpus=None):
    """(bulk CPU, the bridge pump's home, the frontend pump's home) of a
    device under --cpu auto."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    i = zlib.crc32(device_name.encode()) % len(cpus)
    return cpus[i], cpus[i], cpus[(i + 1) % len(cpus)]


def bulk_cpu(device_name, cpus=None):
    """The CPU a device's pumps share while they move bulk traffic."""
    return device_cpus(device_name, cpus)[0]


def pump_args(cpu, device_name, side):
    """(home_cpu, bulk_cpu) for a `--cpu` value and the pump's side (BRIDGE
    or FRONTEND): the CPU whose worker the pump is placed on (the bridge:
    a pooled worker; the frontend: the thread running its private worker),
    or None (the least loaded worker, or the scheduler's choice), and the
    Pump's bulk_cpu (or -1: never moves)."""
    if side not in (BRIDGE, FRONTEND):
        raise ValueError(f"side must be {BRIDGE!r} or {FRONTEND!r}")
    if cpu == ANY:
        return None, -1
    if cpu == AUTO or cpu is None:
        bulk, bridge_home, frontend_home = device_cpus(device_name)
        return (bridge_home if side == BRIDGE else frontend_home), bulk
    return int(cpu), -1


def pin_this_thread(cpu, what):
    """Run the calling thread (only: a worker, or the attach's pump
    thread) on `cpu`, if not None.  A CPU taken away since it was chosen
    (a cpuset changed) leaves the thread where it is, with a warning: a
    pump that runs anywhere beats one that died."""
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as e:
        log.warning("%s: cannot run on CPU %s (%s); left to the scheduler", what, cpu, e.strerror)
