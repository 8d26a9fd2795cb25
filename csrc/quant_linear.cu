// csrc/quant_linear.cu — the linear layer with weight-only int8 / int4 weights
// (docs/gradients/quant_linear.md, python/scratchgpt/reference/quant_linear.py).
//
//   out[M, N] = x[M, K] W[N, K]^T (+ bias[N]),   W dequantised in registers, never stored
//
// Weight formats (python/scratchgpt/reference/quant_linear.py writes them):
//   int8  q [N, K] int8 (crosses the binding as its uint8 bits), scale [N] float32
//         (symmetric, per output channel):              W[n, k] = float(q[n, k]) * scale[n]
//   int4  q [N, K/2] uint8, two weights per byte (k even in the low nibble, k + 1 in the high),
//         scale [N, K/G] float32, zero [N, K/G] uint8 in 0..15 (asymmetric, per group of G input
//         channels, G even and dividing K):    W[n, k] = float(nib(n, k) - zero[n, k/G]) * scale[n, k/G]
// Each dequantised weight is one fp32 rounding of an exact integer times the scale, so every
// path here (and the reference, and quant_linear_dequantize) produces the same bits for it.
// x, bias and out are T = float32, bfloat16 (uint16 bits) or float16; the products and their sum
// are fp32, rounded once to T after the bias is added (as csrc/linear.cu does).
//
// Two kernels, because the shape of the work differs:
//
// GEMM (prefill, many rows) — a block owns a 64 x 64 tile of out; 16 x 16 threads, each a 4 x 4
//   register tile whose rows and columns are spaced 16 apart (so a warp's shared reads of W are
//   33-float strided: conflict-free; those of x are broadcasts). K is walked in steps of 32: the
//   block stages x's 64 x 32 slice (converted to float) and W's 64 x 32 slice, dequantised once
//   by the thread that loads it, in shared memory, then every thread runs 32 FMAs per output.
//   Each weight byte is read once per tile row of the grid (M / 64 times), not per output row:
//   the dequantisation costs 2048 / (64 * 64 * 32) of the FMAs. Each output's sum runs over k in
//   order, so results do not depend on the grid or the schedule.
//   Traffic per block and K step: 64 * 32 * sizeof(T) of x + 64 * 32 * bits / 8 of W (+ scales).
//
// GEMV (decode, M <= 8 rows) — where weight-only quantisation pays: the product is bound by
//   reading W, and W moves 4x (int8) / ~7x (int4 with its scales and zeros) fewer bytes than fp32.
//   A warp owns output columns n (all M rows), one at a time: as many per warp as leave about
//   264 blocks of 4 warps on a GPU (one column per warp up to N = 1056), or a few blocks per
//   thread on the host executor (gemv_target_blocks). Its 32 lanes walk W's row n in 4-byte words (when the row pitch and the pointer allow, else in bytes), word w by lane
//   w % 32: a warp reads 128 contiguous bytes per step, every byte once. Each lane keeps M
//   partial sums in registers, the warp adds them with shuffles (warp_sum), lane 0 stores.
//   x (M * K values of T) is re-read by every warp, from L1 / L2: 4 KiB for one fp32 token of a
//   1024-wide layer, while W is K * N * bits / 8 (512 KiB in int4).
//
// quant_linear_dequantize writes W as float32 [N, K] (one thread per element, grid-stride): the
// tests compare it bit for bit with the reference's dequantisation, and the compress command's
// numpy path needs no second implementation of the formats.
#include <algorithm>
#include <type_traits>

#include "core/half.h"
#include "core/kernel.h"
#include "csrc/disjoint.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

// The quantised weights of one layer, as the kernels read them.
struct QuantWeights {
    const uint8_t* q;       // int8 bits [N, K], or packed int4 [N, K / 2]
    const float* scale;     // [N] (int8) or [N, groups] (int4)
    const uint8_t* zero;    // [N, groups] (int4); null for int8
    int K, pitch, group, groups;   // pitch: bytes per row of q
};

// W[n, k] from the byte of q that holds it (the formats above): an exact integer times the scale.
template <int kBits>
__device__ __forceinline__ float dequant_byte(const QuantWeights& w, int n, int k, uint32_t byte) {
    if constexpr (kBits == 8) {
        return float(static_cast<int8_t>(static_cast<uint8_t>(byte))) * w.scale[n];
    } else {
        const int nib = int((k & 1) ? (byte >> 4) & 15u : byte & 15u);
        const int64_t g = int64_t(n) * w.groups + k / w.group;
        return float(nib - int(w.zero[g])) * w.scale[g];
    }
}

template <int kBits>
__device__ __forceinline__ float dequant(const QuantWeights& w, int n, int k) {
    return dequant_byte<kBits>(w, n, k, w.q[int64_t(n) * w.pitch + (kBits == 8 ? k : k >> 1)]);
}

// ----------------------------------------------------------------------------------- GEMM
constexpr int kTile = 64, kTileK = 32, kThreadsXY = 16, kPerThread = kTile / kThreadsXY;

template <int kBits, typename T>
__global__ void __launch_bounds__(kThreadsXY * kThreadsXY)
quant_gemm_kernel(T* __restrict__ out, const T* __restrict__ x, QuantWeights w,
                  const T* __restrict__ bias, int M, int N) {
    SCRATCH_SHARED(float, x_sh, [kTile][kTileK + 1]);   // [m][k]
    SCRATCH_SHARED(float, w_sh, [kTile][kTileK + 1]);   // [n][k]
    const int tiles_n = (N + kTile - 1) / kTile;
    const int m0 = int(blockIdx.x) / tiles_n * kTile, n0 = int(blockIdx.x) % tiles_n * kTile;
    const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kThreadsXY + tx;
    const int K = w.K;
    float acc[kPerThread][kPerThread] = {};
    for (int k0 = 0; k0 < K; k0 += kTileK) {
        // 256 threads stage 64 x 32 values of each operand, 8 each, consecutive threads along k
        for (int e = tid; e < kTile * kTileK; e += kThreadsXY * kThreadsXY) {
            const int r = e / kTileK, kk = e % kTileK, k = k0 + kk;
            const int m = m0 + r, n = n0 + r;
            x_sh[r][kk] = (m < M && k < K) ? to_float(x[int64_t(m) * K + k]) : 0.0f;
            w_sh[r][kk] = (n < N && k < K) ? dequant<kBits>(w, n, k) : 0.0f;
        }
        __syncthreads();
        const int kn = K - k0 < kTileK ? K - k0 : kTileK;
        for (int kk = 0; kk < kn; ++kk) {
            float a[kPerThread], b[kPerThread];
            SCRATCH_UNROLL
            for (int i = 0; i < kPerThread; ++i) a[i] = x_sh[ty + kThreadsXY * i][kk];
            SCRATCH_UNROLL
            for (int j = 0; j < kPerThread; ++j) b[j] = w_sh[tx + kThreadsXY * j][kk];
            SCRATCH_UNROLL
            for (int i = 0; i < kPerThread; ++i)
                SCRATCH_UNROLL
                for (int j = 0; j < kPerThread; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();   // the next slice overwrites the tiles
    }
    SCRATCH_UNROLL
    for (int i = 0; i < kPerThread; ++i) {
        const int m = m0 + ty + kThreadsXY * i;
        SCRATCH_UNROLL
        for (int j = 0; j < kPerThread; ++j) {
            const int n = n0 + tx + kThreadsXY * j;
            if (m < M && n < N)
                out[int64_t(m) * N + n] =
                    from_float<T>(acc[i][j] + (bias ? to_float(bias[n]) : 0.0f));
        }
    }
}

// ----------------------------------------------------------------------------------- GEMV
constexpr int kGemvWarps = 4, kGemvMaxRows = 8;

// Adds the weights in byte number b of row n (value `byte`: 1 weight for int8, 2 for int4) times
// x's M rows to acc. Rows M .. kRows - 1 repeat row M - 1 (never stored): no predicated FMAs,
// which made ptxas spill on sm_90.
template <int kBits, int kRows, typename T>
__device__ __forceinline__ void gemv_byte(float (&acc)[kRows], const T* __restrict__ x,
                                          const QuantWeights& w, int n, int b, uint32_t byte, int M) {
    constexpr int kPerByte = kBits == 8 ? 1 : 2;
    SCRATCH_UNROLL
    for (int j = 0; j < kPerByte; ++j) {
        const int k = b * kPerByte + j;
        const float wk = dequant_byte<kBits>(w, n, k, byte);
        SCRATCH_UNROLL
        for (int r = 0; r < kRows; ++r)
            acc[r] = fmaf(to_float(x[(r < M ? r : M - 1) * w.K + k]), wk, acc[r]);   // M K < 2^31
    }
}

// kRows: 1 (one token of decode) or kGemvMaxRows (a few sequences at once), M <= kRows. Each
// warp owns cols_per_warp consecutive columns, one after the other.
template <int kBits, bool kWords, int kRows, typename T>
__global__ void __launch_bounds__(kGemvWarps * 32)
quant_gemv_kernel(T* __restrict__ out, const T* __restrict__ x, QuantWeights w,
                  const T* __restrict__ bias, int M, int N, int cols_per_warp) {
    const int lane = threadIdx.x & 31;
    const int first = (int(blockIdx.x) * kGemvWarps + (int(threadIdx.x) >> 5)) * cols_per_warp;
    for (int c = 0; c < cols_per_warp; ++c) {
        const int n = first + c;
        if (n >= N) return;    // the whole warp leaves together: warp_sum below stays full
        float acc[kRows] = {};
        if constexpr (kWords) {
            // pitch % 4 == 0 and q 4-byte aligned (the launcher checks): one 32-bit load per lane
            const uint32_t* row = reinterpret_cast<const uint32_t*>(w.q + int64_t(n) * w.pitch);
            for (int word = lane; word < w.pitch / 4; word += 32) {
                const uint32_t bytes = row[word];          // little-endian: byte j is bits 8j .. 8j + 7
                SCRATCH_UNROLL
                for (int j = 0; j < 4; ++j)
                    gemv_byte<kBits, kRows>(acc, x, w, n, word * 4 + j, (bytes >> (8 * j)) & 255u, M);
            }
        } else {
            const uint8_t* row = w.q + int64_t(n) * w.pitch;
            for (int b = lane; b < w.pitch; b += 32) gemv_byte<kBits, kRows>(acc, x, w, n, b, row[b], M);
        }
        SCRATCH_UNROLL
        for (int r = 0; r < kRows; ++r) {
            if (r < M) {      // uniform across the warp: every lane takes part in the shuffles
                const float sum = warp_sum(acc[r]);
                if (lane == 0) out[int64_t(r) * N + n] = from_float<T>(sum + (bias ? to_float(bias[n]) : 0.0f));
            }
        }
    }
}

// Blocks the GEMV aims for: two per SM of an H100 (132 SMs) on the GPU, where more warps in flight
// hide the loads' latency; a few per pool thread on the host executor, which pays per block (its
// fibers) and per shuffle, not per byte, so fewer and longer-lived warps run faster there.
int gemv_target_blocks() {
#if defined(SCRATCH_HOST_EXECUTOR)
    return 4 * host::Pool::instance().threads();
#else
    return 264;
#endif
}

// ----------------------------------------------------------------------------- dequantize
template <int kBits>
__global__ void __launch_bounds__(256)
quant_dequantize_kernel(float* __restrict__ out, QuantWeights w, int N) {
    const int64_t total = int64_t(N) * w.K;
    for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
         e += int64_t(gridDim.x) * blockDim.x)
        out[e] = dequant<kBits>(w, int(e / w.K), int(e % w.K));
}

// Checks the weight tensors of an N x K layer and describes them to the kernels.
QuantWeights check_weights(const Tensor& qweight, const Tensor& scale, const Tensor* zero, int bits,
                           int group_size, int64_t N, int64_t K) {
    QuantWeights w{};
    if (bits != 8 && bits != 4) throw ValueError(str("bits: expected 8 or 4, got ", bits));
    expect_input(qweight, DType::U8);
    expect_input(scale, DType::F32);
    w.K = to_int(K, "K (input features)");
    to_int(N * K, "N * K (weights)");
    if (bits == 8) {
        if (zero) throw ValueError("zero: int8 weights are symmetric (no zero points); pass None");
        expect_shape(qweight, {N, K});
        expect_shape(scale, {N});
        w.pitch = w.K;
        w.group = w.K;
        w.groups = 1;
    } else {
        if (group_size < 2 || group_size % 2)
            throw ValueError(str("group_size: expected an even number >= 2 (two weights per byte "
                                 "share a group), got ", group_size));
        if (K % group_size)
            throw ValueError(str("group_size: ", group_size, " does not divide K = ", K,
                                 " (the input features)"));
        if (!zero) throw ValueError("zero: int4 weights need their zero points [N, K / group_size]");
        expect_input(*zero, DType::U8);
        expect_shape(qweight, {N, K / 2});
        expect_shape(scale, {N, K / group_size});
        expect_shape(*zero, {N, K / group_size});
        w.pitch = w.K / 2;
        w.group = group_size;
        w.groups = w.K / group_size;
        w.zero = zero->ptr<uint8_t>();
    }
    w.q = qweight.ptr<uint8_t>();
    w.scale = scale.ptr<float>();
    return w;
}

// f(integral_constant<int, 8 or 4>): the kernels are templated on the weight width.
template <typename F>
void with_bits(int bits, F&& f) {
    if (bits == 8) f(std::integral_constant<int, 8>{});
    else f(std::integral_constant<int, 4>{});
}

}  // namespace

int quant_linear_gemv_max_rows() { return kGemvMaxRows; }

void quant_linear_forward(const Tensor& out, const Tensor& x, const Tensor& qweight, const Tensor& scale,
                          const Tensor* zero, const Tensor* bias, int bits, int group_size, int version,
                          Stream stream) {
    dispatch_storage(x, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(x, x);
        expect_ndim(x, 1, Tensor::kMaxDims);
        const int64_t K = x.size(-1), M = x.rows(), N = qweight.ndim >= 1 ? qweight.size(0) : 0;
        const QuantWeights w = check_weights(qweight, scale, zero, bits, group_size, N, K);
        if (bias) {
            expect_storage<T>(*bias, x);
            expect_shape(*bias, {N});
        }
        expect_storage_output<T>(out, x);
        if (out.ndim != x.ndim || out.size(-1) != N || out.rows() != M)
            throw ValueError(str("out: expected x's shape with the last axis ", N, ", got ",
                                 out.shape_str()));
        expect_same_device({&out, &x, &qweight, &scale});
        expect_disjoint(out, {&x, &qweight, &scale});
        for (const Tensor* t : {zero, bias})
            if (t) {
                expect_same_device({&out, t});
                expect_disjoint(out, {t});
            }
        if (version < 0 || version > 2)
            throw ValueError(str("version: expected 0 (auto), 1 (GEMM) or 2 (GEMV), got ", version));
        if (version == 0) version = M <= kGemvMaxRows ? 2 : 1;
        if (version == 2 && M > kGemvMaxRows)
            throw ValueError(str("x: the GEMV kernel takes at most ", kGemvMaxRows, " rows, got ", M));
        if (M == 0 || N == 0) return;
        if (version == 2) to_int(M * K, "x's elements (the GEMV indexes them with int)");
        const int m = to_int(M, "rows of x"), n = int(N);
        const T* b = bias ? bias->ptr<T>() : nullptr;
        auto s = static_cast<cudaStream_t>(stream);
        with_bits(bits, [&](auto kb) {
            constexpr int kBits = decltype(kb)::value;
            if (version == 1) {
                const int64_t tiles = ceil_div<int64_t>(M, kTile) * ceil_div<int64_t>(N, kTile);
                launch("quant_gemm_kernel", quant_gemm_kernel<kBits, T>,
                       dim3(unsigned(to_int(tiles, "GEMM tiles"))), dim3(kThreadsXY, kThreadsXY), 0, s,
                       out.ptr<T>(), x.ptr<T>(), w, b, m, n);
            } else {
                const bool words = w.pitch % 4 == 0 && is_aligned(w.q, 4);
                const int cols = std::max(1, ceil_div(n, kGemvWarps * gemv_target_blocks()));
                const dim3 grid(unsigned(ceil_div(n, kGemvWarps * cols))), block(kGemvWarps * 32);
                auto gemv = [&](auto kernel, const char* name) {
                    launch(name, kernel, grid, block, 0, s, out.ptr<T>(), x.ptr<T>(), w, b, m, n, cols);
                };
                if (m == 1 && words) gemv(quant_gemv_kernel<kBits, true, 1, T>, "quant_gemv_kernel<words, 1>");
                else if (m == 1) gemv(quant_gemv_kernel<kBits, false, 1, T>, "quant_gemv_kernel<bytes, 1>");
                else if (words) gemv(quant_gemv_kernel<kBits, true, kGemvMaxRows, T>, "quant_gemv_kernel<words, 8>");
                else gemv(quant_gemv_kernel<kBits, false, kGemvMaxRows, T>, "quant_gemv_kernel<bytes, 8>");
            }
        });
    });
}

void quant_linear_dequantize(const Tensor& out, const Tensor& qweight, const Tensor& scale,
                             const Tensor* zero, int bits, int group_size, Stream stream) {
    expect_output(out, DType::F32);
    expect_ndim(out, 2, 2);
    const QuantWeights w = check_weights(qweight, scale, zero, bits, group_size, out.size(0), out.size(1));
    expect_same_device({&out, &qweight, &scale});
    expect_disjoint(out, {&qweight, &scale});
    if (zero) {
        expect_same_device({&out, zero});
        expect_disjoint(out, {zero});
    }
    if (out.numel() == 0) return;
    const int64_t blocks = std::min<int64_t>(ceil_div<int64_t>(out.numel(), 256), 4096);
    auto s = static_cast<cudaStream_t>(stream);
    with_bits(bits, [&](auto kb) {
        constexpr int kBits = decltype(kb)::value;
        launch("quant_dequantize_kernel", quant_dequantize_kernel<kBits>, dim3(unsigned(blocks)),
               dim3(256), 0, s, out.ptr<float>(), w, int(out.size(0)));
    });
}

}  // namespace scratch::kernels
