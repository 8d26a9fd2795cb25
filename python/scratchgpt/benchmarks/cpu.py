"""CPU benchmarks: the machine's ceilings, the kernel table on the NumPy reference against
PyTorch CPU, one training step of the NumPy model against the same model in PyTorch (same
weights, same batch, same thread count), and the host executor's cost for one nano step."""
import cProfile
import os
import pstats
import time
import warnings

import numpy as np

from ..config import GPTConfig
from ..model import GPT
from ..ops import get_backend
from ..optim import AdamW
from .common import blas_threads, import_torch, median, randint

ADAMW = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
MAX_GRAD_NORM = 1.0


class WallTimer:
    """Wall-clock time of each call in ms, after warm-up. Between repeats a buffer larger than
    the last-level cache is written, so every repeat starts with cold caches, as on the GPU."""

    def __init__(self, warmup=1, repeats=5, flush_bytes=64 << 20):
        self.warmup, self.repeats = warmup, repeats
        self.flush = np.empty(max(flush_bytes // 4, 1), dtype=np.float32)

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        times = []
        for i in range(self.repeats):
            self.flush.fill(i)
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return times


def cpu_ceilings(timer, copy_bytes=256 << 20, gemm_n=1024):
    """Copy bandwidth (bytes read + written) and float32 GEMM rate through NumPy's BLAS."""
    src = np.random.default_rng(0).standard_normal(copy_bytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    copy_ms = median(timer(lambda: np.copyto(dst, src)))
    a = np.random.default_rng(1).standard_normal((gemm_n, gemm_n), dtype=np.float32)
    b = np.random.default_rng(2).standard_normal((gemm_n, gemm_n), dtype=np.float32)
    c = np.empty_like(a)
    gemm_ms = median(timer(lambda: np.matmul(a, b, out=c)))
    return {"copy_gbps": 2 * src.nbytes / (copy_ms * 1e-3) / 1e9,
            "sgemm_tflops": 2 * gemm_n ** 3 / (gemm_ms * 1e-3) / 1e12,
            "bf16_gemm_tflops": None, "bf16_gemm_reason": "NumPy has no bfloat16 GEMM",
            "copy_bytes": copy_bytes, "gemm_n": gemm_n}


# --------------------------------------------------------------------------- end to end
def batches(cfg, batch, seq, n, seed=0):
    """n random (inputs, targets) pairs of int64 token ids."""
    return [(randint(np, 0, cfg.vocab_size, (batch, seq), seed + 2 * i),
             randint(np, 0, cfg.vocab_size, (batch, seq), seed + 2 * i + 1)) for i in range(n)]


def numpy_step(model, opt):
    """One training step of our model: forward, hand-written backward, clipped AdamW (through
    MixedPrecision: the loss scale and the working copy's refresh under bf16 / fp16)."""
    from ..precision import MixedPrecision
    mp = MixedPrecision(model, opt)

    def step(x, y):
        _, loss = model.forward(x, y)
        mp.step(mp.backward(), max_grad_norm=MAX_GRAD_NORM)
        return float(loss)
    return step


def torch_step(torch, model, opt):
    def step(x, y):
        opt.zero_grad(set_to_none=True)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        opt.step()
        return loss.detach()
    return step


def time_steps(step, data, warmup, sync=None):
    """Run warmup steps, then time each remaining step. Returns (ms per step list, first loss)."""
    first = None
    times = []
    for i, (x, y) in enumerate(data):
        t0 = time.perf_counter()
        loss = step(x, y)
        if sync is not None:
            sync()
        if first is None:
            first = float(loss)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return times, first


def torch_cpu_model(torch, cfg, params, dtype):
    from .torch_gpt import TorchGPT, make_adamw
    model = TorchGPT(cfg).to(getattr(torch, dtype)).load_numpy(params)
    return model, make_adamw(model, **ADAMW)


def cpu_end_to_end(cfg, batch, seq, steps=10, warmup=2, dtype="float32", threads=None, seed=0,
                   precision="fp32"):
    """Training tokens/s of the NumPy model and of the same model in PyTorch CPU (eager), from
    the same weights on the same batches, with torch held to NumPy's BLAS thread count. The
    NumPy model runs in `precision` (the PyTorch twin in fp32)."""
    if seq > cfg.block_size:
        raise ValueError(f"seq: {seq} exceeds the preset's block_size {cfg.block_size}")
    n_threads, source = (threads, "argument") if threads else blas_threads()
    data = batches(cfg, batch, seq, warmup + steps, seed)
    out = {"model": {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "vocab_size")},
           "params": cfg.num_params(), "batch": batch, "seq": seq, "dtype": dtype, "steps": steps,
           "warmup": warmup, "threads": n_threads, "threads_source": source,
           "precision": precision}

    model = GPT(cfg, backend="numpy", dtype=dtype, seed=seed, precision=precision)
    init = {k: v.copy() for k, v in model.params.items()}
    opt = AdamW(model.params, model.be, **ADAMW)
    ms, loss = time_steps(numpy_step(model, opt), data, warmup)
    out.update(numpy_ms_per_step=median(ms), numpy_tokens_per_s=batch * seq / (median(ms) * 1e-3),
               numpy_first_loss=loss)

    torch, reason = import_torch()
    out.update(torch_ms_per_step=None, torch_tokens_per_s=None, torch_first_loss=None,
               numpy_vs_torch=None, torch_reason=reason)
    if torch is None:
        return out
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        tmodel, topt = torch_cpu_model(torch, cfg, init, dtype)
        tdata = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in data]
        ms, tloss = time_steps(torch_step(torch, tmodel, topt), tdata, warmup)
    finally:
        torch.set_num_threads(previous)
    out.update(torch_ms_per_step=median(ms), torch_tokens_per_s=batch * seq / (median(ms) * 1e-3),
               torch_first_loss=tloss, torch_version=torch.__version__)
    out["numpy_vs_torch"] = out["numpy_tokens_per_s"] / out["torch_tokens_per_s"]
    return out


def profile_numpy_step(cfg, batch, seq, steps=3, dtype="float32", top=15, seed=0):
    """Where a NumPy training step spends its time: cProfile's top functions by own time
    (tottime), as (function, seconds per step, share of the step)."""
    model = GPT(cfg, backend="numpy", dtype=dtype, seed=seed)
    opt = AdamW(model.params, model.be, **ADAMW)
    step = numpy_step(model, opt)
    data = batches(cfg, batch, seq, steps + 1, seed)
    step(*data[0])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for x, y in data[1:]:
        step(x, y)
    prof.disable()
    total = (time.perf_counter() - t0) / steps
    stats = pstats.Stats(prof)
    rows = []
    for (path, line, fn), (_, _, tottime, _, _) in stats.stats.items():
        where = f"{os.path.basename(path)}:{line}({fn})" if path != "~" else fn
        if "scratchgpt" in path:
            where = path.split("scratchgpt" + os.sep, 1)[-1] + f":{line}({fn})"
        rows.append((where, tottime / steps))
    rows.sort(key=lambda r: -r[1])
    return {"step_s": total, "top": [{"function": w, "s_per_step": s, "share": s / total}
                                     for w, s in rows[:top]]}


def host_nano_step(steps=3, warmup=1, batch=4, seed=0):
    """ms for one nano training step on the host executor (the CUDA kernels run on the CPU),
    or a reason when that backend is not available here."""
    cfg = GPTConfig.preset("nano")
    with warnings.catch_warnings():   # ops without a kernel: listed in the result instead
        warnings.simplefilter("ignore")
        try:
            be = get_backend("host")
        except Exception as e:        # not built, or not in this version
            return {"ms_per_step": None, "reason": f"{type(e).__name__}: {e}"}
        model = GPT(cfg, backend="host", dtype="float32", seed=seed)
    opt = AdamW(model.params, model.be, **ADAMW)
    data = batches(cfg, batch, cfg.block_size, warmup + steps, seed)
    ms, _ = time_steps(numpy_step(model, opt), data, warmup)
    ref = GPT(cfg, backend="numpy", dtype="float32", seed=seed)
    ref_ms, _ = time_steps(numpy_step(ref, AdamW(ref.params, ref.be, **ADAMW)), data, warmup)
    return {"ms_per_step": median(ms), "numpy_ms_per_step": median(ref_ms), "batch": batch,
            "seq": cfg.block_size, "fallbacks": list(be.fallbacks), "reason": None}
