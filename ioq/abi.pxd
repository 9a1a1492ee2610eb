# ioq shared-memory ABI, declared from its single source,
# ioq/includes/ioq_abi.h (the layout, a comment per field, and the static
# checks of every size and offset docs/abi.md gives).  ioq._abi exports the
# same to Python; tests/test_abi.py holds docs/abi.md to it.
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from shmsignal.shmsig cimport shmsig_shared_t

cdef extern from "ioq_abi.h" nogil:
    enum:
        IOQ_REGION_MAGIC
        IOQ_VERSION
        IOQ_MAX_RINGS
        IOQ_MAX_COUNT
        IOQ_MAX_SG_LIMIT
        IOQ_RING_ALIGN
        IOQ_POOL_ALIGN
        IOQ_SG_ALIGN
        IOQ_HDR_SIZE
        IOQ_RING_HDR_SIZE
        IOQ_DESC_SIZE
        IOQ_SG_SIZE

    enum:
        IOQ_DESC_F_INDIRECT
        IOQ_DESC_F_KNOWN
        IOQ_DESC_F_USER_MASK

    enum:
        IOQ_OK
        IOQ_BAD_FLAGS
        IOQ_BAD_ZERO_LEN
        IOQ_BAD_BOUNDS
        IOQ_BAD_TOO_LONG
        IOQ_BAD_SG_TABLE
        IOQ_BAD_SG_ENTRY
        IOQ_NREASONS

    const char *const ioq_reason_names[]

    ctypedef struct ioq_ring_info_t:
        uint64_t offset
        uint32_t count
        uint32_t flags

    ctypedef struct ioq_region_hdr_t:
        uint32_t magic
        uint32_t version
        uint64_t size
        uint32_t nrings
        uint32_t max_sg
        uint64_t pool_offset
        uint64_t pool_size
        uint32_t buf_size
        uint32_t nbufs
        uint8_t _pad[16]
        ioq_ring_info_t rings[IOQ_MAX_RINGS]

    ctypedef struct ioq_desc_t:
        uint64_t cookie
        uint64_t offset
        uint32_t len
        uint32_t flags
        uint32_t user
        uint32_t seq

    ctypedef struct ioq_sg_t:
        uint64_t offset
        uint32_t len
        uint32_t reserved

    ctypedef struct ioq_ring_hdr_t:
        uint32_t prod
        uint32_t cons
        shmsig_shared_t sig
        ioq_desc_t desc[1]      # C: desc[], the ring's `count` slots

    # Private to the consumer, never shared.
    ctypedef struct ioq_item_t:
        uint64_t cookie
        uint64_t offset
        uint32_t len
        uint32_t flags
        uint32_t user
        uint32_t status
        uint32_t sg_first
        uint32_t sg_count
