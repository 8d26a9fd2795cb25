"""Mixed precision (precision.py; derivations in docs/gradients/mixed_precision.md).

1. Rounding: to_storage / round_to against an independent round-to-nearest-even oracle built
   from the bf16 / fp16 bit layouts, bit for bit (halfway cases, subnormals, overflow).
2. Every op under bf16 and fp16 against a float64 computation of the same formula on the same
   rounded inputs. The tolerance is derived, element by element, from the roundings the op
   does: the output is rounded once to S, so

       |out - ref| <= u_S |ref| + (1 + u_S) e32 + eta_S                       (*)

   where u_S = 2^-8 (bf16) or 2^-11 (fp16), eta_S half the smallest subnormal (the absolute
   floor of a rounding: 2^-25 for fp16, 2^-134 for bf16) and e32 a bound on the error of the
   op's fp32 arithmetic before that rounding. e32 is computed by replaying the op's fp32
   operations in `Bound` below (a running error analysis: each fp32 operation adds u32 of
   its result, sums of n terms gamma_{n-1} of the sum of magnitudes, matmuls
   gamma_n |A||B|); parameter gradients are not rounded to S, so for them |out - ref| <= e32.
   The storage rounding dominates (*), so the observed error reaches a good part of the bound
   (checked: > 1/4 of it somewhere), and an op that rounds twice fails (a control shows it).
3. The whole model against the fp32 model, the loss scaler, training, resume, the CLI, the
   memory estimate, and fp16's gradient underflow with and without the loss scale.
"""
import importlib.util
import json
import math
import os
import sys

import ml_dtypes
import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.cli import main
from scratchgpt.ops import get_backend
from scratchgpt.optim import AdamW
from scratchgpt.precision import (ROUNDINGS, UNDERFLOW_FLOOR, UNIT_ROUNDOFF, DynamicLossScaler,
                                  LossScaleUnderflow, MixedPrecision, round_to,
                                  storage_dtype, to_storage)
from scratchgpt.reference.attention import allowed_mask
from scratchgpt.reference.dropout import keep_mask

LOW = ("bf16", "fp16")
U32 = 2.0 ** -24
U = U32 + 2.0 ** -53      # one fp32 rounding, plus the float64 reference's own rounding
F = 8 * U32               # NumPy's float32 exp / tanh / log: within 4 ulp (= 8 u32 of the
#                           value), the tolerance NumPy's accuracy tests hold its SIMD loops to
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gamma(n):
    """gamma_n = n u / (1 - n u): the relative error bound of a sum of n + 1 terms (any order)."""
    return n * U / (1 - n * U)


def f64(a):
    return np.asarray(a).astype(np.float64)


def draw(rng, shape, precision, scale=1.0, loc=0.0):
    """Fresh random values, rounded to the storage type (the op's S inputs)."""
    return to_storage((loc + scale * rng.standard_normal(shape)).astype(np.float32), precision)


# --------------------------------------------------------------------------- the error model
class Bound:
    """A value computed in float64 (v) with a bound (e) on how far the op's fp32 computation of
    it can be: the op's arithmetic replayed one operation at a time."""

    def __init__(self, v, e=0.0):
        self.v = np.asarray(v, dtype=np.float64)
        self.e = np.broadcast_to(np.asarray(e, dtype=np.float64), self.v.shape).copy()

    @staticmethod
    def const(c):
        """A Python float as the reference uses it with fp32 arrays: rounded to fp32."""
        return Bound(c, abs(float(np.float32(c)) - c))

    @staticmethod
    def lift(x):
        return x if isinstance(x, Bound) else Bound.const(float(x))

    def _rounded(self, v, e):                 # the fp32 result of one operation
        return Bound(v, e + U * (np.abs(v) + e))

    def __add__(self, o):
        o = Bound.lift(o)
        return self._rounded(self.v + o.v, self.e + o.e)

    __radd__ = __add__

    def __sub__(self, o):
        o = Bound.lift(o)
        return self._rounded(self.v - o.v, self.e + o.e)

    def __rsub__(self, o):
        return Bound.lift(o) - self

    def __mul__(self, o):
        o = Bound.lift(o)
        return self._rounded(self.v * o.v, np.abs(self.v) * o.e + np.abs(o.v) * self.e
                             + self.e * o.e)

    __rmul__ = __mul__

    def __truediv__(self, o):
        o = Bound.lift(o)
        low = np.abs(o.v) - o.e
        assert np.all(low > 0), "divisor's error bound reaches zero"
        q = self.v / o.v
        return self._rounded(q, (self.e + np.abs(q) * o.e) / low)

    def __rtruediv__(self, o):
        return Bound.lift(o) / self

    def __getitem__(self, i):
        return Bound(self.v[i], self.e[i])

    def reshape(self, *s):
        return Bound(self.v.reshape(*s), self.e.reshape(*s))

    def transpose(self, *axes):
        return Bound(self.v.transpose(*axes), self.e.transpose(*axes))

    def sum(self, axis, keepdims=False):
        axes = (axis,) if isinstance(axis, int) else tuple(axis)
        n = int(np.prod([self.v.shape[a] for a in axes]))
        mag = (np.abs(self.v) + self.e).sum(axis=axis, keepdims=keepdims)
        return Bound(self.v.sum(axis=axis, keepdims=keepdims),
                     self.e.sum(axis=axis, keepdims=keepdims) + gamma(max(n - 1, 0)) * mag)

    def mean(self, axis, keepdims=False):
        n = self.v.shape[axis]
        s = self.sum(axis, keepdims)
        return self._rounded(s.v / n, s.e / n)

    def max(self, axis, keepdims=False):      # exact: the max of perturbed values moves by
        return Bound(self.v.max(axis=axis, keepdims=keepdims),      # at most the largest error
                     self.e.max(axis=axis, keepdims=keepdims))

    def matmul(self, o):
        """fp32 matmul, any summation order: gamma_n (|A| + eA)(|B| + eB) beside the
        propagated errors."""
        n = self.v.shape[-1]
        e = (np.abs(self.v) @ o.e + self.e @ np.abs(o.v) + self.e @ o.e
             + gamma(n) * ((np.abs(self.v) + self.e) @ (np.abs(o.v) + o.e)))
        return Bound(self.v @ o.v, e)

    def _function(self, v, lipschitz, rel):
        prop = lipschitz * self.e
        return Bound(v, prop + rel * (np.abs(v) + prop))

    def exp(self):
        return self._function(np.exp(self.v), np.exp(self.v + self.e), F)

    def tanh(self):
        return self._function(np.tanh(self.v), 1.0, F)

    def log(self):
        low = self.v - self.e
        assert np.all(low > 0)
        return self._function(np.log(self.v), 1.0 / low, F)

    def sqrt(self):                           # correctly rounded
        low = self.v - self.e
        assert np.all(low > 0)
        return self._function(np.sqrt(self.v), 0.5 / np.sqrt(low), U)

    def erf(self):                            # math.erf in float64, then one fp32 rounding
        erf = np.vectorize(math.erf, otypes=[np.float64])
        return self._function(erf(self.v), 2 / math.sqrt(math.pi), U + 2.0 ** -50)


def check_storage(out, ref, precision, what, tight=True):
    """(*) for an output rounded once to S: ref a Bound (float64 value, fp32 error bound)."""
    assert out.dtype == storage_dtype(precision), f"{what}: dtype {out.dtype}"
    u, eta = UNIT_ROUNDOFF[precision], UNDERFLOW_FLOOR[precision]
    err = np.abs(f64(out) - ref.v)
    bound = u * np.abs(ref.v) + (1 + u) * ref.e + eta           # (*)
    ratio = err / bound
    worst = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
    assert ratio.max() <= 1.0, (f"{what}: |error| {err[worst]:.3g} > bound {bound[worst]:.3g} "
                                f"at {worst} (ref {ref.v[worst]:.6g})")
    if tight:                                 # the bound is not vacuous: storage rounding shows
        assert ratio.max() > 0.25, f"{what}: error at most {ratio.max():.3f} of the bound"
    return float(ratio.max())


def check_fp32(out, ref, what):
    """A parameter gradient: fp32, not rounded to S: |out - ref| <= e32."""
    assert out.dtype == np.float32, f"{what}: dtype {out.dtype}"
    err = np.abs(f64(out) - ref.v)
    assert np.all(err <= ref.e + 1e-300), (f"{what}: |error| {err.max():.3g} exceeds the fp32 "
                                           f"bound {ref.e[np.argmax(err - ref.e)]:.3g}")


B, T, C, H, V = 2, 7, 24, 3, 40


@pytest.fixture(params=LOW)
def precision(request):
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng()           # fresh inputs every run (DESIGN: "draw fresh")


# ------------------------------------------------------------------------------ 1. rounding
FORMATS = {"bf16": (8, 7), "fp16": (5, 10)}          # exponent bits, fraction bits


def decode_all(precision):
    """The float64 value of every 16-bit pattern, decoded from the format's definition."""
    eb, mb = FORMATS[precision]
    bias = 2 ** (eb - 1) - 1
    bits = np.arange(2 ** 16, dtype=np.int64)
    sign, e, m = bits >> 15, (bits >> mb) & (2 ** eb - 1), bits & (2 ** mb - 1)
    normal = np.ldexp(1.0 + m / 2.0 ** mb, (e - bias).astype(np.int32))
    sub = np.ldexp(m / 2.0 ** mb, 1 - bias)
    val = np.where(e == 0, sub, normal)
    val = np.where(e == 2 ** eb - 1, np.where(m == 0, np.inf, np.nan), val)
    return np.where(sign == 1, -val, val)


def oracle_bits(x, precision):
    """Round to nearest, ties to the even pattern, of float64 values x: the 16-bit patterns.
    Past the largest finite value the next pattern up is Inf (IEEE 754 overflow)."""
    eb, mb = FORMATS[precision]
    vals = decode_all(precision)
    inf_pattern = (2 ** eb - 1) << mb
    pos = vals[:inf_pattern]                              # +0 .. the largest finite, increasing
    emax = 2 ** (eb - 1) - 1
    ladder = np.append(pos, 2.0 ** (emax + 1))            # the virtual next value is Inf's
    a = np.abs(x)
    i = np.clip(np.searchsorted(ladder, a, side="right") - 1, 0, len(ladder) - 2)
    lo, hi = ladder[i], ladder[i + 1]
    pick = np.where(a - lo < hi - a, i, np.where(a - lo > hi - a, i + 1,
                                                 np.where(i % 2 == 0, i, i + 1)))
    pick = np.where(a >= ladder[-1], inf_pattern, pick)
    bits = pick | (np.signbit(x).astype(np.int64) << 15)
    return np.where(np.isnan(x), -1, bits)


def hard_cases(precision, rng, n=4000):
    """float32 values where rounding is hard: exact halfway points between neighbours
    (normal and subnormal), one float32 ulp either side of them, around the largest finite
    value and the overflow threshold, fp32 subnormals, signed zeros, Inf, NaN, and random
    values across the exponent range."""
    vals = decode_all(precision)
    eb, mb = FORMATS[precision]
    finite = np.arange((2 ** eb - 1) << mb)
    p = rng.choice(finite[:-1], n)
    mid = ((vals[p] + vals[p + 1]) / 2).astype(np.float32)        # exact in float32
    sub = np.arange(0, 2 ** mb - 1)
    mid_sub = ((vals[sub] + vals[sub + 1]) / 2).astype(np.float32)
    top = vals[finite[-1]]
    edge = np.array([top, np.nextafter(np.float32(top), np.float32(np.inf)),
                     top + (2.0 ** (2 ** (eb - 1)) - top) / 2,         # the overflow threshold
                     0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3e38], dtype=np.float32)
    wide = (rng.standard_normal(n) * np.exp2(rng.integers(-30, 30, n))).astype(np.float32)
    x = np.concatenate([mid, mid_sub, np.nextafter(mid, np.float32(np.inf)),
                        np.nextafter(mid, np.float32(-np.inf)), edge, wide, -mid])
    return x


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_round_to_matches_the_nearest_even_oracle_bit_for_bit(precision, rng):
    x = hard_cases(precision, rng)
    got = to_storage(x, precision)
    assert got.dtype == storage_dtype(precision)
    want = oracle_bits(x.astype(np.float64), precision)
    bits = got.view(np.uint16).astype(np.int64)
    nan = want == -1
    assert np.isnan(f64(got)[nan]).all()
    bad = np.flatnonzero(bits[~nan] != want[~nan])
    assert bad.size == 0, [(float(x[~nan][i]), hex(bits[~nan][i]), hex(want[~nan][i]))
                           for i in bad[:5]]
    # the halfway points really are ties: half of them round down, half up
    assert 0 < np.mean(np.abs(f64(got[:4000])) < np.abs(x[:4000])) < 1
    # round_to: the same values, in the input's dtype; ml_dtypes / NumPy agree
    r = round_to(x, precision)
    assert r.dtype == np.float32
    np.testing.assert_array_equal(r, x.astype(storage_dtype(precision)).astype(np.float32))
    ref_type = ml_dtypes.bfloat16 if precision == "bf16" else np.float16
    np.testing.assert_array_equal(got.view(np.uint16), x.astype(ref_type).view(np.uint16))


def test_round_to_rounds_float64_once(precision, rng):
    """From float64 the rounding is direct: a value just above a halfway point rounds up even
    where rounding to float32 first would land on the tie and round to even (down)."""
    vals = decode_all(precision)
    eb, mb = FORMATS[precision]
    p = 2 * rng.integers(2 ** (mb + 2), ((2 ** eb - 2) << mb) // 2, 500)  # even patterns
    x = (vals[p] + vals[p + 1]) / 2 * (1 + 2.0 ** -40)
    got = round_to(x, precision)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, vals[oracle_bits(x, precision)])
    np.testing.assert_array_equal(got, vals[p + 1])                     # up: single rounding
    twice = round_to(x.astype(np.float32), precision)
    np.testing.assert_array_equal(twice, vals[p])                       # via fp32: the tie, even


# ------------------------------------------------------------------------------ 2. the ops
def test_every_op_has_its_roundings_written_down():
    from scratchgpt.reference import OPS
    assert set(ROUNDINGS) == set(OPS) - {"adamw"}       # adamw: fp32 masters, not wrapped
    be = get_backend("numpy", "bf16")
    assert be.adamw is get_backend("numpy").adamw


def test_embedding(precision, rng):
    be = get_backend("numpy", precision)
    idx = rng.integers(0, 5, (B, T))                    # few ids: buckets sum many rows
    wte, wpe = draw(rng, (V, C), precision), draw(rng, (T + 3, C), precision)
    out, cache = be.embedding.forward(idx, wte, wpe)
    # out = R(f(wte[idx]) + f(wpe[t])): one fp32 addition, then one rounding to S
    ref = Bound(f64(wte)[idx]) + Bound(f64(wpe)[:T])
    check_storage(out, ref, precision, "embedding out")
    dout = draw(rng, (B, T, C), precision)
    dwte, dwpe = be.embedding.backward(dout, cache)
    # dwte[v] = sum over positions holding v of f(dout), in fp32: gamma_{n_v - 1} sum |dout|
    ref_dwte = np.zeros((V, C))
    np.add.at(ref_dwte, idx.ravel(), f64(dout).reshape(-1, C))
    mag = np.zeros((V, C))
    np.add.at(mag, idx.ravel(), np.abs(f64(dout)).reshape(-1, C))
    counts = np.bincount(idx.ravel(), minlength=V)[:, None]
    check_fp32(dwte, Bound(ref_dwte, gamma(np.maximum(counts - 1, 0)) * mag), "dwte")
    ref_dwpe = np.zeros((T + 3, C))
    ref_dwpe[:T] = f64(dout).sum(0)
    e = np.zeros((T + 3, C))
    e[:T] = gamma(B - 1) * np.abs(f64(dout)).sum(0)
    check_fp32(dwpe, Bound(ref_dwpe, e), "dwpe")


def layernorm_bound(x, w, b, eps):
    """The reference's fp32 operations (reference/layernorm.py), replayed."""
    X = Bound(f64(x))
    mean = X.mean(-1, keepdims=True)
    xc = X - mean
    var = (xc * xc).mean(-1, keepdims=True)
    rstd = 1.0 / (var + eps).sqrt()
    return X, mean, rstd, xc * rstd * Bound(f64(w)) + Bound(f64(b))


def test_layernorm(precision, rng):
    be = get_backend("numpy", precision)
    x = draw(rng, (B, T, C), precision, scale=2.0, loc=3.0)     # an offset: the mean matters
    w, b = draw(rng, C, precision, 0.3, 1.0), draw(rng, C, precision, 0.5)
    out, cache = be.layernorm.forward(x, w, b, 1e-5)
    X, mean, rstd, ref = layernorm_bound(x, w, b, 1e-5)
    check_storage(out, ref, precision, "layernorm out")
    # saved: x and weight as they came (S, no copy); mean and rstd fp32, within their bounds
    assert cache[0] is x and cache[3] is w
    for name, got, want in (("mean", cache[1], mean), ("rstd", cache[2], rstd)):
        check_fp32(got, want, f"layernorm {name}")
    dout = draw(rng, (B, T, C), precision)
    dx, dw, db = be.layernorm.backward(dout, cache)
    D, W = Bound(f64(dout)), Bound(f64(w))
    xhat = (X - mean) * rstd                             # recomputed, as the reference does
    g = D * W
    ref_dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    check_storage(dx, ref_dx, precision, "layernorm dx")
    check_fp32(dw, (D * xhat).sum((0, 1)), "layernorm dweight")
    check_fp32(db, D.sum((0, 1)), "layernorm dbias")


def test_linear(precision, rng):
    be = get_backend("numpy", precision)
    n_in, n_out = C, 20
    x, W, b = draw(rng, (B, T, n_in), precision), draw(rng, (n_out, n_in), precision, 0.2), \
        draw(rng, n_out, precision, 0.1)
    y, cache = be.linear.forward(x, W, b)
    # y = R(f(x) f(W)^T + f(b)): gamma_IN |x||W|^T for the product, u32 for the bias add
    ref = Bound(f64(x).reshape(-1, n_in)).matmul(Bound(f64(W).T)) + Bound(f64(b))
    check_storage(y, ref.reshape(B, T, n_out), precision, "linear y")
    assert cache[0] is x and cache[1] is W                 # the S inputs themselves
    dy = draw(rng, (B, T, n_out), precision)
    dx, dW, db = be.linear.backward(dy, cache)
    D = Bound(f64(dy).reshape(-1, n_out))
    # dx = R(f(dy) f(W)): gamma_OUT |dy||W|;  dW = f(dy)^T f(x), db = sum f(dy): fp32, unrounded
    check_storage(dx, D.matmul(Bound(f64(W))).reshape(B, T, n_in), precision, "linear dx")
    check_fp32(dW, D.transpose().matmul(Bound(f64(x).reshape(-1, n_in))), "linear dW")
    check_fp32(db, D.sum(0), "linear db")


def test_linear_rounds_fp32_weights_to_storage_first(precision, rng):
    """An fp32 weight (the fine-tuning head's masters) is used as its rounding to S."""
    be = get_backend("numpy", precision)
    x = draw(rng, (B, T, C), precision)
    W = rng.standard_normal((5, C)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    y1, _ = be.linear.forward(x, W, b)
    y2, _ = be.linear.forward(x, to_storage(W, precision), to_storage(b, precision))
    np.testing.assert_array_equal(y1.view(np.uint16), y2.view(np.uint16))


def test_a_second_rounding_breaks_the_bound(precision, rng):
    """The control: a linear that rounds its product to S before adding the bias (two
    roundings) exceeds (*) for some element, so the op tests can see a wrong rounding."""
    x, W = draw(rng, (64, C), precision), draw(rng, (16, C), precision, 0.2)
    b = draw(rng, 16, precision, 0.5)
    prod = to_storage(f64(x).astype(np.float32) @ f64(W).astype(np.float32).T, precision)
    twice = to_storage(f64(prod).astype(np.float32) + f64(b).astype(np.float32), precision)
    ref = Bound(f64(x)).matmul(Bound(f64(W).T)) + Bound(f64(b))
    with pytest.raises(AssertionError, match="bound"):
        check_storage(twice, ref, precision, "double-rounded linear")


def gelu_tanh_bound(x):
    """reference/gelu.py's tanh form, operation by operation."""
    s, c = math.sqrt(2.0 / math.pi), 0.044715
    X = Bound(f64(x))
    u = X * X * X * c + X                               # u = x*x; u *= x; u *= c; u += x
    u = u * s
    gate = (u.tanh() + 1.0) * 0.5
    return X, gate, gate * X


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu(precision, approximate, rng):
    be = get_backend("numpy", precision)
    x = draw(rng, (B, T, 4 * C), precision, scale=2.5)
    out, cache = be.gelu.forward(x, approximate)
    s, c = math.sqrt(2.0 / math.pi), 0.044715
    if approximate == "tanh":
        X, gate, ref = gelu_tanh_bound(x)
    else:
        X = Bound(f64(x))
        ref = 0.5 * X * ((X / math.sqrt(2.0)).erf() + 1.0)
    check_storage(out, ref, precision, f"gelu {approximate} out")
    assert cache.stored[0] is x                          # nothing but x is kept (recomputed)
    dout = draw(rng, x.shape, precision)
    dx = be.gelu.backward(dout, cache)
    D = Bound(f64(dout))
    if approximate == "tanh":                            # the reference's backward, in order
        du = X * X * (6.0 * c * s) + 2.0 * s
        grad = ((1.0 - gate) * X * du + 1.0) * gate
    else:
        cdf = 0.5 * ((X / math.sqrt(2.0)).erf() + 1.0)
        pdf = (-0.5 * X * X).exp() / math.sqrt(2.0 * math.pi)
        grad = cdf + X * pdf
    check_storage(dx, grad * D, precision, f"gelu {approximate} dx")


def attention_bound(qkv, n_head, window, t0=None):
    """reference/attention.py's forward, replayed: S = q k^T * scale (+ mask), softmax, P v.
    With t0: its decode, the queries from position t0 on (S = q k^T / sqrt(D))."""
    Bq, Tq, C3 = qkv.shape
    D = C3 // (3 * n_head)
    parts = Bound(f64(qkv)).reshape(Bq, Tq, 3, n_head, D).transpose(2, 0, 3, 1, 4)
    q, k, v = parts[0], parts[1], parts[2]
    if t0 is None:
        ok = allowed_mask(Tq, window)
        s = q.matmul(k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(D))
    else:
        q = q[:, :, t0:]
        ok = allowed_mask(Tq - t0, window, t0=t0, S=Tq)
        s = q.matmul(k.transpose(0, 1, 3, 2)) / math.sqrt(D)
    s = Bound(np.where(ok, s.v, -np.inf), np.where(ok, s.e, 0.0))
    m = Bound(s.v.max(-1, keepdims=True), np.where(ok, s.e, 0).max(-1, keepdims=True))
    z = s - m
    z = Bound(np.where(ok, z.v, 0.0), np.where(ok, z.e, 0.0))
    ex = z.exp()
    ex = Bound(np.where(ok, ex.v, 0.0), np.where(ok, ex.e, 0.0))    # exp(-inf) = 0 exactly
    p = ex / ex.sum(-1, keepdims=True)
    p = Bound(np.where(ok, p.v, 0.0), np.where(ok, p.e, 0.0))
    y = p.matmul(v)
    return q, k, v, p, y.transpose(0, 2, 1, 3).reshape(Bq, -1, n_head * D), ok


@pytest.mark.parametrize("window", [None, 3])
def test_attention(precision, window, rng):
    be = get_backend("numpy", precision)
    qkv = draw(rng, (B, T, 3 * C), precision, scale=1.5)
    y, cache = be.attention.forward(qkv, H, window)
    q, k, v, p, ref, ok = attention_bound(qkv, H, window)
    check_storage(y, ref, precision, "attention y")
    # saved: q, k, v in S (exact copies of the input's parts), the probabilities in fp32
    S = storage_dtype(precision)
    assert [c.dtype for c in cache[:3]] == [S, S, S]
    np.testing.assert_array_equal(f64(cache[1]), k.v)
    check_fp32(cache[3], p, "attention probabilities")
    dy = draw(rng, (B, T, C), precision)
    dqkv = be.attention.backward(dy, cache)
    Dh = C // H
    dY = Bound(f64(dy)).reshape(B, T, H, Dh).transpose(0, 2, 1, 3)
    scale = 1.0 / math.sqrt(Dh)
    dv = p.transpose(0, 1, 3, 2).matmul(dY)                       # (5)
    dp = dY.matmul(v.transpose(0, 1, 3, 2))                       # (6)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True))               # (7)
    ds = Bound(np.where(ok, ds.v, 0.0), np.where(ok, ds.e, 0.0))  # P = 0 exactly off the mask
    dq = ds.matmul(k) * scale                                     # (8)
    dk = ds.transpose(0, 1, 3, 2).matmul(q) * scale               # (9)
    ref_d = Bound(np.stack([t.v.transpose(0, 2, 1, 3) for t in (dq, dk, dv)], axis=2),
                  np.stack([t.e.transpose(0, 2, 1, 3) for t in (dq, dk, dv)], axis=2))
    check_storage(dqkv, ref_d.reshape(B, T, 3 * C), precision, "attention dqkv")


def test_attention_decode(precision, rng):
    """Generation's attention over the S KV cache: the forward's formula and roundings."""
    be = get_backend("numpy", precision)
    qkv = draw(rng, (B, T, 3 * C), precision, scale=1.5)
    qs, ks, vs = (be.attention.split_heads(qkv, H))
    t0 = T - 2
    y = be.attention.decode(np.ascontiguousarray(qs[:, :, t0:]), ks, vs, t0)
    ref = attention_bound(qkv, H, None, t0=t0)[4]
    check_storage(y, ref, precision, "attention decode y", tight=False)


def xent_bound(logits, targets):
    """reference/softmax_xent.py's forward, replayed (rows with target -1 are not counted)."""
    z = Bound(f64(logits).reshape(-1, logits.shape[-1]))
    y = targets.reshape(-1)
    keep = y != -1
    m = z.max(-1, keepdims=True)
    lse = m.reshape(-1) + (z - m).exp().sum(-1).log()
    picked = z.v[np.arange(len(y)), np.where(keep, y, 0)]
    nll = lse - Bound(picked)
    nll = Bound(np.where(keep, nll.v, 0.0), np.where(keep, nll.e, 0.0))
    n = int(keep.sum())
    return z, lse, keep, n, nll.sum(0) / float(n)


@pytest.mark.parametrize("dloss", [1.0, 2.0 ** 16])
def test_softmax_xent(precision, dloss, rng):
    be = get_backend("numpy", precision)
    logits = draw(rng, (B, T, V), precision, scale=3.0)
    targets = rng.integers(0, V, (B, T))
    targets[0, :2] = -1
    loss, cache = be.softmax_xent.forward(logits, targets)
    z, lse, keep, n, ref = xent_bound(logits, targets)
    # the loss stays fp32 (a NumPy float32 scalar), not rounded to S
    assert isinstance(loss, np.float32)
    check_fp32(np.asarray(loss), ref, "loss")
    assert cache[0] is logits
    check_fp32(cache[1], lse, "log-sum-exp")
    dz = be.softmax_xent.backward(dloss, cache)
    # dz = R(dloss (exp(z - lse) - onehot) / N) with the saved (fp32) lse
    p = (z - lse.reshape(-1, 1)).exp()
    rows = np.arange(len(keep))
    y = np.where(keep, targets.reshape(-1), 0)
    onehot = np.zeros_like(p.v)
    onehot[rows, y] = 1.0
    p = p - Bound(onehot)                     # subtracting 0 is exact: the bound is loose there
    ref_dz = p * Bound.const(dloss / n)
    ref_dz = Bound(np.where(keep[:, None], ref_dz.v, 0.0), np.where(keep[:, None], ref_dz.e, 0))
    check_storage(dz, ref_dz.reshape(B, T, V), precision, "dlogits")


def test_dropout(precision, rng):
    be = get_backend("numpy", precision)
    x = draw(rng, (B, T, C), precision)
    out, cache = be.dropout.forward(x, 0.3, seed=5, stream=9)
    keep = keep_mask(x.shape, 0.3, 5, 9)
    np.testing.assert_array_equal(cache[0], keep)         # the reference's mask, bit for bit
    # out = R(f(x) keep scale), scale = fp32(1 / (1 - p)): one product
    ref = Bound(f64(x) * keep) * (1.0 / (1.0 - 0.3))
    check_storage(out, ref, precision, "dropout out")
    dout = draw(rng, x.shape, precision)
    check_storage(be.dropout.backward(dout, cache), Bound(f64(dout) * keep) * (1.0 / (1.0 - 0.3)),
                  precision, "dropout dx")


def test_residual(precision, rng):
    be = get_backend("numpy", precision)
    a, b = draw(rng, (B, T, C), precision), draw(rng, (B, T, C), precision)
    out, _ = be.residual.forward(a, b)
    check_storage(out, Bound(f64(a)) + Bound(f64(b)), precision, "residual out")
    da, db = be.residual.backward(out, None)
    assert da is out and db is out                       # passed on, not rounded again
    # fp32 operands (the tied embedding's two parameter gradients) are added in fp32
    g1, g2 = (rng.standard_normal((V, C)).astype(np.float32) for _ in range(2))
    s, _ = be.residual.forward(g1, g2)
    assert s.dtype == np.float32
    np.testing.assert_array_equal(s, g1 + g2)


def test_kernel_backends_widen_only_the_ops_without_16bit_kernels(monkeypatch):
    """A compiled op whose wrapper stores 16-bit types runs as it is; one that does not (here:
    linear, made so for the test) runs its fp32 kernel on widened inputs, said once in a
    KernelWideningWarning and in Backend.widened, with the contract's roundings: y = R(fp32 y)."""
    from scratchgpt.kernels import REGISTRY
    from scratchgpt.precision import KernelWideningWarning, native_16bit
    monkeypatch.setattr(REGISTRY["linear"], "STORES_16BIT", False)
    for p in LOW:
        with pytest.warns(KernelWideningWarning, match=r"no \w+ kernel yet for .*linear"):
            be = get_backend("host", p)
        assert "linear" in be.widened and not any(native_16bit(be.ops[op]) for op in be.widened)
        assert all(native_16bit(be.ops[op]) for op in ROUNDINGS if op not in be.widened)
        rng = np.random.default_rng(3)
        x = to_storage(rng.standard_normal((5, 24)).astype(np.float32), p)
        w = to_storage(0.2 * rng.standard_normal((16, 24)).astype(np.float32), p)
        y, cache = be.linear.forward(x, w)
        fp32 = get_backend("host").linear.forward(x.astype(np.float32), w.astype(np.float32))[0]
        assert y.dtype == storage_dtype(p)
        np.testing.assert_array_equal(y.view(np.uint16), to_storage(fp32, p).view(np.uint16))
        dx, dw, _ = be.linear.backward(y, cache)
        assert dx.dtype == storage_dtype(p) and dw.dtype == np.float32      # dW stays fp32


# ------------------------------------------------------------------------------ 3. the model
def test_model_api():
    cfg = GPTConfig.preset("nano")
    m = GPT(cfg, precision="bf16")                    # masters float32 by default
    assert m.dtype == np.float32 and m.act_dtype == storage_dtype("bf16")
    assert all(v.dtype == np.float32 for v in m.params.values())
    assert all(v.dtype == storage_dtype("bf16") for v in m.params_lp.values())
    for k in m.params:
        np.testing.assert_array_equal(f64(m.params_lp[k]), round_to(m.params[k], "bf16"))
    assert GPT(cfg).dtype == np.float64                 # fp32 precision: dtype as always
    m32 = GPT(cfg, dtype="float32")
    assert m32.params_lp is m32.params                # fp32: no copy
    with pytest.raises(ValueError, match="float32 master weights"):
        GPT(cfg, dtype="float64", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        GPT(cfg, precision="fp8")
    # load_params refreshes the working copy
    new = {k: v + np.float32(0.5) for k, v in m.params.items()}
    m.load_params(new)
    np.testing.assert_array_equal(f64(m.params_lp["wpe.weight"]),
                                  round_to(new["wpe.weight"], "bf16"))


def path_roundings(cfg):
    """Roundings to S on the longest path from the ids to the logits: the embedding, ten per
    block (two layer norms, four linears, attention, GELU, two residual adds), the final layer
    norm and the output projection."""
    return 1 + 10 * cfg.n_layer + 2


@pytest.mark.parametrize("p", LOW)
def test_model_loss_and_gradients_follow_fp32(p):
    """bf16 / fp16 against the fp32 model from the same (fp32) weights and batch.

    Logits: each of the K roundings on the path from the ids to the logits adds at most u_S
    relative error to a value that later ops pass on with gain about 1 (layer norms rescale,
    the blocks start near the identity), so max |z_S - z| <= K u_S max |z|.
    Loss: the mean cross-entropy moves by at most 2 max_j |z_S - z_j| per row (lse and the
    picked logit are each 1-Lipschitz in the max norm), plus the fp32 loss's own error.
    Gradients: the backward adds as many roundings again (2K), so each parameter gradient's
    relative error in norm is at most 2K u_S by the same argument. fp16 runs with the loss
    scale 2^16 (unscaled after), as training does. The errors must also not be zero: the
    storage rounding is really in effect (> u_S / 16)."""
    cfg = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 64, (4, 16)), rng.integers(0, 64, (4, 16))
    ref = GPT(cfg, dtype="float32", seed=3)
    low = GPT(cfg, seed=3, precision=p)
    z32, l32 = ref.forward(idx, tgt)
    g32 = ref.backward()
    zS, lS = low.forward(idx, tgt)
    scale = 2.0 ** 16 if p == "fp16" else 1.0
    gS = low.backward(loss_weight=scale)
    u, K = UNIT_ROUNDOFF[p], path_roundings(cfg)
    dz = np.abs(f64(zS) - f64(z32))
    assert zS.dtype == storage_dtype(p) and isinstance(lS, np.float32)
    assert u / 16 < dz.max() / np.abs(f64(z32)).max() <= K * u
    own = xent_bound(zS, tgt)[-1].e + xent_bound(z32, tgt)[-1].e       # each loss's fp32 error
    assert abs(float(lS) - float(l32)) <= 2 * dz.reshape(-1, 64).max(-1).mean() + own
    for k in g32:
        assert gS[k].dtype == np.float32
        rel = np.linalg.norm(f64(gS[k]) / scale - f64(g32[k])) / np.linalg.norm(f64(g32[k]))
        assert rel <= 2 * K * u, (k, rel)
    worst = max(np.linalg.norm(f64(gS[k]) / scale - f64(g32[k])) / np.linalg.norm(f64(g32[k]))
                for k in g32)
    assert worst > u / 16


@pytest.mark.parametrize("p", LOW)
def test_cached_generation_matches_the_forward(p):
    """Generation with the S KV cache: each new token's logits against a whole forward of the
    same context (both round at the same places; the fp32 sums may differ in order)."""
    cfg = GPTConfig.preset("nano")
    m = GPT(cfg, seed=1, precision=p).eval()
    rng = np.random.default_rng(2)
    m.load_params({k: v + rng.normal(0, 0.3, v.shape).astype(np.float32)
                   for k, v in m.params.items()})
    out = m.generate(rng.integers(0, 32, (2, 3)), 6, temperature=0)
    kv = [[None, None] for _ in range(cfg.n_layer)]
    m._forward_cached(m._to_device(out[:, :3]), kv, 0)
    for t in range(3, out.shape[1]):
        cached = m._forward_cached(m._to_device(out[:, t:t + 1]), kv, t)
        full = m.forward(out[:, :t + 1])[0][:, -1]
        assert cached.dtype == storage_dtype(p)
        rel = np.abs(f64(cached) - f64(full)).max() / np.abs(f64(full)).max()
        assert rel <= path_roundings(cfg) * UNIT_ROUNDOFF[p]


# ------------------------------------------------------------------------------ loss scaling
def test_loss_scaler_grows_halves_and_counts():
    s = DynamicLossScaler(growth_interval=3)
    assert s.scale == 2.0 ** 16
    assert [s.update(True) for _ in range(3)] == [False] * 3
    assert s.scale == 2.0 ** 17 and s.good_steps == 0         # doubled after 3 good steps
    s.update(True)
    assert s.update(False) is True                           # skip
    assert s.scale == 2.0 ** 16 and s.skipped_steps == 1 and s.good_steps == 0
    state = s.state_dict()
    t = DynamicLossScaler()
    t.load_state_dict(json.loads(json.dumps(state)))
    assert t.state_dict() == state
    tiny = DynamicLossScaler(init_scale=2.0 ** -23, min_scale=2.0 ** -24)
    tiny.update(False)
    with pytest.raises(LossScaleUnderflow):
        tiny.update(False)


def nano_step_setup(precision, seed=0):
    cfg = GPTConfig.preset("nano")
    model = GPT(cfg, seed=seed, precision=precision)
    opt = AdamW(model.params, model.be, lr=1e-2)
    rng = np.random.default_rng(seed)
    batch = rng.integers(0, 32, (4, 16)), rng.integers(0, 32, (4, 16))
    return model, opt, MixedPrecision(model, opt, growth_interval=2), batch


def test_an_inf_gradient_skips_the_step_halves_the_scale_and_is_counted():
    model, opt, mp, (x, y) = nano_step_setup("fp16")
    before = {k: v.copy() for k, v in model.params.items()}
    lp_before = {k: v.copy() for k, v in model.params_lp.items()}
    model.forward(x, y)
    grads = mp.backward()
    grads["h.1.attn.c_attn.weight"][3, 2] = np.inf
    norm, skipped = mp.step(grads, lr=1e-2, max_grad_norm=1.0)
    assert skipped and norm is None
    assert mp.loss_scale == 2.0 ** 15 and mp.skipped_steps == 1
    assert opt.step_count == 0                                 # AdamW never ran
    for k in before:
        np.testing.assert_array_equal(model.params[k], before[k])
        np.testing.assert_array_equal(model.params_lp[k].view(np.uint16),
                                      lp_before[k].view(np.uint16))
        assert not opt.m[k].any()
    # two good steps: the weights move, the working copy follows, the scale doubles back
    for _ in range(2):
        model.forward(x, y)
        norm, skipped = mp.step(mp.backward(), lr=1e-2, max_grad_norm=1.0)
        assert not skipped and math.isfinite(norm)
    assert mp.loss_scale == 2.0 ** 16 and opt.step_count == 2
    for k in before:
        np.testing.assert_array_equal(f64(model.params_lp[k]), round_to(model.params[k], "fp16"))
    assert any(not np.array_equal(model.params[k], before[k]) for k in before)


def test_unscaling_gives_the_gradients_of_the_unscaled_loss():
    """Scaling by a power of two is exact unless a value under- or overflows: with the scale
    the fp16 gradients are those of loss_weight=1 up to the underflow the scale prevents."""
    model, opt, mp, (x, y) = nano_step_setup("fp16")
    model.forward(x, y)
    g = mp.backward()
    mp.scaler.unscale(g)
    ref = GPT(GPTConfig.preset("nano"), seed=0, dtype="float32")
    ref.forward(x, y)
    g32 = ref.backward()
    for k in g:
        rel = np.linalg.norm(f64(g[k]) - f64(g32[k])) / np.linalg.norm(f64(g32[k]))
        assert rel <= 2 * path_roundings(model.cfg) * UNIT_ROUNDOFF["fp16"], k


# ------------------------------------------------------------------------------ training


def nano_args(text_file, out, *extra):
    from scratchgpt.train import parse_args
    return parse_args(["--preset", "nano", "--data", str(text_file), "--tokenizer", "char",
                       "--out", str(out), "--batch-size", "4", "--lr", "1e-2",
                       "--warmup-steps", "2", "--eval-interval", "10", "--eval-iters", "2",
                       "--ckpt-interval", "3", "--no-progress", "--seed", "7", *extra])


def test_thirty_steps_lower_the_loss_in_every_precision(text_file, tmp_path):
    from scratchgpt.train import train
    runs = {p: train(nano_args(text_file, tmp_path / p, "--max-steps", "30", "--precision", p))
            for p in ("fp32", "bf16", "fp16")}
    for p, s in runs.items():
        assert s["precision"] == p
        assert s["final_val_loss"] < 0.8 * s["first_loss"], (p, s)
    # the same run up to the roundings: fp32 and bf16 / fp16 end close
    for p in LOW:
        assert abs(runs[p]["final_val_loss"] / runs["fp32"]["final_val_loss"] - 1) < 0.05
    assert runs["fp16"]["skipped_steps"] == 0 and runs["fp16"]["loss_scale"] == 2.0 ** 16
    rows = [json.loads(line) for line in open(tmp_path / "fp16" / "log.jsonl")]
    assert all(r["loss_scale"] == 2.0 ** 16 and r["skipped_steps"] == 0 for r in rows)
    assert "loss_scale" not in json.loads(open(tmp_path / "bf16" / "log.jsonl").readline())


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")     # bf16: clipping an inf
def test_an_injected_inf_is_skipped_in_fp16_and_stops_bf16(text_file, tmp_path, monkeypatch):
    from scratchgpt.train import TrainingDiverged, train
    real = GPT.backward
    calls = {"n": 0}

    def backward(self, *args, **kwargs):
        grads = real(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 4:
            grads["h.0.mlp.c_fc.weight"][0, 0] = np.inf
        return grads

    monkeypatch.setattr(GPT, "backward", backward)
    s = train(nano_args(text_file, tmp_path / "fp16", "--max-steps", "7", "--precision", "fp16",
                        "--loss-scale-interval", "2", "--json"))
    # steps 1-3 good (scale doubles after 2), step 4 skipped (halved), 5-7 good (doubles once)
    assert s["skipped_steps"] == 1 and s["loss_scale"] == 2.0 ** 17
    rows = [json.loads(line) for line in open(tmp_path / "fp16" / "log.jsonl")]
    assert [r["skipped"] for r in rows] == [False, False, False, True, False, False, False]
    assert [r["loss_scale"] for r in rows] == [2 ** 16, 2 ** 17, 2 ** 17, 2 ** 16, 2 ** 16,
                                               2 ** 17, 2 ** 17]
    assert rows[3]["grad_norm"] is None and rows[3]["skipped_steps"] == 1
    from scratchgpt.checkpoint import find_checkpoint, read_state
    state = read_state(find_checkpoint(tmp_path / "fp16"))
    assert state["precision"] == "fp16" and state["optimizer"]["step"] == 6
    assert state["loss_scaler"]["skipped_steps"] == 1
    calls["n"] = 0
    with pytest.raises(TrainingDiverged, match="step 4"):
        train(nano_args(text_file, tmp_path / "bf16", "--max-steps", "7", "--precision", "bf16"))


@pytest.mark.parametrize("p", LOW)
def test_resume_is_bit_identical(text_file, tmp_path, p):
    from safetensors.numpy import load_file

    from scratchgpt.checkpoint import find_checkpoint
    from scratchgpt.train import train
    extra = ["--precision", p, "--dropout", "0.1", "--grad-accum", "2", "--lr-decay-steps", "8",
             "--loss-scale-interval", "3"]
    train(nano_args(text_file, tmp_path / "once", "--max-steps", "8", *extra))
    train(nano_args(text_file, tmp_path / "split", "--max-steps", "4", *extra))
    s = train(nano_args(text_file, "unused", "--resume", str(tmp_path / "split"),
                        "--max-steps", "8"))
    assert s["steps_run"] == 4 and s["precision"] == p
    once, split = find_checkpoint(tmp_path / "once"), find_checkpoint(tmp_path / "split")
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(os.path.join(once, name)), load_file(os.path.join(split, name))
        assert set(a) == set(b)
        for k in a:
            assert a[k].dtype == np.float32                  # fp32 masters on disk
            assert np.array_equal(a[k], b[k]), (name, k)
    sa, sb = (json.load(open(os.path.join(d, "state.json"))) for d in (once, split))
    assert sa["precision"] == sb["precision"] == p
    assert sa.get("loss_scaler") == sb.get("loss_scaler")
    if p == "fp16":
        assert sa["loss_scaler"]["scale"] == 2.0 ** 18      # doubled at steps 3 and 6


def test_cli_precision_errors(text_file, tmp_path, capsys):
    argv = ["train", "--preset", "nano", "--data", text_file, "--tokenizer", "char",
            "--max-steps", "2", "--no-progress", "--out", str(tmp_path / "a")]
    assert main(argv[:-1] + [str(tmp_path / "h"), "--precision", "bf16", "--backend", "host",
                             "--json"]) == 0                      # the bf16 kernels
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["precision"] == "bf16"
    assert main(argv + ["--precision", "fp16", "--dtype", "float64", "--backend", "numpy"]) == 2
    assert "float32 master weights" in capsys.readouterr().err
    assert main(argv + ["--precision", "bf16", "--backend", "numpy"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "a"), "--precision", "fp16",
                 "--max-steps", "3", "--no-progress"]) == 2
    assert "differs from the run's precision bf16" in capsys.readouterr().err
    # sample in another precision than the run's: the masters load, the forward rounds
    for p in ("fp32", "fp16"):
        assert main(["sample", "--ckpt", str(tmp_path / "a"), "--prompt", "the ",
                     "--max-new-tokens", "5", "--seed", "0", "--precision", p,
                     "--backend", "numpy", "--json"]) == 0
        assert len(json.loads(capsys.readouterr().out)["samples"][0]) == 5
    assert main(["sample", "--ckpt", str(tmp_path / "a"), "--precision", "bf16", "--prompt",
                 "the ", "--max-new-tokens", "5", "--seed", "0", "--backend", "host"]) == 0


def test_finetune_in_bf16(tmp_path, capsys):
    from scratchgpt.checkpoint import save_checkpoint
    from scratchgpt.tokenizer import CharTokenizer
    words = ["abc", "bcd", "cde", "def", "efg", "fgh", "ghi", "hia"]
    lines = [f"{w} {w}\tclass_{i % 2}" for i, w in enumerate(words * 6)]
    (tmp_path / "toy.tsv").write_text("\n".join(lines) + "\n")
    tok = CharTokenizer.train("abcdefghi ")
    model = GPT(GPTConfig.preset("nano", vocab_size=tok.vocab_size), dtype="float32", seed=0)
    save_checkpoint(tmp_path / "base", 0, model, tokenizer=tok)
    for p in ("bf16", "fp16"):
        assert main(["finetune", "--data", str(tmp_path / "toy.tsv"), "--ckpt",
                     str(tmp_path / "base"), "--epochs", "2", "--batch-size", "8", "--lr",
                     "1e-2", "--out", str(tmp_path / f"ft-{p}"), "--no-progress", "--json",
                     "--precision", p]) == 0
        s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert s["precision"] == p and 0.0 <= s["accuracy"] <= 1.0
        assert s["skipped_steps"] == 0


def test_memory_estimate_counts_the_working_copy_and_2_byte_activations():
    from scratchgpt.memory import sampling_estimate, training_estimate
    cfg = GPTConfig.preset("mini")
    e32, e16 = training_estimate(cfg, 8, "numpy"), training_estimate(cfg, 8, "numpy",
                                                                      precision="bf16")
    n = cfg.num_params()
    assert e16.parts["working copy (2-byte)"] == 2 * n
    assert e16.parts["parameters"] == e32.parts["parameters"] == 4 * n
    assert e16.parts["activations"] < 0.6 * e32.parts["activations"]
    s32 = sampling_estimate(cfg, 64, 10, 50, "numpy")
    s16 = sampling_estimate(cfg, 64, 10, 50, "numpy", precision="fp16")
    assert s16.parts["KV cache"] * 2 == s32.parts["KV cache"]         # a 2-byte KV cache
    assert s16.parts["working copy (2-byte)"] == 2 * n


def test_memory_estimate_matches_the_traced_peak_in_bf16(tmp_path, monkeypatch):
    """tracemalloc's peak of real fp16 / bf16 commands (tests/test_memory.py's measurement)
    against the estimate: within 25 %, as for fp32. ml_dtypes is imported before measuring,
    as the libraries the command imports are (the estimate leaves them out)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import test_memory
    from test_memory import MINI_95, PROMPT, measured_peaks, within
    monkeypatch.setattr(test_memory, "MEASURE", test_memory.MEASURE.replace(
        "from scratchgpt.cli import main", "import ml_dtypes\nfrom scratchgpt.cli import main"))

    from scratchgpt.checkpoint import save_checkpoint
    from scratchgpt.data import write_shard
    from scratchgpt.memory import sampling_estimate, training_estimate
    from scratchgpt.tokenizer import CharTokenizer
    rng = np.random.default_rng(0)
    (tmp_path / "shards").mkdir()
    write_shard(tmp_path / "shards" / "train_000.bin", rng.integers(0, 512, 20_000))
    write_shard(tmp_path / "shards" / "val_000.bin", rng.integers(0, 512, 5_000))
    tok = CharTokenizer([chr(i) for i in range(32, 127)])
    save_checkpoint(tmp_path / "ckpt", 1, GPT(MINI_95, dtype="float32"), tokenizer=tok)
    cases = [(["train", "--batch-size", "8", "--backend", "numpy", "--precision", "fp16",
               "--preset", "mini", "--data", tmp_path / "shards", "--max-steps", "1",
               "--eval-iters", "1", "--no-progress", "--out", tmp_path / "run"],
              training_estimate(GPTConfig.preset("mini"), 8, "numpy", precision="fp16")),
             (["sample", "--num-samples", "64", "--max-new-tokens", "40", "--backend", "numpy",
               "--precision", "bf16", "--ckpt", tmp_path / "ckpt", "--prompt", PROMPT,
               "--seed", "0", "--json"],
              sampling_estimate(MINI_95, 64, len(PROMPT), 40, "numpy", precision="bf16"))]
    peaks = measured_peaks("tracemalloc", [argv for argv, _ in cases])
    for (_, est), peak in zip(cases, peaks):
        within(est.total, peak)


# ------------------------------------------------------------------------------ underflow
def load_underflow_script():
    spec = importlib.util.spec_from_file_location(
        "precision_underflow", os.path.join(ROOT, "benchmarks", "precision_underflow.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fp16_gradients_underflow_without_the_loss_scale():
    """A batch large enough that the loss gradient per logit, about 1 / (N V) = 2^-18, sits
    in fp16's subnormals: without scaling many activation gradients lose bits or flush to
    zero and the parameter gradients are off; with the scale 2^16 almost none do, and the
    gradients are as close to fp32's as the storage rounding allows. 2^32 overflows."""
    uf = load_underflow_script()
    cfg = GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=2, n_embd=32)
    params = GPT(cfg, dtype="float32", seed=0).params
    rng = np.random.default_rng(1)
    tok = rng.integers(0, 512, (16, 33))
    rows = uf.measure(cfg, params, tok[:, :-1], tok[:, 1:], [1.0, 2.0 ** 16, 2.0 ** 32])
    none, scaled, over = rows
    assert none["act_subnormal_pct"] > 30 and none["act_flushed_pct"] > 0.1
    assert scaled["act_subnormal_pct"] < 1 and scaled["act_flushed_pct"] < 0.01
    assert none["param_rel_error"] > 1.2 * scaled["param_rel_error"]
    assert scaled["param_rel_error"] <= 2 * path_roundings(cfg) * UNIT_ROUNDOFF["fp16"]
    assert over["act_overflow"] > 0 and not over["finite"]
    bf = uf.measure(cfg, params, tok[:, :-1], tok[:, 1:], [1.0], precision="bf16")[0]
    assert bf["act_flushed_pct"] == 0 and bf["act_subnormal_pct"] == 0   # fp32's range


@pytest.mark.parametrize("p", LOW)
def test_hugging_face_folder_round_trip_keeps_the_fp32_masters(p, tmp_path):
    """save_pretrained writes the fp32 masters; from_pretrained(precision=...) reads them back
    as masters and rounds its own working copy: the same logits as the model saved."""
    cfg = GPTConfig.preset("nano")
    m = GPT(cfg, seed=4, precision=p)
    m.save_pretrained(tmp_path)
    back = GPT.from_pretrained(tmp_path, precision=p)
    assert back.precision == p and back.dtype == np.float32
    for k in m.params:
        np.testing.assert_array_equal(back.params[k], m.params[k])
        assert back.params_lp[k].dtype == storage_dtype(p)
    idx = np.random.default_rng(0).integers(0, 32, (2, 16))
    a, b = m.eval().forward(idx)[0], back.eval().forward(idx)[0]
    np.testing.assert_array_equal(a.view(np.uint16), b.view(np.uint16))
    on_host = GPT.from_pretrained(tmp_path, backend="host", precision=p)   # the kernels too
    assert on_host.params_lp["wte.weight"].dtype == storage_dtype(p)
    np.testing.assert_array_equal(on_host.params["wte.weight"], m.params["wte.weight"])
