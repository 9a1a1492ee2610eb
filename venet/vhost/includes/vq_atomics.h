/* 16-bit accessors for virtio's split rings (the indices and the event
 * fields are u16 in memory the driver shares).  Every access to a field the
 * driver writes is one load, so the value checked is the value used. */
#ifndef VQ_ATOMICS_H
#define VQ_ATOMICS_H

#include <stdint.h>

#define vq_load_acquire_u16(p)    __atomic_load_n((const volatile uint16_t *)(p), __ATOMIC_ACQUIRE)
#define vq_load_relaxed_u16(p)    __atomic_load_n((const volatile uint16_t *)(p), __ATOMIC_RELAXED)
#define vq_store_release_u16(p, v) __atomic_store_n((volatile uint16_t *)(p), (uint16_t)(v), __ATOMIC_RELEASE)
#define vq_store_relaxed_u16(p, v) __atomic_store_n((volatile uint16_t *)(p), (uint16_t)(v), __ATOMIC_RELAXED)
#define vq_store_relaxed_u32(p, v) __atomic_store_n((volatile uint32_t *)(p), (uint32_t)(v), __ATOMIC_RELAXED)
#define vq_fence()                __atomic_thread_fence(__ATOMIC_SEQ_CST)

#endif
