"""AdamW state per rank with and without ZeRO-1, measured on the arrays the optimizer holds:

    mpiexec -n 2 python3 benchmarks/zero_memory.py --preset gpt2      # also -n 1; prints JSON
    mpiexec -n 2 python3 benchmarks/zero_memory.py --preset gpt2 --precision bf16

The parameters are the preset's shapes (float32), the optimizer is distributed.ShardedAdamW over
MPI (or AdamW on one rank). The parameters are zero pages never touched, so a large preset
fits on a small machine; the moments each rank holds are real arrays. Under --precision bf16 /
fp16 the fp32 masters each rank holds (its shard with ZeRO-1 on several ranks, all of them on
one) and the 16-bit weights the forward reads are reported too.
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
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
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
    count = int(sum(a.size for a in params.values()))
    opt = world.optimizer(params, get_backend("numpy"), zero=1, precision=args.precision)
    sharded = isinstance(opt, distributed.ShardedAdamW)
    moments = (opt.moment_bytes() if sharded else
               sum(a.nbytes for a in opt.m.values()) + sum(a.nbytes for a in opt.v.values()))
    # one rank: the parameters are the masters, and a model rounds its 16-bit copy from them
    masters = opt.master_bytes() if sharded else sum(a.nbytes for a in params.values())
    lowp = (0 if args.precision == "fp32" else
            opt.lowp.nbytes if sharded and opt.masters is not None else 2 * count)
    every = world.allgather_obj((int(moments), int(masters), int(lowp)), "report")
    if world.rank == 0:
        report = {"preset": args.preset, "params": count, "ranks": world.size,
                  "precision": args.precision, "moment_bytes_per_rank": [e[0] for e in every]}
        if args.precision != "fp32":
            report.update(master_bytes_per_rank=[e[1] for e in every],
                          weight16_bytes_per_rank=[e[2] for e in every])
        print(json.dumps(report))
    world.finish()


if __name__ == "__main__":
    main()
