"""ioq: a lockless single-producer/single-consumer ring of descriptors in a
sealed shared-memory region, with a buffer pool in the same region."""
import numpy as np

from ioq._region import (DESC_SIZE, HDR_SIZE, MAGIC, MAX_COUNT, MAX_RINGS, MAX_SG_LIMIT,
                         RING_HDR_SIZE, SG_SIZE, VERSION, IoqError, Region, RegionError,
                         check_doorbells, describe_fd, layout, ring_bytes)
from ioq._ring import BAD_REASONS, F_INDIRECT, F_USER_MASK, Ring, RingBroken

# The descriptor as it sits in the ring (docs/abi.md).
DESC_DTYPE = np.dtype([("cookie", "<u8"), ("offset", "<u8"), ("len", "<u4"), ("flags", "<u4"),
                       ("user", "<u4"), ("seq", "<u4")])
# A popped, validated descriptor (private to the consumer).
ITEM_DTYPE = np.dtype([("cookie", "<u8"), ("offset", "<u8"), ("len", "<u4"), ("flags", "<u4"),
                       ("user", "<u4"), ("status", "<u4"), ("sg_first", "<u4"), ("sg_count", "<u4")])
# One scatter-gather entry.
SG_DTYPE = np.dtype([("offset", "<u8"), ("len", "<u4"), ("reserved", "<u4")])

assert DESC_DTYPE.itemsize == DESC_SIZE and SG_DTYPE.itemsize == SG_SIZE and ITEM_DTYPE.itemsize == 40

__all__ = ["BAD_REASONS", "DESC_DTYPE", "DESC_SIZE", "F_INDIRECT", "F_USER_MASK", "HDR_SIZE",
           "ITEM_DTYPE", "IoqError", "MAGIC", "MAX_COUNT", "MAX_RINGS", "MAX_SG_LIMIT",
           "RING_HDR_SIZE", "Region", "RegionError", "Ring", "RingBroken", "SG_DTYPE", "SG_SIZE",
           "VERSION", "check_doorbells", "describe_fd", "layout", "ring_bytes"]
