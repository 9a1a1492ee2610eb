# The venet-switch's data path (venet/devices/_switch.pyx): a learning L2
# switch over N ports, each port a frontend's rings (or a tap), moved ring
# to ring in C with the GIL released.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from posix.uio cimport iovec
from ioq.abi cimport ioq_item_t, ioq_sg_t
from ioq.ring cimport ioq_ring_t
from venet.abi cimport VENET_MAX_CHAIN, VENET_META_NREASONS
from venet.chain cimport VENET_CHAIN_MAX_IOV
from vbus._worker cimport Task

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)

cdef enum:
    SW_MAX_PORTS = 256
    SW_BATCH = 32               # frames taken from one port per turn
    # While frames are left behind, a sleeping peer's signal waits (docs/switch.md,
    # "Signal mode"): until this long after the first unsignalled frame or slot,
    SW_SIGNAL_DEFER_NS = 25_000
    # or until it has 1/SW_RX_SIGNAL_PART of its RX ring to read, or
    # 1/SW_TX_SIGNAL_PART of its TX ring free again.
    SW_RX_SIGNAL_PART = 8
    SW_TX_SIGNAL_PART = 8
    SW_SG_SCRATCH = 512
    SW_MAX_IOV = VENET_CHAIN_MAX_IOV
    SW_KIND_RING = 0
    SW_KIND_TAP = 1


cdef struct sw_port_stats_t:
    uint64_t rx_frames          # frames this port sent into the switch
    uint64_t rx_bytes
    uint64_t tx_frames          # frames the switch delivered to this port
    uint64_t tx_bytes
    uint64_t floods             # of its frames, how many were flooded
    uint64_t unicast            # ... sent to one learned port
    uint64_t filtered           # ... whose destination is on this same port
    uint64_t drop_bad_desc      # its descriptors ioq refused
    uint64_t drop_chain         # malformed or too-long chains
    uint64_t drop_offload       # a frame flag not negotiated
    uint64_t drop_short         # shorter than an Ethernet header (and record)
    uint64_t drop_meta[VENET_META_NREASONS]   # offload record refused, by reason
    uint64_t drop_rx_full       # frames for it dropped: its RX ring had no room
    uint64_t drop_rx_too_long   # frames for it longer than it can take
    uint64_t drop_segment       # super-frames for it that could not be segmented
    uint64_t drop_tap_write     # tap port: the kernel refused a frame
    uint64_t drop_rx_meta       # tap port: a frame with offloads it did not negotiate
    uint64_t segmented          # super-frames segmented for it
    uint64_t segments           # ... into this many frames
    uint64_t csum_finished      # partial checksums finished for it
    uint64_t gso_whole          # super-frames passed to it whole
    uint64_t txc_events
    uint64_t txc_lost
    uint64_t kicks              # times its RX doorbell was rung (it had asked to be woken)
    uint64_t broken             # turns skipped: it corrupted a ring index


cdef struct sw_port_t:
    int used
    int kind
    uint32_t gen
    ioq_ring_t *tx              # consumer: its frames (ring port)
    ioq_ring_t *rx              # producer: frames for it
    ioq_ring_t *evq             # producer of TXC events (NULL: not negotiated)
    int fd                      # tap port: the tap (non-blocking, IFF_VNET_HDR)
    bint tap_ready              # tap port: may hold frames until a read says EAGAIN
    uint32_t caps               # negotiated offload bits (SG group)
    uint32_t known_flags        # frame flags honoured from it
    uint64_t max_rx             # longest frame it can take (record included)
    uint32_t rx_pend            # slots filled for it in this batch, not yet published
    bint kick_due               # published for it, not yet signalled (sw_signal)
    uint32_t rx_unsig           # frames published for it since it was last signalled
    uint64_t rx_since           # when the first of those was published
    uint32_t tx_unsig           # its TX slots released since it was last signalled
    uint64_t tx_since           # when the first of those was released
    bint discard                # skipping the tail of a chain refused as too long
    uint32_t txc_posted
    sw_port_stats_t st


cdef struct mac_ent_t:
    uint64_t key                # MAC | 1 << 63; 0: empty
    uint64_t seen_ns
    uint32_t port
    uint32_t gen


cdef struct sw_stats_t:
    uint64_t frames             # frames taken from all ports
    uint64_t floods
    uint64_t mac_learned
    uint64_t mac_moved
    uint64_t mac_aged
    uint64_t mac_forgotten      # entries of removed ports
    uint64_t mac_table_full     # new MACs not learned: the table was full
    uint64_t turns
    uint64_t wakeups
    uint64_t ports_added
    uint64_t ports_removed


cdef struct sw_t:
    pthread_mutex_t lock        # held by a turn and by port changes
    sw_port_t ports[SW_MAX_PORTS]
    uint32_t act[SW_MAX_PORTS]  # slots in use, in order
    uint32_t nact
    uint32_t ntaps              # tap ports among them
    uint32_t next_gen
    uint32_t max_plain          # MTU + 14
    mac_ent_t *mac
    uint32_t mac_mask
    uint32_t mac_bits
    uint32_t mac_size           # capacity (mac_table_size)
    uint32_t mac_count
    uint64_t ageing_ns
    uint64_t now
    uint64_t next_sweep
    # per-frame scratch of the turn in progress
    ioq_item_t items[VENET_MAX_CHAIN]
    ioq_sg_t sg[SW_SG_SCRATCH]
    iovec iov[SW_MAX_IOV + 1]
    uint8_t *lin                # a private copy of one frame (segmenting, finishing)
    int lin_state               # 0: not copied, 1: copied, 2: checksum finished
    uint8_t *seg                # one segment
    uint8_t *tapbuf             # one tap read: vnet header + frame
    int epfd                    # every port's doorbell or tap, and the stop fd
    int stop_fd
    int64_t poll_ns             # --poll-us: the worker busy-polls after work
    # Within one port's batch, the last source learned and the last look-up
    # (a batch's frames mostly share their addresses): MAC | 1 << 63, 0: none
    uint64_t c_src
    uint64_t c_dst
    int64_t c_to
    bint recent                 # the last turn moved frames
    bint more                   # this turn left frames behind (a port's batch was full)
    sw_stats_t st


# One turn over every port (the vbus task's run, after the switch's own
# epoll was read: sw_task_run), and the busy-poll probe (the task's peek).
cdef int sw_run(sw_t *sw, uint32_t events) noexcept nogil
cdef int sw_task_run(sw_t *sw, uint32_t events) noexcept nogil
cdef bint sw_peek(sw_t *sw) noexcept nogil


# A vbus worker pool task (vbus/worker.pxd) whose one fd is the switch's
# own epoll, readable when a port's doorbell rang or a tap has frames.
cdef class Switch(Task):
    cdef sw_t *sw
    cdef int epfd
    cdef int stop_fd
    cdef dict rings             # slot -> the Ring objects it points into
    cdef readonly bint running

    cdef int _add(self, sw_port_t *p) except -1
    cdef void _sweep(self) noexcept nogil
