/* Software checksums and segmentation for frames that carry a venet
 * offload record (docs/abi.md), for a receiver that did not negotiate the
 * offload: a partial checksum is finished, a TCP (TSO4/TSO6) or UDP (USO)
 * super-frame is cut into segments of at most gso_size payload bytes, each
 * with its IP lengths, IPv4 ID and header checksum, TCP sequence number and
 * flags, and its L4 checksum computed in full.
 *
 * Everything here works on a private copy of the frame: the caller copies
 * a peer's frame out of shared memory first, so every header field is read
 * from memory nobody else writes, and every offset is checked against the
 * copy's length before use.  No allocation; the segment is built in the
 * caller's buffer and handed to its emit callback one at a time.
 */
#ifndef VENET_GSO_H
#define VENET_GSO_H

#include <stdint.h>
#include <string.h>

/* Why a frame could not be finished or segmented (negative returns). */
#define VENET_GSO_ERR_HEADERS  (-1)   /* not an Ethernet/IP/TCP-or-UDP frame the record matches */
#define VENET_GSO_ERR_TOO_BIG  (-2)   /* a segment would exceed the receiver's largest frame */
#define VENET_GSO_ERR_TYPE     (-3)   /* a GSO type this helper does not segment (UFO) */
#define VENET_GSO_ERR_EMIT     (-4)   /* the emit callback refused a segment */

#define VENET_GSO_T_TCPV4   0
#define VENET_GSO_T_UDP     1
#define VENET_GSO_T_TCPV6   2
#define VENET_GSO_T_UDP_L4  3

static inline uint16_t vg_get16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }
static inline uint32_t vg_get32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline void vg_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void vg_put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* The ones' complement sum of n bytes (big-endian 16-bit words, an odd
 * last byte padded with zero), added to s. */
static inline uint64_t vg_sum(const uint8_t *p, uint32_t n, uint64_t s)
{
    while (n >= 8) {
        s += ((uint64_t)vg_get16(p) + vg_get16(p + 2)) + ((uint64_t)vg_get16(p + 4) + vg_get16(p + 6));
        p += 8;
        n -= 8;
    }
    while (n >= 2) {
        s += vg_get16(p);
        p += 2;
        n -= 2;
    }
    if (n)
        s += (uint64_t)p[0] << 8;
    return s;
}

static inline uint16_t vg_fold(uint64_t s)
{
    while (s >> 16)
        s = (s & 0xffff) + (s >> 16);
    return (uint16_t)s;
}

/* Finish a partial checksum in place: the field at start + off holds the
 * pseudo-header sum (as virtio_net_hdr's NEEDS_CSUM says); the checksum
 * covers the frame from start to its end.  0, or VENET_GSO_ERR_HEADERS
 * when the field lies outside the frame. */
static inline int venet_csum_finish(uint8_t *f, uint32_t len, uint32_t start, uint32_t off)
{
    uint16_t c;
    if (start >= len || (uint64_t)start + off + 2 > len)
        return VENET_GSO_ERR_HEADERS;
    c = (uint16_t)~vg_fold(vg_sum(f + start, len - start, 0));
    vg_put16(f + start + off, c);
    return 0;
}

/* Where a frame's headers are, from its Ethernet header on. */
typedef struct venet_hdrs {
    uint32_t l3;        /* IP header */
    uint32_t l4;        /* TCP/UDP header */
    uint32_t hdrlen;    /* all headers: payload starts here */
    int v6;
    int tcp;
} venet_hdrs_t;

/* Parse and check the headers of a GSO frame of `len` bytes whose record
 * says the L4 header starts at csum_start.  One optional 802.1Q tag; IPv4
 * with options, IPv6 without extension headers. */
static inline int venet_gso_headers(const uint8_t *f, uint32_t len, uint32_t gso_type,
                                    uint32_t csum_start, venet_hdrs_t *h)
{
    uint32_t et, l3 = 14, ihl;
    int proto;
    if (gso_type == VENET_GSO_T_UDP)
        return VENET_GSO_ERR_TYPE;
    if (len < 14 + 4)
        return VENET_GSO_ERR_HEADERS;
    et = vg_get16(f + 12);
    if (et == 0x8100) {
        et = vg_get16(f + 16);
        l3 = 18;
    }
    h->l3 = l3;
    h->tcp = gso_type != VENET_GSO_T_UDP_L4;
    proto = h->tcp ? 6 : 17;
    if (et == 0x0800) {
        if (gso_type == VENET_GSO_T_TCPV6 || len < l3 + 20 || (f[l3] >> 4) != 4)
            return VENET_GSO_ERR_HEADERS;
        ihl = (uint32_t)(f[l3] & 15) * 4;
        if (ihl < 20 || f[l3 + 9] != proto)
            return VENET_GSO_ERR_HEADERS;
        h->v6 = 0;
        h->l4 = l3 + ihl;
    } else if (et == 0x86dd) {
        if (gso_type == VENET_GSO_T_TCPV4 || len < l3 + 40 || (f[l3] >> 4) != 6 || f[l3 + 6] != proto)
            return VENET_GSO_ERR_HEADERS;
        h->v6 = 1;
        h->l4 = l3 + 40;
    } else {
        return VENET_GSO_ERR_HEADERS;
    }
    if (h->l4 != csum_start)
        return VENET_GSO_ERR_HEADERS;
    if (h->tcp) {
        if (len < h->l4 + 20)
            return VENET_GSO_ERR_HEADERS;
        h->hdrlen = h->l4 + (uint32_t)(f[h->l4 + 12] >> 4) * 4;
        if (h->hdrlen < h->l4 + 20)
            return VENET_GSO_ERR_HEADERS;
    } else {
        h->hdrlen = h->l4 + 8;
    }
    if (h->hdrlen >= len)
        return VENET_GSO_ERR_HEADERS;
    return 0;
}

/* The L4 checksum of a whole segment s of n bytes with headers h. */
static inline void venet_l4_csum(uint8_t *s, uint32_t n, const venet_hdrs_t *h)
{
    uint64_t sum;
    uint32_t l4len = n - h->l4;
    uint32_t coff = h->l4 + (h->tcp ? 16 : 6);
    uint16_t c;
    vg_put16(s + coff, 0);
    if (h->v6)
        sum = vg_sum(s + h->l3 + 8, 32, 0);
    else
        sum = vg_sum(s + h->l3 + 12, 8, 0);
    sum += (uint64_t)(h->tcp ? 6 : 17) + l4len;
    sum = vg_sum(s + h->l4, l4len, sum);
    c = (uint16_t)~vg_fold(sum);
    if (!h->tcp && c == 0)
        c = 0xffff;         /* UDP: 0 means "no checksum" */
    vg_put16(s + coff, c);
}

typedef int (*venet_gso_emit_t)(void *arg, const uint8_t *seg, uint32_t len);

/* Cut the super-frame f (len bytes, private) into segments of at most mss
 * payload bytes, each built in seg (seg_cap bytes) and passed to emit.
 * ecn: the frame's VENET_F_ECN (CWR is kept on the first segment only).
 * Returns the number of segments, or a VENET_GSO_ERR_* (nothing emitted
 * for a header or size error). */
static inline int venet_gso_segment(const uint8_t *f, uint32_t len, uint32_t gso_type, uint32_t mss,
                                    uint32_t csum_start, int ecn, uint8_t *seg, uint32_t seg_cap,
                                    venet_gso_emit_t emit, void *arg)
{
    venet_hdrs_t h;
    uint32_t payload, off, chunk, n, i = 0, seq = 0;
    uint16_t ipid = 0;
    int rc = venet_gso_headers(f, len, gso_type, csum_start, &h);
    (void)ecn;
    if (rc < 0)
        return rc;
    if (mss == 0)
        return VENET_GSO_ERR_HEADERS;
    payload = len - h.hdrlen;
    if (h.hdrlen + (payload < mss ? payload : mss) > seg_cap)
        return VENET_GSO_ERR_TOO_BIG;
    if (h.tcp)
        seq = vg_get32(f + h.l4 + 4);
    if (!h.v6)
        ipid = vg_get16(f + h.l3 + 4);
    for (off = 0; off < payload; off += chunk, i++) {
        chunk = payload - off < mss ? payload - off : mss;
        n = h.hdrlen + chunk;
        memcpy(seg, f, h.hdrlen);
        memcpy(seg + h.hdrlen, f + h.hdrlen + off, chunk);
        if (h.v6) {
            vg_put16(seg + h.l3 + 4, (uint16_t)(n - h.l3 - 40));
        } else {
            uint32_t ihl = h.l4 - h.l3;
            vg_put16(seg + h.l3 + 2, (uint16_t)(n - h.l3));
            vg_put16(seg + h.l3 + 4, (uint16_t)(ipid + i));
            vg_put16(seg + h.l3 + 10, 0);
            vg_put16(seg + h.l3 + 10, (uint16_t)~vg_fold(vg_sum(seg + h.l3, ihl, 0)));
        }
        if (h.tcp) {
            uint8_t fl = f[h.l4 + 13];
            vg_put32(seg + h.l4 + 4, seq + off);
            if (off + chunk < payload)
                fl &= (uint8_t)~0x09;       /* FIN and PSH on the last segment only */
            if (i > 0)
                fl &= (uint8_t)~0x80;       /* CWR on the first only */
            seg[h.l4 + 13] = fl;
        } else {
            vg_put16(seg + h.l4 + 4, (uint16_t)(n - h.l4));
        }
        venet_l4_csum(seg, n, &h);
        if (emit(arg, seg, n) < 0)
            return VENET_GSO_ERR_EMIT;
    }
    return (int)i;
}

#endif
