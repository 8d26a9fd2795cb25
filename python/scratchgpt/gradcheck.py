"""Central finite differences against the hand-written backward, per op and for the whole model.

For an op y = f(x1, x2, ...) we draw a random cotangent R and check the scalar
L = sum(R * y): its analytic gradients are exactly backward(R), and its numeric gradient
with respect to each input element is (L(x + h e_i) - L(x - h e_i)) / 2h (float64, h = 1e-5).

Error measures, per input tensor, then the maximum over tensors:
    max_abs = max_i |analytic_i - numeric_i|
    max_rel = max_abs / max(max_i |analytic_i|, max_i |numeric_i|)
(a relative error against the tensor's scale, the analytic maximum taken over the whole
tensor even when only some entries are checked: elementwise ratios blow up where a gradient
is near zero, and say nothing there).

`scratchgpt gradcheck [OP ...] [--json]` prints a table (or JSON with one entry per op).
"""
import json
import time

import numpy as np

from . import reference as ref
from .config import GPTConfig
from .model import GPT

H = 1e-5
OP_TOLERANCE = 1e-6
MODEL_TOLERANCE = 1e-5


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


def _op_cases(rng):
    """name -> (forward, backward, differentiable inputs, input names). Shapes are small and odd."""
    B, T, C, V = 2, 5, 7, 11
    x = rng.standard_normal((B, T, C))
    idx = rng.integers(0, V, size=(B, T))
    idx[0, :3] = idx[1, 0]   # repeated ids must accumulate
    tgt = rng.integers(0, V, size=(B, T))
    tgt[1, 2] = -1
    cases = {
        "embedding": (lambda wte, wpe: ref.embedding.forward(idx, wte, wpe), ref.embedding.backward,
                      [rng.standard_normal((V, C)), rng.standard_normal((T + 2, C))], ["wte", "wpe"]),
        "layernorm": (ref.layernorm.forward, ref.layernorm.backward,
                      [x.copy(), rng.standard_normal(C), rng.standard_normal(C)], ["x", "weight", "bias"]),
        "linear": (ref.linear.forward, ref.linear.backward,
                   [x.copy(), rng.standard_normal((4, C)), rng.standard_normal(4)], ["x", "weight", "bias"]),
        "gelu[tanh]": (lambda a: ref.gelu.forward(a, "tanh"), ref.gelu.backward, [2 * x], ["x"]),
        "gelu[erf]": (lambda a: ref.gelu.forward(a, "none"), ref.gelu.backward, [2 * x], ["x"]),
        "softmax_xent": (lambda z: ref.softmax_xent.forward(z, tgt), ref.softmax_xent.backward,
                         [3 * rng.standard_normal((B, T, V))], ["logits"]),
        "dropout": (lambda a: ref.dropout.forward(a, 0.3, seed=1234, stream=5), ref.dropout.backward,
                    [x.copy()], ["x"]),
        "residual": (ref.residual.forward, ref.residual.backward, [x.copy(), rng.standard_normal(x.shape)],
                     ["a", "b"]),
    }
    H = 4       # gru: a whole sequence through the recurrence, the initial state included
    cases["gru"] = (ref.gru.forward, ref.gru.backward,
                    [x.copy(), rng.standard_normal((B, H)), 0.5 * rng.standard_normal((3 * H, C)),
                     0.5 * rng.standard_normal((3 * H, H)), rng.standard_normal(3 * H),
                     rng.standard_normal(3 * H)], ["x", "h0", "w_ih", "w_hh", "b_ih", "b_hh"])
    qkv = rng.standard_normal((B, T, 3 * 6))
    for label, n_head, window in (("causal, 1 head", 1, None), ("causal, 3 heads", 3, None),
                                  ("banded w=2", 2, 2), ("banded w=1", 3, 1), ("banded w>=T", 2, T)):
        cases[f"attention[{label}]"] = (
            lambda q, n=n_head, w=window: ref.attention.forward(q, n, w), ref.attention.backward,
            [qkv.copy()], ["qkv"])
    return cases


def check_ops(names=None, seed=0):
    """Check every op case (or those whose op name is in names). Returns {op: result}."""
    rng = np.random.default_rng(seed)
    out = {}
    for case, (fwd, bwd, inputs, input_names) in _op_cases(rng).items():
        op = case.split("[")[0]
        if names and op not in names:
            continue
        res = check_function(fwd, bwd, inputs, rng)
        entry = out.setdefault(op, {"max_abs": 0.0, "max_rel": 0.0, "cases": {}})
        entry["cases"][case] = {input_names[k]: {"max_abs": a, "max_rel": r} for k, (a, r) in res.items()}
        entry["max_abs"] = max(entry["max_abs"], *(a for a, _ in res.values()))
        entry["max_rel"] = max(entry["max_rel"], *(r for _, r in res.values()))
    for entry in out.values():
        entry["ok"] = entry["max_rel"] < OP_TOLERANCE
    return out


MODEL_CASES = {
    "pre-LN, dense": dict(),
    "pre-LN, banded": dict(attn_pattern="banded", attn_window=3),
    "post-LN, dense": dict(ln_placement="post"),
    "post-LN, dense/banded, dropout": dict(ln_placement="post", attn_pattern=["dense", "banded"],
                                           attn_window=2, dropout=0.2),
}


def check_model(overrides, per_tensor=None, seed=0, B=2, T=7):
    """Finite differences of the nano model's loss with respect to every parameter
    (or per_tensor random entries of each). Returns {"max_abs", "max_rel", "params": {...}}."""
    cfg = GPTConfig.preset("nano", **overrides)
    model = GPT(cfg, backend="numpy", dtype="float64", seed=seed)
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
    return result


def run(args):
    names = set(args.ops) - {"model"} if args.ops else None
    known = {c.split("[")[0] for c in _op_cases(np.random.default_rng(0))}
    unknown = (names or set()) - known
    if unknown:
        raise SystemExit(f"gradcheck: unknown op(s) {sorted(unknown)}; expected some of "
                         f"{sorted(known | {'model'})}")
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
        print(f"{'op':<44}{'max abs err':>14}{'max rel err':>14}  result")
        for op, e in report["ops"].items():
            for case, per_input in e["cases"].items():
                a = max(v["max_abs"] for v in per_input.values())
                r = max(v["max_rel"] for v in per_input.values())
                print(f"{case:<44}{a:>14.2e}{r:>14.2e}  {'ok' if r < OP_TOLERANCE else 'FAIL'}")
        for label, e in report["model"].items():
            print(f"{'model nano ' + label:<44}{e['max_abs']:>14.2e}{e['max_rel']:>14.2e}  "
                  f"{'ok' if e['ok'] else 'FAIL'}")
        print(f"tolerances: op < {OP_TOLERANCE:g}, model < {MODEL_TOLERANCE:g} (relative); "
              f"adamw is an optimizer step, checked against a hand-computed example in tests")
        print(f"{'all ok' if report['ok'] else 'FAILED'} in {report['seconds']} s")
    return 0 if report["ok"] else 1


def register(sub):
    p = sub.add_parser("gradcheck", help="finite-difference check of every op and the whole model")
    p.add_argument("ops", nargs="*", metavar="OP",
                   help="ops to check (embedding, layernorm, linear, gelu, attention, softmax_xent, "
                        "dropout, residual, gru, model); default: all")
    p.add_argument("--per-tensor", type=int, default=None, metavar="K",
                   help="check K random entries of each model parameter instead of all of them")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
