// csrc/gru.cu — the GRU's recurrence, forward and backward through time (docs/gradients/gru.md,
// reference/gru.py), stored in T = float, __nv_bfloat16 or __half, computed in float.
//
// The layer is split as the reference splits it: the input projections of all time steps,
// xp = x W_ih^T + b_ih [B, T, 3H], are ONE matmul by linear.cu (kernels/gru.py calls it), and
// what is left is the part that is sequential in t, done here. Per step, gates r, z, n in
// PyTorch's order:
//
//   hp   = W_hh h_{t-1} + b_hh                 (the only matmul left: [B, H] x [H, 3H] per step)
//   r    = sigmoid(xp_r + hp_r),  z = sigmoid(xp_z + hp_z),  n = tanh(xp_n + r hp_n)
//   h_t  = (1 - z) n + z h_{t-1}
//
// Decomposition (forward and backward alike). A block owns kRows = 4 batch rows for the whole
// sequence, so the time loop runs inside the kernel and the state never leaves the block; a thread
// owns one hidden unit j (blockDim = H rounded up to a warp, H <= 1024) of those rows. The weights
// U = W_hh [3H, H] are read by every step: when 3H * H * sizeof(T) fits kSmemBudget they are
// staged in shared memory ONCE per block and stay there for all T steps (kUShared); the state of
// the block's rows lives in shared memory too (float, [kRows][H]), each value read by all H
// threads as a broadcast. Larger U is read from global memory at every step (through L1 / L2:
// the same 3H * H values for every step and block; in the forward thread j walks row j, so a
// warp's loads are H apart: a fallback that works for any H <= 1024, not a tuned path).
//   forward: U is staged transposed, Ut[k][g H + j], so that at each k the threads j read
//     consecutive words (no bank conflicts); thread j accumulates its 3 gate rows for its kRows
//     rows in 12 registers: 3 kRows H FMAs per step, each U value loaded once per 4 rows.
//   backward (t = T-1 .. 0): thread j forms its gate gradients (12 values), writes dxp and
//     dhp = dL/dhp to global and dhp to shared memory; after a barrier it computes
//     dL/dh_{t-1}[j] = d z + sum_gi U[gi][j] dhp[gi], reading U's column j (staged as stored,
//     [3H][H]: consecutive j, consecutive words) — U^T dhp, the transpose of the forward's product.
//     The carried gradient stays in registers (float) for the next step.
//   dW_hh = sum_t dhp_t^T h_{t-1} and db_hh are NOT summed here: kernels/gru.py hands dhp to
//     linear.cu's weight-gradient matmul over all B T rows at once (a reduction across time that
//     the sequential loop would otherwise do with atomics).
//
// Traffic per launch (sizeof(T) = s): U once per block (3 H^2 s), b_hh once; per step and row:
//   forward  reads xp (3H s), writes h (H s) and the gates kept for the backward (r, z, n, hp_n:
//            4H s);
//   backward reads dh, the gates and h_{t-1} (6H s), writes dxp and dhp (6H s).
// The recurrence is latency-bound (T dependent steps of a small product, two barriers each);
// batching kRows rows per block reuses each U value 4 times per load.
//
// Storage: xp, h, gates, dh, dxp, dhp, h0, dh0 and U, b_hh are T. The state carried from step to
// step is h_t rounded to T (what the next step reads is what was stored); sums, activations and
// the carried gradient are float.
#include "core/kernel.h"
#include "csrc/disjoint.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kRows = 4;                        // batch rows per block
constexpr size_t kSmemBudget = 160 * 1024;      // below sm_80's 163 KiB opt-in limit
constexpr int kMaxHidden = 1024;                // one thread per hidden unit

__device__ __forceinline__ float sigmoidf(float a) {
    // exp of a non-positive number only, as the reference: no overflow for saturated gates
    const float e = expf(-fabsf(a));
    return a >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
}

template <typename T, bool kUShared>
__global__ void __launch_bounds__(kMaxHidden, 1)
gru_forward_kernel(T* __restrict__ h, T* __restrict__ gates, const T* __restrict__ xp,
                   const T* __restrict__ h0, const T* __restrict__ w_hh, const T* __restrict__ b_hh,
                   int B, int steps, int H) {
    SCRATCH_DYNAMIC_SHARED(float, smem);
    float* state = smem;                                     // [kRows][H]
    T* ut = reinterpret_cast<T*>(smem + kRows * H);          // [H][3H] (kUShared)
    const int j = threadIdx.x, b0 = blockIdx.x * kRows, G = 3 * H;
    const bool unit = j < H;
    if (kUShared)
        for (int e = threadIdx.x; e < G * H; e += blockDim.x) {
            const int row = e / H, k = e % H;                // coalesced read of U[row][k]
            ut[k * G + row] = w_hh[e];
        }
    float bias[3] = {0.0f, 0.0f, 0.0f};
    if (unit)
        SCRATCH_UNROLL
        for (int g = 0; g < 3; ++g) bias[g] = to_float(b_hh[g * H + j]);
    SCRATCH_UNROLL
    for (int r = 0; r < kRows; ++r)
        if (unit) state[r * H + j] = b0 + r < B ? to_float(h0[int64_t(b0 + r) * H + j]) : 0.0f;
    __syncthreads();
    for (int t = 0; t < steps; ++t) {
        float acc[kRows][3];
        SCRATCH_UNROLL
        for (int r = 0; r < kRows; ++r)
            SCRATCH_UNROLL
            for (int g = 0; g < 3; ++g) acc[r][g] = bias[g];
        if (unit)
            for (int k = 0; k < H; ++k) {
                float u[3];
                SCRATCH_UNROLL
                for (int g = 0; g < 3; ++g)
                    u[g] = kUShared ? to_float(ut[k * G + g * H + j]) : to_float(w_hh[int64_t(g * H + j) * H + k]);
                SCRATCH_UNROLL
                for (int r = 0; r < kRows; ++r) {
                    const float hk = state[r * H + k];
                    SCRATCH_UNROLL
                    for (int g = 0; g < 3; ++g) acc[r][g] = fmaf(u[g], hk, acc[r][g]);
                }
            }
        float next[kRows];
        SCRATCH_UNROLL
        for (int r = 0; r < kRows; ++r) {
            next[r] = 0.0f;
            const int b = b0 + r;
            if (!unit || b >= B) continue;
            const int64_t bt = int64_t(b) * steps + t;
            const T* x = xp + bt * G;
            const float rg = sigmoidf(to_float(x[j]) + acc[r][0]);
            const float zg = sigmoidf(to_float(x[H + j]) + acc[r][1]);
            const float ng = tanhf(to_float(x[2 * H + j]) + rg * acc[r][2]);
            const T hv = from_float<T>((1.0f - zg) * ng + zg * state[r * H + j]);
            h[bt * H + j] = hv;
            next[r] = to_float(hv);
            T* gt = gates + bt * 4 * H;
            gt[j] = from_float<T>(rg);
            gt[H + j] = from_float<T>(zg);
            gt[2 * H + j] = from_float<T>(ng);
            gt[3 * H + j] = from_float<T>(acc[r][2]);
        }
        __syncthreads();                                     // every thread has read the old state
        if (unit)
            SCRATCH_UNROLL
            for (int r = 0; r < kRows; ++r) state[r * H + j] = next[r];
        __syncthreads();                                     // the new state is complete
    }
}

template <typename T, bool kUShared>
__global__ void __launch_bounds__(kMaxHidden, 1)
gru_backward_kernel(T* __restrict__ dxp, T* __restrict__ dhp, T* __restrict__ dh0,
                    const T* __restrict__ dh, const T* __restrict__ h, const T* __restrict__ gates,
                    const T* __restrict__ h0, const T* __restrict__ w_hh, int B, int steps, int H) {
    SCRATCH_DYNAMIC_SHARED(float, smem);
    const int G = 3 * H;
    float* dhp_s = smem;                                     // [kRows][3H]
    T* u = reinterpret_cast<T*>(smem + kRows * G);           // [3H][H] as stored (kUShared)
    const int j = threadIdx.x, b0 = blockIdx.x * kRows;
    const bool unit = j < H;
    if (kUShared)
        for (int e = threadIdx.x; e < G * H; e += blockDim.x) u[e] = w_hh[e];
    float carry[kRows], direct[kRows];
    SCRATCH_UNROLL
    for (int r = 0; r < kRows; ++r) carry[r] = 0.0f;
    for (int t = steps - 1; t >= 0; --t) {
        SCRATCH_UNROLL
        for (int r = 0; r < kRows; ++r) {
            const int b = b0 + r;
            direct[r] = 0.0f;
            if (!unit) continue;
            float da[3] = {0.0f, 0.0f, 0.0f}, dn_h = 0.0f;
            if (b < B) {
                const int64_t bt = int64_t(b) * steps + t;
                const T* gt = gates + bt * 4 * H;
                const float rg = to_float(gt[j]), zg = to_float(gt[H + j]);
                const float ng = to_float(gt[2 * H + j]), hpn = to_float(gt[3 * H + j]);
                const float hprev = to_float(t > 0 ? h[(bt - 1) * H + j] : h0[int64_t(b) * H + j]);
                const float d = to_float(dh[bt * H + j]) + carry[r];
                const float dn = d * (1.0f - zg);
                const float dz = d * (hprev - ng);
                da[2] = dn * (1.0f - ng * ng);
                da[0] = da[2] * hpn * rg * (1.0f - rg);
                da[1] = dz * zg * (1.0f - zg);
                dn_h = da[2] * rg;
                direct[r] = d * zg;
                T* dx = dxp + bt * G;
                T* dp = dhp + bt * G;
                SCRATCH_UNROLL
                for (int g = 0; g < 3; ++g) dx[g * H + j] = from_float<T>(da[g]);
                dp[j] = from_float<T>(da[0]);
                dp[H + j] = from_float<T>(da[1]);
                dp[2 * H + j] = from_float<T>(dn_h);
            }
            dhp_s[r * G + j] = da[0];                        // rows past B contribute zeros
            dhp_s[r * G + H + j] = da[1];
            dhp_s[r * G + 2 * H + j] = dn_h;
        }
        __syncthreads();                                     // dhp of every unit is in place
        if (unit) {
            float acc[kRows];
            SCRATCH_UNROLL
            for (int r = 0; r < kRows; ++r) acc[r] = direct[r];
            for (int gi = 0; gi < G; ++gi) {
                const float w = kUShared ? to_float(u[gi * H + j]) : to_float(w_hh[int64_t(gi) * H + j]);
                SCRATCH_UNROLL
                for (int r = 0; r < kRows; ++r) acc[r] = fmaf(w, dhp_s[r * G + gi], acc[r]);
            }
            SCRATCH_UNROLL
            for (int r = 0; r < kRows; ++r) carry[r] = acc[r];
        }
        __syncthreads();                                     // dhp_s is read before it is rewritten
    }
    if (unit)
        SCRATCH_UNROLL
        for (int r = 0; r < kRows; ++r)
            if (b0 + r < B) dh0[int64_t(b0 + r) * H + j] = from_float<T>(carry[r]);
}

int threads_for(int H) { return ceil_div(H, 32) * 32; }

template <typename T>
size_t u_bytes(int H) { return size_t(3) * H * H * sizeof(T); }

// Shapes shared by the forward and the backward: xp-like [B, T, 3H], h-like [B, T, H],
// gates [B, T, 4, H], h0 [B, H], w_hh [3H, H], b_hh [3H].
struct Dims {
    int B, steps, H;
};

Dims check_dims(const Tensor& h, const Tensor& w_hh) {
    expect_ndim(h, 3, 3);
    expect_ndim(w_hh, 2, 2);
    const int64_t H = w_hh.shape[1];
    if (H < 1 || H > kMaxHidden)
        throw ValueError(str(w_hh.name, ": hidden size ", H, " outside 1 .. ", kMaxHidden,
                             " (one thread per hidden unit)"));
    expect_shape(w_hh, {3 * H, H});
    expect_shape(h, {-1, -1, H});
    return {to_int(h.shape[0], "batch"), to_int(h.shape[1], "steps"), int(H)};
}

}  // namespace

void gru_forward(const Tensor& h, const Tensor& gates, const Tensor& xp, const Tensor& h0,
                 const Tensor& w_hh, const Tensor& b_hh, Stream stream) {
    dispatch_storage(xp, [&](auto tag) {
        using T = typename decltype(tag)::type;
        for (const Tensor* t : {&xp, &h0, &w_hh, &b_hh}) expect_storage<T>(*t, xp);
        expect_storage_output<T>(h, xp);
        expect_storage_output<T>(gates, xp);
        const Dims d = check_dims(h, w_hh);
        expect_shape(xp, {d.B, d.steps, 3 * d.H});
        expect_shape(gates, {d.B, d.steps, 4, d.H});
        expect_shape(h0, {d.B, d.H});
        expect_shape(b_hh, {3 * d.H});
        expect_same_device({&xp, &h0, &w_hh, &b_hh, &h, &gates});
        for (const Tensor* out : {&h, &gates}) expect_disjoint(*out, {&xp, &h0, &w_hh, &b_hh});
        expect_disjoint(h, {&gates});
        if (d.B == 0 || d.steps == 0) return;
        const dim3 grid(ceil_div(d.B, kRows)), block(threads_for(d.H));
        const size_t state = size_t(kRows) * d.H * sizeof(float);
        auto s = static_cast<cudaStream_t>(stream);
        if (state + u_bytes<T>(d.H) <= kSmemBudget)
            launch("gru_forward_kernel<U in shared>", gru_forward_kernel<T, true>, grid, block,
                   state + u_bytes<T>(d.H), s, h.ptr<T>(), gates.ptr<T>(), xp.ptr<T>(), h0.ptr<T>(),
                   w_hh.ptr<T>(), b_hh.ptr<T>(), d.B, d.steps, d.H);
        else
            launch("gru_forward_kernel<U in global>", gru_forward_kernel<T, false>, grid, block,
                   state, s, h.ptr<T>(), gates.ptr<T>(), xp.ptr<T>(), h0.ptr<T>(), w_hh.ptr<T>(),
                   b_hh.ptr<T>(), d.B, d.steps, d.H);
    });
}

void gru_backward(const Tensor& dxp, const Tensor& dhp, const Tensor& dh0, const Tensor& dh,
                  const Tensor& h, const Tensor& gates, const Tensor& h0, const Tensor& w_hh,
                  Stream stream) {
    dispatch_storage(dh, [&](auto tag) {
        using T = typename decltype(tag)::type;
        for (const Tensor* t : {&dh, &h, &gates, &h0, &w_hh}) expect_storage<T>(*t, dh);
        for (const Tensor* t : {&dxp, &dhp, &dh0}) expect_storage_output<T>(*t, dh);
        const Dims d = check_dims(h, w_hh);
        expect_same_shape(dh, h);
        expect_shape(gates, {d.B, d.steps, 4, d.H});
        expect_shape(h0, {d.B, d.H});
        expect_shape(dxp, {d.B, d.steps, 3 * d.H});
        expect_shape(dhp, {d.B, d.steps, 3 * d.H});
        expect_shape(dh0, {d.B, d.H});
        expect_same_device({&dh, &h, &gates, &h0, &w_hh, &dxp, &dhp, &dh0});
        for (const Tensor* out : {&dxp, &dhp, &dh0}) expect_disjoint(*out, {&dh, &h, &gates, &h0, &w_hh});
        expect_disjoint(dxp, {&dhp, &dh0});
        expect_disjoint(dhp, {&dh0});
        if (d.B == 0) return;
        const dim3 grid(ceil_div(d.B, kRows)), block(threads_for(d.H));
        const size_t partial = size_t(kRows) * 3 * d.H * sizeof(float);
        auto s = static_cast<cudaStream_t>(stream);
        if (partial + u_bytes<T>(d.H) <= kSmemBudget)
            launch("gru_backward_kernel<U in shared>", gru_backward_kernel<T, true>, grid, block,
                   partial + u_bytes<T>(d.H), s, dxp.ptr<T>(), dhp.ptr<T>(), dh0.ptr<T>(), dh.ptr<T>(),
                   h.ptr<T>(), gates.ptr<T>(), h0.ptr<T>(), w_hh.ptr<T>(), d.B, d.steps, d.H);
        else
            launch("gru_backward_kernel<U in global>", gru_backward_kernel<T, false>, grid, block,
                   partial, s, dxp.ptr<T>(), dhp.ptr<T>(), dh0.ptr<T>(), dh.ptr<T>(), h.ptr<T>(),
                   gates.ptr<T>(), h0.ptr<T>(), w_hh.ptr<T>(), d.B, d.steps, d.H);
    });
}

int64_t gru_shared_u_limit(int64_t itemsize) {
    // the largest H whose U (and the block's state) the kernels keep in shared memory
    int64_t H = 1;
    while (size_t(kRows) * 3 * (H + 1) * sizeof(float) + size_t(3) * (H + 1) * (H + 1) * itemsize <= kSmemBudget)
        ++H;
    return H;
}

}  // namespace scratch::kernels
