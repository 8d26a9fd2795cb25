// csrc/softmax_xent.cu — fused softmax + cross-entropy over the vocabulary, mean over the rows
// whose target is not -1 (docs/gradients/softmax_xent.md, python/scratchgpt/reference/softmax_xent.py).
// Logits and their gradient stored in T = float, __nv_bfloat16 or __half (csrc/elementwise.h);
// the loss, the per-row statistics and every sum are float32 whatever T is.
//
//   lse_n = log sum_j exp(z_nj)          loss = (1/N) sum_{n: y_n != -1} (lse_n - z_{n, y_n})
//   dz_nj = dloss * (exp(z_nj - lse_n) - [j == y_n]) / N   on counted rows, 0 on ignored rows
//
// Storage: logits [..., V] and dlogits are T (each logit widened to float when read, each
// gradient rounded once to T); loss, stats, row_loss stay float32.
// Precision: lse is kept as two floats, the row max m and log-sum = log(sum exp(z - m)), never
// added together: with logits of ±1e4 a float32 lse would carry an absolute error of ~1e-3 and
// ruin exp(z - lse). The sum is accumulated without the max's own exp(0) = 1 (log-sum =
// log1p(rest)), the loss is log-sum + (m - z_y), and the target's gradient uses expm1: a row
// whose target dominates (loss ~ 1e-4) is still exact to float32 rounding.
//
// Forward, two kernels:
//   1. one block (256 threads) per row, a single pass over the logits: each thread keeps an online
//      (max, rest) pair over its elements, rescaling when the max grows (one exp per element; exp
//      never overflows); 16-byte packs (N = 16 / sizeof(T): 4 floats or 8 bf16 / fp16) when
//      V % N == 0 and the logits are 16-byte aligned (thread i takes elements N i .. N i + N - 1,
//      then 256 N further on). The pairs meet by warp shuffles, then
//      across the 8 warps in shared memory; thread 0 writes (m, log-sum) and the row's loss. A
//      target outside [0, V) that is not -1 is reported through the status word
//      (csrc/device_status.h) and raised as ValueError by the launcher. Traffic: V values of T
//      read per row, three floats written.
//   2. one block sums the per-row losses and counts the kept rows in a fixed order (strided
//      float64 partial sums, then the block reduction): the mean is the same bits run to run.
// Backward: one block per row writes dlogits from the saved (m, log-sum), recomputing each
// probability (nothing of size V is stored): V values of T read, V written; ignored rows get zeros.
#include <cfloat>

#include "core/kernel.h"
#include "csrc/device_status.h"
#include "csrc/disjoint.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kRowThreads = 256;
constexpr int kMeanThreads = 1024;
constexpr int kIgnore = -1;

// Online log-sum-exp state: the running max and rest = sum of exp(z - max) over the elements
// other than (one of) the max, which contributes exactly 1 — so log-sum = log1p(rest) keeps its
// relative precision when the max dominates (a loss near 0 stays accurate). An empty state is
// (-FLT_MAX, -1).
struct MaxRest {
    float max, rest;
};

__device__ __forceinline__ void push(MaxRest& s, float x) {
    if (x > s.max) {   // x becomes the max: the old max joins the rest (one exp per element)
        s.rest = (s.rest + 1.0f) * expf(s.max - x);
        s.max = x;
    } else {
        s.rest += expf(x - s.max);   // NaN lands here and propagates
    }
}

__device__ __forceinline__ MaxRest combine(MaxRest a, MaxRest b) {
    if (b.max > a.max) {
        const MaxRest t = a;
        a = b, b = t;
    }
    return {a.max, a.rest + (b.rest + 1.0f) * expf(b.max - a.max)};
}

__device__ __forceinline__ MaxRest warp_combine(MaxRest v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        const MaxRest other{__shfl_xor_sync(0xffffffffu, v.max, offset),
                            __shfl_xor_sync(0xffffffffu, v.rest, offset)};
        v = combine(v, other);
    }
    return v;
}

// stats[row] = (max, log-sum) with lse = max + log-sum; row_loss[row] = log-sum + (max - z_y).
template <typename T, bool kVec, typename Target>
__global__ void __launch_bounds__(kRowThreads)
softmax_xent_forward_kernel(float2* __restrict__ stats, float* __restrict__ row_loss,
                            int* __restrict__ status, const T* __restrict__ logits,
                            const Target* __restrict__ targets, int rows, int V) {
    constexpr int N = Pack<T>::N;
    SCRATCH_SHARED(MaxRest, warp_state, [kRowThreads / 32]);
    const int row = blockIdx.x;
    const T* z = logits + size_t(row) * V;
    MaxRest state{-FLT_MAX, -1.0f};
    if (kVec) {
        for (int i = N * threadIdx.x; i < V; i += N * kRowThreads) {
            const Pack<T> v = load_pack(z + i);
            for (int k = 0; k < N; ++k) push(state, v.v[k]);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += kRowThreads) push(state, to_float(z[i]));
    }
    state = warp_combine(state);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) warp_state[warp] = state;
    __syncthreads();
    if (threadIdx.x == 0) {
        MaxRest total = warp_state[0];
        for (int w = 1; w < kRowThreads / 32; ++w) total = combine(total, warp_state[w]);
        const float log_sum = log1pf(total.rest);
        const Target y = targets[row];
        float loss = 0.0f;
        if (y != Target(kIgnore)) {
            if (y < 0 || y >= Target(V)) status::report(status, row, rows);
            else loss = log_sum + (total.max - to_float(z[int(y)]));   // max - z_y is exact when they are close
        }
        stats[row] = make_float2(total.max, log_sum);
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

// p - onehot from t = (z - max) - log-sum: exp(t), or expm1(t) at the target (accurate when p ~ 1).
__device__ __forceinline__ float softmax_minus_onehot(float z, float max, float log_sum, bool target) {
    const float t = (z - max) - log_sum;
    return target ? expm1f(t) : expf(t);
}

template <typename T, bool kVec, typename Target>
__global__ void __launch_bounds__(kRowThreads)
softmax_xent_backward_kernel(T* __restrict__ dlogits, const T* __restrict__ logits,
                             const float2* __restrict__ stats, const Target* __restrict__ targets,
                             const int* __restrict__ count, float dloss, int V) {
    constexpr int N = Pack<T>::N;
    const int row = blockIdx.x;
    const size_t offset = size_t(row) * V;
    const T* z = logits + offset;
    T* dz = dlogits + offset;
    const Target y_raw = targets[row];
    const int y = (y_raw >= 0 && y_raw < Target(V)) ? int(y_raw) : kIgnore;
    const int kept = *count;
    const float scale = y == kIgnore ? 0.0f : dloss / float(kept > 0 ? kept : 1);
    const float2 st = stats[row];
    if (kVec) {
        for (int i = N * threadIdx.x; i < V; i += N * kRowThreads) {
            Pack<T> v = load_pack(z + i);
            for (int k = 0; k < N; ++k) v.v[k] = softmax_minus_onehot(v.v[k], st.x, st.y, i + k == y) * scale;
            store_pack(dz + i, v);
        }
    } else {
        for (int i = threadIdx.x; i < V; i += kRowThreads)
            dz[i] = from_float<T>(softmax_minus_onehot(to_float(z[i]), st.x, st.y, i == y) * scale);
    }
}

// logits [..., V] with V > 0 and targets of the leading shape; returns (rows, V).
std::pair<int, int> check_logits_targets(const Tensor& logits, const Tensor& targets) {
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

template <typename T>
bool vectorisable(int V, const Tensor& a, const Tensor& b) {
    return V % Pack<T>::N == 0 && is_aligned(a.data, 16) && is_aligned(b.data, 16);
}

template <typename T, typename Target>
void forward_targets(const Tensor& loss, const Tensor& stats, const Tensor& row_loss,
                     const Tensor& count, const Tensor& status_word, const Tensor& logits,
                     const Tensor& targets, int rows, int V, cudaStream_t s) {
    if (rows > 0) {
        float2* st = reinterpret_cast<float2*>(stats.ptr<float>());
        if (vectorisable<T>(V, logits, logits))
            launch("softmax_xent_forward_kernel<pack>", softmax_xent_forward_kernel<T, true, Target>,
                   dim3(rows), dim3(kRowThreads), 0, s, st, row_loss.ptr<float>(), status_word.ptr<int>(),
                   logits.ptr<T>(), targets.ptr<Target>(), rows, V);
        else
            launch("softmax_xent_forward_kernel<scalar>", softmax_xent_forward_kernel<T, false, Target>,
                   dim3(rows), dim3(kRowThreads), 0, s, st, row_loss.ptr<float>(), status_word.ptr<int>(),
                   logits.ptr<T>(), targets.ptr<Target>(), rows, V);
    }
    const int pos = status::first_bad(status_word.ptr<int>(), rows, s);
    if (pos >= 0)
        throw ValueError(str(targets.name, ": value ", int64_t(status::read_back(targets.ptr<Target>() + pos, s)),
                             " at flat position ", pos, " is outside [0, ", V,
                             ") and is not the ignore value ", kIgnore));
    launch("softmax_xent_mean_kernel", softmax_xent_mean_kernel<Target>, dim3(1), dim3(kMeanThreads),
           0, s, loss.ptr<float>(), count.ptr<int>(), row_loss.ptr<float>(), targets.ptr<Target>(), rows);
}

template <typename T, typename Target>
void backward_targets(const Tensor& dlogits, const Tensor& logits, const Tensor& stats,
                      const Tensor& targets, const Tensor& count, float dloss, int rows, int V,
                      cudaStream_t s) {
    if (rows == 0) return;
    const float2* st = reinterpret_cast<const float2*>(stats.ptr<float>());
    if (vectorisable<T>(V, logits, dlogits))
        launch("softmax_xent_backward_kernel<pack>", softmax_xent_backward_kernel<T, true, Target>,
               dim3(rows), dim3(kRowThreads), 0, s, dlogits.ptr<T>(), logits.ptr<T>(), st,
               targets.ptr<Target>(), count.ptr<int>(), dloss, V);
    else
        launch("softmax_xent_backward_kernel<scalar>", softmax_xent_backward_kernel<T, false, Target>,
               dim3(rows), dim3(kRowThreads), 0, s, dlogits.ptr<T>(), logits.ptr<T>(), st,
               targets.ptr<Target>(), count.ptr<int>(), dloss, V);
}

}  // namespace

void softmax_xent_forward(const Tensor& loss, const Tensor& stats, const Tensor& row_loss,
                          const Tensor& count, const Tensor& status_word, const Tensor& logits,
                          const Tensor& targets, Stream stream) {
    dispatch_storage(logits, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(logits, logits);
        const auto [rows, V] = check_logits_targets(logits, targets);
        expect_output(loss, DType::F32);
        expect_numel(loss, 1, "the mean loss");
        expect_output(stats, DType::F32);
        expect_numel(stats, 2 * int64_t(rows), "(max, log-sum) per row of logits");
        if (!is_aligned(stats.data, 8)) throw ValueError(str(stats.name, ": expected 8-byte alignment"));
        expect_output(row_loss, DType::F32);
        expect_numel(row_loss, rows, "one loss per row of logits");
        expect_output(count, DType::I32);
        expect_numel(count, 1, "the number of counted rows");
        expect_output(status_word, DType::I32);
        expect_numel(status_word, 1, "one status word");
        expect_same_device({&logits, &targets, &loss, &stats, &row_loss, &count, &status_word});
        for (const Tensor* out : {&loss, &stats, &row_loss, &count, &status_word}) {
            expect_disjoint(*out, {&logits, &targets});
            for (const Tensor* other : {&loss, &stats, &row_loss, &count, &status_word})
                if (other != out) expect_disjoint(*out, {other});
        }

        auto s = static_cast<cudaStream_t>(stream);
        status::clear(status_word.ptr<int>(), s);
        if (targets.dtype == DType::I32)
            forward_targets<T, int32_t>(loss, stats, row_loss, count, status_word, logits, targets, rows, V, s);
        else
            forward_targets<T, int64_t>(loss, stats, row_loss, count, status_word, logits, targets, rows, V, s);
    });
}

void softmax_xent_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& stats,
                           const Tensor& targets, const Tensor& count, float dloss, Stream stream) {
    dispatch_storage(logits, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(logits, logits);
        const auto [rows, V] = check_logits_targets(logits, targets);
        expect_input(stats, DType::F32);
        expect_numel(stats, 2 * int64_t(rows), "(max, log-sum) per row of logits");
        if (!is_aligned(stats.data, 8)) throw ValueError(str(stats.name, ": expected 8-byte alignment"));
        expect_input(count, DType::I32);
        expect_numel(count, 1, "the number of counted rows");
        expect_storage_output<T>(dlogits, logits);
        expect_same_shape(dlogits, logits);
        expect_same_device({&logits, &targets, &stats, &count, &dlogits});
        expect_disjoint(dlogits, {&logits, &targets, &stats, &count});
        auto s = static_cast<cudaStream_t>(stream);
        if (targets.dtype == DType::I32)
            backward_targets<T, int32_t>(dlogits, logits, stats, targets, count, dloss, rows, V, s);
        else
            backward_targets<T, int64_t>(dlogits, logits, stats, targets, count, dloss, rows, V, s);
    });
}

}  // namespace scratch::kernels
