"""Shape ops: reshape/view, transpose, permute, (un)squeeze, expand, flatten, cat, stack, split.

They move numbers without changing them, so each backward is the inverse move of the gradient.
"""
import numpy as np

from ..errors import ShapeError
from ..tensor import Tensor, unbroadcast
from .index import getitem


def _shape_arg(shape):
    return tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else tuple(shape)


def reshape(x: Tensor, *shape) -> Tensor:
    shape = _shape_arg(shape)
    try:
        out = x.data.reshape(shape)
    except ValueError:
        raise ShapeError(f"cannot reshape tensor of shape {x.shape} ({x.numel()} elements) into {shape}") from None
    src = x.shape
    return Tensor._make(out, (x,), lambda g: (g.reshape(src),), "reshape")


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """Swap two dimensions (torch semantics; `x.T` reverses all of them)."""
    return Tensor._make(x.data.swapaxes(dim0, dim1), (x,), lambda g: (g.swapaxes(dim0, dim1),), "transpose")


def permute(x: Tensor, *dims) -> Tensor:
    dims = _shape_arg(dims)
    if sorted(d % x.ndim for d in dims) != list(range(x.ndim)):
        raise ShapeError(f"permute dims {dims} are not a permutation of the {x.ndim} dims of shape {x.shape}")
    inverse = tuple(np.argsort([d % x.ndim for d in dims]))
    return Tensor._make(np.transpose(x.data, dims), (x,), lambda g: (np.transpose(g, inverse),), "permute")


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    return reshape(x, np.expand_dims(x.data, dim).shape)


def squeeze(x: Tensor, dim=None) -> Tensor:
    """Drop size-1 dims (all, one, or a tuple of them); a named dim that is not 1 is kept (torch)."""
    if dim is None:
        return reshape(x, tuple(s for s in x.shape if s != 1))
    dims = {d % x.ndim for d in ((dim,) if np.ndim(dim) == 0 else dim)} if x.ndim else set()
    return reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in dims and s == 1)))


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    s, e = start_dim % max(x.ndim, 1), end_dim % max(x.ndim, 1)
    return reshape(x, x.shape[:s] + (-1,) + x.shape[e + 1:])


def expand(x: Tensor, *shape) -> Tensor:
    """Broadcast to `shape` (-1 keeps a size); the gradient is summed back (see `unbroadcast`)."""
    shape = _shape_arg(shape)
    pad = len(shape) - x.ndim
    full = tuple(x.shape[i - pad] if s == -1 else s for i, s in enumerate(shape))
    try:
        out = np.broadcast_to(x.data, full)
    except ValueError:
        raise ShapeError(f"cannot expand shape {x.shape} to {full}") from None
    src = x.shape
    return Tensor._make(out, (x,), lambda g: (unbroadcast(g, src),), "expand")


def cat(tensors, dim: int = 0) -> Tensor:
    """Concatenate along an existing dim; backward slices the gradient back into pieces."""
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("cat() needs at least one tensor")
    ref = tensors[0]
    for i, t in enumerate(tensors):
        if t.ndim != ref.ndim or any(a != b for k, (a, b) in enumerate(zip(t.shape, ref.shape)) if k != dim % ref.ndim):
            raise ShapeError(f"cat(dim={dim}): tensor {i} has shape {t.shape}, incompatible with {ref.shape}")
        if t.dtype != ref.dtype:
            from ..errors import DTypeError
            raise DTypeError(f"cat(): tensor {i} has dtype {t.dtype}, expected {ref.dtype}")
    sizes = [t.shape[dim] for t in tensors]
    bounds = np.cumsum(sizes)[:-1]
    out = np.concatenate([t.data for t in tensors], axis=dim)
    return Tensor._make(out, tuple(tensors), lambda g: tuple(np.split(g, bounds, axis=dim)), "cat")


def stack(tensors, dim: int = 0) -> Tensor:
    """Stack along a new dim; backward indexes the gradient along that dim."""
    tensors = list(tensors)
    if not tensors:
        raise ShapeError("stack() needs at least one tensor")
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ShapeError(f"stack(): tensor {i} has shape {t.shape}, expected {tensors[0].shape}")
        if t.dtype != tensors[0].dtype:  # np.stack would silently promote float32 to float64
            from ..errors import DTypeError
            raise DTypeError(f"stack(): tensor {i} has dtype {t.dtype}, expected {tensors[0].dtype}")
    out = np.stack([t.data for t in tensors], axis=dim)
    n = len(tensors)
    return Tensor._make(out, tuple(tensors), lambda g: tuple(np.take(g, i, axis=dim) for i in range(n)), "stack")


def split(x: Tensor, split_size_or_sections, dim: int = 0):
    """torch.split: an int gives equal chunks (last may be smaller); a list gives those sizes.
    Each piece is a view of x (a basic-slice `getitem`, whose backward pastes the gradient back)."""
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        sizes = [min(split_size_or_sections, n - s) for s in range(0, n, split_size_or_sections)]
    else:
        sizes = list(split_size_or_sections)
        if sum(sizes) != n:
            raise ShapeError(f"split sizes {sizes} sum to {sum(sizes)}, but dim {dim} has size {n}")
    lead = (slice(None),) * (dim % x.ndim)
    out, start = [], 0
    for s in sizes:
        out.append(getitem(x, lead + (slice(start, start + s),)))
        start += s
    return tuple(out)


def chunk(x: Tensor, chunks: int, dim: int = 0):
    n = x.shape[dim]
    return split(x, -(-n // chunks), dim)
