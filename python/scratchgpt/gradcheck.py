"""Central finite differences against the hand-written backward, per op and for the whole model.

For an op y = f(x1, x2, ...) we draw a random cotangent R and check the scalar
L = sum(R * y): its analytic gradients are exactly backward(R), and its numeric gradient
with respect to each input element is (L(x + h e_i) - L(x - h e_i)) / 2h (float64, h = 1e-5).
docs/gradients/reading_a_gradient_check.md explains the choices (h, float64, the measure).

Error measures, per input tensor, then the maximum over tensors:
    max_abs = max_i |analytic_i - numeric_i|
    max_rel = max_abs / max(max_i |analytic_i|, max_i |numeric_i|)
(a relative error against the tensor's scale, the analytic maximum taken over the whole
tensor even when only some entries are checked: elementwise ratios blow up where a gradient
is near zero, and say nothing there).

`--show` checks the derivation step by step: every marked statement `(n)` of the reference
(stepwise.Recorder) is printed, and each step of the backward is compared with the finite
differences of the quantity it is the derivative of (an intermediate, not only an input), so a
wrong step is found where it happens. The same comparison grades a student's file
(scratchgpt.exercise).

    scratchgpt gradcheck [OP ...] [--json]
    scratchgpt gradcheck OP --show [--backend host] [--plot DIR]
"""
import json
import math
import time
from dataclasses import dataclass, field

import numpy as np

from . import reference as ref
from .config import GPTConfig
from .errors import UsageError
from .model import GPT
from .stepwise import Recorder

H = 1e-5
OP_TOLERANCE = 1e-6
MODEL_TOLERANCE = 1e-5
# Central differences in float64 with h = 1e-5 carry ~1e-11 of noise on O(1) functions: a
# gradient that is itself that small has no meaningful relative error, so an absolute error
# below this floor passes too.
NOISE_FLOOR = 1e-10
KERNEL_TOLERANCE = 1e-5          # float32 kernel vs float64 reference, relative norm


def numeric_grad(f, x, h=H, indices=None):
    """Central differences of scalar f() with respect to array x (perturbed in place).
    indices: flat positions to check (all when None); the others are left NaN."""
    g = np.full(x.shape, np.nan)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size) if indices is None else indices:
        old = flat[i]
        flat[i] = old + h
        fp = f()
        flat[i] = old - h
        fm = f()
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * h)
    return g


def compare(analytic, numeric):
    """(max_abs, max_rel) over the entries where numeric was computed."""
    checked = ~np.isnan(numeric)
    analytic = np.asarray(analytic, dtype=np.float64)
    a, n = analytic[checked], numeric[checked]
    max_abs = float(np.max(np.abs(a - n))) if a.size else 0.0
    scale = max(float(np.max(np.abs(analytic))) if analytic.size else 0.0,
                float(np.max(np.abs(n))) if n.size else 0.0)
    return max_abs, (max_abs / scale if scale > 0 else max_abs)


def passes(max_abs, max_rel, tol=OP_TOLERANCE):
    return max_rel < tol or max_abs < NOISE_FLOOR


def check_function(forward, backward, inputs, rng):
    """Check an op given forward(*inputs) -> (y, cache) and backward(R, cache) -> grads (one
    per differentiable input, in order). Returns per-input (max_abs, max_rel)."""
    y, cache = forward(*inputs)
    R = rng.standard_normal(np.shape(y))
    grads = backward(R, cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    results = {}
    for k, (x, g) in enumerate(zip(inputs, grads)):
        num = numeric_grad(lambda: float(np.sum(R * forward(*inputs)[0])), x)
        results[k] = compare(g, num)
    return results


# ------------------------------------------------------------------------------ the op cases
@dataclass
class Case:
    """One op on one fixed example. forward(module, *inputs, xp=np) -> (y, cache) calls the op's
    module (the reference, a kernel backend's op, or a student's file; xp makes the example's
    constant arrays, token ids and targets, the backend's); steps maps each backward marker
    to (what it is the derivative of, fn(Context) -> its finite-difference value)."""
    name: str
    op: str
    forward: object
    inputs: list
    input_names: list
    steps: dict = field(default_factory=dict)
    cotangent: object = None             # R, drawn once the output shape is known
    functions: tuple = ("forward", "backward")   # where the marked steps are (traced)

    def run(self, module):
        """forward then backward of `module` on copies of the inputs -> (y, grads tuple)."""
        y, cache = self.forward(module, *[np.copy(x) for x in self.inputs])
        grads = module.backward(self.cotangent, cache)
        return y, (grads if isinstance(grads, tuple) else (grads,))


class Context:
    """What a step's finite-difference function needs: the inputs, R, the reference forward."""

    def __init__(self, case):
        self.case, self.R, self._input_grads = case, case.cotangent, {}
        self.inputs = [np.copy(x) for x in case.inputs]

    def L(self, y):
        return float(np.sum(self.R * y))

    def fd(self, f, x):
        return numeric_grad(f, x)

    def input_grad(self, k):
        """dL/d(input k) by central differences through the reference forward."""
        if k not in self._input_grads:
            fwd = self.case.forward
            self._input_grads[k] = numeric_grad(
                lambda: self.L(fwd(ref_module(self.case.op), *self.inputs)[0]), self.inputs[k])
        return self._input_grads[k]


def ref_module(op):
    return getattr(ref, op)


DEFAULT_DIMS = dict(B=2, T=5, C=7, V=11, attn_C=6)   # attn_C: attention's channels (1, 2, 3 heads)
TINY_DIMS = dict(B=1, T=3, C=4, V=5, attn_C=6)         # small enough to print every array


def _layernorm_xhat(x, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(axis=-1, keepdims=True) + eps)


def _gelu_u(x):
    return ref.gelu.SQRT_2_OVER_PI * (x + ref.gelu.GELU_COEF * x ** 3)


def _phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x):
    return 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _attention_steps(n_head, window, B, T, D):
    """Finite differences for attention's backward steps: (5) dV, (8) dQ and (9) dK are parts of
    dqkv; (6) dP and (7) dS are derivatives with respect to intermediates of the forward."""
    def packed(c, part, heads_first):
        g = c.input_grad(0).reshape(B, T, 3, n_head, D)[:, :, part]
        return g.transpose(0, 2, 1, 3) if heads_first else g

    def forward_parts(c):
        q, k, v = ref.attention.split_heads(c.inputs[0], n_head)
        mask = np.where(ref.attention.allowed_mask(T, window), 0.0, -np.inf)
        S = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)
        return S, mask, v

    def dP(c):
        S, mask, v = forward_parts(c)
        P = ref.attention.softmax(S + mask)
        return c.fd(lambda: c.L(ref.attention.merge_heads(P @ v)), P)

    def dS(c):
        S, mask, v = forward_parts(c)
        return c.fd(lambda: c.L(ref.attention.merge_heads(ref.attention.softmax(S + mask) @ v)), S)

    return {5: ("dL/dV, the V part of qkv", lambda c: packed(c, 2, True)),
            6: ("dL/dP, P held as a free variable", dP),
            7: ("dL/dS, the scores (1) as a free variable", dS),
            8: ("dL/dQ, the Q part of qkv", lambda c: packed(c, 0, False)),
            9: ("dL/dK, the K part of qkv", lambda c: packed(c, 1, False))}


def op_cases(dims=None, seed=0):
    """Every op case on random inputs of the given sizes (DEFAULT_DIMS: small and odd)."""
    d = {**DEFAULT_DIMS, **(dims or {})}
    B, T, C, V, Ca = d["B"], d["T"], d["C"], d["V"], d["attn_C"]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, T, C))
    idx = rng.integers(0, V, size=(B, T))
    idx.reshape(-1)[:min(3, idx.size)] = idx.reshape(-1)[-1]   # repeated ids must accumulate
    tgt = rng.integers(0, V, size=(B, T))
    tgt.reshape(-1)[-2 if tgt.size > 1 else 0] = -1             # an ignored target
    grad = lambda k: (lambda c: c.input_grad(k))                # noqa: E731
    cases = [
        Case("embedding", "embedding", lambda m, wte, wpe, xp=np: m.forward(xp.asarray(idx), wte, wpe),
             [rng.standard_normal((V, C)), rng.standard_normal((T + 2, C))], ["wte", "wpe"],
             {2: ("dL/dwte", grad(0)), 3: ("dL/dwpe", grad(1))}),
        Case("layernorm", "layernorm", lambda m, *a, xp=np: m.forward(*a),
             [x.copy(), rng.standard_normal(C), rng.standard_normal(C)], ["x", "weight", "bias"],
             {5: ("dL/dweight", grad(1)), 6: ("dL/dbias", grad(2)),
              7: ("dL/dxhat, xhat held as a free variable",
                  lambda c: (lambda xh: c.fd(lambda: c.L(xh * c.inputs[1] + c.inputs[2]), xh))(
                      _layernorm_xhat(c.inputs[0]))),
              8: ("dL/dx", grad(0))}),
        Case("linear", "linear", lambda m, *a, xp=np: m.forward(*a),
             [x.copy(), rng.standard_normal((4, C)), rng.standard_normal(4)], ["x", "weight", "bias"],
             {3: ("dL/dx", grad(0)), 4: ("dL/dweight", grad(1)), 5: ("dL/dbias", grad(2))}),
        Case("gelu[tanh]", "gelu", lambda m, a, xp=np: m.forward(a, "tanh"), [2 * x], ["x"],
             {3: ("d/dx of sum 2u(x), u = s (x + c x^3)",
                  lambda c: c.fd(lambda: float(np.sum(2 * _gelu_u(c.inputs[0]))), c.inputs[0])),
              4: ("d/dx of sum gelu(x): y'",
                  lambda c: c.fd(lambda: float(np.sum(ref.gelu.forward(c.inputs[0], "tanh")[0])),
                                 c.inputs[0]))}),
        Case("gelu[erf]", "gelu", lambda m, a, xp=np: m.forward(a, "none"), [2 * x], ["x"],
             {5: ("d/dx of sum (x Phi(x) + phi(x)), which is Phi",
                  lambda c: c.fd(lambda: float(np.sum(c.inputs[0] * _Phi(c.inputs[0])
                                                      + _phi(c.inputs[0]))), c.inputs[0])),
              6: ("d/dx of sum Phi(x): phi",
                  lambda c: c.fd(lambda: float(np.sum(_Phi(c.inputs[0]))), c.inputs[0])),
              7: ("d/dx of sum gelu(x): y'",
                  lambda c: c.fd(lambda: float(np.sum(ref.gelu.forward(c.inputs[0], "none")[0])),
                                 c.inputs[0]))}),
        Case("softmax_xent", "softmax_xent", lambda m, z, xp=np: m.forward(z, xp.asarray(tgt)),
             [3 * rng.standard_normal((B, T, V))], ["logits"], _softmax_xent_steps(tgt, V)),
        Case("dropout", "dropout", lambda m, a, xp=np: m.forward(a, 0.3, seed=1234, stream=5),
             [x.copy()], ["x"], {3: ("dL/dx", grad(0))}),
        Case("residual", "residual", lambda m, *a, xp=np: m.forward(*a),
             [x.copy(), rng.standard_normal(x.shape)], ["a", "b"],
             {2: ("dL/da", grad(0)), 3: ("dL/db", grad(1))}),
        # a whole sequence through the recurrence, the initial state included (H = 4)
        Case("gru", "gru", lambda m, *a, xp=np: m.forward(*a),
             [x.copy(), rng.standard_normal((B, 4)), 0.5 * rng.standard_normal((12, C)),
              0.5 * rng.standard_normal((12, 4)), rng.standard_normal(12), rng.standard_normal(12)],
             ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"],
             {15: ("dL/dw_hh", grad(3)), 16: ("dL/db_hh", grad(5))},
             # the time loop's steps (1)-(16) are in the recurrence's own functions; a step
             # inside the loop shows its value at the last time step it ran
             functions=("forward", "backward", "recurrence_forward", "recurrence_backward")),
    ]
    qkv = rng.standard_normal((B, T, 3 * Ca))
    for label, n_head, window in (("causal, 1 head", 1, None), ("causal, 3 heads", 3, None),
                                  ("banded w=2", 2, 2), ("banded w=1", 3, 1), ("banded w>=T", 2, T)):
        cases.append(Case(f"attention[{label}]", "attention",
                          lambda m, q, n=n_head, w=window, xp=np: m.forward(q, n, w), [qkv.copy()], ["qkv"],
                          _attention_steps(n_head, window, B, T, Ca // n_head)))
    for case in cases:
        y, _ = case.forward(ref_module(case.op), *[np.copy(a) for a in case.inputs])
        case.cotangent = rng.standard_normal(np.shape(y))
    cases.append(AdamWCase(rng))
    return cases


def _softmax_xent_steps(tgt, V):
    yc = np.where(tgt.reshape(-1) == -1, 0, tgt.reshape(-1))

    def lse(z):
        m = z.max(axis=-1, keepdims=True)
        return (m + np.log(np.exp(z - m).sum(axis=-1, keepdims=True)))[:, 0]

    def rows(c):
        return c.inputs[0].reshape(-1, V)        # a view: perturbing it perturbs the logits
    return {
        5: ("d/dz of sum_n lse_n: the softmax p",
            lambda c: (lambda z: c.fd(lambda: float(lse(z).sum()), z))(rows(c))),
        6: ("d/dz of sum_n (lse_n - z[n, y_n]): p - onehot",
            lambda c: (lambda z: c.fd(lambda: float((lse(z) - z[np.arange(len(z)), yc]).sum()), z))(
                rows(c))),
        7: ("dL/dz", lambda c: c.input_grad(0).reshape(-1, V)),
    }


class AdamWCase(Case):
    """AdamW is an optimizer step, not a function with a backward: each marker is compared with
    an independent formula instead, after STEPS updates: (1) m and (2) v with their unrolled
    sums (1-b) sum_s b^(t-s) g_s, (3) and (4) with the textbook update
    theta - lr (wd theta + m_hat / (sqrt(v_hat) + eps)) written with the bias-corrected m_hat,
    v_hat (docs/gradients/adamw.md)."""
    STEPS, LR, BETAS, EPS, WD = 3, 0.1, (0.9, 0.95), 1e-8, 0.1

    def __init__(self, rng):
        super().__init__("adamw[3 steps, decay]", "adamw", None,
                         [rng.standard_normal((3, 4))], ["param"])
        self.grads = [rng.standard_normal((3, 4)) for _ in range(self.STEPS)]
        self.steps = {n: (what, None) for n, what in (
            (1, "m: the unrolled sum (1-b1) sum_s b1^(t-s) g_s"),
            (2, "v: the unrolled sum (1-b2) sum_s b2^(t-s) g_s^2"),
            (3, "theta (1 - lr wd), decoupled decay"),
            (4, "theta - lr (wd theta + m_hat / (sqrt(v_hat) + eps))"))}

    def run(self, module):
        p = np.copy(self.inputs[0])
        m, v = np.zeros_like(p), np.zeros_like(p)
        for t, g in enumerate(self.grads, start=1):
            module.update(p, np.copy(g), m, v, t, self.LR, *self.BETAS, self.EPS, self.WD)
        return p, (p,)

    def expected(self):
        """marker -> value at the last step, and the final parameter, by the textbook formulas."""
        b1, b2 = self.BETAS
        theta = np.copy(self.inputs[0])
        for s in range(1, self.STEPS + 1):
            m = (1 - b1) * sum(b1 ** (s - r) * self.grads[r - 1] for r in range(1, s + 1))
            v = (1 - b2) * sum(b2 ** (s - r) * self.grads[r - 1] ** 2 for r in range(1, s + 1))
            decayed = theta * (1 - self.LR * self.WD)
            m_hat, v_hat = m / (1 - b1 ** s), v / (1 - b2 ** s)
            theta = theta - self.LR * (self.WD * theta + m_hat / (np.sqrt(v_hat) + self.EPS))
        return {1: m, 2: v, 3: decayed, 4: theta}, theta


# ----------------------------------------------------------------------------- evaluation
@dataclass
class Row:
    """One compared quantity: a step (marker) or a result (an input's gradient)."""
    label: str
    marker: int | None
    phase: str                    # "forward", "backward" or "result"
    value: object
    expected: object = None
    what: str = ""                # what the expected value is
    source: str = ""
    status: str = "shown"         # shown, exact, close, WRONG, missing, not filled in
    max_abs: float = float("nan")
    max_rel: float = float("nan")


def grade(value, expected, tol=OP_TOLERANCE):
    """(status, max_abs, max_rel) of a value against its expected array."""
    if value is Ellipsis:
        return "not filled in", math.nan, math.nan
    if value is None:
        return "missing", math.nan, math.nan
    try:
        value = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return f"WRONG (not an array: {type(value).__name__})", math.nan, math.nan
    if value.shape != np.shape(expected):
        return f"WRONG (shape {value.shape}, expected {np.shape(expected)})", math.nan, math.nan
    if np.isnan(value).any():
        return "WRONG (NaN)", math.nan, math.nan
    expected = np.asarray(expected, dtype=np.float64)
    infinite = np.isinf(value) | np.isinf(expected)          # masked scores are -inf
    if (value[infinite] != expected[infinite]).any():
        return "WRONG (an infinity where the expected value differs)", math.inf, math.inf
    if infinite.any():
        value, expected = value[~infinite], expected[~infinite]
    max_abs, max_rel = compare(value, expected)
    if max_abs == 0.0:
        return "exact", 0.0, 0.0
    return ("close" if passes(max_abs, max_rel, tol) else "WRONG"), max_abs, max_rel


@dataclass
class Evaluation:
    case: Case
    rows: list
    error: str | None = None      # what the module raised, if it did
    filename: str | None = None   # the module's file when it is not the reference

    def to_json(self):
        num = lambda v: None if v is None or math.isnan(v) else v          # noqa: E731
        wrong = self.first_wrong
        return {"case": self.case.name, "ok": self.ok, "error": self.error,
                "first_wrong": None if wrong is None else
                {"marker": wrong.marker, "name": wrong.label, "status": wrong.status},
                "steps": [{"marker": r.marker, "name": r.label, "phase": r.phase,
                           "status": r.status, "compared_with": r.what or None,
                           "max_abs": num(r.max_abs), "max_rel": num(r.max_rel)}
                          for r in self.rows]}

    @property
    def first_wrong(self):
        for row in self.rows:
            if row.status not in ("shown", "exact", "close"):
                return row
        return None

    @property
    def ok(self):
        return self.error is None and self.first_wrong is None

    def per_input(self):
        """input name -> (max_abs, max_rel) of its returned gradient."""
        return {(r.label[1:] if r.label.startswith("d") else r.label): (r.max_abs, r.max_rel)
                for r in self.rows if r.phase == "result"}


def evaluate(case, module=None, source=None, reference_forward=None):
    """Run `case` on `module` (default: the reference) recording every marked step, and compare
    each backward step and each returned gradient with its finite-difference value.
    reference_forward: marker -> value of the reference's forward steps, to grade a student's
    forward steps against (None: forward steps are shown, not graded)."""
    module = ref_module(case.op) if module is None else module
    functions = ("update",) if isinstance(case, AdamWCase) else case.functions
    recorder = Recorder(module, source, functions)
    error, grads = None, None
    try:
        with recorder:
            _, grads = case.run(module)
    except Exception as e:        # a student's code may raise anything: report it, do not crash
        error = f"{type(e).__name__}: {e}"
    rows = []
    if isinstance(case, AdamWCase):
        expected, final = case.expected()
        for n, step in sorted(recorder.steps.items()):
            row = Row(step.target or "return", n, "update", recorder.values.get(n),
                      expected.get(n), case.steps.get(n, ("", None))[0], step.source)
            row.status, row.max_abs, row.max_rel = grade(row.value, row.expected, 1e-12)
            rows.append(row)
        row = Row("param", None, "result", grads[0] if grads else None,
                  final, "the textbook update, step by step")
        row.status, row.max_abs, row.max_rel = grade(row.value, final, 1e-12)
        rows.append(row)
        return Evaluation(case, rows, error, None if source is None else str(module.__file__))
    ctx = Context(case)
    for n, step in sorted(recorder.steps.items()):
        value = recorder.values.get(n)
        if step.function.endswith("forward"):
            if n not in recorder.values:
                continue          # a branch this case does not take (e.g. gelu's other form)
            row = Row(step.target or "return", n, "forward", value, source=step.source)
            if reference_forward is not None and n in reference_forward:
                row.expected, row.what = reference_forward[n], "the reference's forward"
                row.status, row.max_abs, row.max_rel = grade(value, row.expected)
            rows.append(row)
            continue
        if n not in case.steps:
            if n in recorder.values:
                rows.append(Row(step.target or "return", n, "backward", value, source=step.source,
                                what="(no finite-difference check for this step)"))
            continue
        what, fd = case.steps[n]
        row = Row(step.target or "return", n, "backward", value, fd(ctx), what, step.source)
        if n not in recorder.values:
            row.status = "missing" if error is None else "not reached"
        else:
            row.status, row.max_abs, row.max_rel = grade(value, row.expected)
        rows.append(row)
    for n in sorted(set(case.steps) - set(recorder.steps)):
        rows.append(Row("?", n, "backward", None, None, case.steps[n][0],
                        status="missing (no statement carries this marker)"))
    for k, name in enumerate(case.input_names):
        g = grads[k] if grads is not None and k < len(grads) else None
        row = Row("d" + name, None, "result", g, ctx.input_grad(k), f"dL/d{name}")
        row.status, row.max_abs, row.max_rel = grade(g, row.expected)
        if g is None and error is not None:
            row.status = "not reached"
        rows.append(row)
    return Evaluation(case, rows, error, None if source is None else str(module.__file__))


def reference_forward_values(case):
    """marker -> value of the reference's forward steps on the case (to grade a student's)."""
    recorder = Recorder(ref_module(case.op), None,
                        ("update",) if isinstance(case, AdamWCase) else case.functions)
    with recorder:
        case.run(ref_module(case.op))
    return recorder.values


def check_ops(names=None, seed=0):
    """Check every op case (or those whose op name is in names). Returns {op: result}."""
    out = {}
    for case in op_cases(seed=seed):
        if names and case.op not in names:
            continue
        res = evaluate(case).per_input()
        entry = out.setdefault(case.op, {"max_abs": 0.0, "max_rel": 0.0, "ok": True, "cases": {}})
        entry["cases"][case.name] = {n: {"max_abs": a, "max_rel": r} for n, (a, r) in res.items()}
        entry["max_abs"] = max(entry["max_abs"], *(a for a, _ in res.values()))
        entry["max_rel"] = max(entry["max_rel"], *(r for _, r in res.values()))
        tol = 1e-12 if isinstance(case, AdamWCase) else OP_TOLERANCE
        entry["ok"] = entry["ok"] and all(passes(a, r, tol) for a, r in res.values())
    return out


MODEL_CASES = {
    "pre-LN, dense": dict(),
    "pre-LN, banded": dict(attn_pattern="banded", attn_window=3),
    "post-LN, dense": dict(ln_placement="post"),
    "post-LN, dense/banded, dropout": dict(ln_placement="post", attn_pattern=["dense", "banded"],
                                           attn_window=2, dropout=0.2),
}


def check_model(overrides, per_tensor=None, seed=0, B=2, T=7, model_class=GPT):
    """Finite differences of the nano model's loss with respect to every parameter
    (or per_tensor random entries of each). Returns {"max_abs", "max_rel", "params": {...}}.
    model_class: GPT, or a variant of it (the break-it pages' tied-embedding mistake)."""
    cfg = GPTConfig.preset("nano", **overrides)
    model = model_class(cfg, backend="numpy", dtype="float64", seed=seed)
    rng = np.random.default_rng(seed + 1)
    # LN weights and biases off their init so their gradients are generic
    for k, p in model.params.items():
        if p.ndim == 1:
            p += 0.1 * rng.standard_normal(p.shape)
    idx = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets = rng.integers(0, cfg.vocab_size, size=(B, T))
    targets[0, 1] = -1

    def loss():
        model.dropout_step = 0          # the same dropout masks in every evaluation
        return float(model.forward(idx, targets)[1])

    loss()
    grads = model.backward()
    result = {"max_abs": 0.0, "max_rel": 0.0, "params": {}}
    for name, p in model.params.items():
        pick = None if per_tensor is None or p.size <= per_tensor else rng.choice(p.size, per_tensor, replace=False)
        a, r = compare(grads[name], numeric_grad(loss, p, indices=pick))
        result["params"][name] = {"max_abs": a, "max_rel": r}
        result["max_abs"], result["max_rel"] = max(result["max_abs"], a), max(result["max_rel"], r)
    result["ok"] = result["max_rel"] < MODEL_TOLERANCE
    result["failing"] = [n for n, e in result["params"].items() if e["max_rel"] >= MODEL_TOLERANCE]
    return result


# ------------------------------------------------------------------------------- printing
def _array(a, indent):
    if a is None or a is Ellipsis:
        return " " * indent + ("..." if a is Ellipsis else "None")
    if np.isscalar(a) or np.ndim(a) == 0:
        return " " * indent + f"{float(a):.6g}"
    text = np.array2string(np.asarray(a, dtype=np.float64) if np.asarray(a).dtype != bool else
                           np.asarray(a), precision=5, suppress_small=True, max_line_width=100,
                           threshold=400)
    return "\n".join(" " * indent + line for line in text.splitlines())


def _shape(a):
    return "" if a is None or a is Ellipsis else "[" + ", ".join(map(str, np.shape(a))) + "]"


def format_row(row):
    head = f"  ({row.marker}) {row.label}" if row.marker is not None else f"  {row.label}"
    head += f" {_shape(row.value)}"
    lines = [head + (f"   {row.source}" if row.source and "\n" not in row.source
                     else "")]
    if row.source and "\n" in row.source:
        lines += ["      " + s.strip() for s in row.source.splitlines()]
    if row.status == "shown" and row.expected is None:
        if row.what:
            lines.append(f"      {row.what}")
        lines.append(_array(row.value, 6))
        return "\n".join(lines)
    diff = "" if math.isnan(row.max_abs) else f", max |diff| {row.max_abs:.2e}, rel {row.max_rel:.2e}"
    lines.append(f"      vs {row.what}: {row.status}{diff}")
    if row.phase == "result" and row.status in ("exact", "close"):
        return "\n".join(lines)       # the same array was printed at its step
    lines.append(_array(row.value, 8))
    if row.status not in ("exact", "close"):
        lines.append("      expected:")
        lines.append(_array(row.expected, 8))
        if row.status == "WRONG":       # the pattern of the difference often names the mistake
            lines.append("      difference (analytic - expected):")
            lines.append(_array(np.asarray(row.value, dtype=np.float64) - row.expected, 8))
    return "\n".join(lines)


def format_evaluation(ev, verbose=True):
    case = ev.case
    out = [f"== {case.name}  (docs/gradients/{case.op}.md, "
           f"{ev.filename or f'python/scratchgpt/reference/{case.op}.py'})"]
    if verbose:
        for name, x in zip(case.input_names, case.inputs):
            out.append(f"  input {name} {_shape(x)}")
            out.append(_array(x, 6))
        if case.cotangent is not None:
            out.append(f"  R = dL/dy {_shape(case.cotangent)}  (L = sum(R * y), R drawn at random)")
            out.append(_array(case.cotangent, 6))
    for phase, title in (("forward", "forward"), ("update", "update (the last of the steps)"),
                         ("backward", f"backward: each step against central differences (h = {H:g}, "
                                      "float64)"),
                         ("result", "returned gradients against central differences")):
        rows = [r for r in ev.rows if r.phase == phase]
        if rows:
            out.append(f" {title}")
            out += [format_row(r) if verbose else
                    f"  {('(%d) ' % r.marker) if r.marker else ''}{r.label}: {r.status}"
                    + ("" if math.isnan(r.max_rel) or r.status == "exact" else f" (rel {r.max_rel:.1e})")
                    for r in rows]
    if ev.error:
        out.append(f"  the module raised {ev.error}")
    wrong = ev.first_wrong
    out.append(f" first wrong step: {_describe(wrong)}" if wrong or ev.error else " every step ok")
    return "\n".join(out)


def _describe(row):
    if row is None:
        return "none recorded before the error"
    where = f"({row.marker}) {row.label}" if row.marker is not None else row.label
    return f"{where}: {row.status}"


def format_summary(evaluations):
    lines = [f"{'case':<30}{'gradient':<10}{'max abs err':>13}{'max rel err':>13}  result"]
    for ev in evaluations:
        for r in ev.rows:
            if r.phase == "result":
                lines.append(f"{ev.case.name:<30}{r.label:<10}{r.max_abs:>13.2e}{r.max_rel:>13.2e}  "
                             f"{'ok' if r.status in ('exact', 'close') else 'FAIL: ' + r.status}")
        if ev.first_wrong is not None or ev.error:
            lines.append(f"{'':<30}first wrong step {_describe(ev.first_wrong)}")
    return "\n".join(lines)


# ------------------------------------------------------------------- kernels beside the reference
def kernel_comparison(case, backend):
    """Run the case's op on `backend`'s kernels in float32 and compare y and every gradient with
    the float64 reference: relative norm ||kernel - ref|| / ||ref||. Returns [(name, kernel,
    reference, rel)]."""
    be_op = getattr(backend, case.op)
    xp = backend.xp

    def dev(a):
        return xp.asarray(np.asarray(a, dtype=np.float32))
    if isinstance(case, AdamWCase):
        ref_p, _ = case.run(ref_module(case.op))
        p = dev(case.inputs[0])
        m, v = xp.zeros_like(p), xp.zeros_like(p)
        for t, g in enumerate(case.grads, start=1):
            be_op.update(p, dev(g), m, v, t, case.LR, *case.BETAS, case.EPS, case.WD)
        p = backend.asnumpy(p)
        return [("param", p, ref_p, _rel(p, ref_p))]
    y, cache = case.forward(be_op, *[dev(a) for a in case.inputs], xp=xp)
    R = np.asarray(case.cotangent, dtype=np.float32)
    grads = be_op.backward(dev(R) if R.ndim else float(R), cache)
    grads = grads if isinstance(grads, tuple) else (grads,)
    y_ref, ref_grads = case.run(ref_module(case.op))
    rows = [("y", backend.asnumpy(y), y_ref, _rel(backend.asnumpy(y), y_ref))]
    for name, g, gr in zip(case.input_names, grads, ref_grads):
        g = backend.asnumpy(g)
        rows.append(("d" + name, g, gr, _rel(g, gr)))
    return rows


def _rel(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.isnan(a).any():
        return math.inf
    nb = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / nb if nb else float(np.linalg.norm(a))


def format_kernel_comparison(case, rows, backend_name):
    out = [f" kernels ({backend_name}, float32) beside the reference (float64): "
           f"||kernel - ref|| / ||ref|| < {KERNEL_TOLERANCE:g}"]
    for name, k, r, rel in rows:
        out.append(f"  {name} {_shape(k)}: rel {rel:.2e}  {'ok' if rel < KERNEL_TOLERANCE else 'FAIL'}")
        out.append("      kernel:")
        out.append(_array(k, 8))
        out.append("      reference:")
        out.append(_array(r, 8))
    return "\n".join(out)


# ---------------------------------------------------------------------------------- command
def run(args):
    names = set(args.ops) - {"model"} if args.ops else None
    known = {c.op for c in op_cases()}
    unknown = (names or set()) - known
    if unknown:
        raise UsageError(f"unknown op(s) {', '.join(sorted(unknown))}", "OP",
                         f"some of {', '.join(sorted(known | {'model'}))}")
    if args.show or args.plot:
        return run_show(args, names, known)
    if args.backend != "numpy":
        raise UsageError("--backend applies to --show", "--backend",
                         "--show with one or more ops")
    t0 = time.perf_counter()
    report = {"ops": {}, "model": {}, "tolerance": {"op": OP_TOLERANCE, "model": MODEL_TOLERANCE}}
    if names or not args.ops:
        report["ops"] = check_ops(names)
    if not args.ops or "model" in args.ops:
        for label, overrides in MODEL_CASES.items():
            report["model"][label] = check_model(overrides, per_tensor=args.per_tensor)
    report["ok"] = all(e["ok"] for e in report["ops"].values()) and \
        all(e["ok"] for e in report["model"].values())
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{'op':<34}{'gradient':<10}{'max abs err':>13}{'max rel err':>13}  result")
        for op, e in report["ops"].items():
            for case, per_input in e["cases"].items():
                tol = 1e-12 if op == "adamw" else OP_TOLERANCE
                for name, v in per_input.items():
                    print(f"{case:<34}{name:<10}{v['max_abs']:>13.2e}{v['max_rel']:>13.2e}  "
                          f"{'ok' if passes(v['max_abs'], v['max_rel'], tol) else 'FAIL'}")
        for label, e in report["model"].items():
            failing = f" ({', '.join(e['failing'])})" if e["failing"] else ""
            print(f"{'model nano ' + label:<44}{e['max_abs']:>13.2e}{e['max_rel']:>13.2e}  "
                  f"{'ok' if e['ok'] else 'FAIL' + failing}")
        print(f"tolerances: op < {OP_TOLERANCE:g}, model < {MODEL_TOLERANCE:g} (relative); adamw "
              f"(against the textbook update) < 1e-12; `--show` prints every step")
        print(f"{'all ok' if report['ok'] else 'FAILED'} in {report['seconds']} s")
    return 0 if report["ok"] else 1


def run_show(args, names, known):
    if "model" in (args.ops or []):
        raise UsageError("--show and --plot apply to ops", "model",
                         f"one or more of {', '.join(sorted(known))}")
    if not names and not args.plot:
        raise UsageError("--show needs the op(s) to show", "OP", f"one or more of {', '.join(sorted(known))}")
    backend = None
    if args.backend != "numpy":
        from .ops import get_backend
        import warnings
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                backend = get_backend(args.backend)
        except RuntimeError as e:
            raise UsageError(f"backend {args.backend!r} is not available here: {e}", "--backend",
                             "numpy, or a backend `scratchgpt info` lists") from None
    evaluations, ok, report = [], True, {"cases": [], "figures": []}
    say = (lambda *a: None) if args.json else print                        # noqa: E731
    for case in op_cases(TINY_DIMS) if names else []:
        if case.op not in names:
            continue
        ev = evaluate(case)
        evaluations.append(ev)
        ok = ok and ev.ok
        report["cases"].append(ev.to_json())
        say(format_evaluation(ev))
        if backend is not None:
            rows = kernel_comparison(case, backend)
            ok = ok and all(rel < KERNEL_TOLERANCE for *_, rel in rows)
            report["cases"][-1]["kernels"] = {
                "backend": args.backend, "tolerance": KERNEL_TOLERANCE,
                "rel": {name: (None if math.isinf(rel) else rel) for name, _, _, rel in rows}}
            say(format_kernel_comparison(case, rows, args.backend))
        say()
    if evaluations:
        say(format_summary(evaluations))
    if args.plot:
        from .figures import write_figures
        for path in write_figures(args.plot):
            report["figures"].append(path)
            say(f"wrote {path}")
    report["ok"] = ok
    if args.json:
        print(json.dumps(report))
    else:
        print("all ok" if ok else "FAILED")
    return 0 if ok else 1


def register(sub):
    p = sub.add_parser("gradcheck", help="finite-difference check of every op and the whole model")
    p.add_argument("ops", nargs="*", metavar="OP",
                   help="ops to check (embedding, layernorm, linear, gelu, attention, softmax_xent, "
                        "dropout, residual, adamw, gru, model); default: all")
    p.add_argument("--per-tensor", type=int, default=None, metavar="K",
                   help="check K random entries of each model parameter instead of all of them")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--show", action="store_true",
                   help="on a tiny example, print every step (n) of the derivation, forward and "
                        "backward, each backward step against its finite-difference value")
    p.add_argument("--backend", default="numpy", choices=("numpy", "host", "cuda"),
                   help="with --show: also run the op's kernels on this backend and print their "
                        "outputs beside the reference's")
    p.add_argument("--plot", metavar="DIR",
                   help="write figures (attention P and dS of one head, dlogits) as PNGs to DIR")
    p.set_defaults(func=run)
