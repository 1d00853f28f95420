"""Make the figures the lessons show, into lessons/figures/ (tracked).

Two kinds:

- **Diagrams**, drawn here with matplotlib from a few helpers (`box`, `arrow`, `label`): the decoder
  block (pre-norm vs post-norm, lesson 08), attention heads split and merged for MHA/GQA/MQA (04), the
  KV cache in prefill and decode (09), the looped model with its gates and exits (18), a sparse MoE
  layer (25), Qwen3-Next's hybrid layout (26), hyper-connections and mHC's doubly stochastic mixing (27).
- **Notebook figures**: a lesson that embeds `figures/NN-name.png` (NN not a diagram) gets the PNG
  notebook NN saves. This script runs that notebook as a script (`MPLBACKEND=Agg`), which writes
  its figures to notebooks/_out/ (git-ignored), and copies the ones the lessons embed.

    python scripts/make_figures.py                # everything (runs the notebooks: several minutes)
    python scripts/make_figures.py --diagrams     # only the diagrams (seconds)
    python scripts/make_figures.py 09 14          # the figures of lessons 09 and 14
    python scripts/make_figures.py --no-run       # copy what notebooks/_out/ already holds

Notebook figures with timings (09, 14, 22) differ from machine to machine and run to run; the
committed ones say where they were made in the notebook's printout, not in the picture.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script that only writes files (notebooks never do this: they show inline)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Circle, FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "lessons" / "figures"
NB_OUT = ROOT / "notebooks" / "_out"

# one colour per kind of thing, the same in every diagram
NORM, ATTN, MLP, CACHE, QUERY, STATE, GATE, PLAIN = ("#fde68a", "#bfdbfe", "#bbf7d0", "#e9d5ff", "#fecaca",
                                                     "#e5e7eb", "#fed7aa", "#ffffff")
GROUP = ["#93c5fd", "#fca5a5", "#86efac", "#fcd34d", "#c4b5fd", "#f9a8d4", "#5eead4", "#d6d3d1"]


# ------------------------------------------------------------------------------------------------
# Drawing helpers: coordinates are data units on an axis with equal aspect and no frame
# ------------------------------------------------------------------------------------------------
def canvas(width: float, height: float, scale: float = 0.62):
    """A figure whose axis spans [0, width] x [0, height] data units, drawn at `scale` inches per unit."""
    fig, ax = plt.subplots(figsize=(width * scale, height * scale))
    ax.set_xlim(0, width)
    ax.set_ylim(0, height)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.subplots_adjust(0, 0, 1, 1)
    return fig, ax


def box(ax, x, y, w, h, text="", color=PLAIN, fontsize=9, **kw):
    """A rounded box centred at (x, y), w x h; returns its (left, right, bottom, top) edges."""
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.12",
                                fc=color, ec=kw.pop("ec", "#374151"), lw=kw.pop("lw", 1.0), **kw))
    if text:
        ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)
    return x - w / 2, x + w / 2, y - h / 2, y + h / 2


def add_node(ax, x, y, r=0.22):
    """The residual addition: a circle with a plus."""
    ax.add_patch(Circle((x, y), r, fc=PLAIN, ec="#374151", lw=1.0))
    ax.text(x, y, "+", ha="center", va="center", fontsize=11)


def arrow(ax, start, end, color="#374151", style="-|>", lw=1.1, ls="-", rad=0.0):
    """An arrow from start to end (x, y); rad bends it (0 = straight)."""
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=10, color=color, lw=lw,
                                 linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=0, shrinkB=0))


def line(ax, points, color="#374151", lw=1.1, ls="-"):
    """A polyline through the (x, y) points, without a head (the last segment can be an `arrow`)."""
    xs, ys = zip(*points)
    ax.plot(xs, ys, color=color, lw=lw, ls=ls, solid_capstyle="butt")


def label(ax, x, y, text, fontsize=8, color="#111827", ha="center", va="center", **kw):
    ax.text(x, y, text, fontsize=fontsize, color=color, ha=ha, va=va, **kw)


def save(fig, name: str) -> Path:
    path = FIGURES / name
    fig.savefig(path, dpi=130)
    plt.close(fig)
    print("wrote", os.path.relpath(path, ROOT))
    return path


# ------------------------------------------------------------------------------------------------
# Lesson 08: the decoder block, pre-norm and post-norm
# ------------------------------------------------------------------------------------------------
def residual(ax, x, y_from, y_to, side=-1.25):
    """The skip path of a residual: from the stream at y_from, around the sublayer, into ⊕ at y_to."""
    line(ax, [(x, y_from), (x + side, y_from), (x + side, y_to)])
    arrow(ax, (x + side, y_to), (x - 0.22 if side < 0 else x + 0.22, y_to))


def decoder_column(ax, x, steps, title, equations):
    """One block drawn bottom (input) to top (output). steps: (kind, y, text) with kind in
    "fork" (the stream splits: one copy goes through the sublayer, one skips it), "add", "norm", "attn", "mlp"."""
    label(ax, x, 10.75, title, fontsize=10.5, weight="bold")
    label(ax, x, 10.2, equations, fontsize=8, family="monospace")
    label(ax, x, 0.25, "x  [B, T, C]  (the residual stream)", fontsize=8)
    colors = {"norm": NORM, "attn": ATTN, "mlp": MLP}
    prev_top = 0.5
    for kind, y, text in steps:
        if kind == "fork":
            line(ax, [(x, prev_top), (x, y)])
            ax.plot([x], [y], "o", color="#374151", ms=3.5)
            prev_top = y
            continue
        if kind == "add":
            arrow(ax, (x, prev_top), (x, y - 0.22))
            add_node(ax, x, y)
            prev_top = y + 0.22
        else:
            arrow(ax, (x, prev_top), (x, y - 0.3))
            prev_top = box(ax, x, y, 2.3, 0.6, text, colors[kind])[3]
    arrow(ax, (x, prev_top), (x, 9.55))
    label(ax, x, 9.75, "to the next block", fontsize=8)


def draw_decoder_block():
    fig, ax = canvas(13.9, 11.2)
    pre = [("fork", 1.2, ""), ("norm", 2.0, "Norm1 (RMS or Layer)"), ("attn", 3.1, "attention (+ RoPE)"),
           ("add", 4.1, ""), ("fork", 4.9, ""), ("norm", 5.7, "Norm2"), ("mlp", 6.8, "MLP (SwiGLU / GELU)"),
           ("add", 7.8, "")]
    decoder_column(ax, 3.6, pre, "pre-norm (GPT-2, Llama)", "x = x + Attn(Norm1(x))\nx = x + MLP(Norm2(x))")
    residual(ax, 3.6, 1.2, 4.1)
    residual(ax, 3.6, 4.9, 7.8)
    label(ax, 2.15, 6.3, "the stream itself\nis never normalized:\neach sublayer reads\na normalized copy\n"
          "and adds an update", fontsize=7.5, color="#4b5563", ha="right", style="italic")
    post = [("fork", 1.2, ""), ("attn", 2.2, "attention (+ RoPE)"), ("add", 3.2, ""), ("norm", 4.0, "Norm1"),
            ("fork", 4.8, ""), ("mlp", 5.8, "MLP (ReLU / GELU)"), ("add", 6.8, ""), ("norm", 7.6, "Norm2")]
    decoder_column(ax, 9.4, post, "post-norm (2017, BERT)", "x = Norm1(x + Attn(x))\nx = Norm2(x + MLP(x))")
    residual(ax, 9.4, 1.2, 3.2, side=1.25)
    residual(ax, 9.4, 4.8, 6.8, side=1.25)
    label(ax, 10.85, 8.6, "the stream is normalized\nafter every addition:\nits scale is pinned; the\n"
          "gradient passes through\nevery norm on its way down", fontsize=7.5, color="#4b5563", ha="left",
          style="italic")
    return save(fig, "08-pre-norm-vs-post-norm.png")


# ------------------------------------------------------------------------------------------------
# Lesson 04: heads split and merged; which K/V head each query head reads (MHA, GQA, MQA)
# ------------------------------------------------------------------------------------------------
def draw_heads():
    H = 8
    fig, ax = canvas(15, 12.4)
    # the split and the merge, once, with shapes
    chain = [("x\n[B, T, C]", PLAIN), ("q_proj\n[B, T, H·Dh]", QUERY), ("split heads\n[B, H, T, Dh]", QUERY),
             ("attention\nper head\n[B, H, T, Dh]", ATTN), ("merge heads\n[B, T, H·Dh]", STATE),
             ("o_proj\n[B, T, C]", PLAIN)]
    xs = [1.25 + i * 2.5 for i in range(len(chain))]
    for i, (text, color) in enumerate(chain):
        box(ax, xs[i], 11.1, 2.0, 1.0, text, color, fontsize=8)
        if i:
            arrow(ax, (xs[i - 1] + 1.0, 11.1), (xs[i] - 1.0, 11.1))
    label(ax, 7.5, 10.2, "k_proj and v_proj are split the same way, into Hkv heads: [B, T, Hkv·Dh] → [B, Hkv, T, Dh].   "
          "Split = reshape + transpose;  merge = transpose + reshape.", fontsize=7.5, color="#4b5563")
    # the three groupings
    panels = [(8, "MHA: Hkv = H = 8", "every query head has its own K/V head"),
              (2, "GQA: Hkv = 2", "each K/V head serves a group of G = H / Hkv = 4 query heads"),
              (1, "MQA: Hkv = 1", "one K/V head serves all 8 query heads")]
    for row, (Hkv, title, note) in enumerate(panels):
        y_q, y_kv = 8.7 - row * 3.3, 7.3 - row * 3.3
        G = H // Hkv
        label(ax, 0.2, y_q + 0.75, title, fontsize=9.5, ha="left", weight="bold")
        label(ax, 4.2, y_q + 0.75, note, fontsize=8, ha="left", color="#4b5563")
        q_x = [2.0 + 1.05 * h for h in range(H)]
        for h in range(H):
            box(ax, q_x[h], y_q, 0.8, 0.5, f"q{h}", GROUP[h // G], fontsize=8)
        for j in range(Hkv):
            centre = sum(q_x[j * G:(j + 1) * G]) / G
            width = 1.05 * G - 0.25
            box(ax, centre, y_kv, width, 0.5, f"k{j}, v{j}" if G < 8 else f"k{j}, v{j}  (shared by all)",
                GROUP[j], fontsize=8)
            for h in range(j * G, (j + 1) * G):
                line(ax, [(q_x[h], y_q - 0.25), (q_x[h], y_kv + 0.25)], color="#6b7280", lw=0.9)
        label(ax, 0.2, y_q, "query heads", fontsize=8, ha="left")
        label(ax, 0.2, y_kv, "K/V heads", fontsize=8, ha="left")
        kib = 2 * Hkv * 64 * 4 * 30 / 1024
        label(ax, 10.9, (y_q + y_kv) / 2, f"cache per token: 2 · Hkv · Dh · layers\n= 2·{Hkv}·64·30 floats "
              f"= {kib:.0f} KiB\n(SmolLM2's Dh, layers; float32)", fontsize=7.5, ha="left", color="#4b5563")
    return save(fig, "04-heads-mha-gqa-mqa.png")


# ------------------------------------------------------------------------------------------------
# Lesson 09: the KV cache in prefill and in decode
# ------------------------------------------------------------------------------------------------
def cache_rows(ax, x0, y, filled, new, T_max, name):
    """One layer's K (or V) buffer: T_max preallocated rows; `filled` already written, `new` written now."""
    label(ax, x0 - 0.2, y, name, fontsize=8, ha="right")
    for t in range(T_max):
        color = "#c084fc" if t in new else CACHE if t < filled else PLAIN
        box(ax, x0 + 0.55 * t + 0.25, y, 0.5, 0.5, str(t), color, fontsize=7, ec="#6b7280")


def score_grid(ax, x0, y_top, rows, cols, first_row):
    """Attention scores: one row per query (positions first_row..), one column per key; masked cells blank."""
    for i in range(rows):
        for j in range(cols):
            keep = j <= first_row + i
            ax.add_patch(FancyBboxPatch((x0 + 0.38 * j, y_top - 0.38 * (i + 1)), 0.34, 0.34,
                                        boxstyle="square,pad=0", fc=ATTN if keep else PLAIN, ec="#9ca3af", lw=0.6))


def draw_kv_cache():
    fig, ax = canvas(15, 8.4)
    T_max = 8
    for x0, title, tokens, filled, new in (
            (1.4, "prefill: the prompt, 5 tokens at once", list(range(5)), 0, set(range(5))),
            (9.2, "decode: one new token (position 5)", [5], 5, {5})):
        label(ax, x0 + 2.1, 8.1, title, fontsize=10, weight="bold")
        # the tokens that go through the layer now, their projections, the rows they append
        for t in tokens:
            box(ax, x0 + 0.55 * t + 0.25, 1.0, 0.5, 0.5, f"t{t}", QUERY, fontsize=7)
        label(ax, x0 - 0.2, 1.0, "input", fontsize=8, ha="right")
        mid = x0 + 0.55 * (tokens[0] + tokens[-1]) / 2 + 0.25
        box(ax, mid, 2.3, 2.9, 0.6, "q, k, v projections\n+ RoPE at their positions", ATTN, fontsize=7)
        arrow(ax, (mid, 1.3), (mid, 2.0))
        arrow(ax, (mid, 2.6), (mid, 3.35))
        label(ax, mid + 0.15, 3.0, "append k, v", fontsize=7.5, ha="left", color="#6b21a8")
        cache_rows(ax, x0, 3.65, filled, new, T_max, "K")
        cache_rows(ax, x0, 4.3, filled, new, T_max, "V")
        # the scores this call computes: its queries against every filled row
        n_q, n_k = len(tokens), tokens[-1] + 1
        arrow(ax, (x0 + 0.55 * n_k / 2, 4.6), (x0 + 0.55 * n_k / 2, 5.15))
        label(ax, x0 + 0.55 * n_k / 2 + 0.15, 4.87, f"q · Kᵀ over rows 0..{n_k - 1}, then · V", fontsize=7.5,
              ha="left")
        score_grid(ax, x0 + 0.1, 5.3 + 0.38 * n_q, n_q, n_k, tokens[0])
        label(ax, x0 + 0.1 + 0.38 * n_k + 0.15, 5.3 + 0.19 * n_q,
              f"scores: {n_q} {'queries' if n_q > 1 else 'query'} × {n_k} keys"
              + ("\ncausal mask (blank = masked)" if n_q > 1 else "\nnothing to mask"), fontsize=7.5, ha="left")
    label(ax, 6.0, 3.97, "K and V of one layer:\npreallocated buffers\n[B, Hkv, T_max, Dh]", fontsize=7,
          ha="left", color="#4b5563")
    label(ax, 7.5, 0.25, "purple: rows written by this call · lilac: rows already cached, read again, never recomputed"
          " · white: room not yet used", fontsize=7.5, color="#4b5563")
    return save(fig, "09-kv-cache-prefill-decode.png")


# ------------------------------------------------------------------------------------------------
# Lesson 18: the looped model, unrolled, with input injection, gates and exits
# ------------------------------------------------------------------------------------------------
def draw_looped():
    fig, ax = canvas(18.2, 7.2)
    y = 4.0
    stages = [(0.9, "ids\n[B, T]", PLAIN, 1.2), (2.6, "embed", PLAIN, 1.4), (4.5, "prelude\n(local blocks)", STATE, 1.7)]
    for x, text, color, w in stages:
        box(ax, x, y, w, 0.9, text, color, fontsize=8)
    for (x0, _, _, w0), (x1, _, _, w1) in zip(stages, stages[1:]):
        arrow(ax, (x0 + w0 / 2, y), (x1 - w1 / 2, y))
    # iterations r = 1, 2, 3 of the one shared block, each re-reading e (input injection)
    iters, w = [7.6, 10.6, 13.6], 2.5
    arrow(ax, (5.35, y), (iters[0] - w / 2, y))
    label(ax, 5.95, y + 0.22, "e", fontsize=9, style="italic")
    line(ax, [(5.9, y), (5.9, 6.2), (iters[-1], 6.2)], color="#2563eb", ls="--")
    label(ax, 10.6, 6.5, r"input injection: every iteration re-reads $e$:   $x_r = W_{inj}\,[h_{r-1} ; e]$",
          fontsize=8.5, color="#2563eb")
    for r, x in enumerate(iters, start=1):
        arrow(ax, (x, 6.2), (x, y + 0.95), color="#2563eb", ls="--")
        box(ax, x, y, w, 1.9, "", ATTN)
        label(ax, x, y + 0.5, f"shared block, r = {r}", fontsize=8.5, weight="bold")
        label(ax, x, y - 0.35, rf"$h' = x_{r} + a_{r} A + (1-a_{r})\,G_{r - 1}$" "\n" rf"$h_{r} = h' + b_{r} F + (1-b_{r})\,G_{r - 1}$",
              fontsize=7.5)
        if r > 1:
            arrow(ax, (iters[r - 2] + w / 2, y), (x - w / 2, y))
            label(ax, (iters[r - 2] + x) / 2, y + 0.22, rf"$h_{r - 1}$", fontsize=9)
        # Ouro's exit gate after iteration r (lesson 19)
        box(ax, x, 1.95, w, 0.85, rf"exit gate $\lambda_{r} = \sigma(w \cdot h_{r} + b)$" "\nstop if the CDF ≥ q",
            GATE, fontsize=7.5)
        arrow(ax, (x, y - 0.95), (x, 2.38))
    # coda and head
    arrow(ax, (iters[-1] + w / 2, y), (15.7, y))
    box(ax, 16.3, y, 1.2, 0.9, "coda\n(local)", STATE, fontsize=8)
    arrow(ax, (16.9, y), (17.2, y))
    label(ax, 17.25, y, "norm →\nlm_head →\nlogits", fontsize=7.5, ha="left")
    notes = ["One block, the same weights at every iteration: R loops = R unrolled copies (here R = 3).",
             r"Gates $a_r, b_r$: per iteration and channel, $\sigma$(logits);  $G_r$ = running mean of the sublayer "
             r"outputs A, F of iterations 1..r  ($G_0 = 0$).",
             "Exit (lesson 19): a token stops at the first r whose exit CDF reaches q and keeps its state; the others "
             "loop on. Without exits every token runs all R iterations."]
    for i, note in enumerate(notes):
        label(ax, 0.3, 1.0 - 0.36 * i, note, fontsize=7.5, ha="left", color="#4b5563")
    return save(fig, "18-looped-model.png")


# ------------------------------------------------------------------------------------------------
# Lesson 25: a sparse MoE layer: the router picks k of E experts per token, plus a shared expert
# ------------------------------------------------------------------------------------------------
def draw_moe():
    E = 8
    fig, ax = canvas(16.5, 10.2)
    label(ax, 8.25, 9.85, "a sparse MoE layer: E = 8 experts, k = 2 per token, one shared expert (Qwen3-Next)",
          fontsize=10.5, weight="bold")
    tokens = [("x₁", [1, 4], [0.62, 0.38], "#dc2626"), ("x₂", [4, 6], [0.55, 0.45], "#2563eb"),
              ("x₃", [0, 1], [0.71, 0.29], "#059669")]
    expert_x = [1.6 + 1.45 * e for e in range(E)]
    y_tok, y_router, y_exp, y_out = 0.9, 2.7, 5.5, 8.3
    for i, (name, chosen, weights, color) in enumerate(tokens):
        x = 2.6 + 4.3 * i
        box(ax, x, y_tok, 1.1, 0.6, f"{name}  [C]", QUERY, fontsize=8)
        arrow(ax, (x, y_tok + 0.3), (x, y_router - 0.8))
        # the router: softmax over the E logits (a bar per expert), then the top k
        box(ax, x, y_router, 3.4, 1.6, "", GATE)
        label(ax, x, y_router + 0.55, "router: p = softmax(x W_rᵀ)", fontsize=7.5)
        probs = [0.05, 0.06, 0.045, 0.07, 0.05, 0.06, 0.045, 0.055]
        for j, w in zip(chosen, weights):
            probs[j] = 0.3 * w
        for e in range(E):
            ax.add_patch(FancyBboxPatch((x - 1.45 + 0.36 * e, y_router - 0.65), 0.26, 2.2 * probs[e],
                                        boxstyle="square,pad=0", fc=color if e in chosen else "#e5e7eb",
                                        ec="#6b7280", lw=0.5, alpha=0.75 if e in chosen else 1.0))
        label(ax, x, y_router + 0.22, f"top-2: e{chosen[0]}, e{chosen[1]};  w = {weights[0]:.2f}, {weights[1]:.2f}",
              fontsize=6.8)
        for j in chosen:
            arrow(ax, (x - 1.45 + 0.36 * j + 0.13, y_router + 0.8), (expert_x[j] + 0.12 * (i - 1), y_exp - 0.45),
                  color=color, lw=1.0)
            arrow(ax, (expert_x[j] + 0.12 * (i - 1), y_exp + 0.45), (x + 0.25 * (j - chosen[0]) / 3, y_out - 0.35),
                  color=color, lw=1.0)
        box(ax, x, y_out, 3.0, 0.7, f"y{name[1]} = w·e{chosen[0]}({name}) + w·e{chosen[1]}({name}) + shared",
            ATTN, fontsize=7)
    for e in range(E):
        used = any(e in c for _, c, _, _ in tokens)
        box(ax, expert_x[e], y_exp, 1.2, 0.9, f"expert {e}\nSwiGLU", MLP if used else PLAIN, fontsize=7,
            ec="#374151" if used else "#9ca3af")
    box(ax, 14.6, 3.0, 2.9, 1.0, "shared expert (SwiGLU),\nevery token, behind a valve\nσ(x · w_g)", MLP, fontsize=7)
    for i in range(3):
        arrow(ax, (14.6, 3.5), (2.6 + 4.3 * i + 1.5, y_out - 0.35), color="#9ca3af", lw=0.8, ls="--")
    label(ax, 0.25, 9.25, "y = (sum over the token's k experts of  w · expert(x))  +  σ(x · w_g) · shared(x);   "
          "with norm_topk_prob the k weights sum to 1", fontsize=8, ha="left")
    label(ax, 0.25, 0.2, "Only the chosen experts run (green): experts 2, 3, 5 and 7 do no work for these three tokens. "
          "The choice (top-k) has no gradient; the weights w do, and through them the router learns.",
          fontsize=7.5, ha="left", color="#4b5563")
    return save(fig, "25-moe-layer.png")


# ------------------------------------------------------------------------------------------------
# Lesson 27: one residual stream, n hyper-connected streams, and mHC's doubly stochastic mixing
# ------------------------------------------------------------------------------------------------
def draw_hyper():
    fig, ax = canvas(17.8, 9.6)
    # left: the ordinary residual
    label(ax, 2.3, 9.2, "a residual layer (n = 1)", fontsize=10, weight="bold")
    box(ax, 2.3, 1.6, 1.6, 0.6, "x_l  [C]", STATE, fontsize=8)
    line(ax, [(2.3, 1.9), (2.3, 2.7)])
    ax.plot([2.3], [2.7], "o", color="#374151", ms=3.5)
    arrow(ax, (2.3, 2.7), (2.3, 3.7))
    box(ax, 2.3, 4.3, 1.8, 1.2, "F\n(attention\nor MLP)", ATTN, fontsize=8)
    arrow(ax, (2.3, 4.9), (2.3, 6.58))
    add_node(ax, 2.3, 6.8)
    line(ax, [(2.3, 2.7), (1.0, 2.7), (1.0, 6.8)])
    arrow(ax, (1.0, 6.8), (2.08, 6.8))
    arrow(ax, (2.3, 7.02), (2.3, 7.9))
    box(ax, 2.3, 8.2, 2.2, 0.6, "x_l+1 = x_l + F(x_l)", STATE, fontsize=7.5)
    # right: n = 4 streams
    n, x0, mx = 4, 6.2, 13.0
    label(ax, 10.4, 9.2, "hyper-connections, n = 4 streams:   x_l+1 = H_res x_l + H_postᵀ F(H_pre x_l)",
          fontsize=10, weight="bold")
    sx = [x0 + 0.9 * i for i in range(n)]
    mix_in = [mx - 1.0 + 0.66 * i for i in range(n)]
    for i in range(n):
        box(ax, sx[i], 1.6, 0.75, 0.6, f"x_l[{i}]", GROUP[i], fontsize=7)
        # each stream also goes to the mix, routed below the boxes
        y_route = 1.0 - 0.13 * i
        line(ax, [(sx[i], 1.3), (sx[i], y_route), (mix_in[i], y_route)], color=GROUP[i], lw=1.3)
        arrow(ax, (mix_in[i], y_route), (mix_in[i], 2.6), color=GROUP[i], lw=1.3)
    label(ax, sx[-1] + 0.55, 1.6, "[n, C]", fontsize=7.5, ha="left")
    # read: H_pre, one weighted sum of the streams
    box(ax, 7.55, 3.1, 3.6, 0.7, "read: h = H_pre x_l = Σᵢ H_pre[i] · x_l[i]    [C]", GATE, fontsize=7)
    for i in range(n):
        arrow(ax, (sx[i], 1.9), (7.55 + (i - 1.5) * 0.5, 2.75), color="#6b7280", lw=0.8)
    arrow(ax, (7.55, 3.45), (7.55, 3.9))
    box(ax, 7.55, 4.5, 1.9, 1.2, "F runs once,\non C channels", ATTN, fontsize=8)
    arrow(ax, (7.55, 5.1), (7.55, 5.6))
    box(ax, 7.55, 5.95, 3.6, 0.7, "write: stream i gets H_post[i] · F(h)", GATE, fontsize=7)
    # mix: H_res on the streams
    box(ax, mx, 3.6, 2.7, 2.0, "", STATE)
    label(ax, mx, 4.25, "mix: H_res  [n × n]", fontsize=8, weight="bold")
    label(ax, mx, 3.6, "stream i ← Σⱼ H_res[i, j] · x_l[j]", fontsize=7)
    label(ax, mx, 3.0, "HC: learned freely\nmHC: doubly stochastic", fontsize=7, color="#4b5563")
    ys = 7.7
    for i in range(n):
        add_node(ax, sx[i], ys, r=0.2)
        arrow(ax, (7.55 + (i - 1.5) * 0.5, 6.3), (sx[i], ys - 0.2), color="#6b7280", lw=0.8)
        y_back = ys - 0.6 + 0.1 * i
        line(ax, [(mix_in[i], 4.6), (mix_in[i], y_back), (sx[i] + 0.3, y_back)], color=GROUP[i], lw=1.3)
        arrow(ax, (sx[i] + 0.3, y_back), (sx[i] + 0.14, ys - 0.14), color=GROUP[i], lw=1.3)
        arrow(ax, (sx[i], ys + 0.2), (sx[i], 8.45))
        label(ax, sx[i], 8.65, f"[{i}]", fontsize=7)
    label(ax, sx[0] - 0.45, 8.65, "x_l+1", fontsize=7.5, ha="right")
    # an mHC mixing matrix
    bx = 15.35
    label(ax, bx + 0.9, 8.1, "an mHC H_res:", fontsize=7.5, weight="bold")
    M = [[.4, .3, .2, .1], [.1, .4, .3, .2], [.2, .1, .4, .3], [.3, .2, .1, .4]]
    for i in range(n):
        for j in range(n):
            ax.add_patch(FancyBboxPatch((bx + 0.45 * j, 7.3 - 0.45 * i), 0.42, 0.42, boxstyle="square,pad=0",
                                        fc=(0.15, 0.39, 0.92, 0.15 + 0.8 * M[i][j]), ec="#9ca3af", lw=0.5))
            label(ax, bx + 0.45 * j + 0.21, 7.51 - 0.45 * i, f"{M[i][j]:.1f}", fontsize=6)
    label(ax, bx + 0.9, 5.0, "rows and columns\neach sum to 1, so\na product of any\nnumber of them is\n"
          "doubly stochastic\ntoo: no gain over\ndepth", fontsize=7, color="#4b5563")
    label(ax, 0.3, 0.25, "The embedding is copied into the n streams at the input; the streams are summed at the output. "
          "n = 1 with H_pre = H_post = H_res = 1 is the residual on the left.", fontsize=7.5, ha="left",
          color="#4b5563")
    return save(fig, "27-hyper-connections.png")


# ------------------------------------------------------------------------------------------------
# Lesson 26: Qwen3-Next's layout, [D D D A] x 12, each layer a token mixer then an MoE, and its caches
# ------------------------------------------------------------------------------------------------
def draw_hybrid():
    fig, ax = canvas(17.0, 8.6)
    label(ax, 8.5, 8.25, "Qwen3-Next: [ D D D A ] × 12, every layer a token mixer then a sparse MoE", fontsize=10.5,
          weight="bold")
    y = 4.9
    box(ax, 0.9, y, 1.2, 0.8, "ids\n→ embed", PLAIN, fontsize=8)
    xs = [3.3, 6.2, 9.1, 12.0]
    arrow(ax, (1.5, y), (xs[0] - 1.2, y))
    for i, x in enumerate(xs):
        attn = i == 3
        ax.add_patch(FancyBboxPatch((x - 1.2, y - 2.0), 2.4, 4.0, boxstyle="round,pad=0,rounding_size=0.15",
                                    fc="#f9fafb", ec="#9ca3af", lw=1.0))
        label(ax, x, y + 1.75, f"layer 4j + {i}" + ("  (A)" if attn else "  (D)"), fontsize=8, weight="bold")
        box(ax, x, y + 0.95, 2.0, 0.75, "gated attention\n(softmax, exact)" if attn else "Gated DeltaNet\n(the delta rule)",
            QUERY if attn else ATTN, fontsize=7.5)
        add_node(ax, x, y + 0.05, r=0.18)
        arrow(ax, (x, y + 0.57), (x, y + 0.23))
        box(ax, x, y - 0.85, 2.0, 0.75, "MoE: 10 of 512\nexperts + 1 shared", MLP, fontsize=7.5)
        arrow(ax, (x, y - 0.13), (x, y - 0.47))
        label(ax, x, y - 1.6, "x = x + mixer(norm(x))\nx = x + MoE(norm(x))", fontsize=6.5, color="#4b5563")
        if i < 3:
            arrow(ax, (x + 1.2, y), (xs[i + 1] - 1.2, y))
        # the cache each layer keeps
        cy = 1.4
        if attn:
            for j in range(7):
                box(ax, x - 0.9 + 0.3 * j, cy, 0.26, 0.5, "", CACHE, fontsize=6, ec="#6b7280")
            label(ax, x + 1.25, cy, "…", fontsize=10, ha="left")
            label(ax, x, cy - 0.6, "KV cache: grows by one\nrow per token", fontsize=7)
        else:
            box(ax, x, cy, 0.9, 0.9, "S\n[Dk × Dv]\nper head", STATE, fontsize=6.5)
            label(ax, x, cy - 0.75, "a fixed-size state", fontsize=7)
        arrow(ax, (x, y - 2.0), (x, cy + 0.55), color="#9ca3af", ls="--")
    label(ax, 13.85, y + 2.3, "× 12", fontsize=13, weight="bold")
    ax.plot([2.0, 13.3], [y + 2.3, y + 2.3], color="#374151", lw=1.0)
    ax.plot([2.0, 2.0], [y + 2.15, y + 2.3], color="#374151", lw=1.0)
    ax.plot([13.3, 13.3], [y + 2.15, y + 2.3], color="#374151", lw=1.0)
    arrow(ax, (13.2, y), (14.1, y))
    box(ax, 15.3, y, 2.2, 0.8, "norm → lm_head\n→ logits", PLAIN, fontsize=8)
    label(ax, 14.1, 2.0, "36 DeltaNet layers: memory\nconstant in the context;\n12 attention layers: memory\n"
          "∝ context (a quarter of\nan all-attention model's)", fontsize=7.5, ha="left", color="#4b5563")
    label(ax, 0.3, 0.2, "Every token passes all 48 layers; each MoE runs only its router's 10 experts (and the shared one), "
          "so 80B parameters cost about 3B per token.", fontsize=7.5, ha="left", color="#4b5563")
    return save(fig, "26-hybrid-layout.png")


DIAGRAMS = {"04-heads-mha-gqa-mqa.png": draw_heads, "08-pre-norm-vs-post-norm.png": draw_decoder_block,
            "09-kv-cache-prefill-decode.png": draw_kv_cache, "18-looped-model.png": draw_looped,
            "25-moe-layer.png": draw_moe, "26-hybrid-layout.png": draw_hybrid,
            "27-hyper-connections.png": draw_hyper}


# ------------------------------------------------------------------------------------------------
# Notebook figures the lessons embed
# ------------------------------------------------------------------------------------------------
def embedded_figures() -> dict[str, list[str]]:
    """{notebook number: [figure names]} for every `figures/NN-*.png` a lesson embeds that is not a diagram."""
    wanted: dict[str, list[str]] = {}
    for lesson in sorted((ROOT / "lessons").glob("[0-9][0-9]-*.md")):
        for name in re.findall(r"\]\(figures/([0-9]{2}-[^)\s]+\.png)\)", lesson.read_text()):
            if name not in DIAGRAMS:
                wanted.setdefault(name[:2], [])
                if name not in wanted[name[:2]]:
                    wanted[name[:2]].append(name)
    return wanted


def notebook_figures(numbers: list[str], run: bool) -> None:
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONHASHSEED="0",
               PYTHONPATH=os.pathsep.join([str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    for number, names in sorted(embedded_figures().items()):
        if numbers and number not in numbers:
            continue
        if run:
            notebook = next((ROOT / "notebooks").glob(f"{number}-*.py"))
            print(f"running {notebook.relative_to(ROOT)} ...", flush=True)
            subprocess.run([sys.executable, str(notebook)], cwd=ROOT, env=env, check=True,
                           stdout=subprocess.DEVNULL)
        for name in names:
            if not (NB_OUT / name).exists():
                sys.exit(f"{NB_OUT / name} is missing: run notebook {number} (or drop --no-run)")
            shutil.copyfile(NB_OUT / name, FIGURES / name)
            print("copied", (FIGURES / name).relative_to(ROOT))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lessons", nargs="*", help="lesson numbers (e.g. 04 18); default: all")
    parser.add_argument("--diagrams", action="store_true", help="only draw the diagrams")
    parser.add_argument("--no-run", action="store_true", help="copy notebook figures from notebooks/_out/ as they are")
    args = parser.parse_args(argv)
    FIGURES.mkdir(parents=True, exist_ok=True)
    for name, draw in DIAGRAMS.items():
        if not args.lessons or name[:2] in args.lessons:
            draw()
    if not args.diagrams:
        notebook_figures(args.lessons, run=not args.no_run)


if __name__ == "__main__":
    main()
