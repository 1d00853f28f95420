"""A small GPT, the classroom model of lesson 17, in data order.

    idx [B, T] -> wte (+ wpe or the sinusoidal table) -> dropout -> n_layer x DecoderBlock
               -> ln_f -> lm_head -> logits [B, T, V]  (-> cross-entropy with targets [B, T])

Everything a GPT is made of was built in earlier lessons (embedding, attention, MLP, norms,
positions, the KV cache); this file only stacks them. The options cover the history:

    GPT-2 (2019)      positions="learned", norm="layer", prenorm=True,  mlp="gelu_tanh", tie_weights=True
    2017 Transformer  positions="sinusoidal", norm="layer", prenorm=False, mlp="relu"
    Llama-style       positions="rope", norm="rms", prenorm=True, mlp="swiglu", bias=False

Parameter names: `wte`, `wpe` (learned positions only), `blocks.N.*` (DecoderBlock's names:
`self_attn.q_proj`, `mlp.fc1`, `input_layernorm` or `norm1`, ...), `ln_f`, `lm_head`.
tests/reference/torch_gpt.py is a PyTorch twin with the same names, so `load_state_dict` works
both ways.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import checks
from ..errors import ModelFormatError, ShapeError
from ..nn import functional as F
from ..nn.activation import Dropout
from ..nn.block import DecoderBlock
from ..nn.embedding import Embedding
from ..nn.kv_cache import LayerCaches, make_caches
from ..nn.linear import Linear
from ..nn.module import ModuleList
from ..nn.norm import LayerNorm, RMSNorm
from ..nn.positional import SinusoidalPositionalEncoding
from ..nn.rope import RotaryEmbedding
from ..random import _gen
from ..tensor import Tensor
from .base import CausalLM


@dataclass
class GPTConfig:
    vocab_size: int = 43
    block_size: int = 128  # the longest sequence the model sees (its context)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 96  # C
    dropout: float = 0.0
    bias: bool = True  # biases in the attention and MLP projections
    positions: str = "learned"  # "learned" | "sinusoidal" | "rope"
    norm: str = "layer"  # "layer" | "rms"
    prenorm: bool = True
    mlp: str = "gelu_tanh"  # "gelu" | "gelu_tanh" | "relu" | "swiglu"
    tie_weights: bool = True  # lm_head.weight is wte.weight

    CHOICES = {"positions": ("learned", "sinusoidal", "rope"), "norm": ("layer", "rms"),
               "mlp": ("gelu", "gelu_tanh", "relu", "swiglu")}

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            checks.positive_int(f"GPTConfig.{name}", getattr(self, name))
        for name, allowed in self.CHOICES.items():
            checks.choice(f"GPTConfig.{name}", getattr(self, name), allowed)
        for name in ("bias", "prenorm", "tie_weights"):
            checks.boolean(f"GPTConfig.{name}", getattr(self, name))
        if self.n_embd % self.n_head:
            raise ShapeError(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        if self.positions == "rope" and (self.n_embd // self.n_head) % 2:
            raise ShapeError(f"RoPE needs an even head dim, got n_embd/n_head = {self.n_embd // self.n_head}")
        checks.number("GPTConfig.dropout", self.dropout, lo=0.0, hi=1.0, hi_open=True)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ModelFormatError(f"GPTConfig has no field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


class GPT(CausalLM):
    """`GPT(config)(idx, targets) -> (logits [B, T, V], loss or None)`.

    Weights start as in GPT-2/nanoGPT: every matrix and embedding ~ N(0, 0.02), biases 0, norms 1,
    and the two projections that write into the residual stream (`o_proj`, `fc2`/`down_proj`)
    ~ N(0, 0.02 / sqrt(2 n_layer)), so the stream's variance does not grow with depth. They are
    drawn from `generator` (or the global one, see `litetorch.manual_seed`).
    """

    def __init__(self, config: GPTConfig, generator=None):
        super().__init__()
        c = self.config = config
        self.wte = Embedding(c.vocab_size, c.n_embd)  # token -> vector
        rope = None
        if c.positions == "learned":
            self.wpe = Embedding(c.block_size, c.n_embd)  # position -> vector, learned
        elif c.positions == "sinusoidal":
            self.wpe = SinusoidalPositionalEncoding(c.n_embd, max_len=c.block_size)  # fixed, no parameters
        else:  # one rotary table shared by every layer (no parameters either)
            rope = RotaryEmbedding(c.head_dim, max_position_embeddings=c.block_size)
        self.drop = Dropout(c.dropout)
        self.blocks = ModuleList(
            DecoderBlock(c.n_embd, c.n_head, norm=c.norm, prenorm=c.prenorm, mlp=c.mlp, rope=rope,
                         dropout=c.dropout, bias=c.bias)
            for _ in range(c.n_layer))
        self.ln_f = LayerNorm(c.n_embd) if c.norm == "layer" else RMSNorm(c.n_embd, eps=1e-5)
        self.lm_head = Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            # One matrix, two jobs: row v of wte embeds token v, and scores token v at the output.
            self.lm_head.weight = self.wte.weight
        self.init_weights(generator)

    def init_weights(self, generator=None) -> None:
        """GPT-2's initialization (see the class docstring), in named_parameters order."""
        rng = _gen(generator)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if "norm" in name or name.startswith("ln_f"):
                continue  # LayerNorm/RMSNorm: weight 1, bias 0 (as constructed)
            if name.endswith("bias"):
                p.data = np.zeros_like(p.data)
            else:
                std = residual_std if name.endswith(("o_proj.weight", "fc2.weight", "down_proj.weight")) else 0.02
                p.data = (rng.standard_normal(p.shape) * std).astype(p.dtype)

    # lesson 17: begin (forward)
    def forward(self, idx, targets=None, cache: LayerCaches | None = None):
        """idx [B, T] token ids -> (logits [B, T, V], mean cross-entropy against targets [B, T] or None).

        With `cache`, the T tokens sit after the len(cache) tokens already cached (decoding).
        """
        idx = self._check_ids(idx, cache)
        B, T = idx.shape
        past = cache.length if cache is not None else 0

        # Embeddings: what each token is, plus where it is
        x = self.wte(idx)  # [B, T] -> [B, T, C]
        if self.config.positions == "learned":
            x = x + self.wpe(np.arange(past, past + T))  # [B, T, C] + [T, C]
        elif self.config.positions == "sinusoidal":
            x = self.wpe(x, offset=past)  # [B, T, C] + PE[past : past + T]
        x = self.drop(x)  # ("rope" rotates q and k inside attention instead)

        # The blocks: each reads the residual stream and adds its update to it
        for i, block in enumerate(self.blocks):
            x = block(x, cache=cache[i] if cache is not None else None)  # [B, T, C]

        # Scores for the next token at every position
        x = self.ln_f(x)  # [B, T, C]
        logits = self.lm_head(x)  # [B, T, C] -> [B, T, V]
        if targets is None:
            return logits, None
        targets = self._check_targets(targets, (B, T))
        V = self.config.vocab_size
        loss = F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T))  # mean over B*T predictions
        return logits, loss
    # lesson 17: end (forward)

    # ---- input checks (checks.py's, shared with Llama and LoopLM; before anything runs) -------
    def _check_ids(self, idx, cache) -> np.ndarray:
        c = self.config
        ids = checks.input_ids(idx, c.vocab_size, "idx")  # [B, T] integer ids in 0..V-1
        checks.context(cache.length if cache is not None else 0, ids.shape[1], c.block_size)
        if cache is not None:
            checks.layer_caches(cache, c.n_layer, c.n_head, c.head_dim, self.wte.weight.dtype, *ids.shape)
        return ids

    def _check_targets(self, targets, shape) -> np.ndarray:
        t = checks.token_ids(targets, self.config.vocab_size, "targets")
        if t.shape != shape:
            raise ShapeError(f"targets must have the shape of idx {shape}, got {t.shape}")
        return t

    # ---- what the generation loop uses (models/base.py; `lt.generate(model, tok, prompt)`) --------
    @property
    def context_length(self) -> int:
        return self.config.block_size

    def new_cache(self, batch_size: int = 1, max_len: int | None = None) -> LayerCaches:
        """Preallocated K/V buffers for every block: [B, H, max_len, Dh] each (default: block_size)."""
        c = self.config
        batch_size = checks.positive_int("batch_size", batch_size)
        max_len = c.block_size if max_len is None else min(checks.positive_int("max_len", max_len), c.block_size)
        return make_caches(c.n_layer, batch_size, c.n_head, max_len, c.head_dim, self.wte.weight.dtype)

    def logits(self, ids, cache=None, logits_to_keep: int = 0) -> Tensor:
        """forward without targets: ids [B, T] -> logits [B, T, V] (or the last logits_to_keep positions)."""
        k = checks.logits_to_keep(logits_to_keep, self._check_ids(ids, cache).shape[1])  # before anything runs
        logits, _ = self(ids, cache=cache)
        return logits[:, -k:] if k else logits

    def extra_repr(self):
        c = self.config
        return (f"{self.num_parameters():,} parameters, {c.n_layer} layers, C={c.n_embd}, H={c.n_head}, "
                f"T={c.block_size}, V={c.vocab_size}, {c.positions} positions")
