// core/mma.h — tensor-core matrix multiply (mma.sync), warp-collective loads from shared memory
// (ldmatrix) and asynchronous copies to shared memory (cp.async), as thin wrappers: inline PTX
// under nvcc (sm_80 and newer), a warp-collective emulation on the host executor that follows the
// PTX ISA's fragment layouts element by element. One kernel source serves both.
//
//   mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
//   mma_m16n8k16_f16 (float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4])
//   mma_m16n8k16<T>  (same arguments; T = __nv_bfloat16 or __half, for kernels templated on T)
//       D (16x8, fp32) = A (16x16) * B (16x8) + C, one warp; d may be c itself (accumulate).
//       mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//   ldmatrix_x1 / ldmatrix_x2 / ldmatrix_x4       (uint32_t r[N], const void* smem_row)
//   ldmatrix_x1_trans / _x2_trans / _x4_trans      (the same, each 8x8 matrix transposed)
//       N 8x8 matrices of 16-bit elements from shared memory; lane 8j + i gives the address of
//       row i of matrix j (16-byte aligned; lanes >= 8N give none that is read).
//       ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
//   cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes = 16)
//       16 bytes global -> shared, both 16-byte aligned; only the first src_bytes (0..16) are
//       read, the rest of the 16 are zero-filled (a tile's rows past the matrix: src_bytes = 0,
//       gmem_src still a valid aligned pointer). cp.async.cg.shared.global [dst], [src], 16, n
//   cp_async_commit()              closes the copies issued since the last commit into a group
//   cp_async_wait<N>()             waits until at most N of this thread's groups are pending
//   cp_async_wait_all()            commit, then wait for every group
//       Completion makes the copies visible to the issuing thread only: other threads read them
//       after a __syncthreads() that follows the wait, exactly as on the GPU.
//
// Fragment layouts (which lane holds which element), from the PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type" (§9.7.14.5.8 in PTX ISA 8.x, §9.7.15.5.8 in 9.x;
// Figures 79 (A), 81 (B), 83 (C/D)), with groupID = lane >> 2, threadID_in_group = lane % 4:
//   A (16x16, row major; .f16x2 registers a[0..3] hold elements a0..a7, low half first):
//       row = groupID for a0, a1, a4, a5; groupID + 8 for a2, a3, a6, a7
//       col = threadID_in_group * 2 + (i & 1), plus 8 for a4 .. a7
//   B (16x8 = K x N, "col": a lane's pair runs down a column; b[0..1] hold b0..b3):
//       row = threadID_in_group * 2 + (i & 1), plus 8 for b2, b3;  col = groupID
//   C, D (16x8, fp32, c[0..3]):
//       row = groupID for c0, c1; groupID + 8 for c2, c3;  col = threadID_in_group * 2 + (i & 1)
// MmaLayoutM16N8K16 below spells these out; kernels use it for their epilogues (which (row, col)
// of the tile d[i] of this lane is).
//
// ldmatrix (PTX ISA, "Warp-level matrix load instruction: ldmatrix", §9.7.14.5.15 / §9.7.15.5.15,
// Figure 104): each 8x8 matrix has its 8 row addresses from 8 lanes (matrix j: lanes 8j .. 8j+7);
// "each thread loads fragments of a row ... a group of four threads loads an entire row": lane l
// receives in r[j] the elements (row l / 4, columns 2 (l % 4) and 2 (l % 4) + 1) of matrix j, the
// lower column in the low half. With .trans the matrix is read column major: lane l receives
// (rows 2 (l % 4) and 2 (l % 4) + 1, column l / 4) — element c of the row at address r being (r, c).
// So: ldmatrix_x4 on A's four 8x8 quarters (rows 0-7 / 8-15 x cols 0-7, then cols 8-15; lane l
// giving &A[l % 16][(l / 16) * 8]) yields A's fragment a[0..3]; B stored N x K (row n = column n of
// B) gives b[0..1] through ldmatrix_x2 (lane l < 16: &Bt[l % 8][(l / 8) * 8]); B stored K x N
// gives it through ldmatrix_x2_trans (lane l < 16: &B[l][0]). And an accumulator tile D (fp32)
// becomes an A operand of the next product without any shuffle: accum_to_a<T>() below.
//
// The host emulation. Every lane of the warp must call (the GPU's .sync.aligned rule); the block
// size must be a multiple of 32. Each lane posts its fragment (or row address) into per-warp
// scratch (one table per OS thread, i.e. per block in flight, indexed by the warp's index in the
// block) and meets the others at one __syncwarp(); the first lane to run on then does the
// warp's work for all 32 (gathers A, B and C and computes D; or reads the 8x8 matrices from
// shared memory while no lane can have moved on), and each lane takes its own result. The scratch
// has two slots, used by alternate calls, so the next call cannot overwrite what a slow lane is
// still reading. Each call also posts which collective it is and how many this lane has made in
// the block: lanes that are not at the same instruction (a divergent branch, one lane an
// iteration ahead) make the launch raise, naming the lanes, where the GPU would be undefined.
// The product is accumulated in fp32 in a fixed order,
// d = fma(a[r][15], b[15][c], ... fma(a[r][0], b[0][c], c) ...) (each product of two bf16 or fp16
// values is exact in fp32, so this is 16 roundings of a sum); the hardware's order and internal
// rounding are not specified, so tests on the GPU bound the error of a 16-term fp32 sum instead.
//
// cp.async on the host is asynchronous in the strictest legal way: the source is read when the
// copy is issued, the destination written only when a cp_async_wait (or wait_all) retires its
// group. A kernel that reads shared memory before waiting sees the old contents (NaN under
// SCRATCH_HOST_POISON=1), where on the GPU it would see them only sometimes.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "half.h"
#include "platform.h"
#include "reduce.h"
#include "vec.h"

#if defined(SCRATCH_HOST_EXECUTOR)
#include <vector>
#if defined(__FMA__) && defined(__AVX__)
#include <immintrin.h>
#endif
#endif

namespace scratch {

// ------------------------------------------------------------------------- fragment layouts
// Element i of lane `lane` of each operand of mma.m16n8k16 (.f16 / .bf16): A has 8 elements per
// lane (register i / 2, half i % 2), B 4 (register i / 2, half i % 2), C and D 4 floats.
struct MmaLayoutM16N8K16 {
    __host__ __device__ static constexpr int a_row(int lane, int i) { return (lane >> 2) + ((i & 2) ? 8 : 0); }
    __host__ __device__ static constexpr int a_col(int lane, int i) {
        return (lane & 3) * 2 + (i & 1) + ((i & 4) ? 8 : 0);
    }
    __host__ __device__ static constexpr int b_row(int lane, int i) {
        return (lane & 3) * 2 + (i & 1) + ((i & 2) ? 8 : 0);
    }
    __host__ __device__ static constexpr int b_col(int lane, int /*i*/) { return lane >> 2; }
    __host__ __device__ static constexpr int c_row(int lane, int i) { return (lane >> 2) + ((i & 2) ? 8 : 0); }
    __host__ __device__ static constexpr int c_col(int lane, int i) { return (lane & 3) * 2 + (i & 1); }
};

// An accumulator pair as the A operand of the next mma (flash attention's P V): d_lo holds
// columns 0-7 and d_hi columns 8-15 of a 16x16 fp32 tile in the C/D layout; a[] gets the tile,
// rounded to T, in the A layout. The C/D element (g, 2t + j) / (g + 8, 2t + j) of this lane is the
// A element a_j / a_{2+j} (and + 4 for columns 8-15): the same lane, so no data moves.
template <typename T>
__device__ __forceinline__ void accum_to_a(uint32_t a[4], const float d_lo[4], const float d_hi[4]) {
    a[0] = pack2<T>(d_lo[0], d_lo[1]);
    a[1] = pack2<T>(d_lo[2], d_lo[3]);
    a[2] = pack2<T>(d_hi[0], d_hi[1]);
    a[3] = pack2<T>(d_hi[2], d_hi[3]);
}

#if defined(SCRATCH_HOST_EXECUTOR)
// ---------------------------------------------------------------------------- host emulation
namespace host_mma {

constexpr int kMaxWarps = 32;   // 1024 threads per block

// What a lane posts to say which collective it is at: the operation in the top bits, the lane's
// count of collectives in this block below (all lanes of a warp make the same sequence of calls).
enum Op : uint64_t {
    kMmaBf16 = 1, kMmaF16, kLdmatrixX1, kLdmatrixX2, kLdmatrixX4, kLdmatrixX1T, kLdmatrixX2T, kLdmatrixX4T
};
inline const char* op_name(uint64_t op) {
    switch (op) {
        case kMmaBf16: return "mma_m16n8k16_bf16";
        case kMmaF16: return "mma_m16n8k16_f16";
        case kLdmatrixX1: return "ldmatrix_x1";
        case kLdmatrixX2: return "ldmatrix_x2";
        case kLdmatrixX4: return "ldmatrix_x4";
        case kLdmatrixX1T: return "ldmatrix_x1_trans";
        case kLdmatrixX2T: return "ldmatrix_x2_trans";
        case kLdmatrixX4T: return "ldmatrix_x4_trans";
    }
    return "no collective yet";
}

// A warp's collectives alternate between two slots (call number parity). A lane can start call
// n + 2, which overwrites slot n % 2, only after every lane has met it at call n + 1's
// __syncwarp, that is after every lane has finished reading call n's slot: so one __syncwarp per
// collective suffices (the GPU instruction is one rendezvous, too).
struct Slot {
    uint64_t tag[32];               // (op << 40) | call number, per lane
    uint64_t done = 0;              // the tag whose check (and, for mma, product) is done
    uint32_t a[32][4];              // mma: the fragments posted by each lane
    uint32_t b[32][2];
    float c[32][4];
    const unsigned char* row[32];   // ldmatrix: the row address posted by each lane
    uint32_t r[32][4];              // ldmatrix: what each lane receives
    float d[16][8];                 // mma: the warp's product D = A B + C
};
struct WarpScratch {
    uint64_t calls[32];             // collectives made by each lane in this block
    Slot slot[2];
};
struct BlockScratch {
    uint64_t block = ~uint64_t(0);  // the worker's block serial this table belongs to
    WarpScratch warp[kMaxWarps];
};

// The calling lane's slot for this collective (the table is reset at its first use in each
// block); posts `op` and the lane's call number.
inline Slot& enter(uint64_t op, int& lane) {
    static thread_local BlockScratch scratch;   // one per OS thread = per block in flight
    const int tid = linear_thread_index();
    const int threads = int(blockDim.x * blockDim.y * blockDim.z);
    const int warp = tid >> 5;
    lane = tid & 31;
    if (warp * 32 + 32 > threads)
        host::device_fail(str(op_name(op), ": every lane of the warp must take part, but warp ", warp,
                              " has only ", threads - warp * 32, " lane(s) (block of ", threads,
                              " threads: make it a multiple of 32)"));
    const uint64_t block = host::worker().block_serial;
    if (scratch.block != block) {
        scratch.block = block;
        for (WarpScratch& w : scratch.warp) {
            std::memset(w.calls, 0, sizeof w.calls);
            for (Slot& slot : w.slot) {
                std::memset(slot.tag, 0, sizeof slot.tag);
                slot.done = 0;
            }
        }
    }
    WarpScratch& w = scratch.warp[warp];
    const uint64_t call = ++w.calls[lane];
    Slot& slot = w.slot[call & 1];
    slot.tag[lane] = (op << 40) | call;
    return slot;
}

// After the __syncwarp: true for the first lane to run on, which checks that every lane posted
// the same operation and call number (a lane at another call posted into the other slot, or
// posted a different tag here: either way a mismatch) and then does the warp's shared work.
inline bool first_after_sync(Slot& slot, int lane) {
    if (slot.done == slot.tag[lane]) return false;
    for (int l = 0; l < 32; ++l) {
        if (slot.tag[l] == slot.tag[lane]) continue;
        const uint64_t mine = slot.tag[lane], theirs = slot.tag[l];
        host::device_fail(str(op_name(mine >> 40), " (call ", mine & 0xffffffffffull, " of lane ", lane,
                              ") met lane ", l, ", which is at ", op_name(theirs >> 40), " (call ",
                              theirs & 0xffffffffffull, "): all 32 lanes of the warp must execute the "
                              "same mma/ldmatrix together (no divergent branch around it)"));
    }
    slot.done = slot.tag[lane];
    return true;
}

inline float half_of(uint32_t reg, int which, bool bf16) {
    const auto bits = static_cast<unsigned short>(which ? reg >> 16 : reg & 0xffffu);
    return bf16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

// D = A B + C on the warp, A, B, C and D placed through `Layout` (MmaLayoutM16N8K16; tests
// substitute deliberately wrong layouts to show that they are caught). The first lane past the
// rendezvous computes all 16 x 8 outputs, row by row, eight columns at a time (one 8-wide FMA
// where the build has FMA; each output's order of operations is the one above either way).
template <typename Layout, typename T>
inline void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
    static_assert(is_16bit_float<T>, "mma_m16n8k16: bf16 or f16 operands");
    constexpr bool bf16 = std::is_same_v<T, __nv_bfloat16>;
    int lane = 0;
    Slot& slot = enter(bf16 ? kMmaBf16 : kMmaF16, lane);
    for (int r = 0; r < 4; ++r) slot.a[lane][r] = a[r];
    for (int r = 0; r < 2; ++r) slot.b[lane][r] = b[r];
    for (int i = 0; i < 4; ++i) slot.c[lane][i] = c[i];   // d may be c: posted before d is written
    __syncwarp();
    if (first_after_sync(slot, lane)) {
        float a_full[16][16], b_full[16][8];
        for (int l = 0; l < 32; ++l) {
            for (int i = 0; i < 8; ++i)
                a_full[Layout::a_row(l, i)][Layout::a_col(l, i)] = half_of(slot.a[l][i >> 1], i & 1, bf16);
            for (int i = 0; i < 4; ++i)
                b_full[Layout::b_row(l, i)][Layout::b_col(l, i)] = half_of(slot.b[l][i >> 1], i & 1, bf16);
            for (int i = 0; i < 4; ++i) slot.d[Layout::c_row(l, i)][Layout::c_col(l, i)] = slot.c[l][i];
        }
        for (int row = 0; row < 16; ++row) {
#if defined(__FMA__) && defined(__AVX__)   // the kernels' -mfma build (CMakeLists.txt)
            __m256 acc = _mm256_loadu_ps(slot.d[row]);
            for (int k = 0; k < 16; ++k)
                acc = _mm256_fmadd_ps(_mm256_set1_ps(a_full[row][k]), _mm256_loadu_ps(b_full[k]), acc);
            _mm256_storeu_ps(slot.d[row], acc);
#else
            float acc[8];
            for (int col = 0; col < 8; ++col) acc[col] = slot.d[row][col];
            for (int k = 0; k < 16; ++k)
                for (int col = 0; col < 8; ++col) acc[col] = std::fma(a_full[row][k], b_full[k][col], acc[col]);
            for (int col = 0; col < 8; ++col) slot.d[row][col] = acc[col];
#endif
        }
    }
    for (int i = 0; i < 4; ++i) d[i] = slot.d[Layout::c_row(lane, i)][Layout::c_col(lane, i)];
}

// N 8x8 matrices of 16-bit elements; lane 8j + i gives row i of matrix j.
template <int N, bool Trans>
inline void ldmatrix(uint32_t* r, const void* row_address) {
    constexpr uint64_t ops[2][3] = {{kLdmatrixX1, kLdmatrixX2, kLdmatrixX4},
                                    {kLdmatrixX1T, kLdmatrixX2T, kLdmatrixX4T}};
    constexpr uint64_t op = ops[Trans][N == 1 ? 0 : N == 2 ? 1 : 2];
    int lane = 0;
    Slot& slot = enter(op, lane);
    if (lane < 8 * N && !is_aligned(row_address, 16))
        host::device_fail(str(op_name(op), ": lane ", lane, " gives row address ", row_address,
                              ", which is not 16-byte aligned (each 8-element row is read as 16 bytes)"));
    if (lane < 8 * N && row_address == nullptr)
        host::device_fail(str(op_name(op), ": lane ", lane, " gives a null row address"));
    slot.row[lane] = static_cast<const unsigned char*>(row_address);
    __syncwarp();
    // The first lane reads shared memory for the whole warp while every lane is still at the
    // rendezvous, so no lane can write to it before all 32 have read: the GPU's warp-wide read.
    if (first_after_sync(slot, lane)) {
        for (int l = 0; l < 32; ++l) {
            const int g = l >> 2, t = l & 3;
            for (int j = 0; j < N; ++j) {
                uint16_t lo, hi;
                if (!Trans) {   // row g, columns 2t and 2t + 1
                    std::memcpy(&lo, slot.row[8 * j + g] + 2 * (2 * t), 2);
                    std::memcpy(&hi, slot.row[8 * j + g] + 2 * (2 * t + 1), 2);
                } else {        // rows 2t and 2t + 1, column g
                    std::memcpy(&lo, slot.row[8 * j + 2 * t] + 2 * g, 2);
                    std::memcpy(&hi, slot.row[8 * j + 2 * t + 1] + 2 * g, 2);
                }
                slot.r[l][j] = uint32_t(lo) | (uint32_t(hi) << 16);
            }
        }
    }
    for (int j = 0; j < N; ++j) r[j] = slot.r[lane][j];
}

// cp.async: each GPU thread's outstanding copies, in issue order (a table per OS thread = per block
// in flight, reset at each thread's first use in a block).
struct PendingCopy {
    unsigned char* dst;
    unsigned char data[16];
    uint64_t group;
};
struct ThreadCopies {
    uint64_t block = ~uint64_t(0);
    uint64_t open_group = 0;        // the group that copies issued now belong to
    std::vector<PendingCopy> pending;
};
inline ThreadCopies& thread_copies() {
    static thread_local ThreadCopies table[1024];
    ThreadCopies& t = table[linear_thread_index()];
    const uint64_t block = host::worker().block_serial;
    if (t.block != block) {   // copies left by a thread of an earlier block are never waited for
        t.block = block;
        t.open_group = 0;
        t.pending.clear();
    }
    return t;
}
// Retire (write) every pending copy of a group before `end_group`, in issue order.
inline void retire_before(ThreadCopies& t, uint64_t end_group) {
    size_t kept = 0;
    for (size_t i = 0; i < t.pending.size(); ++i) {
        PendingCopy& p = t.pending[i];
        if (p.group < end_group) std::memcpy(p.dst, p.data, 16);
        else t.pending[kept++] = p;
    }
    t.pending.resize(kept);
}

}  // namespace host_mma
#endif  // SCRATCH_HOST_EXECUTOR

// ------------------------------------------------------------------------------------- mma
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                  const float c[4]) {
#if defined(SCRATCH_HOST_EXECUTOR)
    host_mma::mma_m16n8k16<MmaLayoutM16N8K16, __nv_bfloat16>(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
    __trap();   // bf16 mma.sync needs sm_80
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                                 const float c[4]) {
#if defined(SCRATCH_HOST_EXECUTOR)
    host_mma::mma_m16n8k16<MmaLayoutM16N8K16, __half>(d, a, b, c);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
          "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#elif defined(__CUDA_ARCH__)
    __trap();   // m16n8k16 mma.sync needs sm_80
#endif
}

// For kernels templated on the storage type T (__nv_bfloat16 or __half).
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2],
                                             const float c[4]) {
    static_assert(is_16bit_float<T>, "mma_m16n8k16<T>: T is __nv_bfloat16 or __half");
    if constexpr (std::is_same_v<T, __nv_bfloat16>) mma_m16n8k16_bf16(d, a, b, c);
    else mma_m16n8k16_f16(d, a, b, c);
}

// -------------------------------------------------------------------------------- ldmatrix
#if defined(SCRATCH_CUDA)
__device__ __forceinline__ unsigned scratch_smem_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// Under nvcc the bodies are PTX for sm_80 and newer (ldmatrix itself exists from sm_75, but the
// wrappers serve the sm_80 mma path); older targets trap.
#if defined(SCRATCH_HOST_EXECUTOR)
#define SCRATCH_LDMATRIX_HOST(N, TRANS) host_mma::ldmatrix<N, TRANS>(r, smem_row);
#else
#define SCRATCH_LDMATRIX_HOST(N, TRANS)
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define SCRATCH_LDMATRIX_PTX(...) asm volatile(__VA_ARGS__);
#elif defined(__CUDA_ARCH__)
#define SCRATCH_LDMATRIX_PTX(...) __trap();
#else
#define SCRATCH_LDMATRIX_PTX(...)
#endif

__device__ __forceinline__ void ldmatrix_x1(uint32_t r[1], const void* smem_row) {
    SCRATCH_LDMATRIX_HOST(1, false)
    SCRATCH_LDMATRIX_PTX("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
                         : "=r"(r[0]) : "r"(scratch_smem_address(smem_row)))
}
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* smem_row) {
    SCRATCH_LDMATRIX_HOST(2, false)
    SCRATCH_LDMATRIX_PTX("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                         : "=r"(r[0]), "=r"(r[1]) : "r"(scratch_smem_address(smem_row)))
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* smem_row) {
    SCRATCH_LDMATRIX_HOST(4, false)
    SCRATCH_LDMATRIX_PTX("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                         : "r"(scratch_smem_address(smem_row)))
}
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t r[1], const void* smem_row) {
    SCRATCH_LDMATRIX_HOST(1, true)
    SCRATCH_LDMATRIX_PTX("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
                         : "=r"(r[0]) : "r"(scratch_smem_address(smem_row)))
}
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t r[2], const void* smem_row) {
    SCRATCH_LDMATRIX_HOST(2, true)
    SCRATCH_LDMATRIX_PTX("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                         : "=r"(r[0]), "=r"(r[1]) : "r"(scratch_smem_address(smem_row)))
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void* smem_row) {
    SCRATCH_LDMATRIX_HOST(4, true)
    SCRATCH_LDMATRIX_PTX("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                         : "r"(scratch_smem_address(smem_row)))
}
#undef SCRATCH_LDMATRIX_HOST
#undef SCRATCH_LDMATRIX_PTX

// -------------------------------------------------------------------------------- cp.async
__device__ __forceinline__ void cp_async_16(void* smem_dst, const void* gmem_src, int src_bytes = 16) {
#if defined(SCRATCH_HOST_EXECUTOR)
    if (!is_aligned(smem_dst, 16) || !is_aligned(gmem_src, 16))
        host::device_fail(str("cp_async_16: source ", gmem_src, " and destination ", smem_dst,
                              " must both be 16-byte aligned"));
    if (src_bytes < 0 || src_bytes > 16)
        host::device_fail(str("cp_async_16: src_bytes must be 0 .. 16, got ", src_bytes));
    host_mma::ThreadCopies& t = host_mma::thread_copies();
    host_mma::PendingCopy p;
    p.dst = static_cast<unsigned char*>(smem_dst);
    std::memset(p.data, 0, sizeof p.data);
    if (src_bytes) std::memcpy(p.data, gmem_src, size_t(src_bytes));
    p.group = t.open_group;
    t.pending.push_back(p);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(scratch_smem_address(smem_dst)), "l"(gmem_src), "r"(src_bytes) : "memory");
#elif defined(__CUDA_ARCH__)
    __trap();   // cp.async needs sm_80
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(SCRATCH_HOST_EXECUTOR)
    ++host_mma::thread_copies().open_group;
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

template <int N>
__device__ __forceinline__ void cp_async_wait() {
    static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0 .. 7");
#if defined(SCRATCH_HOST_EXECUTOR)
    host_mma::ThreadCopies& t = host_mma::thread_copies();
    if (t.open_group >= uint64_t(N)) host_mma::retire_before(t, t.open_group - uint64_t(N));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#endif
}

__device__ __forceinline__ void cp_async_wait_all() {
#if defined(SCRATCH_HOST_EXECUTOR)
    host_mma::ThreadCopies& t = host_mma::thread_copies();
    ++t.open_group;
    host_mma::retire_before(t, t.open_group);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

}  // namespace scratch
