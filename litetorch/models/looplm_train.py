"""Training a LoopLM: Ouro's objective, distillation from a teacher, the annealed loop-scale penalty. Lesson 19.

Stage 1 of the design we were handed trains the looped student against a teacher:

    loss = CE  +  w tau^2 KL(softmax(teacher / tau) || softmax(student / tau))  +  lambda_t E_p[loops]

- CE: cross-entropy of the next token. With Ouro's exit gate (exit="gate") it is the expected CE under
  the exit distribution p(t), sum_t p(t) CE_t, minus beta H(p) to keep the exits from collapsing;
  otherwise the CE of the last iteration.
- KL: Hinton's distillation term: the student matches the teacher's next-token distribution softened by
  a temperature tau; tau^2 keeps its gradient on the scale of the CE's as tau grows. With the exit gate
  it is, like the CE, an expectation under p(t): every exit step is pulled towards the teacher with the
  weight it will be used with.
- Loop-scale penalty: lambda_t E_p[t], the expected number of loops (needs the exit gate: with a fixed
  loop count there is nothing for it to act on). Annealed: lambda_t grows from 0 at the first step to
  `loop_scale_penalty` at the last (`penalty_schedule` "linear" or "cosine"; "constant" keeps it), so the
  model first learns to use its depth, then learns to save it.

The teacher is any litetorch language model with the student's vocabulary (a LoopLM, a Llama, the
classroom GPT), or a path to a checkpoint (`load_teacher`). Its logits are computed without a graph.
`tests/reference/torch_looplm.py` holds the same objective written in torch; the loss and every
gradient agree in float64 to 1e-10 (tests/test_looplm_distill.py).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from .. import checks
from ..errors import ConfigError, ModelFormatError, ModelNotFoundError
from ..nn import functional as F
from ..ops import stack
from ..tensor import Tensor, no_grad
from .looplm import LoopLM, LoopOutput

SCHEDULES = ("constant", "linear", "cosine")


# lesson 19: begin (loss)
def looplm_loss(out: LoopOutput, targets, beta: float = 0.0, compute_penalty: float = 0.0,
                teacher_logits=None, temperature: float = 1.0, distill_weight: float = 0.0,
                ignore_index: int = -100) -> Tensor:
    """Mean over non-ignored tokens of

        sum_t p(t) [CE_t + w tau^2 KL_t]  -  beta H(p)  +  compute_penalty * E_p[t]   (exit-gated, steps=True)
        CE_R + w tau^2 KL_R                                                            (otherwise: the last step)

    with KL_t = KL(softmax(teacher / tau) || softmax(student_t / tau)), w = distill_weight.
    out: `model.run(ids, steps=True)`; targets [B, T] ints; teacher_logits [B, T, V] (constants).
    """
    t = np.asarray(targets.data if isinstance(targets, Tensor) else targets)
    valid = (t != ignore_index).reshape(-1)  # [N]
    n = float(max(valid.sum(), 1))
    V = out.logits.shape[-1]
    flat_t = t.reshape(-1)
    gated = out.exit_probs is not None and out.step_logits is not None
    step_logits = out.step_logits if gated else [out.logits]  # R x [B, T, V], or just the last
    per_step = [F.cross_entropy(lg.reshape(-1, V), flat_t, ignore_index=ignore_index, reduction="none")
                for lg in step_logits]  # R x [N]
    if teacher_logits is not None and distill_weight:
        tau = float(temperature)
        tl = np.asarray(teacher_logits.data if isinstance(teacher_logits, Tensor) else teacher_logits)
        tl = tl.reshape(-1, V).astype(out.logits.dtype) * (1.0 / tau)
        tz = tl - tl.max(-1, keepdims=True)
        t_logp = Tensor(tz - np.log(np.exp(tz).sum(-1, keepdims=True)))  # teacher log-probs [N, V] (constants)
        t_p = t_logp.exp()
        w = float(distill_weight) * tau * tau
        for i, lg in enumerate(step_logits):
            s_logp = (lg.reshape(-1, V) * (1.0 / tau)).log_softmax(dim=-1)  # [N, V]
            kl = (t_p * (t_logp - s_logp)).sum(dim=-1)  # [N]: KL(teacher || student_t)
            per_step[i] = per_step[i] + kl * w
    if gated:
        R = len(step_logits)
        p = out.exit_probs.reshape(-1, R)  # [N, R]
        per_tok = (p * stack(per_step, dim=-1)).sum(dim=-1)  # expectation under the exit distribution
        if beta:
            H = -(p * p.clamp(min=1e-12).log()).sum(dim=-1)  # entropy of p: keeps exits from collapsing
            per_tok = per_tok - H * float(beta)
        if compute_penalty:
            steps_ = Tensor(np.arange(1, R + 1, dtype=p.dtype))
            per_tok = per_tok + (p * steps_).sum(dim=-1) * float(compute_penalty)  # E_p[t]
    else:
        per_tok = per_step[0]
    return (per_tok * Tensor(valid.astype(per_tok.dtype))).sum() * (1.0 / n)
# lesson 19: end (loss)


# lesson 19: begin (penalty)
def penalty_weight(loop_scale_penalty: float, step: int, steps: int, schedule="linear") -> float:
    """lambda_t of the annealed loop-scale penalty at `step` (0-based) of `steps`.

    "linear": loop_scale_penalty * step / (steps - 1); "cosine": * (1 - cos(pi step / (steps - 1))) / 2
    (both 0 at the first step, the full weight at the last); "constant": the full weight throughout;
    a callable(step, steps) -> factor in [0, 1] for anything else."""
    frac = step / max(steps - 1, 1)
    if callable(schedule):
        factor = schedule(step, steps)
    elif schedule == "linear":
        factor = frac
    elif schedule == "cosine":
        factor = 0.5 * (1.0 - math.cos(math.pi * frac))
    elif schedule == "constant":
        factor = 1.0
    else:
        raise ConfigError(f"penalty_schedule must be one of {SCHEDULES} or a callable(step, steps), got {schedule!r}")
    return float(loop_scale_penalty) * float(factor)
# lesson 19: end (penalty)


def lr_scale(step: int, steps: int, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine from 1 down to 0.1 at the last step."""
    frac = step / max(steps - 1, 1)
    return min(1.0, (step + 1) / max(warmup, 1)) * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------
def load_teacher(teacher):
    """A teacher model: a litetorch model as it is, or a checkpoint path: a LoopLM (.gguf with
    general.architecture = looplm, .npz, .safetensors with a looplm config, a `litetorch loop train`
    checkpoint directory), a Llama (.gguf, or an HF directory), or the classroom GPT (a `litetorch
    train-gpt` checkpoint directory)."""
    from .base import CausalLM
    if isinstance(teacher, CausalLM):
        return teacher
    if not isinstance(teacher, (str, Path)):
        raise ConfigError(f"teacher must be a litetorch model (LoopLM, Llama, GPT) or a checkpoint path, "
                          f"got {type(teacher).__name__}")
    path = Path(teacher)
    if not path.exists():
        raise ModelNotFoundError(f"teacher checkpoint {path} does not exist")
    from .looplm_files import load_looplm
    if path.suffix in (".npz", ".safetensors"):
        return load_looplm(path)
    if path.suffix == ".gguf":
        from ..io.gguf import GGUFFile
        with GGUFFile(path) as f:
            arch = f.get("general.architecture")
        if arch == "looplm":
            return load_looplm(path)
    if path.is_dir() and (path / "model.safetensors").is_file():  # a litetorch checkpoint directory
        import json

        from ..io.safetensors import load_safetensors, read_safetensors_header
        meta = read_safetensors_header(path / "model.safetensors")[1]
        if "looplm_config" in meta:  # `litetorch loop train`
            return load_looplm(path / "model.safetensors")
        if meta.get("format") == "litetorch-gpt":  # `litetorch train-gpt` (lesson 17)
            from .gpt import GPT, GPTConfig
            model = GPT(GPTConfig(**json.loads(meta["config"])))
            model.load_state_dict(load_safetensors(path / "model.safetensors"))
            return model
    if path.suffix == ".gguf" or path.is_dir():
        from .loading import load_llama
        return load_llama(path)
    raise ModelFormatError(f"{path}: cannot tell what model this is (a .gguf, .npz, .safetensors file or a "
                           f"checkpoint directory is expected)")


@no_grad()
def teacher_logits(teacher, ids) -> np.ndarray:
    """The teacher's next-token logits [B, T, V] for ids [B, T], as a constant array (no graph)."""
    was_training = teacher.training
    teacher.eval()
    try:
        return teacher.logits(np.asarray(ids)).data
    finally:
        teacher.train(was_training)


# --------------------------------------------------------------------------------------------
# One step, and a small training loop
# --------------------------------------------------------------------------------------------
def train_step(model: LoopLM, optimizer, batch, step: int, steps: int, lr: float, warmup: int = 20, clip: float = 1.0,
               beta: float = 0.0, teacher=None, distill_kl_weight: float = 0.0, distill_temperature: float = 1.0,
               loop_scale_penalty: float = 0.0, penalty_schedule="linear") -> dict:
    """One AdamW step on `batch` = (ids [B, T], targets [B, T]) or (ids, targets, loops); returns the loss
    and the current penalty weight and learning rate."""
    from ..optim import clip_grad_norm_
    ids, tgt, loops = batch if len(batch) == 3 else (*batch, None)
    for g in optimizer.param_groups:
        g["lr"] = lr * lr_scale(step, steps, warmup)
    lam = penalty_weight(loop_scale_penalty, step, steps, penalty_schedule)
    t_logits = teacher_logits(teacher, ids) if teacher is not None and distill_kl_weight else None
    model.train()
    out = model.run(ids, loops=loops, steps=model.config.exit == "gate")
    loss = looplm_loss(out, tgt, beta=beta, compute_penalty=lam, teacher_logits=t_logits,
                       temperature=distill_temperature, distill_weight=distill_kl_weight)
    optimizer.zero_grad()
    loss.backward()
    if clip:
        clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return {"loss": float(loss.item()), "penalty_weight": lam, "lr": optimizer.param_groups[0]["lr"]}


def check_distillation(model: LoopLM, teacher, distill_kl_weight, distill_temperature, loop_scale_penalty,
                       penalty_schedule):
    """Every distillation argument checked before a step runs; returns the teacher model (or None)."""
    checks.number("distill_kl_weight", distill_kl_weight, lo=0.0)
    checks.number("distill_temperature", distill_temperature, lo=0.0, lo_open=True)
    checks.number("loop_scale_penalty", loop_scale_penalty, lo=0.0)
    if not callable(penalty_schedule):
        checks.choice("penalty_schedule", penalty_schedule, SCHEDULES)
    if loop_scale_penalty and model.config.exit != "gate":
        raise ConfigError(f"loop_scale_penalty penalises the expected number of loops under the exit gate's "
                          f"distribution; this model has exit={model.config.exit!r}, whose loop count the loss "
                          f"cannot change: use exit='gate' or loop_scale_penalty=0")
    if distill_kl_weight and teacher is None:
        raise ConfigError("distill_kl_weight > 0 needs a teacher= (a model or a checkpoint path)")
    if teacher is None:
        return None
    teacher = load_teacher(teacher)
    if teacher.vocab_size != model.vocab_size:
        raise ConfigError(f"the teacher's vocabulary has {teacher.vocab_size} tokens, the student's "
                          f"{model.vocab_size}: distillation compares distributions over the same tokens")
    return teacher


def fit(model: LoopLM, batches, steps: int, lr: float = 3e-3, weight_decay: float = 0.0, beta: float = 0.0,
        clip: float = 1.0, warmup: int = 20, log_every: int = 0, teacher=None, distill_kl_weight: float = 0.0,
        distill_temperature: float = 1.0, loop_scale_penalty: float = 0.0, penalty_schedule="linear") -> dict:
    """Train with AdamW + warmup/cosine on `batches()` -> (ids [B, T], targets [B, T]) or (ids, targets,
    loops): a batch may set its own loop count (a depth curriculum). With `teacher` (a model or a
    checkpoint path) and `distill_kl_weight` > 0 the loss gains the distillation term; with
    `loop_scale_penalty` the annealed penalty on the expected loop count. Returns a log."""
    from ..optim import AdamW
    teacher = check_distillation(model, teacher, distill_kl_weight, distill_temperature, loop_scale_penalty,
                                 penalty_schedule)
    opt = AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    t0, losses, lams = time.perf_counter(), [], []
    for step in range(steps):
        rec = train_step(model, opt, batches(), step, steps, lr, warmup, clip, beta, teacher, distill_kl_weight,
                         distill_temperature, loop_scale_penalty, penalty_schedule)
        losses.append(rec["loss"])
        lams.append(rec["penalty_weight"])
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"step {step:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - t0:.1f}s)")
    return {"losses": losses, "penalty_weights": lams, "seconds": time.perf_counter() - t0}
