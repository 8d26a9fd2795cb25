"""The memory estimate (memory.py) against the peak a real command reaches, and the refusal
it leads to.

Each measurement runs the CLI in a fresh interpreter: tracemalloc counts every array NumPy and
the host kernels' wrappers allocate (and Python's own objects), ru_maxrss the whole process
(less its size before the command): VmHWM of /proc/self/status, the peak resident size of
this process's memory since exec (getrusage's ru_maxrss would also count the pytest process
it was forked from). The estimate must be within 25 % of both.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from scratchgpt import GPT, GPTConfig
from scratchgpt import memory
from scratchgpt.checkpoint import save_checkpoint
from scratchgpt.data import write_shard
from scratchgpt.errors import NotEnoughMemory
from scratchgpt.memory import fmt_bytes, sampling_estimate, training_estimate
from scratchgpt.tokenizer import CharTokenizer

MEASURE = """
import json, sys, tracemalloc, warnings
warnings.simplefilter("ignore")
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot, tqdm                 # imported before measuring, as the command does
from scratchgpt.cli import main
from scratchgpt.ops import get_backend
mode, commands = sys.argv[1], json.loads(sys.argv[2])
for argv in commands:
    get_backend(argv[argv.index("--backend") + 1])
def status(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field + ":"))
peaks = []
if mode == "tracemalloc":
    tracemalloc.start()
    for argv in commands:              # each command's own peak, above what was there before
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert main(argv) == 0
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
else:                                  # the high-water mark only grows: one command
    (argv,) = commands
    before = status("VmRSS")
    assert main(argv) == 0
    peaks.append(status("VmHWM") - before)
print(json.dumps(peaks))
"""


def measured_peaks(mode, commands):
    """The peak memory of each command (a list of CLI argument lists), in one interpreter."""
    commands = [[str(a) for a in argv] for argv in commands]
    # one BLAS thread: the same memory, and small matmuls do not spin waiting for a busy core
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OPENBLAS_NUM_THREADS": "1",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", MEASURE, mode, json.dumps(commands)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def host_or_fail():
    from scratchgpt.kernels import backend_status
    status = backend_status("host")
    if not status["available"]:
        pytest.fail(f"the host backend must be available: {status['reason']}")


PROMPT = "def f(x): return x"
MINI_95 = GPTConfig.preset("mini", vocab_size=95)
# (what, CLI arguments besides the data, the estimate)
CASES = {
    "train numpy": (["train", "--batch-size", "8", "--backend", "numpy"],
                    lambda: training_estimate(GPTConfig.preset("mini"), 8, "numpy")),
    "train host": (["train", "--batch-size", "4", "--backend", "host"],
                   lambda: training_estimate(GPTConfig.preset("mini"), 4, "host")),
    "train numpy, grad-accum 2, dropout": (
        ["train", "--batch-size", "4", "--grad-accum", "2", "--dropout", "0.1",
         "--backend", "numpy"],
        lambda: training_estimate(GPTConfig.preset("mini", dropout=0.1), 4, "numpy",
                                  grad_accum=2)),
    # the KV cache is most of it
    "sample numpy": (["sample", "--num-samples", "64", "--max-new-tokens", "40",
                      "--backend", "numpy"],
                     lambda: sampling_estimate(MINI_95, 64, len(PROMPT), 40, "numpy")),
    # past block_size the window slides: whole forwards
    "sample numpy, sliding window": (
        ["sample", "--num-samples", "8", "--max-new-tokens", "120", "--backend", "numpy"],
        lambda: sampling_estimate(MINI_95, 8, len(PROMPT), 120, "numpy")),
    "sample host": (["sample", "--num-samples", "16", "--max-new-tokens", "20",
                     "--backend", "host"],
                    lambda: sampling_estimate(MINI_95, 16, len(PROMPT), 20, "host")),
}


def full_argv(argv, shards, mini_ckpt, out):
    if argv[0] == "train":
        return [*argv, "--preset", "mini", "--data", shards, "--max-steps", "1",
                "--eval-iters", "1", "--no-progress", "--out", out]
    return [*argv, "--ckpt", mini_ckpt, "--prompt", PROMPT, "--seed", "0", "--json"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Random tokens of the mini preset's 512-token vocabulary (no tokenizer: none is trained)."""
    folder = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    write_shard(folder / "train_000.bin", rng.integers(0, 512, 20_000))
    write_shard(folder / "val_000.bin", rng.integers(0, 512, 5_000))
    return folder


@pytest.fixture(scope="module")
def mini_ckpt(tmp_path_factory):
    """A mini model (random weights) with a 95-character tokenizer."""
    folder = tmp_path_factory.mktemp("ckpt")
    tok = CharTokenizer([chr(i) for i in range(32, 127)])
    model = GPT(MINI_95, dtype="float32")
    save_checkpoint(folder, 1, model, tokenizer=tok)
    return folder


@pytest.fixture(scope="module")
def traced_peaks(shards, mini_ckpt, tmp_path_factory):
    """tracemalloc's peak of every case, measured in one interpreter."""
    host_or_fail()
    out = tmp_path_factory.mktemp("runs")
    commands = [full_argv(argv, shards, mini_ckpt, out / f"run{i}")
                for i, (argv, _) in enumerate(CASES.values())]
    return dict(zip(CASES, measured_peaks("tracemalloc", commands)))


def within(estimate, peak, tol=0.25):
    assert abs(estimate / peak - 1) <= tol, (f"estimate {fmt_bytes(estimate)} vs measured "
                                            f"{fmt_bytes(peak)} ({estimate / peak:.2f}x)")


@pytest.mark.parametrize("case", list(CASES))
def test_estimate_matches_the_peak_tracemalloc_measures(traced_peaks, case):
    est = CASES[case][1]()
    within(est.total, traced_peaks[case])
    # the estimate is not right by accident: its largest part is one the run allocates
    assert max(est.parts.values()) > 0.3 * est.total


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_training_estimate_matches_the_process_peak_rss(shards, tmp_path):
    """The whole process (the allocator's overhead too), numpy backend."""
    argv, estimate = CASES["train numpy"]
    (peak,) = measured_peaks("rss", [full_argv(argv, shards, None, tmp_path / "run")])
    within(estimate().total, peak)


def test_grad_accum_doubles_the_gradients():
    cfg = GPTConfig.preset("mini")
    assert training_estimate(cfg, 4, "numpy", grad_accum=2).parts["gradients"] == \
        2 * training_estimate(cfg, 4, "numpy").parts["gradients"]


# --------------------------------------------------------------------------- emulated GPU
EMULATED = """
import json, sys, warnings
warnings.simplefilter("ignore")
from scratchgpt.cli import main
from scratchgpt.kernels import Runtime
pool = Runtime("cuda").xp.get_default_memory_pool()
peaks = []
for argv in json.loads(sys.argv[1]):
    before = pool.used_bytes()
    pool.reset_peak()
    assert main(argv) == 0
    peaks.append(pool.peak_bytes() - before)
print(json.dumps(peaks))
"""


def emulated_env(**extra):
    return {**os.environ, "SCRATCHGPT_EMULATE_CUDA": "1", "PYTHONWARNINGS": "ignore",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", **extra}


def emulated_or_skip():
    probe = subprocess.run([sys.executable, "-c", "from scratchgpt.kernels import backend_status;"
                            " s = backend_status('cuda'); print(s['available'], s['reason'])"],
                           capture_output=True, text=True, env=emulated_env())
    if not probe.stdout.startswith("True"):
        pytest.skip(f"no emulated cuda device here: {probe.stdout.strip() or probe.stderr}")


def test_cuda_estimate_matches_the_emulated_device_pool_peak(shards, mini_ckpt, tmp_path):
    """On the cuda backend the estimate is of device memory: the emulated device's memory
    pool (CuPy's interface, with a peak) measures what the model's arrays take there."""
    emulated_or_skip()
    cases = [(["train", "--batch-size", "4", "--backend", "cuda"],
              training_estimate(GPTConfig.preset("mini"), 4, "cuda")),
             (["sample", "--num-samples", "16", "--max-new-tokens", "20", "--backend", "cuda"],
              sampling_estimate(MINI_95, 16, len(PROMPT), 20, "cuda"))]
    commands = [full_argv(argv, shards, mini_ckpt, tmp_path / "run") for argv, _ in cases]
    p = subprocess.run([sys.executable, "-c", EMULATED,
                        json.dumps([[str(a) for a in c] for c in commands])],
                       capture_output=True, text=True, timeout=300, env=emulated_env())
    assert p.returncode == 0, p.stderr
    for (_, est), peak in zip(cases, json.loads(p.stdout.strip().splitlines()[-1])):
        assert est.device == "GPU memory"
        within(est.total, peak)


def test_cuda_run_refused_by_the_emulated_device_size(shards, tmp_path):
    """The free memory the device reports (CuPy's Device().mem_info) is what a cuda run is
    checked against: a 64 MiB emulated device refuses mini at batch 16 and names a batch
    that fits."""
    emulated_or_skip()
    p = subprocess.run([sys.executable, "-c", "import sys; from scratchgpt.cli import main; "
                        "sys.exit(main())", *map(str, full_argv(
                            ["train", "--batch-size", "16", "--backend", "cuda"], shards, None,
                            tmp_path / "run"))],
                       capture_output=True, text=True, timeout=120,
                       env=emulated_env(SCRATCHGPT_EMULATED_MEMORY_GB=str(64 / 1024)))
    assert p.returncode == 1, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("scratchgpt train: error: training needs about 98.7 MiB of GPU "
                           "memory: "), line
    assert "only 64 MiB is available, by the GPU's free memory, of 64 MiB in all" in line
    assert line.endswith("(--preset mini --batch-size 16 on cuda, --batch-size 9 or less fits)")
    assert not os.path.exists(tmp_path / "run")


# --------------------------------------------------------------------------- the pieces
def test_estimate_grows_with_the_batch_and_its_parts_add_up():
    cfg = GPTConfig.preset("gpt2")
    small, large = (training_estimate(cfg, b, "numpy") for b in (1, 8))
    assert large.total > small.total
    assert small.total == sum(small.parts.values())
    n = cfg.num_params()
    assert large.parts["parameters"] == 4 * n and large.parts["AdamW moments"] == 8 * n
    # the reference keeps B*H*T*T attention probabilities per layer, the flash kernel does not
    assert training_estimate(cfg, 8, "numpy").parts["activations"] - \
        training_estimate(cfg, 8, "host").parts["activations"] > \
        cfg.n_layer * 8 * cfg.n_head * cfg.block_size ** 2 * 4 * 0.9


def test_gpt3_175b_estimate_is_the_paper_size():
    est = training_estimate(GPTConfig.preset("gpt3-175b"), 1, "numpy")
    n = GPTConfig.preset("gpt3-175b").num_params()
    assert 174e9 < n < 176e9
    assert est.total > 16 * n                        # weights, gradients, two moments: 16 bytes


def test_fmt_bytes():
    assert fmt_bytes(512) == "512 B"
    assert fmt_bytes(1536) == "1.5 KiB"
    assert fmt_bytes(3 * 2 ** 40) == "3 TiB"


def test_refusal_names_the_estimate_and_a_batch_that_fits(monkeypatch):
    cfg = GPTConfig.preset("mini")
    have = training_estimate(cfg, 5, "numpy").total + 1          # batch 5 fits, 6 does not
    monkeypatch.setattr(memory, "host_available", lambda: (have, "by a test"))
    memory.check(training_estimate(cfg, 5, "numpy"), "here")     # fits: no error
    with pytest.raises(NotEnoughMemory) as e:
        memory.check(training_estimate(cfg, 64, "numpy"), "--batch-size 64",
                     make_estimate=lambda b: training_estimate(cfg, b, "numpy"), batch_size=64)
    line = str(e.value)
    assert line.startswith("training needs about ") and "of host RAM: parameters" in line
    assert f"only {fmt_bytes(have)} is available, by a test" in line
    assert line.endswith("(--batch-size 64, --batch-size 5 or less fits)")


def test_refusal_suggests_a_smaller_preset_when_no_batch_fits(monkeypatch):
    monkeypatch.setattr(memory, "host_available",
                        lambda: (training_estimate(GPTConfig.preset("gpt2"), 1, "numpy").total,
                                 "by a test"))
    est = lambda c: training_estimate(c, 1, "numpy")             # noqa: E731
    with pytest.raises(NotEnoughMemory, match="the largest preset that fits at --batch-size 1 "
                       "is gpt2"):
        memory.check(est(GPTConfig.preset("gpt2-medium")), "here", batch_size=1,
                     smaller_presets=memory.presets_by_size(est))


def test_cuda_checks_gpu_memory_and_host_memory(monkeypatch):
    cfg = GPTConfig.preset("gpt2")
    est = training_estimate(cfg, 8, "cuda")
    assert est.device == "GPU memory" and est.host_total >= 12 * cfg.num_params()
    monkeypatch.setattr(memory, "gpu_available", lambda: (est.total // 2, 80 * 2 ** 30))
    monkeypatch.setattr(memory, "host_available", lambda: (2 ** 50, "by a test"))
    with pytest.raises(NotEnoughMemory, match=r"of GPU memory: .*by the GPU's free memory, of "
                       r"80 GiB in all"):
        memory.check(est, "here")
    monkeypatch.setattr(memory, "gpu_available", lambda: (2 ** 50, 2 ** 50))
    monkeypatch.setattr(memory, "host_available", lambda: (est.host_total - 1, "by a test"))
    with pytest.raises(NotEnoughMemory, match="of host RAM: the float64 initial values"):
        memory.check(est, "here")


def test_info_prints_the_estimate(capsys):
    from scratchgpt.cli import main
    assert main(["info", "--preset", "gpt2", "--batch-size", "4", "--backend", "numpy",
                 "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    m = info["memory"]
    assert m["training"]["total_bytes"] == training_estimate(GPTConfig.preset("gpt2"), 4,
                                                             "numpy").total
    assert m["batch_size"] == 4 and m["params"] == GPTConfig.preset("gpt2").num_params()
    assert main(["info", "--preset", "mini", "--backend", "numpy"]) == 0
    out = capsys.readouterr().out
    assert "memory: training mini" in out and "activations" in out and "fits: yes" in out
