# cython: language_level=3, boundscheck=False, wraparound=False
"""A shared region: one sealed memfd holding ioq rings and a buffer pool.

The creator (the driver side in vbus terms) lays the region out and seals it
against shrinking and growing.  The other process attaches by fd and refuses
anything it cannot prove safe: wrong seals, wrong size, wrong magic or
version, rings or pool out of place.  After attach only the private copy of
the header is used, so the creator rewriting the header later changes nothing.

Doorbells (docs/abi.md, "Doorbells"): each ring has two, the fd its producer
waits on and the fd its consumer waits on.  Between trusting processes both
are eventfds.  When the creator declares its role on each ring, the doorbell
it waits on is a stream socketpair instead: it keeps one end and hands the
other to the peer, which rings it with a per-call non-blocking send, so
nothing the creator does to a shared file description can block the peer.
The peer, declaring its roles at attach, checks every fd for what it must
be and never reads the eventfds it waits on (it watches them edge-triggered).
"""
import errno as _errno
import fcntl
import mmap
import os
import socket
import stat
import weakref

from shmsignal import new_socket_doorbell

from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy, memset
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.bytes cimport PyBytes_FromStringAndSize
from shmsignal.shmsig cimport (shmsig_shared_t, shmsig_init_shared, shmsig_check_shared, SHMSIG_SIZE,
                               SHMSIG_FD_EVENTFD, SHMSIG_FD_SOCKET, SHMSIG_FD_EDGE)
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
F_SEAL_FUTURE_WRITE = getattr(fcntl, "F_SEAL_FUTURE_WRITE", 0x0010)
WRITE_SEALS = fcntl.F_SEAL_WRITE | F_SEAL_FUTURE_WRITE
ROLE_NAMES = ("producer", "consumer")


def _no_ring_type(*args, **kw):
    raise ImportError("ioq._ring is not loaded: import ioq (or ioq._ring) first")


# ioq._ring builds on this module and registers its Ring class here, so that
# Region.producer()/consumer() can make rings without this module importing
# ioq._ring back (the dependency points one way only).  Importing any ioq
# module runs ioq/__init__.py first, which loads both.
_ring_factory = _no_ring_type


def _set_ring_factory(factory):
    global _ring_factory
    _ring_factory = factory


# Every size and offset is checked where it is declared (ioq_abi.h,
# shmsig_abi.h: _Static_assert), so a build that disagrees does not compile.


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


def _roles(roles, uint32_t nrings):
    """A validated tuple of one role (0 producer, 1 consumer) per ring."""
    try:
        out = tuple(int(x) for x in roles)
    except (TypeError, ValueError):
        raise RegionError(f"roles must be a sequence of 0 (producer) and 1 (consumer), "
                          f"not {roles!r}") from None
    if len(out) != nrings:
        raise RegionError(f"{len(out)} roles given for {nrings} rings")
    for r in out:
        if r not in (0, 1):
            raise RegionError(f"role {r} is neither 0 (producer) nor 1 (consumer)")
    return out


def describe_fd(int fd):
    """What an fd is, in a few words, for error messages."""
    try:
        st = os.fstat(fd)
    except OSError as e:
        return f"not an open fd ({e.strerror})"
    try:
        link = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        link = ""
    if len(link) > 80 or not link.isprintable() or not link.isascii():
        # The peer chose this path: quoted, and short, in what we say.
        link = ascii(link[:80])
    if link.startswith("/memfd:"):
        return "a memfd"
    if stat.S_ISREG(st.st_mode):
        return f"a regular file ({link})" if link else "a regular file"
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return f"a device ({link})" if link else "a device"
    if stat.S_ISFIFO(st.st_mode):
        return "a pipe"
    if stat.S_ISDIR(st.st_mode):
        return f"a directory ({link})" if link else "a directory"
    if stat.S_ISSOCK(st.st_mode):
        return _describe_socket(fd)
    if link.startswith("anon_inode:"):
        name = link[len("anon_inode:"):].strip("[]")
        return "an eventfd" if name == "eventfd" else f"an anonymous inode ({name})"
    return f"an fd of mode {st.st_mode:#o}"


def _describe_socket(int fd):
    """'' for one end of an unnamed, connected AF_UNIX stream socketpair,
    else what the socket is."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        return f"a socket that cannot be inspected ({e.strerror})"
    try:
        dom = s.getsockopt(socket.SOL_SOCKET, socket.SO_DOMAIN)
        typ = s.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        if dom != socket.AF_UNIX:
            try:
                fam = socket.AddressFamily(dom).name
            except ValueError:
                fam = f"family {dom}"
            return f"an {fam} socket"
        if typ != socket.SOCK_STREAM:
            try:
                kind = {socket.SOCK_DGRAM: "datagram", socket.SOCK_SEQPACKET: "seqpacket"}[typ]
            except KeyError:
                kind = f"type {typ}"
            return f"an AF_UNIX {kind} socket"
        name = s.getsockname()
        if name:
            return f"a named AF_UNIX socket ({name!r})"
        try:
            peer = s.getpeername()
        except OSError:
            return "an unconnected AF_UNIX stream socket"
        if peer:
            return f"an AF_UNIX stream socket connected to {peer!r}"
        return ""
    except OSError as e:
        return f"a socket that cannot be inspected ({e.strerror})"
    finally:
        s.close()


def _doorbell_kind(int fd):
    if fd < 0:
        return SHMSIG_FD_EVENTFD
    try:
        return SHMSIG_FD_SOCKET if stat.S_ISSOCK(os.fstat(fd).st_mode) else SHMSIG_FD_EVENTFD
    except OSError as e:
        raise RegionError(f"doorbell fd {fd} is not usable: {e.strerror}") from None


def check_doorbells(pairs, roles):
    """Refuse doorbells that are not what a process playing `roles` (one
    role per ring) may safely use: the ones it waits on must be eventfds
    (watched edge-triggered, never read), the ones it rings must each be
    one end of an unnamed, connected AF_UNIX stream socketpair (rung with a
    per-call non-blocking send; a named socket would let the peer aim its
    kicks at some other service).  RegionError names the first bad fd."""
    for i, (pair, role) in enumerate(zip(pairs, roles)):
        for side in (0, 1):
            fd = pair[side]
            where = f"ring {i}: the {ROLE_NAMES[side]}'s doorbell (fd {fd})"
            if side == role:
                try:
                    ok = os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:[eventfd]"
                except OSError:
                    ok = False
                if not ok:
                    raise RegionError(f"{where} is {describe_fd(fd)}, not an eventfd: the doorbell "
                                      f"this side waits on must be an eventfd")
            else:
                what = describe_fd(fd)
                if what:
                    raise RegionError(f"{where} is {what}, not one end of an AF_UNIX stream "
                                      f"socketpair: the doorbell this side rings must be one")


cdef class Region:
    """A mapped region.  Use Region.create() or Region.attach()."""

    def __cinit__(self):
        self._have_view = False
        self.fd = -1
        self.doorbells = []
        self._kinds = []
        self._handoff = []
        self._own = []
        self.roles = None
        self._rings = weakref.WeakSet()

    @staticmethod
    def create(rings=(256, 256), *, uint32_t buf_size=2048, nbufs=None, uint32_t max_sg=64,
               bint eventfds=True, roles=None, str name="ioq"):
        """Create, lay out and seal a region.

        rings: slot count of each ring (powers of two).  nbufs defaults to
        one buffer per ring slot, so that every ring has 'paired' buffers
        for the message API.  With eventfds, two doorbells per ring:
        (producer wakes on, consumer wakes on).

        roles: the role this process will play on each ring (0 producer, 1
        consumer), the peer playing the other.  Given, the doorbell this
        process waits on is a stream socketpair (it keeps one end, handoff()
        gives the peer the other), so the peer rings it without ever
        depending on a flag this process could change; the peer's own
        doorbell stays an eventfd.  Use it when the peer does not trust
        this process.  None: two shared eventfds per ring."""
        rings = list(rings)
        if not 1 <= len(rings) <= IOQ_MAX_RINGS:
            raise RegionError(f"a region holds 1 to {IOQ_MAX_RINGS} rings, not {len(rings)}")
        if roles is not None:
            roles = _roles(roles, len(rings))
            if not eventfds:
                raise RegionError("roles need doorbells (eventfds=True)")
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
            shmsig_init_shared(&(<ioq_ring_hdr_t *>(self.base + <uint64_t>o)).sig)
        h.magic = IOQ_REGION_MAGIC
        memcpy(&self.hdr, h, sizeof(ioq_region_hdr_t))
        # Seal before anyone else can see it: from here the size is fixed.
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, REQUIRED_SEALS | fcntl.F_SEAL_SEAL)
        self.roles = roles
        try:
            if eventfds:
                for i in range(len(rings)):
                    self._add_doorbells(None if roles is None else roles[i])
        except BaseException:
            self.close()
            raise
        return self

    def _add_doorbells(self, role):
        """One ring's doorbells, for a creator playing `role` (None: both
        eventfds, shared)."""
        cdef int e = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        if role is None:
            try:
                pair = (e, os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC))
            except BaseException:
                os.close(e)
                raise
            self.doorbells.append(pair)
            self._kinds.append((SHMSIG_FD_EVENTFD, SHMSIG_FD_EVENTFD))
            self._handoff.append(pair)
            return
        try:
            mine, theirs = new_socket_doorbell()
        except BaseException:
            os.close(e)
            raise
        self._own.append(theirs)
        local, peer, kinds = [e, e], [e, e], [SHMSIG_FD_EVENTFD, SHMSIG_FD_EVENTFD]
        local[role], peer[role], kinds[role] = mine, theirs, SHMSIG_FD_SOCKET
        self.doorbells.append(tuple(local))
        self._kinds.append(tuple(kinds))
        self._handoff.append(tuple(peer))

    @staticmethod
    def attach(int fd, doorbells=None, *, roles=None, max_size=MAX_REGION_SIZE):
        """Map a region another process created and validate it.  The fd is
        duplicated; the caller keeps its own.  doorbells, if given, is one
        (producer's, consumer's) pair per ring, also duplicated.

        roles: the role this process will play on each ring (0 producer, 1
        consumer).  Given, every doorbell is checked (check_doorbells): the
        ones this process waits on must be eventfds, which it then never
        reads (its Rings watch them edge-triggered), and the ones it rings
        must be stream socketpair ends, rung with a per-call non-blocking
        send.  That is how a process attaches memory from a peer it does
        not trust.  max_size: refuse a larger region before mapping it."""
        try:
            st = os.fstat(fd)
        except OSError as e:
            raise RegionError(f"fd {fd} is not usable: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):
            raise RegionError(f"fd {fd} is not a memfd: it is {describe_fd(fd)}")
        try:
            seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        except OSError as e:
            raise RegionError(f"fd {fd} does not support seals (not a memfd): {e.strerror}") from None
        if seals & REQUIRED_SEALS != REQUIRED_SEALS:
            raise RegionError("region is not sealed against shrinking and growing "
                              "(F_SEAL_SHRINK|F_SEAL_GROW); refusing to map it")
        if seals & WRITE_SEALS:
            raise RegionError("region is sealed against writing (F_SEAL_WRITE or "
                              "F_SEAL_FUTURE_WRITE); rings need it writable")
        size = st.st_size
        if size < IOQ_HDR_SIZE or size > min(max_size, MAX_REGION_SIZE):
            raise RegionError(f"region size {size} is outside {IOQ_HDR_SIZE}.."
                              f"{min(max_size, MAX_REGION_SIZE)}")
        pairs = None
        if doorbells is not None:
            try:
                pairs = [(int(a), int(b)) for a, b in doorbells]
            except (TypeError, ValueError):
                raise RegionError("doorbells must be (producer fd, consumer fd) pairs") from None
        elif roles is not None:
            raise RegionError("roles given without doorbells to check")
        try:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError) as e:
            raise RegionError(f"region (fd {fd}) cannot be mapped read-write: "
                              f"{getattr(e, 'strerror', None) or e}") from None
        cdef Region self = Region.__new__(Region)
        self.creator = False
        self._map(mm, size)
        try:
            memcpy(&self.hdr, self.base, sizeof(ioq_region_hdr_t))   # the one read
            self._validate()
            if pairs is not None:
                if len(pairs) != self.hdr.nrings:
                    raise RegionError(f"{len(pairs)} eventfd pairs given for {self.hdr.nrings} rings")
                if roles is not None:
                    self.roles = _roles(roles, self.hdr.nrings)
                    check_doorbells(pairs, self.roles)
            self.fd = os.dup(fd)
            if pairs is not None:
                for i, (a, b) in enumerate(pairs):
                    if self.roles is not None:
                        kinds = [SHMSIG_FD_SOCKET, SHMSIG_FD_SOCKET]
                        kinds[self.roles[i]] = SHMSIG_FD_EDGE
                        kinds = tuple(kinds)
                    else:
                        kinds = (_doorbell_kind(a), _doorbell_kind(b))
                    da = os.dup(a)
                    try:
                        db = os.dup(b)
                    except BaseException:
                        os.close(da)
                        raise
                    self.doorbells.append((da, db))
                    self._kinds.append(kinds)
                    self._handoff.append((da, db))
        except OSError as e:
            self.close()
            raise RegionError(f"cannot attach the region: {e.strerror or e}") from None
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
        if h.buf_size == 0 or h.buf_size % IOQ_POOL_ALIGN:
            # Buffers carry u64 fields (the event record) at their start.
            raise RegionError(f"buffer size {h.buf_size} is not a multiple of {IOQ_POOL_ALIGN}")
        if <uint64_t>h.buf_size * h.nbufs > h.pool_size:
            raise RegionError(f"{h.nbufs} buffers of {h.buf_size} bytes exceed the pool of {h.pool_size}")
        for i in range(h.nrings):
            o = h.rings[i].offset
            c = h.rings[i].count
            if not _is_pow2(c) or c > IOQ_MAX_COUNT:
                raise RegionError(f"ring {i}: size {c} is not a power of two up to {IOQ_MAX_COUNT}")
            if o % 64 or o < prev_end:
                raise RegionError(f"ring {i}: offset {o} is misaligned or overlaps what precedes it")
            if o > h.pool_offset:
                # Checked before o is added to: a u64 offset near 2^64 wraps.
                raise RegionError(f"ring {i}: offset {o} runs into or past the buffer pool at {h.pool_offset}")
            end = o + ring_bytes(c)
            if end > h.pool_offset:
                raise RegionError(f"ring {i}: [{o}, {end}) runs into the buffer pool at {h.pool_offset}")
            if h.rings[i].flags:
                raise RegionError(f"ring {i}: unknown flags {h.rings[i].flags:#x}")
            if shmsig_check_shared(&(<ioq_ring_hdr_t *>(self.base + o)).sig):
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
        for a, b in self.doorbells:
            os.close(a)
            if b != a:
                os.close(b)
        for x in self._own:
            os.close(x)
        self.doorbells = []
        self._kinds = []
        self._handoff = []
        self._own = []

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

    @property
    def eventfds(self):
        """The doorbells (older name): some may be sockets, see doorbells."""
        return self.doorbells

    def doorbell_kinds(self, int i):
        """(producer's, consumer's) doorbell kind of ring i, as shmsignal's
        FD_EVENTFD, FD_SOCKET or FD_EDGE (an eventfd never read here)."""
        self._ring_index(i)
        return self._kinds[i] if self._kinds else None

    def _role_allowed(self, int i, int role):
        if self.roles is not None and self.roles[i] != role:
            raise IoqError(f"ring {i}: this process declared the {ROLE_NAMES[self.roles[i]]} "
                           f"role, not the {ROLE_NAMES[role]}")

    def handoff(self):
        """What another process needs to attach: (memfd, doorbell pairs),
        the pairs as (producer's, consumer's) doorbell of each ring."""
        self._check_open()
        return self.fd, list(self._handoff)

    def producer(self, int i, **kw):
        """The producer end of ring i."""
        return _ring_factory(self, i, 0, **kw)

    def consumer(self, int i, **kw):
        """The consumer end of ring i."""
        return _ring_factory(self, i, 1, **kw)

    def _track(self, ring):
        self._rings.add(ring)
