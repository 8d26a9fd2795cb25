"""The execution model (core/): small kernels from tests/kernels/executor_tests.cu against NumPy.

Each runs on the host executor and, marked `cuda`, on the GPU — the GPU run checks that the
executor's semantics (shuffle edge cases, widths, partial masks) are the hardware's. Misuse
(divergent barriers, lanes missing from a mask) must raise on the host, naming the kernel.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed


def lanes_expected(x, width, delta, src_lane):
    """shfl (src_lane), shfl_up, shfl_down, shfl_xor (delta) with `width`, per PTX shfl.sync."""
    n = x.size
    t = np.arange(n)
    lane, base = t % 32, t - t % 32
    seg = lane & ~(width - 1)
    d = delta & 31
    idx = seg + (src_lane & (width - 1))
    up = np.where(lane - d < seg, lane, lane - d)
    down = np.where(lane + d >= seg + width, lane, lane + d)
    xor = np.where((lane ^ d) >= seg + width, lane, lane ^ d)
    warp_sum = x.reshape(-1, 32).sum(axis=1).repeat(32)
    warp_max = x.reshape(-1, 32).max(axis=1).repeat(32)
    return np.stack([x[base + idx], x[base + up], x[base + down], x[base + xor], warp_sum, warp_max])


@given(width=st.sampled_from([1, 2, 4, 8, 16, 32]), delta=st.integers(0, 40),
       src_lane=st.integers(-3, 40), block=st.sampled_from([32, 64, 96]),
       blocks=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_shuffles(kernel_runtime, width, delta, src_lane, block, blocks, seed):
    rt = kernel_runtime
    # small integers: every sum is exact in float32, whatever the order
    x = np.random.default_rng(seed).integers(-1000, 1000, block * blocks).astype(np.float32)
    out = rt.asarray(np.full((6, x.size), np.nan, np.float32))
    rt.lib.exec_test_shuffles(out, rt.asarray(x), block, width, delta, src_lane, rt.stream())
    np.testing.assert_array_equal(rt.asnumpy(out), lanes_expected(x, width, delta, src_lane))


@given(pattern=st.sampled_from(["random", "none", "all", "one"]), seed=st.integers(0, 2**16))
def test_votes(kernel_runtime, pattern, seed):
    rt = kernel_runtime
    n = 128
    p = {"random": np.random.default_rng(seed).integers(0, 2, n), "none": np.zeros(n),
         "all": np.full(n, 7), "one": (np.arange(n) % 32 == seed % 32) * -1}[pattern].astype(np.int32)
    out = rt.asarray(np.full((3, n), -5, np.int32))
    rt.lib.exec_test_votes(out, rt.asarray(p), 64, rt.stream())
    bits = (p.reshape(-1, 32) != 0)
    ballot = (bits * (1 << np.arange(32, dtype=np.uint64))).sum(axis=1).astype(np.uint32).repeat(32)
    got = rt.asnumpy(out)
    np.testing.assert_array_equal(got[0].view(np.uint32), ballot)
    np.testing.assert_array_equal(got[1], bits.any(axis=1).repeat(32))
    np.testing.assert_array_equal(got[2], bits.all(axis=1).repeat(32))


def test_partial_masks(kernel_runtime):
    """Even and odd lanes reduce with their own masks at the same time; the lower half alone
    reduces with width 16 while the upper half takes no part."""
    rt = kernel_runtime
    x = np.random.default_rng(1).integers(-50, 50, 128).astype(np.float32)
    out = rt.asarray(np.full((2, x.size), np.nan, np.float32))
    rt.lib.exec_test_partial_masks(out, rt.asarray(x), 64, rt.stream())
    w = x.reshape(-1, 32)
    parity = np.stack([w[:, 0::2].sum(axis=1), w[:, 1::2].sum(axis=1)], axis=1)   # [warps, 2]
    expected0 = parity[:, np.arange(32) % 2].reshape(-1)
    lower = w[:, :16].sum(axis=1, keepdims=True)
    expected1 = np.concatenate([np.repeat(lower, 16, axis=1), w[:, 16:]], axis=1).reshape(-1)
    got = rt.asnumpy(out)
    np.testing.assert_array_equal(got[0], expected0)
    np.testing.assert_array_equal(got[1], expected1)


@pytest.mark.parametrize("block", [(32, 1, 1), (8, 4, 2), (64, 2, 2), (16, 16, 4), (1024, 1, 1)])
def test_block_sum_3d_blocks(kernel_runtime, block):
    rt = kernel_runtime
    threads = int(np.prod(block))
    x = np.random.default_rng(threads).standard_normal(3 * threads).astype(np.float32)
    out = rt.asarray(np.full(3, np.nan, np.float32))
    rt.lib.exec_test_block_sum(out, rt.asarray(x), *block, rt.stream())
    np.testing.assert_allclose(rt.asnumpy(out), x.reshape(3, -1).astype(np.float64).sum(axis=1),
                               rtol=1e-5, atol=1e-4)


@given(R=st.integers(1, 100), C=st.integers(1, 100))
def test_shared_memory_transpose(kernel_runtime, R, C):
    rt = kernel_runtime
    x = np.random.default_rng(R * 1000 + C).standard_normal((R, C)).astype(np.float32)
    out = rt.asarray(np.full((C, R), np.nan, np.float32))
    rt.lib.exec_test_transpose(out, rt.asarray(x), rt.stream())
    np.testing.assert_array_equal(rt.asnumpy(out), x.T)


@pytest.mark.parametrize("n", [1, 200, 5000])
def test_atomics(kernel_runtime, n):
    rt = kernel_runtime
    rng = np.random.default_rng(n)
    values = rng.random(n).astype(np.float32)
    ints = rng.integers(-10**6, 10**6, n).astype(np.int32)
    total = rt.asarray(np.zeros(1, np.float32))
    biggest = rt.asarray(np.full(1, np.iinfo(np.int32).min, np.int32))
    count = rt.asarray(np.zeros(1, np.int32))
    histogram = rt.asarray(np.zeros(16, np.int32))
    rt.lib.exec_test_atomics(total, biggest, count, histogram, rt.asarray(values), rt.asarray(ints),
                             rt.stream())
    np.testing.assert_allclose(rt.asnumpy(total)[0], values.astype(np.float64).sum(), rtol=1e-5)
    assert rt.asnumpy(biggest)[0] == ints.max()
    assert rt.asnumpy(count)[0] == n
    np.testing.assert_array_equal(rt.asnumpy(histogram), np.bincount(ints & 15, minlength=16))


@given(grid=st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3)),
       block=st.tuples(st.integers(1, 16), st.integers(1, 8), st.integers(1, 4)))
def test_3d_grid(kernel_runtime, grid, block):
    rt = kernel_runtime
    (gx, gy, gz), (bx, by, bz) = grid, block
    out = rt.asarray(np.full((gz * bz, gy * by, gx * bx), -1, np.int32))
    rt.lib.exec_test_grid3d(out, gx, gy, gz, bx, by, bz, rt.stream())
    z, y, x = np.meshgrid(np.arange(gz * bz), np.arange(gy * by), np.arange(gx * bx), indexing="ij")
    block_id = x // bx + gx * (y // by + gy * (z // bz))
    thread_id = x % bx + bx * (y % by + by * (z % bz))
    np.testing.assert_array_equal(rt.asnumpy(out), block_id * 1024 + thread_id)


@given(n=st.integers(1, 3000), block=st.sampled_from([32, 100, 256, 1024]))
def test_dynamic_shared_memory(kernel_runtime, n, block):
    rt = kernel_runtime
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    out = rt.asarray(np.full(n, np.nan, np.float32))
    rt.lib.exec_test_dynamic_smem(out, rt.asarray(x), block, rt.stream())
    t = np.arange(n)
    src = (t // block) * block + (block - 1 - t % block)
    expected = np.where(src < n, x[np.minimum(src, n - 1)], -1.0).astype(np.float32)
    np.testing.assert_array_equal(rt.asnumpy(out), expected)


MISUSE = {   # case -> (kernel named in the error, what the error says: a regex; which of the
             # alternatives depends on the schedule, i.e. on which thread meets the fault first)
    "barrier_skipped": ("barrier_skipped_kernel",
                        r"exited while \d+ thread\(s\) wait at __syncthreads|"
                        r"reached by thread \(\d+,0,0\) after \d+ thread\(s\) of the block exited"),
    "barrier_divergent": ("barrier_divergent_kernel", r"divergent __syncthreads"),
    "lane_exits": ("lane_exits_kernel", r"lane 31 \(thread \(31,0,0\)\) exited|"
                                         r"lane 31 of the mask already exited"),
    "lane_never_arrives": ("lane_never_arrives_kernel", r"for lanes 0x00000020 that never arrive"),
    "lane_not_in_mask": ("lane_not_in_mask_kernel", r"does not include the calling lane"),
    "misaligned": ("misaligned_kernel", r"misaligned float4 load"),
}
SCHEDULES = ["forward", "reverse", "random:1", "random:2024"]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_raises_naming_the_kernel(host_runtime, monkeypatch, case, schedule):
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    kernel, says = MISUSE[case]
    with pytest.raises(RuntimeError) as e:
        host_runtime.lib.exec_test_misuse(case)
    assert kernel in str(e.value) and re.search(says, str(e.value)), str(e.value)


def activemask_expected(predicate, block, live):
    """Per thread: the mask in its branch (the warp's live lanes with the same predicate), the
    mask where the live lanes meet again, the branch taken (1, 2); zeros past `live`."""
    n = predicate.size
    t = np.arange(n)
    alive = t < live
    weights = (1 << np.arange(32, dtype=np.uint64))
    def warp_mask(member):   # per thread: the bits of the lanes of its warp where `member`
        return ((member.reshape(-1, 32) * weights).sum(axis=1).astype(np.uint32)).repeat(32)
    taken = alive & (predicate != 0)
    other = alive & (predicate == 0)
    inside = np.where(taken, warp_mask(taken), warp_mask(other))
    expected = np.stack([np.where(alive, inside, 0), np.where(alive, warp_mask(alive), 0),
                         np.where(taken, 1, np.where(other, 2, 0))]).astype(np.uint32)
    return expected


@given(pattern=st.sampled_from(["random", "halves", "one", "all", "none"]),
       live=st.integers(1, 128), seed=st.integers(0, 2**16))
def test_activemask_in_divergent_branches(kernel_runtime, pattern, live, seed):
    """Inside a branch, __activemask() is the branch's lanes (the GPU's converged lanes), not
    every live lane; exited lanes are never active; after __syncwarp, all live lanes are."""
    rt = kernel_runtime
    n = 128
    lane = np.arange(n) % 32
    p = {"random": np.random.default_rng(seed).integers(0, 2, n), "halves": lane < 16,
         "one": lane == seed % 32, "all": np.ones(n), "none": np.zeros(n)}[pattern].astype(np.int32)
    out = rt.asarray(np.zeros((3, n), np.int32))
    rt.lib.exec_test_activemask(out, rt.asarray(p), 64, live, rt.stream())
    np.testing.assert_array_equal(rt.asnumpy(out).view(np.uint32), activemask_expected(p, 64, live))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_activemask_in_a_divergent_loop(host_runtime, monkeypatch, schedule):
    """Lanes leave a loop one trip count at a time: each iteration's mask is the lanes still in
    it, whatever the order in which the fibers run."""
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    trips = np.random.default_rng(3).integers(0, 6, 128).astype(np.int32)
    out = np.full(128, -1, np.int32)
    host_runtime.lib.exec_test_activemask_loop(out, trips, 64)
    w = trips.reshape(-1, 32)
    weights = 1 << np.arange(32, dtype=np.uint64)
    expected = np.array([[((w[i] >= w[i, l]) * weights).sum() if w[i, l] > 0 else 0
                          for l in range(32)] for i in range(len(w))], np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(out.view(np.uint32), expected.reshape(-1))


def neighbours(x, block):
    """out[t] = x[t - 1] within each warp of each block (lane 0: its own)."""
    t = np.arange(x.size)
    local = t % block
    src = np.where(local % 32 == 0, t, t - 1)
    return x[src]


@pytest.mark.parametrize("block", [64, 100, 1024])
def test_racy_kernel_passes_forward_and_fails_reverse_and_random(host_runtime, monkeypatch, block):
    """neighbour_kernel mode 0 reads a value another thread of the warp stored, with no barrier
    in between: the forward order (lower thread first) happens to hide the race, reverse and
    random orders expose it (with poison: as NaN)."""
    lib = host_runtime.lib
    x = np.random.default_rng(block).standard_normal(3 * block - 7).astype(np.float32)
    expected = neighbours(x, block)
    monkeypatch.setenv("SCRATCH_HOST_POISON", "1")
    out = np.full_like(x, 7.0)
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", "forward")
    lib.exec_test_neighbour(out, x, block, 0)
    np.testing.assert_array_equal(out, expected)
    for schedule in ["reverse", "random:1", "random:77"]:
        monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
        out = np.full_like(x, 7.0)
        lib.exec_test_neighbour(out, x, block, 0)
        wrong = out != expected
        assert wrong.any(), schedule
        assert np.isnan(out[wrong]).all(), (schedule, out[wrong][:8])   # the poison, read early


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("poison", ["0", "1"])
def test_synchronised_kernel_passes_every_schedule(host_runtime, monkeypatch, schedule, mode, poison):
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    monkeypatch.setenv("SCRATCH_HOST_POISON", poison)
    for block in [32, 96, 1024]:
        x = np.random.default_rng(block).standard_normal(2 * block + 5).astype(np.float32)
        out = np.full_like(x, np.nan)
        host_runtime.lib.exec_test_neighbour(out, x, block, mode)
        np.testing.assert_array_equal(out, neighbours(x, block))


def test_random_schedule_is_deterministic_given_the_seed(host_runtime, monkeypatch):
    """The racy kernel's wrong answer is a function of the seed alone (the same permutation per
    block and segment whichever OS thread runs the block); another seed gives another one."""
    lib = host_runtime.lib
    x = np.arange(8 * 256, dtype=np.float32)
    monkeypatch.setenv("SCRATCH_HOST_POISON", "1")
    results = {}
    for seed in [5, 5, 6]:
        monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", f"random:{seed}")
        out = np.zeros_like(x)
        lib.exec_test_neighbour(out, x, 256, 0)
        results.setdefault(seed, []).append(np.isnan(out))
    np.testing.assert_array_equal(results[5][0], results[5][1])
    assert (results[5][0] != results[6][0]).any()


@pytest.mark.parametrize("schedule", ["forward", "reverse", "random:3"])
def test_poison_shows_uninitialised_shared_memory(host_runtime, monkeypatch, schedule):
    """Under SCRATCH_HOST_POISON=1 every block starts with its static and dynamic shared memory
    poisoned: slots no thread of the block wrote read as NaN (floats) / 0x7fff7fff (ints), even
    where an earlier block on the same OS thread wrote them; written slots read back exactly."""
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", schedule)
    monkeypatch.setenv("SCRATCH_HOST_POISON", "1")
    block = 256
    written = np.array([256, 3, 0, 200, 256, 17, 1, 255] * 3, np.int32)
    blocks = written.size
    for _ in range(2):   # the second launch finds the first one's values in the workers' memory
        out = np.zeros((blocks, 2, block), np.float32)
        ints = np.zeros((blocks, block), np.int32)
        host_runtime.lib.exec_test_uninitialised(out, ints, written, block)
        t = np.arange(block)
        value = np.arange(blocks)[:, None] * 1000 + t
        wrote = t[None, :] < written[:, None]
        np.testing.assert_array_equal(out[:, 0][wrote], value[wrote])
        np.testing.assert_array_equal(out[:, 1][wrote], -value[wrote])
        np.testing.assert_array_equal(ints[wrote], value[wrote])
        assert np.isnan(out[:, 0][~wrote]).all() and np.isnan(out[:, 1][~wrote]).all()
        assert (ints[~wrote].view(np.uint32) == 0x7FFF7FFF).all()
        # the same bytes are a NaN for float64 and for both 16-bit float formats too
        assert np.isnan(np.frombuffer(np.uint64(0x7FFF7FFF7FFF7FFF).tobytes(), np.float64)).all()
        assert np.isnan(np.frombuffer(np.uint16(0x7FFF).tobytes(), np.float16)).all()


def test_without_poison_shared_memory_keeps_what_was_there(host_runtime, monkeypatch):
    """The default (no poison) costs nothing and changes nothing: written slots are exact and
    unwritten ones hold some earlier block's values, never poison left by this launch."""
    monkeypatch.setenv("SCRATCH_HOST_POISON", "0")
    monkeypatch.setenv("SCRATCH_HOST_SCHEDULE", "forward")
    block = 64
    written = np.array([64] * 8, np.int32)   # every slot written: no poison can remain
    out = np.zeros((8, 2, block), np.float32)
    ints = np.zeros((8, block), np.int32)
    host_runtime.lib.exec_test_uninitialised(out, ints, written, block)
    value = np.arange(8)[:, None] * 1000 + np.arange(block)
    np.testing.assert_array_equal(out[:, 0], value)
    np.testing.assert_array_equal(ints, value)


@pytest.mark.parametrize("name, value", [("SCRATCH_HOST_SCHEDULE", "backwards"),
                                         ("SCRATCH_HOST_SCHEDULE", "random:"),
                                         ("SCRATCH_HOST_SCHEDULE", "random:x1"),
                                         ("SCRATCH_HOST_POISON", "yes")])
def test_bad_schedule_settings_raise(host_runtime, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    x = np.zeros(64, np.float32)
    with pytest.raises(RuntimeError, match=f"{name}={re.escape(value)}: expected"):
        host_runtime.lib.exec_test_neighbour(np.zeros_like(x), x, 64, 1)


def test_every_misuse_case_is_tested(host_runtime):
    assert set(host_runtime.lib.EXEC_MISUSE_CASES) == set(MISUSE)


def test_executor_recovers_after_an_error(host_runtime):
    """Fibers abandoned by an error leave nothing behind: the next launch is correct."""
    rt = host_runtime
    for case in MISUSE:
        with pytest.raises(RuntimeError):
            rt.lib.exec_test_misuse(case)
        x = np.arange(64, dtype=np.float32)
        out = np.full((6, 64), np.nan, np.float32)
        rt.lib.exec_test_shuffles(out, x, 64, 32, 1, 0, 0)
        np.testing.assert_array_equal(out, lanes_expected(x, 32, 1, 0))


def test_arguments_are_checked_by_name(host_runtime):
    lib = host_runtime.lib
    x = np.zeros(64, np.float32)
    with pytest.raises(TypeError, match=r"^in: expected float32, got float64"):
        lib.exec_test_shuffles(np.zeros((6, 64), np.float32), x.astype(np.float64), 64, 32, 1, 0)
    with pytest.raises(ValueError, match=r"^out: expected 384 elements"):
        lib.exec_test_shuffles(np.zeros((5, 64), np.float32), x, 64, 32, 1, 0)
    with pytest.raises(ValueError, match=r"^in: expected a C-contiguous array"):
        lib.exec_test_transpose(np.zeros((4, 4), np.float32), np.zeros((4, 8), np.float32)[:, ::2])
    readonly = np.zeros((6, 64), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match=r"^out: the output array is read-only"):
        lib.exec_test_shuffles(readonly, x, 64, 32, 1, 0)
    with pytest.raises(TypeError, match=r"^in: expected an array exposing __array_interface__"):
        lib.exec_test_transpose(np.zeros((1, 1), np.float32), [[1.0]])


def test_asan_stops_a_kernel_writing_out_of_bounds(host_runtime):
    """Under the AddressSanitizer build (.ci/run), a kernel's heap overflow kills the process
    with ASan's report: CI fails on out-of-bounds kernels without a GPU."""
    if not host_runtime.lib.info().get("asan"):
        pytest.skip("needs the AddressSanitizer build of _host (.ci/run runs it)")
    code = "from scratchgpt.kernels import load; load('host').exec_test_misuse('heap_overflow')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=os.environ, timeout=120)
    assert run.returncode != 0
    assert "heap-buffer-overflow" in run.stderr and "heap_overflow_kernel" in run.stderr, run.stderr[-2000:]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_launches_and_exits_cleanly(host_runtime):
    """A child forked after the pool started has none of its threads: it must still run
    launches, and exit without waiting for them."""
    x = np.arange(128, dtype=np.float32)
    out = np.full((6, 128), np.nan, np.float32)
    host_runtime.lib.exec_test_shuffles(out, x, 64, 32, 3, 5)   # the pool is up
    code = ("import os, sys, numpy as np\n"
            "from scratchgpt.kernels import load\n"
            "lib = load('host')\n"
            "x = np.arange(128, dtype=np.float32); out = np.zeros((6, 128), np.float32)\n"
            "lib.exec_test_shuffles(out, x, 64, 32, 3, 5)\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    again = np.zeros_like(out); lib.exec_test_shuffles(again, x, 64, 32, 3, 5)\n"
            "    sys.exit(0 if (again == out).all() else 3)\n"
            "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    run = subprocess.run([sys.executable, "-c", code], env=os.environ, timeout=60)
    assert run.returncode == 0
    np.testing.assert_array_equal(out, lanes_expected(x, 32, 3, 5))


def test_barrier_allow_list_names_commented_barriers():
    """tests/mutation/barriers.py --check: every barrier the mutation test allows to survive
    exists in csrc/ and says at the barrier why it stays (the full mutation run is not a unit
    test: it rebuilds _host once per barrier)."""
    script = os.path.join(os.path.dirname(__file__), "mutation", "barriers.py")
    run = subprocess.run([sys.executable, script, "--check"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = subprocess.run([sys.executable, script, "--list"], capture_output=True, text=True, timeout=120)
    assert re.search(r"^\d+ barriers, \d+ allow-listed$", listed.stdout.splitlines()[-1]), listed.stdout
