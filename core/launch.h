// core/launch.h — the launch helper: the only way a kernel is launched (no <<<>>> in csrc/).
//
//   scratch::launch("layernorm_forward", layernorm_forward_kernel<true>,
//                   grid, block, dynamic_smem_bytes, stream, args...);
//
// nvcc: checks the configuration, opts in to more than 48 KiB of dynamic shared memory when
// asked, launches on `stream`, and turns a launch error into scratch::Error naming the kernel
// (SCRATCH_SYNC_LAUNCH=1 also synchronises after each launch, to pin an asynchronous fault on
// the kernel that caused it). Host build: runs the grid on the host executor, synchronously.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <utility>

#include "errors.h"
#include "platform.h"

namespace scratch {

constexpr size_t kMaxDynamicSmem = 227 * 1024;   // sm_90's per-block limit (sm_80: 163 KiB)

template <typename T>
constexpr T ceil_div(T a, T b) { return (a + b - 1) / b; }

inline void check_launch(const char* name, dim3 grid, dim3 block, size_t smem) {
    const uint64_t threads = uint64_t(block.x) * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.z > 64)
        throw Error(str("kernel ", name, ": block (", block.x, ",", block.y, ",", block.z,
                        ") must have 1 to 1024 threads and z <= 64"));
    if (grid.x > 2147483647u || grid.y > 65535u || grid.z > 65535u)
        throw Error(str("kernel ", name, ": grid (", grid.x, ",", grid.y, ",", grid.z,
                        ") exceeds the limits (2^31-1, 65535, 65535)"));
    if (smem > kMaxDynamicSmem)
        throw Error(str("kernel ", name, ": ", smem, " bytes of dynamic shared memory exceed ",
                        kMaxDynamicSmem));
}

inline bool sync_launches() {
    static const bool sync = [] {
        const char* v = std::getenv("SCRATCH_SYNC_LAUNCH");
        return v && *v && *v != '0';
    }();
    return sync;
}

template <typename... KArgs, typename... Args>
inline void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
    static_assert(sizeof...(KArgs) == sizeof...(Args), "launch: wrong number of kernel arguments");
    check_launch(name, grid, block, smem);
    if (uint64_t(grid.x) * grid.y * grid.z == 0) return;   // nothing to do (e.g. zero rows)
#if defined(__CUDACC__)
    if (smem > 48 * 1024)
        SCRATCH_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                int(smem)), name);
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    SCRATCH_CUDA_CHECK(cudaGetLastError(), name);
    if (sync_launches()) SCRATCH_CUDA_CHECK(cudaStreamSynchronize(stream), name);
#else
    (void)stream;
    host::run(name, kernel, grid, block, smem, std::forward<Args>(args)...);
#endif
}

}  // namespace scratch
