"""k-hop pointer chasing: a synthetic task where depth matters (lesson 18).

Each example draws a random function f on N symbols {0..N-1} and a query x. The context lists f as
N "pair tokens" (a, f(a)) in a random order, then a query token for x; the target, predicted at the
last position, is f^k(x) = f(f(...f(x))) (k applications).

    pair token (a, b) -> id a * N + b            (N^2 ids)
    query token x     -> id N^2 + x              (N ids)
    sequence          [pair_1, ..., pair_N, query]   length N + 1;  vocab N^2 + N

Why depth matters: one attention step can look up f(current) (attend to the pair whose first half
matches, read its second half); k hops need k lookups *in sequence*. A single block applied once
can do one hop; a block looped k times can do k; so can k distinct blocks. Chance is 1/N.

Encoding each pair as one token keeps the lookup a single attention hop (no "previous token" heads
needed), so small models learn it in a few hundred steps on a CPU.
"""
from __future__ import annotations

import numpy as np
from ..errors import ConfigError


def vocab_size(n_symbols: int) -> int:
    return n_symbols * n_symbols + n_symbols


def make_batch(n_symbols: int, hops: int, batch_size: int, rng: np.random.Generator, bijective: bool = True):
    """-> ids [B, N + 1] int64, targets [B, N + 1] int64 (-100 except the last position), answers [B].

    bijective=True draws f as a random permutation, so f^k(x) is close to uniform whatever k; a general
    random function collapses under iteration (f^k piles onto a few attractors), which a model could
    exploit by guessing frequent symbols without chasing pointers.
    """
    N, B = n_symbols, batch_size
    if bijective:
        f = np.argsort(rng.random((B, N)), axis=1)  # f[b] a random permutation of 0..N-1
    else:
        f = rng.integers(0, N, size=(B, N))  # f[b, a] = f_b(a): any function
    order = np.argsort(rng.random((B, N)), axis=1)  # a random order of the pairs
    a = order  # [B, N] the first halves, in listed order
    pairs = a * N + np.take_along_axis(f, a, axis=1)  # [B, N] pair-token ids
    x = rng.integers(0, N, size=B)  # [B] queries
    y = x.copy()
    for _ in range(hops):  # y = f^k(x)
        y = f[np.arange(B), y]
    ids = np.concatenate([pairs, (N * N + x)[:, None]], axis=1).astype(np.int64)  # [B, N + 1]
    targets = np.full(ids.shape, -100, dtype=np.int64)
    targets[:, -1] = y
    return ids, targets, y


class PointerChasing:
    """A stream of fresh batches: `data.batch(64)` -> (ids, targets); `data.eval_set(1000)` is fixed by seed."""

    def __init__(self, n_symbols: int = 8, hops: int = 3, seed: int = 0):
        self.n_symbols, self.hops, self.seed = n_symbols, hops, seed
        self.rng = np.random.default_rng(seed)
        self.vocab_size = vocab_size(n_symbols)
        self.seq_len = n_symbols + 1

    def batch(self, batch_size: int):
        ids, targets, _ = make_batch(self.n_symbols, self.hops, batch_size, self.rng)
        return ids, targets

    def curriculum_batch(self, batch_size: int, max_hops: int | None = None):
        """A batch with a random hop count j in 1..max_hops (default k), returned with j as the loop count
        to run: a looped model then learns "one hop per iteration" from the easy cases (j = 1 is a single
        lookup) up. Only a looped model can use it: its depth is a run-time knob. -> (ids, targets, j)

        max_hops < k lets a caller grow the depth over training (a schedule)."""
        top = self.hops if max_hops is None else int(max_hops)
        if top < 1:
            raise ConfigError(f"max_hops must be >= 1, got {top}")
        j = int(self.rng.integers(1, top + 1))
        ids, targets, _ = make_batch(self.n_symbols, j, batch_size, self.rng)
        return ids, targets, j

    def curriculum(self, batch_size: int, grow_steps: int | None = None):
        """-> a `batches()` callable for `fit`: curriculum batches whose largest hop count grows from 1 to k
        over the first `grow_steps` calls (max hops 1 + floor(k * call / grow_steps), capped at k), then
        stays at k; grow_steps=None draws j in 1..k from the start. Growing the depth helped at N = 16:
        the model masters the one-hop lookup before it is asked to chain four (lesson 18)."""
        calls = [0]

        def batches():
            s = calls[0]
            calls[0] += 1
            top = self.hops if not grow_steps else min(self.hops, 1 + int(self.hops * s / grow_steps))
            return self.curriculum_batch(batch_size, max_hops=top)
        return batches

    def eval_set(self, n: int = 1000, seed: int | None = None):
        """n fresh examples from a separate stream (never seen in training): ids [n, N + 1], answers [n]."""
        rng = np.random.default_rng(10_000 + self.seed if seed is None else seed)
        ids, _, y = make_batch(self.n_symbols, self.hops, n, rng)
        return ids, y


def accuracy(model, ids: np.ndarray, answers: np.ndarray, loops: int | None = None, batch_size: int = 500) -> float:
    """Fraction of examples whose argmax at the last position is f^k(x)."""
    from ..tensor import no_grad
    hits = 0
    with no_grad():
        for s in range(0, len(ids), batch_size):
            out = model(ids[s:s + batch_size], loops=loops) if loops is not None else model(ids[s:s + batch_size])
            hits += int((out.data[:, -1].argmax(-1) == answers[s:s + batch_size]).sum())
    return hits / len(ids)
