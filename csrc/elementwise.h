// csrc/elementwise.h — shared by the element-wise kernels (gelu.cu, residual.cu): grid sizing for
// grid-stride loops and the float4 decision, plus the aliasing rule for their outputs.
//
// An element-wise kernel runs a grid-stride loop over float4s (when every pointer is 16-byte
// aligned) and finishes the n % 4 tail with scalar accesses; with a misaligned pointer the same
// loop runs over single floats. The grid is capped at a few waves' worth of resident blocks:
// each thread then handles several float4s, amortising its index arithmetic, and the host
// executor starts fewer fibers.
#pragma once

#include <initializer_list>

#include "core/kernel.h"

namespace scratch::kernels {

constexpr int kElementwiseThreads = 256;
constexpr int kElementwiseMaxBlocks = 132 * 8;   // H100: 8 resident 256-thread blocks per SM

// Blocks for a grid-stride loop over `items` work items (float4s or floats).
inline int elementwise_blocks(int64_t items) {
    const int64_t want = ceil_div<int64_t>(items, kElementwiseThreads);
    return int(want < kElementwiseMaxBlocks ? (want > 0 ? want : 1) : kElementwiseMaxBlocks);
}

// The grid-stride loop itself: out[i] = f(a[i]) (or f(a[i], b[i])) over float4s [0, n/4) when
// kVec, then single elements [first not covered, n). The element-wise kernels differ only in f.
template <bool kVec, class F>
__device__ __forceinline__ void map_elements(float* out, const float* a, int64_t n, F f) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail = 0;
    if (kVec) {
        const int64_t n4 = n / 4;
        for (int64_t i = tid; i < n4; i += stride) {
            const float4 u = load_float4(a + 4 * i);
            store_float4(out + 4 * i, make_float4(f(u.x), f(u.y), f(u.z), f(u.w)));
        }
        tail = 4 * n4;
    }
    for (int64_t i = tail + tid; i < n; i += stride) out[i] = f(a[i]);
}

template <bool kVec, class F>
__device__ __forceinline__ void map_elements(float* out, const float* a, const float* b, int64_t n, F f) {
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail = 0;
    if (kVec) {
        const int64_t n4 = n / 4;
        for (int64_t i = tid; i < n4; i += stride) {
            const float4 u = load_float4(a + 4 * i), v = load_float4(b + 4 * i);
            store_float4(out + 4 * i, make_float4(f(u.x, v.x), f(u.y, v.y), f(u.z, v.z), f(u.w, v.w)));
        }
        tail = 4 * n4;
    }
    for (int64_t i = tail + tid; i < n; i += stride) out[i] = f(a[i], b[i]);
}

inline bool all_aligned16(std::initializer_list<const Tensor*> ts) {
    for (const Tensor* t : ts)
        if (!is_aligned(t->data, 16)) return false;
    return true;
}

// An element-wise output may be exactly one of its inputs (in place: each element is read
// before it is written, by the same thread) but must not partly overlap any input.
inline void expect_same_or_disjoint(const Tensor& out, const Tensor& in) {
    if (out.numel() == 0 || in.numel() == 0 || out.data == in.data) return;
    const auto* po = static_cast<const char*>(out.data);
    const auto* pi = static_cast<const char*>(in.data);
    if (po < pi + in.numel() * dtype_size(in.dtype) && pi < po + out.numel() * dtype_size(out.dtype))
        throw ValueError(str(out.name, ": partly overlaps ", in.name,
                             " (an output may be its input exactly, or separate memory)"));
}

}  // namespace scratch::kernels
