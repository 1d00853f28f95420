"""Where a SmolLM2 decode step goes: the weight matmuls vs everything else (lesson 22).

Times every call of `ops.matmul.linear` (the weight matmuls: Q/K/V, O, gate/up, down and the
output projection) during single-token decode steps and reports, per token,

    step = weight matmuls + everything else (attention over the cache, norms, RoPE, SiLU, Python)

The second number is the one a speed change to the small per-layer ops moves, and it is far
less noisy than tokens/s on a shared machine: run this on two commits to measure such a change.
Each repetition prefills a fresh cache with the same random prompt and times `--tokens` steps;
the minimum over repetitions is reported (the quietest moment), and the median.

`--without-weight-traffic` answers a second question: how much of "everything else" is the cost of
running right after the matmuls? It replaces each weight matmul by a stored output of the right
shape (no weights are read, so the caches stay warm) and times the same steps. The outputs are
then meaningless numbers; only the time of the rest is of interest.

    python -m litetorch.bench.decode_split --threads 1 --context 576 --reps 8
    python -m litetorch.bench.decode_split --threads 1 --context 576 --reps 8 --without-weight-traffic
    python benchmarks/decode_split.py ...      # the same, with the source checkout's litetorch
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np


class without_weight_traffic:
    """Inside `with`, `ops.matmul.linear` returns a stored array of the right shape instead of reading
    the weights (one per output shape, copied on each call as a real matmul allocates its output).
    `.seconds` (time inside the weight matmuls, as in `timing_weight_matmuls`) stays 0."""

    seconds = 0.0

    def __enter__(self):
        from litetorch.ops import matmul
        from litetorch.tensor import Tensor
        self._matmul, self._plain, outputs = matmul, matmul.linear, {}

        def stored_linear(x, weight, bias=None):
            shape = x.shape[:-1] + (weight.shape[0],)
            if shape not in outputs:
                outputs[shape] = np.full(shape, 0.01, dtype=x.dtype)  # small: no overflow anywhere
            return Tensor._make(outputs[shape].copy(), (x, weight), None, "linear")

        matmul.linear = stored_linear
        return self

    def __exit__(self, *exc):
        self._matmul.linear = self._plain
        return False


class timing_weight_matmuls:
    """Inside `with`, every `ops.matmul.linear` call adds its wall time to `.seconds`."""

    def __init__(self):
        self.seconds = 0.0

    def __enter__(self):
        from litetorch.ops import matmul
        self._matmul, self._plain = matmul, matmul.linear

        def timed_linear(*a, **k):
            t0 = time.perf_counter()
            try:
                return self._plain(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0

        matmul.linear = timed_linear  # (F.linear looks it up on every call)
        return self

    def __exit__(self, *exc):
        self._matmul.linear = self._plain
        return False


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="GGUF or HF checkpoint (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (pinned, as in benchmarks/run.py)")
    ap.add_argument("--context", type=int, default=576, help="tokens in the cache before the timed steps")
    ap.add_argument("--tokens", type=int, default=32, help="timed decode steps per repetition")
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--without-weight-traffic", action="store_true",
                    help="time everything but the weight matmuls, which return stored outputs (see above)")
    args = ap.parse_args(argv)

    from threadpoolctl import threadpool_limits
    threadpool_limits(args.threads, user_api="blas")
    from litetorch.generation import PromptCache
    from litetorch.runtime import Runtime
    from litetorch.io.hub import default_model_path
    from litetorch.models.loading import load_llama

    model = load_llama(args.model or default_model_path())
    V = model.config.vocab_size  # random ids in [100, 40000) for SmolLM2; a tiny test model has fewer
    prompt = np.random.default_rng(0).integers(min(100, V // 2), min(40000, V), args.context).tolist()
    rows = []
    for _ in range(args.reps):
        pc = PromptCache(model, args.context + args.tokens, runtime=Runtime(decode_threads=args.threads))
        pc.extend(prompt)  # (a real prefill in both modes: the cache holds real keys and values)
        with (without_weight_traffic() if args.without_weight_traffic else timing_weight_matmuls()) as timer:
            t0 = time.perf_counter()
            for _ in range(args.tokens):
                pc.extend([42])
            step = (time.perf_counter() - t0) / args.tokens
        mm = timer.seconds / args.tokens  # 0 without weight traffic: no weights are read
        rows.append((1e3 * step, 1e3 * mm, 1e3 * (step - mm)))
    r = np.array(rows)
    out = {"threads": args.threads, "context": args.context, "tokens": args.tokens, "reps": args.reps,
           "without_weight_traffic": args.without_weight_traffic,
           **{f"{name}_ms_{stat}": float(f(r[:, i])) for i, name in enumerate(("step", "weight_matmuls", "other"))
              for stat, f in (("min", np.min), ("median", np.median))}}
    where = f"{args.threads} BLAS thread(s), context {args.context}..{args.context + args.tokens}"
    if args.without_weight_traffic:
        print(f"{where}: everything but the weight matmuls, with no weights read, {out['other_ms_min']:.1f} ms "
              f"per token (median {out['other_ms_median']:.1f})  [min over {args.reps} repetitions]")
    else:
        print(f"{where}: per token step {out['step_ms_min']:.1f} ms (median {out['step_ms_median']:.1f}) = weight "
              f"matmuls {out['weight_matmuls_ms_min']:.1f} (median {out['weight_matmuls_ms_median']:.1f}) + "
              f"everything else {out['other_ms_min']:.1f} (median {out['other_ms_median']:.1f})  "
              f"[min over {args.reps} repetitions]")
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
