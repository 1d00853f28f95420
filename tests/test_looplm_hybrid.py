"""The completed LoopLM: layer kinds by index, hyper-connections around every block, caches for both.

Claims:
- Each layer's kind (attention or Gated DeltaNet, dense SwiGLU or MoE) is the one its index gives, with
  indices counted local-before, then the shared block, then local-after (where the design had its bug).
- With mixed kinds and hyper-connections (HC, mHC, mHC-lite; per-iteration or shared mappings), the
  forward and every gradient equal a PyTorch twin in float64 (<= 1e-10); the twin's Gated DeltaNet and
  MoE equal HF's Qwen3-Next modules (float32), so the twin is not litetorch checked against itself.
- Batched prefill equals token-by-token decode (float64 <= 1e-10, same loops per token) for every cache
  policy that claims exactness, with Gated DeltaNet states in the loop and mHC.
- A cache with recurrent states is not rewindable: crop refuses a middle length, checkpoint/rollback
  restore the states, and generation still reuses nothing it cannot.
- Generation reports loops per token from the cache's record, equal to the loops the model used.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import CacheError, ConfigError
from litetorch.models.looplm import LoopConfig, LoopLM

sys.path.insert(0, str(Path(__file__).parent))
from _torch_ref import requires_torch, torch  # noqa: E402

if torch is not None:
    from test_looplm import compare  # noqa: E402


def make(seed=0, dtype=np.float64, **kw):
    """A small random LoopLM with every parameter moved away from its initial value."""
    base = dict(vocab_size=23, d_model=16, n_heads=4, n_kv_heads=2, max_len=32, hidden=24,
                linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=4, linear_value_head_dim=4,
                n_experts=4, top_k=2, moe_hidden=12)
    base.update(kw)
    lt.manual_seed(seed)
    m = LoopLM(LoopConfig(**base)).to(dtype)
    r = np.random.default_rng(seed + 100)
    sd = m.state_dict()
    for k, v in sd.items():
        if "alpha" in k:
            sd[k] = r.uniform(0.3, 0.8, np.shape(v))
        elif "phi" in k or "theta" in k:
            sd[k] = r.standard_normal(np.shape(v)) * 0.3
        elif k.endswith(("b_pre", "b_post", "b_res")) or k.startswith("loop.gate_"):
            sd[k] = np.asarray(v) + r.standard_normal(np.shape(v)) * 0.5
        elif "norm" in k and "weight" in k:
            sd[k] = 1.0 + 0.1 * r.standard_normal(np.shape(v))
        elif k.endswith(("dt_bias", "A_log")):
            sd[k] = r.uniform(-1.0, 1.0, np.shape(v))
        elif k.endswith("mlp.gate.weight"):  # the router: spread its probabilities (no near-ties)
            sd[k] = r.standard_normal(np.shape(v))
    m.load_state_dict(sd)
    return m


def ids_for(m, B=2, T=7, seed=1):
    return np.random.default_rng(seed).integers(0, m.config.vocab_size, (B, T))


# --------------------------------------------------------------------------------------------
# Kinds by index
# --------------------------------------------------------------------------------------------
def test_layer_kinds_are_set_by_index_local_before_then_shared_then_local_after():
    """Index 0, 1: before; 2: the shared block; 3, 4: after. layers_after[j] is index n_before + 1 + j, so a
    pattern that differs at j and at n_before + 1 + j tells the two readings apart (the design read j)."""
    types = ["attention", "deltanet", "deltanet", "attention", "deltanet"]
    mlps = ["moe", "dense", "moe", "dense", "moe"]
    m = make(n_before=2, n_after=2, loop_count=2, layer_types=types, mlp_types=mlps)
    kinds = [blk.kind for blk in m.blocks]
    assert kinds == list(zip(types, mlps))
    assert [b.kind for b in m.layers_before] == [("attention", "moe"), ("deltanet", "dense")]
    assert m.loop.kind == ("deltanet", "moe")
    assert [b.kind for b in m.layers_after] == [("attention", "dense"), ("deltanet", "moe")]
    assert [m.config.layer_kind(i) for i in range(5)] == kinds
    names = set(m.state_dict())
    assert "loop.linear_attn.in_proj_qkvz.weight" in names and "loop.mlp.experts.gate_up_proj" in names
    assert "layers_after.0.self_attn.qkv_proj.weight" in names and "layers_after.1.linear_attn.A_log" in names
    caches = m.new_caches(1)
    assert [type(c).__name__ for c in caches.before + caches.after] == ["KVCache", "DeltaNetCache", "KVCache",
                                                                         "DeltaNetCache"]
    assert [type(c).__name__ for c in caches.loop] == ["DeltaNetCache"] * 2  # one state per iteration


def test_bad_kind_configs_raise_clear_errors():
    with pytest.raises(ConfigError, match="for each of the 3 layers"):
        LoopConfig(n_before=1, n_after=1, layer_types=["attention", "deltanet"])
    with pytest.raises(ConfigError, match="one of"):
        LoopConfig(layer_types=["mamba"])
    with pytest.raises(ConfigError, match="per_iteration"):
        LoopConfig(layer_types=["deltanet"], kv_policy="shared_first")
    with pytest.raises(ConfigError, match="choose one"):
        LoopConfig(gating=True, hyper="mhc")
    with pytest.raises(ConfigError, match="hyper"):
        LoopConfig(hyper="resnet")
    with pytest.raises(ConfigError, match="dense FFN"):
        LoopConfig(bitlinear=True, mlp_types=["moe"])
    with pytest.raises(ConfigError, match="presets.py to count"):
        LoopLM(LoopConfig(attn_output_gate=True))


# --------------------------------------------------------------------------------------------
# Parity with the PyTorch twin
# --------------------------------------------------------------------------------------------
GRID = [  # (kwargs, steps)
    (dict(n_before=1, n_after=1, loop_count=2, layer_types=["deltanet", "attention", "deltanet"],
          mlp_types=["moe", "dense", "dense"], hyper="mhc", hyper_streams=2), False),
    (dict(n_before=1, loop_count=3, layer_types=["attention", "deltanet"], mlp_types=["dense", "moe"],
          hyper="mhc_lite", hyper_streams=3, input_injection=True, exit="gate", max_loops=3, n_after=0), True),
    (dict(n_after=1, loop_count=2, layer_types=["attention", "deltanet"], hyper="dhc", hyper_streams=2,
          hyper_per_iteration=False, kv_policy="shared_first", tie_embeddings=True), False),
    (dict(loop_count=3, hyper="shc", hyper_streams=2, exit="kl", max_loops=3, exit_threshold=0.05,
          layer_types=["deltanet"], bitlinear=True), False),
    (dict(n_before=1, loop_count=2, mlp_types=["moe", "dense"], hyper="mhc", hyper_streams=2, exit="gate",
          max_loops=3, exit_threshold=0.5), False),
]


@requires_torch
@pytest.mark.parametrize("kw,steps", GRID, ids=["mhc-deltanet-loop", "mhc_lite-gate-steps", "dhc-shared-tied",
                                                "shc-kl-bitlinear-deltanet", "mhc-gate-exit"])
def test_hybrid_forward_and_gradients_match_torch_float64(kw, steps):
    m = make(**kw)
    e_out, e_grad = compare(m, ids_for(m, T=6), steps=steps, tol=1e-10)
    print(f"logits {e_out:.1e}, grads {e_grad:.1e}")


@requires_torch
def test_hybrid_float32_matches_torch():
    """float32: logits and loss to 1e-5 relative. Gradients against float64 truth (the float64 twin), each
    within 1e-5 of the largest gradient of its block: mHC's mixing parameters at the first layer have a
    true gradient of ~1e-15 (expand_streams makes equal streams, which a doubly stochastic mix leaves
    alone), which no float32 implementation resolves (tests/test_hyper.py measures torch's)."""
    from litetorch.models.looplm_train import looplm_loss
    from litetorch.testing import named_grads
    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    import torch_looplm as ref
    from test_looplm import twin
    m = make(dtype=np.float32, **GRID[0][0])
    ids = ids_for(m, T=6)
    tgt = np.random.default_rng(5).integers(0, m.config.vocab_size, ids.shape)
    out = m.run(ids)
    loss = looplm_loss(out, tgt)
    loss.backward()
    m64 = make(dtype=np.float64, **GRID[0][0])
    m64.load_state_dict({k: np.asarray(v, np.float64) for k, v in m.state_dict().items()})
    t64 = twin(m64)
    tl = t64(torch.from_numpy(ids))[0]
    ref.looplm_loss(tl, None, None, torch.from_numpy(tgt)).backward()
    scale = np.abs(tl.detach().numpy()).max()
    assert np.abs(out.logits.data - tl.detach().numpy()).max() <= 1e-5 * scale
    truth = {k: p.grad.numpy() for k, p in t64.named_parameters()}
    grads = named_grads(m)
    block = lambda name: name.split(".")[0] + ("." + name.split(".")[1] if name.startswith("layers") else "")  # noqa
    block_scale = {}
    for name, g in truth.items():
        block_scale[block(name)] = max(block_scale.get(block(name), 0.0), np.abs(g).max())
    worst = max(np.abs(grads[k] - truth[k]).max() / block_scale[block(k)] for k in truth)
    print(f"float32 gradients: worst error {worst:.1e} of their block's largest gradient")
    assert worst <= 1e-5


@requires_torch
def test_the_twins_deltanet_and_moe_are_hfs_qwen3_next_modules():
    """The twin's Gated DeltaNet and MoE, with HF's weights, give HF's outputs (float32): the twin is HF."""
    pytest.importorskip("transformers")
    from transformers import Qwen3NextConfig
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextGatedDeltaNet, Qwen3NextSparseMoeBlock
    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    import torch_looplm as ref
    c = LoopConfig(d_model=16, n_heads=4, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=4,
                   linear_value_head_dim=6, n_experts=4, top_k=2, moe_hidden=12, shared_expert_hidden=8, eps=1e-6)
    hc = Qwen3NextConfig(hidden_size=16, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=4,
                         linear_value_head_dim=6, linear_conv_kernel_dim=4, num_experts=4, num_experts_per_tok=2,
                         moe_intermediate_size=12, shared_expert_intermediate_size=8, rms_norm_eps=1e-6,
                         num_hidden_layers=1)
    torch.manual_seed(0)
    x = torch.randn(2, 9, 16)
    for hf, twin in ((Qwen3NextGatedDeltaNet(hc, layer_idx=0), ref.DeltaNet(c)),
                     (Qwen3NextSparseMoeBlock(hc), ref.MoE(c))):
        with torch.no_grad():
            for p in hf.parameters():
                p.copy_(torch.randn(p.shape) * 0.5)
        twin.load_state_dict(hf.state_dict())
        with torch.no_grad():
            want = hf(x)
            want = want[0] if isinstance(want, tuple) else want
            got = twin(x)
        assert (got - want).abs().max() <= 1e-5 * max(want.abs().max().item(), 1.0)


# --------------------------------------------------------------------------------------------
# Caches: batched prefill == token-by-token decode
# --------------------------------------------------------------------------------------------
DECODE_CASES = [
    dict(n_before=1, n_after=1, loop_count=3, layer_types=["attention", "deltanet", "deltanet"],
         mlp_types=["moe", "dense", "moe"], hyper="mhc", hyper_streams=2),
    dict(n_before=1, n_after=1, loop_count=3, kv_policy="shared_first", layer_types=["deltanet", "attention",
         "attention"], hyper="mhc_lite", hyper_streams=2, hyper_per_iteration=False, input_injection=True),
    dict(n_before=1, max_loops=4, exit="gate", exit_threshold=0.5, layer_types=["attention", "deltanet"],
         mlp_types=["dense", "moe"], hyper="mhc", hyper_streams=2),
    dict(max_loops=4, exit="entropy", exit_threshold=1.2, layer_types=["attention"], hyper="dhc",
         hyper_streams=2, tie_embeddings=True),
]


@pytest.mark.parametrize("kw", DECODE_CASES, ids=["per_iteration-deltanet-mhc", "shared_first-mhc_lite-shared-sets",
                                                  "gate-exit-deltanet-loop", "entropy-dhc-tied"])
def test_prefill_equals_token_by_token_decode_with_mixed_kinds_and_mhc(kw):
    m = make(**kw)
    ids = ids_for(m, B=2, T=8)
    with lt.no_grad():
        full = m.run(ids)
        caches = m.new_caches(2)
        outs = [m.run(ids[:, :3], caches)] + [m.run(ids[:, t:t + 1], caches) for t in range(3, 8)]
    logits = np.concatenate([o.logits.data for o in outs], axis=1)
    used = np.concatenate([o.loops for o in outs], axis=1)
    err = np.abs(logits - full.logits.data).max()
    assert err <= 1e-10, err
    assert np.array_equal(used, full.loops) and np.array_equal(caches.loops, full.loops)
    assert caches.length == 8
    if kw.get("exit") in ("gate", "entropy"):
        assert len(np.unique(full.loops)) >= 2, full.loops  # the exit really varies per token


def test_recurrent_state_caches_refuse_a_middle_crop_and_roll_back_by_snapshot():
    m = make(n_before=1, loop_count=2, layer_types=["deltanet", "attention"])
    ids = ids_for(m, B=1, T=6)
    with lt.no_grad():
        caches = m.new_caches(1)
        m.run(ids[:, :4], caches)
        assert not caches.rewindable and caches.state_bytes > 0
        with pytest.raises(CacheError, match="cannot be cut back"):
            caches.crop(2)
        state = caches.checkpoint()
        before = caches.before[0].recurrent_state.copy()
        m.run(ids[:, 4:], caches)
        assert caches.length == 6
        caches.rollback(state)
        assert caches.length == 4 and np.array_equal(caches.before[0].recurrent_state, before)
        again = m.run(ids[:, 4:], caches).logits.data
        want = m.run(ids).logits.data[:, 4:]
    assert np.abs(again - want).max() <= 1e-10
    caches.crop(0)
    assert caches.length == 0 and caches.rows() == 0


def test_generation_reports_the_loops_each_token_used_and_works_with_states():
    m = make(n_before=1, max_loops=4, exit="gate", exit_threshold=0.5, layer_types=["deltanet", "attention"],
             hyper="mhc", hyper_streams=2)
    prompt = ids_for(m, B=1, T=5)[0].tolist()
    out = lt.generate(m, None, prompt, max_new_tokens=6)
    seq = np.array([prompt + out.token_ids[:-1]])  # every position the model computed
    with lt.no_grad():
        loops = m.run(seq).loops
    assert out.stats.loops_per_token == pytest.approx(loops.mean(), abs=0.0)
    assert "loops/token" in str(out.stats)
    # a prompt cache over recurrent states: the second call cannot rewind, so it starts over (and is right)
    pc = lt.generation.PromptCache(m, 32)
    first = lt.generate(m, None, prompt, max_new_tokens=3, cache=pc)
    second = lt.generate(m, None, prompt, max_new_tokens=3, cache=pc)
    assert first.token_ids == second.token_ids == out.token_ids[:3]
