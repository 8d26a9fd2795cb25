// csrc/attention.cu — causal and banded multi-head attention from the packed qkv
// (docs/gradients/attention.md, python/scratchgpt/reference/attention.py). Storage float32,
// bfloat16 or float16 (qkv's dtype picks; every kernel is templated on it, core/half.h): 16-bit
// values are widened to fp32 exactly, everything is computed in fp32 (scores, softmax state, sums)
// and each output is rounded once to the storage type; the log-sum-exp, the materialised
// probabilities and the backward's scratch stay fp32. With 16-bit storage the flash version runs
// its products on tensor cores (the section after version (b)); float32 runs the kernels below.
//
// qkv [B, T, 3C]: q, k, v are the three C-wide thirds of a row, head h at columns h*D .. h*D+D-1
// of each third (C = H*D). Query t attends keys t-w+1 .. t (w = window; no window: w = T, causal).
// y [B, T, C] has the heads merged. scale = 1/sqrt(D).
//
// Version (b), fused and tiled (FlashAttention-2 style; the default):
//   Tiles of 32 queries and 32 keys (a tile index equals a lane index). A block of 4 warps owns
//   one (batch, head) and one tile (grid (B*H, tiles); more than 65535 tiles take several
//   launches, see launch_tile_ranges): each warp owns 8 rows of it; when lanes walk the other tile,
//   lane j owns row j of it, and when they walk the head dimension, lane i owns columns
//   i, i+32, ... (ND = ceil(D/32) registers per row). Scores are dot products of a row
//   broadcast from shared memory (float4) with the lane's own row (odd row stride: no bank
//   conflicts); probabilities go through 1 KiB of per-warp shared memory to be broadcast again.
//   Tiles wholly outside the causal/banded window are never visited, so a layer costs O(T*w).
//   - forward: a block per query tile loops over its key tiles with the online softmax (running
//     max m, running sum l kept per lane and summed once at the end); writes y and the per-row
//     log-sum-exp lse = m + log(l) [B, H, T]. Reads q once, each k/v tile once per query tile;
//     never stores T x T.
//   - backward: Di = rowsum(dY_i * Y_i) (a warp per row), then two passes that recompute
//     P = exp(S - lse) tile by tile: a block per key tile accumulates dK, dV over its query
//     tiles; a block per query tile accumulates dQ over its key tiles. Every gradient element is
//     summed by one thread in a fixed order: no atomics, bit-reproducible.
//   Memory: O(B*H*T) beyond the inputs and outputs (lse, Di).
//   Traffic: q (and dy, lse, Di for dQ) once per query tile; each k/v tile once per query tile
//   that sees it (causal: T/64 times on average, banded: about w/32 + 1 times; these repeats
//   hit L2); y, dqkv written once; nothing T x T. Global loads are float4 when D % 4 == 0.
//   FMAs per shared-memory load: scores take 32 FMAs per 12 loads (8 broadcast float4 + 4 of the
//   lane's row), P.V 8*ND FMAs per 2 + ND loads: 2.7-5, on the FMA-bound side of fp32 CUDA cores
//   (tensor cores come with bf16). Registers: 8 x ND accumulators per lane (two sets in dK/dV);
//   launch bounds keep 3-4 blocks (12-16 warps) per SM without spills.
//   These SIMT kernels also serve bf16 / fp16 where the tensor-core ones cannot: a head width that
//   is not a multiple of 8, or an array that is not 16-byte aligned (products and P in fp32).
//
// Version (b) on tensor cores (bf16 / fp16 storage, D a multiple of 8, D <= 128; core/mma.h):
//   mma.sync m16n8k16 with fp32 accumulators, FlashAttention-2's split. Tiles of 64 queries and
//   64 keys; a block of 4 warps owns one (batch, head) and one tile, warp w owns its rows
//   16w .. 16w+15, and a lane holds the accumulator elements of rows g = lane/4 and g+8, columns
//   2(lane%4) and +1 of each 8-wide n-tile (the PTX fragment layout). One instantiation serves
//   D <= DP = 32, 64 or 128 (k-steps and n-tiles past D are skipped; their columns are zero).
//   Shared tiles are [64][DP + 8] elements: each row padded by 16 bytes, so the 8 rows an ldmatrix
//   reads start in 8 different 16-byte bank groups (conflict-free) and every row stays 16-byte
//   aligned for cp.async. Tiles stream in through cp.async, two stages: tile j+1's copy is in
//   flight while tile j is multiplied; one barrier per tile, after the wait for tile j, both
//   publishes it and frees tile j-1's stage for tile j+1's copy.
//   - forward: Q's 16 rows per warp are loaded once into A fragments (ldmatrix); per key tile,
//     S = Q K^T (K as the [N, K] B operand: ldmatrix), scaled and masked in fp32, the online
//     softmax (running max m and partial sums l in fp32, rows reduced over the 4 lanes of a quad by
//     shuffles), then O += P V with P ROUNDED TO T as the A operand (accum_to_a: the accumulator
//     layout is the A layout, no data moves) and V through ldmatrix .trans. l sums the unrounded
//     fp32 p, as FlashAttention-2 does, so y = sum_j R(p_j) v_j / sum_j p_j: P's rounding is the
//     kernel's one rounding beyond the output's. y = O / l is rounded once to T, staged in the
//     warp's own rows of the Q tile and written 16 bytes per lane; lse = m + log(l) in fp32.
//     16-key chunks that no row of a warp can see are skipped (the diagonal tile's upper part).
//   - backward: Di = rowsum(dy * y) in fp32 as above, then two passes, no atomics, every gradient
//     element summed by one lane in a fixed order (bit-reproducible):
//     dK/dV: a block per key tile, warp w owns keys 16w .. 16w+15 and walks the query tiles 16
//       queries at a time: S^T = K Q^T and dP^T = V dY^T on tensor cores, P^T = exp(scale S^T -
//       lse) and dS^T = P^T (dP^T - Di) in fp32, then dV += P^T dY and dK += dS^T Q with P^T and
//       dS^T rounded to T as A operands, dY and Q as B operands through ldmatrix .trans.
//     dQ: a block per query tile, warp w owns queries 16w .. 16w+15 (Q and dY in A fragments,
//       loaded once) and walks the key tiles 16 keys at a time: S, dP, P, dS as above, then
//       dQ += dS K with dS rounded to T and K through ldmatrix .trans.
//     dK scale, dV and dQ scale are rounded once to T when written (through shared memory, 16 bytes
//     per lane).
//   Shared memory (bytes, E = 2 (DP + 8) * 64 per tile): forward 5E (Q; two stages of K, V) = 25,
//   45, 85 KiB at DP = 32, 64, 128; dK/dV 6E + 1 KiB (K, V; two stages of Q, dY, lse, Di) = 31,
//   55, 103 KiB; dQ 6E (Q, dY; two stages of K, V) = 30, 54, 102 KiB. Registers (accumulators per
//   lane): forward DP/2 (O) + 32 (S) + DP/4 fragment registers (Q); dK/dV DP (dK, dV) + 16;
//   dQ DP/2 + 16 + DP/2 (Q, dY fragments). Launch bounds: 4 blocks per SM up to DP = 64 (3 for
//   dK/dV at DP = 64), 2 at DP = 128 (255 registers), where shared memory holds 1 block per SM on
//   sm_80 (164 KiB) and 2 on sm_90 (227 KiB).
//   Traffic: as the SIMT version with 64-row tiles (k/v re-read once per query tile that sees them,
//   causal: T/128 times on average, from L2), 2-byte elements: qkv read about (1 + T/128) times,
//   y and dqkv written once. Per k-step of 16, a warp issues one ldmatrix.x4 per two mma (K) or
//   per mma pair of P V: the tensor cores, not shared memory, set the pace.
//
// Version (a), materialised (for study and comparison): S = Q K^T by a batched tiled matmul
// (32x32 output tiles, 16x16 threads with 2x2 outputs each; score tiles entirely outside the
// window are skipped), then one fused kernel per row (a warp per row) scales, masks and applies
// the softmax in place (P, zeros outside the window), then Y = P V by the same matmul. Backward:
// dP = dY V^T, dS = P * (dP - rowsum(dP * P)) in place (a warp per row), dV = P^T dY,
// dQ = dS K * scale, dK = dS^T Q * scale, written straight into dqkv. Memory: 2*B*H*T*T floats;
// traffic about 3 (forward) and 6 (backward) passes over B*H*T*T floats, besides the matmuls' reads.
//
// Decode (generation with a key/value cache): a block per (batch, head, query); its 4 warps take
// turns over the cached keys in chunks of 32, each with its own online softmax (lane j scores key
// j of the chunk; lanes own head-dimension columns for the weighted sum of values), and merge
// their partial results once in shared memory (split-K over the keys). Traffic: the visible keys
// and values once (a lane reads its key row through L1, float4 when D % 4 == 0; value rows are
// read by the warp across columns, coalesced), q once, y written once: bandwidth-bound, as
// decoding is.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "core/half.h"
#include "core/kernel.h"
#include "core/mma.h"
#include "csrc/launchers.h"

// Full unrolling matters for nvcc (register arrays indexed by loop counters); g++ ignores it.
#if defined(__CUDACC__)
#define ATTN_UNROLL _Pragma("unroll")
#define ATTN_PRAGMA(x) _Pragma(#x)
#define ATTN_UNROLL_N(n) ATTN_PRAGMA(unroll n)
#else
#define ATTN_UNROLL_N(n)
#define ATTN_UNROLL
#endif

namespace scratch::kernels {
namespace {

constexpr int kTile = 32;                      // queries per query tile = keys per key tile
constexpr int kWarps = 4;                      // warps per flash block
constexpr int kRows = kTile / kWarps;          // tile rows per warp
constexpr int kFlashThreads = 32 * kWarps;
// Resident blocks per SM the register budget aims at (65536 registers / (blocks * 128 threads)):
// 4 (128 registers) for heads up to 64 wide, 3 (170) beyond, where the 8 x ND accumulators need it.
constexpr int flash_min_blocks(int nd) { return nd <= 2 ? 4 : 3; }
// The dK/dV pass holds two accumulator sets (16 x ND registers) and 41.5 KiB of shared memory at
// D = 64, which already limits sm_80 to 3 blocks per SM: budget 170 registers, never spill.
constexpr int kDkdvMinBlocks = 3;
constexpr int kMaxHeadDim = 128;
constexpr float kNegInf = -INFINITY;

// Column strides in shared memory: `bcast` tiles are read a row at a time by the whole warp
// (float4 broadcasts: stride a multiple of 4), `lane` tiles are read a row per lane (stride odd:
// 32 lanes hit 32 banks). Columns D .. stride-1 are zero.
__host__ __device__ __forceinline__ int bcast_stride(int D) { return (D + 3) / 4 * 4; }
__host__ __device__ __forceinline__ int lane_stride(int D) { return bcast_stride(D) + 1; }

// Key `key` is visible from query `t`: inside the causal window of width w and inside the sequence.
__device__ __forceinline__ bool visible(int t, int key, int w, int T) {
    return t < T && key <= t && key > t - w;
}


// Shapes every flash kernel shares.
struct Shape {
    int B, T, H, D, w;   // w: window width (T when causal)
    float scale;
    int tile0;           // the flash kernels' first tile along T in this launch (launch_tile_ranges)
    bool vec4;           // D % 4 == 0 and the arrays 16-byte aligned: float4 global loads
    __host__ __device__ int C() const { return H * D; }
};


// Copy rows row0 .. row0+31 of one head's third of qkv (or of a [B, T, C] array: row_stride C)
// into shared memory with the given column stride; rows past T and columns D .. stride-1 are
// zero. Consecutive threads take consecutive columns of a row (coalesced), 16 bytes at a time
// when s.vec4 (then D is a multiple of 4 and columns D .. stride-1 are never read). T: the
// storage type of src (float, or bf16 / fp16 widened to float here: exact).
template <typename T>
__device__ __forceinline__ void load_tile(float* __restrict__ dst, int stride,
                                          const T* __restrict__ src, size_t row_stride,
                                          int row0, const Shape& s) {
    if constexpr (std::is_same_v<T, float>) {
        if (s.vec4) {
            const int words = s.D / 4;
            for (int e = threadIdx.x; e < kTile * words; e += kFlashThreads) {
                const int r = e / words, c = 4 * (e - r * words);
                const float4 v = row0 + r < s.T ? load_float4(src + size_t(row0 + r) * row_stride + c)
                                                : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                float* out = dst + r * stride + c;
                if (stride % 4 == 0) {
                    store_float4(out, v);
                } else {
                    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
                }
            }
            return;
        }
    }
    for (int e = threadIdx.x; e < kTile * stride; e += kFlashThreads) {
        const int r = e / stride, d = e - r * stride;
        dst[e] = (row0 + r < s.T && d < s.D) ? to_float(src[size_t(row0 + r) * row_stride + d]) : 0.0f;
    }
}

// acc[r] = dot(bcast row r, own row) for the warp's kRows rows (bcast: the warp's first row,
// stride bcast_stride(D); own: the lane's row, padded columns zero on both sides).
__device__ __forceinline__ void row_dots(float (&acc)[kRows], const float* __restrict__ bcast,
                                         const float* __restrict__ own, int D) {
    const int Dp = bcast_stride(D);
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
    ATTN_UNROLL_N(1)   // kept rolled: unrolling hoists loads into registers the accumulators need
    for (int d = 0; d < Dp; d += 4) {
        const float b0 = own[d], b1 = own[d + 1], b2 = own[d + 2], b3 = own[d + 3];
        ATTN_UNROLL
        for (int r = 0; r < kRows; ++r) {
            const float4 a = load_float4(bcast + r * Dp + d);
            acc[r] = fmaf(a.x, b0, fmaf(a.y, b1, fmaf(a.z, b2, fmaf(a.w, b3, acc[r]))));
        }
    }
}

// acc[r][n] += sum_j weights[j][r] * M[j][lane + 32n] over the 32 rows j of tile M (row stride
// `stride`); weights is the warp's [32][kRows] block of shared memory.
template <int ND>
__device__ __forceinline__ void accumulate(float (&acc)[kRows][ND], const float* __restrict__ weights,
                                           const float* __restrict__ M, int stride, int D) {
    const int lane = threadIdx.x & 31;
    ATTN_UNROLL_N(2)
    for (int j = 0; j < kTile; ++j) {
        const float4 w0 = load_float4(weights + j * kRows), w1 = load_float4(weights + j * kRows + 4);
        const float w[kRows] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) {
            const int d = lane + 32 * n;
            const float m = d < D ? M[j * stride + d] : 0.0f;
            ATTN_UNROLL
            for (int r = 0; r < kRows; ++r) acc[r][n] = fmaf(w[r], m, acc[r][n]);
        }
    }
}

// ------------------------------------------------------------------------------ flash forward
// grid (B*H, query tiles s.tile0 ..), heaviest (last) query tiles first; block kFlashThreads.
template <typename Store, int ND>
__global__ void __launch_bounds__(kFlashThreads, flash_min_blocks(ND))
flash_forward_kernel(Store* __restrict__ y, float* __restrict__ lse, const Store* __restrict__ qkv,
                     Shape s) {
    SCRATCH_DYNAMIC_SHARED(float, smem);
    const int T = s.T, D = s.D, C = s.C(), Dp = bcast_stride(D), Ds = lane_stride(D);
    float* q_sh = smem;                       // [32][Dp]
    float* k_sh = q_sh + kTile * Dp;          // [32][Ds]
    float* v_sh = k_sh + kTile * Ds;          // [32][Ds]
    float* p_sh = v_sh + kTile * Ds;          // [kWarps][32][kRows]
    const int bh = blockIdx.x, b = bh / s.H, h = bh % s.H;
    const int q0 = (s.tile0 + gridDim.y - 1 - blockIdx.y) * kTile;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = warp * kRows;
    const size_t row_stride = size_t(3) * C;
    const Store* base = qkv + size_t(b) * T * row_stride + size_t(h) * D;
    float* p_warp = p_sh + warp * kTile * kRows;

    load_tile(q_sh, Dp, base, row_stride, q0, s);
    float o[kRows][ND], m[kRows], l[kRows];
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r) {
        m[r] = kNegInf, l[r] = 0.0f;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) o[r][n] = 0.0f;
    }
    const int q_last = min(q0 + kTile, T) - 1;
    const int k_first = max(0, q0 - s.w + 1);
    for (int k0 = k_first / kTile * kTile; k0 <= q_last; k0 += kTile) {
        __syncthreads();   // the previous tile's k/v, and p_warp, are no longer read
        load_tile(k_sh, Ds, base + C, row_stride, k0, s);
        load_tile(v_sh, Ds, base + 2 * C, row_stride, k0, s);
        __syncthreads();
        float sc[kRows];
        row_dots(sc, q_sh + row0 * Dp, k_sh + lane * Ds, D);
        const int key = k0 + lane;
        ATTN_UNROLL
        for (int r = 0; r < kRows; ++r) {
            const bool ok = visible(q0 + row0 + r, key, s.w, T);
            const float x = ok ? sc[r] * s.scale : kNegInf;
            const float m_new = fmaxf(m[r], warp_max(x));
            // m_new = -inf: no key of the row seen yet; nothing to rescale, p = 0
            const float alpha = m[r] == kNegInf ? 0.0f : __expf(m[r] - m_new);
            const float p = ok ? __expf(x - m_new) : 0.0f;
            l[r] = fmaf(l[r], alpha, p);
            ATTN_UNROLL
            for (int n = 0; n < ND; ++n) o[r][n] *= alpha;
            m[r] = m_new;
            p_warp[lane * kRows + r] = p;
        }
        __syncwarp();
        accumulate<ND>(o, p_warp, v_sh, Ds, D);
    }
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r) {
        const float sum = warp_sum(l[r]);   // each lane summed its own keys; m is warp-uniform
        const int t = q0 + row0 + r;
        if (t >= T) continue;
        const float inv = 1.0f / sum;
        Store* yr = y + (size_t(b) * T + t) * C + size_t(h) * D;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n)
            if (lane + 32 * n < D) yr[lane + 32 * n] = from_float<Store>(o[r][n] * inv);
        if (lane == 0) lse[size_t(bh) * T + t] = m[r] + logf(sum);
    }
}

// ------------------------------------------------------------------------------ flash backward
// Di = sum_d dy * y for each (b, t, h): a warp per row, 8 rows per block. di is [B, H, T].
template <typename T>
__global__ void __launch_bounds__(256)
flash_backward_rowdot_kernel(float* __restrict__ di, const T* __restrict__ dy,
                             const T* __restrict__ y, Shape s) {
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int rows = s.B * s.T * s.H;
    if (row >= rows) return;   // whole warps leave; no barrier follows
    const T* a = dy + size_t(row) * s.D;   // rows of [B, T, H, D] are contiguous
    const T* c = y + size_t(row) * s.D;
    float sum = 0.0f;
    for (int d = lane; d < s.D; d += 32) sum = fmaf(to_float(a[d]), to_float(c[d]), sum);
    sum = warp_sum(sum);
    const int h = row % s.H, bt = row / s.H, t = bt % s.T, b = bt / s.T;
    if (lane == 0) di[(size_t(b) * s.H + h) * s.T + t] = sum;
}

// dK, dV of one key tile: grid (B*H, key tiles s.tile0 ..); warps own 8 keys, lanes the tile's
// queries.
template <typename Store, int ND>
__global__ void __launch_bounds__(kFlashThreads, kDkdvMinBlocks)
flash_backward_dkdv_kernel(Store* __restrict__ dqkv, const Store* __restrict__ dy,
                           const Store* __restrict__ qkv, const float* __restrict__ lse,
                           const float* __restrict__ di, Shape s) {
    SCRATCH_DYNAMIC_SHARED(float, smem);
    const int T = s.T, D = s.D, C = s.C(), Dp = bcast_stride(D), Ds = lane_stride(D);
    float* k_sh = smem;                        // [32][Dp]
    float* v_sh = k_sh + kTile * Dp;           // [32][Dp]
    float* q_sh = v_sh + kTile * Dp;           // [32][Ds]
    float* dy_sh = q_sh + kTile * Ds;          // [32][Ds]
    float* w_sh = dy_sh + kTile * Ds;          // [kWarps][2][32][kRows]: P and dS
    float* lse_sh = w_sh + kWarps * 2 * kTile * kRows;   // [32]
    float* di_sh = lse_sh + kTile;                       // [32]
    const int bh = blockIdx.x, b = bh / s.H, h = bh % s.H;
    const int k0 = (s.tile0 + blockIdx.y) * kTile;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = warp * kRows;
    const size_t row_stride = size_t(3) * C;
    const Store* base = qkv + size_t(b) * T * row_stride + size_t(h) * D;
    const Store* dy_base = dy + size_t(b) * T * C + size_t(h) * D;
    float* p_warp = w_sh + warp * 2 * kTile * kRows;
    float* ds_warp = p_warp + kTile * kRows;

    load_tile(k_sh, Dp, base + C, row_stride, k0, s);
    load_tile(v_sh, Dp, base + 2 * C, row_stride, k0, s);
    float dk[kRows][ND], dv[kRows][ND];
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r)
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) dk[r][n] = 0.0f, dv[r][n] = 0.0f;

    const int q_last = min(T - 1, min(k0 + kTile - 1, T - 1) + s.w - 1);
    for (int q0 = k0; q0 <= q_last; q0 += kTile) {   // k0 is a tile boundary, so is q0
        __syncthreads();   // the previous tile's q/dy/lse/di, and p_warp, ds_warp, are no longer read
        load_tile(q_sh, Ds, base, row_stride, q0, s);
        load_tile(dy_sh, Ds, dy_base, C, q0, s);
        if (threadIdx.x < kTile) {
            const int t = q0 + threadIdx.x;
            lse_sh[threadIdx.x] = t < T ? lse[size_t(bh) * T + t] : 0.0f;
            di_sh[threadIdx.x] = t < T ? di[size_t(bh) * T + t] : 0.0f;
        }
        __syncthreads();
        float sc[kRows], dp[kRows];
        row_dots(sc, k_sh + row0 * Dp, q_sh + lane * Ds, D);
        row_dots(dp, v_sh + row0 * Dp, dy_sh + lane * Ds, D);
        const int t = q0 + lane;
        const float lse_t = lse_sh[lane], di_t = di_sh[lane];
        ATTN_UNROLL
        for (int r = 0; r < kRows; ++r) {
            const bool ok = visible(t, k0 + row0 + r, s.w, T);
            const float p = ok ? __expf(sc[r] * s.scale - lse_t) : 0.0f;
            p_warp[lane * kRows + r] = p;
            ds_warp[lane * kRows + r] = p * (dp[r] - di_t);
        }
        __syncwarp();
        accumulate<ND>(dv, p_warp, dy_sh, Ds, D);
        accumulate<ND>(dk, ds_warp, q_sh, Ds, D);
    }
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r) {
        const int key = k0 + row0 + r;
        if (key >= T) continue;
        Store* out = dqkv + (size_t(b) * T + key) * row_stride + size_t(h) * D;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) {
            const int d = lane + 32 * n;
            if (d < D) {
                out[C + d] = from_float<Store>(dk[r][n] * s.scale);
                out[2 * C + d] = from_float<Store>(dv[r][n]);
            }
        }
    }
}

// dQ of one query tile: grid (B*H, query tiles s.tile0 ..), heaviest first; warps own 8
// queries, lanes the tile's keys.
template <typename Store, int ND>
__global__ void __launch_bounds__(kFlashThreads, flash_min_blocks(ND))
flash_backward_dq_kernel(Store* __restrict__ dqkv, const Store* __restrict__ dy,
                         const Store* __restrict__ qkv, const float* __restrict__ lse,
                         const float* __restrict__ di, Shape s) {
    SCRATCH_DYNAMIC_SHARED(float, smem);
    const int T = s.T, D = s.D, C = s.C(), Dp = bcast_stride(D), Ds = lane_stride(D);
    float* q_sh = smem;                        // [32][Dp]
    float* dy_sh = q_sh + kTile * Dp;          // [32][Dp]
    float* k_sh = dy_sh + kTile * Dp;          // [32][Ds]
    float* v_sh = k_sh + kTile * Ds;           // [32][Ds]
    float* ds_sh = v_sh + kTile * Ds;          // [kWarps][32][kRows]
    const int bh = blockIdx.x, b = bh / s.H, h = bh % s.H;
    const int q0 = (s.tile0 + gridDim.y - 1 - blockIdx.y) * kTile;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, row0 = warp * kRows;
    const size_t row_stride = size_t(3) * C;
    const Store* base = qkv + size_t(b) * T * row_stride + size_t(h) * D;
    float* ds_warp = ds_sh + warp * kTile * kRows;

    load_tile(q_sh, Dp, base, row_stride, q0, s);
    load_tile(dy_sh, Dp, dy + size_t(b) * T * C + size_t(h) * D, C, q0, s);
    float dq[kRows][ND], lse_r[kRows], di_r[kRows];
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r) {
        const int t = q0 + row0 + r;
        lse_r[r] = t < T ? lse[size_t(bh) * T + t] : 0.0f;
        di_r[r] = t < T ? di[size_t(bh) * T + t] : 0.0f;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) dq[r][n] = 0.0f;
    }
    const int q_last = min(q0 + kTile, T) - 1;
    const int k_first = max(0, q0 - s.w + 1);
    for (int k0 = k_first / kTile * kTile; k0 <= q_last; k0 += kTile) {
        __syncthreads();   // the previous tile's k/v, and ds_warp, are no longer read
        load_tile(k_sh, Ds, base + C, row_stride, k0, s);
        load_tile(v_sh, Ds, base + 2 * C, row_stride, k0, s);
        __syncthreads();
        float sc[kRows], dp[kRows];
        row_dots(sc, q_sh + row0 * Dp, k_sh + lane * Ds, D);
        row_dots(dp, dy_sh + row0 * Dp, v_sh + lane * Ds, D);
        const int key = k0 + lane;
        ATTN_UNROLL
        for (int r = 0; r < kRows; ++r) {
            const bool ok = visible(q0 + row0 + r, key, s.w, T);
            const float p = ok ? __expf(sc[r] * s.scale - lse_r[r]) : 0.0f;
            ds_warp[lane * kRows + r] = p * (dp[r] - di_r[r]);
        }
        __syncwarp();
        accumulate<ND>(dq, ds_warp, k_sh, Ds, D);
    }
    ATTN_UNROLL
    for (int r = 0; r < kRows; ++r) {
        const int t = q0 + row0 + r;
        if (t >= T) continue;
        Store* out = dqkv + (size_t(b) * T + t) * row_stride + size_t(h) * D;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n)
            if (lane + 32 * n < D) out[lane + 32 * n] = from_float<Store>(dq[r][n] * s.scale);
    }
}

// ------------------------------------------------------------------------- materialised (a)
// One operand of a batched matmul: element (z, i, j) at p + b*sb + h*sh + i*sr + j*sc with
// b = z / H, h = z % H. Transposes are strides. E: float (the probabilities and their gradients)
// or the storage type of qkv, dy, y and dqkv.
template <typename E>
struct Operand {
    E* p;
    int64_t sb, sh, sr, sc;
    __device__ __forceinline__ E* at(int b, int h) const { return p + b * sb + h * sh; }
};

constexpr int kMmTile = 32;

// C[z] = alpha * A[z] (M x K) . B[z] (K x N); a block per 32x32 tile of C, 16x16 threads with
// 2x2 outputs each (rows ty, ty+16; columns tx, tx+16). score_window > 0: C is a [queries x
// keys] score matrix and tiles with no visible entry are skipped (left unwritten; the row
// kernels never read them). Operands are widened to float when loaded (exact), the sums are
// fp32, and each output element is rounded once to TC.
template <typename TC, typename TA, typename TB>
__global__ void __launch_bounds__(256)
batched_matmul_kernel(Operand<TC> c, Operand<TA> a, Operand<TB> bm, int M, int N, int K, int H, float alpha,
                      int score_window) {
    SCRATCH_SHARED(float, a_sh, [kMmTile][kMmTile + 1]);   // [i][k]
    SCRATCH_SHARED(float, b_sh, [kMmTile][kMmTile + 1]);   // [k][j]
    const int i0 = blockIdx.y * kMmTile, j0 = blockIdx.x * kMmTile;
    if (score_window > 0 && (j0 > i0 + kMmTile - 1 || j0 + kMmTile - 1 <= i0 - score_window))
        return;   // the whole block leaves before any barrier
    const int z = blockIdx.z, b = z / H, h = z % H;
    const TA* A = a.at(b, h);
    const TB* Bp = bm.at(b, h);
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (int k0 = 0; k0 < K; k0 += kMmTile) {
        // consecutive threads walk the operand's unit-stride axis (coalesced; the +1 column
        // keeps the transposed shared-memory stores free of bank conflicts)
        for (int e = tid; e < kMmTile * kMmTile; e += 256) {
            const int hi = e / kMmTile, lo = e % kMmTile;
            int r = a.sc == 1 ? hi : lo, q = a.sc == 1 ? lo : hi;
            a_sh[r][q] = (i0 + r < M && k0 + q < K) ? to_float(A[(i0 + r) * a.sr + (k0 + q) * a.sc]) : 0.0f;
            r = bm.sc == 1 ? hi : lo, q = bm.sc == 1 ? lo : hi;
            b_sh[r][q] = (k0 + r < K && j0 + q < N) ? to_float(Bp[(k0 + r) * bm.sr + (j0 + q) * bm.sc]) : 0.0f;
        }
        __syncthreads();
        ATTN_UNROLL
        for (int k = 0; k < kMmTile; ++k) {
            const float a0 = a_sh[ty][k], a1 = a_sh[ty + 16][k];
            const float b0 = b_sh[k][tx], b1 = b_sh[k][tx + 16];
            acc[0][0] = fmaf(a0, b0, acc[0][0]);
            acc[0][1] = fmaf(a0, b1, acc[0][1]);
            acc[1][0] = fmaf(a1, b0, acc[1][0]);
            acc[1][1] = fmaf(a1, b1, acc[1][1]);
        }
        __syncthreads();
    }
    TC* out = c.at(b, h);
    for (int u = 0; u < 2; ++u)
        for (int v = 0; v < 2; ++v) {
            const int i = i0 + ty + 16 * u, j = j0 + tx + 16 * v;
            if (i < M && j < N) out[i * c.sr + j * c.sc] = from_float<TC>(alpha * acc[u][v]);
        }
}

// In place on scores [B*H*T, T]: p = softmax(scale * s) over the visible keys, 0 elsewhere.
// A warp per row; lanes keep their own running max and sum (one pass), merged by shuffles.
__global__ void __launch_bounds__(256)
masked_softmax_kernel(float* __restrict__ scores, int rows, int T, int w, float scale) {
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    float* sr = scores + size_t(row) * T;
    const int t = row % T, lo = max(0, t - w + 1);
    float m = kNegInf, l = 0.0f;
    for (int j = lo + lane; j <= t; j += 32) {
        const float x = sr[j] * scale;
        const float m_new = fmaxf(m, x);
        l = l * __expf(m - m_new) + __expf(x - m_new);   // m = -inf: exp(-inf) = 0
        m = m_new;
    }
    const float row_max = warp_max(m);
    const float sum = warp_sum(m == kNegInf ? 0.0f : l * __expf(m - row_max));
    const float inv = 1.0f / sum;
    for (int j = lane; j < T; j += 32)
        sr[j] = (j >= lo && j <= t) ? __expf(sr[j] * scale - row_max) * inv : 0.0f;
}

// In place on dP [B*H*T, T]: dS = P * (dP - sum_j dP_j P_j) on visible keys, 0 elsewhere.
__global__ void __launch_bounds__(256)
masked_softmax_backward_kernel(float* __restrict__ dprobs, const float* __restrict__ probs,
                               int rows, int T, int w) {
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= rows) return;
    float* dr = dprobs + size_t(row) * T;
    const float* pr = probs + size_t(row) * T;
    const int t = row % T, lo = max(0, t - w + 1);
    float dot = 0.0f;
    for (int j = lo + lane; j <= t; j += 32) dot = fmaf(dr[j], pr[j], dot);
    dot = warp_sum(dot);
    for (int j = lane; j < T; j += 32)
        dr[j] = (j >= lo && j <= t) ? pr[j] * (dr[j] - dot) : 0.0f;
}

// ----------------------------------------------------------------------------------- decode
constexpr int kDecodeWarps = 4;

// q [B, H, Tn, D] at positions t0 .. t0+Tn-1 against k, v [B, H, S, D]; y [B, Tn, H*D].
// A block per (b, h, i): its warps take every kDecodeWarps-th chunk of 32 keys, each with its own
// online softmax (m, l, o), and meet once in shared memory, where warp 0 merges the partials
// (split-K: a single sequence decoding with few heads still fills the GPU 4 warps per head).
template <typename T, int ND>
__global__ void __launch_bounds__(32 * kDecodeWarps)
decode_kernel(T* __restrict__ y, const T* __restrict__ q, const T* __restrict__ k,
              const T* __restrict__ v, int H, int Tn, int S, int D, int t0, int w,
              float scale, bool vec4) {
    SCRATCH_SHARED(float, p_sh, [kDecodeWarps][32]);
    SCRATCH_SHARED(float, o_sh, [kDecodeWarps][ND * 32]);
    SCRATCH_SHARED(float, m_sh, [kDecodeWarps]);
    SCRATCH_SHARED(float, l_sh, [kDecodeWarps]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = blockIdx.x;   // (b * H + h) * Tn + i
    const int i = g % Tn, bh = g / Tn, h = bh % H, b = bh / H;
    const int t = t0 + i;
    const T* qr = q + size_t(g) * D;
    const T* kb = k + size_t(bh) * S * D;
    const T* vb = v + size_t(bh) * S * D;
    const int last = min(t, S - 1), first = max(0, t - w + 1);
    float o[ND], m = kNegInf, l = 0.0f;
    ATTN_UNROLL
    for (int n = 0; n < ND; ++n) o[n] = 0.0f;
    for (int j0 = first + 32 * warp; j0 <= last; j0 += 32 * kDecodeWarps) {
        const int j = j0 + lane;
        float x = kNegInf;
        if (j <= last) {
            // the q row is the same address for every lane (a broadcast); lane j walks key row j
            const T* kr = kb + size_t(j) * D;
            float dot = 0.0f;
            if constexpr (std::is_same_v<T, float>) {
                if (vec4) {
                    for (int d = 0; d < D; d += 4) {
                        const float4 a = load_float4(qr + d), c = load_float4(kr + d);
                        dot = fmaf(a.x, c.x, fmaf(a.y, c.y, fmaf(a.z, c.z, fmaf(a.w, c.w, dot))));
                    }
                } else {
                    for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
                }
            } else {   // bf16 / fp16: widened (exact), products and sums fp32
                for (int d = 0; d < D; ++d) dot = fmaf(to_float(qr[d]), to_float(kr[d]), dot);
            }
            x = dot * scale;
        }
        const float m_new = fmaxf(m, warp_max(x));   // finite: key j0 is visible
        const float alpha = __expf(m - m_new);       // m = -inf on the warp's first chunk: 0
        const float p = j <= last ? __expf(x - m_new) : 0.0f;
        l = fmaf(l, alpha, p);
        m = m_new;
        p_sh[warp][lane] = p;
        __syncwarp();
        const int count = min(32, last - j0 + 1);
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) o[n] *= alpha;
        ATTN_UNROLL_N(4)
        for (int jj = 0; jj < count; ++jj) {   // a warp reads a value row across columns: coalesced
            const float pj = p_sh[warp][jj];
            const T* vr = vb + size_t(j0 + jj) * D;
            ATTN_UNROLL
            for (int n = 0; n < ND; ++n)
                if (lane + 32 * n < D) o[n] = fmaf(pj, to_float(vr[lane + 32 * n]), o[n]);
        }
        // Kept though no test can miss it (tests/mutation/allowed_barriers.txt): the next chunk's
        // warp_max shuffles already make every lane wait for the others before it stores p_sh,
        // on the host and the GPU, but shuffles do not order shared memory; only this barrier
        // keeps a lane's next store behind the other lanes' loads above. It can go only if p_sh's
        // exchange becomes shuffles.
        __syncwarp();   // p_sh is rewritten by the next chunk (memory order; see above)
    }
    // merge: y = sum_w e^(m_w - M) o_w / sum_w e^(m_w - M) l_w; a warp without keys has m = -inf
    l = warp_sum(l);
    ATTN_UNROLL
    for (int n = 0; n < ND; ++n) o_sh[warp][lane + 32 * n] = o[n];
    if (lane == 0) m_sh[warp] = m, l_sh[warp] = l;
    __syncthreads();
    if (warp != 0) return;   // no barrier follows
    float M = kNegInf;
    for (int u = 0; u < kDecodeWarps; ++u) M = fmaxf(M, m_sh[u]);
    float acc[ND], sum = 0.0f;
    ATTN_UNROLL
    for (int n = 0; n < ND; ++n) acc[n] = 0.0f;
    for (int u = 0; u < kDecodeWarps; ++u) {
        const float factor = m_sh[u] == kNegInf ? 0.0f : __expf(m_sh[u] - M);
        sum = fmaf(factor, l_sh[u], sum);
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) acc[n] = fmaf(factor, o_sh[u][lane + 32 * n], acc[n]);
    }
    const float inv = 1.0f / sum;
    T* yr = y + (size_t(b) * Tn + i) * H * D + size_t(h) * D;
    ATTN_UNROLL
    for (int n = 0; n < ND; ++n)
        if (lane + 32 * n < D) yr[lane + 32 * n] = from_float<T>(acc[n] * inv);
}

// -------------------------------------------------------------- tensor cores (bf16 / fp16 storage)
constexpr int kTcTile = 64;                     // queries per query tile = keys per key tile
constexpr int kTcWarps = 4;                     // each owns 16 rows of the block's tile
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcMaxHeadDim = 128;
constexpr unsigned kFullMask = 0xffffffffu;

// One instantiation serves the head widths D <= DP (DP = 32, 64, 128; D a multiple of 8): columns
// D .. DP-1 are zero-filled in shared memory, and k-steps / n-tiles that lie wholly past D are
// skipped (a warp-uniform test), so D = 80 in DP = 128 does 80 columns' work.
template <int DP>
struct Tc {
    static constexpr int stride = DP + 8;          // elements per shared row: 16 bytes of padding
    static constexpr int tile = kTcTile * stride;  // elements of one [64][DP] tile
    static constexpr int ksteps = DP / 16;         // k16 steps over the head dimension
    static constexpr int ntiles = DP / 8;          // n8 tiles of a [16][DP] accumulator
};
// Resident blocks per SM the register budget aims at: 4 (128 registers) up to DP = 64 (3, 168
// registers, for dK/dV at DP = 64: two accumulator sets), 2 (255) at DP = 128, where the
// accumulators alone are 64 (forward) and 128 (dK/dV) registers and a block's 85-103 KiB of shared
// memory fit 1 per SM on sm_80 (164 KiB), 2 on sm_90 (227 KiB).
constexpr int tc_min_blocks(int dp) { return dp <= 64 ? 4 : 2; }
constexpr int tc_dkdv_min_blocks(int dp) { return dp <= 32 ? 4 : dp <= 64 ? 3 : 2; }

template <int DP> constexpr size_t tc_forward_smem() { return 5 * sizeof(uint16_t) * Tc<DP>::tile; }
template <int DP> constexpr size_t tc_dkdv_smem() {
    return 6 * sizeof(uint16_t) * Tc<DP>::tile + 4 * kTcTile * sizeof(float);
}
template <int DP> constexpr size_t tc_dq_smem() { return 6 * sizeof(uint16_t) * Tc<DP>::tile; }

// cp.async rows row0 .. row0+63 of one head's slice of a [B, T, *] array (row stride row_stride
// elements) into a [64][DP] shared tile: 16 bytes per copy, consecutive threads on consecutive
// chunks of a row (coalesced). Rows past T and chunks past D are zero-filled by the copy itself
// (src_bytes 0), so nothing read later is stale or poisoned. The caller commits the group.
template <typename T, int DP>
__device__ __forceinline__ void tc_load_tile(T* __restrict__ dst, const T* __restrict__ src,
                                             size_t row_stride, int row0, const Shape& s) {
    constexpr int chunks = DP / 8;
    for (int e = threadIdx.x; e < kTcTile * chunks; e += kTcThreads) {
        const int r = e / chunks, c = e - r * chunks;
        const bool in = row0 + r < s.T && c * 8 < s.D;
        cp_async_16(dst + r * Tc<DP>::stride + c * 8, in ? src + size_t(row0 + r) * row_stride + c * 8 : src,
                    in ? 16 : 0);
    }
}

// The K and V tiles of keys k0 .. k0+63 into one stage of the double buffer: K at kv, V one tile
// after it (qkv's K and V columns start C and 2C after `base`). The caller commits the group.
template <typename T, int DP>
__device__ __forceinline__ void tc_load_kv(T* __restrict__ kv, const T* __restrict__ base, int C,
                                           size_t row_stride, int k0, const Shape& s) {
    tc_load_tile<T, DP>(kv, base + C, row_stride, k0, s);
    tc_load_tile<T, DP>(kv + Tc<DP>::tile, base + 2 * C, row_stride, k0, s);
}

// Fragments from a shared tile (core/mma.h spells out the layouts):
// A (16 x 16): rows row0 .. row0+15, columns 16 kk .. 16 kk + 15.
template <int DP, typename T>
__device__ __forceinline__ void tc_a(uint32_t a[4], const T* sh, int row0, int kk, int lane) {
    ldmatrix_x4(a, sh + (row0 + (lane & 15)) * Tc<DP>::stride + kk * 16 + (lane >> 4) * 8);
}
// B (16 x 8) of two n-tiles from a tile stored [N][K] (the B of Q K^T is K itself): rows n0 .. n0+7
// give b[0..1], rows n0+8 .. n0+15 give b[2..3]; columns (k) 16 kk .. 16 kk + 15.
template <int DP, typename T>
__device__ __forceinline__ void tc_b_nk(uint32_t b[4], const T* sh, int n0, int kk, int lane) {
    ldmatrix_x4(b, sh + (n0 + (lane & 7) + ((lane >> 4) << 3)) * Tc<DP>::stride + kk * 16 + ((lane >> 3) & 1) * 8);
}
// B (16 x 8) of two n-tiles from a tile stored [K][N] (the V of P V): rows (k) k0 .. k0+15,
// columns n0 .. n0+7 give b[0..1], n0+8 .. n0+15 give b[2..3] (ldmatrix .trans).
template <int DP, typename T>
__device__ __forceinline__ void tc_b_kn(uint32_t b[4], const T* sh, int k0, int n0, int lane) {
    ldmatrix_x4_trans(b, sh + (k0 + (lane & 15)) * Tc<DP>::stride + n0 + (lane >> 4) * 8);
}

// A warp's [16][DP] fp32 accumulator (C layout) into rows row0 .. row0+15 of a shared tile, row g
// times mul_lo and row g+8 times mul_hi, each element rounded once to T (columns < D).
template <typename T, int DP>
__device__ __forceinline__ void tc_stage_rows(T* sh, int row0, const float (&acc)[Tc<DP>::ntiles][4],
                                              float mul_lo, float mul_hi, int D, int lane) {
    const int g = lane >> 2, c = 2 * (lane & 3);
    ATTN_UNROLL
    for (int n = 0; n < Tc<DP>::ntiles; ++n) {
        if (n * 8 >= D) break;
        *reinterpret_cast<uint32_t*>(sh + (row0 + g) * Tc<DP>::stride + n * 8 + c) =
            pack2<T>(acc[n][0] * mul_lo, acc[n][1] * mul_lo);
        *reinterpret_cast<uint32_t*>(sh + (row0 + g + 8) * Tc<DP>::stride + n * 8 + c) =
            pack2<T>(acc[n][2] * mul_hi, acc[n][3] * mul_hi);
    }
}

// Rows row0 .. row0+15 of a shared tile (columns < D) to rows t0 .. t0+15 (those < T) of a global
// array (row stride row_stride elements), 16 bytes per store. The warp's own rows: call after a
// __syncwarp that follows tc_stage_rows.
template <typename T, int DP>
__device__ __forceinline__ void tc_store_rows(T* dst, size_t row_stride, const T* sh, int row0, int t0,
                                              const Shape& s, int lane) {
    const int chunks = s.D / 8;
    for (int e = lane; e < 16 * chunks; e += 32) {
        const int r = e / chunks, c = e - r * chunks;
        if (t0 + r < s.T)
            *reinterpret_cast<int4*>(dst + size_t(t0 + r) * row_stride + c * 8) =
                *reinterpret_cast<const int4*>(sh + (row0 + r) * Tc<DP>::stride + c * 8);
    }
}

__device__ __forceinline__ bool key_visible(int t, int key, int w) { return key <= t && key > t - w; }

// ------------------------------------------------------------------------- tensor-core forward
// grid (B*H, query tiles s.tile0 ..), heaviest (last) query tiles first; block kTcThreads.
template <typename T, int DP>
__global__ void __launch_bounds__(kTcThreads, tc_min_blocks(DP))
flash_forward_tc_kernel(T* __restrict__ y, float* __restrict__ lse, const T* __restrict__ qkv, Shape s) {
    using L = Tc<DP>;
    SCRATCH_DYNAMIC_SHARED(T, smem);
    T* q_sh = smem;                   // [64][stride]; at the end, the output rows
    T* kv_sh = smem + L::tile;        // [2 stages][K, V][64][stride]
    const int seq = s.T, D = s.D, C = s.C();
    const int bh = blockIdx.x, b = bh / s.H, h = bh % s.H;
    const int q0 = (s.tile0 + gridDim.y - 1 - blockIdx.y) * kTcTile;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp * 16, qw = q0 + wr;   // the warp's first row: in the tile, in the sequence
    const size_t rs = size_t(3) * C;
    const T* base = qkv + size_t(b) * seq * rs + size_t(h) * D;
    const int q_last = min(q0 + kTcTile, seq) - 1;
    const int k_first = max(0, q0 - s.w + 1) / kTcTile * kTcTile;

    tc_load_tile<T, DP>(q_sh, base, rs, q0, s);
    tc_load_kv<T, DP>(kv_sh, base, C, rs, k_first, s);
    cp_async_commit();

    uint32_t qf[L::ksteps][4] = {};   // the warp's 16 query rows as A fragments, loaded once
    float o[L::ntiles][4];            // O, 16 x DP, fp32
    float m[2] = {kNegInf, kNegInf}, l[2] = {0.0f, 0.0f};   // rows g, g+8: running max, partial sum
    ATTN_UNROLL
    for (int n = 0; n < L::ntiles; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    int stage = 0;
    for (int k0 = k_first; k0 <= q_last; k0 += kTcTile, stage ^= 1) {
        cp_async_wait<0>();   // this thread's copies of this tile (and, at first, Q) have landed
        // One barrier per tile: every thread's copies are visible to the block, and every warp is
        // done with the other stage (the previous tile), which the prefetch below overwrites.
        __syncthreads();
        if (k0 + kTcTile <= q_last) {   // the next K, V tile streams in while this one is used
            tc_load_kv<T, DP>(kv_sh + (stage ^ 1) * 2 * L::tile, base, C, rs, k0 + kTcTile, s);
            cp_async_commit();
        }
        const T* k_sh = kv_sh + stage * 2 * L::tile;
        const T* v_sh = k_sh + L::tile;
        if (k0 == k_first) {
            ATTN_UNROLL
            for (int kk = 0; kk < L::ksteps; ++kk)
                if (kk * 16 < D) tc_a<DP>(qf[kk], q_sh, wr, kk, lane);
        }
        // Which 16-key chunks of the tile hold a visible key for the warp's rows qw .. qw+15; the
        // tile is `masked` unless every (row, key) pair of the block is visible.
        const bool masked = !(k0 + kTcTile - 1 <= q0 && k0 > q0 + kTcTile - 1 - s.w);
        bool chunk_live[4];
        ATTN_UNROLL
        for (int c = 0; c < 4; ++c) {
            const int kc = k0 + 16 * c;
            chunk_live[c] = qw < seq && kc <= qw + 15 && kc + 15 > qw - s.w;
        }
        // S = Q K^T on the tensor cores, fp32 accumulators: 16 rows x 64 keys per warp
        float sc[8][4];
        ATTN_UNROLL
        for (int n = 0; n < 8; ++n) sc[n][0] = sc[n][1] = sc[n][2] = sc[n][3] = 0.0f;
        ATTN_UNROLL
        for (int kk = 0; kk < L::ksteps; ++kk) {
            if (kk * 16 >= D) break;
            ATTN_UNROLL
            for (int c = 0; c < 4; ++c) {
                if (!chunk_live[c]) continue;
                uint32_t kb[4];
                tc_b_nk<DP>(kb, k_sh, 16 * c, kk, lane);
                mma_m16n8k16<T>(sc[2 * c], qf[kk], kb, sc[2 * c]);
                mma_m16n8k16<T>(sc[2 * c + 1], qf[kk], kb + 2, sc[2 * c + 1]);
            }
        }
        // online softmax in fp32: rows g (i = 0: elements 0, 1) and g+8 (i = 1: elements 2, 3); the
        // four lanes of a quad hold one row's 64 keys, 16 each
        ATTN_UNROLL
        for (int i = 0; i < 2; ++i) {
            const int t = qw + g + 8 * i;
            float mx = m[i];
            ATTN_UNROLL
            for (int n = 0; n < 8; ++n)
                ATTN_UNROLL
                for (int j = 0; j < 2; ++j) {
                    float x = sc[n][2 * i + j] * s.scale;
                    if (masked && !key_visible(t, k0 + 8 * n + 2 * tq + j, s.w)) x = kNegInf;
                    sc[n][2 * i + j] = x;
                    mx = fmaxf(mx, x);
                }
            mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
            // mx = -inf: no visible key for the row yet (a row past T, or a band not reached)
            const float alpha = m[i] == kNegInf ? 0.0f : __expf(m[i] - mx);
            float sum = 0.0f;
            ATTN_UNROLL
            for (int n = 0; n < 8; ++n)
                ATTN_UNROLL
                for (int j = 0; j < 2; ++j) {
                    const float x = sc[n][2 * i + j];
                    const float p = x == kNegInf ? 0.0f : __expf(x - mx);
                    sc[n][2 * i + j] = p;
                    sum += p;
                }
            l[i] = fmaf(l[i], alpha, sum);   // l sums the fp32 p (FlashAttention-2 does the same)
            ATTN_UNROLL
            for (int n = 0; n < L::ntiles; ++n) o[n][2 * i] *= alpha, o[n][2 * i + 1] *= alpha;
            m[i] = mx;
        }
        // O += P V: P rounded to T as the A operand (accum_to_a: the accumulator layout is the A
        // layout, no data moves); V through ldmatrix .trans
        ATTN_UNROLL
        for (int c = 0; c < 4; ++c) {
            if (!chunk_live[c]) continue;   // every p of the chunk is 0
            uint32_t pa[4];
            accum_to_a<T>(pa, sc[2 * c], sc[2 * c + 1]);
            ATTN_UNROLL
            for (int np = 0; np < DP / 16; ++np) {
                if (np * 16 >= D) break;
                uint32_t vb[4];
                tc_b_kn<DP>(vb, v_sh, 16 * c, 16 * np, lane);
                mma_m16n8k16<T>(o[2 * np], pa, vb, o[2 * np]);
                mma_m16n8k16<T>(o[2 * np + 1], pa, vb + 2, o[2 * np + 1]);
            }
        }
    }
    float inv[2];
    ATTN_UNROLL
    for (int i = 0; i < 2; ++i) {
        float sum = l[i];
        sum += __shfl_xor_sync(kFullMask, sum, 1);
        sum += __shfl_xor_sync(kFullMask, sum, 2);
        inv[i] = 1.0f / sum;   // rows past T may divide by 0: they are never stored
        const int t = qw + g + 8 * i;
        if (tq == 0 && t < seq) lse[size_t(bh) * seq + t] = m[i] + logf(sum);
    }
    // y = O / l rounded once to T, through the warp's own rows of q_sh (only this warp read them)
    tc_stage_rows<T, DP>(q_sh, wr, o, inv[0], inv[1], D, lane);
    __syncwarp();
    tc_store_rows<T, DP>(y + size_t(b) * seq * C + size_t(h) * D, C, q_sh, wr, qw, s, lane);
}

// ------------------------------------------------------------------------ tensor-core backward
// dK, dV of one key tile: grid (B*H, key tiles s.tile0 ..); warp w owns keys 16w .. 16w+15 of the
// tile and walks the query tiles (two stages of Q, dY, lse, Di through cp.async) 16 queries at a
// time: S^T = K Q^T and dP^T = V dY^T (16 keys x 16 queries), P^T = exp(scale S^T - lse),
// dS^T = P^T (dP^T - Di), then dV += P^T dY and dK += dS^T Q with P^T and dS^T rounded to T as A
// operands (accum_to_a), dY and Q as B operands through ldmatrix .trans.
template <typename T, int DP>
__global__ void __launch_bounds__(kTcThreads, tc_dkdv_min_blocks(DP))
flash_backward_dkdv_tc_kernel(T* __restrict__ dqkv, const T* __restrict__ dy, const T* __restrict__ qkv,
                              const float* __restrict__ lse, const float* __restrict__ di, Shape s) {
    using L = Tc<DP>;
    SCRATCH_DYNAMIC_SHARED(T, smem);
    T* k_sh = smem;                   // [64][stride]; at the end, dK's rows
    T* v_sh = smem + L::tile;         // [64][stride]; at the end, dV's rows
    T* qd_sh = smem + 2 * L::tile;    // [2 stages][Q, dY][64][stride]
    float* stat_sh = reinterpret_cast<float*>(smem + 6 * L::tile);   // [2 stages][lse, Di][64]
    const int seq = s.T, D = s.D, C = s.C();
    const int bh = blockIdx.x, b = bh / s.H, h = bh % s.H;
    const int k0 = (s.tile0 + blockIdx.y) * kTcTile;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp * 16, kw = k0 + wr;   // the warp's first key: in the tile, in the sequence
    const size_t rs = size_t(3) * C;
    const T* base = qkv + size_t(b) * seq * rs + size_t(h) * D;
    const T* dy_base = dy + size_t(b) * seq * C + size_t(h) * D;
    const float* lse_b = lse + size_t(bh) * seq;
    const float* di_b = di + size_t(bh) * seq;
    // the last query that sees a key of the tile
    const int q_hi = min(seq - 1, min(k0 + kTcTile, seq) - 1 + s.w - 1);

    auto load_queries = [&](int st, int q0) {
        T* dst = qd_sh + st * 2 * L::tile;
        tc_load_tile<T, DP>(dst, base, rs, q0, s);
        tc_load_tile<T, DP>(dst + L::tile, dy_base, C, q0, s);
        float* stats = stat_sh + st * 2 * kTcTile;   // plain stores: visible after the next barrier
        if (threadIdx.x < kTcTile) {
            const int t = q0 + threadIdx.x;
            stats[threadIdx.x] = t < seq ? lse_b[t] : 0.0f;
            stats[kTcTile + threadIdx.x] = t < seq ? di_b[t] : 0.0f;
        }
    };
    tc_load_kv<T, DP>(k_sh, base, C, rs, k0, s);   // v_sh follows k_sh
    load_queries(0, k0);
    cp_async_commit();

    float dk[L::ntiles][4], dv[L::ntiles][4];
    ATTN_UNROLL
    for (int n = 0; n < L::ntiles; ++n)
        ATTN_UNROLL
        for (int e = 0; e < 4; ++e) dk[n][e] = 0.0f, dv[n][e] = 0.0f;
    int stage = 0;
    for (int q0 = k0; q0 <= q_hi; q0 += kTcTile, stage ^= 1) {   // k0 is a tile boundary, so is q0
        cp_async_wait<0>();
        __syncthreads();   // this tile visible to all (the stats too); the other stage free to refill
        if (q0 + kTcTile <= q_hi) {
            load_queries(stage ^ 1, q0 + kTcTile);
            cp_async_commit();
        }
        const T* q_sh = qd_sh + stage * 2 * L::tile;
        const T* g_sh = q_sh + L::tile;
        const float* lse_sh = stat_sh + stage * 2 * kTcTile;
        const float* di_sh = lse_sh + kTcTile;
        ATTN_UNROLL_N(1)
        for (int c = 0; c < 4; ++c) {
            const int qc = q0 + 16 * c;   // queries qc .. qc+15 against keys kw .. kw+15
            if (qc >= seq || qc + 15 < kw || qc > kw + 15 + s.w - 1) continue;   // none visible
            const bool masked = !(kw + 15 <= qc && kw > qc + 15 - s.w && qc + 15 < seq);
            float st[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            float dp[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            ATTN_UNROLL
            for (int kk = 0; kk < L::ksteps; ++kk) {
                if (kk * 16 >= D) break;
                uint32_t a[4], bq[4];
                tc_a<DP>(a, k_sh, wr, kk, lane);
                tc_b_nk<DP>(bq, q_sh, 16 * c, kk, lane);
                mma_m16n8k16<T>(st[0], a, bq, st[0]);
                mma_m16n8k16<T>(st[1], a, bq + 2, st[1]);
                tc_a<DP>(a, v_sh, wr, kk, lane);
                tc_b_nk<DP>(bq, g_sh, 16 * c, kk, lane);
                mma_m16n8k16<T>(dp[0], a, bq, dp[0]);
                mma_m16n8k16<T>(dp[1], a, bq + 2, dp[1]);
            }
            // element e of n-tile n: key kw + g + 8 (e >> 1), query qc + 8 n + 2 tq + (e & 1)
            ATTN_UNROLL
            for (int n = 0; n < 2; ++n)
                ATTN_UNROLL
                for (int e = 0; e < 4; ++e) {
                    const int qi = 16 * c + 8 * n + 2 * tq + (e & 1), t = q0 + qi;
                    const bool ok = !masked || (t < seq && key_visible(t, kw + g + 8 * (e >> 1), s.w));
                    const float p = ok ? __expf(st[n][e] * s.scale - lse_sh[qi]) : 0.0f;
                    st[n][e] = p;
                    dp[n][e] = p * (dp[n][e] - di_sh[qi]);
                }
            uint32_t pa[4], dsa[4];
            accum_to_a<T>(pa, st[0], st[1]);
            accum_to_a<T>(dsa, dp[0], dp[1]);
            ATTN_UNROLL
            for (int np = 0; np < DP / 16; ++np) {
                if (np * 16 >= D) break;
                uint32_t bb[4];
                tc_b_kn<DP>(bb, g_sh, 16 * c, 16 * np, lane);
                mma_m16n8k16<T>(dv[2 * np], pa, bb, dv[2 * np]);
                mma_m16n8k16<T>(dv[2 * np + 1], pa, bb + 2, dv[2 * np + 1]);
                tc_b_kn<DP>(bb, q_sh, 16 * c, 16 * np, lane);
                mma_m16n8k16<T>(dk[2 * np], dsa, bb, dk[2 * np]);
                mma_m16n8k16<T>(dk[2 * np + 1], dsa, bb + 2, dk[2 * np + 1]);
            }
        }
    }
    // dK scale and dV rounded once to T, through the warp's own rows of k_sh / v_sh
    tc_stage_rows<T, DP>(k_sh, wr, dk, s.scale, s.scale, D, lane);
    tc_stage_rows<T, DP>(v_sh, wr, dv, 1.0f, 1.0f, D, lane);
    __syncwarp();
    T* out = dqkv + size_t(b) * seq * rs + size_t(h) * D;
    tc_store_rows<T, DP>(out + C, rs, k_sh, wr, kw, s, lane);
    tc_store_rows<T, DP>(out + 2 * C, rs, v_sh, wr, kw, s, lane);
}

// dQ of one query tile: grid (B*H, query tiles s.tile0 ..), heaviest first; warp w owns queries
// 16w .. 16w+15 and walks the key tiles (two stages of K, V through cp.async) 16 keys at a time:
// S = Q K^T and dP = dY V^T, P = exp(scale S - lse), dS = P (dP - Di), dQ += dS K with dS rounded
// to T as the A operand and K through ldmatrix .trans.
template <typename T, int DP>
__global__ void __launch_bounds__(kTcThreads, tc_min_blocks(DP))
flash_backward_dq_tc_kernel(T* __restrict__ dqkv, const T* __restrict__ dy, const T* __restrict__ qkv,
                            const float* __restrict__ lse, const float* __restrict__ di, Shape s) {
    using L = Tc<DP>;
    SCRATCH_DYNAMIC_SHARED(T, smem);
    T* q_sh = smem;                   // [64][stride]; at the end, dQ's rows
    T* g_sh = smem + L::tile;         // [64][stride]: dY
    T* kv_sh = smem + 2 * L::tile;    // [2 stages][K, V][64][stride]
    const int seq = s.T, D = s.D, C = s.C();
    const int bh = blockIdx.x, b = bh / s.H, h = bh % s.H;
    const int q0 = (s.tile0 + gridDim.y - 1 - blockIdx.y) * kTcTile;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, tq = lane & 3;
    const int wr = warp * 16, qw = q0 + wr;
    const size_t rs = size_t(3) * C;
    const T* base = qkv + size_t(b) * seq * rs + size_t(h) * D;
    const int q_last = min(q0 + kTcTile, seq) - 1;
    const int k_first = max(0, q0 - s.w + 1) / kTcTile * kTcTile;

    tc_load_tile<T, DP>(q_sh, base, rs, q0, s);
    tc_load_tile<T, DP>(g_sh, dy + size_t(b) * seq * C + size_t(h) * D, C, q0, s);
    tc_load_kv<T, DP>(kv_sh, base, C, rs, k_first, s);
    cp_async_commit();

    float lse_r[2], di_r[2];   // rows g, g+8
    ATTN_UNROLL
    for (int i = 0; i < 2; ++i) {
        const int t = qw + g + 8 * i;
        lse_r[i] = t < seq ? lse[size_t(bh) * seq + t] : 0.0f;
        di_r[i] = t < seq ? di[size_t(bh) * seq + t] : 0.0f;
    }
    uint32_t qf[L::ksteps][4] = {}, gf[L::ksteps][4] = {};   // Q and dY rows as A fragments, loaded once
    float dq[L::ntiles][4];
    ATTN_UNROLL
    for (int n = 0; n < L::ntiles; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.0f;
    int stage = 0;
    for (int k0 = k_first; k0 <= q_last; k0 += kTcTile, stage ^= 1) {
        cp_async_wait<0>();
        __syncthreads();   // this tile visible to all; the other stage free to refill
        if (k0 + kTcTile <= q_last) {
            tc_load_kv<T, DP>(kv_sh + (stage ^ 1) * 2 * L::tile, base, C, rs, k0 + kTcTile, s);
            cp_async_commit();
        }
        const T* k_sh = kv_sh + stage * 2 * L::tile;
        const T* v_sh = k_sh + L::tile;
        if (k0 == k_first) {
            ATTN_UNROLL
            for (int kk = 0; kk < L::ksteps; ++kk)
                if (kk * 16 < D) {
                    tc_a<DP>(qf[kk], q_sh, wr, kk, lane);
                    tc_a<DP>(gf[kk], g_sh, wr, kk, lane);
                }
        }
        ATTN_UNROLL_N(1)
        for (int c = 0; c < 4; ++c) {
            const int kc = k0 + 16 * c;   // keys kc .. kc+15 against queries qw .. qw+15
            if (qw >= seq || kc > qw + 15 || kc + 15 <= qw - s.w) continue;   // none visible
            const bool masked = !(kc + 15 <= qw && kc > qw + 15 - s.w && qw + 15 < seq);
            float sc[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            float dp[2][4] = {{0.0f, 0.0f, 0.0f, 0.0f}, {0.0f, 0.0f, 0.0f, 0.0f}};
            ATTN_UNROLL
            for (int kk = 0; kk < L::ksteps; ++kk) {
                if (kk * 16 >= D) break;
                uint32_t bk[4];
                tc_b_nk<DP>(bk, k_sh, 16 * c, kk, lane);
                mma_m16n8k16<T>(sc[0], qf[kk], bk, sc[0]);
                mma_m16n8k16<T>(sc[1], qf[kk], bk + 2, sc[1]);
                tc_b_nk<DP>(bk, v_sh, 16 * c, kk, lane);
                mma_m16n8k16<T>(dp[0], gf[kk], bk, dp[0]);
                mma_m16n8k16<T>(dp[1], gf[kk], bk + 2, dp[1]);
            }
            // element e of n-tile n: query qw + g + 8 (e >> 1), key kc + 8 n + 2 tq + (e & 1)
            ATTN_UNROLL
            for (int n = 0; n < 2; ++n)
                ATTN_UNROLL
                for (int e = 0; e < 4; ++e) {
                    const int t = qw + g + 8 * (e >> 1);
                    const bool ok = !masked || (t < seq && key_visible(t, kc + 8 * n + 2 * tq + (e & 1), s.w));
                    const float p = ok ? __expf(sc[n][e] * s.scale - lse_r[e >> 1]) : 0.0f;
                    dp[n][e] = p * (dp[n][e] - di_r[e >> 1]);
                }
            uint32_t dsa[4];
            accum_to_a<T>(dsa, dp[0], dp[1]);
            ATTN_UNROLL
            for (int np = 0; np < DP / 16; ++np) {
                if (np * 16 >= D) break;
                uint32_t bk[4];
                tc_b_kn<DP>(bk, k_sh, 16 * c, 16 * np, lane);
                mma_m16n8k16<T>(dq[2 * np], dsa, bk, dq[2 * np]);
                mma_m16n8k16<T>(dq[2 * np + 1], dsa, bk + 2, dq[2 * np + 1]);
            }
        }
    }
    // dQ scale rounded once to T, through the warp's own rows of q_sh
    tc_stage_rows<T, DP>(q_sh, wr, dq, s.scale, s.scale, D, lane);
    __syncwarp();
    tc_store_rows<T, DP>(dqkv + size_t(b) * seq * rs + size_t(h) * D, rs, q_sh, wr, qw, s, lane);
}

// ------------------------------------------------------------------------------- launchers
// Kernels read their inputs while writing their outputs: an output may share no byte with any
// other argument (contiguous tensors, so a tensor's bytes are one range).
void expect_disjoint_outputs(std::initializer_list<const Tensor*> outputs,
                             std::initializer_list<const Tensor*> all) {
    auto range = [](const Tensor* t) {
        const auto* p = static_cast<const char*>(t->data);
        return std::make_pair(p, p + t->numel() * int64_t(dtype_size(t->dtype)));
    };
    for (const Tensor* out : outputs) {
        const auto [o0, o1] = range(out);
        for (const Tensor* t : all) {
            if (t == out || o0 == o1) continue;
            const auto [t0, t1] = range(t);
            if (t0 < o1 && o0 < t1)
                throw ValueError(str(out->name, ": overlaps ", t->name, " (an output may not alias another argument)"));
        }
    }
}

// The storage type of a call is its first array's (qkv, or q for decode): f(T()) with T = float,
// __nv_bfloat16 (uint16 bits) or __half; any other dtype is a TypeError naming the array.
template <typename F>
void with_storage(const Tensor& t, F&& f) {
    switch (t.dtype) {
        case DType::F32: f(float()); break;
        case DType::U16: f(__nv_bfloat16()); break;
        case DType::F16: f(__half()); break;
        default:
            throw TypeError(str(t.name, ": expected float32, got ", dtype_name(t.dtype),
                                " (the storage types: float32, float16, and bfloat16 as its uint16 bits)"));
    }
}

template <typename T>
const char* storage_label() {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bfloat16 (its uint16 bits)";
    else return Storage<T>::name;
}

// An array of the call's storage type T (the dtype of `like`), C-contiguous; writable if an output.
template <typename T>
void expect_storage(const Tensor& t, const Tensor& like, bool output) {
    if (t.dtype != Storage<T>::dtype)
        throw TypeError(str(t.name, ": expected ", storage_label<T>(), " like ", like.name, ", got ",
                            dtype_name(t.dtype)));
    if (output) expect_output(t, Storage<T>::dtype);
    else expect_input(t, Storage<T>::dtype);
}

// qkv [B, T, 3C] checked (any storage type); returns the shape (w = T when window == 0).
Shape check_qkv(const Tensor& qkv, int n_head, int window) {
    with_storage(qkv, [&](auto tag) { expect_input(qkv, Storage<decltype(tag)>::dtype); });
    if (qkv.ndim != 3) throw ValueError(str(qkv.name, ": expected 3 dimensions [B, T, 3C], got ", qkv.ndim));
    if (n_head < 1) throw ValueError(str("n_head: expected a positive integer, got ", n_head));
    if (window < 0) throw ValueError(str("window: expected a positive integer (0: causal), got ", window));
    const int64_t C3 = qkv.size(2);
    if (C3 == 0 || C3 % (3 * int64_t(n_head)))
        throw ValueError(str(qkv.name, ": last axis ", C3, " must be 3 * n_head * head_dim (n_head=",
                             n_head, ")"));
    Shape s;
    s.B = to_int(qkv.size(0), "batch of qkv");
    s.T = to_int(qkv.size(1), "sequence length of qkv");
    s.H = n_head;
    s.D = to_int(C3 / (3 * n_head), "head_dim");
    if (s.D > kMaxHeadDim)
        throw ValueError(str(qkv.name, ": head_dim ", s.D, " exceeds the supported ", kMaxHeadDim));
    to_int(qkv.numel(), "size of qkv");
    if (int64_t(s.B) * s.H > 2147483647) throw ValueError(str(qkv.name, ": B * n_head too large"));
    s.w = (window == 0 || window > s.T) ? s.T : window;
    s.scale = 1.0f / std::sqrt(float(s.D));
    s.tile0 = 0;
    s.vec4 = qkv.dtype == DType::F32 && s.D % 4 == 0 && is_aligned(qkv.data, 16);
    return s;
}

// Call f(std::integral_constant<int, ND>) with ND = ceil(D / 32) in 1..4.
template <typename F>
void with_nd(int D, F&& f) {
    switch ((D + 31) / 32) {
        case 1: f(std::integral_constant<int, 1>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        default: f(std::integral_constant<int, 4>{}); break;
    }
}

// The tensor-core kernels take 16-bit storage, D a multiple of 8 (16-byte rows for cp.async,
// ldmatrix and the 16-byte stores) up to 128, and 16-byte aligned arrays; other calls run the
// SIMT kernels, which widen bf16 / fp16 to fp32 (and round the outputs once).
bool tc_eligible(const Shape& s, std::initializer_list<const Tensor*> arrays) {
    if (s.D % 8 || s.D > kTcMaxHeadDim) return false;
    for (const Tensor* t : arrays)
        if (!is_aligned(t->data, 16)) return false;
    return true;
}

// Call f(std::integral_constant<int, DP>) with DP = 32, 64 or 128, the smallest that holds D.
template <typename F>
void with_dp(int D, F&& f) {
    if (D <= 32) f(std::integral_constant<int, 32>{});
    else if (D <= 64) f(std::integral_constant<int, 64>{});
    else f(std::integral_constant<int, 128>{});
}

size_t flash_forward_smem(int D) {
    return sizeof(float) * (kTile * bcast_stride(D) + 2 * kTile * lane_stride(D) + kWarps * kTile * kRows);
}
size_t flash_dkdv_smem(int D) {
    return sizeof(float) * (2 * kTile * bcast_stride(D) + 2 * kTile * lane_stride(D) +
                            2 * kWarps * kTile * kRows + 2 * kTile);
}
size_t flash_dq_smem(int D) {
    return sizeof(float) * (2 * kTile * bcast_stride(D) + 2 * kTile * lane_stride(D) + kWarps * kTile * kRows);
}

// The flash kernels: a block per (batch, head) on grid.x and per tile of `tile` rows along T on
// grid.y, whose limit (65535 tiles) longer sequences pass by several launches over ranges of
// tiles, each starting at s.tile0 (a kernel parameter: it costs the kernels, at their register
// budget, no register, where a tile index spread over grid.y and grid.z or a division did).
// `heaviest_first`: the forward and dQ passes launch the last (longest) tiles first, as their
// blocks within a launch also run. launch_one(shape, grid) launches one range.
constexpr int kMaxTilesPerLaunch = 65535;

template <typename F>
void launch_tile_ranges(Shape s, int tile, bool heaviest_first, F&& launch_one) {
    const int tiles = ceil_div(s.T, tile);
    for (int done = 0; done < tiles; done += kMaxTilesPerLaunch) {
        const int count = std::min(kMaxTilesPerLaunch, tiles - done);
        s.tile0 = heaviest_first ? tiles - done - count : done;
        launch_one(s, dim3(unsigned(s.B * s.H), unsigned(count)));
    }
}

template <typename T>
void flash_forward(const Tensor& y, const Tensor& lse, const Tensor& qkv, const Shape& s, cudaStream_t st) {
    if constexpr (is_16bit_float<T>) {
        if (tc_eligible(s, {&qkv, &y})) {
            with_dp(s.D, [&](auto dp) {
                constexpr int DP = decltype(dp)::value;
                launch_tile_ranges(s, kTcTile, true, [&](const Shape& r, dim3 grid) {
                    launch("flash_forward_tc_kernel", flash_forward_tc_kernel<T, DP>, grid, dim3(kTcThreads),
                           tc_forward_smem<DP>(), st, y.ptr<T>(), lse.ptr<float>(), qkv.ptr<T>(), r);
                });
            });
            return;
        }
    }
    with_nd(s.D, [&](auto nd) {
        launch_tile_ranges(s, kTile, true, [&](const Shape& r, dim3 grid) {
            launch("flash_forward_kernel", flash_forward_kernel<T, decltype(nd)::value>, grid,
                   dim3(kFlashThreads), flash_forward_smem(s.D), st, y.ptr<T>(), lse.ptr<float>(),
                   qkv.ptr<T>(), r);
        });
    });
}

template <typename T>
void flash_backward(const Tensor& dqkv, const Tensor& di, const Tensor& dy, const Tensor& qkv, const Tensor& y,
                    const Tensor& lse, Shape s, cudaStream_t st) {
    s.vec4 = s.vec4 && is_aligned(dy.data, 16);
    const int rows = s.B * s.T * s.H;
    launch("flash_backward_rowdot_kernel", flash_backward_rowdot_kernel<T>, dim3(ceil_div(rows, 8)), dim3(256),
           0, st, di.ptr<float>(), dy.ptr<T>(), y.ptr<T>(), s);
    if constexpr (is_16bit_float<T>) {
        if (tc_eligible(s, {&qkv, &dy, &dqkv})) {
            with_dp(s.D, [&](auto dp) {
                constexpr int DP = decltype(dp)::value;
                launch_tile_ranges(s, kTcTile, false, [&](const Shape& r, dim3 grid) {
                    launch("flash_backward_dkdv_tc_kernel", flash_backward_dkdv_tc_kernel<T, DP>, grid,
                           dim3(kTcThreads), tc_dkdv_smem<DP>(), st, dqkv.ptr<T>(), dy.ptr<T>(), qkv.ptr<T>(),
                           lse.ptr<float>(), di.ptr<float>(), r);
                });
                launch_tile_ranges(s, kTcTile, true, [&](const Shape& r, dim3 grid) {
                    launch("flash_backward_dq_tc_kernel", flash_backward_dq_tc_kernel<T, DP>, grid,
                           dim3(kTcThreads), tc_dq_smem<DP>(), st, dqkv.ptr<T>(), dy.ptr<T>(), qkv.ptr<T>(),
                           lse.ptr<float>(), di.ptr<float>(), r);
                });
            });
            return;
        }
    }
    with_nd(s.D, [&](auto nd) {
        constexpr int ND = decltype(nd)::value;
        launch_tile_ranges(s, kTile, false, [&](const Shape& r, dim3 grid) {
            launch("flash_backward_dkdv_kernel", flash_backward_dkdv_kernel<T, ND>, grid, dim3(kFlashThreads),
                   flash_dkdv_smem(s.D), st, dqkv.ptr<T>(), dy.ptr<T>(), qkv.ptr<T>(),
                   lse.ptr<float>(), di.ptr<float>(), r);
        });
        launch_tile_ranges(s, kTile, true, [&](const Shape& r, dim3 grid) {
            launch("flash_backward_dq_kernel", flash_backward_dq_kernel<T, ND>, grid, dim3(kFlashThreads),
                   flash_dq_smem(s.D), st, dqkv.ptr<T>(), dy.ptr<T>(), qkv.ptr<T>(),
                   lse.ptr<float>(), di.ptr<float>(), r);
        });
    });
}

template <typename E>
Operand<E> operand(const E* p, int64_t sb, int64_t sh, int64_t sr, int64_t sc) {
    return Operand<E>{const_cast<E*>(p), sb, sh, sr, sc};
}

template <typename TC, typename TA, typename TB>
void batched_matmul(const char* name, Operand<TC> c, Operand<TA> a, Operand<TB> b, int M, int N, int K,
                    const Shape& s, float alpha, int score_window, cudaStream_t stream) {
    if (int64_t(s.B) * s.H > 65535) throw ValueError("qkv: B * n_head exceeds 65535 (the materialised version's grid)");
    launch(name, batched_matmul_kernel<TC, TA, TB>, dim3(ceil_div(N, kMmTile), ceil_div(M, kMmTile), s.B * s.H),
           dim3(16, 16), 0, stream, c, a, b, M, N, K, s.H, alpha, score_window);
}

template <typename T>
void materialized_forward(const Tensor& y, const Tensor& probs, const Tensor& qkv, const Shape& s,
                          cudaStream_t st) {
    const int64_t T_ = s.T, C = s.C(), D = s.D, H = s.H;
    const T* x = qkv.ptr<T>();
    const Operand<T> q = operand(x, T_ * 3 * C, D, 3 * C, 1);
    const Operand<T> kt = operand(x + C, T_ * 3 * C, D, 1, 3 * C);   // K^T: [d][key]
    const Operand<T> v = operand(x + 2 * C, T_ * 3 * C, D, 3 * C, 1);
    const Operand<float> p = operand(probs.ptr<float>(), H * T_ * T_, T_ * T_, T_, 1);
    batched_matmul("batched_matmul_kernel(S = Q K^T)", p, q, kt, s.T, s.T, s.D, s, 1.0f, s.w, st);
    const int rows = to_int(int64_t(s.B) * H * T_, "rows of probs");
    launch("masked_softmax_kernel", masked_softmax_kernel, dim3(ceil_div(rows, 8)), dim3(256), 0, st,
           probs.ptr<float>(), rows, s.T, s.w, s.scale);
    const Operand<T> out = operand(y.ptr<T>(), T_ * C, D, C, 1);
    batched_matmul("batched_matmul_kernel(Y = P V)", out, p, v, s.T, s.D, s.T, s, 1.0f, 0, st);
}

template <typename T>
void materialized_backward(const Tensor& dqkv, const Tensor& dprobs, const Tensor& dy, const Tensor& qkv,
                           const Tensor& probs, const Shape& s, cudaStream_t st) {
    const int64_t T_ = s.T, C = s.C(), D = s.D, H = s.H;
    const T* x = qkv.ptr<T>();
    T* g = dqkv.ptr<T>();
    const Operand<T> q = operand(x, T_ * 3 * C, D, 3 * C, 1);
    const Operand<T> k = operand(x + C, T_ * 3 * C, D, 3 * C, 1);
    const Operand<T> vt = operand(x + 2 * C, T_ * 3 * C, D, 1, 3 * C);
    const Operand<T> dyo = operand(dy.ptr<T>(), T_ * C, D, C, 1);
    const Operand<float> pt = operand(probs.ptr<float>(), H * T_ * T_, T_ * T_, 1, T_);
    const Operand<float> ds = operand(dprobs.ptr<float>(), H * T_ * T_, T_ * T_, T_, 1);
    const Operand<float> dst = operand(dprobs.ptr<float>(), H * T_ * T_, T_ * T_, 1, T_);
    batched_matmul("batched_matmul_kernel(dP = dY V^T)", ds, dyo, vt, s.T, s.T, s.D, s, 1.0f, s.w, st);
    const int rows = to_int(int64_t(s.B) * H * T_, "rows of probs");
    launch("masked_softmax_backward_kernel", masked_softmax_backward_kernel, dim3(ceil_div(rows, 8)),
           dim3(256), 0, st, dprobs.ptr<float>(), probs.ptr<float>(), rows, s.T, s.w);
    batched_matmul("batched_matmul_kernel(dV = P^T dY)", operand(g + 2 * C, T_ * 3 * C, D, 3 * C, 1), pt,
                   dyo, s.T, s.D, s.T, s, 1.0f, 0, st);
    batched_matmul("batched_matmul_kernel(dQ = dS K)", operand(g, T_ * 3 * C, D, 3 * C, 1), ds, k, s.T,
                   s.D, s.T, s, s.scale, 0, st);
    batched_matmul("batched_matmul_kernel(dK = dS^T Q)", operand(g + C, T_ * 3 * C, D, 3 * C, 1), dst, q,
                   s.T, s.D, s.T, s, s.scale, 0, st);
}

}  // namespace

void attention_forward(const Tensor& y, const Tensor& lse, const Tensor& qkv, int n_head, int window,
                       Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    with_storage(qkv, [&](auto tag) {
        using T = decltype(tag);
        expect_storage<T>(y, qkv, true);
        expect_shape(y, {s.B, s.T, s.C()});
        expect_output(lse, DType::F32);
        expect_shape(lse, {s.B, s.H, s.T});
        expect_same_device({&qkv, &y, &lse});
        expect_disjoint_outputs({&y, &lse}, {&qkv, &y, &lse});
        flash_forward<T>(y, lse, qkv, s, static_cast<cudaStream_t>(stream));
    });
}

void attention_backward(const Tensor& dqkv, const Tensor& di, const Tensor& dy, const Tensor& qkv,
                        const Tensor& y, const Tensor& lse, int n_head, int window, Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    with_storage(qkv, [&](auto tag) {
        using T = decltype(tag);
        expect_storage<T>(dy, qkv, false);
        expect_shape(dy, {s.B, s.T, s.C()});
        expect_storage<T>(y, qkv, false);
        expect_shape(y, {s.B, s.T, s.C()});
        expect_input(lse, DType::F32);
        expect_shape(lse, {s.B, s.H, s.T});
        expect_output(di, DType::F32);
        expect_shape(di, {s.B, s.H, s.T});
        expect_storage<T>(dqkv, qkv, true);
        expect_same_shape(dqkv, qkv);
        expect_same_device({&qkv, &dy, &y, &lse, &di, &dqkv});
        expect_disjoint_outputs({&di, &dqkv}, {&qkv, &dy, &y, &lse, &di, &dqkv});
        flash_backward<T>(dqkv, di, dy, qkv, y, lse, s, static_cast<cudaStream_t>(stream));
    });
}

void attention_materialized_forward(const Tensor& y, const Tensor& probs, const Tensor& qkv, int n_head,
                                    int window, Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    with_storage(qkv, [&](auto tag) {
        using T = decltype(tag);
        expect_storage<T>(y, qkv, true);
        expect_shape(y, {s.B, s.T, s.C()});
        expect_output(probs, DType::F32);
        expect_shape(probs, {s.B, s.H, s.T, s.T});
        expect_same_device({&qkv, &y, &probs});
        expect_disjoint_outputs({&y, &probs}, {&qkv, &y, &probs});
        materialized_forward<T>(y, probs, qkv, s, static_cast<cudaStream_t>(stream));
    });
}

void attention_materialized_backward(const Tensor& dqkv, const Tensor& dprobs, const Tensor& dy,
                                     const Tensor& qkv, const Tensor& probs, int n_head, int window,
                                     Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    with_storage(qkv, [&](auto tag) {
        using T = decltype(tag);
        expect_storage<T>(dy, qkv, false);
        expect_shape(dy, {s.B, s.T, s.C()});
        expect_input(probs, DType::F32);
        expect_shape(probs, {s.B, s.H, s.T, s.T});
        expect_output(dprobs, DType::F32);
        expect_shape(dprobs, {s.B, s.H, s.T, s.T});
        expect_storage<T>(dqkv, qkv, true);
        expect_same_shape(dqkv, qkv);
        expect_same_device({&qkv, &dy, &probs, &dprobs, &dqkv});
        expect_disjoint_outputs({&dprobs, &dqkv}, {&qkv, &dy, &probs, &dprobs, &dqkv});
        materialized_backward<T>(dqkv, dprobs, dy, qkv, probs, s, static_cast<cudaStream_t>(stream));
    });
}

void attention_decode(const Tensor& y, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      int t0, int window, Stream stream) {
    with_storage(q, [&](auto tag) {
        using T = decltype(tag);
        expect_input(q, Storage<T>::dtype);
        expect_storage<T>(k_cache, q, false);
        expect_storage<T>(v_cache, q, false);
        if (q.ndim != 4) throw ValueError(str(q.name, ": expected 4 dimensions [B, H, Tn, D], got ", q.ndim));
        const int B = to_int(q.size(0), "batch of q"), H = to_int(q.size(1), "heads of q");
        const int Tn = to_int(q.size(2), "queries of q"), D = to_int(q.size(3), "head_dim of q");
        if (D < 1 || D > kMaxHeadDim)
            throw ValueError(str(q.name, ": head_dim must be 1 .. ", kMaxHeadDim, ", got ", D));
        if (k_cache.ndim != 4)
            throw ValueError(str(k_cache.name, ": expected 4 dimensions [B, H, S, D], got ", k_cache.ndim));
        const int S = to_int(k_cache.size(2), "cached positions");
        expect_shape(k_cache, {B, H, S, D});
        expect_same_shape(v_cache, k_cache);
        if (t0 < 0) throw ValueError(str("t0: expected a non-negative position, got ", t0));
        if (int64_t(t0) + Tn > S)
            throw ValueError(str("t0: queries at ", t0, " .. ", int64_t(t0) + Tn - 1,
                                 " need their keys in the cache of ", S, " positions"));
        if (window < 0) throw ValueError(str("window: expected a positive integer (0: causal), got ", window));
        expect_storage<T>(y, q, true);
        expect_shape(y, {B, Tn, int64_t(H) * D});
        expect_same_device({&q, &k_cache, &v_cache, &y});
        expect_disjoint_outputs({&y}, {&q, &k_cache, &v_cache, &y});
        to_int(k_cache.numel(), "size of k_cache");
        const int rows = to_int(int64_t(B) * H * Tn, "queries");
        const int w = window == 0 ? S : window;
        const bool vec4 = std::is_same_v<T, float> && D % 4 == 0 && is_aligned(q.data, 16) &&
                          is_aligned(k_cache.data, 16);
        with_nd(D, [&](auto nd) {
            launch("decode_kernel", decode_kernel<T, decltype(nd)::value>, dim3(rows), dim3(32 * kDecodeWarps), 0,
                   static_cast<cudaStream_t>(stream), y.ptr<T>(), q.ptr<T>(), k_cache.ptr<T>(),
                   v_cache.ptr<T>(), H, Tn, S, D, t0, w, 1.0f / std::sqrt(float(D)), vec4);
        });
    });
}

}  // namespace scratch::kernels
