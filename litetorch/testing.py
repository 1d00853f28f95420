"""Tools to check litetorch against independent references: `gradcheck` and `assert_close`.

- `gradcheck(fn, *inputs)` compares the gradients autograd computes with gradients measured by
  central differences, (f(x + eps) - f(x - eps)) / 2 eps, in float64. It trusts nothing in the
  engine except the forward pass, so a wrong `_backward` closure cannot hide.
- `assert_close(actual, expected)` compares two arrays (litetorch Tensors, ndarrays or torch
  tensors) with tolerances chosen by dtype, and says *where* and *by how much* they differ.

The tolerance rule (docs/ARCHITECTURE.md §5, "Numbers") is judged against the *scale* of the expected tensor,
max |expected|, not element by element: an op's rounding error is relative to the magnitudes it
combined, so an output that cancels to ~0 (a sum of +-1e3 values, a centered variance) carries
an absolute error of the size of its inputs' rounding, not of its own size.

    passes  <=>  max |actual - expected|  <=  atol + rtol * max |expected|

    dtype       rtol    atol     why
    float64     1e-12   1e-10    ARCHITECTURE §5: float64 max abs error <= 1e-10 (rtol only matters for
                                 scales > 100, e.g. log-softmax of logits ~1e4)
    float32     1e-5    1e-8     ARCHITECTURE §5: float32 error <= 1e-5 relative to the output's scale
                                 (atol only so an all-zero expected tensor can pass)
    float16     1e-3    1e-5     10 mantissa bits
    int / bool  0       0        exact

The dtype used is the *less* precise of the two arguments' dtypes.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, no_grad
from .errors import ConfigError

__all__ = ["gradcheck", "assert_close", "max_abs_err", "rel_err", "to_numpy", "default_tolerances", "named_grads"]

_TOLERANCES = {  # dtype kind/size -> (rtol, atol); see the module docstring
    np.dtype(np.float64): (1e-12, 1e-10),
    np.dtype(np.float32): (1e-5, 1e-8),
    np.dtype(np.float16): (1e-3, 1e-5),
}


# --------------------------------------------------------------------------------------------
# Converting whatever we are given
# --------------------------------------------------------------------------------------------
def to_numpy(x) -> np.ndarray:
    """An ndarray from a litetorch Tensor, a torch tensor (detached, on CPU), an ndarray or a number."""
    if isinstance(x, Tensor):
        return x.data
    if type(x).__module__.startswith("torch"):  # no torch import: this module stays NumPy-only
        return x.detach().cpu().numpy()
    return np.asarray(x)


def named_grads(module, split_fused: bool = True) -> dict:
    """{parameter name: its .grad} with checkpoint names: a fused projection's gradient is split
    into its parts (`qkv_proj` -> `q_proj`, `k_proj`, `v_proj`), so it lines up with torch/HF's
    `named_parameters()` name for name."""
    from .nn.module import split_fused_names
    grads = {name: p.grad for name, p in module.named_parameters()}
    return split_fused_names(module, grads) if split_fused else grads


def default_tolerances(*arrays) -> tuple[float, float]:
    """(rtol, atol) for comparing these arrays: the rule of the least precise float dtype among them."""
    floats = [a.dtype for a in arrays if a.dtype.kind in "fc"]
    if not floats:
        return 0.0, 0.0
    least = min(floats, key=lambda d: np.finfo(d).bits)
    return _TOLERANCES.get(np.dtype(least), (1e-5, 1e-8))


def _diff(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """|actual - expected| in float64, where matching NaNs and same-signed infinities count as 0."""
    shape = actual.shape
    a = actual.astype(np.float64).reshape(-1)  # 1-D, so 0-d inputs support item assignment too
    e = expected.astype(np.float64).reshape(-1)
    with np.errstate(invalid="ignore"):
        d = np.abs(a - e)
    same = (a == e) | (np.isnan(a) & np.isnan(e))  # inf == inf is True; nan == nan is not
    d[same] = 0.0
    d[np.isnan(d)] = np.inf  # a NaN on one side only (or inf vs -inf) is as wrong as it gets
    return d.reshape(shape)


def _scale(expected: np.ndarray) -> float:
    finite = np.abs(expected[np.isfinite(expected)].astype(np.float64))
    return float(finite.max()) if finite.size else 0.0


def max_abs_err(actual, expected) -> float:
    """max |actual - expected| over all elements (0.0 for empty arrays; matching NaN/inf count as equal)."""
    a, e = to_numpy(actual), to_numpy(expected)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: actual {a.shape} vs expected {e.shape}")
    d = _diff(a, e)
    return float(d.max()) if d.size else 0.0


def rel_err(actual, expected) -> float:
    """max |actual - expected| / max |expected|: the error relative to the expected tensor's scale.

    This is the number docs/ARCHITECTURE.md's float32 rule (§5) bounds (1e-5). For an all-zero expected tensor
    it is the absolute error.
    """
    err = max_abs_err(actual, expected)
    scale = _scale(to_numpy(expected))
    return err / scale if scale > 0 else err


def assert_close(actual, expected, rtol: float | None = None, atol: float | None = None, msg: str = "",
                 check_dtype: bool = False) -> None:
    """Raise AssertionError unless max |actual - expected| <= atol + rtol * max |expected|.

    Accepts litetorch Tensors, ndarrays, torch tensors and numbers. `rtol`/`atol` default by
    dtype (table in the module docstring). The message names the shape, the max absolute and
    relative errors, the worst element's index and both values there. With `check_dtype=True`
    the dtypes must match too (use it to catch a silent float32 -> float64 upcast).
    """
    a, e = to_numpy(actual), to_numpy(expected)
    prefix = f"{msg}: " if msg else ""
    if a.shape != e.shape:
        raise AssertionError(f"{prefix}shape mismatch: actual {a.shape} vs expected {e.shape}")
    if check_dtype and a.dtype != e.dtype:
        raise AssertionError(f"{prefix}dtype mismatch: actual {a.dtype} vs expected {e.dtype}")
    d_rtol, d_atol = default_tolerances(a, e)
    rtol = d_rtol if rtol is None else rtol
    atol = d_atol if atol is None else atol
    if a.size == 0:
        return
    d = _diff(a, e)
    err = float(d.max())
    scale = _scale(e)
    tol = atol + rtol * scale
    if err <= tol:
        return
    worst = np.unravel_index(int(np.argmax(d)), d.shape)
    worst_idx = tuple(int(i) for i in worst)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = d / np.abs(e.astype(np.float64))
    rel = rel[np.isfinite(rel)]
    raise AssertionError(
        f"{prefix}tensors are not close (shape {a.shape}, dtypes {a.dtype}/{e.dtype})\n"
        f"  max abs error {err:.3e} > tolerance {tol:.3e} (atol {atol:.1e} + rtol {rtol:.1e} * scale {scale:.3e})\n"
        f"  error relative to scale {err / scale if scale else err:.3e}; "
        f"max elementwise rel error {float(rel.max()) if rel.size else float('nan'):.3e}\n"
        f"  worst at index {worst_idx}: actual {a[worst].item()!r}, expected {e[worst].item()!r}"
    )


# --------------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------------
_FULL_JACOBIAN_LIMIT = 40_000  # out.numel() * in.numel() up to this: compare every Jacobian entry


def _evaluate(fn, args) -> np.ndarray:
    with no_grad():  # finite differences need only the forward pass
        out = fn(*args)
    if not isinstance(out, Tensor):
        raise ConfigError(f"gradcheck: fn must return a litetorch Tensor, got {type(out).__name__}")
    return out.data.astype(np.float64, copy=True)


def gradcheck(fn, *inputs, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, seed: int = 0) -> bool:
    """Check autograd's gradients of `fn(*inputs)` against central differences, in float64.

    Every Tensor input with `requires_grad=True` is checked (others, and non-Tensor arguments such
    as dims or index arrays, are passed through unchanged). Inputs are copied to float64, so the
    caller's tensors and their `.grad` are never touched, and `fn` must not mix in float32 tensors.

    What is compared: for each checked input x and each element x_j,
        numeric_j  = (f(x + eps e_j) - f(x - eps e_j)) / (2 eps)       (a column of the Jacobian)
        analytic_j = what backward() puts in x.grad[j]
    - small problems (out.numel() * x.numel() <= 40,000): the full Jacobian, one backward() per
      output element with a one-hot upstream gradient;
    - larger ones: two vector-Jacobian products v^T J with random v (seeded), one backward() each,
      against sum_i v_i numeric_ij. A wrong column of J moves (v^T J)_j for almost every random v,
      so an error above the tolerance is caught just the same, at the cost of 2 backward passes.
    An entry passes when |analytic - numeric| <= atol + rtol * |numeric|.

    Outputs that are equal on both sides of a perturbation (including equal infinities) have
    numeric derivative 0. Returns True, or raises AssertionError naming the input index, the
    element index, the output element (or which random product), and both values (returns False instead when
    `raise_exception=False`).
    """
    args = []
    for x in inputs:
        if isinstance(x, Tensor) and x.requires_grad:
            if x.dtype.kind != "f":
                raise ConfigError(f"gradcheck: input of dtype {x.dtype} cannot require grad")
            args.append(Tensor(x.data.astype(np.float64, copy=True), requires_grad=True))
        else:
            args.append(x)
    checked = [i for i, x in enumerate(args) if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ConfigError("gradcheck: no input requires grad, nothing to check")

    # One graph, many backward() calls: each call adds into .grad, so clear it before each one.
    out = fn(*args)
    if not isinstance(out, Tensor):
        raise ConfigError(f"gradcheck: fn must return a litetorch Tensor, got {type(out).__name__}")
    if out.dtype != np.float64:
        raise ConfigError(f"gradcheck: fn returned dtype {out.dtype}; it must compute in float64")
    n_out = out.data.size
    n_in = max(args[i].data.size for i in checked)
    full = n_out * n_in <= _FULL_JACOBIAN_LIMIT
    if full:  # row k of V is the one-hot upstream gradient for output element k
        V = np.eye(n_out)
    else:
        V = np.random.default_rng(seed).standard_normal((2, n_out))

    # analytic[pos][k, j] = d(V_k . out) / d(input j) as backward() computes it
    analytic = [np.zeros((len(V), args[i].data.size)) for i in checked]
    for k, v in enumerate(V):
        for i in checked:
            args[i].grad = None
        if out.requires_grad:
            out.backward(v.reshape(out.shape))
        for pos, i in enumerate(checked):
            g = args[i].grad
            if g is None:
                continue  # this input does not reach the output: its gradient is 0
            if g.shape != args[i].shape:
                return _fail(raise_exception, f"gradcheck: input {i} has shape {args[i].shape} but its "
                                              f"gradient has shape {g.shape}")
            analytic[pos][k] = g.reshape(-1)

    for pos, i in enumerate(checked):
        x = args[i]
        flat = x.data.reshape(-1)  # a view: writing into it perturbs x.data in place
        for j in range(flat.size):
            orig = flat[j]
            try:
                flat[j] = orig + eps
                f_plus = _evaluate(fn, args)
                flat[j] = orig - eps
                f_minus = _evaluate(fn, args)
            finally:
                flat[j] = orig
            with np.errstate(invalid="ignore"):
                col = (f_plus - f_minus).reshape(-1) / (2.0 * eps)
            col[(f_plus == f_minus).reshape(-1)] = 0.0  # constant here, including equal infinities
            numeric = V @ col
            ana = analytic[pos][:, j]
            bad = ~(np.abs(ana - numeric) <= atol + rtol * np.abs(numeric))  # `~(<=)` also flags NaN
            if bad.any():
                k = int(np.argmax(bad))
                elem = tuple(int(t) for t in np.unravel_index(j, x.shape)) if x.ndim else ()
                where = (f"output element {tuple(int(t) for t in np.unravel_index(k, out.shape))}" if full
                         else f"random vector-Jacobian product {k}")
                return _fail(raise_exception, (
                    f"gradcheck failed for input {i} (shape {x.shape}), element {elem}, {where}:\n"
                    f"  numeric  {numeric[k]:.10g}\n  analytic {ana[k]:.10g}\n"
                    f"  |diff| {abs(ana[k] - numeric[k]):.3e} > atol {atol:g} + rtol {rtol:g} * |numeric|"))
    return True


def _fail(raise_exception: bool, message: str) -> bool:
    if raise_exception:
        raise AssertionError(message)
    return False
