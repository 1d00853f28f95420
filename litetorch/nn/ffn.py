"""Feed-forward networks: the per-token MLP of a transformer block, lesson 06.

Attention moves information *between* tokens; the feed-forward network then transforms each
token on its own: widen to `hidden`, apply a nonlinearity, project back to C.

    MLP (2017, GPT-2):   fc2(act(fc1(x)))                       act = GELU or ReLU
    SwiGLU (Llama):      down(silu(gate(x)) * up(x))             a *gated* MLP

In SwiGLU one projection (`gate`) decides, per hidden unit and per token, how much of the other
(`up`) passes through. Three matrices instead of two, so Llama uses hidden ~ 8/3 C instead of 4 C
to keep the parameter count.
"""
from __future__ import annotations

from ..tensor import Tensor
from . import functional as F
from .activation import Dropout
from .fused import FusedLinear
from .linear import Linear
from .module import Module


# lesson 06: begin
class SwiGLU(Module):
    """HF LlamaMLP: x [..., C] -> down_proj(silu(gate_proj(x)) * up_proj(x)) [..., C]."""

    def __init__(self, d_model: int, hidden: int, bias: bool = False):
        super().__init__()
        self.d_model, self.hidden = d_model, hidden
        self.gate_proj = Linear(d_model, hidden, bias=bias)
        self.up_proj = Linear(d_model, hidden, bias=bias)
        self.down_proj = Linear(hidden, d_model, bias=bias)
        object.__setattr__(self, "_gate_up", FusedLinear(self.gate_proj, self.up_proj))  # not a child

    def forward(self, x) -> Tensor:
        if self._gate_up.usable():  # inference: gate and up in one matmul (see fused.py)
            gate, up = self._gate_up(x)
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)  # [..., C] -> [..., hidden] each
        gate = F.silu(gate)  # in (-0.28, inf): a soft switch per hidden unit
        return self.down_proj(gate * up)  # [..., hidden] -> [..., C]
# lesson 06: end

    def extra_repr(self):
        return f"d_model={self.d_model}, hidden={self.hidden}"


class MLP(Module):
    """Classic two-layer MLP: x [..., C] -> fc2(dropout(act(fc1(x)))) [..., C].

    activation: "gelu" (erf form), "gelu_tanh" (GPT-2's tanh approximation) or "relu".
    `approximate="tanh"` is accepted too, as in torch's GELU.
    """

    ACTIVATIONS = ("gelu", "gelu_tanh", "relu")

    def __init__(self, d_model: int, hidden: int, activation: str = "gelu", bias: bool = True,
                 dropout: float = 0.0, approximate: str = "none"):
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"activation must be one of {self.ACTIVATIONS}, got {activation!r}")
        if activation == "gelu" and approximate == "tanh":
            activation = "gelu_tanh"
        self.d_model, self.hidden, self.activation = d_model, hidden, activation
        self.fc1 = Linear(d_model, hidden, bias=bias)
        self.fc2 = Linear(hidden, d_model, bias=bias)
        self.dropout = Dropout(dropout)

    def forward(self, x) -> Tensor:
        h = self.fc1(x)  # [..., C] -> [..., hidden]
        if self.activation == "relu":
            h = F.relu(h)
        else:
            h = F.gelu(h, approximate="tanh" if self.activation == "gelu_tanh" else "none")
        return self.fc2(self.dropout(h))  # [..., hidden] -> [..., C]

    def extra_repr(self):
        return f"d_model={self.d_model}, hidden={self.hidden}, activation={self.activation!r}"
