"""Named LoopLM configs, and what each costs: parameters, FLOPs and cache bytes, counted without weights.

    from litetorch.models import presets
    cfg = presets.get("d20_loop")                # a LoopConfig
    presets.cost(cfg)                            # Cost(total=..., active=..., flops_per_token=..., ...)
    litetorch presets                            # the table below, computed

The names come from the LoopLM design we were handed. Where a name stands for a public model, the
config is the published one: `qwen3_coder_80b` is Qwen3-Next-80B-A3B (Qwen3-Coder-Next has the same
architecture), i.e. HF's `Qwen3NextConfig()` defaults: 48 layers, three Gated DeltaNet layers then
one gated-attention layer, 512 experts (10 routed + 1 shared per token). Its parameter count equals
HF's `Qwen3NextForCausalLM(Qwen3NextConfig())` built on the meta device (tests/test_presets.py). Its
attention has an output gate and q/k norms, which this file counts but LoopLM does not build (they
land with the Qwen3-Next model); the partial rotary and the zero-centred norms change no count.

For the other names the dimensions are ours, chosen to match the size the name gives (the design's
own dimensions did not: its "moe_80b" held 550B parameters):

| name       | layers (loop)                 | d_model | heads (kv) | FFN                         | vocab   | total  |
|------------|-------------------------------|---------|------------|-----------------------------|---------|--------|
| test_config| 1 + 1 x 1..3 + 1, every kind  | 32      | 4 (2)      | SwiGLU 64 / MoE 4x32 top-2  | 64      | 43.8K  |
| tiny_cpu   | 1 + 1 x 3 + 1                 | 128     | 4 (4)      | SwiGLU 352                  | 256     | 0.67M  |
| d20        | 6 (no loop)                   | 256     | 4 (4)      | SwiGLU 768                  | 32000   | 21.5M  |
| d20_loop   | 1 + 1 x 2..4 + 1, mHC-lite n=2| 256     | 4 (4)      | SwiGLU 768                  | 50257   | 15.5M  |
| nano_125m  | 12 (no loop), tied            | 768     | 12 (12)    | SwiGLU 2048                 | 50257   | 124M   |
| nano_560m  | 24 (no loop)                  | 1280    | 20 (20)    | SwiGLU 3456                 | 32000   | 558M   |
| nano_1b    | 20 (no loop), tied            | 2048    | 16 (16)    | SwiGLU 5504                 | 50257   | 1.11B  |
| nano_7b    | 32 (no loop)                  | 4096    | 32 (8)     | SwiGLU 11008                | 128256  | 6.7B   |
| moe_25b    | 32 (no loop)                  | 4096    | 32 (8)     | MoE 8 x 7168, top-2         | 128256  | 24.9B  |
| moe_80b    | 48 (no loop)                  | 6144    | 48 (8)     | MoE 16 x 5376, top-2        | 128256  | 81.9B  |
| qwen3_coder_80b | 48, 3 DeltaNet : 1 attn | 2048 | 16 (2), Dh 256 | MoE 512x512, top-10 + shared | 151936 | 79.67B |

(`litetorch presets` prints the exact counts, active parameters, FLOPs and cache bytes.) The "no loop"
presets are LoopLMs with loop_count = 1: the shared block runs once and is just one more layer.

What the numbers mean:
- total: every parameter once (a shared block counts once, however often it runs).
- active: the parameters one token's forward pass uses: all of them except the routed experts a token
  does not pick (router, k experts and the shared expert count). Reported with the embedding matrix and
  the LM head, and without them (Qwen's "A3B" is the latter: 3.25B of 3.87B).
- flops_per_token: forward FLOPs of one token at position `context` (4096): 2 per multiply-add of every
  active weight it passes (the shared block R times, R = loop_count or max_loops), the LM head, and
  the mixing itself: attention 4 H Dh * context per layer run (scores and values), Gated DeltaNet
  ~7 Hv Dk Dv (decay, read, write, query of the state) + the conv's 2 K conv_dim. The embedding
  lookup costs none.
- cache bytes per token at 4k: (K/V rows + recurrent states) of a 4096-token sequence / 4096, in
  float32 (litetorch's dtype; bf16 halves it). The shared block's attention keeps R caches under
  kv_policy="per_iteration".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from .looplm import LoopConfig


def _qwen3_next_80b() -> LoopConfig:
    """HF Qwen3NextConfig() defaults (Qwen3-Next-80B-A3B), as a LoopLM config with loop_count = 1."""
    n = 48
    return LoopConfig(vocab_size=151936, d_model=2048, n_heads=16, n_kv_heads=2, head_dim=256, hidden=5632,
                      max_len=262144, n_before=n - 1, n_after=0, loop_count=1, rope_base=10000.0, eps=1e-6,
                      layer_types=["attention" if (i + 1) % 4 == 0 else "deltanet" for i in range(n)],
                      mlp_types=["moe"] * n, linear_num_key_heads=16, linear_num_value_heads=32,
                      linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
                      n_experts=512, top_k=10, moe_hidden=512, shared_expert_hidden=512, norm_topk_prob=True,
                      attn_output_gate=True, qk_norm=True)


def _plain(n_layers: int, **kw) -> LoopConfig:
    """A plain (unlooped) transformer as a LoopLM: n_layers - 1 local layers, then the 'shared' block once."""
    return LoopConfig(n_before=n_layers - 1, n_after=0, loop_count=1, **kw)


PRESETS = {
    # every kind in one small model: Gated DeltaNet before, attention in the loop, MoE after, mHC-lite, exit gate
    "test_config": lambda: LoopConfig(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, hidden=64, max_len=128,
                                      n_before=1, n_after=1, loop_count=3, exit="gate", max_loops=3,
                                      exit_threshold=0.5, layer_types=["deltanet", "attention", "attention"],
                                      mlp_types=["dense", "dense", "moe"], n_experts=4, top_k=2, moe_hidden=32,
                                      linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8,
                                      linear_value_head_dim=8, hyper="mhc_lite", hyper_streams=2),
    # trains on bytes on a laptop CPU in minutes
    "tiny_cpu": lambda: LoopConfig(vocab_size=256, d_model=128, n_heads=4, hidden=352, max_len=256, n_before=1,
                                   n_after=1, loop_count=3),
    # ~20M: the dense 6-layer model d20_loop is distilled from
    "d20": lambda: _plain(6, vocab_size=32000, d_model=256, n_heads=4, hidden=768, max_len=512),
    # the design's LoopLM: 1 local + 1 shared x 4 + 1 local, tied, mHC-lite with 2 streams, Ouro's exit gate
    "d20_loop": lambda: LoopConfig(vocab_size=50257, d_model=256, n_heads=4, hidden=768, max_len=256, n_before=1,
                                   n_after=1, loop_count=4, exit="gate", min_loops=2, max_loops=4,
                                   exit_threshold=0.5, tie_embeddings=True, hyper="mhc_lite", hyper_streams=2),
    "nano_125m": lambda: _plain(12, vocab_size=50257, d_model=768, n_heads=12, hidden=2048, max_len=2048,
                                tie_embeddings=True),
    "nano_560m": lambda: _plain(24, vocab_size=32000, d_model=1280, n_heads=20, hidden=3456, max_len=2048),
    "nano_1b": lambda: _plain(20, vocab_size=50257, d_model=2048, n_heads=16, hidden=5504, max_len=2048,
                              tie_embeddings=True),
    "nano_7b": lambda: _plain(32, vocab_size=128256, d_model=4096, n_heads=32, n_kv_heads=8, hidden=11008,
                              max_len=8192, rope_base=500000.0),
    "moe_25b": lambda: _plain(32, vocab_size=128256, d_model=4096, n_heads=32, n_kv_heads=8, hidden=7168,
                              max_len=8192, rope_base=500000.0, mlp_types=["moe"] * 32, n_experts=8, top_k=2),
    "moe_80b": lambda: _plain(48, vocab_size=128256, d_model=6144, n_heads=48, n_kv_heads=8, hidden=5376,
                              max_len=8192, rope_base=500000.0, mlp_types=["moe"] * 48, n_experts=16, top_k=2),
    "qwen3_coder_80b": _qwen3_next_80b,
}
NAMES = tuple(PRESETS)


def get(name: str) -> LoopConfig:
    """A fresh LoopConfig for a preset name; an unknown name raises ConfigError listing the known ones."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; known presets: {', '.join(NAMES)}")
    return PRESETS[name]()


# --------------------------------------------------------------------------------------------
# What a config costs, counted from its shapes (no weights are allocated)
# --------------------------------------------------------------------------------------------
@dataclass
class Cost:
    total: int  # parameters
    active: int  # parameters one token uses (routed experts it does not pick left out)
    embedding: int  # the embedding matrix + the LM head (once if tied)
    flops_per_token: int  # forward, at position `context`
    cache_bytes_per_token: float  # at `context`, float32
    context: int

    @property
    def active_without_embeddings(self) -> int:
        return self.active - self.embedding


def _hc_params(kind, n: int, C: int) -> int:
    """Parameters of one set of hyper-connection mappings (hyper.py)."""
    if kind is None:
        return 0
    if kind == "shc":
        return n + n + n * n
    if kind == "dhc":
        return n + n + n * n + C + C + n * C + 3
    m = n * n if kind == "mhc" else math.factorial(n)
    return 2 * n * C * n + n * C * m + n + n + m + 3


def layer_parameters(c: LoopConfig, index: int, shared: bool = False) -> tuple[int, int]:
    """(total, active) parameters of the layer at `index`."""
    C = c.d_model
    mixer, mlp = c.layer_kind(index)
    p = 2 * C  # input_layernorm, post_attention_layernorm
    if mixer == "attention":
        H, Hkv, Dh = c.n_heads, c.n_kv_heads, c.head_dim
        p += C * (H * Dh * (2 if c.attn_output_gate else 1) + 2 * Hkv * Dh) + H * Dh * C + (2 * Dh if c.qk_norm else 0)
    else:
        Hk = c.linear_num_key_heads or c.n_heads
        Hv, Dk = c.linear_num_value_heads or Hk, c.linear_key_head_dim or c.head_dim
        Dv, K = c.linear_value_head_dim or c.head_dim, c.linear_conv_kernel_dim
        p += C * (2 * Hk * Dk + 2 * Hv * Dv) + C * 2 * Hv + (2 * Hk * Dk + Hv * Dv) * K + 2 * Hv + Dv + Hv * Dv * C
    active = p
    if mlp == "dense":
        p, active = p + 3 * C * c.hidden, active + 3 * C * c.hidden
    else:
        per_expert = 3 * C * (c.moe_hidden or c.hidden)
        shared_expert = 0 if c.shared_expert_hidden is None else 3 * C * c.shared_expert_hidden + C
        p += c.n_experts * C + c.n_experts * per_expert + shared_expert
        active += c.n_experts * C + c.top_k * per_expert + shared_expert
    sets = c.n_loop_sets if shared and c.hyper_per_iteration else 1
    extra = 2 * sets * _hc_params(c.hyper, c.hyper_streams, C) + (2 * c.n_loop_sets * C if shared and c.gating else 0)
    return p + extra, active + extra


def _mixing_flops(c: LoopConfig, index: int, context: int) -> int:
    """FLOPs of the token mixing itself (not its projections) for one token at position `context`."""
    mixer, _ = c.layer_kind(index)
    if mixer == "attention":
        return 4 * c.n_heads * c.head_dim * context  # q.k over `context` keys, then the weighted sum of values
    Hk = c.linear_num_key_heads or c.n_heads
    Hv, Dk = c.linear_num_value_heads or Hk, c.linear_key_head_dim or c.head_dim
    Dv, K = c.linear_value_head_dim or c.head_dim, c.linear_conv_kernel_dim
    return 7 * Hv * Dk * Dv + 2 * K * (2 * Hk * Dk + Hv * Dv)


def _cache_bytes(c: LoopConfig, index: int, context: int, itemsize: int) -> float:
    """Cache bytes one token of a `context`-token sequence costs in the layer at `index` (one run of it)."""
    mixer, _ = c.layer_kind(index)
    if mixer == "attention":
        return 2 * c.n_kv_heads * c.head_dim * itemsize
    Hk = c.linear_num_key_heads or c.n_heads
    Hv, Dk = c.linear_num_value_heads or Hk, c.linear_key_head_dim or c.head_dim
    Dv, K = c.linear_value_head_dim or c.head_dim, c.linear_conv_kernel_dim
    return (Hv * Dk * Dv + (2 * Hk * Dk + Hv * Dv) * (K - 1)) * itemsize / context  # a fixed state, shared out


def cost(c: LoopConfig, context: int = 4096, itemsize: int = 4) -> Cost:
    """Parameters, FLOPs per token and cache bytes per token of a config, from its shapes alone."""
    C, V = c.d_model, c.vocab_size
    R = c.n_iter
    embedding = V * C * (1 if c.tie_embeddings else 2)
    total = active = embedding + C  # + the final norm
    flops = 2 * V * C  # the LM head
    cache = 0.0
    for index in range(c.n_layers):
        shared = index == c.n_before
        p, a = layer_parameters(c, index, shared)
        runs = R if shared else 1
        total, active = total + p, active + a
        flops += runs * (2 * (a - 2 * C) + _mixing_flops(c, index, context))  # (norms: no multiply-adds counted)
        policy_copies = R if (shared and c.kv_policy == "per_iteration") else 1
        cache += policy_copies * _cache_bytes(c, index, context, itemsize)
    extras = (2 * C * C if c.input_injection else 0) + (C + 1 if c.exit == "gate" else 0)
    total, active = total + extras, active + extras
    flops += R * 2 * extras
    return Cost(total, active, embedding, flops, cache, context)


def _si(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def table(names=NAMES, context: int = 4096) -> str:
    """The presets table `litetorch presets` prints."""
    head = (f"{'preset':<16} {'layers':>6} {'d_model':>7}  {'loop structure':<46} {'total':>8} {'active':>8} "
            f"{'active-emb':>10} {'GFLOP/tok':>9} {'cache B/tok @4k':>15}")
    rows = [head, "-" * len(head)]
    for name in names:
        c = get(name)
        k = cost(c, context)
        structure = c.structure()
        if c.hyper is not None:
            structure += f", {c.hyper} n={c.hyper_streams}"
        rows.append(f"{name:<16} {c.n_layers:>6} {c.d_model:>7}  {structure:<46} {_si(k.total):>8} {_si(k.active):>8} "
                    f"{_si(k.active_without_embeddings):>10} {k.flops_per_token / 1e9:>9.3f} "
                    f"{k.cache_bytes_per_token:>15,.0f}")
    return "\n".join(rows)
