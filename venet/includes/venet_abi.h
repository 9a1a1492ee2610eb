/* venet: what rides on the ioq rings of one virtual-ethernet device.
 *
 * The single source of this layout: venet/abi.pxd declares it from here,
 * venet._abi derives the Python constants, names and record codecs from it
 * at build time (venet.abi is their Python face), docs/abi.md ("venet
 * device") describes it in prose.  Every integer is little-endian.
 *
 * A device region (created and sealed by the frontend) holds three rings:
 *   ring 0  TX   frontend -> backend: frames to transmit
 *   ring 1  RX   backend -> frontend: received frames
 *   ring 2  EVQ  backend -> frontend: events
 * with paired buffers (one per slot).  A frame is one descriptor, an
 * indirect SG list, or (offloads negotiated) a chain of descriptors in
 * consecutive slots linked by VENET_F_MORE.  Descriptor flags bits 16..31
 * carry VENET_F_*; the descriptor's user field is unused (0).
 */
#ifndef VENET_ABI_H
#define VENET_ABI_H

#include <stddef.h>
#include <stdint.h>

#include "ioq_abi.h"

#define VENET_VERSION           1
#define VENET_RING_TX           0
#define VENET_RING_RX           1
#define VENET_RING_EVQ          2
#define VENET_NRINGS            3
#define VENET_ETH_HLEN          14
#define VENET_MIN_FRAME         14
#define VENET_MIN_MTU           68      /* IPv4's minimum */
#define VENET_MAX_MTU           9000
#define VENET_META_SIZE         16      /* sizeof(venet_meta_t); also the tap's vnet header size */
#define VENET_EVENT_SIZE        24      /* sizeof(venet_event_t) */
/* A GSO frame: 64 KiB of IP datagram plus an Ethernet header and a VLAN
 * tag (the tap's gso_max_size is 64 KiB unless BIG TCP is configured). */
#define VENET_MAX_GSO_FRAME     (65536 + 14 + 4)
#define VENET_MAX_CHAIN         64      /* descriptors in one VENET_F_MORE chain */
#define VENET_MIN_BUF_SIZE      256     /* smallest paired buffer a backend accepts */

/* Capability groups and bits (the original venet's values; CSUM and USO
 * are ours: the original tied checksum offload to SG, and 1 << 5 was its
 * PMTD). */
#define VENET_CAP_GROUP_SG      0
#define VENET_CAP_GROUP_EVENTQ  1
#define VENET_CAP_SG            (1u << 0)
#define VENET_CAP_TSO4          (1u << 1)
#define VENET_CAP_TSO6          (1u << 2)
#define VENET_CAP_ECN           (1u << 3)
#define VENET_CAP_UFO           (1u << 4)
#define VENET_CAP_CSUM          (1u << 6)       /* partial checksums (csum_start/offset) both ways */
#define VENET_CAP_USO           (1u << 7)       /* UDP segmentation (the kernel's UDP_L4 GSO) */
#define VENET_CAP_EVQ_LINKSTATE (1u << 0)
#define VENET_CAP_EVQ_TXC       (1u << 1)

/* Frame flags in descriptor flags bits 16..31, written by the frame's
 * producer on its first descriptor (ioq passes them through untouched). */
#define VENET_F_NEEDS_CSUM      (1u << 16)      /* the offload record leads the data; checksum is partial */
#define VENET_F_GSO             (1u << 17)      /* a GSO super-frame (needs NEEDS_CSUM) */
#define VENET_F_ECN             (1u << 18)      /* TCP GSO keeping ECN (needs GSO) */
#define VENET_F_TXC             (1u << 19)      /* TX: post an EV_TXC event when done with the frame */
/* The frame continues in the next slot's descriptor (as AF_XDP's
 * XDP_PKT_CONTD): set on every descriptor of a chain but the last. */
#define VENET_F_MORE            (1u << 20)
#define VENET_F_META            (VENET_F_NEEDS_CSUM | VENET_F_GSO)

/* GSO types (the original venet's codes; USO is ours).  virtio_net_hdr's
 * differ: TCPV4 1, UDP 3, TCPV6 4, UDP_L4 5. */
#define VENET_GSO_TCPV4         0
#define VENET_GSO_UDP           1
#define VENET_GSO_TCPV6         2
#define VENET_GSO_UDP_L4        3

/* The offload record: with VENET_F_NEEDS_CSUM or VENET_F_GSO set on a
 * frame's first descriptor, the first VENET_META_SIZE bytes of its data are
 * this record, then the frame.  Every field is written by the frame's
 * producer and copied once by its consumer before it is checked. */
typedef struct venet_meta {
	uint16_t csum_start;    /* the checksum covers the frame from here to its end... */
	uint16_t csum_offset;   /* ...and is stored at csum_start + csum_offset */
	uint8_t gso_type;       /* VENET_GSO_* */
	uint8_t _pad;           /* 0 */
	uint16_t gso_hdrlen;    /* bytes the receiver should keep linear (virtio's hdr_len) */
	uint16_t gso_size;      /* payload bytes per segment (MSS) */
	uint16_t _pad2;         /* 0 */
	uint32_t _pad3;         /* 0 */
} venet_meta_t;

/* Why a frame's offload record was refused; the pumps count each under
 * drop_meta_<name> (name: venet_meta_reason_names). */
enum venet_meta_reason {
	VENET_META_OK = 0,
	VENET_META_NOT_NEGOTIATED = 1,  /* an offload this device did not negotiate */
	VENET_META_BAD_CSUM = 2,        /* checksum start/offset outside the frame */
	VENET_META_BAD_GSO = 3,         /* unknown type, MSS 0, header length outside the frame */
	VENET_META_TOO_LONG = 4,        /* longer than the device's limit for this kind of frame */
	VENET_META_BAD_RECORD = 5,      /* reserved bytes not 0, or the record not whole in the first buffer */
	VENET_META_NREASONS
};

static const char *const venet_meta_reason_names[] __attribute__((unused)) = {
	"ok", "not_negotiated", "bad_csum", "bad_gso", "too_long", "bad_record",
};
_Static_assert(sizeof(venet_meta_reason_names) / sizeof(venet_meta_reason_names[0]) == VENET_META_NREASONS,
	       "one name per META reason");

/* Events, each in its own EVQ buffer, written by the backend. */
#define VENET_EV_LINKSTATE      0
#define VENET_EV_TXC            1

typedef struct venet_event {
	uint32_t type;          /* VENET_EV_* */
	uint32_t size;          /* bytes of the whole event (VENET_EVENT_SIZE) */
	uint64_t a;             /* LINKSTATE: the link state (0 down, 1 up); TXC: the cookie of the frame's first descriptor */
	uint64_t b;             /* LINKSTATE: 0; TXC: the ring (VENET_RING_TX) in bits 0..31, a VENET_TXC_* status in bits 32..63 */
} venet_event_t;

/* What became of a frame flagged VENET_F_TXC (its EV_TXC event's status).
 * Each refusal has a drop counter in the pump's stats (docs/abi.md); a
 * refused offload record is VENET_TXC_META_BASE + its VENET_META_* reason,
 * last, so that a new reason only appends. */
enum venet_txc_status {
	VENET_TXC_SENT = 0,             /* written to the tap */
	VENET_TXC_BAD_DESC = 1,         /* a descriptor ioq refused (drop_bad_desc) */
	VENET_TXC_BAD_CHAIN = 2,        /* a malformed or too long MORE chain (drop_chain) */
	VENET_TXC_BAD_FLAGS = 3,        /* a flag this device does not honour (drop_offload) */
	VENET_TXC_SHORT = 4,            /* shorter than an Ethernet header (drop_short) */
	VENET_TXC_TAP_ERROR = 5,        /* the kernel refused the write (drop_tap_write) */
	VENET_TXC_META_BASE = 5,        /* not a status: + VENET_META_* gives those below */
	VENET_TXC_META_NOT_NEGOTIATED = VENET_TXC_META_BASE + VENET_META_NOT_NEGOTIATED,
	VENET_TXC_META_BAD_CSUM = VENET_TXC_META_BASE + VENET_META_BAD_CSUM,
	VENET_TXC_META_BAD_GSO = VENET_TXC_META_BASE + VENET_META_BAD_GSO,
	VENET_TXC_META_TOO_LONG = VENET_TXC_META_BASE + VENET_META_TOO_LONG,
	VENET_TXC_META_BAD_RECORD = VENET_TXC_META_BASE + VENET_META_BAD_RECORD,   /* (drop_meta_*) */
	VENET_TXC_NSTATUS
};

/* The name of each status; a refused record's is "meta_" and its reason's. */
static const char *const venet_txc_status_names[] __attribute__((unused)) = {
	"sent", "bad_desc", "bad_chain", "bad_flags", "short", "tap_error",
	"meta_not_negotiated", "meta_bad_csum", "meta_bad_gso", "meta_too_long", "meta_bad_record",
};
_Static_assert(sizeof(venet_txc_status_names) / sizeof(venet_txc_status_names[0]) == VENET_TXC_NSTATUS,
	       "one name per TXC status");
_Static_assert(VENET_TXC_SHORT == 4 && VENET_TXC_TAP_ERROR == 5 && VENET_TXC_META_BAD_RECORD == 10,
	       "TXC codes as docs/abi.md gives them");

_Static_assert(sizeof(venet_meta_t) == VENET_META_SIZE, "offload record is VENET_META_SIZE bytes");
_Static_assert(offsetof(venet_meta_t, csum_start) == 0, "csum_start at 0");
_Static_assert(offsetof(venet_meta_t, csum_offset) == 2, "csum_offset at 2");
_Static_assert(offsetof(venet_meta_t, gso_type) == 4, "gso_type at 4");
_Static_assert(offsetof(venet_meta_t, gso_hdrlen) == 6, "gso_hdrlen at 6");
_Static_assert(offsetof(venet_meta_t, gso_size) == 8, "gso_size at 8");

_Static_assert(sizeof(venet_event_t) == VENET_EVENT_SIZE, "event is VENET_EVENT_SIZE bytes");
_Static_assert(offsetof(venet_event_t, type) == 0, "type at 0");
_Static_assert(offsetof(venet_event_t, size) == 4, "size at 4");
_Static_assert(offsetof(venet_event_t, a) == 8, "a at 8");
_Static_assert(offsetof(venet_event_t, b) == 16, "b at 16");

_Static_assert((VENET_F_NEEDS_CSUM | VENET_F_GSO | VENET_F_ECN | VENET_F_TXC | VENET_F_MORE)
	       == ((VENET_F_NEEDS_CSUM | VENET_F_GSO | VENET_F_ECN | VENET_F_TXC | VENET_F_MORE)
		   & IOQ_DESC_F_USER_MASK), "venet flags sit in the user bits");

#endif /* VENET_ABI_H */
