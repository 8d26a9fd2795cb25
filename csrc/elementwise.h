// csrc/elementwise.h — shared by the element-wise kernels (gelu.cu, residual.cu) and the row
// kernels of the other ops stored in T (embedding.cu, layernorm.cu, dropout.cu, softmax_xent.cu,
// adamw.cu): the storage type of a launch, 16-byte packs of T, grid sizing for grid-stride
// loops, and the aliasing rule for element-wise outputs.
//
// Storage (DESIGN.md, "Precision"): a kernel is written once, templated on its storage type
// T = float, __nv_bfloat16 or __half (core/half.h). Every value is widened to float when it is
// read, computed on in float, and rounded once to T (round to nearest even) when it is stored.
// The launcher picks T from its first input's dtype (dispatch_storage: float32, uint16 = the
// bits of bfloat16, float16) and checks the other T arrays against it (expect_storage).
//
// Packs: one 16-byte load or store moves Pack<T>::N = 16 / sizeof(T) values, 4 floats or 8
// bf16 / fp16, so a warp moves 512 contiguous bytes per access whatever T is. A pack needs a
// 16-byte aligned address: the launcher vectorises only when every pointer is aligned and the
// row length (or element count) allows, and the kernels finish the ragged rest value by value.
//
// An element-wise kernel runs a grid-stride loop over packs (when every pointer is 16-byte
// aligned) and finishes the n % N tail with scalar accesses; with a misaligned pointer the same
// loop runs over single values. The grid is capped at a few waves' worth of resident blocks:
// each thread then handles several packs, amortising its index arithmetic, and the host
// executor starts fewer fibers.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <type_traits>

#include "core/half.h"
#include "core/kernel.h"

namespace scratch::kernels {

// ------------------------------------------------------------------------------- storage types
template <typename T>
struct StorageTag {
    using type = T;
};

// A dtype as the storage it stands for (uint16 arrays carry bfloat16 bits).
inline const char* storage_name(DType d) {
    return d == DType::U16 ? "bfloat16 (uint16 bits)" : dtype_name(d);
}

// Calls f(StorageTag<T>{}) with T the storage type of `t` (float32 -> float, uint16 ->
// __nv_bfloat16, float16 -> __half); any other dtype raises TypeError naming `t`.
template <class F>
decltype(auto) dispatch_storage(const Tensor& t, F&& f) {
    switch (t.dtype) {
        case DType::F32: return f(StorageTag<float>{});
        case DType::U16: return f(StorageTag<__nv_bfloat16>{});
        case DType::F16: return f(StorageTag<__half>{});
        default:
            throw TypeError(str(t.name, ": expected float32, bfloat16 (uint16 bits) or float16, got ",
                                dtype_name(t.dtype)));
    }
}

// `t` holds T like `like` (the array the launch took T from), C-contiguous.
template <typename T>
void expect_storage(const Tensor& t, const Tensor& like) {
    if (t.dtype != Storage<T>::dtype)
        throw TypeError(str(t.name, ": expected ", storage_name(Storage<T>::dtype), " like ", like.name,
                            ", got ", storage_name(t.dtype)));
    expect_contiguous(t);
}
template <typename T>
void expect_storage_output(const Tensor& t, const Tensor& like) {
    expect_storage<T>(t, like);
    expect_writable(t);
}

// --------------------------------------------------------------------------------------- packs
template <typename T>
struct Pack {
    static constexpr int N = 16 / int(sizeof(T));   // 4 floats, 8 bf16 / fp16
    float v[N];
};

// The N values at p (16-byte aligned), widened to float.
template <typename T>
__device__ __forceinline__ Pack<T> load_pack(const T* p) {
    Pack<T> u;
    if constexpr (std::is_same_v<T, float>) {
        const float4 f = load_float4(p);
        u.v[0] = f.x, u.v[1] = f.y, u.v[2] = f.z, u.v[3] = f.w;
    } else {
        SCRATCH_DEVICE_CHECK(is_aligned(p, 16), "misaligned 16-byte load (needs 16-byte alignment)");
        const int4 raw = *reinterpret_cast<const int4*>(p);
        const int w[4] = {raw.x, raw.y, raw.z, raw.w};
        for (int k = 0; k < 4; ++k) {
            const float2 f = unpack2<T>(uint32_t(w[k]));
            u.v[2 * k] = f.x, u.v[2 * k + 1] = f.y;
        }
    }
    return u;
}

// The N floats of u rounded to T (once each) and stored at p (16-byte aligned).
template <typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T>& u) {
    if constexpr (std::is_same_v<T, float>) {
        store_float4(p, make_float4(u.v[0], u.v[1], u.v[2], u.v[3]));
    } else {
        SCRATCH_DEVICE_CHECK(is_aligned(p, 16), "misaligned 16-byte store (needs 16-byte alignment)");
        int w[4];
        for (int k = 0; k < 4; ++k) w[k] = int(pack2<T>(u.v[2 * k], u.v[2 * k + 1]));
        *reinterpret_cast<int4*>(p) = make_int4(w[0], w[1], w[2], w[3]);
    }
}

// N floats (N a multiple of 4) stored unrounded at p (16-byte aligned): an fp32 output of a
// kernel that reads packs of T (the parameter gradients).
template <int N>
__device__ __forceinline__ void store_floats(float* p, const float (&v)[N]) {
    static_assert(N % 4 == 0, "whole float4s");
    for (int k = 0; k < N; k += 4) store_float4(p + k, make_float4(v[k], v[k + 1], v[k + 2], v[k + 3]));
}
template <int N>
__device__ __forceinline__ void load_floats(const float* p, float (&v)[N]) {
    static_assert(N % 4 == 0, "whole float4s");
    for (int k = 0; k < N; k += 4) {
        const float4 f = load_float4(p + k);
        v[k] = f.x, v[k + 1] = f.y, v[k + 2] = f.z, v[k + 3] = f.w;
    }
}

// ------------------------------------------------------------------------------ element-wise
constexpr int kElementwiseThreads = 256;
constexpr int kElementwiseMaxBlocks = 132 * 8;   // H100: 8 resident 256-thread blocks per SM

// Blocks for a grid-stride loop over `items` work items (packs or single values).
inline int elementwise_blocks(int64_t items) {
    const int64_t want = ceil_div<int64_t>(items, kElementwiseThreads);
    return int(want < kElementwiseMaxBlocks ? (want > 0 ? want : 1) : kElementwiseMaxBlocks);
}

// Work items of an element-wise launch over n values of T.
template <typename T>
int64_t elementwise_items(int64_t n, bool vec) {
    return vec ? ceil_div<int64_t>(n, Pack<T>::N) : n;
}

// The grid-stride loop itself: out[i] = f(a[i]) (or f(a[i], b[i])) over packs [0, n / N) when
// kVec, then single elements [first not covered, n); f works on floats, each result is rounded
// once to T. The element-wise kernels differ only in f.
template <typename T, bool kVec, class F>
__device__ __forceinline__ void map_elements(T* out, const T* a, int64_t n, F f) {
    constexpr int N = Pack<T>::N;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail = 0;
    if (kVec) {
        const int64_t packs = n / N;
        for (int64_t i = tid; i < packs; i += stride) {
            Pack<T> u = load_pack(a + N * i);
            for (int k = 0; k < N; ++k) u.v[k] = f(u.v[k]);
            store_pack(out + N * i, u);
        }
        tail = N * packs;
    }
    for (int64_t i = tail + tid; i < n; i += stride) out[i] = from_float<T>(f(to_float(a[i])));
}

template <typename T, bool kVec, class F>
__device__ __forceinline__ void map_elements(T* out, const T* a, const T* b, int64_t n, F f) {
    constexpr int N = Pack<T>::N;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
    int64_t tail = 0;
    if (kVec) {
        const int64_t packs = n / N;
        for (int64_t i = tid; i < packs; i += stride) {
            Pack<T> u = load_pack(a + N * i);
            const Pack<T> v = load_pack(b + N * i);
            for (int k = 0; k < N; ++k) u.v[k] = f(u.v[k], v.v[k]);
            store_pack(out + N * i, u);
        }
        tail = N * packs;
    }
    for (int64_t i = tail + tid; i < n; i += stride) out[i] = from_float<T>(f(to_float(a[i]), to_float(b[i])));
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
