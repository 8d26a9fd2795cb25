import numpy as np
import pytest

from scratchgpt.reference import dropout
from gradutil import assert_gradients_match

# Philox-4x32-10 known answers published with the generator (Salmon et al., SC'11, Random123)
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert tuple(int(w) for w in dropout.philox4x32_10(counter, key)) == expected


def test_same_seed_and_offset_give_the_same_mask():
    a = dropout.keep_mask((3, 50), 0.3, seed=7, stream=2, offset=5)
    b = dropout.keep_mask((3, 50), 0.3, seed=7, stream=2, offset=5)
    np.testing.assert_array_equal(a, b)


def test_mask_is_a_function_of_the_element_offset():
    whole = dropout.keep_mask((1000,), 0.5, seed=3)
    for offset, n in ((1, 10), (4, 17), (333, 100), (999, 1)):
        np.testing.assert_array_equal(dropout.keep_mask((n,), 0.5, seed=3, offset=offset),
                                      whole[offset:offset + n])


def test_masks_are_independent_across_offsets_seeds_and_streams():
    n = 200_000
    base = dropout.keep_mask((n,), 0.5, seed=11).astype(float)
    others = [dropout.keep_mask((n,), 0.5, seed=11, offset=n), dropout.keep_mask((n,), 0.5, seed=12),
              dropout.keep_mask((n,), 0.5, seed=11, stream=1)]
    for other in others:
        other = other.astype(float)
        # agreement of two independent fair coins: 0.5 +- 5 standard deviations
        assert abs((base == other).mean() - 0.5) < 5 * 0.5 / np.sqrt(n)
        assert abs(np.corrcoef(base, other)[0, 1]) < 5 / np.sqrt(n)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_inverted_scaling(p):
    n = 100_000
    x = np.random.default_rng(0).standard_normal(n) + 1.0
    out, (keep, scale) = dropout.forward(x, p, seed=5)
    assert abs(keep.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    np.testing.assert_allclose(out[keep], x[keep] / (1 - p), rtol=1e-12)
    assert np.all(out[~keep] == 0)
    dout = np.random.default_rng(1).standard_normal(n)
    np.testing.assert_array_equal(dropout.backward(dout, (keep, scale)), dout * keep * scale)


def test_gradients_match_finite_differences():
    x = np.random.default_rng(0).standard_normal((3, 7))
    assert_gradients_match(lambda a: dropout.forward(a, 0.4, seed=9, stream=3), dropout.backward, [x])


def test_identity_when_off_and_bad_p_raises():
    x = np.arange(6.0)
    assert dropout.forward(x, 0.0, seed=1)[0] is x
    assert dropout.forward(x, 0.5, seed=1, training=False)[0] is x
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p: expected a drop probability"):
            dropout.forward(x, p, seed=1)
    with pytest.raises(ValueError, match="seed"):
        dropout.forward(x, 0.5, seed=-1)
