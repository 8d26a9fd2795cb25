// core/vec.h — aligned vector loads and stores, dynamic shared memory, device-side checks.
//
// load_float4(p) / store_float4(p, v) move 16 bytes in one instruction on the GPU; p must be
// 16-byte aligned (the host executor raises on a misaligned pointer, where the GPU would fault).
// Decide vectorisation in the launcher with is_aligned(ptr, 16) and a size divisible by 4.
//
// SCRATCH_DYNAMIC_SHARED(float, smem);  declares `float* smem` pointing at the launch's dynamic
// shared memory: `extern __shared__` on the GPU, the worker's per-launch buffer on the host.
//
// SCRATCH_SHARED(float, tile, [32][33]);  declares static shared memory, 16-byte aligned:
// `__shared__ __align__(16) float tile[32][33]` on the GPU; on the host a block-scope
// thread_local that SCRATCH_HOST_POISON=1 refills with NaNs in every block (a bare `__shared__`
// does not compile in the host build: it could not be poisoned). One variable per declaration.
#pragma once

#include <cstdint>

#include "platform.h"

namespace scratch {

__host__ __device__ __forceinline__ bool is_aligned(const void* p, unsigned bytes) {
    return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

#if defined(SCRATCH_HOST_EXECUTOR)
#define SCRATCH_DEVICE_CHECK(cond, message) \
    do { if (!(cond)) ::scratch::host::device_fail(message); } while (0)
#define SCRATCH_DYNAMIC_SHARED(T, name) T* name = ::scratch::host::dynamic_shared<T>()
#define SCRATCH_SHARED(T, name, ...)                                   \
    alignas(16) thread_local T name __VA_ARGS__;                       \
    static thread_local uint64_t scratch_shared_epoch_##name = 0;      \
    ::scratch::host::shared_declared(&name, sizeof(name), scratch_shared_epoch_##name)
#else
// On the GPU the checks cost registers and branches in every kernel; they run on the host.
#define SCRATCH_DEVICE_CHECK(cond, message) do { } while (0)
#define SCRATCH_DYNAMIC_SHARED(T, name) \
    extern __shared__ __align__(16) unsigned char scratch_dynamic_smem_[]; \
    T* name = reinterpret_cast<T*>(scratch_dynamic_smem_)
#define SCRATCH_SHARED(T, name, ...) __shared__ __align__(16) T name __VA_ARGS__
#endif

__device__ __forceinline__ float4 load_float4(const float* p) {
    SCRATCH_DEVICE_CHECK(is_aligned(p, 16), "misaligned float4 load (needs 16-byte alignment)");
    return *reinterpret_cast<const float4*>(p);
}
__device__ __forceinline__ void store_float4(float* p, float4 v) {
    SCRATCH_DEVICE_CHECK(is_aligned(p, 16), "misaligned float4 store (needs 16-byte alignment)");
    *reinterpret_cast<float4*>(p) = v;
}
__device__ __forceinline__ float2 load_float2(const float* p) {
    SCRATCH_DEVICE_CHECK(is_aligned(p, 8), "misaligned float2 load (needs 8-byte alignment)");
    return *reinterpret_cast<const float2*>(p);
}
__device__ __forceinline__ void store_float2(float* p, float2 v) {
    SCRATCH_DEVICE_CHECK(is_aligned(p, 8), "misaligned float2 store (needs 8-byte alignment)");
    *reinterpret_cast<float2*>(p) = v;
}

}  // namespace scratch
