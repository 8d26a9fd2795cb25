// csrc/attention.cu — causal and banded multi-head attention from the packed qkv
// (docs/gradients/attention.md, python/scratchgpt/reference/attention.py). float32.
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

#include "core/kernel.h"
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
// when s.vec4 (then D is a multiple of 4 and columns D .. stride-1 are never read).
__device__ __forceinline__ void load_tile(float* __restrict__ dst, int stride,
                                          const float* __restrict__ src, size_t row_stride,
                                          int row0, const Shape& s) {
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
    for (int e = threadIdx.x; e < kTile * stride; e += kFlashThreads) {
        const int r = e / stride, d = e - r * stride;
        dst[e] = (row0 + r < s.T && d < s.D) ? src[size_t(row0 + r) * row_stride + d] : 0.0f;
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
template <int ND>
__global__ void __launch_bounds__(kFlashThreads, flash_min_blocks(ND))
flash_forward_kernel(float* __restrict__ y, float* __restrict__ lse, const float* __restrict__ qkv,
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
    const float* base = qkv + size_t(b) * T * row_stride + size_t(h) * D;
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
        float* yr = y + (size_t(b) * T + t) * C + size_t(h) * D;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n)
            if (lane + 32 * n < D) yr[lane + 32 * n] = o[r][n] * inv;
        if (lane == 0) lse[size_t(bh) * T + t] = m[r] + logf(sum);
    }
}

// ------------------------------------------------------------------------------ flash backward
// Di = sum_d dy * y for each (b, t, h): a warp per row, 8 rows per block. di is [B, H, T].
__global__ void __launch_bounds__(256)
flash_backward_rowdot_kernel(float* __restrict__ di, const float* __restrict__ dy,
                             const float* __restrict__ y, Shape s) {
    const int row = blockIdx.x * 8 + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int rows = s.B * s.T * s.H;
    if (row >= rows) return;   // whole warps leave; no barrier follows
    const float* a = dy + size_t(row) * s.D;   // rows of [B, T, H, D] are contiguous
    const float* c = y + size_t(row) * s.D;
    float sum = 0.0f;
    for (int d = lane; d < s.D; d += 32) sum = fmaf(a[d], c[d], sum);
    sum = warp_sum(sum);
    const int h = row % s.H, bt = row / s.H, t = bt % s.T, b = bt / s.T;
    if (lane == 0) di[(size_t(b) * s.H + h) * s.T + t] = sum;
}

// dK, dV of one key tile: grid (B*H, key tiles s.tile0 ..); warps own 8 keys, lanes the tile's
// queries.
template <int ND>
__global__ void __launch_bounds__(kFlashThreads, kDkdvMinBlocks)
flash_backward_dkdv_kernel(float* __restrict__ dqkv, const float* __restrict__ dy,
                           const float* __restrict__ qkv, const float* __restrict__ lse,
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
    const float* base = qkv + size_t(b) * T * row_stride + size_t(h) * D;
    const float* dy_base = dy + size_t(b) * T * C + size_t(h) * D;
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
        float* out = dqkv + (size_t(b) * T + key) * row_stride + size_t(h) * D;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n) {
            const int d = lane + 32 * n;
            if (d < D) {
                out[C + d] = dk[r][n] * s.scale;
                out[2 * C + d] = dv[r][n];
            }
        }
    }
}

// dQ of one query tile: grid (B*H, query tiles s.tile0 ..), heaviest first; warps own 8
// queries, lanes the tile's keys.
template <int ND>
__global__ void __launch_bounds__(kFlashThreads, flash_min_blocks(ND))
flash_backward_dq_kernel(float* __restrict__ dqkv, const float* __restrict__ dy,
                         const float* __restrict__ qkv, const float* __restrict__ lse,
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
    const float* base = qkv + size_t(b) * T * row_stride + size_t(h) * D;
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
        float* out = dqkv + (size_t(b) * T + t) * row_stride + size_t(h) * D;
        ATTN_UNROLL
        for (int n = 0; n < ND; ++n)
            if (lane + 32 * n < D) out[lane + 32 * n] = dq[r][n] * s.scale;
    }
}

// ------------------------------------------------------------------------- materialised (a)
// One operand of a batched matmul: element (z, i, j) at p + b*sb + h*sh + i*sr + j*sc with
// b = z / H, h = z % H. Transposes are strides.
struct Operand {
    float* p;
    int64_t sb, sh, sr, sc;
    __device__ __forceinline__ float* at(int b, int h) const { return p + b * sb + h * sh; }
};

constexpr int kMmTile = 32;

// C[z] = alpha * A[z] (M x K) . B[z] (K x N); a block per 32x32 tile of C, 16x16 threads with
// 2x2 outputs each (rows ty, ty+16; columns tx, tx+16). score_window > 0: C is a [queries x
// keys] score matrix and tiles with no visible entry are skipped (left unwritten; the row
// kernels never read them).
__global__ void __launch_bounds__(256)
batched_matmul_kernel(Operand c, Operand a, Operand bm, int M, int N, int K, int H, float alpha,
                      int score_window) {
    SCRATCH_SHARED(float, a_sh, [kMmTile][kMmTile + 1]);   // [i][k]
    SCRATCH_SHARED(float, b_sh, [kMmTile][kMmTile + 1]);   // [k][j]
    const int i0 = blockIdx.y * kMmTile, j0 = blockIdx.x * kMmTile;
    if (score_window > 0 && (j0 > i0 + kMmTile - 1 || j0 + kMmTile - 1 <= i0 - score_window))
        return;   // the whole block leaves before any barrier
    const int z = blockIdx.z, b = z / H, h = z % H;
    const float* A = a.at(b, h);
    const float* Bp = bm.at(b, h);
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * 16 + tx;
    float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
    for (int k0 = 0; k0 < K; k0 += kMmTile) {
        // consecutive threads walk the operand's unit-stride axis (coalesced; the +1 column
        // keeps the transposed shared-memory stores free of bank conflicts)
        for (int e = tid; e < kMmTile * kMmTile; e += 256) {
            const int hi = e / kMmTile, lo = e % kMmTile;
            int r = a.sc == 1 ? hi : lo, q = a.sc == 1 ? lo : hi;
            a_sh[r][q] = (i0 + r < M && k0 + q < K) ? A[(i0 + r) * a.sr + (k0 + q) * a.sc] : 0.0f;
            r = bm.sc == 1 ? hi : lo, q = bm.sc == 1 ? lo : hi;
            b_sh[r][q] = (k0 + r < K && j0 + q < N) ? Bp[(k0 + r) * bm.sr + (j0 + q) * bm.sc] : 0.0f;
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
    float* out = c.at(b, h);
    for (int u = 0; u < 2; ++u)
        for (int v = 0; v < 2; ++v) {
            const int i = i0 + ty + 16 * u, j = j0 + tx + 16 * v;
            if (i < M && j < N) out[i * c.sr + j * c.sc] = alpha * acc[u][v];
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
template <int ND>
__global__ void __launch_bounds__(32 * kDecodeWarps)
decode_kernel(float* __restrict__ y, const float* __restrict__ q, const float* __restrict__ k,
              const float* __restrict__ v, int H, int Tn, int S, int D, int t0, int w,
              float scale, bool vec4) {
    SCRATCH_SHARED(float, p_sh, [kDecodeWarps][32]);
    SCRATCH_SHARED(float, o_sh, [kDecodeWarps][ND * 32]);
    SCRATCH_SHARED(float, m_sh, [kDecodeWarps]);
    SCRATCH_SHARED(float, l_sh, [kDecodeWarps]);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = blockIdx.x;   // (b * H + h) * Tn + i
    const int i = g % Tn, bh = g / Tn, h = bh % H, b = bh / H;
    const int t = t0 + i;
    const float* qr = q + size_t(g) * D;
    const float* kb = k + size_t(bh) * S * D;
    const float* vb = v + size_t(bh) * S * D;
    const int last = min(t, S - 1), first = max(0, t - w + 1);
    float o[ND], m = kNegInf, l = 0.0f;
    ATTN_UNROLL
    for (int n = 0; n < ND; ++n) o[n] = 0.0f;
    for (int j0 = first + 32 * warp; j0 <= last; j0 += 32 * kDecodeWarps) {
        const int j = j0 + lane;
        float x = kNegInf;
        if (j <= last) {
            // the q row is the same address for every lane (a broadcast); lane j walks key row j
            const float* kr = kb + size_t(j) * D;
            float dot = 0.0f;
            if (vec4) {
                for (int d = 0; d < D; d += 4) {
                    const float4 a = load_float4(qr + d), c = load_float4(kr + d);
                    dot = fmaf(a.x, c.x, fmaf(a.y, c.y, fmaf(a.z, c.z, fmaf(a.w, c.w, dot))));
                }
            } else {
                for (int d = 0; d < D; ++d) dot = fmaf(qr[d], kr[d], dot);
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
            const float* vr = vb + size_t(j0 + jj) * D;
            ATTN_UNROLL
            for (int n = 0; n < ND; ++n)
                if (lane + 32 * n < D) o[n] = fmaf(pj, vr[lane + 32 * n], o[n]);
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
    float* yr = y + (size_t(b) * Tn + i) * H * D + size_t(h) * D;
    ATTN_UNROLL
    for (int n = 0; n < ND; ++n)
        if (lane + 32 * n < D) yr[lane + 32 * n] = acc[n] * inv;
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

// qkv [B, T, 3C] checked; returns the shape (w = T when window == 0).
Shape check_qkv(const Tensor& qkv, int n_head, int window) {
    expect_input(qkv, DType::F32);
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
    s.vec4 = s.D % 4 == 0 && is_aligned(qkv.data, 16);
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

// The flash kernels: a block per (batch, head) on grid.x and per tile along T on grid.y, whose
// limit (65535 tiles: T = 2,097,120) longer sequences pass by several launches over ranges of
// tiles, each starting at s.tile0 (a kernel parameter: it costs the kernels, at their register
// budget, no register, where a tile index spread over grid.y and grid.z or a division did).
// `heaviest_first`: the forward and dQ passes launch the last (longest) tiles first, as their
// blocks within a launch also run. launch_one(shape, grid) launches one range.
constexpr int kMaxTilesPerLaunch = 65535;

template <typename F>
void launch_tile_ranges(Shape s, bool heaviest_first, F&& launch_one) {
    const int tiles = ceil_div(s.T, kTile);
    for (int done = 0; done < tiles; done += kMaxTilesPerLaunch) {
        const int count = std::min(kMaxTilesPerLaunch, tiles - done);
        s.tile0 = heaviest_first ? tiles - done - count : done;
        launch_one(s, dim3(unsigned(s.B * s.H), unsigned(count)));
    }
}

Operand operand(const float* p, int64_t sb, int64_t sh, int64_t sr, int64_t sc) {
    return Operand{const_cast<float*>(p), sb, sh, sr, sc};
}

void batched_matmul(const char* name, Operand c, Operand a, Operand b, int M, int N, int K, const Shape& s,
                    float alpha, int score_window, cudaStream_t stream) {
    if (int64_t(s.B) * s.H > 65535) throw ValueError("qkv: B * n_head exceeds 65535 (the materialised version's grid)");
    launch(name, batched_matmul_kernel, dim3(ceil_div(N, kMmTile), ceil_div(M, kMmTile), s.B * s.H),
           dim3(16, 16), 0, stream, c, a, b, M, N, K, s.H, alpha, score_window);
}

}  // namespace

void attention_forward(const Tensor& y, const Tensor& lse, const Tensor& qkv, int n_head, int window,
                       Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    expect_output(y, DType::F32);
    expect_shape(y, {s.B, s.T, s.C()});
    expect_output(lse, DType::F32);
    expect_shape(lse, {s.B, s.H, s.T});
    expect_same_device({&qkv, &y, &lse});
    expect_disjoint_outputs({&y, &lse}, {&qkv, &y, &lse});
    with_nd(s.D, [&](auto nd) {
        launch_tile_ranges(s, true, [&](const Shape& r, dim3 grid) {
            launch("flash_forward_kernel", flash_forward_kernel<decltype(nd)::value>, grid,
                   dim3(kFlashThreads), flash_forward_smem(s.D), static_cast<cudaStream_t>(stream),
                   y.ptr<float>(), lse.ptr<float>(), qkv.ptr<float>(), r);
        });
    });
}

void attention_backward(const Tensor& dqkv, const Tensor& di, const Tensor& dy, const Tensor& qkv,
                        const Tensor& y, const Tensor& lse, int n_head, int window, Stream stream) {
    Shape s = check_qkv(qkv, n_head, window);
    expect_input(dy, DType::F32);
    expect_shape(dy, {s.B, s.T, s.C()});
    expect_input(y, DType::F32);
    expect_shape(y, {s.B, s.T, s.C()});
    expect_input(lse, DType::F32);
    expect_shape(lse, {s.B, s.H, s.T});
    expect_output(di, DType::F32);
    expect_shape(di, {s.B, s.H, s.T});
    expect_output(dqkv, DType::F32);
    expect_same_shape(dqkv, qkv);
    expect_same_device({&qkv, &dy, &y, &lse, &di, &dqkv});
    expect_disjoint_outputs({&di, &dqkv}, {&qkv, &dy, &y, &lse, &di, &dqkv});
    s.vec4 = s.vec4 && is_aligned(dy.data, 16);
    auto st = static_cast<cudaStream_t>(stream);
    const int rows = s.B * s.T * s.H;
    launch("flash_backward_rowdot_kernel", flash_backward_rowdot_kernel, dim3(ceil_div(rows, 8)), dim3(256),
           0, st, di.ptr<float>(), dy.ptr<float>(), y.ptr<float>(), s);
    with_nd(s.D, [&](auto nd) {
        constexpr int ND = decltype(nd)::value;
        launch_tile_ranges(s, false, [&](const Shape& r, dim3 grid) {
            launch("flash_backward_dkdv_kernel", flash_backward_dkdv_kernel<ND>, grid, dim3(kFlashThreads),
                   flash_dkdv_smem(s.D), st, dqkv.ptr<float>(), dy.ptr<float>(), qkv.ptr<float>(),
                   lse.ptr<float>(), di.ptr<float>(), r);
        });
        launch_tile_ranges(s, true, [&](const Shape& r, dim3 grid) {
            launch("flash_backward_dq_kernel", flash_backward_dq_kernel<ND>, grid, dim3(kFlashThreads),
                   flash_dq_smem(s.D), st, dqkv.ptr<float>(), dy.ptr<float>(), qkv.ptr<float>(),
                   lse.ptr<float>(), di.ptr<float>(), r);
        });
    });
}

void attention_materialized_forward(const Tensor& y, const Tensor& probs, const Tensor& qkv, int n_head,
                                    int window, Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    expect_output(y, DType::F32);
    expect_shape(y, {s.B, s.T, s.C()});
    expect_output(probs, DType::F32);
    expect_shape(probs, {s.B, s.H, s.T, s.T});
    expect_same_device({&qkv, &y, &probs});
    expect_disjoint_outputs({&y, &probs}, {&qkv, &y, &probs});
    auto st = static_cast<cudaStream_t>(stream);
    const int64_t T = s.T, C = s.C(), D = s.D, H = s.H;
    const float* x = qkv.ptr<float>();
    const Operand q = operand(x, T * 3 * C, D, 3 * C, 1);
    const Operand kt = operand(x + C, T * 3 * C, D, 1, 3 * C);   // K^T: [d][key]
    const Operand v = operand(x + 2 * C, T * 3 * C, D, 3 * C, 1);
    const Operand p = operand(probs.ptr<float>(), H * T * T, T * T, T, 1);
    batched_matmul("batched_matmul_kernel(S = Q K^T)", p, q, kt, s.T, s.T, s.D, s, 1.0f, s.w, st);
    const int rows = to_int(int64_t(s.B) * H * T, "rows of probs");
    launch("masked_softmax_kernel", masked_softmax_kernel, dim3(ceil_div(rows, 8)), dim3(256), 0, st,
           probs.ptr<float>(), rows, s.T, s.w, s.scale);
    const Operand out = operand(y.ptr<float>(), T * C, D, C, 1);
    batched_matmul("batched_matmul_kernel(Y = P V)", out, p, v, s.T, s.D, s.T, s, 1.0f, 0, st);
}

void attention_materialized_backward(const Tensor& dqkv, const Tensor& dprobs, const Tensor& dy,
                                     const Tensor& qkv, const Tensor& probs, int n_head, int window,
                                     Stream stream) {
    const Shape s = check_qkv(qkv, n_head, window);
    expect_input(dy, DType::F32);
    expect_shape(dy, {s.B, s.T, s.C()});
    expect_input(probs, DType::F32);
    expect_shape(probs, {s.B, s.H, s.T, s.T});
    expect_output(dprobs, DType::F32);
    expect_shape(dprobs, {s.B, s.H, s.T, s.T});
    expect_output(dqkv, DType::F32);
    expect_same_shape(dqkv, qkv);
    expect_same_device({&qkv, &dy, &probs, &dprobs, &dqkv});
    expect_disjoint_outputs({&dprobs, &dqkv}, {&qkv, &dy, &probs, &dprobs, &dqkv});
    auto st = static_cast<cudaStream_t>(stream);
    const int64_t T = s.T, C = s.C(), D = s.D, H = s.H;
    const float* x = qkv.ptr<float>();
    float* g = dqkv.ptr<float>();
    const Operand q = operand(x, T * 3 * C, D, 3 * C, 1);
    const Operand k = operand(x + C, T * 3 * C, D, 3 * C, 1);
    const Operand vt = operand(x + 2 * C, T * 3 * C, D, 1, 3 * C);
    const Operand dyo = operand(dy.ptr<float>(), T * C, D, C, 1);
    const Operand pt = operand(probs.ptr<float>(), H * T * T, T * T, 1, T);
    const Operand ds = operand(dprobs.ptr<float>(), H * T * T, T * T, T, 1);
    const Operand dst = operand(dprobs.ptr<float>(), H * T * T, T * T, 1, T);
    batched_matmul("batched_matmul_kernel(dP = dY V^T)", ds, dyo, vt, s.T, s.T, s.D, s, 1.0f, s.w, st);
    const int rows = to_int(int64_t(s.B) * H * T, "rows of probs");
    launch("masked_softmax_backward_kernel", masked_softmax_backward_kernel, dim3(ceil_div(rows, 8)),
           dim3(256), 0, st, dprobs.ptr<float>(), probs.ptr<float>(), rows, s.T, s.w);
    batched_matmul("batched_matmul_kernel(dV = P^T dY)", operand(g + 2 * C, T * 3 * C, D, 3 * C, 1), pt,
                   dyo, s.T, s.D, s.T, s, 1.0f, 0, st);
    batched_matmul("batched_matmul_kernel(dQ = dS K)", operand(g, T * 3 * C, D, 3 * C, 1), ds, k, s.T,
                   s.D, s.T, s, s.scale, 0, st);
    batched_matmul("batched_matmul_kernel(dK = dS^T Q)", operand(g + C, T * 3 * C, D, 3 * C, 1), dst, q,
                   s.T, s.D, s.T, s, s.scale, 0, st);
}

void attention_decode(const Tensor& y, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      int t0, int window, Stream stream) {
    expect_input(q, DType::F32);
    expect_input(k_cache, DType::F32);
    expect_input(v_cache, DType::F32);
    if (q.ndim != 4) throw ValueError(str(q.name, ": expected 4 dimensions [B, H, Tn, D], got ", q.ndim));
    const int B = to_int(q.size(0), "batch of q"), H = to_int(q.size(1), "heads of q");
    const int Tn = to_int(q.size(2), "queries of q"), D = to_int(q.size(3), "head_dim of q");
    if (D < 1 || D > kMaxHeadDim)
        throw ValueError(str(q.name, ": head_dim must be 1 .. ", kMaxHeadDim, ", got ", D));
    if (k_cache.ndim != 4) throw ValueError(str(k_cache.name, ": expected 4 dimensions [B, H, S, D], got ", k_cache.ndim));
    const int S = to_int(k_cache.size(2), "cached positions");
    expect_shape(k_cache, {B, H, S, D});
    expect_same_shape(v_cache, k_cache);
    if (t0 < 0) throw ValueError(str("t0: expected a non-negative position, got ", t0));
    if (int64_t(t0) + Tn > S)
        throw ValueError(str("t0: queries at ", t0, " .. ", int64_t(t0) + Tn - 1, " need their keys in the cache of ",
                             S, " positions"));
    if (window < 0) throw ValueError(str("window: expected a positive integer (0: causal), got ", window));
    expect_output(y, DType::F32);
    expect_shape(y, {B, Tn, int64_t(H) * D});
    expect_same_device({&q, &k_cache, &v_cache, &y});
    expect_disjoint_outputs({&y}, {&q, &k_cache, &v_cache, &y});
    to_int(k_cache.numel(), "size of k_cache");
    const int rows = to_int(int64_t(B) * H * Tn, "queries");
    const int w = window == 0 ? S : window;
    const bool vec4 = D % 4 == 0 && is_aligned(q.data, 16) && is_aligned(k_cache.data, 16);
    with_nd(D, [&](auto nd) {
        launch("decode_kernel", decode_kernel<decltype(nd)::value>, dim3(rows), dim3(32 * kDecodeWarps), 0,
               static_cast<cudaStream_t>(stream), y.ptr<float>(), q.ptr<float>(), k_cache.ptr<float>(),
               v_cache.ptr<float>(), H, Tn, S, D, t0, w, 1.0f / std::sqrt(float(D)),
               vec4);
    });
}

}  // namespace scratch::kernels
