# A tap as a pump's port (venet/devices/port.pxd): the tap fd, opened with
# IFF_VNET_HDR and TUNSETVNETHDRSZ 16 and non-blocking, so that each read
# and write is one frame behind its vnet header.  One syscall per frame.
from posix.uio cimport iovec, readv, writev
from venet.devices.port cimport venet_port_t


cdef inline ssize_t tap_recv(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    return readv(port.fd, iov, niov)


cdef inline ssize_t tap_send(venet_port_t *port, iovec *iov, int niov) noexcept nogil:
    return writev(port.fd, iov, niov)


cdef inline void tap_port_init(venet_port_t *port, int fd) noexcept nogil:
    port.ctx = NULL
    port.fd = fd
    port.recv = tap_recv
    port.send = tap_send
