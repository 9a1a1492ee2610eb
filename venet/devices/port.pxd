# The port side of a pump: where the frames of its rings go to and come
# from.  A pump (venet/devices/_pump.pyx) holds its rings and one port; the
# port is a struct of nogil functions so that a tap (venet/devices/tap_port.pxd),
# another ring (a switch) or a socket can stand behind the same loop.
#
# Every frame crosses a port behind a 16-byte vnet header (virtio_net_hdr
# padded to 16 bytes, docs/abi.md), one frame per call.
from posix.uio cimport iovec

cdef struct venet_port_t:
    void *ctx               # the implementation's own state
    int fd                  # watched by the pump's epoll (EPOLLIN): frames may be read
    # Read one frame, header first, into iov[0:niov].  Returns its whole
    # length (more than the iovecs hold: the frame was cut), 0 at end of
    # file, or -1 with errno (EAGAIN: nothing to read now).
    ssize_t (*recv)(venet_port_t *port, iovec *iov, int niov) noexcept nogil
    # Write one frame, header first, from iov[0:niov].  Returns the bytes
    # taken (the whole frame, or it was refused) or -1 with errno.
    ssize_t (*send)(venet_port_t *port, iovec *iov, int niov) noexcept nogil
