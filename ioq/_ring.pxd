from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint32_t, uint64_t, int64_t
from ioq.abi cimport ioq_desc_t, ioq_item_t, ioq_sg_t
from ioq.ring cimport ioq_ring_t
from ioq._region cimport Region

cdef class Ring:
    # The C API for the layers above (venet's frames and pumps): the ring
    # state that the ioq_* inline functions of ioq/ring.pxd take (its
    # paired buffers included: ioq_pair), scratch for a consumer's pops,
    # and the checks and waits below.  Everything underscored is private.
    cdef ioq_ring_t r
    cdef readonly Region region
    cdef readonly int index
    cdef readonly int role
    cdef ioq_item_t *items          # consumer's scratch, `count` entries
    cdef ioq_sg_t *sg               # SG scratch for those items, sg_cap entries
    cdef uint32_t sg_cap            # at least twice max_sg

    cdef int usable(self, int role) except -1
    cdef int need_pairs(self) except -1
    cdef int wait_peer(self, object timeout) except -1

    cdef bint _open
    cdef Py_buffer _view            # keeps the mapping alive while we use it
    cdef int64_t _poll_ns
    cdef int _epfd                  # private epoll watching an EDGE wait fd
    cdef bint _have_epfd            # zero-initialised, so a failed __cinit__ closes nothing
    cdef ioq_desc_t *_descs         # producer's scratch, `count` entries
    cdef object __weakref__

    cdef int _wait_space(self, object timeout) except -1
    cdef uint32_t _pop_some(self, uint32_t n, object timeout) except? 0xffffffff
    cdef uint32_t _copy_out(self, ioq_item_t *it, char *dst) noexcept
