"""`scratchgpt bench`: the plain PyTorch GPT agrees with our model, the byte and FLOP formulas,
the rates and bounds, the reference check catching a wrong kernel, and the CPU benchmark's
JSON at tiny sizes. The GPU part is exercised where it can be: it must say why it skips."""
import json

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt.benchmarks import kernels
from scratchgpt.benchmarks.common import import_torch, rel_err
from scratchgpt.benchmarks.cpu import WallTimer, cpu_end_to_end
from scratchgpt.cli import main
from scratchgpt.ops import Backend, reference_backend

torch, TORCH_REASON = import_torch()
needs_torch = pytest.mark.skipif(torch is None, reason=f"PyTorch comparison: {TORCH_REASON}")


@needs_torch
def test_torch_gpt_matches_numpy_model_float64():
    """Same weights, same batch, float64: loss and every gradient agree to 1e-10."""
    from scratchgpt.benchmarks.torch_gpt import TorchGPT
    cfg = GPTConfig.preset("nano")
    ours = GPT(cfg, backend="numpy", dtype="float64", seed=3)
    theirs = TorchGPT(cfg).double().load_numpy(ours.params)
    rng = np.random.default_rng(0)
    x = rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    y = rng.integers(0, cfg.vocab_size, (3, cfg.block_size))
    y[0, :4] = -1                                      # ignored targets count the same way
    _, loss = ours.forward(x, y)
    grads = ours.backward()
    _, tloss = theirs(torch.from_numpy(x), torch.from_numpy(y))
    tloss.backward()
    assert abs(float(loss) - tloss.item()) <= 1e-10 * abs(float(loss))
    for name, p in theirs.named_parameters():
        assert rel_err(p.grad.numpy(), grads[name]) < 1e-10, name


@needs_torch
def test_torch_gpt_rejects_what_it_does_not_model():
    from scratchgpt.benchmarks.torch_gpt import TorchGPT
    with pytest.raises(ValueError, match="pre-LN"):
        TorchGPT(GPTConfig.preset("gpt1"))


def test_formulas_by_hand():
    lin = kernels.Case("linear", "forward", {"N": 2, "in": 3, "out": 4, "bias": True})
    assert lin.bytes() == 4 * (2 * 3 + 4 * 3 + 4 + 2 * 4)      # x, W, b, out
    assert lin.flops() == 2 * 2 * 3 * 4
    assert kernels.Case("linear", "backward", lin.shape).flops() == 2 * lin.flops()
    # causal attention, T=2: 3 query-key pairs per head, each 2·D for QK^T and 2·D for PV
    att = kernels.Case("attention", "forward", {"B": 1, "T": 2, "C": 4, "H": 2})
    assert att.flops() == 2 * 3 * (2 * 2 + 2 * 2)
    assert att.bytes() == 4 * (3 * 2 * 4 + 2 * 4 + 2 * 2)     # qkv -> y, lse
    ln = kernels.Case("layernorm", "forward", {"N": 5, "C": 7})
    assert ln.bytes() == 4 * (2 * 35 + 2 * 7 + 2 * 5)
    assert kernels.Case("adamw", "update", {"P": 10}).bytes() == 7 * 4 * 10


def test_rates_bound_and_percentage():
    ceilings = {"copy_gbps": 100.0, "sgemm_tflops": 10.0}     # ridge at 100 FLOP/byte
    ln = kernels.Case("layernorm", "forward", {"N": 1000, "C": 1000})
    r = kernels.rates(ln, 1.0, ceilings)
    assert r["bound"] == "memory"
    assert r["gbps"] == pytest.approx(ln.bytes() / 1e-3 / 1e9)
    assert r["pct_of_ceiling"] == pytest.approx(100 * r["gbps"] / 100.0)
    mm = kernels.Case("linear", "forward", {"N": 4096, "in": 4096, "out": 4096, "bias": False})
    r = kernels.rates(mm, 2.0, ceilings)
    assert r["bound"] == "compute"
    assert r["pct_of_ceiling"] == pytest.approx(100 * r["tflops"] / 10.0)


def test_select_names_and_unknown():
    cases = kernels.model_cases(B=2, T=4, C=8, H=2, V=16, P=100)
    assert {c.op for c in kernels.select(cases, ["gelu,layernorm"])} == {"gelu", "layernorm"}
    with pytest.raises(ValueError, match="unknown kernel"):
        kernels.select(cases, ["layernrom"])


def _tiny_table(backend, cases):
    return kernels.run_table(cases, backend, WallTimer(warmup=0, repeats=2, flush_bytes=1 << 16),
                             {"copy_gbps": 10.0, "sgemm_tflops": 0.1}, progress=False)


def test_table_times_the_reference_and_checks_it():
    cases = kernels.model_cases(B=2, T=8, C=16, H=2, V=32, P=500)
    records = _tiny_table(reference_backend(), cases)
    assert len(records) == len(cases)
    for r in records:
        assert r["skip"] is None, r
        assert r["ms"] > 0 and r["gbps"] > 0 and r["tflops"] > 0 and r["pct_of_ceiling"] > 0
        assert r["check_rel_err"] < 1e-5                       # float32 vs the float64 reference


def test_table_refuses_a_wrong_kernel_and_skips_fallbacks():
    class OffByOnePercent:                                    # a "kernel" with a wrong answer
        @staticmethod
        def forward(x, weight, bias, eps=1e-5):
            out, cache = reference_backend().layernorm.forward(x, weight, bias, eps)
            return out * 1.01, cache
    ops = dict(reference_backend().ops, layernorm=OffByOnePercent)
    backend = Backend("fake", np, ops, fallbacks=["gelu"])
    records = _tiny_table(backend, [kernels.Case("layernorm", "forward", {"N": 8, "C": 16}, check=True),
                                    kernels.Case("gelu", "forward", {"N": 8, "C": 16})])
    assert records[0]["ms"] is None and "wrong result" in records[0]["skip"]
    assert records[0]["check_rel_err"] == pytest.approx(0.01, rel=1e-3)
    assert records[1]["ms"] is None and "falls back" in records[1]["skip"]


def test_shrink_keeps_the_row_shape():
    assert kernels.shrink({"B": 8, "T": 1024, "C": 768, "H": 12}, 2048) == {"B": 2, "T": 1024, "C": 768, "H": 12}
    assert kernels.shrink({"N": 8192, "V": 50304}, 2048) == {"N": 2048, "V": 50304}


def test_cpu_end_to_end_tiny():
    cfg = GPTConfig.preset("nano")
    e = cpu_end_to_end(cfg, batch=2, seq=16, steps=2, warmup=1)
    assert e["numpy_tokens_per_s"] > 0 and e["numpy_ms_per_step"] > 0 and e["threads"] >= 1
    if torch is None:
        assert e["torch_tokens_per_s"] is None and e["torch_reason"]
    else:
        assert e["torch_tokens_per_s"] > 0
        # same weights, same first batch: the float32 losses agree
        assert e["torch_first_loss"] == pytest.approx(e["numpy_first_loss"], rel=1e-5)


def test_cli_cpu_json(tmp_path, capsys):
    rc = main(["bench", "--cpu", "--json", "--preset", "nano", "--batch", "2", "--steps", "2",
               "--warmup", "1", "--repeats", "2", "--copy-mb", "8", "--gemm-n", "128",
               "--flush-mb", "1", "--no-progress", "--only", "layernorm,linear,end_to_end",
               "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out.strip().splitlines()
    report = json.loads(out[-1])
    e = report["end_to_end"]
    assert e["numpy_tokens_per_s"] > 0
    assert (e["torch_tokens_per_s"] > 0) if torch is not None else (e["torch_tokens_per_s"] is None)
    assert report["ceilings"]["copy_gbps"] > 0 and report["ceilings"]["sgemm_tflops"] > 0
    assert {r["name"] for r in report["kernels"]} == {"layernorm", "linear"}
    for r in report["kernels"]:
        assert {"name", "pass", "shape", "ms", "gbps", "tflops", "bound", "pct_of_ceiling",
                "torch_ms", "speedup_vs_torch"} <= set(r)
        assert r["ms"] > 0 and r["bound"] in ("memory", "compute")
        if torch is not None:
            assert r["torch_ms"] > 0 and r["speedup_vs_torch"] == pytest.approx(r["torch_ms"] / r["ms"])
    host = report["host_executor"]
    assert host["ms_per_step"] > 0 if host["reason"] is None else host["ms_per_step"] is None
    assert any(p.endswith(".png") for p in report["files"])
    assert (tmp_path / report["files"][-1].rsplit("/", 1)[-1]).stat().st_size > 10_000
    assert "| layernorm | forward |" in "\n".join(out)


def test_gpu_part_says_why_it_skips(monkeypatch):
    monkeypatch.delenv("SCRATCHGPT_EMULATE_CUDA", raising=False)
    from scratchgpt.benchmarks.gpu import import_cupy
    cp, reason = import_cupy()
    if cp is not None:
        pytest.skip("a GPU is present: the GPU part runs (device_check.sh)")
    from scratchgpt.bench import run_gpu
    from scratchgpt.benchmarks.common import Budget
    from scratchgpt.cli import build_parser
    section = run_gpu(build_parser().parse_args(["bench", "--gpu"]), Budget(), lambda msg: None)
    assert section == {"skipped": reason} and reason


def test_gpu_part_runs_on_the_emulated_device(monkeypatch, tmp_path, capsys):
    """run_gpu end to end on the emulated device (SCRATCHGPT_EMULATE_CUDA=1): the cuda backend's
    own kernels through CuPy-strict arrays, the ceilings, the table, the training step, the JSON,
    the files and the figure, on the small model (timings are the host executor's)."""
    monkeypatch.setenv("SCRATCHGPT_EMULATE_CUDA", "1")
    rc = main(["bench", "--gpu", "--json", "--no-progress", "--repeats", "2",
               "--only", "layernorm,attention,end_to_end", "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["device"] == "scratchgpt emulated device (host executor)"
    assert report["gpu"]["model"].startswith("small")
    ceilings = report["ceilings"]
    assert ceilings["copy_gbps"] > 0 and ceilings["sgemm_tflops"] > 0
    assert ceilings["bf16_gemm_tflops"] is None and ceilings["bf16_gemm_reason"]   # no cuBLAS here
    low = [r for r in report["kernels"] if "bf16" in r.get("tags", ())]
    by_name = {(r["name"], r["pass"]): r for r in report["kernels"] if r not in low}
    assert set(by_name) == {("layernorm", "forward"), ("layernorm", "backward"),
                            ("attention", "forward"), ("attention", "backward")}
    for r in by_name.values():
        assert r["skip"] is None and r["ms"] > 0 and r["check_rel_err"] < 1e-5, r
        assert r["device"] == "cuda"
    # the bf16 tensor-core attention rows, checked against float64 at bf16's tolerance
    assert {r["pass"] for r in low} == {"forward", "backward"}
    for r in low:
        assert r["name"] == "attention" and r["skip"] is None and r["ms"] > 0, r
        assert r["check_rel_err"] < 1e-2, r
    e2e = report["end_to_end"]
    assert e2e["cuda_ms_per_step"] > 0 and "cuda_reason" not in e2e, e2e
    # bf16: the tensor-core kernels and fp32 masters (PyTorch's bf16 autocast needs a GPU)
    assert e2e["cuda_bf16_ms_per_step"] > 0 and "cuda_bf16_reason" not in e2e, e2e
    assert e2e["torch_cuda_bf16_reason"] == "torch with CUDA is not available"
    assert sorted(p.rsplit(".", 1)[-1] for p in report["files"]) == ["json", "md", "png"]
    assert sorted(f.name for f in tmp_path.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in report["files"])


def test_table_runs_the_compiled_kernels_on_the_host_executor():
    """The GPU harness's call path with a real kernel wrapper: the host backend has the cuda
    backend's interface, so what passes here is what the GPU run will call."""
    import warnings

    from scratchgpt.ops import get_backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            backend = get_backend("host")
        except (RuntimeError, NotImplementedError) as e:
            pytest.skip(f"host backend unavailable: {e}")
    timed = [op for op in kernels.OPS if op not in backend.fallbacks]
    cases = [c for c in kernels.model_cases(B=2, T=8, C=24, H=2, V=40, P=3000) if c.op in timed]
    records = kernels.run_table(cases, backend, WallTimer(warmup=0, repeats=2, flush_bytes=1 << 16),
                                {"copy_gbps": 10.0, "sgemm_tflops": 0.1}, progress=False, check_rows=8)
    assert records, "the host backend has at least one kernel"
    for r in records:
        assert r["skip"] is None and r["ms"] > 0, r
        assert r["check_rel_err"] < kernels.SPECS[r["name"]].tol and r["check_shape"] != r["shape"]


# ------------------------------------------------------ bf16 / fp16 linear rows (tensor-core GEMM)
def test_linear_low_rows_on_the_compiled_backends(monkeypatch):
    """linear_low_cases through run_table on the host executor and on the emulated device (the
    cuda backend's own path): every row is checked against the float64 reference (tol 1e-2) and
    timed; linear_low_summary reports each one. No torch here: cuBLAS is said to be untimed."""
    import warnings

    from scratchgpt.ops import get_backend
    pytest.importorskip("ml_dtypes")
    cases = kernels.linear_low_cases(B=2, T=8, C=24, V=40)
    assert {(c.label.split()[0], c.pass_) for c in cases} == {
        (n, p) for n in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
        for p in ("forward", "backward")}
    for emulate in ("", "1"):
        monkeypatch.setenv("SCRATCHGPT_EMULATE_CUDA", emulate)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            backend = get_backend("cuda" if emulate else "host")
        records = kernels.run_table(cases, backend, WallTimer(warmup=0, repeats=2, flush_bytes=1 << 16),
                                    {"copy_gbps": 10.0, "sgemm_tflops": 0.1}, progress=False, check_rows=8)
        for r in records:
            assert r["skip"] is None and r["ms"] > 0, r
            assert 0 < r["check_rel_err"] < 1e-2 and r["check_shape"]["N"] == 8, r   # bf16 rounding seen
        lines = kernels.linear_low_summary(records, {"bf16_gemm_tflops": 1.0})
        assert len(lines) == len(cases) and all("cuBLAS not timed (no torch)" in x for x in lines)
        assert all("% of the bf16 GEMM ceiling" in x for x in lines)


def test_linear_low_summary_ratio_and_goal():
    """cuBLAS's time over ours, against the 80 % goal; a row that was not timed says why."""
    def rec(ms, torch_ms, skip=None):
        return {"name": "linear", "label": "mlp.c_fc bf16", "pass": "forward", "tags": ["bf16"],
                "shape": {"N": 8, "in": 4, "out": 16, "bias": True}, "ms": ms, "torch_ms": torch_ms,
                "tflops": 2.0 if ms else None, "skip": skip}
    fast, slow, skipped = rec(1.0, 0.9), rec(2.0, 1.0), rec(None, 1.0, "wrong result: relative error 1e-01")
    lines = kernels.linear_low_summary([fast, slow, skipped, {"name": "gelu", "tags": []}],
                                       {"bf16_gemm_tflops": 4.0})
    assert len(lines) == 3
    assert "0.90x = 90% of cuBLAS's speed (goal >= 80%)" in lines[0] and fast["vs_cublas"] == 0.9
    assert "0.50x = 50% of cuBLAS's speed (goal >= 80%, missed)" in lines[1]
    assert "50% of the bf16 GEMM ceiling" in lines[0] and fast["pct_of_bf16_gemm"] == 50.0
    assert lines[2].endswith("wrong result: relative error 1e-01")
    cases = kernels.linear_low_cases(B=8, T=1024, C=768, V=50257)
    lm_head = [c for c in cases if c.label == "lm_head bf16" and c.pass_ == "forward"][0]
    assert lm_head.shape == {"N": 8192, "in": 768, "out": 50257, "bias": False}
    assert lm_head.bytes() == 2 * (8192 * 768 + 50257 * 768 + 8192 * 50257)
    assert kernels.Case("linear", "forward", lm_head.shape).bytes() == 2 * lm_head.bytes()   # fp32: 4 bytes
    assert lm_head.spec.tol == 1e-2 and lm_head.flops() == 2 * 8192 * 768 * 50257
