from venet.devices.capture cimport venet_capset_t

cdef class CaptureSet:
    # The capture taps of one device: the C set its pump reads (allocated
    # once, never moved, so a pump may keep the pointer) and, per slot, the
    # Python objects that keep the slot's ring alive.
    cdef venet_capset_t *set
    cdef list _rings
