"""The decoder block: attention, then a feed-forward network, each wrapped in a residual, lesson 08.

Two placements of the normalization, both here because both matter historically:

    pre-norm (GPT-2, Llama):   x = x + Attn(Norm(x));   x = x + MLP(Norm(x))
    post-norm (2017, BERT):    x = Norm(x + Attn(x));   x = Norm(x + MLP(x))

Pre-norm leaves the residual stream x untouched (each sublayer only *adds* to it), so gradients
flow straight from the loss to the first layer and deep stacks train without warm-up tricks;
post-norm normalizes the stream itself after every sublayer.

Parameter names:
- pre-norm uses HF Llama's (`input_layernorm`, `self_attn`, `post_attention_layernorm`, `mlp`),
  so `model.layers.N.*` weights load as they are;
- post-norm uses torch.nn.TransformerEncoderLayer's names for its norms (`norm1` after attention,
  `norm2` after the MLP), with `self_attn` and `mlp` as above.
"""
from __future__ import annotations

from ..tensor import Tensor
from .activation import Dropout
from .attention import MultiHeadAttention
from .ffn import MLP, SwiGLU
from .kv_cache import KVCache
from .module import Module
from .norm import LayerNorm, RMSNorm
from ..errors import ConfigError


def default_hidden(d_model: int, mlp: str) -> int:
    """4 C for GELU/ReLU; for SwiGLU (three matrices) 2/3 of that, rounded up to a multiple of 8."""
    if mlp == "swiglu":
        return -(-(8 * d_model // 3) // 8) * 8
    return 4 * d_model


class DecoderBlock(Module):
    """x [B, T, C] -> [B, T, C].

    Llama:   DecoderBlock(C, H, n_kv_heads, hidden, rope=RotaryEmbedding(Dh, base))   (the defaults:
             norm="rms", prenorm=True, mlp="swiglu", bias=False)
    GPT-2:   DecoderBlock(C, H, norm="layer", mlp="gelu_tanh", bias=True)
    classic: DecoderBlock(C, H, norm="layer", prenorm=False, mlp="relu", bias=True, dropout=0.1)

    `bias` applies to the attention and MLP projections; `dropout` to the attention weights, the
    MLP's hidden layer and each sublayer's output before it is added back (torch's placement).
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int | None = None, hidden: int | None = None,
                 norm: str = "rms", prenorm: bool = True, mlp: str = "swiglu", eps: float = 1e-5, rope=None,
                 dropout: float = 0.0, bias: bool = False, head_dim: int | None = None):
        super().__init__()
        if norm not in ("rms", "layer"):
            raise ConfigError(f"norm must be 'rms' or 'layer', got {norm!r}")
        if mlp not in ("swiglu",) + MLP.ACTIVATIONS:
            raise ConfigError(f"mlp must be 'swiglu', 'gelu', 'gelu_tanh' or 'relu', got {mlp!r}")
        hidden = default_hidden(d_model, mlp) if hidden is None else hidden
        self.prenorm = prenorm

        def make_norm():
            return RMSNorm(d_model, eps=eps) if norm == "rms" else LayerNorm(d_model, eps=eps)

        self.self_attn = MultiHeadAttention(d_model, n_heads, n_kv_heads, head_dim=head_dim, bias=bias,
                                            rope=rope, dropout=dropout)
        self.mlp = SwiGLU(d_model, hidden, bias=bias) if mlp == "swiglu" else \
            MLP(d_model, hidden, activation=mlp, bias=bias, dropout=dropout)
        if prenorm:
            self.input_layernorm = make_norm()
            self.post_attention_layernorm = make_norm()
        else:
            self.norm1 = make_norm()
            self.norm2 = make_norm()
        self.dropout = Dropout(dropout)

    # lesson 08: begin exercise
    def forward(self, x, attn_mask=None, is_causal: bool = True, cache: KVCache | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]; attn_mask/is_causal/cache go to self_attn unchanged."""
        if self.prenorm:
            # Pre-norm: normalize a copy, let the sublayer compute an update, add it to the stream.
            h = self.self_attn(self.input_layernorm(x), attn_mask, is_causal, cache)  # [B, T, C]
            x = x + self.dropout(h)
            h = self.mlp(self.post_attention_layernorm(x))  # [B, T, C]
            return x + self.dropout(h)
        # Post-norm: add the sublayer's output to the stream, then normalize the sum.
        x = self.norm1(x + self.dropout(self.self_attn(x, attn_mask, is_causal, cache)))
        return self.norm2(x + self.dropout(self.mlp(x)))
    # lesson 08: end exercise

    def extra_repr(self):
        return "pre-norm" if self.prenorm else "post-norm"
