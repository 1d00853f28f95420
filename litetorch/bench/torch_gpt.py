"""A PyTorch twin of litetorch.models.gpt.GPT, used only by the training benchmark, the tests and notebook 17
(`tests/reference/torch_gpt.py` hands these names on).

Written with plain torch modules (no litetorch inside), with the same parameter names, so

    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in lt_model.state_dict().items()})
    lt_model.load_state_dict(torch_model.state_dict())

both work, and the two can be trained side by side from the same weights. `config` is a
litetorch `GPTConfig` (or anything with the same attributes).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _norm(config, C):
    return nn.LayerNorm(C, eps=1e-5) if config.norm == "layer" else nn.RMSNorm(C, eps=1e-5)


def _rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat([-x[..., d:], x[..., :d]], dim=-1)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        C, H = config.n_embd, config.n_head
        self.n_head, self.head_dim, self.rope = H, C // H, config.positions == "rope"
        self.qkv_proj = nn.Linear(C, 3 * C, bias=config.bias)  # [q | k | v] rows, as litetorch (nanoGPT's c_attn)
        self.o_proj = nn.Linear(C, C, bias=config.bias)
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (p.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
                   for p in self.qkv_proj(x).split(C, dim=-1))  # [B, H, T, Dh]
        if self.rope:  # HF rotate_half RoPE, base 10000; angles in float32 (float64 for float64 runs)
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.head_dim, 2, dtype=dt) / self.head_dim))
            angles = torch.arange(T, dtype=dt)[:, None] * inv_freq  # [T, Dh/2]
            angles = torch.cat([angles, angles], dim=-1)
            cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.kind = config.mlp
        if config.mlp == "swiglu":
            hidden = -(-(8 * C // 3) // 8) * 8  # litetorch's default_hidden
            self.gate_up_proj = nn.Linear(C, 2 * hidden, bias=config.bias)  # [gate | up] rows, as litetorch
            self.down_proj = nn.Linear(hidden, C, bias=config.bias)
        else:
            self.fc1 = nn.Linear(C, 4 * C, bias=config.bias)
            self.fc2 = nn.Linear(4 * C, C, bias=config.bias)
            self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.kind == "swiglu":
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
        h = self.fc1(x)
        h = F.relu(h) if self.kind == "relu" else F.gelu(h, approximate="tanh" if self.kind == "gelu_tanh" else "none")
        return self.fc2(self.dropout(h))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        C = config.n_embd
        self.prenorm = config.prenorm
        self.self_attn = Attention(config)
        self.mlp = MLP(config)
        if self.prenorm:
            self.input_layernorm, self.post_attention_layernorm = _norm(config, C), _norm(config, C)
        else:
            self.norm1, self.norm2 = _norm(config, C), _norm(config, C)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        if self.prenorm:
            x = x + self.dropout(self.self_attn(self.input_layernorm(x)))
            return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x)))
        return self.norm2(x + self.dropout(self.mlp(x)))


def sinusoidal_table(T, C, dtype):
    pos = torch.arange(T, dtype=torch.float64)[:, None]
    inv_freq = 10000.0 ** (-torch.arange(0, C, 2, dtype=torch.float64) / C)
    pe = torch.zeros(T, C, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv_freq)
    pe[:, 1::2] = torch.cos(pos * inv_freq)[:, : C // 2]
    return pe.to(dtype)


class TorchGPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        if c.positions == "learned":
            self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = _norm(c, c.n_embd)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.wte.weight
        # GPT-2 init (the tests copy litetorch's weights anyway; this makes the twin usable alone)
        for name, p in self.named_parameters():
            if "norm" in name or name.startswith("ln_f"):
                continue
            if name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("o_proj.weight", "fc2.weight",
                                                                        "down_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        x = self.wte(idx)
        if self.config.positions == "learned":
            x = x + self.wpe(torch.arange(T))
        elif self.config.positions == "sinusoidal":
            x = x + sinusoidal_table(T, self.config.n_embd, x.dtype)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(B * T, -1), targets.view(B * T))
        return logits, loss


def param_groups(named_params, weight_decay):
    """nanoGPT's split, by name: matrices and embeddings decay, biases and norm weights do not."""
    decay = [p for n, p in named_params if p.dim() >= 2]
    no_decay = [p for n, p in named_params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
