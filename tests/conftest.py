"""Shared pytest fixtures.

Core tests need only NumPy and the committed fixtures in tests/fixtures/.
Parity tests run live against PyTorch / transformers / gguf when those are
installed (CI installs the `reference` extra) and skip with a clear reason otherwise.
"""
import os
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _default_model_file():
    explicit = os.environ.get("LITETORCH_MODEL")
    if explicit:
        return Path(explicit)
    home = Path(os.environ.get("LITETORCH_HOME", Path.home() / ".cache" / "litetorch"))
    return home / DEFAULT_GGUF_NAME


@pytest.fixture(scope="session")
def smollm2_path():
    """Path of the default SmolLM2 GGUF, or skip (CI fetches it before the tests)."""
    path = _default_model_file()
    if not path.exists():
        pytest.skip(f"default model not present at {path}; run `litetorch generate` once to fetch it")
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(0)
