"""Adam and AdamW: per-parameter step sizes from running moments of the gradient.

The update is torch.optim.Adam / AdamW's, operation for operation (lesson 02). With step t,
learning rate lr, betas (b1, b2), eps and weight decay lambda, for each parameter p and gradient g:

    AdamW:  p <- p * (1 - lr * lambda)          decoupled weight decay (shrink p directly)
    Adam:   g <- g + lambda * p                 L2 penalty folded into the gradient
    m <- m + (1 - b1) * (g - m)                 first moment  (= b1 m + (1 - b1) g)
    v <- b2 * v + (1 - b2) * g^2                second moment
    m_hat = m / (1 - b1^t),   v_hat = v / (1 - b2^t)          bias correction (m, v start at 0)
    p <- p - lr * m_hat / (sqrt(v_hat) + eps)

written, as torch does, as  p <- p - (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
With amsgrad, v_hat uses the running maximum of v instead of v.

Why AdamW: in Adam the L2 term lambda*p passes through the 1/sqrt(v) scaling, so parameters with
large gradients are barely regularized; AdamW decays every weight by the same factor.
"""
from __future__ import annotations

import numpy as np

from .optimizer import Optimizer
from ..errors import ConfigError


class Adam(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False, maximize: bool = False, decoupled_weight_decay: bool = False):
        if lr < 0.0:
            raise ConfigError(f"invalid learning rate: {lr}")
        if eps < 0.0:
            raise ConfigError(f"invalid eps: {eps}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ConfigError(f"invalid betas {betas}: each must be in [0, 1)")
        if weight_decay < 0.0:
            raise ConfigError(f"invalid weight_decay: {weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize, decoupled_weight_decay=decoupled_weight_decay))

    # lesson 02: begin (adamw) exercise
    def _update(self, p, grad, state, group):
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        b1, b2 = (float(b) for b in group["betas"])
        g = -grad if group["maximize"] else grad
        if not state:  # lazy init: the moments start at zero, hence the bias correction below
            state["step"] = 0
            state["exp_avg"] = np.zeros_like(p.data)
            state["exp_avg_sq"] = np.zeros_like(p.data)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = np.zeros_like(p.data)
        state["step"] += 1
        t = state["step"]

        if wd != 0.0:
            if group["decoupled_weight_decay"]:  # AdamW
                p.data = p.data * (1.0 - lr * wd)
            else:  # Adam: L2 in the gradient
                g = g + wd * p.data

        m = state["exp_avg"] = state["exp_avg"] + (1.0 - b1) * (g - state["exp_avg"])  # torch's lerp
        v = state["exp_avg_sq"] = state["exp_avg_sq"] * b2 + ((1.0 - b2) * g) * g

        bias_correction1 = 1.0 - b1 ** t  # Python floats: a NumPy float64 scalar would upcast float32
        bias_correction2 = 1.0 - b2 ** t
        step_size = lr / bias_correction1
        if group["amsgrad"]:
            v = state["max_exp_avg_sq"] = np.maximum(state["max_exp_avg_sq"], v)
        denom = np.sqrt(v) / (bias_correction2 ** 0.5) + eps  # sqrt(v_hat) + eps
        p.data = p.data + ((-step_size) * m) / denom
    # lesson 02: end (adamw) exercise


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter); torch's default weight_decay=1e-2."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                         maximize=maximize, decoupled_weight_decay=True)
