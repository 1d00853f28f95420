"""Prefill of two litetorch versions in one process, taking turns: is a change faster or slower?

    git worktree add /tmp/before <commit>            # the version to compare against
    python benchmarks/prefill_pair.py --other /tmp/before --threads 1 --rounds 10
    python benchmarks/prefill_pair.py --other /tmp/before --variants "attention_block=None" "prefill_chunk=256"

On a shared machine a prefill's time moves by 10-30% from minute to minute, so two versions timed
in two runs are partly comparing two minutes. Here both versions load the default model (SmolLM2,
float32) into one process and run the same random prompt in turns: each round runs the other
version once, then this checkout's runtime once per variant. The number to trust is the median
over rounds of (this version's time / the other's time in the same round).

The other checkout's package is copied to a temporary directory as `litetorch_other` (its absolute
`litetorch` imports rewritten), so both can be imported side by side. It is run through its own
`Runtime` if it has one, otherwise as the model's plain no-grad forward (the versions before the
runtime existed kept their speed tricks inside the layers). Both must give the same logits.

One process means one memory allocator: what one version's allocations do to glibc malloc's
thresholds the other inherits, so an allocator effect (litetorch/malloc.py) does not show here.
benchmarks/prefill_workers.py runs each version in its own process, as benchmarks/run.py does.
"""
from __future__ import annotations

import argparse
import ast
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's litetorch, whatever else is installed


def import_other(checkout: Path, into: Path):
    """Copy checkout/litetorch to into/litetorch_other (imports rewritten) and import it."""
    src = checkout / "litetorch"
    if not (src / "__init__.py").is_file():
        raise SystemExit(f"--other: no litetorch package in {checkout}")
    dst = into / "litetorch_other"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
    pattern = re.compile(r"\b(from|import) litetorch(?=[.\s]|$)", re.M)
    for py in dst.rglob("*.py"):
        py.write_text(pattern.sub(r"\1 litetorch_other", py.read_text()))
    sys.path.insert(0, str(into))
    import litetorch_other
    return litetorch_other


def parse_variant(text: str) -> dict:
    """"attention_block=64,prefill_chunk=None" -> {"attention_block": 64, "prefill_chunk": None}."""
    kw = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        kw[key.strip()] = ast.literal_eval(value.strip())
    return kw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", type=Path, required=True, help="a checkout of the version to compare against")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for both (default 1)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--tokens", type=int, default=512, help="prompt length (default 512)")
    ap.add_argument("--variants", nargs="*", default=[""],
                    help='Runtime arguments of this checkout to time, e.g. "prefill_chunk=256" ("" = the default)')
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits

    import litetorch as lt
    from litetorch.bench.machine import cpu_model
    from litetorch.models.loading import load_model
    from litetorch.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        other = import_other(args.other.resolve(), Path(tmp))
        from litetorch_other.models.loading import load_model as load_other
        new, _ = load_model()
        old, _ = load_other()
        ids = np.random.default_rng(0).integers(0, new.vocab_size, size=(1, args.tokens))
        other_runtime = getattr(getattr(other, "runtime", None), "Runtime", None)

        def run_other():
            cache = old.new_cache(1, args.tokens + 1)
            t = time.perf_counter()
            if other_runtime is not None:
                logits = other_runtime(decode_threads=None).forward(old, ids, cache)
            else:
                with other.no_grad():
                    logits = old(ids, cache=cache, logits_to_keep=1).data
            return time.perf_counter() - t, logits

        runtimes = {v or "default": Runtime(decode_threads=None, **parse_variant(v)) for v in args.variants}

        def run_this(runtime):
            cache = new.new_cache(1, args.tokens + 1)
            t = time.perf_counter()
            logits = runtime.forward(new, ids, cache)
            return time.perf_counter() - t, logits

        times = {"other": []} | {name: [] for name in runtimes}
        with threadpool_limits(args.threads, user_api="blas"), lt.no_grad():
            _, want = run_other()  # a warm-up of each, and the logits must agree
            for name, runtime in runtimes.items():
                _, got = run_this(runtime)
                err = np.abs(got - want).max() / np.abs(want).max()
                if err > 1e-5:
                    raise SystemExit(f"{name}: logits differ from the other version's by {err:.2g} (relative)")
            for _ in range(args.rounds):
                times["other"].append(run_other()[0])
                for name, runtime in runtimes.items():
                    times[name].append(run_this(runtime)[0])

    print(f"{cpu_model()}, {args.threads} BLAS thread(s), {args.tokens}-token prefill, {args.rounds} rounds; "
          f"other = {args.other}")
    base = np.array(times["other"])
    for name, ts in times.items():
        ratio = np.median(np.array(ts) / base)
        print(f"  {name:>30}: min {min(ts):.3f} s, median {np.median(ts):.3f} s, "
              f"time / other's per round: median {ratio:.3f}")


if __name__ == "__main__":
    main()
