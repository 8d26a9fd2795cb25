// csrc/layernorm.cu — layer normalisation over the last axis (docs/gradients/layernorm.md,
// python/scratchgpt/reference/layernorm.py). Rows of C contiguous values stored in
// T = float, __nv_bfloat16 or __half (csrc/elementwise.h), computed in float.
//
// Storage: x, weight, bias, out, dout and dx are T; mean and rstd (saved for the backward) and
// the parameter gradients dweight, dbias (and their workspace) are float32 whatever T is. Every
// sum is a float32 sum of widened T values; out and dx are rounded once to T.
//
// Forward (one warp per row, 8 rows per block):
//   mean = sum(x) / C;  rstd = 1 / sqrt(sum((x - mean)^2) / C + eps);  out = (x - mean) * rstd * w + b
// A row is read three times (sum, centred sum of squares, output): the second and third reads
// hit L1/L2, and the two-pass variance has no cancellation. Loads are 16-byte packs (4 floats or
// 8 bf16 / fp16, N = 16 / sizeof(T)) when C % N == 0 and every pointer is 16-byte aligned (the
// launcher picks the kernel); lane i takes elements N i .. N i + N - 1, then 32 N further on, so
// that a warp reads 512 contiguous bytes at a time. Traffic per row: C sizeof(T) read from memory
// (x; its second and third reads, and weight and bias, shared by every row, come from cache),
// C sizeof(T) written, plus 8 bytes of statistics: 8 C bytes in float32, 4 C in bf16 / fp16.
//
// Backward, three kernels:
//   1. dx, one warp per row: g = dout * w, xhat = (x - mean) * rstd,
//      dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (two warp reductions per row)
//   2. dweight / dbias partial sums: a block owns 32 columns and a chunk of kRowsPerChunk rows
//      (blockIdx.x = chunk * column blocks + column block: chunks on grid.x, not capped at
//      grid.y's 65535 = 8.4 M rows); its 32x8 threads walk the rows (coalesced across columns),
//      meet in shared memory and write one float32 partial per column per chunk to the
//      workspace [chunks, 2, C];
//   3. the partials are summed per column in chunk order.
// No atomics: every sum has a fixed order, so results are deterministic run to run.
#include "core/kernel.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;     // rows per block in the row kernels
constexpr int kRowsPerChunk = 128;    // rows per block in the dweight/dbias partial kernel
constexpr int kFinalizeThreads = 256;

// s[0] + ... + s[N-1] as a pairwise tree: ((s0 + s1) + (s2 + s3)) + ... (N a power of two).
template <int N>
__device__ __forceinline__ float tree_sum(float (&s)[N]) {
    for (int w = 1; w < N; w *= 2)
        for (int i = 0; i + w < N; i += 2 * w) s[i] += s[i + w];
    return s[0];
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
layernorm_forward_kernel(T* __restrict__ out, float* __restrict__ mean_out,
                         float* __restrict__ rstd_out, const T* __restrict__ x,
                         const T* __restrict__ weight, const T* __restrict__ bias,
                         int N, int C, float eps) {
    constexpr int V = Pack<T>::N;   // values per lane per access
    const int lane = threadIdx.x;
    const int row = blockIdx.x * kWarpsPerBlock + threadIdx.y;
    if (row >= N) return;   // whole warps leave together
    const T* xr = x + size_t(row) * C;
    T* yr = out + size_t(row) * C;

    float sum = 0.0f;
    if (kVec) {
        for (int i = V * lane; i < C; i += 32 * V) {
            Pack<T> v = load_pack(xr + i);
            sum += tree_sum(v.v);
        }
    } else {
        for (int i = lane; i < C; i += 32) sum += to_float(xr[i]);
    }
    const float mean = warp_sum(sum) / C;

    float sq = 0.0f;
    if (kVec) {
        for (int i = V * lane; i < C; i += 32 * V) {
            const Pack<T> v = load_pack(xr + i);
            float d[V];
            for (int k = 0; k < V; ++k) {
                const float c = v.v[k] - mean;
                d[k] = c * c;
            }
            sq += tree_sum(d);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float d = to_float(xr[i]) - mean;
            sq += d * d;
        }
    }
    const float rstd = rsqrtf(warp_sum(sq) / C + eps);

    if (kVec) {
        for (int i = V * lane; i < C; i += 32 * V) {
            Pack<T> v = load_pack(xr + i);
            const Pack<T> w = load_pack(weight + i), b = load_pack(bias + i);
            for (int k = 0; k < V; ++k) v.v[k] = (v.v[k] - mean) * rstd * w.v[k] + b.v[k];
            store_pack(yr + i, v);
        }
    } else {
        for (int i = lane; i < C; i += 32)
            yr[i] = from_float<T>((to_float(xr[i]) - mean) * rstd * to_float(weight[i]) + to_float(bias[i]));
    }
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
layernorm_backward_dx_kernel(T* __restrict__ dx, const T* __restrict__ dout,
                             const T* __restrict__ x, const T* __restrict__ weight,
                             const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                             int N, int C) {
    constexpr int V = Pack<T>::N;
    const int lane = threadIdx.x;
    const int row = blockIdx.x * kWarpsPerBlock + threadIdx.y;
    if (row >= N) return;
    const size_t offset = size_t(row) * C;
    const T* xr = x + offset;
    const T* gr = dout + offset;
    T* dxr = dx + offset;
    const float mean = mean_in[row], rstd = rstd_in[row];

    // sum(g) and sum(g * xhat), g = dout * w
    float sum_g = 0.0f, sum_gx = 0.0f;
    if (kVec) {
        for (int i = V * lane; i < C; i += 32 * V) {
            const Pack<T> v = load_pack(xr + i), d = load_pack(gr + i), w = load_pack(weight + i);
            float g[V], gx[V];
            for (int k = 0; k < V; ++k) {
                g[k] = d.v[k] * w.v[k];
                gx[k] = g[k] * (v.v[k] - mean);
            }
            sum_g += tree_sum(g);
            sum_gx += tree_sum(gx);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float g = to_float(gr[i]) * to_float(weight[i]);
            sum_g += g;
            sum_gx += g * (to_float(xr[i]) - mean);
        }
    }
    const float mean_g = warp_sum(sum_g) / C;
    const float mean_gx = warp_sum(sum_gx) * rstd / C;

    if (kVec) {
        for (int i = V * lane; i < C; i += 32 * V) {
            const Pack<T> v = load_pack(xr + i), d = load_pack(gr + i), w = load_pack(weight + i);
            Pack<T> r;
            for (int k = 0; k < V; ++k)
                r.v[k] = rstd * (d.v[k] * w.v[k] - mean_g - (v.v[k] - mean) * rstd * mean_gx);
            store_pack(dxr + i, r);
        }
    } else {
        for (int i = lane; i < C; i += 32)
            dxr[i] = from_float<T>(rstd * (to_float(gr[i]) * to_float(weight[i]) - mean_g
                                           - (to_float(xr[i]) - mean) * rstd * mean_gx));
    }
}

// Block (32, 8), blockIdx.x = chunk * column blocks + column block: column
// column block * 32 + threadIdx.x, rows of the chunk strided by 8.
// workspace[chunk][0][c] = sum of dout * xhat, workspace[chunk][1][c] = sum of dout.
template <typename T>
__global__ void __launch_bounds__(256)
layernorm_backward_dparams_partial_kernel(float* __restrict__ workspace,
                                          const T* __restrict__ dout,
                                          const T* __restrict__ x,
                                          const float* __restrict__ mean_in,
                                          const float* __restrict__ rstd_in, int N, int C) {
    SCRATCH_SHARED(float, dweight_part, [8][33]);   // +1 column: no bank conflicts on the transpose read
    SCRATCH_SHARED(float, dbias_part, [8][33]);
    const int column_blocks = (C + 31) / 32;
    const int chunk = int(blockIdx.x) / column_blocks;
    const int c = (int(blockIdx.x) - chunk * column_blocks) * 32 + threadIdx.x;
    const int row_begin = chunk * kRowsPerChunk;   // < N
    const int row_end = N - row_begin < kRowsPerChunk ? N : row_begin + kRowsPerChunk;
    float acc_w = 0.0f, acc_b = 0.0f;
    if (c < C) {
        for (int r = row_begin + threadIdx.y; r < row_end; r += 8) {
            const size_t i = size_t(r) * C + c;
            const float d = to_float(dout[i]);
            acc_w += d * (to_float(x[i]) - mean_in[r]) * rstd_in[r];
            acc_b += d;
        }
    }
    dweight_part[threadIdx.y][threadIdx.x] = acc_w;
    dbias_part[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        float w = 0.0f, b = 0.0f;
        for (int k = 0; k < 8; ++k) {
            w += dweight_part[k][threadIdx.x];
            b += dbias_part[k][threadIdx.x];
        }
        float* part = workspace + size_t(chunk) * 2 * C;
        part[c] = w;
        part[C + c] = b;
    }
}

__global__ void __launch_bounds__(kFinalizeThreads)
layernorm_backward_dparams_finalize_kernel(float* __restrict__ dweight, float* __restrict__ dbias,
                                           const float* __restrict__ workspace, int chunks, int C) {
    const int c = blockIdx.x * kFinalizeThreads + threadIdx.x;
    if (c >= C) return;
    float w = 0.0f, b = 0.0f;
    for (int k = 0; k < chunks; ++k) {
        w += workspace[size_t(k) * 2 * C + c];
        b += workspace[size_t(k) * 2 * C + C + c];
    }
    dweight[c] = w;
    dbias[c] = b;
}

// Pack path: C divisible by the pack's N values and every row pointer 16-byte aligned.
template <typename T>
bool vectorisable(int C, std::initializer_list<const Tensor*> ts) {
    if (C % Pack<T>::N != 0) return false;
    for (const Tensor* t : ts)
        if (!is_aligned(t->data, 16)) return false;
    return true;
}

// x is [..., C] with C > 0; returns (rows, C) as ints.
std::pair<int, int> rows_and_columns(const Tensor& x) {
    expect_ndim(x, 1, Tensor::kMaxDims);
    if (x.size(-1) == 0) throw ValueError(str(x.name, ": the last dimension (C) must be > 0"));
    return {to_int(x.rows(), "rows of x"), to_int(x.size(-1), "C")};
}

}  // namespace

void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                       const Tensor& weight, const Tensor& bias, float eps, Stream stream) {
    dispatch_storage(x, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(x, x);
        const auto [N, C] = rows_and_columns(x);
        expect_storage<T>(weight, x);
        expect_storage<T>(bias, x);
        expect_shape(weight, {C});
        expect_shape(bias, {C});
        expect_storage_output<T>(out, x);
        expect_same_shape(out, x);
        expect_output(mean, DType::F32);
        expect_output(rstd, DType::F32);
        expect_numel(mean, N, "one mean per row of x");
        expect_numel(rstd, N, "one rstd per row of x");
        expect_same_device({&x, &weight, &bias, &out, &mean, &rstd});
        if (!(eps >= 0.0f)) throw ValueError(str("eps: expected a non-negative number, got ", eps));

        const dim3 grid(ceil_div(N, kWarpsPerBlock)), block(32, kWarpsPerBlock);
        auto s = static_cast<cudaStream_t>(stream);
        if (vectorisable<T>(C, {&x, &out, &weight, &bias}))
            launch("layernorm_forward_kernel<pack>", layernorm_forward_kernel<T, true>, grid, block, 0, s,
                   out.ptr<T>(), mean.ptr<float>(), rstd.ptr<float>(), x.ptr<T>(), weight.ptr<T>(),
                   bias.ptr<T>(), N, C, eps);
        else
            launch("layernorm_forward_kernel<scalar>", layernorm_forward_kernel<T, false>, grid, block, 0, s,
                   out.ptr<T>(), mean.ptr<float>(), rstd.ptr<float>(), x.ptr<T>(), weight.ptr<T>(),
                   bias.ptr<T>(), N, C, eps);
    });
}

int64_t layernorm_backward_workspace(int64_t rows, int64_t C) {
    return ceil_div<int64_t>(rows, kRowsPerChunk) * 2 * C;
}

void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias,
                        const Tensor& workspace, const Tensor& dout, const Tensor& x,
                        const Tensor& weight, const Tensor& mean, const Tensor& rstd, Stream stream) {
    dispatch_storage(x, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(x, x);
        const auto [N, C] = rows_and_columns(x);
        expect_storage<T>(dout, x);
        expect_same_shape(dout, x);
        expect_storage<T>(weight, x);
        expect_shape(weight, {C});
        expect_input(mean, DType::F32);
        expect_input(rstd, DType::F32);
        expect_numel(mean, N, "one mean per row of x");
        expect_numel(rstd, N, "one rstd per row of x");
        expect_storage_output<T>(dx, x);
        expect_same_shape(dx, x);
        expect_output(dweight, DType::F32);
        expect_output(dbias, DType::F32);
        expect_shape(dweight, {C});
        expect_shape(dbias, {C});
        expect_output(workspace, DType::F32);
        const int64_t need = layernorm_backward_workspace(N, C);
        if (workspace.numel() < need)
            throw ValueError(str(workspace.name, ": expected at least ", need, " floats, got ",
                                 workspace.numel()));
        expect_same_device({&x, &dout, &weight, &mean, &rstd, &dx, &dweight, &dbias, &workspace});

        auto s = static_cast<cudaStream_t>(stream);
        const dim3 row_grid(ceil_div(N, kWarpsPerBlock)), row_block(32, kWarpsPerBlock);
        if (vectorisable<T>(C, {&x, &dout, &weight, &dx}))
            launch("layernorm_backward_dx_kernel<pack>", layernorm_backward_dx_kernel<T, true>, row_grid,
                   row_block, 0, s, dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), weight.ptr<T>(),
                   mean.ptr<float>(), rstd.ptr<float>(), N, C);
        else
            launch("layernorm_backward_dx_kernel<scalar>", layernorm_backward_dx_kernel<T, false>, row_grid,
                   row_block, 0, s, dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), weight.ptr<T>(),
                   mean.ptr<float>(), rstd.ptr<float>(), N, C);

        const int chunks = ceil_div(N, kRowsPerChunk);   // 0 rows: the finalize writes zeros
        const int64_t partial_blocks = int64_t(chunks) * ceil_div(C, 32);
        if (partial_blocks > 2147483647)
            throw ValueError(str(x.name, ": ", N, " rows x ", C, " columns need more than 2^31 - 1 blocks"));
        if (chunks > 0)
            launch("layernorm_backward_dparams_partial_kernel", layernorm_backward_dparams_partial_kernel<T>,
                   dim3(unsigned(partial_blocks)), dim3(32, 8), 0, s, workspace.ptr<float>(),
                   dout.ptr<T>(), x.ptr<T>(), mean.ptr<float>(), rstd.ptr<float>(), N, C);
        launch("layernorm_backward_dparams_finalize_kernel", layernorm_backward_dparams_finalize_kernel,
               dim3(ceil_div(C, kFinalizeThreads)), dim3(kFinalizeThreads), 0, s, dweight.ptr<float>(),
               dbias.ptr<float>(), workspace.ptr<float>(), chunks, C);
    });
}

}  // namespace scratch::kernels
