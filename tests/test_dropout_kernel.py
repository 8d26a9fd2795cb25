"""csrc/dropout.cu against reference/dropout.py, on the host executor always and, marked `cuda`,
on the GPU: the generator's known answers, and masks and outputs equal to the reference's bit
for bit for the same (seed, stream, offset). Outputs are poisoned before each launch.
bfloat16 / float16 storage: the same masks; out = R(f(x) * scale) within the derived bound of
the float64 product and bit for bit NumPy's float32 product rounded to T.
"""
import numpy as np
import pytest
from kernelutil import given, st   # hypothesis, or a skip where it is not installed

from kernelutil import U32, assert_within, device_shifted, f64, poisoned, shifted, storage
from scratchgpt.reference import dropout as ref
from test_dropout import KNOWN_ANSWERS

U64 = st.integers(0, 2**64 - 1)


def philox_blocks(rt, seed, stream, first, count):
    words = poisoned(rt, (count, 4), np.int32)
    rt.lib.dropout_philox_blocks(words, seed, stream, first, rt.stream())
    return rt.asnumpy(words).view(np.uint32)


def apply(rt, x, p, seed, stream, offset):
    out = poisoned(rt, x.shape)
    rt.lib.dropout_apply(out, rt.asarray(x), ref.threshold(p), float(np.float32(1 / (1 - p))), seed,
                         stream, offset, rt.stream())
    return rt.asnumpy(out)


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(kernel_runtime, counter, key, expected):
    """Counter (c0, c1) is the block index, (c2, c3) the stream, the key the seed."""
    first = counter[0] | counter[1] << 32
    words = philox_blocks(kernel_runtime, key[0] | key[1] << 32, counter[2] | counter[3] << 32, first, 1)
    assert tuple(int(w) for w in words[0]) == expected


@given(seed=U64, stream=U64, first=st.sampled_from([0, 2**32 - 3, 2**64 - 5]).flatmap(
    lambda base: st.integers(base, base + 4)))
def test_philox_blocks_match_the_reference(kernel_runtime, seed, stream, first):
    """Runs of blocks crossing the 32-bit carry of the counter, up to the last counter."""
    count = min(5, 2**64 - first)
    words = philox_blocks(kernel_runtime, seed, stream, first, count)
    blocks = np.arange(count, dtype=np.uint64) + np.uint64(first)
    want = ref.philox4x32_10((blocks & np.uint64(0xFFFFFFFF), blocks >> np.uint64(32),
                              stream & 0xFFFFFFFF, stream >> 32), (seed & 0xFFFFFFFF, seed >> 32))
    assert np.array_equal(words, np.stack(want, axis=-1))


@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), p=st.sampled_from([1e-9, 0.1, 0.5, 0.9]),
       seed=U64, stream=st.integers(0, 2**20), offset=st.integers(0, 11), data_seed=st.integers(0, 99))
def test_matches_reference_bit_for_bit(kernel_runtime, shape, p, seed, stream, offset, data_seed):
    x = np.random.default_rng(data_seed).standard_normal(shape).astype(np.float32)
    out = apply(kernel_runtime, x, p, seed, stream, offset)
    want, cache = ref.forward(x, p, seed, stream, offset)
    assert np.array_equal(out, want)
    assert np.array_equal(out != 0, cache[0])           # the mask itself (x has no zeros)


@pytest.mark.parametrize("n, offset", [(1, 0), (3, 1), (4, 0), (4, 2), (1001, 3), (4096, 4), (4099, 2**64 - 4100)])
def test_sizes_and_offsets(kernel_runtime, n, offset):
    """Ragged first and last groups, whole float4 groups, the end of the counter range."""
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) + 5.0
    want, _ = ref.forward(x, 0.3, 12345, 7, offset)
    assert np.array_equal(apply(kernel_runtime, x, 0.3, 12345, 7, offset), want)


def test_wrapper_forward_and_backward(kernel_runtime):
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["dropout"](rt)
    rng = np.random.default_rng(0)
    x, dout = (rng.standard_normal((3, 5, 12)).astype(np.float32) for _ in range(2))
    out, cache = op.forward(rt.asarray(x), 0.25, seed=99, stream=3, offset=8)
    r_out, r_cache = ref.forward(x, 0.25, seed=99, stream=3, offset=8)
    assert np.array_equal(rt.asnumpy(out), r_out)
    assert np.array_equal(rt.asnumpy(op.backward(rt.asarray(dout), cache)), ref.backward(dout, r_cache))
    # off: the input itself and a pass-through backward, as in the reference (and the model's (None, 1.0))
    for kwargs in ({"p": 0.0}, {"p": 0.5, "training": False}):
        same, off = op.forward(rt.asarray(x), seed=1, **kwargs)
        assert off == (None, 1.0) and np.array_equal(rt.asnumpy(same), x)
    d = rt.asarray(dout)
    assert op.backward(d, (None, 1.0)) is d


def test_misaligned_arrays_take_the_scalar_path(host_runtime):
    x = np.random.default_rng(1).standard_normal(37).astype(np.float32)
    want, _ = ref.forward(x, 0.4, 5, 6, 0)
    assert np.array_equal(apply(host_runtime, shifted(x), 0.4, 5, 6, 0), want)


def test_model_masks_match_numpy():
    """A training forward of a tiny GPT with dropout: host and numpy draw the same masks."""
    import warnings

    from scratchgpt import GPT, GPTConfig
    cfg = GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.3)
    idx = np.random.default_rng(0).integers(0, 20, (2, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        host = GPT(cfg, backend="host", dtype="float32", seed=0)
    numpy = GPT(cfg, backend="numpy", dtype="float32", seed=0)
    host.train(), numpy.train()
    logits, _ = host.forward(idx)
    r_logits, _ = numpy.forward(idx)
    masks = [(k, c) for k, c in numpy._caches.items() if str(k).endswith("drop")]
    assert masks, "the model keeps its dropout caches under names ending in 'drop'"
    for name, (keep, _) in masks:
        spec, _ = host._caches[name]
        seed, stream, offset, thr, _ = spec
        assert np.array_equal(ref.keep_mask(keep.shape, cfg.dropout, seed, stream, offset), keep), name
    assert np.allclose(np.asarray(logits), r_logits, rtol=1e-4, atol=1e-4)


def test_arguments_are_checked_by_name(host_runtime):
    from scratchgpt.kernels import REGISTRY
    rt, lib = host_runtime, host_runtime.lib
    op = REGISTRY["dropout"](rt)
    x = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match=r"^p: expected a drop probability in \[0, 1\), got 1.0"):
        op.forward(x, 1.0, seed=0)
    with pytest.raises(ValueError, match=r"^seed: expected an integer in \[0, 2\*\*64\)"):
        op.forward(x, 0.5, seed=-1)
    with pytest.raises(ValueError, match=r"^offset: expected an integer in \[0, 2\*\*64\)"):
        op.forward(x, 0.5, seed=0, offset=2**64)
    with pytest.raises(TypeError, match=r"^x: the host backend stores float32, bfloat16 or float16, got float64"):
        op.forward(x.astype(np.float64), 0.5, seed=0)
    with pytest.raises(ValueError, match=r"^offset: .* passes 2\*\*64"):
        lib.dropout_apply(np.empty_like(x), x, 5, 2.0, 0, 0, 2**64 - 8)
    with pytest.raises(ValueError, match=r"^out: expected the shape of x"):
        lib.dropout_apply(np.empty(15, np.float32), x, 5, 2.0, 0, 0, 0)
    with pytest.raises(ValueError, match=r"^scale: expected 1 / \(1 - p\) >= 1"):
        lib.dropout_apply(np.empty_like(x), x, 5, 0.5, 0, 0, 0)
    with pytest.raises(ValueError, match=r"^words: expected shape \(\*, 4\)"):
        lib.dropout_philox_blocks(np.empty((2, 3), np.int32), 0, 0, 0)
    with pytest.raises(ValueError, match=r"^out: shares memory with x"):
        lib.dropout_apply(x, x, 5, 2.0, 0, 0, 0)


# ----------------------------------------------------------------- bfloat16 / float16 storage
KINDS = ["bf16", "fp16"]


def check_storage(rt, x, p, seed, stream, offset, kind, place=None):
    """x rounded to T; out = R(f(x) * keep * scale), scale = float32(1 / (1 - p)) (an input of the
    kernel). Bound: one float32 product (e32 = u |exact|), one rounding to T:
    |got - exact| <= u_T |exact| + e32 + floor_T. The kernel does NumPy's float32 product and
    round-to-nearest-even cast exactly, so the bits agree too, and the mask is the reference's."""
    place = place or rt.asarray
    xs = storage(x, kind)
    scale = np.float32(1 / (1 - p))
    out = poisoned(rt, x.shape, xs.dtype)
    rt.lib.dropout_apply(rt.bits(out), rt.bits(place(xs)), ref.threshold(p), float(scale), seed, stream,
                         offset, rt.stream())
    got = rt.asnumpy(out)
    keep = ref.keep_mask(x.shape, p, seed, stream, offset)
    exact = f64(xs) * keep * float(scale)
    assert_within(got, exact, U32 * np.abs(exact), kind, "out", dtype=xs.dtype)
    want = (xs.astype(np.float32) * keep.astype(np.float32) * scale).astype(xs.dtype)
    np.testing.assert_array_equal(got.view(np.uint16), want.view(np.uint16))
    assert np.array_equal(got.astype(np.float32) != 0, keep)   # the mask itself (x has no zeros)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n, offset", [(1, 0), (7, 1), (8, 0), (8, 4), (9, 3), (17, 8), (1001, 5),
                                       (4096, 8), (4099, 2**64 - 4100)])
def test_storage_sizes_and_offsets(kernel_runtime, kind, n, offset):
    """Ragged first and last groups of 8, whole 16-byte packs, the end of the counter range."""
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) + 5.0
    check_storage(kernel_runtime, x, 0.3, 12345, 7, offset, kind)


@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), p=st.sampled_from([1e-9, 0.1, 0.5, 0.9]),
       seed=U64, stream=st.integers(0, 2**20), offset=st.integers(0, 17), data_seed=st.integers(0, 99),
       kind=st.sampled_from(KINDS))
def test_storage_matches_exact(kernel_runtime, shape, p, seed, stream, offset, data_seed, kind):
    x = np.random.default_rng(data_seed).standard_normal(shape).astype(np.float32) + 3.0
    check_storage(kernel_runtime, x, p, seed, stream, offset, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_storage_misaligned_arrays_take_the_scalar_path(kernel_runtime, kind):
    rt = kernel_runtime
    x = np.random.default_rng(1).standard_normal(37).astype(np.float32) - 4.0
    check_storage(rt, x, 0.4, 5, 6, 0, kind, place=lambda a: device_shifted(rt, a))


@pytest.mark.parametrize("kind", KINDS)
def test_storage_wrapper_forward_and_backward(kernel_runtime, kind):
    from scratchgpt.kernels import REGISTRY
    rt = kernel_runtime
    op = REGISTRY["dropout"](rt)
    rng = np.random.default_rng(2)
    x, dout = (storage(rng.standard_normal((3, 5, 12)), kind) for _ in range(2))
    scale = np.float32(1 / (1 - 0.25))
    keep = ref.keep_mask(x.shape, 0.25, 99, 3, 8).astype(np.float32)
    out, cache = op.forward(rt.asarray(x), 0.25, seed=99, stream=3, offset=8)
    dx = op.backward(rt.asarray(dout), cache)
    for got, a in ((out, x), (dx, dout)):
        assert got.dtype == x.dtype
        want = (a.astype(np.float32) * keep * scale).astype(x.dtype)
        np.testing.assert_array_equal(rt.asnumpy(got).view(np.uint16), want.view(np.uint16))


def test_storage_dtypes_are_checked_by_name(host_runtime):
    rt, lib = host_runtime, host_runtime.lib
    x = np.ones((4, 4), np.float32)
    with pytest.raises(TypeError, match=r"^out: expected bfloat16 \(uint16 bits\) like x, got float32"):
        lib.dropout_apply(np.empty_like(x), rt.bits(storage(x, "bf16")), 5, 2.0, 0, 0, 0)
    with pytest.raises(TypeError, match=r"^out: expected float32 like x, got float16"):
        lib.dropout_apply(np.empty((4, 4), np.float16), x, 5, 2.0, 0, 0, 0)
    with pytest.raises(TypeError, match=r"^x: expected float32, bfloat16 \(uint16 bits\) or float16, got int32"):
        lib.dropout_apply(np.empty((4, 4), np.int32), x.astype(np.int32), 5, 2.0, 0, 0, 0)
