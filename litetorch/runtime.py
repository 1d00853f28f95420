"""The runtime: how the generation loop runs a model fast, all in this one place (lesson 22).

The layers in `litetorch.nn` and the models each have one forward pass, the definition. Two things
make generation faster without changing a single definition, and both live here:

1. **Chunked prefill.** A long prompt goes through the model in pieces of `prefill_chunk` tokens
   (256 by default: measured, see lesson 22); each piece attends to everything already cached. With a causal mask, query i sees only keys
   0..i, so running all T queries at once computes a [T, T] score matrix whose upper half is masked
   away; in pieces, piece [c0, c1) computes only [c, c1] scores against keys 0..c1. Less arithmetic,
   and the scores of one piece stay in the CPU's caches. The numbers are those of one call, because
   every layer but attention treats tokens independently and attention's bottom-right causal mask
   gives a piece exactly the keys its tokens may see. Smaller pieces skip more of the triangle but
   make every weight matmul smaller, and BLAS repacks the weights for each call: at 128 rows the
   matmuls of a 512-token prefill cost 12% more than at 512, at 256 rows 2%.
2. **The decode thread count.** A one-token step is ~200 matrix-*vector* products, memory-bound and
   short; whether a second BLAS thread helps depends on what else the machine is doing right now,
   so "auto" measures it (threads.py). Prefill is left to BLAS's own setting.

`tests/test_runtime.py` proves both equal to the definitions (one uncached forward) for every model
class. Nothing here is a global switch: a `Runtime` is an object you pass (`generate(..., runtime=)`,
`PromptCache(model, runtime=)`); `DEFAULT` is the one used when you pass none.
"""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np

from .errors import ConfigError
from .tensor import no_grad
from .threads import AdaptiveThreads, blas_threads, timed


class Runtime:
    """runtime.forward(model, ids [B, T], cache, logits_to_keep) -> logits [B, k, V] as a NumPy array:
    `model.logits(ids, cache, logits_to_keep)` under no_grad, computed fast.

    prefill_chunk:  tokens per prefill piece (None: the whole prompt in one call). Used only for models
                    whose `chunked_prefill_is_exact` (see models/base.py).
    decode_threads: BLAS threads around a one-token step: an int, "auto" (measured, the default) or
                    None (leave BLAS alone).
    """

    def __init__(self, prefill_chunk: int | None = 256, decode_threads: int | str | None = "auto"):
        if prefill_chunk is not None and (isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int)
                                          or prefill_chunk < 1):
            raise ConfigError(f"prefill_chunk must be a positive int or None, got {prefill_chunk!r}")
        if decode_threads not in (None, "auto") and (isinstance(decode_threads, bool)
                                                     or not isinstance(decode_threads, int) or decode_threads < 1):
            raise ConfigError(f"decode_threads must be a positive int, 'auto' or None, got {decode_threads!r}")
        self.prefill_chunk, self.decode_threads = prefill_chunk, decode_threads
        self.adaptive = AdaptiveThreads() if decode_threads == "auto" else None  # what "auto" has measured

    def __repr__(self):
        return f"Runtime(prefill_chunk={self.prefill_chunk!r}, decode_threads={self.decode_threads!r})"

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
            for c0 in range(0, T, chunk):  # prefill in pieces: each attends to everything cached before it
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
