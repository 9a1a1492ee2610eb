# The virtqueue engine: a device's data plane served to a virtio-net
# driver over split virtqueues (the ring side), against the device's port
# (venet/devices/port.pxd, the port side the venet pump uses too).
#
# Who writes what (include/uapi/linux/virtio_ring.h):
#   descriptor table   the driver; read once per descriptor into private memory
#   avail ring         the driver (flags, idx, ring[], used_event at ring[num])
#   used ring          this engine (flags, idx, ring[], avail_event at ring[num])
# Every guest address is translated through the memory table (vq_region_t)
# and bounds-checked before use; nothing read from shared memory is read twice.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from posix.uio cimport iovec
from venet.devices.port cimport venet_port_t
from venet.meta cimport virtio_net_hdr_buf_t
from venet.devices.null_port cimport venet_null_t
from venet.devices.capture cimport venet_cap_tee_t
from vbus.worker cimport vbus_task_t
from vbus._worker cimport Task

cdef extern from "vq_atomics.h" nogil:
    uint16_t vq_load_acquire_u16(const void *p)
    uint16_t vq_load_relaxed_u16(const void *p)
    void vq_store_release_u16(void *p, uint16_t v)
    void vq_store_relaxed_u16(void *p, uint16_t v)
    void vq_store_relaxed_u32(void *p, uint32_t v)
    void vq_fence()

cdef enum:
    VQ_MAX_REGIONS = 8          # VHOST_MEMORY_BASELINE_NREGIONS
    VQ_MAX_SIZE = 32768         # the largest split queue
    VQ_MAX_SEGS = 1024          # buffers of one chain (IOV_MAX for writev)
    VQ_RX = 0                   # virtio-net queue 0: device -> driver
    VQ_TX = 1                   # queue 1: driver -> device
    VQ_HDR_ROOM = 12            # virtio_net_hdr_mrg_rxbuf
    # vring_desc.flags
    VRING_DESC_F_NEXT = 1
    VRING_DESC_F_WRITE = 2
    VRING_DESC_F_INDIRECT = 4
    VRING_USED_F_NO_NOTIFY = 1
    VRING_AVAIL_F_NO_INTERRUPT = 1
    # The engine's fds, as event bits of its turn (vbus/worker.pxd)
    VQ_EV_PORT = 1              # the port's fd was readable (level)
    VQ_EV_KICK_RX = 2           # queue 0's kick eventfd fired (edge)
    VQ_EV_KICK_TX = 4           # queue 1's kick eventfd fired (edge)
    # why a chain was refused (vq_stats_t.bad[])
    VQ_OK = 0
    VQ_BAD_INDEX = 1            # a descriptor index past the table
    VQ_BAD_LOOP = 2             # a loop, or a chain longer than its table
    VQ_BAD_ADDR = 3             # a buffer outside the memory table
    VQ_BAD_INDIRECT = 4         # an indirect table of a bad size, or with NEXT
    VQ_BAD_NESTED = 5           # an indirect table inside an indirect table
    VQ_BAD_DIR = 6              # a buffer of the wrong direction (read/write)
    VQ_BAD_LONG = 7             # more than VQ_MAX_SEGS buffers
    VQ_BAD_SHORT = 8            # shorter than the virtio header and an Ethernet header
    VQ_NREASONS = 9


cdef struct vring_desc_t:
    uint64_t addr
    uint32_t len
    uint16_t flags
    uint16_t next


cdef struct vq_region_t:
    uint64_t gpa                # guest physical address (descriptors)
    uint64_t size
    uint64_t uva                # the driver's own address (ring addresses)
    char *host                  # our mapping of gpa


cdef struct vq_seg_t:
    char *p
    uint32_t len


cdef struct vq_t:
    uint32_t num                # queue size (a power of 2)
    uint32_t mask
    char *desc                  # vring_desc_t[num]
    char *avail                 # flags, idx, ring[num], used_event
    char *used                  # flags, idx, {id, len}[num], avail_event
    uint16_t last_avail         # private: the next avail entry to take
    uint16_t used_idx           # private: the next used entry to fill
    uint16_t signalled          # used_idx when the driver was last considered for a call
    bint signalled_valid
    bint armed                  # notifications from the driver enabled
    # RX only: no progress can be made until the driver's avail idx moves
    # past wait_idx (a frame waits for more buffers than are posted, or an
    # endless port's frames do not fit the buffer at the head)
    bint waiting
    uint16_t wait_idx
    bint ready
    bint broken                 # the driver broke the ring: no more service
    int call_fd                 # -1: the driver polls


cdef struct vq_stats_t:
    uint64_t tx_frames          # driver -> port
    uint64_t tx_bytes
    uint64_t rx_frames          # port -> driver
    uint64_t rx_bytes
    uint64_t rx_buffers         # used entries for RX (more than frames with mergeable buffers)
    uint64_t bad[VQ_NREASONS]   # chains refused, by reason
    uint64_t tx_drop_meta       # a header the device may not honour
    uint64_t tx_drop_port       # the port refused the frame
    uint64_t rx_drop_meta       # port frames with offloads the driver did not accept
    uint64_t rx_drop_short
    uint64_t rx_drop_truncated  # longer than the engine's buffer
    uint64_t rx_drop_too_big    # (no mergeable buffers) larger than the driver's buffer
    uint64_t rx_wait_buffers    # turns a frame waited for the driver's buffers
    uint64_t avail_jump         # avail idx moved more than the queue size: queue stopped
    uint64_t calls_sent
    uint64_t calls_suppressed
    uint64_t calls_failed
    uint64_t port_read_errors
    uint64_t turns
    uint64_t wakeups            # turns after the worker slept on our fds
    uint64_t busy_polls         # turns the worker's busy-poll found work for


# A port that is a FIFO of frames in memory (`Engine(reflect=N)`): what the
# driver sends is given back to it, no syscall per frame.  For measuring
# the engine alone (bench/vhost.py); a device's engine uses its real port.
cdef struct vq_reflect_t:
    char *buf                   # slots * slot bytes
    uint32_t *len               # each slot's frame length (vnet header included)
    uint32_t slots
    uint32_t slot
    uint32_t head               # frames put (the engine's TX side)
    uint32_t tail               # frames taken (its RX side)
    uint64_t refused            # frames refused: the FIFO full, or larger than a slot


cdef struct vq_dev_t:
    vq_region_t reg[VQ_MAX_REGIONS]
    uint32_t nreg
    uint32_t last_reg           # the region of the last hit
    vq_t q[2]
    venet_port_t port
    venet_cap_tee_t tee         # the port behind the device's capture taps
    venet_port_t *io            # what this turn uses: &port, or &tee.port while a capture is attached
    vq_reflect_t *reflect       # NULL, or the FIFO `port` stands for
    bint event_idx
    bint mrg
    uint32_t hdr_len            # 12 (VERSION_1 or MRG_RXBUF) or 10
    uint32_t tx_caps            # venet offload bits the driver may send
    uint32_t rx_caps            # ... and may be given
    uint32_t max_plain          # MTU + 14
    uint32_t budget
    bint port_ready
    bint port_endless           # a venet-null source: every read gives the same frame
    bint want_port              # the port is in the worker's interest set only while set
    # RX: a frame read from the port, waiting for the driver's buffers
    uint32_t rx_len             # header + frame bytes at bounce + rx_off (0: none)
    uint32_t rx_off
    virtio_net_hdr_buf_t phdr   # the port's vnet header
    char *bounce                # VQ_HDR_ROOM + the largest frame
    uint32_t bounce_cap
    vring_desc_t *itab          # private copy of one indirect table
    vq_seg_t *segs              # the chain being served
    iovec *iov
    vq_stats_t st


# The engine is a task of the bus's worker pool (vbus/worker.pxd): one
# turn does at most `budget` frames each way.
cdef class Engine(Task):
    cdef vq_dev_t *d
    cdef venet_null_t *nullp            # venet-null's port state (NULL: the port is its fd)
    cdef int port_i                     # the port's index in the task's fds
    cdef int64_t poll_ns
    cdef bint recent                    # the last turn did work: busy-poll before arming
    cdef object capset                  # the device's CaptureSet (keeps tee.set alive)
    cdef readonly int resynced          # queues resumed from the used idx, not the base given
    cdef int _turn(self, uint32_t events) noexcept nogil
