"""Train a small GPT on generated stories, end to end, lesson 17.

    python -m litetorch.train                            # the default run (a few minutes on 2 cores)
    python -m litetorch.train --steps 200 --out runs/a   # shorter
    python -m litetorch.train --resume runs/a            # continue from runs/a/ckpt, bit for bit

One training step is the loop every LLM is trained with:

    x, y   = a batch of windows of the text, y = x shifted by one          [B, T], [B, T]
    loss   = mean cross-entropy of the model's next-token scores            a number
    grads  = loss.backward()                                                one per parameter
    clip the global gradient norm, AdamW update, move the learning rate along warmup + cosine

A checkpoint (`OUT/ckpt/`) holds everything the next step depends on, so a resumed run
continues exactly where the first one stopped (same losses, same weights, bit for bit):

    model.safetensors   the weights (config in the metadata)
    optimizer.npz       AdamW's moments m and v, one pair per parameter (np.load without pickle)
    trainer.json        step, both configs, scheduler and optimizer settings, the random generators'
                        states (batches and dropout), the loss history
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import random as lt_random
from .data import StoryDataset, grammar_entropy, grammar_report
from .errors import ConfigError, ModelFormatError
from .io.safetensors import load_safetensors, save_safetensors
from .malloc import keep_freed_memory  # noqa: F401  (re-exported: the trainer calls it, and so do its users)
from .models.gpt import GPT, GPTConfig
from .optim import AdamW, CosineWithWarmup, clip_grad_norm_
from .random import Generator
from .tensor import no_grad

CHECKPOINT_VERSION = 1


@dataclass
class TrainConfig:
    # the model (vocab_size comes from the data)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 96
    block_size: int = 128  # about half a story: the main character's name is usually in view
    dropout: float = 0.0
    bias: bool = True
    positions: str = "learned"
    norm: str = "layer"
    prenorm: bool = True
    mlp: str = "gelu_tanh"
    tie_weights: bool = True
    # the data
    n_stories: int = 4000
    data_seed: int = 0
    # the optimization
    steps: int = 800
    batch_size: int = 16
    lr: float = 1e-2
    min_lr_ratio: float = 0.1
    warmup_steps: int = 40
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 1337
    dtype: str = "float32"
    # evaluation and output (free to change when resuming)
    eval_interval: int = 100
    eval_iters: int = 8
    sample_tokens: int = 400
    temperature: float = 0.8

    MODEL_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "positions", "norm", "prenorm",
                    "mlp", "tie_weights")
    # What a checkpoint pins: resuming with any of these changed would not continue the same run.
    RUN_FIELDS = MODEL_FIELDS + ("n_stories", "data_seed", "steps", "batch_size", "lr", "min_lr_ratio",
                                 "warmup_steps", "weight_decay", "beta1", "beta2", "grad_clip", "seed", "dtype")

    def model_config(self, vocab_size: int) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in self.MODEL_FIELDS})

    def to_dict(self) -> dict:
        return asdict(self)


def param_groups(model, weight_decay: float) -> list:
    """nanoGPT's split: matrices and embeddings are decayed; biases and norm weights are not
    (shrinking a norm's gain or a bias toward 0 is not a sensible prior)."""
    named = list(model.named_parameters())
    return [{"params": [p for _, p in named if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0}]


class Trainer:
    """Owns the data, the model, the optimizer, the schedule, the random generators and the history.

    `Trainer(cfg).run()` trains; `Trainer.resume(ckpt_dir)` rebuilds one from a checkpoint.
    Random streams: `Generator(seed)` initializes the weights, `Generator(seed + 1)` draws the
    training batches, the global generator (`lt.manual_seed(seed)`) draws dropout masks, and
    evaluation uses a fresh `Generator(seed + 2)` each time (the same validation batches at
    every evaluation, and training's streams untouched).
    """

    def __init__(self, cfg: TrainConfig | None = None, data: StoryDataset | None = None, verbose: bool = True):
        self.cfg = cfg = cfg or TrainConfig()
        self.verbose = verbose
        self.data = data if data is not None else StoryDataset(cfg.n_stories, cfg.data_seed)
        if (self.data.n_stories, self.data.seed) != (cfg.n_stories, cfg.data_seed):
            raise ConfigError(f"data has n_stories={self.data.n_stories}, seed={self.data.seed}; the config asks for "
                              f"{cfg.n_stories}, {cfg.data_seed}")
        self.dtype = np.dtype(cfg.dtype)
        lt_random.manual_seed(cfg.seed)
        self.model = GPT(cfg.model_config(self.data.vocab_size), generator=Generator(cfg.seed)).to(self.dtype)
        self.optimizer = AdamW(param_groups(self.model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                               eps=1e-8)
        self.scheduler = CosineWithWarmup(self.optimizer, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        self.batch_generator = Generator(cfg.seed + 1)
        self.step = 0
        self.history = {"step": [], "loss": [], "lr": [], "grad_norm": [], "eval_step": [], "val_loss": []}

    # lesson 17: begin (train step)
    def train_step(self) -> float:
        """One optimization step; returns the batch's loss (before the update)."""
        cfg = self.cfg
        x, y = self.data.get_batch("train", cfg.batch_size, cfg.block_size, self.batch_generator)  # [B, T] each
        lr = self.optimizer.param_groups[0]["lr"]  # this step's learning rate (the schedule set it)
        self.model.train()
        _, loss = self.model(x, y)  # logits [B, T, V], loss: a 0-d tensor
        self.optimizer.zero_grad()  # gradients accumulate otherwise
        loss.backward()  # every parameter's .grad, same shape as the parameter
        norm = clip_grad_norm_(self.model.parameters(), cfg.grad_clip)  # cap the update's length, keep its direction
        self.optimizer.step()  # AdamW
        self.scheduler.step()  # the learning rate for the next step
        self.step += 1
        h = self.history
        h["step"].append(self.step)
        h["loss"].append(loss.item())
        h["lr"].append(lr)
        h["grad_norm"].append(norm.item())
        return loss.item()
    # lesson 17: end (train step)

    @no_grad()
    def evaluate(self, split: str = "val") -> float:
        """Mean loss over `eval_iters` fixed batches of `split`, in eval mode (no dropout)."""
        cfg = self.cfg
        g = Generator(cfg.seed + 2)
        was_training = self.model.training
        self.model.eval()
        losses = []
        for _ in range(cfg.eval_iters):
            x, y = self.data.get_batch(split, cfg.batch_size, cfg.block_size, g)
            losses.append(self.model(x, y)[1].item())
        self.model.train(was_training)
        return float(np.mean(losses))

    def sample(self, max_new_tokens: int | None = None, prompt: str = "\n", temperature: float | None = None,
               seed: int = 0) -> str:
        """Text the model writes after `prompt` (default: a newline, i.e. "start a story")."""
        from .generation import generate
        tok = self.data.tokenizer
        out = generate(self.model, tok, tok.encode(prompt), max_new_tokens or self.cfg.sample_tokens,
                       temperature=self.cfg.temperature if temperature is None else temperature, seed=seed,
                       eos_token_id=[], slide=True)  # stories have no end token; the window slides past block_size
        return out.text

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self, until: int | None = None, out_dir=None, progress: bool = True) -> dict:
        """Train up to step `until` (default: cfg.steps), evaluating every eval_interval steps and at
        the end; with `out_dir`, save a checkpoint at each evaluation. Returns the history."""
        cfg = self.cfg
        until = cfg.steps if until is None else min(until, cfg.steps)
        tokens_per_step = cfg.batch_size * cfg.block_size
        bar = _progress(total=cfg.steps, initial=self.step, enabled=progress and self.verbose)
        t_last, rate = time.perf_counter(), None
        while self.step < until:
            loss = self.train_step()
            now = time.perf_counter()
            inst = tokens_per_step / max(now - t_last, 1e-9)
            rate = inst if rate is None else 0.9 * rate + 0.1 * inst  # smoothed tokens/s
            t_last = now
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:,.0f}", lr=f"{self.history['lr'][-1]:.2e}")
            if self.step % cfg.eval_interval == 0 or self.step == until:
                val = self.evaluate()
                self.history["eval_step"].append(self.step)
                self.history["val_loss"].append(val)
                self._log(f"step {self.step}: train loss {loss:.4f}, val loss {val:.4f}", bar)
                if out_dir is not None:
                    self.save(Path(out_dir) / "ckpt")
                t_last = time.perf_counter()  # evaluation time is not training time
        if bar is not None:
            bar.close()
        return self.history

    def _log(self, msg, bar=None):
        if not self.verbose:
            return
        if bar is not None:
            bar.write(msg)
        else:
            print(msg, flush=True)

    # ---- checkpoints ----------------------------------------------------------------------------
    def save(self, ckpt_dir) -> Path:
        """Write the checkpoint directory (atomically: a crash leaves the previous one intact)."""
        ckpt_dir = Path(ckpt_dir)
        tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model_config = self.model.config.to_dict()
        save_safetensors(tmp / "model.safetensors", self.model.state_dict(),
                         metadata={"format": "litetorch-gpt", "config": json.dumps(model_config)})
        opt = self.optimizer.state_dict()
        arrays, steps = {}, {}
        for idx, s in opt["state"].items():
            arrays[f"{idx}.exp_avg"] = s["exp_avg"]
            arrays[f"{idx}.exp_avg_sq"] = s["exp_avg_sq"]
            steps[str(idx)] = int(s["step"])
        np.savez(tmp / "optimizer.npz", **arrays)
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
        meta = {
            "format": "litetorch-gpt-trainer", "version": CHECKPOINT_VERSION, "step": self.step,
            "train_config": self.cfg.to_dict(), "model_config": model_config,
            "optimizer": {"param_groups": groups, "steps": steps},
            "scheduler": self.scheduler.state_dict(),
            "rng": {"batches": self.batch_generator.get_state(), "global": lt_random.default_generator.get_state()},
            "history": self.history,
        }
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
        return replace_directory(tmp, ckpt_dir)

    @classmethod
    def resume(cls, ckpt_dir, cfg: TrainConfig | None = None, data: StoryDataset | None = None,
               verbose: bool = True) -> "Trainer":
        """Rebuild the trainer saved in `ckpt_dir`. If `cfg` is given, every field that pins the run
        (model, data, optimization; see TrainConfig.RUN_FIELDS) must equal the checkpoint's."""
        ckpt_dir = Path(ckpt_dir)
        meta = _read_meta(ckpt_dir)
        saved = TrainConfig(**meta["train_config"])
        if cfg is not None:
            diffs = [f"{k}: checkpoint {getattr(saved, k)!r}, this run {getattr(cfg, k)!r}"
                     for k in TrainConfig.RUN_FIELDS if getattr(saved, k) != getattr(cfg, k)]
            if diffs:
                raise ModelFormatError(f"checkpoint {ckpt_dir} was made for another configuration; "
                                       f"resuming it would not continue the same run: " + "; ".join(diffs))
            saved = TrainConfig(**{**asdict(saved), **{k: getattr(cfg, k) for k in _FREE_FIELDS}})
        trainer = cls(saved, data=data, verbose=verbose)
        if trainer.model.config.to_dict() != meta["model_config"]:
            raise ModelFormatError(f"checkpoint {ckpt_dir}: model config {meta['model_config']} does not match "
                                   f"{trainer.model.config.to_dict()} (vocabulary changed?)")
        trainer.model.load_state_dict(load_safetensors(ckpt_dir / "model.safetensors"))
        # optimizer: moments from the npz (no pickle), step counts and hyper-parameters from the json
        with np.load(ckpt_dir / "optimizer.npz", allow_pickle=False) as z:
            state = {int(i): {"step": n, "exp_avg": z[f"{i}.exp_avg"], "exp_avg_sq": z[f"{i}.exp_avg_sq"]}
                     for i, n in meta["optimizer"]["steps"].items()}
        groups = meta["optimizer"]["param_groups"]
        for g in groups:
            g["betas"] = tuple(g["betas"])
        trainer.optimizer.load_state_dict({"state": state, "param_groups": groups})
        trainer.scheduler.load_state_dict(meta["scheduler"])
        trainer.batch_generator.set_state(meta["rng"]["batches"])
        lt_random.default_generator.set_state(meta["rng"]["global"])
        trainer.step = meta["step"]
        trainer.history = meta["history"]
        return trainer


_FREE_FIELDS = tuple(f.name for f in fields(TrainConfig) if f.name not in TrainConfig.RUN_FIELDS)


def _read_meta(ckpt_dir: Path) -> dict:
    for name in ("model.safetensors", "optimizer.npz", "trainer.json"):
        if not (ckpt_dir / name).is_file():
            raise ModelFormatError(f"{ckpt_dir} is not a complete litetorch GPT checkpoint: {name} is missing")
    try:
        meta = json.loads((ckpt_dir / "trainer.json").read_text())
    except ValueError as e:
        raise ModelFormatError(f"{ckpt_dir / 'trainer.json'} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != "litetorch-gpt-trainer":
        raise ModelFormatError(f"{ckpt_dir / 'trainer.json'} is not a litetorch GPT trainer state")
    missing = [k for k in ("step", "train_config", "model_config", "optimizer", "scheduler", "rng", "history")
               if k not in meta]
    if missing:
        raise ModelFormatError(f"{ckpt_dir / 'trainer.json'} lacks {missing}")
    if meta.get("version") != CHECKPOINT_VERSION:
        raise ModelFormatError(f"{ckpt_dir}: checkpoint version {meta.get('version')}, expected {CHECKPOINT_VERSION}")
    unknown = set(meta["train_config"]) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ModelFormatError(f"{ckpt_dir}: unknown training settings {sorted(unknown)}")
    return meta


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------
# Plots and the command line
# ------------------------------------------------------------------------------------------------
def plot_losses(history: dict, path, baseline: float | None = None, title: str = "GPT on generated stories",
                floor: float | None = None):
    """Training loss per step, validation loss at each evaluation, the unigram baseline and the
    grammar's entropy (the floor): saved as a PNG at `path`; returns the matplotlib Figure.

    The figure is built without pyplot, so no backend is chosen or changed: it saves on a machine
    without a display, and in Jupyter the caller shows it inline (a cell ending in `fig`)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    ax.plot(history["step"], history["loss"], lw=0.8, alpha=0.7, label="train loss (batch)")
    if history.get("eval_step"):
        ax.plot(history["eval_step"], history["val_loss"], "o-", label="validation loss")
    if baseline is not None:
        ax.axhline(baseline, color="gray", ls=":", label=f"unigram baseline {baseline:.2f}")
    if floor is not None:
        ax.axhline(floor, color="green", ls="--", lw=0.8, label=f"grammar entropy (floor) {floor:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / character)")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def replace_directory(tmp: Path, target: Path) -> Path:
    """Put the finished directory `tmp` in place of `target`, so a crash leaves either the old checkpoint
    or the new one, never half of each: move the old aside, move the new in, then delete the old."""
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _threads_info() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}"
    pools = [f"{p.get('internal_api')} {p.get('num_threads')} thread(s)" for p in threadpool_info()
             if p.get("user_api") == "blas"]
    return "BLAS: " + (", ".join(pools) or "none found")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="litetorch train-gpt", description="Train a small GPT on generated stories.")
    p.add_argument("--out", default="runs/gpt", help="output directory (checkpoint, loss curve, samples)")
    p.add_argument("--resume", metavar="DIR", help="resume the run saved in DIR (its ckpt/ subdirectory)")
    p.add_argument("--stop-after", type=int, metavar="STEP",
                   help="stop (and checkpoint) at this step, without changing the schedule")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--threads", type=int, metavar="N", default=1,
                   help="BLAS threads (default 1; 0 leaves NumPy's setting). The classroom GPT's matmuls are "
                        "small: one thread is about as fast on a quiet machine, and two threads stall each "
                        "other on a busy one (200 of 800 steps in 10 minutes, against 168 s for all 800)")
    p.add_argument("--keep-malloc-defaults", action="store_true",
                   help="do not tune glibc malloc (see litetorch.train.keep_freed_memory)")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=_bool, default=None, metavar="BOOL", help=f"default {getattr(defaults, f.name)}")
        else:
            typ = {"int": int, "float": float, "str": str}.get(f.type, f.type)
            p.add_argument(flag, type=typ, default=None, help=f"default {getattr(defaults, f.name)}")
    return p


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    limits = None
    if args.threads < 0:
        raise SystemExit(f"--threads must be an integer >= 0 (0: NumPy's own setting), got {args.threads}")
    if args.threads > 0:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            if "--threads" in (argv if argv is not None else sys.argv):  # asked for: say it cannot be done
                raise SystemExit("--threads needs threadpoolctl (pip install threadpoolctl), or set "
                                 "OPENBLAS_NUM_THREADS before starting Python") from None
            threadpool_limits = None  # the default of 1 is a preference: train with NumPy's setting
        if threadpool_limits is not None:
            limits = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (kept alive)
    if not args.keep_malloc_defaults:
        keep_freed_memory()
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    out = Path(args.out)
    t0 = time.perf_counter()
    if args.resume:
        ckpt = Path(args.resume) / "ckpt"
        saved = TrainConfig(**_read_meta(ckpt)["train_config"])
        trainer = Trainer.resume(ckpt, TrainConfig(**{**asdict(saved), **given}))
        out = Path(args.out) if args.out != "runs/gpt" else Path(args.resume)
        print(f"resumed {ckpt} at step {trainer.step}", flush=True)
    else:
        trainer = Trainer(TrainConfig(**given))
    out.mkdir(parents=True, exist_ok=True)
    cfg, data, model = trainer.cfg, trainer.data, trainer.model
    baseline = data.unigram_baseline()
    print(f"data: {data}\nmodel: {model.num_parameters():,} parameters ({cfg.n_layer} layers, C={cfg.n_embd}, "
          f"H={cfg.n_head}, T={cfg.block_size}, {cfg.dtype}); {cfg.steps} steps of {cfg.batch_size}x"
          f"{cfg.block_size} tokens\nunigram baseline (val): {baseline:.4f} nats/char; {_threads_info()}", flush=True)
    trainer.run(until=args.stop_after, out_dir=out, progress=not args.no_progress)
    train_time = time.perf_counter() - t0
    val = trainer.history["val_loss"][-1] if trainer.history["val_loss"] else float("nan")
    print(f"step {trainer.step}/{cfg.steps}: val loss {val:.4f} vs unigram baseline {baseline:.4f} "
          f"({train_time:.0f} s wall)", flush=True)
    try:
        floor = grammar_entropy(cfg.n_stories, cfg.data_seed)
        plot_losses(trainer.history, out / "loss.png", baseline, floor=floor)
        print(f"loss curve: {out / 'loss.png'}", flush=True)
    except ImportError:
        print("no loss curve: matplotlib is not installed (pip install matplotlib)", flush=True)
    print(f"checkpoint: {out / 'ckpt'}", flush=True)
    samples = [trainer.sample(seed=i) for i in range(3)]
    report = grammar_report("\n".join(samples))
    text = "\n\n".join(f"--- sample {i} ---\n{s.strip()}" for i, s in enumerate(samples))
    (out / "samples.txt").write_text(text + f"\n\n{report}\n")
    print(text + f"\n\ngrammar check of the samples: {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
