"""`Embedding`: a learnable table; row i is the vector of token i."""
import numpy as np

from . import init
from ..tensor import Parameter, get_default_dtype
from . import functional as F
from .module import Module
from ..errors import ConfigError


class Embedding(Module):
    """ids [...] (ints in 0..num_embeddings-1) -> [..., embedding_dim].

    Initialization as torch's default: every entry ~ N(0, 1) (the row `padding_idx`, if given,
    starts at zero and never receives a gradient). Drawn from `generator` (or the global one).
    The backward of a lookup is a scatter-add: a token that appears k times in the batch
    gives its row the sum of k gradients.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None, dtype=None,
                 generator=None):
        super().__init__()
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ConfigError(f"padding_idx {padding_idx} must be within [-{num_embeddings}, {num_embeddings})")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = None if padding_idx is None else padding_idx % num_embeddings
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        w = init.normal((num_embeddings, embedding_dim), dtype, generator=generator)  # [V, C]
        if self.padding_idx is not None:
            w[self.padding_idx] = 0.0
        self.weight = Parameter(w)

    def forward(self, ids):
        return F.embedding(ids, self.weight, self.padding_idx)

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
