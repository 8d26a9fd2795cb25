// csrc/softmax_xent.cu — fused softmax + cross-entropy over the vocabulary, mean over the rows
// whose target is not -1 (docs/gradients/softmax_xent.md, python/scratchgpt/reference/softmax_xent.py).
//
//   lse_n = log sum_j exp(z_nj)          loss = (1/N) sum_{n: y_n != -1} (lse_n - z_{n, y_n})
//   dz_nj = dloss * (exp(z_nj - lse_n) - [j == y_n]) / N   on counted rows, 0 on ignored rows
//
// Forward, two kernels:
//   1. one block (256 threads) per row, a single pass over the logits: each thread keeps an online
//      (max, sum of exp(z - max)) pair over its elements, rescaling the sum when the max grows, so
//      exp never overflows whatever the logits' size (±1e4 included); float4 loads when V % 4 == 0
//      and the logits are 16-byte aligned (thread i takes elements 4i, 4i + 1024, ...). The pairs
//      meet by warp shuffles, then across the 8 warps in shared memory. The block writes lse_n
//      and the row's loss; a target outside [0, V) that is not -1 is reported through the status
//      word (csrc/device_status.h) and raised as ValueError by the launcher. Traffic: V floats
//      read per row, two floats written.
//   2. one block sums the per-row losses and counts the kept rows in a fixed order (strided
//      float64 partial sums, then the block reduction): the mean is the same bits run to run.
// Backward: one block per row writes dlogits from the saved lse (no probabilities are stored):
// V floats read, V written; ignored rows get zeros.
#include <cfloat>

#include "core/kernel.h"
#include "csrc/device_status.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kRowThreads = 256;
constexpr int kMeanThreads = 1024;
constexpr int kIgnore = -1;

// Online log-sum-exp state: max and sum of exp(z - max).
struct MaxSum {
    float max, sum;
};

__device__ __forceinline__ MaxSum combine(MaxSum a, MaxSum b) {
    const float m = fmaxf(a.max, b.max);   // both may be -FLT_MAX (no element yet): sums stay 0
    return {m, a.sum * expf(a.max - m) + b.sum * expf(b.max - m)};
}

__device__ __forceinline__ MaxSum warp_combine(MaxSum v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const MaxSum other{__shfl_xor_sync(0xffffffffu, v.max, offset),
                           __shfl_xor_sync(0xffffffffu, v.sum, offset)};
        v = combine(v, other);
    }
    return v;
}

template <int kWidth, typename Target>
__global__ void __launch_bounds__(kRowThreads)
softmax_xent_forward_kernel(float* __restrict__ lse_out, float* __restrict__ row_loss,
                            int* __restrict__ status, const float* __restrict__ logits,
                            const Target* __restrict__ targets, int rows, int V) {
    __shared__ MaxSum warp_state[kRowThreads / 32];
    const int row = blockIdx.x;
    const float* z = logits + size_t(row) * V;
    MaxSum state{-FLT_MAX, 0.0f};
    if (kWidth == 4) {
        for (int i = 4 * threadIdx.x; i < V; i += 4 * kRowThreads) {
            const float4 v = load_float4(z + i);
            const float m = fmaxf(state.max, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
            state.sum = state.sum * expf(state.max - m) +
                        ((expf(v.x - m) + expf(v.y - m)) + (expf(v.z - m) + expf(v.w - m)));
            state.max = m;
        }
    } else {
        for (int i = threadIdx.x; i < V; i += kRowThreads) {
            const float x = z[i];
            if (x > state.max) {   // one exp per element: rescale only when the max grows
                state.sum = state.sum * expf(state.max - x) + 1.0f;
                state.max = x;
            } else {
                state.sum += expf(x - state.max);
            }
        }
    }
    state = warp_combine(state);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_state[warp] = state;
    __syncthreads();
    if (threadIdx.x == 0) {
        MaxSum total = warp_state[0];
        for (int w = 1; w < kRowThreads / 32; ++w) total = combine(total, warp_state[w]);
        const float lse = total.max + logf(total.sum);
        const Target y = targets[row];
        float loss = 0.0f;
        if (y != Target(kIgnore)) {
            if (y < 0 || y >= Target(V)) status::report(status, row, rows);
            else loss = lse - z[int(y)];
        }
        lse_out[row] = lse;
        row_loss[row] = loss;
    }
}

// One block: loss = sum of row losses / max(kept rows, 1); count = kept rows.
template <typename Target>
__global__ void __launch_bounds__(kMeanThreads)
softmax_xent_mean_kernel(float* __restrict__ loss, int* __restrict__ count,
                         const float* __restrict__ row_loss, const Target* __restrict__ targets,
                         int rows) {
    double sum = 0.0;
    int kept = 0;
    for (int r = threadIdx.x; r < rows; r += kMeanThreads) {
        sum += double(row_loss[r]);
        kept += targets[r] != Target(kIgnore);
    }
    sum = block_sum(sum);
    kept = block_sum(kept);
    if (threadIdx.x == 0) {
        *loss = float(sum / double(kept > 0 ? kept : 1));
        *count = kept;
    }
}

template <int kWidth, typename Target>
__global__ void __launch_bounds__(kRowThreads)
softmax_xent_backward_kernel(float* __restrict__ dlogits, const float* __restrict__ logits,
                             const float* __restrict__ lse_in, const Target* __restrict__ targets,
                             const int* __restrict__ count, float dloss, int V) {
    const int row = blockIdx.x;
    const size_t offset = size_t(row) * V;
    const float* z = logits + offset;
    float* dz = dlogits + offset;
    const Target y_raw = targets[row];
    const int y = (y_raw >= 0 && y_raw < Target(V)) ? int(y_raw) : kIgnore;
    const int kept = *count;
    const float scale = y == kIgnore ? 0.0f : dloss / float(kept > 0 ? kept : 1);
    const float lse = lse_in[row];
    if (kWidth == 4) {
        for (int i = 4 * threadIdx.x; i < V; i += 4 * kRowThreads) {
            const float4 v = load_float4(z + i);
            store_float4(dz + i, make_float4((expf(v.x - lse) - float(i == y)) * scale,
                                             (expf(v.y - lse) - float(i + 1 == y)) * scale,
                                             (expf(v.z - lse) - float(i + 2 == y)) * scale,
                                             (expf(v.w - lse) - float(i + 3 == y)) * scale));
        }
    } else {
        for (int i = threadIdx.x; i < V; i += kRowThreads)
            dz[i] = (expf(z[i] - lse) - float(i == y)) * scale;
    }
}

// logits [..., V] with V > 0 and targets of the leading shape; returns (rows, V).
std::pair<int, int> check_logits_targets(const Tensor& logits, const Tensor& targets) {
    expect_input(logits, DType::F32);
    expect_ndim(logits, 1, Tensor::kMaxDims);
    if (targets.dtype != DType::I32 && targets.dtype != DType::I64)
        throw TypeError(str(targets.name, ": expected int32 or int64 targets, got ", dtype_name(targets.dtype)));
    expect_contiguous(targets);
    bool same = targets.ndim == logits.ndim - 1;
    for (int i = 0; same && i < targets.ndim; ++i) same = targets.shape[i] == logits.shape[i];
    if (!same) {
        Tensor lead = logits;
        lead.ndim = logits.ndim - 1;
        throw ValueError(str(targets.name, ": expected shape ", lead.shape_str(), " to match ",
                             logits.name, ", got ", targets.shape_str()));
    }
    if (logits.size(-1) == 0) throw ValueError(str(logits.name, ": the last dimension (V) must be > 0"));
    return {to_int(logits.rows(), "rows of logits"), to_int(logits.size(-1), "V")};
}

bool vectorisable(int V, const Tensor& a, const Tensor& b) {
    return V % 4 == 0 && is_aligned(a.data, 16) && is_aligned(b.data, 16);
}

template <typename Target>
void forward_targets(const Tensor& loss, const Tensor& lse, const Tensor& row_loss,
                     const Tensor& count, const Tensor& status_word, const Tensor& logits,
                     const Tensor& targets, int rows, int V, cudaStream_t s) {
    if (rows > 0) {
        if (vectorisable(V, logits, logits))
            launch("softmax_xent_forward_kernel<vec4>", softmax_xent_forward_kernel<4, Target>,
                   dim3(rows), dim3(kRowThreads), 0, s, lse.ptr<float>(), row_loss.ptr<float>(),
                   status_word.ptr<int>(), logits.ptr<float>(), targets.ptr<Target>(), rows, V);
        else
            launch("softmax_xent_forward_kernel<scalar>", softmax_xent_forward_kernel<1, Target>,
                   dim3(rows), dim3(kRowThreads), 0, s, lse.ptr<float>(), row_loss.ptr<float>(),
                   status_word.ptr<int>(), logits.ptr<float>(), targets.ptr<Target>(), rows, V);
    }
    const int pos = status::first_bad(status_word.ptr<int>(), rows, s);
    if (pos >= 0)
        throw ValueError(str(targets.name, ": value ", int64_t(status::read_back(targets.ptr<Target>() + pos, s)),
                             " at flat position ", pos, " is outside [0, ", V,
                             ") and is not the ignore value ", kIgnore));
    launch("softmax_xent_mean_kernel", softmax_xent_mean_kernel<Target>, dim3(1), dim3(kMeanThreads),
           0, s, loss.ptr<float>(), count.ptr<int>(), row_loss.ptr<float>(), targets.ptr<Target>(), rows);
}

template <typename Target>
void backward_targets(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                      const Tensor& targets, const Tensor& count, float dloss, int rows, int V,
                      cudaStream_t s) {
    if (rows == 0) return;
    if (vectorisable(V, logits, dlogits))
        launch("softmax_xent_backward_kernel<vec4>", softmax_xent_backward_kernel<4, Target>,
               dim3(rows), dim3(kRowThreads), 0, s, dlogits.ptr<float>(), logits.ptr<float>(),
               lse.ptr<float>(), targets.ptr<Target>(), count.ptr<int>(), dloss, V);
    else
        launch("softmax_xent_backward_kernel<scalar>", softmax_xent_backward_kernel<1, Target>,
               dim3(rows), dim3(kRowThreads), 0, s, dlogits.ptr<float>(), logits.ptr<float>(),
               lse.ptr<float>(), targets.ptr<Target>(), count.ptr<int>(), dloss, V);
}

}  // namespace

void softmax_xent_forward(const Tensor& loss, const Tensor& lse, const Tensor& row_loss,
                          const Tensor& count, const Tensor& status_word, const Tensor& logits,
                          const Tensor& targets, Stream stream) {
    const auto [rows, V] = check_logits_targets(logits, targets);
    expect_output(loss, DType::F32);
    expect_numel(loss, 1, "the mean loss");
    expect_output(lse, DType::F32);
    expect_numel(lse, rows, "one log-sum-exp per row of logits");
    expect_output(row_loss, DType::F32);
    expect_numel(row_loss, rows, "one loss per row of logits");
    expect_output(count, DType::I32);
    expect_numel(count, 1, "the number of counted rows");
    expect_output(status_word, DType::I32);
    expect_numel(status_word, 1, "one status word");
    expect_same_device({&logits, &targets, &loss, &lse, &row_loss, &count, &status_word});

    auto s = static_cast<cudaStream_t>(stream);
    status::clear(status_word.ptr<int>(), s);
    if (targets.dtype == DType::I32)
        forward_targets<int32_t>(loss, lse, row_loss, count, status_word, logits, targets, rows, V, s);
    else
        forward_targets<int64_t>(loss, lse, row_loss, count, status_word, logits, targets, rows, V, s);
}

void softmax_xent_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& lse,
                           const Tensor& targets, const Tensor& count, float dloss, Stream stream) {
    const auto [rows, V] = check_logits_targets(logits, targets);
    expect_input(lse, DType::F32);
    expect_numel(lse, rows, "one log-sum-exp per row of logits");
    expect_input(count, DType::I32);
    expect_numel(count, 1, "the number of counted rows");
    expect_output(dlogits, DType::F32);
    expect_same_shape(dlogits, logits);
    expect_same_device({&logits, &targets, &lse, &count, &dlogits});
    auto s = static_cast<cudaStream_t>(stream);
    if (targets.dtype == DType::I32)
        backward_targets<int32_t>(dlogits, logits, lse, targets, count, dloss, rows, V, s);
    else
        backward_targets<int64_t>(dlogits, logits, lse, targets, count, dloss, rows, V, s);
}

}  // namespace scratch::kernels
