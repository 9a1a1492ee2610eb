"""The driver's memory table: each region's fd checked and mapped.

A region is refused before anything is mapped when: its size is zero; its
guest-physical or user-address range wraps or overlaps another region's;
its fd is not a file that can hold memory (a memfd, a tmpfs or hugetlbfs
file: a regular file); the file is shorter than mmap_offset + size.  The
engine (_virtq.pyx) translates every guest address through this table in C
and checks that the whole buffer lies inside one region.

A memfd the driver did not seal against shrinking (F_SEAL_SHRINK) could be
truncated under the mapping; QEMU and DPDK do not seal theirs, so such a
region is accepted and counted (`unsealed`): a driver that truncates its own
memory while the engine reads it kills the backend with SIGBUS.  This is
the trust every vhost-user backend places in its driver (docs/vhost-user.md).
"""
import fcntl
import os
import stat

from venet.vhost import _virtq

MAX_REGIONS = 8
MAX_TOTAL = 1 << 40             # address space mapped for one driver, at most
F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
F_SEAL_SHRINK = getattr(fcntl, "F_SEAL_SHRINK", 0x0002)


class MemoryRefused(ValueError):
    """The table is refused: one line saying why."""


def check(regions):
    """Ranges alone: sizes, wrap-around, overlaps."""
    if not 1 <= len(regions) <= MAX_REGIONS:
        raise MemoryRefused(f"{len(regions)} memory regions, 1..{MAX_REGIONS} accepted")
    total = 0
    for i, (gpa, size, uva, off) in enumerate(regions):
        if size == 0:
            raise MemoryRefused(f"memory region {i} has size 0")
        if gpa + size > 1 << 64 or uva + size > 1 << 64 or off + size > 1 << 63:
            raise MemoryRefused(f"memory region {i} wraps around the address space")
        total += size
    if total > MAX_TOTAL:
        raise MemoryRefused(f"memory regions of {total} bytes in all, at most {MAX_TOTAL} accepted")
    for key, what in ((0, "guest-physical"), (2, "user-address")):
        spans = sorted((r[key], r[key] + r[1], i) for i, r in enumerate(regions))
        for (a0, a1, i), (b0, b1, j) in zip(spans, spans[1:]):
            if b0 < a1:
                raise MemoryRefused(f"memory regions {i} and {j} overlap in {what} space")


def check_fd(i, fd, off, size):
    try:
        st = os.fstat(fd)
    except OSError as e:
        raise MemoryRefused(f"memory region {i}: its fd cannot be examined: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise MemoryRefused(f"memory region {i}: its fd is not memory (a memfd or a file) but "
                            f"{_kind(st.st_mode)}")
    if st.st_size < off + size:
        raise MemoryRefused(f"memory region {i}: the file holds {st.st_size} bytes, the region "
                            f"needs {off + size}")
    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        seals = 0
    return bool(seals & F_SEAL_SHRINK)


def _kind(mode):
    for test, what in ((stat.S_ISSOCK, "a socket"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return what
    return "an anonymous inode (eventfd, epoll, ...)"


class MemoryTable:
    """Mapped regions; close() unmaps them (only once no engine runs)."""

    def __init__(self, regions, fds):
        if len(fds) != len(regions):
            raise MemoryRefused(f"{len(regions)} memory regions came with {len(fds)} fds")
        check(regions)
        self.unsealed = 0
        for i, ((gpa, size, uva, off), fd) in enumerate(zip(regions, fds)):
            if not check_fd(i, fd, off, size):
                self.unsealed += 1
        self.maps = []              # (base, length) to unmap
        self.regions = []           # (gpa, size, uva, host) for the engine
        try:
            for i, ((gpa, size, uva, off), fd) in enumerate(zip(regions, fds)):
                try:
                    host, base, length = _virtq.map_region(fd, off, size)
                except OSError as e:
                    raise MemoryRefused(f"memory region {i} cannot be mapped: {e.strerror}") from None
                self.maps.append((base, length))
                self.regions.append((gpa, size, uva, host))
        except BaseException:
            self.close()
            raise

    @property
    def size(self):
        return sum(r[1] for r in self.regions)

    def close(self):
        for base, length in self.maps:
            _virtq.unmap_region(base, length)
        self.maps = []
        self.regions = []
