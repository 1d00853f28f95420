# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 17 — Training a GPT
#
# Everything so far ran weights someone else trained. Here we train our own: a small GPT, on
# stories the project writes itself from a tiny grammar, with the AdamW + warmup + cosine loop
# every LLM is trained with. We look at the data, follow one step of backprop tensor by tensor,
# train litetorch and PyTorch side by side from the same weights (the curves coincide), read
# samples as the model learns, and profile a step.
# Lesson: `lessons/17-training-a-gpt.md`.

# %%
import cProfile
import pstats
import resource
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parent.parent if "__file__" in globals() else Path.cwd().parent
try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the PyTorch twin: tests/reference/torch_gpt.py
import litetorch as lt  # noqa: E402
from litetorch.data import StoryDataset, check_story, grammar_entropy, grammar_report  # noqa: E402
from litetorch.models.gpt import GPT, GPTConfig  # noqa: E402
from litetorch.optim.lr_scheduler import warmup_cosine_lambda  # noqa: E402
from litetorch.train import Trainer, TrainConfig, keep_freed_memory, plot_losses  # noqa: E402

OUT = ROOT / "notebooks" / "_out"
OUT.mkdir(parents=True, exist_ok=True)
T0 = time.perf_counter()

try:  # small matmuls, thousands of times: one BLAS thread is steady; with two, a busy machine stalls them
    from threadpoolctl import threadpool_limits  # (DESIGN.md §8). On this project's shared machine the

    threadpool_limits(1)  # notebook took 7 minutes with two threads, under one minute with one.
except ImportError:
    pass

try:
    import torch
    from reference.torch_gpt import TorchGPT, param_groups as torch_param_groups
    torch.set_num_threads(1)  # small matrices: one thread is fastest and steadiest
except ImportError:
    torch = None
    print("SKIP: PyTorch is not installed, so the side-by-side run prints a message and does nothing. "
          "(pip install torch==2.13.0)")

# %% [markdown]
# ## 1. The data: stories from a grammar
#
# 4000 stories, drawn from templates and word lists with a seeded generator (no download). The
# grammar has rules a checker can verify: a/an, he/she agreeing with the main character,
# "the kite" only after "a kite" was introduced. Characters are the tokens.

# %%
data = StoryDataset(n_stories=4000, seed=0)
print(data)
print(data.train_text[:420])
print("vocabulary:", repr("".join(data.tokenizer.vocab)))

broken = "Tom was a kind boy who lived near the park. She saw a old kite. They was happy."
for problem in check_story(broken):
    print("checker:", problem)

# %% [markdown]
# Two numbers frame everything that follows. The **unigram baseline** is the loss of a model
# that knows only how often each character occurs (the entropy of the character frequencies):
# a model must get below it to have learned anything about context. The **grammar's entropy**
# is the loss of a model that knows the grammar exactly: the average of -log p over every
# choice the generator made, per character. No model can go below it on average.

# %%
baseline = data.unigram_baseline()
floor = grammar_entropy(4000, seed=0)
print(f"unigram baseline: {baseline:.3f} nats/char;  grammar entropy (the floor): {floor:.3f} nats/char;  "
      f"uniform over {data.vocab_size} characters: {np.log(data.vocab_size):.3f}")

x, y = data.get_batch("train", batch_size=4, block_size=32, generator=lt.Generator(0))
print("x", x.shape, x.dtype, " y", y.shape)
print(repr(data.tokenizer.decode(x[0])))
print(repr(data.tokenizer.decode(y[0])), " <- y is x shifted by one: 32 next-character questions per row")

# %% [markdown]
# ## 2. The model
#
# A GPT-2-shaped model: token embedding, learned positions, pre-norm blocks (LayerNorm,
# attention, LayerNorm, GELU MLP), a final LayerNorm, and an output layer that shares its matrix
# with the token embedding (tied weights).

# %%
cfg = GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=2, n_head=4, n_embd=64)
model = GPT(cfg, generator=lt.Generator(0))
print(model)
for name, p in model.named_parameters():
    print(f"  {name:42s} {str(p.shape):12s} {p.data.size:7,d}")
print("lm_head.weight is wte.weight:", model.lm_head.weight is model.wte.weight)

# %% [markdown]
# ## 3. One step of backprop, tensor by tensor
#
# We keep every module's output (`retain_grad()`), run the forward and the loss, and call
# `backward()` once. Every activation then has a gradient of its own shape: dL/d(output of
# that module). The gradient enters at the logits, where it has a closed form,
#
#     dL/dlogits[b, t] = (softmax(logits[b, t]) - onehot(y[b, t])) / (B T),
#
# and walks back through ln_f, each block (MLP, then attention), to the embeddings.

# %%
acts = {}


def keep_outputs(module, names):
    """Wrap each named submodule's forward so its output keeps .grad after backward (lesson trick)."""
    mods = dict(module.named_modules())
    for name in names:
        m = mods[name]
        fn = m.forward

        def forward(*args, _fn=fn, _name=name, **kwargs):
            out = _fn(*args, **kwargs)
            acts[_name] = out.retain_grad()
            return out
        object.__setattr__(m, "forward", forward)


keep_outputs(model, ["wte", "wpe", "blocks.0.self_attn", "blocks.0.mlp", "blocks.0", "blocks.1.self_attn",
                     "blocks.1.mlp", "blocks.1", "ln_f", "lm_head"])
logits, loss = model(x, y)
loss.backward()
print(f"loss {loss.item():.4f}  (ln V = {np.log(cfg.vocab_size):.4f}: an untrained model is close to uniform)\n")
print(f"{'module output':20s} {'activation':14s} {'gradient':14s} {'|grad|':>10s}")
for name, a in reversed(list(acts.items())):  # backward order: the gradient flows from the logits down
    print(f"{name:20s} {str(a.shape):14s} {str(a.grad.shape):14s} {np.linalg.norm(a.grad):10.2e}")

B, T, V = logits.shape
p = np.exp(logits.data - logits.data.max(-1, keepdims=True))
p /= p.sum(-1, keepdims=True)
expected = (p - np.eye(V)[y]) / (B * T)
err = np.abs(acts["lm_head"].grad - expected).max()
print(f"\ndL/dlogits == (softmax - onehot) / (B T): max error {err:.1e}")
assert err < 1e-8

# %% [markdown]
# The parameters' gradients have their parameters' shapes. The tied matrix gets two
# contributions, added by autograd: one from the output layer (every row: all B T positions
# score every token) and a scatter-add from the embedding lookup (only the rows of tokens
# present in the batch). We check the sum against the two pieces computed by hand.

# %%
for name, p in model.named_parameters():
    print(f"  d{name:42s} {str(p.grad.shape):12s} |grad| {np.linalg.norm(p.grad):.2e}")
h = acts["ln_f"].data.reshape(B * T, -1)  # [BT, C]: the input of lm_head
from_head = acts["lm_head"].grad.reshape(B * T, V).T @ h  # [V, BT] @ [BT, C] -> [V, C]
from_lookup = np.zeros_like(from_head)
np.add.at(from_lookup, x.reshape(-1), acts["wte"].grad.reshape(B * T, -1))  # scatter-add by token id
err = np.abs(model.wte.weight.grad - (from_head + from_lookup)).max()
print(f"wte.grad == output-layer part + lookup part: max error {err:.1e}")
assert err < 1e-6

# %% [markdown]
# ## 4. The same training run in litetorch and PyTorch (float64)
#
# Same initial weights (copied by name), same batches, the same loop on both sides: forward,
# cross-entropy, backward, clip the global gradient norm to 1, AdamW (betas 0.9/0.95, decay on
# matrices only), warmup + cosine. In float64 the two loss curves agree to rounding error.

# %%
side = TrainConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, batch_size=8, steps=60, warmup_steps=6, lr=3e-3,
                   dtype="float64", eval_interval=10_000)
if torch is None:
    print("SKIP (no PyTorch): litetorch vs PyTorch training run")
else:
    trainer = Trainer(side, data=data, verbose=False)
    twin = TorchGPT(trainer.model.config).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in trainer.model.state_dict().items()})
    opt = torch.optim.AdamW(torch_param_groups(list(twin.named_parameters()), side.weight_decay), lr=side.lr,
                            betas=(side.beta1, side.beta2), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine_lambda(s, side.warmup_steps, side.steps, side.min_lr_ratio))
    batches = lt.Generator(side.seed + 1)  # the Trainer draws its batches from this stream too
    ours, theirs = [], []
    for step in range(side.steps):
        ours.append(trainer.train_step())
        xb, yb = data.get_batch("train", side.batch_size, side.block_size, batches)
        _, lt_loss = twin(torch.from_numpy(xb), torch.from_numpy(yb))
        opt.zero_grad()
        lt_loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), side.grad_clip)
        opt.step()
        sched.step()
        theirs.append(lt_loss.item())
    ours, theirs = np.array(ours), np.array(theirs)
    rel = np.abs(ours - theirs) / theirs
    sd = trainer.model.state_dict()
    pdiff = {k: np.abs(sd[k] - v.numpy()).max() for k, v in twin.state_dict().items()}
    worst = max(pdiff, key=pdiff.get)
    others = max(v for k, v in pdiff.items() if "k_proj.bias" not in k)
    print(f"max relative loss difference over {side.steps} steps: {rel.max():.1e}")
    print(f"max parameter difference: {pdiff[worst]:.1e} ({worst}); without the k biases: {others:.1e}")
    assert rel.max() < 1e-8 and others < 1e-8

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    a1.plot(ours, lw=2.5, alpha=0.6, label="litetorch")
    a1.plot(theirs, "k--", lw=1, label="PyTorch")
    a1.set_xlabel("step"), a1.set_ylabel("loss"), a1.legend(), a1.set_title("same run, two frameworks (float64)")
    a2.semilogy(np.maximum(rel, 1e-17), ".")
    a2.set_xlabel("step"), a2.set_ylabel("|difference| / loss"), a2.set_title("relative difference (1e-17: equal)")
    fig.tight_layout()
    fig.savefig(OUT / "17-loss-curves.png", dpi=110)

# %% [markdown]
# Why the k biases are left out of the parameter check: adding a bias b to every key adds
# q·b to all of a query's scores at once, and softmax ignores a shift, so that bias has a
# gradient of exactly zero. What autograd returns is rounding noise (~1e-17), and Adam divides
# by the noise's own running size, so the bias takes steps made of noise: different noise in
# each framework, different (tiny, ~1e-13) values. Every other parameter agrees to ~1e-15.
#
# ## 5. Training, and what the model writes along the way
#
# A smaller cousin of the default run (`python -m litetorch.train` trains 4 layers of width 96 on
# windows of 128 characters for 800 steps, about 3 minutes): 2 layers of width 64 on windows of
# 64, for 1200 steps. We sample at a few steps (temperature 0.8) and check the samples against
# the grammar.

# %%
run = TrainConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, batch_size=16, steps=1200, warmup_steps=30,
                  lr=1e-2, eval_interval=100, eval_iters=4)
trainer = Trainer(run, data=data, verbose=False)
t = time.perf_counter()
for stop in (0, 100, 400, 1200):
    trainer.run(until=stop, progress=False)
    text = trainer.sample(250, seed=1)
    loss = trainer.history["val_loss"][-1] if trainer.history["val_loss"] else trainer.evaluate()
    print(f"--- step {stop}: val loss {loss:.3f}; {grammar_report(text)}\n{text.strip()}\n")
print(f"{run.steps} steps in {time.perf_counter() - t:.0f} s")
assert trainer.history["val_loss"][-1] < baseline - 2.0
fig = plot_losses(trainer.history, OUT / "17-training.png", baseline=baseline, floor=floor,
                  title=f"2 layers, C=64, {run.steps} steps")
fig  # the library builds it without pyplot: a cell's last expression is how Jupyter shows it

# %% [markdown]
# ## 6. Where the time goes
#
# One training step of the default configuration (4 layers, C=96, 16 x 128 tokens), under
# cProfile. The matrix multiplications (forward and backward) dominate; the rest is elementwise
# work over [B, T, 4C] (the GELU) and [B, H, T, T] (attention) arrays.

# %%
prof_trainer = Trainer(TrainConfig(), data=data, verbose=False)
prof_trainer.train_step()  # warm-up
profiler = cProfile.Profile()
profiler.enable()
prof_trainer.train_step()
profiler.disable()
stats = pstats.Stats(profiler)
total = sum(v[2] for v in stats.stats.values())
rows = sorted(((v[2], f"{Path(k[0]).parent.name}/{Path(k[0]).name}:{k[1]} {k[2]}")
               for k, v in stats.stats.items()), reverse=True)[:12]
print(f"{'self time':>10}  share  function")
for tt, name in rows:
    print(f"{1e3 * tt:8.1f} ms  {100 * tt / total:4.0f}%  {name}")

fig, ax = plt.subplots(figsize=(8, 4))
ax.barh([n for _, n in rows][::-1], [1e3 * tt for tt, _ in rows][::-1])
ax.set_xlabel("self time in one training step (ms)")
ax.set_title("where a litetorch training step spends its time")
fig.tight_layout()
fig.savefig(OUT / "17-profile.png", dpi=110)

# %% [markdown]
# Time the profiler does not show: the kernel's. Each step allocates and frees the same
# megabyte-sized temporaries, and glibc's malloc returns freed large blocks to the operating
# system, so the next step page-faults them back in, zero-filled. `keep_freed_memory()` (called by
# `python -m litetorch.train`) fixes malloc's thresholds so freed blocks are reused.

# %%
def measure(runs=5):
    """One warm-up step, then `runs` steps -> medians of (wall seconds, kernel seconds, page faults) per step."""
    prof_trainer.train_step()  # (also lets the heap grow to its working size)
    rows = []
    for _ in range(runs):
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        prof_trainer.train_step()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        rows.append((time.perf_counter() - t, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
    return np.median(rows, axis=0)


before = measure()
tuned = keep_freed_memory()
after = measure()
for label, (wall, sys_t, faults) in (("malloc defaults", before), ("keep_freed_memory()", after)):
    print(f"{label:20s} {1e3 * wall:6.0f} ms/step, {1e3 * sys_t:5.0f} ms in the kernel, {faults:7,.0f} page faults")
print("(glibc only; tuned:", tuned, ")")
print("(median of 5 steps after one warm-up step; the times vary by machine and with its load)")

# %%
print(f"notebook wall time: {time.perf_counter() - T0:.0f} s")
