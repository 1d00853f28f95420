"""Qwen3-Next and Qwen3-MoE (litetorch/models/qwen3.py) equal HF transformers, and the hybrid cache keeps its promises.

Claims:
- A tiny random HF `Qwen3NextForCausalLM` / `Qwen3MoeForCausalLM` (several seeds and layouts: tied embeddings,
  dense layers, a non-periodic layer_types, norm_topk_prob on and off; every weight, norm, router and decay
  random) saved with `save_pretrained` loads with `lt.models.load_hf` and gives HF's logits (<= 1e-4 abs,
  float32) and HF's gradients; 20 greedy tokens through the cache equal HF's `generate(do_sample=False)`.
- Prefill + decode through the cache equals one uncached forward in float64 (<= 1e-10); so does prefill in one
  call, in chunks and token by token (the chunked delta rule continuing from a cached state is exact); a batch
  of two equal-length prompts equals each prompt alone.
- The cache: a DeltaNet layer's state is the same size after 10 and 1,000 tokens while K/V grows; it cannot be
  cropped back (rewindable False), so PromptCache reuses all of it or resets it, and generation stays correct;
  `rollback` undoes a forward pass that failed midway; `grow` grows only the K/V part; `nbytes` is what
  `models/costs.py` computes on paper.
- GGUF: litetorch's own models written with llama.cpp's qwen3next/qwen3moe names read back to the same logits,
  bit for bit.
- Configs and checkpoints that litetorch cannot run exactly are refused with ConfigError / ModelFormatError.
- `parameter_counts(Qwen3NextConfig())` equals HF's count of Qwen3-Next-80B-A3B on the meta device.
"""
import functools
import json

import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import CacheError, ConfigError, ModelFormatError
from litetorch.generation import PromptCache, generate
from litetorch.models import Qwen3Moe, Qwen3MoeConfig, Qwen3Next, Qwen3NextConfig, load_hf
from litetorch.models.costs import decode_state_bytes, parameter_counts
from litetorch.models.qwen3_io import load_gguf, save_gguf
from litetorch.nn.gated_deltanet import DeltaNetCache
from litetorch.nn.kv_cache import KVCache
from litetorch.runtime import Runtime

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import Qwen3MoeForCausalLM, Qwen3NextForCausalLM  # noqa: E402
from transformers import Qwen3MoeConfig as HFQwen3MoeConfig  # noqa: E402
from transformers import Qwen3NextConfig as HFQwen3NextConfig  # noqa: E402

V = 97
NEXT = dict(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
            linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=6, num_experts_per_tok=2,
            moe_intermediate_size=16, shared_expert_intermediate_size=24, max_position_embeddings=1100)
MOE = dict(vocab_size=V, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
           num_key_value_heads=2, head_dim=8, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
           max_position_embeddings=1100)
# Per seed a different layout, so every branch of the configs meets HF.
LAYOUTS = {
    "next": [dict(mlp_only_layers=[1]),
             dict(tie_word_embeddings=True, decoder_sparse_step=2,
                  layer_types=["full_attention", "linear_attention", "linear_attention", "full_attention"]),
             dict(num_experts_per_tok=3, norm_topk_prob=False, rope_parameters={"rope_theta": 500.0,
                                                                                "partial_rotary_factor": 0.5})],
    "moe": [dict(norm_topk_prob=False),
            dict(norm_topk_prob=True, tie_word_embeddings=True, mlp_only_layers=[2]),
            dict(num_experts_per_tok=1, rope_parameters={"rope_theta": 500.0})],
}
SEEDS = [0, 1, 2]


def _randomize_hf(model, seed: int, zero_centered: bool):
    """Every parameter of an HF model random at a scale that keeps activations O(1): matrices ~ N(0, 1/fan_in),
    norms around their identity (0 for zero-centred, 1 otherwise) +- 0.3, router logits spread, decays anywhere
    in HF's init range."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if "norm" in name:
                centre = 0.0 if zero_centered and "linear_attn.norm" not in name else 1.0
                value = centre + 0.3 * rng.standard_normal(shape)
            elif name.endswith("A_log"):
                value = np.log(rng.uniform(0.05, 8.0, shape))
            elif name.endswith("dt_bias"):
                value = rng.uniform(-1.0, 1.0, shape)
            elif name.endswith("mlp.gate.weight"):  # the router: logits of a few units, so routing is decisive
                value = rng.normal(0.0, 2.0 / np.sqrt(shape[-1]), shape)
            elif "embed_tokens" in name:
                value = rng.standard_normal(shape)
            else:
                value = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
            p.copy_(torch.from_numpy(value))
    return model.eval()


@functools.lru_cache(maxsize=None)
def _saved(kind: str, seed: int, root: str) -> str:
    """An HF model of this kind and seed, randomized, saved with save_pretrained; returns its directory."""
    base = dict(NEXT if kind == "next" else MOE)
    base.update(LAYOUTS[kind][seed])
    torch.manual_seed(seed)
    hf = (Qwen3NextForCausalLM(HFQwen3NextConfig(**base)) if kind == "next"
          else Qwen3MoeForCausalLM(HFQwen3MoeConfig(**base)))
    _randomize_hf(hf, seed, zero_centered=kind == "next")
    if hf.config.tie_word_embeddings:
        hf.tie_weights()
    path = f"{root}/{kind}-{seed}"
    hf.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("qwen3"))


def pair(kind, seed, root):
    """(HF model from the saved directory, litetorch model loaded by load_hf from the same directory)."""
    path = _saved(kind, seed, root)
    cls = Qwen3NextForCausalLM if kind == "next" else Qwen3MoeForCausalLM
    return cls.from_pretrained(path, dtype=torch.float32).eval(), load_hf(path)


def prompt(seed=0, B=2, T=13):
    return np.random.default_rng(100 + seed).integers(0, V, (B, T))


KINDS = ["next", "moe"]


# ---- parity with HF ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_load_hf_logits_equal_hf_in_float32(kind, seed, root):
    hf, ours = pair(kind, seed, root)
    assert type(ours) is (Qwen3Next if kind == "next" else Qwen3Moe)
    ids = prompt(seed)
    with torch.no_grad():
        ref = hf(torch.from_numpy(ids)).logits.numpy()
    got = ours(ids).data
    assert got.dtype == np.float32
    assert np.abs(ref).max() > 1.0, "the logits should be O(1), or the comparison proves little"
    err = np.abs(got - ref).max()
    assert err <= 1e-4, f"{kind} seed {seed}: logits differ from HF by {err:.3g} (last position: " \
                        f"{np.abs(got[:, -1] - ref[:, -1]).max():.3g})"


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_hf_in_float32(kind, root):
    """Cross-entropy backward through every layer (DeltaNet, gated attention, MoE with index_add) equals torch's."""
    hf, ours = pair(kind, 0, root)
    ids = prompt(0, B=2, T=9)
    targets = np.roll(ids, -1, axis=1)
    hf.zero_grad()
    out = hf(torch.from_numpy(ids)).logits
    torch.nn.functional.cross_entropy(out.reshape(-1, V), torch.from_numpy(targets).reshape(-1)).backward()
    loss = lt.nn.functional.cross_entropy(ours(ids).reshape(-1, V), targets.reshape(-1))
    loss.backward()
    grads = lt.testing.named_grads(ours)
    checked = 0
    for name, p in hf.named_parameters():
        if p.grad is None or name not in grads:
            continue
        ref, got = p.grad.numpy(), grads[name]
        scale = max(np.abs(ref).max(), 1e-3)
        assert np.abs(got - ref).max() <= 1e-4 * scale + 1e-6, f"{kind}: d {name} differs from torch's"
        checked += 1
    assert checked >= len(list(hf.parameters())) - 1  # every parameter (a tied lm_head appears once in HF)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_cached_greedy_continuation_equals_hf_generate(kind, seed, root):
    hf, ours = pair(kind, seed, root)
    ids = prompt(seed, B=1, T=11)[0]
    with torch.no_grad():
        ref = hf.generate(torch.from_numpy(ids[None]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                          pad_token_id=0, eos_token_id=None)[0, len(ids):].tolist()
    got = lt.generate(ours, None, ids.tolist(), max_new_tokens=20)
    assert got.token_ids == ref, f"{kind} seed {seed}: greedy tokens differ from HF's generate"


# ---- the attention layer, forward and backward in float64 -------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_qwen3_attention_equals_hf_forward_and_backward(kind, dtype, monkeypatch):
    """Qwen3Attention vs HF's Qwen3NextAttention (output gate, zero-centred q/k norms, RoPE on Dh/4) and
    Qwen3MoeAttention (plain q/k norms, full RoPE). In float64 HF's float32 islands (its RMSNorms and the
    eager softmax cast to float32) are lifted to float64, so the check is the math, to 1e-10."""
    from litetorch.nn.qwen3_attention import Qwen3Attention
    from transformers.models.qwen3_moe import modeling_qwen3_moe as qmoe
    from transformers.models.qwen3_next import modeling_qwen3_next as qnext
    C, H, Hkv, Dh, B, T = 32, 4, 2, 16, 2, 7
    tdt = torch.float64 if dtype == np.float64 else torch.float32
    if kind == "next":
        cfg = HFQwen3NextConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh)
        hf, Rotary = qnext.Qwen3NextAttention(cfg, layer_idx=3), qnext.Qwen3NextRotaryEmbedding
    else:
        cfg = HFQwen3MoeConfig(hidden_size=C, num_attention_heads=H, num_key_value_heads=Hkv, head_dim=Dh)
        hf, Rotary = qmoe.Qwen3MoeAttention(cfg, layer_idx=0), qmoe.Qwen3MoeRotaryEmbedding
    cfg._attn_implementation = "eager"
    hf = _randomize_hf(hf.to(tdt), 3, zero_centered=kind == "next")
    if dtype == np.float64:
        zc = kind == "next"
        for norm in (hf.q_norm, hf.k_norm):
            eps = norm.eps if zc else norm.variance_epsilon
            monkeypatch.setattr(norm, "forward", lambda h, m=norm, eps=eps: torch.nn.functional.rms_norm(
                h, (Dh,), (1.0 + m.weight) if zc else m.weight, eps))
        original = torch.nn.functional.softmax
        monkeypatch.setattr(torch.nn.functional, "softmax", lambda x, dim=None, _stacklevel=3, dtype=None: original(
            x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype))
    rope = lt.nn.RotaryEmbedding(Dh, rotary_dim=Dh // 4 if kind == "next" else Dh)
    ours = Qwen3Attention(C, H, Hkv, Dh, rope, eps=1e-6, qk_norm="zero_centered" if kind == "next" else "rms",
                          output_gate=kind == "next").to(dtype)
    ours.load_state_dict({k: v.detach().numpy() for k, v in hf.state_dict().items()})
    r = np.random.default_rng(4)
    x, g = r.standard_normal((B, T, C)).astype(dtype), r.standard_normal((B, T, C)).astype(dtype)
    xt = torch.tensor(x, requires_grad=True)
    cos, sin = rope.cos_sin(T, 0, dtype=dtype)  # ours (equal to HF's table to float32 rounding: tests/test_rope.py)
    mask = torch.full((T, T), float("-inf"), dtype=tdt).triu(1)[None, None]
    yt, _ = hf(xt, position_embeddings=(torch.tensor(cos)[None], torch.tensor(sin)[None]), attention_mask=mask)
    yt.backward(torch.from_numpy(g))
    xl = lt.tensor(x, requires_grad=True)
    y = ours(xl)
    y.backward(g)
    tol = 1e-10 if dtype == np.float64 else 1e-5 * max(1.0, float(np.abs(yt.detach().numpy()).max()))
    assert y.dtype == dtype
    assert np.abs(y.data - yt.detach().numpy()).max() <= tol
    assert np.abs(xl.grad - xt.grad.numpy()).max() <= tol * 10
    grads = lt.testing.named_grads(ours)
    for name, p in hf.named_parameters():
        assert np.abs(grads[name] - p.grad.numpy()).max() <= tol * 10 * max(1.0, float(p.grad.abs().max())), name
    # and through a KV cache: prefill 4, decode 3 == one call
    cache = KVCache(B, Hkv, T, Dh, dtype)
    with lt.no_grad():
        steps = [ours(x[:, :4], cache=cache).data] + [ours(x[:, t:t + 1], cache=cache).data for t in range(4, T)]
        full = ours(x).data
    assert np.abs(np.concatenate(steps, axis=1) - full).max() <= (1e-10 if dtype == np.float64 else 1e-5)


# ---- the cache changes speed, never numbers ----------------------------------------------------------
def as_float64(kind, seed, root):
    return pair(kind, seed, root)[1].to(np.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_then_decode_equals_the_uncached_forward_in_float64(kind, root):
    model = as_float64(kind, 0, root)
    ids = prompt(3, B=2, T=16)
    full = model(ids).data
    cache = model.new_cache(2, 16)
    steps = [model(ids[:, :9], cache=cache).data] + [model(ids[:, t:t + 1], cache=cache).data for t in range(9, 16)]
    err = np.abs(np.concatenate(steps, axis=1) - full).max()
    assert err <= 1e-10, f"{kind}: cached prefill + decode differs from the uncached forward by {err:.3g}"


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", KINDS)
def test_prefill_in_one_call_in_chunks_and_token_by_token_agree(kind, dtype, root):
    """Runtime(prefill_chunk=...) may chunk these models (chunked_prefill_is_exact): the DeltaNet conv and the
    chunked gated delta rule continue from the cached state exactly as in one call."""
    model = pair(kind, 1, root)[1].to(dtype)
    assert model.chunked_prefill_is_exact
    ids = prompt(4, B=2, T=23)
    with lt.no_grad():
        full = model(ids).data
    runs = {}
    for chunk in (None, 5, 1):
        pc = PromptCache(model, 23, batch_size=2, runtime=Runtime(prefill_chunk=chunk, decode_threads=None))
        runs[chunk] = pc.extend(ids, logits_to_keep=0)
    for chunk, got in runs.items():
        err = np.abs(got - full).max()
        limit = 1e-10 if dtype == np.float64 else 1e-5 * np.abs(full).max()
        assert err <= limit, f"{kind}: prefill_chunk={chunk} differs from one uncached call by {err:.3g}"


@pytest.mark.parametrize("kind", KINDS)
def test_a_batch_of_two_prompts_equals_each_alone(kind, root):
    model = as_float64(kind, 2, root)
    ids = prompt(5, B=2, T=10)
    both = model(ids).data
    for b in range(2):
        assert np.abs(model(ids[b:b + 1]).data[0] - both[b]).max() <= 1e-10
    together = generate(model, None, ids.tolist(), max_new_tokens=6)
    alone = [generate(model, None, row, max_new_tokens=6).token_ids for row in ids.tolist()]
    assert [r.token_ids for r in together] == alone


@pytest.mark.parametrize("kind", KINDS)
def test_every_intermediate_of_a_float32_model_stays_float32(kind, root, monkeypatch):
    """The NumPy-2 trap (a float64 scalar upcasting float32 arrays): no op of a prefill + decode leaves float32."""
    model = pair(kind, 0, root)[1]
    seen, make = [], lt.Tensor._make

    def spy(data, parents, backward, op):
        seen.append((op, data.dtype))
        return make(data, parents, backward, op)

    monkeypatch.setattr(lt.Tensor, "_make", staticmethod(spy))
    cache = model.new_cache(1, 8)
    model(prompt(1, B=1, T=6), cache=cache)
    out = model(prompt(2, B=1, T=1), cache=cache)
    upcast = sorted({op for op, dt in seen if dt.kind == "f" and dt != np.float32})
    assert out.dtype == np.float32 and len(seen) > 100 and not upcast, f"ops that left float32: {upcast}"
    assert all(getattr(c, "dtype") == np.float32 for c in cache)


# ---- the hybrid cache ----------------------------------------------------------------------------------
def test_a_deltanet_state_is_the_same_size_after_10_and_1000_tokens(root):
    model = pair("next", 0, root)[1]
    sizes = {}
    for n in (10, 1000):
        cache = model.new_cache(1, 1000)
        with lt.no_grad():
            model(np.random.default_rng(n).integers(0, V, (1, n)), cache=cache)
        sizes[n] = cache
        assert cache.length == n
    for i, layer in enumerate(model.model.layers):
        a, b = sizes[10][i], sizes[1000][i]
        if layer.layer_type == "linear_attention":
            assert isinstance(a, DeltaNetCache) and a.nbytes == b.nbytes and a.recurrent_state.shape == b.recurrent_state.shape
        else:
            assert isinstance(a, KVCache) and len(a) == 10 and len(b) == 1000  # K/V: one row per token
    assert sizes[10].state_nbytes == sizes[1000].state_nbytes > 0


def test_cache_protocol_rewindable_crop_grow_and_bytes(root):
    nxt, moe = pair("next", 0, root)[1], pair("moe", 0, root)[1]
    assert nxt.new_cache().rewindable is False and moe.new_cache().rewindable is True
    cache = nxt.new_cache(2, 12)
    with lt.no_grad():
        nxt(prompt(6, B=2, T=7), cache=cache)
    before = cache.snapshot()
    with pytest.raises(CacheError, match="recurrent"):
        cache.crop(3)  # a DeltaNet state cannot give tokens back ...
    assert cache.length == 7 and all(np.array_equal(a.recurrent_state, b.recurrent_state)
                                     for a, b in zip(cache.snapshot(), before) if hasattr(a, "recurrent_state"))
    cache.crop(7)  # ... keeping everything is fine
    states = [c.recurrent_state for c in cache if isinstance(c, DeltaNetCache)]
    cache.grow(40)  # only the K/V buffers are reallocated
    assert cache.max_len == 40 and cache.length == 7
    assert all(c.max_len == 40 for c in cache if isinstance(c, KVCache))
    assert [c.recurrent_state for c in cache if isinstance(c, DeltaNetCache)] == states  # the same arrays
    want = decode_state_bytes(nxt.config, 40, batch_size=2)
    assert cache.nbytes == want["total"] and cache.bytes_per_token == want["kv_per_token"]
    assert cache.state_nbytes == want["recurrent"]
    cache.crop(0)  # forgetting everything is always possible
    assert cache.length == 0 and all(not c.recurrent_state.any() for c in cache if isinstance(c, DeltaNetCache))


def test_rollback_undoes_a_forward_that_fails_midway(root):
    model = pair("next", 0, root)[1]
    pc = PromptCache(model, 32)
    pc.extend(prompt(7, B=1, T=6)[0])
    before = pc.caches.snapshot()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # after layers 0-2 (two DeltaNet states) have already been updated

    model.model.layers[3].forward = boom
    try:
        with pytest.raises(KeyboardInterrupt):
            pc.extend([1, 2, 3])
    finally:
        del model.model.layers[3].forward
    assert pc.caches.length == len(pc.ids) == 6
    for a, b in zip(pc.caches.snapshot(), before):
        for x, y in zip(vars(a).values(), vars(b).values()):
            assert np.array_equal(x, y)
    # and the next call computes as if nothing had happened
    fresh = PromptCache(model, 32)
    fresh.extend(prompt(7, B=1, T=6)[0])
    assert np.abs(pc.extend([1, 2, 3]) - fresh.extend([1, 2, 3])).max() == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_prompt_cache_reuse_across_generate_calls(kind, root):
    """Next turn = everything cached + new tokens: reused whole. A different prompt, or the same one again: the
    recurrent cache is reset (never cropped), the rewindable one cropped; tokens always equal a fresh run."""
    model = pair(kind, 0, root)[1]
    first = prompt(8, B=1, T=9)[0].tolist()
    pc = PromptCache(model)
    r1 = generate(model, None, first, max_new_tokens=5, cache=pc)
    follow_up = first + r1.token_ids + [3, 4]
    r2 = generate(model, None, follow_up, max_new_tokens=5, cache=pc)
    assert r2.stats.reused_tokens == len(first) + 4  # the prompt and 4 of 5 generated tokens were cached
    assert r2.token_ids == generate(model, None, follow_up, max_new_tokens=5).token_ids
    other = first[:5] + [7, 8, 9]  # shares 5 tokens: attention crops to them, DeltaNet must start over
    r3 = generate(model, None, other, max_new_tokens=5, cache=pc)
    assert r3.stats.reused_tokens == (0 if kind == "next" else 5)
    assert r3.token_ids == generate(model, None, other, max_new_tokens=5).token_ids
    r4 = generate(model, None, other, max_new_tokens=5, cache=pc)  # the same prompt again
    assert r4.token_ids == r3.token_ids
    assert r4.stats.reused_tokens == (0 if kind == "next" else len(other) - 1)


def test_cache_errors_leave_the_cache_untouched(root):
    model = pair("next", 0, root)[1]
    cache = model.new_cache(1, 8)
    with lt.no_grad():
        model(prompt(9, B=1, T=5), cache=cache)
    before = cache.snapshot()
    for bad in (prompt(9, B=2, T=1), prompt(9, B=1, T=4)):  # wrong batch; over capacity (5 + 4 > 8)
        with pytest.raises(CacheError):
            model(bad, cache=cache)
    with pytest.raises(CacheError):
        model(prompt(9, B=1, T=1), cache=pair("moe", 0, root)[1].new_cache(1, 8))  # another model's cache
    assert cache.length == 5
    for a, b in zip(cache.snapshot(), before):
        for x, y in zip(vars(a).values(), vars(b).values()):
            assert np.array_equal(x, y)


# ---- GGUF ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", KINDS)
def test_gguf_round_trip_gives_identical_logits(kind, seed, root, tmp_path):
    model = pair(kind, seed, root)[1]
    path = save_gguf(model, tmp_path / "m.gguf")
    again = load_gguf(path)
    assert type(again) is type(model) and again.config.layer_types == model.config.layer_types
    assert again.config.mlp_only_layers == [i for i in range(model.config.num_hidden_layers)
                                            if not model.config.is_moe_layer(i)]
    ids = prompt(seed)
    assert np.array_equal(again(ids).data, model(ids).data), "GGUF round trip changed the logits"


def test_gguf_uses_llama_cpp_names_and_keys(root, tmp_path):
    gguf = pytest.importorskip("gguf")
    from gguf.constants import MODEL_ARCH, MODEL_TENSORS, TENSOR_NAMES
    for kind, arch in (("next", MODEL_ARCH.QWEN3NEXT), ("moe", MODEL_ARCH.QWEN3MOE)):
        model = pair(kind, 0, root)[1]
        path = save_gguf(model, tmp_path / f"{kind}.gguf")
        known = {TENSOR_NAMES[t] for t in MODEL_TENSORS[arch]} | {"blk.{bid}.ffn_gate", "blk.{bid}.ffn_up",
                                                                   "blk.{bid}.ffn_down"}  # dense layers: llama's
        reader = gguf.GGUFReader(path)  # the reference reader parses our file
        arch_name = bytes(reader.fields["general.architecture"].parts[-1]).decode()
        assert arch_name == ("qwen3next" if kind == "next" else "qwen3moe")
        for t in reader.tensors:
            base = t.name.rsplit(".", 1)[0] if t.name.endswith((".weight", ".bias")) else t.name
            parts = base.split(".")
            template = ".".join(["blk", "{bid}"] + parts[2:]) if parts[0] == "blk" else base
            assert template in known, f"{t.name} is not a llama.cpp {arch_name} tensor name"


def test_gguf_of_another_architecture_is_refused(tmp_path):
    from litetorch.io.gguf import write_gguf
    path = write_gguf(tmp_path / "x.gguf", {"general.architecture": "llama"}, {"w": np.zeros((2, 32), np.float32)})
    with pytest.raises(ModelFormatError, match="qwen3moe"):
        load_gguf(path)


@pytest.mark.parametrize("key, value", [("qwen3next.block_count", 2**32 - 1), ("qwen3next.ssm.time_step_rank", 0),
                                        ("qwen3next.expert_count", 2**32 - 1), ("qwen3next.expert_used_count", 7),
                                        ("qwen3next.attention.layer_norm_rms_epsilon", "1e-6"),
                                        ("qwen3next.rope.dimension_count", 5), ("general.architecture", 5)])
def test_hostile_gguf_metadata_is_refused_before_any_work(key, value, root, tmp_path):
    """A value no model has (a 4-billion-layer count used to make the reader loop 4 billion times) is a
    ModelFormatError, raised from the metadata before any model is built."""
    from litetorch.io.gguf import GGUFFile, write_gguf
    path = save_gguf(pair("next", 0, root)[1], tmp_path / "m.gguf")
    with GGUFFile(path) as f:
        md, tensors = dict(f.metadata), {n: np.array(f.dequantize(n)) for n in f.tensors}
    md[key] = value
    with pytest.raises(ModelFormatError):
        load_gguf(write_gguf(tmp_path / "bad.gguf", md, tensors))


# ---- configs and checkpoints litetorch refuses ---------------------------------------------------------
def test_bad_configs_raise_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="num_experts_per_tok"):
        Qwen3MoeConfig(**{**MOE, "num_experts_per_tok": 7})
    with pytest.raises(ConfigError, match="linear_num_value_heads"):
        Qwen3NextConfig(**{**NEXT, "linear_num_value_heads": 3})
    with pytest.raises(ConfigError, match="unknown layer type 'sliding_attention'"):
        Qwen3NextConfig(**{**NEXT, "layer_types": ["linear_attention"] * 3 + ["sliding_attention"]})
    with pytest.raises(ConfigError, match="layer_types"):
        Qwen3NextConfig(**{**NEXT, "layer_types": ["full_attention"]})
    with pytest.raises(ConfigError, match="mlp_only_layers"):
        Qwen3MoeConfig(**{**MOE, "mlp_only_layers": [5]})
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        Qwen3MoeConfig(**{**MOE, "num_key_value_heads": 3})
    with pytest.raises(ConfigError, match="hidden_size"):
        Qwen3MoeConfig(**{**MOE, "hidden_size": 32.0})  # no coercion
    with pytest.raises(ConfigError, match="Qwen3NextConfig"):
        Qwen3Next(Qwen3MoeConfig(**MOE))


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, match", [
    (dict(model_type="qwen2_moe"), "unsupported model_type 'qwen2_moe'.*llama, mistral, qwen3_moe, qwen3_next"),
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(linear_num_value_heads=3), "linear_num_value_heads"),
    (dict(layer_types=["linear_attention", "full_attention", "mamba", "full_attention"]), "unknown layer type"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "yarn"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(num_hidden_layers=5, layer_types=["linear_attention"] * 4 + ["full_attention"]),
     "the config has 5 layers, but the tensor table holds weights for 4"),
    (dict(moe_intermediate_size=17), "expected|shape"),
])
def test_load_hf_refuses_what_it_cannot_run(changes, match, root, tmp_path):
    import shutil
    path = tmp_path / "ckpt"
    shutil.copytree(_saved("next", 0, root), path)
    _edit_config(path, **changes)
    with pytest.raises(ModelFormatError, match=match):
        load_hf(path)


def test_per_expert_checkpoint_with_a_missing_expert_is_refused(root, tmp_path):
    from litetorch.io.safetensors import load_safetensors, save_safetensors
    import shutil
    path = tmp_path / "ckpt"
    shutil.copytree(_saved("moe", 0, root), path)
    tensors = dict(load_safetensors(path / "model.safetensors"))
    for part in ("gate_proj", "up_proj", "down_proj"):
        del tensors[f"model.layers.1.mlp.experts.5.{part}.weight"]
    save_safetensors(path / "model.safetensors", {k: np.array(v) for k, v in tensors.items()})
    with pytest.raises(ModelFormatError, match="experts 0..5"):
        load_hf(path)


def test_a_checkpoint_with_stacked_experts_loads_too(root, tmp_path):
    """transformers keeps experts as 3-D stacks in memory; a checkpoint written in that form loads the same."""
    from litetorch.io.safetensors import save_safetensors
    import shutil
    hf, ours = pair("next", 0, root)
    path = tmp_path / "stacked"
    path.mkdir()
    shutil.copy(f"{_saved('next', 0, root)}/config.json", path / "config.json")
    sd = {k: v.detach().numpy().copy() for k, v in hf.state_dict().items()}
    assert any(k.endswith("experts.gate_up_proj") for k in sd)
    save_safetensors(path / "model.safetensors", sd)
    ids = prompt(0)
    assert np.array_equal(load_hf(path)(ids).data, ours(ids).data)


# ---- costs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_parameter_counts_on_paper_equal_the_model(kind, root):
    model = pair(kind, 1, root)[1]
    counts = parameter_counts(model.config)
    assert counts["total"] == model.num_parameters()
    per_moe = [layer.mlp for layer in model.model.layers if hasattr(layer.mlp, "active_parameters")]
    unused = sum(m.experts.gate_up_proj.numel() + m.experts.down_proj.numel() - m.active_parameters()
                 + m.gate.weight.numel() + (0 if m.shared_expert is None else m.shared_expert.num_parameters()
                                            + m.shared_expert_gate.num_parameters()) for m in per_moe)
    assert counts["active"] == counts["total"] - unused


def test_parameter_counts_of_qwen3_next_80b_equal_hf_meta_count():
    with torch.device("meta"):
        hf = Qwen3NextForCausalLM(HFQwen3NextConfig())
    total = sum(p.numel() for p in hf.parameters())
    counts = parameter_counts(Qwen3NextConfig())
    assert counts["total"] == total == 79_674_391_296
    assert 3.0e9 < counts["active_without_embeddings"] < counts["active"] < 4.0e9  # "A3B"
