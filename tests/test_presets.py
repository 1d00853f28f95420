"""Presets (litetorch/models/presets.py), their cost, and the `litetorch presets` / `litetorch loop` commands.

Claims:
- Every preset's parameter count is tested: the counting formula equals `num_parameters()` of built models
  (the small presets as they are; every kind, hyper-connection and option at small sizes), and the big
  presets equal HF models built on the meta device: qwen3_coder_80b = Qwen3NextForCausalLM(Qwen3NextConfig())
  (79.67B; active 3.87B with the embeddings, 3.25B without, from HF's own expert tensors), the dense
  nano_* = LlamaForCausalLM, the moe_* = MixtralForCausalLM of the same shapes.
- Nothing big is allocated to count (meta-device HF models on one side, arithmetic on the other).
- The small presets build, train a few steps (the loss falls) and generate.
- `litetorch presets` prints every preset; an unknown preset is an error that lists the known ones;
  `litetorch loop train` resumes a run batch for batch, and `loop generate` continues a prompt.
"""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import ConfigError
from litetorch.models import presets
from litetorch.models.looplm import LoopConfig, LoopLM
from litetorch.models.looplm_train import fit

from _torch_ref import requires_torch, torch

SMALL = ("test_config", "tiny_cpu", "d20", "d20_loop")


def test_every_name_of_the_design_has_a_preset():
    assert set(presets.NAMES) == {"d20", "d20_loop", "tiny_cpu", "nano_125m", "nano_560m", "nano_1b", "nano_7b",
                                  "moe_25b", "moe_80b", "qwen3_coder_80b", "test_config"}
    for name in presets.NAMES:
        assert isinstance(presets.get(name), LoopConfig)
    d20_loop = presets.get("d20_loop")
    assert (d20_loop.n_before, d20_loop.max_loops, d20_loop.n_after) == (1, 4, 1)  # 1 local + 1 shared x 4 + 1 local
    with pytest.raises(ConfigError, match="known presets: test_config, tiny_cpu"):
        presets.get("d21")


@pytest.mark.parametrize("name", SMALL)
def test_small_preset_counts_equal_the_built_models(name):
    c = presets.get(name)
    k = presets.cost(c)
    lt.manual_seed(0)
    m = LoopLM(c)
    assert k.total == m.num_parameters()
    emb = m.embed_tokens.weight.numel() + (0 if c.tie_embeddings else m.lm_head.weight.numel())
    assert k.embedding == emb


KIND_CONFIGS = [
    dict(n_before=2, n_after=1, loop_count=3, layer_types=["deltanet", "attention", "deltanet", "attention"],
         mlp_types=["moe", "dense", "moe", "dense"], shared_expert_hidden=8, hyper="mhc", hyper_streams=3),
    dict(n_before=1, max_loops=4, exit="gate", layer_types=["attention", "deltanet"], mlp_types=["dense", "moe"],
         hyper="mhc_lite", hyper_streams=3, hyper_per_iteration=False, input_injection=True, tie_embeddings=True),
    dict(n_after=2, loop_count=2, gating=True, bitlinear=True, head_dim=6, n_kv_heads=1),
    dict(n_before=1, loop_count=2, hyper="dhc", hyper_streams=2, mlp_types=["moe", "dense"], n_experts=5, top_k=3),
    dict(loop_count=5, hyper="shc", hyper_streams=4),
]


@pytest.mark.parametrize("kw", KIND_CONFIGS, ids=["mhc-kinds", "mhc_lite-gate", "gated-bitlinear", "dhc-moe", "shc"])
def test_the_counting_formula_equals_built_models_for_every_kind(kw):
    base = dict(vocab_size=29, d_model=16, n_heads=4, n_kv_heads=2, hidden=24, linear_num_key_heads=2,
                linear_num_value_heads=4, linear_key_head_dim=4, linear_value_head_dim=6, n_experts=4, top_k=2,
                moe_hidden=12)
    c = LoopConfig(**{**base, **kw})
    lt.manual_seed(0)
    m = LoopLM(c)
    k = presets.cost(c)
    assert k.total == m.num_parameters()
    # active: every parameter but the experts a token does not pick
    unpicked = sum((c.n_experts - c.top_k) * (b.mlp.experts.gate_up_proj.numel() + b.mlp.experts.down_proj.numel())
                   // c.n_experts for b in m.blocks if b.kind[1] == "moe")
    assert k.active == m.num_parameters() - unpicked


def _meta_count(model_cls, config):
    with torch.device("meta"):
        model = model_cls(config)
    return model, sum(p.numel() for p in model.parameters())


@requires_torch
def test_qwen3_coder_80b_equals_hf_qwen3_next_on_the_meta_device():
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM
    hf_cfg = Qwen3NextConfig()
    model, total = _meta_count(Qwen3NextForCausalLM, hf_cfg)
    k = presets.cost(presets.get("qwen3_coder_80b"))
    assert k.total == total == 79_674_391_296
    E, top = hf_cfg.num_experts, hf_cfg.num_experts_per_tok
    unpicked = sum(layer.mlp.experts.gate_up_proj.numel() + layer.mlp.experts.down_proj.numel()
                   for layer in model.model.layers) * (E - top) // E
    embeddings = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    assert k.active == total - unpicked == 3_874_929_408  # "3.87B" with the embeddings
    assert k.active_without_embeddings == total - unpicked - embeddings == 3_252_599_552  # "A3B": 3.25B
    c = presets.get("qwen3_coder_80b")
    assert [c.layer_kind(i)[0] for i in range(48)] == ["deltanet" if t == "linear_attention" else "attention"
                                                       for t in hf_cfg.layer_types]


@requires_torch
@pytest.mark.parametrize("name", ["nano_125m", "nano_560m", "nano_1b", "nano_7b"])
def test_dense_presets_equal_hf_llama_on_the_meta_device(name):
    from transformers import LlamaConfig, LlamaForCausalLM
    c = presets.get(name)
    hf = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.hidden,
                     num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                     tie_word_embeddings=c.tie_embeddings)
    _, total = _meta_count(LlamaForCausalLM, hf)
    k = presets.cost(c)
    assert k.total == k.active == total
    print(f"{name}: {total:,}")


@requires_torch
@pytest.mark.parametrize("name", ["moe_25b", "moe_80b"])
def test_moe_presets_equal_hf_mixtral_on_the_meta_device(name):
    from transformers import MixtralConfig, MixtralForCausalLM
    c = presets.get(name)
    hf = MixtralConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.hidden,
                       num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
                       num_local_experts=c.n_experts, num_experts_per_tok=c.top_k, tie_word_embeddings=False)
    model, total = _meta_count(MixtralForCausalLM, hf)
    k = presets.cost(c)
    assert k.total == total
    per_expert = 3 * c.d_model * c.hidden
    assert k.active == total - (c.n_experts - c.top_k) * per_expert * c.n_layers
    print(f"{name}: {total:,} total, {k.active:,} active")


def test_cost_of_the_cache_and_flops_follow_the_layer_kinds():
    q = presets.cost(presets.get("qwen3_coder_80b"), context=4096)
    # 12 attention layers x 2 (K, V) x 2 heads x 256 x 4 bytes, + 36 DeltaNet states spread over 4096 tokens
    state = 32 * 128 * 128 + (2 * 16 * 128 + 32 * 128) * 3
    assert q.cache_bytes_per_token == pytest.approx(12 * 2 * 2 * 256 * 4 + 36 * state * 4 / 4096)
    loop = presets.get("tiny_cpu")
    k = presets.cost(loop)
    assert k.cache_bytes_per_token == (1 + 3 + 1) * 2 * 4 * 32 * 4  # per_iteration: 3 caches for the shared block
    # FLOPs: the shared block counts once per iteration
    one = presets.cost(LoopConfig(**{**loop.to_dict(), "loop_count": 1}))
    assert k.flops_per_token > one.flops_per_token and k.total == one.total


@pytest.mark.parametrize("name", ["test_config", "tiny_cpu", pytest.param("d20", marks=pytest.mark.slow),
                                  pytest.param("d20_loop", marks=pytest.mark.slow)])
def test_small_presets_build_train_a_few_steps_and_generate(name):
    c = presets.get(name)
    lt.manual_seed(0)
    m = LoopLM(c)
    g = np.random.default_rng(0)
    fixed = g.integers(0, 40, (2, 9))  # a few tokens to memorise: the loss must fall
    log = fit(m, lambda: (fixed[:, :-1], fixed[:, 1:]), 6, lr=1e-2, warmup=1)
    assert log["losses"][-1] < log["losses"][0]
    out = lt.generate(m, None, [1, 2, 3], max_new_tokens=4, temperature=1.0, seed=0)
    assert len(out.token_ids) == 4 and out.stats.loops_per_token is not None
    print(f"{name}: loss {log['losses'][0]:.3f} -> {log['losses'][-1]:.3f} in {log['seconds']:.1f} s")


def test_big_presets_refuse_to_build_what_looplm_does_not_have():
    with pytest.raises(ConfigError, match="presets.py to count"):
        LoopLM(presets.get("qwen3_coder_80b"))


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def litetorch(*args, cwd=None, timeout=300):
    root = Path(__file__).parent.parent
    path = str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=path)
    return subprocess.run([sys.executable, "-m", "litetorch.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd)


def test_litetorch_presets_prints_every_preset():
    proc = litetorch("presets")
    assert proc.returncode == 0, proc.stderr
    for name in presets.NAMES:
        assert name in proc.stdout
    assert "79.67B" in proc.stdout and "3.87B" in proc.stdout and "3.25B" in proc.stdout


def test_an_unknown_preset_lists_the_known_ones():
    proc = litetorch("loop", "train", "--preset", "d21")
    assert proc.returncode == 1
    assert "unknown preset 'd21'" in proc.stderr and "d20_loop" in proc.stderr and "qwen3_coder_80b" in proc.stderr


def test_loop_train_resumes_batch_for_batch(tmp_path):
    """2 steps, checkpoint, resume, 2 more: the same losses as 4 steps in one go."""
    from litetorch.loop_train import LoopTrainConfig, LoopTrainer
    cfg = LoopTrainConfig(preset="test_config", steps=4, batch_size=2, block_size=12, eval_interval=2, eval_iters=1,
                          n_stories=40)
    straight = LoopTrainer(cfg, verbose=False)
    straight.run(progress=False)
    first = LoopTrainer(cfg, verbose=False)
    while first.step < 2:
        first.train_step()
    first.save(tmp_path / "ckpt")
    resumed = LoopTrainer.resume(tmp_path / "ckpt", verbose=False)
    while resumed.step < 4:
        resumed.train_step()
    assert resumed.history["loss"] == straight.history["loss"]


def test_loop_train_and_generate_from_the_command_line(tmp_path):
    args = ["--preset", "test_config", "--batch-size", 2, "--block-size", 12, "--eval-interval", 2, "--no-progress",
            "--out", tmp_path / "run"]
    proc = litetorch("loop", "train", *args, "--steps", 2)
    assert proc.returncode == 0, proc.stderr
    assert "step 2: val loss" in proc.stdout and (tmp_path / "run" / "ckpt" / "model.safetensors").is_file()
    proc = litetorch("loop", "train", *args, "--steps", 3, "--resume", "--export-gguf", tmp_path / "m.gguf")
    assert proc.returncode == 0, proc.stderr
    assert "resumed" in proc.stdout and "step 3: val loss" in proc.stdout and (tmp_path / "m.gguf").is_file()
    proc = litetorch("loop", "generate", tmp_path / "run" / "ckpt", "Once upon", "--max-new-tokens", 8, "--seed", 0,
                     "--temperature", 1.0)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Once upon") and len(proc.stdout.rstrip("\n")) == len("Once upon") + 8
    assert "loops/token" in proc.stderr
    proc = litetorch("loop", "generate", tmp_path / "nothing", "hi")
    assert proc.returncode == 1 and "no LoopLM checkpoint" in proc.stderr
