"""Argument checks, in one place, so the same mistake gets the same error in the same words everywhere
(`generate`, `ChatSession`, the sampler, the command line, the models).

Each check names the argument, what it expects and what it got, and raises a `litetorch.errors`
exception (ConfigError for a bad value or type, TokenizerError for a token id outside the vocabulary).
None of them coerces: `"2"`, `2.0`, `True` are not the integer 2, and NaN is not a number in range.
They return the value, so a caller can write `n = checks.positive_int("max_new_tokens", n)`.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .errors import ConfigError, TokenizerError


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


def integer(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    """An int (Python or NumPy, never a bool or a float) with lo <= value <= hi."""
    if not _is_int(value):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        where = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in {lo}..{hi}"
        raise ConfigError(f"{name} must be an integer {where}, got {value!r}")
    return int(value)


def positive_int(name: str, value) -> int:
    return integer(name, value, lo=1)


def number(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, meaning: str = "") -> float:
    """A finite real number (int or float, never a bool) in the interval given ((lo, hi) when open)."""
    if not _is_real(value) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number{meaning}, got {value!r}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ConfigError(f"{name} must be a number in {span}{meaning}, got {value!r}")
    return float(value)


def choice(name: str, value, options) -> str:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def seed(value) -> int | None:
    """None (fresh randomness) or a non-negative integer."""
    return None if value is None else integer("seed", value, lo=0)


def token_ids(ids, vocab_size: int, name: str = "token ids") -> np.ndarray:
    """An integer array whose every id is in 0..vocab_size-1 (shape unchanged)."""
    arr = np.asarray(ids)
    if arr.size == 0 and arr.dtype.kind == "f":  # an empty list has no integer dtype of its own
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu" or arr.dtype == np.bool_:
        raise ConfigError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        bad = int(arr.max() if arr.max() >= vocab_size else arr.min())
        raise TokenizerError(f"token id {bad} is out of range for a vocabulary of {vocab_size} (0..{vocab_size - 1})")
    return arr


def stop_strings(stop) -> list[str]:
    """None, a non-empty string, or a list of them -> a list."""
    stop = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or any(not isinstance(s, str) or not s for s in stop):
        raise ConfigError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return list(stop)


def callable_or_none(name: str, fn):
    if fn is not None and not callable(fn):
        raise ConfigError(f"{name} must be callable or None, got {type(fn).__name__}")
    return fn


def messages(msgs) -> list:
    """A chat: a non-empty list of {"role": str, "content": str} dicts (TokenizerError naming the bad one)."""
    from collections.abc import Mapping
    if not isinstance(msgs, (list, tuple)) or not msgs:
        raise TokenizerError(f"messages must be a non-empty list of dicts, got {msgs!r}")
    for i, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise TokenizerError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else f"a {type(m[key]).__name__}"
                raise TokenizerError(f"messages[{i}][{key!r}] must be a str, got {got} (message: {m!r})")
    return list(msgs)
