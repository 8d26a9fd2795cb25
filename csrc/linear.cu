// csrc/linear.cu — the linear layer (docs/gradients/linear.md, python/scratchgpt/reference/linear.py),
// float32 throughout (no TF32). Weight in [OUT, IN] layout, x flattened to [M, IN] rows.
//
//   forward   out[M, OUT] = x[M, IN] W[OUT, IN]^T + b      (bias fused into the epilogue)
//   backward  dx[M, IN]   = dy[M, OUT] W[OUT, IN]
//             dW[OUT, IN] = dy[M, OUT]^T x[M, IN]
//             db[OUT]     = column sums of dy              (deterministic two-stage reduction)
//
// The three products are one SGEMM, C[m, n] = sum_k A(m, k) B(k, n) (+ bias[n]), with each
// operand read either k-contiguous or row-contiguous (template flags):
//   forward  A = x  (A(m,k) = x[m*IN + k],   k-contiguous)  B = W (B(k,n) = W[n*IN + k],   k-contiguous)
//   dx       A = dy (A(m,k) = dy[m*OUT + k], k-contiguous)  B = W (B(k,n) = W[k*IN + n],   n-contiguous)
//   dW       A = dy (A(m,k) = dy[k*OUT + m], m-contiguous)  B = x (B(k,n) = x[k*IN + n],   n-contiguous)
//
// Version 2 (the default) — tiled SGEMM, register-blocked:
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
//
// db: a block owns 32 columns and a chunk of kRowsPerChunk rows of dy (blockIdx.x = chunk *
// column blocks + column block); its 32 x 8 threads walk
// the rows (coalesced across columns), meet in shared memory and write one partial per column
// per chunk; a second kernel sums the partials in chunk order. No atomics: bit-identical runs.
// (db costs one extra read of dy; folding it into the dW GEMM would save it but put a branch
// into every block's inner loop for the one column of blocks that owns the sums.)
#include <algorithm>

#include "core/kernel.h"
#include "csrc/launchers.h"

// Full unrolling of the fixed-trip tile loops (register arrays must not be indexed dynamically);
// the host compiler unrolls them on its own at -O2.
#if defined(__CUDACC__)
#define SCRATCH_UNROLL _Pragma("unroll")
#else
#define SCRATCH_UNROLL
#endif

namespace scratch::kernels {
namespace {

// ------------------------------------------------------------------------ version 1: naive
constexpr int kNaiveBlockX = 32, kNaiveBlockY = 8;

// A(m, k) = A[m*lda + k] when kAKMajor, else A[k*lda + m]; B(k, n) = B[n*ldb + k] when
// kBKMajor, else B[k*ldb + n].
template <bool kAKMajor, bool kBKMajor>
__global__ void __launch_bounds__(kNaiveBlockX * kNaiveBlockY)
matmul_naive_kernel(float* __restrict__ C, const float* __restrict__ A, const float* __restrict__ B,
                    const float* __restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc) {
    const int tiles_n = (N + kNaiveBlockX - 1) / kNaiveBlockX;
    const int tile_m = int(blockIdx.x) / tiles_n, tile_n = int(blockIdx.x) - tile_m * tiles_n;
    const int n = tile_n * kNaiveBlockX + threadIdx.x;
    const int m = tile_m * kNaiveBlockY + threadIdx.y;
    if (m >= M || n >= N) return;
    float acc = 0.0f;
    for (int k = 0; k < K; ++k) {
        const float a = kAKMajor ? A[size_t(m) * lda + k] : A[size_t(k) * lda + m];
        const float b = kBKMajor ? B[size_t(n) * ldb + k] : B[size_t(k) * ldb + n];
        acc += a * b;   // one FFMA (nvcc contracts; the host has no fmaf instruction by default)
    }
    C[size_t(m) * ldc + n] = bias ? acc + bias[n] : acc;
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

// ------------------------------------------------------------------------------------ db
constexpr int kRowsPerChunk = 256;
constexpr int kFinalizeThreads = 256;

// Block (32, 8), blockIdx.x = chunk * column blocks + column block: column
// column block * 32 + threadIdx.x, rows of the chunk strided by 8.
__global__ void __launch_bounds__(256)
column_sum_partial_kernel(float* __restrict__ partial, const float* __restrict__ dy, int M, int N) {
    SCRATCH_SHARED(float, part, [8][33]);   // +1: the transposed read below is conflict-free
    const int column_blocks = (N + 31) / 32;
    const int chunk = int(blockIdx.x) / column_blocks;
    const int c = (int(blockIdx.x) - chunk * column_blocks) * 32 + threadIdx.x;
    const int row_begin = chunk * kRowsPerChunk;   // < M
    const int row_end = M - row_begin < kRowsPerChunk ? M : row_begin + kRowsPerChunk;
    float acc = 0.0f;
    if (c < N)
        for (int r = row_begin + threadIdx.y; r < row_end; r += 8)
            acc += dy[size_t(r) * N + c];
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

// Split-K epilogue: C[m, n] = sum over z of partial[z][m][n] (+ bias[n]), z in order.
__global__ void __launch_bounds__(kFinalizeThreads)
split_k_reduce_kernel(float* __restrict__ C, const float* __restrict__ partial,
                      const float* __restrict__ bias, int M, int N, int ldc, int splits) {
    const int64_t count = int64_t(M) * N;
    const int64_t stride = int64_t(gridDim.x) * blockDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += stride) {
        const int m = int(i / N), n = int(i % N);
        float s = bias ? bias[n] : 0.0f;
        for (int z = 0; z < splits; ++z) s += partial[z * count + i];
        C[size_t(m) * ldc + n] = s;
    }
}

// ------------------------------------------------------------------------------ dispatch
// One GEMM problem: C[M, N] (+)= A B (+ bias), operands described as in the kernels.
struct Gemm {
    float* C;
    const float* A;
    const float* B;
    const float* bias;   // may be null
    int M, N, K, lda, ldb, ldc;
};

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
constexpr int kSplitMinK = 256;   // each split runs at least this many k (>= 16 tile steps)
constexpr int kMaxSplits = 16;

struct Plan {
    bool large;          // 128-tiles (else 64-tiles)
    int splits;          // >= 1
    int k_per_split;     // a multiple of the tile's BK
};

Plan plan_tiled(int M, int N, int K) {
    if (M == 0 || N == 0) return {false, 1, K};   // nothing to compute
    const int64_t large_blocks = int64_t(ceil_div(M, LargeTile::BM)) * ceil_div(N, LargeTile::BN);
    if (large_blocks >= kLargeTileMinBlocks) return {true, 1, K};
    const int64_t blocks = int64_t(ceil_div(M, SmallTile::BM)) * ceil_div(N, SmallTile::BN);
    int64_t splits = std::min<int64_t>({kMaxSplits, K / kSplitMinK, ceil_div<int64_t>(kLargeTileMinBlocks, blocks)});
    if (splits <= 1) return {false, 1, K};
    const int k_per_split = int(ceil_div<int64_t>(ceil_div<int64_t>(K, splits), SmallTile::BK) * SmallTile::BK);
    return {false, ceil_div(K, k_per_split), k_per_split};
}

int64_t split_k_floats(int M, int N, int K) {
    const Plan p = plan_tiled(M, N, K);
    return p.splits > 1 ? int64_t(p.splits) * M * N : 0;
}

template <class T, bool kAKMajor, bool kBKMajor, bool kVecA, bool kVecB>
void launch_tiled_with(const char* name, const Gemm& g, const Plan& p, float* partial, cudaStream_t s) {
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
    const int64_t count = int64_t(g.M) * g.N;
    launch("linear split-K reduce", split_k_reduce_kernel,
           dim3(int(std::min<int64_t>(ceil_div<int64_t>(count, kFinalizeThreads), 1024))),
           dim3(kFinalizeThreads), 0, s, g.C, static_cast<const float*>(partial), g.bias, g.M, g.N,
           g.ldc, p.splits);
}

template <class T, bool kAKMajor, bool kBKMajor>
void launch_tiled_shape(const char* name, const Gemm& g, const Plan& p, float* partial, cudaStream_t s) {
    // the contiguous extent of A is K (k-major) or M; of B, K or N
    const bool va = float4_ok(g.A, kAKMajor ? g.K : g.M, g.lda);
    const bool vb = float4_ok(g.B, kBKMajor ? g.K : g.N, g.ldb);
    if (va && vb) launch_tiled_with<T, kAKMajor, kBKMajor, true, true>(name, g, p, partial, s);
    else if (va) launch_tiled_with<T, kAKMajor, kBKMajor, true, false>(name, g, p, partial, s);
    else if (vb) launch_tiled_with<T, kAKMajor, kBKMajor, false, true>(name, g, p, partial, s);
    else launch_tiled_with<T, kAKMajor, kBKMajor, false, false>(name, g, p, partial, s);
}

// `partial`: split_k_floats(M, N, K) floats of workspace, or null (then no split).
template <bool kAKMajor, bool kBKMajor>
void matmul(const char* name, const Gemm& g, int version, float* partial, cudaStream_t s) {
    if (g.M == 0 || g.N == 0) return;
    if (version == 1) {
        launch(name, matmul_naive_kernel<kAKMajor, kBKMajor>,
               flat_grid(ceil_div(g.M, kNaiveBlockY), ceil_div(g.N, kNaiveBlockX)),
               dim3(kNaiveBlockX, kNaiveBlockY), 0, s, g.C, g.A, g.B, g.bias, g.M, g.N, g.K,
               g.lda, g.ldb, g.ldc);
        return;
    }
    Plan p = plan_tiled(g.M, g.N, g.K);
    if (!partial) p = {p.large, 1, g.K};
    if (p.large) launch_tiled_shape<LargeTile, kAKMajor, kBKMajor>(name, g, p, partial, s);
    else launch_tiled_shape<SmallTile, kAKMajor, kBKMajor>(name, g, p, partial, s);
}

void check_version(int version) {
    if (version != 1 && version != 2)
        throw ValueError(str("version: expected 1 (naive) or 2 (tiled), got ", version));
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

// x [..., IN] -> (rows, IN); weight [OUT, IN] -> OUT. Leading axes of x are flattened.
struct Dims {
    int M, IN, OUT;
};

Dims linear_dims(const Tensor& x, const Tensor& weight) {
    expect_input(x, DType::F32);
    expect_input(weight, DType::F32);
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

}  // namespace

void linear_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                    int version, Stream stream) {
    const Dims d = linear_dims(x, weight);
    if (bias) {
        expect_input(*bias, DType::F32);
        expect_shape(*bias, {d.OUT});
    }
    expect_output(out, DType::F32);
    expect_rows_like(out, x, d.OUT);
    expect_same_device({&x, &weight, &out});
    if (bias) expect_same_device({&x, bias});
    expect_disjoint(out, {&x, &weight, bias});
    check_version(version);

    const Gemm g{out.ptr<float>(), x.ptr<float>(), weight.ptr<float>(), bias ? bias->ptr<float>() : nullptr,
                 d.M, d.OUT, d.IN, /*lda*/ d.IN, /*ldb*/ d.IN, /*ldc*/ d.OUT};
    matmul<true, true>(version == 1 ? "linear_forward (v1 naive)" : "linear_forward (v2 tiled)", g,
                       version, nullptr, static_cast<cudaStream_t>(stream));
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
    const Dims d = linear_dims(x, weight);
    expect_input(dout, DType::F32);
    expect_rows_like(dout, x, d.OUT);
    expect_output(dx, DType::F32);
    expect_same_shape(dx, x);
    expect_output(dweight, DType::F32);
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
        expect_output(*dbias, DType::F32);
        expect_shape(*dbias, {d.OUT});
        expect_same_device({&x, dbias});
        expect_disjoint(*dbias, {&x, &weight, &dout});
    }
    check_version(version);

    auto s = static_cast<cudaStream_t>(stream);
    const bool naive = version == 1;
    // dx[M, IN] = dy[M, OUT] W[OUT, IN]
    matmul<true, false>(naive ? "linear_backward_dx (v1 naive)" : "linear_backward_dx (v2 tiled)",
                        Gemm{dx.ptr<float>(), dout.ptr<float>(), weight.ptr<float>(), nullptr,
                             d.M, d.IN, d.OUT, d.OUT, d.IN, d.IN},
                        version, workspace.ptr<float>(), s);
    // dW[OUT, IN] = dy[M, OUT]^T x[M, IN]: the contraction runs over the rows
    matmul<false, false>(naive ? "linear_backward_dweight (v1 naive)" : "linear_backward_dweight (v2 tiled)",
                         Gemm{dweight.ptr<float>(), dout.ptr<float>(), x.ptr<float>(), nullptr,
                              d.OUT, d.IN, d.M, d.OUT, d.IN, d.IN},
                         version, workspace.ptr<float>(), s);
    if (dbias) {
        const int chunks = ceil_div(d.M, kRowsPerChunk);   // 0 rows: the finalize writes zeros
        if (chunks > 0)
            launch("linear_backward_dbias_partial", column_sum_partial_kernel,
                   flat_grid(chunks, ceil_div(d.OUT, 32)), dim3(32, 8), 0, s, workspace.ptr<float>(),
                   dout.ptr<float>(), d.M, d.OUT);
        launch("linear_backward_dbias_finalize", column_sum_finalize_kernel,
               dim3(ceil_div(d.OUT, kFinalizeThreads)), dim3(kFinalizeThreads), 0, s,
               dbias->ptr<float>(), workspace.ptr<float>(), chunks, d.OUT);
    }
}

}  // namespace scratch::kernels
