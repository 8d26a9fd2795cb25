"""Decode speed of weight-only quantisation: one token at a time (batch 1), fp32 weights vs int8
vs int4 (group 64), on the host executor or the GPU, and one layer's GEMV in isolation.

    python3 benchmarks/quant_decode.py --backend host --ckpt runs/mini      # a trained model
    python3 benchmarks/quant_decode.py --backend cuda --preset gpt2 --layer 4096 --json out.json

The quantised models are the fp32 model's block matrices rounded to nearest (the speed does not
depend on how the codes were chosen); they run through compress.store.attach, as a compressed
checkpoint does. The layer benchmark times out = x W^T for x [1, K] with W [K, K] stored as
fp32 (csrc/linear.cu), int8 and int4 (csrc/quant_linear.cu's GEMV), and reports the weight bytes
each launch reads per second.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from scratchgpt import GPT, GPTConfig  # noqa: E402
from scratchgpt.compress.command import target_names  # noqa: E402
from scratchgpt.compress.store import attach  # noqa: E402
from scratchgpt.reference import quant_linear as ql  # noqa: E402

FORMATS = (("fp32", None, 0), ("int8", 8, 0), ("int4 g64", 4, 64))


def build(args, bits, group):
    if args.ckpt:
        model = GPT.load(args.ckpt, backend=args.backend)
    else:
        model = GPT(GPTConfig.preset(args.preset), backend=args.backend, dtype="float32", seed=0)
    if bits is None:
        return model.eval()
    quantized = {}
    params = {k: model.be.asnumpy(v) for k, v in model.params.items()}
    for name in target_names(model.cfg):
        quantized[name] = ql.quantize_rtn(params[name], bits, group)
        params[name] = ql.dequantize(quantized[name])
    model.load_params(params)
    return attach(model, quantized).eval()


def decode_rate(model, tokens, sync):
    prompt = np.zeros((1, 1), np.int64)
    model.generate(prompt, 4, temperature=0)                    # warm-up: allocations, caches
    sync()
    t0 = time.perf_counter()
    model.generate(prompt, tokens, temperature=0)
    sync()
    return tokens / (time.perf_counter() - t0)


def layer_rates(backend, K, repeats):
    """(format, microseconds per launch, weight GB/s) for one [K, K] layer at batch 1."""
    from scratchgpt.kernels import Runtime
    from scratchgpt.kernels.linear import Linear
    from scratchgpt.kernels.quant_linear import QuantLinear
    rt = Runtime(backend)
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((K, K)) / np.sqrt(K)).astype(np.float32)
    x = rt.asarray(rng.standard_normal((1, K)).astype(np.float32))
    dense, qop = Linear(rt), QuantLinear(rt)
    rows = []
    for name, bits, group in FORMATS:
        if bits is None:
            wd, run, nbytes = rt.asarray(w), None, w.nbytes
            run = lambda: dense.forward(x, wd)   # noqa: E731
        else:
            qw = qop.on_backend(ql.quantize_rtn(w, bits, group))
            nbytes = qw.nbytes
            run = lambda qw=qw: qop.forward(x, qw)   # noqa: E731
        run()
        if backend == "cuda":
            import cupy
            start, stop = cupy.cuda.Event(), cupy.cuda.Event()
            start.record()
            for _ in range(repeats):
                run()
            stop.record()
            stop.synchronize()
            seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats
        else:
            t0 = time.perf_counter()
            for _ in range(repeats):
                run()
            seconds = (time.perf_counter() - t0) / repeats
        rows.append({"format": name, "us": seconds * 1e6, "weight_bytes": nbytes,
                     "weight_GB_s": nbytes / seconds / 1e9})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="host", choices=("host", "cuda", "numpy"))
    p.add_argument("--ckpt", default=None, help="an fp32 checkpoint (default: --preset, random weights)")
    p.add_argument("--preset", default="mini")
    p.add_argument("--tokens", type=int, default=64, help="tokens decoded per format")
    p.add_argument("--layer", type=int, default=0, help="also time one K x K layer's GEMV (0: skip)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--json", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    sync = lambda: None   # noqa: E731
    if args.backend == "cuda":
        import cupy
        sync = cupy.cuda.get_current_stream().synchronize
    load = os.getloadavg()[0]
    result = {"backend": args.backend, "model": args.ckpt or args.preset, "tokens": args.tokens,
              "load_1min": load, "decode": []}
    for name, bits, group in FORMATS:
        rate = decode_rate(build(args, bits, group), args.tokens, sync)
        result["decode"].append({"format": name, "tokens_per_s": rate})
        print(f"decode {name:9s} {rate:9.1f} tokens/s  ({args.backend}, batch 1, load {load:.1f})",
              flush=True)
    if args.layer:
        result["layer"] = {"K": args.layer, "rows": layer_rates(args.backend, args.layer, args.repeats)}
        for r in result["layer"]["rows"]:
            print(f"layer {args.layer}x{args.layer} {r['format']:9s} {r['us']:10.1f} us  "
                  f"{r['weight_GB_s']:8.2f} GB/s of weights ({r['weight_bytes']:,} B)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
