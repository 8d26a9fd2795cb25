"""Data parallelism (python/scratchgpt/distributed.py).

Under MPI (`mpiexec -n N python3 -m scratchgpt.cli train ...` as subprocesses, each with a
timeout): N ranks give the weights, AdamW moments, sampler and dropout state of one process with
--grad-accum N bit for bit (N = 2, and 4 in the slow set; numpy and host backends, bf16 and
fp16; ZeRO-1 too, which under bf16 / fp16 holds 1/N of the fp32 masters per rank);
a checkpoint resumes across world sizes 2 -> 1 and 1 -> 2 bit-identically; a raising or hanging
rank ends the job within 30 s with a message naming the rank, a killed one with the launcher's
message naming a pid of the start line's rank -> pid map; a NaN on one rank stops all; arguments
that differ
between ranks are refused before anything is written. These need mpi4py and mpiexec (the `mpi`
extra); without them they skip saying so (CI installs the extra and runs them).

Without MPI: the bucket layout, the NCCL path on the emulated device through a recording
stand-in of cupy.cuda.nccl (tests/nccl_standin.py, checked against CuPy 14.0.0), the
ZeRO-1 shard sizes, and ZeRO-1's sharded bf16 masters on one rank (MPI and NCCL stand-ins).
"""
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from scratchgpt import distributed
from scratchgpt.distributed import Layout, NcclTransport, OrderedReducer, ShardedAdamW, Watchdog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MPIEXEC = shutil.which("mpiexec")
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(not HAVE_MPI, reason="mpi4py / mpiexec not installed: "
                               "pip install -e '.[mpi]' (CI installs it and runs these)")
RUN_TIMEOUT_S = 240


def env():
    return dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "python"),
                                                        os.path.join(ROOT, "tests")]),
                OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def train_argv(text_file, out, *extra):
    return ["train", "--preset", "nano", "--data", str(text_file), "--tokenizer", "char",
            "--out", str(out), "--batch-size", "4", "--lr", "1e-2", "--warmup-steps", "2",
            "--lr-decay-steps", "6", "--eval-interval", "3", "--eval-iters", "2",
            "--ckpt-interval", "3", "--keep", "3", "--no-progress", "--seed", "7",
            "--dropout", "0.1", *extra]


def run(ranks, argv, module="scratchgpt.cli", timeout=RUN_TIMEOUT_S, check=True):
    """`mpiexec -n ranks python3 -m module argv` (ranks None: one plain process)."""
    cmd = [sys.executable, "-m", module, *argv]
    if ranks is not None:
        cmd = [MPIEXEC, "-n", str(ranks), *cmd]
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=timeout)
    p.elapsed = time.monotonic() - t0
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
    return p


def assert_same_checkpoint(a, b):
    from safetensors.numpy import load_file
    for name in ("model.safetensors", "optimizer.safetensors"):
        ta, tb = load_file(os.path.join(a, name)), load_file(os.path.join(b, name))
        assert set(ta) == set(tb)
        for k in ta:
            assert np.array_equal(ta[k], tb[k]), (name, k, float(np.abs(ta[k] - tb[k]).max()))
    sa, sb = (json.load(open(os.path.join(d, "state.json"))) for d in (a, b))
    for key in ("step", "data_rng", "dropout_step", "train_loss", "optimizer"):
        assert sa[key] == sb[key], key


@pytest.fixture(scope="module")
def reference(text_file, tmp_path_factory):
    """One process with --grad-accum N, 6 steps (checkpoints at 3 and 6), once per (N, backend,
    precision)."""
    runs = {}

    def get(accum, backend="numpy", precision="fp32"):
        key = (accum, backend, precision)
        if key not in runs:
            out = tmp_path_factory.mktemp(f"ref_{accum}_{backend}_{precision}")
            run(None, train_argv(text_file, out, "--max-steps", "6", "--grad-accum", str(accum),
                                 "--backend", backend, "--precision", precision))
            runs[key] = str(out)
        return runs[key]
    return get


# ---------------------------------------------------------------------- bit identity (MPI)
@needs_mpi
@pytest.mark.parametrize("zero, bucket_mb", [("0", "25"), ("1", "0.001")])   # 1 or 28 buckets
def test_two_ranks_equal_one_process_with_grad_accum_two(text_file, tmp_path, reference, zero,
                                                         bucket_mb):
    p = run(2, train_argv(text_file, tmp_path, "--max-steps", "6", "--zero", zero,
                          "--bucket-mb", bucket_mb))
    assert "data parallel over 2 ranks" in p.stdout
    assert p.stdout.count("done: 6 steps") == 1                  # rank 0 alone prints
    for step in (3, 6):
        assert_same_checkpoint(os.path.join(reference(2), f"ckpt_{step:06d}"),
                               os.path.join(tmp_path, f"ckpt_{step:06d}"))


@needs_mpi
@pytest.mark.slow
def test_two_ranks_on_the_host_kernels_equal_grad_accum_two(text_file, tmp_path, reference):
    run(2, train_argv(text_file, tmp_path, "--max-steps", "6", "--zero", "1", "--backend", "host"))
    assert_same_checkpoint(os.path.join(reference(2, "host"), "ckpt_000006"),
                           os.path.join(tmp_path, "ckpt_000006"))


@needs_mpi
@pytest.mark.parametrize("precision", ["bf16", pytest.param("fp16", marks=pytest.mark.slow)])
def test_two_ranks_in_mixed_precision_equal_grad_accum_two(text_file, tmp_path, reference,
                                                           precision):
    """bf16 / fp16: the fp32 master gradients are what is reduced; the loss scaler decides on
    the reduced gradients, the same on every rank. ZeRO-1 shards the fp32 masters: each rank
    holds half of them (rank 0's bytes, printed), rounds its half to 16 bits for the all-gather,
    and the masters and moments gathered into the checkpoints at steps 3 and 6 are one
    process's (the 16-bit weights of steps 2..6 are what those steps' forwards read, so a wrong
    one would show in the masters after it)."""
    p = run(2, train_argv(text_file, tmp_path, "--max-steps", "6", "--zero", "1", "--precision",
                          precision))
    params = int(re.search(r"model: ([\d,]+) parameters", p.stdout)[1].replace(",", ""))
    held = re.search(r"ZeRO-1 per rank: ([\d,]+) bytes of AdamW moments, ([\d,]+) bytes of "
                     r"fp32 masters", p.stdout)
    assert held, p.stdout
    assert [int(x.replace(",", "")) for x in held.groups()] == [8 * params // 2, 4 * params // 2]
    for step in (3, 6):
        assert_same_checkpoint(os.path.join(reference(2, precision=precision), f"ckpt_{step:06d}"),
                               os.path.join(tmp_path, f"ckpt_{step:06d}"))


@needs_mpi
def test_sharded_bf16_masters_resume_from_two_ranks_on_one_and_from_one_on_two(
        text_file, tmp_path, reference):
    """The masters sharded on 2 ranks are gathered whole into the checkpoint (2 -> 1), and a
    1-rank checkpoint's masters are sharded on resume (1 -> 2 --zero 1): both end on one
    process's step 6, bit for bit."""
    bf16 = ("--precision", "bf16")
    two = tmp_path / "two_then_one"
    run(2, train_argv(text_file, two, "--max-steps", "3", "--zero", "1", *bf16))
    run(None, ["train", "--resume", str(two), "--max-steps", "6", "--no-progress"])
    assert_same_checkpoint(os.path.join(reference(2, precision="bf16"), "ckpt_000006"),
                           str(two / "ckpt_000006"))

    one = tmp_path / "one_then_two"
    run(None, train_argv(text_file, one, "--max-steps", "3", "--grad-accum", "2", *bf16))
    p = run(2, ["train", "--resume", str(one), "--max-steps", "6", "--no-progress", "--zero", "1"])
    assert "bytes of fp32 masters" in p.stdout
    assert_same_checkpoint(os.path.join(reference(2, precision="bf16"), "ckpt_000006"),
                           str(one / "ckpt_000006"))


@needs_mpi
@pytest.mark.slow
def test_four_ranks_equal_one_process_with_grad_accum_four(text_file, tmp_path, reference):
    """N = 4: the rank-order sum ((g0 + g1) + g2) + g3 is grad-accum's; bit-identical too."""
    run(4, train_argv(text_file, tmp_path, "--max-steps", "6", "--bucket-mb", "0.001"))
    assert_same_checkpoint(os.path.join(reference(4), "ckpt_000006"),
                           os.path.join(tmp_path, "ckpt_000006"))


# ------------------------------------------------------------- resume across world sizes
@needs_mpi
def test_resume_from_two_ranks_on_one_and_from_one_on_two(text_file, tmp_path, reference):
    two = tmp_path / "two_then_one"
    run(2, train_argv(text_file, two, "--max-steps", "3", "--zero", "1"))
    p = run(None, ["train", "--resume", str(two), "--max-steps", "6", "--no-progress"])
    assert "resuming at step 3" in p.stdout
    assert json.load(open(two / "ckpt_000006" / "state.json"))["args"]["grad_accum"] == 2
    assert_same_checkpoint(os.path.join(reference(2), "ckpt_000006"), str(two / "ckpt_000006"))

    one = tmp_path / "one_then_two"
    run(None, train_argv(text_file, one, "--max-steps", "3", "--grad-accum", "2"))
    run(2, ["train", "--resume", str(one), "--max-steps", "6", "--no-progress"])
    state = json.load(open(one / "ckpt_000006" / "state.json"))
    assert state["args"]["grad_accum"] == 1 and state["args"]["world_size"] == 2
    assert_same_checkpoint(os.path.join(reference(2), "ckpt_000006"), str(one / "ckpt_000006"))

    # a global step of 1 micro-batch cannot be shared by 2 ranks: refused, saying so
    odd = tmp_path / "odd"
    run(None, train_argv(text_file, odd, "--max-steps", "3"))
    p = run(2, ["train", "--resume", str(odd), "--max-steps", "6", "--no-progress"], check=False)
    assert p.returncode == 2
    assert "global step holds 1 micro-batches" in p.stderr
    assert p.stderr.count("scratchgpt train: error:") == 1


# ---------------------------------------------------------------------------- faults (MPI)
def fault(text_file, out, kind, rank, step, *extra):
    return run(2, [kind, str(rank), str(step), *train_argv(text_file, out, "--max-steps", "30",
                                                            *extra)],
               module="mpi_faults", timeout=90, check=False)


@needs_mpi
def test_a_killed_rank_ends_every_rank_and_keeps_the_checkpoint(text_file, tmp_path):
    p = fault(text_file, tmp_path, "kill", 1, 4)             # after the checkpoint of step 3
    out = p.stdout + p.stderr
    assert p.returncode != 0 and p.elapsed < 30, (p.returncode, p.elapsed, out)
    pids = dict(re.findall(r"(\d+): (\d+)", re.search(r"pids ([^)]*)\)", out).group(1)))
    # Either rank 0's peer monitor wins the race and names rank 1, or MPICH's launcher ends the
    # other ranks first (SIGKILL: they cannot speak) and reports the pid it saw end first, with
    # the signal; the pid map of the start line names its rank
    monitor = f"rank 0 of 2: rank 1 (pid {pids['1']}) ended during training (killed or crashed"
    launcher = re.search(r"PID (\d+) RUNNING AT", out)
    assert monitor in out or launcher, out
    if launcher:
        assert launcher.group(1) in pids.values() and "Killed (signal 9)" in out, out
    from scratchgpt.checkpoint import list_checkpoints, load_model, load_optimizer
    from scratchgpt.optim import AdamW
    newest = list_checkpoints(tmp_path)[-1]
    assert newest.endswith("ckpt_000003")
    model, state, _, _ = load_model(newest)
    load_optimizer(newest, AdamW(model.params, model.be), state)
    assert state["step"] == 3


@needs_mpi
def test_a_raising_rank_ends_every_rank_naming_it(text_file, tmp_path):
    p = fault(text_file, tmp_path, "raise", 1, 2)
    assert p.returncode != 0 and p.elapsed < 30, (p.returncode, p.elapsed)
    assert ("scratchgpt train: error: rank 1 of 2 failed: RuntimeError: injected fault; ending "
            "every rank") in p.stderr


@needs_mpi
def test_a_nan_on_one_rank_stops_every_rank_on_the_same_step(text_file, tmp_path):
    p = fault(text_file, tmp_path, "nan", 1, 4)
    assert p.returncode == 1 and p.elapsed < 30, (p.returncode, p.elapsed, p.stderr)
    assert p.stderr.count("training stopped: the loss or gradient is not finite (NaN or Inf) "
                          "at step 5") == 1                 # rank 0 reports, rank 1 is quiet
    assert "failed" not in p.stderr
    assert os.path.basename(find_newest(tmp_path)) == "ckpt_000003"


@needs_mpi
def test_sigterm_to_one_rank_stops_every_rank_after_the_step_with_a_checkpoint(text_file,
                                                                              tmp_path):
    p = fault(text_file, tmp_path, "term", 1, 4)
    assert p.returncode == 143 and p.elapsed < 30, (p.returncode, p.elapsed, p.stderr)
    assert "interrupted by SIGTERM after step 5 of 30; checkpoint written" in p.stderr
    assert os.path.basename(find_newest(tmp_path)) == "ckpt_000005"


def find_newest(run_dir):
    from scratchgpt.checkpoint import list_checkpoints
    return list_checkpoints(run_dir)[-1]


@needs_mpi
@pytest.mark.slow
def test_a_hanging_rank_is_ended_by_the_watchdog(text_file, tmp_path):
    # the hang comes before any work that rank 0 alone does (evaluation, checkpoints), so no
    # other wait reaches the short timeout
    p = fault(text_file, tmp_path, "hang", 1, 2, "--dist-timeout", "5")
    assert p.returncode != 0 and p.elapsed < 30, (p.returncode, p.elapsed)
    assert re.search(r"rank 0 of 2: loss gather did not complete within 5 s: .*; ending every "
                     r"rank", p.stderr), p.stderr


@needs_mpi
@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfd_open (Linux >= 5.3, "
                    "Python >= 3.9): the monitor is not started there")
def test_the_peer_monitor_names_a_rank_that_ends_during_training(capsys):
    """Launchers that leave the other ranks running (srun without --kill-on-bad-exit) get the
    rank's own report: a peer on this host that ends makes the monitor abort, naming it."""
    peer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    class World:
        rank, size, finishing, aborted = 0, 2, False, []
        peers = [(distributed.socket.gethostname(), os.getpid()),
                 (distributed.socket.gethostname(), peer.pid)]

        def abort(self, code):
            self.aborted.append(code)

    world = World()
    monitor = distributed.PeerMonitor(world)
    monitor.start()
    peer.kill()
    peer.wait()
    monitor.join(10)
    assert world.aborted == [1] and not monitor.is_alive()
    assert (f"rank 0 of 2: rank 1 (pid {peer.pid}) ended during training (killed or crashed"
            in capsys.readouterr().err)


@needs_mpi
def test_ranks_with_different_arguments_are_refused_before_anything_is_written(text_file,
                                                                              tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "scratchgpt.cli"]
    argv = [MPIEXEC, "-n", "1", *cmd, *train_argv(text_file, out, "--lr", "0.01"), ":",
            "-n", "1", *cmd, *train_argv(text_file, out, "--lr", "0.02")]
    p = subprocess.run(argv, env=env(), capture_output=True, text=True, timeout=90)
    assert p.returncode == 2, p.stderr
    assert "ranks were started with different arguments (lr: rank 0 0.01, rank 1 0.02)" in p.stderr
    assert p.stderr.count("error:") == 1 and not out.exists()


# --------------------------------------------------------------------------- without MPI
def test_layout_cuts_padded_buckets_that_cover_every_tensor_once():
    shapes = [("a", (3, 5)), ("b", (7,)), ("c", (2, 2, 3))]          # 34 elements
    lay = Layout(shapes, size=4, bucket_bytes=40, itemsize=4)         # 10 elements -> 8
    assert lay.numel == 34 and lay.padded == 36
    assert lay.buckets == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 36)]
    seen = {name: np.zeros(int(np.prod(s)), int) for name, s in shapes}
    for start, stop in lay.buckets:
        assert (stop - start) % 4 == 0
        for name, lo, hi, at in lay.pieces(start, stop):
            assert start <= at and at + hi - lo <= stop
            seen[name][lo:hi] += 1
    assert all((v == 1).all() for v in seen.values())


class _OneRankMpi:
    """An MPI transport of one rank: what distributed.MpiTransport does with COMM_SELF."""
    xp = np
    bits16 = distributed.MpiTransport.bits16

    def alltoall(self, send, recv, what):
        recv[...] = send

    allgather = alltoall


def test_zero1_shards_hold_their_part_of_the_moments():
    from scratchgpt.ops import get_backend
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((5, 7), dtype=np.float32),
              "b": rng.standard_normal(9, dtype=np.float32)}          # 44 elements
    be = get_backend("numpy")
    full = sum(2 * p.nbytes for p in params.values())
    for size in (1, 2, 8):
        shards = [ShardedAdamW(params, be, _OneRankMpi(), r, size) for r in range(size)]
        per_rank = [s.moment_bytes() for s in shards]
        assert sum(per_rank) == full                        # every moment held once
        assert max(per_rank) == 2 * 4 * -(-44 // size)      # and at most 1/N (padded) each


def test_zero1_under_bf16_shards_the_fp32_masters_and_steps_as_adamw():
    """Each rank keeps 1/N of the fp32 masters (every master held once) and the params dict
    then holds bf16 weights only; on one rank a step is AdamW's followed by the rounding to
    bf16, and whole_masters() shows AdamW's fp32 parameters."""
    from scratchgpt.ops import get_backend
    from scratchgpt.optim import AdamW
    from scratchgpt.precision import storage_dtype, to_storage
    bf16 = storage_dtype("bf16")
    rng = np.random.default_rng(0)
    params = {"w": rng.standard_normal((5, 7), dtype=np.float32),
              "b": rng.standard_normal(9, dtype=np.float32)}          # 44 elements
    be = get_backend("numpy")
    for size in (1, 2, 8):
        dicts = [dict(params) for _ in range(size)]
        shards = [ShardedAdamW(d, be, _OneRankMpi(), r, size, "bf16")
                  for r, d in enumerate(dicts)]
        per_rank = [s.master_bytes() for s in shards]
        assert sum(per_rank) == 4 * 44 and max(per_rank) == 4 * -(-44 // size)
        for d in dicts:
            assert all(d[k].dtype == bf16 and d[k].shape == params[k].shape for k in d)
            assert all(np.array_equal(d[k], to_storage(params[k], "bf16")) for k in d)

    grads = {k: rng.standard_normal(p.shape, dtype=np.float32) for k, p in params.items()}
    plain_params = {k: p.copy() for k, p in params.items()}
    plain = AdamW(plain_params, be, lr=1e-2)
    sharded_params = dict(params)
    sharded = ShardedAdamW(sharded_params, be, _OneRankMpi(), 0, 1, "bf16", lr=1e-2)
    for _ in range(2):
        plain.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=1.0)
        sharded.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=1.0)
    for k in params:
        assert np.array_equal(sharded_params[k], to_storage(plain_params[k], "bf16"))
    with sharded.whole_masters():
        assert all(sharded_params[k].dtype == np.float32 and
                   np.array_equal(sharded_params[k], plain_params[k]) for k in params)
    assert all(sharded_params[k].dtype == bf16 for k in params)
    state = sharded.state_dict()
    assert all(np.array_equal(state[w][k], getattr(plain, w)[k]) for w in "mv" for k in params)


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setenv("SCRATCHGPT_EMULATE_CUDA", "1")
    from scratchgpt.kernels import backend_status, device_array_module
    status = backend_status("cuda")
    if not status["available"]:
        pytest.fail(f"the emulated device must be available wherever _host is: {status['reason']}")
    return device_array_module()


def _standin():
    import nccl_standin
    nccl_standin.calls.clear()
    return nccl_standin


def test_nccl_path_on_the_emulated_device_buckets_and_orders_its_calls(emulated):
    """One rank of NCCL on the emulated device (the stand-in records and performs each call):
    buckets in reverse parameter order, each an all-to-all of grouped send / recv and an
    all-gather, float32 device pointers; the gradients come back bit for bit (a sum over one
    rank); ZeRO-1 over the same transport equals AdamW on the cuda backend."""
    from scratchgpt.config import GPTConfig
    from scratchgpt.model import GPT
    from scratchgpt.optim import AdamW
    nccl = _standin()
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    transport = NcclTransport(comm, nccl, emulated, Watchdog(10, 0, 1, [], pytest.fail))
    cfg = GPTConfig.preset("nano", vocab_size=17)
    model = GPT(cfg, backend="cuda", dtype="float32", seed=3)
    idx = np.random.default_rng(1).integers(0, 17, (2, cfg.block_size))
    model.forward(idx, idx)
    grads = model.backward()
    before = {k: emulated.asnumpy(g).copy() for k, g in grads.items()}
    names = list(grads)
    reducer = OrderedReducer(transport, [(k, g.shape) for k, g in grads.items()], np.float32,
                             bucket_bytes=4096, size=1)
    reducer.reduce(grads)
    for k in grads:
        assert np.array_equal(emulated.asnumpy(grads[k]), before[k]), k
    buckets = reducer.layout.buckets
    assert len(buckets) > 2 and reducer.layout.entries[0][0] == names[-1]   # backward order
    kinds = [c[0] for c in nccl.calls]
    assert kinds == ["groupStart", "send", "recv", "groupEnd", "allGather"] * len(buckets)
    for b, (start, stop) in enumerate(buckets):
        send, recv, gather = nccl.calls[5 * b + 1], nccl.calls[5 * b + 2], nccl.calls[5 * b + 4]
        assert send[2:5] == (stop - start, nccl.NCCL_FLOAT32, 0)   # count, float32, peer 0
        assert recv[2:5] == (stop - start, nccl.NCCL_FLOAT32, 0)
        assert gather[3:5] == (stop - start, nccl.NCCL_FLOAT32)
        assert all(isinstance(v, int) for v in send[1:] + recv[1:] + gather[1:])

    twin = GPT(cfg, backend="cuda", dtype="float32", seed=3)
    sharded = ShardedAdamW(model.params, model.be, transport, 0, 1, lr=1e-2)
    plain = AdamW(twin.params, twin.be, lr=1e-2)
    nccl.calls.clear()
    for _ in range(2):
        sharded.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=0.5)
        plain.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=0.5)
    assert [c[0] for c in nccl.calls] == ["allGather", "allGather"]
    for k in model.params:
        assert np.array_equal(emulated.asnumpy(model.params[k]), emulated.asnumpy(twin.params[k]))


def test_sharded_bf16_masters_gather_16_bit_weights_over_nccl_on_the_emulated_device(emulated):
    """ZeRO-1 with bf16 masters over one rank of NCCL: each step is one allGather of the padded
    vector's 16-bit weights (as NCCL_FLOAT16: NCCL has no uint16, the gather only copies), and
    the model's weights equal AdamW's fp32 parameters rounded to bf16."""
    from scratchgpt.config import GPTConfig
    from scratchgpt.model import GPT
    from scratchgpt.optim import AdamW
    from scratchgpt.precision import to_storage
    nccl = _standin()
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    transport = NcclTransport(comm, nccl, emulated, Watchdog(10, 0, 1, [], pytest.fail))
    cfg = GPTConfig.preset("nano", vocab_size=17)
    model = GPT(cfg, backend="cuda", precision="bf16", seed=3)
    twin = GPT(cfg, backend="cuda", precision="bf16", seed=3)
    idx = np.random.default_rng(1).integers(0, 17, (2, cfg.block_size))
    model.forward(idx, idx)
    grads = model.backward()
    sharded = ShardedAdamW(model.params, model.be, transport, 0, 1, "bf16", lr=1e-2)
    plain = AdamW(twin.params, twin.be, lr=1e-2)
    nccl.calls.clear()
    for _ in range(2):
        sharded.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=0.5)
        plain.step({k: g.copy() for k, g in grads.items()}, max_grad_norm=0.5)
    assert [c[0] for c in nccl.calls] == ["allGather", "allGather"]
    assert all(c[3:5] == (sharded.layout.padded, nccl.NCCL_FLOAT16) for c in nccl.calls)
    model.sync_lowp()
    for k in model.params:
        want = emulated.asnumpy(to_storage(twin.params[k], "bf16"))
        assert np.array_equal(emulated.asnumpy(model.params_lp[k]), want), k


def test_the_device_checks_nccl_run_passes_on_the_emulated_device(emulated, monkeypatch, capsys):
    """benchmarks/device_check.sh's `python3 -m scratchgpt.distributed nccl-check`, with the
    emulated device as cupy and the stand-in as cupy.cuda.nccl: its plumbing, before a GPU."""
    import types
    nccl = _standin()
    monkeypatch.setitem(sys.modules, "cupy", emulated)
    monkeypatch.setitem(sys.modules, "cupy.cuda", types.SimpleNamespace(nccl=nccl))
    assert distributed._nccl_check() == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["ok"] and result["zero1_equals_adamw"] and result["buckets"] > 1
    assert nccl.calls[-1] == ("destroy",)


def test_the_nccl_standin_refuses_what_cupy_14_refuses():
    nccl = _standin()
    with pytest.raises(TypeError):
        nccl.NcclCommunicator(1, tuple(nccl.get_unique_id()), 0)   # CuPy < 14's tuple id
    with pytest.raises(ValueError, match="commId length 127"):
        nccl.NcclCommunicator(1, nccl.get_unique_id()[:127], 0)
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    buf = np.zeros(4, np.float32)
    ptr = buf.__array_interface__["data"][0]
    with pytest.raises(TypeError):
        comm.allGather(float(ptr), ptr, 4, nccl.NCCL_FLOAT32, 0)
    with pytest.raises(OverflowError):
        comm.allGather(ptr, ptr, -1, nccl.NCCL_FLOAT32, 0)
    with pytest.raises(nccl.NcclError, match="ncclInvalidArgument"):
        comm.allGather(ptr, ptr, 4, 42, 0)
    with pytest.raises(nccl.NcclError, match="ncclInvalidUsage"):
        nccl.groupEnd()
    with pytest.raises(NotImplementedError, match="outside a group"):
        comm.send(ptr, 4, nccl.NCCL_FLOAT32, 0, 0)


def test_one_process_is_a_world_of_one():
    class A:
        pass
    args = A()
    args.resume, args.grad_accum = None, 3
    dp = distributed.DataParallel()
    dp.fit_accumulation(args)
    assert (dp.size, dp.rank, dp.is_writer, args.grad_accum, args.world_size) == (1, 0, True, 3, 1)
    assert dp.reduce([1.0], {"g": 1}, 1) == ([1.0], {"g": 1}) and dp.describe() == ""
