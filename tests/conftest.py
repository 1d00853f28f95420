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


@pytest.fixture
def rng():
    return np.random.default_rng(0)
