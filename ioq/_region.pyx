# cython: language_level=3, boundscheck=False, wraparound=False
"""A shared region: one sealed memfd holding ioq rings and a buffer pool.

The creator (the driver side in vbus terms) lays the region out and seals it
against shrinking and growing.  The other process attaches by fd and refuses
anything it cannot prove safe: wrong seals, wrong size, wrong magic or
version, rings or pool out of place.  After attach only the private copy of
the header is used, so the creator rewriting the header later changes nothing.
"""
import errno as _errno
import fcntl
import mmap
import os
import stat
import weakref

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from shmsignal.shmsig cimport shmsig_shared_t, shmsig_init_shared, shmsig_check_shared, SHMSIG_SIZE
from ioq.abi cimport *

MAGIC = IOQ_REGION_MAGIC
VERSION = IOQ_VERSION
MAX_RINGS = IOQ_MAX_RINGS
MAX_COUNT = IOQ_MAX_COUNT
HDR_SIZE = IOQ_HDR_SIZE
RING_HDR_SIZE = IOQ_RING_HDR_SIZE
DESC_SIZE = IOQ_DESC_SIZE
SG_SIZE = IOQ_SG_SIZE
MAX_SG_LIMIT = IOQ_MAX_SG_LIMIT
MAX_REGION_SIZE = 1 << 30
REQUIRED_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW

# The C compiler and this file must agree on the ABI sizes.
assert sizeof(ioq_region_hdr_t) == IOQ_HDR_SIZE
assert sizeof(ioq_desc_t) == IOQ_DESC_SIZE
assert sizeof(ioq_sg_t) == IOQ_SG_SIZE
assert sizeof(shmsig_shared_t) == SHMSIG_SIZE
assert IOQ_RING_SIG_OFF + SHMSIG_SIZE == IOQ_RING_HDR_SIZE


class IoqError(Exception):
    """Base class for ioq errors."""


class RegionError(IoqError):
    """A region that cannot be created or attached safely."""


def _align(uint64_t x, uint64_t a):
    return (x + a - 1) & ~(a - 1)


def ring_bytes(uint32_t count):
    """Bytes one ring of `count` slots takes (header + descriptors)."""
    return IOQ_RING_HDR_SIZE + IOQ_DESC_SIZE * count


def layout(rings, uint32_t buf_size, uint32_t nbufs):
    """(ring offsets, pool offset, pool size, region size) for a region."""
    cdef uint64_t off = IOQ_HDR_SIZE
    offs = []
    for count in rings:
        off = _align(off, 64)
        offs.append(off)
        off += ring_bytes(count)
    pool_off = _align(off, 4096)
    pool_size = <uint64_t>buf_size * nbufs
    return offs, pool_off, pool_size, _align(pool_off + pool_size, 4096)


def _is_pow2(n):
    return n > 0 and (n & (n - 1)) == 0


cdef class Region:
    """A mapped region.  Use Region.create() or Region.attach()."""

    def __cinit__(self):
        self._have_view = False
        self.fd = -1
        self.eventfds = []
        self._rings = weakref.WeakSet()

    @staticmethod
    def create(rings=(256, 256), *, uint32_t buf_size=2048, nbufs=None, uint32_t max_sg=64,
               bint eventfds=True, str name="ioq"):
        """Create, lay out and seal a region.

        rings: slot count of each ring (powers of two).  nbufs defaults to
        one buffer per ring slot, so that every ring has 'paired' buffers
        for the message API.  With eventfds, two non-blocking eventfds per
        ring: (producer wakes on, consumer wakes on)."""
        rings = list(rings)
        if not 1 <= len(rings) <= IOQ_MAX_RINGS:
            raise RegionError(f"a region holds 1 to {IOQ_MAX_RINGS} rings, not {len(rings)}")
        for c in rings:
            if not _is_pow2(c) or c > IOQ_MAX_COUNT:
                raise RegionError(f"ring size {c} is not a power of two between 1 and {IOQ_MAX_COUNT}")
        if nbufs is None:
            nbufs = sum(rings)
        if buf_size < 64 or buf_size % 64:
            raise RegionError(f"buffer size {buf_size} must be a multiple of 64, at least 64")
        if not 1 <= max_sg <= IOQ_MAX_SG_LIMIT:
            raise RegionError(f"max_sg {max_sg} must be between 1 and {IOQ_MAX_SG_LIMIT}")
        offs, pool_off, pool_size, size = layout(rings, buf_size, nbufs)
        if size > MAX_REGION_SIZE:
            raise RegionError(f"region of {size} bytes exceeds the {MAX_REGION_SIZE}-byte limit")
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        cdef Region self = Region.__new__(Region)
        self.fd = fd
        self.creator = True
        self._map(mm, size)
        cdef ioq_region_hdr_t *h = <ioq_region_hdr_t *>self.base
        memset(h, 0, sizeof(ioq_region_hdr_t))
        h.version = IOQ_VERSION
        h.size = size
        h.nrings = len(rings)
        h.max_sg = max_sg
        h.pool_offset = pool_off
        h.pool_size = pool_size
        h.buf_size = buf_size
        h.nbufs = nbufs
        for i, (o, c) in enumerate(zip(offs, rings)):
            h.rings[i].offset = o
            h.rings[i].count = c
            h.rings[i].flags = 0
            shmsig_init_shared(<shmsig_shared_t *>(self.base + <uint64_t>o + IOQ_RING_SIG_OFF))
        h.magic = IOQ_REGION_MAGIC
        memcpy(&self.hdr, h, sizeof(ioq_region_hdr_t))
        # Seal before anyone else can see it: from here the size is fixed.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS | fcntl.F_SEAL_SEAL)
        if eventfds:
            for _ in rings:
                self.eventfds.append((os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC),
                                      os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)))
        return self

    @staticmethod
    def attach(int fd, eventfds=None):
        """Map a region another process created and validate it.  The fd is
        duplicated; the caller keeps its own.  eventfds, if given, is one
        (producer, consumer) pair per ring, also duplicated."""
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise RegionError(f"fd {fd} is not usable: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise RegionError(f"fd {fd} is not a memfd (not a regular file)")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as e:
            raise RegionError(f"fd {fd} does not support seals (not a memfd): {e.strerror}") from None
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            raise RegionError("region is not sealed against shrinking and growing "
                              "(F_SEAL_SHRINK|F_SEAL_GROW); refusing to map it")
        size = st.st_size
        if size < IOQ_HDR_SIZE or size > MAX_REGION_SIZE:
            raise RegionError(f"region size {size} is outside {IOQ_HDR_SIZE}..{MAX_REGION_SIZE}")
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        cdef Region self = Region.__new__(Region)
        self.creator = False
        self._map(mm, size)
        try:
            memcpy(&self.hdr, self.base, sizeof(ioq_region_hdr_t))   # the one read
            self._validate()
            self.fd = os.dup(fd)
            if eventfds is not None:
                pairs = [tuple(p) for p in eventfds]
                if len(pairs) != self.hdr.nrings:
                    raise RegionError(f"{len(pairs)} eventfd pairs given for {self.hdr.nrings} rings")
                for a, b in pairs:
                    self.eventfds.append((os.dup(a), os.dup(b)))
        except BaseException:
            self.close()
            raise
        return self

    cdef _map(self, mm, uint64_t size):
        self._mm = mm
        PyObject_GetBuffer(mm, &self._view, PyBUF_WRITABLE)
        self._have_view = True
        self.base = <char *>self._view.buf
        self._size = size

    def _validate(self):
        cdef ioq_region_hdr_t *h = &self.hdr
        cdef uint64_t end, o, prev_end = IOQ_HDR_SIZE
        cdef uint32_t c
        if h.magic != IOQ_REGION_MAGIC:
            raise RegionError(f"not an ioq region (magic {h.magic:#x}, expected {IOQ_REGION_MAGIC:#x})")
        if h.version != IOQ_VERSION:
            raise RegionError(f"ioq region version {h.version}, this build speaks {IOQ_VERSION}")
        if h.size != self._size:
            raise RegionError(f"region header says {h.size} bytes but the memfd has {self._size}")
        if not 1 <= h.nrings <= IOQ_MAX_RINGS:
            raise RegionError(f"region declares {h.nrings} rings (1..{IOQ_MAX_RINGS} allowed)")
        if not 1 <= h.max_sg <= IOQ_MAX_SG_LIMIT:
            raise RegionError(f"region declares max_sg {h.max_sg} (1..{IOQ_MAX_SG_LIMIT} allowed)")
        if h.pool_offset % 64 or h.pool_offset > self._size or h.pool_size > self._size - h.pool_offset:
            raise RegionError(f"buffer pool [{h.pool_offset}, +{h.pool_size}) does not fit the region")
        if <uint64_t>h.buf_size * h.nbufs > h.pool_size:
            raise RegionError(f"{h.nbufs} buffers of {h.buf_size} bytes exceed the pool of {h.pool_size}")
        for i in range(h.nrings):
            o = h.rings[i].offset
            c = h.rings[i].count
            if not _is_pow2(c) or c > IOQ_MAX_COUNT:
                raise RegionError(f"ring {i}: size {c} is not a power of two up to {IOQ_MAX_COUNT}")
            if o % 64 or o < prev_end:
                raise RegionError(f"ring {i}: offset {o} is misaligned or overlaps what precedes it")
            end = o + ring_bytes(c)
            if end > h.pool_offset:
                raise RegionError(f"ring {i}: [{o}, {end}) runs into the buffer pool at {h.pool_offset}")
            if h.rings[i].flags:
                raise RegionError(f"ring {i}: unknown flags {h.rings[i].flags:#x}")
            if shmsig_check_shared(<shmsig_shared_t *>(self.base + o + IOQ_RING_SIG_OFF)):
                raise RegionError(f"ring {i}: no valid signal block")
            prev_end = end

    cdef int _check_open(self) except -1:
        if not self._have_view:
            raise IoqError("region is closed")
        return 0

    def close(self):
        """Close every ring made from this region, unmap it, close its fds.
        Raises BufferError if memoryviews of the region are still alive."""
        for r in list(self._rings):
            r.close()
        if self._have_view:
            PyBuffer_Release(&self._view)
            self._have_view = False
            self.base = NULL
        if self._mm is not None:
            try:
                self._mm.close()
            except BufferError:
                PyObject_GetBuffer(self._mm, &self._view, PyBUF_WRITABLE)
                self._have_view = True
                self.base = <char *>self._view.buf
                raise BufferError("region still has memoryviews in use; release them first") from None
            self._mm = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        for a, b in self.eventfds:
            os.close(a)
            os.close(b)
        self.eventfds = []

    def __dealloc__(self):
        if self._have_view:
            PyBuffer_Release(&self._view)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def closed(self):
        return not self._have_view

    @property
    def size(self):
        return self._size

    @property
    def nrings(self):
        return self.hdr.nrings

    @property
    def max_sg(self):
        return self.hdr.max_sg

    @property
    def pool_offset(self):
        return self.hdr.pool_offset

    @property
    def pool_size(self):
        return self.hdr.pool_size

    @property
    def buf_size(self):
        return self.hdr.buf_size

    @property
    def nbufs(self):
        return self.hdr.nbufs

    def ring_count(self, int i):
        self._ring_index(i)
        return self.hdr.rings[i].count

    def ring_offset(self, int i):
        self._ring_index(i)
        return self.hdr.rings[i].offset

    def _ring_index(self, int i):
        if not 0 <= i < <int>self.hdr.nrings:
            raise IndexError(f"ring {i} does not exist (region has {self.hdr.nrings})")

    def paired_base(self, int i):
        """Index of the first of ring i's paired buffers, or None if the pool
        has too few buffers to pair every slot of rings 0..i."""
        self._ring_index(i)
        base = sum(self.hdr.rings[j].count for j in range(i))
        if base + self.hdr.rings[i].count > self.hdr.nbufs:
            return None
        return base

    def buffer_offset(self, uint32_t index):
        if index >= self.hdr.nbufs:
            raise IndexError(f"buffer {index} does not exist (pool has {self.hdr.nbufs})")
        return self.hdr.pool_offset + <uint64_t>index * self.hdr.buf_size

    def view(self, uint64_t offset, uint64_t length):
        """Zero-copy writable memoryview of [offset, offset+length), which
        must lie inside the buffer pool."""
        self._check_open()
        if offset < self.hdr.pool_offset or offset > self.hdr.pool_offset + self.hdr.pool_size \
                or length > self.hdr.pool_offset + self.hdr.pool_size - offset:
            raise ValueError(f"[{offset}, +{length}) is outside the buffer pool")
        return memoryview(self._mm)[offset:offset + length]

    def buffer(self, uint32_t index):
        """Zero-copy memoryview of pool buffer `index`."""
        return self.view(self.buffer_offset(index), self.hdr.buf_size)

    def handoff(self):
        """What another process needs to attach: (memfd, eventfd pairs)."""
        self._check_open()
        return self.fd, list(self.eventfds)

    def producer(self, int i, **kw):
        """The producer end of ring i."""
        from ioq._ring import Ring
        return Ring(self, i, 0, **kw)

    def consumer(self, int i, **kw):
        """The consumer end of ring i."""
        from ioq._ring import Ring
        return Ring(self, i, 1, **kw)

    def _track(self, ring):
        self._rings.add(ring)
