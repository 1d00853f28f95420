"""Preloaded (weights="float32") vs on-demand (weights="quantized") weights: decode speed and memory.

    python benchmarks/weight_modes.py                  # SmolLM2 (Q4_1/Q8_0) + the TinyLlama-shaped Q4_K_M file
    python benchmarks/weight_modes.py --repeats 3 --tinyllama PATH --out benchmarks/results
    python benchmarks/weight_modes.py --worker --model PATH --weights quantized   # one run, JSON on stdout

Every (model, weights mode) runs in its own subprocess, so its peak resident memory (VmHWM, the probe
of litetorch/bench/run.py) is its own: load + prefill + decode. `--repeats` rounds run every combination once
each, the order reversed every other round; the table gives the median and the range over the rounds
(a shared machine moves by 10-30% from minute to minute). Both modes of a model must produce the same
greedy tokens (they compute the same numbers). The TinyLlama-shaped file is made by
scripts/make_tinyllama_gguf.py if missing (about 10 s, 0.67 GB in $LITETORCH_HOME).

Rows per model and mode: load time, prefill tok/s (the prompt), decode tok/s (KV cache, greedy, prompt
excluded), peak RSS after loading and after generating, and the file's size. Threads: litetorch's
default (decode threads measured per step, BLAS default for prefill).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's litetorch, whatever else is installed

from litetorch.bench.machine import blas_threads, cpu_model  # noqa: E402
from litetorch.bench.run import PROMPT_TEXT, peak_rss_mb  # noqa: E402  (the same RSS probe as `litetorch bench`)
RESULTS = ROOT / "benchmarks" / "results"
MODES = ("float32", "quantized")


def worker(args) -> None:
    """Load, prefill `--prompt-tokens`, decode `--new-tokens` greedily (EOS masked), print one JSON line."""
    from litetorch.generation import PromptCache
    from litetorch.models.loading import load_model
    t0 = time.perf_counter()
    model, tok = load_model(args.model, weights=args.weights)
    load_s = time.perf_counter() - t0
    rss_load = peak_rss_mb()
    ids = []
    while len(ids) < args.prompt_tokens:
        ids += tok.encode(PROMPT_TEXT)
    ids = ids[:args.prompt_tokens]
    pc = PromptCache(model, len(ids) + args.new_tokens)
    t0 = time.perf_counter()
    logits = pc.extend(ids)[-1]
    prefill_s = time.perf_counter() - t0
    out, step_s = [], []
    for i in range(args.new_tokens):
        logits = logits.copy()
        logits[sorted(tok.eos_token_ids)] = -np.inf  # never stop early: every run decodes the same count
        out.append(int(np.argmax(logits)))
        if i < args.new_tokens - 1:
            t0 = time.perf_counter()
            logits = pc.extend([out[-1]])[-1]
            step_s.append(time.perf_counter() - t0)
    res = {"model": str(args.model), "weights": args.weights, "load_s": load_s, "prefill_tps": len(ids) / prefill_s,
           "decode_tps": len(step_s) / sum(step_s), "decode_step_s": step_s, "tokens": out,
           "peak_rss_load_mb": rss_load, "peak_rss_mb": peak_rss_mb(), "prompt_tokens": len(ids)}
    store = getattr(model.model.embed_tokens.weight, "_weights", None)
    if store is not None:
        res.update(cache_mb=store.cached_bytes / 2**20, cache_hits=store.hits, expansions=store.misses)
    print(json.dumps(res))


def run_worker(model: Path, weights: str, prompt_tokens: int, new_tokens: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--model", str(model), "--weights", weights,
           "--prompt-tokens", str(prompt_tokens), "--new-tokens", str(new_tokens)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def tinyllama_file(path: Path | None) -> Path:
    sys.path.insert(0, str(ROOT / "scripts"))
    import make_tinyllama_gguf
    path = path or make_tinyllama_gguf.default_path()
    if not path.exists():
        print(f"writing {path} ...", flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        make_tinyllama_gguf.make_gguf(path)
    return path


def spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}}" if len(values) == 1 else f"{med:{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def plot(rows: list[dict], path: Path) -> None:
    """Decode tok/s and peak RSS per model, preloaded vs on demand (bars: median; lines: the range)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label, log in ((axes[0], "decode_tps", "decode tokens/s (log)", True),
                                (axes[1], "peak_rss_mb", "peak resident memory, MiB", False)):
        for j, mode in enumerate(MODES):
            vals = [[x[key] for x in r["runs"]] for n in names
                    for r in rows if r["model"] == n and r["weights"] == mode]
            med = [statistics.median(v) for v in vals]
            err = [[m - min(v) for m, v in zip(med, vals)], [max(v) - m for m, v in zip(med, vals)]]
            xs = np.arange(len(names)) + (j - 0.5) * 0.38
            ax.bar(xs, med, 0.38, yerr=err, capsize=3, label=f'weights="{mode}"')
            for x, m, v in zip(xs, med, vals):  # the median, written above the range's top
                ax.annotate(f"{m:.2f}" if key == "decode_tps" else f"{m:.0f}", (x, max(v)), ha="center",
                            va="bottom", fontsize=8, xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(np.arange(len(names)), [n.split(" (")[0] for n in names], fontsize=8)
        ax.set_ylabel(label)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.suptitle("preloaded (float32) vs on demand (quantized): speed and memory", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", type=Path, help="(worker) the model file")
    ap.add_argument("--weights", choices=MODES, default="float32", help="(worker) the weights mode")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--smollm2", type=Path, default=None, help="default: the default model file")
    ap.add_argument("--tinyllama", type=Path, default=None, help="default: $LITETORCH_HOME/tinyllama-shaped-random...")
    ap.add_argument("--tinyllama-prompt-tokens", type=int, default=16)
    ap.add_argument("--tinyllama-new-tokens", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0

    from litetorch.io.hub import resolve_model_path
    models = {"SmolLM2-135M-Instruct (Q4_1, Q8_0 embedding)": (resolve_model_path(args.smollm2), args.prompt_tokens,
                                                                args.new_tokens),
              "TinyLlama-1.1B-shaped, random (Q4_K_M)": (tinyllama_file(args.tinyllama), args.tinyllama_prompt_tokens,
                                                         args.tinyllama_new_tokens)}
    header = {"cpu": cpu_model(), "cores": os.cpu_count(), "blas": blas_threads(), "numpy": np.__version__,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "repeats": args.repeats, "threads": "litetorch default (decode threads measured per step)"}
    print(" | ".join(f"{k}: {v}" for k, v in header.items()), flush=True)
    jobs = [(name, mode) for name in models for mode in MODES]
    runs = {job: [] for job in jobs}
    for r in range(args.repeats):
        for name, mode in (jobs if r % 2 == 0 else jobs[::-1]):
            path, n_prompt, n_new = models[name]
            load_before = os.getloadavg()[0]   # other processes on the machine, for the record
            res = run_worker(path, mode, n_prompt, n_new)
            res["load_average_1min"] = [load_before, os.getloadavg()[0]]
            runs[(name, mode)].append(res)
            print(f"round {r + 1}: {name}, {mode}: decode {res['decode_tps']:.2f} tok/s, "
                  f"peak RSS {res['peak_rss_mb']:.0f} MiB (load average {load_before:.1f})", flush=True)

    rows = []
    print("\n| model | weights | file | load s | prefill tok/s | decode tok/s | peak RSS after load, MiB "
          "| peak RSS generating, MiB | same tokens |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, mode in jobs:
        rs, (path, n_prompt, n_new) = runs[(name, mode)], models[name]
        same = all(x["tokens"] == runs[(name, "float32")][0]["tokens"] for x in rs)
        row = {"model": name, "weights": mode, "file_mb": path.stat().st_size / 1e6, "prompt_tokens": n_prompt,
               "new_tokens": n_new, "runs": rs, "tokens_identical_to_float32": same}
        rows.append(row)
        print(f"| {name} | {mode} | {row['file_mb']:.0f} MB | {spread([x['load_s'] for x in rs], '.1f')} "
              f"| {spread([x['prefill_tps'] for x in rs], '.1f')} | {spread([x['decode_tps'] for x in rs], '.2f')} "
              f"| {spread([x['peak_rss_load_mb'] for x in rs], '.0f')} "
              f"| {spread([x['peak_rss_mb'] for x in rs], '.0f')} "
              f"| {'yes' if same else 'NO'} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "weight_modes.json").write_text(json.dumps({"header": header, "rows": rows}, indent=1))
    print(f"\nwrote {args.out / 'weight_modes.json'}")
    plot(rows, args.out / "weight_modes.png")
    return 0 if all(r["tokens_identical_to_float32"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
