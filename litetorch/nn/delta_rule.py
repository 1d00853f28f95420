"""Linear attention, the delta rule and the gated delta rule: attention whose memory has a fixed size.
Lessons 23 (the recurrence) and 24 (the same numbers, a chunk of tokens at a time).

Softmax attention keeps every past key and value (the KV cache, lesson 09) and reads them all
for each new token. Drop the softmax and the read regroups into a matrix that is *updated*
instead of *appended to* (Katharopoulos et al. 2020, "Transformers are RNNs"):

    linear attention        S_t = S_{t-1} + k_t v_t^T                         o_t = S_t^T q_t
    delta rule (DeltaNet)   S_t = S_{t-1} + k_t (beta_t (v_t - S_{t-1}^T k_t))^T
    gated delta rule        S_t = a_t S_{t-1} + k_t (beta_t (v_t - a_t S_{t-1}^T k_t))^T,   a_t = exp(g_t)

S_t [Dk, Dv] is a key -> value memory. The delta rule first asks what S already returns for k_t
and writes only the correction towards v_t, with a step beta_t in (0, 1) (Widrow-Hoff; Schlag et
al. 2021; Yang et al. 2024, arXiv 2406.06484). The gate a_t in (0, 1] lets a whole head forget
quickly (Yang, Kautz & Hatamizadeh, "Gated Delta Networks", arXiv 2412.06464). Qwen3-Next's
linear-attention layers run the gated delta rule.

Shapes follow HF's `torch_*_gated_delta_rule` (transformers/models/qwen3_next):
    q, k [B, T, Hk, Dk]   v [B, T, Hv, Dv]   g (log of the decay, <= 0), beta [B, T, Hv]
    state S [B, Hv, Dk, Dv]   out [B, T, Hv, Dv]
Hv may be a multiple of Hk ("grouped value heads"): key head j serves value heads j*r .. j*r+r-1,
r = Hv / Hk, as HF's `repeat_interleave`. The two forms work head-major, [B, H, T, D].
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import ops
from ..errors import ConfigError, DTypeError, ShapeError
from ..tensor import Tensor

__all__ = ["gated_delta_rule", "linear_attention_recurrent", "recurrent_gated_delta_rule",
           "chunk_gated_delta_rule", "unit_lower_inverse", "l2norm"]


# --------------------------------------------------------------------------------------------
# Plain linear attention: the state that replaces the KV cache
# --------------------------------------------------------------------------------------------
# lesson 23: begin (linear_attention_recurrent)
def linear_attention_recurrent(q, k, v, initial_state=None) -> tuple[Tensor, Tensor]:
    """Causal linear attention as an RNN.   q, k [B, H, T, Dk], v [B, H, T, Dv] -> out [B, H, T, Dv], S [B, H, Dk, Dv].

    o_t = sum_{i<=t} (q_t . k_i) v_i = (sum_{i<=t} k_i v_i^T)^T q_t = S_t^T q_t: the sum over the
    past is kept as one matrix, so step t costs Dk * Dv whatever t is. (No feature map, no
    normalizer and no 1/sqrt(Dk): the bare recurrence the delta rule starts from.)
    """
    B, H, T, Dk = q.shape
    S = initial_state if initial_state is not None else Tensor(np.zeros((B, H, Dk, v.shape[-1]), q.dtype))
    outs = []
    for t in range(T):
        q_t, k_t, v_t = q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1]  # [B, H, 1, D]: one row each
        S = S + k_t.mT @ v_t  # [B, H, Dk, 1] @ [B, H, 1, Dv]: add the outer product k_t v_t^T
        outs.append(q_t @ S)  # [B, H, 1, Dk] @ [B, H, Dk, Dv] -> [B, H, 1, Dv]: read with the query
    return ops.cat(outs, dim=2), S  # [B, H, T, Dv], [B, H, Dk, Dv]
# lesson 23: end (linear_attention_recurrent)


# --------------------------------------------------------------------------------------------
# The gated delta rule, token by token: the definition
# --------------------------------------------------------------------------------------------
# lesson 23: begin (recurrent_gated_delta_rule)
def recurrent_gated_delta_rule(q, k, v, g, beta, S) -> tuple[Tensor, Tensor]:
    """The gated delta rule, one token at a time.

    q, k [B, H, T, Dk], v [B, H, T, Dv], g, beta [B, H, T], S [B, H, Dk, Dv]
    -> out [B, H, T, Dv], final S [B, H, Dk, Dv]
    """
    T = q.shape[2]
    outs = []
    for t in range(T):
        q_t, k_t, v_t = q[:, :, t:t + 1], k[:, :, t:t + 1], v[:, :, t:t + 1]  # [B, H, 1, D]: one row each
        a_t = g[:, :, t:t + 1].exp().unsqueeze(-1)  # [B, H, 1, 1]: the decay, exp(g_t) in (0, 1]
        beta_t = beta[:, :, t:t + 1].unsqueeze(-1)  # [B, H, 1, 1]: the step size
        S = S * a_t  # forget: every stored association fades by a_t
        v_old = k_t @ S  # [B, H, 1, Dv]: what the memory returns for k_t now
        u_t = (v_t - v_old) * beta_t  # the delta: a step of size beta_t from v_old towards v_t
        S = S + k_t.mT @ u_t  # [B, H, Dk, 1] @ [B, H, 1, Dv]: write the correction at k_t
        outs.append(q_t @ S)  # [B, H, 1, Dv]: read the updated memory with the query
    return ops.cat(outs, dim=2), S  # [B, H, T, Dv], [B, H, Dk, Dv]
# lesson 23: end (recurrent_gated_delta_rule)


# --------------------------------------------------------------------------------------------
# The same numbers, a chunk at a time (the WY / UT form)
# --------------------------------------------------------------------------------------------
# lesson 24: begin (unit_lower_inverse)
def unit_lower_inverse(A: Tensor) -> Tensor:
    """(I + tril(A, -1))^-1 for a batch of square matrices.   A [..., C, C] -> [..., C, C].

    Only the strictly lower triangle of A is read. The inverse of a unit lower-triangular matrix
    is unit lower-triangular, and forward substitution builds it row by row: row i of
    (I + L) T = I says  T[i, :i] = -L[i, :i] @ T[:i, :i]  (and T[i, i] = 1).
    One op with its backward written out: T = M^-1 gives dT = -T dM T, so
        dL/dM = -T^T (dL/dT) T^T,   kept on the strictly lower triangle (the only entries read).
    """
    L = np.tril(A.data, -1)  # [..., C, C]
    C = L.shape[-1]
    T = np.broadcast_to(np.eye(C, dtype=L.dtype), L.shape).copy()  # [..., C, C], starts as I
    for i in range(1, C):
        T[..., i, :i] = -(L[..., i:i + 1, :i] @ T[..., :i, :i])[..., 0, :]  # [..., 1, i] @ [..., i, i] -> [..., i]

    def backward(grad):
        Tt = np.swapaxes(T, -1, -2)
        return (np.tril(-(Tt @ grad @ Tt), -1),)

    return Tensor._make(T, (A,), backward, "unit_lower_inverse")
# lesson 24: end (unit_lower_inverse)


# lesson 24: begin (chunk_gated_delta_rule)
def chunk_gated_delta_rule(q, k, v, g, beta, S, chunk_size: int) -> tuple[Tensor, Tensor]:
    """The gated delta rule, C = min(chunk_size, T) tokens at a time; equal to the recurrence.

    q, k [B, H, T, Dk], v [B, H, T, Dv], g, beta [B, H, T], S [B, H, Dk, Dv]
    -> out [B, H, T, Dv], final S [B, H, Dk, Dv]

    Inside a chunk, with G_i = g_1 + ... + g_i (log of the decay since the chunk's start) and S the
    state at the start, the recurrence unrolls to
        u_i = beta_i v_i - beta_i e^{G_i} S^T k_i - sum_{j<i} beta_i (k_i . k_j) e^{G_i - G_j} u_j
        o_i = e^{G_i} S^T q_i + sum_{j<=i} (q_i . k_j) e^{G_i - G_j} u_j
        S'  = e^{G_C} S + sum_j e^{G_C - G_j} k_j u_j^T
    The first line is a unit lower-triangular system (I + A) U = V_beta - W S: one inverse per chunk
    (the UT transform) turns C dependent steps into matmuls. Lesson 24 derives it.
    """
    B, H, T, Dk = q.shape
    Dv = v.shape[-1]
    C = min(chunk_size, T)
    pad = -T % C
    if pad:  # T need not be a multiple of C: pad with tokens that do nothing (k = 0 writes nothing,
        q, k, v, g, beta = (_pad_time(x, pad) for x in (q, k, v, g, beta))  # g = 0 forgets nothing)
    N = (T + pad) // C
    q, k, v = (x.reshape(B, H, N, C, x.shape[-1]) for x in (q, k, v))  # [B, H, T, D] -> [B, H, N, C, D]
    g, beta = g.reshape(B, H, N, C), beta.reshape(B, H, N, C)  # [B, H, T] -> [B, H, N, C]

    # Decay inside each chunk: G = cumsum(g) (a matmul with a triangle of ones), pairwise e^{G_i - G_j}
    G = g @ Tensor(np.triu(np.ones((C, C), dtype=g.dtype)))  # [B, H, N, C]; column i sums g_1..g_i
    future = np.triu(np.ones((C, C), dtype=bool), 1)  # j > i: masked before exp (e^{positive} could overflow)
    decay = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(future, -math.inf).exp()  # [B, H, N, C, C]

    # UT transform: U = (I + A)^-1 V_beta and W = (I + A)^-1 (K_beta e^G), A = tril(K_beta K^T * decay, -1)
    k_beta, v_beta = k * beta.unsqueeze(-1), v * beta.unsqueeze(-1)  # [B, H, N, C, D]
    T_inv = unit_lower_inverse((k_beta @ k.mT) * decay)  # [B, H, N, C, C]
    U = T_inv @ v_beta  # [B, H, N, C, Dv]: the corrections u_i if the chunk started from S = 0
    W = T_inv @ (k_beta * G.exp().unsqueeze(-1))  # [B, H, N, C, Dk]: how the start state S enters them
    attn = (q @ k.mT) * decay  # [B, H, N, C, C]: causal, decayed q.k inside the chunk
    q_start = q * G.exp().unsqueeze(-1)  # [B, H, N, C, Dk]: query i reads S decayed by e^{G_i}
    k_end = k * (G[..., -1:] - G).exp().unsqueeze(-1)  # [B, H, N, C, Dk]: key j's write fades until the end
    chunk_decay = G[..., -1].exp().unsqueeze(-1).unsqueeze(-1)  # [B, H, N, 1, 1]: e^{G_C}

    # One step per chunk: the only sequential part left
    outs = []
    for n in range(N):
        u = U[:, :, n] - W[:, :, n] @ S  # [B, H, C, Dv]: the true corrections, given the start state
        outs.append(q_start[:, :, n] @ S + attn[:, :, n] @ u)  # [B, H, C, Dv]: read S, plus the chunk itself
        S = S * chunk_decay[:, :, n] + k_end[:, :, n].mT @ u  # [B, H, Dk, Dv]: the state after the chunk
    out = ops.stack(outs, dim=2).reshape(B, H, N * C, Dv)  # [B, H, N, C, Dv] -> [B, H, T + pad, Dv]
    return out[:, :, :T], S
# lesson 24: end (chunk_gated_delta_rule)


def _pad_time(x: Tensor, n: int) -> Tensor:
    """Append n zero steps on the time axis (axis 2) of [B, H, T, ...]."""
    zeros = Tensor(np.zeros(x.shape[:2] + (n,) + x.shape[3:], dtype=x.dtype))
    return ops.cat([x, zeros], dim=2)


# --------------------------------------------------------------------------------------------
# The public function: HF's shapes, checks, q/k normalization, grouped heads
# --------------------------------------------------------------------------------------------
def l2norm(x: Tensor, eps: float = 1e-6) -> Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim (HF's `l2norm`, as the FLA kernels: eps inside the root)."""
    return x * ((x * x).sum(-1, keepdim=True) + eps).rsqrt()


def gated_delta_rule(q, k, v, g, beta, initial_state=None, chunk_size: int | None = None,
                     use_qk_l2norm: bool = False) -> tuple[Tensor, Tensor]:
    """Gated delta rule attention with HF's shapes and numbers.

    q, k [B, T, Hk, Dk]; v [B, T, Hv, Dv] (Hv a multiple of Hk); g, beta [B, T, Hv];
    initial_state [B, Hv, Dk, Dv] or None (zeros)  ->  out [B, T, Hv, Dv], final_state [B, Hv, Dk, Dv]

    - chunk_size=None runs the recurrence token by token (the definition); an integer runs the
      chunked form with chunks of min(chunk_size, T) tokens (T need not be a multiple). Both give
      the same numbers, both are differentiable.
    - use_qk_l2norm: normalize q and k to unit length first (Qwen3-Next does). q is always scaled
      by 1/sqrt(Dk), as HF does.
    - Internals run in float32 for float32 (and float16) inputs, as HF's, and in float64 for
      float64 inputs (HF would cast those to float32; float64 is for gradient checks). `out` has
      the inputs' dtype, `final_state` the working dtype; `initial_state` must have it too.
    """
    q, k, v, g, beta = (x if isinstance(x, Tensor) else Tensor(x) for x in (q, k, v, g, beta))
    if initial_state is not None and not isinstance(initial_state, Tensor):
        initial_state = Tensor(initial_state)
    B, T, Hk, Dk, Hv, Dv, work = _check(q, k, v, g, beta, initial_state, chunk_size)
    dtype = q.dtype
    q, k, v, g, beta = (x.to(work) for x in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2norm(q), l2norm(k)
    q = q * (Dk ** -0.5)  # a Python float: float32 stays float32
    r = Hv // Hk  # grouped value heads: key head j serves value heads j*r .. j*r + r - 1
    q, k = _repeat_heads(q, r), _repeat_heads(k, r)  # [B, T, Hk, Dk] -> [B, T, Hv, Dk]
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))  # [B, T, H, D] -> [B, H, T, D]
    g, beta = g.transpose(1, 2), beta.transpose(1, 2)  # [B, T, H] -> [B, H, T]
    S = initial_state if initial_state is not None else Tensor(np.zeros((B, Hv, Dk, Dv), dtype=work))
    if chunk_size is None:
        out, S = recurrent_gated_delta_rule(q, k, v, g, beta, S)
    else:
        out, S = chunk_gated_delta_rule(q, k, v, g, beta, S, chunk_size)
    return out.transpose(1, 2).to(dtype), S  # [B, H, T, Dv] -> [B, T, H, Dv]


def _repeat_heads(x: Tensor, r: int) -> Tensor:
    """[B, T, Hk, D] -> [B, T, Hk * r, D], head j repeated r times in a row (torch.repeat_interleave)."""
    if r == 1:
        return x
    B, T, Hk, D = x.shape
    x = x.reshape(B, T, Hk, 1, D).expand(B, T, Hk, r, D)  # [B, T, Hk, D] -> [B, T, Hk, r, D], a broadcast view
    return x.reshape(B, T, Hk * r, D)  # [B, T, Hk, r, D] -> [B, T, Hv, D]: the copy


def _check(q, k, v, g, beta, S0, chunk_size):
    """Validate every argument before any work; return (B, T, Hk, Dk, Hv, Dv, working dtype)."""
    for name, x, nd, legend in (("q", q, 4, "[B, T, Hk, Dk]"), ("k", k, 4, "[B, T, Hk, Dk]"),
                                ("v", v, 4, "[B, T, Hv, Dv]"), ("g", g, 3, "[B, T, Hv]"),
                                ("beta", beta, 3, "[B, T, Hv]")):
        if x.ndim != nd:
            raise ShapeError(f"gated_delta_rule: {name} must be {legend} ({nd} dims), got shape {x.shape}")
        if x.dtype.kind != "f" or x.dtype != q.dtype:
            raise DTypeError(f"gated_delta_rule: {name} has dtype {x.dtype}, expected the float dtype of q "
                             f"({q.dtype}); cast with .float() or .double()")
    B, T, Hk, Dk = q.shape
    if k.shape != q.shape:
        raise ShapeError(f"gated_delta_rule: k has shape {k.shape}, expected q's shape {q.shape} = [B, T, Hk, Dk]")
    if v.shape[:2] != (B, T):
        raise ShapeError(f"gated_delta_rule: v has shape {v.shape}; its [B, T] must be q's {(B, T)}")
    Hv, Dv = v.shape[2:]
    if Hv % Hk != 0:
        raise ShapeError(f"gated_delta_rule: v has {Hv} heads and q/k have {Hk}; the number of value heads "
                         f"must be a multiple of the number of key heads")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, Hv):
            raise ShapeError(f"gated_delta_rule: {name} has shape {x.shape}, expected [B, T, Hv] = {(B, T, Hv)}")
    if T < 1:
        raise ShapeError(f"gated_delta_rule: needs at least one token, got T = {T}")
    work = np.dtype(np.float64) if q.dtype == np.float64 else np.dtype(np.float32)
    if S0 is not None:
        if S0.shape != (B, Hv, Dk, Dv):
            raise ShapeError(f"gated_delta_rule: initial_state has shape {S0.shape}, "
                             f"expected [B, Hv, Dk, Dv] = {(B, Hv, Dk, Dv)}")
        if S0.dtype != work:
            raise DTypeError(f"gated_delta_rule: initial_state has dtype {S0.dtype}, expected {work} "
                             f"(the dtype final_state is returned in for {q.dtype} inputs)")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral)
                                   or chunk_size < 1):
        raise ConfigError(f"gated_delta_rule: chunk_size must be None (the recurrence) or a positive integer, "
                          f"got {chunk_size!r}")
    return B, T, Hk, Dk, Hv, Dv, work
