"""The runtime (litetorch/runtime.py) changes speed, never numbers: for every model class its fast path
(prefill through the cache with causal attention in query blocks, optionally in model-level pieces, then
one-token decode steps under a chosen BLAS thread count) equals the definition (one uncached forward of
the whole sequence), in float32 and float64. The blocked attention kernel itself is compared with the
definition (forward and backward) and with PyTorch.

Limits: float64 <= 1e-10 absolute, float32 <= 1e-5 relative to the logits' scale, greedy tokens identical.
"""
import threading

import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import ConfigError
from litetorch.generation import PromptCache, generate
from litetorch.nn import sdpa
from litetorch.runtime import DEFAULT, Runtime, causal_attention_in_blocks

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
    fast = through_the_runtime(model, ids, prompt_len=13,
                               runtime=Runtime(prefill_chunk=4, decode_threads=1, attention_block=3))
    blocked = through_the_runtime(model, ids, prompt_len=13, runtime=Runtime(decode_threads=1, attention_block=3))
    plain = Runtime(decode_threads=1, attention_block=None)  # (LoopLM's last_step policy: the cached path itself)
    reference = definition(model, ids) if model.chunked_prefill_is_exact else through_the_runtime(model, ids, 13, plain)
    ok, err = close(blocked, reference, dtype)  # attention in blocks of 3 queries, the prompt in one call
    assert ok, f"{name} {np.dtype(dtype).name}: attention in blocks differs from the definition by {err:.3g}"
    if not model.chunked_prefill_is_exact:  # LoopLM's last_step policy: the runtime must not chunk it...
        whole = through_the_runtime(model, ids, 13, Runtime(prefill_chunk=None, decode_threads=1))
        ok, err = close(fast, whole, dtype)  # ...so chunk=4 gives what one call gives
        assert ok, f"{name}: chunked prefill of an approximate policy differs from one call by {err:.3g}"
        return
    ok, err = close(fast, definition(model, ids), dtype)
    assert ok, f"{name} {np.dtype(dtype).name}: runtime logits differ from the definition by {err:.3g}"


@pytest.mark.parametrize("block", [1, 4, 128, None])
@pytest.mark.parametrize("chunk", [1, 3, 128, None])
def test_every_chunk_and_block_size_gives_the_same_logits(chunk, block):
    model = MODELS["llama"](np.float64)
    ids = ids_for(model, B=1, T=11)
    runtime = Runtime(prefill_chunk=chunk, decode_threads=None, attention_block=block)
    fast = through_the_runtime(model, ids, prompt_len=11, runtime=runtime)
    assert np.abs(fast - definition(model, ids)).max() <= 1e-10


def _qkv(dtype, B=2, H=6, Hkv=2, Tq=13, Tk=13, Dh=8, seed=0):
    rng = np.random.default_rng(seed)
    return [lt.tensor(rng.standard_normal(shape).astype(dtype), requires_grad=True)
            for shape in ((B, H, Tq, Dh), (B, Hkv, Tk, Dh), (B, Hkv, Tk, Dh))]


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("block", [1, 4, 5, 13, 64])
@pytest.mark.parametrize("heads,past", [((6, 2), 0), ((6, 2), 7), ((4, 4), 3), ((3, 1), 0)], ids=["gqa", "gqa-cached",
                                                                                                  "mha-cached", "mqa"])
def test_blocked_kernel_equals_the_definition_forward_and_backward(dtype, block, heads, past):
    """Every block size (dividing Tq or not, 1 query per block, one block for all), with cached keys before
    the queries (past > 0), GQA/MHA/MQA: outputs and the gradients of q, k and v."""
    H, Hkv = heads
    q, k, v = _qkv(dtype, H=H, Hkv=Hkv, Tq=13, Tk=13 + past)
    g = np.random.default_rng(1).standard_normal((2, H, 13, 8)).astype(dtype)
    results = []
    for attend in (sdpa.scaled_dot_product_attention, lambda *a, **kw: causal_attention_in_blocks(*a, **kw, block=block)):
        for t in (q, k, v):
            t.grad = None
        out = attend(q, k, v, is_causal=True, enable_gqa=True)
        out.backward(lt.tensor(g))
        results.append([out.data, q.grad, k.grad, v.grad])
    for name, want, got in zip(("out", "dq", "dk", "dv"), *results):
        ok, err = close(got, want, dtype)
        assert ok, f"blocks of {block}, {name}: {err:.3g} from the definition"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_blocked_kernel_equals_torch_forward_and_backward(dtype):
    """Against torch's SDPA with an explicit bottom-right causal mask (torch's is_causal aligns top-left
    when Tq != Tk): the output and the gradients of q, k and v."""
    torch = pytest.importorskip("torch")
    q, k, v = _qkv(dtype, Tq=11, Tk=16)
    g = np.random.default_rng(3).standard_normal((2, 6, 11, 8)).astype(dtype)
    out = causal_attention_in_blocks(q, k, v, is_causal=True, enable_gqa=True, block=4)
    out.backward(lt.tensor(g))
    visible = np.arange(16)[None, :] <= np.arange(11)[:, None] + 5  # bottom-right causal: query i sees keys <= i + 5
    tq, tk, tv = (torch.from_numpy(t.data.copy()).requires_grad_(True) for t in (q, k, v))
    want = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(visible),
                                                             enable_gqa=True)
    want.backward(torch.from_numpy(g))
    for name, got, ref in zip(("out", "dq", "dk", "dv"), (out.data, q.grad, k.grad, v.grad),
                              (want.detach(), tq.grad, tk.grad, tv.grad)):
        ok, err = close(got, ref.numpy(), dtype)
        assert ok, f"{name}: {err:.3g} from torch"


def test_blocked_kernel_leaves_other_calls_to_the_definition():
    """A mask, dropout, no causal mask or a short query run the definition itself, untouched."""
    q, k, v = _qkv(np.float64)
    mask = np.random.default_rng(2).random((13, 13)) > 0.3
    calls = [dict(attn_mask=mask), dict(is_causal=False), dict(is_causal=True, attn_mask=mask),
             dict(is_causal=True, dropout_p=0.5)]
    for kw in calls:
        lt.manual_seed(0)  # the same dropout draw for both
        want = sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw).data
        lt.manual_seed(0)
        got = causal_attention_in_blocks(q, k, v, enable_gqa=True, block=4, **kw).data
        assert np.array_equal(got, want), kw
    short = _qkv(np.float64, Tq=4, Tk=9)
    assert np.array_equal(causal_attention_in_blocks(*short, is_causal=True, enable_gqa=True, block=4).data,
                          sdpa.scaled_dot_product_attention(*short, is_causal=True, enable_gqa=True).data)


def test_sdpa_kernel_is_a_context_not_a_switch():
    """`attend` runs the kernel in effect; the block restores the previous one, also after an error, nests,
    and another thread keeps the definition."""
    q, k, v = _qkv(np.float64, B=1)
    seen = []

    def spy(*args):
        seen.append(threading.get_ident())
        return sdpa.scaled_dot_product_attention(*args)

    assert sdpa._KERNEL.get() is sdpa.scaled_dot_product_attention
    with sdpa.sdpa_kernel(spy):
        sdpa.attend(q, k, v, is_causal=True, enable_gqa=True)
        other = threading.Thread(target=lambda: sdpa.attend(q, k, v, enable_gqa=True))
        other.start(), other.join()
        with sdpa.sdpa_kernel(sdpa.scaled_dot_product_attention):
            sdpa.attend(q, k, v, enable_gqa=True)  # the inner choice: not the spy
        assert sdpa._KERNEL.get() is spy
    assert seen == [threading.get_ident()]
    with pytest.raises(RuntimeError), sdpa.sdpa_kernel(spy):
        raise RuntimeError("a failed forward")
    assert sdpa._KERNEL.get() is sdpa.scaled_dot_product_attention


def test_the_runtime_installs_its_kernel_for_prefill_only():
    """Prefill attention runs in blocks (the attention layers see the runtime's kernel); a decode step and
    anything outside the runtime use the definition."""
    model = MODELS["llama"](np.float64)
    kernels = []
    plain = sdpa.scaled_dot_product_attention
    pc = PromptCache(model, 12, runtime=Runtime(decode_threads=None, attention_block=4))
    original_attend = sdpa._KERNEL
    try:
        probe = _Probe(original_attend, kernels)
        sdpa._KERNEL = probe
        pc.extend(ids_for(model, B=1, T=10)[0])
        pc.extend([1])
    finally:
        sdpa._KERNEL = original_attend
    assert kernels[0] is not plain and getattr(kernels[0], "keywords", {}).get("block") == 4
    assert kernels[-1] is plain
    assert DEFAULT.attention_block == 128 and DEFAULT.prefill_chunk is None


class _Probe:
    """A stand-in for sdpa's ContextVar that records which kernel each attention call found."""

    def __init__(self, var, log):
        self.var, self.log = var, log

    def get(self):
        kernel = self.var.get()
        self.log.append(kernel)
        return kernel

    def set(self, value):
        return self.var.set(value)

    def reset(self, token):
        return self.var.reset(token)


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
    runs = [generate(model, None, prompt, max_new_tokens=8, runtime=Runtime(prefill_chunk=c, attention_block=b))
            for c, b in ((3, 2), (None, 4))]
    runs.append(generate(model, None, prompt, max_new_tokens=8, use_cache=False))
    assert runs[0].token_ids == runs[1].token_ids == runs[2].token_ids
    assert runs[0].text is None  # no tokenizer: ids in, ids out


def test_runtime_arguments_are_checked():
    for bad in (0, -1, 2.5, True, "64"):
        with pytest.raises(ConfigError, match="prefill_chunk"):
            Runtime(prefill_chunk=bad)
        with pytest.raises(ConfigError, match="attention_block"):
            Runtime(attention_block=bad)
    for bad in (0, 1, "yes", None):
        with pytest.raises(ConfigError, match="keep_freed_memory"):
            Runtime(keep_freed_memory=bad)


@pytest.mark.parametrize("keep", [True, False])
def test_the_runtime_keeps_freed_memory_before_a_prefill_unless_told_not_to(monkeypatch, keep):
    """The malloc tuning (litetorch/malloc.py) is the runtime's, applied before each prefill and never
    in a decode step; Runtime(keep_freed_memory=False) leaves malloc alone."""
    from litetorch import malloc
    calls = []
    monkeypatch.setattr(malloc, "keep_freed_memory", lambda: calls.append(1) or True)
    model = MODELS["llama"](np.float64)
    pc = PromptCache(model, 12, runtime=Runtime(decode_threads=None, keep_freed_memory=keep))
    pc.extend(ids_for(model, B=1, T=5)[0])
    pc.extend([1])
    assert calls == ([1] if keep else [])


def test_keep_freed_memory_says_whether_it_took_effect():
    import sys

    from litetorch.malloc import keep_freed_memory
    from litetorch.train import keep_freed_memory as trainers
    assert trainers is keep_freed_memory  # one function: the trainer's and the runtime's
    assert keep_freed_memory() in (True, False)
    if sys.platform.startswith("linux"):
        import platform
        if platform.libc_ver()[0] == "glibc":
            assert keep_freed_memory() is True
    for bad in (0, "fast", 1.5):
        with pytest.raises(ConfigError, match="decode_threads"):
            Runtime(decode_threads=bad)
