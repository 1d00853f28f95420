"""Stateless neural-network functions (torch.nn.functional's names and argument order).

Shapes use one legend everywhere: B batch, T time (sequence), C channels (d_model),
H heads, Hkv key/value heads, Dh head dim, V vocabulary, N rows.
"""
from __future__ import annotations

import math

import numpy as np

from .. import ops
from .. import checks
from ..errors import ConfigError, ShapeError
from ..tensor import Tensor

softmax = ops.softmax
log_softmax = ops.log_softmax
relu = ops.relu
silu = ops.silu
sigmoid = ops.sigmoid
tanh = ops.tanh
gelu = ops.gelu


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b.   x: [..., in], weight: [out, in] (torch layout), bias: [out] -> [..., out]."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    return ops.matmul.linear(x, weight, bias)  # one op: see ops/matmul.py


def embedding(ids, weight: Tensor, padding_idx: int | None = None) -> Tensor:
    """Row lookup: ids [...] (ints) -> [..., C].

    Backward is a scatter-add: an id used k times gives its row the sum of k gradients.
    `padding_idx` (like torch) names a row that never receives a gradient.
    """
    idx = checks.token_ids(ids, weight.shape[0], "embedding ids")  # integers in 0..V-1 (the one vocabulary check)
    V = weight.shape[0]
    pad = None if padding_idx is None else padding_idx % V
    out = weight.data[idx]  # [..., C]

    def backward(g):
        gw = np.zeros_like(weight.data)  # [V, C]
        np.add.at(gw, idx, g)  # scatter-add: `gw[idx] += g` would keep only one copy per repeated id
        if pad is not None:
            gw[pad] = 0.0
        return (gw,)

    return Tensor._make(out, (weight,), backward, "embedding")


# lesson 05: begin (rms_norm) exercise
def rms_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, eps: float | None = None) -> Tensor:
    """RMSNorm in HF Llama's order: normalize in float32, cast back to x's dtype, then scale by weight.

    y = x / sqrt(mean(x^2) + eps) * weight   over the last len(normalized_shape) dims (D values).

    One op with its backward written out (it runs 61 times per generated token, so one graph node
    instead of six matters). With r = (mean(x^2) + eps)^(-1/2) and n = x r (the normalized x):
        dL/dweight = sum over rows of g * n
        dL/dn      = g * weight
        dL/dx      = r * (dL/dn - n * mean(dL/dn * n))     (the second term: x also moves r)
    Float32 accumulation matters for float16 inputs; float64 stays float64.
    """
    dims = tuple(range(-len(_tuple(normalized_shape)), 0))
    if eps is None:
        eps = float(np.finfo(x.dtype).eps) if x.dtype.kind == "f" else 1e-6
    dtype = x.dtype
    h = x.data.astype(np.float32) if dtype == np.float16 else x.data  # [..., D]
    D = float(math.prod(h.shape[-len(dims):]))  # a Python float: never upcasts float32
    r = 1.0 / np.sqrt(np.add.reduce(h * h, axis=dims, keepdims=True) / D + float(eps))  # [..., 1]
    n = (h * r).astype(dtype, copy=False)  # [..., D]: unit root-mean-square
    out = n * weight.data if weight is not None else n
    parents = (x,) if weight is None else (x, weight)

    def backward(g):
        gw = None
        if weight is not None and weight.requires_grad:
            gw = (g * n).reshape((-1,) + weight.shape).sum(axis=0)  # sum over every row
        gn = (g * weight.data if weight is not None else g).astype(h.dtype, copy=False)
        gx = r * (gn - n * (np.add.reduce(gn * n, axis=dims, keepdims=True) / D))
        gx = gx.astype(dtype, copy=False)
        return (gx,) if weight is None else (gx, gw)

    return Tensor._make(out, parents, backward, "rms_norm")
# lesson 05: end (rms_norm) exercise


# lesson 05: begin (layer_norm) exercise
def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, biased variance (divide by N), like torch."""
    dims = tuple(range(-len(_tuple(normalized_shape)), 0))
    mu = x.mean(dim=dims, keepdim=True)
    xc = x - mu
    var = (xc * xc).mean(dim=dims, keepdim=True)
    h = xc * (var + float(eps)).rsqrt()
    if weight is not None:
        h = h * weight
    if bias is not None:
        h = h + bias
    return h
# lesson 05: end (layer_norm) exercise


def _tuple(s):
    return (s,) if isinstance(s, int) else tuple(s)


def cross_entropy(logits: Tensor, target, ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of class logits against integer targets, with torch's semantics.

    logits: [N, C] (or [C], or [N, C, d1, ...] with classes on dim 1); target: [N] (or [], or
    [N, d1, ...]) integer class ids. With eps = label_smoothing and p = softmax(logits):

        loss_i = (1 - eps) * (-log p[i, y_i]) + eps * mean_c(-log p[i, c])

    Rows whose target is `ignore_index` contribute 0 and are left out of the mean's denominator
    ('mean' = sum over kept rows / number of kept rows; NaN when every row is ignored, as in torch).
    reduction='none' returns one loss per target position, in the target's shape.
    """
    t = np.asarray(target.data if isinstance(target, Tensor) else target)
    if t.dtype.kind not in "iu":
        raise ShapeError(f"cross_entropy target must hold integer class ids, got dtype {t.dtype} "
                         f"(probability targets are not supported)")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    out_shape = t.shape
    if logits.ndim == 1:  # [C] with a scalar target
        logits = logits.reshape(1, -1)
    elif logits.ndim > 2:  # [N, C, d1..] -> [N*d1.., C]
        if t.shape != (logits.shape[0],) + logits.shape[2:]:
            raise ShapeError(f"cross_entropy: target has shape {t.shape}, expected "
                             f"{(logits.shape[0],) + logits.shape[2:]} for logits {logits.shape}")
        perm = (0,) + tuple(range(2, logits.ndim)) + (1,)
        logits = logits.permute(perm).reshape(-1, logits.shape[1])
    t = t.reshape(-1)
    N, C = logits.shape
    if t.shape != (N,):
        raise ShapeError(f"cross_entropy: target has shape {out_shape}, expected ({N},) for logits {logits.shape}")
    valid = t != ignore_index
    bad = valid & ((t < 0) | (t >= C))
    if bad.any():
        raise ShapeError(f"cross_entropy: target class {int(t[bad][0])} out of range for {C} classes")
    # lesson 02: begin (cross_entropy loss) exercise
    logp = log_softmax(logits, dim=-1)  # [N, C], stable (max-subtracted)
    nll = -logp[np.arange(N), np.where(valid, t, 0)]  # [N]; ignored rows pick class 0, masked below
    if label_smoothing > 0.0:
        smooth = -logp.mean(dim=-1)  # [N] = (1/C) sum_c -log p
        loss = nll * (1.0 - label_smoothing) + smooth * float(label_smoothing)
    else:
        loss = nll
    loss = ops.where(valid, loss, 0.0)  # exactly 0 (and 0 gradient) on ignored rows
    if reduction == "none":
        return loss.reshape(out_shape)
    if reduction == "sum":
        return loss.sum()
    if not valid.any():  # 0/0: torch returns NaN when every target is ignored, with zero gradients
        return loss.sum() + float("nan")
    return loss.sum() / float(valid.sum())
    # lesson 02: end (cross_entropy loss) exercise


def mse_loss(input: Tensor, target, reduction: str = "mean") -> Tensor:
    """Mean squared error: mean((input - target)^2) ('sum' / 'none' as in torch)."""
    if reduction not in ("mean", "sum", "none"):
        raise ConfigError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    t_shape = target.shape if hasattr(target, "shape") else np.shape(target)
    if tuple(t_shape) != tuple(input.shape):
        raise ShapeError(f"mse_loss: input has shape {input.shape} but target has shape {tuple(t_shape)} "
                         f"(torch would broadcast them, which is almost always a bug)")
    d = input - target
    sq = d * d
    return sq.mean() if reduction == "mean" else sq.sum() if reduction == "sum" else sq


# Pieces with a file of their own (one concept per file), re-exported here under torch's names.
from .dropout import dropout, dropout_mask  # noqa: E402
from .rope import apply_rope  # noqa: E402
from .sdpa import scaled_dot_product_attention  # noqa: E402
from .delta_rule import gated_delta_rule  # noqa: E402
from .doubly_stochastic import sinkhorn_knopp  # noqa: E402
