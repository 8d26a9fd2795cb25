"""`scratchgpt info`: which backends run here, and why not."""
import json
import platform

import numpy as np


def backends_info():
    from .ops import get_backend
    info = {"numpy": {"available": True, "numpy_version": np.__version__}}
    for name in ("host", "cuda"):
        try:
            get_backend(name)
            info[name] = {"available": True}
        except (NotImplementedError, RuntimeError, ImportError) as e:
            info[name] = {"available": False, "reason": str(e)}
    return {"backends": info, "python": platform.python_version()}


def run(args):
    info = backends_info()
    if args.json:
        print(json.dumps(info))
        return 0
    for name, b in info["backends"].items():
        state = "available" if b["available"] else f"unavailable: {b['reason']}"
        print(f"{name:6s} {state}")
    return 0


def register(sub):
    p = sub.add_parser("info", help="backends available here and why not")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)
