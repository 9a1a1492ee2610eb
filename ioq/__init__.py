"""ioq: a lockless single-producer/single-consumer ring of descriptors in a
sealed shared-memory region, with a buffer pool in the same region.

The constants, reason names and record layouts (DESC_DTYPE, DESC_STRUCT,
...) come from ioq._abi, built from ioq/includes/ioq_abi.h."""
from ioq._abi import (BAD_REASONS, DESC_DTYPE, DESC_SIZE, DESC_STRUCT, F_INDIRECT, F_USER_MASK,
                      HDR_SIZE, ITEM_DTYPE, MAGIC, MAX_COUNT, MAX_RINGS, MAX_SG_LIMIT, RING_CONS_OFF,
                      RING_HDR_SIZE, RING_PROD_OFF, SG_DTYPE, SG_SIZE, SG_STRUCT, VERSION, record,
                      struct_of)
from ioq._region import (IoqError, Region, RegionError, check_doorbells, describe_fd, layout,
                         ring_bytes)
from ioq._ring import Ring, RingBroken

__all__ = ["BAD_REASONS", "DESC_DTYPE", "DESC_SIZE", "DESC_STRUCT", "F_INDIRECT", "F_USER_MASK",
           "HDR_SIZE", "ITEM_DTYPE", "IoqError", "MAGIC", "MAX_COUNT", "MAX_RINGS", "MAX_SG_LIMIT",
           "RING_CONS_OFF", "RING_HDR_SIZE", "RING_PROD_OFF", "Region", "RegionError", "Ring",
           "RingBroken", "SG_DTYPE", "SG_SIZE", "SG_STRUCT", "VERSION", "check_doorbells",
           "describe_fd", "layout", "record", "ring_bytes", "struct_of"]
