// tests/kernels/mma_tests.cu — test kernels for core/half.h and core/mma.h, run by tests/test_mma.py
// on the host executor and (when present) on the GPU, against NumPy / ml_dtypes. Not an op.
//
//   convert        every conversion intrinsic of __nv_bfloat16 / __half, element by element
//   storage_scale  one kernel templated on the storage type, for float, bfloat16 and float16
//   fragments      mma_m16n8k16 on raw fragments that Python built from the PTX ISA's layouts
//                  (the kernel only moves registers: the layout knowledge under test is the
//                  emulation's, checked against the test's own); variants with deliberately wrong
//                  layouts (host only) show that the comparison catches them
//   ldmatrix       every ldmatrix shape, plain and .trans, from row addresses Python chose
//   gemm           A B through a two-stage cp.async pipeline, ldmatrix and mma (the shape of a
//                  tensor-core GEMM); a variant without the cp.async wait (host only) must fail
//   chain          P = A B1 kept in registers, rounded to an A operand (accum_to_a), then P B2
//   misuse         (host only) divergent or partial warps, misaligned rows: each must raise
#include <cstring>
#include <string>

#include "core/half.h"
#include "core/kernel.h"
#include "core/mma.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

// ----------------------------------------------------------------------------------- convert
// The CUDA names of one 16-bit type, so that one test kernel calls each of them.
template <typename T>
struct Intrinsics;
template <>
struct Intrinsics<__nv_bfloat16> {
    using T2 = __nv_bfloat162;
    __device__ static __nv_bfloat16 rn(float f) { return __float2bfloat16_rn(f); }
    __device__ static __nv_bfloat16 cvt(float f) { return __float2bfloat16(f); }
    __device__ static T2 floats2(float lo, float hi) { return __floats2bfloat162_rn(lo, hi); }
    __device__ static T2 float22(float2 f) { return __float22bfloat162_rn(f); }
    __device__ static T2 broadcast(float f) { return __float2bfloat162_rn(f); }
    __device__ static unsigned short bits(__nv_bfloat16 h) { return __bfloat16_as_ushort(h); }
    __device__ static __nv_bfloat16 from_bits(unsigned short u) { return __ushort_as_bfloat16(u); }
    __device__ static float to_f(__nv_bfloat16 h) { return __bfloat162float(h); }
    __device__ static float2 to_f2(T2 h) { return __bfloat1622float2(h); }
    __device__ static T2 halves(__nv_bfloat16 lo, __nv_bfloat16 hi) { return __halves2bfloat162(lo, hi); }
    __device__ static __nv_bfloat16 low(T2 h) { return __low2bfloat16(h); }
    __device__ static __nv_bfloat16 high(T2 h) { return __high2bfloat16(h); }
};
template <>
struct Intrinsics<__half> {
    using T2 = __half2;
    __device__ static __half rn(float f) { return __float2half_rn(f); }
    __device__ static __half cvt(float f) { return __float2half(f); }
    __device__ static T2 floats2(float lo, float hi) { return __floats2half2_rn(lo, hi); }
    __device__ static T2 float22(float2 f) { return __float22half2_rn(f); }
    __device__ static T2 broadcast(float f) { return __float2half2_rn(f); }
    __device__ static unsigned short bits(__half h) { return __half_as_ushort(h); }
    __device__ static __half from_bits(unsigned short u) { return __ushort_as_half(u); }
    __device__ static float to_f(__half h) { return __half2float(h); }
    __device__ static float2 to_f2(T2 h) { return __half22float2(h); }
    __device__ static T2 halves(__half lo, __half hi) { return __halves2half2(lo, hi); }
    __device__ static __half low(T2 h) { return __low2half(h); }
    __device__ static __half high(T2 h) { return __high2half(h); }
};

// Element i belongs to the pair (e, e + 1), e = i rounded down to even; the pair intrinsics convert
// the pair and element i takes its half. Rows of bits_out (float -> 16 bits):
//   0 __float2X_rn  1 __float2X  2 __floats2X2_rn  3 __float22X2_rn  4 Storage<T>::from_float
//   5 pack2<T>  6 __float2X2_rn (broadcast; its two halves must agree: the high one is written)
// Rows of floats_out (16 bits -> float):
//   0 __X2float  1 __X22float2  2 __low2float / __high2float  3 Storage<T>::to_float  4 unpack2<T>
template <typename T>
__global__ void convert_kernel(unsigned short* bits_out, float* floats_out, const float* x,
                               const unsigned short* bits_in, int n) {
    using I = Intrinsics<T>;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x) {
        const int e = i & ~1;
        const bool odd = i & 1;
        bits_out[0 * n + i] = I::bits(I::rn(x[i]));
        bits_out[1 * n + i] = I::bits(I::cvt(x[i]));
        const typename I::T2 p = I::floats2(x[e], x[e + 1]);
        bits_out[2 * n + i] = I::bits(odd ? I::high(p) : I::low(p));
        const typename I::T2 q = I::float22(make_float2(x[e], x[e + 1]));
        bits_out[3 * n + i] = I::bits(odd ? q.y : q.x);
        bits_out[4 * n + i] = I::bits(Storage<T>::from_float(x[i]));
        const uint32_t packed = pack2<T>(x[e], x[e + 1]);
        bits_out[5 * n + i] = static_cast<unsigned short>(odd ? packed >> 16 : packed & 0xffffu);
        const typename I::T2 b = I::broadcast(x[i]);
        bits_out[6 * n + i] = I::bits(I::low(b)) == I::bits(I::high(b)) ? I::bits(I::high(b)) : 0x5555u;

        const T h = I::from_bits(bits_in[i]);
        floats_out[0 * n + i] = I::to_f(h);
        const typename I::T2 h2 = I::halves(I::from_bits(bits_in[e]), I::from_bits(bits_in[e + 1]));
        const float2 f2 = I::to_f2(h2);
        floats_out[1 * n + i] = odd ? f2.y : f2.x;
        floats_out[2 * n + i] = odd ? __high2float(h2) : __low2float(h2);
        floats_out[3 * n + i] = to_float(h);
        const float2 u = unpack2<T>(uint32_t(bits_in[e]) | (uint32_t(bits_in[e + 1]) << 16));
        floats_out[4 * n + i] = odd ? u.y : u.x;
    }
}

// ------------------------------------------------------------------------------ storage_scale
// The shape every op takes: one source, the storage type a template parameter, fp32 arithmetic.
template <typename T>
__global__ void storage_scale_kernel(T* out, const T* in, float scale, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += blockDim.x * gridDim.x)
        out[i] = from_float<T>(to_float(in[i]) * scale);
}

// ---------------------------------------------------------------------------------- fragments
#if defined(SCRATCH_HOST_EXECUTOR)
// Deliberately wrong layouts (test only): each differs from the ISA's in one operand.
struct LayoutATransposed : MmaLayoutM16N8K16 {   // A read as if column major
    static constexpr int a_row(int lane, int i) { return MmaLayoutM16N8K16::a_col(lane, i); }
    static constexpr int a_col(int lane, int i) { return MmaLayoutM16N8K16::a_row(lane, i); }
};
struct LayoutBHalvesSwapped : MmaLayoutM16N8K16 {   // b0, b1 <-> b2, b3 (rows k and k + 8)
    static constexpr int b_row(int lane, int i) { return MmaLayoutM16N8K16::b_row(lane, i ^ 2); }
};
struct LayoutCTransposed : MmaLayoutM16N8K16 {   // each 8x8 half of C/D transposed
    static constexpr int c_row(int lane, int i) { return (lane & 3) * 2 + (i & 1) + ((i & 2) ? 8 : 0); }
    static constexpr int c_col(int lane, int /*i*/) { return lane >> 2; }
};
#endif

template <typename T, int Variant>
__device__ __forceinline__ void test_mma(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    if constexpr (Variant == 0) {
        mma_m16n8k16<T>(d, a, b, c);
    } else {
#if defined(SCRATCH_HOST_EXECUTOR)
        using Layout = std::conditional_t<Variant == 1, LayoutATransposed,
                       std::conditional_t<Variant == 2, LayoutBHalvesSwapped, LayoutCTransposed>>;
        host_mma::mma_m16n8k16<Layout, T>(d, a, b, c);
#endif
    }
}

// Warp w of the grid (warps numbered through the blocks), lane l: registers a[w][l][0..3],
// b[w][l][0..1], c[w][l][0..3]; `repeat` products accumulated in place: d = c + repeat * A B.
template <typename T, int Variant>
__global__ void fragments_kernel(float* d, const uint32_t* a, const uint32_t* b, const float* c, int repeat) {
    const int tid = linear_thread_index();
    const int warps_per_block = int(blockDim.x * blockDim.y * blockDim.z) / 32;
    const size_t f = (size_t(blockIdx.x) * warps_per_block + (tid >> 5)) * 32 + (tid & 31);
    uint32_t ra[4], rb[2];
    float acc[4];
    for (int r = 0; r < 4; ++r) ra[r] = a[f * 4 + r];
    for (int r = 0; r < 2; ++r) rb[r] = b[f * 2 + r];
    for (int r = 0; r < 4; ++r) acc[r] = c[f * 4 + r];
    for (int k = 0; k < repeat; ++k) test_mma<T, Variant>(acc, ra, rb, acc);
    for (int r = 0; r < 4; ++r) d[f * 4 + r] = acc[r];
}

// ----------------------------------------------------------------------------------- ldmatrix
// One block; the tile is copied to shared memory, then each warp loads with its own row offsets
// (elements; an offset that is out of range or not a multiple of 8 is replaced by 0). With
// `clobber` (one warp) each lane then overwrites its row at once: legal on the GPU, where the
// warp's ldmatrix has read every row before any lane's next instruction, so the host must read
// them for the whole warp before any lane runs on.
__global__ void ldmatrix_kernel(int* out, const unsigned short* tile, int tile_elems, const int* offsets,
                                int num, int trans, int clobber) {
    SCRATCH_DYNAMIC_SHARED(unsigned short, smem);
    const int tid = linear_thread_index();
    const int threads = int(blockDim.x * blockDim.y * blockDim.z);
    for (int i = tid; i < tile_elems; i += threads) smem[i] = tile[i];
    __syncthreads();
    int offset = offsets[tid];
    if (offset < 0 || offset > tile_elems - 8 || offset % 8) offset = 0;
    const unsigned short* row = smem + offset;
    uint32_t r[4] = {0, 0, 0, 0};
    if (num == 1) trans ? ldmatrix_x1_trans(r, row) : ldmatrix_x1(r, row);
    else if (num == 2) trans ? ldmatrix_x2_trans(r, row) : ldmatrix_x2(r, row);
    else trans ? ldmatrix_x4_trans(r, row) : ldmatrix_x4(r, row);
    if (clobber)
        for (int i = 0; i < 8; ++i) smem[offset + i] = static_cast<unsigned short>(0xdead + tid);
    for (int j = 0; j < num; ++j) out[size_t(tid) * num + j] = int(r[j]);
}

// ------------------------------------------------------------------------------------ gemm
// d [M, N] = a [M, K] b: one warp (block) per 16x8 tile of d. K advances 16 at a time through two
// shared-memory stages filled by cp.async: the copy of step t + 1 is in flight while step t is
// multiplied. A comes in through ldmatrix_x4 (lane l: row l % 16, columns (l / 16) * 8 of the
// 16x16 stage); B through ldmatrix_x2_trans when b is [K, N] (lane l < 16: row k = l of the 16x8
// stage) or ldmatrix_x2 when b is stored [N, K] (lane l < 16: row n = l % 8, columns (l / 8) * 8).
// SkipWait (host only): the cp.async wait left out, a bug the host must expose.
template <typename T, bool BNK, bool SkipWait>
__global__ void gemm_kernel(float* d, const T* a, const T* b, int M, int N, int K) {
    SCRATCH_SHARED(uint16_t, sa, [2][16 * 16]);
    SCRATCH_SHARED(uint16_t, sb, [2][16 * 8]);
    const int lane = threadIdx.x;
    const int m0 = blockIdx.y * 16, n0 = blockIdx.x * 8;
    const int steps = K / 16;
    auto load = [&](int stage, int k0) {
        const int row = lane >> 1, part = lane & 1;   // A: 16 rows of two 16-byte parts
        cp_async_16(&sa[stage][row * 16 + part * 8], a + size_t(m0 + row) * K + k0 + part * 8);
        if (lane < 16) {
            if (BNK) cp_async_16(&sb[stage][row * 16 + part * 8], b + size_t(n0 + row) * K + k0 + part * 8);
            else cp_async_16(&sb[stage][lane * 8], b + size_t(k0 + lane) * N + n0);
        }
        cp_async_commit();
    };
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    load(0, 0);
    for (int t = 0; t < steps; ++t) {
        if (t + 1 < steps) {
            load((t + 1) & 1, (t + 1) * 16);
            if (!SkipWait) cp_async_wait<1>();   // step t's group has landed, t + 1's may not have
        } else {
            if (!SkipWait) cp_async_wait<0>();
        }
        __syncthreads();   // every lane's copies of step t are visible to the whole warp
        const int s = t & 1;
        uint32_t ra[4], rb[2];
        ldmatrix_x4(ra, &sa[s][(lane & 15) * 16 + (lane >> 4) * 8]);
        if (BNK) ldmatrix_x2(rb, &sb[s][(lane & 7) * 16 + ((lane >> 3) & 1) * 8]);
        else ldmatrix_x2_trans(rb, &sb[s][(lane & 15) * 8]);
        mma_m16n8k16<T>(acc, ra, rb, acc);
        __syncthreads();   // stage s is read before step t + 2 refills it
    }
    using L = MmaLayoutM16N8K16;
    for (int i = 0; i < 4; ++i) d[size_t(m0 + L::c_row(lane, i)) * N + n0 + L::c_col(lane, i)] = acc[i];
}

// ------------------------------------------------------------------------------------ chain
// One warp: P = A B1 (16x16 = two 16x8 accumulators), P rounded to T as an A operand without
// leaving the registers, out = P B2. Fragments come from global memory through the C++ layout
// (MmaLayoutM16N8K16), as an epilogue or a prologue would use it. p [16, 16] float32 keeps P.
__device__ __forceinline__ uint32_t gather_pair(const uint16_t* m, int ld, int r0, int c0, int r1, int c1) {
    return uint32_t(m[r0 * ld + c0]) | (uint32_t(m[r1 * ld + c1]) << 16);
}
template <typename T>
__global__ void chain_kernel(float* out, float* p, const uint16_t* a, const uint16_t* b1, const uint16_t* b2) {
    using L = MmaLayoutM16N8K16;
    const int lane = threadIdx.x;
    uint32_t ra[4], rb0[2], rb1[2], rb2[2];
    for (int r = 0; r < 4; ++r)
        ra[r] = gather_pair(a, 16, L::a_row(lane, 2 * r), L::a_col(lane, 2 * r),
                            L::a_row(lane, 2 * r + 1), L::a_col(lane, 2 * r + 1));
    for (int r = 0; r < 2; ++r) {   // b1 is [16, 16]: columns 0-7, then 8-15; b2 is [16, 8]
        const int k0 = L::b_row(lane, 2 * r), k1 = L::b_row(lane, 2 * r + 1), n = L::b_col(lane, 2 * r);
        rb0[r] = gather_pair(b1, 16, k0, n, k1, n);
        rb1[r] = gather_pair(b1, 16, k0, n + 8, k1, n + 8);
        rb2[r] = gather_pair(b2, 8, k0, n, k1, n);
    }
    float p0[4] = {0, 0, 0, 0}, p1[4] = {0, 0, 0, 0}, o[4] = {0, 0, 0, 0};
    mma_m16n8k16<T>(p0, ra, rb0, p0);
    mma_m16n8k16<T>(p1, ra, rb1, p1);
    uint32_t rp[4];
    accum_to_a<T>(rp, p0, p1);
    mma_m16n8k16<T>(o, rp, rb2, o);
    for (int i = 0; i < 4; ++i) {
        const int row = L::c_row(lane, i), col = L::c_col(lane, i);
        p[row * 16 + col] = p0[i];
        p[row * 16 + col + 8] = p1[i];
        out[row * 8 + col] = o[i];
    }
}

#if defined(SCRATCH_HOST_EXECUTOR)
// ------------------------------------------------------------------------- misuse (host only)
__global__ void mma_divergent_kernel(float* out) {   // half the warp at the mma, half elsewhere
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float acc[4] = {0, 0, 0, 0};
    if (threadIdx.x < 16) mma_m16n8k16_bf16(acc, a, b, acc);
    else __syncwarp();
    out[threadIdx.x] = acc[0];
}
__global__ void mma_mixed_kernel(float* out) {   // half the warp at an ldmatrix, half at an mma
    SCRATCH_SHARED(uint16_t, tile, [64]);
    const int lane = threadIdx.x;
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float acc[4] = {0, 0, 0, 0};
    if (lane < 16) mma_m16n8k16_f16(acc, a, b, acc);
    else ldmatrix_x4(a, &tile[(lane & 7) * 8]);
    out[lane] = acc[0] + float(a[0]);
}
__global__ void mma_partial_warp_kernel(float* out) {   // launched with 48 threads
    uint32_t a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float acc[4] = {0, 0, 0, 0};
    mma_m16n8k16_bf16(acc, a, b, acc);
    out[threadIdx.x] = acc[0];
}
__global__ void ldmatrix_misaligned_kernel(float* out) {   // rows 2 bytes off 16-byte alignment
    SCRATCH_SHARED(uint16_t, tile, [8 * 8 + 8]);
    uint32_t r[1];
    ldmatrix_x1(r, &tile[(threadIdx.x & 7) * 8 + 1]);
    out[threadIdx.x] = float(r[0]);
}
__global__ void cp_async_misaligned_kernel(float* out, const float* in) {
    SCRATCH_SHARED(float, tile, [8]);
    cp_async_16(&tile[1], in);
    cp_async_wait_all();
    out[0] = tile[1];
}
#endif

template <typename T>
void launch_convert(const Tensor& bits_out, const Tensor& floats_out, const Tensor& x, const Tensor& bits_in,
                    int n, cudaStream_t stream) {
    launch("convert_kernel", convert_kernel<T>, dim3(ceil_div(n, 256)), dim3(256), 0, stream,
           bits_out.ptr<unsigned short>(), floats_out.ptr<float>(), x.ptr<float>(),
           bits_in.ptr<unsigned short>(), n);
}

template <typename T>
void launch_storage_scale(const Tensor& out, const Tensor& in, float scale, int n, cudaStream_t stream) {
    expect_output(out, Storage<T>::dtype);
    launch("storage_scale_kernel", storage_scale_kernel<T>, dim3(ceil_div(n, 256)), dim3(256), 0, stream,
           out.ptr<T>(), in.ptr<T>(), scale, n);
}

template <typename T, int Variant>
void launch_fragments(const Tensor& d, const Tensor& a, const Tensor& b, const Tensor& c, int repeat,
                      int blocks, dim3 block, cudaStream_t stream) {
    launch("fragments_kernel", fragments_kernel<T, Variant>, dim3(blocks), block, 0, stream, d.ptr<float>(),
           reinterpret_cast<const uint32_t*>(a.ptr<int>()), reinterpret_cast<const uint32_t*>(b.ptr<int>()),
           c.ptr<float>(), repeat);
}

template <typename T, bool BNK>
void launch_gemm(const Tensor& d, const Tensor& a, const Tensor& b, int variant, int M, int N, int K,
                 cudaStream_t stream) {
    const dim3 grid(N / 8, M / 16);
    if (variant == 0) {
        launch("gemm_kernel", gemm_kernel<T, BNK, false>, grid, dim3(32), 0, stream, d.ptr<float>(),
               a.ptr<T>(), b.ptr<T>(), M, N, K);
    } else {
#if defined(SCRATCH_HOST_EXECUTOR)
        launch("gemm_kernel", gemm_kernel<T, BNK, true>, grid, dim3(32), 0, stream, d.ptr<float>(),
               a.ptr<T>(), b.ptr<T>(), M, N, K);
#endif
    }
}

void expect_kind(int kind) {
    if (kind != 0 && kind != 1) throw ValueError(str("kind: expected 0 (bfloat16) or 1 (float16), got ", kind));
}
DType bits_dtype(int kind) { return kind == 0 ? Storage<__nv_bfloat16>::dtype : Storage<__half>::dtype; }

}  // namespace

void mma_test_convert(const Tensor& bits_out, const Tensor& floats_out, const Tensor& x, const Tensor& bits_in,
                      int kind, Stream stream) {
    expect_kind(kind);
    expect_input(x, DType::F32);
    expect_input(bits_in, DType::U16);
    expect_same_shape(bits_in, x);
    const int n = to_int(x.numel(), "size of x");
    if (n % 2) throw ValueError(str("x: expected an even number of elements (pairs), got ", n));
    expect_output(bits_out, DType::U16);
    expect_shape(bits_out, {7, n});
    expect_output(floats_out, DType::F32);
    expect_shape(floats_out, {5, n});
    expect_same_device({&x, &bits_in, &bits_out, &floats_out});
    const auto s = static_cast<cudaStream_t>(stream);
    if (kind == 0) launch_convert<__nv_bfloat16>(bits_out, floats_out, x, bits_in, n, s);
    else launch_convert<__half>(bits_out, floats_out, x, bits_in, n, s);
}

void mma_test_storage_scale(const Tensor& out, const Tensor& in, float scale, Stream stream) {
    expect_contiguous(in);
    expect_same_shape(out, in);
    expect_same_device({&in, &out});
    const int n = to_int(in.numel(), "size of in");
    const auto s = static_cast<cudaStream_t>(stream);
    if (in.dtype == Storage<float>::dtype) launch_storage_scale<float>(out, in, scale, n, s);
    else if (in.dtype == Storage<__nv_bfloat16>::dtype) launch_storage_scale<__nv_bfloat16>(out, in, scale, n, s);
    else if (in.dtype == Storage<__half>::dtype) launch_storage_scale<__half>(out, in, scale, n, s);
    else throw TypeError(str("in: expected float32, float16 or bfloat16 bits (uint16), got ", dtype_name(in.dtype)));
}

void mma_test_fragments(const Tensor& d, const Tensor& a, const Tensor& b, const Tensor& c, int kind, int repeat,
                        int warps_per_block, int block_x, int variant, Stream stream) {
    expect_kind(kind);
    expect_input(a, DType::I32);
    expect_ndim(a, 3, 3);
    const int64_t warps = a.size(0);
    expect_shape(a, {warps, 32, 4});
    expect_input(b, DType::I32);
    expect_shape(b, {warps, 32, 2});
    expect_input(c, DType::F32);
    expect_shape(c, {warps, 32, 4});
    expect_output(d, DType::F32);
    expect_same_shape(d, c);
    expect_same_device({&a, &b, &c, &d});
    if (repeat < 0 || repeat > 16) throw ValueError(str("repeat: expected 0 .. 16, got ", repeat));
    if (warps_per_block < 1 || warps_per_block > 32 || warps % warps_per_block)
        throw ValueError(str("warps_per_block: expected 1 .. 32 dividing the ", warps, " warps, got ", warps_per_block));
    const int threads = 32 * warps_per_block;
    if (block_x < 1 || threads % block_x)
        throw ValueError(str("block_x: expected a divisor of ", threads, " threads, got ", block_x));
    if (variant < 0 || variant > 3) throw ValueError(str("variant: expected 0 .. 3, got ", variant));
#if !defined(SCRATCH_HOST_EXECUTOR)
    if (variant != 0) throw ValueError("variant: the deliberately wrong layouts exist on the host executor only");
#endif
    const int blocks = to_int(warps / warps_per_block, "blocks");
    const dim3 block(block_x, threads / block_x);
    const auto s = static_cast<cudaStream_t>(stream);
    auto run = [&](auto tag) {
        using T = decltype(tag);
        switch (variant) {
            case 0: launch_fragments<T, 0>(d, a, b, c, repeat, blocks, block, s); break;
#if defined(SCRATCH_HOST_EXECUTOR)
            case 1: launch_fragments<T, 1>(d, a, b, c, repeat, blocks, block, s); break;
            case 2: launch_fragments<T, 2>(d, a, b, c, repeat, blocks, block, s); break;
            case 3: launch_fragments<T, 3>(d, a, b, c, repeat, blocks, block, s); break;
#endif
        }
    };
    if (kind == 0) run(__nv_bfloat16());
    else run(__half());
}

void mma_test_ldmatrix(const Tensor& out, const Tensor& tile, const Tensor& offsets, int num, int trans,
                       int clobber, Stream stream) {
    if (num != 1 && num != 2 && num != 4) throw ValueError(str("num: expected 1, 2 or 4, got ", num));
    if (trans != 0 && trans != 1) throw ValueError(str("trans: expected 0 or 1, got ", trans));
    if (clobber != 0 && clobber != 1) throw ValueError(str("clobber: expected 0 or 1, got ", clobber));
    expect_input(tile, DType::U16);
    const int tile_elems = to_int(tile.numel(), "size of tile");
    if (tile_elems < 8 || tile_elems > 16384) throw ValueError(str("tile: expected 8 .. 16384 elements, got ", tile_elems));
    expect_input(offsets, DType::I32);
    expect_ndim(offsets, 2, 2);
    const int64_t warps = offsets.size(0);
    if (warps < 1 || warps > 32) throw ValueError(str("offsets: expected 1 .. 32 warps, got ", warps));
    if (clobber && warps != 1) throw ValueError(str("clobber: one warp only (other warps read the rows), got ", warps));
    expect_shape(offsets, {warps, 32});
    expect_output(out, DType::I32);
    expect_shape(out, {warps, 32, num});
    expect_same_device({&tile, &offsets, &out});
    launch("ldmatrix_kernel", ldmatrix_kernel, dim3(1), dim3(32 * unsigned(warps)),
           size_t(ceil_div(tile_elems, 8)) * 16, static_cast<cudaStream_t>(stream), out.ptr<int>(),
           tile.ptr<unsigned short>(), tile_elems, offsets.ptr<int>(), num, trans, clobber);
}

void mma_test_gemm(const Tensor& d, const Tensor& a, const Tensor& b, int kind, int b_layout, int variant,
                   Stream stream) {
    expect_kind(kind);
    if (b_layout != 0 && b_layout != 1) throw ValueError(str("b_layout: expected 0 ([K, N]) or 1 ([N, K]), got ", b_layout));
    if (variant != 0 && variant != 1) throw ValueError(str("variant: expected 0 or 1, got ", variant));
#if !defined(SCRATCH_HOST_EXECUTOR)
    if (variant != 0) throw ValueError("variant: the missing cp.async wait is a host executor test only");
#endif
    expect_input(a, bits_dtype(kind));
    expect_ndim(a, 2, 2);
    expect_input(b, bits_dtype(kind));
    expect_ndim(b, 2, 2);
    const int M = to_int(a.size(0), "M"), K = to_int(a.size(1), "K");
    const int N = to_int(b_layout ? b.size(0) : b.size(1), "N");
    if (b_layout) expect_shape(b, {N, K});
    else expect_shape(b, {K, N});
    if (M % 16 || N % 8 || K % 16 || M == 0 || N == 0 || K == 0)
        throw ValueError(str("shapes: M a multiple of 16, N of 8, K of 16 (all > 0), got M=", M, " N=", N, " K=", K));
    expect_output(d, DType::F32);
    expect_shape(d, {M, N});
    expect_same_device({&a, &b, &d});
    if (!is_aligned(a.data, 16) || !is_aligned(b.data, 16))
        throw ValueError("a, b: cp.async reads 16-byte aligned rows: the arrays must start 16-byte aligned");
    const auto s = static_cast<cudaStream_t>(stream);
    if (kind == 0) {
        if (b_layout) launch_gemm<__nv_bfloat16, true>(d, a, b, variant, M, N, K, s);
        else launch_gemm<__nv_bfloat16, false>(d, a, b, variant, M, N, K, s);
    } else {
        if (b_layout) launch_gemm<__half, true>(d, a, b, variant, M, N, K, s);
        else launch_gemm<__half, false>(d, a, b, variant, M, N, K, s);
    }
}

void mma_test_chain(const Tensor& out, const Tensor& p, const Tensor& a, const Tensor& b1, const Tensor& b2,
                    int kind, Stream stream) {
    expect_kind(kind);
    for (const Tensor* t : {&a, &b1, &b2}) expect_input(*t, bits_dtype(kind));
    expect_shape(a, {16, 16});
    expect_shape(b1, {16, 16});
    expect_shape(b2, {16, 8});
    expect_output(out, DType::F32);
    expect_shape(out, {16, 8});
    expect_output(p, DType::F32);
    expect_shape(p, {16, 16});
    expect_same_device({&a, &b1, &b2, &out, &p});
    const auto s = static_cast<cudaStream_t>(stream);
    const auto* pa = static_cast<const uint16_t*>(a.data);
    const auto* pb1 = static_cast<const uint16_t*>(b1.data);
    const auto* pb2 = static_cast<const uint16_t*>(b2.data);
    if (kind == 0)
        launch("chain_kernel", chain_kernel<__nv_bfloat16>, dim3(1), dim3(32), 0, s, out.ptr<float>(), p.ptr<float>(), pa, pb1, pb2);
    else
        launch("chain_kernel", chain_kernel<__half>, dim3(1), dim3(32), 0, s, out.ptr<float>(), p.ptr<float>(), pa, pb1, pb2);
}

const char* const kMmaMisuseCases[] = {"mma_divergent", "mma_mixed", "mma_partial_warp", "ldmatrix_misaligned",
                                       "cp_async_misaligned", nullptr};

void mma_test_misuse(const char* which) {
#if defined(SCRATCH_HOST_EXECUTOR)
    alignas(16) float out[64] = {};
    alignas(16) float in[8] = {};
    const std::string w = which;
    if (w == "mma_divergent") launch("mma_divergent_kernel", mma_divergent_kernel, dim3(1), dim3(32), 0, nullptr, out);
    else if (w == "mma_mixed") launch("mma_mixed_kernel", mma_mixed_kernel, dim3(1), dim3(32), 0, nullptr, out);
    else if (w == "mma_partial_warp") launch("mma_partial_warp_kernel", mma_partial_warp_kernel, dim3(1), dim3(48), 0, nullptr, out);
    else if (w == "ldmatrix_misaligned") launch("ldmatrix_misaligned_kernel", ldmatrix_misaligned_kernel, dim3(1), dim3(32), 0, nullptr, out);
    else if (w == "cp_async_misaligned") launch("cp_async_misaligned_kernel", cp_async_misaligned_kernel, dim3(1), dim3(1), 0, nullptr, out, in);
    else throw ValueError(str("which: unknown misuse case ", which));
#else
    throw Error(str("mma_test_misuse(", which, "): host executor only (on a GPU these are undefined)"));
#endif
}

}  // namespace scratch::kernels
