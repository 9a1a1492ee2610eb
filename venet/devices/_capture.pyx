# cython: language_level=3, boundscheck=False, wraparound=False
"""A device's capture taps (docs/capture.md): attach and detach captures
while its pump runs, their counters, and the cBPF checker and interpreter
exposed for tests.

The data-path half is venet/devices/capture.pxd; the record layout is
venet/includes/venet_capture.h.
"""
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from ioq._ring cimport Ring
from shmsignal.includes.atomics cimport shm_store_relaxed_u32
from venet.devices.capture cimport *

REC_SIZE = VENET_CAP_REC_SIZE
MAX_CAPTURES = VENET_CAP_MAX
MIN_SNAPLEN = VENET_CAP_MIN_SNAPLEN
MAX_SNAPLEN = VENET_CAP_MAX_SNAPLEN
MAX_INSNS = VENET_BPF_MAXINSNS
DIR_IN = VENET_CAP_DIR_IN
DIR_OUT = VENET_CAP_DIR_OUT


class FilterError(ValueError):
    """A BPF program the backend will not run."""


cdef venet_bpf_insn_t *_checked(bytes prog, uint32_t *n) except? NULL:
    """A private, checked copy of the program `prog` (8-byte instructions,
    little-endian as libpcap's bpf_insn), or FilterError.  b"" is no filter
    (NULL)."""
    cdef uint32_t at = 0
    cdef int st
    cdef venet_bpf_insn_t *p
    if len(prog) == 0:
        n[0] = 0
        return NULL
    if len(prog) % 8:
        raise FilterError(f"a filter is whole 8-byte instructions; {len(prog)} bytes given")
    if len(prog) // 8 > VENET_BPF_MAXINSNS:
        raise FilterError(f"a filter holds at most {VENET_BPF_MAXINSNS} instructions, "
                          f"not {len(prog) // 8}")
    n[0] = <uint32_t>(len(prog) // 8)
    p = <venet_bpf_insn_t *>calloc(n[0], sizeof(venet_bpf_insn_t))
    if p == NULL:
        raise MemoryError()
    memcpy(p, <const char *>prog, n[0] * 8)
    st = venet_bpf_check(p, n[0], &at)
    if st != VENET_BPF_OK:
        free(p)
        raise FilterError(f"filter refused at instruction {at}: {venet_bpf_reason[st].decode()}")
    return p


def check_filter(bytes prog):
    """Raise FilterError unless the backend would run `prog`."""
    cdef uint32_t n
    free(_checked(prog, &n))


def run_filter(bytes prog, frame, int pieces=1):
    """Run a checked program over `frame` (split into `pieces` segments, to
    test loads across them); returns the bytes it keeps (0: refused)."""
    cdef uint32_t n, i, r
    cdef venet_bpf_insn_t *p = _checked(prog, &n)
    cdef const uint8_t[::1] mv = memoryview(frame).cast("B")
    cdef venet_bpf_seg_t seg[16]
    cdef venet_bpf_pkt_t pkt
    cdef uint32_t length = <uint32_t>mv.shape[0], step, at = 0
    if not 1 <= pieces <= 16:
        free(p)
        raise ValueError("pieces must be 1..16")
    step = length // <uint32_t>pieces + 1
    pkt.seg = seg
    pkt.nseg = 0
    pkt.len = length
    for i in range(<uint32_t>pieces):
        seg[i].base = &mv[0] + at if length else NULL
        seg[i].len = step if step < length - at else length - at
        at += seg[i].len
        pkt.nseg += 1
    try:
        if p == NULL:
            return length
        with nogil:
            r = venet_bpf_run(p, n, &pkt)
        return r
    finally:
        free(p)


def _dirs(direction):
    return {"in": VENET_CAP_DIR_IN, "out": VENET_CAP_DIR_OUT,
            "both": VENET_CAP_DIR_IN | VENET_CAP_DIR_OUT}[direction]


cdef class CaptureSet:
    """The capture taps of one device.  Give it to the device's Pump
    (capture=); add() and remove() are safe while the pump runs."""

    def __cinit__(self):
        self.set = <venet_capset_t *>calloc(1, sizeof(venet_capset_t))
        if self.set == NULL:
            raise MemoryError()
        pthread_mutex_init(&self.set.lock, NULL)
        self._rings = [None] * VENET_CAP_MAX

    def __dealloc__(self):
        cdef int i
        if self.set != NULL:
            for i in range(VENET_CAP_MAX):
                free(self.set.cap[i].prog)
            pthread_mutex_destroy(&self.set.lock)
            free(self.set)
            self.set = NULL

    @property
    def active(self):
        return self.set.active

    def add(self, Ring ring not None, bytes prog=b"", uint32_t snaplen=65535, direction="both"):
        """Attach a capture writing to `ring` (the producer end of the
        capturer's ring, with paired buffers).  Returns its slot, or raises
        ValueError / FilterError (nothing attached)."""
        cdef uint32_t n, dirs, i, slot = VENET_CAP_MAX
        cdef venet_bpf_insn_t *p
        cdef venet_cap_t *c
        if ring.role != 0:
            raise ValueError("a capture ring is written by the backend: give its producer end")
        if ring.r.pair_off == 0:
            raise ValueError("the capture ring has no paired buffers")
        if ring.r.buf_size < VENET_CAP_REC_SIZE + VENET_CAP_MIN_SNAPLEN:
            raise ValueError(f"capture buffers of {ring.r.buf_size} bytes cannot hold a record "
                             f"and an Ethernet header ({VENET_CAP_REC_SIZE + VENET_CAP_MIN_SNAPLEN})")
        if not VENET_CAP_MIN_SNAPLEN <= snaplen <= VENET_CAP_MAX_SNAPLEN:
            raise ValueError(f"snaplen {snaplen} is out of range "
                             f"{VENET_CAP_MIN_SNAPLEN}..{VENET_CAP_MAX_SNAPLEN}")
        if direction not in ("in", "out", "both"):
            raise ValueError(f"direction {direction!r} is not in, out or both")
        dirs = _dirs(direction)
        for i in range(VENET_CAP_MAX):
            if self._rings[i] is None:
                slot = i
                break
        if slot == VENET_CAP_MAX:
            raise ValueError(f"a device takes at most {VENET_CAP_MAX} captures at once")
        p = _checked(prog, &n)
        c = &self.set.cap[slot]
        with nogil:
            pthread_mutex_lock(&self.set.lock)
            free(c.prog)
            memset(c, 0, sizeof(venet_cap_t))
            c.r = &ring.r
            c.prog = p
            c.nprog = n
            c.snaplen = snaplen
            c.dirs = dirs
            c.used = True
            shm_store_relaxed_u32(&self.set.active, self.set.active + 1)
            pthread_mutex_unlock(&self.set.lock)
        self._rings[slot] = ring
        return slot

    def remove(self, int slot):
        """Detach a capture; returns its counters.  Once this returns the
        pump no longer touches its ring."""
        cdef venet_cap_t *c
        if not 0 <= slot < VENET_CAP_MAX or self._rings[slot] is None:
            raise ValueError(f"no capture {slot}")
        c = &self.set.cap[slot]
        with nogil:
            pthread_mutex_lock(&self.set.lock)
            c.used = False
            shm_store_relaxed_u32(&self.set.active, self.set.active - 1)
            pthread_mutex_unlock(&self.set.lock)
        out = self._counters(slot)
        free(c.prog)
        c.prog = NULL
        c.nprog = 0
        c.r = NULL
        self._rings[slot] = None
        return out

    def counters(self, int slot):
        if not 0 <= slot < VENET_CAP_MAX or self._rings[slot] is None:
            raise ValueError(f"no capture {slot}")
        return self._counters(slot)

    def _counters(self, int slot):
        cdef venet_cap_t *c = &self.set.cap[slot]
        cdef uint64_t seen, captured, filtered, dropped
        with nogil:
            pthread_mutex_lock(&self.set.lock)
            seen, captured, filtered, dropped = c.seen, c.captured, c.filtered, c.dropped
            pthread_mutex_unlock(&self.set.lock)
        return {"seen": seen, "captured": captured, "filtered": filtered, "dropped": dropped}

    def slots(self):
        return [i for i in range(VENET_CAP_MAX) if self._rings[i] is not None]
