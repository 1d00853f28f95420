"""How many BLAS threads a decode step uses: measured, not guessed (lesson 22).

A decode step is ~200 matrix-*vector* products (one token's row times each weight matrix). Each is
memory-bound and over in tens of microseconds. What a second BLAS thread does to that depends on
the machine's *current* state, which no setting can know in advance. Measured on this 2-core box:

    quiet machine           1 thread ~16-19 tok/s    2 threads ~21-22 tok/s   (two cores' bandwidth)
    other core busy         1 thread ~15-18 tok/s    2 threads ~1.5 tok/s     (OpenBLAS threads spin-wait
                                                                               for a core that is not free:
                                                                               a 70 µs GEMV becomes ~8 ms)

So the default, "auto", *measures*: the first decode steps try each candidate (1 thread and all
cores), then the faster one is used. If the current choice gets slower than the other's last
measurement (another process started), it switches at once; the other choice is re-tried now and
then (every 16 steps, backing off to every 256 while it keeps losing), so the choice follows the
machine both ways. A losing probe costs one slow step. Prefill (matrix-*matrix* products over the whole
prompt) is left to the BLAS default.

litetorch sets no environment variables: the limit is applied around each decode step with
threadpoolctl (if installed; otherwise nothing changes) and restored afterwards. The choice is an
argument of the runtime (`Runtime(decode_threads=1 | 2 | "auto" | None)`, runtime.py), not a global.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager, nullcontext

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:
            _controller = False
        else:
            _controller = ThreadpoolController()
    return _controller


def blas_threads(n: int | None):
    """Context manager limiting BLAS to `n` threads (no-op for None or without threadpoolctl)."""
    c = _get_controller() if n else None
    return c.limit(limits=n, user_api="blas") if c else nullcontext()


class AdaptiveThreads:
    """Chooses between candidate thread counts by timing the steps that use them."""

    def __init__(self, candidates=None, probe_every: int = 16, max_probe_every: int = 256):
        cores = os.cpu_count() or 1
        self.candidates = tuple(dict.fromkeys(candidates or (1, cores)))
        self.mean = {n: None for n in self.candidates}  # running mean seconds per step
        self.probe_every, self.base_every, self.max_every = probe_every, probe_every, max_probe_every
        self.best = self.candidates[0]
        self.steps_since_probe = 0

    def choose(self) -> int:
        untried = [n for n, t in self.mean.items() if t is None]
        if untried:
            return untried[0]
        if self.steps_since_probe >= self.probe_every and len(self.candidates) > 1:
            return next(n for n in self.candidates if n != self.best)  # re-check the other choice
        return self.best

    def record(self, n: int, seconds: float) -> None:
        old = self.mean[n]
        self.mean[n] = seconds if old is None else 0.7 * old + 0.3 * seconds
        if n != self.best:
            self.steps_since_probe = 0
            if all(t is not None for t in self.mean.values()):
                winner = min(self.mean, key=self.mean.get)
                # a losing probe backs off; a winning one takes over (and probing starts again fast)
                self.probe_every = self.base_every if winner != self.best else min(2 * self.probe_every,
                                                                                     self.max_every)
                self.best = winner
        else:
            self.steps_since_probe += 1
            others = [m for k, m in self.mean.items() if k != n and m is not None]
            if others and self.mean[n] > min(others):  # the current choice got slower (the machine
                self.best = min(self.mean, key=self.mean.get)  # got busy): switch now, probe back soon
                self.probe_every, self.steps_since_probe = self.base_every, 0


@contextmanager
def timed(adaptive: AdaptiveThreads):
    """Around one decode step: the thread count `adaptive` chooses, and the step's time recorded for it."""
    if not _get_controller():  # without threadpoolctl there is nothing to choose
        yield
        return
    n = adaptive.choose()
    t0 = time.perf_counter()
    with blas_threads(n):
        yield
    adaptive.record(n, time.perf_counter() - t0)
