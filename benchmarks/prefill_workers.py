"""Prefill and decode of two litetorch versions, each in its own process, taking turns (as benchmarks/run.py).

    git worktree add /tmp/before <commit>
    python benchmarks/prefill_workers.py --other /tmp/before --threads 2 --rounds 8

benchmarks/prefill_pair.py runs both versions in one process, which is the quietest comparison of
the code, but then both share one memory allocator: what one version's allocations do to glibc
malloc's thresholds (litetorch/malloc.py) the other inherits. Here each version is run.py's own
litetorch worker in its own process, as `benchmarks/run.py` measures it against HF: the worker of
this checkout (`python -m litetorch.bench.run --worker litetorch`) and the other checkout's
(`<other>/benchmarks/run.py --worker litetorch`, or its `litetorch.bench.run`). Both load the
default model; in each round each runs one 512-token prefill and 128 greedy decode steps on the
same random prompt, the order alternating. Prints every round and the median of new / other.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's litetorch, whatever else is installed
PROTOCOL = "@@ "  # litetorch.bench.run's worker protocol


def worker_command(checkout: Path, common: list) -> tuple[list, dict]:
    """How to start `checkout`'s litetorch worker: its benchmarks/run.py if that holds the worker, else the module."""
    script = checkout / "benchmarks" / "run.py"
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if script.is_file() and "def worker_litetorch" in script.read_text():
        return [sys.executable, str(script), *common], env
    return [sys.executable, "-m", "litetorch.bench.run", *common], env


def ask(proc, command: str | None):
    if command is not None:
        proc.stdin.write(command + "\n")
        proc.stdin.flush()
    for line in proc.stdout:
        if line.startswith(PROTOCOL):
            return json.loads(line[len(PROTOCOL):])
    raise SystemExit(f"a worker failed:\n{proc.stderr.read()[-3000:]}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--other", type=Path, required=True, help="a checkout of the version to compare against")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads of both workers (default 1)")
    ap.add_argument("--rounds", type=int, default=8)
    args = ap.parse_args(argv)

    from litetorch.bench.machine import cpu_model
    from litetorch.io.hub import resolve_model_path

    ids = {"prompt": np.random.default_rng(0).integers(0, 49152, 512).tolist(), "short": list(range(100, 116))}
    with tempfile.TemporaryDirectory() as tmp:
        ids_path = Path(tmp) / "ids.json"
        ids_path.write_text(json.dumps(ids))
        common = ["--worker", "litetorch", "--model", str(resolve_model_path(None)), "--ids", str(ids_path),
                  "--threads", str(args.threads), "--new-tokens", "128", "--eos", "2", "--nocache-tokens", "4",
                  "--contexts", "16"]
        procs = {}
        for name, checkout in (("other", args.other.resolve()), ("this", ROOT)):
            cmd, env = worker_command(checkout, common)
            procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                           text=True, env=env)
        for proc in procs.values():
            ask(proc, None)  # loaded and warmed up
        times = {name: [] for name in procs}
        try:
            for r in range(args.rounds):
                for name in (list(procs) if r % 2 == 0 else list(procs)[::-1]):
                    time.sleep(0.5)  # the last worker's spinning BLAS threads go to sleep
                    _, prefill_s, decode_s = ask(procs[name], "timed")
                    times[name].append((prefill_s, decode_s))
        finally:
            for proc in procs.values():
                proc.kill()
    print(f"{cpu_model()}, {args.threads} BLAS thread(s), 512-token prefill + 128 decode steps, {args.rounds} rounds; "
          f"other = {args.other}")
    for name, ts in times.items():
        print(f"  {name:>5}: prefill s {[round(t[0], 3) for t in ts]}, decode s {[round(t[1], 2) for t in ts]}")
    for i, what in enumerate(("prefill", "decode")):
        ratio = np.array([t[i] for t in times["this"]]) / np.array([t[i] for t in times["other"]])
        print(f"  {what}: this / other per round, median {np.median(ratio):.3f}")


if __name__ == "__main__":
    main()
