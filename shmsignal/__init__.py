"""shmsignal: a signal in shared memory that kicks an eventfd only when the
other side asked to be woken (the vbus shm_signal protocol)."""
import os

from shmsignal._signal import ALIGN, MAGIC, SIZE, VERSION, Signal, SignalError

__all__ = ["ALIGN", "MAGIC", "SIZE", "VERSION", "Signal", "SignalError", "new_eventfd"]


def new_eventfd():
    """A non-blocking, close-on-exec eventfd, as the signal expects."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
