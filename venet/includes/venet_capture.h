/* The capture ring's shared layout (docs/capture.md, docs/abi.md "Capture").
 *
 * A capturer (`venet capture`) creates an ioq region of one ring with
 * paired buffers, seals it, and hands it to the backend with CAPTURE_START.
 * The backend is the ring's only producer: for each frame a capture takes
 * it fills the next slot's paired buffer with one venet_cap_rec_t and the
 * first cap_len bytes of the frame right behind it, and publishes the slot
 * (desc.offset: that buffer, desc.len: VENET_CAP_REC_SIZE + cap_len,
 * desc.cookie: the ring position, desc.flags and desc.user: 0).  When no
 * slot is free the frame is dropped for this capture and counted; the
 * traffic never waits for a capturer.
 *
 * Every field is little-endian and written by the backend only.
 */
#ifndef VENET_CAPTURE_H
#define VENET_CAPTURE_H

#include <stdint.h>

#define VENET_CAP_REC_SIZE	32
#define VENET_CAP_MAX		8		/* captures attached to one device at once */
#define VENET_CAP_MIN_SNAPLEN	14		/* an Ethernet header */
#define VENET_CAP_MAX_SNAPLEN	262144		/* tcpdump's default and largest */

/* Directions, seen from the frontend that owns the device (the values of
 * pcapng's epb_flags direction bits). */
#define VENET_CAP_DIR_IN	1	/* to the frontend: read from the port, put on its RX ring */
#define VENET_CAP_DIR_OUT	2	/* from the frontend: taken off its TX ring, written to the port */

typedef struct venet_cap_rec {
	uint64_t ts_ns;		/* when the pump handled the frame: CLOCK_REALTIME, ns */
	uint32_t orig_len;	/* the frame's length (Ethernet header on, no vnet header) */
	uint32_t cap_len;	/* bytes of the frame that follow this record */
	uint64_t drops;		/* frames this capture dropped (ring full) before this one */
	uint8_t dir;		/* VENET_CAP_DIR_* */
	uint8_t gso_type;	/* the frame's virtio_net_hdr gso_type: 0 none, 1 TCPv4, 3 UDP,
				 * 4 TCPv6, 5 UDP_L4; bit 0x80 ECN.  Nonzero: one GSO
				 * super-frame, recorded once, as the pump moved it */
	uint16_t gso_size;	/* its segment size (0 without GSO) */
	uint8_t hdr_flags;	/* virtio_net_hdr flags: 1 NEEDS_CSUM (checksum not filled in), 2 DATA_VALID */
	uint8_t pad[3];		/* 0 */
} venet_cap_rec_t;

_Static_assert(sizeof(venet_cap_rec_t) == VENET_CAP_REC_SIZE, "capture record is 32 bytes");
_Static_assert(__builtin_offsetof(venet_cap_rec_t, drops) == 16, "capture record layout");
_Static_assert(__builtin_offsetof(venet_cap_rec_t, dir) == 24, "capture record layout");

#endif /* VENET_CAPTURE_H */
