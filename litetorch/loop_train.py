"""Train a LoopLM preset on the project's stories, with or without a teacher: `litetorch loop train`.

    litetorch loop train --preset d20 --out runs/d20                                  # a dense teacher
    litetorch loop train --preset d20_loop --teacher runs/d20/ckpt --out runs/loop    # distil it into the loop
    litetorch loop train --preset d20_loop --out runs/loop --resume                   # continue from runs/loop/ckpt
    litetorch loop generate runs/loop/ckpt "Once upon a time"

The preset gives the architecture; the vocabulary comes from the data (the stories' characters, as for
the classroom GPT of lesson 17), so a 50k-token preset becomes a character model of the same shape. Each
step is `models.looplm_train.train_step`: CE (+ w tau^2 KL to the teacher) (+ the annealed loop-scale
penalty). A checkpoint (`OUT/ckpt/`) holds the weights (model.safetensors, with the config and the
tokenizer's characters in its metadata), AdamW's moments (optimizer.npz) and the step, settings, random
generator state and history (trainer.json): a resumed run continues the same run, batch for batch.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import random as lt_random
from .data import StoryDataset
from .data.stories import CharTokenizer
from .errors import ConfigError, ModelFormatError, ModelNotFoundError
from .models import presets
from .models.looplm import LoopLM
from .models.looplm_files import load_looplm, save_safetensors
from .models.looplm_train import check_distillation, teacher_logits, train_step
from .nn import functional as F
from .nn.looped import kl_divergence
from .optim import AdamW
from .random import Generator
from .tensor import no_grad
from .train import _progress, replace_directory

FORMAT, VERSION = "litetorch-looplm-trainer", 1


@dataclass
class LoopTrainConfig:
    preset: str = "d20_loop"
    steps: int = 300
    batch_size: int = 8
    block_size: int = 64
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    clip: float = 1.0
    beta: float = 0.01  # Ouro's entropy bonus on the exit distribution (exit="gate" only)
    teacher: str | None = None  # a checkpoint (directory or file) of a model trained on the same characters
    distill_kl_weight: float = 1.0  # used only with a teacher
    distill_temperature: float = 2.0
    loop_scale_penalty: float = 0.0
    penalty_schedule: str = "linear"
    n_stories: int = 4000
    data_seed: int = 0
    seed: int = 0
    eval_interval: int = 50
    eval_iters: int = 8

    def to_dict(self) -> dict:
        return asdict(self)


class LoopTrainer:
    """The data, the model, the optimizer, the teacher and the history of one run."""

    def __init__(self, cfg: LoopTrainConfig, data: StoryDataset | None = None, verbose: bool = True):
        self.cfg, self.verbose = cfg, verbose
        self.data = data if data is not None else StoryDataset(cfg.n_stories, cfg.data_seed)
        model_cfg = presets.get(cfg.preset)  # ConfigError naming the known presets
        model_cfg = dataclasses.replace(model_cfg, vocab_size=self.data.vocab_size,
                                        max_len=max(model_cfg.max_len, cfg.block_size))
        lt_random.manual_seed(cfg.seed)
        self.model = LoopLM(model_cfg)
        self.teacher = check_distillation(self.model, cfg.teacher, cfg.distill_kl_weight if cfg.teacher else 0.0,
                                          cfg.distill_temperature, cfg.loop_scale_penalty, cfg.penalty_schedule)
        self.optimizer = AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.batches = Generator(cfg.seed + 1)
        self.step = 0
        self.history = {"step": [], "loss": [], "penalty_weight": [], "eval_step": [], "val_loss": [],
                        "val_loops": [], "val_kl_to_teacher": [], "seconds": 0.0}

    def train_step(self) -> float:
        cfg = self.cfg
        batch = self.data.get_batch("train", cfg.batch_size, cfg.block_size, self.batches)
        rec = train_step(self.model, self.optimizer, batch, self.step, cfg.steps, cfg.lr, cfg.warmup, cfg.clip,
                         cfg.beta, self.teacher, cfg.distill_kl_weight if self.teacher is not None else 0.0,
                         cfg.distill_temperature, cfg.loop_scale_penalty, cfg.penalty_schedule)
        self.step += 1
        h = self.history
        h["step"].append(self.step)
        h["loss"].append(rec["loss"])
        h["penalty_weight"].append(rec["penalty_weight"])
        return rec["loss"]

    @no_grad()
    def evaluate(self) -> dict:
        """Validation CE of the model as it generates (adaptive exits applied), its mean loops per token,
        and its KL to the teacher (if any), over eval_iters fixed batches."""
        cfg = self.cfg
        g = Generator(cfg.seed + 2)
        self.model.eval()
        ce, loops, kl = [], [], []
        for _ in range(cfg.eval_iters):
            x, y = self.data.get_batch("val", cfg.batch_size, cfg.block_size, g)
            out = self.model.run(x)
            ce.append(F.cross_entropy(out.logits.reshape(-1, out.logits.shape[-1]), y.reshape(-1)).item())
            loops.append(out.loops.mean())
            if self.teacher is not None:
                kl.append(kl_divergence(teacher_logits(self.teacher, x), out.logits.data).mean())
        self.model.train()
        return {"val_loss": float(np.mean(ce)), "val_loops": float(np.mean(loops)),
                "val_kl_to_teacher": float(np.mean(kl)) if kl else None}

    def run(self, out_dir=None, progress: bool = True) -> dict:
        cfg = self.cfg
        bar = _progress(total=cfg.steps, initial=self.step, enabled=progress and self.verbose)
        t0 = time.perf_counter()
        while self.step < cfg.steps:
            loss = self.train_step()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
            if self.step % cfg.eval_interval == 0 or self.step == cfg.steps:
                ev = self.evaluate()
                self.history["eval_step"].append(self.step)
                for k, v in ev.items():
                    self.history[k].append(v)
                kl = f", KL to teacher {ev['val_kl_to_teacher']:.4f}" if ev["val_kl_to_teacher"] is not None else ""
                self._log(f"step {self.step}: train loss {loss:.4f}, val loss {ev['val_loss']:.4f}, "
                          f"{ev['val_loops']:.2f} loops/token{kl}", bar)
                if out_dir is not None:
                    self.history["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save(Path(out_dir) / "ckpt")
        self.history["seconds"] += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        return self.history

    def _log(self, msg, bar=None):
        if self.verbose:
            (bar.write if bar is not None else print)(msg)

    # ---- checkpoints ------------------------------------------------------------------------------
    def save(self, ckpt_dir) -> Path:
        """Write OUT/ckpt atomically (a crash leaves the previous checkpoint intact)."""
        ckpt_dir = Path(ckpt_dir)
        tmp = ckpt_dir.with_name(ckpt_dir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_safetensors(self.model, tmp / "model.safetensors",
                         metadata={"tokenizer_chars": json.dumps(self.data.tokenizer.vocab)})
        opt = self.optimizer.state_dict()
        arrays = {}
        for i, s in opt["state"].items():
            arrays[f"{i}.exp_avg"], arrays[f"{i}.exp_avg_sq"] = s["exp_avg"], s["exp_avg_sq"]
        np.savez(tmp / "optimizer.npz", **arrays)
        meta = {"format": FORMAT, "version": VERSION, "step": self.step, "train_config": self.cfg.to_dict(),
                "optimizer_steps": {str(i): int(s["step"]) for i, s in opt["state"].items()},
                "rng": {"batches": self.batches.get_state(), "global": lt_random.default_generator.get_state()},
                "history": self.history}
        (tmp / "trainer.json").write_text(json.dumps(meta, indent=1))
        return replace_directory(tmp, ckpt_dir)

    @classmethod
    def resume(cls, ckpt_dir, steps: int | None = None, verbose: bool = True) -> "LoopTrainer":
        """Rebuild the run saved in `ckpt_dir` (optionally with a new total of `steps`)."""
        ckpt_dir = Path(ckpt_dir)
        for name in ("model.safetensors", "optimizer.npz", "trainer.json"):
            if not (ckpt_dir / name).is_file():
                raise ModelFormatError(f"{ckpt_dir} is not a complete LoopLM checkpoint: {name} is missing")
        meta = json.loads((ckpt_dir / "trainer.json").read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ModelFormatError(f"{ckpt_dir / 'trainer.json'} is not a {FORMAT} v{VERSION} state")
        cfg = LoopTrainConfig(**meta["train_config"])
        if steps is not None:
            cfg.steps = steps
        trainer = cls(cfg, verbose=verbose)
        trainer.model.load_state_dict(load_looplm(ckpt_dir / "model.safetensors").state_dict())
        with np.load(ckpt_dir / "optimizer.npz", allow_pickle=False) as z:
            state = {int(i): {"step": n, "exp_avg": z[f"{i}.exp_avg"], "exp_avg_sq": z[f"{i}.exp_avg_sq"]}
                     for i, n in meta["optimizer_steps"].items()}
        opt = trainer.optimizer.state_dict()
        trainer.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
        trainer.batches.set_state(meta["rng"]["batches"])
        lt_random.default_generator.set_state(meta["rng"]["global"])
        trainer.step, trainer.history = meta["step"], meta["history"]
        return trainer


def load_for_generation(path):
    """(model, tokenizer or None) from a `loop train` checkpoint directory or a LoopLM file."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.exists():
        raise ModelNotFoundError(f"{path}: no LoopLM checkpoint there (a loop train OUT/ckpt directory, or a "
                                f".safetensors / .npz / .gguf file)")
    model = load_looplm(file)
    chars = None
    if file.suffix == ".safetensors":
        from .io.safetensors import read_safetensors_header
        chars = read_safetensors_header(file)[1].get("tokenizer_chars")
    return model, CharTokenizer(json.loads(chars)) if chars else None


def check_config(cfg: LoopTrainConfig) -> None:
    presets.get(cfg.preset)
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.block_size < 2:
        raise ConfigError(f"steps, batch_size must be >= 1 and block_size >= 2, got {cfg.steps}, {cfg.batch_size}, "
                          f"{cfg.block_size}")
