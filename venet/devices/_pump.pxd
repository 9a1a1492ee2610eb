from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from posix.uio cimport iovec
from ioq.abi cimport ioq_item_t, ioq_sg_t
from ioq._ring cimport Ring
from venet.abi cimport VENET_MAX_CHAIN, VENET_META_SIZE, VENET_META_NREASONS
from venet.chain cimport VENET_CHAIN_MAX_IOV
from venet.devices.port cimport venet_port_t
from venet.devices.null_port cimport venet_null_t
from vbus._worker cimport Task
from venet.devices.capture cimport venet_cap_tee_t
from venet.devices._capture cimport CaptureSet

cdef extern from "<sched.h>" nogil:
    ctypedef struct cpu_set_t:
        pass

cdef enum:
    SG_SCRATCH = 512                    # two SG lists of the largest size
    MAX_IOV = 1 + VENET_CHAIN_MAX_IOV   # the vnet header, then a frame's pieces


cdef struct pump_stats_t:
    uint64_t to_tap_frames
    uint64_t to_tap_bytes
    uint64_t from_tap_frames
    uint64_t from_tap_bytes
    uint64_t drop_bad_desc         # refused by ioq validation (see ring stats)
    uint64_t drop_short            # shorter than an Ethernet header
    uint64_t drop_offload          # flags this pump does not honour
    uint64_t drop_meta[VENET_META_NREASONS]  # offload record refused, by META_* reason
    uint64_t drop_chain            # a VENET_F_MORE chain too long or malformed
    uint64_t drop_tap_write        # the kernel refused the frame
    uint64_t to_tap_gso            # frames with GSO metadata, each way
    uint64_t from_tap_gso
    uint64_t to_tap_csum           # frames with a partial checksum, each way
    uint64_t from_tap_csum
    uint64_t drop_rx_meta          # tap frames with offloads the peer did not negotiate
    uint64_t drop_rx_truncated     # tap frames longer than the buffers we offered
    uint64_t txc_events            # TX completion events posted
    uint64_t txc_lost              # ...not posted: the event queue was full
    uint64_t bulk_pins             # times the thread moved to bulk_cpu
    uint64_t out_ring_full         # tap reads deferred: frontend not keeping up
    uint64_t tap_read_errors
    uint64_t wakeups
    uint64_t busy_polls


# What the pump knows between turns.
cdef struct pump_wake_t:
    bint out_full               # the out ring had no room for a frame of the largest size
    bint port_ready             # the port may hold frames (until a read says EAGAIN)


cdef class Pump(Task):
    # ring side
    cdef Ring inr
    cdef Ring outr
    cdef Ring evq                   # event queue (producer) while running, for TXC
    cdef uint32_t pop_want          # descriptors per turn from the in ring
    cdef uint32_t hold              # published slots of a chain whose end is not
    cdef bint discard               # skipping the tail of a chain refused as too long
    cdef uint32_t known_flags       # frame flags honoured: TXC only when negotiated
    cdef uint32_t txc_posted        # events published since the last kick
    cdef ioq_item_t items[VENET_MAX_CHAIN]
    cdef ioq_sg_t sg[SG_SCRATCH]
    # port side
    cdef venet_port_t port
    cdef venet_null_t *nullp        # venet-null's port state (NULL: the port is its fd)
    cdef int port_i                 # the port's index in the task's fds (-1: none)
    cdef uint32_t read_slots        # slots one port read may fill
    cdef uint32_t max_plain         # longest frame without GSO: MTU + 14
    cdef uint8_t vhdr[VENET_META_SIZE]  # the vnet header of the frame being written
    cdef iovec iov[MAX_IOV]
    # the turn (a vbus task: vbus/worker.pxd)
    cdef pump_wake_t w
    cdef bint recent                # the last turns did work: busy-poll before arming
    cdef bint armed                 # the signals are armed (disarmed on the next turn)
    # capture taps (venet/devices/capture.pxd): `io` is the port each batch
    # uses, &port, or &tee.port while a capture is attached
    cdef CaptureSet capset
    cdef venet_cap_tee_t tee
    cdef venet_port_t *io
    cdef uint32_t budget
    cdef int64_t poll_ns
    cdef pump_stats_t st
    cdef readonly uint32_t caps     # negotiated offload bits (SG group)
    cdef int bulk_cpu               # run here while moving bulk traffic (-1: never)
    cdef bint bulk_pinned
    cdef cpu_set_t saved_mask       # the thread's CPUs before it was pinned
    cdef uint64_t bulk_t0           # start of the current tick
    cdef uint64_t bulk_gso0         # GSO frames moved before it
    cdef uint64_t bulk_last         # the last tick that was bulk

    cdef int _add(self, int fd, uint32_t bit, bint edge)
    cdef int _turn(self, uint32_t events) noexcept nogil
    cdef uint32_t _ring_to_port(self) noexcept nogil
    cdef void _txc(self, uint32_t status) noexcept nogil
    cdef void _write_frame(self, uint32_t n, uint32_t k) noexcept nogil
    cdef uint32_t _vnet_header(self, uint32_t flags, uint64_t *total) noexcept nogil
    cdef uint32_t _port_to_ring(self, pump_wake_t *w) noexcept nogil
    cdef int _read_frame(self, uint32_t at) noexcept nogil
    cdef bint _offload_record(self, char *buf, uint32_t length, uint32_t *mflags) noexcept nogil
    cdef void _bulk_check(self) noexcept nogil
