"""What a model costs, on paper, from its config alone: parameters (total and active per token) and the
memory a decode needs at a given context length. Lesson 26.

No model is built, so the 80B Qwen3-Next prices in microseconds:

    from litetorch.models import Qwen3NextConfig
    from litetorch.models.costs import parameter_counts, decode_state_bytes
    parameter_counts(Qwen3NextConfig())["total"]               # 79,674,391,296 (HF's count on the meta device)
    decode_state_bytes(Qwen3NextConfig(), context=32768)       # K/V of 12 layers + 36 fixed DeltaNet states

Parameters:
- total: every parameter (a tied lm_head counted once);
- active: what one token uses: everything but the experts the router did not pick (k of E run);
- active_without_embeddings: active minus the embedding table and the untied lm_head (the convention
  behind names such as "A3B", whose 3B counts the work in the layers; the embedding is a lookup).

Decode memory (per sequence in the batch, at `itemsize` bytes a number):
- an attention layer keeps K and V for every token: 2 * Hkv * Dh numbers per token, growing with context;
- a Gated DeltaNet layer keeps the conv inputs (conv_dim * (K - 1)) and the state (Hv * Dk * Dv): fixed.
These are exactly what `model.new_cache(B, context).nbytes` allocates (tests/test_qwen3.py measures it).
Works for LlamaConfig, Qwen3MoeConfig and Qwen3NextConfig.
"""
from __future__ import annotations

import numpy as np

from .config import LlamaConfig
from .qwen3_config import Qwen3NextConfig


def _layer_types(c) -> list[str]:
    return ["full_attention"] * c.num_hidden_layers if isinstance(c, LlamaConfig) else list(c.layer_types)


def _is_moe(c, i: int) -> bool:
    return False if isinstance(c, LlamaConfig) else c.is_moe_layer(i)


def attention_parameters(c) -> int:
    """q (with Qwen3-Next's gate: twice as many rows), k, v, o projections (+ biases), the q/k norms."""
    H, Hkv, Dh, C = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
    q_rows = (2 if getattr(c, "attention_output_gate", False) else 1) * H * Dh
    n = (q_rows + 2 * Hkv * Dh) * C + H * Dh * C
    if c.attention_bias:
        n += q_rows + 2 * Hkv * Dh + C
    if not isinstance(c, LlamaConfig):
        n += 2 * Dh  # q_norm, k_norm
    return n


def deltanet_parameters(c: Qwen3NextConfig) -> int:
    """in_proj_qkvz, in_proj_ba, the depthwise conv, dt_bias, A_log, the gated norm, out_proj."""
    Hk, Hv, Dk, Dv, K, C = (c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                            c.linear_value_head_dim, c.linear_conv_kernel_dim, c.hidden_size)
    conv_dim = 2 * Hk * Dk + Hv * Dv
    return (2 * Hk * Dk + 2 * Hv * Dv) * C + 2 * Hv * C + conv_dim * K + 2 * Hv + Dv + Hv * Dv * C


def mlp_parameters(c, i: int) -> tuple[int, int]:
    """(total, active per token) of layer i's MLP: a dense SwiGLU, or the router + E experts (+ shared expert)."""
    C = c.hidden_size
    if not _is_moe(c, i):
        n = 3 * c.intermediate_size * C + (2 * c.intermediate_size + C if getattr(c, "mlp_bias", False) else 0)
        return n, n
    expert = 3 * c.moe_intermediate_size * C  # gate, up, down
    shared = 3 * c.shared_expert_intermediate_size * C + C if c.shared_expert_intermediate_size else 0
    router = c.num_experts * C
    return router + c.num_experts * expert + shared, router + c.num_experts_per_tok * expert + shared


# lesson 26: begin (parameter_counts)
def parameter_counts(config) -> dict:
    """{"total", "active", "active_without_embeddings", "embeddings"} of a config, counted on paper."""
    c = config
    C, V = c.hidden_size, c.vocab_size
    embeddings = V * C * (1 if c.tie_word_embeddings else 2)  # embed_tokens (+ an untied lm_head)
    total = active = embeddings + C  # + the final norm
    for i, kind in enumerate(_layer_types(c)):
        mixer = deltanet_parameters(c) if kind == "linear_attention" else attention_parameters(c)
        mlp_total, mlp_active = mlp_parameters(c, i)
        total += 2 * C + mixer + mlp_total  # two norms, the token mixer, the MLP
        active += 2 * C + mixer + mlp_active  # ... with only the k chosen experts
    return {"total": total, "active": active, "active_without_embeddings": active - embeddings,
            "embeddings": embeddings}
# lesson 26: end (parameter_counts)


# lesson 26: begin (decode_state_bytes)
def decode_state_bytes(config, context: int, batch_size: int = 1, dtype=np.float32) -> dict:
    """Bytes a decode keeps at `context` tokens: {"kv", "kv_per_token", "recurrent", "total"}."""
    c, itemsize = config, np.dtype(dtype).itemsize
    types = _layer_types(c)
    n_attention = types.count("full_attention")
    kv_per_token = 2 * n_attention * c.num_key_value_heads * c.head_dim * itemsize * batch_size  # K and V
    recurrent = 0
    if "linear_attention" in types:  # conv inputs [conv_dim, K - 1] and state [Hv, Dk, Dv] per layer: fixed
        conv_dim = 2 * c.linear_num_key_heads * c.linear_key_head_dim + c.linear_num_value_heads * c.linear_value_head_dim
        per_layer = conv_dim * (c.linear_conv_kernel_dim - 1) + \
            c.linear_num_value_heads * c.linear_key_head_dim * c.linear_value_head_dim
        recurrent = types.count("linear_attention") * per_layer * itemsize * batch_size
    return {"kv": kv_per_token * context, "kv_per_token": kv_per_token, "recurrent": recurrent,
            "total": kv_per_token * context + recurrent}
# lesson 26: end (decode_state_bytes)


def cost_summary(config, contexts=(1024, 32768, 262144), dtype=np.float32) -> dict:
    """Parameters and decode memory at a few context lengths, in one dict (for tables and `litetorch presets`)."""
    out = dict(parameter_counts(config))
    out["weight_bytes"] = out["total"] * np.dtype(dtype).itemsize
    for n in contexts:
        out[f"decode_bytes@{n}"] = decode_state_bytes(config, n, dtype=dtype)["total"]
    return out


__all__ = ["parameter_counts", "decode_state_bytes", "cost_summary", "attention_parameters", "deltanet_parameters",
           "mlp_parameters"]
