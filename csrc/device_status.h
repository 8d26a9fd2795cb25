// csrc/device_status.h — report a bad input found by a kernel as a Python exception.
//
// A kernel that validates its input (token ids, class targets) records the first offending
// flat position in an int32 status word: status = max over bad positions p of (n - p), so
// 0 means "all good" and n - status is the smallest bad position whatever the order in which
// threads run (atomicMax is order-independent). The launcher clears the word with a tiny
// kernel before the launch and reads it back afterwards (a host synchronisation on the GPU:
// the reference raises synchronously, so the kernel version must too).
#pragma once

#include "core/kernel.h"

namespace scratch::kernels::status {
namespace {   // each kernel source gets its own copy (no cross-object duplicate symbols)

__global__ void clear_kernel(int* status) { *status = 0; }

// Call from any thread that found position `pos` (of `n`) bad.
__device__ __forceinline__ void report(int* status, int pos, int n) { atomicMax(status, n - pos); }

inline void clear(int* status, cudaStream_t stream) {
    launch("status_clear_kernel", clear_kernel, dim3(1), dim3(1), 0, stream, status);
}

// One value of device memory (host memory for the host executor) read back to the host.
template <typename T>
T read_back(const T* p, cudaStream_t stream) {
#if defined(SCRATCH_CUDA)
    T value{};
    SCRATCH_CUDA_CHECK(cudaMemcpyAsync(&value, p, sizeof(T), cudaMemcpyDeviceToHost, stream),
                       "reading a status word back");
    SCRATCH_CUDA_CHECK(cudaStreamSynchronize(stream), "reading a status word back");
    return value;
#else
    (void)stream;
    return *p;
#endif
}

// The first bad position (>= 0), or -1 when none was reported.
inline int first_bad(const int* status, int n, cudaStream_t stream) {
    const int s = read_back(status, stream);
    return s > 0 ? n - s : -1;
}

}  // namespace
}  // namespace scratch::kernels::status
