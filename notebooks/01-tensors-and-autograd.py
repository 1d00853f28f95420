# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 01 — Tensors and autograd
#
# A `Tensor` is a NumPy array that remembers how it was made. From that record, `backward()`
# computes the gradient of a number with respect to every input by the chain rule, walked in
# reverse topological order. We build expressions in litetorch and in PyTorch, compare values and
# gradients, check them against finite differences, and draw the graph autograd walks.
# Lesson: `lessons/01-tensors-and-autograd.md`.

# %%
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyBboxPatch

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
import litetorch as lt  # noqa: E402
from litetorch.testing import assert_close, gradcheck, max_abs_err  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

try:
    import torch
except ImportError:
    torch = None
    print("SKIP: PyTorch is not installed, so the cells comparing with PyTorch print a message and do "
          "nothing. Finite differences still check every gradient. (pip install torch==2.13.0)")

# %% [markdown]
# ## 1. One expression, two engines
#
# micrograd's test in tensor form: the same Python function runs on litetorch tensors and on
# torch tensors, because both have the same operators and method names.

# %%
def expr(x, w, b, relu):
    """A tiny layer and a loss: x [B, C_in], w [C_in, C_out], b [C_out] -> a number."""
    h = relu(x @ w + b)               # [B, C_out]; b is broadcast over the B rows
    z = h * h + (h + 1.0).log()       # h is used twice: its gradient collects two contributions
    return (z / 2.0).sum()


rng = np.random.default_rng(0)
X, W, B = rng.standard_normal((4, 3)), rng.standard_normal((3, 5)), rng.standard_normal(5)

x, w, b = (lt.tensor(a, requires_grad=True) for a in (X, W, B))
loss = expr(x, w, b, lambda t: t.relu())
loss.backward()
print("litetorch loss:", loss.item())
print("b.grad shape", b.grad.shape, "(the same as b: broadcasting was undone by a sum)")

# %%
if torch is None:
    print("SKIP (no PyTorch): litetorch vs PyTorch comparison")
else:
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (X, W, B))
    loss_t = expr(xt, wt, bt, torch.relu)
    loss_t.backward()
    rows = [("loss", loss, loss_t)] + [(f"{n}.grad", t.grad, r.grad) for n, t, r in
                                         (("x", x, xt), ("w", w, wt), ("b", b, bt))]
    for name, ours, ref in rows:
        err = max_abs_err(ours, ref)
        print(f"[{'OK' if err <= 1e-10 else 'DIFF'}] {name:7s} max abs error {err:.2e}")
        assert_close(ours, ref)  # float64: <= 1e-10

# %% [markdown]
# ## 2. Finite differences: a reference that trusts only the forward pass
#
# `gradcheck` nudges each input by ±1e-6 and measures how the output moves,
# `(f(x + eps) - f(x - eps)) / (2 eps)`, then compares with what `backward()` produced.

# %%
ok = gradcheck(lambda x, w, b: expr(x, w, b, lambda t: t.relu()), x, w, b)
print("gradcheck passed:", ok)
assert ok

# %% [markdown]
# ## 3. Re-used nodes accumulate
#
# `b = a + a; c = b + b` means c = 4a. Each use of a node sends a gradient back, and they add up.

# %%
a = lt.tensor(np.array(3.0), requires_grad=True)
bb = a + a
c = bb + bb
c.backward()
print("dc/da =", a.grad)
assert a.grad == 4.0

# %% [markdown]
# ## 4. Broadcasting needs a sum in backward
#
# `b` of shape [5] was copied to all 4 rows of `x @ w`. Each copy's gradient counts, so `b.grad`
# is the column sum of the gradient that reached the sum `x @ w + b`.

# %%
x2, w2, b2 = (lt.tensor(a, requires_grad=True) for a in (X, W, B))
pre = (x2 @ w2 + b2).retain_grad()        # [4, 5]
expr_pre = (pre.relu() * 3.0).sum()
expr_pre.backward()
print("pre.grad.sum(axis=0):", np.round(pre.grad.sum(axis=0), 4))
print("b.grad:              ", np.round(b2.grad, 4))
assert_close(b2.grad, pre.grad.sum(axis=0))

# %% [markdown]
# ## 5. The graph autograd walks
#
# Every op output keeps its inputs in `_prev`. We collect the nodes, place each one at its
# depth (longest path from a leaf), and draw an arrow from each input to the op that used it.

# %%
def collect(root):
    """All nodes reachable through _prev, and the edges (input -> output)."""
    nodes, edges, stack, seen = [], [], [root], {id(root)}
    while stack:
        n = stack.pop()
        nodes.append(n)
        for p in n._prev:
            edges.append((p, n))
            if id(p) not in seen:
                seen.add(id(p))
                stack.append(p)
    return nodes, edges


def draw_graph(root, path, title):
    nodes, edges = collect(root)
    depth = {}

    def d(n):  # longest path from a leaf (iterative enough for small graphs)
        if id(n) not in depth:
            depth[id(n)] = 0 if not n._prev else 1 + max(d(p) for p in n._prev)
        return depth[id(n)]

    for n in nodes:
        d(n)
    consumers = {}
    for p, n in edges:
        consumers.setdefault(id(p), []).append(n)
    for n in nodes:  # draw a leaf or constant just left of its first consumer, not in column 0
        if not n._prev and id(n) in consumers:
            depth[id(n)] = min(depth[id(c)] for c in consumers[id(n)]) - 1
    by_depth = {}
    for n in sorted(nodes, key=lambda n: (depth[id(n)], n.name or n._op)):
        by_depth.setdefault(depth[id(n)], []).append(n)
    pos = {id(n): (k, i - (len(col) - 1) / 2) for k, col in by_depth.items() for i, n in enumerate(col)}

    fig, ax = plt.subplots(figsize=(2.0 * (len(by_depth) + 1), 1.3 * max(len(c) for c in by_depth.values()) + 1.5))
    multiplicity = {}
    for p, n in edges:
        multiplicity[(id(p), id(n))] = multiplicity.get((id(p), id(n)), 0) + 1
    for p, n in edges:
        (x0, y0), (x1, y1) = pos[id(p)], pos[id(n)]
        ax.annotate("", xy=(x1 - 0.32, y1), xytext=(x0 + 0.32, y0),
                    arrowprops=dict(arrowstyle="->", color="0.4", lw=1))
        if multiplicity[(id(p), id(n))] > 1:  # h * h: one node used twice by the same op
            ax.text((x0 + x1) / 2, (y0 + y1) / 2 + 0.08, f"x{multiplicity[(id(p), id(n))]}", fontsize=8,
                    color="C3", ha="center")
    for n in nodes:
        x0, y0 = pos[id(n)]
        if n._prev:
            label, color = n._op, "#cfe2ff"
        elif n.requires_grad:
            label, color = n.name or "leaf", "#d1e7dd"
        else:
            label, color = (f"{n.item():g}" if n.data.size == 1 else "const"), "#eeeeee"
        shape = "x".join(map(str, n.shape)) or "scalar"
        ax.add_patch(FancyBboxPatch((x0 - 0.3, y0 - 0.22), 0.6, 0.44, boxstyle="round,pad=0.02",
                                    fc=color, ec="0.3"))
        ax.text(x0, y0 + 0.06, label, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x0, y0 - 0.12, shape, ha="center", va="center", fontsize=7, color="0.3")
    ax.set_xlim(min(by_depth) - 0.6, max(by_depth) + 0.6)
    ys = [p[1] for p in pos.values()]
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.axis("off")
    ax.set_title(title + "   (green: leaves, blue: ops, grey: constants; arrows point forward,\n"
                 "backward() walks them in reverse)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return len(nodes), len(edges)


x.name, w.name, b.name = "x", "w", "b"
n_nodes, n_edges = draw_graph(expr(x, w, b, lambda t: t.relu()), OUT / "01-autograd-graph.png",
                              "relu(x @ w + b) -> h*h + log(h + 1) -> sum / 2")
print(f"graph: {n_nodes} nodes, {n_edges} edges -> {OUT / '01-autograd-graph.png'}")

# %% [markdown]
# ## 6. The NumPy-2 promotion trap
#
# In NumPy 2 a *NumPy scalar* of float64 upcasts a float32 array. `np.sqrt(64)` is such a scalar.
# litetorch treats every scalar as "weak": it takes the tensor's dtype.

# %%
q = np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32)
print("NumPy:     (float32 array / np.sqrt(64)).dtype =", (q / np.sqrt(64)).dtype)
print("litetorch: (float32 tensor / np.sqrt(64)).dtype =", (lt.tensor(q) / np.sqrt(64)).dtype)
assert (q / np.sqrt(64)).dtype == np.float64
assert (lt.tensor(q) / np.sqrt(64)).dtype == np.float32

# %% [markdown]
# ## 7. Softmax at extreme logits, float32
#
# Logits of ±1e4: `exp` alone overflows float32 (its max is ~3.4e38 = e^88.7). Subtracting the row
# max first keeps every exponent <= 0, and the result matches PyTorch's.

# %%
logits = (1e4 * np.random.default_rng(2).standard_normal((3, 6))).astype(np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    naive = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
print("naive softmax has NaN:", bool(np.isnan(naive).any()))
p = lt.softmax(lt.tensor(logits), dim=-1)
assert np.isfinite(p.data).all() and p.dtype == np.float32
if torch is None:
    print("SKIP (no PyTorch): softmax comparison")
else:
    err = max_abs_err(p, torch.softmax(torch.from_numpy(logits), dim=-1))
    print(f"softmax at 1e4 vs torch: max abs error {err:.1e}")
    assert err <= 1e-5

# %% [markdown]
# ## 8. How far each op is from PyTorch
#
# The test suite's cases (tests/fixtures/make_fixtures.py), run here in float32 and float64, with
# the error relative to each output's scale. We plot the worst over outputs and gradients.

# %%
ROOT = Path(lt.__file__).resolve().parent.parent
if torch is None or not (ROOT / "tests" / "fixtures" / "make_fixtures.py").exists():
    print("SKIP (no PyTorch or no test tree): per-op error plot")
else:
    import importlib.util

    from litetorch.testing import rel_err

    spec = importlib.util.spec_from_file_location("make_fixtures", ROOT / "tests" / "fixtures" / "make_fixtures.py")
    mf = importlib.util.module_from_spec(spec)
    sys.modules["make_fixtures"] = mf
    spec.loader.exec_module(mf)
    T, L = mf.torch_ns(torch), mf.litetorch_ns()
    worst = {dt: [] for dt in mf.DTYPES}
    for case in mf.CASES:
        for dt in mf.DTYPES:
            xs = mf.make_inputs(case, dt)
            outs_t, _ = mf.run_case(case, T, xs)
            gouts = mf.make_upstream(case, [o.shape for o in outs_t], dt)
            outs_t, grads_t = mf.run_case(case, T, xs, gouts)
            outs_l, grads_l = mf.run_case(case, L, xs, gouts)
            pairs = list(zip(outs_l, outs_t)) + [(g, r) for g, r in zip(grads_l, grads_t) if r is not None]
            worst[dt].append(max(rel_err(a, r) for a, r in pairs))
    names = [c.name for c in mf.CASES]
    fig, ax = plt.subplots(figsize=(7, 14))
    yy = np.arange(len(names))
    for dt, marker in (("float32", "o"), ("float64", "s")):
        ax.scatter(np.maximum(worst[dt], 1e-18), yy, marker=marker, s=14, label=dt)
        k = int(np.argmax(worst[dt]))
        print(f"{dt}: worst error relative to output scale {worst[dt][k]:.2e} ({names[k]})")
    ax.axvline(1e-5, color="C0", ls="--", lw=0.8)
    ax.axvline(1e-10, color="C1", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(yy, names, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("max |litetorch - torch| / max |torch|  (outputs and gradients; 1e-18 = exact)")
    ax.legend(loc="lower right")
    ax.set_title("Every op vs PyTorch (dashed: the float32 and float64 limits)", fontsize=9)
    fig.tight_layout()
    fig.savefig(OUT / "01-op-errors.png", dpi=110)
    assert max(worst["float32"]) <= 1e-5 and max(worst["float64"]) <= 1e-10

# %%
print("notebook 01 done; figures in", OUT)
