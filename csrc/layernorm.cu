// csrc/layernorm.cu — layer normalisation over the last axis (docs/gradients/layernorm.md,
// python/scratchgpt/reference/layernorm.py). float32, rows of C contiguous values.
//
// Forward (one warp per row, 8 rows per block):
//   mean = sum(x) / C;  rstd = 1 / sqrt(sum((x - mean)^2) / C + eps);  out = (x - mean) * rstd * w + b
// A row is read three times (sum, centred sum of squares, output): the second and third reads
// hit L1/L2, and the two-pass variance has no cancellation. Loads are float4 when C % 4 == 0 and
// every pointer is 16-byte aligned (the launcher picks the kernel); lane i takes elements
// 4i, 4i+128, ... so that a warp reads 512 contiguous bytes at a time. mean and rstd are saved
// for the backward.
//
// Backward, three kernels:
//   1. dx, one warp per row: g = dout * w, xhat = (x - mean) * rstd,
//      dx = rstd * (g - mean(g) - xhat * mean(g * xhat))   (two warp reductions per row)
//   2. dweight / dbias partial sums: a block owns 32 columns and a chunk of kRowsPerChunk rows
//      (blockIdx.x = chunk * column blocks + column block: chunks on grid.x, not capped at
//      grid.y's 65535 = 8.4 M rows); its 32x8 threads walk the rows (coalesced across columns),
//      meet in shared memory and write one partial per column per chunk to the workspace
//      [chunks, 2, C];
//   3. the partials are summed per column in chunk order.
// No atomics: every sum has a fixed order, so results are deterministic run to run.
#include "core/kernel.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;     // rows per block in the row kernels
constexpr int kRowsPerChunk = 128;    // rows per block in the dweight/dbias partial kernel
constexpr int kFinalizeThreads = 256;

template <bool kVec4>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
layernorm_forward_kernel(float* __restrict__ out, float* __restrict__ mean_out,
                         float* __restrict__ rstd_out, const float* __restrict__ x,
                         const float* __restrict__ weight, const float* __restrict__ bias,
                         int N, int C, float eps) {
    const int lane = threadIdx.x;
    const int row = blockIdx.x * kWarpsPerBlock + threadIdx.y;
    if (row >= N) return;   // whole warps leave together
    const float* xr = x + size_t(row) * C;
    float* yr = out + size_t(row) * C;

    float sum = 0.0f;
    if (kVec4) {
        for (int i = 4 * lane; i < C; i += 128) {
            const float4 v = load_float4(xr + i);
            sum += (v.x + v.y) + (v.z + v.w);
        }
    } else {
        for (int i = lane; i < C; i += 32) sum += xr[i];
    }
    const float mean = warp_sum(sum) / C;

    float sq = 0.0f;
    if (kVec4) {
        for (int i = 4 * lane; i < C; i += 128) {
            const float4 v = load_float4(xr + i);
            const float a = v.x - mean, b = v.y - mean, c = v.z - mean, d = v.w - mean;
            sq += (a * a + b * b) + (c * c + d * d);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float d = xr[i] - mean;
            sq += d * d;
        }
    }
    const float rstd = rsqrtf(warp_sum(sq) / C + eps);

    if (kVec4) {
        for (int i = 4 * lane; i < C; i += 128) {
            const float4 v = load_float4(xr + i);
            const float4 w = load_float4(weight + i);
            const float4 b = load_float4(bias + i);
            store_float4(yr + i, make_float4((v.x - mean) * rstd * w.x + b.x,
                                             (v.y - mean) * rstd * w.y + b.y,
                                             (v.z - mean) * rstd * w.z + b.z,
                                             (v.w - mean) * rstd * w.w + b.w));
        }
    } else {
        for (int i = lane; i < C; i += 32) yr[i] = (xr[i] - mean) * rstd * weight[i] + bias[i];
    }
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

template <bool kVec4>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
layernorm_backward_dx_kernel(float* __restrict__ dx, const float* __restrict__ dout,
                             const float* __restrict__ x, const float* __restrict__ weight,
                             const float* __restrict__ mean_in, const float* __restrict__ rstd_in,
                             int N, int C) {
    const int lane = threadIdx.x;
    const int row = blockIdx.x * kWarpsPerBlock + threadIdx.y;
    if (row >= N) return;
    const size_t offset = size_t(row) * C;
    const float* xr = x + offset;
    const float* gr = dout + offset;
    float* dxr = dx + offset;
    const float mean = mean_in[row], rstd = rstd_in[row];

    // sum(g) and sum(g * xhat), g = dout * w
    float sum_g = 0.0f, sum_gx = 0.0f;
    if (kVec4) {
        for (int i = 4 * lane; i < C; i += 128) {
            const float4 v = load_float4(xr + i), d = load_float4(gr + i), w = load_float4(weight + i);
            const float g0 = d.x * w.x, g1 = d.y * w.y, g2 = d.z * w.z, g3 = d.w * w.w;
            sum_g += (g0 + g1) + (g2 + g3);
            sum_gx += (g0 * (v.x - mean) + g1 * (v.y - mean)) + (g2 * (v.z - mean) + g3 * (v.w - mean));
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            const float g = gr[i] * weight[i];
            sum_g += g;
            sum_gx += g * (xr[i] - mean);
        }
    }
    const float mean_g = warp_sum(sum_g) / C;
    const float mean_gx = warp_sum(sum_gx) * rstd / C;

    if (kVec4) {
        for (int i = 4 * lane; i < C; i += 128) {
            const float4 v = load_float4(xr + i), d = load_float4(gr + i), w = load_float4(weight + i);
            store_float4(dxr + i,
                         make_float4(rstd * (d.x * w.x - mean_g - (v.x - mean) * rstd * mean_gx),
                                     rstd * (d.y * w.y - mean_g - (v.y - mean) * rstd * mean_gx),
                                     rstd * (d.z * w.z - mean_g - (v.z - mean) * rstd * mean_gx),
                                     rstd * (d.w * w.w - mean_g - (v.w - mean) * rstd * mean_gx)));
        }
    } else {
        for (int i = lane; i < C; i += 32)
            dxr[i] = rstd * (gr[i] * weight[i] - mean_g - (xr[i] - mean) * rstd * mean_gx);
    }
}

// Block (32, 8), blockIdx.x = chunk * column blocks + column block: column
// column block * 32 + threadIdx.x, rows of the chunk strided by 8.
// workspace[chunk][0][c] = sum of dout * xhat, workspace[chunk][1][c] = sum of dout.
__global__ void __launch_bounds__(256)
layernorm_backward_dparams_partial_kernel(float* __restrict__ workspace,
                                          const float* __restrict__ dout,
                                          const float* __restrict__ x,
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
            const float d = dout[i];
            acc_w += d * (x[i] - mean_in[r]) * rstd_in[r];
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

// float4 path: C divisible by 4 and every row pointer 16-byte aligned.
bool vectorisable(int C, std::initializer_list<const Tensor*> ts) {
    if (C % 4 != 0) return false;
    for (const Tensor* t : ts)
        if (!is_aligned(t->data, 16)) return false;
    return true;
}

// x is [..., C] with C > 0; returns (rows, C) as ints.
std::pair<int, int> rows_and_columns(const Tensor& x) {
    expect_input(x, DType::F32);
    expect_ndim(x, 1, Tensor::kMaxDims);
    if (x.size(-1) == 0) throw ValueError(str(x.name, ": the last dimension (C) must be > 0"));
    return {to_int(x.rows(), "rows of x"), to_int(x.size(-1), "C")};
}

}  // namespace

void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                       const Tensor& weight, const Tensor& bias, float eps, Stream stream) {
    const auto [N, C] = rows_and_columns(x);
    expect_input(weight, DType::F32);
    expect_input(bias, DType::F32);
    expect_shape(weight, {C});
    expect_shape(bias, {C});
    expect_output(out, DType::F32);
    expect_same_shape(out, x);
    expect_output(mean, DType::F32);
    expect_output(rstd, DType::F32);
    expect_numel(mean, N, "one mean per row of x");
    expect_numel(rstd, N, "one rstd per row of x");
    expect_same_device({&x, &weight, &bias, &out, &mean, &rstd});
    if (!(eps >= 0.0f)) throw ValueError(str("eps: expected a non-negative number, got ", eps));

    const dim3 grid(ceil_div(N, kWarpsPerBlock)), block(32, kWarpsPerBlock);
    auto s = static_cast<cudaStream_t>(stream);
    if (vectorisable(C, {&x, &out, &weight, &bias}))
        launch("layernorm_forward_kernel<vec4>", layernorm_forward_kernel<true>, grid, block, 0, s,
               out.ptr<float>(), mean.ptr<float>(), rstd.ptr<float>(), x.ptr<float>(),
               weight.ptr<float>(), bias.ptr<float>(), N, C, eps);
    else
        launch("layernorm_forward_kernel<scalar>", layernorm_forward_kernel<false>, grid, block, 0, s,
               out.ptr<float>(), mean.ptr<float>(), rstd.ptr<float>(), x.ptr<float>(),
               weight.ptr<float>(), bias.ptr<float>(), N, C, eps);
}

int64_t layernorm_backward_workspace(int64_t rows, int64_t C) {
    return ceil_div<int64_t>(rows, kRowsPerChunk) * 2 * C;
}

void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias,
                        const Tensor& workspace, const Tensor& dout, const Tensor& x,
                        const Tensor& weight, const Tensor& mean, const Tensor& rstd, Stream stream) {
    const auto [N, C] = rows_and_columns(x);
    expect_input(dout, DType::F32);
    expect_same_shape(dout, x);
    expect_input(weight, DType::F32);
    expect_shape(weight, {C});
    expect_input(mean, DType::F32);
    expect_input(rstd, DType::F32);
    expect_numel(mean, N, "one mean per row of x");
    expect_numel(rstd, N, "one rstd per row of x");
    expect_output(dx, DType::F32);
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
    if (vectorisable(C, {&x, &dout, &weight, &dx}))
        launch("layernorm_backward_dx_kernel<vec4>", layernorm_backward_dx_kernel<true>, row_grid,
               row_block, 0, s, dx.ptr<float>(), dout.ptr<float>(), x.ptr<float>(),
               weight.ptr<float>(), mean.ptr<float>(), rstd.ptr<float>(), N, C);
    else
        launch("layernorm_backward_dx_kernel<scalar>", layernorm_backward_dx_kernel<false>, row_grid,
               row_block, 0, s, dx.ptr<float>(), dout.ptr<float>(), x.ptr<float>(),
               weight.ptr<float>(), mean.ptr<float>(), rstd.ptr<float>(), N, C);

    const int chunks = ceil_div(N, kRowsPerChunk);   // 0 rows: the finalize writes zeros
    const int64_t partial_blocks = int64_t(chunks) * ceil_div(C, 32);
    if (partial_blocks > 2147483647)
        throw ValueError(str(x.name, ": ", N, " rows x ", C, " columns need more than 2^31 - 1 blocks"));
    if (chunks > 0)
        launch("layernorm_backward_dparams_partial_kernel", layernorm_backward_dparams_partial_kernel,
               dim3(unsigned(partial_blocks)), dim3(32, 8), 0, s, workspace.ptr<float>(),
               dout.ptr<float>(), x.ptr<float>(), mean.ptr<float>(), rstd.ptr<float>(), N, C);
    launch("layernorm_backward_dparams_finalize_kernel", layernorm_backward_dparams_finalize_kernel,
           dim3(ceil_div(C, kFinalizeThreads)), dim3(kFinalizeThreads), 0, s, dweight.ptr<float>(),
           dbias.ptr<float>(), workspace.ptr<float>(), chunks, C);
}

}  // namespace scratch::kernels
