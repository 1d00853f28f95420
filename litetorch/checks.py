"""Argument checks, in one place, so the same mistake gets the same error in the same words everywhere
(`generate`, `PromptCache`, `ChatSession`, the sampler, the tokenizer, the command line, and the forward
pass of every model class: Llama, GPT, LoopLM).

Each check names the argument, what it expects and what it got, and raises a `litetorch.errors`
exception, which also subclasses the builtin a Python programmer would catch:

    ConfigError (ValueError, TypeError)   a bad value or type: max_new_tokens=0, top_p=1.5, seed="1"
    DTypeError (TypeError)                token ids that are not integers (floats, bools, strings)
    ShapeError (ValueError)               ids that are not [B, T], an empty batch, ragged rows
    TokenizerError (ValueError)           a token id outside the vocabulary; a malformed chat message
    ContextLengthError (ValueError)       more tokens than the model has positions for
    CacheError (ValueError)               a cache made for another model, batch or dtype

None of them coerces: `"2"`, `2.0`, `True` are not the integer 2, and NaN is not a number in range.
They return the value, so a caller can write `n = checks.positive_int("max_new_tokens", n)`, and they run
before any state (a KV cache, a chat history, a parameter) changes.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real

import numpy as np

from .errors import CacheError, ConfigError, ContextLengthError, DTypeError, ShapeError, TokenizerError
from .tensor import Tensor


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, (bool, np.bool_))


# ------------------------------------------------------------------------------------------------
# Scalars
# ------------------------------------------------------------------------------------------------
def integer(name: str, value, lo: int | None = None, hi: int | None = None, error=ConfigError) -> int:
    """An int (Python or NumPy, never a bool or a float) with lo <= value <= hi."""
    where = "" if lo is None and hi is None else f" >= {lo}" if hi is None else f" <= {hi}" if lo is None else \
        f" in {lo}..{hi}"
    if not _is_int(value):
        raise error(f"{name} must be an integer{where}, got {value!r} ({type(value).__name__})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise error(f"{name} must be an integer{where}, got {value!r}")
    return int(value)  # (exact: a NumPy integer -> the same Python int)


def positive_int(name: str, value) -> int:
    return integer(name, value, lo=1)


def number(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, meaning: str = "") -> float:
    """A finite real number (int or float, never a bool) in the interval given ((lo, hi) when open)."""
    span = ""
    if lo is not None or hi is not None:
        left = "(" if lo_open or lo is None else "["
        right = ")" if hi_open or hi is None else "]"
        span = f" in {left}{'-inf' if lo is None else float(lo)}, {'inf' if hi is None else float(hi)}{right}"
    if not _is_real(value) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number{span}{meaning}, got {value!r}")
    low_bad = lo is not None and (value <= lo if lo_open else value < lo)
    high_bad = hi is not None and (value >= hi if hi_open else value > hi)
    if low_bad or high_bad:
        raise ConfigError(f"{name} must be a number{span}{meaning}, got {value!r}")
    return float(value)  # (exact: a Python float, so a float32 array stays float32)


def boolean(name: str, value) -> bool:
    """True or False (a NumPy bool too); never a truthy string or number ("no" is truthy)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def choice(name: str, value, options):
    if not isinstance(value, (str, int, float, type(None))) or value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value


def text(name: str, value, allow_empty: bool = False) -> str:
    """A str (non-empty, and not only whitespace, unless allow_empty)."""
    what = "a str" if allow_empty else "a non-empty string"
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be {what}, got {value!r:.80} ({type(value).__name__})")
    if not allow_empty and not value.strip():
        raise ConfigError(f"{name} must be {what}, got {value!r:.80}")
    return value


def seed(value) -> int | None:
    """None (fresh randomness) or a non-negative integer."""
    return None if value is None else integer("seed", value, lo=0)


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


# ------------------------------------------------------------------------------------------------
# Token ids: the one vocabulary check
# ------------------------------------------------------------------------------------------------
def _id_array(ids, name: str) -> np.ndarray:
    data = ids.data if isinstance(ids, Tensor) else ids
    try:
        arr = np.asarray(data)
    except ValueError:  # NumPy refuses ragged nested lists
        raise ShapeError(f"{name} must be rows of one length, got ragged rows "
                         f"{[len(r) for r in data] if isinstance(data, (list, tuple)) else data!r:.100}") from None
    if arr.size == 0 and arr.dtype.kind == "f" and not isinstance(data, np.ndarray):
        arr = arr.astype(np.int64)  # an empty list has no integer dtype of its own
    return arr


def token_ids(ids, vocab_size: int | None, name: str = "token ids") -> np.ndarray:
    """An integer array whose every id is in 0..vocab_size-1 (any shape; vocab_size None: only >= 0).

    Floats, bools and strings are not token ids (DTypeError: 2.0 is not coerced to 2); an id outside the
    vocabulary would index past the embedding table (TokenizerError naming the id and the range)."""
    arr = _id_array(ids, name)
    if arr.dtype.kind not in "iu":
        raise DTypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or (vocab_size is not None and hi >= vocab_size):
            bad = int(lo if lo < 0 else hi)
            valid = "ids >= 0" if vocab_size is None else f"0..{vocab_size - 1}"
            size = "" if vocab_size is None else f" for a vocabulary of {vocab_size} tokens"
            raise TokenizerError(f"token id {bad} in {name} is out of range{size} (valid: {valid})")
    return arr


def input_ids(ids, vocab_size: int, name: str = "input_ids") -> np.ndarray:
    """A model's input: a non-empty [B, T] integer array (a Tensor or anything NumPy reads) of ids in range."""
    arr = _id_array(ids, name)
    if arr.ndim != 2 or arr.size == 0:
        hint = " (wrap one sequence as [ids])" if arr.ndim == 1 else ""
        raise ShapeError(f"{name} must be a non-empty [B, T] array of token ids, got shape {arr.shape}{hint}")
    return token_ids(arr, vocab_size, name)


def context(past: int, new: int, n_ctx: int) -> None:
    """`past` cached + `new` tokens must fit in the n_ctx positions the model has (ContextLengthError)."""
    if past + new > n_ctx:
        where = f"{past} cached + {new} new tokens = {past + new}" if past else f"a sequence of {new} tokens"
        raise ContextLengthError(f"{where} exceeds the context length of {n_ctx}, the most positions this "
                                 f"model has; crop the input to the last {n_ctx - past} tokens")


def logits_to_keep(k, T: int) -> int:
    """How many last positions a forward pass returns logits for: 0 (all) or 1..T (never silently fewer)."""
    return integer(f"logits_to_keep (0 = all positions; the input has T = {T})", k, lo=0, hi=T)


def layer_caches(cache, n_layers: int, n_kv_heads: int, head_dim: int, dtype, batch: int, new: int) -> None:
    """A `LayerCaches` (model.new_cache()) that fits this model and this call, or CacheError."""
    if not all(hasattr(cache, a) for a in ("layers", "length", "max_len")):
        raise CacheError(f"cache must be the LayerCaches from model.new_cache(), got {type(cache).__name__}")
    b, hkv, max_len, dh = cache[0].shape
    if len(cache) != n_layers:
        raise CacheError(f"cache has {len(cache)} layers, the model has {n_layers} (use model.new_cache())")
    if (hkv, dh) != (n_kv_heads, head_dim):
        raise CacheError(f"cache holds {hkv} KV heads of dim {dh}; the model needs {n_kv_heads} of dim {head_dim}")
    if b != batch:
        raise CacheError(f"cache was made for batch {b}, the input has batch {batch}")
    if cache[0].dtype != dtype:
        raise CacheError(f"cache dtype {cache[0].dtype} differs from the model's {np.dtype(dtype)}")
    if cache.length + new > max_len:
        raise CacheError(f"{cache.length} cached + {new} new tokens exceed the cache's capacity of {max_len}; "
                         f"make a larger cache with new_cache(max_len=...)")


# ------------------------------------------------------------------------------------------------
# Chat messages
# ------------------------------------------------------------------------------------------------
def messages(msgs, roles=None, allow_empty: bool = False) -> list:
    """A chat: a non-empty list of {"role": str, "content": str} dicts, each role one of `roles` (the
    roles the chat template knows) when given. TokenizerError naming the message that is wrong."""
    if not isinstance(msgs, (list, tuple)) or not (msgs or allow_empty):
        raise TokenizerError(f"messages must be a {'' if allow_empty else 'non-empty '}list of dicts, "
                             f"got {msgs!r:.100}")
    for i, m in enumerate(msgs):
        if not isinstance(m, Mapping):
            raise TokenizerError(f"messages[{i}] must be a dict with 'role' and 'content', got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "nothing (the key is missing)" if key not in m else type(m[key]).__name__
                raise TokenizerError(f"messages[{i}][{key!r}] must be a str, got {got} (message: {m!r:.100})")
        if roles is not None and m["role"] not in roles:
            raise TokenizerError(f"messages[{i}]['role'] must be one of {sorted(roles)} (the roles this chat "
                                 f"template knows), got {m['role']!r}")
    return list(msgs)


# ------------------------------------------------------------------------------------------------
# Objects
# ------------------------------------------------------------------------------------------------
def language_model(model):
    """Anything that keeps the contract of models/base.py (Llama, GPT, LoopLM): what `generate` runs."""
    missing = [name for name in ("vocab_size", "context_length", "new_cache", "logits") if not hasattr(model, name)]
    if missing:
        raise ConfigError(f"model must be a litetorch language model (Llama, GPT, LoopLM: the contract of "
                          f"models/base.py), got a {type(model).__name__} without {', '.join(missing)}")
    return model
