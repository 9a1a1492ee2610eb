/* A classic BPF (cBPF) checker and interpreter for capture filters.
 *
 * The capturer compiles its filter expression with libpcap (link type
 * EN10MB) into classic BPF; the backend receives the instructions from a
 * process it does not trust, so it checks them once (venet_bpf_check, the
 * rules of the kernel's classic checker) and then runs only checked
 * programs (venet_bpf_run).  Every packet load is bounds-checked: a load
 * past the frame ends the program with 0 (frame not taken), as the
 * kernel's does.  Jumps go forward only, so a program of n instructions
 * runs at most n steps.
 *
 * The packet is a list of segments (the frame as the pump holds it: the
 * pieces of a chain in shared memory, or the buffers of one read), never
 * copied for the filter.
 */
#ifndef VENET_BPF_H
#define VENET_BPF_H

#include <stdint.h>
#include <string.h>

/* Same layout as the kernel's struct sock_filter and libpcap's bpf_insn. */
typedef struct venet_bpf_insn {
	uint16_t code;
	uint8_t jt;
	uint8_t jf;
	uint32_t k;
} venet_bpf_insn_t;

_Static_assert(sizeof(venet_bpf_insn_t) == 8, "a cBPF instruction is 8 bytes");

#define VENET_BPF_MAXINSNS	4096	/* BPF_MAXINSNS */
#define VENET_BPF_MEMWORDS	16	/* BPF_MEMWORDS: scratch M[0..15] */

/* Instruction classes and fields (include/uapi/linux/bpf_common.h). */
#define VBPF_CLASS(c)	((c) & 0x07)
#define VBPF_LD		0x00
#define VBPF_LDX	0x01
#define VBPF_ST		0x02
#define VBPF_STX	0x03
#define VBPF_ALU	0x04
#define VBPF_JMP	0x05
#define VBPF_RET	0x06
#define VBPF_MISC	0x07

/* Why a program was refused (venet_bpf_check); names in venet_bpf_reason. */
enum {
	VENET_BPF_OK = 0,
	VENET_BPF_BAD_LENGTH,		/* 0 or more than VENET_BPF_MAXINSNS instructions */
	VENET_BPF_BAD_OPCODE,		/* not a classic opcode we run */
	VENET_BPF_BAD_JUMP,		/* a jump out of the program (they go forward only) */
	VENET_BPF_BAD_MEM,		/* a scratch memory index past M[15] */
	VENET_BPF_DIV_ZERO,		/* division or modulo by the constant 0 */
	VENET_BPF_BAD_SHIFT,		/* a constant shift of 32 or more */
	VENET_BPF_ANCILLARY,		/* a Linux ancillary load (negative offset, SKF_AD_OFF) */
	VENET_BPF_NO_RET,		/* the last instruction is not a return */
	VENET_BPF_NREASONS
};

static const char *const venet_bpf_reason[VENET_BPF_NREASONS] = {
	"ok",
	"a program must hold 1 to 4096 instructions",
	"unknown opcode",
	"a jump leaves the program",
	"scratch memory index out of range 0..15",
	"division by the constant 0",
	"a shift by 32 or more",
	"Linux ancillary loads (negative offsets) are not supported",
	"the program does not end in a return",
};

/* 1 for every opcode the interpreter runs. */
static inline int venet_bpf_known(uint16_t code)
{
	switch (code) {
	case 0x20: case 0x28: case 0x30:	/* ld [k] w/h/b */
	case 0x40: case 0x48: case 0x50:	/* ld [x+k] w/h/b */
	case 0x00: case 0x60: case 0x80:	/* ld #k, ld M[k], ld #len */
	case 0x01: case 0x61: case 0x81:	/* ldx #k, ldx M[k], ldx #len */
	case 0xb1:				/* ldx 4*([k]&0xf) */
	case 0x02: case 0x03:			/* st, stx */
	case 0x04: case 0x0c: case 0x14: case 0x1c: case 0x24: case 0x2c:
	case 0x34: case 0x3c: case 0x44: case 0x4c: case 0x54: case 0x5c:
	case 0x64: case 0x6c: case 0x74: case 0x7c: case 0x84:
	case 0x94: case 0x9c: case 0xa4: case 0xac:	/* alu */
	case 0x05: case 0x15: case 0x1d: case 0x25: case 0x2d:
	case 0x35: case 0x3d: case 0x45: case 0x4d:	/* jmp */
	case 0x06: case 0x16:			/* ret k, ret a */
	case 0x07: case 0x87:			/* tax, txa */
		return 1;
	}
	return 0;
}

/* Check a program of n instructions (a private copy: the caller copied
 * it out of the peer's message first).  VENET_BPF_OK, or the reason, with
 * *at the index of the first bad instruction. */
static inline int venet_bpf_check(const venet_bpf_insn_t *p, uint32_t n, uint32_t *at)
{
	uint32_t i;
	*at = 0;
	if (n == 0 || n > VENET_BPF_MAXINSNS)
		return VENET_BPF_BAD_LENGTH;
	for (i = 0; i < n; i++) {
		uint16_t c = p[i].code;
		uint32_t k = p[i].k;
		*at = i;
		if (!venet_bpf_known(c))
			return VENET_BPF_BAD_OPCODE;
		switch (c) {
		case 0x60: case 0x61: case 0x02: case 0x03:
			if (k >= VENET_BPF_MEMWORDS)
				return VENET_BPF_BAD_MEM;
			break;
		case 0x34: case 0x94:
			if (k == 0)
				return VENET_BPF_DIV_ZERO;
			break;
		case 0x64: case 0x74:
			if (k >= 32)
				return VENET_BPF_BAD_SHIFT;
			break;
		case 0x20: case 0x28: case 0x30: case 0x40: case 0x48: case 0x50: case 0xb1:
			if (k >= 0x80000000u)
				return VENET_BPF_ANCILLARY;
			break;
		case 0x05:
			if (k >= n - i - 1)
				return VENET_BPF_BAD_JUMP;
			break;
		case 0x15: case 0x1d: case 0x25: case 0x2d:
		case 0x35: case 0x3d: case 0x45: case 0x4d:
			if ((uint32_t)p[i].jt >= n - i - 1 || (uint32_t)p[i].jf >= n - i - 1)
				return VENET_BPF_BAD_JUMP;
			break;
		}
	}
	*at = n - 1;
	if (VBPF_CLASS(p[n - 1].code) != VBPF_RET)
		return VENET_BPF_NO_RET;
	return VENET_BPF_OK;
}

/* A frame in pieces.  len is the sum of the pieces' lengths. */
typedef struct venet_bpf_seg {
	const uint8_t *base;
	uint32_t len;
} venet_bpf_seg_t;

typedef struct venet_bpf_pkt {
	const venet_bpf_seg_t *seg;
	uint32_t nseg;
	uint32_t len;
} venet_bpf_pkt_t;

/* Copy size bytes at off out of the packet.  0 when they are not all in it. */
static inline int venet_bpf_bytes(const venet_bpf_pkt_t *pkt, uint32_t off, uint32_t size, uint8_t *out)
{
	uint32_t s = 0, got = 0;
	if (off > pkt->len || size > pkt->len - off)
		return 0;
	/* The common case: all of it in the first piece. */
	if (pkt->nseg && off + size <= pkt->seg[0].len) {
		memcpy(out, pkt->seg[0].base + off, size);
		return 1;
	}
	while (s < pkt->nseg && off >= pkt->seg[s].len) {
		off -= pkt->seg[s].len;
		s++;
	}
	while (got < size && s < pkt->nseg) {
		uint32_t take = pkt->seg[s].len - off;
		if (take > size - got)
			take = size - got;
		memcpy(out + got, pkt->seg[s].base + off, take);
		got += take;
		off = 0;
		s++;
	}
	return got == size;
}

/* Run a program venet_bpf_check accepted.  Returns how many bytes of the
 * frame to keep (0: the frame is not taken). */
static inline uint32_t venet_bpf_run(const venet_bpf_insn_t *p, uint32_t n, const venet_bpf_pkt_t *pkt)
{
	uint32_t A = 0, X = 0, M[VENET_BPF_MEMWORDS];
	uint32_t pc = 0;
	uint8_t b[4];
	memset(M, 0, sizeof(M));
	while (pc < n) {
		const venet_bpf_insn_t *f = &p[pc++];
		uint32_t k = f->k;
		switch (f->code) {
		case 0x20:
			if (!venet_bpf_bytes(pkt, k, 4, b)) return 0;
			A = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
			break;
		case 0x28:
			if (!venet_bpf_bytes(pkt, k, 2, b)) return 0;
			A = ((uint32_t)b[0] << 8) | b[1];
			break;
		case 0x30:
			if (!venet_bpf_bytes(pkt, k, 1, b)) return 0;
			A = b[0];
			break;
		case 0x40:
			if (k + X < k || !venet_bpf_bytes(pkt, k + X, 4, b)) return 0;
			A = ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
			break;
		case 0x48:
			if (k + X < k || !venet_bpf_bytes(pkt, k + X, 2, b)) return 0;
			A = ((uint32_t)b[0] << 8) | b[1];
			break;
		case 0x50:
			if (k + X < k || !venet_bpf_bytes(pkt, k + X, 1, b)) return 0;
			A = b[0];
			break;
		case 0x00: A = k; break;
		case 0x60: A = M[k & 15]; break;
		case 0x80: A = pkt->len; break;
		case 0x01: X = k; break;
		case 0x61: X = M[k & 15]; break;
		case 0x81: X = pkt->len; break;
		case 0xb1:
			if (!venet_bpf_bytes(pkt, k, 1, b)) return 0;
			X = (uint32_t)(b[0] & 0xf) << 2;
			break;
		case 0x02: M[k & 15] = A; break;
		case 0x03: M[k & 15] = X; break;
		case 0x04: A += k; break;
		case 0x0c: A += X; break;
		case 0x14: A -= k; break;
		case 0x1c: A -= X; break;
		case 0x24: A *= k; break;
		case 0x2c: A *= X; break;
		case 0x34: A /= k; break;
		case 0x3c: if (X == 0) return 0; A /= X; break;
		case 0x94: A %= k; break;
		case 0x9c: if (X == 0) return 0; A %= X; break;
		case 0x44: A |= k; break;
		case 0x4c: A |= X; break;
		case 0x54: A &= k; break;
		case 0x5c: A &= X; break;
		case 0xa4: A ^= k; break;
		case 0xac: A ^= X; break;
		case 0x64: A <<= (k & 31); break;
		case 0x6c: A = X < 32 ? A << X : 0; break;
		case 0x74: A >>= (k & 31); break;
		case 0x7c: A = X < 32 ? A >> X : 0; break;
		case 0x84: A = (uint32_t)-A; break;
		case 0x05: pc += k; break;
		case 0x15: pc += (A == k) ? f->jt : f->jf; break;
		case 0x1d: pc += (A == X) ? f->jt : f->jf; break;
		case 0x25: pc += (A > k) ? f->jt : f->jf; break;
		case 0x2d: pc += (A > X) ? f->jt : f->jf; break;
		case 0x35: pc += (A >= k) ? f->jt : f->jf; break;
		case 0x3d: pc += (A >= X) ? f->jt : f->jf; break;
		case 0x45: pc += (A & k) ? f->jt : f->jf; break;
		case 0x4d: pc += (A & X) ? f->jt : f->jf; break;
		case 0x06: return k;
		case 0x16: return A;
		case 0x07: X = A; break;
		case 0x87: A = X; break;
		default: return 0;		/* unreachable for a checked program */
		}
	}
	return 0;				/* unreachable: a checked program ends in a return */
}

#endif /* VENET_BPF_H */
