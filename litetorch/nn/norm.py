"""Normalization layers: RMSNorm (Llama), LayerNorm (classic transformer), RMSNormGated (Qwen3-Next). Lesson 05."""
import numpy as np

from ..tensor import Parameter, get_default_dtype
from . import functional as F
from .module import Module


class RMSNorm(Module):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dims (weight initialised to ones).

    Same numbers as `torch.nn.RMSNorm` and HF Llama's `LlamaRMSNorm` (normalize, cast back to the
    input dtype, then multiply by the weight). `eps=None` means torch's default, the dtype's
    machine epsilon; Llama models pass 1e-5 or 1e-6.
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype)) if elementwise_affine else None

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class LayerNorm(Module):
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dims, with the biased variance
    (divide by n) as torch does. Initialization as torch: weight ones, bias zeros."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype=dtype)) if elementwise_affine and bias else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class RMSNormGated(Module):
    """y = RMSNorm(x) * silu(gate) over the last dim: Qwen3-Next's norm after the gated delta rule.

    x, gate [..., D] -> [..., D]. The same numbers as HF's `Qwen3NextRMSNormGated` (normalize,
    scale by the weight, then multiply by SiLU of the gate; eps 1e-6 by default). The gate z is a
    second projection of the layer's input, so each channel of each head can be switched off
    per token after normalization.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, dtype=None):
        super().__init__()
        self.normalized_shape = (hidden_size,)
        self.eps = eps
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.weight = Parameter(np.ones(self.normalized_shape, dtype=dtype))

    def forward(self, x, gate):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps) * F.silu(gate)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class ZeroCenteredRMSNorm(Module):
    """Qwen3-Next's RMSNorm (HF `Qwen3NextRMSNorm`, also Gemma's): y = x / sqrt(mean(x^2) + eps) * (1 + weight).

    The scale is stored as an offset from 1 and starts at 0 ("zero-centred" refers to the weight:
    nothing is subtracted from x, unlike LayerNorm). Weight decay then pulls the scale towards 1
    instead of towards 0, which the Qwen3-Next model card counts among its training-stability fixes.
    Order as HF: normalize and scale in float32 (float16 inputs are upcast), then cast back to x's
    dtype; Llama's RMSNorm casts back *before* scaling. Float64 stays float64 (HF's module computes a
    float64 input in float32).
    """

    def __init__(self, normalized_shape, eps: float = 1e-6, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.eps = eps
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.weight = Parameter(np.zeros(self.normalized_shape, dtype=dtype))  # the scale is 1 + weight

    def forward(self, x):
        compute = np.promote_types(x.dtype, np.float32)
        n = F.rms_norm(x.to(compute), self.normalized_shape, None, self.eps)  # [..., D]: unit root-mean-square
        return (n * (self.weight.to(compute) + 1.0)).to(x.dtype)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"
