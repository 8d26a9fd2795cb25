// csrc/linear.cu — the linear layer (docs/gradients/linear.md, python/scratchgpt/reference/linear.py).
// Weight in [OUT, IN] layout, x flattened to [M, IN] rows. Storage float32 (no TF32), or bfloat16 /
// float16 (mixed precision: DESIGN.md, "Precision"), picked by x's dtype; one source for all three.
//
//   forward   out[M, OUT] = x[M, IN] W[OUT, IN]^T + b      (bias fused into the epilogue)
//   backward  dx[M, IN]   = dy[M, OUT] W[OUT, IN]
//             dW[OUT, IN] = dy[M, OUT]^T x[M, IN]
//             db[OUT]     = column sums of dy              (deterministic two-stage reduction)
//
// dtypes per argument:   x, W, b, out, dy, dx   dW, db, workspace
//   float32              float32                float32
//   bf16 / fp16 (T)      T                      float32 (parameter gradients are fp32)
// With T, each output is one rounding of an fp32 value: out = round_T(fp32(x W^T) + b) (the bias
// widened and added in fp32 before the single rounding), dx = round_T(fp32(dy W)); dW and db stay
// the fp32 sums. The NumPy reference (precision.py's StorageOp) rounds at the same places.
//
// The three products are one GEMM, C[m, n] = sum_k A(m, k) B(k, n) (+ bias[n]), with each
// operand read either k-contiguous or row-contiguous (template flags):
//   forward  A = x  (A(m,k) = x[m*IN + k],   k-contiguous)  B = W (B(k,n) = W[n*IN + k],   k-contiguous)
//   dx       A = dy (A(m,k) = dy[m*OUT + k], k-contiguous)  B = W (B(k,n) = W[k*IN + n],   n-contiguous)
//   dW       A = dy (A(m,k) = dy[k*OUT + m], m-contiguous)  B = x (B(k,n) = x[k*IN + n],   n-contiguous)
//
// Version 2 for float32 (the default) — tiled SGEMM, register-blocked:
//   block   a BM x BN tile of C (128 x 128, or 64 x 64 when 128-tiles would leave SMs idle):
//           blockIdx.x = tile row * tile columns + tile column (row tiles on grid.x, whose
//           2^31 - 1 no matrix reaches; on grid.y they would cap M at 65535 tiles, 8.4 M rows),
//           blockIdx.z the split-K slice. It walks K in steps of BK, staging a BK x BM slice of A and a BK x BN slice of B in
//           shared memory, k-major ([k][m], [k][n]) whatever the global layout, so the inner loop
//           reads both with float4 loads. Two shared buffers: the next slice is fetched from
//           global memory into registers while the current one is multiplied, then written to the
//           other buffer — one __syncthreads per K step.
//   thread  a TM x TN register tile (8 x 8, or 4 x 4) made of 4 x 4 sub-tiles spaced BM/2 (BN/2)
//           apart, so a quarter-warp's float4 reads of a shared row are 128 contiguous bytes (no
//           bank conflicts) and its float4 stores of C are contiguous too.
//   warp    32 threads = 2 thread-rows x 16 thread-columns: a 16 x 128 (8 x 64) strip of C; its
//           A-fragment reads are broadcasts, its B-fragment reads conflict-free.
//   global  float4 loads along the contiguous dimension when that extent and the row pitch are
//           multiples of 4 and the pointer is 16-byte aligned (then a float4 is wholly inside
//           or wholly outside the matrix); a scalar path otherwise. Out-of-range elements load as
//           zeros and out-of-range outputs are not stored, so any M, N, K >= 0 works.
//   A k-contiguous operand is transposed on its way into shared memory; its rows are padded by
//   4 floats so that the transposing stores of a warp fall in different banks and float4 reads
//   stay 16-byte aligned.
// Traffic per block and K step: (BM + BN) * BK floats from global (L2) for 2 * BM * BN * BK
// flops: arithmetic intensity BM*BN / (2 (BM + BN)) = 32 flop/byte for 128-tiles, enough to be
// compute-bound on an A100/H100 in fp32.
//
// Split-K (backward only, where the launcher has a workspace): when even 64-tiles leave the GPU
// idle but K is long — dW = dy^T x of a [C, C] layer sums over all B*T rows — up to 16 blocks
// share a tile, each over its own K range, writing [splits, M, N] partials that a second kernel
// adds in split order (deterministic) with the bias.
//
// Version 1 — the baseline, kept for study: one thread per output element, a dot product over
// K straight from global memory (block 32 x 8, threadIdx.x along n for coalesced B and C; the
// blocks of a 32-column x 8-row tiling in one grid.x, row tile * column tiles + column tile).
// Every A and B element is re-read by each of the N (M) threads that need it, through L1/L2,
// with one load per FMA: memory/latency-bound where version 2 is compute-bound.
// Version 1 is templated on the storage type: with T it reads T, sums in fp32, rounds once.
//
// Version 2 for bf16 / fp16 (T) — tensor cores: mma.sync m16n8k16 (T x T products, fp32
// accumulate), ldmatrix, cp.async (core/mma.h: PTX on sm_80+, the PTX ISA's fragment layouts
// emulated on the host executor). The same kernel serves the three products:
//   block   a BM x BN tile of C: 128 x 128 with 8 warps (2 x 4) when there are at least 2 blocks
//           per SM of an H100 (264), else 64 x 64 with 4 warps (2 x 2); BK = 32. blockIdx.x =
//           tile row * tile columns + tile column, blockIdx.z the split-K slice (as version 2).
//   warp    a WM x WN sub-tile (64 x 32, or 32 x 32): MI x NI = 4 x 4 (2 x 4) accumulators of
//           16 x 8 fp32 in registers (64 / 32 floats per thread). Per 16-wide k step it loads
//           A's MI 16 x 16 fragments with ldmatrix.x4 and B's NI 16 x 8 fragments, two per
//           ldmatrix.x4, then issues MI * NI mma. Operands stay in their global layout in shared
//           memory, so the layout decides the ldmatrix form:
//             A k-contiguous (x, dy in dx):   tile [BM][BK + 8], ldmatrix.x4       (row-major A)
//             A m-contiguous (dy^T in dW):    tile [BK][BM + 8], ldmatrix.x4.trans
//             B k-contiguous (W in forward):  tile [BN][BK + 8], ldmatrix.x4       ("col" B)
//             B n-contiguous (W in dx, x):    tile [BK][BN + 8], ldmatrix.x4.trans
//           The 8 halves (16 bytes) of padding keep every row 16-byte aligned, as ldmatrix and
//           cp.async need, and put the 8 rows one 8x8 matrix reads in 8 different 16-byte bank
//           groups (row pitch 80 or 272 bytes): conflict-free.
//   pipeline  three shared stages filled by cp.async (16 bytes per copy, one group per k tile):
//           tiles kt + 1 and kt + 2 are in flight while tile kt is multiplied; one __syncthreads
//           per k tile both publishes tile kt and frees the stage the next copy overwrites.
//           Chunks past M, N or K are zero-filled by the copy itself (src_bytes < 16), so any
//           M, N, K >= 0 works; a k step wholly past K is skipped. An operand whose rows are not
//           16-byte aligned (pitch not a multiple of 8 elements, or a misaligned array) is loaded
//           with plain loads into the same stages instead (slower, same arithmetic).
//   epilogue  fp32 accumulators + bias (fp32), rounded once to T (or kept fp32 for dW and the
//           split-K partials); pairs of adjacent columns stored as one 32-bit (T) or 64-bit
//           (fp32) store where the rows allow it; bounds-checked.
//   shared  3 stages x (A tile + B tile) = 60 KiB (128-tiles, both k-contiguous) / 30 KiB (64).
// Traffic per block and k tile: (BM + BN) * BK * 2 bytes for 2 * BM * BN * BK flops, arithmetic
// intensity BM * BN / (BM + BN) = 64 flop/byte for 128-tiles (32 for 64-tiles) from L2; across
// the grid each operand is re-read once per tile row / column (N / BN times for A). The
// tensor cores of an A100 (312 TFLOP/s bf16 at ~2 TB/s HBM, ~5 TB/s L2) need about 60 flop per
// L2 byte: the 128-tile sits at the ridge, the 64-tile serves shapes too small to fill the GPU.
// On Hopper, mma.sync itself caps the kernel well below the wgmma peak (see the report in
// docs/gradients/linear.md). Split-K as for float32: partials in fp32, summed in split order,
// the bias and the one rounding to T applied by the reduce kernel.
//
// GELU is not fused into the forward's epilogue: the model calls the gelu op on the stored T
// output (its backward recomputes from it), so fusing would need the model to save the
// pre-activation as well; it saves one read and one write of [M, 4C] T values per MLP.
//
// db: a block owns 32 columns and a chunk of kRowsPerChunk rows of dy (blockIdx.x = chunk *
// column blocks + column block); its 32 x 8 threads walk
// the rows (coalesced across columns), meet in shared memory and write one partial per column
// per chunk; a second kernel sums the partials in chunk order. No atomics: bit-identical runs.
// (db costs one extra read of dy; folding it into the dW GEMM would save it but put a branch
// into every block's inner loop for the one column of blocks that owns the sums.)
#include <algorithm>

#include "core/half.h"
#include "core/kernel.h"
#include "core/mma.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

// ------------------------------------------------------------------------ version 1: naive
constexpr int kNaiveBlockX = 32, kNaiveBlockY = 8;

// A(m, k) = A[m*lda + k] when kAKMajor, else A[k*lda + m]; B(k, n) = B[n*ldb + k] when
// kBKMajor, else B[k*ldb + n]. Storage T (float, bf16, fp16) in, fp32 sums, TOut out (T, or
// float for the parameter gradient).
template <bool kAKMajor, bool kBKMajor, typename T, typename TOut>
__global__ void __launch_bounds__(kNaiveBlockX * kNaiveBlockY)
matmul_naive_kernel(TOut* __restrict__ C, const T* __restrict__ A, const T* __restrict__ B,
                    const T* __restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc) {
    const int tiles_n = (N + kNaiveBlockX - 1) / kNaiveBlockX;
    const int tile_m = int(blockIdx.x) / tiles_n, tile_n = int(blockIdx.x) - tile_m * tiles_n;
    const int n = tile_n * kNaiveBlockX + threadIdx.x;
    const int m = tile_m * kNaiveBlockY + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const float a = to_float(kAKMajor ? A[size_t(m) * lda + k] : A[size_t(k) * lda + m]);
        const float b = to_float(kBKMajor ? B[size_t(n) * ldb + k] : B[size_t(k) * ldb + n]);
        acc += a * b;   // one FFMA (nvcc contracts; the host has no fmaf instruction by default)
    }
    C[size_t(m) * ldc + n] = from_float<TOut>(bias ? acc + to_float(bias[n]) : acc);
}

// ------------------------------------------------------------------------ version 2: tiled
constexpr int kSmemPad = 4;   // floats of padding per shared row: keeps float4 alignment

// Moves one operand's ROWS x BK slice (rows r0.., k0..) between global memory, registers and a
// k-major shared tile S[BK][ROWS + kSmemPad]. The operand is X(r, k) = X[r*ld + k] (kKMajor)
// or X[k*ld + r]; `rows` and K bound it. With kVec every float4 lies wholly in or out of range.
template <int ROWS, int BK, int kThreads, bool kKMajor, bool kVec>
struct TileLoader {
    static constexpr int kFloats = ROWS * BK / kThreads;   // per thread
    static_assert(ROWS * BK % (4 * kThreads) == 0, "each thread moves whole float4s");
    using Smem = float[BK][ROWS + kSmemPad];

    __device__ __forceinline__ static void load(float (&reg)[kFloats], const float* __restrict__ X,
                                                int ld, int rows, int K, int r0, int k0, int tid) {
        if (kVec) {
            SCRATCH_UNROLL
            for (int i = 0; i < kFloats / 4; ++i) {
                const int f = tid + i * kThreads;   // float4 index within the slice
                int r, k;
                if (kKMajor) r = f / (BK / 4), k = f % (BK / 4) * 4;
                else k = f / (ROWS / 4), r = f % (ROWS / 4) * 4;
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (r0 + r < rows && k0 + k < K)
                    v = load_float4(kKMajor ? X + size_t(r0 + r) * ld + (k0 + k)
                                            : X + size_t(k0 + k) * ld + (r0 + r));
                reg[4 * i] = v.x, reg[4 * i + 1] = v.y, reg[4 * i + 2] = v.z, reg[4 * i + 3] = v.w;
            }
        } else {
            SCRATCH_UNROLL
            for (int i = 0; i < kFloats; ++i) {
                const int e = tid + i * kThreads;   // consecutive threads: consecutive addresses
                int r, k;
                if (kKMajor) r = e / BK, k = e % BK;
                else k = e / ROWS, r = e % ROWS;
                reg[i] = (r0 + r < rows && k0 + k < K)
                             ? (kKMajor ? X[size_t(r0 + r) * ld + (k0 + k)] : X[size_t(k0 + k) * ld + (r0 + r)])
                             : 0.0f;
            }
        }
    }

    __device__ __forceinline__ static void store(const float (&reg)[kFloats], Smem& S, int tid) {
        if (kVec) {
            SCRATCH_UNROLL
            for (int i = 0; i < kFloats / 4; ++i) {
                const int f = tid + i * kThreads;
                if (kKMajor) {   // transpose: four k's of one row
                    const int r = f / (BK / 4), k = f % (BK / 4) * 4;
                    SCRATCH_UNROLL
                    for (int j = 0; j < 4; ++j) S[k + j][r] = reg[4 * i + j];
                } else {
                    const int k = f / (ROWS / 4), r = f % (ROWS / 4) * 4;
                    store_float4(&S[k][r], make_float4(reg[4 * i], reg[4 * i + 1], reg[4 * i + 2], reg[4 * i + 3]));
                }
            }
        } else {
            SCRATCH_UNROLL
            for (int i = 0; i < kFloats; ++i) {
                const int e = tid + i * kThreads;
                if (kKMajor) S[e % BK][e / BK] = reg[i];
                else S[e / ROWS][e % ROWS] = reg[i];
            }
        }
    }
};

// kMinBlocks: resident blocks per SM asked of ptxas (caps registers at 65536 / (256 * kMinBlocks)).
template <int BM_, int BN_, int BK_, int TM_, int TN_, int kMinBlocks_>
struct TileShape {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_, kMinBlocks = kMinBlocks_;
    static constexpr int kThreadCols = BN / TN, kThreadRows = BM / TM;
    static constexpr int kThreads = kThreadCols * kThreadRows;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register tiles are made of 4 x 4 sub-tiles");
};
using LargeTile = TileShape<128, 128, 8, 8, 8, 2>;   // 256 threads, 64 outputs each, <= 128 registers
using SmallTile = TileShape<64, 64, 16, 4, 4, 4>;    // 256 threads, 16 outputs each, <= 64 registers

template <class T, bool kAKMajor, bool kBKMajor, bool kVecA, bool kVecB>
__global__ void __launch_bounds__(T::kThreads, T::kMinBlocks)
matmul_tiled_kernel(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                    const float* __restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc,
                    int k_per_split, bool vec_c) {
    constexpr int BM = T::BM, BN = T::BN, BK = T::BK, TM = T::TM, TN = T::TN;
    constexpr int kSubM = TM / 4, kSubN = TN / 4;             // 4 x 4 sub-tiles per thread
    constexpr int kStrideM = BM / kSubM, kStrideN = BN / kSubN;   // their spacing
    using LoadA = TileLoader<BM, BK, T::kThreads, kAKMajor, kVecA>;
    using LoadB = TileLoader<BN, BK, T::kThreads, kBKMajor, kVecB>;
    SCRATCH_SHARED(float, As, [2][BK][BM + kSmemPad]);
    SCRATCH_SHARED(float, Bs, [2][BK][BN + kSmemPad]);

    const int tid = threadIdx.x;
    const int tx = tid % T::kThreadCols, ty = tid / T::kThreadCols;
    const int tiles_n = (N + BN - 1) / BN;
    const int tile_m = int(blockIdx.x) / tiles_n;
    const int m0 = tile_m * BM, n0 = (int(blockIdx.x) - tile_m * tiles_n) * BN;
    // split-K: block z sums k in [z * k_per_split, +k_per_split) into its own slice of C
    // (a multiple of BK: float4 alignment survives the offset)
    const int k_begin = blockIdx.z * k_per_split;
    K = min(K - k_begin, k_per_split);
    A += kAKMajor ? size_t(k_begin) : size_t(k_begin) * lda;
    B += kBKMajor ? size_t(k_begin) : size_t(k_begin) * ldb;
    C += size_t(blockIdx.z) * M * ldc;

    float acc[TM][TN];
    SCRATCH_UNROLL
    for (int i = 0; i < TM; ++i)
        SCRATCH_UNROLL
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    float reg_a[LoadA::kFloats], reg_b[LoadB::kFloats];
    const int steps = (K + BK - 1) / BK;
    if (steps > 0) {
        LoadA::load(reg_a, A, lda, M, K, m0, 0, tid);
        LoadB::load(reg_b, B, ldb, N, K, n0, 0, tid);
        LoadA::store(reg_a, As[0], tid);
        LoadB::store(reg_b, Bs[0], tid);
    }
    __syncthreads();

    for (int step = 0; step < steps; ++step) {
        const int cur = step & 1;
        const bool more = step + 1 < steps;
        if (more) {   // issue the next slice's global loads; they land while we compute
            LoadA::load(reg_a, A, lda, M, K, m0, (step + 1) * BK, tid);
            LoadB::load(reg_b, B, ldb, N, K, n0, (step + 1) * BK, tid);
        }
        SCRATCH_UNROLL
        for (int kk = 0; kk < BK; ++kk) {
            float a[TM], b[TN];
            SCRATCH_UNROLL
            for (int s = 0; s < kSubM; ++s) {
                const float4 v = load_float4(&As[cur][kk][ty * 4 + s * kStrideM]);
                a[4 * s] = v.x, a[4 * s + 1] = v.y, a[4 * s + 2] = v.z, a[4 * s + 3] = v.w;
            }
            SCRATCH_UNROLL
            for (int s = 0; s < kSubN; ++s) {
                const float4 v = load_float4(&Bs[cur][kk][tx * 4 + s * kStrideN]);
                b[4 * s] = v.x, b[4 * s + 1] = v.y, b[4 * s + 2] = v.z, b[4 * s + 3] = v.w;
            }
            SCRATCH_UNROLL
            for (int i = 0; i < TM; ++i)
                SCRATCH_UNROLL
                for (int j = 0; j < TN; ++j) acc[i][j] += a[i] * b[j];   // FFMA on the GPU
        }
        if (more) {   // the other buffer was last read before the previous barrier
            LoadA::store(reg_a, As[cur ^ 1], tid);
            LoadB::store(reg_b, Bs[cur ^ 1], tid);
        }
        __syncthreads();
    }

    // Epilogue: + bias, bounds-checked stores (float4 when every row of C is 16-byte aligned).
    SCRATCH_UNROLL
    for (int sn = 0; sn < kSubN; ++sn) {
        const int n = n0 + tx * 4 + sn * kStrideN;
        float bv[4];
        SCRATCH_UNROLL
        for (int j = 0; j < 4; ++j) bv[j] = (bias && n + j < N) ? bias[n + j] : 0.0f;
        SCRATCH_UNROLL
        for (int sm = 0; sm < kSubM; ++sm) {
            SCRATCH_UNROLL
            for (int i = 0; i < 4; ++i) {
                const int m = m0 + ty * 4 + sm * kStrideM + i;
                if (m >= M) continue;
                const float* r = &acc[sm * 4 + i][sn * 4];
                float* out = C + size_t(m) * ldc + n;
                if (vec_c) {
                    if (n < N) store_float4(out, make_float4(r[0] + bv[0], r[1] + bv[1], r[2] + bv[2], r[3] + bv[3]));
                } else {
                    SCRATCH_UNROLL
                    for (int j = 0; j < 4; ++j)
                        if (n + j < N) out[j] = r[j] + bv[j];
                }
            }
        }
    }
}

// ------------------------------------------------- version 2 for bf16 / fp16: tensor cores
constexpr int kMmaPad = 8;   // halves of padding per shared row: 16 bytes (see the header)

// BM x BN block tile, BK-deep k tiles, WM x WN per warp, kStages shared stages; kMinBlocks:
// resident blocks per SM asked of ptxas.
template <int BM_, int BN_, int BK_, int WM_, int WN_, int kStages_, int kMinBlocks_>
struct MmaShape {
    static constexpr int BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
    static constexpr int kStages = kStages_, kMinBlocks = kMinBlocks_;
    static constexpr int kWarpsN = BN / WN, kWarps = (BM / WM) * kWarpsN, kThreads = 32 * kWarps;
    static constexpr int MI = WM / 16, NI = WN / 8;   // 16 x 8 accumulator tiles per warp
    static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0 && BK % 16 == 0,
                  "warps hold whole 16 x 16 pairs of accumulators; k advances 16 at a time");
    static_assert(kStages >= 2 && kStages - 2 <= 7, "cp.async.wait_group takes 0 .. 7");
};
using MmaLarge = MmaShape<128, 128, 32, 64, 32, 3, 2>;   // 8 warps (2 x 4), 64 accumulators each
using MmaSmall = MmaShape<64, 64, 32, 32, 32, 3, 4>;     // 4 warps (2 x 2), 32 accumulators each

__device__ __forceinline__ uint16_t bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
__device__ __forceinline__ uint16_t bits16(__half v) { return __half_as_ushort(v); }

// One operand's ROWS x BK slice in shared memory, kept in its global layout: [ROWS][BK + pad]
// when the operand is k-contiguous (X(r, k) = X[r*ld + k]), else [BK][ROWS + pad] (X[k*ld + r]).
// load() moves one k tile from global memory, 16 bytes (8 elements along the contiguous axis)
// per chunk, by cp.async (async: rows 16-byte aligned) or by plain loads; elements past `rows`
// or K read as zeros.
template <int ROWS, int BK, int kThreads, bool kKMajor>
struct MmaTile {
    static constexpr int kLd = (kKMajor ? BK : ROWS) + kMmaPad;   // shared row pitch (elements)
    static constexpr int kElems = (kKMajor ? ROWS : BK) * kLd;
    static constexpr int kChunks = ROWS * BK / 8;
    static_assert(kChunks % kThreads == 0, "every thread copies whole 16-byte chunks");

    template <typename T>
    __device__ __forceinline__ static void load(uint16_t* S, const T* __restrict__ X, int ld, int rows,
                                                int K, int r0, int k0, int tid, bool async) {
        SCRATCH_UNROLL
        for (int i = 0; i < kChunks / kThreads; ++i) {
            const int c = tid + i * kThreads;   // consecutive threads: consecutive 16 bytes
            int s_off, line, col, extent;       // chunk = X[line*ld + col .. +8), valid cols < extent
            bool line_ok;
            if (kKMajor) {
                const int r = c / (BK / 8), k = c % (BK / 8) * 8;
                s_off = r * kLd + k, line = r0 + r, line_ok = line < rows, col = k0 + k, extent = K;
            } else {
                const int k = c / (ROWS / 8), r = c % (ROWS / 8) * 8;
                s_off = k * kLd + r, line = k0 + k, line_ok = line < K, col = r0 + r, extent = rows;
            }
            const int n = line_ok ? max(0, min(8, extent - col)) : 0;   // elements inside the matrix
            const T* src = X + (n ? size_t(line) * ld + col : 0);       // X itself when none: aligned
            if (async) {
                cp_async_16(S + s_off, src, 2 * n);                      // the rest zero-filled
            } else {
                SCRATCH_UNROLL
                for (int e = 0; e < 8; ++e) S[s_off + e] = e < n ? bits16(src[e]) : uint16_t(0);
            }
        }
    }
};

// A's 16 x 16 fragment at rows m.., k.. of the shared tile (registers a[0..3] of mma's A layout):
// ldmatrix.x4's four 8 x 8 matrices are A's quarters (m 0-7 | 8-15) x (k 0-7 | 8-15), in the
// order a0a1, a2a3, a4a5, a6a7; lane l gives the row address of matrix l / 8, row l % 8.
template <bool kKMajor, int kLd>
__device__ __forceinline__ void load_a_fragment(uint32_t a[4], const uint16_t* S, int m, int k, int lane) {
    if (kKMajor)   // rows are m: lanes 0-15 rows m + 0..15 at k, lanes 16-31 the same at k + 8
        ldmatrix_x4(a, S + (m + (lane & 15)) * kLd + k + (lane >> 4) * 8);
    else           // rows are k: .trans hands each lane (k = 2t, 2t+1; m = g), A's pairs
        ldmatrix_x4_trans(a, S + (k + (lane & 7) + (lane >> 4) * 8) * kLd + m + ((lane >> 3) & 1) * 8);
}

// B's two 16 x 8 fragments at k.., columns n.. and n + 8.. (b_lo, b_hi: mma's B layout, k pairs
// down a column): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7), (n 8-15, k 8-15).
template <bool kKMajor, int kLd>
__device__ __forceinline__ void load_b_fragments(uint32_t b_lo[2], uint32_t b_hi[2], const uint16_t* S, int n,
                                                 int k, int lane) {
    uint32_t r[4];
    if (kKMajor)   // rows are n ("col" B): a row of the 8 x 8 matrix is a column of B
        ldmatrix_x4(r, S + (n + (lane & 7) + (lane >> 4) * 8) * kLd + k + ((lane >> 3) & 1) * 8);
    else           // rows are k: transposed on the way, as for A
        ldmatrix_x4_trans(r, S + (k + (lane & 7) + ((lane >> 3) & 1) * 8) * kLd + n + (lane >> 4) * 8);
    b_lo[0] = r[0], b_lo[1] = r[1], b_hi[0] = r[2], b_hi[1] = r[3];
}

// Two adjacent outputs (n, n + 1) of one row in one store (the row pair is aligned: see pair_c).
template <typename TOut>
__device__ __forceinline__ void store_pair(TOut* p, float lo, float hi) {
    if constexpr (std::is_same_v<TOut, float>) {
        store_float2(p, make_float2(lo, hi));
    } else {
        *reinterpret_cast<uint32_t*>(p) = pack2<TOut>(lo, hi);
    }
}

// C[M, N] (TOut) = A B (+ bias), A and B of storage T (bf16 or fp16), read as described in the
// header; k_per_split as in the float32 kernel. async_a / async_b: the operand's rows are 16-byte
// aligned (cp.async); pair_c: every row of C starts 2 * sizeof(TOut)-aligned.
template <class S, typename T, typename TOut, bool kAKMajor, bool kBKMajor>
__global__ void __launch_bounds__(S::kThreads, S::kMinBlocks)
matmul_mma_kernel(TOut* __restrict__ C, const T* __restrict__ A, const T* __restrict__ B,
                  const T* __restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc,
                  int k_per_split, bool async_a, bool async_b, bool pair_c) {
    using TileA = MmaTile<S::BM, S::BK, S::kThreads, kAKMajor>;
    using TileB = MmaTile<S::BN, S::BK, S::kThreads, kBKMajor>;
    SCRATCH_DYNAMIC_SHARED(uint16_t, smem);   // [kStages][A tile], then [kStages][B tile]
    uint16_t* const As = smem;
    uint16_t* const Bs = smem + S::kStages * TileA::kElems;

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / S::kWarpsN * S::WM, wn = warp % S::kWarpsN * S::WN;   // the warp's sub-tile
    const int tiles_n = (N + S::BN - 1) / S::BN;
    const int tile_m = int(blockIdx.x) / tiles_n;
    const int m0 = tile_m * S::BM, n0 = (int(blockIdx.x) - tile_m * tiles_n) * S::BN;
    const int k_begin = blockIdx.z * k_per_split;   // a multiple of BK: alignment survives
    K = min(K - k_begin, k_per_split);
    A += kAKMajor ? size_t(k_begin) : size_t(k_begin) * lda;
    B += kBKMajor ? size_t(k_begin) : size_t(k_begin) * ldb;
    C += size_t(blockIdx.z) * M * ldc;

    float acc[S::MI][S::NI][4];
    SCRATCH_UNROLL
    for (int i = 0; i < S::MI; ++i)
        SCRATCH_UNROLL
        for (int j = 0; j < S::NI; ++j)
            SCRATCH_UNROLL
            for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;

    // Prologue: tiles 0 .. kStages - 2 in flight, one commit group each (empty past the end, so
    // that group g always holds tile g and the wait below counts right).
    const int tiles_k = (K + S::BK - 1) / S::BK;
    SCRATCH_UNROLL
    for (int s = 0; s < S::kStages - 1; ++s) {
        if (s < tiles_k) {
            TileA::load(As + s * TileA::kElems, A, lda, M, K, m0, s * S::BK, tid, async_a);
            TileB::load(Bs + s * TileB::kElems, B, ldb, N, K, n0, s * S::BK, tid, async_b);
        }
        cp_async_commit();
    }

    for (int kt = 0; kt < tiles_k; ++kt) {
        cp_async_wait<S::kStages - 2>();   // this thread's copies of tile kt have landed
        __syncthreads();                   // everyone's have, and everyone is done with tile kt - 1
        const int next = kt + S::kStages - 1;   // refill the stage tile kt - 1 was read from
        if (next < tiles_k) {
            const int s = next % S::kStages;
            TileA::load(As + s * TileA::kElems, A, lda, M, K, m0, next * S::BK, tid, async_a);
            TileB::load(Bs + s * TileB::kElems, B, ldb, N, K, n0, next * S::BK, tid, async_b);
        }
        cp_async_commit();

        const uint16_t* as = As + (kt % S::kStages) * TileA::kElems;
        const uint16_t* bs = Bs + (kt % S::kStages) * TileB::kElems;
        const int k_left = K - kt * S::BK;
        SCRATCH_UNROLL
        for (int kk = 0; kk < S::BK; kk += 16) {
            if (kk >= k_left) break;   // the same for the whole block: the rest of the tile is zeros
            uint32_t a[S::MI][4], b[S::NI][2];
            SCRATCH_UNROLL
            for (int i = 0; i < S::MI; ++i) load_a_fragment<kAKMajor, TileA::kLd>(a[i], as, wm + 16 * i, kk, lane);
            SCRATCH_UNROLL
            for (int j = 0; j < S::NI; j += 2)
                load_b_fragments<kBKMajor, TileB::kLd>(b[j], b[j + 1], bs, wn + 8 * j, kk, lane);
            SCRATCH_UNROLL
            for (int i = 0; i < S::MI; ++i)
                SCRATCH_UNROLL
                for (int j = 0; j < S::NI; ++j) mma_m16n8k16<T>(acc[i][j], a[i], b[j], acc[i][j]);
        }
    }

    // Epilogue: lane (g, t) holds rows g and g + 8, columns 2t and 2t + 1 of each accumulator
    // (MmaLayoutM16N8K16); + bias in fp32, one rounding to TOut.
    using L = MmaLayoutM16N8K16;
    SCRATCH_UNROLL
    for (int j = 0; j < S::NI; ++j) {
        const int n = n0 + wn + 8 * j + L::c_col(lane, 0);   // even
        float b0 = 0.0f, b1 = 0.0f;
        if (bias) {
            if (n < N) b0 = to_float(bias[n]);
            if (n + 1 < N) b1 = to_float(bias[n + 1]);
        }
        SCRATCH_UNROLL
        for (int i = 0; i < S::MI; ++i) {
            SCRATCH_UNROLL
            for (int h = 0; h < 2; ++h) {
                const int m = m0 + wm + 16 * i + L::c_row(lane, 2 * h);
                if (m >= M) continue;
                TOut* out = C + size_t(m) * ldc + n;
                const float v0 = acc[i][j][2 * h] + b0, v1 = acc[i][j][2 * h + 1] + b1;
                if (pair_c && n + 1 < N) {
                    store_pair(out, v0, v1);
                } else {
                    if (n < N) out[0] = from_float<TOut>(v0);
                    if (n + 1 < N) out[1] = from_float<TOut>(v1);
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------ db
constexpr int kRowsPerChunk = 256;
constexpr int kFinalizeThreads = 256;

// Block (32, 8), blockIdx.x = chunk * column blocks + column block: column
// column block * 32 + threadIdx.x, rows of the chunk strided by 8.
template <typename T>
__global__ void __launch_bounds__(256)
column_sum_partial_kernel(float* __restrict__ partial, const T* __restrict__ dy, int M, int N) {
    SCRATCH_SHARED(float, part, [8][33]);   // +1: the transposed read below is conflict-free
    const int column_blocks = (N + 31) / 32;
    const int chunk = int(blockIdx.x) / column_blocks;
    const int c = (int(blockIdx.x) - chunk * column_blocks) * 32 + threadIdx.x;
    const int row_begin = chunk * kRowsPerChunk;   // < M
    const int row_end = M - row_begin < kRowsPerChunk ? M : row_begin + kRowsPerChunk;
    float acc = 0.0f;
    if (c < N)
        for (int r = row_begin + threadIdx.y; r < row_end; r += 8)
            acc += to_float(dy[size_t(r) * N + c]);
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < N) {
        float s = 0.0f;
        SCRATCH_UNROLL
        for (int k = 0; k < 8; ++k) s += part[k][threadIdx.x];
        partial[size_t(chunk) * N + c] = s;
    }
}

__global__ void __launch_bounds__(kFinalizeThreads)
column_sum_finalize_kernel(float* __restrict__ db, const float* __restrict__ partial, int chunks, int N) {
    const int c = blockIdx.x * kFinalizeThreads + threadIdx.x;
    if (c >= N) return;
    float s = 0.0f;
    for (int k = 0; k < chunks; ++k) s += partial[size_t(k) * N + c];
    db[c] = s;
}

// Split-K epilogue: C[m, n] = sum over z of partial[z][m][n] (+ bias[n]), z in order, in fp32,
// then stored as TOut (one rounding for bf16 / fp16).
template <typename TOut, typename TBias>
__global__ void __launch_bounds__(kFinalizeThreads)
split_k_reduce_kernel(TOut* __restrict__ C, const float* __restrict__ partial,
                      const TBias* __restrict__ bias, int M, int N, int ldc, int splits) {
    const int64_t count = int64_t(M) * N;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
        const int m = int(i / N), n = int(i % N);
        float s = bias ? to_float(bias[n]) : 0.0f;
        for (int z = 0; z < splits; ++z) s += partial[z * count + i];
        C[size_t(m) * ldc + n] = from_float<TOut>(s);
    }
}

// ------------------------------------------------------------------------------ dispatch
// One GEMM problem: C[M, N] = A B (+ bias), operands described as in the kernels; storage T
// (float, or bf16 / fp16 for the tensor cores), output TOut (T, or float for dW).
template <typename T, typename TOut>
struct Gemm {
    TOut* C;
    const T* A;
    const T* B;
    const T* bias;   // may be null
    int M, N, K, lda, ldb, ldc;
};
using GemmF32 = Gemm<float, float>;

// 128-tiles need this many blocks to keep every SM of an A100/H100 busy (2 blocks per SM);
// below it the 64-tiles' 4x more blocks win despite their lower arithmetic intensity.
constexpr int kLargeTileMinBlocks = 2 * 132;

bool float4_ok(const float* p, int extent, int ld) {
    return extent % 4 == 0 && ld % 4 == 0 && is_aligned(p, 16);
}

// rows x columns blocks, flattened onto grid.x (the kernels split blockIdx.x back).
dim3 flat_grid(int64_t rows, int64_t columns, unsigned z = 1) {
    const int64_t blocks = rows * columns;
    if (blocks > 2147483647)
        throw ValueError(str("linear: ", rows, " x ", columns, " blocks exceed the grid's 2^31 - 1"));
    return dim3(unsigned(blocks), 1, z);
}

// Split-K, for products whose output has too few tiles to fill the GPU but whose K is long
// (dW = dy^T x: a [C, C] output summed over B*T rows): `splits` blocks share each tile, each
// over its own K range, into a workspace [splits, M, N] that a second kernel sums in a fixed
// order — deterministic, no atomics. Costs 2 * splits * M * N floats of extra traffic.
constexpr int kSplitMinK = 256;   // each split runs at least this many k (>= 8 tile steps)
constexpr int kMaxSplits = 16;

struct Plan {
    bool large;          // 128-tiles (else 64-tiles)
    int splits;          // >= 1
    int k_per_split;     // a multiple of the tile's BK
};

// The same rule for both kernel families: Large / Small are their two tile shapes.
template <class Large, class Small>
Plan plan_for(int M, int N, int K) {
    if (M == 0 || N == 0) return {false, 1, K};   // nothing to compute
    const int64_t large_blocks = int64_t(ceil_div(M, Large::BM)) * ceil_div(N, Large::BN);
    if (large_blocks >= kLargeTileMinBlocks) return {true, 1, K};
    const int64_t blocks = int64_t(ceil_div(M, Small::BM)) * ceil_div(N, Small::BN);
    int64_t splits = std::min<int64_t>({kMaxSplits, K / kSplitMinK, ceil_div<int64_t>(kLargeTileMinBlocks, blocks)});
    if (splits <= 1) return {false, 1, K};
    const int k_per_split = int(ceil_div<int64_t>(ceil_div<int64_t>(K, splits), Small::BK) * Small::BK);
    return {false, ceil_div(K, k_per_split), k_per_split};
}
Plan plan_tiled(int M, int N, int K) { return plan_for<LargeTile, SmallTile>(M, N, K); }
Plan plan_mma(int M, int N, int K) { return plan_for<MmaLarge, MmaSmall>(M, N, K); }

// Workspace floats for either family (the binding does not know the dtype in advance).
int64_t split_k_floats(int M, int N, int K) {
    const int splits = std::max(plan_tiled(M, N, K).splits, plan_mma(M, N, K).splits);
    return splits > 1 ? int64_t(splits) * M * N : 0;
}

template <typename TOut, typename TBias>
void launch_split_reduce(TOut* C, const float* partial, const TBias* bias, int M, int N, int ldc, int splits,
                         cudaStream_t s) {
    const int64_t count = int64_t(M) * N;
    launch("linear split-K reduce", split_k_reduce_kernel<TOut, TBias>,
           dim3(int(std::min<int64_t>(ceil_div<int64_t>(count, kFinalizeThreads), 1024))),
           dim3(kFinalizeThreads), 0, s, C, partial, bias, M, N, ldc, splits);
}

template <class T, bool kAKMajor, bool kBKMajor, bool kVecA, bool kVecB>
void launch_tiled_with(const char* name, const GemmF32& g, const Plan& p, float* partial, cudaStream_t s) {
    if (p.splits == 1) {
        launch(name, matmul_tiled_kernel<T, kAKMajor, kBKMajor, kVecA, kVecB>,
               flat_grid(ceil_div(g.M, T::BM), ceil_div(g.N, T::BN)), dim3(T::kThreads), 0, s,
               g.C, g.A, g.B, g.bias, g.M, g.N, g.K, g.lda, g.ldb, g.ldc, g.K, float4_ok(g.C, g.N, g.ldc));
        return;
    }
    launch(name, matmul_tiled_kernel<T, kAKMajor, kBKMajor, kVecA, kVecB>,
           flat_grid(ceil_div(g.M, T::BM), ceil_div(g.N, T::BN), p.splits), dim3(T::kThreads), 0, s,
           partial, g.A, g.B, static_cast<const float*>(nullptr), g.M, g.N, g.K, g.lda, g.ldb, g.N,
           p.k_per_split, float4_ok(partial, g.N, g.N));
    launch_split_reduce(g.C, partial, g.bias, g.M, g.N, g.ldc, p.splits, s);
}

template <class T, bool kAKMajor, bool kBKMajor>
void launch_tiled_shape(const char* name, const GemmF32& g, const Plan& p, float* partial, cudaStream_t s) {
    // the contiguous extent of A is K (k-major) or M; of B, K or N
    const bool va = float4_ok(g.A, kAKMajor ? g.K : g.M, g.lda);
    const bool vb = float4_ok(g.B, kBKMajor ? g.K : g.N, g.ldb);
    if (va && vb) launch_tiled_with<T, kAKMajor, kBKMajor, true, true>(name, g, p, partial, s);
    else if (va) launch_tiled_with<T, kAKMajor, kBKMajor, true, false>(name, g, p, partial, s);
    else if (vb) launch_tiled_with<T, kAKMajor, kBKMajor, false, true>(name, g, p, partial, s);
    else launch_tiled_with<T, kAKMajor, kBKMajor, false, false>(name, g, p, partial, s);
}

// cp.async can move the operand's rows: each starts 16-byte aligned.
bool rows16_ok(const void* p, int ld) { return ld % 8 == 0 && is_aligned(p, 16); }

// One tensor-core launch: C (TOut) = A B (+ bias) over `grid` (z = the split-K slices).
template <class S, bool kAKMajor, bool kBKMajor, typename T, typename TOut>
void launch_mma(const char* name, dim3 grid, TOut* C, const Gemm<T, TOut>& g, int ldc, const T* bias,
                int k_per_split, cudaStream_t s) {
    constexpr size_t smem = sizeof(uint16_t) * S::kStages *
                            (MmaTile<S::BM, S::BK, S::kThreads, kAKMajor>::kElems +
                             MmaTile<S::BN, S::BK, S::kThreads, kBKMajor>::kElems);
    launch(name, matmul_mma_kernel<S, T, TOut, kAKMajor, kBKMajor>, grid, dim3(S::kThreads), smem, s,
           C, g.A, g.B, bias, g.M, g.N, g.K, g.lda, g.ldb, ldc, k_per_split, rows16_ok(g.A, g.lda),
           rows16_ok(g.B, g.ldb), ldc % 2 == 0 && is_aligned(C, 2 * sizeof(TOut)));
}

// `partial`: split_k_floats(M, N, K) floats of workspace, or null (then no split).
template <bool kAKMajor, bool kBKMajor, typename T, typename TOut>
void matmul(const char* name, const Gemm<T, TOut>& g, int version, float* partial, cudaStream_t s) {
    if (g.M == 0 || g.N == 0) return;
    if (version == 1) {
        launch(name, matmul_naive_kernel<kAKMajor, kBKMajor, T, TOut>,
               flat_grid(ceil_div(g.M, kNaiveBlockY), ceil_div(g.N, kNaiveBlockX)),
               dim3(kNaiveBlockX, kNaiveBlockY), 0, s, g.C, g.A, g.B, g.bias, g.M, g.N, g.K,
               g.lda, g.ldb, g.ldc);
        return;
    }
    if constexpr (std::is_same_v<T, float>) {
        Plan p = plan_tiled(g.M, g.N, g.K);
        if (!partial) p = {p.large, 1, g.K};
        if (p.large) launch_tiled_shape<LargeTile, kAKMajor, kBKMajor>(name, g, p, partial, s);
        else launch_tiled_shape<SmallTile, kAKMajor, kBKMajor>(name, g, p, partial, s);
    } else {
        Plan p = plan_mma(g.M, g.N, g.K);
        if (!partial) p = {p.large, 1, g.K};
        if (p.splits == 1) {
            if (p.large)
                launch_mma<MmaLarge, kAKMajor, kBKMajor>(name, flat_grid(ceil_div(g.M, MmaLarge::BM),
                                                                         ceil_div(g.N, MmaLarge::BN)),
                                                         g.C, g, g.ldc, g.bias, g.K, s);
            else
                launch_mma<MmaSmall, kAKMajor, kBKMajor>(name, flat_grid(ceil_div(g.M, MmaSmall::BM),
                                                                         ceil_div(g.N, MmaSmall::BN)),
                                                         g.C, g, g.ldc, g.bias, g.K, s);
            return;
        }
        // fp32 partials [splits, M, N], summed in split order with the bias, rounded once
        const Gemm<T, float> gp{partial, g.A, g.B, nullptr, g.M, g.N, g.K, g.lda, g.ldb, g.N};
        launch_mma<MmaSmall, kAKMajor, kBKMajor>(name, flat_grid(ceil_div(g.M, MmaSmall::BM),
                                                                 ceil_div(g.N, MmaSmall::BN), p.splits),
                                                 partial, gp, g.N, static_cast<const T*>(nullptr),
                                                 p.k_per_split, s);
        launch_split_reduce(g.C, partial, g.bias, g.M, g.N, g.ldc, p.splits, s);
    }
}

void check_version(int version) {
    if (version != 1 && version != 2)
        throw ValueError(str("version: expected 1 (naive) or 2 (tiled), got ", version));
}

// The kernels' names in launch errors, per storage type.
template <typename T>
const char* kernel_name(int product, int version) {
    static const char* const names[2][2][3] = {
        {{"linear_forward (v1 naive)", "linear_backward_dx (v1 naive)", "linear_backward_dweight (v1 naive)"},
         {"linear_forward (v2 tiled)", "linear_backward_dx (v2 tiled)", "linear_backward_dweight (v2 tiled)"}},
        {{"linear_forward (v1 naive, 16-bit)", "linear_backward_dx (v1 naive, 16-bit)",
          "linear_backward_dweight (v1 naive, 16-bit)"},
         {"linear_forward (v2 tensor cores)", "linear_backward_dx (v2 tensor cores)",
          "linear_backward_dweight (v2 tensor cores)"}}};
    return names[std::is_same_v<T, float> ? 0 : 1][version == 1 ? 0 : 1][product];
}

// Byte range [begin, end) of a tensor's elements (contiguous).
bool overlap(const Tensor& a, const Tensor& b) {
    if (a.numel() == 0 || b.numel() == 0) return false;
    const auto* pa = static_cast<const char*>(a.data);
    const auto* pb = static_cast<const char*>(b.data);
    return pa < pb + b.numel() * dtype_size(b.dtype) && pb < pa + a.numel() * dtype_size(a.dtype);
}

void expect_disjoint(const Tensor& out, std::initializer_list<const Tensor*> others) {
    for (const Tensor* t : others)
        if (t && overlap(out, *t))
            throw ValueError(str(out.name, ": must not share memory with ", t->name));
}

// How a storage dtype is named in messages (bfloat16 crosses the binding as uint16 bits).
const char* storage_name(DType d) { return d == DType::U16 ? "bfloat16 (uint16 bits)" : dtype_name(d); }

// `t` is stored as `want` (`why` says why, e.g. " like x") and C-contiguous.
void expect_stored_as(const Tensor& t, DType want, const char* why) {
    if (t.dtype != want)
        throw TypeError(str(t.name, ": expected ", storage_name(want), why, ", got ", storage_name(t.dtype)));
    expect_contiguous(t);
}
void expect_written_as(const Tensor& t, DType want, const char* why) {
    expect_stored_as(t, want, why);
    expect_writable(t);
}
constexpr const char* kLikeX = " like x";
constexpr const char* kFp32Grad = " (parameter gradients are float32)";

// x [..., IN] -> (rows, IN); weight [OUT, IN] -> OUT. Leading axes of x are flattened.
struct Dims {
    int M, IN, OUT;
};

// x's storage picks the kernels: float32, float16, or bfloat16 as uint16 bits.
void expect_storage_dtype(const Tensor& x) {
    if (x.dtype != DType::F32 && x.dtype != DType::F16 && x.dtype != DType::U16)
        throw TypeError(str(x.name, ": expected float32, float16 or bfloat16 (uint16 bits), got ",
                            dtype_name(x.dtype)));
}

Dims linear_dims(const Tensor& x, const Tensor& weight) {
    expect_stored_as(x, x.dtype, "");
    expect_stored_as(weight, x.dtype, kLikeX);
    expect_ndim(x, 1, Tensor::kMaxDims);
    expect_ndim(weight, 2, 2);
    if (weight.shape[1] != x.size(-1))
        throw ValueError(str(weight.name, ": expected shape (*, ", x.size(-1), ") to match ", x.name,
                             "'s last axis, got ", weight.shape_str()));
    const int IN = to_int(x.size(-1), "in_features");
    const int OUT = to_int(weight.shape[0], "out_features");
    int64_t rows = 1;   // product of the leading axes (x.rows() would divide by IN = 0)
    for (int i = 0; i < x.ndim - 1; ++i) rows *= x.shape[i];
    const int M = to_int(rows, "rows of x");
    return {M, IN, OUT};
}

// `t` has x's leading axes and last axis `last`.
void expect_rows_like(const Tensor& t, const Tensor& x, int64_t last) {
    bool ok = t.ndim == x.ndim && t.size(-1) == last;
    for (int i = 0; ok && i < x.ndim - 1; ++i) ok = t.shape[i] == x.shape[i];
    if (!ok) {
        std::string want = "(";
        for (int i = 0; i < x.ndim - 1; ++i) want += std::to_string(x.shape[i]) + ", ";
        want += std::to_string(last) + (x.ndim == 1 ? ",)" : ")");
        throw ValueError(str(t.name, ": expected shape ", want, ", got ", t.shape_str()));
    }
}

// The products on storage T (arguments checked): out = x W^T + b in T; dx in T, dW and db in fp32.
template <typename T>
void forward_as(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias, const Dims& d,
                int version, cudaStream_t s) {
    const Gemm<T, T> g{out.ptr<T>(), x.ptr<T>(), weight.ptr<T>(), bias ? bias->ptr<T>() : nullptr,
                       d.M, d.OUT, d.IN, /*lda*/ d.IN, /*ldb*/ d.IN, /*ldc*/ d.OUT};
    matmul<true, true>(kernel_name<T>(0, version), g, version, nullptr, s);
}

template <typename T>
void backward_as(const Tensor& dx, const Tensor& dweight, const Tensor* dbias, const Tensor& workspace,
                 const Tensor& dout, const Tensor& x, const Tensor& weight, const Dims& d, int version,
                 cudaStream_t s) {
    // dx[M, IN] = dy[M, OUT] W[OUT, IN]
    matmul<true, false>(kernel_name<T>(1, version),
                        Gemm<T, T>{dx.ptr<T>(), dout.ptr<T>(), weight.ptr<T>(), nullptr,
                                   d.M, d.IN, d.OUT, d.OUT, d.IN, d.IN},
                        version, workspace.ptr<float>(), s);
    // dW[OUT, IN] = dy[M, OUT]^T x[M, IN]: the contraction runs over the rows; fp32 out
    matmul<false, false>(kernel_name<T>(2, version),
                         Gemm<T, float>{dweight.ptr<float>(), dout.ptr<T>(), x.ptr<T>(), nullptr,
                                        d.OUT, d.IN, d.M, d.OUT, d.IN, d.IN},
                         version, workspace.ptr<float>(), s);
    if (dbias) {
        const int chunks = ceil_div(d.M, kRowsPerChunk);   // 0 rows: the finalize writes zeros
        if (chunks > 0)
            launch("linear_backward_dbias_partial", column_sum_partial_kernel<T>,
                   flat_grid(chunks, ceil_div(d.OUT, 32)), dim3(32, 8), 0, s, workspace.ptr<float>(),
                   dout.ptr<T>(), d.M, d.OUT);
        launch("linear_backward_dbias_finalize", column_sum_finalize_kernel,
               dim3(ceil_div(d.OUT, kFinalizeThreads)), dim3(kFinalizeThreads), 0, s,
               dbias->ptr<float>(), workspace.ptr<float>(), chunks, d.OUT);
    }
}

}  // namespace

void linear_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                    int version, Stream stream) {
    expect_storage_dtype(x);
    const Dims d = linear_dims(x, weight);
    if (bias) {
        expect_stored_as(*bias, x.dtype, kLikeX);
        expect_shape(*bias, {d.OUT});
    }
    expect_written_as(out, x.dtype, kLikeX);
    expect_rows_like(out, x, d.OUT);
    expect_same_device({&x, &weight, &out});
    if (bias) expect_same_device({&x, bias});
    expect_disjoint(out, {&x, &weight, bias});
    check_version(version);

    const auto s = static_cast<cudaStream_t>(stream);
    if (x.dtype == DType::F32) forward_as<float>(out, x, weight, bias, d, version, s);
    else if (x.dtype == Storage<__nv_bfloat16>::dtype) forward_as<__nv_bfloat16>(out, x, weight, bias, d, version, s);
    else forward_as<__half>(out, x, weight, bias, d, version, s);
}

int64_t linear_backward_workspace(int64_t rows, int64_t in_features, int64_t out_features) {
    const int M = to_int(rows, "rows"), IN = to_int(in_features, "in_features"),
              OUT = to_int(out_features, "out_features");
    // used one after another on the stream: db's partial sums, then each product's split-K slices
    return std::max({ceil_div<int64_t>(M, kRowsPerChunk) * OUT, split_k_floats(M, IN, OUT),
                     split_k_floats(OUT, IN, M)});
}

void linear_backward(const Tensor& dx, const Tensor& dweight, const Tensor* dbias,
                     const Tensor& workspace, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, int version, Stream stream) {
    expect_storage_dtype(x);
    const Dims d = linear_dims(x, weight);
    expect_stored_as(dout, x.dtype, kLikeX);
    expect_rows_like(dout, x, d.OUT);
    expect_written_as(dx, x.dtype, kLikeX);
    expect_same_shape(dx, x);
    expect_written_as(dweight, DType::F32, kFp32Grad);
    expect_same_shape(dweight, weight);
    expect_same_device({&x, &weight, &dout, &dx, &dweight});
    expect_disjoint(dx, {&x, &weight, &dout, &dweight, dbias});
    expect_disjoint(dweight, {&x, &weight, &dout, dbias});
    expect_output(workspace, DType::F32);
    const int64_t need = linear_backward_workspace(d.M, d.IN, d.OUT);
    if (workspace.numel() < need)
        throw ValueError(str(workspace.name, ": expected at least ", need,
                             " floats (linear_backward_workspace), got ", workspace.numel()));
    expect_same_device({&x, &workspace});
    expect_disjoint(workspace, {&x, &weight, &dout, &dx, &dweight, dbias});
    if (dbias) {
        expect_written_as(*dbias, DType::F32, kFp32Grad);
        expect_shape(*dbias, {d.OUT});
        expect_same_device({&x, dbias});
        expect_disjoint(*dbias, {&x, &weight, &dout});
    }
    check_version(version);

    const auto s = static_cast<cudaStream_t>(stream);
    if (x.dtype == DType::F32) backward_as<float>(dx, dweight, dbias, workspace, dout, x, weight, d, version, s);
    else if (x.dtype == Storage<__nv_bfloat16>::dtype)
        backward_as<__nv_bfloat16>(dx, dweight, dbias, workspace, dout, x, weight, d, version, s);
    else backward_as<__half>(dx, dweight, dbias, workspace, dout, x, weight, d, version, s);
}

}  // namespace scratch::kernels
