"""What every benchmark prints in its header (the CPU and the BLAS thread setting), and how a benchmark
finds the PyTorch side it measures against."""
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


def missing_reference(*modules: str) -> str | None:
    """None if every module imports; else one line saying what is missing and how to get it."""
    import importlib.util
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return (f"this benchmark measures litetorch against {' and '.join(modules)}, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed. Install PyTorch (its CPU build: README, "
            f"'Set up') and the reference extra (in the source checkout: pip install -e \".[reference]\")")
