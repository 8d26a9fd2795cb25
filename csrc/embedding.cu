// csrc/embedding.cu — token + learned position embedding (docs/gradients/embedding.md,
// python/scratchgpt/reference/embedding.py). float32 tables, int32 or int64 ids.
//
//   out[b, t, :] = wte[idx[b, t], :] + wpe[t, :]
//
// Forward (one warp per output row (b, t), 8 rows per block): the warp gathers the wte row and
// the wpe row with float4 loads when C % 4 == 0 and every table is 16-byte aligned (lane i owns
// columns 4i, 4i + 128, ...: 512 contiguous bytes per warp access), else one float per lane.
// Traffic: read B*T ids, 2*B*T*C floats (the wpe rows are shared across the batch and mostly hit
// L2), write B*T*C floats. Ids are bounds-checked on the device: a bad id is recorded in a status
// word (csrc/device_status.h: the smallest bad flat position wins, whatever the thread order), its
// row is not read, and the launcher raises ValueError naming the position and the value.
//
// Backward, three kernels, no floating-point atomics (bit-identical results run to run):
//   1. dwpe: a thread owns 4 (or 1) columns of one position t and sums dout[b, t, cols] over b
//      in order; rows t >= T are written as zeros. A block owns 256 column groups of one
//      position (blockIdx.x = column block * positions + t: one grid dimension, so neither the
//      positions nor C meet grid.y's 65535). Reads B*T*C floats once, coalesced.
//   2. bucket sort of the positions by token id, one block of 1024 threads: a histogram of ids
//      (integer atomics, exact), an exclusive scan into bucket starts, then a stable scatter:
//      positions are taken 1024 at a time in order, each thread ranks its position among equal
//      ids earlier in the chunk (shared memory), writes it at cursor[id] + rank, and the last of
//      each id in the chunk advances cursor[id]. Every bucket thus lists its positions in
//      increasing order. Integer work only, no gradient rows: each thread makes B*T
//      shared-memory comparisons in all (16k for B*T = 16k, tens of microseconds on one SM).
//   3. dwte: one warp per token id sums the dout rows of its bucket in that fixed order (float4
//      columns per lane as in the forward) and writes the row; an id that never occurs gets
//      zeros. Reads B*T*C floats once plus V*C writes; a very frequent id makes its warp the
//      long pole, the price of a fixed summation order without atomics.
#include "core/kernel.h"
#include "csrc/device_status.h"
#include "csrc/disjoint.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kRowsPerBlock = 8;      // warps per block in the row kernels
constexpr int kSortThreads = 1024;    // the single bucket-sort block
constexpr int kColumnThreads = 256;   // dwpe: column groups per block

template <int kWidth>   // 4: float4 columns, 1: scalar
__device__ __forceinline__ void add_rows(float* __restrict__ out, const float* __restrict__ a,
                                         const float* __restrict__ b, int lane, int C) {
    if (kWidth == 4) {
        for (int i = 4 * lane; i < C; i += 128) {
            const float4 u = load_float4(a + i), v = load_float4(b + i);
            store_float4(out + i, make_float4(u.x + v.x, u.y + v.y, u.z + v.z, u.w + v.w));
        }
    } else {
        for (int i = lane; i < C; i += 32) out[i] = a[i] + b[i];
    }
}

template <int kWidth, typename Id>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
embedding_forward_kernel(float* __restrict__ out, int* __restrict__ status, const Id* __restrict__ idx,
                         const float* __restrict__ wte, const float* __restrict__ wpe, int N, int T,
                         int V, int C) {
    const int row = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (row >= N) return;   // whole warps leave together
    const Id id = idx[row];
    if (id < 0 || id >= Id(V)) {
        if (threadIdx.x == 0) status::report(status, row, N);
        return;
    }
    add_rows<kWidth>(out + size_t(row) * C, wte + size_t(id) * C, wpe + size_t(row % T) * C,
                     threadIdx.x, C);
}

// Block blockIdx.x = column block * Tmax + t; thread g = column block * 256 + threadIdx.x owns
// columns [kWidth * g, kWidth * g + kWidth) of position t.
template <int kWidth>
__global__ void __launch_bounds__(kColumnThreads)
embedding_backward_dwpe_kernel(float* __restrict__ dwpe, const float* __restrict__ dout, int B,
                               int T, int Tmax, int C) {
    const int column_block = int(blockIdx.x) / Tmax;
    const int t = int(blockIdx.x) - column_block * Tmax;
    const int64_t col64 = int64_t(kWidth) * (int64_t(column_block) * kColumnThreads + threadIdx.x);
    if (col64 >= C) return;
    const int col = int(col64);
    float* dst = dwpe + size_t(t) * C + col;
    if (kWidth == 4) {
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        for (int b = 0; t < T && b < B; ++b) {
            const float4 v = load_float4(dout + (size_t(b) * T + t) * C + col);
            acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
        }
        store_float4(dst, acc);
    } else {
        float acc = 0.0f;
        for (int b = 0; t < T && b < B; ++b) acc += dout[(size_t(b) * T + t) * C + col];
        *dst = acc;
    }
}

// Exclusive prefix sum of one int per thread over a block of kSortThreads; also the total.
__device__ int block_exclusive_scan(int value, int* total) {
    SCRATCH_SHARED(int, warp_totals, [kSortThreads / 32]);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    int inclusive = value;
    for (int d = 1; d < 32; d <<= 1) {
        const int other = __shfl_up_sync(0xffffffffu, inclusive, d);
        if (lane >= d) inclusive += other;
    }
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    if (warp == 0) {
        int w = warp_totals[lane];   // kSortThreads / 32 == 32 warps
        for (int d = 1; d < 32; d <<= 1) {
            const int other = __shfl_up_sync(0xffffffffu, w, d);
            if (lane >= d) w += other;
        }
        warp_totals[lane] = w;       // inclusive over warps
    }
    __syncthreads();
    const int before = (warp ? warp_totals[warp - 1] : 0) + inclusive - value;
    *total = warp_totals[kSortThreads / 32 - 1];
    // Defensive (tests/mutation/allowed_barriers.txt): the sort kernel calls this once, and no
    // later code touches warp_totals, so no test can miss this barrier. A second call (a scan in
    // two passes, over ids beyond kSortThreads * per) would need it: warp 31 of that call could
    // store its total while a slower warp still loads warp_totals[warp - 1] of this one.
    __syncthreads();                 // warp_totals may be reused by the next call
    return before;
}

// One block. starts[V + 1]: bucket starts; cursor[V]: scratch; order[N]: positions by bucket.
template <typename Id>
__global__ void __launch_bounds__(kSortThreads)
embedding_backward_sort_kernel(int* __restrict__ starts, int* __restrict__ cursor,
                               int* __restrict__ order, int* __restrict__ status,
                               const Id* __restrict__ idx, int N, int V) {
    SCRATCH_SHARED(int, chunk_ids, [kSortThreads]);
    const int tid = threadIdx.x;
    for (int v = tid; v < V; v += kSortThreads) cursor[v] = 0;
    __syncthreads();
    for (int n = tid; n < N; n += kSortThreads) {   // histogram; bad ids are reported, not counted
        const Id id = idx[n];
        if (id < 0 || id >= Id(V)) status::report(status, n, N);
        else atomicAdd(&cursor[int(id)], 1);
    }
    __syncthreads();

    // Exclusive scan of the counts: thread tid owns the contiguous ids [tid * per, tid * per + per).
    const int per = (V + kSortThreads - 1) / kSortThreads;
    const int lo = min(V, tid * per), hi = min(V, lo + per);
    int local = 0;
    for (int v = lo; v < hi; ++v) local += cursor[v];
    int total = 0;
    int running = block_exclusive_scan(local, &total);
    for (int v = lo; v < hi; ++v) {
        const int count = cursor[v];
        starts[v] = running;
        cursor[v] = running;
        running += count;
    }
    if (tid == 0) starts[V] = total;

    // Stable scatter, one chunk of kSortThreads positions at a time. Two barriers per chunk: the
    // first also puts the scan's cursor stores (first chunk) and the previous chunk's cursor
    // advances before this chunk's loads of cursor; the second puts every load of chunk_ids and
    // cursor before the advances and before the next chunk's chunk_ids stores.
    for (int base = 0; base < N; base += kSortThreads) {
        const int n = base + tid;
        const int len = min(kSortThreads, N - base);
        int id = -1;   // -1: past the end or a bad id (not placed)
        if (n < N) {
            const Id raw = idx[n];
            if (raw >= 0 && raw < Id(V)) id = int(raw);
        }
        chunk_ids[tid] = id;
        __syncthreads();       // chunk_ids written; cursor advanced (or scanned) for this chunk
        int rank = 0;
        bool last = true;
        if (id >= 0) {
            for (int j = 0; j < len; ++j) {
                const bool same = chunk_ids[j] == id;
                rank += (same && j < tid);
                last = last && !(same && j > tid);
            }
            order[cursor[id] + rank] = n;
        }
        __syncthreads();       // every thread has read cursor and chunk_ids before any advances or rewrites them
        if (id >= 0 && last) cursor[id] += rank + 1;
    }
}

template <int kWidth>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
embedding_backward_dwte_kernel(float* __restrict__ dwte, const float* __restrict__ dout,
                               const int* __restrict__ starts, const int* __restrict__ order,
                               int V, int C) {
    const int v = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (v >= V) return;
    const int lane = threadIdx.x;
    const int begin = starts[v], end = starts[v + 1];
    float* dst = dwte + size_t(v) * C;
    if (kWidth == 4) {
        for (int i = 4 * lane; i < C; i += 128) {
            float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            for (int k = begin; k < end; ++k) {
                const float4 d = load_float4(dout + size_t(order[k]) * C + i);
                acc.x += d.x, acc.y += d.y, acc.z += d.z, acc.w += d.w;
            }
            store_float4(dst + i, acc);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            float acc = 0.0f;
            for (int k = begin; k < end; ++k) acc += dout[size_t(order[k]) * C + i];
            dst[i] = acc;
        }
    }
}

bool vectorisable(int C, std::initializer_list<const Tensor*> ts) {
    if (C % 4 != 0) return false;
    for (const Tensor* t : ts)
        if (!is_aligned(t->data, 16)) return false;
    return true;
}

void expect_ids(const Tensor& idx) {
    if (idx.dtype != DType::I32 && idx.dtype != DType::I64)
        throw TypeError(str(idx.name, ": expected int32 or int64 token ids, got ", dtype_name(idx.dtype)));
    expect_contiguous(idx);
    expect_ndim(idx, 2, 2);
}

// After a launch that validated ids: raise naming the first bad one, as the reference does.
void raise_if_bad_id(const int* status_word, const Tensor& idx, int V, cudaStream_t stream) {
    const int N = int(idx.numel());
    const int pos = status::first_bad(status_word, N, stream);
    if (pos < 0) return;
    const int64_t id = idx.dtype == DType::I32 ? int64_t(status::read_back(idx.ptr<int32_t>() + pos, stream))
                                               : status::read_back(idx.ptr<int64_t>() + pos, stream);
    const int64_t T = idx.shape[1];
    throw ValueError(str(idx.name, ": token id ", id, " at position (", pos / T, ", ", pos % T,
                         ") is outside [0, ", V, ")"));
}

template <typename Id>
void forward_ids(const Tensor& out, const Tensor& idx, const Tensor& wte, const Tensor& wpe,
                 const Tensor& status_word, int N, int T, int V, int C, cudaStream_t s) {
    const dim3 grid(ceil_div(N, kRowsPerBlock)), block(32, kRowsPerBlock);
    if (vectorisable(C, {&out, &wte, &wpe}))
        launch("embedding_forward_kernel<vec4>", embedding_forward_kernel<4, Id>, grid, block, 0, s,
               out.ptr<float>(), status_word.ptr<int>(), idx.ptr<Id>(), wte.ptr<float>(),
               wpe.ptr<float>(), N, T, V, C);
    else
        launch("embedding_forward_kernel<scalar>", embedding_forward_kernel<1, Id>, grid, block, 0, s,
               out.ptr<float>(), status_word.ptr<int>(), idx.ptr<Id>(), wte.ptr<float>(),
               wpe.ptr<float>(), N, T, V, C);
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& idx, const Tensor& wte, const Tensor& wpe,
                       const Tensor& status_word, Stream stream) {
    expect_ids(idx);
    expect_input(wte, DType::F32);
    expect_input(wpe, DType::F32);
    expect_ndim(wte, 2, 2);
    expect_ndim(wpe, 2, 2);
    const int V = to_int(wte.shape[0], "vocabulary size (rows of wte)");
    const int C = to_int(wte.shape[1], "C (columns of wte)");
    if (wpe.shape[1] != C)
        throw ValueError(str(wpe.name, ": expected ", C, " columns to match wte, got shape ", wpe.shape_str()));
    const int T = to_int(idx.shape[1], "T");
    if (T > wpe.shape[0])
        throw ValueError(str(idx.name, ": sequence length ", T, " exceeds the ", wpe.shape[0],
                             " positions of wpe"));
    const int N = to_int(idx.numel(), "B * T");
    expect_output(out, DType::F32);
    expect_shape(out, {idx.shape[0], T, C});
    expect_output(status_word, DType::I32);
    expect_numel(status_word, 1, "one status word");
    expect_same_device({&idx, &wte, &wpe, &out, &status_word});
    expect_disjoint(out, {&idx, &wte, &wpe, &status_word});
    expect_disjoint(status_word, {&idx, &wte, &wpe});
    if (N == 0) return;

    auto s = static_cast<cudaStream_t>(stream);
    status::clear(status_word.ptr<int>(), s);
    if (idx.dtype == DType::I32) forward_ids<int32_t>(out, idx, wte, wpe, status_word, N, T, V, C, s);
    else forward_ids<int64_t>(out, idx, wte, wpe, status_word, N, T, V, C, s);
    raise_if_bad_id(status_word.ptr<int>(), idx, V, s);
}

int64_t embedding_backward_workspace(int64_t vocab_size, int64_t positions) {
    return (vocab_size + 1) + vocab_size + positions + 1;   // starts, cursor, order, status
}

void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& workspace,
                        const Tensor& dout, const Tensor& idx, Stream stream) {
    expect_ids(idx);
    expect_output(dwte, DType::F32);
    expect_output(dwpe, DType::F32);
    expect_ndim(dwte, 2, 2);
    expect_ndim(dwpe, 2, 2);
    const int V = to_int(dwte.shape[0], "vocabulary size (rows of dwte)");
    const int C = to_int(dwte.shape[1], "C (columns of dwte)");
    const int B = to_int(idx.shape[0], "B"), T = to_int(idx.shape[1], "T");
    const int N = to_int(idx.numel(), "B * T");
    if (dwpe.shape[1] != C)
        throw ValueError(str(dwpe.name, ": expected ", C, " columns to match dwte, got shape ", dwpe.shape_str()));
    if (T > dwpe.shape[0])
        throw ValueError(str(idx.name, ": sequence length ", T, " exceeds the ", dwpe.shape[0],
                             " positions of dwpe"));
    const int Tmax = to_int(dwpe.shape[0], "positions (rows of dwpe)");
    expect_input(dout, DType::F32);
    expect_shape(dout, {B, T, C});
    expect_output(workspace, DType::I32);
    const int64_t need = embedding_backward_workspace(V, N);
    if (workspace.numel() < need)
        throw ValueError(str(workspace.name, ": expected at least ", need, " int32, got ", workspace.numel()));
    expect_same_device({&idx, &dout, &dwte, &dwpe, &workspace});
    expect_disjoint(dwte, {&dwpe, &workspace, &dout, &idx});
    expect_disjoint(dwpe, {&workspace, &dout, &idx});
    expect_disjoint(workspace, {&dout, &idx});
    if (C == 0) return;

    auto s = static_cast<cudaStream_t>(stream);
    int* starts = workspace.ptr<int>();
    int* cursor = starts + (V + 1);
    int* order = cursor + V;
    int* status_word = order + N;
    if (Tmax > 0) {
        const bool vec = vectorisable(C, {&dout, &dwpe});
        const int64_t blocks = int64_t(Tmax) * ceil_div(vec ? C / 4 : C, kColumnThreads);
        if (blocks > 2147483647)
            throw ValueError(str(dwpe.name, ": ", Tmax, " positions x ", C, " columns exceed 2^31 - 1 blocks"));
        if (vec)
            launch("embedding_backward_dwpe_kernel<vec4>", embedding_backward_dwpe_kernel<4>,
                   dim3(unsigned(blocks)), dim3(kColumnThreads), 0, s,
                   dwpe.ptr<float>(), dout.ptr<float>(), B, T, Tmax, C);
        else
            launch("embedding_backward_dwpe_kernel<scalar>", embedding_backward_dwpe_kernel<1>,
                   dim3(unsigned(blocks)), dim3(kColumnThreads), 0, s,
                   dwpe.ptr<float>(), dout.ptr<float>(), B, T, Tmax, C);
    }
    if (V == 0) return;
    status::clear(status_word, s);
    if (idx.dtype == DType::I32)
        launch("embedding_backward_sort_kernel", embedding_backward_sort_kernel<int32_t>, dim3(1),
               dim3(kSortThreads), 0, s, starts, cursor, order, status_word, idx.ptr<int32_t>(), N, V);
    else
        launch("embedding_backward_sort_kernel", embedding_backward_sort_kernel<int64_t>, dim3(1),
               dim3(kSortThreads), 0, s, starts, cursor, order, status_word, idx.ptr<int64_t>(), N, V);
    raise_if_bad_id(status_word, idx, V, s);

    const dim3 grid(ceil_div(V, kRowsPerBlock)), block(32, kRowsPerBlock);
    if (vectorisable(C, {&dout, &dwte}))
        launch("embedding_backward_dwte_kernel<vec4>", embedding_backward_dwte_kernel<4>, grid, block,
               0, s, dwte.ptr<float>(), dout.ptr<float>(), starts, order, V, C);
    else
        launch("embedding_backward_dwte_kernel<scalar>", embedding_backward_dwte_kernel<1>, grid,
               block, 0, s, dwte.ptr<float>(), dout.ptr<float>(), starts, order, V, C);
}

}  // namespace scratch::kernels
