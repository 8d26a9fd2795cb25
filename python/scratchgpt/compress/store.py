"""The compressed checkpoint, and running a model from it.

    OUT/
        model.safetensors   every parameter the compression left alone, as written by train,
                            and for each compressed weight NAME ([N, K]):
                              quantised   NAME.qweight  int8 [N, K] | uint8 [N, K/2] (int4 pairs)
                                          NAME.scale    float32 [N] | [N, K/G]
                                          NAME.zero     uint8 [N, K/G]            (int4)
                              pruned      NAME.mask     uint8 [N, ceil(K/8)]  (np.packbits rows)
                                          NAME.values   float32 [kept]  the kept weights in row-major
                                                        order (only when not also quantised)
        compression.json    what was done (format, flags, per-layer bits / group / sparsity)
        config.json, state.json, tokenizer   as the source checkpoint's (state says compressed)
        report.json, report.md

`decompress(ckpt, tensors)` turns the tensors back into the dense parameters GPT.load_params
takes (the dequantised weights) and returns the QuantizedWeights; `attach(model, quantized)`
then makes the model's linears read those through the quant_linear op (csrc/quant_linear.cu on
the host and cuda backends, the reference on numpy), so decoding moves int8 / int4 weight bytes.
"""
import json
import os

import numpy as np

from ..errors import BadFileError, UsageError
from ..reference import quant_linear as ql
from ..reference.quant_linear import QuantizedWeight

COMPRESSION_FILE = "compression.json"
FORMAT = 1


def is_compressed(ckpt_dir):
    return os.path.isfile(os.path.join(ckpt_dir, COMPRESSION_FILE))


def read_compression(ckpt_dir):
    path = os.path.join(ckpt_dir, COMPRESSION_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFileError(f"not valid JSON ({e})", path, "written by scratchgpt compress") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "layers" not in meta:
        raise BadFileError(f"not a compression record of format {FORMAT}", path,
                           "written by scratchgpt compress")
    return meta


def encode_layer(w, qw=None, mask=None):
    """The tensors (suffix -> array) of one compressed weight: its QuantizedWeight's, or for a
    pruned float weight its kept values; plus the packed mask when pruned."""
    out = {}
    if qw is not None:
        out.update(qw.tensors())
        if qw.bits == 8:
            out["qweight"] = np.asarray(qw.qweight, np.int8)
    if mask is not None:
        mask = np.asarray(mask, np.uint8)
        out["mask"] = np.packbits(mask, axis=1)
        if qw is None:
            out["values"] = np.ascontiguousarray(np.asarray(w, np.float32)[mask.astype(bool)])
    return out


def decompress(ckpt_dir, tensors):
    """(dense params for GPT.load_params, {name: QuantizedWeight}) from a compressed
    checkpoint's tensors; BadFileError naming the file when a tensor is missing or mis-shaped."""
    meta = read_compression(ckpt_dir)
    where = os.path.join(ckpt_dir, "model.safetensors")
    dense = dict(tensors)
    quantized = {}

    def take(name, suffix):
        key = f"{name}.{suffix}"
        if key not in dense:
            raise BadFileError(f"no tensor {key}", where, f"the tensors {COMPRESSION_FILE} lists")
        return dense.pop(key)

    for name, layer in meta["layers"].items():
        N, K = layer["shape"]
        mask = None
        if layer.get("sparsity") is not None:
            packed = take(name, "mask")
            if packed.shape != (N, (K + 7) // 8):
                raise BadFileError(f"{name}.mask has shape {packed.shape}", where,
                                   f"[{N}, {(K + 7) // 8}] (packed bits of [{N}, {K}])")
            mask = np.unpackbits(packed, axis=1, count=K).astype(bool)
        bits = layer.get("bits")
        if bits:
            qw = QuantizedWeight(bits, take(name, "qweight"), take(name, "scale"),
                                 take(name, "zero") if bits == 4 else None,
                                 layer.get("group_size") or 0)
            if bits == 8:
                qw.qweight = np.asarray(qw.qweight).view(np.int8)
            try:
                dense[name] = ql.dequantize(qw)
            except ValueError as e:
                raise BadFileError(f"{name}: {e}", where, "the packed weights of "
                                   f"[{N}, {K}]") from None
            if dense[name].shape != (N, K):
                raise BadFileError(f"{name} dequantises to {dense[name].shape}", where, f"[{N}, {K}]")
            quantized[name] = qw
        else:
            values = take(name, "values")
            if mask is None or values.shape != (int(mask.sum()),):
                raise BadFileError(f"{name}.values does not match its mask", where,
                                   "one value per kept weight")
            w = np.zeros((N, K), np.float32)
            w[mask] = values
            dense[name] = w
    return dense, quantized


class QuantAwareLinear:
    """The backend's linear, except that a weight given as a QuantizedWeight goes through the
    quant_linear op (inference only: its backward refuses)."""

    STORES_16BIT = True

    def __init__(self, linear, quant_linear):
        self.linear, self.quant = linear, quant_linear

    def forward(self, x, weight, bias=None):
        if isinstance(weight, QuantizedWeight):
            out, cache = self.quant.forward(x, weight, bias)
            return out, ("quantized", cache)
        return self.linear.forward(x, weight, bias)

    def backward(self, dout, cache):
        if isinstance(cache, tuple) and cache and isinstance(cache[0], str) and cache[0] == "quantized":
            raise UsageError("a quantised model is inference-only", "backward",
                             "the fp32 checkpoint (compress --prune ... --recover-steps N trains "
                             "before it quantises)")
        return self.linear.backward(dout, cache)

    def __getattr__(self, name):            # version and the like, from the wrapped op
        return getattr(self.__dict__["linear"], name)


def quant_linear_op(backend_name):
    """The quant_linear op of a backend: the kernels on host / cuda, the reference on numpy."""
    if backend_name == "numpy":
        return ql
    from ..kernels import Runtime
    from ..kernels.quant_linear import QuantLinear
    return QuantLinear(Runtime(backend_name))


def attach(model, quantized):
    """Make `model` run its quantised linears through quant_linear (params keep the dense
    dequantised copies, which the numpy backend's reference and any backward would read)."""
    from ..ops import Backend
    if not quantized:
        return model
    if model.precision != "fp32":
        raise UsageError(f"a quantised checkpoint runs with fp32 activations, not {model.precision}",
                         "--precision", "fp32 (the quant_linear kernels take bf16 activations, "
                         "the model's bf16 path does not route through them yet)")
    quant = quant_linear_op(model.backend)
    be = model.be
    model.be = Backend(be.name, be.xp, {**be.ops, "linear": QuantAwareLinear(be.ops["linear"], quant)},
                       be.fallbacks, be.widened)
    on_backend = getattr(quant, "on_backend", lambda qw: qw)
    model.quantized = {k: on_backend(qw) for k, qw in quantized.items()}
    model.params_lp = {**model.params, **model.quantized}
    return model
