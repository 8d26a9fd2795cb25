// csrc/gelu.cu — GELU forward and backward (docs/gradients/gelu.md, reference/gelu.py), stored in
// T = float, __nv_bfloat16 or __half (csrc/elementwise.h), computed in float.
//
//   tanh form (GPT-1/2/3, the default)   out = g x,  gate g = 0.5 (1 + tanh u),  u = s (x + c x^3),
//                                        s = sqrt(2/pi), c = 0.044715 (the names of gelu.md)
//                                        d out/dx = g (1 + x (1 - g) 2 du/dx),  du/dx = s (1 + 3 c x^2)
//   exact form (approximate="none")      out = x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
//                                        d out/dx = Phi(x) + x phi(x),  phi(x) = exp(-x^2/2) / sqrt(2 pi)
//
// Storage: x, out, dout and dx are all T. Each value is widened to float on reading, the formula
// runs in float (tanh / erf, exp in float32 whatever T is), and out = R(gelu(x)),
// dx = R(dout * gelu'(x)) are rounded once to T. The backward recomputes gelu'(x) from the
// stored x (nothing else is kept).
//
// Purely element-wise and memory-bound (forward: sizeof(T) bytes in, sizeof(T) out per element;
// backward: 2 sizeof(T) in, sizeof(T) out — 4/4 and 8/4 bytes in float32, 2/2 and 4/2 in bf16 /
// fp16): a grid-stride loop where each thread moves one 16-byte pack per operand and iteration
// (4 floats or 8 bf16 / fp16; coalesced 512 B per warp) when the pointers are 16-byte aligned,
// then the n % N tail element by element; a scalar loop when they are not (csrc/elementwise.h).
// The transcendental (tanhf / erff, expf) is cheap next to the memory traffic.
// Tails: see gelu() below. The output may be the input itself (in place).
#include "core/kernel.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr float kSqrt2OverPi = 0.7978845608028654f;   // s
constexpr float kGeluCoef = 0.044715f;                // c
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

// tanh form: with the gate g = 0.5 (1 + tanh u), 1 - tanh^2 u = 4 g (1 - g), so
// d out/dx = g + 2 x g (1 - g) du/dx.
template <bool kExact>
__device__ __forceinline__ float gelu_grad(float x) {
    if (kExact) return 0.5f * erfcf(-x * kInvSqrt2) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
    const float u = kSqrt2OverPi * (x + kGeluCoef * x * x * x);
    const float g = 1.0f / (1.0f + expf(-2.0f * u));     // the gate 0.5 (1 + tanh u)
    const float du = kSqrt2OverPi * (1.0f + 3.0f * kGeluCoef * x * x);
    return g + 2.0f * x * g * (1.0f - g) * du;
}

template <typename T, bool kExact, bool kVec>
__global__ void __launch_bounds__(kElementwiseThreads)
gelu_forward_kernel(T* out, const T* x, int64_t n) {
    map_elements<T, kVec>(out, x, n, [](float v) { return gelu<kExact>(v); });
}

template <typename T, bool kExact, bool kVec>
__global__ void __launch_bounds__(kElementwiseThreads)
gelu_backward_kernel(T* dx, const T* dout, const T* x, int64_t n) {
    map_elements<T, kVec>(dx, dout, x, n, [](float d, float v) { return d * gelu_grad<kExact>(v); });
}

bool exact_mode(int mode) {
    if (mode != kGeluTanh && mode != kGeluExact)
        throw ValueError(str("approximate: expected kGeluTanh (0, 'tanh') or kGeluExact (1, 'none'), got ", mode));
    return mode == kGeluExact;
}

// The four instantiations of one storage type: (tanh | exact) x (pack | scalar).
template <typename T>
void launch_gelu_forward(T* o, const T* i, int64_t n, bool exact, bool vec, cudaStream_t s) {
    const dim3 grid(elementwise_blocks(elementwise_items<T>(n, vec))), block(kElementwiseThreads);
    if (exact) {
        if (vec) launch("gelu_forward_kernel<exact, pack>", gelu_forward_kernel<T, true, true>, grid, block, 0, s, o, i, n);
        else launch("gelu_forward_kernel<exact, scalar>", gelu_forward_kernel<T, true, false>, grid, block, 0, s, o, i, n);
    } else {
        if (vec) launch("gelu_forward_kernel<tanh, pack>", gelu_forward_kernel<T, false, true>, grid, block, 0, s, o, i, n);
        else launch("gelu_forward_kernel<tanh, scalar>", gelu_forward_kernel<T, false, false>, grid, block, 0, s, o, i, n);
    }
}

template <typename T>
void launch_gelu_backward(T* g, const T* d, const T* i, int64_t n, bool exact, bool vec, cudaStream_t s) {
    const dim3 grid(elementwise_blocks(elementwise_items<T>(n, vec))), block(kElementwiseThreads);
    if (exact) {
        if (vec) launch("gelu_backward_kernel<exact, pack>", gelu_backward_kernel<T, true, true>, grid, block, 0, s, g, d, i, n);
        else launch("gelu_backward_kernel<exact, scalar>", gelu_backward_kernel<T, true, false>, grid, block, 0, s, g, d, i, n);
    } else {
        if (vec) launch("gelu_backward_kernel<tanh, pack>", gelu_backward_kernel<T, false, true>, grid, block, 0, s, g, d, i, n);
        else launch("gelu_backward_kernel<tanh, scalar>", gelu_backward_kernel<T, false, false>, grid, block, 0, s, g, d, i, n);
    }
}

}  // namespace

void gelu_forward(const Tensor& out, const Tensor& x, int mode, Stream stream) {
    dispatch_storage(x, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(x, x);
        expect_storage_output<T>(out, x);
        expect_same_shape(out, x);
        expect_same_device({&x, &out});
        expect_same_or_disjoint(out, x);
        const bool exact = exact_mode(mode);
        const int64_t n = x.numel();
        if (n == 0) return;
        launch_gelu_forward<T>(out.ptr<T>(), x.ptr<T>(), n, exact, all_aligned16({&out, &x}),
                               static_cast<cudaStream_t>(stream));
    });
}

void gelu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, int mode, Stream stream) {
    dispatch_storage(x, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(x, x);
        expect_storage<T>(dout, x);
        expect_same_shape(dout, x);
        expect_storage_output<T>(dx, x);
        expect_same_shape(dx, x);
        expect_same_device({&x, &dout, &dx});
        expect_same_or_disjoint(dx, x);
        expect_same_or_disjoint(dx, dout);
        const bool exact = exact_mode(mode);
        const int64_t n = x.numel();
        if (n == 0) return;
        launch_gelu_backward<T>(dx.ptr<T>(), dout.ptr<T>(), x.ptr<T>(), n, exact,
                                all_aligned16({&dx, &dout, &x}), static_cast<cudaStream_t>(stream));
    });
}

}  // namespace scratch::kernels
