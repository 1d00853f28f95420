"""Qwen3-MoE and Qwen3-Next: decoder-only transformers with sparse MoE MLPs; Qwen3-Next is a *hybrid*. Lesson 26.

    ids [B, T] -> embed_tokens -> L x Qwen3DecoderLayer -> norm -> lm_head -> logits [B, T, V]

    Qwen3DecoderLayer (pre-norm):   x = x + mixer(norm(x));   x = x + mlp(norm(x))
        mixer: "full_attention"   -> Qwen3Attention      keys/values of every past token (a KV cache)
               "linear_attention" -> GatedDeltaNet       a fixed-size state (DeltaNetCache)
        mlp:   SparseMoeBlock (k of E experts; Qwen3-Next adds a shared expert), or a dense SwiGLU

Qwen3-MoE is attention everywhere. Qwen3-Next-80B-A3B stacks 12 x (3 DeltaNet layers, 1 gated
attention layer) with a 512-expert MoE in all 48 layers: only 12 layers keep a KV cache, so its
decode memory grows a quarter as fast as an all-attention model's, and only ~3B of its 80B
parameters work on any one token.

Parameter names are HF's (`model.layers.3.linear_attn.in_proj_qkvz.weight`, `...self_attn.q_proj`,
`...mlp.experts.gate_up_proj`), so an HF state_dict loads as it is (q/k/v and gate/up rows stack into
the fused projections; per-expert checkpoints are stacked by the loader, `models/qwen3_io.py`).
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..errors import CacheError, ConfigError, ContextLengthError, DTypeError, ShapeError
from ..nn.embedding import Embedding
from ..nn.ffn import SwiGLU
from ..nn.gated_deltanet import DeltaNetCache, GatedDeltaNet
from ..nn.hybrid_cache import HybridCache
from ..nn.kv_cache import KVCache
from ..nn.linear import Linear
from ..nn.module import Module, ModuleList
from ..nn.moe import SparseMoeBlock
from ..nn.norm import RMSNorm, ZeroCenteredRMSNorm
from ..nn.qwen3_attention import Qwen3Attention
from ..nn.rope import RotaryEmbedding
from ..tensor import Tensor
from .base import CausalLM
from .qwen3_config import Qwen3MoeConfig, Qwen3NextConfig


class Qwen3DecoderLayer(Module):
    """x [B, T, C] -> (x [B, T, C], router logits [B*T, E] or None for a dense MLP).

    HF `Qwen3MoeDecoderLayer` / `Qwen3NextDecoderLayer`: the token mixer is `self_attn` or `linear_attn`
    (by `config.layer_types[i]`), the MLP a SparseMoeBlock or a SwiGLU (by `config.is_moe_layer(i)`).
    """

    def __init__(self, config, layer_idx: int, rope: RotaryEmbedding):
        super().__init__()
        c = config
        C, eps = c.hidden_size, c.rms_norm_eps
        Norm = ZeroCenteredRMSNorm if c.zero_centered_norms else RMSNorm  # Qwen3-Next scales by 1 + w
        self.layer_type = c.layer_types[layer_idx]
        self.input_layernorm = Norm(C, eps=eps)
        if self.layer_type == "linear_attention":
            self.linear_attn = GatedDeltaNet(C, c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim,
                                             c.linear_value_head_dim, c.linear_conv_kernel_dim, eps=eps)
        else:
            self.self_attn = Qwen3Attention(C, c.num_attention_heads, c.num_key_value_heads, c.head_dim, rope, eps=eps,
                                            qk_norm="zero_centered" if c.zero_centered_norms else "rms",
                                            output_gate=c.attention_output_gate, bias=c.attention_bias)
        self.post_attention_layernorm = Norm(C, eps=eps)
        if c.is_moe_layer(layer_idx):
            self.mlp = SparseMoeBlock(C, c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size,
                                      norm_topk_prob=c.norm_topk_prob,
                                      shared_expert_hidden=c.shared_expert_intermediate_size)
        else:
            self.mlp = SwiGLU(C, c.intermediate_size)

    # lesson 26: begin (Qwen3DecoderLayer.forward)
    def forward(self, x, cache: KVCache | DeltaNetCache | None = None):
        # Token mixer: softmax attention over a KV cache, or the gated delta rule over a fixed-size state
        mixer = self.linear_attn if self.layer_type == "linear_attention" else self.self_attn
        x = x + mixer(self.input_layernorm(x), cache=cache)  # [B, T, C]
        # MLP: k experts of E per token (their router logits feed the load-balancing loss), or a dense SwiGLU
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, SparseMoeBlock):
            h, router_logits = self.mlp(h, output_router_logits=True)  # [B, T, C], [B*T, E]
        else:
            h, router_logits = self.mlp(h), None
        return x + h, router_logits
    # lesson 26: end (Qwen3DecoderLayer.forward)

    def extra_repr(self):
        return f"{self.layer_type}, {'moe' if isinstance(self.mlp, SparseMoeBlock) else 'dense'}"


class Qwen3Model(Module):
    """The trunk (HF's `model.*`): embedding, the decoder layers, the final norm.
    ids [B, T] -> (hidden states [B, T, C], router logits of every MoE layer)."""

    def __init__(self, config):
        super().__init__()
        c = config
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        # One rotary table for every attention layer (no parameters); Qwen3-Next rotates 64 of 256 dims
        rope = RotaryEmbedding(c.head_dim, base=c.rope_theta, max_position_embeddings=c.max_position_embeddings,
                               rotary_dim=c.rotary_dim)
        self.layers = ModuleList(Qwen3DecoderLayer(c, i, rope) for i in range(c.num_hidden_layers))
        Norm = ZeroCenteredRMSNorm if c.zero_centered_norms else RMSNorm
        self.norm = Norm(c.hidden_size, eps=c.rms_norm_eps)

    # lesson 26: begin (trunk)
    def forward(self, input_ids, cache: HybridCache | None = None):
        x = self.embed_tokens(input_ids)  # [B, T] -> [B, T, C]
        router_logits = []
        for i, layer in enumerate(self.layers):  # attention and DeltaNet layers alike read and write the stream
            x, logits = layer(x, cache=cache[i] if cache is not None else None)  # [B, T, C]
            if logits is not None:
                router_logits.append(logits)
        return self.norm(x), router_logits  # [B, T, C], a list of [B*T, E]
    # lesson 26: end (trunk)


class Qwen3CausalLM(CausalLM):
    """`model(input_ids) -> logits [B, T, V]`; the shared body of `Qwen3Moe` and `Qwen3Next`.

    With `cache=` (from `new_cache()`), the tokens continue the sequence the cache holds. With
    `output_router_logits=True` it returns (logits, router logits of every MoE layer), for
    `nn.load_balancing_loss`.
    """

    config_class = None
    # Chunked prefill is exact: attention chunks as in Llama (its causal mask is aligned bottom-right),
    # the DeltaNet conv continues from its cached inputs, and the chunked gated delta rule continues from
    # the cached state exactly as the recurrence does (tests/test_qwen3.py proves all three agree).
    chunked_prefill_is_exact = True

    def __init__(self, config):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:  # one Parameter, two names (lesson 11)
            self.lm_head.weight = self.model.embed_tokens.weight

    # lesson 26: begin (forward)
    def forward(self, input_ids, cache: HybridCache | None = None, logits_to_keep: int = 0,
                output_router_logits: bool = False):
        """input_ids [B, T] -> logits [B, T, V] (or the last logits_to_keep positions)."""
        ids = self._check_input(input_ids, cache, logits_to_keep)
        h, router_logits = self.model(ids, cache)  # [B, T, C]: embed, the layers, the final norm
        if logits_to_keep:
            h = h[:, -logits_to_keep:]  # [B, T, C] -> [B, k, C]
        logits = self.lm_head(h)  # [B, T, C] -> [B, T, V]
        return (logits, router_logits) if output_router_logits else logits
    # lesson 26: end (forward)

    # ---- the generation contract (models/base.py) ---------------------------------------------------
    @property
    def dtype(self) -> np.dtype:
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> HybridCache:
        """Per layer, what its mixer needs: a KVCache [B, Hkv, max_len, Dh] for attention, a DeltaNetCache
        (conv inputs [B, conv_dim, K-1] and state [B, Hv, Dk, Dv]) for Gated DeltaNet."""
        c = self.config
        batch_size = checks.positive_int("batch_size", batch_size)
        max_len = c.max_position_embeddings if max_len is None else \
            min(checks.positive_int("max_len", max_len), c.max_position_embeddings)
        caches = []
        for layer in self.model.layers:
            if layer.layer_type == "linear_attention":
                caches.append(layer.linear_attn.make_cache(batch_size, self.dtype))
            else:
                caches.append(KVCache(batch_size, c.num_key_value_heads, max_len, c.head_dim, self.dtype))
        return HybridCache(caches, max_len)

    def _check_input(self, input_ids, cache, logits_to_keep=0) -> np.ndarray:
        """Validate ids and the cache before anything runs, so a bad call leaves the cache untouched."""
        checks.integer("logits_to_keep", logits_to_keep, lo=0)
        ids = np.asarray(input_ids.data if isinstance(input_ids, Tensor) else input_ids)
        if ids.ndim != 2 or ids.size == 0:
            raise ShapeError(f"input_ids must be a non-empty [B, T] array of token ids, got shape {ids.shape}"
                             + (" (wrap one sequence as [ids])" if ids.ndim == 1 else ""))
        if ids.dtype.kind not in "iu":
            raise DTypeError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        checks.token_ids(ids, self.config.vocab_size, "input_ids")
        B, T = ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.context_length:
            raise ContextLengthError(f"{past} cached + {T} new tokens = {past + T} exceeds "
                                     f"the model's context length of {self.context_length}")
        if cache is None:
            return ids
        if not isinstance(cache, HybridCache) or len(cache) != len(self.model.layers):
            raise CacheError(f"cache must be this model's new_cache() (a HybridCache of {len(self.model.layers)} "
                             f"layers), got {cache!r:.120}")
        for i, (layer, c) in enumerate(zip(self.model.layers, cache)):
            want = DeltaNetCache if layer.layer_type == "linear_attention" else KVCache
            if not isinstance(c, want):
                raise CacheError(f"layer {i} is {layer.layer_type} and needs a {want.__name__}, got {type(c).__name__}")
            b = c.conv_shape[0] if isinstance(c, DeltaNetCache) else c.shape[0]
            if b != B or c.dtype != self.dtype:
                raise CacheError(f"layer {i}: the cache holds batch {b} in {c.dtype}; the input is batch {B} "
                                 f"and the model runs in {self.dtype}")
        if past + T > cache.max_len:
            raise CacheError(f"{past} cached + {T} new tokens exceed the cache's capacity of {cache.max_len}; "
                             f"grow it (cache.grow) or make a larger one with new_cache(max_len=...)")
        return ids


class Qwen3Moe(Qwen3CausalLM):
    """Qwen3-MoE (`Qwen3MoeConfig`): attention in every layer, sparse MoE MLPs."""

    config_class = Qwen3MoeConfig


class Qwen3Next(Qwen3CausalLM):
    """Qwen3-Next (`Qwen3NextConfig`): Gated DeltaNet and gated attention layers, MoE with a shared expert."""

    config_class = Qwen3NextConfig
