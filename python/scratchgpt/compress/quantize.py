"""Weight quantisation of one layer: round-to-nearest and GPTQ (Frantar et al. 2022, "GPTQ:
Accurate Post-Training Quantization for Generative Pre-trained Transformers"), in NumPy.

GPTQ minimises ||W X - W_hat X||_F^2 over the codes of W_hat, row by row, given the layer's
calibration inputs X [K, n] through their Hessian H = 2 X X^T / n (docs/gradients/quant_linear.md
derives the update). Columns are quantised one at a time; the error of column j, scaled by
1 / [H^-1]_jj, is pushed onto the columns not yet quantised through row j of H^-1's upper
Cholesky factor (the Optimal Brain Surgeon update, with the factor standing in for the
successive inverses). As in the paper:
  - dampening: H += damp * mean(diag H) I (damp = 0.01), for a positive definite H;
  - dead inputs (diag H = 0: the input never moves) get H_jj = 1 and W[:, j] = 0;
  - act-order: columns by decreasing diag H, so the inputs that matter most are quantised while
    the most columns remain to absorb their error;
  - lazy batch: the updates are applied inside blocks of 128 columns and once per block to the
    rest (the same arithmetic, in matrix-matrix products; a group fixed mid-block sees its
    columns with the pending updates applied, so the result does not depend on the block size).
int4 groups stay contiguous in the original column order (the format the kernels read); a
group's scale and zero point are fixed when its first column comes up (in act-order, from the
group's columns as the updates so far have left them) — without act-order exactly the paper's
rule. int8's per-row scale is fixed up front from W.

A pruning mask (1 keep, 0 pruned) may be given: pruned weights quantise to the exact zero code,
and their error is compensated like any other's.
"""
import numpy as np

from ..reference import quant_linear as ql

DAMP = 0.01
BLOCK = 128


def quantize_rtn(w, bits, group_size=0, mask=None):
    """Round to nearest; masked weights (mask 0) are zero before and after."""
    w = np.asarray(w, np.float64)
    if mask is not None:
        w = w * mask
    return ql.quantize_rtn(w, bits, group_size)


def hessian(inputs):
    """H = 2 X X^T / n from the layer's inputs [n, K] (float64); accumulate with add_hessian."""
    x = np.asarray(inputs, np.float64).reshape(-1, inputs.shape[-1])
    return 2.0 * (x.T @ x) / max(len(x), 1), len(x)


def add_hessian(h, count, inputs):
    """Running average of H over batches of inputs: (H, n) -> (H', n')."""
    h_new, n_new = hessian(inputs)
    if h is None:
        return h_new, n_new
    total = count + n_new
    return h * (count / total) + h_new * (n_new / total), total


def quantize_gptq(w, h, bits, group_size=0, mask=None, act_order=True, damp=DAMP, block=BLOCK):
    """GPTQ of w [N, K] under the Hessian h [K, K] -> QuantizedWeight (codes in column order)."""
    w = np.array(w, np.float64)
    N, K = w.shape
    if h.shape != (K, K):
        raise ValueError(f"h: expected [{K}, {K}] for a layer of width {K}, got {h.shape}")
    if bits == 4:
        ql.check_group_size(group_size, K)
    elif bits != 8:
        raise ValueError(f"bits: expected 8 or 4, got {bits}")
    keep = np.ones_like(w) if mask is None else np.asarray(mask, np.float64)
    w *= keep
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h[np.diag_indices(K)] += damp * np.mean(np.diag(h))

    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(K)
    w, h, keep = w[:, perm], h[np.ix_(perm, perm)], keep[:, perm]
    # U upper with H^-1 = U^T U: row j of U holds the OBS update of column j over columns > j
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T

    if bits == 8:
        scale, zero = ql.int8_scale(w), None
    else:
        scale = np.zeros((N, K // group_size), np.float32)
        zero = np.zeros((N, K // group_size), np.uint8)
        group_fixed = np.zeros(K // group_size, bool)
        pos = np.empty(K, np.int64)
        pos[perm] = np.arange(K)            # where each original column sits in w now
    codes = np.zeros((N, K), np.int8 if bits == 8 else np.uint8)   # in permuted order

    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        err = np.zeros((N, b1 - b0))
        for j in range(b0, b1):
            col = perm[j]                   # the original column index
            if bits == 4:
                g = col // group_size
                if not group_fixed[g]:      # the group's first column: fix its scale and zero
                    members = pos[g * group_size:(g + 1) * group_size]
                    current = w[:, members]
                    later = members >= b1   # not yet given this block's updates (lazy batch)
                    current[:, later] -= err[:, :j - b0] @ hinv[b0:j, members[later]]
                    s, z = ql.int4_scale_zero(current, group_size)
                    scale[:, g], zero[:, g] = s[:, 0], z[:, 0]
                    group_fixed[g] = True
                c = ql.quantize_columns(w[:, j:j + 1], 4, scale, zero, group_size, [col])[:, 0]
                c = np.where(keep[:, j] > 0, c, zero[:, g])
                q = ql.dequantize_columns(c[:, None], 4, scale, zero, group_size, [col])[:, 0]
            else:
                c = ql.quantize_columns(w[:, j:j + 1], 8, scale)[:, 0]
                c = np.where(keep[:, j] > 0, c, 0).astype(np.int8)
                q = ql.dequantize_columns(c[:, None], 8, scale)[:, 0]
            codes[:, j] = c
            e = (w[:, j] - q) / hinv[j, j]
            w[:, j + 1:b1] -= np.outer(e, hinv[j, j + 1:b1])
            err[:, j - b0] = e
        w[:, b1:] -= err @ hinv[b0:b1, b1:]    # the block's updates to the later columns, at once

    inverse = np.empty(K, np.int64)
    inverse[perm] = np.arange(K)
    return ql.from_codes(codes[:, inverse], bits, scale, zero, group_size)


def output_error(w, w_hat, h):
    """Relative layer-output error tr((W - W_hat) H (W - W_hat)^T) / tr(W H W^T): what GPTQ
    minimises, measured on the calibration inputs."""
    d = np.asarray(w, np.float64) - np.asarray(w_hat, np.float64)
    w = np.asarray(w, np.float64)
    return float(np.einsum("ij,jk,ik->", d, h, d) / max(np.einsum("ij,jk,ik->", w, h, w), 1e-300))
