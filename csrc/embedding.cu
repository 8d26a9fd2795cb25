// csrc/embedding.cu — token + learned position embedding (docs/gradients/embedding.md,
// python/scratchgpt/reference/embedding.py). Tables stored in T = float, __nv_bfloat16 or __half
// (csrc/elementwise.h), int32 or int64 ids.
//
//   out[b, t, :] = R(wte[idx[b, t], :] + wpe[t, :])       (the sum in float, rounded once to T)
//
// Storage: wte, wpe (the working copy of the parameters), out and dout are T; the parameter
// gradients dwte and dwpe are float32 sums of the widened dout whatever T is.
//
// Forward (one warp per output row (b, t), 8 rows per block): the warp gathers the wte row and
// the wpe row with 16-byte packs (N = 16 / sizeof(T): 4 floats or 8 bf16 / fp16) when C % N == 0
// and every table is 16-byte aligned (lane i owns columns N i .. N i + N - 1, N * 32 further on:
// 512 contiguous bytes per warp access), else one value per lane. Traffic: read B*T ids,
// 2*B*T*C values of T (the wpe rows are shared across the batch and mostly hit L2), write B*T*C
// values of T. Ids are bounds-checked on the device: a bad id is recorded in a status word
// (csrc/device_status.h: the smallest bad flat position wins, whatever the thread order), its
// row is not read, and the launcher raises ValueError naming the position and the value.
//
// Backward, three kernels, no floating-point atomics (bit-identical results run to run):
//   1. dwpe: a thread owns N (or 1) columns of one position t and sums dout[b, t, cols] over b
//      in order, in float32; rows t >= T are written as zeros. A block owns 256 column groups of
//      one position (blockIdx.x = column block * positions + t: one grid dimension, so neither the
//      positions nor C meet grid.y's 65535). Reads B*T*C values of T once, coalesced; writes
//      Tmax*C floats.
//   2. bucket sort of the positions by token id, one block of 1024 threads: a histogram of ids
//      (integer atomics, exact), an exclusive scan into bucket starts, then a stable scatter:
//      positions are taken 1024 at a time in order, each thread ranks its position among equal
//      ids earlier in the chunk (shared memory), writes it at cursor[id] + rank, and the last of
//      each id in the chunk advances cursor[id]. Every bucket thus lists its positions in
//      increasing order. Integer work only, no gradient rows: each thread makes B*T
//      shared-memory comparisons in all (16k for B*T = 16k, tens of microseconds on one SM).
//   3. dwte: one warp per token id sums the dout rows of its bucket in that fixed order (packs of
//      N columns per lane as in the forward, float32 accumulators) and writes the float32 row; an
//      id that never occurs gets zeros. Reads B*T*C values of T once plus V*C float writes; a
//      very frequent id makes its warp the long pole, the price of a fixed summation order
//      without atomics.
#include "core/kernel.h"
#include "csrc/device_status.h"
#include "csrc/disjoint.h"
#include "csrc/elementwise.h"
#include "csrc/launchers.h"

namespace scratch::kernels {
namespace {

constexpr int kRowsPerBlock = 8;      // warps per block in the row kernels
constexpr int kSortThreads = 1024;    // the single bucket-sort block
constexpr int kColumnThreads = 256;   // dwpe: column groups per block

template <typename T, bool kVec>   // kVec: packs of N columns, else one value per lane
__device__ __forceinline__ void add_rows(T* __restrict__ out, const T* __restrict__ a,
                                         const T* __restrict__ b, int lane, int C) {
    constexpr int N = Pack<T>::N;
    if (kVec) {
        for (int i = N * lane; i < C; i += 32 * N) {
            Pack<T> u = load_pack(a + i);
            const Pack<T> v = load_pack(b + i);
            for (int k = 0; k < N; ++k) u.v[k] += v.v[k];
            store_pack(out + i, u);
        }
    } else {
        for (int i = lane; i < C; i += 32) out[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
    }
}

template <typename T, bool kVec, typename Id>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
embedding_forward_kernel(T* __restrict__ out, int* __restrict__ status, const Id* __restrict__ idx,
                         const T* __restrict__ wte, const T* __restrict__ wpe, int N, int T_len,
                         int V, int C) {
    const int row = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (row >= N) return;   // whole warps leave together
    const Id id = idx[row];
    if (id < 0 || id >= Id(V)) {
        if (threadIdx.x == 0) status::report(status, row, N);
        return;
    }
    add_rows<T, kVec>(out + size_t(row) * C, wte + size_t(id) * C, wpe + size_t(row % T_len) * C,
                      threadIdx.x, C);
}

// Block blockIdx.x = column block * Tmax + t; thread g = column block * 256 + threadIdx.x owns
// columns [W g, W g + W) of position t, W = N (packs) or 1.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kColumnThreads)
embedding_backward_dwpe_kernel(float* __restrict__ dwpe, const T* __restrict__ dout, int B,
                               int T_len, int Tmax, int C) {
    constexpr int W = kVec ? Pack<T>::N : 1;
    const int column_block = int(blockIdx.x) / Tmax;
    const int t = int(blockIdx.x) - column_block * Tmax;
    const int64_t col64 = int64_t(W) * (int64_t(column_block) * kColumnThreads + threadIdx.x);
    if (col64 >= C) return;
    const int col = int(col64);
    float* dst = dwpe + size_t(t) * C + col;
    if constexpr (kVec) {
        float acc[W];
        for (int k = 0; k < W; ++k) acc[k] = 0.0f;
        for (int b = 0; t < T_len && b < B; ++b) {
            const Pack<T> v = load_pack(dout + (size_t(b) * T_len + t) * C + col);
            for (int k = 0; k < W; ++k) acc[k] += v.v[k];
        }
        store_floats(dst, acc);
    } else {
        float acc = 0.0f;
        for (int b = 0; t < T_len && b < B; ++b) acc += to_float(dout[(size_t(b) * T_len + t) * C + col]);
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

template <typename T, bool kVec>
__global__ void __launch_bounds__(32 * kRowsPerBlock)
embedding_backward_dwte_kernel(float* __restrict__ dwte, const T* __restrict__ dout,
                               const int* __restrict__ starts, const int* __restrict__ order,
                               int V, int C) {
    constexpr int N = Pack<T>::N;
    const int v = blockIdx.x * kRowsPerBlock + threadIdx.y;
    if (v >= V) return;
    const int lane = threadIdx.x;
    const int begin = starts[v], end = starts[v + 1];
    float* dst = dwte + size_t(v) * C;
    if (kVec) {
        for (int i = N * lane; i < C; i += 32 * N) {
            float acc[N];
            for (int k = 0; k < N; ++k) acc[k] = 0.0f;
            for (int j = begin; j < end; ++j) {
                const Pack<T> d = load_pack(dout + size_t(order[j]) * C + i);
                for (int k = 0; k < N; ++k) acc[k] += d.v[k];
            }
            store_floats(dst + i, acc);
        }
    } else {
        for (int i = lane; i < C; i += 32) {
            float acc = 0.0f;
            for (int j = begin; j < end; ++j) acc += to_float(dout[size_t(order[j]) * C + i]);
            dst[i] = acc;
        }
    }
}

// Pack path: C divisible by the pack's N values and every array 16-byte aligned.
template <typename T>
bool vectorisable(int C, std::initializer_list<const Tensor*> ts) {
    if (C % Pack<T>::N != 0) return false;
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

template <typename T, typename Id>
void forward_ids(const Tensor& out, const Tensor& idx, const Tensor& wte, const Tensor& wpe,
                 const Tensor& status_word, int N, int T_len, int V, int C, cudaStream_t s) {
    const dim3 grid(ceil_div(N, kRowsPerBlock)), block(32, kRowsPerBlock);
    if (vectorisable<T>(C, {&out, &wte, &wpe}))
        launch("embedding_forward_kernel<pack>", embedding_forward_kernel<T, true, Id>, grid, block, 0, s,
               out.ptr<T>(), status_word.ptr<int>(), idx.ptr<Id>(), wte.ptr<T>(), wpe.ptr<T>(), N, T_len,
               V, C);
    else
        launch("embedding_forward_kernel<scalar>", embedding_forward_kernel<T, false, Id>, grid, block, 0, s,
               out.ptr<T>(), status_word.ptr<int>(), idx.ptr<Id>(), wte.ptr<T>(), wpe.ptr<T>(), N, T_len,
               V, C);
}

}  // namespace

void embedding_forward(const Tensor& out, const Tensor& idx, const Tensor& wte, const Tensor& wpe,
                       const Tensor& status_word, Stream stream) {
    expect_ids(idx);
    dispatch_storage(wte, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(wte, wte);
        expect_storage<T>(wpe, wte);
        expect_ndim(wte, 2, 2);
        expect_ndim(wpe, 2, 2);
        const int V = to_int(wte.shape[0], "vocabulary size (rows of wte)");
        const int C = to_int(wte.shape[1], "C (columns of wte)");
        if (wpe.shape[1] != C)
            throw ValueError(str(wpe.name, ": expected ", C, " columns to match wte, got shape ", wpe.shape_str()));
        const int T_len = to_int(idx.shape[1], "T");
        if (T_len > wpe.shape[0])
            throw ValueError(str(idx.name, ": sequence length ", T_len, " exceeds the ", wpe.shape[0],
                                 " positions of wpe"));
        const int N = to_int(idx.numel(), "B * T");
        expect_storage_output<T>(out, wte);
        expect_shape(out, {idx.shape[0], T_len, C});
        expect_output(status_word, DType::I32);
        expect_numel(status_word, 1, "one status word");
        expect_same_device({&idx, &wte, &wpe, &out, &status_word});
        expect_disjoint(out, {&idx, &wte, &wpe, &status_word});
        expect_disjoint(status_word, {&idx, &wte, &wpe});
        if (N == 0) return;

        auto s = static_cast<cudaStream_t>(stream);
        status::clear(status_word.ptr<int>(), s);
        if (idx.dtype == DType::I32) forward_ids<T, int32_t>(out, idx, wte, wpe, status_word, N, T_len, V, C, s);
        else forward_ids<T, int64_t>(out, idx, wte, wpe, status_word, N, T_len, V, C, s);
        raise_if_bad_id(status_word.ptr<int>(), idx, V, s);
    });
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
    const int B = to_int(idx.shape[0], "B"), T_len = to_int(idx.shape[1], "T");
    const int N = to_int(idx.numel(), "B * T");
    if (dwpe.shape[1] != C)
        throw ValueError(str(dwpe.name, ": expected ", C, " columns to match dwte, got shape ", dwpe.shape_str()));
    if (T_len > dwpe.shape[0])
        throw ValueError(str(idx.name, ": sequence length ", T_len, " exceeds the ", dwpe.shape[0],
                             " positions of dwpe"));
    const int Tmax = to_int(dwpe.shape[0], "positions (rows of dwpe)");
    dispatch_storage(dout, [&](auto tag) {
        using T = typename decltype(tag)::type;
        expect_storage<T>(dout, dout);
        expect_shape(dout, {B, T_len, C});
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
            const bool vec = vectorisable<T>(C, {&dout, &dwpe});
            const int64_t blocks = int64_t(Tmax) * ceil_div(vec ? C / Pack<T>::N : C, kColumnThreads);
            if (blocks > 2147483647)
                throw ValueError(str(dwpe.name, ": ", Tmax, " positions x ", C, " columns exceed 2^31 - 1 blocks"));
            if (vec)
                launch("embedding_backward_dwpe_kernel<pack>", embedding_backward_dwpe_kernel<T, true>,
                       dim3(unsigned(blocks)), dim3(kColumnThreads), 0, s,
                       dwpe.ptr<float>(), dout.ptr<T>(), B, T_len, Tmax, C);
            else
                launch("embedding_backward_dwpe_kernel<scalar>", embedding_backward_dwpe_kernel<T, false>,
                       dim3(unsigned(blocks)), dim3(kColumnThreads), 0, s,
                       dwpe.ptr<float>(), dout.ptr<T>(), B, T_len, Tmax, C);
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
        if (vectorisable<T>(C, {&dout, &dwte}))
            launch("embedding_backward_dwte_kernel<pack>", embedding_backward_dwte_kernel<T, true>, grid, block,
                   0, s, dwte.ptr<float>(), dout.ptr<T>(), starts, order, V, C);
        else
            launch("embedding_backward_dwte_kernel<scalar>", embedding_backward_dwte_kernel<T, false>, grid,
                   block, 0, s, dwte.ptr<float>(), dout.ptr<T>(), starts, order, V, C);
    });
}

}  // namespace scratch::kernels
