// tests/kernels/executor_tests.cu — small kernels, one feature of the CUDA execution model each, run by
// tests/test_executor.py on the host executor and (when present) on the GPU, against NumPy.
// They are tests of core/, not ops: shuffles of every flavour, votes, partial masks, block
// reductions over 3-D blocks, a shared-memory transpose, atomics, 3-D grids, dynamic shared
// memory, __activemask in divergent code, and (host only) misuse that must raise, a shared-memory
// race that only some schedules reveal, and reads of shared memory nobody wrote (poison).
#include <cstring>
#include <string>
#include <vector>

#include "core/kernel.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

// out[k][t], k = 0..5: shfl(src_lane), shfl_up(delta), shfl_down(delta), shfl_xor(delta) with
// `width`, then warp_sum and warp_max of the whole warp.
__global__ void shuffles_kernel(float* out, const float* in, int n, int width, int delta, int src_lane) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const float v = in[t];
    out[0 * n + t] = __shfl_sync(0xffffffffu, v, src_lane, width);
    out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, unsigned(delta), width);
    out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, unsigned(delta), width);
    out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, delta, width);
    out[4 * n + t] = warp_sum(v);
    out[5 * n + t] = warp_max(v);
}

// out[k][t], k = 0..2: ballot (as bits), any, all of predicate != 0 over the warp.
__global__ void votes_kernel(int* out, const int* predicate, int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int p = predicate[t];
    out[0 * n + t] = int(__ballot_sync(0xffffffffu, p));
    out[1 * n + t] = __any_sync(0xffffffffu, p);
    out[2 * n + t] = __all_sync(0xffffffffu, p);
}

// Lanes split by parity; each half sums over its own 16 lanes with its own mask, at the same time.
// out[0][t]: sum over same-parity lanes of the warp. out[1][t]: the lower 16 lanes alone sum over
// themselves with width 16 (the upper lanes take no part and keep their value).
__global__ void partial_masks_kernel(float* out, const float* in, int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const int lane = threadIdx.x & 31;
    float v = in[t];
    const unsigned mask = (lane & 1) ? 0xaaaaaaaau : 0x55555555u;
    for (int offset = 2; offset < 32; offset <<= 1) v += __shfl_xor_sync(mask, v, offset);
    out[t] = v;
    float u = in[t];
    if (lane < 16) {
        for (int offset = 8; offset > 0; offset >>= 1) u += __shfl_down_sync(0x0000ffffu, u, unsigned(offset), 16);
        u = __shfl_sync(0x0000ffffu, u, 0, 16);   // broadcast lane 0's total
        __syncwarp(0x0000ffffu);
    }
    out[n + t] = u;
}

// One sum per block over a 3-D block.
__global__ void block_sum_kernel(float* out, const float* in) {
    const int threads = int(blockDim.x * blockDim.y * blockDim.z);
    const int block = int(blockIdx.x);
    const float total = block_sum(in[block * threads + linear_thread_index()]);
    if (linear_thread_index() == 0) out[block] = total;
}

// out[C][R] = in[R][C] through a 32x33 shared tile; block (32, 8), each thread moves 4 elements.
__global__ void transpose_kernel(float* out, const float* in, int R, int C) {
    SCRATCH_SHARED(float, tile, [32][33]);
    const int c0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int r = r0 + k, c = c0 + threadIdx.x;
        if (r < R && c < C) tile[k][threadIdx.x] = in[size_t(r) * C + c];
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += 8) {
        const int c = c0 + k, r = r0 + threadIdx.x;
        if (r < R && c < C) out[size_t(c) * R + r] = tile[threadIdx.x][k];
    }
}

// Contended atomics from every thread of every block.
__global__ void atomics_kernel(float* sum, int* max, int* count, int* histogram,
                               const float* values, const int* ints, int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    atomicAdd(sum, values[t]);
    atomicMax(max, ints[t]);
    atomicAdd(&histogram[ints[t] & 15], 1);
    int seen = *count;   // an increment built from atomicCAS
    for (;;) {
        const int old = atomicCAS(count, seen, seen + 1);
        if (old == seen) break;
        seen = old;
    }
}

// Each thread writes (block linear id) * 1024 + (thread linear id) at its global (z, y, x).
__global__ void grid3d_kernel(int* out) {
    const unsigned X = gridDim.x * blockDim.x, Y = gridDim.y * blockDim.y;
    const unsigned x = blockIdx.x * blockDim.x + threadIdx.x;
    const unsigned y = blockIdx.y * blockDim.y + threadIdx.y;
    const unsigned z = blockIdx.z * blockDim.z + threadIdx.z;
    const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    out[(size_t(z) * Y + y) * X + x] = int(block * 1024u + unsigned(linear_thread_index()));
}

// Each block reverses its chunk of `in` through dynamic shared memory.
__global__ void dynamic_smem_kernel(float* out, const float* in, int n) {
    SCRATCH_DYNAMIC_SHARED(float, chunk);
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    chunk[threadIdx.x] = t < n ? in[t] : 0.0f;
    __syncthreads();
    const int src = blockIdx.x * blockDim.x + (blockDim.x - 1 - threadIdx.x);
    if (t < n && src < n) out[t] = chunk[blockDim.x - 1 - threadIdx.x];
    else if (t < n) out[t] = -1.0f;
}

// __activemask() where the warp diverges. Threads t >= live return first. out[t]: the mask seen
// inside the branch lane t takes (predicate[t] != 0 or not); out[n + t]: the mask after the live
// lanes of the warp meet again at __syncwarp; out[2n + t]: which branch ran (1 or 2). The two
// branches begin with different stores, so the compiler cannot hoist their __activemask out of
// them (nor sink it: inline asm is never merged).
__global__ void activemask_kernel(unsigned* out, const int* predicate, int n, int live) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= live) return;
    if (predicate[t]) {
        out[2 * n + t] = 1u;
        out[t] = __activemask();
    } else {
        out[2 * n + t] = 2u;
        out[t] = __activemask();
    }
    const int warp_first = t - (t & 31);
    const int live_lanes = min(32, live - warp_first);
    __syncwarp(live_lanes == 32 ? 0xffffffffu : (1u << live_lanes) - 1u);
    out[n + t] = __activemask();
}

#if defined(SCRATCH_HOST_EXECUTOR)
// Host only (the GPU does not promise that a divergent loop runs its lanes converged): lane t
// runs trips[t] iterations; out[t] is the mask its last iteration saw (0 if none): the lanes
// still in the loop, {l : trips[l] >= trips[t]}.
__global__ void activemask_loop_kernel(unsigned* out, const int* trips) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    unsigned seen = 0;
    for (int i = 0; i < trips[t]; ++i) seen = __activemask();
    out[t] = seen;
}

// Each thread stores its value in shared memory and reads its lower neighbour's in the warp
// (lane 0 its own): out[t] = in[t - 1]. mode 0: no barrier between the store and the load (a
// race: right only when the lower thread runs first, as the forward schedule happens to do);
// 1: __syncthreads(); 2: __syncwarp() (enough: the neighbour is in the same warp).
__global__ void neighbour_kernel(float* out, const float* in, int n, int mode) {
    SCRATCH_SHARED(float, values, [1024]);
    const int t = threadIdx.x, g = blockIdx.x * blockDim.x + t;
    values[t] = g < n ? in[g] : 0.0f;
    if (mode == 1) __syncthreads();
    if (mode == 2) __syncwarp();
    const int src = (t & 31) == 0 ? t : t - 1;
    if (g < n) out[g] = values[src];
}

// Block b: threads t < written[b] store into static float and int and dynamic shared memory,
// then every thread reads its own slot back: out[b][0][t] (static float), out[b][1][t]
// (dynamic), ints[b][t] (static int). Slots nobody wrote hold whatever the memory held: under
// SCRATCH_HOST_POISON=1 the poison, in every block, whatever earlier blocks left there.
__global__ void uninitialised_kernel(float* out, int* ints, const int* written) {
    SCRATCH_SHARED(float, f, [256]);
    SCRATCH_SHARED(int, k, [256]);
    SCRATCH_DYNAMIC_SHARED(float, dyn);
    const int t = threadIdx.x, b = blockIdx.x, threads = blockDim.x;
    if (t < written[b]) {
        f[t] = float(b * 1000 + t);
        k[t] = b * 1000 + t;
        dyn[t] = -float(b * 1000 + t);
    }
    __syncthreads();
    out[(2 * b) * threads + t] = f[t];
    out[(2 * b + 1) * threads + t] = dyn[t];
    ints[b * threads + t] = k[t];
}

// ---------------------------------------------------------- misuse: each must raise, not hang
__global__ void barrier_skipped_kernel() {   // half the block returns, half waits at a barrier
    if (threadIdx.x < 16) __syncthreads();
}
__global__ void barrier_divergent_kernel() {  // the two halves wait at different barriers
    if (threadIdx.x & 1) {
        __syncthreads();
    } else {
        __syncthreads();
    }
}
__global__ void lane_exits_kernel(float* out) {   // lane 31 leaves; the others shuffle with it
    if (threadIdx.x == 31) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);
}
__global__ void lane_never_arrives_kernel(float* out) {   // lane 5 waits at a barrier instead
    float v = float(threadIdx.x);
    if (threadIdx.x == 5) __syncthreads();
    else v = __shfl_xor_sync(0xffffffffu, v, 1);
    out[threadIdx.x] = v;
}
__global__ void lane_not_in_mask_kernel(float* out) {   // lane 3 calls with a mask without itself
    out[threadIdx.x] = __shfl_xor_sync(threadIdx.x == 3 ? 0xfffffff0u : 0xffffffffu, 1.0f, 1);
}
#if defined(SCRATCH_ASAN_BUILD)
__global__ void heap_overflow_kernel(float* out) {   // launched with one thread too many
    out[threadIdx.x] = 1.0f;
}
#endif
__global__ void misaligned_kernel(float* out) {
    const float4 v = load_float4(out + 1);
    out[0] = v.x;
}
#endif

void expect_threads(const Tensor& t, int64_t n, DType dtype) {
    expect_output(t, dtype);
    expect_numel(t, n, "one per thread");
}

}  // namespace

void exec_test_shuffles(const Tensor& out, const Tensor& in, int block, int width, int delta,
                        int src_lane, Stream stream) {
    expect_input(in, DType::F32);
    const int n = to_int(in.numel(), "in");
    if (block <= 0 || block % 32 || n % block) throw ValueError("block: must be a multiple of 32 dividing the size of in");
    expect_threads(out, 6 * int64_t(n), DType::F32);
    launch("shuffles_kernel", shuffles_kernel, dim3(n / block), dim3(block), 0,
           static_cast<cudaStream_t>(stream), out.ptr<float>(), in.ptr<float>(), n, width, delta, src_lane);
}

void exec_test_votes(const Tensor& out, const Tensor& predicate, int block, Stream stream) {
    expect_input(predicate, DType::I32);
    const int n = to_int(predicate.numel(), "predicate");
    if (block <= 0 || block % 32 || n % block) throw ValueError("block: must be a multiple of 32 dividing the size of predicate");
    expect_threads(out, 3 * int64_t(n), DType::I32);
    launch("votes_kernel", votes_kernel, dim3(n / block), dim3(block), 0,
           static_cast<cudaStream_t>(stream), out.ptr<int>(), predicate.ptr<int>(), n);
}

void exec_test_partial_masks(const Tensor& out, const Tensor& in, int block, Stream stream) {
    expect_input(in, DType::F32);
    const int n = to_int(in.numel(), "in");
    if (block <= 0 || block % 32 || n % block) throw ValueError("block: must be a multiple of 32 dividing the size of in");
    expect_threads(out, 2 * int64_t(n), DType::F32);
    launch("partial_masks_kernel", partial_masks_kernel, dim3(n / block), dim3(block), 0,
           static_cast<cudaStream_t>(stream), out.ptr<float>(), in.ptr<float>(), n);
}

void exec_test_block_sum(const Tensor& out, const Tensor& in, int bx, int by, int bz, Stream stream) {
    expect_input(in, DType::F32);
    const int threads = bx * by * bz;
    if (threads <= 0 || threads % 32 || in.numel() % threads)
        throw ValueError("block: the thread count must be a multiple of 32 dividing the size of in");
    const int blocks = to_int(in.numel() / threads, "blocks");
    expect_threads(out, blocks, DType::F32);
    launch("block_sum_kernel", block_sum_kernel, dim3(blocks), dim3(bx, by, bz), 0,
           static_cast<cudaStream_t>(stream), out.ptr<float>(), in.ptr<float>());
}

void exec_test_transpose(const Tensor& out, const Tensor& in, Stream stream) {
    expect_input(in, DType::F32);
    expect_ndim(in, 2, 2);
    const int R = to_int(in.size(0), "rows"), C = to_int(in.size(1), "columns");
    expect_output(out, DType::F32);
    expect_shape(out, {C, R});
    launch("transpose_kernel", transpose_kernel, dim3(ceil_div(C, 32), ceil_div(R, 32)), dim3(32, 8),
           0, static_cast<cudaStream_t>(stream), out.ptr<float>(), in.ptr<float>(), R, C);
}

void exec_test_atomics(const Tensor& sum, const Tensor& max, const Tensor& count,
                       const Tensor& histogram, const Tensor& values, const Tensor& ints,
                       Stream stream) {
    expect_input(values, DType::F32);
    expect_input(ints, DType::I32);
    expect_same_shape(ints, values);
    expect_output(sum, DType::F32);
    expect_numel(sum, 1, "the total");
    expect_output(max, DType::I32);
    expect_numel(max, 1, "the maximum");
    expect_output(count, DType::I32);
    expect_numel(count, 1, "the count");
    expect_output(histogram, DType::I32);
    expect_numel(histogram, 16, "16 bins");
    const int n = to_int(values.numel(), "values");
    launch("atomics_kernel", atomics_kernel, dim3(ceil_div(n, 128)), dim3(128), 0,
           static_cast<cudaStream_t>(stream), sum.ptr<float>(), max.ptr<int>(), count.ptr<int>(),
           histogram.ptr<int>(), values.ptr<float>(), ints.ptr<int>(), n);
}

void exec_test_grid3d(const Tensor& out, int gx, int gy, int gz, int bx, int by, int bz, Stream stream) {
    expect_output(out, DType::I32);
    expect_shape(out, {int64_t(gz) * bz, int64_t(gy) * by, int64_t(gx) * bx});
    launch("grid3d_kernel", grid3d_kernel, dim3(gx, gy, gz), dim3(bx, by, bz), 0,
           static_cast<cudaStream_t>(stream), out.ptr<int>());
}

void exec_test_dynamic_smem(const Tensor& out, const Tensor& in, int block, Stream stream) {
    expect_input(in, DType::F32);
    expect_output(out, DType::F32);
    expect_same_shape(out, in);
    const int n = to_int(in.numel(), "in");
    launch("dynamic_smem_kernel", dynamic_smem_kernel, dim3(ceil_div(n, block)), dim3(block),
           size_t(block) * sizeof(float), static_cast<cudaStream_t>(stream), out.ptr<float>(),
           in.ptr<float>(), n);
}

void exec_test_activemask(const Tensor& out, const Tensor& predicate, int block, int live, Stream stream) {
    expect_input(predicate, DType::I32);
    const int n = to_int(predicate.numel(), "predicate");
    if (block <= 0 || block % 32 || n % block) throw ValueError("block: must be a multiple of 32 dividing the size of predicate");
    if (live < 0 || live > n) throw ValueError(str("live: expected 0 .. ", n, ", got ", live));
    expect_threads(out, 3 * int64_t(n), DType::I32);
    launch("activemask_kernel", activemask_kernel, dim3(n / block), dim3(block), 0,
           static_cast<cudaStream_t>(stream), reinterpret_cast<unsigned*>(out.ptr<int>()),
           predicate.ptr<int>(), n, live);
}

#if defined(SCRATCH_HOST_EXECUTOR)
void exec_test_activemask_loop(const Tensor& out, const Tensor& trips, int block) {
    expect_input(trips, DType::I32);
    const int n = to_int(trips.numel(), "trips");
    if (block <= 0 || block % 32 || n % block) throw ValueError("block: must be a multiple of 32 dividing the size of trips");
    expect_threads(out, n, DType::I32);
    launch("activemask_loop_kernel", activemask_loop_kernel, dim3(n / block), dim3(block), 0, nullptr,
           reinterpret_cast<unsigned*>(out.ptr<int>()), trips.ptr<int>());
}

void exec_test_neighbour(const Tensor& out, const Tensor& in, int block, int mode) {
    expect_input(in, DType::F32);
    expect_output(out, DType::F32);
    expect_same_shape(out, in);
    if (block <= 0 || block > 1024) throw ValueError(str("block: expected 1 .. 1024 threads, got ", block));
    if (mode < 0 || mode > 2) throw ValueError(str("mode: expected 0, 1 or 2, got ", mode));
    const int n = to_int(in.numel(), "in");
    launch("neighbour_kernel", neighbour_kernel, dim3(ceil_div(n, block)), dim3(block), 0, nullptr,
           out.ptr<float>(), in.ptr<float>(), n, mode);
}

void exec_test_uninitialised(const Tensor& out, const Tensor& ints, const Tensor& written, int block) {
    expect_input(written, DType::I32);
    const int blocks = to_int(written.numel(), "written");
    if (block <= 0 || block > 256) throw ValueError(str("block: expected 1 .. 256 threads, got ", block));
    expect_output(out, DType::F32);
    expect_numel(out, int64_t(blocks) * 2 * block, "blocks * 2 * block");
    expect_output(ints, DType::I32);
    expect_numel(ints, int64_t(blocks) * block, "blocks * block");
    launch("uninitialised_kernel", uninitialised_kernel, dim3(blocks), dim3(block),
           size_t(block) * sizeof(float), nullptr, out.ptr<float>(), ints.ptr<int>(), written.ptr<int>());
}
#endif

const char* const kExecMisuseCases[] = {"barrier_skipped", "barrier_divergent", "lane_exits",
                                        "lane_never_arrives", "lane_not_in_mask", "misaligned",
                                        nullptr};

void exec_test_misuse(const char* which) {
#if defined(SCRATCH_HOST_EXECUTOR)
    alignas(16) float buffer[64] = {};
    const std::string w = which;
    if (w == "barrier_skipped") launch("barrier_skipped_kernel", barrier_skipped_kernel, dim3(2), dim3(32), 0, nullptr);
    else if (w == "barrier_divergent") launch("barrier_divergent_kernel", barrier_divergent_kernel, dim3(1), dim3(64), 0, nullptr);
    else if (w == "lane_exits") launch("lane_exits_kernel", lane_exits_kernel, dim3(1), dim3(32), 0, nullptr, buffer);
    else if (w == "lane_never_arrives") launch("lane_never_arrives_kernel", lane_never_arrives_kernel, dim3(1), dim3(32), 0, nullptr, buffer);
    else if (w == "lane_not_in_mask") launch("lane_not_in_mask_kernel", lane_not_in_mask_kernel, dim3(1), dim3(32), 0, nullptr, buffer);
    else if (w == "misaligned") launch("misaligned_kernel", misaligned_kernel, dim3(1), dim3(1), 0, nullptr, buffer);
#if defined(SCRATCH_ASAN_BUILD)
    // not in kExecMisuseCases: it corrupts the heap unless AddressSanitizer stops the process
    else if (w == "heap_overflow") {
        std::vector<float> out(32);
        launch("heap_overflow_kernel", heap_overflow_kernel, dim3(1), dim3(33), 0, nullptr, out.data());
    }
#endif
    else throw ValueError(str("which: unknown misuse case ", which));
#else
    throw Error(str("exec_test_misuse(", which, "): host executor only (on a GPU these hang)"));
#endif
}

int host_executor_threads() {
#if defined(SCRATCH_HOST_EXECUTOR)
    return host::Pool::instance().threads();
#else
    return 0;
#endif
}

}  // namespace scratch::kernels
