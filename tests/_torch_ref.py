"""PyTorch as an optional reference: `torch = maybe_torch()` is the module, or None when absent.

Tests that need torch use `requires_torch` (a skip marker with a clear reason) or
`pytest.importorskip("torch")`; torch-free runs fall back to the committed fixtures and to
finite differences. The converters go both ways without sharing memory, so an in-place op on
one side can never change the other side's numbers.
"""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt

FIXTURES = Path(__file__).parent / "fixtures"


def maybe_torch():
    """The torch module if it can be imported, else None (never raises)."""
    try:
        import torch
    except Exception:  # ImportError, or a broken install (missing shared library, ...)
        return None
    return torch


torch = maybe_torch()
requires_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed: live comparison skipped (fixtures and finite differences still run)")


def to_torch(x, requires_grad: bool = False):
    """A torch tensor with a copy of x's values (x: litetorch Tensor, ndarray or number); same dtype."""
    arr = np.array(x.data if isinstance(x, lt.Tensor) else x)
    return torch.from_numpy(arr).requires_grad_(requires_grad)


def to_lt(x, requires_grad: bool = False) -> lt.Tensor:
    """A litetorch Tensor with a copy of x's values (x: torch tensor, ndarray or number); same dtype."""
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().numpy()
    return lt.tensor(np.array(x), requires_grad=requires_grad)


def to_numpy(x) -> np.ndarray:
    """An ndarray from a litetorch Tensor, a torch tensor or anything np.asarray takes."""
    if isinstance(x, lt.Tensor):
        return x.data
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def load_make_fixtures():
    """Import tests/fixtures/make_fixtures.py by path (it is a script, not a package module)."""
    name = "litetorch_make_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES / "make_fixtures.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up in sys.modules
        spec.loader.exec_module(module)
    return sys.modules[name]
