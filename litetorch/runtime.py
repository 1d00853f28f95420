"""The runtime: how the generation loop runs a model fast, all in this one place (lesson 22).

The layers in `litetorch.nn` and the models each have one forward pass, the definition. Three things
make generation faster without changing a single definition, and all live here:

1. **Causal attention in query blocks** (prefill). With a causal mask, query i sees only keys 0..i,
   so attention over T new tokens in one piece computes a [T, T] score matrix whose upper half is
   masked away. `causal_attention_in_blocks` gives each block of `attention_block` queries (128)
   only the keys it may see: less arithmetic (5/8 of the scores at T = 512), and one block's
   scores stay in the CPU's caches. Each block *is* the definition, called on slices; the runtime
   installs it with `sdpa_kernel` (nn/sdpa.py) for the length of a prefill, so the weight matmuls
   still see every row of the prompt at once.
2. **Chunked prefill** (optional, off by default). `prefill_chunk` runs a long prompt through the
   model in pieces, each attending to everything already cached, to bound the memory of the
   activations. It costs time: BLAS repacks every weight for each call, so a 512-token prefill in
   pieces of 256 took 4-9% longer than one call (lesson 22).
3. **The decode thread count.** A one-token step is ~200 matrix-*vector* products, memory-bound and
   short; whether a second BLAS thread helps depends on what else the machine is doing right now,
   so "auto" measures it (threads.py). Prefill is left to BLAS's own setting.
4. **Freed memory kept in the process** (malloc.py). A prefill allocates and frees megabytes of
   activations per layer; with glibc's default, history-dependent thresholds those blocks were
   handed back to the kernel and page-faulted in again on every other prefill (~95,000 faults,
   10-20% of the time, measured). `keep_freed_memory` fixes the thresholds, as the trainer does.
   It is process-wide: `Runtime(keep_freed_memory=False)` leaves malloc alone.

Both prefill tricks give the definition's numbers because every layer but attention treats tokens
independently and attention's causal mask is aligned bottom-right (lesson 03): a block or piece of
queries gets exactly the keys its tokens may see. `tests/test_runtime.py` proves them equal to
the definitions (one uncached forward) for every model class. Nothing here is a global switch: a
`Runtime` is an object you pass (`generate(..., runtime=)`, `PromptCache(model, runtime=)`), and the
attention kernel is a context that ends with the call; `DEFAULT` is the runtime used when you pass none.
"""
from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import numpy as np

from . import malloc, ops
from .errors import ConfigError
from .nn.sdpa import scaled_dot_product_attention, sdpa_kernel
from .tensor import no_grad
from .threads import AdaptiveThreads, blas_threads, timed


# lesson 22: begin (blocks)
def causal_attention_in_blocks(q, k, v, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                               scale: float | None = None, enable_gqa: bool = False, *, block: int = 128):
    """scaled_dot_product_attention, computed `block` queries at a time when that skips work.

    q [.., H, Tq, Dh], k [.., Hkv, Tk, Dh], v [.., Hkv, Tk, Dv] -> [.., H, Tq, Dv], the definition's numbers.
    Queries c0..c1 are the positions past+c0 .. past+c1-1 (past = Tk - Tq, the cached keys), so under
    the causal mask they see keys 0 .. past+c1-1 only: each block is the definition on those slices,
    its bottom-right causal mask (lesson 03) hiding exactly what the full mask would hide.
    """
    Tq, Tk = q.shape[-2], k.shape[-2]
    if not is_causal or attn_mask is not None or dropout_p > 0.0 or Tq <= block:  # nothing to skip
        return scaled_dot_product_attention(q, k, v, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    past = Tk - Tq
    outs = []
    for c0 in range(0, Tq, block):
        c1 = min(Tq, c0 + block)
        outs.append(scaled_dot_product_attention(q[..., c0:c1, :], k[..., :past + c1, :], v[..., :past + c1, :],
                                                 is_causal=True, scale=scale, enable_gqa=enable_gqa))  # [.., H, c, Dv]
    return ops.cat(outs, dim=-2)  # [.., H, Tq, Dv]
# lesson 22: end (blocks)


class Runtime:
    """runtime.forward(model, ids [B, T], cache, logits_to_keep) -> logits [B, k, V] as a NumPy array:
    `model.logits(ids, cache, logits_to_keep)` under no_grad, computed fast.

    prefill_chunk:   tokens per prefill piece, to bound activation memory (None, the default: the whole
                     prompt in one call). Used only for models whose `chunked_prefill_is_exact` (models/base.py).
    decode_threads:  BLAS threads around a one-token step: an int, "auto" (measured, the default) or
                     None (leave BLAS alone).
    attention_block: queries per block of causal attention in a prefill (None: the definition as it is).
    keep_freed_memory: before a prefill, ask glibc malloc to keep freed blocks (malloc.py; process-wide).
    """

    def __init__(self, prefill_chunk: int | None = None, decode_threads: int | str | None = "auto",
                 attention_block: int | None = 128, keep_freed_memory: bool = True):
        for name, value in (("attention_block", attention_block), ("prefill_chunk", prefill_chunk)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name} must be a positive int or None, got {value!r}")
        if decode_threads not in (None, "auto") and (isinstance(decode_threads, bool)
                                                     or not isinstance(decode_threads, int) or decode_threads < 1):
            raise ConfigError(f"decode_threads must be a positive int, 'auto' or None, got {decode_threads!r}")
        if not isinstance(keep_freed_memory, bool):
            raise ConfigError(f"keep_freed_memory must be True or False, got {keep_freed_memory!r}")
        self.attention_block, self.prefill_chunk, self.decode_threads = attention_block, prefill_chunk, decode_threads
        self.keep_freed_memory = keep_freed_memory
        self.attention = (partial(causal_attention_in_blocks, block=attention_block) if attention_block
                          else scaled_dot_product_attention)  # the sdpa kernel of a prefill
        self.adaptive = AdaptiveThreads() if decode_threads == "auto" else None  # what "auto" has measured

    def __repr__(self):
        return (f"Runtime(prefill_chunk={self.prefill_chunk!r}, decode_threads={self.decode_threads!r}, "
                f"attention_block={self.attention_block!r}, keep_freed_memory={self.keep_freed_memory!r})")

    # lesson 22: begin (runtime)
    def forward(self, model, ids, cache, logits_to_keep: int = 1) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)  # [B, T]
        T = ids.shape[1]
        with no_grad():
            if T == 1:  # decode: one token, matrix-vector products, the measured thread count
                with self._decode_threads():
                    return model.logits(ids, cache, logits_to_keep).data  # [B, 1, V]
            chunk = self.prefill_chunk if self.prefill_chunk and model.chunked_prefill_is_exact else T
            keep = T if logits_to_keep == 0 else logits_to_keep  # the last `keep` positions are wanted
            out = []
            if self.keep_freed_memory:
                malloc.keep_freed_memory()  # (a few microseconds: two mallopt calls)
            with sdpa_kernel(self.attention):  # prefill: causal attention in blocks of queries
                for c0 in range(0, T, chunk):  # in pieces if asked: each attends to everything cached
                    c1 = min(T, c0 + chunk)
                    wanted = c1 - max(c0, T - keep)  # how many of this piece's positions the caller keeps
                    logits = model.logits(ids[:, c0:c1], cache, max(wanted, 1)).data  # [B, <= c, V]
                    if wanted > 0:
                        out.append(logits)
        return out[0] if len(out) == 1 else np.concatenate(out, axis=1)  # [B, keep, V]
    # lesson 22: end (runtime)

    def _decode_threads(self):
        if self.adaptive is not None:
            return timed(self.adaptive)
        return blas_threads(self.decode_threads) if self.decode_threads else nullcontext()


DEFAULT = Runtime()  # used when no runtime is given (its "auto" thread choice learns across calls)
