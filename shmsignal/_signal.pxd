from cpython.buffer cimport Py_buffer
from shmsignal.shmsig cimport shmsig_t

cdef class Signal:
    cdef shmsig_t s
    cdef Py_buffer _view
    cdef bint _have_view
