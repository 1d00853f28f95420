"""`Optimizer`: the bookkeeping every update rule shares (torch.optim.Optimizer's shape).

An optimizer holds

- `param_groups`: a list of dicts, each with a `"params"` list and its own hyper-parameters
  (`lr`, `weight_decay`, ...). One group is the usual case; several let, say, norms skip
  weight decay. A learning-rate scheduler works by rewriting `group["lr"]`.
- `state`: per-parameter memory (momentum buffer, Adam's moments, the step count), keyed by the
  Parameter object itself.

Subclasses implement `_update(p, grad, state, group)` for one parameter; `step()` loops over
the groups and skips parameters without a gradient. Updates replace `p.data` with a new array of
the *same dtype*: a float32 model stays float32 (every scalar in the update is a Python float,
which NumPy 2 treats as "weak" and casts to the array's dtype).
"""
from __future__ import annotations

import copy

import numpy as np

from ..tensor import Tensor, enable_grad
from ..errors import ConfigError


class Optimizer:
    def __init__(self, params, defaults: dict):
        self.defaults = dict(defaults)
        self.state: dict = {}
        self.param_groups: list[dict] = []
        if isinstance(params, Tensor):
            raise ConfigError("params must be an iterable of Parameters (e.g. model.parameters()), got a single Tensor")
        params = list(params)
        if not params:
            raise ConfigError("optimizer got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        for group in params:
            self.add_param_group(group)

    def add_param_group(self, group: dict) -> None:
        """Add a group of parameters with its own hyper-parameters (missing ones take the defaults)."""
        group = dict(group)
        ps = group["params"]
        ps = [ps] if isinstance(ps, Tensor) else list(ps)
        unique = []
        for p in ps:
            if not isinstance(p, Tensor):
                raise ConfigError(f"optimizer can only optimize Tensors/Parameters, got {type(p).__name__}")
            if p.dtype.kind != "f":
                raise ConfigError(f"optimizer can only optimize float tensors, got dtype {p.dtype}")
            if not any(p is q for q in unique):  # a parameter listed twice must not be updated twice
                unique.append(p)
        existing = {id(q) for g in self.param_groups for q in g["params"]}
        if any(id(p) in existing for p in unique):
            raise ConfigError("some parameters appear in more than one parameter group")
        group["params"] = unique
        for k, v in self.defaults.items():
            group.setdefault(k, v)
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Forget the gradients (call before each `backward()`: gradients accumulate otherwise)."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None if set_to_none or p.grad is None else np.zeros_like(p.grad)

    def step(self, closure=None):
        """Apply one update to every parameter that has a gradient. Returns `closure()` if given."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = np.asarray(p.grad, dtype=p.data.dtype)  # never upcast: grad takes the param's dtype
                state = self.state.setdefault(p, {})
                self._update(p, grad, state, group)
        return loss

    def _update(self, p: Tensor, grad: np.ndarray, state: dict, group: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define _update()")

    # ---- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """torch's layout: {"state": {index: {name: value}}, "param_groups": [{..., "params": [index]}]}.

        Parameters are numbered in group order, so the dict refers to no Python object and can be
        saved and loaded into a fresh optimizer built over the same model. Arrays are copies.
        """
        index = {}
        groups = []
        for group in self.param_groups:
            g = {k: v for k, v in group.items() if k != "params"}
            g["params"] = []
            for p in group["params"]:
                index[id(p)] = len(index)
                g["params"].append(index[id(p)])
            groups.append(g)
        state = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p in self.state and self.state[p]:
                    state[index[id(p)]] = {k: (v.copy() if isinstance(v, np.ndarray) else v)
                                           for k, v in self.state[p].items()}
        return {"state": state, "param_groups": copy.deepcopy(groups)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore hyper-parameters and per-parameter state saved by `state_dict()`.

        Checks group and parameter counts and every array's shape before changing anything;
        float state arrays are cast to their parameter's dtype (like torch).
        """
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ConfigError(f"loaded state dict has {len(groups)} parameter groups, "
                              f"the optimizer has {len(self.param_groups)}")
        params = []
        for i, (saved, own) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(own["params"]):
                raise ConfigError(f"parameter group {i}: loaded state dict has {len(saved['params'])} parameters, "
                                  f"the optimizer has {len(own['params'])}")
            params.extend(zip(saved["params"], own["params"]))
        by_index = dict(params)
        new_state = {}
        for idx, s in state_dict["state"].items():
            idx = int(idx)
            if idx not in by_index:
                raise ConfigError(f"loaded state refers to parameter {idx}, which no group holds")
            p = by_index[idx]
            entry = {}
            for k, v in s.items():
                if isinstance(v, np.ndarray) or hasattr(v, "numpy"):
                    v = np.asarray(v.numpy() if hasattr(v, "numpy") and not isinstance(v, np.ndarray) else v)
                    if v.shape == p.shape:
                        v = v.astype(p.data.dtype) if v.dtype.kind == "f" else v.copy()
                    elif v.size == 1:  # a step counter saved as a 0-d array (torch stores it that way)
                        v = v.item()
                    else:
                        raise ConfigError(f"state {k!r} of parameter {idx} has shape {v.shape}, "
                                          f"the parameter has shape {p.shape}")
                entry[k] = v
            new_state[p] = entry
        self.state = new_state
        for saved, own in zip(groups, self.param_groups):
            for k, v in saved.items():
                if k != "params":
                    own[k] = copy.deepcopy(v)

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, g in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            lines += [f"    {k}: {v}" for k, v in sorted(g.items()) if k != "params"]
        return "\n".join(lines) + "\n)"
