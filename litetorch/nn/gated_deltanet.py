"""`GatedDeltaNet`: Qwen3-Next's linear-attention layer, and `DeltaNetCache`, its fixed-size decode state.
Lesson 24.

Three of every four Qwen3-Next layers replace softmax attention by this layer. A token's path:

    x [B, T, C] -> in_proj_qkvz -> q, k, v (and the output gate z), per key head in HF's layout
                -> in_proj_ba   -> b, a: one step size and one decay input per value head
    q, k, v     -> depthwise causal conv over time (kernel 4) -> SiLU
    beta = sigmoid(b)                                        the delta rule's step, in (0, 1)
    g = -exp(A_log) * softplus(a + dt_bias)                  log of the decay, <= 0 (Mamba2's gate)
    o = gated_delta_rule(q, k, v, g, beta), q and k l2-normalized        (delta_rule.py)
    o = RMSNormGated(o, z) per value head -> out_proj -> [B, T, C]

No positions and no RoPE: order enters through the conv and the recurrence. The whole past is
two small arrays (`DeltaNetCache`): the last kernel-1 conv inputs and the [Hv, Dk, Dv] state,
the same size after 10 tokens and after a million. Parameter names are HF's
(`Qwen3NextGatedDeltaNet`), so `load_state_dict(hf_layer.state_dict())` works as it is.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..errors import CacheError, ConfigError, DTypeError, ShapeError
from ..ops.unary import _sigmoid
from ..random import _gen
from ..tensor import Parameter, Tensor, get_default_dtype
from . import functional as F
from . import init
from .delta_rule import gated_delta_rule
from .linear import Linear
from .module import Module
from .norm import RMSNormGated


def _positive_int(name: str, n, error=ConfigError, minimum: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < minimum:
        raise error(f"{name} must be an integer >= {minimum}, got {n!r}")
    return int(n)


# --------------------------------------------------------------------------------------------
# The decode state
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeltaNetSnapshot:
    """A saved DeltaNetCache: its length and copies of both states."""

    length: int
    conv_state: np.ndarray
    recurrent_state: np.ndarray


# lesson 24: begin (DeltaNetCache)
class DeltaNetCache:
    """Everything one GatedDeltaNet layer remembers between calls; its size does not grow with length.

    conv_state      [B, conv_dim, K - 1]   the last K - 1 conv inputs (q, k, v channels before the conv)
    recurrent_state [B, Hv, Dk, Dv]        the delta rule's memory S
    length                                 tokens seen so far

    A forward pass computes new states and then *swaps* them in (it never writes into an array in
    place), so a graph that read the old state keeps the values it read.
    """

    def __init__(self, batch_size: int, conv_dim: int, conv_kernel_size: int, n_v_heads: int,
                 head_k_dim: int, head_v_dim: int, dtype=np.float32):
        B = _positive_int("batch_size", batch_size, CacheError)
        D = _positive_int("conv_dim", conv_dim, CacheError)
        K = _positive_int("conv_kernel_size", conv_kernel_size, CacheError)
        H = _positive_int("n_v_heads", n_v_heads, CacheError)
        Dk = _positive_int("head_k_dim", head_k_dim, CacheError)
        Dv = _positive_int("head_v_dim", head_v_dim, CacheError)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind != "f":
            raise CacheError(f"a DeltaNetCache holds float states, got dtype {self.dtype}")
        self.conv_shape = (B, D, K - 1)  # [B, conv_dim, K - 1]
        self.state_shape = (B, H, Dk, Dv)  # [B, Hv, Dk, Dv]
        self.reset()

    def reset(self) -> None:
        """Forget everything: zero states (what a fresh sequence starts from), length 0."""
        self.conv_state = np.zeros(self.conv_shape, dtype=self.dtype)
        self.recurrent_state = np.zeros(self.state_shape, dtype=self.dtype)
        self.length = 0

    def __len__(self) -> int:
        return self.length

    @property
    def nbytes(self) -> int:
        """Bytes of both states: fixed, whatever the number of tokens seen."""
        return self.conv_state.nbytes + self.recurrent_state.nbytes

    def check(self, batch_size: int, dtype) -> None:
        """Raise CacheError unless this cache fits a batch of `batch_size` in `dtype` (before any work)."""
        if batch_size != self.conv_shape[0]:
            raise CacheError(f"the input has batch size {batch_size}, but this cache holds {self.conv_shape[0]}")
        if np.dtype(dtype) != self.dtype:
            raise CacheError(f"the input has dtype {np.dtype(dtype)}, but this cache holds {self.dtype}")

    def update(self, conv_state: np.ndarray, recurrent_state: np.ndarray, n_new: int) -> None:
        """Swap in the states after n_new more tokens (called by GatedDeltaNet.forward)."""
        for name, a, want in (("conv_state", conv_state, self.conv_shape),
                              ("recurrent_state", recurrent_state, self.state_shape)):
            if a.shape != want or a.dtype != self.dtype:
                raise CacheError(f"{name} is {a.shape} {a.dtype}, expected {want} {self.dtype}")
        self.conv_state, self.recurrent_state = conv_state, recurrent_state
        self.length += n_new
    # lesson 24: end (DeltaNetCache)

    def snapshot(self) -> DeltaNetSnapshot:
        """Copies of both states and the length (cost: nbytes, whatever the length)."""
        return DeltaNetSnapshot(self.length, self.conv_state.copy(), self.recurrent_state.copy())

    def restore(self, snap: DeltaNetSnapshot) -> None:
        """Go back to a snapshot (from this cache, or one of the same shapes and dtype)."""
        if not isinstance(snap, DeltaNetSnapshot):
            raise CacheError(f"restore() needs a DeltaNetSnapshot, got {type(snap).__name__}")
        for name, a, want in (("conv_state", snap.conv_state, self.conv_shape),
                              ("recurrent_state", snap.recurrent_state, self.state_shape)):
            if a.shape != want or a.dtype != self.dtype:
                raise CacheError(f"snapshot {name} is {a.shape} {a.dtype}, expected {want} {self.dtype}")
        self.conv_state, self.recurrent_state = snap.conv_state.copy(), snap.recurrent_state.copy()
        self.length = snap.length

    def __repr__(self):
        B, D, K1 = self.conv_shape
        _, H, Dk, Dv = self.state_shape
        return (f"DeltaNetCache(len={self.length}, B={B}, conv_dim={D}, kernel={K1 + 1}, Hv={H}, Dk={Dk}, Dv={Dv}, "
                f"dtype={self.dtype}, nbytes={self.nbytes})")


# --------------------------------------------------------------------------------------------
# Two small pieces: softplus and the causal depthwise conv
# --------------------------------------------------------------------------------------------
def softplus(x: Tensor) -> Tensor:
    """log(1 + e^x), as torch.nn.functional.softplus (beta 1, threshold 20: x itself above 20).

    d/dx = sigmoid(x) (1 above the threshold, like torch)."""
    big = x.data > 20.0
    out = np.where(big, x.data, np.log1p(np.exp(np.minimum(x.data, 20.0))))  # min: no overflow warning
    return Tensor._make(out, (x,), lambda g: (np.where(big, g, g * _sigmoid(x.data)),), "softplus")


class CausalConv1d(Module):
    """Depthwise causal convolution over time: channel c of y_t mixes channel c of x_{t-K+1} .. x_t.

    x [B, T, D] (channels last) and the K - 1 inputs before it, state [B, D, K - 1]
    -> y [B, T, D] and the new state [B, D, K - 1].
    `weight` [D, 1, K] is torch's `nn.Conv1d(D, D, K, groups=D, bias=False)` weight, whose
    convolution (a cross-correlation, K - 1 zeros of left padding, first T outputs kept) is
        y_t = sum_j weight[:, 0, j] * x_{t - K + 1 + j}.
    """

    def __init__(self, channels: int, kernel_size: int, dtype=None, generator=None):
        super().__init__()
        self.channels, self.kernel_size = channels, kernel_size
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        bound = 1.0 / math.sqrt(kernel_size)  # torch's default: fan_in = in_channels / groups * K = K
        self.weight = Parameter(init.uniform((channels, 1, kernel_size), bound, dtype, generator))  # [D, 1, K]

    def forward(self, x: Tensor, state: Tensor) -> tuple[Tensor, np.ndarray]:
        T, K = x.shape[1], self.kernel_size
        xs = ops.cat([state.transpose(1, 2), x], dim=1)  # [B, K-1, D] + [B, T, D] -> [B, K-1+T, D]
        y = xs[:, 0:T] * self.weight[:, 0, 0]  # tap 0 reaches back K - 1 steps
        for j in range(1, K):
            y = y + xs[:, j:j + T] * self.weight[:, 0, j]  # [B, T, D] * [D]
        new_state = np.ascontiguousarray(xs.data[:, T:].transpose(0, 2, 1))  # last K-1 inputs -> [B, D, K-1]
        return y, new_state

    def extra_repr(self):
        return f"channels={self.channels}, kernel_size={self.kernel_size}, depthwise, causal"


# --------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------
class GatedDeltaNet(Module):
    """Qwen3-Next's gated-delta-rule layer.   x [B, T, C] -> [B, T, C].

    C = d_model; Hk, Hv = n_k_heads, n_v_heads (Hv a multiple of Hk); Dk, Dv = head_k_dim, head_v_dim;
    K = conv_kernel_size. chunk_size: the gated delta rule's chunk (None: token by token). Both give
    the same numbers; a decode step (T = 1) runs the chunked form with a chunk of 1 token.
    From an HF `Qwen3NextConfig`: d_model = hidden_size, n_k_heads = linear_num_key_heads,
    n_v_heads = linear_num_value_heads, head_k_dim = linear_key_head_dim, head_v_dim =
    linear_value_head_dim, conv_kernel_size = linear_conv_kernel_dim, eps = rms_norm_eps.
    """

    def __init__(self, d_model: int, n_k_heads: int, n_v_heads: int, head_k_dim: int, head_v_dim: int,
                 conv_kernel_size: int = 4, eps: float = 1e-6, chunk_size: int | None = 64, dtype=None,
                 generator=None):
        super().__init__()
        for name, n in (("d_model", d_model), ("n_k_heads", n_k_heads), ("n_v_heads", n_v_heads),
                        ("head_k_dim", head_k_dim), ("head_v_dim", head_v_dim), ("conv_kernel_size", conv_kernel_size)):
            _positive_int(name, n)
        if n_v_heads % n_k_heads != 0:
            raise ConfigError(f"n_v_heads={n_v_heads} must be a multiple of n_k_heads={n_k_heads} "
                              f"(each key head serves an equal group of value heads)")
        if chunk_size is not None:
            _positive_int("chunk_size (None for the recurrence)", chunk_size)
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.d_model, self.n_k_heads, self.n_v_heads = d_model, n_k_heads, n_v_heads
        self.head_k_dim, self.head_v_dim = head_k_dim, head_v_dim
        self.key_dim, self.value_dim = n_k_heads * head_k_dim, n_v_heads * head_v_dim
        self.conv_dim = 2 * self.key_dim + self.value_dim  # the conv runs over the q, k and v channels
        self.conv_kernel_size, self.chunk_size = conv_kernel_size, chunk_size

        self.in_proj_qkvz = Linear(d_model, 2 * self.key_dim + 2 * self.value_dim, bias=False, dtype=dtype,
                                   generator=generator)
        self.in_proj_ba = Linear(d_model, 2 * n_v_heads, bias=False, dtype=dtype, generator=generator)
        self.conv1d = CausalConv1d(self.conv_dim, conv_kernel_size, dtype=dtype, generator=generator)
        self.dt_bias = Parameter(np.ones(n_v_heads, dtype=dtype))  # [Hv]
        # decay rate per value head, A in U(0.01, 16) as HF initializes it (log: A stays positive in training)
        self.A_log = Parameter(np.log(_gen(generator).uniform(0.01, 16.0, n_v_heads)).astype(dtype))  # [Hv]
        self.norm = RMSNormGated(head_v_dim, eps=eps, dtype=dtype)
        self.out_proj = Linear(self.value_dim, d_model, bias=False, dtype=dtype, generator=generator)

    def make_cache(self, batch_size: int, dtype=None) -> DeltaNetCache:
        """An empty DeltaNetCache with this layer's shapes (dtype: the layer's, by default)."""
        dtype = self.A_log.dtype if dtype is None else dtype
        return DeltaNetCache(batch_size, self.conv_dim, self.conv_kernel_size, self.n_v_heads,
                             self.head_k_dim, self.head_v_dim, dtype)

    # lesson 24: begin (GatedDeltaNet.forward)
    def forward(self, x, cache: DeltaNetCache | None = None) -> Tensor:
        """x [B, T, C] -> [B, T, C]. With a cache, x continues the sequence the cache has seen (a prompt,
        a piece of one, or one decode token: the same lines), and the cache then holds the new states."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 3 or x.shape[-1] != self.d_model:
            raise ShapeError(f"GatedDeltaNet input must be [B, T, C] with C = d_model = {self.d_model}, got {x.shape}")
        if x.dtype != self.A_log.dtype:
            raise DTypeError(f"GatedDeltaNet input has dtype {x.dtype}, the layer's parameters {self.A_log.dtype}")
        B, T, _ = x.shape
        Hk, Hv, Dk, Dv = self.n_k_heads, self.n_v_heads, self.head_k_dim, self.head_v_dim
        r = Hv // Hk  # value heads per key head
        if cache is not None:
            cache.check(B, x.dtype)  # before any work: a mismatched cache changes nothing
            conv_state, state = Tensor(cache.conv_state), Tensor(cache.recurrent_state)
        else:  # a fresh sequence: zeros before the first token
            conv_state, state = Tensor(np.zeros((B, self.conv_dim, self.conv_kernel_size - 1), x.dtype)), None

        # Projections, HF's layout: per key head j, [q_j | k_j | v and z of its r value heads]
        qkvz = self.in_proj_qkvz(x).reshape(B, T, Hk, 2 * Dk + 2 * r * Dv)  # [B, T, Hk*(2Dk + 2rDv)] -> [B, T, Hk, ..]
        q, k, v, z = ops.split(qkvz, [Dk, Dk, r * Dv, r * Dv], dim=3)  # [B, T, Hk, Dk] x2, [B, T, Hk, r*Dv] x2
        b, a = ops.split(self.in_proj_ba(x).reshape(B, T, Hk, 2 * r), [r, r], dim=3)  # [B, T, Hk, r] each
        b, a = b.reshape(B, T, Hv), a.reshape(B, T, Hv)  # [B, T, Hk, r] -> [B, T, Hv]

        # Short causal conv over time, channel by channel, then SiLU (this is where token order enters)
        qkv = ops.cat([q.reshape(B, T, Hk * Dk), k.reshape(B, T, Hk * Dk), v.reshape(B, T, Hv * Dv)], dim=-1)
        qkv, new_conv_state = self.conv1d(qkv, conv_state)  # [B, T, conv_dim], [B, conv_dim, K-1]
        q, k, v = ops.split(F.silu(qkv), [Hk * Dk, Hk * Dk, Hv * Dv], dim=-1)
        q, k = q.reshape(B, T, Hk, Dk), k.reshape(B, T, Hk, Dk)  # [B, T, Hk*Dk] -> [B, T, Hk, Dk]
        v = v.reshape(B, T, Hv, Dv)  # [B, T, Hv*Dv] -> [B, T, Hv, Dv]

        # Gates: the step size beta in (0, 1) and the log-decay g <= 0, per token and value head
        beta = b.sigmoid()  # [B, T, Hv]
        g = -self.A_log.exp() * softplus(a + self.dt_bias)  # [B, T, Hv]

        # The gated delta rule, continuing from the cached state
        o, new_state = gated_delta_rule(q, k, v, g, beta, initial_state=state, chunk_size=self.chunk_size,
                                        use_qk_l2norm=True)  # [B, T, Hv, Dv], [B, Hv, Dk, Dv]

        # Per-head RMSNorm gated by SiLU(z), then mix the heads back into the residual stream
        o = self.norm(o, z.reshape(B, T, Hv, Dv))  # [B, T, Hv, Dv]
        y = self.out_proj(o.reshape(B, T, Hv * Dv))  # [B, T, Hv*Dv] -> [B, T, C]
        if cache is not None:
            cache.update(new_conv_state, new_state.data, T)
        return y
    # lesson 24: end (GatedDeltaNet.forward)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_k_heads={self.n_k_heads}, n_v_heads={self.n_v_heads}, "
                f"head_k_dim={self.head_k_dim}, head_v_dim={self.head_v_dim}, "
                f"conv_kernel_size={self.conv_kernel_size}, chunk_size={self.chunk_size}")
