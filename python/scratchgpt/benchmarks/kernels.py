"""The kernel table: for every op and pass, how to build random inputs, how to call our op
(through a backend's op module, the reference's interface), what PyTorch calls the same
thing, and the bytes and FLOPs the op costs by formula.

Bytes are the fewest the op must move: each input read once, each output written once
(float32 = 4 bytes, token ids int64 = 8). FLOPs count the arithmetic of the formula (matmuls
2·M·N·K; elementwise ops a few per element, as noted); they place each kernel on the
roofline, and decide whether it is memory- or compute-bound.

The same table runs on the GPU (backend "cuda", CuPy arrays, CUDA-event timer) and on the
CPU (backend "numpy", the reference in float32, wall-clock timer): `run_table` only sees a
backend, a timer and the measured ceilings.
"""
from dataclasses import dataclass, field

import numpy as np

try:
    from tqdm import tqdm
except ImportError:         # a bare GPU machine may lack it: run without the progress bar
    def tqdm(iterable, **kwargs):
        return iterable

from .. import reference
from .common import median, randint, randn, rel_err

F32, I64 = 4, 8


@dataclass
class Case:
    """One op, one pass, one shape."""
    op: str
    pass_: str                      # forward | backward | update
    shape: dict
    label: str = ""                 # which instance, e.g. the linear layer's name
    check: bool = False             # compare with the reference before timing
    tags: list = field(default_factory=list)   # "base" (GPT-2 shapes) or "sweep"

    @property
    def spec(self):
        return SPECS[self.op]

    def bytes(self):
        return self.spec.bytes(self.shape, self.pass_)

    def flops(self):
        return self.spec.flops(self.shape, self.pass_)

    def shape_str(self):
        return " ".join(f"{k}={v}" for k, v in self.shape.items())


def _grad(torch, out, inputs, dout):
    """A closure running autograd's backward of `out` (graph kept, so it can be timed again)."""
    return lambda: torch.autograd.grad(out, inputs, dout, retain_graph=True)


def _leaf(t):
    return t.detach().clone().requires_grad_(True)


def timed_pass(op, pass_, dout, *args, **kwargs):
    """The callable to time: the op's forward, or its backward from one forward's cache."""
    if pass_ == "forward":
        return lambda: op.forward(*args, **kwargs)[0]
    _, cache = op.forward(*args, **kwargs)
    return lambda: op.backward(dout, cache)


# ------------------------------------------------------------------------------------ ops
class LayerNorm:
    op, passes, tol = "layernorm", ("forward", "backward"), 1e-5

    def inputs(self, xp, s, seed):
        N, C = s["N"], s["C"]
        return {"x": randn(xp, (N, C), seed) * 2 + 0.5, "weight": 1 + randn(xp, (C,), seed + 1, scale=0.1),
                "bias": randn(xp, (C,), seed + 2, scale=0.1), "dout": randn(xp, (N, C), seed + 3)}

    def call(self, op, a, pass_):
        return timed_pass(op, pass_, a["dout"], a["x"], a["weight"], a["bias"], 1e-5)

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        if pass_ == "forward":
            return lambda: F.layer_norm(t["x"], (s["C"],), t["weight"], t["bias"], 1e-5)
        x, w, b = _leaf(t["x"]), _leaf(t["weight"]), _leaf(t["bias"])
        return _grad(torch, F.layer_norm(x, (s["C"],), w, b, 1e-5), (x, w, b), t["dout"])

    def bytes(self, s, pass_):
        N, C = s["N"], s["C"]
        if pass_ == "forward":     # x, weight, bias -> out, mean, rstd
            return F32 * (2 * N * C + 2 * C + 2 * N)
        return F32 * (3 * N * C + 2 * N + 3 * C)   # dout, x, mean, rstd, weight -> dx, dw, db

    def flops(self, s, pass_):
        # forward ~8 per element (mean, centre, square, sum, scale, affine); backward ~14
        return (8 if pass_ == "forward" else 14) * s["N"] * s["C"]


class Linear:
    op, passes, tol = "linear", ("forward", "backward"), 1e-4

    def inputs(self, xp, s, seed):
        N, I, O = s["N"], s["in"], s["out"]
        a = {"x": randn(xp, (N, I), seed), "weight": randn(xp, (O, I), seed + 1, scale=0.02),
             "dout": randn(xp, (N, O), seed + 3)}
        a["bias"] = randn(xp, (O,), seed + 2, scale=0.1) if s["bias"] else None
        return a

    def call(self, op, a, pass_):
        return timed_pass(op, pass_, a["dout"], a["x"], a["weight"], a["bias"])

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        if pass_ == "forward":
            return lambda: F.linear(t["x"], t["weight"], t["bias"])
        leaves = [_leaf(t[k]) for k in ("x", "weight", "bias") if t[k] is not None]
        return _grad(torch, F.linear(*leaves), leaves, t["dout"])

    def bytes(self, s, pass_):
        N, I, O, b = s["N"], s["in"], s["out"], int(s["bias"])
        return F32 * (N * I + O * I + b * O + N * O)   # the same tensors in both passes

    def flops(self, s, pass_):
        N, I, O = s["N"], s["in"], s["out"]
        return (2 if pass_ == "forward" else 4) * N * I * O


class Gelu:
    op, passes, tol = "gelu", ("forward", "backward"), 1e-5

    def inputs(self, xp, s, seed):
        return {"x": randn(xp, (s["N"], s["C"]), seed) * 2, "dout": randn(xp, (s["N"], s["C"]), seed + 1)}

    def call(self, op, a, pass_):
        return timed_pass(op, pass_, a["dout"], a["x"], "tanh")

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        if pass_ == "forward":
            return lambda: F.gelu(t["x"], approximate="tanh")
        x = _leaf(t["x"])
        return _grad(torch, F.gelu(x, approximate="tanh"), (x,), t["dout"])

    def bytes(self, s, pass_):
        return F32 * s["N"] * s["C"] * (2 if pass_ == "forward" else 3)

    def flops(self, s, pass_):
        return (9 if pass_ == "forward" else 18) * s["N"] * s["C"]   # tanh counted as one


class Attention:
    op, passes, tol = "attention", ("forward", "backward"), 1e-4

    def inputs(self, xp, s, seed):
        B, T, C = s["B"], s["T"], s["C"]
        return {"qkv": randn(xp, (B, T, 3 * C), seed), "dout": randn(xp, (B, T, C), seed + 1),
                "n_head": s["H"]}

    def call(self, op, a, pass_):
        H = a["n_head"]
        return timed_pass(op, pass_, a["dout"], a["qkv"], H)

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        B, T, C, H = s["B"], s["T"], s["C"], s["H"]

        def attn(qkv):
            q, k, v = (u.view(B, T, H, C // H).transpose(1, 2) for u in qkv.split(C, dim=2))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return y.transpose(1, 2).reshape(B, T, C)
        if pass_ == "forward":
            return lambda: attn(t["qkv"])
        qkv = _leaf(t["qkv"])
        return _grad(torch, attn(qkv), (qkv,), t["dout"])

    def bytes(self, s, pass_):
        B, T, C, H = s["B"], s["T"], s["C"], s["H"]
        if pass_ == "forward":     # qkv -> y, and the per-row log-sum-exp a fused kernel keeps
            return F32 * (3 * B * T * C + B * T * C + B * H * T)
        return F32 * (3 * B * T * C + B * T * C + B * H * T + 3 * B * T * C)   # qkv, dy, lse -> dqkv

    def flops(self, s, pass_):
        # causal: T(T+1)/2 query-key pairs per head; QK^T and PV cost 2·D each per pair
        B, T, C = s["B"], s["T"], s["C"]
        fwd = 4 * B * C * T * (T + 1) // 2
        return fwd if pass_ == "forward" else 2 * fwd    # dV, dP, dQ, dK: twice the forward


class SoftmaxXent:
    op, passes, tol = "softmax_xent", ("forward", "backward"), 1e-4

    def inputs(self, xp, s, seed):
        N, V = s["N"], s["V"]
        return {"logits": randn(xp, (N, V), seed) * 2, "targets": randint(xp, 0, V, (N,), seed + 1)}

    def call(self, op, a, pass_):
        return timed_pass(op, pass_, 1.0, a["logits"], a["targets"])

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        if pass_ == "forward":
            return lambda: F.cross_entropy(t["logits"], t["targets"], ignore_index=-1)
        z = _leaf(t["logits"])
        return _grad(torch, F.cross_entropy(z, t["targets"], ignore_index=-1), (z,), None)

    def bytes(self, s, pass_):
        N, V = s["N"], s["V"]
        if pass_ == "forward":     # logits, targets -> loss, lse
            return F32 * N * V + I64 * N + F32 * (N + 1)
        return 2 * F32 * N * V + I64 * N + F32 * N    # logits, targets, lse -> dlogits

    def flops(self, s, pass_):
        return 4 * s["N"] * s["V"]     # max, subtract, exp, sum (backward: exp, subtract, scale)


class Embedding:
    op, passes, tol = "embedding", ("forward", "backward"), 1e-5

    def inputs(self, xp, s, seed):
        B, T, C, V = s["B"], s["T"], s["C"], s["V"]
        return {"idx": randint(xp, 0, V, (B, T), seed), "wte": randn(xp, (V, C), seed + 1, scale=0.02),
                "wpe": randn(xp, (T, C), seed + 2, scale=0.02), "dout": randn(xp, (B, T, C), seed + 3)}

    def call(self, op, a, pass_):
        return timed_pass(op, pass_, a["dout"], a["idx"], a["wte"], a["wpe"])

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        if pass_ == "forward":
            return lambda: F.embedding(t["idx"], t["wte"]) + t["wpe"]
        wte, wpe = _leaf(t["wte"]), _leaf(t["wpe"])
        return _grad(torch, F.embedding(t["idx"], wte) + wpe, (wte, wpe), t["dout"])

    def bytes(self, s, pass_):
        B, T, C, V = s["B"], s["T"], s["C"], s["V"]
        N = B * T
        if pass_ == "forward":     # ids, the N gathered rows, wpe -> out
            return I64 * N + F32 * (N * C + T * C + N * C)
        return F32 * N * C + I64 * N + F32 * (V * C + T * C)   # dout, ids -> dwte (whole), dwpe

    def flops(self, s, pass_):
        return s["B"] * s["T"] * s["C"] * (1 if pass_ == "forward" else 2)


class Dropout:
    op, passes, tol = "dropout", ("forward", "backward"), 1e-6
    p = 0.1

    def inputs(self, xp, s, seed):
        return {"x": randn(xp, (s["N"], s["C"]), seed), "dout": randn(xp, (s["N"], s["C"]), seed + 1)}

    def call(self, op, a, pass_):
        return timed_pass(op, pass_, a["dout"], a["x"], self.p, 1234, stream=7)

    def torch(self, torch, t, s, pass_):
        F = torch.nn.functional
        if pass_ == "forward":
            return lambda: F.dropout(t["x"], self.p, training=True)
        x = _leaf(t["x"])
        return _grad(torch, F.dropout(x, self.p, training=True), (x,), t["dout"])

    def bytes(self, s, pass_):
        return 2 * F32 * s["N"] * s["C"]      # x -> out (the mask is regenerated, not stored)

    def flops(self, s, pass_):
        return 2 * s["N"] * s["C"]            # compare and scale; the generator's integer work not counted


class Residual:
    op, passes, tol = "residual", ("forward",), 1e-6

    def inputs(self, xp, s, seed):
        return {"a": randn(xp, (s["N"], s["C"]), seed), "b": randn(xp, (s["N"], s["C"]), seed + 1)}

    def call(self, op, a, pass_):
        return lambda: op.forward(a["a"], a["b"])[0]

    def torch(self, torch, t, s, pass_):
        return lambda: torch.add(t["a"], t["b"])

    def bytes(self, s, pass_):
        return 3 * F32 * s["N"] * s["C"]

    def flops(self, s, pass_):
        return s["N"] * s["C"]


class AdamW:
    op, passes, tol = "adamw", ("update",), 1e-5
    hyper = dict(lr=3e-4, beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1)

    def inputs(self, xp, s, seed):
        P = s["P"]
        v = randn(xp, (P,), seed + 3, scale=0.01)
        return {"param": randn(xp, (P,), seed, scale=0.02), "grad": randn(xp, (P,), seed + 1, scale=0.01),
                "m": randn(xp, (P,), seed + 2, scale=0.01), "v": v * v}

    def call(self, op, a, pass_):
        h = self.hyper

        def step():
            op.update(a["param"], a["grad"], a["m"], a["v"], 3, h["lr"], h["beta1"], h["beta2"],
                      h["eps"], h["weight_decay"])
            return a["param"], a["m"], a["v"]
        return step

    def torch(self, torch, t, s, pass_):
        h = self.hyper
        p = t["param"].clone()
        p.grad = t["grad"].clone()
        kw = dict(lr=h["lr"], betas=(h["beta1"], h["beta2"]), eps=h["eps"],
                  weight_decay=h["weight_decay"])
        try:
            opt = torch.optim.AdamW([p], fused=True, **kw)
        except RuntimeError:           # a build without the fused CPU path
            opt = torch.optim.AdamW([p], **kw)
        return opt.step

    def bytes(self, s, pass_):
        return 7 * F32 * s["P"]        # param, grad, m, v -> param, m, v

    def flops(self, s, pass_):
        return 12 * s["P"]


SPECS = {s.op: s for s in (Embedding(), LayerNorm(), Linear(), Gelu(), Attention(), SoftmaxXent(),
                           Dropout(), Residual(), AdamW())}
OPS = tuple(SPECS)


# ---------------------------------------------------------------------------------- cases
def model_cases(B, T, C, H, V, P, tag="base", check=True):
    """Every op and pass at one model's shapes (the linears: each of the model's five)."""
    N = B * T
    linears = {"attn.c_attn": (C, 3 * C, True), "attn.c_proj": (C, C, True),
               "mlp.c_fc": (C, 4 * C, True), "mlp.c_proj": (4 * C, C, True), "lm_head": (C, V, False)}
    out = []

    def add(op, shape, label=""):
        for p in SPECS[op].passes:
            out.append(Case(op, p, shape, label, check=check, tags=[tag]))
    add("embedding", dict(B=B, T=T, C=C, V=V))
    add("layernorm", dict(N=N, C=C))
    for name, (i, o, b) in linears.items():
        add("linear", dict(N=N, **{"in": i, "out": o}, bias=b), name)
    add("gelu", dict(N=N, C=4 * C))
    add("attention", dict(B=B, T=T, C=C, H=H))
    add("softmax_xent", dict(N=N, V=V))
    add("dropout", dict(N=N, C=C))
    add("residual", dict(N=N, C=C))
    add("adamw", dict(P=P))
    return out


def sweep_cases(B=8, T=1024, widths=(768, 1024, 1280, 1600), lengths=(256, 4096),
                attn_lengths=(1024, 2048, 4096, 8192), tokens=8192):
    """Widths (GPT-2 small to XL) for the per-token ops, sequence lengths for layer norm and
    GELU, and long attention (B·T = `tokens`): no reference check, the base case did it."""
    out = []

    def add(op, shape, label=""):
        for p in SPECS[op].passes:
            out.append(Case(op, p, shape, label, tags=["sweep"]))
    for C in widths[1:]:
        add("layernorm", dict(N=B * T, C=C))
        add("gelu", dict(N=B * T, C=4 * C))
        add("linear", dict(N=B * T, **{"in": C, "out": 4 * C}, bias=True), "mlp.c_fc")
        add("residual", dict(N=B * T, C=C))
    for t in lengths:
        add("layernorm", dict(N=B * t, C=widths[0]))
        add("gelu", dict(N=B * t, C=4 * widths[0]))
    for t in attn_lengths:
        if t != T:
            add("attention", dict(B=max(1, tokens // t), T=t, C=widths[0], H=12))
    return out


def select(cases, only):
    """Keep the cases whose op is in `only` (names, comma-separated allowed); None keeps all."""
    if not only:
        return cases
    names = {n.strip() for item in only for n in item.split(",") if n.strip()}
    unknown = names - set(OPS)
    if unknown:
        raise ValueError(f"--only: unknown kernel(s) {sorted(unknown)}; expected some of {list(OPS)}")
    return [c for c in cases if c.op in names]


# --------------------------------------------------------------------------------- runner
def _outputs(result):
    """An op's result as a list of arrays (None gradients dropped, scalars as 0-d)."""
    items = result if isinstance(result, (tuple, list)) else (result,)
    return [r for r in items if r is not None]


def _to_host64(a, asnumpy):
    if not hasattr(a, "shape"):
        return a
    a = asnumpy(a)
    floating = np.issubdtype(a.dtype, np.floating) or a.dtype.name == "bfloat16"   # ml_dtypes'
    return a.astype(np.float64) if floating else a


def shrink(shape, max_rows):
    """The same op with at most max_rows rows (tokens, batch 1, or parameters): the
    reference check on the host then costs seconds, not minutes, at GPT-2 sizes, and runs
    the same kernel code (only the grid is smaller)."""
    s = dict(shape)
    if "N" in s:
        s["N"] = min(s["N"], max_rows)
    if "B" in s:
        s["B"] = max(1, min(s["B"], max_rows // s["T"]))
    if "P" in s:
        s["P"] = min(s["P"], 64 * max_rows)
    return s


def check_against_reference(case, op_module, inputs, asnumpy):
    """Max relative error over the op's outputs against the float64 reference, on copies of
    the inputs (adamw updates in place)."""
    spec = case.spec
    fresh = {k: (v.copy() if hasattr(v, "shape") else v) for k, v in inputs.items()}
    ours = _outputs(spec.call(op_module, fresh, case.pass_)())
    ref_inputs = {k: _to_host64(v, asnumpy) for k, v in inputs.items()}
    ref = _outputs(spec.call(getattr(reference, case.op), ref_inputs, case.pass_)())
    if len(ours) != len(ref):
        raise ValueError(f"{case.op} {case.pass_}: {len(ours)} outputs, the reference has {len(ref)}")
    return max(rel_err(asnumpy(o) if hasattr(o, "shape") else o, r) for o, r in zip(ours, ref))


def roofline_bound(intensity, ceilings):
    """memory or compute: which side of the ridge point (compute peak / bandwidth) it is on."""
    ridge = ceilings["sgemm_tflops"] * 1e12 / (ceilings["copy_gbps"] * 1e9)
    return "compute" if intensity >= ridge else "memory"


def rates(case, ms, ceilings):
    """Achieved GB/s and TFLOP/s, the bound, and the percentage of the matching ceiling."""
    nbytes, flops = case.bytes(), case.flops()
    gbps = nbytes / (ms * 1e-3) / 1e9
    tflops = flops / (ms * 1e-3) / 1e12
    bound = roofline_bound(flops / nbytes, ceilings)
    pct = 100.0 * (gbps / ceilings["copy_gbps"] if bound == "memory"
                   else tflops / ceilings["sgemm_tflops"])
    return dict(gbps=gbps, tflops=tflops, bound=bound, pct_of_ceiling=pct)


def run_table(cases, backend, timer, ceilings, torch_side=None, budget=None, progress=True,
              seed=0, check_rows=None):
    """Time every case on `backend` and, when `torch_side` = (torch, to_torch) is given,
    its PyTorch equivalent (`to_torch` turns one of our arrays into a tensor without a copy).
    Cases marked `check` are first compared with the reference, at `shrink(shape, check_rows)`
    when check_rows is set; a wrong result is not timed. An op without a kernel here still
    gets its PyTorch time. Returns one record per case; what could not run says why."""
    records = []
    for case in tqdm(cases, desc="kernels", disable=not progress, leave=False):
        spec = case.spec
        rec = {"name": case.op, "label": case.label, "pass": case.pass_, "shape": case.shape,
               "tags": case.tags, "bytes": case.bytes(), "flops": case.flops(), "ms": None,
               "gbps": None, "tflops": None, "bound": None, "pct_of_ceiling": None,
               "torch_ms": None, "speedup_vs_torch": None, "check_rel_err": None, "skip": None}
        records.append(rec)
        if budget is not None and budget.spent(5.0):
            rec["skip"] = "time budget spent"
            continue
        try:
            inputs = spec.inputs(backend.xp, case.shape, seed)
        except Exception as e:          # e.g. out of device memory at a sweep's largest shape
            rec["skip"] = f"inputs: {type(e).__name__}: {e}"
            continue
        if case.op in backend.fallbacks or case.op not in backend.ops:
            rec["skip"] = f"no {backend.name} kernel (the op falls back to the reference)"
        else:
            _time_ours(rec, case, getattr(backend, case.op), backend, inputs, timer, ceilings,
                       seed, check_rows)
        if torch_side is not None and not (rec["skip"] or "").startswith("wrong result"):
            torch, to_torch = torch_side
            try:
                t = {k: (to_torch(v) if hasattr(v, "shape") else v) for k, v in inputs.items()}
                rec["torch_ms"] = median(timer(spec.torch(torch, t, case.shape, case.pass_)))
                if rec["ms"]:
                    rec["speedup_vs_torch"] = rec["torch_ms"] / rec["ms"]
                del t
            except Exception as e:
                rec["torch_skip"] = f"{type(e).__name__}: {e}"
        del inputs
    return records


def _time_ours(rec, case, op_module, backend, inputs, timer, ceilings, seed, check_rows):
    spec = case.spec
    try:
        if case.check:
            small = case.shape if check_rows is None else shrink(case.shape, check_rows)
            err = check_against_reference(Case(case.op, case.pass_, small), op_module,
                                          spec.inputs(backend.xp, small, seed + 1), backend.asnumpy)
            rec["check_rel_err"], rec["check_shape"] = err, small
            if not err < spec.tol:          # NaN fails too
                rec["skip"] = f"wrong result: relative error {err:.2e} > {spec.tol:.0e}"
                return
        rec["ms"] = median(timer(spec.call(op_module, inputs, case.pass_)))
        rec.update(rates(case, rec["ms"], ceilings))
    except Exception as e:              # one kernel's failure must not end the whole table
        rec["skip"] = f"{type(e).__name__}: {e}"


def summarize_goals(records, copy_goal=85.0, sgemm_goal=90.0):
    """Which timed fp32 kernels miss the issue's goals, and by how much (the 16-bit rows have
    their own goals: linear_low_summary, attention_low_summary)."""
    misses = []
    for r in records:
        if r["ms"] is None or any(t in ("bf16", "fp16") for t in r.get("tags", ())):
            continue
        goal = copy_goal if r["bound"] == "memory" else sgemm_goal
        if r["pct_of_ceiling"] < goal:
            misses.append(f"{r['name']}{'[' + r['label'] + ']' if r['label'] else ''} {r['pass']}: "
                          f"{r['pct_of_ceiling']:.0f}% of the {r['bound']} ceiling (goal {goal:.0f}%)")
        if r["speedup_vs_torch"] is not None and r["speedup_vs_torch"] < 1.0:
            misses.append(f"{r['name']}{'[' + r['label'] + ']' if r['label'] else ''} {r['pass']}: "
                          f"{r['speedup_vs_torch']:.2f}x PyTorch (goal 1.0x)")
    return misses


def model_dims(cfg, B, T):
    """The kernel table's shapes for a GPTConfig at batch B, length T."""
    return dict(B=B, T=T, C=cfg.n_embd, H=cfg.n_head, V=cfg.vocab_size, P=cfg.num_params())


# ---------------------------------- bf16 / fp16 flash attention on tensor cores, against SDPA
# Rows of their own (the float32 table above is unchanged): the same op and interface with qkv and
# dy in 16-bit storage, so the cuda backend runs csrc/attention.cu's tensor-core kernels; PyTorch
# runs F.scaled_dot_product_attention on the same 16-bit tensors (FlashAttention-2 on sm_80+).
# The goal: forward + backward at >= 70 % of SDPA's speed (SDPA's time / ours).
# bench.py adds the rows with `cases += attention_low_cases(B, T, C, H)` and prints
# `attention_low_summary(records, ceilings)` (run_table times them like any other case).
ATTENTION_LOW_GOAL = 70.0


class AttentionLowPrecision(Attention):
    """The attention spec with 16-bit qkv and dout (ml_dtypes.bfloat16 or numpy.float16)."""
    tol = 1e-2          # DESIGN.md's bf16 bound on the relative error against the reference

    def __init__(self, precision="bf16"):
        from ..precision import storage_dtype
        self.precision = precision
        self.dtype = storage_dtype(precision)

    def inputs(self, xp, s, seed):
        a = super().inputs(xp, s, seed)
        a["qkv"], a["dout"] = a["qkv"].astype(self.dtype), a["dout"].astype(self.dtype)
        return a

    def bytes(self, s, pass_):
        B, T, C, H = s["B"], s["T"], s["C"], s["H"]
        if pass_ == "forward":     # qkv -> y (2 bytes each), lse (fp32)
            return 2 * (3 * B * T * C + B * T * C) + F32 * B * H * T
        return 2 * (3 * B * T * C + B * T * C + 3 * B * T * C) + F32 * B * H * T


@dataclass
class LowPrecisionCase(Case):
    """A case on 16-bit storage: op "attention" or "linear" (the backend's op), its own spec
    (AttentionLowPrecision, LinearLowPrecision)."""
    precision: str = "bf16"

    @property
    def spec(self):
        return LOW_PRECISION_SPECS[self.op](self.precision)


def attention_low_cases(B, T, C, H, precision="bf16", lengths=(), check=True):
    """Forward and backward at (B, T) and at each further length with B*T tokens kept; `check`:
    run_table compares each with the float64 reference first (tol 1e-2)."""
    out = []
    for t in (T,) + tuple(x for x in lengths if x != T):
        shape = dict(B=max(1, B * T // t), T=t, C=C, H=H)
        for p in AttentionLowPrecision.passes:
            out.append(LowPrecisionCase("attention", p, shape, f"{precision} tensor cores", check=check,
                                        tags=[precision], precision=precision))
    return out


def check_attention_low(backend, shape, precision="bf16", seed=1):
    """Relative error of the 16-bit forward and backward against the float64 reference."""
    spec = AttentionLowPrecision(precision)
    a = spec.inputs(backend.xp, shape, seed)
    op = backend.attention
    y, cache = op.forward(a["qkv"], shape["H"])
    dqkv = op.backward(a["dout"], cache)
    f64 = lambda x: np.asarray(backend.asnumpy(x)).astype(np.float64)   # noqa: E731
    r_y, r_cache = reference.attention.forward(f64(a["qkv"]), shape["H"])
    r_d = reference.attention.backward(f64(a["dout"]), r_cache)
    return max(rel_err(f64(y), r_y), rel_err(f64(dqkv), r_d))


def attention_low_summary(records, ceilings=None, goal=ATTENTION_LOW_GOAL):
    """Lines for the report: per shape, forward + backward against SDPA (the goal's ratio) and
    the share of the measured bf16 GEMM rate; the pass records gain `pct_of_bf16_gemm`."""
    peak = (ceilings or {}).get("bf16_gemm_tflops")
    rows = {}
    for r in records:
        if r["name"] != "attention" or not any(t in ("bf16", "fp16") for t in r.get("tags", ())):
            continue
        if peak and r.get("tflops"):
            r["pct_of_bf16_gemm"] = 100.0 * r["tflops"] / peak
        rows.setdefault((r["label"], tuple(r["shape"].items())), {})[r["pass"]] = r
    lines = []
    for (label, shape), passes in rows.items():
        f, b = passes.get("forward"), passes.get("backward")
        what = f"attention {label} fwd+bwd {' '.join(f'{k}={v}' for k, v in shape)}"
        if not (f and b and f["ms"] and b["ms"]):
            why = next((p["skip"] for p in (f, b) if p and p.get("skip")), "not timed")
            lines.append(f"{what}: {why}")
            continue
        ours = f["ms"] + b["ms"]
        line = f"{what}: {ours:.3f} ms"
        if f["torch_ms"] and b["torch_ms"]:
            torch_ms = f["torch_ms"] + b["torch_ms"]
            pct = 100.0 * torch_ms / ours
            line += (f", SDPA {torch_ms:.3f} ms: {pct:.0f}% of SDPA's speed (goal >= {goal:.0f}%"
                     f"{'' if pct >= goal else ', missed'})")
        else:
            line += f", SDPA not timed ({f.get('torch_skip') or b.get('torch_skip') or 'no torch'})"
        if peak:
            tflops = (f["flops"] + b["flops"]) / (ours * 1e-3) / 1e12
            line += f"; {tflops:.1f} TFLOP/s = {100 * tflops / peak:.0f}% of the bf16 GEMM ceiling"
        lines.append(line)
    return lines


# ------------------------------------------- bf16 / fp16 linear on tensor cores, against cuBLAS
# Rows of their own, as for attention: the linear op on 16-bit x, weight, bias and dout, so the
# cuda backend runs csrc/linear.cu's tensor-core GEMM (mma.sync, ldmatrix, cp.async) for the
# forward and both backward products; PyTorch runs F.linear on the same 16-bit tensors, which is
# cuBLAS's bf16 / fp16 GEMM (fp32 accumulation) at the same shape. The goal: >= 80 % of
# cuBLAS's speed (cuBLAS's time / ours), printed per pass by linear_low_summary, which also gives
# the share of the bf16 GEMM ceiling (cuBLAS at 8192^3, measured in the same run). The cases check
# themselves against the float64 reference before timing (tol 1e-2, DESIGN.md's bf16 bound).
# bench.py adds them with `cases += linear_low_cases(B, T, C, V)` next to the float32 rows and
# prints `linear_low_summary(records, ceilings)`.
LINEAR_LOW_GOAL = 80.0


class LinearLowPrecision(Linear):
    """The linear spec with x, weight, bias and dout in 16-bit storage; out and dx come back in
    it, dweight and dbias in float32 (csrc/linear.cu)."""
    tol = 1e-2

    def __init__(self, precision="bf16"):
        from ..precision import storage_dtype
        self.precision = precision
        self.dtype = storage_dtype(precision)

    def inputs(self, xp, s, seed):
        return {k: (v if v is None else v.astype(self.dtype)) for k, v in super().inputs(xp, s, seed).items()}

    def bytes(self, s, pass_):
        N, I, O, b = s["N"], s["in"], s["out"], int(s["bias"])
        if pass_ == "forward":     # x, W, b -> out, 2 bytes each
            return 2 * (N * I + O * I + b * O + N * O)
        return 2 * (N * O + N * I + O * I + N * I) + F32 * (O * I + b * O)   # dy, x, W -> dx; dW, db fp32


def linear_low_cases(B, T, C, V, precision="bf16", check=True):
    """The model's five linears at B*T rows (GPT-2 shapes for GPT-2's C and V), both passes."""
    N = B * T
    linears = {"attn.c_attn": (C, 3 * C, True), "attn.c_proj": (C, C, True),
               "mlp.c_fc": (C, 4 * C, True), "mlp.c_proj": (4 * C, C, True), "lm_head": (C, V, False)}
    out = []
    for name, (i, o, b) in linears.items():
        for p in LinearLowPrecision.passes:
            out.append(LowPrecisionCase("linear", p, dict(N=N, **{"in": i, "out": o}, bias=b),
                                        f"{name} {precision}", check=check, tags=[precision],
                                        precision=precision))
    return out


def linear_low_summary(records, ceilings=None, goal=LINEAR_LOW_GOAL):
    """Lines for the report: per 16-bit linear case, our time against cuBLAS's (PyTorch's F.linear
    on the same 16-bit tensors: the goal's ratio) and the share of the measured bf16 GEMM rate;
    the records gain `vs_cublas` and `pct_of_bf16_gemm`."""
    peak = (ceilings or {}).get("bf16_gemm_tflops")
    lines = []
    for r in records:
        if r["name"] != "linear" or not any(t in ("bf16", "fp16") for t in r.get("tags", ())):
            continue
        what = f"linear [{r['label']}] {r['pass']} {' '.join(f'{k}={v}' for k, v in r['shape'].items())}"
        if not r.get("ms"):
            lines.append(f"{what}: {r.get('skip') or 'not timed'}")
            continue
        line = f"{what}: {r['ms']:.3f} ms"
        if r.get("torch_ms"):
            r["vs_cublas"] = r["torch_ms"] / r["ms"]
            line += (f", cuBLAS (torch F.linear) {r['torch_ms']:.3f} ms: {r['vs_cublas']:.2f}x = "
                     f"{100 * r['vs_cublas']:.0f}% of cuBLAS's speed (goal >= {goal:.0f}%"
                     f"{'' if 100 * r['vs_cublas'] >= goal else ', missed'})")
        else:
            line += f", cuBLAS not timed ({r.get('torch_skip') or 'no torch'})"
        if peak:
            r["pct_of_bf16_gemm"] = 100.0 * r["tflops"] / peak
            line += f"; {r['tflops']:.1f} TFLOP/s = {r['pct_of_bf16_gemm']:.0f}% of the bf16 GEMM ceiling"
        lines.append(line)
    return lines


LOW_PRECISION_SPECS = {"attention": AttentionLowPrecision, "linear": LinearLowPrecision}


__all__ = ["Case", "SPECS", "OPS", "model_cases", "sweep_cases", "select", "run_table", "rates",
           "roofline_bound", "summarize_goals", "model_dims", "attention_low_cases", "attention_low_summary",
           "check_attention_low", "linear_low_cases", "linear_low_summary"]
