# venet-null's port (venet/classes.py): no file behind it.  A frame sent to
# it is counted by its sender and dropped; with a source frame set, a read
# gives that frame again, without end (a traffic source, as DPDK's net_null).
# No syscall per frame either way.
#
# Its fd is an eventfd the port never reads or writes: the class creates it
# with count 0 for a sink (never readable) or 1 for a source (always
# readable, level-triggered), so a pump's or an engine's readiness logic,
# built on the port fd, serves it unchanged: a source is read while the
# other side has room, and its fd leaves the interest set when it has not.
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport malloc
from libc.string cimport memcpy, memset
from posix.uio cimport iovec
from venet.devices.port cimport venet_port_t

cdef extern from *:
    """
    #include <errno.h>
    static inline void venet_null_set_errno(int e) { errno = e; }
    """
    void venet_null_set_errno(int e) noexcept nogil
    enum:
        EAGAIN


cdef struct venet_null_t:
    uint32_t len                # bytes a read gives: 16 (vnet header) + the frame; 0: a sink only
    uint8_t data[1]             # the vnet header (zero) and the frame, `len` bytes


cdef inline ssize_t null_send(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    cdef ssize_t total = 0
    cdef int i
    for i in range(niov):
        total += <ssize_t>iov[i].iov_len
    return total


cdef inline ssize_t null_recv(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    cdef venet_null_t *n = <venet_null_t *>port.ctx
    cdef uint32_t off = 0, c
    cdef int i
    if n.len == 0:
        venet_null_set_errno(EAGAIN)
        return -1
    for i in range(niov):
        if off >= n.len:
            break
        c = <uint32_t>iov[i].iov_len if iov[i].iov_len < n.len - off else n.len - off
        memcpy(iov[i].iov_base, n.data + off, c)
        off += c
    return n.len                # the whole frame, cut or not (port.pxd's contract)


cdef inline venet_null_t *null_new(const uint8_t *frame, uint32_t flen) noexcept nogil:
    """A port state giving `frame` (flen bytes; 0: a sink); free() it.
    NULL when out of memory."""
    cdef venet_null_t *n = <venet_null_t *>malloc(sizeof(venet_null_t) + 16 + flen)
    if n == NULL:
        return NULL
    n.len = 16 + flen if flen else 0
    memset(n.data, 0, 16)
    if flen:
        memcpy(n.data + 16, frame, flen)
    return n


cdef inline void null_port_init(venet_port_t *port, int fd, venet_null_t *n) noexcept nogil:
    port.ctx = n
    port.fd = fd
    port.recv = null_recv
    port.send = null_send
