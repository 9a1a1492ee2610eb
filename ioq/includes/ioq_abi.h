/* ioq: the shared-memory region, its rings and descriptors.
 *
 * The single source of this layout: ioq/abi.pxd declares it from here,
 * ioq._abi derives the Python constants, reason names and numpy dtypes from
 * it at build time, docs/abi.md ("Region" to "Popped item") describes it in
 * prose.  Every integer is little-endian, fixed width and naturally aligned.
 *
 * A region is one sealed memfd, laid out by its creator:
 *
 *   [struct ioq_region_hdr][ring 0][ring 1]...[buffer pool]
 *
 * and a ring is a struct ioq_ring_hdr followed by `count` descriptors.  A
 * slot is published by its seq field (stored last, with release): the
 * consumer expecting position p accepts slot p % count only when
 * seq == p + 1, so its hot path reads the slot alone, never the producer's
 * index, and a garbage index cannot exist on that side.
 */
#ifndef IOQ_ABI_H
#define IOQ_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "shmsig_abi.h"

#define IOQ_REGION_MAGIC        0x494f5152u     /* "IOQR" */
#define IOQ_VERSION             1
#define IOQ_MAX_RINGS           16
#define IOQ_MAX_COUNT           65536   /* slots per ring, a power of two */
#define IOQ_MAX_SG_LIMIT        256     /* hard cap on entries in one SG list */
#define IOQ_RING_ALIGN          64      /* ring offsets (checked at attach) */
#define IOQ_POOL_ALIGN          64      /* pool offset (checked at attach; the creator uses 4096) */
#define IOQ_SG_ALIGN            8       /* SG tables inside the pool */
#define IOQ_HDR_SIZE            320     /* sizeof(struct ioq_region_hdr) */
#define IOQ_RING_HDR_SIZE       320     /* sizeof(struct ioq_ring_hdr): descriptors start here */
#define IOQ_DESC_SIZE           32      /* sizeof(struct ioq_desc) */
#define IOQ_SG_SIZE             16      /* sizeof(struct ioq_sg) */

/* Descriptor flags.  Bits 0..15 belong to ioq; a set bit ioq does not know
 * is a bad descriptor.  Bits 16..31 belong to the layer above and pass
 * through untouched. */
#define IOQ_DESC_F_INDIRECT     0x1u            /* offset/len locate an ioq_sg_t table */
#define IOQ_DESC_F_KNOWN        0x1u            /* every ioq bit defined so far */
#define IOQ_DESC_F_USER_MASK    0xffff0000u

/* Why a popped descriptor was refused (ioq_item_t.status); counted per
 * ring under the name of the same index in ioq_reason_names. */
enum ioq_reason {
	IOQ_OK = 0,
	IOQ_BAD_FLAGS = 1,      /* an ioq flag bit we do not know */
	IOQ_BAD_ZERO_LEN = 2,   /* len == 0 */
	IOQ_BAD_BOUNDS = 3,     /* offset + len outside the buffer pool */
	IOQ_BAD_TOO_LONG = 4,   /* longer than this consumer accepts */
	IOQ_BAD_SG_TABLE = 5,   /* SG table misaligned, empty, too long or outside */
	IOQ_BAD_SG_ENTRY = 6,   /* an SG entry of zero length or outside the pool */
	IOQ_NREASONS
};

/* The stats() key of each reason (docs/abi.md, "What the consumer checks"). */
static const char *const ioq_reason_names[] __attribute__((unused)) = {
	"ok", "bad_flags", "zero_len", "out_of_bounds", "too_long", "bad_sg_table", "bad_sg_entry",
};
_Static_assert(sizeof(ioq_reason_names) / sizeof(ioq_reason_names[0]) == IOQ_NREASONS,
	       "one name per ioq reason");

/* Where ring i lives; written once by the creator, checked at attach. */
typedef struct ioq_ring_info {
	uint64_t offset;        /* ring start from the region base, IOQ_RING_ALIGN-aligned */
	uint32_t count;         /* slots, a power of two 1..IOQ_MAX_COUNT */
	uint32_t flags;         /* reserved, 0 */
} ioq_ring_info_t;

/* At offset 0 of the region; written once by the creator before it seals
 * the memfd, copied once into private memory by the attacher. */
typedef struct ioq_region_hdr {
	uint32_t magic;         /* IOQ_REGION_MAGIC */
	uint32_t version;       /* IOQ_VERSION */
	uint64_t size;          /* bytes; must equal the memfd's size */
	uint32_t nrings;        /* 1..IOQ_MAX_RINGS */
	uint32_t max_sg;        /* longest SG list a producer may post, 1..IOQ_MAX_SG_LIMIT */
	uint64_t pool_offset;   /* buffer pool start, IOQ_POOL_ALIGN-aligned */
	uint64_t pool_size;     /* buffer pool bytes */
	uint32_t buf_size;      /* the creator's carve of the pool (advisory) */
	uint32_t nbufs;         /* buf_size * nbufs <= pool_size */
	uint8_t _pad[16];       /* 0 */
	ioq_ring_info_t rings[IOQ_MAX_RINGS];   /* the first nrings are used, the rest 0 */
} ioq_region_hdr_t;

/* One slot of a ring; written by the producer only, read once (into a
 * private copy) by the consumer. */
typedef struct ioq_desc {
	uint64_t cookie;        /* opaque to the consumer, echoed back if asked */
	uint64_t offset;        /* buffer (or SG table) offset from the region base */
	uint32_t len;           /* buffer bytes (or SG table bytes, n * IOQ_SG_SIZE) */
	uint32_t flags;         /* IOQ_DESC_F_*; bits 16..31 the layer above's */
	uint32_t user;          /* opaque to ioq (the layer above may use it) */
	uint32_t seq;           /* position + 1, stored last with release: publishes the slot */
} ioq_desc_t;

/* One entry of an indirect descriptor's table, IOQ_SG_ALIGN-aligned inside
 * the pool; written by the producer, copied by the consumer before it is
 * checked. */
typedef struct ioq_sg {
	uint64_t offset;        /* buffer offset from the region base */
	uint32_t len;           /* buffer bytes, not 0 */
	uint32_t reserved;      /* 0 */
} ioq_sg_t;

/* The head of every ring, at rings[i].offset; the descriptors follow. */
typedef struct ioq_ring_hdr {
	uint32_t prod;          /* producer's free-running index (advisory), written by the producer (release) */
	uint8_t _pad0[60];      /* keeps prod on its own cache line */
	uint32_t cons;          /* consumer's index: slots before it may be reused; written by the consumer (release) */
	uint8_t _pad1[60];      /* keeps cons on its own cache line */
	shmsig_shared_t sig;    /* side 0 the producer, side 1 the consumer */
	ioq_desc_t desc[];      /* count slots, written by the producer */
} ioq_ring_hdr_t;

/* A popped descriptor: the consumer's private, validated copy, never in
 * shared memory (private to this implementation, not part of the ABI).
 * For an indirect descriptor len is the total of its entries and
 * sg_first/sg_count locate the validated copies in the caller's SG scratch
 * array. */
typedef struct ioq_item {
	uint64_t cookie;
	uint64_t offset;
	uint32_t len;
	uint32_t flags;
	uint32_t user;
	uint32_t status;        /* IOQ_OK or an IOQ_BAD_* reason */
	uint32_t sg_first;
	uint32_t sg_count;
} ioq_item_t;

_Static_assert(sizeof(ioq_ring_info_t) == 16, "ring info is 16 bytes");
_Static_assert(offsetof(ioq_ring_info_t, count) == 8, "ring info count at 8");
_Static_assert(offsetof(ioq_ring_info_t, flags) == 12, "ring info flags at 12");

_Static_assert(sizeof(ioq_region_hdr_t) == IOQ_HDR_SIZE, "region header is IOQ_HDR_SIZE bytes");
_Static_assert(offsetof(ioq_region_hdr_t, magic) == 0, "magic at 0");
_Static_assert(offsetof(ioq_region_hdr_t, version) == 4, "version at 4");
_Static_assert(offsetof(ioq_region_hdr_t, size) == 8, "size at 8");
_Static_assert(offsetof(ioq_region_hdr_t, nrings) == 16, "nrings at 16");
_Static_assert(offsetof(ioq_region_hdr_t, max_sg) == 20, "max_sg at 20");
_Static_assert(offsetof(ioq_region_hdr_t, pool_offset) == 24, "pool_offset at 24");
_Static_assert(offsetof(ioq_region_hdr_t, pool_size) == 32, "pool_size at 32");
_Static_assert(offsetof(ioq_region_hdr_t, buf_size) == 40, "buf_size at 40");
_Static_assert(offsetof(ioq_region_hdr_t, nbufs) == 44, "nbufs at 44");
_Static_assert(offsetof(ioq_region_hdr_t, rings) == 64, "rings at 64");

_Static_assert(sizeof(ioq_ring_hdr_t) == IOQ_RING_HDR_SIZE, "ring header is IOQ_RING_HDR_SIZE bytes");
_Static_assert(offsetof(ioq_ring_hdr_t, prod) == 0, "prod at 0");
_Static_assert(offsetof(ioq_ring_hdr_t, cons) == 64, "cons at 64");
_Static_assert(offsetof(ioq_ring_hdr_t, sig) == 128, "signal block at 128");
_Static_assert(offsetof(ioq_ring_hdr_t, sig) % SHMSIG_ALIGN == 0, "signal block aligned");
_Static_assert(offsetof(ioq_ring_hdr_t, desc) == IOQ_RING_HDR_SIZE, "descriptors at 320");
_Static_assert(IOQ_RING_HDR_SIZE % IOQ_RING_ALIGN == 0, "descriptors cache-line aligned");

_Static_assert(sizeof(ioq_desc_t) == IOQ_DESC_SIZE, "descriptor is IOQ_DESC_SIZE bytes");
_Static_assert(offsetof(ioq_desc_t, cookie) == 0, "cookie at 0");
_Static_assert(offsetof(ioq_desc_t, offset) == 8, "offset at 8");
_Static_assert(offsetof(ioq_desc_t, len) == 16, "len at 16");
_Static_assert(offsetof(ioq_desc_t, flags) == 20, "flags at 20");
_Static_assert(offsetof(ioq_desc_t, user) == 24, "user at 24");
_Static_assert(offsetof(ioq_desc_t, seq) == 28, "seq at 28");

_Static_assert(sizeof(ioq_sg_t) == IOQ_SG_SIZE, "SG entry is IOQ_SG_SIZE bytes");
_Static_assert(offsetof(ioq_sg_t, offset) == 0, "SG offset at 0");
_Static_assert(offsetof(ioq_sg_t, len) == 8, "SG len at 8");
_Static_assert(offsetof(ioq_sg_t, reserved) == 12, "SG reserved at 12");

_Static_assert(sizeof(ioq_item_t) == 40, "popped item is 40 bytes");

#endif /* IOQ_ABI_H */
