from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint32_t, uint64_t
from ioq.abi cimport ioq_region_hdr_t

cdef class Region:
    cdef object _mm
    cdef Py_buffer _view
    cdef bint _have_view
    cdef char *base
    cdef uint64_t _size
    cdef ioq_region_hdr_t hdr       # private, validated copy of the header
    cdef readonly int fd
    cdef readonly bint creator
    cdef readonly list doorbells    # per ring: (producer's wait fd, consumer's wait fd), as held here
    cdef list _kinds                # per ring: the SHMSIG_FD_* kind of each of those fds
    cdef list _handoff              # per ring: the pair the peer gets (creator)
    cdef list _own                  # fds only handoff() hands out (peer socket ends)
    cdef readonly tuple roles       # the role this process declared per ring, or None
    cdef object _rings              # weakref.WeakSet of Ring
    cdef object __weakref__

    cdef int _check_open(self) except -1
    cdef _map(self, object mm, uint64_t size)
