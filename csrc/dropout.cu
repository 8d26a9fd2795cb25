// csrc/dropout.cu — inverted dropout with Philox-4x32-10 masks, bit for bit the reference's
// (docs/gradients/dropout.md, python/scratchgpt/reference/dropout.py). x and out are stored in
// T = float, __nv_bfloat16 or __half (csrc/elementwise.h); the mask does not depend on T.
//
// Element e of a tensor at offset `offset` is kept when word (g % 4) of
//     philox4x32_10(counter = (b lo, b hi, stream lo, stream hi), key = (seed lo, seed hi)),
//     g = offset + e, b = g / 4
// is >= threshold = floor(p * 2^32) (computed by the caller, passed as a uint32). Kept elements
// are scaled: out = R(x * (keep ? scale : 0)), scale = float32(1 / (1 - p)) — the reference's
// x * keep * scale with the same float32 product, then (bf16 / fp16) one rounding to T, so
// outputs match bit for bit too.
//
// Decomposition: one thread per group of E = 16 / sizeof(T) consecutive counters (E = 4 for
// float32, 8 for bf16 / fp16: one 16-byte pack of x), i.e. E / 4 generator calls of 4 words
// each; thread j of the grid owns group q = offset / E + j and the elements e = E q + w - offset
// (w = 0 .. E-1) that fall inside [0, n). When offset % E == 0, x and out are 16-byte aligned and
// the group is whole, the E elements move as one 16-byte pack; otherwise (the tensor's ragged
// first or last group, or an unaligned offset) element by element.
// Traffic: sizeof(T) bytes read + sizeof(T) written per element (4 + 4 in float32, 2 + 2 in
// bf16 / fp16), nothing else; 10 rounds of two 32x32->64 multiplies per 4 elements keep the
// kernel memory-bound on a GPU (in bf16 / fp16 the generator's share of the time doubles).
//
// Backward regenerates the mask instead of storing it: dx = R(dout * (keep ? scale : 0)) is the
// same kernel on dout with the same (seed, stream, offset). A stored uint8 mask would cost an
// extra byte per element written in the forward and read in the backward, plus activation
// memory at every dropout site; recomputing it is cheaper than moving it.
#include <cmath>
#include <cstdint>

#include "core/kernel.h"
#include "csrc/disjoint.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kThreads = 256;

struct Words {
    uint32_t w[4];
};

__host__ __device__ __forceinline__ void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
    const uint64_t p = uint64_t(a) * uint64_t(b);
    hi = uint32_t(p >> 32);
    lo = uint32_t(p);
}

// Philox-4x32-10 of Salmon et al. (SC'11), as reference/dropout.py writes it.
__device__ __forceinline__ Words philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                               uint32_t k0, uint32_t k1) {
    constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
    constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
    for (int round = 0; round < 10; ++round) {
        if (round) k0 += kW0, k1 += kW1;
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo(kM0, c0, hi0, lo0);
        mulhilo(kM1, c2, hi1, lo1);
        const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    }
    return {{c0, c1, c2, c3}};
}

__device__ __forceinline__ Words philox_block(uint64_t block, uint64_t seed, uint64_t stream) {
    return philox4x32_10(uint32_t(block), uint32_t(block >> 32), uint32_t(stream),
                         uint32_t(stream >> 32), uint32_t(seed), uint32_t(seed >> 32));
}

// out[e] = R(x[e] * (word(offset + e) >= threshold ? scale : 0)), e in [0, n); E values per thread.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
dropout_kernel(T* __restrict__ out, const T* __restrict__ x, int64_t n, uint32_t threshold,
               float scale, uint64_t seed, uint64_t stream, uint64_t offset, int64_t groups) {
    constexpr int E = Pack<T>::N;
    const int64_t j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
    if (j >= groups) return;
    const uint64_t group = offset / E + uint64_t(j);
    float keep[E];   // the factor of each element: scale or 0
    for (int k = 0; k < E / 4; ++k) {
        const Words r = philox_block(group * (E / 4) + k, seed, stream);
        for (int w = 0; w < 4; ++w) keep[4 * k + w] = r.w[w] >= threshold ? scale : 0.0f;
    }
    // element index of the group's first counter (may be negative for the first group)
    const int64_t e0 = int64_t(group * E - offset);
    if (kVec && e0 + E - 1 < n) {   // kVec: offset % E == 0, so e0 >= 0 and e0 % E == 0
        Pack<T> u = load_pack(x + e0);
        for (int k = 0; k < E; ++k) u.v[k] *= keep[k];
        store_pack(out + e0, u);
        return;
    }
    for (int k = 0; k < E; ++k) {
        const int64_t e = e0 + k;
        if (e >= 0 && e < n) out[e] = from_float<T>(to_float(x[e]) * keep[k]);
    }
}

// words[k] = the 4 words of Philox block first + k (the generator itself, for known answers).
__global__ void __launch_bounds__(kThreads)
philox_blocks_kernel(uint32_t* __restrict__ words, uint64_t seed, uint64_t stream, uint64_t first,
                     int blocks) {
    const int k = blockIdx.x * kThreads + threadIdx.x;
    if (k >= blocks) return;
    const Words r = philox_block(first + uint64_t(k), seed, stream);
    for (int w = 0; w < 4; ++w) words[4 * size_t(k) + w] = r.w[w];
}

}  // namespace

void dropout_apply(const Tensor& out, const Tensor& x, uint32_t threshold, float scale,
                   uint64_t seed, uint64_t stream_id, uint64_t offset, Stream stream) {
    dispatch_storage(x, [&](auto tag) {
        using T = typename decltype(tag)::type;
        constexpr int E = Pack<T>::N;
        expect_storage<T>(x, x);
        expect_storage_output<T>(out, x);
        expect_same_shape(out, x);
        expect_same_device({&x, &out});
        expect_disjoint(out, {&x});
        if (!(scale >= 1.0f) || !std::isfinite(scale))
            throw ValueError(str("scale: expected 1 / (1 - p) >= 1, got ", scale));
        const int64_t n = x.numel();
        if (n == 0) return;
        if (offset > UINT64_MAX - uint64_t(n - 1))
            throw ValueError(str("offset: ", offset, " + ", n, " elements passes 2**64"));
        const uint64_t last = offset + uint64_t(n - 1);
        const int64_t groups = int64_t(last / E - offset / E) + 1;
        const int grid = to_int(ceil_div<int64_t>(groups, kThreads), "dropout grid size");
        auto s = static_cast<cudaStream_t>(stream);
        if (offset % E == 0 && is_aligned(x.data, 16) && is_aligned(out.data, 16))
            launch("dropout_kernel<pack>", dropout_kernel<T, true>, dim3(grid), dim3(kThreads), 0, s,
                   out.ptr<T>(), x.ptr<T>(), n, threshold, scale, seed, stream_id, offset, groups);
        else
            launch("dropout_kernel<scalar>", dropout_kernel<T, false>, dim3(grid), dim3(kThreads), 0, s,
                   out.ptr<T>(), x.ptr<T>(), n, threshold, scale, seed, stream_id, offset, groups);
    });
}

void dropout_philox_blocks(const Tensor& words, uint64_t seed, uint64_t stream_id, uint64_t first,
                           Stream stream) {
    expect_output(words, DType::I32);   // uint32 words viewed as int32
    expect_ndim(words, 2, 2);
    expect_shape(words, {-1, 4});
    const int blocks = to_int(words.shape[0], "Philox blocks");
    if (blocks > 0 && first > UINT64_MAX - uint64_t(blocks - 1))
        throw ValueError(str("first: ", first, " + ", blocks, " blocks passes 2**64"));
    if (blocks == 0) return;
    launch("philox_blocks_kernel", philox_blocks_kernel, dim3(ceil_div(blocks, kThreads)),
           dim3(kThreads), 0, static_cast<cudaStream_t>(stream), words.ptr<uint32_t>(), seed,
           stream_id, first, blocks);
}

}  // namespace scratch::kernels
