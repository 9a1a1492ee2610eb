# cython: language_level=3, boundscheck=False, wraparound=False
"""Python face of shmsignal: one endpoint of a shared-memory signal."""
import os
import stat
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.errno cimport errno
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE, PyBUF_SIMPLE
from shmsignal.shmsig cimport *

MAGIC = SHMSIG_MAGIC
VERSION = SHMSIG_VERSION
SIZE = SHMSIG_SIZE
ALIGN = SHMSIG_ALIGN
FD_EVENTFD = SHMSIG_FD_EVENTFD
FD_SOCKET = SHMSIG_FD_SOCKET
FD_EDGE = SHMSIG_FD_EDGE


def doorbell_kind(int fd):
    """FD_SOCKET for a socket, else FD_EVENTFD (-1, no fd, counts as an
    eventfd: it is never used)."""
    if fd < 0:
        return SHMSIG_FD_EVENTFD
    return SHMSIG_FD_SOCKET if stat.S_ISSOCK(os.fstat(fd).st_mode) else SHMSIG_FD_EVENTFD


class SignalError(Exception):
    """A shared signal block is missing, misplaced or not ours."""


cdef class Signal:
    """One side (0 or 1) of a signal block living at `offset` in `buf`.

    The peer wakes us by kicking `wait_fd`; we wake the peer by kicking
    `kick_fd`.  Each is an eventfd or one end of a stream socketpair (see
    shmsig.pxd).  Either fd may be -1 (busy-poll only / never kick).  The
    fds stay owned by the caller.
    """

    def __cinit__(self, buf, Py_ssize_t offset, int side, int wait_fd=-1, int kick_fd=-1,
                  bint init=False):
        self._have_view = False
        if side not in (0, 1):
            raise ValueError(f"side must be 0 or 1, not {side}")
        PyObject_GetBuffer(buf, &self._view, PyBUF_WRITABLE)
        self._have_view = True
        if offset < 0 or offset + SHMSIG_SIZE > self._view.len:
            raise SignalError(f"signal block at {offset} does not fit a buffer of {self._view.len} bytes")
        cdef char *p = <char *>self._view.buf + offset
        if (<size_t>p) % SHMSIG_ALIGN:
            raise SignalError(f"signal block at {offset} is not {SHMSIG_ALIGN}-byte aligned")
        cdef shmsig_shared_t *shm = <shmsig_shared_t *>p
        if init:
            shmsig_init_shared(shm)
        cdef int bad = shmsig_check_shared(shm)
        if bad == -1:
            raise SignalError(f"no signal block at {offset}: bad magic")
        if bad == -2:
            raise SignalError(f"signal block at {offset} has version {shm.version}, expected {SHMSIG_VERSION}")
        shmsig_bind(&self.s, shm, side, wait_fd, kick_fd)
        shmsig_set_kinds(&self.s, doorbell_kind(wait_fd), wait_fd, doorbell_kind(kick_fd))

    def __dealloc__(self):
        if self._have_view:
            PyBuffer_Release(&self._view)

    @property
    def side(self):
        return self.s.me

    def fileno(self):
        """The fd this side sleeps on (for select/epoll/asyncio)."""
        return self.s.sleep_fd

    def inject(self):
        """Mark work for the peer; kick it only if it asked to be woken.
        Returns True if a kick was sent.  OSError if the doorbell refused it."""
        cdef int r
        with nogil:
            r = shmsig_inject(&self.s)
        if r < 0:
            raise OSError(errno, f"kick failed: {os.strerror(errno)}")
        return r == 1

    def enable(self):
        """Ask to be woken.  Returns True if work is already pending, in
        which case the caller must process it rather than sleep."""
        return bool(shmsig_enable(&self.s))

    def disable(self):
        """Stop kicks while we are busy (the peer still marks work)."""
        shmsig_disable(&self.s)

    def take(self):
        """Clear and return the 'work pending' mark."""
        return bool(shmsig_take(&self.s))

    def ack(self):
        """After our fd polled readable: drain it and allow the next kick."""
        shmsig_ack(&self.s)

    def wait(self, timeout=None, poll_us=0):
        """Sleep until the peer injects.  Busy-polls the shared flag for at
        most poll_us first.  Returns True if signalled, False on timeout."""
        cdef int64_t tns = -1 if timeout is None else <int64_t>(float(timeout) * 1e9)
        cdef int64_t pns = <int64_t>(float(poll_us) * 1000)
        cdef int r
        if tns < -1 or pns < 0:
            raise ValueError("timeout and poll_us must not be negative")
        with nogil:
            r = shmsig_wait(&self.s, tns, pns)
        if r == -1:
            raise OSError(errno, os.strerror(errno) if errno else "no wait fd to sleep on")
        if r == -2:
            raise OSError("the signal's doorbell reported an error or hang-up")
        return r == 1

    def stats(self):
        return {
            "kicks_sent": self.s.kicks_sent,
            "kicks_suppressed": self.s.kicks_suppressed,
            "kicks_busy": self.s.kicks_busy,
            "kicks_failed": self.s.kicks_failed,
            "wakeups": self.s.wakeups,
            "spurious_wakeups": self.s.spurious,
            "poll_hits": self.s.poll_hits,
        }

    def flags(self):
        """The shared flags of both sides, for debugging and tests."""
        return [
            {"enabled": self.s.shm.side[i].enabled, "pending": self.s.shm.side[i].pending,
             "dirty": self.s.shm.side[i].dirty}
            for i in range(2)
        ]
