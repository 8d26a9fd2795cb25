"""The CLI fault matrix: every expected failure of a command, run as a subprocess, ends with
exactly one line `scratchgpt <command>: error: <what> (<where>, <expected>)` on stderr, the
right exit status (2 a bad argument, 1 a bad file or not enough memory, 130 / 143 SIGINT /
SIGTERM), no traceback, and the checkpoints already on disk still load with the same weights.

Everything runs on the `nano` preset with a 17-character tokenizer, on data written to
tmp_path; nothing is downloaded.
"""
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from corpus import TEXT
from safetensors.numpy import load_file

from scratchgpt.checkpoint import list_checkpoints, load_model, load_optimizer, save_checkpoint
from scratchgpt.cli import main
from scratchgpt.data import write_shard
from scratchgpt.optim import AdamW
from scratchgpt.tokenizer import CharTokenizer
from scratchgpt.train import parse_args, train

ERROR_LINE = re.compile(r"^scratchgpt (\w+): error: (.+) \((.+)\)$")
LAUNCH = "import sys; from scratchgpt.cli import main; sys.exit(main())"
# no warnings; one BLAS thread (tiny matmuls otherwise spin waiting for a busy core)
QUIET = {"PYTHONWARNINGS": "ignore", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def cli(*argv, env=None, preexec_fn=None, timeout=60):
    """Run `scratchgpt ARGV` in a fresh interpreter; (exit status, stdout, stderr)."""
    run_env = {**os.environ, **QUIET, **(env or {})}
    run_env.pop("SCRATCHGPT_DEBUG", None)
    if env and "SCRATCHGPT_DEBUG" in env:
        run_env["SCRATCHGPT_DEBUG"] = env["SCRATCHGPT_DEBUG"]
    p = subprocess.run([sys.executable, "-c", LAUNCH, *map(str, argv)], capture_output=True,
                       text=True, env=run_env, preexec_fn=preexec_fn, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(rc, stderr, *, code, command, contains=()):
    """The house format: one error line, last on stderr, naming what it must; no traceback."""
    assert rc == code, f"exit {rc}, expected {code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert line == errors[0], stderr
    m = ERROR_LINE.match(line)
    assert m and m.group(1) == command, line
    for text in contains:
        assert text in line, f"{text!r} not in: {line}"
    return line


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """input.txt, and a finished nano run `good` with checkpoints at steps 2 and 4."""
    root = tmp_path_factory.mktemp("faults")
    (root / "input.txt").write_text(TEXT)
    train(parse_args(["--preset", "nano", "--data", str(root / "input.txt"), "--tokenizer",
                      "char", "--out", str(root / "good"), "--max-steps", "4", "--batch-size",
                      "4", "--ckpt-interval", "2", "--eval-interval", "2", "--eval-iters", "1",
                      "--keep", "5", "--no-progress", "--seed", "3"]))
    return root


def snapshot(run):
    """name -> weights of every checkpoint of a run, to compare after a failure."""
    return {os.path.basename(c): load_file(os.path.join(c, "model.safetensors"))
            for c in list_checkpoints(run)}


def assert_checkpoints_load(run, before):
    """Every checkpoint in `before` is still there and loads, model and optimizer, with the
    same weights; no half-written folder is left behind."""
    found = {os.path.basename(c): c for c in list_checkpoints(run)}
    assert set(before) <= set(found), (sorted(before), sorted(found))
    for name, weights in before.items():
        model, state, tok, _ = load_model(found[name])
        load_optimizer(found[name], AdamW(model.params, model.be), state)
        assert tok is not None
        for k, v in weights.items():
            assert np.array_equal(model.params[k], v), (name, k)
    assert not [n for n in os.listdir(run) if n.startswith((".tmp_", ".del_"))]


def copy_run(work, name):
    dst = work / name
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(work / "good", dst)
    return dst


def nano(work, out, *extra):
    return ["train", "--preset", "nano", "--data", work / "input.txt", "--tokenizer", "char",
            "--out", out, "--batch-size", "4", "--eval-iters", "1", "--no-progress", *extra]


# --------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("argv, contains", [
    (["train", "--max-steps", "0"], ["invalid value '0'", "--max-steps", "an integer >= 1"]),
    (["train", "--preset", "gpt5"], ["invalid choice 'gpt5'", "--preset", "one of gpt1"]),
    (["train", "--batch-size", "lots"], ["invalid value 'lots'", "--batch-size"]),
    (["train", "--val-fraction", "1.5"], ["--val-fraction", "between 0 and 1"]),
    (["sample"], ["missing a required argument", "--ckpt"]),
    (["sample", "--ckpt", "x", "--top-p", "2"], ["invalid value '2'", "--top-p", "(0, 1]"]),
    (["finetune", "--data", "x", "--test-fraction", "0"], ["--test-fraction"]),
    (["train", "--no-such-flag"], ["unrecognized arguments: --no-such-flag", "--help"]),
])
def test_bad_arguments_are_usage_errors(argv, contains):
    rc, _, err = cli(*argv)
    assert_one_line_error(rc, err, code=2, command=argv[0], contains=contains)


def test_sizes_that_do_not_fit_together(work):
    rc, _, err = cli(*nano(work, work / "x1", "--n-embd", "30", "--n-head", "4"))
    assert_one_line_error(rc, err, code=2, command="train",
                          contains=["30 is not divisible by n_head=4", "--n-embd"])
    assert not os.path.exists(work / "x1")              # refused before anything is written


def test_bpe_vocabulary_too_small_names_the_flag(work):
    rc, _, err = cli("train", "--data", work / "input.txt", "--vocab-size", "100", "--out",
                     work / "x2")
    assert_one_line_error(rc, err, code=2, command="train",
                          contains=["--vocab-size", "an integer >= 257"])


def test_resume_with_another_architecture_is_refused(work):
    before = snapshot(work / "good")
    rc, _, err = cli("train", "--resume", work / "good", "--n-layer", "3", "--max-steps", "6")
    assert_one_line_error(rc, err, code=2, command="train",
                          contains=["--n-layer 3 differs from the checkpoint's n_layer=2",
                                    f"--resume {work / 'good'}"])
    assert_checkpoints_load(work / "good", before)


# --------------------------------------------------------------------------- bad files
def test_missing_data_file(work):
    rc, _, err = cli(*nano(work, work / "x3")[:3], "--data", work / "missing.txt",
                     "--out", work / "x3")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=["no such file or folder", str(work / "missing.txt")])


def test_empty_folder(work):
    (work / "empty").mkdir(exist_ok=True)
    rc, _, err = cli("train", "--preset", "nano", "--data", work / "empty", "--out", work / "x4")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=["no text files in this folder", str(work / "empty")])


def test_non_utf8_text(work):
    (work / "latin1.txt").write_bytes(("caf\u00e9 " * 100).encode("latin-1"))
    rc, _, err = cli(*nano(work, work / "x5")[:3], "--data", work / "latin1.txt",
                     "--tokenizer", "char", "--out", work / "x5")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=["not UTF-8 text: byte 0xe9 at offset 3",
                                    str(work / "latin1.txt")])


def _shards(folder, header=None, cut=None):
    folder.mkdir(exist_ok=True)
    tokens = np.arange(500) % 17
    write_shard(folder / "train_000.bin", tokens)
    write_shard(folder / "val_000.bin", tokens)
    data = (folder / "train_000.bin").read_bytes()
    if header is not None:
        data = np.asarray(header, dtype=np.int32).tobytes() + data[4 * len(header):]
    if cut is not None:
        data = data[:cut]
    (folder / "train_000.bin").write_bytes(data)
    return folder


@pytest.mark.parametrize("name, header, cut, contains", [
    ("magic", [20240521], None, ["wrong magic number 20240521"]),
    ("version", [20240520, 7], None, ["wrong version 7 for magic 20240520"]),
    ("truncated", None, 1024 + 300, ["truncated: the header says 500 tokens (2024 bytes), "
                                     "the file has 1324 bytes"]),
    ("headless", None, 100, ["truncated: 100 bytes, shorter than the 1024-byte header"]),
])
def test_bad_shards(work, name, header, cut, contains):
    folder = _shards(work / f"shards_{name}", header, cut)
    rc, _, err = cli("train", "--preset", "nano", "--data", folder, "--out", work / f"x_{name}",
                     "--max-steps", "2", "--no-progress")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=[*contains, str(folder / "train_000.bin"), "llm.c token shard"])


@pytest.mark.parametrize("target, damage, command, contains", [
    ("model.safetensors", "garbage", "sample", ["not a readable safetensors file"]),
    ("model.safetensors", "truncate", "sample", ["incomplete metadata, file not fully covered"]),
    ("model.safetensors", "empty", "sample", ["header too small"]),
    ("optimizer.safetensors", "truncate", "resume", ["not a readable safetensors file"]),
    ("config.json", "truncate", "sample", ["not valid JSON"]),
    ("state.json", "garbage", "resume", ["not valid JSON"]),
    ("chars.json", "garbage", "sample", ["not valid JSON"]),
])
def test_corrupt_checkpoint_files_are_named(work, target, damage, command, contains):
    run = copy_run(work, f"bad_{target}_{damage}")
    newest = list_checkpoints(run)[-1]
    path = os.path.join(newest, target)
    data = open(path, "rb").read()
    data = {"garbage": b"\x00garbage\xff" * 7, "truncate": data[:len(data) // 2],
            "empty": b""}[damage]
    with open(path, "wb") as f:
        f.write(data)
    before = snapshot(work / "good")
    if command == "sample":
        rc, _, err = cli("sample", "--ckpt", run, "--max-new-tokens", "3")
    else:
        rc, _, err = cli("train", "--resume", run, "--max-steps", "6")
    assert_one_line_error(rc, err, code=1, command="sample" if command == "sample" else "train",
                          contains=[*contains, path])
    assert os.path.getsize(path) == len(data)            # the file is left as it was
    assert_checkpoints_load(work / "good", before)


def test_weights_of_another_architecture(work):
    """A checkpoint whose model.safetensors holds another model's tensors: named, exit 1."""
    from scratchgpt import GPT, GPTConfig
    run = copy_run(work, "other_arch")
    newest = list_checkpoints(run)[-1]
    other = GPT(GPTConfig.preset("nano", vocab_size=17, n_embd=32), dtype="float32")
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in other.params.items()},
              os.path.join(newest, "model.safetensors"))
    rc, _, err = cli("train", "--resume", run, "--max-steps", "6")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=["the weights do not match config.json",
                                    os.path.join(newest, "model.safetensors"),
                                    "2-layer, 16-wide model with vocabulary 17"])


def test_resuming_a_checkpoint_that_is_not_from_training(work):
    """A fine-tuned checkpoint (its state.json has no training arguments) cannot be resumed."""
    import json
    run = copy_run(work, "not_training")
    newest = list_checkpoints(run)[-1]
    with open(os.path.join(newest, "state.json"), "w") as f:
        json.dump({"step": 4, "classes": ["0", "1"]}, f)
    rc, _, err = cli("train", "--resume", run, "--max-steps", "6")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=["not a training checkpoint", newest,
                                    "fine-tuned models cannot be resumed"])


def test_corrupt_tokenizer_file(work):
    (work / "bad_tok").mkdir(exist_ok=True)
    (work / "bad_tok" / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": [')
    rc, _, err = cli("sample", "--ckpt", work / "good", "--tokenizer", work / "bad_tok")
    assert_one_line_error(rc, err, code=1, command="sample",
                          contains=["not a tokenizer file", str(work / "bad_tok" / "tokenizer.json")])


def test_tokenizer_larger_than_the_vocabulary(work):
    CharTokenizer.train(TEXT + "XYZ0123456789").save(work / "big_tok")
    rc, _, err = cli("sample", "--ckpt", work / "good", "--tokenizer", work / "big_tok")
    assert_one_line_error(rc, err, code=2, command="sample",
                          contains=["the tokenizer has 30 ids, more than the model's vocabulary "
                                    "of 17", f"--tokenizer {work / 'big_tok'}"])


def test_prompt_the_tokenizer_cannot_encode(work):
    rc, _, err = cli("sample", "--ckpt", work / "good", "--prompt", "QQ")
    assert_one_line_error(rc, err, code=2, command="sample", contains=["'Q'", "--prompt"])


def test_missing_checkpoint(work):
    rc, _, err = cli("sample", "--ckpt", work / "nowhere")
    assert_one_line_error(rc, err, code=1, command="sample",
                          contains=["no such folder", str(work / "nowhere")])
    rc, _, err = cli("train", "--resume", work / "empty", "--max-steps", "3")
    assert_one_line_error(rc, err, code=1, command="train",
                          contains=["no checkpoint to resume", f"--resume {work / 'empty'}"])


@pytest.mark.parametrize("content, contains", [
    ("good film\t1\nno label here\nbad film\t0\n", ["line 2 is not text<TAB>label"]),
    ("good film\t1\nfine film\t1\ngreat film\t1\n", ["only one class ('1') in 3 examples"]),
])
def test_bad_tsv(work, content, contains):
    path = work / f"labels_{len(content)}.tsv"
    path.write_text(content)
    rc, _, err = cli("finetune", "--data", path, "--ckpt", work / "good", "--out",
                     work / "ft", "--no-progress")
    assert_one_line_error(rc, err, code=1, command="finetune",
                          contains=[*contains, str(path.name)])


def test_finetune_empty_folder(work):
    (work / "empty").mkdir(exist_ok=True)
    rc, _, err = cli("finetune", "--data", work / "empty", "--ckpt", work / "good")
    assert_one_line_error(rc, err, code=1, command="finetune",
                          contains=["no text<TAB>label files", str(work / "empty")])


# --------------------------------------------------------------------------- a full disk
def _limit_file_size():
    # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG, as on a full disk
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))


def test_full_disk_while_saving_keeps_the_checkpoints(work):
    run = copy_run(work, "full_disk")
    before = snapshot(run)
    rc, _, err = cli("train", "--resume", run, "--max-steps", "6", "--ckpt-interval", "1",
                     preexec_fn=_limit_file_size)
    line = assert_one_line_error(rc, err, code=1, command="train",
                                 contains=["cannot write checkpoint ckpt_000005: File too large",
                                           "nothing on disk was changed",
                                           f"the newest complete checkpoint is {run / 'ckpt_000004'}"])
    assert str(run) in line
    assert_checkpoints_load(run, before)
    rc, _, err = cli("train", "--resume", run, "--max-steps", "6")   # space again: it continues
    assert rc == 0, err
    assert os.path.basename(list_checkpoints(run)[-1]) == "ckpt_000006"


def _tmpfs_available():
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=64k tmpfs /mnt"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _tmpfs_available(), reason="cannot mount a tmpfs here (no unprivileged "
                    "user and mount namespaces); the RLIMIT_FSIZE case covers the full disk")
def test_no_space_left_on_a_small_tmpfs(work):
    """A real ENOSPC: the run is copied onto a tmpfs with room for little more than itself."""
    run = copy_run(work, "tmpfs_src")
    pages = sum(-(-os.path.getsize(os.path.join(d, f)) // 4096)      # tmpfs: whole pages
                for d, _, fs in os.walk(run) for f in fs)
    size_kb = 4 * pages + 48       # room for a few pages more, not for a checkpoint (~100 KiB)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {mnt} && cp -a {run} {mnt}/run && "
              f"{sys.executable} -c '{LAUNCH}' train --resume {mnt}/run --max-steps 8 "
              f"--ckpt-interval 1; rc=$?; {sys.executable} -c 'import sys; "
              f"from scratchgpt.checkpoint import list_checkpoints, load_model; "
              f"c = list_checkpoints(sys.argv[1]); load_model(c[-1]); print(\"LOADS\", c[-1])' "
              f"{mnt}/run; exit $rc")
    p = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60, env={**os.environ, **QUIET})
    err = p.stderr.replace(p.stdout, "")
    assert_one_line_error(p.returncode, err, code=1, command="train",
                          contains=["No space left on device", "free disk space",
                                    "nothing on disk was changed"])
    assert f"LOADS {mnt}/run/ckpt_" in p.stdout


# --------------------------------------------------------------------------- memory
def test_gpt3_175b_is_refused_at_once_with_its_estimate(work):
    t0 = time.perf_counter()
    rc, _, err = cli("train", "--preset", "gpt3-175b", "--max-steps", "1", "--out",
                     work / "huge")
    seconds = time.perf_counter() - t0
    line = assert_one_line_error(rc, err, code=1, command="train",
                                 contains=["training needs about", "parameters 650 GiB",
                                           "AdamW moments 1.27 TiB", "is available",
                                           "--preset gpt3-175b --batch-size 16",
                                           "no batch size fits this model here"])
    # host RAM with numpy (auto here), GPU memory where auto picks cuda
    assert re.search(r"needs about [\d.]+ TiB of (host RAM|GPU memory): ", line), line
    assert seconds < 5, seconds
    assert not os.path.exists(work / "huge")             # nothing read, nothing written


def test_a_batch_too_large_suggests_one_that_fits(work):
    rc, _, err = cli(*nano(work, work / "x6"), "--preset", "mini", "--batch-size", "10000000",
                     "--backend", "numpy")
    line = assert_one_line_error(rc, err, code=1, command="train",
                                 contains=["training needs about", "activations"])
    fits = int(re.search(r"--batch-size (\d+) or less fits", line).group(1))
    from scratchgpt.config import GPTConfig
    from scratchgpt.memory import host_available, training_estimate
    have, _ = host_available()
    cfg = GPTConfig.preset("mini")
    # the suggestion is the largest batch whose estimate fits (the machine's memory moves a
    # little between the two processes: allow 1 %)
    assert training_estimate(cfg, fits, "numpy").total <= have * 1.01
    assert training_estimate(cfg, fits + 1, "numpy").total > have * 0.99


# --------------------------------------------------------------------------- --debug, bugs
def test_debug_shows_the_traceback(work):
    for extra, env in ((["--debug"], None), ([], {"SCRATCHGPT_DEBUG": "1"})):
        rc, _, err = cli("sample", "--ckpt", work / "nowhere", *extra, env=env)
        assert rc == 1 and "Traceback" in err and "MissingFileError" in err
        assert err.strip().splitlines()[-1].startswith("scratchgpt sample: error: no such folder")


def test_an_unexpected_exception_keeps_its_traceback(monkeypatch):
    import scratchgpt.info

    def broken():
        return {}["backends"]                           # a bug, not a user's mistake

    monkeypatch.setattr(scratchgpt.info, "backends_info", broken)
    with pytest.raises(KeyError):
        main(["info"])


# --------------------------------------------------------------------------- interrupts
@pytest.fixture()
def started():
    """Start training subprocesses; any still running when the test ends is killed."""
    procs = []

    def start(work, out, *extra):
        argv = nano(work, out, "--max-steps", "100000", "--lr-decay-steps", "100000", *extra)
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *map(str, argv)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **QUIET})
        procs.append(proc)
        return proc
    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _wait_for_steps(proc, run, first_ckpt=False):
    """Block until the run trains (its model line is out; with first_ckpt, a checkpoint)."""
    line = proc.stdout.readline()
    while line and not line.startswith("model:"):     # "data: ... tokenizing" first
        line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail("training did not start: " + proc.stderr.read())
    deadline = time.time() + 20
    while first_ckpt and not list_checkpoints(run) and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)


def test_sigint_checkpoints_then_resume_is_bit_identical(work, started):
    run = work / "sigint"
    shutil.rmtree(run, ignore_errors=True)
    proc = started(work, run, "--ckpt-interval", "100000", "--eval-interval", "100000")
    _wait_for_steps(proc, run)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    line = assert_one_line_error(proc.returncode, err, code=130, command="train",
                                 contains=["interrupted by SIGINT after step",
                                           f"continue with: scratchgpt train --resume {run}"])
    step = int(re.search(r"after step (\d+) of 100000", line).group(1))
    ckpt = run / f"ckpt_{step:06d}"
    assert f"checkpoint written ({ckpt}," in line
    assert list_checkpoints(run) == [str(ckpt)]
    # resumed for 3 more steps == 3 + step steps in one go
    rc, _, err = cli("train", "--resume", run, "--max-steps", step + 3)
    assert rc == 0, err
    rc, _, err = cli(*nano(work, work / "sigint_once", "--max-steps", step + 3,
                           "--lr-decay-steps", "100000", "--ckpt-interval", "100000",
                           "--eval-interval", "100000"))
    assert rc == 0, err
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(run / f"ckpt_{step + 3:06d}" / name)
        b = load_file(work / "sigint_once" / f"ckpt_{step + 3:06d}" / name)
        assert all(np.array_equal(a[k], b[k]) for k in a), name


def test_sigterm_checkpoints_and_exits_143(work, started):
    run = work / "sigterm"
    shutil.rmtree(run, ignore_errors=True)
    proc = started(work, run, "--ckpt-interval", "100000", "--eval-interval", "100000")
    _wait_for_steps(proc, run)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    line = assert_one_line_error(proc.returncode, err, code=143, command="train",
                                 contains=["interrupted by SIGTERM after step"])
    step = int(re.search(r"after step (\d+)", line).group(1))
    model, state, _, _ = load_model(run)
    assert state["step"] == step


def test_a_second_sigint_stops_at_once_and_keeps_the_newest_checkpoint(work, started):
    run = work / "sigint2"
    shutil.rmtree(run, ignore_errors=True)
    proc = started(work, run, "--ckpt-interval", "1", "--eval-interval", "100000",
                           "--keep", "3")
    _wait_for_steps(proc, run, first_ckpt=True)
    proc.send_signal(signal.SIGINT)
    notice = proc.stderr.readline()
    while not notice.strip():
        notice = proc.stderr.readline()
    assert notice.startswith("SIGINT: finishing this step"), notice
    proc.send_signal(signal.SIGINT)                   # during the step or its checkpoint
    _, err = proc.communicate(timeout=30)
    assert_one_line_error(proc.returncode, err, code=130, command="train",
                          contains=["interrupted again by SIGINT: stopped at once",
                                    "the newest complete checkpoint is"])
    newest = list_checkpoints(run)[-1]
    assert newest in err
    assert_checkpoints_load(run, snapshot(run))


SAVE_LOOP = """
import sys
import numpy as np
from scratchgpt import GPT, GPTConfig
from scratchgpt.checkpoint import list_checkpoints, read_state, save_checkpoint
from scratchgpt.optim import AdamW
from scratchgpt.tokenizer import CharTokenizer
run = sys.argv[1]
tok = CharTokenizer(list("abcdefghijklmnopq"))
model = GPT(GPTConfig.preset("mini", vocab_size=17), dtype="float32")
opt = AdamW(model.params, model.be)
kept = list_checkpoints(run)
step = read_state(kept[-1])["step"] + 1 if kept else 1
print("saving", flush=True)
while True:       # every tensor of checkpoint N holds N: a mixed checkpoint would show
    for d in (model.params, opt.m, opt.v):
        for a in d.values():
            a.fill(step)
    save_checkpoint(run, step, model, opt, {"step": step}, tok, keep=2)
    step += 1
"""


def test_kill_9_at_random_points_leaves_the_newest_checkpoint_loadable(work):
    """SIGKILL a process that does nothing but save checkpoints, at random moments, again and
    again; after each kill the newest complete checkpoint loads and is all one step."""
    run = work / "kill9"
    shutil.rmtree(run, ignore_errors=True)
    rng = random.Random(0)
    mid_save = 0
    last = 0
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_LOOP, str(run)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline() == "saving\n"
        time.sleep(rng.uniform(0.05, 0.4))
        proc.kill()
        proc.wait()
        leftovers = [n for n in os.listdir(run) if n.startswith((".tmp_", ".del_")) or ".old_" in n]
        mid_save += bool(leftovers)                    # the next process's first save sweeps them
        kept = list_checkpoints(run)
        assert kept, "no complete checkpoint after a kill"
        model, state, tok, path = load_model(kept[-1])
        step = state["step"]
        assert step >= last and tok.vocab_size == 17
        opt = AdamW(model.params, model.be)
        load_optimizer(path, opt, state)
        for d in (model.params, opt.m, opt.v):
            for a in d.values():
                assert np.all(a == step), (path, step)
        last = step
    assert last > 6
    # most kills land inside a save here (saving is all the loop does); at least one must
    assert mid_save >= 1
    # a save sweeps up what the killed ones left behind
    model, state, tok, path = load_model(list_checkpoints(run)[-1])
    save_checkpoint(run, state["step"] + 1, model, tokenizer=tok)
    assert not [n for n in os.listdir(run) if n.startswith((".tmp_", ".del_")) or ".old_" in n]


def test_a_second_signal_dropped_in_a_weakref_callback_is_raised_again(tmp_path, capfd,
                                                                       monkeypatch):
    """The garbage collector runs weakref callbacks at any bytecode; a signal handler that
    raises inside one has its exception handed to sys.unraisablehook and dropped. The second
    signal's Interrupted must still end the run, and print no traceback."""
    import weakref
    from scratchgpt.errors import Interrupted
    from scratchgpt.train import StopOnSignal

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reported.append(u.exc_type))

    class Thing:
        pass

    def drop(thing, callback):
        ref = weakref.ref(thing, callback)       # noqa: F841 (kept alive until thing dies)
        del thing                                # the callback runs here; its exception is dropped

    with StopOnSignal(str(tmp_path)) as stop:
        stop._handle(signal.SIGINT, None)        # the first: finish the step
        drop(Thing(), lambda _: stop._handle(signal.SIGINT, None))
        with pytest.raises(Interrupted, match="interrupted again by SIGINT: stopped at once"):
            stop.raise_if_again()
        drop(Thing(), lambda _: 1 / 0)           # anything else goes to the hook it replaced
    assert reported == [ZeroDivisionError]
    assert "Traceback" not in capfd.readouterr().err


def test_a_checkpoint_deletion_cut_short_by_a_signal_is_finished_first(tmp_path, monkeypatch):
    """A second signal's Interrupted can arrive while an old checkpoint is being deleted: the
    deletion finishes before the exception goes on, so no hidden .del_ folder is left."""
    from scratchgpt import checkpoint
    real_rmtree = shutil.rmtree

    old = tmp_path / "ckpt_000001"
    (old / "sub").mkdir(parents=True)
    (old / "sub" / "w.bin").write_bytes(b"x" * 10)
    calls = []

    def rmtree(path, ignore_errors=False):
        calls.append(path)
        if len(calls) == 1:
            raise KeyboardInterrupt          # as a signal handler's exception would
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(checkpoint.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.remove_checkpoint(str(old))
    assert os.listdir(tmp_path) == [] and len(calls) == 2
