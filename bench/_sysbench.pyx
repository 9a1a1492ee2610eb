# cython: language_level=3, boundscheck=False, wraparound=False
"""Per-call costs the pumps pay, timed in C loops with the GIL released:
what a batching interface (io_uring, a multi-frame tap call) could save is
the syscall entry and exit, the rest is the kernel's work per frame."""
from libc.stdint cimport uint8_t, uint64_t
from libc.errno cimport errno
from posix.unistd cimport read, write
from shmsignal.includes.atomics cimport shm_now_ns

cdef extern from "<unistd.h>" nogil:
    long syscall(long number, ...)

cdef extern from "<sys/syscall.h>" nogil:
    long SYS_getppid


def bare_syscall_ns(long n):
    """ns per getppid(): the syscall entry and exit alone."""
    cdef long i
    cdef uint64_t t
    with nogil:
        t = shm_now_ns()
        for i in range(n):
            syscall(SYS_getppid)
        t = shm_now_ns() - t
    return t / <double>n


def read_empty_ns(int fd, long n):
    """ns per read() of an empty non-blocking fd (EAGAIN)."""
    cdef long i
    cdef uint64_t t
    cdef uint8_t buf[2048]
    with nogil:
        t = shm_now_ns()
        for i in range(n):
            read(fd, buf, 2048)
        t = shm_now_ns() - t
    return t / <double>n


def write_ns(int fd, const uint8_t[::1] frame, long n):
    """ns per write() of `frame` (vnet header included); raises if the
    kernel refuses one."""
    cdef long i
    cdef uint64_t t
    cdef ssize_t w = 0
    cdef Py_ssize_t ln = frame.shape[0]
    with nogil:
        t = shm_now_ns()
        for i in range(n):
            w = write(fd, &frame[0], ln)
            if w != ln:
                break
        t = shm_now_ns() - t
    if w != ln:
        raise OSError(errno, f"tap write returned {w}")
    return t / <double>n
