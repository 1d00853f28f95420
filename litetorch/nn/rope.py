"""Rotary position embeddings (RoPE), lesson 07.

The idea: split each head vector into Dh/2 pairs and rotate pair i by the angle p * theta_i,
where p is the token's position and theta_i = base^(-2i/Dh). A rotation keeps the vector's length,
and the dot product of a query rotated by p with a key rotated by p' depends only on p - p':
attention sees *relative* positions, with nothing added to the embeddings.

    (x_a, x_b) -> (x_a cos(p theta_i) - x_b sin(p theta_i),  x_b cos(p theta_i) + x_a sin(p theta_i))

Which two coordinates form pair i is a convention, and the two conventions are not compatible:

  "half"        pairs (i, i + Dh/2)   HF transformers `rotate_half`; litetorch's default
  "interleaved" pairs (2i, 2i + 1)    Meta's original Llama, GPT-J, llama.cpp (GGUF files)

A checkpoint trained with one pairing is used with the other by permuting the rows of W_q and
W_k inside each head (`unpermute_qk`, `permute_qk_to_interleaved`): since q.k is a sum over
coordinates, renaming the coordinates of both q and k the same way changes nothing.

Partial rotary (`rotary_dim` < head_dim; GPT-NeoX, Phi, Qwen3-Next with a quarter of Dh): only the
first `rotary_dim` coordinates of each head are rotated, with frequencies theta_i = base^(-2i/rotary_dim)
(the rotary part is a head of its own for RoPE); the rest pass through unchanged and carry no
position at all, so those coordinates score content alone.

Numerics follow HF Llama: the frequencies and the angles p * theta_i are float32 (the angle of
position 8000 needs float32's full precision; doing it in float16 ruins it), then cos/sin are cast
to the activations' dtype. For float64 activations everything is float64. One departure: theta_i
is the float32 nearest to base^(-2i/Dh) (computed in float64, rounded once), where HF uses float32
`pow`, whose last bit depends on the machine. A last bit of theta_i moves the angle of position p
by p ulps, so at position 8000 HF on two machines (and litetorch against either) can differ by
~1e-4 in cos/sin; with equal frequencies the two agree to float32 rounding (tests/test_rope.py).
"""
from __future__ import annotations

import numpy as np

from .. import checks, ops
from ..errors import ConfigError, DTypeError, ShapeError
from ..tensor import Tensor
from .module import Module

PAIRINGS = ("half", "interleaved")


def _check_pairing(pairing: str) -> None:
    if pairing not in PAIRINGS:
        raise ConfigError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")


# lesson 07: begin (rope_frequencies) exercise
def rope_frequencies(head_dim: int, base: float = 10000.0, dtype=np.float32) -> np.ndarray:
    """theta_i = 1 / base^(2i / Dh) for i = 0 .. Dh/2 - 1: [Dh/2], in `dtype` (float32 like HF)."""
    if head_dim % 2:
        raise ShapeError(f"RoPE needs an even head_dim (it rotates pairs), got {head_dim}")
    dt = np.dtype(dtype)
    exponent = np.arange(0, head_dim, 2, dtype=dt) / dt.type(head_dim)  # 2i / Dh, rounded to dtype as HF does
    # The power in float64, rounded once to dtype: float32 `pow` in NumPy and in torch is good to about
    # one unit in the last place, and which way it rounds depends on the CPU's vector kernels (an AVX2
    # and an AVX-512 machine give different last bits). Rounding once gives the same table everywhere.
    return (1.0 / np.float64(base) ** exponent.astype(np.float64)).astype(dt)  # [Dh/2]
# lesson 07: end (rope_frequencies) exercise


def rope_cos_sin(positions, inv_freq: np.ndarray, pairing: str = "half"):
    """cos, sin of the angles p * theta_i, laid out to match x's last axis: [..., T, Dh].

    "half": [theta_0 .. theta_{Dh/2-1}, theta_0 .. theta_{Dh/2-1}] (pair i sits at i and i + Dh/2)
    "interleaved": [theta_0, theta_0, theta_1, theta_1, ...]      (pair i sits at 2i and 2i + 1)
    """
    _check_pairing(pairing)
    pos = np.asarray(positions).astype(inv_freq.dtype)
    angles = pos[..., None] * inv_freq  # [..., T] x [Dh/2] -> [..., T, Dh/2]
    if pairing == "half":
        angles = np.concatenate([angles, angles], axis=-1)  # [..., T, Dh]
    else:
        angles = np.repeat(angles, 2, axis=-1)  # [..., T, Dh]
    return np.cos(angles), np.sin(angles)


# lesson 07: begin (apply_rope)
# lesson 07: begin (rotate_pairs) exercise
def rotate_pairs(x: np.ndarray, pairing: str = "half") -> np.ndarray:
    """The "multiply by i" of each pair: (a, b) -> (-b, a), in the chosen layout. [..., Dh] -> [..., Dh].

    half:        [x1, x2] -> [-x2, x1]  (x1 = first half, x2 = second half; HF `rotate_half`)
    interleaved: [a0, b0, a1, b1, ...] -> [-b0, a0, -b1, a1, ...]
    """
    if pairing == "half":
        d = x.shape[-1] // 2
        return np.concatenate([-x[..., d:], x[..., :d]], axis=-1)
    out = np.empty_like(x)
    out[..., 0::2] = -x[..., 1::2]
    out[..., 1::2] = x[..., 0::2]
    return out
# lesson 07: end (rotate_pairs) exercise


# lesson 07: begin (rope rotation) exercise
def apply_rope(x, cos, sin, pairing: str = "half") -> Tensor:
    """Rotate every pair of x by its angle: x * cos + rotate_pairs(x) * sin.

    x: [B, H, T, Dh] (any [..., T, Dh]); cos, sin: broadcastable to x, e.g. [T, Dh] or [B, 1, T, Dh],
    laid out for `pairing` (see `rope_cos_sin`). Returns a Tensor of x's shape and dtype.

    Backward: the rotation R is orthogonal, R^T = -R on each pair, so
    dL/dx = g * cos + R^T(g * sin) = g * cos - rotate_pairs(g * sin).
    """
    _check_pairing(pairing)
    x = x if isinstance(x, Tensor) else Tensor(x)
    cos = np.asarray(cos.data if isinstance(cos, Tensor) else cos)
    sin = np.asarray(sin.data if isinstance(sin, Tensor) else sin)
    if cos.dtype != x.dtype or sin.dtype != x.dtype:
        raise DTypeError(f"apply_rope: cos/sin are {cos.dtype}/{sin.dtype} but x is {x.dtype}; "
                         f"cast them to {x.dtype} (RotaryEmbedding does this for you)")
    try:  # (the common case, cos [T, Dh] against x [.., T, Dh], needs no general broadcast check)
        fits = cos.shape == sin.shape and (cos.shape == x.shape[x.ndim - cos.ndim:]
                                           or np.broadcast_shapes(cos.shape, x.shape) == x.shape)
    except ValueError:
        fits = False
    if not fits:
        raise ShapeError(f"apply_rope: cos/sin of shapes {cos.shape}/{sin.shape} do not broadcast to x of "
                         f"shape {x.shape} (expected e.g. [T, Dh] = [{x.shape[-2]}, {x.shape[-1]}])")
    out = x.data * cos + rotate_pairs(x.data, pairing) * sin  # [B, H, T, Dh]

    def backward(g):
        return (g * cos - rotate_pairs(g * sin, pairing),)

    return Tensor._make(out, (x,), backward, "rope")
# lesson 07: end (rope rotation) exercise
# lesson 07: end (apply_rope)


class RotaryEmbedding(Module):
    """RoPE as a module without parameters: `rope(x, offset=past_len)` rotates x [B, H, T, Dh].

    head_dim: Dh (even). base: theta's base (10000 Llama-2, 100000 SmolLM2, 500000 Llama-3).
    max_position_embeddings: the model's context length, kept for reference only: the cos/sin table
    is built lazily for the positions actually used and doubles when a later position needs it, so a
    model declaring a million-token context pays nothing for it until it sees those tokens (and a
    position beyond it is still computed, never wrong). pairing: "half" (HF) or "interleaved" (GGUF).
    dtype: the dtype of the *frequencies and angles*, default float32 as in HF; float64
    activations always use a float64 table so float64 checks are exact.
    rotary_dim: how many leading coordinates of each head rotate (even, <= head_dim; default all).
    HF's `partial_rotary_factor` f gives rotary_dim = int(head_dim * f).
    """

    def __init__(self, head_dim: int, base: float = 10000.0, max_position_embeddings: int = 2048,
                 pairing: str = "half", dtype=None, rotary_dim: int | None = None):
        super().__init__()
        _check_pairing(pairing)
        head_dim = checks.positive_int("head_dim", head_dim)  # (checks.py: 64.0 or "64" is refused, not coerced)
        if head_dim % 2:
            raise ShapeError(f"RoPE needs an even head_dim (it rotates pairs), got {head_dim}")
        rotary_dim = head_dim if rotary_dim is None else checks.integer("rotary_dim", rotary_dim, lo=2, hi=head_dim)
        if rotary_dim % 2:
            raise ShapeError(f"rotary_dim must be an even integer in 2..head_dim = {head_dim} (RoPE rotates pairs "
                             f"of the first rotary_dim coordinates), got {rotary_dim!r}")
        self.rotary_dim = rotary_dim
        self.head_dim, self.pairing = head_dim, pairing
        self.base = checks.number("base", base, lo=0.0, lo_open=True)
        self.max_position_embeddings = checks.positive_int("max_position_embeddings", max_position_embeddings)
        self.dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
        self._tables = {}  # activation dtype -> (cos, sin) [n, Dh] for positions 0..n-1, grown on demand

    def _table(self, dtype: np.dtype, n: int):
        """cos/sin for positions 0..n-1 (at least), in the activations' dtype. Cached per dtype.

        The table holds only the positions seen so far and at least doubles when it grows, so decoding
        T tokens one at a time rebuilds it O(log T) times and costs O(T) in total. Row p depends only
        on p, so a grown table equals a table built at that size in one go.
        """
        have = self._tables.get(dtype)
        if have is None or have[0].shape[0] < n:
            size = max(n, 2 * have[0].shape[0] if have else 0)
            angle_dtype = np.float64 if dtype == np.float64 else self.dtype
            inv_freq = rope_frequencies(self.rotary_dim, self.base, angle_dtype)  # [rotary_dim / 2]
            cos, sin = rope_cos_sin(np.arange(size), inv_freq, self.pairing)
            self._tables[dtype] = (cos.astype(dtype), sin.astype(dtype))
        return self._tables[dtype]

    def cos_sin(self, T: int, offset: int = 0, positions=None, dtype=np.float32):
        """cos, sin for positions offset..offset+T-1 ([T, Dr]) or for explicit `positions`
        ([T] -> [T, Dr]; [B, T] -> [B, 1, T, Dr], broadcasting over heads). Dr = rotary_dim (= Dh unless partial)."""
        dtype = np.dtype(dtype)
        if positions is None:
            cos, sin = self._table(dtype, offset + T)
            return cos[offset:offset + T], sin[offset:offset + T]  # views: no per-step allocation
        pos = np.asarray(positions.data if isinstance(positions, Tensor) else positions)
        if pos.dtype.kind not in "iu":
            raise DTypeError(f"positions must be integers, got dtype {pos.dtype}")
        if pos.size and pos.min() < 0:
            raise ShapeError(f"positions must be >= 0, got {int(pos.min())}")
        cos, sin = self._table(dtype, int(pos.max()) + 1 if pos.size else 0)
        cos, sin = cos[pos], sin[pos]  # [..., T, Dh]
        if pos.ndim == 2:  # [B, T, Dh] -> [B, 1, T, Dh]: one row of positions per sequence
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin

    def forward(self, x, offset: int = 0, positions=None) -> Tensor:
        """x [B, H, T, Dh] -> rotated [B, H, T, Dh]; positions are offset..offset+T-1 unless given."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        shape, dtype = x.data.shape, x.data.dtype
        if shape[-1] != self.head_dim:
            raise ShapeError(f"RotaryEmbedding(head_dim={self.head_dim}) got x with last dim {shape[-1]} "
                             f"(shape {shape})")
        if dtype.kind != "f":
            raise DTypeError(f"RoPE needs a float tensor, got dtype {dtype}")
        T = shape[-2]
        if positions is not None and np.shape(positions)[-1] != T:
            raise ShapeError(f"positions has shape {np.shape(positions)}, expected [..., {T}] for x of shape {shape}")
        cos, sin = self.cos_sin(T, offset, positions, dtype)  # [T, Dr]
        if self.rotary_dim == self.head_dim:
            return apply_rope(x, cos, sin, self.pairing)
        # Partial rotary: rotate the first Dr coordinates of each head, pass the other Dh - Dr through
        rot, rest = ops.split(x, [self.rotary_dim, self.head_dim - self.rotary_dim], dim=-1)  # [.., Dr], [.., Dh - Dr]
        return ops.cat([apply_rope(rot, cos, sin, self.pairing), rest], dim=-1)  # [B, H, T, Dh]

    def extra_repr(self):
        partial = f", rotary_dim={self.rotary_dim}" if self.rotary_dim != self.head_dim else ""
        return f"head_dim={self.head_dim}{partial}, base={self.base:g}, pairing={self.pairing!r}"


# --------------------------------------------------------------------------------------------
# The permutation linking the two pairings (GGUF <-> HF), on NumPy weights [n_heads * Dh, d_in]
# --------------------------------------------------------------------------------------------
def _check_qk_weight(w: np.ndarray, n_heads: int):
    w = np.asarray(w)
    if w.ndim not in (1, 2) or w.shape[0] % n_heads or (w.shape[0] // n_heads) % 2:
        raise ShapeError(f"expected a weight [n_heads * head_dim, d_in] (or bias [n_heads * head_dim]) with "
                         f"n_heads={n_heads} and an even head_dim, got shape {w.shape}")
    return w, w.shape[0], w.shape[0] // n_heads


# lesson 07: begin (permutation) exercise
def unpermute_qk(w, n_heads: int) -> np.ndarray:
    """GGUF (interleaved) -> HF (half) row order of W_q or W_k, per head.

    In each head, rows [a0, b0, a1, b1, ...] become [a0, a1, ..., b0, b1, ...]; then
    rope_half(x @ unpermute_qk(W).T) is rope_interleaved(x @ W.T) with its coordinates renamed,
    and every q.k is unchanged. (Works on a bias vector too.)
    """
    w, d_out, head_dim = _check_qk_weight(w, n_heads)
    rest = w.shape[1:]
    return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(d_out, *rest)
# lesson 07: end (permutation) exercise


def permute_qk_to_interleaved(w, n_heads: int) -> np.ndarray:
    """HF (half) -> GGUF (interleaved) row order: the inverse of `unpermute_qk` (llama.cpp's convert)."""
    w, d_out, head_dim = _check_qk_weight(w, n_heads)
    rest = w.shape[1:]
    return w.reshape(n_heads, 2, head_dim // 2, *rest).swapaxes(1, 2).reshape(d_out, *rest)
