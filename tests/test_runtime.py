"""The runtime (litetorch/runtime.py) changes speed, never numbers: for every model class its fast path
(chunked prefill through the cache, then one-token decode steps under a chosen BLAS thread count)
equals the definition (one uncached forward of the whole sequence), in float32 and float64.

Limits: float64 <= 1e-10 absolute, float32 <= 1e-5 relative to the logits' scale, greedy tokens identical.
"""
import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import ConfigError
from litetorch.generation import PromptCache, generate
from litetorch.runtime import Runtime

from test_invariants import DTYPES, MODELS, close, ids_for


def definition(model, ids) -> np.ndarray:
    """Logits [B, T, V] of one plain forward pass: no cache, no chunks, no runtime."""
    with lt.no_grad():
        return model.logits(ids).data


def through_the_runtime(model, ids, prompt_len, runtime) -> np.ndarray:
    """Logits [B, T, V] computed as generation computes them: the prompt in chunks, then one token at a time."""
    pc = PromptCache(model, ids.shape[1], batch_size=ids.shape[0], runtime=runtime)
    steps = [pc.extend(ids[:, :prompt_len], logits_to_keep=0)]  # [B, prompt_len, V]
    steps += [pc.extend(ids[:, t:t + 1]) for t in range(prompt_len, ids.shape[1])]  # [B, 1, V] each
    return np.concatenate(steps, axis=1)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_chunked_prefill_and_cached_decode_equal_the_definition(name, dtype):
    model = MODELS[name](dtype)
    ids = ids_for(model, B=2, T=19)
    fast = through_the_runtime(model, ids, prompt_len=13, runtime=Runtime(prefill_chunk=4, decode_threads=1))
    if not model.chunked_prefill_is_exact:  # LoopLM's last_step policy: the runtime must not chunk it...
        whole = through_the_runtime(model, ids, 13, Runtime(prefill_chunk=None, decode_threads=1))
        ok, err = close(fast, whole, dtype)  # ...so chunk=4 gives what one call gives
        assert ok, f"{name}: chunked prefill of an approximate policy differs from one call by {err:.3g}"
        return
    ok, err = close(fast, definition(model, ids), dtype)
    assert ok, f"{name} {np.dtype(dtype).name}: runtime logits differ from the definition by {err:.3g}"


@pytest.mark.parametrize("chunk", [1, 3, 128, None])
def test_every_chunk_size_gives_the_same_logits(chunk):
    model = MODELS["llama"](np.float64)
    ids = ids_for(model, B=1, T=11)
    fast = through_the_runtime(model, ids, prompt_len=11, runtime=Runtime(prefill_chunk=chunk, decode_threads=None))
    assert np.abs(fast - definition(model, ids)).max() <= 1e-10


@pytest.mark.parametrize("keep", [1, 3, 7, 0])
def test_logits_to_keep_spans_chunks(keep):
    """The last k positions come back whole even when they straddle chunk boundaries."""
    model = MODELS["gpt-rope-swiglu"](np.float64)
    ids = ids_for(model, B=2, T=10)
    pc = PromptCache(model, 10, batch_size=2, runtime=Runtime(prefill_chunk=3))
    got = pc.extend(ids, logits_to_keep=keep)
    want = definition(model, ids)[:, -keep:] if keep else definition(model, ids)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1e-10


@pytest.mark.parametrize("name", ["llama", "gpt-learned", "looplm-gated-bitlinear", "looplm-exit-gate", "qwen3-next"])
def test_greedy_tokens_are_identical_with_and_without_cache_and_chunks(name):
    model = MODELS[name](np.float32)
    prompt = ids_for(model, B=1, T=10)[0].tolist()
    runs = [generate(model, None, prompt, max_new_tokens=8, runtime=Runtime(prefill_chunk=c)) for c in (3, None)]
    runs.append(generate(model, None, prompt, max_new_tokens=8, use_cache=False))
    assert runs[0].token_ids == runs[1].token_ids == runs[2].token_ids
    assert runs[0].text is None  # no tokenizer: ids in, ids out


def test_runtime_arguments_are_checked():
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ConfigError, match="prefill_chunk"):
            Runtime(prefill_chunk=bad)
    for bad in (0, "fast", 1.5):
        with pytest.raises(ConfigError, match="decode_threads"):
            Runtime(decode_threads=bad)
