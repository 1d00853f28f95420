"""A PyTorch twin of litetorch.models.looplm.LoopLM, used only by tests (and notebooks 18-21).

Plain torch (no litetorch inside), same parameter names, so

    tm = TorchLoopLM(cfg).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in lt_model.state_dict().items()})

gives the same function. It implements the full-sequence forward (every exit rule, gating,
input injection, the shared_first attention rule, BitLinear with the STE, per-layer kinds (attention
or Gated DeltaNet, dense SwiGLU or MoE), hyper-connections (HC, mHC, mHC-lite) around every sublayer,
tied embeddings) and Ouro's loss with the distillation term;
cached decoding is litetorch's alone and is checked against litetorch's own batched prefill.
`cfg` is a litetorch `LoopConfig` (or anything with the same attributes).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def _rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


def rope(x, base: float):
    """HF rotate_half RoPE at positions 0..T-1; angles in float32 (float64 for float64 inputs)."""
    T, Dh = x.shape[-2], x.shape[-1]
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    inv_freq = 1.0 / (torch.tensor(base, dtype=dt) ** (torch.arange(0, Dh, 2, dtype=dt) / Dh))
    ang = torch.arange(T, dtype=dt)[:, None] * inv_freq
    ang = torch.cat([ang, ang], dim=-1)
    return x * ang.cos().to(x.dtype) + _rotate_half(x) * ang.sin().to(x.dtype)


class BitLinear(nn.Linear):
    """BitNet b1.58's training-time layer (the paper's reference recipe), STE via detach()."""

    def forward(self, x):
        x_n = F.rms_norm(x, (self.in_features,), eps=1e-5)
        s = 127.0 / x_n.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
        x_q = x_n + ((x_n * s).round().clamp(-128, 127) / s - x_n).detach()
        w = self.weight
        sw = 1.0 / w.abs().mean().clamp(min=1e-5)
        w_q = w + ((w * sw).round().clamp(-1, 1) / sw - w).detach()
        return F.linear(x_q, w_q, self.bias)


def attention(q, k, v, mask):
    """q [B, H, T, Dh], k/v [B, Hkv, Tk, Dh], bool mask [T, Tk] (True = keep) -> [B, H, T, Dh]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~mask, float("-inf"))
    return s.softmax(-1) @ v


class Attn(nn.Module):
    def __init__(self, c, lin=nn.Linear):
        super().__init__()
        C, H, Hkv = c.d_model, c.n_heads, c.n_kv_heads
        self.H, self.Hkv, self.Dh, self.rope, self.base = H, Hkv, c.head_dim, c.rope, c.rope_base
        self.q_proj = lin(C, H * self.Dh, bias=False)
        self.k_proj = lin(C, Hkv * self.Dh, bias=False)
        self.v_proj = lin(C, Hkv * self.Dh, bias=False)
        self.o_proj = lin(H * self.Dh, C, bias=False)

    def qkv(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.H, self.Dh).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.Hkv, self.Dh).transpose(1, 2)
        if self.rope:
            q, k = rope(q, self.base), rope(k, self.base)
        return q, k, v

    def out(self, y):
        B, H, T, Dh = y.shape
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * Dh))

    def forward(self, x, ref_kv=None):
        """Causal attention; with ref_kv (shared_first, r >= 2): past positions' iteration-1 K/V + own fresh."""
        q, k, v = self.qkv(x)
        T = x.shape[1]
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        if ref_kv is None:
            return self.out(attention(q, k, v, causal)), (k, v)
        rk, rv = ref_kv
        mask = torch.cat([causal.tril(-1), torch.eye(T, dtype=torch.bool)], dim=1)  # [T, 2T]
        return self.out(attention(q, torch.cat([rk, k], 2), torch.cat([rv, v], 2), mask)), (k, v)


class MLP(nn.Module):
    def __init__(self, c, lin=nn.Linear, hidden=None):
        super().__init__()
        hidden = hidden or c.hidden
        self.gate_proj = lin(c.d_model, hidden, bias=False)
        self.up_proj = lin(c.d_model, hidden, bias=False)
        self.down_proj = lin(hidden, c.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _rms(x, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class DeltaNet(nn.Module):
    """Qwen3-Next's Gated DeltaNet (HF `Qwen3NextGatedDeltaNet`'s parameter names and math), written so that
    float64 stays float64: the recurrence token by token, einsum, no chunks."""

    def __init__(self, c, lin=nn.Linear):
        super().__init__()
        C = c.d_model
        self.Hk = c.linear_num_key_heads or c.n_heads
        self.Hv = c.linear_num_value_heads or self.Hk
        self.Dk, self.Dv = c.linear_key_head_dim or c.head_dim, c.linear_value_head_dim or c.head_dim
        self.eps = c.eps
        conv_dim = 2 * self.Hk * self.Dk + self.Hv * self.Dv
        self.in_proj_qkvz = lin(C, 2 * self.Hk * self.Dk + 2 * self.Hv * self.Dv, bias=False)
        self.in_proj_ba = lin(C, 2 * self.Hv, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, c.linear_conv_kernel_dim, groups=conv_dim, bias=False,
                                padding=c.linear_conv_kernel_dim - 1)
        self.dt_bias = nn.Parameter(torch.ones(self.Hv))
        self.A_log = nn.Parameter(torch.zeros(self.Hv))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(self.Dv))
        self.out_proj = lin(self.Hv * self.Dv, C, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        Hk, Hv, Dk, Dv = self.Hk, self.Hv, self.Dk, self.Dv
        r = Hv // Hk
        q, k, v, z = torch.split(self.in_proj_qkvz(x).view(B, T, Hk, -1), [Dk, Dk, r * Dv, r * Dv], dim=-1)
        b, a = torch.split(self.in_proj_ba(x).view(B, T, Hk, 2 * r), [r, r], dim=-1)
        b, a, z = b.reshape(B, T, Hv), a.reshape(B, T, Hv), z.reshape(B, T, Hv, Dv)
        qkv = torch.cat([q.reshape(B, T, -1), k.reshape(B, T, -1), v.reshape(B, T, -1)], -1).transpose(1, 2)
        qkv = F.silu(self.conv1d(qkv)[..., :T]).transpose(1, 2)
        q, k, v = torch.split(qkv, [Hk * Dk, Hk * Dk, Hv * Dv], dim=-1)
        q = q.reshape(B, T, Hk, Dk)
        k = k.reshape(B, T, Hk, Dk)
        v = v.reshape(B, T, Hv, Dv)
        beta, g = b.sigmoid(), -self.A_log.exp() * F.softplus(a + self.dt_bias)
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) * Dk ** -0.5
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        q, k = q.repeat_interleave(r, dim=2), k.repeat_interleave(r, dim=2)
        S, outs = torch.zeros(B, Hv, Dk, Dv, dtype=x.dtype), []
        for t in range(T):  # the gated delta rule: S_t = g_t S_{t-1} + beta_t k_t (v_t - k_t S g_t)^T
            S = S * g[:, t].exp()[..., None, None]
            u = (v[:, t] - torch.einsum("bhk,bhkv->bhv", k[:, t], S)) * beta[:, t, :, None]
            S = S + torch.einsum("bhk,bhv->bhkv", k[:, t], u)
            outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
        o = torch.stack(outs, 1)  # [B, T, Hv, Dv]
        o = _rms(o, self.eps) * self.norm.weight * F.silu(z)
        return self.out_proj(o.reshape(B, T, -1))


class Experts(nn.Module):
    def __init__(self, E, C, I):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(E, 2 * I, C) * C ** -0.5)
        self.down_proj = nn.Parameter(torch.randn(E, C, I) * I ** -0.5)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (+ an optional gated shared expert), HF Qwen3-MoE / Qwen3-Next names."""

    def __init__(self, c):
        super().__init__()
        C, I = c.d_model, c.moe_hidden or c.hidden
        self.k, self.norm = c.top_k, c.norm_topk_prob
        self.gate = nn.Linear(C, c.n_experts, bias=False)
        self.experts = Experts(c.n_experts, C, I)
        self.shared = c.shared_expert_hidden is not None
        if self.shared:
            self.shared_expert = MLP(c, hidden=c.shared_expert_hidden)
            self.shared_expert_gate = nn.Linear(C, 1, bias=False)

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        p = self.gate(h).softmax(-1)
        w, idx = torch.topk(p, self.k, dim=-1)
        if self.norm:
            w = w / w.sum(-1, keepdim=True)
        out = torch.zeros_like(h)
        for e in range(self.experts.gate_up_proj.shape[0]):
            tok, slot = torch.nonzero(idx == e, as_tuple=True)
            if len(tok) == 0:
                continue
            gate, up = F.linear(h[tok], self.experts.gate_up_proj[e]).chunk(2, -1)
            y = F.linear(F.silu(gate) * up, self.experts.down_proj[e]) * w[tok, slot, None]
            out = out.index_add(0, tok, y)
        if self.shared:
            out = out + torch.sigmoid(self.shared_expert_gate(h)) * self.shared_expert(h)
        return out.reshape(x.shape)


def _sinkhorn(logits, iters):
    M = torch.exp(logits)
    for _ in range(iters):
        M = M / M.sum(-2, keepdim=True)
        M = M / M.sum(-1, keepdim=True)
    return M


class Mapping(nn.Module):
    """Hyper-connection mappings, from the papers' equations (HC static/dynamic, mHC, mHC-lite)."""

    def __init__(self, kind, C, n, layer_index):
        super().__init__()
        self.kind, self.C, self.n = kind, C, n
        one = lambda: nn.Parameter(torch.tensor(0.01))  # noqa: E731
        if kind in ("shc", "dhc"):
            self.b_pre = nn.Parameter(torch.eye(n)[layer_index % n])
            self.b_post = nn.Parameter(torch.ones(n))
            self.b_res = nn.Parameter(torch.eye(n))
            if kind == "dhc":
                self.theta_pre = nn.Parameter(torch.zeros(1, C))
                self.theta_post = nn.Parameter(torch.zeros(1, C))
                self.theta_res = nn.Parameter(torch.zeros(n, C))
                self.alpha_pre, self.alpha_post, self.alpha_res = one(), one(), one()
            return
        m = n * n if kind == "mhc" else math.factorial(n)
        self.phi_pre = nn.Parameter(torch.zeros(n * C, n))
        self.phi_post = nn.Parameter(torch.zeros(n * C, n))
        self.phi_res = nn.Parameter(torch.zeros(n * C, m))
        self.b_pre, self.b_post = nn.Parameter(torch.zeros(n)), nn.Parameter(torch.zeros(n))
        self.b_res = nn.Parameter(torch.zeros(n, n) if kind == "mhc" else torch.zeros(m))
        self.alpha_pre, self.alpha_post, self.alpha_res = one(), one(), one()

    def forward(self, x):
        n, C = self.n, self.C
        if self.kind == "shc":
            return self.b_pre, self.b_post, self.b_res
        if self.kind == "dhc":
            xt = F.rms_norm(x, (C,), eps=1e-6)
            pre = self.alpha_pre * torch.tanh(torch.einsum("oc,btic->bti", self.theta_pre, xt)) + self.b_pre
            post = self.alpha_post * torch.tanh(torch.einsum("oc,btic->bti", self.theta_post, xt)) + self.b_post
            res = self.alpha_res * torch.tanh(torch.einsum("jc,btic->btji", self.theta_res, xt)) + self.b_res
            return pre, post, res
        x1 = F.rms_norm(x.flatten(-2), (n * C,), eps=1e-6)
        pre = torch.sigmoid(self.alpha_pre * (x1 @ self.phi_pre) + self.b_pre)
        post = 2 * torch.sigmoid(self.alpha_post * (x1 @ self.phi_post) + self.b_post)
        if self.kind == "mhc":
            return pre, post, _sinkhorn(self.alpha_res * (x1 @ self.phi_res).unflatten(-1, (n, n)) + self.b_res, 20)
        a = torch.softmax(self.alpha_res * (x1 @ self.phi_res) + self.b_res, dim=-1)
        eye = torch.eye(n, dtype=x.dtype)
        P = torch.stack([eye[list(q)] for q in itertools.permutations(range(n))])
        return pre, post, torch.einsum("btk,kij->btij", a, P)


def _read(pre, x):
    return torch.einsum("...i,...ic->...c", pre, x)


def _write(post, y):
    return post[..., :, None] * y[..., None, :]


class LoopBlock(nn.Module):
    """Every layer (local ones and the shared block): mixer by kind, FFN by kind, plain/gated/HC residual."""

    def __init__(self, c, index, shared=False):
        super().__init__()
        mixer, mlp = c.layer_kind(index)
        lin = BitLinear if c.bitlinear and shared else nn.Linear
        self.input_layernorm = nn.RMSNorm(c.d_model, eps=c.eps)
        if mixer == "deltanet":
            self.linear_attn = DeltaNet(c, lin)
        else:
            self.self_attn = Attn(c, lin)
        self.post_attention_layernorm = nn.RMSNorm(c.d_model, eps=c.eps)
        self.mlp = MoE(c) if mlp == "moe" else MLP(c, lin)
        self.gating = c.gating and shared
        self.n_gates = max(c.max_loops, c.loop_count)
        if self.gating:
            self.gate_attn = nn.Parameter(torch.zeros(self.n_gates, c.d_model))
            self.gate_ffn = nn.Parameter(torch.zeros(self.n_gates, c.d_model))
        self.hyper = c.hyper
        if c.hyper is not None:
            sets = self.n_gates if shared and c.hyper_per_iteration else 1
            self.hc_attn = nn.ModuleList([Mapping(c.hyper, c.d_model, c.hyper_streams, 2 * index) for _ in range(sets)])
            self.hc_mlp = nn.ModuleList([Mapping(c.hyper, c.d_model, c.hyper_streams, 2 * index + 1)
                                         for _ in range(sets)])

    def mix(self, x, ref_kv):
        if hasattr(self, "linear_attn"):
            return self.linear_attn(x), None
        return self.self_attn(x, ref_kv)

    def forward(self, x, G, r, ref_kv=None):
        if self.hyper is not None:
            k = min(r, len(self.hc_attn)) - 1
            pre, post, res = self.hc_attn[k](x)
            A, kv = self.mix(self.input_layernorm(_read(pre, x)), ref_kv)
            x = torch.einsum("...ij,...jc->...ic", res, x) + _write(post, A)
            pre, post, res = self.hc_mlp[k](x)
            Fo = self.mlp(self.post_attention_layernorm(_read(pre, x)))
            return torch.einsum("...ij,...jc->...ic", res, x) + _write(post, Fo), None, kv
        A, kv = self.mix(self.input_layernorm(x), ref_kv)
        if not self.gating:
            h = x + A
            return h + self.mlp(self.post_attention_layernorm(h)), None, kv
        g = min(r, self.n_gates) - 1
        a, b = torch.sigmoid(self.gate_attn[g]), torch.sigmoid(self.gate_ffn[g])
        if G is None:
            G = torch.zeros_like(x)
        h = x + a * A + (1 - a) * G
        Fo = self.mlp(self.post_attention_layernorm(h))
        h = h + b * Fo + (1 - b) * G
        return h, G + ((A + Fo) / 2 - G) / r, kv


def _entropy(z):
    lp = z.log_softmax(-1)
    return -(lp.exp() * lp).sum(-1)


def _kl(zp, zq):
    lp, lq = zp.log_softmax(-1), zq.log_softmax(-1)
    return (lp.exp() * (lp - lq)).sum(-1)


class TorchLoopLM(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.d_model)
        self.layers_before = nn.ModuleList([LoopBlock(c, i) for i in range(c.n_before)])
        if c.input_injection:
            self.inject = nn.Linear(2 * c.d_model, c.d_model, bias=False)
        self.loop = LoopBlock(c, c.n_before, shared=True)
        if c.exit == "gate":
            self.exit_gate = nn.Linear(c.d_model, 1)
        self.layers_after = nn.ModuleList([LoopBlock(c, c.n_before + 1 + j) for j in range(c.n_after)])
        self.norm = nn.RMSNorm(c.d_model, eps=c.eps)
        if not c.tie_embeddings:
            self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def collapse(self, h):
        return h.sum(-2) if self.c.hyper is not None else h

    def head(self, h):
        h = self.norm(self.collapse(h))
        return F.linear(h, self.embed_tokens.weight) if self.c.tie_embeddings else self.lm_head(h)

    def readout(self, h):
        for blk in self.layers_after:
            h = blk(h, None, 1)[0]
        return self.head(h)

    def forward(self, ids, loops=None, steps=False):
        """-> (logits, loops used [B, T], step_logits or None, exit probs [B, T, R] or None)."""
        c = self.c
        R = (c.loop_count if c.exit == "none" else c.max_loops) if loops is None else loops
        adaptive = c.exit != "none" and not steps
        x = self.embed_tokens(ids)
        if c.hyper is not None:
            x = x[..., None, :].expand(*x.shape[:-1], c.hyper_streams, x.shape[-1])
        for blk in self.layers_before:
            x = blk(x, None, 1)[0]
        e = h = x
        G, ref = None, None
        B, T = ids.shape
        done = torch.zeros(B, T, dtype=torch.bool)
        used = torch.full((B, T), R)
        cdf, surv, prev, states = np.zeros((B, T)), np.ones((B, T)), None, []
        for r in range(1, R + 1):
            inp = self.inject(torch.cat([h, e], -1)) if c.input_injection else h
            use_ref = ref if (c.kv_policy == "shared_first" and r > 1) else None
            h_new, G_new, kv = self.loop(inp, G, r, use_ref)
            if r == 1:
                ref = kv
            if adaptive:
                with torch.no_grad():
                    if c.exit == "gate":
                        z = self.exit_gate(self.collapse(h_new))[..., 0].numpy().astype(np.float64)
                        lam = 1.0 / (1.0 + np.exp(-z))
                        p = surv if r == R else surv * lam
                        cdf, surv = cdf + p, surv * (1 - lam)
                        crit = torch.from_numpy(cdf >= c.exit_threshold - 1e-12)
                    else:
                        probe = self.head(h_new).double()
                        if c.exit == "entropy":
                            crit = _entropy(probe) < c.exit_threshold
                        else:
                            crit = _kl(probe, prev) < c.exit_threshold if r > 1 else torch.zeros_like(done)
                        prev = probe
                now = ~done & (((r >= min(c.min_loops, R)) & crit) | (r == R))
                mask = done.reshape(B, T, *([1] * (h.dim() - 2)))
                h = torch.where(mask, h, h_new)
                G = torch.where(mask, G, G_new) if G is not None else G_new
                used[now] = r
                done = done | now
            else:
                h, G = h_new, G_new
            states.append(h)
        if not steps:
            return self.readout(h), used, None, None
        step_logits = [self.readout(s) for s in states]
        probs = None
        if c.exit == "gate":
            lams = [torch.sigmoid(self.exit_gate(self.collapse(s)))[..., 0] for s in states]
            ps, surv_t = [], torch.ones_like(lams[0])
            for t, lam in enumerate(lams):
                ps.append(surv_t if t == R - 1 else surv_t * lam)
                surv_t = surv_t * (1 - lam)
            probs = torch.stack(ps, -1)
        return step_logits[-1], used, step_logits, probs


def looplm_loss(logits, step_logits, probs, targets, beta=0.0, compute_penalty=0.0, teacher=None, tau=1.0,
                distill_weight=0.0):
    """Ouro's objective + distillation, written independently of litetorch's (litetorch.models.looplm_train).

    Per token: sum_t p(t) [CE_t + w tau^2 KL(teacher || student_t)] - beta H(p) + penalty E_p[t] with the
    exit gate; CE + w tau^2 KL of the last step otherwise. Mean over tokens whose target is not -100."""
    V = logits.shape[-1]
    t = targets.reshape(-1)
    valid = (t != -100).to(logits.dtype)
    n = max(float(valid.sum()), 1.0)
    steps = step_logits if probs is not None else [logits]
    terms = []
    for lg in steps:
        term = F.cross_entropy(lg.reshape(-1, V), t, reduction="none", ignore_index=-100)
        if teacher is not None and distill_weight:
            tl = (teacher.reshape(-1, V) / tau).log_softmax(-1)
            sl = (lg.reshape(-1, V) / tau).log_softmax(-1)
            term = term + distill_weight * tau * tau * (tl.exp() * (tl - sl)).sum(-1)
        terms.append(term)
    if probs is not None:
        p = probs.reshape(-1, len(steps))
        tok = (p * torch.stack(terms, -1)).sum(-1) - beta * (-(p * p.clamp(min=1e-12).log()).sum(-1))
        tok = tok + compute_penalty * (p * torch.arange(1, p.shape[-1] + 1, dtype=p.dtype)).sum(-1)
    else:
        tok = terms[0]
    return (tok * valid).sum() / n
