"""The small GPT and its training loop, step for step against PyTorch.

Claims:
- From the same initial weights and the same batches (dropout off), litetorch's training loop
  (forward, cross-entropy, backward, gradient clipping, AdamW, warmup + cosine) gives PyTorch's
  loss at each of the first 100 steps within 1e-8 relative in float64, and the same weights after
  100 steps within 1e-8; in float32 the loss curves agree within 1e-4 relative. Learned, sinusoidal
  and rotary positions, pre- and post-norm, layer/RMS norm, GELU/SwiGLU/ReLU, tied and untied heads.
- A run stopped at a checkpoint and resumed gives the uninterrupted run's losses and weights bit
  for bit (dropout on, so the random streams must be restored too).
- Cached generation equals uncached generation, and greedy generation equals a nanoGPT-style loop
  on the PyTorch twin, also past block_size (where the window slides).
- Bad input (ids outside the vocabulary, a sequence longer than block_size, a checkpoint made for
  another configuration) fails with an error that names the values.
- A few seconds of training bring the validation loss below the unigram baseline.
"""
import json

import numpy as np
import pytest

import litetorch as lt
from litetorch.data import StoryDataset
from litetorch.errors import ContextLengthError, DTypeError, ModelFormatError, ShapeError, TokenizerError
from litetorch.models.gpt import GPT, GPTConfig
from litetorch.optim.lr_scheduler import warmup_cosine_lambda
from litetorch.train import Trainer, TrainConfig, main

try:
    import torch
    from reference.torch_gpt import TorchGPT, param_groups as torch_param_groups
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed: live parity comparison skipped")

SMALL = dict(n_layer=2, n_head=4, n_embd=32, block_size=16, batch_size=4, n_stories=200, steps=100, lr=3e-3,
             warmup_steps=10, eval_interval=1000, eval_iters=2, sample_tokens=40)


@pytest.fixture(scope="module")
def data():
    return StoryDataset(n_stories=200, seed=0)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny matrices: a second thread only adds synchronization, and stalls badly on a busy machine."""
    if torch is None:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def small(**kw) -> TrainConfig:
    return TrainConfig(**{**SMALL, **kw})


# --------------------------------------------------------------------------------------------
# Parity with PyTorch, step by step
# --------------------------------------------------------------------------------------------
def train_side_by_side(cfg: TrainConfig, data, steps: int):
    """litetorch's Trainer and the PyTorch twin, same weights, same batches. Returns both loss curves
    and the final state dicts."""
    trainer = Trainer(cfg, data=data, verbose=False)
    tdtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    twin = TorchGPT(trainer.model.config).to(tdtype)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in trainer.model.state_dict().items()})
    opt = torch.optim.AdamW(torch_param_groups(list(twin.named_parameters()), cfg.weight_decay), lr=cfg.lr,
                            betas=(cfg.beta1, cfg.beta2), eps=1e-8, foreach=False)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine_lambda(s, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio))
    batches = lt.Generator(cfg.seed + 1)  # the Trainer's batch stream, drawn again for torch
    ours, theirs = [], []
    for _ in range(steps):
        ours.append(trainer.train_step())
        x, y = data.get_batch("train", cfg.batch_size, cfg.block_size, batches)
        _, loss = twin(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), cfg.grad_clip, foreach=False)
        opt.step()
        sched.step()
        theirs.append(loss.item())
    return trainer, np.array(ours), np.array(theirs), trainer.model.state_dict(), twin.state_dict()


MODEL_VARIANTS = [  # every position kind, both norm placements, every MLP, both norms, tied and untied
    dict(positions="learned", prenorm=True, mlp="gelu"),
    dict(positions="learned", prenorm=False, mlp="swiglu"),
    dict(positions="sinusoidal", prenorm=True, mlp="swiglu"),
    dict(positions="sinusoidal", prenorm=False, mlp="gelu"),
    dict(positions="rope", prenorm=True, mlp="relu", norm="rms", bias=False, tie_weights=False),
    dict(positions="learned", prenorm=True, mlp="gelu_tanh", norm="rms", tie_weights=False),
]


def _ids(variants):
    return ["-".join(str(v) for v in d.values()) for d in variants]


@needs_torch
@pytest.mark.parametrize("variant", MODEL_VARIANTS, ids=_ids(MODEL_VARIANTS))
def test_float64_training_matches_torch_step_for_step(variant, data):
    trainer, ours, theirs, sd_ours, sd_theirs = train_side_by_side(small(dtype="float64", **variant), data, 100)
    rel = np.abs(ours - theirs) / np.abs(theirs)
    assert rel.max() <= 1e-8, f"step {rel.argmax()}: litetorch {ours[rel.argmax()]!r} vs torch {theirs[rel.argmax()]!r}"
    assert ours[-10:].mean() < ours[:10].mean() - 0.5, "the run should actually learn"
    assert max(trainer.history["grad_norm"]) > 1.0, "clipping should have been exercised"
    for name, value in sd_theirs.items():
        err = np.abs(sd_ours[name] - value.numpy()).max()
        assert err <= 1e-8, f"{name}: max abs difference {err:.2e} after 100 steps"


FLOAT32_VARIANTS = [MODEL_VARIANTS[0], MODEL_VARIANTS[3]]


@needs_torch
@pytest.mark.parametrize("variant", FLOAT32_VARIANTS, ids=_ids(FLOAT32_VARIANTS))
def test_float32_loss_curve_matches_torch(variant, data):
    trainer, ours, theirs, sd_ours, _ = train_side_by_side(small(dtype="float32", **variant), data, 100)
    rel = np.abs(ours - theirs) / np.abs(theirs)
    assert rel.max() <= 1e-4, f"step {rel.argmax()}: litetorch {ours[rel.argmax()]} vs torch {theirs[rel.argmax()]}"
    # ... and float32 stayed float32 all the way (NumPy-2 promotion would silently give float64)
    assert all(v.dtype == np.float32 for v in sd_ours.values())
    assert all(s["exp_avg"].dtype == np.float32 for s in trainer.optimizer.state.values())


@needs_torch
def test_generate_greedy_equals_a_nanogpt_loop_on_the_torch_twin(data):
    cfg = GPTConfig(vocab_size=data.vocab_size, block_size=16, n_layer=2, n_head=4, n_embd=32)
    model = GPT(cfg, generator=lt.Generator(3)).double()
    sd = model.state_dict()
    rng = np.random.default_rng(0)  # random weights give peaky logits (no near-ties for argmax)
    model.load_state_dict({k: v + 0.3 * rng.standard_normal(v.shape) for k, v in sd.items()})
    twin = TorchGPT(cfg).double()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    prompt = np.array([data.tokenizer.encode("Once upon"), data.tokenizer.encode("Tom was a")[:9]])
    results = lt.generate(model, None, prompt, max_new_tokens=30, slide=True)  # 9 + 30 > block_size: the window slides
    ours = np.array([list(row) + r.token_ids for row, r in zip(prompt, results)])
    idx = torch.from_numpy(prompt)
    with torch.no_grad():
        for _ in range(30):
            logits, _ = twin(idx[:, -cfg.block_size:])
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    np.testing.assert_array_equal(ours, idx.numpy())


def test_cached_generation_equals_uncached(data):
    cfg = GPTConfig(vocab_size=data.vocab_size, block_size=12, n_layer=2, n_head=2, n_embd=16, positions="sinusoidal")
    model = GPT(cfg, generator=lt.Generator(5)).double()
    prompt = data.tokenizer.encode("Mia saw")
    for temperature, top_k in ((0, None), (1.0, 5)):
        kw = dict(max_new_tokens=25, temperature=temperature, top_k=top_k, seed=1, slide=True)
        a = lt.generate(model, data.tokenizer, prompt, **kw)
        b = lt.generate(model, data.tokenizer, prompt, use_cache=False, **kw)
        assert a.token_ids == b.token_ids and len(a.token_ids) == 25 and a.text == b.text


def test_gpt_sampling_with_a_seed_is_reproducible_and_an_end_id_stops_it(data):
    """GPT generates through the shared loop: a seed replays a sampled run; an end id ends it."""
    cfg = GPTConfig(vocab_size=data.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16)
    model = GPT(cfg, generator=lt.Generator(2))
    prompt = data.tokenizer.encode("Tom")
    a = lt.generate(model, data.tokenizer, prompt, max_new_tokens=20, temperature=1.0, seed=7)
    b = lt.generate(model, data.tokenizer, prompt, max_new_tokens=20, temperature=1.0, seed=7)
    c = lt.generate(model, data.tokenizer, prompt, max_new_tokens=20, temperature=1.0)  # fresh randomness
    assert a.token_ids == b.token_ids and a.stats.seed == 7 and c.stats.seed is not None
    end = a.token_ids[5]
    d = lt.generate(model, data.tokenizer, prompt, max_new_tokens=20, temperature=1.0, seed=7, eos_token_id=end)
    first = a.token_ids.index(end)
    assert d.finish_reason == "eos" and d.token_ids == a.token_ids[:first + 1]


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, data):
    cfg = small(steps=24, warmup_steps=4, eval_interval=8, dropout=0.1)  # dropout: the global random stream matters too
    full = Trainer(cfg, data=data, verbose=False)
    full.run(out_dir=tmp_path / "full", progress=False)

    first = Trainer(cfg, data=data, verbose=False)
    first.run(until=13, out_dir=tmp_path / "part", progress=False)  # checkpoints at 8 and 13
    lt.manual_seed(12345)  # whatever happens in between must not matter
    resumed = Trainer.resume(tmp_path / "part" / "ckpt", cfg, data=data, verbose=False)
    assert resumed.step == 13
    resumed.run(progress=False)

    assert resumed.history["loss"] == full.history["loss"]  # exact float equality, all 24 steps
    assert resumed.history["lr"] == full.history["lr"]
    assert resumed.history["val_loss"][-1] == full.history["val_loss"][-1]
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert np.array_equal(a, b), name
    for p, q in zip(full.model.parameters(), resumed.model.parameters()):
        sa, sb = full.optimizer.state[p], resumed.optimizer.state[q]
        assert sa["step"] == sb["step"] and np.array_equal(sa["exp_avg_sq"], sb["exp_avg_sq"])


def test_checkpoint_from_another_config_is_refused_by_name(tmp_path, data):
    trainer = Trainer(small(steps=2, warmup_steps=1, eval_interval=2), data=data, verbose=False)
    trainer.run(out_dir=tmp_path, progress=False)
    with pytest.raises(ModelFormatError, match=r"n_embd: checkpoint 32, this run 48.*lr: checkpoint"):
        Trainer.resume(tmp_path / "ckpt", small(steps=2, warmup_steps=1, n_embd=48, lr=1e-3), data=data)
    # A config change hidden from the json (weights of another shape) is caught by the weights' shapes.
    meta = json.loads((tmp_path / "ckpt" / "trainer.json").read_text())
    meta["train_config"]["n_embd"] = meta["model_config"]["n_embd"] = 48
    (tmp_path / "ckpt" / "trainer.json").write_text(json.dumps(meta))
    with pytest.raises(lt.StateDictError, match=r"wte.weight: checkpoint \(\d+, 32\) vs model \(\d+, 48\)"):
        Trainer.resume(tmp_path / "ckpt", data=data)
    (tmp_path / "ckpt" / "optimizer.npz").unlink()
    with pytest.raises(ModelFormatError, match="optimizer.npz is missing"):
        Trainer.resume(tmp_path / "ckpt", data=data)


def test_command_line_trains_checkpoints_resumes_and_plots(tmp_path, capsys):
    args = ["--out", str(tmp_path), "--no-progress", "--n-layer", "1", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--n-stories", "60", "--steps", "6", "--eval-interval", "3", "--eval-iters", "1",
            "--sample-tokens", "20", "--warmup-steps", "2"]
    assert main(args + ["--stop-after", "3"]) == 0
    assert json.loads((tmp_path / "ckpt" / "trainer.json").read_text())["step"] == 3
    assert main(["--resume", str(tmp_path), "--no-progress", "--sample-tokens", "20"]) == 0
    out = capsys.readouterr().out
    assert "resumed" in out and "step 6/6" in out
    assert (tmp_path / "loss.png").stat().st_size > 1000 and (tmp_path / "samples.txt").exists()
    with pytest.raises(ModelFormatError, match="n_layer: checkpoint 1, this run 2"):
        main(["--resume", str(tmp_path), "--n-layer", "2"])


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8))


def test_ids_outside_the_vocabulary_are_named(tiny):
    # checks.py's words, the same as Llama's and LoopLM's for the same mistake
    with pytest.raises(TokenizerError, match=r"token id 10 in idx is out of range for a vocabulary of 10 tokens "
                                             r"\(valid: 0..9\)"):
        tiny(np.array([[1, 10]]))
    with pytest.raises(TokenizerError, match="token id -1"):
        tiny(np.array([[-1, 2]]))
    with pytest.raises(TokenizerError, match="token id 12 in targets"):
        tiny(np.array([[1, 2]]), np.array([[3, 12]]))
    with pytest.raises(DTypeError, match="idx must be integer token ids, got dtype float64"):
        tiny(np.array([[1.0, 2.0]]))


def test_a_sequence_longer_than_block_size_is_named(tiny):
    with pytest.raises(ContextLengthError, match="a sequence of 9 tokens exceeds the context length of 8"):
        tiny(np.zeros((2, 9), dtype=np.int64))
    cache = tiny.new_cache(1)
    tiny(np.zeros((1, 6), dtype=np.int64), cache=cache)
    with pytest.raises(ContextLengthError, match="6 cached \\+ 3 new tokens = 9 exceeds the context length of 8"):
        tiny(np.zeros((1, 3), dtype=np.int64), cache=cache)
    assert cache.length == 6  # refused before anything was written


def test_bad_shapes_are_named(tiny):
    with pytest.raises(ShapeError, match=r"\[B, T\].*shape \(3,\).*wrap one sequence"):
        tiny(np.array([1, 2, 3]))
    with pytest.raises(ShapeError, match=r"targets must have the shape of idx \(1, 2\), got \(1, 3\)"):
        tiny(np.array([[1, 2]]), np.array([[1, 2, 3]]))
    with pytest.raises(ShapeError, match="divisible"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="positions must be one of"):
        GPTConfig(positions="alibi")


# --------------------------------------------------------------------------------------------
# It learns
# --------------------------------------------------------------------------------------------
def test_a_short_run_beats_the_unigram_baseline(data):
    trainer = Trainer(small(steps=60, n_embd=48, block_size=32, batch_size=8, lr=1e-2), data=data, verbose=False)
    start = trainer.evaluate()
    trainer.run(progress=False)
    baseline = data.unigram_baseline()
    assert start > baseline  # an untrained model is worse than counting characters ...
    assert trainer.history["val_loss"][-1] < baseline - 0.5  # ... a few seconds of training beat it clearly


def test_train_gpt_trains_on_one_blas_thread_unless_told_otherwise():
    """Two BLAS threads stall each other on the classroom GPT's small matmuls on a busy machine (200 of
    800 steps in 10 minutes, against 168 s for all 800 on one), so one thread is the default."""
    from litetorch.train import _parser, main
    assert _parser().parse_args([]).threads == 1
    assert _parser().parse_args(["--threads", "0"]).threads == 0  # 0: NumPy's own setting
    with pytest.raises(SystemExit, match="--threads must be an integer >= 0"):
        main(["--threads", "-1"])
