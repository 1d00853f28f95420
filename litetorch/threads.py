"""How many BLAS threads a decode step uses (lesson 22).

A decode step is ~200 matrix-*vector* products (one token's row times each weight matrix). Each
is memory-bound and over in tens of microseconds, so a second BLAS thread has little to add; and
when the other core is busy (another process, a test runner), OpenBLAS's two-thread kernels spin
and wait for it: measured here, one GEMV went from 70 µs to ~8 ms and SmolLM2 decode from
18 tok/s to 1.5 tok/s. One thread is both fast on a quiet machine and immune to a busy one.
Prefill (matrix-*matrix* products over the whole prompt) is left to the BLAS default.

litetorch sets no environment variables: the limit is applied around each decode step with
threadpoolctl (if it is installed; otherwise nothing changes) and restored afterwards.
"""
from __future__ import annotations

from contextlib import nullcontext

DECODE_BLAS_THREADS: int | None = 1  # None = leave BLAS alone

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


def decode_threads():
    return blas_threads(DECODE_BLAS_THREADS)
