"""Shared test configuration.

Hypothesis profiles: `dev` (default, random) and `ci` (derandomized; selected when CI=true or
with HYPOTHESIS_PROFILE=ci), both without deadlines since finite differences vary in cost.
"""
import os

try:        # optional on a GPU machine: the files that need it skip themselves (importorskip)
    from hypothesis import HealthCheck, settings
except ImportError:
    settings = None
if settings is not None:
    settings.register_profile("dev", max_examples=25, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# ------------------------------------------------------------------------------- kernel tests
# `kernel_runtime`: the test runs on the host executor and again, marked `cuda`, on the GPU
# (skipped with the reason when this machine has none). The host backend must be built: a
# missing `_host` fails rather than skips.
import pytest  # noqa: E402


def _kernel_runtime(backend):
    from scratchgpt.kernels import Runtime, backend_status
    status = backend_status(backend)
    if not status["available"]:
        if backend == "host":
            pytest.fail(f"the host backend must be available: {status['reason']}")
        pytest.skip(f"{backend} backend unavailable: {status['reason']}")
    return Runtime(backend)


@pytest.fixture(scope="session", params=["host", pytest.param("cuda", marks=pytest.mark.cuda)])
def kernel_runtime(request):
    return _kernel_runtime(request.param)


@pytest.fixture(scope="session")
def host_runtime():
    return _kernel_runtime("host")


# --------------------------------------------------------------------------- training text
@pytest.fixture(scope="session")
def text_file(tmp_path_factory):
    """tests/corpus.py's TEXT as a file: the data of the tiny training runs."""
    from corpus import TEXT
    path = tmp_path_factory.mktemp("text") / "input.txt"
    path.write_text(TEXT)
    return str(path)
