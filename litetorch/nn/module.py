"""`Module`: a container that finds its own parameters.

Assigning a `Parameter` or a `Module` to an attribute registers it (`__setattr__`), so
`named_parameters()` can walk the tree and produce torch-compatible names such as
`layers.3.self_attn.q_proj.weight`. Those names are the contract that lets a learner copy a
torch model's `state_dict()` into its litetorch twin and compare outputs.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from ..errors import ConfigError, DTypeError, OutOfRangeError, StateDictError
from ..tensor import Parameter, Tensor


class IncompatibleKeys(NamedTuple):
    """What `load_state_dict(strict=False)` could not match (torch's `_IncompatibleKeys`)."""

    missing_keys: list
    unexpected_keys: list


class Module:
    """Base class of every layer and model.

    Subclasses assign their parameters and sub-modules in `__init__` (after `super().__init__()`)
    and define `forward`. Calling the module calls `forward`.
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # lesson 02: begin (registration) exercise
    def __setattr__(self, name, value):
        """`self.fc = Linear(...)` or `self.w = Parameter(...)` registers the value under `name`.

        That is the whole trick behind `named_parameters()`: each module keeps ordered registries
        of what was assigned to it, and walking them recursively yields torch's dotted names.
        """
        if "_parameters" not in self.__dict__:
            raise AttributeError("call super().__init__() before assigning attributes in a Module")
        if isinstance(value, Parameter):
            self._forget(name, keep=self._parameters)  # re-assigning keeps its place in the order
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._forget(name, keep=self._modules)
            self._modules[name] = value
        elif name in self._parameters:  # like torch: a parameter slot takes a Parameter or None
            if value is not None:
                raise ConfigError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                  f"(litetorch.nn.Parameter or None expected)")
            self._parameters[name] = None
        elif name in self._buffers:  # re-assigning a buffer keeps it a buffer
            self._buffers[name] = value
        else:
            self._modules.pop(name, None)
        object.__setattr__(self, name, value)
    # lesson 02: end (registration) exercise

    def _forget(self, name: str, keep=None) -> None:
        """Remove `name` from every registry except `keep`."""
        for registry in (self._parameters, self._modules, self._buffers):
            if registry is not keep:
                registry.pop(name, None)
        if keep is not self._buffers:
            self._non_persistent.discard(name)

    def register_parameter(self, name: str, param) -> None:
        """Same as `setattr(self, name, param)`, for names built at run time (`None` keeps an empty slot)."""
        if param is not None and not isinstance(param, Parameter):
            raise ConfigError(f"register_parameter({name!r}): expected a Parameter or None, got {type(param).__name__}")
        self._forget(name, keep=self._parameters)
        self._parameters[name] = param
        object.__setattr__(self, name, param)

    def add_module(self, name: str, module) -> None:
        if module is not None and not isinstance(module, Module):
            raise ConfigError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        self._forget(name, keep=self._modules)
        self._modules[name] = module
        object.__setattr__(self, name, module)

    def register_buffer(self, name: str, tensor, persistent: bool = True) -> None:
        """A non-learnable array (a running mean, a RoPE cos/sin table, a causal mask).

        Every buffer follows `to()/double()`; only *persistent* ones are saved by `state_dict()`
        (non-persistent ones are caches that can be recomputed, as in torch).
        """
        self._forget(name, keep=self._buffers)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)
        object.__setattr__(self, name, tensor)

    def __delattr__(self, name):
        self._forget(name)
        object.__delattr__(self, name)

    # ---- calling --------------------------------------------------------------------------
    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # ---- walking the tree -------------------------------------------------------------------
    def named_modules(self, prefix: str = "", remove_duplicate: bool = True, _memo=None):
        """(dotted name, module) pairs, depth first, this module first (name "").

        A module reachable by two paths is yielded once unless `remove_duplicate=False`.
        """
        memo = set() if _memo is None else _memo
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is None:
                continue
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, remove_duplicate, memo)

    def modules(self):
        return (m for _, m in self.named_modules())

    def named_children(self):
        return ((n, m) for n, m in self._modules.items() if m is not None)

    def children(self):
        return (m for _, m in self.named_children())

    def named_parameters(self, prefix: str = "", remove_duplicate: bool = True):
        """(name, Parameter) pairs, depth first; a parameter shared by two modules (tied weights)
        appears once, under the first name that reaches it, unless `remove_duplicate=False`."""
        seen = set()
        for mod_name, mod in self.named_modules(prefix, remove_duplicate=remove_duplicate):
            for name, p in mod._parameters.items():
                if p is None or (remove_duplicate and id(p) in seen):
                    continue
                seen.add(id(p))
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return (p for _, p in self.named_parameters())

    def named_buffers(self, prefix: str = "", remove_duplicate: bool = True, persistent_only: bool = False):
        seen = set()
        for mod_name, mod in self.named_modules(prefix, remove_duplicate=remove_duplicate):
            for name, b in mod._buffers.items():
                if b is None or (persistent_only and name in mod._non_persistent):
                    continue
                if remove_duplicate and id(b) in seen:
                    continue
                seen.add(id(b))
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def buffers(self):
        return (b for _, b in self.named_buffers())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- modes and grads ----------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.parameters():
            p.grad = None if set_to_none or p.grad is None else np.zeros_like(p.grad)

    def requires_grad_(self, flag: bool = True) -> "Module":
        for p in self.parameters():
            p.requires_grad = flag
        return self

    def to(self, dtype) -> "Module":
        """Cast every float parameter and buffer to `dtype` in place (float32 <-> float64).

        Parameters keep their identity (an optimizer built before still holds them), their
        gradients are dropped. Build the optimizer *after* casting: its state keeps the old dtype.
        """
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise DTypeError(f"Module.to() casts float parameters to a float dtype, got {dtype}")
        for m in self.modules():
            for p in m._parameters.values():
                if p is not None and p.dtype.kind == "f" and p.dtype != dtype:
                    p.data = p.data.astype(dtype)
                    p.grad = None
            for name, b in list(m._buffers.items()):
                if b is not None and np.asarray(b).dtype.kind == "f":
                    arr = (b.data if isinstance(b, Tensor) else b).astype(dtype)
                    m._buffers[name] = Tensor(arr) if isinstance(b, Tensor) else arr
                    object.__setattr__(m, name, m._buffers[name])
        return self

    def float(self) -> "Module":
        return self.to(np.float32)

    def double(self) -> "Module":
        return self.to(np.float64)

    def apply(self, fn) -> "Module":
        for m in self.children():
            m.apply(fn)
        fn(self)
        return self

    # ---- state_dict -----------------------------------------------------------------------------
    def _state_entries(self, prefix: str = ""):
        """(key, module, attribute name) for every state_dict entry, in torch's order:
        a module's own parameters, then its persistent buffers, then each child recursively."""
        for name, p in self._parameters.items():
            if p is not None:
                yield prefix + name, self, name
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                yield prefix + name, self, name
        for name, child in self._modules.items():
            if child is not None:
                yield from child._state_entries(f"{prefix}{name}.")

    def fused_parts(self) -> dict:
        """The separate tensors a checkpoint may keep for one of this module's fused projections.

        {"qkv_proj": [("q_proj", rows), ("k_proj", rows), ("v_proj", rows)]} says that the rows of
        `qkv_proj.weight` are HF's `q_proj.weight`, `k_proj.weight` and `v_proj.weight`, stacked in
        that order. `load_state_dict` accepts either form; `state_dict(split_fused=True)` writes the
        separate one. Most modules fuse nothing.
        """
        return {}

    def state_dict(self, split_fused: bool = False) -> "OrderedDict[str, np.ndarray]":
        """Name -> ndarray (a copy) with torch's keys and order (see `_state_entries`).

        Tied weights appear under every name that holds them, as in torch. `split_fused=True` gives
        fused projections under the separate names checkpoints use (HF's `q_proj`, `k_proj`, ...).
        """
        out = OrderedDict()
        for key, mod, name in self._state_entries():
            value = getattr(mod, name)
            out[key] = np.array(value.data if isinstance(value, Tensor) else value, copy=True)
        return split_fused_names(self, out) if split_fused else out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> IncompatibleKeys:
        """Copy arrays into parameters/buffers by name. Validates everything before writing anything.

        Values may be ndarrays, litetorch Tensors, or anything with `.numpy()` (e.g. a torch tensor:
        `{k: v.detach().numpy() for k, v in torch_model.state_dict().items()}` works, and so does
        passing torch's state_dict directly). Shapes must match exactly (even with strict=False, like
        torch); values are cast to the parameter's dtype, so a float64 checkpoint loads into a
        float32 model. On any error a `StateDictError` names every missing key, unexpected key and
        shape mismatch, and the model is left untouched.
        Returns `IncompatibleKeys(missing_keys, unexpected_keys)` like torch.
        `assign=True` (torch's flag) keeps the given arrays instead of copying them when their dtype
        already matches: a loader that has just made fresh arrays saves a copy of every weight.
        """
        state_dict = join_fused_names(self, state_dict)  # HF's q_proj/k_proj/v_proj -> our qkv_proj
        entries = OrderedDict((key, (mod, name)) for key, mod, name in self._state_entries())
        missing = [k for k in entries if k not in state_dict]
        unexpected = [k for k in state_dict if k not in entries]
        arrays, mismatched, bad_dtype = {}, [], []
        for k, v in state_dict.items():
            if k not in entries:
                continue
            arr = _to_numpy(v)
            cur = getattr(*entries[k])
            cur = cur if isinstance(cur, Tensor) else np.asarray(cur)  # a Tensor knows its shape without its values
            if arr.shape != cur.shape:
                mismatched.append(f"{k}: checkpoint {arr.shape} vs model {cur.shape}")
            elif cur.dtype.kind == "f" and arr.dtype.kind not in "fiu":
                bad_dtype.append(f"{k}: checkpoint dtype {arr.dtype}, expected a float array")
            arrays[k] = arr
        problems = []
        if mismatched:
            problems.append("size mismatch for " + "; ".join(mismatched))
        if bad_dtype:
            problems.append("dtype mismatch for " + "; ".join(bad_dtype))
        if strict and missing:
            problems.append("missing keys: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected keys: " + ", ".join(unexpected))
        if problems:
            raise StateDictError(f"Error(s) in loading state_dict for {type(self).__name__}: " + " | ".join(problems))
        # Everything checked: now write (a tied weight is written once per name, same value).
        for k, arr in arrays.items():
            mod, name = entries[k]
            if name in mod._parameters:
                p = mod._parameters[name]
                p.data = np.array(arr, dtype=p.dtype, copy=not assign or None)
            else:
                old = mod._buffers[name]
                new = np.array(arr, dtype=np.asarray(old).dtype, copy=True)
                mod._buffers[name] = Tensor(new) if isinstance(old, Tensor) else new
                object.__setattr__(mod, name, mod._buffers[name])
        return IncompatibleKeys(missing, unexpected)

    # ---- printing ---------------------------------------------------------------------------------
    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        lines = [f"{type(self).__name__}({self.extra_repr()}"]
        children = list(self.named_children())
        if not children:
            return lines[0] + ")"
        for name, child in children:
            sub = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        return "\n".join(lines) + "\n)"


# ---- fused projections and the separate names of checkpoints --------------------------------------
def _fused_keys(model: Module):
    """(fused key, [(part key, rows), ...]) for every fused parameter in the tree, weights and biases."""
    for prefix, mod in model.named_modules():
        prefix = prefix + "." if prefix else ""
        for fused, parts in mod.fused_parts().items():
            for suffix in ("weight", "bias"):
                if getattr(getattr(mod, fused), suffix, None) is not None:
                    yield f"{prefix}{fused}.{suffix}", [(f"{prefix}{p}.{suffix}", n) for p, n in parts]


def fused_keys(model: Module) -> dict:
    """{fused key: [(part key, rows), ...]} for every fused parameter in the tree, e.g.
    {"model.layers.0.self_attn.qkv_proj.weight": [("model.layers.0.self_attn.q_proj.weight", 576), ...]}."""
    return dict(_fused_keys(model))


def join_fused_names(model: Module, state_dict) -> dict:
    """A state_dict with separate q_proj/k_proj/v_proj (or gate_proj/up_proj) rows -> one with the
    model's fused keys, the parts stacked in order. Keys already in the model's form pass unchanged."""
    out = dict(state_dict)
    for fused, parts in _fused_keys(model):
        given = [k for k, _ in parts if k in out]
        if not given:
            continue
        if len(given) != len(parts) or fused in out:
            want = " + ".join(k for k, _ in parts)
            raise StateDictError(f"{fused} is stored either as one tensor or as {want}; this state_dict has "
                                 f"{', '.join(given + ([fused] if fused in out else []))}")
        out[fused] = np.concatenate([_to_numpy(out.pop(k)) for k, _ in parts], axis=0)  # [sum(rows), ...]
    return out


def split_fused_names(model: Module, tensors) -> dict:
    """The inverse of `join_fused_names`: each fused key -> its parts' keys (row views), in place.
    Works for any name -> array mapping: a state_dict, or the parameters' gradients."""
    fused = dict(_fused_keys(model))
    out = {}
    for key, value in tensors.items():
        if key not in fused:
            out[key] = value
            continue
        start = 0
        for part, n in fused[key]:
            out[part] = value[start:start + n]  # [rows, ...] of the stacked tensor
            start += n
    return out


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, Tensor):
        return v.data
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # a torch tensor
        v = v.detach()
    if hasattr(v, "numpy"):
        return v.numpy()
    return np.asarray(v)


class ModuleList(Module):
    """A list of modules registered as children "0", "1", ... (so names read `layers.3.mlp`)."""

    def __init__(self, modules=()):
        super().__init__()
        for m in modules:
            self.append(m)

    def append(self, module: Module) -> "ModuleList":
        setattr(self, str(len(self._modules)), module)
        return self

    def extend(self, modules) -> "ModuleList":
        for m in modules:
            self.append(m)
        return self

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ModuleList(list(self._modules.values())[i])
        n = len(self._modules)
        if not -n <= i < n:
            raise OutOfRangeError(f"index {i} out of range for ModuleList of length {n}")
        return self._modules[str(i % n)]

    def __setitem__(self, i: int, module: Module) -> None:
        n = len(self._modules)
        if not -n <= i < n:
            raise OutOfRangeError(f"index {i} out of range for {type(self).__name__} of length {n}")
        setattr(self, str(i % n), module)

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())


class Sequential(ModuleList):
    """Modules applied in order: Sequential(a, b, c)(x) == c(b(a(x)))."""

    def __init__(self, *modules):
        super().__init__(modules)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Sequential(*list(self._modules.values())[i])
        return super().__getitem__(i)

    def forward(self, x):
        for m in self:
            x = m(x)
        return x


class ModuleDict(Module):
    def __init__(self, modules=None):
        super().__init__()
        for k, v in (modules or {}).items():
            setattr(self, k, v)

    def __getitem__(self, k):
        return self._modules[k]

    def __setitem__(self, k, v):
        setattr(self, k, v)

    def __contains__(self, k):
        return k in self._modules

    def keys(self):
        return self._modules.keys()

    def items(self):
        return self._modules.items()

    def values(self):
        return self._modules.values()

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules)
