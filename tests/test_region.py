import fcntl
import os
import struct

import pytest

import ioq
from ioq import Region, RegionError

SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW


def memfd_with(data, seals=SEALS, size=None):
    fd = os.memfd_create("t", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
    os.ftruncate(fd, size if size is not None else len(data))
    os.pwrite(fd, bytes(data), 0)
    if seals:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
    return fd


def image(**kw):
    with Region.create(**kw) as r:
        return bytearray(os.pread(r.fd, r.size, 0))


def attach_image(data, **kw):
    fd = memfd_with(data, **kw)
    try:
        return Region.attach(fd)
    finally:
        os.close(fd)


def test_create_and_attach_share_memory():
    with Region.create([8, 16], buf_size=128, nbufs=24) as r:
        assert (r.nrings, r.ring_count(0), r.ring_count(1), r.nbufs, r.buf_size) == (2, 8, 16, 24, 128)
        assert r.ring_offset(0) % 64 == 0 and r.pool_offset % 4096 == 0
        seals = fcntl.fcntl(r.fd, fcntl.F_GET_SEALS)
        assert seals & SEALS == SEALS and seals & fcntl.F_SEAL_SEAL
        with Region.attach(r.fd) as a:
            assert a.size == r.size and a.pool_offset == r.pool_offset
            r.buffer(3)[:5] = b"hello"
            assert bytes(a.buffer(3)[:5]) == b"hello"


def test_sealed_region_cannot_be_resized():
    with Region.create() as r:
        with pytest.raises(PermissionError):
            os.ftruncate(r.fd, r.size // 2)


def test_refuses_unsealed_memfd():
    data = image()
    with pytest.raises(RegionError, match="not sealed"):
        attach_image(data, seals=0)


def test_refuses_half_sealed_memfd():
    data = image()
    with pytest.raises(RegionError, match="not sealed"):
        attach_image(data, seals=fcntl.F_SEAL_SHRINK)


def test_refuses_too_small():
    with pytest.raises(RegionError, match="outside"):
        attach_image(b"\0" * 64)


def test_refuses_wrong_magic():
    data = image()
    data[0:4] = b"NOPE"
    with pytest.raises(RegionError, match="magic"):
        attach_image(data)


def test_refuses_wrong_version():
    data = image()
    data[4:8] = struct.pack("<I", 99)
    with pytest.raises(RegionError, match="version"):
        attach_image(data)


def test_refuses_size_mismatch():
    data = image()
    data[8:16] = struct.pack("<Q", len(data) + 4096)
    with pytest.raises(RegionError, match="says"):
        attach_image(data)


@pytest.mark.parametrize("field,value,msg", [
    ("nrings", 0, "declares 0 rings"),
    ("nrings", 17, "declares 17 rings"),
    ("max_sg", 0, "max_sg"),
    ("pool_offset", 1 << 40, "does not fit"),
    ("pool_size", 1 << 40, "does not fit"),
    ("count0", 3, "power of two"),
    ("count0", 1 << 20, "power of two"),
    ("offset0", 8, "misaligned or overlaps"),
    ("offset0", 1 << 30, "runs into"),
    ("flags0", 1, "unknown flags"),
    ("buf_size", 2040, "buffer size 2040 is not a multiple of 64"),   # u64 fields misaligned
    ("buf_size", 0, "buffer size 0 is not a multiple of 64"),
])
def test_refuses_bad_layout(field, value, msg):
    data = image()
    where = {"nrings": (16, "<I"), "max_sg": (20, "<I"), "pool_offset": (24, "<Q"),
             "pool_size": (32, "<Q"), "offset0": (64, "<Q"), "count0": (72, "<I"),
             "flags0": (76, "<I"), "buf_size": (40, "<I")}[field]
    struct.pack_into(where[1], data, where[0], value)
    with pytest.raises(RegionError, match=msg):
        attach_image(data)


def test_refuses_missing_signal_block():
    data = image()
    ring0 = struct.unpack_from("<Q", data, 64)[0]
    data[ring0 + ioq.RING_HDR_SIZE - 192: ring0 + ioq.RING_HDR_SIZE - 188] = b"\0\0\0\0"
    with pytest.raises(RegionError, match="signal"):
        attach_image(data)


def test_refuses_non_memfd():
    r, w = os.pipe()
    try:
        with pytest.raises(RegionError, match="not a memfd"):
            Region.attach(r)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(RegionError, match="not usable"):
        Region.attach(9999)


@pytest.mark.parametrize("kw,msg", [
    ({"rings": []}, "1 to 16"),
    ({"rings": [3]}, "power of two"),
    ({"rings": [8], "buf_size": 100}, "multiple of 64"),
    ({"rings": [8], "max_sg": 0}, "max_sg"),
    ({"rings": [65536], "buf_size": 1 << 16}, "limit"),
])
def test_create_refuses_bad_parameters(kw, msg):
    with pytest.raises(RegionError, match=msg):
        Region.create(**kw)


def test_views_are_bounded_and_close_is_safe():
    r = Region.create([8], buf_size=64)
    with pytest.raises(ValueError, match="outside"):
        r.view(0, 16)                       # the header is not a buffer
    with pytest.raises(ValueError, match="outside"):
        r.view(r.pool_offset, r.pool_size + 1)
    with pytest.raises(IndexError):
        r.buffer(8)
    v = r.buffer(0)
    with pytest.raises(BufferError, match="memoryviews"):
        r.close()
    v.release()
    r.close()
    assert r.closed
    with pytest.raises(ioq.IoqError, match="closed"):
        r.view(r.pool_offset, 1)
    r.close()                               # idempotent


def test_attach_eventfd_pairs_checked():
    with Region.create([8, 8]) as r:
        fd, efds = r.handoff()
        with pytest.raises(RegionError, match="eventfd pairs"):
            Region.attach(fd, efds[:1])
        with Region.attach(fd, efds) as a:
            assert len(a.eventfds) == 2
