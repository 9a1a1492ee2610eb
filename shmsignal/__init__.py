"""shmsignal: a signal in shared memory that rings a doorbell fd (an eventfd
or a stream socket) only when the other side asked to be woken (the vbus
shm_signal protocol)."""
import os

import socket

from shmsignal._signal import (ALIGN, FD_EDGE, FD_EVENTFD, FD_SOCKET, MAGIC, SIZE, VERSION, Signal,
                               SignalError, doorbell_kind)

__all__ = ["ALIGN", "FD_EDGE", "FD_EVENTFD", "FD_SOCKET", "MAGIC", "SIZE", "VERSION", "Signal",
           "SignalError", "doorbell_kind", "new_eventfd", "new_socket_doorbell"]


def new_eventfd():
    """A non-blocking, close-on-exec eventfd, as the signal expects."""
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def new_socket_doorbell():
    """(waiter's end, ringer's end) of a non-blocking, close-on-exec
    AF_UNIX stream socketpair, as raw fds.  Ringing it never blocks, whatever
    the ringer's copy's flags are, so it is the doorbell to hand to a peer
    that is not trusted with an eventfd."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK
                             | socket.SOCK_CLOEXEC)
    return a.detach(), b.detach()
