"""AdamW state per rank with and without ZeRO-1, measured on the arrays the optimizer holds:

    mpiexec -n 2 python3 benchmarks/zero_memory.py --preset gpt2      # also -n 1; prints JSON

The parameters are the preset's shapes (float32), the optimizer is distributed.ShardedAdamW over
MPI (or AdamW on one rank). The parameters are zero pages never touched, so a large preset
fits on a small machine; the moments each rank holds are real arrays.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from scratchgpt import distributed                       # noqa: E402
from scratchgpt.config import GPTConfig                  # noqa: E402
from scratchgpt.model import GPT                         # noqa: E402
from scratchgpt.ops import get_backend                   # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="gpt2")
    args = p.parse_args()
    cfg = GPTConfig.preset(args.preset)
    one_layer = GPT(GPTConfig.preset(args.preset, n_layer=1), dtype="float32")
    shapes = {k: v.shape for k, v in one_layer.params.items()}   # layer 0's, repeated
    for k in [k for k in shapes if k.startswith("h.0.")]:
        for i in range(1, cfg.n_layer):
            shapes[k.replace("h.0.", f"h.{i}.")] = shapes[k]
    del one_layer
    params = {k: np.zeros(s, np.float32) for k, s in shapes.items()}   # untouched pages
    world = distributed.join(argparse.Namespace(zero=1))
    opt = world.optimizer(params, get_backend("numpy"), zero=1)
    held = (opt.moment_bytes() if hasattr(opt, "moment_bytes") else
            sum(a.nbytes for a in opt.m.values()) + sum(a.nbytes for a in opt.v.values()))
    every = world.allgather_obj(int(held), "report")
    if world.rank == 0:
        print(json.dumps({"preset": args.preset,
                          "params": int(sum(a.size for a in params.values())),
                          "ranks": world.size, "moment_bytes_per_rank": every}))
    world.finish()


if __name__ == "__main__":
    main()
