"""`scratchgpt bench`: what every kernel is worth, against the hardware's measured limits and
against PyTorch, in one run.

    scratchgpt bench --cpu                 # NumPy model vs PyTorch CPU, kernel table on the CPU
    scratchgpt bench --gpu --out DIR       # kernel table + GPT-2 124M step on the GPU
    scratchgpt bench --json                # ... and a last line of JSON
    scratchgpt bench --gpu --only layernorm,attention

Without --cpu / --gpu both parts run; the GPU part says why when it cannot. The JSON object:
commit, date, device, driver, ceilings {copy_gbps, sgemm_tflops, bf16_gemm_tflops} and
kernels [{name, pass, shape, ms, gbps, tflops, bound, pct_of_ceiling, torch_ms,
speedup_vs_torch, device, ...}] (device, driver and ceilings are the GPU's when it ran, else
the CPU's; the kernels list holds both), end_to_end {numpy_tokens_per_s, torch_tokens_per_s,
cuda_tokens_per_s, torch_cuda_tokens_per_s, torch_compile_tokens_per_s, ... with the MFUs},
host_executor, and the per-device sections "cpu" and "gpu". GPU runs also write
<date>_<device>.json/.md/.png to --out (default benchmarks/results).
"""
import argparse
import datetime
import json
import os
import re
import sys
import warnings

from .benchmarks.common import (Budget, blas_threads, cpu_name, git_commit, import_torch,
                                load_average, set_blas_threads)
from .config import PRESETS, GPTConfig

END_TO_END = "end_to_end"
PARTIAL = "kernels_partial.json"     # the GPU kernel table, written before the end-to-end part
GPT2_SHAPES = dict(B=8, T=1024, vocab_size=50304)     # GPT-2 124M, vocabulary padded to 64
# --small (and the emulated device, where GPT-2 shapes would take hours): the same code on a
# 2-layer model, so that every step of the GPU part runs; its timings are not the GPU's numbers
SMALL_SHAPES = dict(B=2, T=64, vocab_size=512, n_layer=2, n_head=4, n_embd=128)


def gpu_shapes(args):
    """(config, B, T, label) of the GPU part: GPT-2 124M, or the small model with --small or on
    the emulated device."""
    from .kernels import emulating_cuda
    if getattr(args, "small", False) or emulating_cuda():
        s = SMALL_SHAPES
        cfg = GPTConfig(vocab_size=s["vocab_size"], block_size=s["T"], n_layer=s["n_layer"],
                        n_head=s["n_head"], n_embd=s["n_embd"])
        return cfg, s["B"], s["T"], f"small ({s['n_layer']} layers, {s['n_embd']} wide)"
    cfg = GPTConfig.preset("gpt2", vocab_size=GPT2_SHAPES["vocab_size"])
    return cfg, GPT2_SHAPES["B"], GPT2_SHAPES["T"], "GPT-2 124M"


def _wants(only, name):
    return not only or name in {n.strip() for item in only for n in item.split(",")}


def _kernel_only(only):
    """--only minus end_to_end: the kernel names, or None (all) when only end_to_end is asked."""
    if not only:
        return None
    names = [n.strip() for item in only for n in item.split(",") if n.strip() and n.strip() != END_TO_END]
    return names if names else []


# ------------------------------------------------------------------------------------ CPU
def run_cpu(args, budget, log):
    from .benchmarks import cpu, kernels
    from .ops import get_backend

    if args.threads:
        if not set_blas_threads(args.threads):
            log(f"CPU: cannot set NumPy's BLAS threads here; keeping {blas_threads()[0]}")
    threads, source = blas_threads()
    section = {"device": cpu_name(), "cpus": os.cpu_count(), "threads": threads,
               "threads_source": source, "load_average_before": load_average()}
    timer = cpu.WallTimer(warmup=1, repeats=args.repeats or 5, flush_bytes=args.flush_mb << 20)
    log("CPU: measuring ceilings (copy, float32 GEMM)")
    section["ceilings"] = cpu.cpu_ceilings(timer, copy_bytes=args.copy_mb << 20, gemm_n=args.gemm_n)
    cfg = GPTConfig.preset(args.preset)
    torch, reason = import_torch()
    torch_side = None
    if torch is not None:
        torch.set_num_threads(threads)            # same threads as NumPy's BLAS
        torch_side = (torch, torch.from_numpy)
    section["torch"] = torch.__version__ if torch else None
    section["torch_reason"] = reason

    names = _kernel_only(args.only)
    section["kernels"] = []
    if names != []:
        cases = kernels.select(kernels.model_cases(**kernels.model_dims(cfg, args.batch, args.seq)), names)
        log(f"CPU: {len(cases)} kernel cases at the {args.preset} preset's shapes (NumPy reference, float32)")
        section["kernels"] = kernels.run_table(cases, get_backend("numpy"), timer, section["ceilings"],
                                               torch_side, budget, progress=args.progress)
    for r in section["kernels"]:
        r["device"] = "cpu"
    if _wants(args.only, END_TO_END):
        log(f"CPU: end to end, {args.preset} B={args.batch} T={args.seq}, {threads} threads")
        section[END_TO_END] = cpu.cpu_end_to_end(cfg, args.batch, args.seq, steps=args.steps,
                                                 warmup=args.warmup, threads=threads,
                                                 precision=args.precision)
        section[END_TO_END].update(preset=args.preset, threads_source=source)
        log("CPU: host executor, one nano step")
        section["host_executor"] = cpu.host_nano_step()
        if args.profile:
            section["numpy_profile"] = cpu.profile_numpy_step(cfg, args.batch, args.seq)
    section["load_average_after"] = load_average()
    return section


# ------------------------------------------------------------------------------------ GPU
def run_gpu(args, budget, log):
    from .benchmarks import gpu, kernels
    from .ops import Backend, get_backend

    cp, reason = gpu.import_cupy()
    if cp is None:
        return {"skipped": reason}
    section = gpu.device_info(cp)
    torch, torch_reason = gpu.torch_for_gpu()
    section["torch"] = torch.__version__ if torch else None
    section["torch_reason"] = torch_reason
    timer = gpu.EventTimer(cp, warmup=3, repeats=args.repeats or 20)
    cfg, B, T, label = gpu_shapes(args)
    small = label != "GPT-2 124M"
    section["model"] = label
    log(f"GPU: {section['device']}: measuring ceilings (copy, SGEMM, bf16 GEMM)")
    section["ceilings"] = gpu.gpu_ceilings(cp, timer, torch=torch,
                                           **(dict(copy_bytes=16 << 20, gemm_n=256) if small else {}))

    names = _kernel_only(args.only)
    section["kernels"] = []
    if names != []:
        cases = kernels.model_cases(**kernels.model_dims(cfg, B, T))
        # the 16-bit tensor-core kernels: the model's linears against cuBLAS (F.linear on the
        # same bf16 tensors), flash attention against SDPA
        cases += kernels.linear_low_cases(B, T, cfg.n_embd, cfg.vocab_size)
        cases += kernels.attention_low_cases(B, T, cfg.n_embd, cfg.n_head)
        if not args.no_sweep and not small:
            cases += kernels.sweep_cases(B=B, T=T)
        cases = kernels.select(cases, names)
        why = None
        try:
            with warnings.catch_warnings():     # ops without a kernel are listed in the table
                warnings.simplefilter("ignore")
                backend = get_backend("cuda")
        except Exception as e:          # no kernels yet: PyTorch's times are still worth having
            why = f"cuda backend unavailable: {type(e).__name__}: {e}"
            backend = Backend("cuda", cp, {}, fallbacks=list(kernels.OPS))
        log(f"GPU: {len(cases)} kernel cases")
        # keep time for the end-to-end step when a budget is set (torch.compile runs only if
        # enough is left after it); the sweep comes after the GPT-2 shapes, so it is cut first
        reserve = 75 if _wants(args.only, END_TO_END) else 0
        table_budget = Budget(None if budget.seconds is None else max(0.0, budget.left() - reserve))
        to_torch = (lambda a: torch.from_dlpack(a)) if torch else None
        section["kernels"] = kernels.run_table(
            cases, backend, timer, section["ceilings"], (torch, to_torch) if torch else None,
            table_budget, progress=args.progress, check_rows=args.check_rows)
        for r in section["kernels"]:
            if why and r["skip"] and r["skip"].startswith("no cuda kernel"):
                r["skip"] = why
        if args.out:                # kept even if the end-to-end part is cut short
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, PARTIAL), "w") as f:
                json.dump(section, f, indent=1, default=float)
    for r in section["kernels"]:
        r["device"] = "cuda"
    if _wants(args.only, END_TO_END):
        log("GPU: end to end, GPT-2 124M training step")
        try:
            section[END_TO_END] = gpu.gpu_end_to_end(
                cp, cfg, B, T, section["ceilings"], torch,
                compile=not args.no_compile, budget=budget)
        except Exception as e:          # keep the kernel table whatever happens here
            section[END_TO_END] = {"reason": f"{type(e).__name__}: {e}"}
    return section


# --------------------------------------------------------------------------------- output
def assemble(cpu_section, gpu_section):
    """One report: the top-level keys describe the GPU when it ran, else the CPU; the kernel
    records of both (each says its device) move to the top-level list."""
    gpu_ran = gpu_section is not None and "skipped" not in gpu_section
    main = gpu_section if gpu_ran else (cpu_section or {})
    sections = [s for s in (gpu_section, cpu_section) if s is not None]
    return {"commit": git_commit(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"), "device": main.get("device"), "driver": main.get("driver"),
        "ceilings": main.get("ceilings"),
        "kernels": [r for s in sections for r in s.pop("kernels", [])],
        END_TO_END: {**(cpu_section or {}).get(END_TO_END, {}), **(gpu_section or {}).get(END_TO_END, {})},
        "host_executor": (cpu_section or {}).get("host_executor"),
        "cpu": cpu_section, "gpu": gpu_section}


def markdown(report):
    from .benchmarks import kernels
    from .benchmarks.report import (CPU_E2E_ROWS, GPU_E2E_ROWS, ceilings_table, end_to_end_table,
                                    kernel_table)
    parts = [f"# scratchgpt bench — {report['date']}, commit {report['commit']}"]
    for key, rows, label in (("gpu", GPU_E2E_ROWS, "GPU"), ("cpu", CPU_E2E_ROWS, "CPU")):
        s = report.get(key)
        records = [r for r in report["kernels"] if r["device"] == ("cuda" if key == "gpu" else "cpu")]
        if s is None:
            continue
        if "skipped" in s:
            parts.append(f"## {label}: skipped — {s['skipped']}")
            continue
        extra = (f", driver {s['driver']}, CUDA {s['cuda_runtime']}" if key == "gpu"
                 else f", {s['threads']} of {s['cpus']} cores, load average "
                 f"{s['load_average_before']} before / {s['load_average_after']} after")
        parts.append(f"## {label}: {s['device']}{extra}")
        parts.append(ceilings_table(s["ceilings"], "Ceilings (measured in this run)"))
        if records:
            parts.append(kernel_table(records, "Kernels"))
            misses = kernels.summarize_goals(records)
            if misses:
                parts.append("Goals missed (memory-bound ≥ 85% of copy, matmul ≥ 90% of GEMM, "
                             "≥ 1.0x PyTorch):\n" + "\n".join(f"- {m}" for m in misses))
            low = (kernels.linear_low_summary(records, s["ceilings"])
                   + kernels.attention_low_summary(records, s["ceilings"]))
            if low:
                parts.append("bf16 on tensor cores (linear vs cuBLAS: goal 80%; attention "
                             "forward + backward vs SDPA: goal 70%):\n"
                             + "\n".join(f"- {line}" for line in low))
        e = s.get(END_TO_END)
        if e and e.get("reason"):
            parts.append(f"End to end not measured: {e['reason']}")
        elif e:
            parts.append(end_to_end_table(e, rows, "End to end: one training step"))
            if key == "cpu":
                ratio = e.get("numpy_vs_torch")
                parts.append(f"NumPy / PyTorch CPU: {ratio:.2f}x (goal 0.8x)" if ratio
                             else f"PyTorch CPU: {e.get('torch_reason')}")
        h = s.get("host_executor")
        if h is not None:
            parts.append(f"Host executor, one nano training step: "
                         + (f"{h['ms_per_step']:.1f} ms (NumPy {h['numpy_ms_per_step']:.1f} ms)"
                            if h.get("ms_per_step") else f"not measured: {h['reason']}"))
        prof = s.get("numpy_profile")
        if prof:
            parts.append("NumPy step profile (own time per step):\n" + "\n".join(
                f"- {t['s_per_step'] * 1e3:7.2f} ms {100 * t['share']:4.1f}%  {t['function']}"
                for t in prof["top"]))
    return "\n\n".join(parts) + "\n"


def write_results(report, out_dir, section, e2e_rows, tag, device):
    """<date>_<device>.json / .md / .png in out_dir; returns the paths."""
    from .benchmarks.report import plot
    os.makedirs(out_dir, exist_ok=True)
    day = report["date"][:10]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", section["device"] or tag).strip("-")
    stem = os.path.join(out_dir, f"{day}_{slug}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(report))
    written = [stem + ".json", stem + ".md"]
    try:
        plot(section, [r for r in report["kernels"] if r["device"] == device], stem + ".png",
             f"{tag.upper()} {section['device']}", e2e_rows)
        written.append(stem + ".png")
    except ImportError as e:       # no matplotlib on this machine: the numbers are written
        print(f"no figure: {e}", file=sys.stderr)
    return written


def check_memory(args, do_cpu, do_gpu):
    """Refuse before allocating when the end-to-end models do not fit (memory.py): on the CPU
    the NumPy model and its PyTorch twin (counted as the same size) beside the ceilings'
    buffers; on the GPU the GPT-2 124M step and its PyTorch twin."""
    import importlib.util

    from . import memory
    from .errors import UsageError
    cfg = GPTConfig.preset(args.preset)
    for flag, value in (("--batch", args.batch), ("--seq", args.seq), ("--steps", args.steps)):
        if value < 1:
            raise UsageError(f"{value} is not positive", flag, "an integer >= 1")
    if args.seq > cfg.block_size:
        raise UsageError(f"{args.seq} exceeds the {args.preset} preset's block_size "
                         f"{cfg.block_size}", "--seq", f"at most {cfg.block_size}")
    twins = 2 if importlib.util.find_spec("torch") is not None else 1

    def cpu_estimate(batch):
        e = memory.training_estimate(cfg, batch, "numpy", "float32", seq=args.seq,
                                     precision=args.precision)
        if twins > 1:
            e.parts["PyTorch twin"] = e.total
        e.parts["ceiling buffers"] = (2 * args.copy_mb + args.flush_mb) * memory.MiB + \
            3 * 4 * args.gemm_n ** 2
        e.task = "the CPU benchmark"
        return e

    if do_cpu and _wants(args.only, END_TO_END):
        memory.check(cpu_estimate(args.batch), f"--preset {args.preset} --batch {args.batch} "
                     f"--seq {args.seq}", make_estimate=cpu_estimate, batch_size=args.batch,
                     batch_flag="--batch")
    if do_gpu and _wants(args.only, END_TO_END):
        from .kernels import backend_status
        if backend_status("cuda")["available"]:
            cfg, B, T, label = gpu_shapes(args)
            e = memory.training_estimate(cfg, B, "cuda", "float32", seq=T)
            e.parts["PyTorch twin"] = e.total
            e.task = "the GPU benchmark"
            memory.check(e, f"{label}, B={B} T={T}", batch_size=None)


def run(args):
    from .benchmarks.report import CPU_E2E_ROWS, GPU_E2E_ROWS
    if args.seq is None:
        args.seq = GPTConfig.preset(args.preset).block_size
    do_cpu, do_gpu = (args.cpu, args.gpu) if (args.cpu or args.gpu) else (True, True)
    if do_gpu:                 # the GPU part runs the cuda kernels: fp32 until bf16 ones exist
        from .precision import check_supported
        check_supported("cuda", args.precision, f"--precision {args.precision} (the GPU part)",
                        "--cpu, or --precision fp32")
    check_memory(args, do_cpu, do_gpu)
    budget = Budget(args.budget_s)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    gpu_section = run_gpu(args, budget, log) if do_gpu else None
    cpu_section = run_cpu(args, budget, log) if do_cpu else None
    report = assemble(cpu_section, gpu_section)
    written = []
    if gpu_section is not None and "skipped" not in gpu_section:
        out_dir = args.out or os.path.join("benchmarks", "results")
        written += write_results(report, out_dir, gpu_section, GPU_E2E_ROWS, "gpu", "cuda")
        partial = os.path.join(out_dir, PARTIAL)
        if os.path.exists(partial):     # the full report supersedes it
            os.remove(partial)
    elif cpu_section is not None and args.out:
        written += write_results(report, args.out, cpu_section, CPU_E2E_ROWS, "cpu", "cpu")
    report["files"] = written
    print(markdown(report))
    for path in written:
        print(f"wrote {path}")
    if args.json:
        print(json.dumps(report, default=float))
    return 0


def register(sub):
    p = sub.add_parser("bench", help="kernel and end-to-end benchmarks (GPU and CPU) against "
                       "the measured ceilings and PyTorch",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run the CPU part")
    p.add_argument("--gpu", action="store_true", help="run the GPU part (says why when it cannot)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on the last line")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="only these kernels (repeat or comma-separate; 'end_to_end' for the "
                   "training-step comparison)")
    p.add_argument("--out", help="folder for <date>_<device>.json/.md/.png (GPU default "
                   "benchmarks/results; CPU runs write only when given)")
    p.add_argument("--preset", default="mini", choices=sorted(PRESETS), metavar="NAME",
                   help="CPU model size, a GPTConfig preset (default mini)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for NumPy's BLAS and for torch (default: NumPy's current count)")
    p.add_argument("--batch", type=int, default=8, help="CPU batch size (default 8)")
    p.add_argument("--seq", type=int, default=None, help="CPU sequence length (default: the preset's block size)")
    p.add_argument("--steps", type=int, default=10, help="timed CPU training steps (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="CPU warm-up steps (default 2)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per kernel (default 20 on the GPU, 5 on the CPU)")
    p.add_argument("--copy-mb", type=int, default=256, help="CPU copy-ceiling buffer (MB)")
    p.add_argument("--gemm-n", type=int, default=1024, help="CPU GEMM-ceiling size n (n x n x n)")
    p.add_argument("--flush-mb", type=int, default=64, help="CPU cache-flush buffer (MB)")
    p.add_argument("--check-rows", type=int, default=1024,
                   help="GPU reference checks run at most this many rows (default 1024)")
    p.add_argument("--no-sweep", action="store_true", help="GPU: GPT-2 shapes only")
    p.add_argument("--small", action="store_true",
                   help="GPU: a 2-layer model instead of GPT-2 124M, to check the code path "
                        "(always so on the emulated device, SCRATCHGPT_EMULATE_CUDA=1)")
    p.add_argument("--no-compile", action="store_true", help="GPU: skip torch.compile")
    p.add_argument("--budget-s", type=float, default=None,
                   help="stop starting new work after this many seconds")
    p.add_argument("--profile", action="store_true",
                   help="CPU: profile the NumPy training step (top functions by own time)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"),
                   help="CPU: the NumPy training step in this precision (bf16 / fp16 storage, "
                   "fp32 masters); the GPU part runs fp32 only until its bf16 kernels exist")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.set_defaults(func=run)


def main(argv=None):
    """`python -m scratchgpt.bench ...`: the same command without the other subcommands'
    imports (a bare GPU machine may lack their dependencies)."""
    parser = argparse.ArgumentParser(prog="scratchgpt")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
