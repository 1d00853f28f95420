"""Sparse Mixture of Experts (MoE): many feed-forward networks, a few of them per token. Lesson 25.

A dense transformer sends every token through the same SwiGLU. A sparse MoE layer holds E of them,
the *experts*, and a small *router* that picks, for each token, the k experts it scores highest;
only those k run. The parameter count grows with E, the work per token with k (Shazeer et al.
2017; Mixtral 8x7B: E = 8, k = 2; Qwen3-MoE: E = 128, k = 8; Qwen3-Next-80B-A3B: E = 512, k = 10,
plus one *shared* expert that every token uses).

    router:   p = softmax(x W_r^T)                           [N, E]  a probability per expert
              w, i = top-k(p)                                [N, k]  the k largest and their experts
              w = w / sum(w)           (norm_topk_prob)      the k weights sum to 1
    experts:  y = sum_j w_j SwiGLU_{i_j}(x)                  only k of the E experts run per token
    shared:   y = y + sigmoid(x w_g) SwiGLU_shared(x)        Qwen3-Next only

With `norm_topk_prob` this is Mixtral's softmax(TopK(x W_g)): renormalising the k largest softmax
probabilities equals a softmax over the k largest logits.

How the router learns: which experts are chosen is a discrete decision and has no gradient, but the
chosen weights w are probabilities, so the loss tells the router, through w, whether a chosen expert
should have weighed more or less. A router left alone tends to collapse onto a few experts (they
get more tokens, train faster, win more tokens); `load_balancing_loss` (Switch Transformer) pushes
towards even use.

Parameter names and layouts are HF transformers' (Qwen3-MoE, Qwen3-Next), so
`block.load_state_dict(hf_block.state_dict())` works for both:
    gate.weight                 [E, C]        the router (HF calls it the gate)
    experts.gate_up_proj        [E, 2I, C]    each expert's gate and up projections, stacked
    experts.down_proj           [E, C, I]
    shared_expert.*             a SwiGLU (gate_proj, up_proj, down_proj)     Qwen3-Next only
    shared_expert_gate.weight   [1, C]                                       Qwen3-Next only

Shapes: N tokens (B*T flattened: routing is per token), C = d_model, E experts, k = top_k,
I = moe_hidden. Autograd note: each expert's slice `gate_up_proj[e]` sends back a gradient the size of
the whole [E, 2I, C] stack, so a backward costs O(E) per expert used: fine for lesson sizes, not
for training 512 experts.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError, ShapeError
from ..tensor import Parameter, Tensor, get_default_dtype
from . import functional as F
from . import init
from .ffn import SwiGLU
from .linear import Linear
from .module import Module


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {type(value).__name__} {value!r}")


def _check_top_k(top_k, n_experts) -> None:
    _check_positive_int("n_experts", n_experts)
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
        raise ConfigError(f"top_k must be an int, got {type(top_k).__name__} {top_k!r}")
    if not 1 <= top_k <= n_experts:
        raise ConfigError(f"top_k must be between 1 and n_experts = {n_experts}, got top_k = {top_k}")


def _tokens(x, C: int, who: str) -> Tensor:
    """x [..., C] -> [N, C], or a ShapeError naming the expected and the actual shape."""
    x = x if isinstance(x, Tensor) else Tensor(x)
    if x.ndim < 1 or x.shape[-1] != C:
        raise ShapeError(f"{who}: input must be [..., C] with C = d_model = {C}, got shape {x.shape}")
    return x.reshape(-1, C)  # [..., C] -> [N, C]


def _softmax_dtype(dtype) -> np.dtype:
    """The router's softmax runs in float32 at least (as HF: float16 logits are upcast); float64 stays float64."""
    return np.promote_types(dtype, np.float32)


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries of each row, largest first: [N, E] -> [N, k] int64 expert indices.

    Ties go to the lower expert index (a stable sort of -p). torch.topk leaves the order of equal
    values unspecified (on CPU it has returned the *higher* indices), so with exactly tied
    probabilities HF may pick other experts than litetorch; the chosen *weights* are the same.
    """
    return np.argsort(-probs, axis=-1, kind="stable")[..., :k]


class TopKRouter(Module):
    """HF `Qwen3MoeTopKRouter` / `Qwen3NextTopKRouter`.

    x [..., C] -> router_logits [N, E], top_k_weights [N, k] (x's dtype), top_k_index [N, k] (int64).
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, norm_topk_prob: bool = True, dtype=None):
        super().__init__()
        _check_positive_int("d_model", d_model)
        _check_top_k(top_k, n_experts)
        self.d_model, self.n_experts, self.top_k, self.norm_topk_prob = d_model, n_experts, top_k, norm_topk_prob
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        self.weight = Parameter(init.uniform((n_experts, d_model), 1.0 / math.sqrt(d_model), dtype))  # [E, C]

    # lesson 25: begin (router)
    def forward(self, x):
        x = _tokens(x, self.d_model, "TopKRouter")  # [..., C] -> [N, C]
        router_logits = F.linear(x, self.weight)  # [N, C] -> [N, E]: how well each expert suits each token
        probs = F.softmax(router_logits.to(_softmax_dtype(router_logits.dtype)), dim=-1)  # [N, E]
        top_k_index = top_k_indices(probs.data, self.top_k)  # [N, k]: a decision, so no gradient
        rows = np.arange(len(top_k_index))[:, None]  # [N, 1]
        top_k_weights = probs[rows, top_k_index]  # [N, k]: a gather; the gradient flows back to these k
        if self.norm_topk_prob:
            top_k_weights = top_k_weights / top_k_weights.sum(dim=-1, keepdim=True)  # the k weights sum to 1
        return router_logits, top_k_weights.to(router_logits.dtype), Tensor(top_k_index)
    # lesson 25: end (router)

    def extra_repr(self):
        return (f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"norm_topk_prob={self.norm_topk_prob}")


class Experts(Module):
    """E SwiGLU experts with 3-D weights, HF `Qwen3MoeExperts`: gate_up_proj [E, 2I, C], down_proj [E, C, I].

    Expert e is down_proj[e] @ (silu(gate) * up) with [gate ; up] = gate_up_proj[e] @ x: the same
    numbers as `SwiGLU` with gate_proj = gate_up_proj[e, :I] and up_proj = gate_up_proj[e, I:].
    Initialised like E independent Linears (U(-1/sqrt(fan_in), 1/sqrt(fan_in))).
    """

    def __init__(self, d_model: int, n_experts: int, moe_hidden: int, dtype=None):
        super().__init__()
        for name, value in (("d_model", d_model), ("n_experts", n_experts), ("moe_hidden", moe_hidden)):
            _check_positive_int(name, value)
        self.d_model, self.n_experts, self.moe_hidden = d_model, n_experts, moe_hidden
        dtype = np.dtype(dtype) if dtype is not None else get_default_dtype()
        C, E, I = d_model, n_experts, moe_hidden
        self.gate_up_proj = Parameter(init.uniform((E, 2 * I, C), 1.0 / math.sqrt(C), dtype))  # [E, 2I, C]
        self.down_proj = Parameter(init.uniform((E, C, I), 1.0 / math.sqrt(I), dtype))  # [E, C, I]

    def forward(self, x, top_k_index, top_k_weights) -> Tensor:
        """x [N, C], top_k_index [N, k] (ints in 0..E-1), top_k_weights [N, k] -> [N, C]."""
        x = x if isinstance(x, Tensor) else Tensor(x)
        index = np.asarray(top_k_index.data if isinstance(top_k_index, Tensor) else top_k_index)
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise ShapeError(f"Experts: x must be [N, C] with C = {self.d_model}, got shape {x.shape}")
        if index.ndim != 2 or index.shape[0] != x.shape[0] or top_k_weights.shape != index.shape:
            raise ShapeError(f"Experts: top_k_index {index.shape} and top_k_weights {top_k_weights.shape} must both "
                             f"be [N, k] with N = {x.shape[0]} (the rows of x)")
        if index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or index.max() >= self.n_experts)):
            values = f", values {index.min()}..{index.max()}" if index.size else ""
            raise ShapeError(f"Experts: top_k_index must hold ints in 0..{self.n_experts - 1}, "
                             f"got dtype {index.dtype}{values}")
        # lesson 25: begin (experts)
        out = Tensor(np.zeros_like(x.data))  # [N, C]
        for e in np.unique(index):  # only the experts that some token chose
            token_idx, slot = np.nonzero(index == e)  # [n_e] each: which tokens chose e, in which of their k slots
            h = x[token_idx]  # [N, C] -> [n_e, C]: gather this expert's tokens
            gate, up = F.linear(h, self.gate_up_proj[e]).chunk(2, dim=-1)  # [n_e, 2I] -> [n_e, I] twice
            y = F.linear(F.silu(gate) * up, self.down_proj[e])  # [n_e, I] -> [n_e, C]: a SwiGLU
            y = y * top_k_weights[token_idx, slot].unsqueeze(-1)  # [n_e, C] * [n_e, 1]: the router's weight
            out = out.index_add(0, token_idx, y)  # [N, C]: back to the tokens' rows (k experts add up)
        return out
        # lesson 25: end (experts)

    def extra_repr(self):
        return f"d_model={self.d_model}, n_experts={self.n_experts}, moe_hidden={self.moe_hidden}"


class SparseMoeBlock(Module):
    """HF `Qwen3MoeSparseMoeBlock` (no shared expert) and `Qwen3NextSparseMoeBlock` (with one).

    x [..., C] -> [..., C]; with `output_router_logits=True` also the router logits [N, E], which
    `load_balancing_loss` needs. `shared_expert_hidden=None` builds no shared expert.
    `norm_topk_prob` (default True: Mixtral, Qwen3-Next) makes each token's k weights sum to 1.
    """

    def __init__(self, d_model: int, n_experts: int, top_k: int, moe_hidden: int, norm_topk_prob: bool = True,
                 shared_expert_hidden: int | None = None):
        super().__init__()
        _check_top_k(top_k, n_experts)
        if shared_expert_hidden is not None:
            _check_positive_int("shared_expert_hidden", shared_expert_hidden)
        self.d_model, self.n_experts, self.top_k = d_model, n_experts, top_k
        self.gate = TopKRouter(d_model, n_experts, top_k, norm_topk_prob)
        self.experts = Experts(d_model, n_experts, moe_hidden)
        if shared_expert_hidden is not None:
            self.shared_expert = SwiGLU(d_model, shared_expert_hidden)
            self.shared_expert_gate = Linear(d_model, 1, bias=False)
        else:
            self.shared_expert = self.shared_expert_gate = None

    # lesson 25: begin (block)
    def forward(self, x, output_router_logits: bool = False):
        x = x if isinstance(x, Tensor) else Tensor(x)
        h = _tokens(x, self.d_model, "SparseMoeBlock")  # [..., C] -> [N, C]
        router_logits, top_k_weights, top_k_index = self.gate(h)  # [N, E], [N, k], [N, k]
        y = self.experts(h, top_k_index, top_k_weights)  # [N, C]: each token's k experts, weighted
        if self.shared_expert is not None:  # every token also passes the shared expert, through a learned valve
            y = y + F.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)  # [N, 1] * [N, C]
        y = y.reshape(x.shape)  # [N, C] -> [..., C]
        return (y, router_logits) if output_router_logits else y
    # lesson 25: end (block)

    def active_parameters(self) -> int:
        """Parameters one token uses: the router, k of the E experts, the shared expert and its gate."""
        per_expert = self.experts.gate_up_proj[0].numel() + self.experts.down_proj[0].numel()
        shared = 0 if self.shared_expert is None else (self.shared_expert.num_parameters()
                                                       + self.shared_expert_gate.num_parameters())
        return self.gate.weight.numel() + self.top_k * per_expert + shared

    def extra_repr(self):
        return f"d_model={self.d_model}, n_experts={self.n_experts}, top_k={self.top_k}"


# lesson 25: begin (load_balancing_loss)
def load_balancing_loss(router_logits, num_experts: int, top_k: int, attention_mask=None) -> Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al. 2021, eqs. 4-6), as HF's `load_balancing_loss_func`.

        f_e = (1/N) #{(token, slot) routed to expert e}      share of the routing slots (sums to k)
        P_e = (1/N) sum over tokens of p_e(x)                mean router probability (sums to 1)
        loss = E * sum_e f_e P_e

    router_logits: [N, E], or a list/tuple of them, one per MoE layer (HF passes a tuple; counts and
    probabilities are summed over layers before the product). attention_mask: N values (e.g. [B, T]
    with B*T = N), 1/True for real tokens, 0/False for padding, which is left out of both averages.
    The loss is k when routing is perfectly even (f_e = k/E, P_e = 1/E) and E when every token goes
    to the same k experts. f is a count, so the gradient flows through P alone: it lowers the
    probability of the experts that got more than their share of slots.
    """
    layers = [router_logits] if isinstance(router_logits, Tensor) else list(router_logits)
    _check_top_k(top_k, num_experts)
    if not layers:
        raise ConfigError("load_balancing_loss needs at least one layer's router logits, got an empty sequence")
    for i, logits in enumerate(layers):
        if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[1] != num_experts:
            raise ShapeError(f"load_balancing_loss: router logits {i} must be a Tensor [N, E] with E = num_experts "
                             f"= {num_experts}, got {getattr(logits, 'shape', type(logits).__name__)}")
    dtype = _softmax_dtype(layers[0].dtype)
    counts = np.zeros(num_experts, dtype=dtype)  # f_e * N, summed over layers (no gradient: a count)
    prob_sum, rows = None, 0.0  # P_e * N, summed over layers; N, summed over layers
    for logits in layers:
        N = logits.shape[0]
        weight = np.ones(N, dtype=dtype) if attention_mask is None else _flat_mask(attention_mask, N, dtype)
        probs = F.softmax(logits.to(dtype), dim=-1)  # [N, E]
        chosen = top_k_indices(probs.data, top_k)  # [N, k], the router's choice
        counts += np.bincount(chosen.reshape(-1), weights=np.repeat(weight, top_k), minlength=num_experts)
        layer_probs = (probs * Tensor(weight[:, None])).sum(dim=0)  # [E]: padding rows weigh 0
        prob_sum = layer_probs if prob_sum is None else prob_sum + layer_probs
        rows += float(weight.sum())
    f = Tensor((counts / rows).astype(dtype))  # [E]
    P = prob_sum / rows  # [E]
    return (f * P).sum() * num_experts
# lesson 25: end (load_balancing_loss)


def _flat_mask(attention_mask, N: int, dtype) -> np.ndarray:
    m = np.asarray(attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask)
    if m.size != N:
        raise ShapeError(f"load_balancing_loss: attention_mask has {m.size} entries (shape {m.shape}), "
                         f"but the router logits have N = {N} rows (one per token)")
    return m.reshape(-1).astype(dtype)


def tokens_per_expert(top_k_index, n_experts: int) -> np.ndarray:
    """How many tokens each expert received: top_k_index [N, k] -> [E] int64 counts (they sum to N * k)."""
    index = np.asarray(top_k_index.data if isinstance(top_k_index, Tensor) else top_k_index)
    return np.bincount(index.reshape(-1), minlength=n_experts)


def routing_matrix(top_k_index, top_k_weights, n_experts: int) -> np.ndarray:
    """Which experts each token used and with what weight: [N, k] twice -> [N, E], 0 for experts not chosen."""
    index = np.asarray(top_k_index.data if isinstance(top_k_index, Tensor) else top_k_index)
    weights = np.asarray(top_k_weights.data if isinstance(top_k_weights, Tensor) else top_k_weights)
    table = np.zeros((index.shape[0], n_experts), dtype=weights.dtype)  # [N, E]
    np.put_along_axis(table, index, weights, axis=-1)
    return table
