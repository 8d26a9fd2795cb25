"""Finite-difference assertion shared by the reference op tests (wraps scratchgpt.gradcheck)."""
import numpy as np

from scratchgpt.gradcheck import OP_TOLERANCE, check_function


def assert_gradients_match(forward, backward, inputs, seed=0, tol=OP_TOLERANCE):
    results = check_function(forward, backward, inputs, np.random.default_rng(seed))
    for k, (max_abs, max_rel) in results.items():
        assert max_rel < tol, f"input {k}: max relative error {max_rel:.3e} (abs {max_abs:.3e})"
