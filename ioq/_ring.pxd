from cpython.buffer cimport Py_buffer
from libc.stdint cimport uint32_t, uint64_t, int64_t
from ioq.abi cimport ioq_desc_t, ioq_item_t, ioq_sg_t
from ioq.ring cimport ioq_ring_t
from ioq._region cimport Region

cdef class Ring:
    cdef ioq_ring_t r
    cdef readonly Region region
    cdef readonly int index
    cdef readonly int role
    cdef bint _open
    cdef Py_buffer _view            # keeps the mapping alive while we use it
    cdef uint64_t _pair_off         # first paired buffer (0: none)
    cdef uint32_t _buf_size
    cdef int64_t _poll_ns
    cdef int _epfd                  # private epoll watching an EDGE wait fd
    cdef bint _have_epfd            # zero-initialised, so a failed __cinit__ closes nothing
    cdef ioq_desc_t *_descs         # scratch, `count` entries
    cdef ioq_item_t *_items         # scratch, `count` entries
    cdef ioq_sg_t *_sg              # scratch, max_sg entries per item batch
    cdef uint32_t _sg_cap
    cdef object __weakref__

    cdef int _live(self) except -1
    cdef int _wait(self, object timeout) except -1
    cdef int _need_pairs(self) except -1
    cdef int _wait_space(self, object timeout) except -1
    cdef uint32_t _pop_some(self, uint32_t n, object timeout) except? 0xffffffff
    cdef uint32_t _copy_out(self, ioq_item_t *it, char *dst) noexcept
