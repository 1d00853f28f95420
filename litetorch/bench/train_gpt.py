"""Training speed of the lesson-17 GPT: litetorch vs PyTorch, same config, same run.

    python -m litetorch.bench.train_gpt            # default training config, 1 thread each
    python benchmarks/train_gpt.py --threads 2 --steps 30   # the same, from the checkout

Both frameworks train the same model (litetorch's default `TrainConfig`, float32) from the same
initial weights on the same batches: forward, cross-entropy, backward, clipping, AdamW and the
schedule, i.e. a whole optimization step. The steps alternate in rounds (a few litetorch steps,
then as many PyTorch steps), so a busy machine slows both alike; the medians of the per-step
times are reported, with wall and CPU time, the BLAS/torch thread settings, the CPU model and
the load average (other processes on the machine show up there). By default the process runs
with `keep_freed_memory()` (glibc malloc keeps freed blocks, see litetorch/train.py), like the
training command; `--malloc-defaults` measures without it.

Writes litetorch-bench/train_gpt.json (benchmarks/train_gpt.py: benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import litetorch as lt
from litetorch.bench.machine import blas_threads, cpu_model
from litetorch.optim.lr_scheduler import warmup_cosine_lambda
from litetorch.train import Trainer, TrainConfig, keep_freed_memory

DEFAULT_OUT = "litetorch-bench"  # in the current directory; benchmarks/train_gpt.py passes benchmarks/results




def main(argv=None, default_out=DEFAULT_OUT) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=24, help="timed steps per framework (after 2 warm-up steps)")
    ap.add_argument("--round", type=int, default=4, help="steps per framework per round")
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads for NumPy and torch threads (default 1)")
    ap.add_argument("--malloc-defaults", action="store_true",
                    help="leave glibc malloc as it is (default: keep_freed_memory(), like `python -m litetorch.train`)")
    ap.add_argument("--out", default=str(Path(default_out) / "train_gpt.json"),
                    help="the JSON file to write (default: %(default)s)")
    args = ap.parse_args(argv)
    malloc_tuned = False if args.malloc_defaults else keep_freed_memory()  # process-wide: both frameworks

    from threadpoolctl import threadpool_limits
    limits = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (kept alive)
    import torch
    from litetorch.bench.torch_gpt import TorchGPT, param_groups
    torch.set_num_threads(args.threads)

    cfg = TrainConfig(steps=10_000)  # the default run's model and batch; a long schedule (lr warms up)
    trainer = Trainer(cfg, verbose=False)
    twin = TorchGPT(trainer.model.config)
    twin.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in trainer.model.state_dict().items()})
    opt = torch.optim.AdamW(param_groups(list(twin.named_parameters()), cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    batches = lt.Generator(cfg.seed + 1)  # the trainer's batch stream, drawn again for torch

    def torch_step():
        x, y = trainer.data.get_batch("train", cfg.batch_size, cfg.block_size, batches)
        _, loss = twin(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        return loss.item()

    def timed(fn):
        w, c = time.perf_counter(), time.process_time()
        loss = fn()
        return time.perf_counter() - w, time.process_time() - c, loss

    load_before = os.getloadavg()
    times = {"litetorch": [], "torch": []}
    losses = {"litetorch": [], "torch": []}
    for _ in range(2):  # warm-up: first-call allocations, torch's kernel selection
        trainer.train_step(), torch_step()
    done = 0
    while done < args.steps:
        n = min(args.round, args.steps - done)
        for name, fn in (("litetorch", trainer.train_step), ("torch", torch_step)):
            for _ in range(n):
                w, c, loss = timed(fn)
                times[name].append((w, c))
                losses[name].append(loss)
        done += n
    load_after = os.getloadavg()

    tokens = cfg.batch_size * cfg.block_size
    rows = {}
    for name, t in times.items():
        wall = float(np.median([w for w, _ in t]))
        cpu = float(np.median([c for _, c in t]))
        rows[name] = {"median_step_wall_s": wall, "median_step_cpu_s": cpu, "steps_per_s": 1.0 / wall,
                      "tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu}
    ratio_wall = rows["litetorch"]["median_step_wall_s"] / rows["torch"]["median_step_wall_s"]
    ratio_cpu = rows["litetorch"]["median_step_cpu_s"] / rows["torch"]["median_step_cpu_s"]
    loss_rel = float(np.max(np.abs(np.array(losses["litetorch"]) - losses["torch"]) / np.array(losses["torch"])))

    header = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
        "cores": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "blas": blas_threads(), "torch_threads": torch.get_num_threads(),
        "load_average_before_after": [load_before[0], load_after[0]],
        "config": {k: getattr(cfg, k) for k in TrainConfig.MODEL_FIELDS + ("batch_size", "dtype")},
        "parameters": trainer.model.num_parameters(), "tokens_per_step": tokens, "timed_steps": args.steps,
        "mode": "full training step (forward, loss, backward, clip, AdamW, schedule), float32, medians",
        "malloc": ("keep_freed_memory() (mmap threshold 32 MB, trim threshold 1 GB)" if malloc_tuned
                   else "glibc defaults"),
    }
    print(f"CPU: {header['cpu']} ({header['cores']} cores), load average {load_before[0]:.1f} -> {load_after[0]:.1f}")
    print(f"threads: {header['blas']}; torch {header['torch_threads']}; malloc: {header['malloc']}")
    print(f"model: {header['parameters']:,} parameters, {tokens} tokens per step, {args.steps} timed steps each")
    print(f"{'':10} {'ms/step (wall)':>15} {'ms/step (cpu)':>14} {'steps/s':>8} {'tokens/s':>9}")
    for name, r in rows.items():
        print(f"{name:10} {1e3 * r['median_step_wall_s']:15.1f} {1e3 * r['median_step_cpu_s']:14.1f} "
              f"{r['steps_per_s']:8.2f} {r['tokens_per_s']:9.0f}")
    print(f"litetorch / torch time per step: {ratio_wall:.2f}x (wall), {ratio_cpu:.2f}x (cpu); "
          f"max relative loss difference over the {args.steps + 2} steps: {loss_rel:.1e}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "results": rows, "litetorch_over_torch_wall": ratio_wall,
                               "litetorch_over_torch_cpu": ratio_cpu, "max_rel_loss_diff": loss_rel}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
