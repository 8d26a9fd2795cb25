"""`scratchgpt info`: which backends run here, and why not; with --preset, the memory a run
of that preset needs (memory.py) against what this machine has.

    scratchgpt info
    scratchgpt info --preset gpt2 --batch-size 8 [--backend numpy] [--json]

    {"backends": {"numpy": {"available": true, ...},
                  "host":  {"available": ..., "reason": ..., "compiler": ..., "threads": ...},
                  "cuda":  {"built": ..., "available": ..., "reason": ..., "device": {...} | null,
                            "cuda_compiler": ..., "cuda_runtime": ..., "cuda_driver": ...}},
     "python": "3.x.y",
     "memory": {"preset": ..., "batch_size": ..., "training": {...}, "sampling": {...},
                "available": [{"device": ..., "bytes": ..., "source": ...}], "fits": bool}}
"""
import argparse
import json
import platform

import numpy as np

from . import memory
from .cli import positive_int
from .config import PRESETS, GPTConfig


def backends_info():
    from .kernels import backend_status
    info = {"numpy": {"available": True, "reason": None, "numpy_version": np.__version__},
            "host": backend_status("host"),
            "cuda": backend_status("cuda")}
    return {"backends": info, "python": platform.python_version()}


def _describe(name, b):
    if not b["available"]:
        return f"{name:6s} unavailable: {b['reason']}"
    if name == "numpy":
        return f"{name:6s} available (NumPy {b['numpy_version']})"
    if name == "host":
        fma = {True: ", fmaf as the FMA instruction",
               False: ", fmaf through the C library"}.get(b.get("fma"), "")
        return f"{name:6s} available ({b['compiler']}{fma}, host executor on {b['threads']} thread(s))"
    d = b["device"]
    gib = d["memory_bytes"] / 2**30
    if b.get("emulated"):
        return (f"{name:6s} emulated on the host executor (SCRATCHGPT_EMULATE_CUDA=1: CuPy-strict "
                f"device arrays, {gib:.0f} GiB, {b['threads']} thread(s)); timings are not a GPU's")
    return (f"{name:6s} available: {d['name']}, {gib:.0f} GiB, compute capability "
            f"{d['compute_capability']} ({b['cuda_compiler']}, runtime {b['cuda_runtime']}, "
            f"driver {b['cuda_driver']}, CuPy {b.get('cupy')})")


def memory_info(args):
    """The training and sampling estimates of --preset at --batch-size, and what is here."""
    from .train import resolve_backend
    backend = resolve_backend(args.backend)
    cfg = GPTConfig.preset(args.preset)
    train = memory.training_estimate(cfg, args.batch_size, backend, args.dtype, args.grad_accum)
    sample = memory.sampling_estimate(cfg, 1, 1, cfg.block_size - 1, backend, args.dtype)
    have = [{"device": d, "bytes": b, "source": src, "needed": need}
            for d, b, src, need in memory.available(train)]
    return {"preset": args.preset, "params": cfg.num_params(), "batch_size": args.batch_size,
            "block_size": cfg.block_size, "backend": backend, "dtype": args.dtype,
            "grad_accum": args.grad_accum, "training": train.to_dict(),
            "sampling": sample.to_dict(), "available": have,
            "fits": memory.shortfall(train) is None}


def _print_memory(m):
    fmt = memory.fmt_bytes
    print(f"\nmemory: training {m['preset']} ({m['params']:,} parameters), batch "
          f"{m['batch_size']} x {m['block_size']} tokens"
          + (f" x {m['grad_accum']} accumulated" if m["grad_accum"] > 1 else "")
          + f", {m['backend']} {m['dtype']}, at its peak:")
    for name, n in m["training"]["parts"].items():
        print(f"  {name:<26}{fmt(n):>12}")
    t = m["training"]
    print(f"  {'total':<26}{fmt(t['total_bytes']):>12} of {t['device']}"
          + (f" (+ {fmt(t['host_bytes'])} of host RAM while the model is built)"
             if t["device"] != "host RAM" else ""))
    s = m["sampling"]
    print(f"sampling one sequence of {m['block_size']} tokens: {fmt(s['total_bytes'])} of "
          f"{s['device']}")
    for a in m["available"]:
        have = "unknown" if a["bytes"] is None else fmt(a["bytes"])
        print(f"available: {have} of {a['device']}, {a['source']}")
    print("fits: " + ("yes" if m["fits"] else "no: try a smaller --batch-size or preset"))


def run(args):
    info = backends_info()
    if args.preset:
        info["memory"] = memory_info(args)
    if args.json:
        print(json.dumps(info))
        return 0
    for name, b in info["backends"].items():
        print(_describe(name, b))
    cuda = info["backends"]["cuda"]
    if cuda.get("built") and not cuda["available"]:
        print(f"       (_cuda built with {cuda['cuda_compiler']} for {cuda['cuda_archs']}, "
              f"CUDA runtime {cuda['cuda_runtime']})")
    if args.preset:
        _print_memory(info["memory"])
    return 0


def register(sub):
    p = sub.add_parser("info", help="backends available here and why not; with --preset, "
                       "the memory a run needs", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    g = p.add_argument_group("memory estimate")
    g.add_argument("--preset", choices=sorted(PRESETS), metavar="PRESET",
                   help=f"print the memory a run of this preset needs: {', '.join(sorted(PRESETS))}")
    g.add_argument("--batch-size", type=positive_int, default=16,
                   help="sequences per micro-batch (default 16, as train)")
    g.add_argument("--grad-accum", type=positive_int, default=1)
    g.add_argument("--backend", default="auto", choices=("auto", "numpy", "host", "cuda"))
    g.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.set_defaults(func=run)
