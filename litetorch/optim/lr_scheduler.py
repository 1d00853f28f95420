"""Learning-rate schedules: `LambdaLR` (torch's) and linear warmup + cosine decay.

A scheduler rewrites `group["lr"]` of its optimizer; call `scheduler.step()` once after each
`optimizer.step()`. As in torch, building the scheduler already applies step 0:

    lr(s) = base_lr * lr_lambda(s),   s = number of scheduler.step() calls so far

Warmup + cosine (`CosineWithWarmup`, the schedule most LLMs are trained with), with W warmup
steps, T total steps and floor r = min_lr_ratio:

    lr_lambda(s) = s / W                                        for s < W   (linear warmup from 0)
    lr_lambda(s) = r + (1 - r) * 0.5 * (1 + cos(pi * q))        for s >= W, q = min(1, (s - W) / (T - W))

It equals HF transformers' `get_cosine_with_min_lr_schedule_with_warmup(optimizer, W, T,
min_lr_rate=r)` (and `get_cosine_schedule_with_warmup` when r = 0) for every s <= T; after T
litetorch stays at r * base_lr, where transformers' cosine would start rising again.
Warmup matters for Adam-type optimizers: the first updates are made with a noisy second-moment
estimate, and a small lr keeps them from throwing the weights far away.
"""
from __future__ import annotations

import math

from .optimizer import Optimizer
from ..errors import ConfigError, StateDictError


class LRScheduler:
    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise ConfigError(f"{type(self).__name__} needs a litetorch Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        elif any("initial_lr" not in g for g in optimizer.param_groups):
            raise StateDictError("resuming a scheduler (last_epoch >= 0) needs 'initial_lr' in every param group; "
                                 "load the optimizer's state_dict first")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self.step()  # applies lr_lambda(last_epoch + 1): step 0 for a fresh schedule

    def get_lr(self) -> list:
        raise NotImplementedError

    def step(self) -> None:
        self.last_epoch += 1
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def get_last_lr(self) -> list:
        """The learning rates the optimizer will use at its next step."""
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in ("optimizer", "lr_lambdas")})


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(step); one lambda for all groups or a list, one per group."""

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ConfigError(f"expected {n} lr_lambdas (one per param group), got {len(lr_lambda)}")
            self.lr_lambdas = list(lr_lambda)
        else:
            self.lr_lambdas = [lr_lambda] * n
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list:
        return [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas)]


# lesson 02: begin (cosine) exercise
def warmup_cosine_lambda(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base lr at `step` (see the module docstring for the formula)."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))  # 0, 1/W, 2/W, ...: linear warmup
    progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
    progress = min(progress, 1.0)  # hold the floor after total_steps
    factor = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0 along half a cosine period
    return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)  # rescaled to 1 -> min_lr_ratio
# lesson 02: end (cosine) exercise


class CosineWithWarmup(LambdaLR):
    """Linear warmup for `warmup_steps`, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""

    def __init__(self, optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                 last_epoch: int = -1):
        if warmup_steps < 0 or total_steps < warmup_steps:
            raise ConfigError(f"need 0 <= warmup_steps <= total_steps, got warmup_steps={warmup_steps}, "
                              f"total_steps={total_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.warmup_steps, self.total_steps, self.min_lr_ratio = warmup_steps, total_steps, min_lr_ratio
        super().__init__(optimizer, self._lambda, last_epoch)

    def _lambda(self, step: int) -> float:
        return warmup_cosine_lambda(step, self.warmup_steps, self.total_steps, self.min_lr_ratio)


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
                                    min_lr_ratio: float = 0.0, last_epoch: int = -1) -> CosineWithWarmup:
    """HF transformers' name and argument order for `CosineWithWarmup`."""
    return CosineWithWarmup(optimizer, num_warmup_steps, num_training_steps, min_lr_ratio, last_epoch)
