"""What every litetorch language model offers the generation loop: one small contract.

`generate` (generation.py) and the runtime (runtime.py) drive Llama, the classroom GPT, LoopLM,
Qwen3-MoE and Qwen3-Next (and any model written the same way) through four names, so there is one
generation loop:

    model.vocab_size                         V
    model.context_length                     the longest sequence it has positions for
    model.new_cache(batch_size, max_len)     an empty cache for `logits` (KV buffers, loop caches, ...)
    model.logits(ids, cache, logits_to_keep) ids [B, T] -> logits Tensor [B, T, V] (or the last k positions),
                                             the new tokens placed after what `cache` holds

A cache offers `length`, `max_len`, `crop(n)`, `reset()`, `grow(max_len)`, `checkpoint()` and
`rollback(state)` (undo a forward pass that failed midway), and says whether it is `rewindable`
(a KV cache can be cropped to any earlier length; a recurrent state only reset: Qwen3-Next's
`HybridCache` is not rewindable). `nbytes` and `bytes_per_token` say what it holds and what one more
token costs.

`chunked_prefill_is_exact` says whether running a prompt in pieces through the cache gives the same
numbers as one call (true for causal attention; LoopLM's approximate `last_step` policy says no), so
the runtime knows when it may prefill in chunks.
"""
from __future__ import annotations

import numpy as np

from ..errors import DTypeError
from ..nn.module import Module


class CausalLM(Module):
    """Base class of litetorch's language models; see the module docstring for the contract."""

    chunked_prefill_is_exact = True

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def context_length(self) -> int:
        """The longest sequence the model has positions for (HF's `max_position_embeddings`; the classroom
        GPT calls it `block_size`, LoopLM `max_len`, and they say so)."""
        return self.config.max_position_embeddings

    def new_cache(self, batch_size: int = 1, max_len: int | None = None):
        raise NotImplementedError(f"{type(self).__name__} must define new_cache()")

    def logits(self, ids, cache=None, logits_to_keep: int = 0):
        """Next-token logits: the model's forward pass as generation needs it (Llama's forward is exactly this)."""
        return self(ids, cache=cache, logits_to_keep=logits_to_keep)


def float_dtype(dtype) -> np.dtype:
    """float32 or float64 (the dtypes litetorch runs models in); DTypeError for anything else."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:  # not something NumPy names a dtype by ("fp32", 3)
        raise DTypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise DTypeError(f"dtype must be float32 or float64 (litetorch runs models in those), got {dtype}")
    return dtype


def empty_model(cls, config, dtype=np.float32):
    """`cls(config)` with its parameters allocated in `dtype` but not initialized (a loader fills them).

    The dtype is chosen *before* loading: loading float64 weights into float32 parameters and casting
    afterwards would silently round them to float32. Skipping the random init saves most of the build.
    """
    from ..nn import init
    from ..tensor import get_default_dtype, set_default_dtype
    dtype, previous = float_dtype(dtype), get_default_dtype()
    set_default_dtype(dtype)  # layers allocate their (uninitialized) parameters in the default dtype
    try:
        with init.skip_init():
            model = cls(config)
    finally:
        set_default_dtype(previous)
    return model.to(dtype)  # a no-op unless some layer ignored the default
