"""Where a device's pump threads run (`--cpu`).

  N     the pump thread always runs on CPU N
  any   wherever the scheduler puts it
  auto  (default) wherever the scheduler puts it, except while it moves
        bulk traffic (GSO frames at about 1 Gbit/s or more): then on the
        device's bulk CPU, with the device's other pump, until its first
        turn of work 200 ms after the bulk stopped

Why auto: the two pumps of a device kick each other for nearly every
64 KiB frame, and on a VM a wake-up on the other vCPU costs about 31 us
against about 1 us on the same one.  Meeting on one CPU during bulk
transfers moved TCP from 0.59x to about 0.8x a veth pair here; keeping
small-frame conversations where the scheduler puts them keeps their round
trips (pinning always made them 1.6x longer).  The bridge and the attach are two
processes that never discuss this: both derive the CPU from the device's
name, so they agree, and different devices spread over the CPUs.
"""
import os
import zlib

AUTO, ANY = "auto", "any"


def bulk_cpu(device_name, cpus=None):
    """The CPU a device's pumps share while they move bulk traffic."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    return cpus[zlib.crc32(device_name.encode()) % len(cpus)]


def pump_args(cpu, device_name):
    """(pin_cpu, bulk_cpu) for a `--cpu` value: the CPU to pin the pump
    thread to for good (or None), and the Pump's bulk_cpu (or -1)."""
    if cpu == ANY:
        return None, -1
    if cpu == AUTO or cpu is None:
        return None, bulk_cpu(device_name)
    return int(cpu), -1
