"""Llama: the decoder-only transformer behind TinyLlama, SmolLM2, Llama-2/3 — in data order.

    ids [B, T] -> embed_tokens -> 30 x DecoderBlock (RMSNorm, attention+RoPE, RMSNorm, SwiGLU)
               -> norm -> lm_head -> logits [B, T, V]

Parameter names are Hugging Face's (`model.layers.3.self_attn.q_proj.weight`), so an HF
safetensors checkpoint loads as it is; GGUF names are mapped in `litetorch/models/loading.py`.
"""
from __future__ import annotations

import numpy as np

from .. import checks
from ..nn.block import DecoderBlock
from ..nn.embedding import Embedding
from ..nn.kv_cache import LayerCaches, make_caches
from ..nn.linear import Linear
from ..nn.module import Module, ModuleList
from ..nn.norm import RMSNorm
from ..nn.rope import RotaryEmbedding
from ..tensor import Tensor
from .base import CausalLM
from .config import LlamaConfig


class LlamaModel(Module):
    """The trunk: token embedding, the decoder blocks, the final norm (HF's `model.*`).
    input_ids [B, T] -> hidden states [B, T, C] after the final norm."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        c = config
        self.embed_tokens = Embedding(c.vocab_size, c.hidden_size)
        # One rotary table shared by every layer (it has no parameters, only cos/sin).
        rope = RotaryEmbedding(c.head_dim, base=c.rope_theta, max_position_embeddings=c.max_position_embeddings)
        self.layers = ModuleList(
            DecoderBlock(c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
                         norm="rms", prenorm=True, mlp="swiglu", eps=c.rms_norm_eps, rope=rope,
                         bias=c.attention_bias, head_dim=c.head_dim)
            for _ in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, eps=c.rms_norm_eps)

    # lesson 11: begin (trunk)
    def forward(self, input_ids, cache: LayerCaches | None = None) -> Tensor:
        x = self.embed_tokens(input_ids)  # [B, T] -> [B, T, C]
        for i, layer in enumerate(self.layers):  # each block reads and writes the residual stream
            x = layer(x, cache=cache[i] if cache is not None else None)  # [B, T, C]
        return self.norm(x)  # [B, T, C]
    # lesson 11: end (trunk)


class Llama(CausalLM):
    """`Llama(config)(input_ids) -> logits`.   input_ids [B, T] ints -> logits [B, T, V].

    With `cache=` (from `new_cache()`), the tokens are appended after those already cached:
    prefill passes the prompt once, then each decode step passes one token.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        # lesson 11: begin (tied embeddings)
        if config.tie_word_embeddings:
            # Tied embeddings: the output projection *is* the embedding table (one Parameter, two
            # names). logits = h @ E^T scores h against every token's input vector; small models
            # save V x C parameters this way (about a fifth of SmolLM2-135M).
            self.lm_head.weight = self.model.embed_tokens.weight
        # lesson 11: end (tied embeddings)

    # lesson 11: begin (forward)
    def forward(self, input_ids, cache: LayerCaches | None = None, logits_to_keep: int = 0) -> Tensor:
        """input_ids [B, T] -> logits [B, T, V] (or [B, logits_to_keep, V]: only the last positions,
        which is all that generation needs — it skips most of the lm_head's work on a long prompt)."""
        ids = self._check_input(input_ids, cache, logits_to_keep)
        h = self.model(ids, cache)  # [B, T, C]: embed, the blocks, the final norm
        if logits_to_keep:
            h = h[:, -logits_to_keep:]  # [B, T, C] -> [B, k, C]
        return self.lm_head(h)  # [B, T, C] -> [B, T, V]
    # lesson 11: end (forward)

    def _check_input(self, input_ids, cache, logits_to_keep=0) -> np.ndarray:
        """Validate ids (and the cache) before anything runs, so a bad call leaves the cache untouched.
        The checks are checks.py's, shared with GPT and LoopLM: the same mistake, the same error."""
        c = self.config
        ids = checks.input_ids(input_ids, c.vocab_size)  # [B, T] integer ids in 0..V-1
        B, T = ids.shape
        checks.logits_to_keep(logits_to_keep, T)
        checks.context(cache.length if cache is not None else 0, T, c.max_position_embeddings)
        if cache is not None:
            checks.layer_caches(cache, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, self.dtype, B, T)
        return ids

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the weights (and so of every activation): float32 unless loaded/cast otherwise."""
        return self.model.embed_tokens.weight.dtype

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> LayerCaches:
        """Preallocated KV caches for every layer: [B, Hkv, max_len, Dh] each (default: full context)."""
        c = self.config
        batch_size = checks.positive_int("batch_size", batch_size)
        max_len = c.max_position_embeddings if max_len is None else min(checks.positive_int("max_len", max_len),
                                                                         c.max_position_embeddings)
        return make_caches(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_len, c.head_dim, self.dtype)
