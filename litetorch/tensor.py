"""`Tensor`: an ndarray that remembers how it was made, and the reverse-mode autograd engine.

The whole idea (lesson 01) in three sentences:

1. Every op that produces a tensor from tensors that need gradients records its inputs
   (`_prev`) and a small closure (`_backward`) that maps the gradient of the output to the
   gradients of the inputs (the local chain rule).
2. `backward()` sorts the recorded graph topologically and walks it in reverse, so each node's
   gradient is complete (all consumers have contributed) before it is pushed to its inputs.
3. A node used twice receives two contributions, which are *added* (multivariate chain rule).

The ops themselves live in `litetorch/ops/` (one file per family, forward next to backward);
this file holds only the data structure, the dtype rules and the engine.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import ConfigError, DTypeError, ShapeError, StateError

# --------------------------------------------------------------------------------------------
# Grad mode
# --------------------------------------------------------------------------------------------
_grad_enabled = True


def is_grad_enabled() -> bool:
    return _grad_enabled


class no_grad:
    """Context manager (and decorator): inside it no graph is built, so inference pays no autograd cost."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._prev
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with no_grad():
                return fn(*args, **kwargs)

        return wrapper


class enable_grad(no_grad):
    """Turn graph building back on inside a `no_grad` region."""

    def __enter__(self):
        global _grad_enabled
        self._prev, _grad_enabled = _grad_enabled, True


# --------------------------------------------------------------------------------------------
# dtype rules
# --------------------------------------------------------------------------------------------
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)
float16 = np.dtype(np.float16)
int64 = np.dtype(np.int64)
int32 = np.dtype(np.int32)
bool_ = np.dtype(np.bool_)
_default_dtype = float32


def get_default_dtype():
    return _default_dtype


def set_default_dtype(dtype):
    """Dtype for tensors made from Python floats / lists (not from ndarrays, which keep theirs)."""
    global _default_dtype
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise DTypeError(f"default dtype must be a float dtype, got {dtype}")
    _default_dtype = dtype


def _to_array(data, dtype=None) -> np.ndarray:
    """ndarrays keep their dtype (like `torch.from_numpy`); Python floats/lists become float32."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        return np.asarray(data, dtype=np.dtype(dtype))
    if isinstance(data, (np.ndarray, np.generic)):
        return np.asarray(data)
    arr = np.asarray(data)
    if arr.dtype == np.float64:  # a Python float or a list of them
        arr = arr.astype(_default_dtype)
    return arr


def _is_scalar(x) -> bool:
    """Python numbers, NumPy scalars and 0-d arrays are *weak* scalars: they take the tensor's dtype.

    This is the NumPy-2 promotion trap made harmless: `x / np.sqrt(64)` must not turn a float32
    activation into float64 (every matmul after it would then be float64 too).
    """
    return isinstance(x, (numbers.Number, np.generic)) or (isinstance(x, np.ndarray) and x.ndim == 0)


def _promote(a: "Tensor", b: "Tensor"):
    """Common dtype of two tensors: floats must agree exactly; ints/bools are lifted to the float."""
    da, db = a.data.dtype, b.data.dtype
    if da == db:
        return a, b
    fa, fb = da.kind == "f", db.kind == "f"
    if fa and fb:
        raise DTypeError(
            f"dtype mismatch: {da} and {db}; litetorch never mixes float dtypes silently "
            f"(cast one side with .float() or .double())"
        )
    if fa:
        return a, b.to(da)
    if fb:
        return a.to(db), b
    dt = np.result_type(da, db)
    return a.to(dt), b.to(dt)


def as_tensor(x, like: "Tensor | None" = None) -> "Tensor":
    """Wrap an operand; scalars take `like`'s dtype (see `_is_scalar`)."""
    if isinstance(x, Tensor):
        return x
    if like is not None and _is_scalar(x):
        dt = like.data.dtype
        # an int tensor meets a float scalar (Python float, np.float32, 0-d float array): lift to the
        # default float dtype instead of truncating the scalar to an int
        if dt.kind != "f" and np.asarray(x).dtype.kind == "f":
            dt = _default_dtype
        return Tensor(np.asarray(x, dtype=dt))
    return Tensor(x)


# lesson 01: begin (unbroadcast) exercise
def unbroadcast(grad: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `grad` down to `shape`: the backward of broadcasting.

    Broadcasting copies a value along new or size-1 axes; each copy contributed to the loss,
    so the gradient of the original is the *sum* over those copies.
    """
    if grad.shape == tuple(shape):
        return grad
    extra = grad.ndim - len(shape)
    if extra > 0:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, s in enumerate(shape) if s == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    return grad.reshape(shape)
# lesson 01: end (unbroadcast) exercise


# --------------------------------------------------------------------------------------------
# Tensor
# --------------------------------------------------------------------------------------------
class Tensor:
    """A NumPy array plus what autograd needs.

    Attributes
    ----------
    data : np.ndarray        the values (float32 by default; float64 for gradient checks)
    grad : np.ndarray | None gradient of the last `backward()` root w.r.t. this tensor
                             (leaves only, like torch; call `retain_grad()` on a non-leaf)
    requires_grad : bool
    """

    __slots__ = ("data", "grad", "requires_grad", "_prev", "_backward", "_op", "_retain", "name", "__weakref__")
    __array_priority__ = 1000  # `ndarray + Tensor` calls Tensor.__radd__, not NumPy's loop
    __hash__ = object.__hash__  # `==` is elementwise (like torch), identity stays hashable

    def __init__(self, data, requires_grad: bool = False, dtype=None):
        self.data = _to_array(data, dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise DTypeError(f"only float tensors can require gradients, got dtype {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._prev = ()
        self._backward = None
        self._op = ""
        self._retain = False
        self.name = None

    # ---- graph construction (used by every op) ---------------------------------------------
    @staticmethod
    def _make(data: np.ndarray, parents: tuple, backward, op: str) -> "Tensor":
        """Create an op's output; record the graph only if grad mode is on and an input needs it."""
        out = Tensor.__new__(Tensor)
        out.data = data
        out.grad = None
        out._retain = False
        out.name = None
        if _grad_enabled and any(p.requires_grad for p in parents):
            out.requires_grad = True
            out._prev = parents
            out._backward = backward
            out._op = op
        else:
            out.requires_grad = False
            out._prev = ()
            out._backward = None
            out._op = op
        return out

    # ---- the engine ---------------------------------------------------------------------------
    # lesson 01: begin (backward) exercise
    def backward(self, grad=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's `.grad`.

        `grad` is d(loss)/d(self); it may be omitted only when `self` holds a single number.
        Calling `backward()` twice adds the gradients (like torch); use `zero_grad()` between steps.
        """
        if not self.requires_grad:
            raise StateError("backward() on a tensor that does not require grad (no graph was recorded)")
        if grad is None:
            if self.data.size != 1:
                raise ShapeError(
                    f"backward() without a gradient needs a single-element tensor, got shape {self.shape}; "
                    f"pass grad= of shape {self.shape}"
                )
            grad = np.ones_like(self.data)
        else:
            grad = np.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.data.dtype)
            if grad.shape != self.data.shape:
                raise ShapeError(f"backward() gradient has shape {grad.shape}, expected {self.shape}")

        # Topological order by an iterative depth-first search (no recursion limit for deep nets).
        # A node is appended only after everything it was computed from, so reversed(order) has
        # every consumer of a node before the node. `visited` is marked when a node is *expanded*,
        # not when it is pushed: marking on push lets a node that is reachable along a short path
        # and a long path be emitted too early, and its gradient would then miss a contribution.
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for p in node._prev:
                if p.requires_grad and id(p) not in visited:
                    stack.append((p, False))

        grads = {id(self): grad}
        for node in reversed(order):  # outputs before inputs
            g = grads.pop(id(node), None)
            if g is None:
                continue
            if node._backward is None or node._retain:  # a leaf (or a kept non-leaf): store
                g = g.astype(node.data.dtype, copy=False)
                node.grad = g.copy() if node.grad is None else node.grad + g
            if node._backward is None:
                continue
            for p, pg in zip(node._prev, node._backward(g)):
                if pg is None or not p.requires_grad:
                    continue
                k = id(p)
                # re-used node: contributions add (never `+=`, a backward may return an alias of g)
                grads[k] = grads[k] + pg if k in grads else pg
    # lesson 01: end (backward) exercise

    def retain_grad(self) -> "Tensor":
        """Keep `.grad` on this non-leaf too (handy in lessons)."""
        self._retain = True
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ---- NumPy interop ------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The underlying array (shared memory, like torch's `.numpy()` on a detached tensor)."""
        return self.data

    def __array__(self, dtype=None, copy=None):
        # NumPy 2 protocol: `np.array(t)` passes copy=True and trusts us to copy (returning
        # self.data there would let the "copy" write into the tensor); `np.asarray(t)` shares.
        arr = self.data if dtype is None else self.data.astype(dtype, copy=False)
        if copy is False and arr is not self.data:
            raise DTypeError(f"cannot view a {self.dtype} tensor as {np.dtype(dtype)} without a copy")
        return arr.copy() if copy and arr is self.data else arr

    def item(self):
        if self.data.size != 1:
            raise ShapeError(f"item() needs a single-element tensor, got shape {self.shape}")
        return self.data.item()

    def __bool__(self):
        # Without this, Python falls back to `len()`: `bool(tensor([0.0]))` would be True.
        if self.data.size != 1:
            raise ShapeError(f"the truth value of a tensor with {self.data.size} elements is ambiguous "
                             f"(shape {self.shape}); use .any() / .all() on .data")
        return bool(self.data.item())

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __iter__(self):
        # Iterate over the first dim, like torch. Without this, Python would iterate by calling
        # __getitem__ until an IndexError, but indexing past the end raises ShapeError.
        if self.ndim == 0:
            raise ConfigError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self)))

    def tolist(self):
        return self.data.tolist()

    def detach(self) -> "Tensor":
        """Same data, cut from the graph: gradients stop here."""
        return Tensor(self.data)

    def clone(self) -> "Tensor":
        return Tensor._make(self.data.copy(), (self,), lambda g: (g,), "clone")

    def requires_grad_(self, flag: bool = True) -> "Tensor":
        if flag and self.data.dtype.kind != "f":
            raise DTypeError(f"only float tensors can require gradients, got dtype {self.data.dtype}")
        self.requires_grad = flag
        return self

    # ---- properties -----------------------------------------------------------------------------
    @property
    def shape(self) -> tuple:
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def dim(self) -> int:
        return self.data.ndim

    def size(self, dim=None):
        return self.data.shape if dim is None else self.data.shape[dim]

    def numel(self) -> int:
        return self.data.size

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.data, precision=4, separator=", ", prefix="tensor(")
        extra = f", dtype={self.dtype}" if self.dtype != float32 else ""
        if self.requires_grad:
            extra += f", grad_fn=<{self._op}>" if self._backward else ", requires_grad=True"
        return f"tensor({body}{extra})"

    # ---- dtype casts (differentiable) -----------------------------------------------------------
    def to(self, dtype) -> "Tensor":
        dtype = np.dtype(dtype)
        if dtype == self.data.dtype:
            return self
        src = self.data.dtype
        back = (lambda g: (g.astype(src),)) if src.kind == "f" else (lambda g: (None,))
        return Tensor._make(self.data.astype(dtype), (self,), back, "to")

    def float(self) -> "Tensor":
        return self.to(np.float32)

    def double(self) -> "Tensor":
        return self.to(np.float64)

    def long(self) -> "Tensor":
        return self.to(np.int64)

    def __setitem__(self, idx, value):
        """In-place write of data (no gradient): only allowed on tensors outside the graph."""
        if self.requires_grad and _grad_enabled:
            raise StateError("in-place assignment to a tensor that requires grad would corrupt its gradient")
        idx = idx.data if isinstance(idx, Tensor) else idx
        self.data[idx] = value.data if isinstance(value, Tensor) else value


class Parameter(Tensor):
    """A tensor that is a learnable parameter of a Module (always `requires_grad=True`)."""

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True, dtype=None):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"
