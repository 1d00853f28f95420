"""Activation and dropout modules: thin wrappers over `functional` so they can sit in a Sequential."""
from . import functional as F
from .module import Module
from ..errors import ConfigError


class Identity(Module):
    """Returns its input (a placeholder, e.g. for an optional norm)."""

    def forward(self, x):
        return x


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class GELU(Module):
    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)


class Softmax(Module):
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return F.softmax(x, dim=self.dim)


class Dropout(Module):
    """Training mode: zero each element with probability p and scale survivors by 1/(1-p), so the
    expected value of every element is unchanged. Eval mode (`model.eval()`): identity.

    The mask comes from `generator` (or the global one, see `litetorch.manual_seed`), so the
    same seed gives the same mask; it is *not* torch's mask (different random streams).
    """

    def __init__(self, p: float = 0.5, generator=None):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ConfigError(f"dropout probability must be in [0, 1], got {p}")
        self.p, self.generator = p, generator

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.generator)

    def extra_repr(self):
        return f"p={self.p}"
