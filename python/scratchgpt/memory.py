"""How much memory a run needs, estimated before anything is allocated, and how much this
machine has.

A training step holds, at its peak (the end of the backward, when every layer's cache and
every gradient are alive at once):

    parameters          N numbers                      (N = GPTConfig.num_params())
    AdamW moments       2 N
    gradients           N  (2 N with --grad-accum > 1: the sum and the newest micro-batch)
    activations         what the forward keeps for the backward, per layer (E = B*T tokens):
                          NumPy reference   20 E*C + B*H*T*T (the attention probabilities) + 4 E
                          compiled kernels  16 E*C + B*H*T (the log-sum-exp) + 4 E
                                            (+ B*H*T*T with SCRATCHGPT_ATTENTION=materialized)
                        plus the embedding output, the final layer norm and the logits E*V
    working memory      the backward's temporaries: the logits' gradient E*V, and the largest
                        of one layer's (attention's B*H*T*T score gradients on the reference,
                        the split-K workspaces of the matmul kernels)

and the model is built from float64 initial values (8 N bytes) before they are cast to the
model's dtype.

With --precision bf16 / fp16 (precision.py) the parameters, gradients and moments are fp32
(the masters) and a working copy of the weights in the 2-byte storage type is added (2 N);
the activations a forward keeps are 2-byte, except the fp32 statistics (layer-norm mean and
rstd, the attention probabilities or log-sum-exp, the loss's log-sum-exp), and GELU's gate
is recomputed in the backward instead of kept. Inside each op the reference widens its
inputs to fp32, so the working memory is mostly fp32 temporaries. `scratchgpt info --preset NAME --batch-size B` prints these numbers;
tests/test_memory.py checks them against the peak that tracemalloc measures (within 25 %).

Generation holds the parameters, the KV cache (2 * n_layer * B * T * C numbers) and one
position's temporaries (the prompt's, on its first pass); past block_size tokens it runs the
whole window as a forward.

Not counted: the interpreter and its libraries, and on the host backend the executor's fiber
stacks (a few MiB per worker thread, outside Python's allocator).

Where the numbers live: host RAM for the numpy and host backends; GPU memory for cuda (with
host RAM for the float64 initial values). What is available: MemAvailable (/proc/meminfo),
lowered by a cgroup memory limit when the process runs under one; on the GPU, the free memory
the device reports.
"""
import math
import os
from dataclasses import dataclass, field

from .errors import NotEnoughMemory

KiB, MiB, GiB, TiB = 2 ** 10, 2 ** 20, 2 ** 30, 2 ** 40
INT64 = 8


def fmt_bytes(n):
    """1536 -> '1.5 KiB'; three significant digits."""
    n = float(n)
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            v = n / size
            return f"{v:.3g} {unit}" if v < 1000 else f"{v:,.0f} {unit}"
    return f"{int(n)} B"


@dataclass
class Estimate:
    """The peak bytes of a run on one device, with its parts (they add up to `total`)."""
    task: str                     # "training", "sampling", "benchmark"
    backend: str
    device: str                   # "host RAM" or "GPU memory"
    parts: dict = field(default_factory=dict)
    host_total: int = 0           # cuda: host RAM needed besides (the float64 initial values)

    @property
    def total(self):
        return int(sum(self.parts.values()))

    def breakdown(self):
        return ", ".join(f"{k} {fmt_bytes(v)}" for k, v in self.parts.items() if v)

    def describe(self):
        return f"about {fmt_bytes(self.total)} of {self.device} ({self.breakdown()})"

    def to_dict(self):
        return {"task": self.task, "backend": self.backend, "device": self.device,
                "total_bytes": self.total, "host_bytes": self.host_total or self.total,
                "parts": {k: int(v) for k, v in self.parts.items()}}


# ---------------------------------------------------------------------------- the pieces
def _itemsize(dtype):
    return {"float32": 4, "float64": 8}[str(dtype)]


def _low(precision):
    return precision in ("bf16", "fp16")


def _act_size(dtype, precision):
    """Bytes of one stored activation: 2 under bf16 / fp16, else the model's dtype."""
    return 2 if _low(precision) else _itemsize(dtype)


def _kernels(backend):
    return backend in ("host", "cuda")


def _attention_materialized(backend):
    if not _kernels(backend):
        return True                 # the reference keeps the probabilities
    return (os.environ.get("SCRATCHGPT_ATTENTION") or "flash") == "materialized"


def _linear_workspace(backend, rows, n_in, n_out):
    """Floats of the split-K workspace of one linear backward (compiled kernels only)."""
    if not _kernels(backend):
        return 0
    try:
        from .kernels import load
        return int(load(backend).linear_backward_workspace(rows, n_in, n_out))
    except Exception:               # not built here: the kernels' usual four partial dWs
        return 4 * n_in * n_out


def _largest_tensor(cfg):
    return max(math.prod(s) for s in cfg.param_shapes().values())


def activation_bytes(cfg, batch, seq, backend="numpy", dtype="float32", training=True,
                     precision="fp32"):
    """Bytes a forward keeps for its backward (the caches of every op) at [batch, seq]:
    `stored` numbers of the activation type (2 bytes under bf16 / fp16) and `stats` numbers
    that stay in the model's dtype (fp32 under bf16 / fp16)."""
    s, a = _itemsize(dtype), _act_size(dtype, precision)
    E, C, H, V, L = batch * seq, cfg.n_embd, cfg.n_head, cfg.vocab_size, cfg.n_layer
    scores = batch * H * seq * seq
    stats = 4 * E                                       # two layer norms' mean and rstd
    if _kernels(backend):
        stored = 16 * E * C
        stats += batch * H * seq                        # the log-sum-exp of flash attention
        if _attention_materialized(backend):
            stats += scores
    else:                                               # tanh keeps its gate (fp32 only)
        stored = (20 if cfg.gelu == "tanh" and not _low(precision) else 16) * E * C
        stats += scores                                 # the attention probabilities
    stored, stats = L * stored + E * C + E * V, L * stats + E   # + lm_head input, logits, lse
    if cfg.ln_placement == "pre":
        stored, stats = stored + E * C, stats + 2 * E  # final layer norm
    masks = 0
    if training and cfg.dropout > 0 and not _kernels(backend):
        masks = (2 * L + 1) * E * C                     # boolean keep masks (the kernels regenerate)
    ints = 4 * E * INT64                                # ids, targets and their contiguous copies
    return stored * a + stats * s + masks + ints


def _backward_working_bytes(cfg, batch, seq, backend, dtype, precision="fp32"):
    """The largest temporaries of a backward beyond the caches and the gradients."""
    s = _itemsize(dtype)
    E, C, H, V = batch * seq, cfg.n_embd, cfg.n_head, cfg.vocab_size
    scores = batch * H * seq * seq
    if _low(precision) and not _kernels(backend):
        # the reference widens each op's inputs to fp32 and rounds its outputs (precision.py);
        # dlogits (2 bytes) is held for the whole backward
        xent = 3 * E * V * 4                            # widened logits, z - lse, exp
        head = (E * V + 2 * V * C + 3 * E * C) * 4      # widened dlogits and wte, dx, dwte
        attn = (2 * scores + 10 * E * C) * 4            # dP, dP * P; q, k, v, dy, dq/dk/dv
        mlp = 20 * E * C * 4 + 8 * E * C * 2            # GELU recomputed: x, gate, out, du, grad
        return max(xent, E * V * 2 + max(head, attn, mlp))
    dlogits = E * V                                     # held for the whole backward
    if _kernels(backend):
        attn = 4 * E * C + batch * H * seq + (scores if _attention_materialized(backend) else 0)
        ws = max(_linear_workspace(backend, E, a, b)
                 for a, b in ((C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)))
        mlp = 9 * E * C + ws
        head = E * C + _linear_workspace(backend, E, C, V)
        layer = max(attn, mlp, head)
        return (dlogits + layer) * s
    xent = 2 * E * V                                    # exp(z - lse) and its argument
    attn = 2 * scores + 7 * E * C                       # dP and dP * P, dq / dk / dv
    mlp = 13 * E * C                                    # the GELU backward's three [E, 4C]
    return max(xent, dlogits + max(attn, mlp)) * s


def _forward_working_bytes(cfg, batch, seq, backend, dtype, precision="fp32"):
    s = _itemsize(dtype)
    E, V = batch * seq, cfg.vocab_size
    if _kernels(backend):
        return 3 * E * 4                                # the loss kernel's row statistics
    if _low(precision):                                 # the loss widens its logits to fp32
        return 3 * E * V * 4 + 9 * seq * seq
    return 2 * E * V * s + 9 * seq * seq                # exp(z - max) and its argument; the mask


def _build_bytes(cfg, dtype):
    """Building a GPT: float64 initial values, then their cast (a copy) to dtype."""
    n = cfg.num_params()
    return {"initial values (float64)": 8 * n, "parameters": n * _itemsize(dtype)}


def training_estimate(cfg, batch_size, backend="numpy", dtype="float32", grad_accum=1,
                      seq=None, precision="fp32"):
    """The peak memory of training cfg with micro-batches of batch_size x seq tokens (seq
    defaults to block_size) and AdamW; bf16 / fp16 add the 2-byte working copy of the weights
    and store 2-byte activations (the masters, gradients and moments stay fp32)."""
    if _low(precision):
        dtype = "float32"                               # the masters
    s = _itemsize(dtype)
    seq = seq or cfg.block_size
    n = cfg.num_params()
    P, M = n * s, 2 * n * s
    G = n * s * (2 if grad_accum > 1 else 1)
    A = activation_bytes(cfg, batch_size, seq, backend, dtype, precision=precision)
    big = _largest_tensor(cfg)
    copy = {"working copy (2-byte)": 2 * n} if _low(precision) else {}
    phases = {
        "backward": {"parameters": P, **copy, "AdamW moments": M, "gradients": G,
                     "activations": A, "working memory": _backward_working_bytes(
                         cfg, batch_size, seq, backend, dtype, precision)},
        "forward": {"parameters": P, **copy, "AdamW moments": M, "activations": A,
                    "working memory": _forward_working_bytes(cfg, batch_size, seq, backend,
                                                             dtype, precision)},
        # the reference's clipping sums squares in float64; its update makes a few temporaries
        "optimizer": {"parameters": P, **copy, "AdamW moments": M, "gradients": G,
                      "working memory": 0 if _kernels(backend) else max(16 * big, 4 * big * s)},
    }
    device = "GPU memory" if backend == "cuda" else "host RAM"
    host = max(sum(_build_bytes(cfg, dtype).values()), 3 * n * s)   # build; moments to a checkpoint
    if backend != "cuda":
        phases["build"] = _build_bytes(cfg, dtype)
        host = 0
    parts = max(phases.values(), key=lambda p: sum(p.values()))
    return Estimate("training", backend, device, dict(parts), host_total=host)


def kv_cache_bytes(cfg, batch, tokens, dtype="float32", precision="fp32"):
    return (2 * cfg.n_layer * batch * min(tokens, cfg.block_size) * cfg.n_embd
            * _act_size(dtype, precision))


def sampling_estimate(cfg, num_samples, prompt_tokens, max_new_tokens, backend="numpy",
                      dtype="float32", precision="fp32"):
    """The peak memory of generating max_new_tokens after a prompt, num_samples at once: the
    larger of the prompt's pass (a short KV cache, the prompt's temporaries) and the last
    cached step (the whole KV cache, one layer's keys or values copied as they grow). Under
    bf16 / fp16: the fp32 masters and their 2-byte copy, a 2-byte KV cache that each step
    widens one layer of to fp32."""
    if _low(precision):
        dtype = "float32"
    s, a = _itemsize(dtype), _act_size(dtype, precision)
    B, C, H, V = num_samples, cfg.n_embd, cfg.n_head, cfg.vocab_size
    P0 = min(max(prompt_tokens, 1), cfg.block_size)
    S = min(P0 + max_new_tokens, cfg.block_size)
    P = cfg.num_params() * s
    copy = {"working copy (2-byte)": 2 * cfg.num_params()} if _low(precision) else {}
    sampling = B * V * s + 6 * B * V * 8              # logits, then float64 sampling arrays
    prompt_pass = (12 * B * P0 * C + (0 if _kernels(backend) else 4 * B * H * P0 * P0)) * s
    step = B * S * C * a + (2 * B * S * C * 4 if _low(precision) else 0)   # + widened K, V
    phases = {
        "prompt": {"parameters": P, **copy,
                   "KV cache": kv_cache_bytes(cfg, B, P0, dtype, precision),
                   "working memory": prompt_pass + sampling},
        "generation": {"parameters": P, **copy,
                       "KV cache": kv_cache_bytes(cfg, B, S, dtype, precision),
                       "working memory": step + sampling},
    }
    if P0 + max_new_tokens > cfg.block_size:          # the window slides: full forwards
        T = cfg.block_size
        phases["sliding window"] = {
            "parameters": P, **copy, "KV cache": kv_cache_bytes(cfg, B, T, dtype, precision),
            "activations": activation_bytes(cfg, B, T, backend, dtype, training=False,
                                            precision=precision),
            "working memory": _forward_working_bytes(cfg, B, T, backend, dtype, precision)}
    build = _build_bytes(cfg, dtype)
    device = "GPU memory" if backend == "cuda" else "host RAM"
    if backend != "cuda":
        phases["build"] = build
    parts = max(phases.values(), key=lambda p: sum(p.values()))
    return Estimate("sampling", backend, device, dict(parts),
                    host_total=sum(build.values()) if backend == "cuda" else 0)


# ---------------------------------------------------------------------------- the machine
def _read_int(path):
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def host_available():
    """(bytes, where the number comes from) of host RAM this process may still allocate."""
    found = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append((int(line.split()[1]) * KiB, "by MemAvailable in /proc/meminfo"))
                    break
    except OSError:
        pass
    if not found:
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"),
                          "by the free physical memory"))
        except (ValueError, OSError, AttributeError):
            return None, "unknown"
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                          "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        lim, used = _read_int(limit), _read_int(usage)
        if lim is not None and used is not None and lim < 2 ** 60:
            found.append((max(0, lim - used), "by the cgroup's memory limit"))
    return min(found)


def gpu_available():
    """(free bytes, total bytes) of the cuda device, or (None, reason)."""
    try:
        from .kernels import Runtime
        xp = Runtime("cuda").xp
        free, total = xp.cuda.Device().mem_info
        return int(free), int(total)
    except Exception as e:          # no device, no CuPy: the backend itself will say why
        return None, f"{type(e).__name__}: {e}"


def available(estimate):
    """[(device, bytes available or None, where from, bytes needed)] for the estimate."""
    host, source = host_available()
    if estimate.backend != "cuda":
        return [("host RAM", host, source, estimate.total)]
    free, total = gpu_available()
    gpu = ("GPU memory", free, f"by the GPU's free memory, of {fmt_bytes(total)} in all" if free is not None
           else total, estimate.total)
    return [gpu, ("host RAM", host, source, estimate.host_total)]


def shortfall(estimate):
    """The first (device, available, source, needed) that does not fit, or None."""
    for device, have, source, need in available(estimate):
        if have is not None and need > have:
            return device, have, source, need
    return None


def largest_fitting(make_estimate, upper):
    """The largest b in [1, upper) with make_estimate(b) fitting, or None."""
    lo, hi = 0, upper            # make_estimate(lo) fits (lo=0: none known), hi does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if shortfall(make_estimate(mid)) is None:
            lo = mid
        else:
            hi = mid
    return lo or None


def check(estimate, where, make_estimate=None, batch_size=None, batch_flag="--batch-size",
          smaller_presets=None):
    """Raise NotEnoughMemory when estimate does not fit here: the estimate, what is available,
    and a run that fits (a smaller batch when one does, else the largest preset that does)."""
    short = shortfall(estimate)
    if short is None:
        return
    device, have, source, need = short
    parts = estimate.breakdown() if device == estimate.device else \
        "the float64 initial values while the model is built"
    what = (f"{estimate.task} needs about {fmt_bytes(need)} of {device}: {parts}; only "
            f"{fmt_bytes(have)} is available, {source}")
    hint = None
    if make_estimate is not None and batch_size and batch_size > 1:
        b = largest_fitting(make_estimate, batch_size)
        if b:
            hint = f"{batch_flag} {b} or less fits"
    if hint is None and smaller_presets:
        fits = [name for name, est in smaller_presets() if shortfall(est) is None]
        hint = (f"no batch size fits this model here; the largest preset that fits at "
                f"{batch_flag} 1 is {fits[0]}" if fits else
                "no preset fits at batch size 1 here")
    raise NotEnoughMemory(what, where, hint or f"a smaller {batch_flag} or preset")


def presets_by_size(make_estimate):
    """[(preset name, its estimate at batch 1)], largest model first, for check()."""
    from .config import PRESETS, GPTConfig

    def gen():
        cfgs = sorted(((n, GPTConfig.preset(n)) for n in PRESETS), key=lambda c: -c[1].num_params())
        for name, cfg in cfgs:
            yield name, make_estimate(cfg)
    return gen
