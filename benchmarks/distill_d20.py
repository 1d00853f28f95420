"""Stage-1 distillation demo: a 6-layer dense d20 teacher distilled into d20_loop, on the project's stories.

    python benchmarks/distill_d20.py                         # the run reported in lesson 19 (~1-2 h on 2 busy cores)
    python benchmarks/distill_d20.py --steps 40 --out /tmp/x # a quick look

Three runs, all on the generated stories (litetorch/data/stories.py, 4000 stories, seed 0, characters as
tokens), the same batches (seed 1) and the same evaluation batches:

1. the teacher: preset d20 (6 distinct layers, d_model 256), trained on cross-entropy;
2. the student with distillation: preset d20_loop (1 local + 1 shared x 2..4 + 1 local, mHC-lite with 2
   streams, Ouro's exit gate), loss = CE + w tau^2 KL(teacher || student) + the annealed loop-scale penalty;
3. the same student, same seed and batches, without the KL term (CE + the same penalty; the teacher is only
   read to measure the KL).

Reported per run: validation cross-entropy (nats/char) of the model as it generates (adaptive exits
applied), next-character accuracy, the loops each token used, KL(teacher || model), the number of
parameters, and wall time. Writes benchmarks/results/distill_d20.json and distill_d20.png.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

import litetorch as lt  # noqa: E402
from litetorch.loop_train import LoopTrainConfig, LoopTrainer  # noqa: E402
from litetorch.models.looplm_train import teacher_logits  # noqa: E402
from litetorch.nn.looped import kl_divergence  # noqa: E402
from litetorch.random import Generator  # noqa: E402


def evaluate(trainer, teacher, batches: int = 16) -> dict:
    """Validation CE, accuracy, loops/token and KL to the teacher on `batches` fixed batches (seed 1234)."""
    cfg, g = trainer.cfg, Generator(1234)
    m = trainer.model.eval()
    ce, acc, loops, kl = [], [], [], []
    with lt.no_grad():
        for _ in range(batches):
            x, y = trainer.data.get_batch("val", 16, cfg.block_size, g)
            out = m.run(x)
            z = out.logits.data.astype(np.float64)
            logp = z - z.max(-1, keepdims=True)
            logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
            ce.append(-np.take_along_axis(logp, y[..., None], -1).mean())
            acc.append((z.argmax(-1) == y).mean())
            loops.append(out.loops.mean())
            if teacher is not None:
                kl.append(kl_divergence(teacher_logits(teacher, x), z).mean())
    return {"val_ce": float(np.mean(ce)), "val_accuracy": float(np.mean(acc)), "loops_per_token": float(np.mean(loops)),
            "kl_to_teacher": float(np.mean(kl)) if kl else 0.0}


def run(name, cfg, out, teacher=None):
    t0 = time.perf_counter()
    trainer = LoopTrainer(cfg)
    print(f"== {name}: {trainer.model.config.structure()}, {trainer.model.num_parameters():,} parameters", flush=True)
    trainer.run(out_dir=out / name, progress=False)
    wall = time.perf_counter() - t0
    res = {"preset": cfg.preset, "parameters": trainer.model.num_parameters(), "steps": cfg.steps,
           "seed": cfg.seed, "wall_seconds": round(wall, 1), "train_config": cfg.to_dict(),
           "history": {k: trainer.history[k] for k in ("eval_step", "val_loss", "val_loops", "val_kl_to_teacher")},
           "train_loss": trainer.history["loss"]}
    res.update(evaluate(trainer, teacher if teacher is not None else None))
    print(f"   {name}: val CE {res['val_ce']:.4f}, accuracy {res['val_accuracy']:.4f}, {res['loops_per_token']:.2f} "
          f"loops/token, KL to teacher {res['kl_to_teacher']:.4f}, {wall:.0f} s", flush=True)
    return trainer, res


def plot(results, path):
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    colors = {"teacher": "black", "student_distilled": "tab:blue", "student_alone": "tab:orange"}
    for name, r in results["runs"].items():
        h = r["history"]
        label = f"{name} ({r['parameters'] / 1e6:.2f}M)"
        ax1.plot(h["eval_step"], h["val_loss"], "o-", color=colors[name], label=label)
        if name != "teacher":
            ax2.plot(h["eval_step"], h["val_kl_to_teacher"], "o-", color=colors[name], label=name)
    ax1.set(xlabel="step", ylabel="validation CE (nats/char)", title="d20 teacher, d20_loop students")
    ax2.set(xlabel="step", ylabel="KL(teacher || student)", title="distance to the teacher")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=300, help="training steps of every run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kl-weight", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--penalty", type=float, default=0.01, help="loop_scale_penalty (annealed linearly from 0)")
    p.add_argument("--out", default=str(ROOT / "runs" / "distill_d20"), help="checkpoints")
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--only", nargs="*", choices=["teacher", "student_distilled", "student_alone"],
                   help="rerun these runs only (the others are read from the results file and the teacher's checkpoint)")
    args = p.parse_args(argv)
    out, results_dir = Path(args.out), Path(args.results)
    common = dict(steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, seed=args.seed,
                  eval_interval=max(args.steps // 6, 1), eval_iters=4)
    t0 = time.perf_counter()
    only = set(args.only or ["teacher", "student_distilled", "student_alone"])
    previous = json.loads((results_dir / "distill_d20.json").read_text())["runs"] if args.only else {}
    runs = {}
    if "teacher" in only:
        teacher_trainer, runs["teacher"] = run("teacher", LoopTrainConfig(preset="d20", beta=0.0, **common), out)
        teacher = teacher_trainer.model
    else:
        from litetorch.models.looplm_files import load_looplm
        teacher = load_looplm(out / "teacher" / "ckpt" / "model.safetensors")
    student = dict(preset="d20_loop", loop_scale_penalty=args.penalty, penalty_schedule="linear",
                   teacher=str(out / "teacher" / "ckpt"), distill_temperature=args.temperature, **common)
    if "student_distilled" in only:
        _, runs["student_distilled"] = run("student_distilled",
                                           LoopTrainConfig(distill_kl_weight=args.kl_weight, **student), out, teacher)
    if "student_alone" in only:  # the teacher is attached only to measure the KL: weight 0, no term in the loss
        _, runs["student_alone"] = run("student_alone", LoopTrainConfig(distill_kl_weight=0.0, **student), out,
                                       teacher)
    results = {
        "what": "d20 (6 layers) teacher distilled into d20_loop on the generated stories (characters)",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": platform.processor() or
        platform.machine(), "python": platform.python_version(), "numpy": np.__version__,
        "wall_seconds_of_this_invocation": round(time.perf_counter() - t0, 1),
        "runs": {name: runs.get(name, previous.get(name)) for name in ("teacher", "student_distilled", "student_alone")},
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "distill_d20.json").write_text(json.dumps(results, indent=1))
    plot(results, results_dir / "distill_d20.png")
    print(json.dumps({k: {m: v[m] for m in ("val_ce", "val_accuracy", "loops_per_token", "kl_to_teacher",
                                                "wall_seconds")} for k, v in results["runs"].items()}, indent=1))


if __name__ == "__main__":
    main()
