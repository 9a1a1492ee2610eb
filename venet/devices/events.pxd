# Events a backend posts on a device's event queue (docs/abi.md, "venet device": EV_TXC),
# as inline nogil functions shared by the producers of TX completions: the
# pump (venet/devices/_pump.pyx) and the switch engine
# (venet/devices/_switch.pyx).  Each holds the event queue's producer side
# alone while it serves the device, and kicks the frontend once per batch,
# not per event.
from libc.stdint cimport uint32_t, uint64_t
from ioq.abi cimport *
from ioq.ring cimport *
from venet.abi cimport *


cdef inline bint venet_post_txc(ioq_ring_t *e, uint64_t cookie, uint32_t status) noexcept nogil:
    """Publish EV_TXC on event queue `e`: the frontend's TX frame tagged
    `cookie` is done with, and what became of it (VENET_TXC_* in the high
    half of b).  The event goes into the slot's paired buffer.  False,
    nothing written, when the queue is full: the caller counts the event
    lost (the pump never waits for a frontend)."""
    cdef ioq_desc_t *d
    cdef venet_event_t *ev
    if ioq_free(e, 1) == 0:
        return False
    d = ioq_slot(e, 0)
    d.offset = ioq_pair(e, e.head)
    ev = <venet_event_t *>(e.base + d.offset)
    ev.type = VENET_EV_TXC
    ev.size = sizeof(venet_event_t)
    ev.a = cookie
    ev.b = <uint64_t>VENET_RING_TX | (<uint64_t>status << 32)
    d.cookie = e.head
    d.len = sizeof(venet_event_t)
    d.flags = 0
    d.user = 0
    ioq_commit(e, 1)
    return True
