// csrc/gelu.cu — GELU forward and backward (docs/gradients/gelu.md, reference/gelu.py), float32.
//
//   tanh form (GPT-1/2/3, the default)   out = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
//                                        d out/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
//   exact form (approximate="none")      out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
//                                        d out/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
//
// Purely element-wise and memory-bound (forward: 4 bytes in, 4 out per element; backward: 8 in,
// 4 out): a grid-stride loop where each thread moves one float4 per iteration (coalesced 512 B
// per warp) when the pointers are 16-byte aligned, then the n % 4 tail element by element; a
// scalar loop when they are not (csrc/elementwise.h). The transcendental (tanhf / erff, expf)
// is cheap next to the memory traffic.
// Tails: see gelu() below. The output may be the input itself (in place).
#include "core/kernel.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;
constexpr float kGeluCoef = 0.044715f;
constexpr float kInvSqrt2 = 0.7071067811865476f;
constexpr float kInvSqrt2Pi = 0.3989422804014327f;

// Written so that neither tail cancels in float32: 0.5 (1 + tanh u) = 1 / (1 + exp(-2u)) and
// 0.5 (1 + erf z) = 0.5 erfc(-z). (1 + tanhf(u) is 0 for u < -9, where GELU is still ~1e-8 x.)
template <bool kExact>
__device__ __forceinline__ float gelu(float x) {
    if (kExact) return 0.5f * x * erfcf(-x * kInvSqrt2);
    const float u = kSqrt2OverPi * (x + kGeluCoef * x * x * x);
    return x / (1.0f + expf(-2.0f * u));
}

// tanh form: with s = 0.5 (1 + tanh u), 1 - tanh^2 u = 4 s (1 - s), so
// d out/dx = s + 2 x s (1 - s) du/dx.
template <bool kExact>
__device__ __forceinline__ float gelu_grad(float x) {
    if (kExact) return 0.5f * erfcf(-x * kInvSqrt2) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
    const float u = kSqrt2OverPi * (x + kGeluCoef * x * x * x);
    const float s = 1.0f / (1.0f + expf(-2.0f * u));
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoef * x * x);
    return s + 2.0f * x * s * (1.0f - s) * du;
}

template <bool kExact, bool kVec>
__global__ void __launch_bounds__(kElementwiseThreads)
gelu_forward_kernel(float* out, const float* x, int64_t n) {
    map_elements<kVec>(out, x, n, [](float v) { return gelu<kExact>(v); });
}

template <bool kExact, bool kVec>
__global__ void __launch_bounds__(kElementwiseThreads)
gelu_backward_kernel(float* dx, const float* dout, const float* x, int64_t n) {
    map_elements<kVec>(dx, dout, x, n, [](float d, float v) { return d * gelu_grad<kExact>(v); });
}

bool exact_mode(int mode) {
    if (mode != kGeluTanh && mode != kGeluExact)
        throw ValueError(str("approximate: expected kGeluTanh (0, 'tanh') or kGeluExact (1, 'none'), got ", mode));
    return mode == kGeluExact;
}

}  // namespace

void gelu_forward(const Tensor& out, const Tensor& x, int mode, Stream stream) {
    expect_input(x, DType::F32);
    expect_output(out, DType::F32);
    expect_same_shape(out, x);
    expect_same_device({&x, &out});
    expect_same_or_disjoint(out, x);
    const bool exact = exact_mode(mode);
    const int64_t n = x.numel();
    if (n == 0) return;
    const bool vec = all_aligned16({&out, &x});
    const dim3 grid(elementwise_blocks(vec ? (n + 3) / 4 : n)), block(kElementwiseThreads);
    auto s = static_cast<cudaStream_t>(stream);
    float* o = out.ptr<float>();
    const float* i = x.ptr<float>();
    if (exact) {
        if (vec) launch("gelu_forward_kernel<exact, vec4>", gelu_forward_kernel<true, true>, grid, block, 0, s, o, i, n);
        else launch("gelu_forward_kernel<exact, scalar>", gelu_forward_kernel<true, false>, grid, block, 0, s, o, i, n);
    } else {
        if (vec) launch("gelu_forward_kernel<tanh, vec4>", gelu_forward_kernel<false, true>, grid, block, 0, s, o, i, n);
        else launch("gelu_forward_kernel<tanh, scalar>", gelu_forward_kernel<false, false>, grid, block, 0, s, o, i, n);
    }
}

void gelu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, int mode, Stream stream) {
    expect_input(x, DType::F32);
    expect_input(dout, DType::F32);
    expect_same_shape(dout, x);
    expect_output(dx, DType::F32);
    expect_same_shape(dx, x);
    expect_same_device({&x, &dout, &dx});
    expect_same_or_disjoint(dx, x);
    expect_same_or_disjoint(dx, dout);
    const bool exact = exact_mode(mode);
    const int64_t n = x.numel();
    if (n == 0) return;
    const bool vec = all_aligned16({&dx, &dout, &x});
    const dim3 grid(elementwise_blocks(vec ? (n + 3) / 4 : n)), block(kElementwiseThreads);
    auto s = static_cast<cudaStream_t>(stream);
    float* g = dx.ptr<float>();
    const float *d = dout.ptr<float>(), *i = x.ptr<float>();
    if (exact) {
        if (vec) launch("gelu_backward_kernel<exact, vec4>", gelu_backward_kernel<true, true>, grid, block, 0, s, g, d, i, n);
        else launch("gelu_backward_kernel<exact, scalar>", gelu_backward_kernel<true, false>, grid, block, 0, s, g, d, i, n);
    } else {
        if (vec) launch("gelu_backward_kernel<tanh, vec4>", gelu_backward_kernel<false, true>, grid, block, 0, s, g, d, i, n);
        else launch("gelu_backward_kernel<tanh, scalar>", gelu_backward_kernel<false, false>, grid, block, 0, s, g, d, i, n);
    }
}

}  // namespace scratch::kernels
