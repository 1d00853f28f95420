"""Summary statistics of weights and activations, for lessons and for debugging a port.

    weight_stats(model)                 # compact: name, shape, params, mean, std, min, max, L2 norm
    weight_stats(model, compact=False)  # + median, mean|x|, zeros, near-zeros, L1, percentiles, histogram
    activation_stats(trace_tensors)     # the same over a trace (see litetorch.trace)

Returned as plain data (a list of dicts); `format_table(rows)` prints them.

Definitions (x flattened, n elements, all in float64):
    mean = sum(x) / n          std = sqrt(sum((x - mean)^2) / n)   (population std, numpy's default;
    l2 = sqrt(sum(x^2))        l1 = sum(|x|)                         torch.std would divide by n - 1)
    zeros, near_zeros = the *fraction* of elements == 0 and with |x| < 1e-6
    percentiles: numpy's default linear interpolation (torch.quantile's too)
A tied weight (SmolLM2's lm_head is its embedding) is one parameter and gets one row.
"""
from __future__ import annotations

import fnmatch

import numpy as np

NEAR_ZERO = 1e-6
PERCENTILES = (5, 25, 50, 75, 95)


def tensor_stats(name: str, x, compact: bool = True, bins: int = 20) -> dict:
    a = np.asarray(x)
    f = a.astype(np.float64, copy=False).ravel()  # statistics in float64: sums of 10^7 float32 drift
    row = {"name": name, "shape": tuple(a.shape), "params": int(a.size), "dtype": str(a.dtype)}
    if f.size == 0:
        return row
    row.update(mean=float(f.mean()), std=float(f.std()), min=float(f.min()), max=float(f.max()),
               l2=float(np.sqrt(np.dot(f, f))))
    if not compact:
        pct = np.percentile(f, PERCENTILES)
        counts, edges = np.histogram(f, bins=bins)
        row.update(median=float(pct[2]), mean_abs=float(np.abs(f).mean()), zeros=float(np.mean(f == 0)),
                   near_zeros=float(np.mean(np.abs(f) < NEAR_ZERO)), l1=float(np.abs(f).sum()),
                   percentiles={int(p): float(v) for p, v in zip(PERCENTILES, pct)},
                   histogram={"counts": counts.tolist(), "edges": edges.tolist()})
    return row


def _selected(name, names):
    return names is None or any(name == n or fnmatch.fnmatchcase(name, n) for n in names)


def weight_stats(model, names=None, compact: bool = True) -> list[dict]:
    """Statistics of every parameter (or those matching `names`, exact or glob), under the names model
    files use: a fused projection is reported as its parts (`qkv_proj` -> `q_proj`, `k_proj`, `v_proj`)."""
    from .nn.module import split_fused_names
    weights = split_fused_names(model, {n: p.data for n, p in model.named_parameters()})  # row views, no copy
    return [tensor_stats(n, w, compact) for n, w in weights.items() if _selected(n, names)]


def activation_stats(tensors: dict, names=None, compact: bool = True) -> list[dict]:
    """Statistics of every float tensor of a trace ({name: array}, e.g. from `load_trace`)."""
    return [tensor_stats(n, v, compact) for n, v in tensors.items()
            if _selected(n, names) and np.asarray(v).dtype.kind == "f"]


def format_table(rows: list[dict], compact: bool = True) -> str:
    cols = ["params", "mean", "std", "min", "max", "l2"]
    if not compact:
        cols += ["median", "mean_abs", "zeros", "near_zeros", "l1"]
    width = max([len(r["name"]) for r in rows] + [4])
    head = f"{'name':<{width}}  {'shape':<16}" + "".join(f"{c:>12}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = "".join(f"{r[c]:>12d}" if c == "params" else f"{r.get(c, float('nan')):>12.4g}" for c in cols)
        lines.append(f"{r['name']:<{width}}  {str(r['shape']):<16}{cells}")
        if not compact and "percentiles" in r:
            p = "  ".join(f"p{k}={v:.4g}" for k, v in r["percentiles"].items())
            lines.append(f"{'':<{width}}  {p}")
    return "\n".join(lines)
