// core/reduce.h — warp and block reductions, on the GPU and on the host executor.
//
// warp_sum / warp_max: butterfly over __shfl_xor_sync; every lane of the (full) warp gets the
// result. block_sum / block_max: warp results meet in shared memory, every thread of the block
// gets the result; they contain __syncthreads, so every thread of the block must call them, and
// the block size must be a multiple of 32 (at most 1024).
#pragma once

#include "platform.h"
#include "vec.h"

namespace scratch {

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const T other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = other > v ? other : v;
    }
    return v;
}

__device__ __forceinline__ int linear_thread_index() {
    return int(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
}

namespace detail {
template <typename T, typename Combine>
__device__ __forceinline__ T block_reduce(T v, T identity, Combine combine) {
    SCRATCH_SHARED(T, partial, [32]);
    const int tid = linear_thread_index();
    const int lane = tid & 31, warp = tid >> 5;
    const int warps = int(blockDim.x * blockDim.y * blockDim.z) >> 5;
    v = combine(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = combine(lane < warps ? partial[lane] : identity);
    __syncthreads();   // `partial` may be reused by the next call
    return v;
}
}  // namespace detail

template <typename T>
__device__ __forceinline__ T block_sum(T v) {
    return detail::block_reduce(v, T(0), [](T x) { return warp_sum(x); });
}

template <typename T>
__device__ __forceinline__ T block_max(T v, T lowest) {
    return detail::block_reduce(v, lowest, [](T x) { return warp_max(x); });
}

}  // namespace scratch
