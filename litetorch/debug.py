"""Find the first layer where two implementations disagree.

    with capture(lt_model) as ours:          # records every submodule's output by name
        lt_model(x)
    with capture(torch_model) as theirs:     # works on torch modules too (forward hooks)
        torch_model(x_torch)
    compare(ours, theirs)                    # one line per name, in the order they ran

    [OK]      layers.0.self_attn  max=1.2e-07 mean=3.1e-08
    [DIFF]    layers.0.mlp        max=4.0e-01 mean=9.3e-02  (tol 1.5e-05)
    [SHAPE]   layers.1            a=(1, 5, 64) b=(1, 64, 5)
    [MISSING] lm_head             only in a

A value passes when max|a - b| <= atol + rtol * max|b| (error relative to the output's scale,
as in docs/ARCHITECTURE.md §5). The first [DIFF] in data order is usually the bug; everything after it
inherits the error.
"""
from __future__ import annotations

import builtins
import fnmatch
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from .tensor import Tensor


@dataclass
class CompareRow:
    name: str
    status: str  # "OK", "DIFF", "SHAPE" or "MISSING"
    max_abs: float = float("nan")
    mean_abs: float = float("nan")
    tol: float = float("nan")
    shape_a: tuple | None = None
    shape_b: tuple | None = None

    def format(self, name_width: int = 0) -> str:
        """One report line; `name_width` pads the name so a column of rows lines up."""
        tag, name = f"[{self.status}]".ljust(10), self.name.ljust(name_width)
        if self.status == "MISSING":
            return f"{tag}{name}  only in {'a' if self.shape_b is None else 'b'}"
        if self.status == "SHAPE":
            return f"{tag}{name}  a={self.shape_a} b={self.shape_b}"
        line = f"{tag}{name}  max={self.max_abs:.1e} mean={self.mean_abs:.1e}"
        return line + (f"  (tol {self.tol:.1e})" if self.status == "DIFF" else "")

    def __str__(self):
        return self.format()


def to_numpy(x) -> np.ndarray:
    """A litetorch Tensor, ndarray, torch tensor (any device/grad) or number -> ndarray.
    A tuple (HF layers return (hidden_states, ...)) gives its first element; a list is data."""
    if isinstance(x, tuple):
        x = x[0]
    if isinstance(x, Tensor):
        return x.data
    if hasattr(x, "detach"):  # torch
        x = x.detach()
        if hasattr(x, "cpu"):
            x = x.cpu()
        return x.numpy()
    return np.asarray(x)


def compare(a_outputs: dict, b_outputs: dict, rtol: float = 1e-5, atol: float = 1e-8, print: bool = True):
    """Compare two {name: value} dicts name by name; return a list of CompareRow (and print them).

    Rows follow a's order, then names only in b. NaN anywhere in a difference makes it a DIFF.
    """
    rows = []
    for name, a in a_outputs.items():
        if name not in b_outputs:
            rows.append(CompareRow(name, "MISSING", shape_a=to_numpy(a).shape))
            continue
        x, y = to_numpy(a), to_numpy(b_outputs[name])
        if x.shape != y.shape:
            rows.append(CompareRow(name, "SHAPE", shape_a=x.shape, shape_b=y.shape))
            continue
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
        max_abs = float(d.max()) if d.size else 0.0
        mean_abs = float(d.mean()) if d.size else 0.0
        scale = float(np.abs(y).max()) if y.size else 0.0
        tol = atol + rtol * scale
        ok = bool(np.all(np.isfinite(d))) and max_abs <= tol if d.size else True
        rows.append(CompareRow(name, "OK" if ok else "DIFF", max_abs, mean_abs, tol, x.shape, y.shape))
    for name, b in b_outputs.items():
        if name not in a_outputs:
            rows.append(CompareRow(name, "MISSING", shape_b=to_numpy(b).shape))
    if print:
        width = max((len(r.name) for r in rows), default=0)
        for r in rows:
            builtins.print(r.format(width))
    return rows


def _selected(name: str, names) -> bool:
    if names is None:
        return True
    return any(name == n or fnmatch.fnmatchcase(name, n) for n in names)


@contextmanager
def capture(model, names=None):
    """Record the output of each named submodule while the block runs: yields {name: ndarray}.

    names: None (every submodule, not the root), or a list of exact names / glob patterns
    ("layers.*.mlp"). Outputs are *copied* (a KV-cache view would otherwise change under you);
    a module called several times keeps its last output. The dict is filled in call order.

    litetorch modules: each selected module's `forward` is wrapped on the instance and restored on
    exit. torch modules (anything with `register_forward_hook`): forward hooks, removed on exit.
    """
    out: dict = {}
    modules, seen = [], set()
    for n, m in model.named_modules():
        if n and _selected(n, names) and id(m) not in seen:  # a shared module is recorded once
            seen.add(id(m))
            modules.append((n, m))

    def record(name, value):
        out.pop(name, None)  # re-insert so the order is the last call order
        out[name] = np.array(to_numpy(value), copy=True)

    if hasattr(model, "register_forward_hook"):  # torch
        handles = [m.register_forward_hook(lambda mod, args, res, n=n: record(n, res)) for n, m in modules]
        try:
            yield out
        finally:
            for h in handles:
                h.remove()
        return

    def wrap(name, fn):
        def forward(*args, **kwargs):
            res = fn(*args, **kwargs)
            record(name, res)
            return res
        return forward

    for n, m in modules:
        object.__setattr__(m, "forward", wrap(n, m.forward))  # instance attribute shadows the method
    try:
        yield out
    finally:
        for _, m in modules:
            m.__dict__.pop("forward", None)
