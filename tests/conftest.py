"""Shared pytest fixtures.

Core tests need only NumPy and the committed fixtures in tests/fixtures/.
Parity tests run live against PyTorch / transformers / gguf when those are
installed (CI installs the `reference` extra) and skip with a clear reason otherwise.
"""
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def _default_model_file():
    from litetorch.io.hub import ModelNotFoundError, resolve_model_path
    try:
        return resolve_model_path(download=False)  # the library's own rule: $LITETORCH_MODEL, else the home
    except ModelNotFoundError:
        return None


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the default SmolLM2 GGUF, or skip (CI fetches it before the tests)."""
    path = _default_model_file()
    if path is None:
        pytest.skip("default model not present; run `litetorch generate` once to fetch it")
    return path


@pytest.fixture(scope="session", autouse=True)
def _one_blas_thread():
    """Tests assert numbers, not speed, and most run many small matmuls: one BLAS thread is as fast
    there, and immune to a busy machine, where two threads stall each other (docs/ARCHITECTURE.md §7;
    the pointer-chasing training test, 56 s of CPU, ran for over 25 minutes with two threads at a
    load of 10 on 2 cores). Tests about thread counts set their own (`threads.blas_threads`)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        yield
        return
    with threadpool_limits(1, user_api="blas"):
        yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)
