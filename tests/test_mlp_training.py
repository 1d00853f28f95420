"""End to end: a 2-layer MLP trained with litetorch alone learns a 2-D spiral.

Needs no torch: this is the claim that Module + autograd + cross_entropy + AdamW + clipping +
the cosine schedule work together, not only one by one.
"""
import contextlib

import numpy as np
import pytest

import litetorch as lt
import litetorch.nn.functional as F
from litetorch import nn, optim

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None


def two_spirals(n_per_class: int, rng, noise: float = 0.2, turns: float = 1.25):
    """Two interleaved spirals (class 0 and its point reflection, class 1): X [2n, 2] float32, y [2n]."""
    t = np.sqrt(rng.random(n_per_class)) * turns * 2 * np.pi  # sqrt: points spread evenly along the arm
    arm = np.stack([t * np.cos(t), t * np.sin(t)], axis=1)  # [n, 2]
    X = np.concatenate([arm, -arm]) + rng.standard_normal((2 * n_per_class, 2)) * noise
    X = X / (turns * 2 * np.pi) * 3.0  # radius ~3: a good range for tanh units
    y = np.repeat([0, 1], n_per_class)
    return X.astype(np.float32), y


def accuracy(model, X, y) -> float:
    with lt.no_grad():
        return float((model(lt.tensor(X)).data.argmax(-1) == y).mean())


def one_blas_thread():
    """Many tiny matmuls: one BLAS thread is fastest and immune to a busy machine (docs/ARCHITECTURE.md §7)."""
    return threadpool_limits(1) if threadpool_limits else contextlib.nullcontext()


def test_two_layer_mlp_learns_a_spiral():
    rng = np.random.default_rng(0)
    X, y = two_spirals(200, rng)
    X_test, y_test = two_spirals(300, np.random.default_rng(1))
    lt.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 64), nn.Tanh(), nn.Linear(64, 2))  # [B, 2] -> [B, 64] -> [B, 2]
    steps = 300
    opt = optim.AdamW(model.parameters(), lr=0.05, weight_decay=1e-4)
    sched = optim.CosineWithWarmup(opt, warmup_steps=10, total_steps=steps, min_lr_ratio=0.1)
    assert accuracy(model, X, y) < 0.8  # not solved by luck at init
    x = lt.tensor(X)
    losses = []
    with one_blas_thread():
        for _ in range(steps):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optim.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
    assert all(p.dtype == np.float32 for p in model.parameters())
    assert losses[-1] < 0.1 * losses[0]
    train_acc, test_acc = accuracy(model, X, y), accuracy(model, X_test, y_test)
    print(f"spiral: loss {losses[0]:.3f} -> {losses[-1]:.4f}, train acc {train_acc:.3f}, test acc {test_acc:.3f}")
    assert train_acc >= 0.95 and test_acc >= 0.95


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mlp_learns_xor(dtype):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=dtype)
    y = np.array([0, 1, 1, 0])
    lt.manual_seed(1)
    model = nn.Sequential(nn.Linear(2, 8, dtype=dtype), nn.Tanh(), nn.Linear(8, 2, dtype=dtype))
    opt = optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(lt.tensor(X)), y).backward()
        opt.step()
    assert accuracy(model, X, y) == 1.0
