"""Hyper-connections: n residual streams instead of one (HC), kept on the Birkhoff polytope (mHC, mHC-lite).
Lesson 27.

A residual layer adds a sublayer's output to its one stream, x_{l+1} = x_l + F(x_l), x_l [B, T, C].
Hyper-connections widen the stream to n copies and learn how the layer reads, writes and mixes them
(HC: Zhu et al. 2024, arXiv 2409.19606, eq. 2; written as mHC's eq. 3, Xie et al. 2025, arXiv 2512.24880):

    x_{l+1} = H_res x_l + H_post^T F(H_pre x_l)          x_l [B, T, n, C], F: [B, T, C] -> [B, T, C]

    H_pre  [1 x n]  read:  F's input is one weighted sum of the n streams (F still runs once, on C channels)
    H_post [1 x n]  write: F's output is added to every stream with its own weight
    H_res  [n x n]  mix:   stream i after the layer is a weighted sum of all n streams before it

With n = 1 and H_pre = H_post = H_res = 1 this is x + F(x) exactly. The papers differ in where the
three mappings come from:

- `HCMapping`, dynamic=False (HC's SHC): three learned matrices, the same for every token, initialised
  so the network starts as a pre-norm residual on n copies (HC eq. 14).
- `HCMapping`, dynamic=True (HC's DHC, eqs. 10-13; mHC eq. 5): plus a small input-dependent term
  alpha * tanh(theta x~^T), x~ each stream RMS-normalised.
- `MHCMapping` (mHC eqs. 7-9): the mappings are read from all n streams at once (flattened to nC and
  RMS-normalised), H_pre = sigmoid(.), H_post = 2 sigmoid(.) (non-negative), and H_res is projected
  onto the doubly stochastic matrices by Sinkhorn-Knopp (`doubly_stochastic.py`), so products of
  H_res across depth cannot amplify the signal.
- `MHCLiteMapping` (mHC-lite, arXiv 2601.05732): H_res = sum_k a_k P_k over the n! permutation
  matrices with softmax weights a: exactly doubly stochastic, no iterations.

`HyperConnection(branch, ...)` wraps any module F mapping [B, T, C] -> [B, T, C] (a DecoderBlock, a
GatedDeltaNet, a SparseMoeBlock, a Sequential(norm, attention) as in the papers, LoopLM's shared block
through `FirstOutput`). `expand_streams` / `reduce_streams` go from one stream to n at the start of the
network and back at the end (HC §2.1: copy, then sum). `amax_gain` is mHC's measure of how much a
product of H_res can amplify a signal (forward) or a gradient (backward).

Shapes: B batch, T tokens, n streams (the papers' expansion rate), C = d_model.
"""
from __future__ import annotations

import math

import numpy as np

from .. import checks
from ..errors import ConfigError, DTypeError, ShapeError
from ..tensor import Parameter, Tensor, get_default_dtype
from . import functional as F
from . import init
from .doubly_stochastic import permutation_matrices, sinkhorn_knopp
from .module import Module, ModuleList

KINDS = ("shc", "dhc", "mhc", "mhc_lite")
_MAX_LITE_STREAMS = 6  # mHC-lite learns one weight per permutation: 6! = 720 of them per token already


def _scalar(value: float, dtype) -> Parameter:
    return Parameter(np.array(value, dtype=dtype))


def _check_streams(x: Tensor, n: int, C: int, dtype, who: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[-2:] != (n, C):
        raise ShapeError(f"{who}: input must be streams [B, T, n, C] with n = {n}, C = {C}, "
                         f"got {getattr(x, 'shape', type(x).__name__)} (use expand_streams(x, {n}) first)")
    if x.dtype != dtype:
        raise DTypeError(f"{who}: input has dtype {x.dtype}, the mappings' parameters {dtype}")


# --------------------------------------------------------------------------------------------
# Where H_pre, H_post and H_res come from
# --------------------------------------------------------------------------------------------
class HCMapping(Module):
    """HC's mappings (Zhu et al. 2024). x [B, T, n, C] -> H_pre [B, T, n], H_post [B, T, n], H_res [B, T, n, n].

    Static (SHC): the learned b_pre [n], b_post [n], b_res [n, n], returned as they are (they broadcast).
    Dynamic (DHC, HC eqs. 10-13, in mHC's notation eq. 5), with x~ = RMSNorm(x) of each stream:
        H_pre  = alpha_pre  * tanh(theta_pre  x~^T) + b_pre        theta_pre, theta_post [1, C]
        H_post = alpha_post * tanh(theta_post x~^T) + b_post       theta_res [n, C]
        H_res  = alpha_res  * tanh(theta_res  x~^T) + b_res        alpha: learned scalars
    Initialisation (HC eq. 14): theta = 0, b_pre = e_(layer_index mod n), b_post = 1, b_res = I, so every
    layer starts as a pre-norm residual that reads stream (layer_index mod n) and writes to all streams;
    alpha = 0.01 (HC's Algorithm 2). HC's code normalises with a LayerNorm; mHC's restatement (eq. 5)
    uses RMSNorm, followed here, without a weight (it would only rescale theta).
    """

    def __init__(self, d_model: int, n_streams: int, layer_index: int = 0, dynamic: bool = True,
                 alpha_init: float = 0.01, eps: float = 1e-6, dtype=None):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.n_streams = n = checks.positive_int("n_streams", n_streams)
        layer_index = checks.integer("layer_index", layer_index, lo=0)
        self.dynamic, self.eps = bool(dynamic), checks.number("eps", eps, lo=0.0, lo_open=True)
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.b_pre = Parameter(np.eye(n, dtype=dtype)[layer_index % n])  # e_(k mod n): read one stream
        self.b_post = Parameter(np.ones(n, dtype=dtype))  # write the output into every stream
        self.b_res = Parameter(np.eye(n, dtype=dtype))  # keep every stream as it is
        if self.dynamic:
            alpha_init = checks.number("alpha_init", alpha_init)
            self.theta_pre = Parameter(np.zeros((1, d_model), dtype=dtype))
            self.theta_post = Parameter(np.zeros((1, d_model), dtype=dtype))
            self.theta_res = Parameter(np.zeros((n, d_model), dtype=dtype))
            self.alpha_pre, self.alpha_post, self.alpha_res = (_scalar(alpha_init, dtype) for _ in range(3))

    # lesson 27: begin (hc mapping)
    def forward(self, x: Tensor):
        """x [B, T, n, C] -> H_pre [B, T, n], H_post [B, T, n], H_res [B, T, n, n] ([n], [n], [n, n] if static)."""
        if not self.dynamic:  # SHC: the same three learned matrices for every token
            return self.b_pre, self.b_post, self.b_res
        xt = F.rms_norm(x, self.d_model, eps=self.eps)  # [B, T, n, C]: each stream normalised on its own
        H_pre = self.alpha_pre * (xt @ self.theta_pre.mT).squeeze(-1).tanh() + self.b_pre  # [B, T, n, 1] -> [B, T, n]
        H_post = self.alpha_post * (xt @ self.theta_post.mT).squeeze(-1).tanh() + self.b_post  # [B, T, n]
        H_res = self.alpha_res * (self.theta_res @ xt.mT).tanh() + self.b_res  # [n, C] @ [B, T, C, n] -> [B, T, n, n]
        return H_pre, H_post, H_res
    # lesson 27: end (hc mapping)

    def extra_repr(self):
        return f"n_streams={self.n_streams}, d_model={self.d_model}, {'dynamic' if self.dynamic else 'static'}"


class MHCMapping(Module):
    """mHC's mappings (Xie et al. 2025). x [B, T, n, C] -> H_pre [B, T, n], H_post [B, T, n], H_res [B, T, n, n].

    The streams are flattened to one row of nC values and RMS-normalised, x' = RMSNorm(vec(x)), so every
    mapping sees all of them (eq. 7); then (eq. 8)
        H_pre  = sigmoid(alpha_pre  * (x' phi_pre)  + b_pre)          phi_pre, phi_post [nC, n]
        H_post = 2 sigmoid(alpha_post * (x' phi_post) + b_post)       phi_res [nC, n*n]
        H_res  = SinkhornKnopp(alpha_res * mat(x' phi_res) + b_res)   mat: [n*n] -> [n, n]
    with `sinkhorn_iters` iterations (t_max = 20 in the paper, eq. 9).
    Initialisation: alpha = 0.01 (the paper's gating-factor initialisation, Table 5); b = 0 and
    phi ~ N(0, 0.02^2) as DeepSeek-V4's implementation in HF transformers (`DeepseekV4HyperConnection`)
    initialises them. b = 0 starts H_res at the uniform mixing 1/n (every stream the mean of all) and
    H_post at 1; the random phi is what lets the streams become different from each other.
    """

    def __init__(self, d_model: int, n_streams: int, sinkhorn_iters: int = 20, alpha_init: float = 0.01,
                 eps: float = 1e-6, dtype=None):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.n_streams = n = checks.positive_int("n_streams", n_streams)
        self.sinkhorn_iters = checks.positive_int("sinkhorn_iters", sinkhorn_iters)
        self.eps = checks.number("eps", eps, lo=0.0, lo_open=True)
        alpha_init = checks.number("alpha_init", alpha_init)
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.phi_pre = Parameter(init.normal((n * d_model, n), dtype, std=0.02))
        self.phi_post = Parameter(init.normal((n * d_model, n), dtype, std=0.02))
        self.phi_res = Parameter(init.normal((n * d_model, n * n), dtype, std=0.02))
        self.b_pre, self.b_post = Parameter(np.zeros(n, dtype=dtype)), Parameter(np.zeros(n, dtype=dtype))
        self.b_res = Parameter(np.zeros((n, n), dtype=dtype))
        self.alpha_pre, self.alpha_post, self.alpha_res = (_scalar(alpha_init, dtype) for _ in range(3))

    # lesson 27: begin (mhc mapping)
    def forward(self, x: Tensor):
        """x [B, T, n, C] -> H_pre [B, T, n] in (0, 1), H_post [B, T, n] in (0, 2), H_res [B, T, n, n] (eq. 8)."""
        B, T, n, C = x.shape
        x1 = F.rms_norm(x.reshape(B, T, n * C), n * C, eps=self.eps)  # [B, T, n, C] -> [B, T, nC]: x' (eq. 7)
        H_pre = (self.alpha_pre * (x1 @ self.phi_pre) + self.b_pre).sigmoid()  # [B, T, n]  (eqs. 7-8)
        H_post = (self.alpha_post * (x1 @ self.phi_post) + self.b_post).sigmoid() * 2.0  # [B, T, n]
        H_res = self.alpha_res * (x1 @ self.phi_res).reshape(B, T, n, n) + self.b_res  # [B, T, n*n] -> [B, T, n, n]
        return H_pre, H_post, sinkhorn_knopp(H_res, self.sinkhorn_iters)  # eq. 9: onto the Birkhoff polytope
    # lesson 27: end (mhc mapping)

    def extra_repr(self):
        return f"n_streams={self.n_streams}, d_model={self.d_model}, sinkhorn_iters={self.sinkhorn_iters}"


class MHCLiteMapping(Module):
    """mHC-lite's mappings (Yang & Gao 2026). x [B, T, n, C] -> H_pre [B, T, n], H_post [B, T, n], H_res [B, T, n, n].

    H_pre and H_post as mHC's. H_res is built exactly on the polytope instead of projected onto it
    (Birkhoff-von Neumann: the doubly stochastic matrices are the convex combinations of the n!
    permutation matrices P_k):
        a = softmax(alpha_res * (x' phi_res) + b_res)        [n!]  phi_res [nC, n!], b_res [n!]
        H_res = sum_k a_k P_k
    Rows and columns sum to 1 to rounding, whatever the logits. The price is n! weights per token,
    so n is at most 6 here. Initialisation as MHCMapping (b_res = 0: H_res starts at 1/n as well).
    """

    def __init__(self, d_model: int, n_streams: int, alpha_init: float = 0.01, eps: float = 1e-6, dtype=None):
        super().__init__()
        self.d_model = checks.positive_int("d_model", d_model)
        self.n_streams = n = checks.integer("n_streams (mHC-lite)", n_streams, lo=1, hi=_MAX_LITE_STREAMS)
        self.eps = checks.number("eps", eps, lo=0.0, lo_open=True)
        alpha_init = checks.number("alpha_init", alpha_init)
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        n_perms = math.factorial(n)
        self.phi_pre = Parameter(init.normal((n * d_model, n), dtype, std=0.02))
        self.phi_post = Parameter(init.normal((n * d_model, n), dtype, std=0.02))
        self.phi_res = Parameter(init.normal((n * d_model, n_perms), dtype, std=0.02))
        self.b_pre, self.b_post = Parameter(np.zeros(n, dtype=dtype)), Parameter(np.zeros(n, dtype=dtype))
        self.b_res = Parameter(np.zeros(n_perms, dtype=dtype))
        self.alpha_pre, self.alpha_post, self.alpha_res = (_scalar(alpha_init, dtype) for _ in range(3))
        # the n! vertices, flattened: H_res = a @ P is the convex combination (a constant; follows .to())
        self.register_buffer("permutations", permutation_matrices(n, dtype).reshape(n_perms, n * n), persistent=False)

    # lesson 27: begin (mhc-lite mapping)
    def forward(self, x: Tensor):
        """x [B, T, n, C] -> H_pre [B, T, n], H_post [B, T, n], H_res [B, T, n, n] exactly doubly stochastic."""
        B, T, n, C = x.shape
        x1 = F.rms_norm(x.reshape(B, T, n * C), n * C, eps=self.eps)  # [B, T, n, C] -> [B, T, nC]: x', as mHC
        H_pre = (self.alpha_pre * (x1 @ self.phi_pre) + self.b_pre).sigmoid()  # [B, T, n]
        H_post = (self.alpha_post * (x1 @ self.phi_post) + self.b_post).sigmoid() * 2.0  # [B, T, n]
        a = (self.alpha_res * (x1 @ self.phi_res) + self.b_res).softmax(dim=-1)  # [B, T, n!]: convex weights
        H_res = (a @ self.permutations).reshape(B, T, n, n)  # [B, T, n!] @ [n!, n*n] -> [B, T, n, n]: sum_k a_k P_k
        return H_pre, H_post, H_res
    # lesson 27: end (mhc-lite mapping)

    def extra_repr(self):
        return f"n_streams={self.n_streams}, d_model={self.d_model}, permutations={math.factorial(self.n_streams)}"


def make_mapping(kind: str, d_model: int, n_streams: int, layer_index: int = 0, sinkhorn_iters: int = 20,
                 alpha_init: float = 0.01, eps: float = 1e-6, dtype=None) -> Module:
    """One set of mappings of the given kind: "shc", "dhc" (HC static/dynamic), "mhc", "mhc_lite"."""
    checks.choice("kind", kind, KINDS)
    if kind in ("shc", "dhc"):
        return HCMapping(d_model, n_streams, layer_index, dynamic=kind == "dhc", alpha_init=alpha_init, eps=eps,
                         dtype=dtype)
    if kind == "mhc":
        return MHCMapping(d_model, n_streams, sinkhorn_iters, alpha_init, eps, dtype)
    return MHCLiteMapping(d_model, n_streams, alpha_init, eps, dtype)


# --------------------------------------------------------------------------------------------
# The wrapper
# --------------------------------------------------------------------------------------------
class HyperConnection(Module):
    """x_{l+1} = H_res x_l + H_post^T F(H_pre x_l) around a branch F: [B, T, C] -> [B, T, C].   x [B, T, n, C].

    branch: the module F (its parameters are this module's `branch.*`). kind: "shc", "dhc", "mhc" or
    "mhc_lite" (see the module docstring); n_streams: the papers' expansion rate n (4 in both papers);
    layer_index: which stream HC's initial read picks (HC eq. 14; unused by mHC).

    Per-iteration mappings (for a looped block): `n_sets` independent sets of mappings share the one
    branch, and `forward(x, ..., mapping_index=r)` uses set r. (LoopLM's shared block keeps one
    HyperConnection per iteration instead, nn/looped.py: the same mappings, one module each.)
    Any other positional or keyword argument of forward goes to the branch unchanged
    (attn_mask, is_causal, cache, ...).
    """

    def __init__(self, branch: Module, d_model: int, n_streams: int = 4, kind: str = "mhc", layer_index: int = 0,
                 n_sets: int = 1, sinkhorn_iters: int = 20, alpha_init: float = 0.01, eps: float = 1e-6, dtype=None):
        super().__init__()
        if not isinstance(branch, Module):
            raise ConfigError(f"HyperConnection: branch must be a litetorch Module mapping [B, T, C] -> [B, T, C], "
                              f"got {type(branch).__name__}")
        n_sets = checks.positive_int("n_sets", n_sets)
        self.kind, self.d_model, self.n_streams = kind, d_model, n_streams
        self.branch = branch
        self.mappings = ModuleList([make_mapping(kind, d_model, n_streams, layer_index, sinkhorn_iters, alpha_init,
                                                 eps, dtype) for _ in range(n_sets)])

    # lesson 27: begin (hyper connection)
    def forward(self, x: Tensor, *args, mapping_index: int = 0, **kwargs) -> Tensor:
        """x [B, T, n, C] -> [B, T, n, C]; args and kwargs go to the branch, mapping_index picks the set of mappings."""
        mapping = self._mapping(x, mapping_index)  # checks x's shape and dtype before anything runs
        H_pre, H_post, H_res = mapping(x)  # [B, T, n], [B, T, n], [B, T, n, n]
        h = (H_pre.unsqueeze(-2) @ x).squeeze(-2)  # [B, T, 1, n] @ [B, T, n, C] -> [B, T, C]: read
        y = self._branch_output(self.branch(h, *args, **kwargs), h)  # [B, T, C]: F runs once, on C channels
        return H_res @ x + H_post.unsqueeze(-1) * y.unsqueeze(-2)  # mix + write: [B, T, n, C]
    # lesson 27: end (hyper connection)

    def _mapping(self, x, mapping_index) -> Module:
        n_sets = len(self.mappings)
        index = checks.integer("mapping_index", mapping_index, lo=0, hi=n_sets - 1)
        mapping = self.mappings[index]
        dtype = next(iter(mapping.parameters())).dtype
        _check_streams(x, self.n_streams, self.d_model, dtype, "HyperConnection")
        return mapping

    @staticmethod
    def _branch_output(y, h: Tensor) -> Tensor:
        if not isinstance(y, Tensor) or y.shape != h.shape:
            got = f"a {type(y).__name__}" if not isinstance(y, Tensor) else f"shape {y.shape}"
            raise ShapeError(f"HyperConnection: the branch must return a Tensor {h.shape} ([B, T, C], like its input), "
                             f"got {got} (a block returning a tuple, like LoopBlock, goes in FirstOutput(block))")
        return y

    def extra_repr(self):
        return f"kind={self.kind!r}, n_streams={self.n_streams}, d_model={self.d_model}, n_sets={len(self.mappings)}"


class FirstOutput(Module):
    """Adapter: a block whose forward returns a tuple, as a branch that returns its first item.

    LoopBlock(x, G, r, ...) returns (h, G, kv); HyperConnection(FirstOutput(block), ...)(x, None, r) wraps
    the ungated shared block of a LoopLM. The block stays this module's only child (`block.*`).
    """

    def __init__(self, block: Module):
        super().__init__()
        self.block = block

    def forward(self, x, *args, **kwargs):
        return self.block(x, *args, **kwargs)[0]


# --------------------------------------------------------------------------------------------
# Into n streams and back, and mHC's gain
# --------------------------------------------------------------------------------------------
# lesson 27: begin (expand and reduce)
def expand_streams(x: Tensor, n_streams: int) -> Tensor:
    """x [B, T, C] -> [B, T, n, C]: n copies of the embedding, the start of the hyper-connected network (HC §2.1)."""
    n = checks.positive_int("n_streams", n_streams)
    if not isinstance(x, Tensor) or x.ndim != 3:
        raise ShapeError(f"expand_streams: x must be [B, T, C], got {getattr(x, 'shape', type(x).__name__)}")
    B, T, C = x.shape
    return x.unsqueeze(-2).expand(B, T, n, C)  # [B, T, C] -> [B, T, 1, C] -> [B, T, n, C]


def reduce_streams(x: Tensor) -> Tensor:
    """x [B, T, n, C] -> [B, T, C]: the sum of the streams, handed to the final norm and the LM head (HC §2.1)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ShapeError(f"reduce_streams: x must be streams [B, T, n, C], got {getattr(x, 'shape', type(x).__name__)}")
    return x.sum(dim=-2)  # [B, T, n, C] -> [B, T, C]
# lesson 27: end (expand and reduce)


# lesson 27: begin (amax gain)
def amax_gain(M) -> tuple[float, float]:
    """mHC's "Amax Gain Magnitude" of mappings M [..., n, n] (one matrix per token), as (forward, backward).

    forward  = max_i sum_j |M_ij|, the largest absolute row sum: how much M can amplify a signal
    backward = max_j sum_i |M_ij|, the largest absolute column sum: the same for a gradient (M^T)
    each averaged over the tokens (the leading dims), as in mHC's Figures 3 and 7. Both are exactly 1
    for a doubly stochastic M, and for any product of them.
    """
    A = np.abs(np.asarray(M.data if isinstance(M, Tensor) else M, dtype=np.float64))  # [..., n, n]
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ShapeError(f"amax_gain: M must be [..., n, n], got shape {A.shape}")
    return float(A.sum(axis=-1).max(axis=-1).mean()), float(A.sum(axis=-2).max(axis=-1).mean())
# lesson 27: end (amax gain)
