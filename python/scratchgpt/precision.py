"""Mixed precision: where the model rounds to bf16 / fp16, the fp32 masters, the loss scaler
(docs/gradients/mixed_precision.md derives and measures all of it).

    precision   storage type S          unit roundoff u_S   range
    fp32        the model's dtype       2^-24 (float32)     -
    bf16        ml_dtypes.bfloat16      2^-8                fp32's (max 3.4e38)
    fp16        numpy.float16           2^-11               max 65504, normal >= 2^-14,
                                                            subnormal >= 2^-24

The recipe (bf16 and fp16; fp32 is the model as it always was):
- masters: `model.params` stays fp32; AdamW updates it and keeps its moments in fp32.
  The forward and backward read `model.params_lp`, a copy rounded to S (`sync_lowp`).
- storage: every activation an op returns and every activation gradient passed between ops
  is of type S. Parameter gradients are summed and returned in fp32.
- inside an op: the S inputs are widened to fp32 (exactly), the op runs in fp32 (products
  and sums accumulated in fp32; layer-norm mean and rstd, the attention softmax, the
  cross-entropy's log-sum-exp and loss all fp32), and each output is rounded ONCE to S,
  round to nearest even. What an op keeps for its backward is its S inputs, plus fp32
  statistics (layer-norm mean/rstd, attention probabilities, log-sum-exp) and masks.
- fp16 multiplies the loss gradient by a dynamic scale (DynamicLossScaler); the optimizer
  step divides the fp32 gradients by it, and skips the step when they are not finite.

`storage_backend(backend, precision)` is the one point where the ops learn this: it wraps
each reference op's forward/backward with the casts, following the table ROUNDINGS below,
so no op is written twice. `MixedPrecision` is the one point where a training step learns
it: backward with the scaled loss, then the unscale / check / skip / step / refresh.
"""
import math
from dataclasses import dataclass, replace

import numpy as np


PRECISIONS = ("fp32", "bf16", "fp16")


def _bfloat16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def storage_dtype(precision):
    """The storage type S of a precision (None for fp32: the model's own dtype)."""
    check_precision(precision)
    if precision == "fp32":
        return None
    return _bfloat16() if precision == "bf16" else np.dtype(np.float16)


# unit roundoff (half an ulp of 1) and half the smallest subnormal, the absolute error floor
UNIT_ROUNDOFF = {"fp32": 2.0 ** -24, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
UNDERFLOW_FLOOR = {"fp32": 2.0 ** -150, "bf16": 2.0 ** -134, "fp16": 2.0 ** -25}


def check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return precision


def to_storage(x, precision):
    """x as an array of the storage type (round to nearest even, once, from x's own dtype;
    the ops only ever round fp32 values). An array already of that type is returned as is."""
    S = storage_dtype(precision)
    if S is None:
        return x
    return x.astype(S, copy=False)


def round_to(x, precision):
    """The values of to_storage(x), in x's own float dtype (for float64 checks)."""
    if precision == "fp32":
        return np.asarray(x).astype(np.float32).astype(np.asarray(x).dtype)
    return to_storage(np.asarray(x), precision).astype(np.asarray(x).dtype)


def widen(a):
    """S -> fp32, exact."""
    return a.astype(np.float32)


def master_dtype(precision, dtype=None):
    """The masters' dtype: `dtype` (float64 when None) for fp32; float32 for bf16 / fp16,
    which refuse any other."""
    check_precision(precision)
    if precision == "fp32":
        return dtype or "float64"
    if dtype not in (None, "float32", np.float32):
        raise ValueError(f"dtype: precision {precision} keeps float32 master weights, "
                         f"got {dtype!r}")
    return "float32"


def working_copy(params, precision):
    """The weights the forward and backward read: the masters themselves for fp32, else a
    copy rounded to S (name -> array of S)."""
    if precision == "fp32":
        return params
    return {k: to_storage(v, precision) for k, v in params.items()}


# ------------------------------------------------------------------------------ backends
def native_16bit(op):
    """True when a compiled op's wrapper takes and returns bf16 / fp16 arrays itself (its class
    says STORES_16BIT = True)."""
    return bool(getattr(type(op), "STORES_16BIT", False))


def check_supported(backend_name, precision, where=None,
                    expected="--backend numpy, or --precision fp32"):
    """The one place that says which backends run which precisions: every backend runs all
    three (a compiled op without a 16-bit kernel runs its fp32 kernel on widened inputs, see
    storage_backend). `where` and `expected` complete a command's error line."""
    check_precision(precision)


@dataclass(frozen=True)
class Roundings:
    """Where one op rounds to S (the other values stay fp32).

    output_rounded   forward's output is rounded to S (softmax_xent's loss is not: fp32)
    saved            cache slots that hold (views of) S inputs: kept in S, widened again
                     in the backward; the other slots (statistics, masks) are kept as the
                     op made them, in fp32
    recompute        the cache is not kept: the backward reruns the forward on the stored
                     S inputs (GELU's gate, as the kernels do)
    rounded_grads    backward outputs that are activation gradients (rounded to S); the
                     others are parameter gradients (fp32, not rounded)
    fp32_operands    operands that are all fp32 (the tied embedding's two parameter
                     gradients, summed by residual) are added in fp32, unrounded
    passes_dout      the backward hands dout (S) on unchanged: nothing to widen or round
    """
    output_rounded: bool = True
    saved: tuple = ()
    recompute: bool = False
    rounded_grads: tuple = (0,)
    fp32_operands: bool = False
    passes_dout: bool = False


ROUNDINGS = {
    # out = R(f(wte[idx]) + f(wpe[t]));  dwte, dwpe fp32 sums of f(dout)
    "embedding": Roundings(rounded_grads=()),
    # out = R((f(x) - mean) rstd f(w) + f(b)), mean/rstd fp32;  dx = R(...);  dw, db fp32
    "layernorm": Roundings(saved=(0, 3)),
    # y = R(f(x) f(W)^T + f(b));  dx = R(f(dy) f(W));  dW = f(dy)^T f(x), db fp32
    "linear": Roundings(saved=(0, 1)),
    # out = R(gelu(f(x)));  dx = R(f(dout) gelu'(f(x)))
    "gelu": Roundings(recompute=True),
    # y = R(P f(v)), P = softmax(f(q) f(k)^T / sqrt(D)) fp32, kept;  dqkv = R(...)
    "attention": Roundings(saved=(0, 1, 2)),
    # loss fp32 from f(logits) (lse fp32, kept);  dlogits = R(dloss (p - onehot) / N)
    "softmax_xent": Roundings(output_rounded=False, saved=(0,)),
    # out = R(f(x) keep scale);  dx = R(f(dout) keep scale)
    "dropout": Roundings(),
    # out = R(f(a) + f(b));  the backward passes dout (S) on to both
    "residual": Roundings(fp32_operands=True, passes_dout=True),
}
# adamw is not wrapped: it updates the fp32 masters with fp32 gradients and moments


class _Recompute:
    """The cache of an op that recomputes its own in the backward: its stored S inputs."""

    def __init__(self, stored, kwargs):
        self.stored, self.kwargs = stored, kwargs


class StorageOp:
    """One reference op with S storage: inputs rounded to S (a no-op for S arrays) and
    widened to fp32, the reference run in fp32, outputs rounded once as ROUNDINGS says."""

    def __init__(self, name, op, precision, kernel=False):
        self.name, self.op, self.precision = name, op, precision
        self.S = storage_dtype(precision)
        rules = ROUNDINGS[name]
        if kernel:
            # an fp32 kernel keeps its own cache (of widened inputs, in its own layout): only
            # the output and gradient roundings apply
            rules = replace(rules, saved=(), recompute=False)
        self.rules = rules

    def __getattr__(self, attr):                  # allowed_mask, split_heads, ...
        op = self.__dict__.get("op")
        if op is None:
            raise AttributeError(attr)
        return getattr(op, attr)

    @staticmethod
    def _is_array(a):          # NumPy or device arrays (CuPy, the emulated device)
        return hasattr(a, "dtype") and hasattr(a, "astype") and hasattr(a, "shape")

    def _is_float(self, a):
        return self._is_array(a) and (a.dtype.kind == "f" or a.dtype == self.S)

    def _store(self, a):
        return a.astype(self.S, copy=False) if self._is_float(a) else a

    def _wide(self, a):
        return widen(a) if self._is_array(a) and a.dtype == self.S else a

    def _round(self, out):
        return out.astype(self.S, copy=False) if self._is_array(out) else out

    def forward(self, *args, **kwargs):
        floats = [a for a in args if self._is_float(a)]
        if self.rules.fp32_operands and floats and all(a.dtype != self.S for a in floats):
            return self.op.forward(*args, **kwargs)
        stored = [self._store(a) for a in args]
        wide = [self._wide(a) for a in stored]
        out, cache = self.op.forward(*wide, **kwargs)
        if self.rules.output_rounded:
            out = self._round(out)
        if self.rules.recompute:
            return out, _Recompute(stored, kwargs)
        if cache is not None and self.rules.saved:
            cache = tuple(self._keep(c, wide, stored) if i in self.rules.saved else c
                          for i, c in enumerate(cache))
        return out, cache

    def _keep(self, c, wide, stored):
        """A saved slot in S: the S input itself when the slot is its widened copy, else a
        rounding that is exact (the slot is a view of a widened S input, e.g. q, k, v)."""
        for w, s in zip(wide, stored):
            if c is w:
                return s
        return self._round(c)

    def backward(self, dout, cache):
        if self.rules.passes_dout:
            return self.op.backward(dout, cache)
        if isinstance(cache, _Recompute):                   # rebuild the forward's cache
            cache = self.op.forward(*[self._wide(a) for a in cache.stored], **cache.kwargs)[1]
        elif cache is not None and self.rules.saved:
            cache = tuple(self._wide(c) if i in self.rules.saved else c
                          for i, c in enumerate(cache))
        grads = self.op.backward(self._wide(self._store(dout)), cache)
        if not isinstance(grads, tuple):
            return self._round(grads)
        return tuple(self._round(g) if i in self.rules.rounded_grads else g
                     for i, g in enumerate(grads))

    def decode(self, *args, **kwargs):
        """attention.decode on the S KV cache: y = R(softmax(f(q) f(K)^T / sqrt(D)) f(V))."""
        return self._round(self.op.decode(*[self._wide(self._store(a)) for a in args], **kwargs))


class KernelWideningWarning(UserWarning):
    """Some compiled ops have no bf16 / fp16 kernel yet: their fp32 kernel runs on widened
    inputs and their outputs are rounded as ROUNDINGS says (the same numbers, more memory)."""


def storage_backend(backend, precision):
    """The backend whose ops store in S (the backend itself for fp32). The reference ops are
    wrapped by StorageOp; a compiled op whose kernel stores 16-bit types (native_16bit) is used
    as it is, since it rounds where ROUNDINGS says (its tests bound each output by those
    roundings); any other compiled op runs its fp32 kernel through StorageOp too, listed in
    Backend.widened and in one KernelWideningWarning."""
    check_supported(backend.name, precision)
    if precision == "fp32":
        return backend
    from .ops import Backend
    compiled = backend.name in ("host", "cuda")
    ops, widened = {}, []
    for name, op in backend.ops.items():
        if name not in ROUNDINGS or (compiled and native_16bit(op)):
            ops[name] = op
        else:
            ops[name] = StorageOp(name, op, precision, kernel=compiled)
            if compiled:
                widened.append(name)
    if widened:
        import warnings
        warnings.warn(f"backend {backend.name!r}: no {precision} kernel yet for "
                      f"{', '.join(widened)}; their fp32 kernels run on widened inputs",
                      KernelWideningWarning, stacklevel=3)
    return Backend(backend.name, backend.xp, ops, list(backend.fallbacks), widened)


# ------------------------------------------------------------------------------ loss scaling
class LossScaleUnderflow(FloatingPointError):
    """The loss scale fell below its floor: the gradients stay non-finite however small the
    scale, so the model itself has diverged."""


class DynamicLossScaler:
    """fp16's dynamic loss scale. The loss gradient is multiplied by `scale` so that small
    activation gradients stay above fp16's underflow (2^-24); the optimizer step divides
    the fp32 gradients by it. On any Inf / NaN in the unscaled gradients the step is skipped
    and the scale halved; after `growth_interval` good steps in a row it is doubled.
    Scales are powers of two, so scaling and unscaling are exact."""

    def __init__(self, init_scale=2.0 ** 16, growth_interval=2000, growth_factor=2.0,
                 backoff_factor=0.5, min_scale=2.0 ** -24):
        if growth_interval < 1:
            raise ValueError(f"growth_interval: expected an integer >= 1, got {growth_interval}")
        self.scale = float(init_scale)
        self.growth_interval = int(growth_interval)
        self.growth_factor, self.backoff_factor = float(growth_factor), float(backoff_factor)
        self.min_scale = float(min_scale)
        self.good_steps = 0               # finite steps since the last change of scale
        self.skipped_steps = 0            # steps skipped for non-finite gradients, in all

    def unscale(self, grads):
        """Divide the fp32 gradients (a dict) by the scale, in place."""
        inv = 1.0 / self.scale
        for g in grads.values():
            g *= g.dtype.type(inv)

    def update(self, finite):
        """After a step: grow after growth_interval good steps, halve (and count the skip)
        on a non-finite one. Returns True when the step is to be skipped."""
        if finite:
            self.good_steps += 1
            if self.good_steps >= self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0
            return False
        self.skipped_steps += 1
        self.good_steps = 0
        self.scale *= self.backoff_factor
        if self.scale < self.min_scale:
            raise LossScaleUnderflow(f"the fp16 loss scale fell to {self.scale:g} after "
                                     f"{self.skipped_steps} skipped steps")
        return True

    def state_dict(self):
        return {"scale": self.scale, "good_steps": self.good_steps,
                "skipped_steps": self.skipped_steps, "growth_interval": self.growth_interval}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self.growth_interval = int(state.get("growth_interval", self.growth_interval))


class MixedPrecision:
    """Where precision enters a training step: `backward` multiplies the loss gradient by
    the loss scale (fp16), `step` is the optimizer step: unscale the fp32 gradients, skip
    the step (and halve the scale) when they are not finite, else clip + AdamW on the fp32
    masters, then refresh the model's S working copy. For fp32 and bf16 the scale is 1 and
    nothing is skipped: a non-finite gradient reaches AdamW (and the caller stops)."""

    def __init__(self, model, optimizer, growth_interval=2000, init_scale=2.0 ** 16):
        self.model, self.opt = model, optimizer
        self.scaler = (DynamicLossScaler(init_scale, growth_interval)
                       if model.precision == "fp16" else None)

    @property
    def loss_scale(self):
        return self.scaler.scale if self.scaler is not None else 1.0

    @property
    def skipped_steps(self):
        return self.scaler.skipped_steps if self.scaler is not None else 0

    def backward(self, loss_weight=1.0, dhidden=None):
        """model.backward of loss_weight * loss, times the loss scale (dhidden likewise)."""
        s = self.loss_scale
        if dhidden is not None and s != 1.0:
            dhidden = dhidden * dhidden.dtype.type(s)
        if self.scaler is None:
            return self.model.backward(loss_weight=loss_weight, dhidden=dhidden)
        with np.errstate(over="ignore", invalid="ignore"):     # the scaler's to handle
            return self.model.backward(loss_weight=loss_weight * s, dhidden=dhidden)

    def step(self, grads, lr=None, max_grad_norm=None):
        """(gradient norm before clipping or None when skipped, skipped)."""
        if self.scaler is not None:
            self.scaler.unscale(grads)
            norm = self.opt.be.adamw.global_norm([grads[k] for k in self.opt.params])
            if self.scaler.update(math.isfinite(norm)):
                return None, True
        norm = self.opt.step(grads, lr=lr, max_grad_norm=max_grad_norm)
        self.model.sync_lowp()
        return norm, False

    def state_dict(self):
        return {"loss_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state):
        if self.scaler is not None and state.get("loss_scaler"):
            self.scaler.load_state_dict(state["loss_scaler"])
