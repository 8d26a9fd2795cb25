// csrc/launchers.h — the plain C++ launchers each .cu exports, called by bindings.cpp.
//
// A launcher takes Tensor views (core/tensor.h) and scalars, checks every argument (raising
// scratch::ValueError / TypeError naming it), and launches through scratch::launch. The same
// declarations serve both modules: nvcc compiles the .cu files for `_cuda`, the host compiler
// (with the host executor) for `_host`. `stream` is a cudaStream_t (ignored by the host).
#pragma once

#include <cstdint>

#include "core/tensor.h"

namespace scratch::kernels {

using Stream = void*;

// ---------------------------------------------------------------------------- layernorm.cu
// x [..., C] -> out [..., C], mean and rstd (one per row, saved for the backward).
void layernorm_forward(const Tensor& out, const Tensor& mean, const Tensor& rstd, const Tensor& x,
                       const Tensor& weight, const Tensor& bias, float eps, Stream stream);
// Floats of scratch space layernorm_backward needs for N rows of C (per-block partial sums).
int64_t layernorm_backward_workspace(int64_t rows, int64_t C);
void layernorm_backward(const Tensor& dx, const Tensor& dweight, const Tensor& dbias,
                        const Tensor& workspace, const Tensor& dout, const Tensor& x,
                        const Tensor& weight, const Tensor& mean, const Tensor& rstd, Stream stream);

// ------------------------------------------------------------------------------- linear.cu
// out [..., OUT] = x [..., IN] weight[OUT, IN]^T (+ bias [OUT]; bias may be null).
// version: 1 = the naive thread-per-output baseline, 2 = the tiled SGEMM (default).
void linear_forward(const Tensor& out, const Tensor& x, const Tensor& weight, const Tensor* bias,
                    int version, Stream stream);
// Floats of scratch space linear_backward needs: per-chunk column sums of dout for the bias
// gradient, and split-K partial products (0 when neither is needed).
int64_t linear_backward_workspace(int64_t rows, int64_t in_features, int64_t out_features);
// dx = dout W, dweight = dout^T x, dbias = column sums of dout (skipped when dbias is null).
void linear_backward(const Tensor& dx, const Tensor& dweight, const Tensor* dbias,
                     const Tensor& workspace, const Tensor& dout, const Tensor& x,
                     const Tensor& weight, int version, Stream stream);

// ------------------------------------------------------------------------- quant_linear.cu
// out [..., N] = x [..., K] W^T (+ bias [N]; may be null) with W dequantised in registers from
// bits = 8: qweight [N, K] (int8 bits as uint8), scale [N], zero null; or bits = 4: qweight
// [N, K / 2] uint8 (two per byte, even k low), scale [N, K / G] float32, zero [N, K / G] uint8,
// G = group_size even and dividing K. x, bias, out: float32, bfloat16 (uint16 bits) or float16.
// version: 0 = auto (GEMV up to quant_linear_gemv_max_rows() rows, else GEMM), 1 = GEMM, 2 = GEMV.
void quant_linear_forward(const Tensor& out, const Tensor& x, const Tensor& qweight, const Tensor& scale,
                          const Tensor* zero, const Tensor* bias, int bits, int group_size, int version,
                          Stream stream);
int quant_linear_gemv_max_rows();
// out float32 [N, K] = the dequantised W (bit-identical to the kernels' values).
void quant_linear_dequantize(const Tensor& out, const Tensor& qweight, const Tensor& scale,
                             const Tensor* zero, int bits, int group_size, Stream stream);
// ---------------------------------------------------------------------------------- gru.cu
// The recurrence of a GRU layer (the input projections xp = x W_ih^T + b_ih come from linear).
// xp [B, T, 3H], h0 [B, H], w_hh [3H, H], b_hh [3H] -> h [B, T, H], gates [B, T, 4, H]
// (r, z, n and hp_n per step, kept for the backward).
void gru_forward(const Tensor& h, const Tensor& gates, const Tensor& xp, const Tensor& h0,
                 const Tensor& w_hh, const Tensor& b_hh, Stream stream);
// dh [B, T, H] -> dxp [B, T, 3H], dhp [B, T, 3H] (dL/d(W_hh h_{t-1} + b_hh), for dW_hh and db_hh
// by linear's weight gradient), dh0 [B, H].
void gru_backward(const Tensor& dxp, const Tensor& dhp, const Tensor& dh0, const Tensor& dh,
                  const Tensor& h, const Tensor& gates, const Tensor& h0, const Tensor& w_hh,
                  Stream stream);
// The largest hidden size whose W_hh the kernels keep in shared memory, for storage of itemsize bytes.
int64_t gru_shared_u_limit(int64_t itemsize);

// --------------------------------------------------------------------------------- gelu.cu
enum GeluMode : int { kGeluTanh = 0, kGeluExact = 1 };   // approximate="tanh" / "none"
// out may be x itself (in place); dx may be dout or x itself.
void gelu_forward(const Tensor& out, const Tensor& x, int mode, Stream stream);
void gelu_backward(const Tensor& dx, const Tensor& dout, const Tensor& x, int mode, Stream stream);

// ----------------------------------------------------------------------------- residual.cu
// out = a + b; out may be a or b itself (the in-place accumulate a += b).
void residual_forward(const Tensor& out, const Tensor& a, const Tensor& b, Stream stream);

// ---------------------------------------------------------------------------- attention.cu
// qkv [B, T, 3C] (C = n_head * D, D <= 128), window: 0 = causal, w >= 1 = banded (t-w+1 .. t).
// Fused (flash) version: y [B, T, C] and the log-sum-exp per row lse [B, n_head, T].
void attention_forward(const Tensor& y, const Tensor& lse, const Tensor& qkv, int n_head, int window,
                       Stream stream);
// di [B, n_head, T] is scratch (rowsum(dy * y)); dqkv [B, T, 3C].
void attention_backward(const Tensor& dqkv, const Tensor& di, const Tensor& dy, const Tensor& qkv,
                        const Tensor& y, const Tensor& lse, int n_head, int window, Stream stream);
// Materialised version: probs [B, n_head, T, T] saved for the backward; dprobs is scratch of the
// same shape.
void attention_materialized_forward(const Tensor& y, const Tensor& probs, const Tensor& qkv, int n_head,
                                    int window, Stream stream);
void attention_materialized_backward(const Tensor& dqkv, const Tensor& dprobs, const Tensor& dy,
                                     const Tensor& qkv, const Tensor& probs, int n_head, int window,
                                     Stream stream);
// Generation: q [B, H, Tn, D] at positions t0.., k_cache and v_cache [B, H, S, D] -> y [B, Tn, H*D].
void attention_decode(const Tensor& y, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      int t0, int window, Stream stream);
// ---------------------------------------------------------------------------- embedding.cu
// idx int32/int64 [B, T], wte [V, C], wpe [Tmax >= T, C] -> out [B, T, C]. status: int32 [1]
// scratch; a bad id raises ValueError naming its position and value.
void embedding_forward(const Tensor& out, const Tensor& idx, const Tensor& wte, const Tensor& wpe,
                       const Tensor& status, Stream stream);
// int32 scratch embedding_backward needs for V token ids and B*T positions (bucket sort).
int64_t embedding_backward_workspace(int64_t vocab_size, int64_t positions);
void embedding_backward(const Tensor& dwte, const Tensor& dwpe, const Tensor& workspace,
                        const Tensor& dout, const Tensor& idx, Stream stream);

// ------------------------------------------------------------------------- softmax_xent.cu
// logits [..., V], targets int32/int64 [...] (-1: ignored) -> loss [1] (mean over counted rows),
// stats [rows, 2] ((max, log-sum) per row: lse = max + log-sum), row_loss [rows], count [1]
// (counted rows); status: int32 [1] scratch.
void softmax_xent_forward(const Tensor& loss, const Tensor& stats, const Tensor& row_loss,
                          const Tensor& count, const Tensor& status, const Tensor& logits,
                          const Tensor& targets, Stream stream);
void softmax_xent_backward(const Tensor& dlogits, const Tensor& logits, const Tensor& stats,
                           const Tensor& targets, const Tensor& count, float dloss, Stream stream);

// ------------------------------------------------------------------------------ dropout.cu
// out = x * (Philox word(offset + e) >= threshold ? scale : 0); the backward is the same call.
void dropout_apply(const Tensor& out, const Tensor& x, uint32_t threshold, float scale,
                   uint64_t seed, uint64_t stream_id, uint64_t offset, Stream stream);
// words [k, 4] (int32 bits) = Philox-4x32-10 of blocks first .. first + k - 1.
void dropout_philox_blocks(const Tensor& words, uint64_t seed, uint64_t stream_id, uint64_t first,
                           Stream stream);

// -------------------------------------------------------------------------------- adamw.cu
// One AdamW step on one tensor, in place (param, m, v: float32, as grad). lowp (may be null):
// bfloat16 (uint16 bits) or float16 [param's shape] receives the updated param rounded once to
// its type (the working copy the next forward reads).
void adamw_update(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                  const Tensor* lowp, int64_t step, double lr, double beta1, double beta2, double eps,
                  double weight_decay, Stream stream);
// Global norm: per tensor global_norm_partials into its global_norm_blocks(size) float64 slots
// of a workspace, then global_norm_finish over the whole workspace -> norm [1] (float64).
int64_t global_norm_blocks(int64_t n);
void global_norm_partials(const Tensor& partials, const Tensor& x, Stream stream);
void global_norm_finish(const Tensor& norm, const Tensor& partials, Stream stream);
// Clipping: x *= factor in place (factor = max_norm / (norm + 1e-6), computed by the caller).
void global_norm_clip(const Tensor& x, float factor, Stream stream);

// --------------------------------------------- tests/kernels/executor_tests.cu (not an op)
// Small kernels that exercise one feature of the execution model each (tests/test_executor.py).
void exec_test_shuffles(const Tensor& out, const Tensor& in, int block, int width, int delta,
                        int src_lane, Stream stream);
void exec_test_votes(const Tensor& out, const Tensor& predicate, int block, Stream stream);
void exec_test_partial_masks(const Tensor& out, const Tensor& in, int block, Stream stream);
void exec_test_block_sum(const Tensor& out, const Tensor& in, int bx, int by, int bz, Stream stream);
void exec_test_transpose(const Tensor& out, const Tensor& in, Stream stream);
void exec_test_atomics(const Tensor& sum, const Tensor& max, const Tensor& count,
                       const Tensor& histogram, const Tensor& values, const Tensor& ints,
                       Stream stream);
void exec_test_grid3d(const Tensor& out, int gx, int gy, int gz, int bx, int by, int bz,
                      Stream stream);
void exec_test_dynamic_smem(const Tensor& out, const Tensor& in, int block, Stream stream);
void exec_test_activemask(const Tensor& out, const Tensor& predicate, int block, int live, Stream stream);
// Host only: schedules, poison and __activemask in a divergent loop.
void exec_test_activemask_loop(const Tensor& out, const Tensor& trips, int block);
void exec_test_neighbour(const Tensor& out, const Tensor& in, int block, int mode);
void exec_test_uninitialised(const Tensor& out, const Tensor& ints, const Tensor& written, int block);
// Host only: kernels that misuse barriers or warp operations; each must raise (never hang).
// On a GPU most of these would hang or be undefined, so `_cuda` does not export them.
void exec_test_misuse(const char* which);
// Host executor: OS threads that run blocks (0 in the CUDA build).
int host_executor_threads();
extern const char* const kExecMisuseCases[];

// ------------------------------------------------ tests/kernels/mma_tests.cu (not an op)
// core/half.h and core/mma.h against NumPy (tests/test_mma.py). kind: 0 = bfloat16 (its bits as
// uint16), 1 = float16. Registers cross as int32 views of the packed 32-bit values.
// x float32 [n] (n even) -> bits_out uint16 [7, n] by each conversion path; bits_in uint16 [n] ->
// floats_out float32 [5, n] (the rows are listed in mma_tests.cu).
void mma_test_convert(const Tensor& bits_out, const Tensor& floats_out, const Tensor& x,
                      const Tensor& bits_in, int kind, Stream stream);
// out = from_float(to_float(in) * scale), one kernel templated on in's storage type (float32,
// float16, or bfloat16 bits as uint16).
void mma_test_storage_scale(const Tensor& out, const Tensor& in, float scale, Stream stream);
// Raw fragments, warp w lane l: a [W, 32, 4], b [W, 32, 2] (int32), c and d [W, 32, 4] float32;
// d = c + repeat * (A B) by mma_m16n8k16 accumulating in place. Blocks of warps_per_block warps,
// shaped (block_x, 32 * warps_per_block / block_x). variant 1..3: deliberately wrong layouts (host).
void mma_test_fragments(const Tensor& d, const Tensor& a, const Tensor& b, const Tensor& c, int kind,
                        int repeat, int warps_per_block, int block_x, int variant, Stream stream);
// tile uint16 [...] copied to shared memory; lane l of warp w gives &tile[offsets[w, l]] to
// ldmatrix_x{num}{_trans}; out int32 [W, 32, num] receives its registers. clobber 1 (one warp
// only): right after the ldmatrix each lane overwrites the row it addressed, which must not change
// what any lane of the warp received.
void mma_test_ldmatrix(const Tensor& out, const Tensor& tile, const Tensor& offsets, int num, int trans,
                       int clobber, Stream stream);
// d [M, N] float32 = a [M, K] b through cp.async (two stages), ldmatrix and mma; b is [K, N]
// (b_layout 0) or [N, K] (b_layout 1). variant 1 (host only): the cp.async wait left out.
void mma_test_gemm(const Tensor& d, const Tensor& a, const Tensor& b, int kind, int b_layout, int variant,
                   Stream stream);
// One warp: p [16, 16] float32 = A B1, then out [16, 8] = round(P) B2 with P kept in registers
// (accum_to_a); a, b1 [16, 16], b2 [16, 8].
void mma_test_chain(const Tensor& out, const Tensor& p, const Tensor& a, const Tensor& b1, const Tensor& b2,
                    int kind, Stream stream);
// Host only: misuse of the warp collectives; each must raise.
void mma_test_misuse(const char* which);
extern const char* const kMmaMisuseCases[];

}  // namespace scratch::kernels
