# cython: language_level=3
"""ioq's ABI for Python, derived at build time from its single source,
ioq/includes/ioq_abi.h: the constants, the reason names and the record
layouts (numpy dtypes and struct.Struct codecs built from the C compiler's
sizeof and field offsets, so they cannot drift from the header)."""
import struct

import numpy as np

from libc.stdint cimport uint32_t
from ioq.abi cimport *

MAGIC = IOQ_REGION_MAGIC
VERSION = IOQ_VERSION
MAX_RINGS = IOQ_MAX_RINGS
MAX_COUNT = IOQ_MAX_COUNT
MAX_SG_LIMIT = IOQ_MAX_SG_LIMIT
RING_ALIGN = IOQ_RING_ALIGN
POOL_ALIGN = IOQ_POOL_ALIGN
SG_ALIGN = IOQ_SG_ALIGN
HDR_SIZE = sizeof(ioq_region_hdr_t)
RING_HDR_SIZE = sizeof(ioq_ring_hdr_t)
DESC_SIZE = sizeof(ioq_desc_t)
SG_SIZE = sizeof(ioq_sg_t)
ITEM_SIZE = sizeof(ioq_item_t)
F_INDIRECT = <uint32_t>IOQ_DESC_F_INDIRECT
F_KNOWN = <uint32_t>IOQ_DESC_F_KNOWN
F_USER_MASK = <uint32_t>IOQ_DESC_F_USER_MASK

# Why a popped descriptor was refused: BAD_REASONS[status], the key its
# count has in Ring.stats() (index 0, "ok", is no refusal).
BAD_REASONS = tuple(ioq_reason_names[i].decode() for i in range(IOQ_NREASONS))

cdef ioq_desc_t _d
cdef ioq_sg_t _s
cdef ioq_item_t _i
cdef ioq_ring_hdr_t _r
cdef ioq_region_hdr_t _h


cdef size_t _off(void *field, void *record) noexcept:
    return <size_t>(<char *>field - <char *>record)


def record(fields, size_t itemsize):
    """A little-endian numpy dtype of `itemsize` bytes with each (name,
    offset, numpy type code or dtype) of `fields`; gaps stay unnamed
    padding."""
    return np.dtype({"names": [f[0] for f in fields], "offsets": [f[1] for f in fields],
                     "formats": ["<" + f[2] if isinstance(f[2], str) else f[2] for f in fields],
                     "itemsize": itemsize})


_STRUCT_CODE = {"u1": "B", "u2": "H", "u4": "I", "u8": "Q", "i1": "b", "i2": "h", "i4": "i", "i8": "q"}


def struct_of(dtype):
    """The struct.Struct that packs and unpacks one record of `dtype` (a
    `record()` dtype) as a tuple of its named fields, in offset order."""
    fields = sorted(((off, dt) for dt, off in (v[:2] for v in dtype.fields.values())),
                    key=lambda f: f[0])
    fmt, at = "<", 0
    for off, dt in fields:
        fmt += "x" * (off - at) + _STRUCT_CODE[dt.str[1:]]
        at = off + dt.itemsize
    fmt += "x" * (dtype.itemsize - at)
    s = struct.Struct(fmt)
    assert s.size == dtype.itemsize
    return s


# The descriptor as it sits in the ring.
DESC_DTYPE = record([("cookie", _off(&_d.cookie, &_d), "u8"), ("offset", _off(&_d.offset, &_d), "u8"),
                     ("len", _off(&_d.len, &_d), "u4"), ("flags", _off(&_d.flags, &_d), "u4"),
                     ("user", _off(&_d.user, &_d), "u4"), ("seq", _off(&_d.seq, &_d), "u4")],
                    sizeof(ioq_desc_t))
# One scatter-gather entry.
SG_DTYPE = record([("offset", _off(&_s.offset, &_s), "u8"), ("len", _off(&_s.len, &_s), "u4"),
                   ("reserved", _off(&_s.reserved, &_s), "u4")], sizeof(ioq_sg_t))
# A popped, validated descriptor (private to the consumer).
ITEM_DTYPE = record([("cookie", _off(&_i.cookie, &_i), "u8"), ("offset", _off(&_i.offset, &_i), "u8"),
                     ("len", _off(&_i.len, &_i), "u4"), ("flags", _off(&_i.flags, &_i), "u4"),
                     ("user", _off(&_i.user, &_i), "u4"), ("status", _off(&_i.status, &_i), "u4"),
                     ("sg_first", _off(&_i.sg_first, &_i), "u4"),
                     ("sg_count", _off(&_i.sg_count, &_i), "u4")], sizeof(ioq_item_t))
# The region header (ring info as a nested record).
RING_INFO_DTYPE = record([("offset", _off(&_h.rings[0].offset, &_h.rings[0]), "u8"),
                          ("count", _off(&_h.rings[0].count, &_h.rings[0]), "u4"),
                          ("flags", _off(&_h.rings[0].flags, &_h.rings[0]), "u4")], sizeof(ioq_ring_info_t))
REGION_HDR_DTYPE = record([("magic", _off(&_h.magic, &_h), "u4"), ("version", _off(&_h.version, &_h), "u4"),
                           ("size", _off(&_h.size, &_h), "u8"), ("nrings", _off(&_h.nrings, &_h), "u4"),
                           ("max_sg", _off(&_h.max_sg, &_h), "u4"),
                           ("pool_offset", _off(&_h.pool_offset, &_h), "u8"),
                           ("pool_size", _off(&_h.pool_size, &_h), "u8"),
                           ("buf_size", _off(&_h.buf_size, &_h), "u4"), ("nbufs", _off(&_h.nbufs, &_h), "u4"),
                           ("rings", _off(&_h.rings, &_h), (RING_INFO_DTYPE, (IOQ_MAX_RINGS,)))],
                          sizeof(ioq_region_hdr_t))
DESC_STRUCT = struct_of(DESC_DTYPE)
SG_STRUCT = struct_of(SG_DTYPE)

# Where each shared word of a ring sits, from the ring's start.
RING_PROD_OFF = _off(&_r.prod, &_r)
RING_CONS_OFF = _off(&_r.cons, &_r)
RING_SIG_OFF = _off(&_r.sig, &_r)
