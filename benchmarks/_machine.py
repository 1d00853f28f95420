"""What every benchmark prints in its header: the CPU and the BLAS thread setting."""
from __future__ import annotations

import platform


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_threads() -> str:
    """One line: each BLAS/OpenMP threadpool NumPy loaded, with its version and thread count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return ", ".join(f"{p.get('internal_api')} {p.get('version')}: {p.get('num_threads')} threads"
                     for p in threadpool_info()) or "no BLAS threadpool found"
