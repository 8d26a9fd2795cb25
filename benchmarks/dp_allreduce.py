"""Time the data-parallel gradient reduction (distributed.OrderedReducer over MPI) for a preset's
parameter count, and the bytes each rank sends:

    mpiexec -n 2 python3 benchmarks/dp_allreduce.py --preset gpt2 --repeats 3    # prints JSON

Each rank holds random float32 gradients of the preset's size in one tensor; the reduction is
timed (median of the repeats, after one warm-up) and checked against the rank-order sum.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from scratchgpt import distributed                       # noqa: E402
from scratchgpt.config import GPTConfig                  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="gpt2")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--bucket-mb", type=float, default=distributed.DEFAULT_BUCKET_MB)
    args = p.parse_args()
    world = distributed.join(argparse.Namespace(preset=args.preset, bucket_mb=args.bucket_mb))
    n = GPTConfig.preset(args.preset).num_params()
    every = [np.random.default_rng(r).standard_normal(n, dtype=np.float32)
             for r in range(world.size)]
    expected = every[0].copy()
    for g in every[1:]:
        expected += g                                     # the grad-accum order
    mine = every[world.rank]
    del every
    reducer = distributed.OrderedReducer(world.transport, [("g", (n,))], np.float32,
                                         world.bucket_bytes, world.size)
    times = []
    for i in range(args.repeats + 1):
        grads = {"g": mine.copy()}
        world.allgather_obj(None, "start")
        t0 = time.perf_counter()
        reducer.reduce(grads)
        if i:
            times.append(time.perf_counter() - t0)
    exact = bool(np.array_equal(grads["g"], expected))
    sent = 2 * (world.size - 1) * (reducer.layout.padded // world.size) * 4
    every = world.allgather_obj((float(np.median(times)), exact), "report")
    if world.rank == 0:
        secs = max(t for t, _ in every)
        print(json.dumps({"preset": args.preset, "params": n, "ranks": world.size,
                          "buckets": len(reducer.layout.buckets), "bytes_sent_per_rank": sent,
                          "seconds": round(secs, 4),
                          "GB_per_s_per_rank": round(sent / secs / 1e9, 2),
                          "equals_rank_order_sum": all(e for _, e in every)}))
    world.finish()


if __name__ == "__main__":
    main()
