/* shmsignal: the signal block two processes share.
 *
 * The single source of this layout: shmsignal/shmsig.pxd declares it from
 * here, shmsignal._signal exports the constants, docs/abi.md ("shmsignal
 * block") describes the protocol.  Every integer is little-endian and
 * naturally aligned; the block is SHMSIG_ALIGN-aligned wherever it sits.
 *
 * One block serves two sides.  Side i owns side[i].enabled; the peer sets
 * side[i].dirty and side[i].pending to wake side i; side i clears them.
 * Each side's flags sit on their own cache line, so the two directions of a
 * ring never false-share.
 */
#ifndef SHMSIG_ABI_H
#define SHMSIG_ABI_H

#include <stddef.h>
#include <stdint.h>

#define SHMSIG_MAGIC    0x56534947u     /* "VSIG" */
#define SHMSIG_VERSION  1
#define SHMSIG_SIZE     192             /* three cache lines */
#define SHMSIG_ALIGN    64

/* The flags of one side, on a cache line of their own. */
typedef struct shmsig_side {
	uint8_t enabled;        /* written by the owning side: "kick me when dirty" */
	uint8_t pending;        /* set by the peer when it kicks, cleared by the owner */
	uint8_t dirty;          /* set by the peer on every inject, cleared by the owner */
	uint8_t _pad[61];       /* 0: keeps the other side's line apart */
} shmsig_side_t;

typedef struct shmsig_shared {
	uint32_t magic;         /* SHMSIG_MAGIC, written once by the creator (last, release) */
	uint32_t version;       /* SHMSIG_VERSION, written once by the creator */
	uint8_t _pad[56];       /* 0, written by the creator */
	shmsig_side_t side[2];  /* side 0 and side 1 (on a ring: producer, consumer) */
} shmsig_shared_t;

_Static_assert(sizeof(shmsig_side_t) == 64, "shmsig_side_t is one cache line");
_Static_assert(offsetof(shmsig_side_t, enabled) == 0, "side.enabled at 0");
_Static_assert(offsetof(shmsig_side_t, pending) == 1, "side.pending at 1");
_Static_assert(offsetof(shmsig_side_t, dirty) == 2, "side.dirty at 2");
_Static_assert(sizeof(shmsig_shared_t) == SHMSIG_SIZE, "shmsig_shared_t is SHMSIG_SIZE bytes");
_Static_assert(offsetof(shmsig_shared_t, magic) == 0, "magic at 0");
_Static_assert(offsetof(shmsig_shared_t, version) == 4, "version at 4");
_Static_assert(offsetof(shmsig_shared_t, side) == 64, "side[0] at 64, side[1] at 128");

#endif /* SHMSIG_ABI_H */
