// csrc/adamw.cu — the AdamW update (decoupled weight decay, bias correction) and the global
// gradient norm with clipping (docs/gradients/adamw.md, python/scratchgpt/reference/adamw.py).
//
//   m <- b1 m + (1 - b1) g          v <- b2 v + (1 - b2) g^2
//   p <- p (1 - lr wd) - (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps),   bck = 1 - bk^step
//
// Storage: param, grad, m and v are float32 whatever the model stores (the fp32 masters, their
// fp32 gradients and moments; DESIGN.md, "Precision"). Optionally the update also writes lowp,
// the working copy the next forward reads: lowp = R(p_new), the updated float32 parameter rounded
// once to L = __nv_bfloat16 or __half (a fused cast: no second pass over the parameters).
//
// Update: one pass over param, grad, m, v (16 bytes read and 12 written per element, nothing
// else; + 2 written with lowp); a thread owns a group of 4 elements moved as float4 when all four
// float arrays are 16-byte aligned (and lowp 8-byte aligned: its 4 values go out as one 8-byte
// store), the ragged last group element by element; a grid-stride loop covers any size. The
// scalars (1 - lr wd, lr / bc1, sqrt(bc2)) are computed once on the host in float64.
//
// Global norm, a deterministic two-stage reduction over a list of tensors:
//   1. per tensor, a fixed number of blocks (a function of its size only) each sum the squares
//      of a fixed, grid-strided set of float4 groups (float per group, float64 per thread), reduce
//      across the block in float64 and write one partial into the caller's workspace;
//   2. one block sums all partials, thread i taking partials i, i + 1024, ..., in float64, then the
//      block reduction; it writes sqrt of the total.
// Every addition happens in an order fixed by the sizes alone, so the norm is the same bits run
// to run. Clipping scales each gradient in place by a float32 factor (one read, one write).
#include <cmath>

#include "core/kernel.h"
#include "csrc/disjoint.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxUpdateBlocks = 4096;   // grid-stride beyond this
constexpr int kGroupsPerNormThread = 8;  // float4 groups a norm thread sums before the block does
constexpr int kMaxNormBlocks = 1024;
constexpr int kFinishThreads = 1024;

struct AdamWScalars {
    float beta1, one_minus_beta1, beta2, one_minus_beta2, decay, step_size, sqrt_bc2, eps;
};

__device__ __forceinline__ void adamw_element(float& p, float g, float& m, float& v, const AdamWScalars& k) {
    m = k.beta1 * m + k.one_minus_beta1 * g;
    v = k.beta2 * v + k.one_minus_beta2 * g * g;
    p = p * k.decay - k.step_size * m / (sqrtf(v) / k.sqrt_bc2 + k.eps);
}

// L: the working copy's storage type (__nv_bfloat16, __half), or NoCopy when none is written.
struct NoCopy {};

// Four floats rounded to L (once each) in one 8-byte store at p (8-byte aligned).
template <typename L>
__device__ __forceinline__ void store_lowp4(L* p, float4 a) {
    SCRATCH_DEVICE_CHECK(is_aligned(p, 8), "misaligned 8-byte store (needs 8-byte alignment)");
    *reinterpret_cast<int2*>(p) = make_int2(int(pack2<L>(a.x, a.y)), int(pack2<L>(a.z, a.w)));
}

template <typename L, bool kVec4>
__global__ void __launch_bounds__(kThreads)
adamw_update_kernel(float* __restrict__ param, const float* __restrict__ grad, float* __restrict__ m,
                    float* __restrict__ v, L* __restrict__ lowp, int64_t n, AdamWScalars k) {
    constexpr bool kCopy = is_16bit_float<L>;
    const int64_t groups = (n + 3) / 4;
    const int64_t stride = int64_t(gridDim.x) * kThreads;
    for (int64_t gi = int64_t(blockIdx.x) * kThreads + threadIdx.x; gi < groups; gi += stride) {
        const int64_t e = 4 * gi;
        if (kVec4 && e + 3 < n) {
            float4 p4 = load_float4(param + e), m4 = load_float4(m + e), v4 = load_float4(v + e);
            const float4 g4 = load_float4(grad + e);
            adamw_element(p4.x, g4.x, m4.x, v4.x, k);
            adamw_element(p4.y, g4.y, m4.y, v4.y, k);
            adamw_element(p4.z, g4.z, m4.z, v4.z, k);
            adamw_element(p4.w, g4.w, m4.w, v4.w, k);
            store_float4(param + e, p4);
            store_float4(m + e, m4);
            store_float4(v + e, v4);
            if constexpr (kCopy) store_lowp4(lowp + e, p4);
        } else {
            for (int64_t i = e; i < e + 4 && i < n; ++i) {
                float p = param[i], mi = m[i], vi = v[i];
                adamw_element(p, grad[i], mi, vi, k);
                param[i] = p, m[i] = mi, v[i] = vi;
                if constexpr (kCopy) lowp[i] = from_float<L>(p);
            }
        }
    }
}

// partials[blockIdx.x] = sum of squares of the float4 groups blockIdx.x * 256 + threadIdx.x
// + k * gridDim.x * 256 (the last group element by element).
template <bool kVec4>
__global__ void __launch_bounds__(kThreads)
sum_squares_partial_kernel(double* __restrict__ partials, const float* __restrict__ x, int64_t n) {
    const int64_t groups = (n + 3) / 4;
    const int64_t stride = int64_t(gridDim.x) * kThreads;
    double acc = 0.0;
    for (int64_t gi = int64_t(blockIdx.x) * kThreads + threadIdx.x; gi < groups; gi += stride) {
        const int64_t e = 4 * gi;
        if (kVec4 && e + 3 < n) {
            const float4 a = load_float4(x + e);
            acc += double((a.x * a.x + a.y * a.y) + (a.z * a.z + a.w * a.w));
        } else {
            for (int64_t i = e; i < e + 4 && i < n; ++i) acc += double(x[i]) * double(x[i]);
        }
    }
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

__global__ void __launch_bounds__(kFinishThreads)
global_norm_finish_kernel(double* __restrict__ norm, const double* __restrict__ partials, int count) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += kFinishThreads) acc += partials[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) *norm = sqrt(acc);
}

template <bool kVec4>
__global__ void __launch_bounds__(kThreads)
scale_kernel(float* __restrict__ x, int64_t n, float factor) {
    const int64_t groups = (n + 3) / 4;
    const int64_t stride = int64_t(gridDim.x) * kThreads;
    for (int64_t gi = int64_t(blockIdx.x) * kThreads + threadIdx.x; gi < groups; gi += stride) {
        const int64_t e = 4 * gi;
        if (kVec4 && e + 3 < n) {
            const float4 a = load_float4(x + e);
            store_float4(x + e, make_float4(a.x * factor, a.y * factor, a.z * factor, a.w * factor));
        } else {
            for (int64_t i = e; i < e + 4 && i < n; ++i) x[i] *= factor;
        }
    }
}

int elementwise_grid(int64_t n) {
    return int(std::min<int64_t>(ceil_div<int64_t>((n + 3) / 4, kThreads), kMaxUpdateBlocks));
}

bool all_aligned(std::initializer_list<const Tensor*> ts) {
    for (const Tensor* t : ts)
        if (!is_aligned(t->data, 16)) return false;
    return true;
}

}  // namespace

void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const Tensor* lowp, int64_t step, double lr, double beta1, double beta2, double eps,
                  double weight_decay, Stream stream) {
    expect_output(param, DType::F32);
    expect_input(grad, DType::F32);
    expect_output(m, DType::F32);
    expect_output(v, DType::F32);
    expect_same_shape(grad, param);
    expect_same_shape(m, param);
    expect_same_shape(v, param);
    expect_same_device({&param, &grad, &m, &v});
    expect_disjoint(param, {&grad, &m, &v});
    expect_disjoint(m, {&grad, &v});
    expect_disjoint(v, {&grad});
    if (lowp) {
        if (lowp->dtype != DType::U16 && lowp->dtype != DType::F16)
            throw TypeError(str(lowp->name, ": expected bfloat16 (uint16 bits) or float16 (the working copy "
                                "of param), got ", dtype_name(lowp->dtype)));
        expect_output(*lowp, lowp->dtype);
        expect_same_shape(*lowp, param);
        expect_same_device({&param, lowp});
        expect_disjoint(*lowp, {&param, &grad, &m, &v});
    }
    if (step < 1) throw ValueError(str("step: expected an integer >= 1, got ", step));
    for (auto [name, value] : {std::pair{"beta1", beta1}, std::pair{"beta2", beta2}})
        if (!(value >= 0.0 && value < 1.0))
            throw ValueError(str(name, ": expected a number in [0, 1), got ", value));
    if (!(eps >= 0.0)) throw ValueError(str("eps: expected a non-negative number, got ", eps));
    if (!std::isfinite(lr)) throw ValueError(str("lr: expected a finite number, got ", lr));
    if (!std::isfinite(weight_decay))
        throw ValueError(str("weight_decay: expected a finite number, got ", weight_decay));
    const int64_t n = param.numel();
    if (n == 0) return;

    const double bc1 = 1.0 - std::pow(beta1, double(step));
    const double bc2 = 1.0 - std::pow(beta2, double(step));
    const AdamWScalars k{float(beta1), float(1.0 - beta1), float(beta2), float(1.0 - beta2),
                         float(1.0 - lr * weight_decay), float(lr / bc1), float(std::sqrt(bc2)),
                         float(eps)};
    auto s = static_cast<cudaStream_t>(stream);
    const dim3 grid(elementwise_grid(n)), block(kThreads);
    const bool vec = all_aligned({&param, &grad, &m, &v}) && (!lowp || is_aligned(lowp->data, 8));
    auto run = [&](auto* copy) {
        using L = std::remove_pointer_t<decltype(copy)>;
        if (vec)
            launch("adamw_update_kernel<vec4>", adamw_update_kernel<L, true>, grid, block, 0, s,
                   param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(), copy, n, k);
        else
            launch("adamw_update_kernel<scalar>", adamw_update_kernel<L, false>, grid, block, 0, s,
                   param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(), copy, n, k);
    };
    if (!lowp) run(static_cast<NoCopy*>(nullptr));
    else if (lowp->dtype == DType::U16) run(lowp->ptr<__nv_bfloat16>());
    else run(lowp->ptr<__half>());
}

int64_t global_norm_blocks(int64_t n) {
    if (n < 0) throw ValueError(str("n: expected a size >= 0, got ", n));
    return std::min<int64_t>(ceil_div<int64_t>((n + 3) / 4, int64_t(kThreads) * kGroupsPerNormThread),
                             kMaxNormBlocks);
}

void global_norm_partials(const Tensor& partials, const Tensor& x, Stream stream) {
    expect_input(x, DType::F32);
    expect_output(partials, DType::F64);
    const int64_t n = x.numel();
    const int blocks = int(global_norm_blocks(n));
    expect_numel(partials, blocks, "global_norm_blocks(x.size) partial sums");
    expect_same_device({&x, &partials});
    expect_disjoint(partials, {&x});
    if (blocks == 0) return;
    auto s = static_cast<cudaStream_t>(stream);
    if (is_aligned(x.data, 16))
        launch("sum_squares_partial_kernel<vec4>", sum_squares_partial_kernel<true>, dim3(blocks),
               dim3(kThreads), 0, s, partials.ptr<double>(), x.ptr<float>(), n);
    else
        launch("sum_squares_partial_kernel<scalar>", sum_squares_partial_kernel<false>, dim3(blocks),
               dim3(kThreads), 0, s, partials.ptr<double>(), x.ptr<float>(), n);
}

void global_norm_finish(const Tensor& norm, const Tensor& partials, Stream stream) {
    expect_input(partials, DType::F64);
    expect_ndim(partials, 1, 1);
    expect_output(norm, DType::F64);
    expect_numel(norm, 1, "the norm");
    expect_same_device({&partials, &norm});
    expect_disjoint(norm, {&partials});
    launch("global_norm_finish_kernel", global_norm_finish_kernel, dim3(1), dim3(kFinishThreads), 0,
           static_cast<cudaStream_t>(stream), norm.ptr<double>(), partials.ptr<double>(),
           to_int(partials.numel(), "partial sums"));
}

void global_norm_clip(const Tensor& x, float factor, Stream stream) {
    expect_output(x, DType::F32);
    if (!std::isfinite(factor)) throw ValueError(str("factor: expected a finite number, got ", factor));
    const int64_t n = x.numel();
    if (n == 0) return;
    auto s = static_cast<cudaStream_t>(stream);
    if (is_aligned(x.data, 16))
        launch("scale_kernel<vec4>", scale_kernel<true>, dim3(elementwise_grid(n)), dim3(kThreads), 0, s,
               x.ptr<float>(), n, factor);
    else
        launch("scale_kernel<scalar>", scale_kernel<false>, dim3(elementwise_grid(n)), dim3(kThreads), 0,
               s, x.ptr<float>(), n, factor);
}

}  // namespace scratch::kernels
