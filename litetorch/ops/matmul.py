"""Matrix multiplication with torch.matmul semantics: 1-D, 2-D, batched and broadcast batch dims.

For C = A @ B:  dL/dA = dL/dC @ B^T,  dL/dB = A^T @ dL/dC  (summed over broadcast batch dims).
A 1-D operand is treated as a row (left) or column (right) vector and the added dim is dropped.
"""
import numpy as np

from ..errors import DTypeError, ShapeError
from ..tensor import Tensor, unbroadcast


def matmul(a: Tensor, b: Tensor) -> Tensor:
    if not isinstance(b, Tensor):
        b = Tensor(b)
    if not isinstance(a, Tensor):
        a = Tensor(a)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul needs tensors with at least 1 dim, got shapes {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise DTypeError(f"matmul dtype mismatch: {a.dtype} @ {b.dtype} (cast one side with .float()/.double())")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if ka != kb:
        raise ShapeError(
            f"matmul shape mismatch: {a.shape} @ {b.shape} (inner dims {ka} and {kb} must be equal)"
        )
    try:
        out = np.matmul(a.data, b.data)
    except ValueError:
        raise ShapeError(f"matmul batch dims do not broadcast: {a.shape} @ {b.shape}") from None

    # lesson 01: begin (matmul backward) exercise
    def backward(g):
        """g = dL/dout -> (dL/da, dL/db), each of its input's shape (None where no gradient is needed)."""
        A = a.data[None, :] if a.ndim == 1 else a.data  # [.., M, K]
        B = b.data[:, None] if b.ndim == 1 else b.data  # [.., K, N]
        # Put back the dims the 1-D rule dropped, b's first: for 1-D @ 1-D, g is 0-d and
        # becomes [1, 1] (expand_dims(g, -2) on a 0-d array would fail).
        G = g
        if b.ndim == 1:
            G = G[..., None]  # [.., M] -> [.., M, 1]
        if a.ndim == 1:
            G = G[..., None, :]  # [.., N] -> [.., 1, N];  G: [.., M, N]
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(G @ np.swapaxes(B, -1, -2), A.shape).reshape(a.shape)
        if b.requires_grad:
            gb = unbroadcast(np.swapaxes(A, -1, -2) @ G, B.shape).reshape(b.shape)
        return ga, gb
    # lesson 01: end (matmul backward) exercise

    return Tensor._make(out, (a, b), backward, "matmul")


# lesson 02: begin (linear) exercise
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x W^T + b as one op.   x [..., in], weight [out, in] (torch layout), bias [out] -> [..., out].

    The same numbers as `x @ weight.T + bias`, but one graph node instead of three and no transposed
    copy of W: NumPy hands `W.T` to BLAS as a "transposed" flag on the same memory, and for a single
    row (a decode step) that is exactly the matrix-vector product BLAS is fastest at.
        dL/dx = g W        dL/dW = g^T x (summed over every leading dim)        dL/db = sum g
    """
    X, W = x.data, weight.data
    if X.dtype != W.dtype:
        raise DTypeError(f"linear dtype mismatch: input {X.dtype}, weight {W.dtype}")
    if X.ndim == 0 or X.shape[-1] != W.shape[-1]:
        raise ShapeError(f"linear: input has {X.shape[-1] if X.ndim else 0} features (shape {X.shape}), "
                         f"weight expects {W.shape[-1]} (weight shape {W.shape})")
    out = X @ W.T  # [..., in] @ [in, out] -> [..., out]
    if bias is not None:
        out += bias.data  # in place: `out` is a fresh array
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(g):
        gx = g @ W if x.requires_grad else None  # [..., out] @ [out, in] -> [..., in]
        gw = gb = None
        if weight.requires_grad:
            g2 = g.reshape(-1, g.shape[-1])  # [N, out]
            gw = g2.T @ X.reshape(-1, X.shape[-1])  # [out, N] @ [N, in] -> [out, in]
        if bias is not None and bias.requires_grad:
            gb = g.reshape(-1, g.shape[-1]).sum(axis=0)
        return (gx, gw) if bias is None else (gx, gw, gb)

    return Tensor._make(out, parents, backward, "linear")
# lesson 02: end (linear) exercise
