# C-level atomics shared by every Cython module that touches shared memory.
from libc.stdint cimport uint8_t, uint32_t, uint64_t

cdef extern from "atomics.h" nogil:
    uint32_t shm_load_acquire_u32(const void *p)
    void shm_store_release_u32(void *p, uint32_t v)
    uint32_t shm_load_relaxed_u32(const void *p)
    void shm_store_relaxed_u32(void *p, uint32_t v)
    uint8_t shm_load_acquire_u8(const void *p)
    void shm_store_release_u8(void *p, uint8_t v)
    uint8_t shm_load_relaxed_u8(const void *p)
    void shm_store_relaxed_u8(void *p, uint8_t v)
    uint64_t shm_load_relaxed_u64(const void *p)
    void shm_store_relaxed_u64(void *p, uint64_t v)
    uint8_t shm_xchg_u8(void *p, uint8_t v)
    void shm_fence_seq_cst()
    void shm_cpu_relax()
    uint64_t shm_now_ns()
