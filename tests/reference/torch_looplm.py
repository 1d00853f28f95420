"""A PyTorch twin of litetorch.models.looplm.LoopLM, used only by tests (and notebooks 18-21).

Plain torch (no litetorch inside), same parameter names, so

    tm = TorchLoopLM(cfg).double()
    tm.load_state_dict({k: torch.from_numpy(v) for k, v in lt_model.state_dict().items()})

gives the same function. It implements the full-sequence forward (every exit rule, gating,
input injection, the shared_first attention rule, BitLinear with the STE) and Ouro's loss;
cached decoding is litetorch's alone and is checked against litetorch's own batched prefill.
`cfg` is a litetorch `LoopConfig` (or anything with the same attributes).
"""
from __future__ import annotations

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
        self.H, self.Hkv, self.Dh, self.rope, self.base = H, Hkv, C // H, c.rope, c.rope_base
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
    def __init__(self, c, lin=nn.Linear):
        super().__init__()
        self.gate_proj = lin(c.d_model, c.hidden, bias=False)
        self.up_proj = lin(c.d_model, c.hidden, bias=False)
        self.down_proj = lin(c.hidden, c.d_model, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm Llama block (the local layers)."""

    def __init__(self, c):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(c.d_model, eps=c.eps)
        self.self_attn = Attn(c)
        self.post_attention_layernorm = nn.RMSNorm(c.d_model, eps=c.eps)
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.self_attn(self.input_layernorm(x))[0]
        return x + self.mlp(self.post_attention_layernorm(x))


class LoopBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        lin = BitLinear if c.bitlinear else nn.Linear
        self.input_layernorm = nn.RMSNorm(c.d_model, eps=c.eps)
        self.self_attn = Attn(c, lin)
        self.post_attention_layernorm = nn.RMSNorm(c.d_model, eps=c.eps)
        self.mlp = MLP(c, lin)
        self.gating = c.gating
        self.n_gates = max(c.max_loops, c.loop_count)
        if c.gating:
            self.gate_attn = nn.Parameter(torch.zeros(self.n_gates, c.d_model))
            self.gate_ffn = nn.Parameter(torch.zeros(self.n_gates, c.d_model))

    def forward(self, x, G, r, ref_kv=None):
        A, kv = self.self_attn(self.input_layernorm(x), ref_kv)
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
        self.layers_before = nn.ModuleList([Block(c) for _ in range(c.n_before)])
        if c.input_injection:
            self.inject = nn.Linear(2 * c.d_model, c.d_model, bias=False)
        self.loop = LoopBlock(c)
        if c.exit == "gate":
            self.exit_gate = nn.Linear(c.d_model, 1)
        self.layers_after = nn.ModuleList([Block(c) for _ in range(c.n_after)])
        self.norm = nn.RMSNorm(c.d_model, eps=c.eps)
        self.lm_head = nn.Linear(c.d_model, c.vocab_size, bias=False)

    def readout(self, h):
        for blk in self.layers_after:
            h = blk(h)
        return self.lm_head(self.norm(h))

    def forward(self, ids, loops=None, steps=False):
        """-> (logits, loops used [B, T], step_logits or None, exit probs [B, T, R] or None)."""
        c = self.c
        R = (c.loop_count if c.exit == "none" else c.max_loops) if loops is None else loops
        adaptive = c.exit != "none" and not steps
        x = self.embed_tokens(ids)
        for blk in self.layers_before:
            x = blk(x)
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
                        lam = 1.0 / (1.0 + np.exp(-self.exit_gate(h_new)[..., 0].numpy().astype(np.float64)))
                        p = surv if r == R else surv * lam
                        cdf, surv = cdf + p, surv * (1 - lam)
                        crit = torch.from_numpy(cdf >= c.exit_threshold - 1e-12)
                    else:
                        probe = self.lm_head(self.norm(h_new)).double()
                        if c.exit == "entropy":
                            crit = _entropy(probe) < c.exit_threshold
                        else:
                            crit = _kl(probe, prev) < c.exit_threshold if r > 1 else torch.zeros_like(done)
                        prev = probe
                now = ~done & (((r >= min(c.min_loops, R)) & crit) | (r == R))
                h = torch.where(done[..., None], h, h_new)
                G = torch.where(done[..., None], G, G_new) if G is not None else G_new
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
            lams = [torch.sigmoid(self.exit_gate(s))[..., 0] for s in states]
            ps, surv_t = [], torch.ones_like(lams[0])
            for t, lam in enumerate(lams):
                ps.append(surv_t if t == R - 1 else surv_t * lam)
                surv_t = surv_t * (1 - lam)
            probs = torch.stack(ps, -1)
        return step_logits[-1], used, step_logits, probs


def looplm_loss(logits, step_logits, probs, targets, beta=0.0, compute_penalty=0.0, teacher=None, tau=1.0,
                distill_weight=0.0):
    """Ouro's objective, written independently of litetorch's (see litetorch.models.looplm.looplm_loss)."""
    V = logits.shape[-1]
    t = targets.reshape(-1)
    valid = (t != -100).to(logits.dtype)
    n = max(float(valid.sum()), 1.0)
    if probs is not None:
        ce = torch.stack([F.cross_entropy(lg.reshape(-1, V), t, reduction="none") for lg in step_logits], -1)
        p = probs.reshape(-1, len(step_logits))
        tok = (p * ce).sum(-1) - beta * (-(p * p.clamp(min=1e-12).log()).sum(-1))
        tok = tok + compute_penalty * (p * torch.arange(1, p.shape[-1] + 1, dtype=p.dtype)).sum(-1)
        loss = (tok * valid).sum() / n
    else:
        loss = F.cross_entropy(logits.reshape(-1, V), t)
    if teacher is not None and distill_weight:
        tl = (teacher.reshape(-1, V) / tau).log_softmax(-1)
        sl = (logits.reshape(-1, V) / tau).log_softmax(-1)
        kl = (tl.exp() * (tl - sl)).sum(-1)
        loss = loss + distill_weight * tau * tau * (kl * valid).sum() / n
    return loss
