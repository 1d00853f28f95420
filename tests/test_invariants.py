"""Invariants every model class keeps, whatever path computes it (the one-source-of-truth guard).

For Llama (a tiny random one, and the default SmolLM2 GGUF), the classroom GPT, LoopLM across its
options (gating, BitLinear, every kv_policy and exit kind), and the hybrid Qwen3-Next (Gated DeltaNet +
gated attention + MoE, a non-rewindable cache) and Qwen3-MoE, in float32 and float64:

1. the forward pass under `no_grad` equals the grad-enabled forward (inference cannot take a path of
   its own that training never checks);
2. the runtime's fast path (chunked prefill through the cache, then cached decode steps, as
   `generate` runs them) equals the definition (one uncached forward of the whole sequence);
3. a model whose layers were swapped, or whose weights were replaced after construction
   (`load_state_dict`, `.to(float64)`, an optimizer writing new arrays), computes with the new
   weights: it equals a fresh model loaded with the same state_dict.

Limits: float64 <= 1e-10 absolute, float32 <= 1e-5 relative to the logits' scale, greedy tokens identical.
"""
import numpy as np
import pytest

import litetorch as lt
from litetorch.models.config import LlamaConfig
from litetorch.models.gpt import GPT, GPTConfig
from litetorch.models.llama import Llama
from litetorch.models.looplm import LoopConfig, LoopLM
from litetorch.models.qwen3 import Qwen3Moe, Qwen3Next
from litetorch.models.qwen3_config import Qwen3MoeConfig, Qwen3NextConfig
from litetorch.nn.bitlinear import BitLinear
from litetorch.nn.linear import Linear

DTYPES = [np.float64, np.float32]


def close(a, b, dtype):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = np.max(np.abs(a - b))
    if dtype == np.float64:
        return err <= 1e-10, err
    scale = max(np.max(np.abs(b)), 1e-30)
    return err / scale <= 1e-5, err / scale


def randomize(model, seed):
    """Every parameter away from its init (norm weights near 1, gates anywhere), so no term is trivially 0 or 1."""
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    for k, v in sd.items():
        if k.endswith("norm.weight") or "layernorm" in k or k.startswith("ln_f"):
            sd[k] = 1.0 + 0.1 * rng.standard_normal(v.shape)
        elif ".gate_" in k:
            sd[k] = rng.normal(0.0, 2.0, v.shape)
        else:
            sd[k] = rng.normal(0.0, 0.3 / np.sqrt(v.shape[-1]), v.shape) if v.ndim > 1 else rng.normal(0.0, 0.1, v.shape)
    model.load_state_dict(sd)
    return model


# ---- the model zoo ------------------------------------------------------------------------------
def tiny_llama(dtype, seed=0):
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-5, rope_theta=1000.0)
    return randomize(Llama(cfg).to(dtype), seed).eval()


def gpt(dtype, seed=0, **kw):
    cfg = GPTConfig(**{**dict(vocab_size=40, block_size=32, n_layer=2, n_head=4, n_embd=32), **kw})
    return randomize(GPT(cfg).to(dtype), seed).eval()


def looplm(dtype, seed=0, **kw):
    base = dict(vocab_size=30, d_model=16, n_heads=4, n_kv_heads=2, max_len=32, n_before=1, n_after=1, loop_count=3)
    base.update(kw)
    if base.get("exit") in ("kl", "entropy"):
        base["n_after"] = 0  # (those exits read the distribution after every iteration: no coda)
    lt.manual_seed(seed)
    return randomize(LoopLM(LoopConfig(**base)).to(dtype), seed).eval()


def tiny_qwen3_next(dtype, seed=0):
    """3 Gated DeltaNet layers and 1 gated attention layer, MoE with a shared expert (layer 1 dense)."""
    cfg = Qwen3NextConfig(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4,
                          linear_key_head_dim=8, linear_value_head_dim=4, num_experts=4, num_experts_per_tok=2,
                          moe_intermediate_size=16, shared_expert_intermediate_size=16, mlp_only_layers=[1],
                          max_position_embeddings=64)
    lt.manual_seed(seed)
    return randomize(Qwen3Next(cfg).to(dtype), seed).eval()


def tiny_qwen3_moe(dtype, seed=0):
    cfg = Qwen3MoeConfig(vocab_size=50, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                         norm_topk_prob=True, max_position_embeddings=64)
    lt.manual_seed(seed)
    return randomize(Qwen3Moe(cfg).to(dtype), seed).eval()


LOOP_VARIANTS = {
    "plain": {},
    "gated": dict(gating=True),
    "bitlinear": dict(bitlinear=True),
    "gated-bitlinear": dict(gating=True, bitlinear=True),
    "injection": dict(input_injection=True),
    "shared_first": dict(kv_policy="shared_first"),
    "last_step": dict(kv_policy="last_step"),
    "exit-gate": dict(exit="gate", max_loops=4, exit_threshold=0.5),
    "exit-kl": dict(exit="kl", max_loops=4, exit_threshold=0.05),
    "exit-entropy": dict(exit="entropy", max_loops=4, exit_threshold=2.0),
    "hybrid-mhc": dict(layer_types=["deltanet", "attention", "attention"], mlp_types=["dense", "moe", "dense"],
                       hyper="mhc", hyper_streams=2, n_experts=4, linear_num_value_heads=8),
    "deltanet-loop-exit-gate": dict(layer_types=["attention", "deltanet", "attention"], exit="gate", max_loops=4,
                                    exit_threshold=0.5, hyper="mhc_lite", hyper_streams=2, tie_embeddings=True),
}

MODELS = {
    "llama": tiny_llama,
    "gpt-learned": lambda d: gpt(d),
    "gpt-rope-swiglu": lambda d: gpt(d, positions="rope", norm="rms", mlp="swiglu", bias=False),
    "gpt-sinusoidal-postnorm": lambda d: gpt(d, positions="sinusoidal", prenorm=False, mlp="relu"),
    **{f"looplm-{name}": (lambda d, kw=kw: looplm(d, **kw)) for name, kw in LOOP_VARIANTS.items()},
    "qwen3-next": tiny_qwen3_next,
    "qwen3-moe": tiny_qwen3_moe,
}


def logits_of(model, ids):
    out = model(ids)
    out = out[0] if isinstance(out, tuple) else out  # GPT returns (logits, loss)
    return out.data


def ids_for(model, B=2, T=9, seed=1):
    V = model.config.vocab_size
    return np.random.default_rng(seed).integers(0, V, (B, T))


# ---- 1. no_grad equals grad-enabled ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", list(MODELS))
def test_no_grad_forward_equals_grad_enabled_forward(name, dtype):
    model = MODELS[name](dtype)
    ids = ids_for(model)
    with_grad = logits_of(model, ids)
    with lt.no_grad():
        without = logits_of(model, ids)
    ok, err = close(without, with_grad, dtype)
    assert ok, f"{name} {np.dtype(dtype).name}: no_grad logits differ from grad-enabled logits by {err:.3g}"


# ---- 3. swapped layers and replaced weights are used ------------------------------------------------
def fresh_copy(model):
    """A new model of the same class and config, loaded with `model`'s current state_dict."""
    if isinstance(model, LoopLM):
        lt.manual_seed(123)
    twin = type(model)(model.config).to(model.dtype if hasattr(model, "dtype") else np.float64)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("name", ["llama", "gpt-rope-swiglu", "looplm-plain", "looplm-bitlinear", "qwen3-next",
                                  "qwen3-moe"])
def test_replaced_weights_are_the_weights_used(name, dtype):
    """load_state_dict with new values after a forward has run: both paths see the new weights."""
    model = MODELS[name](dtype)
    ids = ids_for(model)
    with lt.no_grad():
        logits_of(model, ids)  # anything an inference path could cache is built now
    randomize(model, seed=7)  # new arrays in every parameter
    expected = logits_of(fresh_copy(model), ids)
    for grad in (True, False):
        with lt.enable_grad() if grad else lt.no_grad():
            ok, err = close(logits_of(model, ids), expected, dtype)
        assert ok, f"{name}: after load_state_dict the {'grad' if grad else 'no_grad'} forward is off by {err:.3g}"


@pytest.mark.parametrize("name", ["llama", "looplm-gated", "looplm-gated-bitlinear"])
def test_cast_to_float64_after_a_forward_computes_in_float64(name):
    model = MODELS[name](np.float32)
    ids = ids_for(model)
    with lt.no_grad():
        logits_of(model, ids)
    model.to(np.float64)
    with lt.no_grad():
        out = logits_of(model, ids)
    assert out.dtype == np.float64
    ok, err = close(out, logits_of(model, ids), np.float64)
    assert ok, f"{name}: after .to(float64), no_grad and grad forwards differ by {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
def test_a_swapped_projection_is_the_projection_used(dtype):
    """Replace every Linear of the shared loop block with a BitLinear after construction (what
    bitlinear=True does), run both paths: each must equal a model built with bitlinear=True."""
    model = MODELS["looplm-plain"](dtype)
    ids = ids_for(model)
    with lt.no_grad():
        logits_of(model, ids)
    for mod in (model.loop.self_attn, model.loop.mlp):
        for child, lin in list(mod._modules.items()):
            if isinstance(lin, Linear):
                splits = [n for _, n in mod.fused_parts().get(child, [])] or None
                setattr(mod, child, BitLinear(lin.in_features, lin.out_features, dtype=dtype, out_splits=splits))
    reference = looplm(dtype, bitlinear=True)
    reference.load_state_dict(model.state_dict())
    expected = logits_of(reference, ids)
    for grad in (True, False):
        with lt.enable_grad() if grad else lt.no_grad():
            ok, err = close(logits_of(model, ids), expected, dtype)
        assert ok, f"swapped BitLinear: the {'grad' if grad else 'no_grad'} forward is off by {err:.3g}"


def test_bitlinear_looplm_no_grad_equals_grad_in_float64():
    """The bug this file exists for: under no_grad the shared block's gate/up projections ran on the
    original, unquantized Linear weights (a stale fused copy); logits differed by 1.39."""
    model = looplm(np.float64, bitlinear=True, gating=True)
    ids = ids_for(model)
    with lt.no_grad():
        a = logits_of(model, ids)
    b = logits_of(model, ids)
    assert np.max(np.abs(a - b)) <= 1e-10
