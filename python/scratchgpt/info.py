"""`scratchgpt info`: which backends run here, and why not.

    {"backends": {"numpy": {"available": true, ...},
                  "host":  {"available": ..., "reason": ..., "compiler": ..., "threads": ...},
                  "cuda":  {"built": ..., "available": ..., "reason": ..., "device": {...} | null,
                            "cuda_compiler": ..., "cuda_runtime": ..., "cuda_driver": ...}},
     "python": "3.x.y"}
"""
import json
import platform

import numpy as np


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
        return f"{name:6s} available ({b['compiler']}, host executor on {b['threads']} thread(s))"
    d = b["device"]
    gib = d["memory_bytes"] / 2**30
    if b.get("emulated"):
        return (f"{name:6s} emulated on the host executor (SCRATCHGPT_EMULATE_CUDA=1: CuPy-strict "
                f"device arrays, {gib:.0f} GiB, {b['threads']} thread(s)); timings are not a GPU's")
    return (f"{name:6s} available: {d['name']}, {gib:.0f} GiB, compute capability "
            f"{d['compute_capability']} ({b['cuda_compiler']}, runtime {b['cuda_runtime']}, "
            f"driver {b['cuda_driver']}, CuPy {b.get('cupy')})")


def run(args):
    info = backends_info()
    if args.json:
        print(json.dumps(info))
        return 0
    for name, b in info["backends"].items():
        print(_describe(name, b))
    cuda = info["backends"]["cuda"]
    if cuda.get("built") and not cuda["available"]:
        print(f"       (_cuda built with {cuda['cuda_compiler']} for {cuda['cuda_archs']}, "
              f"CUDA runtime {cuda['cuda_runtime']})")
    return 0


def register(sub):
    p = sub.add_parser("info", help="backends available here and why not")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
