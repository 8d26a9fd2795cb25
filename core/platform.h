// core/platform.h — what a kernel source sees of "CUDA": the real runtime under nvcc, the host
// executor (core/executor.h) under the host C++ compiler. SCRATCH_CUDA is defined in the first
// case, SCRATCH_HOST_EXECUTOR in the second.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define SCRATCH_CUDA 1
#else
#include "executor.h"
#endif

// Full unrolling of a fixed-trip loop (register arrays must not be indexed dynamically); the
// host compiler unrolls such loops on its own at -O2.
#if defined(__CUDACC__)
#define SCRATCH_UNROLL _Pragma("unroll")
#else
#define SCRATCH_UNROLL
#endif
