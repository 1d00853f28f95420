"""Stochastic gradient descent with momentum, dampening, Nesterov and L2 weight decay.

The update is torch.optim.SGD's, operation for operation (lesson 02). For each parameter p
with gradient g, learning rate lr, momentum mu, dampening tau, weight decay lambda:

    g  <- g + lambda * p                    (L2 penalty folded into the gradient)
    b  <- g                                 on the first step
    b  <- mu * b + (1 - tau) * g            afterwards (the momentum buffer)
    g  <- g + mu * b   if nesterov,  else  g <- b
    p  <- p - lr * g
"""
from __future__ import annotations

from .optimizer import Optimizer
from ..errors import ConfigError


class SGD(Optimizer):
    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False):
        if lr < 0.0:
            raise ConfigError(f"invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ConfigError(f"invalid momentum: {momentum}")
        if weight_decay < 0.0:
            raise ConfigError(f"invalid weight_decay: {weight_decay}")
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ConfigError("Nesterov momentum requires momentum > 0 and dampening = 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                                      nesterov=nesterov, maximize=maximize))

    # lesson 02: begin (sgd) exercise
    def _update(self, p, grad, state, group):
        lr, mu, tau, wd = (float(group[k]) for k in ("lr", "momentum", "dampening", "weight_decay"))
        g = -grad if group["maximize"] else grad
        if wd != 0.0:
            g = g + wd * p.data  # L2 regularization: the gradient of wd/2 * |p|^2
        if mu != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = g.copy()  # first step: the buffer starts at the gradient (no warm-up from 0)
            else:
                buf = buf * mu + (1.0 - tau) * g  # a running, exponentially weighted sum of gradients
            state["momentum_buffer"] = buf
            g = g + mu * buf if group["nesterov"] else buf  # Nesterov: look ahead along the buffer
        p.data = p.data - lr * g
    # lesson 02: end (sgd) exercise

