/* Memory-ordering primitives for memory shared between processes.
 *
 * The ring and the signal live in a MAP_SHARED memfd mapping and are touched
 * by two processes at once.  Every access to a field the other side writes
 * goes through one of these macros so that (a) the compiler reads it exactly
 * once (no double fetch a hostile peer could exploit) and (b) the CPU orders
 * it against the payload it guards.  GCC/Clang __atomic builtins work on any
 * naturally aligned integer, so the shared structs stay plain C structs.
 */
#ifndef SHM_ATOMICS_H
#define SHM_ATOMICS_H

#include <stdint.h>

#define shm_load_acquire_u32(p)   __atomic_load_n((const volatile uint32_t *)(p), __ATOMIC_ACQUIRE)
#define shm_store_release_u32(p, v) __atomic_store_n((volatile uint32_t *)(p), (uint32_t)(v), __ATOMIC_RELEASE)
#define shm_load_relaxed_u32(p)   __atomic_load_n((const volatile uint32_t *)(p), __ATOMIC_RELAXED)
#define shm_store_relaxed_u32(p, v) __atomic_store_n((volatile uint32_t *)(p), (uint32_t)(v), __ATOMIC_RELAXED)

#define shm_load_acquire_u8(p)    __atomic_load_n((const volatile uint8_t *)(p), __ATOMIC_ACQUIRE)
#define shm_store_release_u8(p, v) __atomic_store_n((volatile uint8_t *)(p), (uint8_t)(v), __ATOMIC_RELEASE)
#define shm_load_relaxed_u8(p)    __atomic_load_n((const volatile uint8_t *)(p), __ATOMIC_RELAXED)
#define shm_store_relaxed_u8(p, v) __atomic_store_n((volatile uint8_t *)(p), (uint8_t)(v), __ATOMIC_RELAXED)

#define shm_load_relaxed_u64(p)   __atomic_load_n((const volatile uint64_t *)(p), __ATOMIC_RELAXED)
#define shm_store_relaxed_u64(p, v) __atomic_store_n((volatile uint64_t *)(p), (uint64_t)(v), __ATOMIC_RELAXED)

/* Atomic exchange with a full barrier (x86 XCHG is implicitly locked). */
#define shm_xchg_u8(p, v)         __atomic_exchange_n((volatile uint8_t *)(p), (uint8_t)(v), __ATOMIC_SEQ_CST)

/* Full barrier: orders an earlier store before a later load (Dekker).  The
 * signal protocol needs it twice: the producer stores "dirty" then loads
 * "enabled"; the consumer stores "enabled" then loads "dirty". */
#define shm_fence_seq_cst()       __atomic_thread_fence(__ATOMIC_SEQ_CST)

/* Polite spin: tells the core we are busy-waiting (x86 PAUSE, arm YIELD). */
#if defined(__x86_64__) || defined(__i386__)
#define shm_cpu_relax()           __builtin_ia32_pause()
#elif defined(__aarch64__)
#define shm_cpu_relax()           __asm__ __volatile__("yield" ::: "memory")
#else
#define shm_cpu_relax()           __asm__ __volatile__("" ::: "memory")
#endif

/* A monotonic clock in nanoseconds, cheap enough for bounded polls (vDSO). */
#include <time.h>
static inline uint64_t shm_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#endif
