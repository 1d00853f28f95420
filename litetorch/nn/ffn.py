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

from .. import ops
from ..tensor import Tensor
from . import functional as F
from .activation import Dropout
from .linear import Linear
from .module import Module
from ..errors import ConfigError


# lesson 06: begin
class SwiGLU(Module):
    """HF LlamaMLP: x [..., C] -> down_proj(silu(gate_proj(x)) * up_proj(x)) [..., C].

    `gate_up_proj` is one Linear whose output is [gate | up] side by side (Phi-3's name): both
    projections of the same x in one matmul. HF checkpoints keep `gate_proj` and `up_proj` apart;
    `load_state_dict` stacks their rows and `state_dict(split_fused=True)` splits them again.
    """

    def __init__(self, d_model: int, hidden: int, bias: bool = False):
        super().__init__()
        self.d_model, self.hidden = d_model, hidden
        self.gate_up_proj = Linear(d_model, 2 * hidden, bias=bias)  # [gate | up] rows
        self.down_proj = Linear(hidden, d_model, bias=bias)

    def fused_parts(self) -> dict:
        return {"gate_up_proj": [("gate_proj", self.hidden), ("up_proj", self.hidden)]}

    # lesson 06: begin (SwiGLU.forward) exercise
    def forward(self, x) -> Tensor:
        gate, up = ops.split(self.gate_up_proj(x), [self.hidden, self.hidden], dim=-1)  # [..., hidden] each
        gate = F.silu(gate)  # in (-0.28, inf): a soft switch per hidden unit
        return self.down_proj(gate * up)  # [..., hidden] -> [..., C]
    # lesson 06: end (SwiGLU.forward) exercise
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
            raise ConfigError(f"activation must be one of {self.ACTIVATIONS}, got {activation!r}")
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
