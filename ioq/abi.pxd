# ioq shared-memory ABI.  docs/abi.md describes the same bytes in prose; the
# static checks in ioq/_region.pyx (and tests/test_abi.py) keep them in step.
#
# A region is one sealed memfd:
#   [region header 320 B][ring 0][ring 1]...[buffer pool]
# Every ring:
#   +0    u32 prod            written by the producer only (advisory count)
#   +64   u32 cons            written by the consumer only (release)
#   +128  shmsig_shared_t     side 0 = producer, side 1 = consumer
#   +320  ioq_desc_t[count]   written by the producer only
#
# A slot is published by its seq field (stored last, with release): the
# consumer expecting position p accepts slot p % count only when seq == p + 1.
# So the consumer's hot path reads one cache line (the slot), never the
# producer's index, and a garbage index cannot exist on that side.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from shmsignal.shmsig cimport shmsig_shared_t

cdef enum:
    IOQ_REGION_MAGIC = 0x494f5152   # "IOQR"
    IOQ_VERSION = 1
    IOQ_MAX_RINGS = 16
    IOQ_MAX_COUNT = 65536           # slots per ring, a power of two
    IOQ_MAX_SG_LIMIT = 256          # hard cap on entries in one SG list
    IOQ_HDR_SIZE = 320
    IOQ_RING_HDR_SIZE = 320
    IOQ_RING_PROD_OFF = 0
    IOQ_RING_CONS_OFF = 64
    IOQ_RING_SIG_OFF = 128
    IOQ_DESC_SIZE = 32
    IOQ_SG_SIZE = 16

# Descriptor flags.  Bits 0..15 belong to ioq; a set bit ioq does not know is
# a bad descriptor.  Bits 16..31 belong to the layer above and pass through.
cdef enum:
    IOQ_DESC_F_INDIRECT = 0x1       # offset/len locate an ioq_sg_t table
    IOQ_DESC_F_KNOWN = 0x1
    IOQ_DESC_F_USER_MASK = 0xffff0000

# Why a popped descriptor was refused (ioq_item_t.status); counted per ring.
cdef enum:
    IOQ_OK = 0
    IOQ_BAD_FLAGS = 1       # an ioq flag bit we do not know
    IOQ_BAD_ZERO_LEN = 2    # len == 0
    IOQ_BAD_BOUNDS = 3      # offset + len outside the buffer pool
    IOQ_BAD_TOO_LONG = 4    # longer than this consumer accepts
    IOQ_BAD_SG_TABLE = 5    # SG table misaligned, empty, too long or outside
    IOQ_BAD_SG_ENTRY = 6    # an SG entry of zero length or outside the pool
    IOQ_NREASONS = 7

cdef struct ioq_ring_info_t:
    uint64_t offset         # ring start from region base, 64-aligned
    uint32_t count          # slots, power of two
    uint32_t flags          # reserved, 0

cdef struct ioq_region_hdr_t:
    uint32_t magic
    uint32_t version
    uint64_t size           # bytes; must equal the memfd's size
    uint32_t nrings
    uint32_t max_sg         # longest SG list a producer may post
    uint64_t pool_offset    # buffer pool start, 64-aligned
    uint64_t pool_size
    uint32_t buf_size       # the creator's carve of the pool (advisory)
    uint32_t nbufs
    uint8_t _pad[16]
    ioq_ring_info_t rings[16]

cdef struct ioq_desc_t:
    uint64_t cookie         # opaque to the consumer, echoed back if asked
    uint64_t offset         # buffer (or SG table) offset from region base
    uint32_t len            # buffer bytes (or SG table bytes, n * 16)
    uint32_t flags          # IOQ_DESC_F_*, user bits 16..31
    uint32_t user           # opaque to ioq (the layer above uses it)
    uint32_t seq            # position + 1, stored last: publishes the slot

cdef struct ioq_sg_t:
    uint64_t offset
    uint32_t len
    uint32_t reserved

# A popped descriptor: the consumer's private, validated copy.  For an
# indirect descriptor, len is the total of its entries and sg_first/sg_count
# locate the validated copies in the caller's SG scratch array.
cdef struct ioq_item_t:
    uint64_t cookie
    uint64_t offset
    uint32_t len
    uint32_t flags
    uint32_t user
    uint32_t status         # IOQ_OK or IOQ_BAD_*
    uint32_t sg_first
    uint32_t sg_count
