# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 26 — Hybrid models: Qwen3-Next (Gated DeltaNet + gated attention + MoE)
#
# Qwen3-Next stacks three Gated DeltaNet layers (a fixed-size state, lessons 23-24) for every gated
# attention layer (a KV cache that grows), with a sparse MoE (lesson 25) in every layer. We build the
# layout, check tiny random models against HF's Qwen3-Next and Qwen3-MoE (logits and 20 greedy tokens),
# look inside the mixed cache, price the 80B model on paper (parameters, decode memory against
# context), and train a small hybrid on the project's generated stories, with and without the
# load-balancing loss.
# Lesson: `lessons/26-hybrid-models.md`; code: `litetorch/models/qwen3.py`, `litetorch/nn/hybrid_cache.py`.

# %%
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
import matplotlib.pyplot as plt  # noqa: E402

import litetorch as lt  # noqa: E402
import litetorch.nn.functional as F  # noqa: E402
from litetorch import nn, optim  # noqa: E402
from litetorch.data import StoryDataset  # noqa: E402
from litetorch.errors import CacheError  # noqa: E402
from litetorch.generation import PromptCache, generate  # noqa: E402
from litetorch.models import Qwen3Moe, Qwen3MoeConfig, Qwen3Next, Qwen3NextConfig, load_hf  # noqa: E402
from litetorch.models.costs import decode_state_bytes, parameter_counts  # noqa: E402
from litetorch.models.qwen3_io import load_gguf, save_gguf  # noqa: E402
from litetorch.runtime import Runtime  # noqa: E402
from litetorch.threads import blas_threads  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)
TMP = Path(tempfile.mkdtemp(prefix="lt26-"))  # checkpoints written here, never into the repository
t_start = time.perf_counter()

try:
    import torch
    from transformers import Qwen3MoeConfig as HFMoeConfig
    from transformers import Qwen3MoeForCausalLM, Qwen3NextForCausalLM
    from transformers import Qwen3NextConfig as HFNextConfig
except ImportError:
    torch = None
    print("SKIP: PyTorch/transformers are not installed, so the cells comparing with HF print a message "
          "and do nothing. (pip install torch==2.13.0 transformers)")

# %% [markdown]
# ## 1. The layout
#
# `Qwen3NextConfig()` has HF's defaults, which are Qwen3-Next-80B-A3B's shapes. Its `layer_types`
# come from `full_attention_interval = 4`: every fourth layer is (gated) attention, the others Gated
# DeltaNet. Every layer's MLP is a 512-expert MoE with 10 routed experts and one shared expert.

# %%
big = Qwen3NextConfig()
pattern = "".join("A" if t == "full_attention" else "D" for t in big.layer_types)
print(f"Qwen3-Next-80B-A3B: {big.num_hidden_layers} layers: {pattern}  (D = Gated DeltaNet, A = gated attention)")
print(f"  attention: {big.num_attention_heads} query heads, {big.num_key_value_heads} K/V heads of Dh = "
      f"{big.head_dim}, RoPE on the first {big.rotary_dim} dims, output gate")
print(f"  DeltaNet:  {big.linear_num_key_heads} key heads (Dk {big.linear_key_head_dim}), "
      f"{big.linear_num_value_heads} value heads (Dv {big.linear_value_head_dim}), conv kernel "
      f"{big.linear_conv_kernel_dim}")
print(f"  MoE:       E = {big.num_experts}, k = {big.num_experts_per_tok}, expert hidden "
      f"{big.moe_intermediate_size}, shared expert {big.shared_expert_intermediate_size}, in "
      f"{sum(big.is_moe_layer(i) for i in range(big.num_hidden_layers))} of {big.num_hidden_layers} layers")
assert pattern == "DDDA" * 12

# A tiny hybrid with the same structure (4 layers: D D D A), one dense layer (mlp_only_layers=[1]):
TINY_NEXT = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
                 linear_key_head_dim=8, linear_value_head_dim=8, num_experts=6, num_experts_per_tok=2,
                 moe_intermediate_size=16, shared_expert_intermediate_size=24, max_position_embeddings=2048,
                 mlp_only_layers=[1])
TINY_MOE = dict(vocab_size=97, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16,
                max_position_embeddings=2048)
lt.manual_seed(0)
print(Qwen3Next(Qwen3NextConfig(**TINY_NEXT)).model.layers)

# %% [markdown]
# ## 2. Parity with HF transformers
#
# A tiny random HF model (every weight random: norms away from their identity, a decisive router,
# decays anywhere in HF's range), saved with `save_pretrained` (which writes the experts one at a time),
# loaded with `lt.models.load_hf` (which stacks them). We compare all logits in float32 and 20 greedy
# tokens: litetorch's cached generation loop against HF's `generate(do_sample=False)`.

# %%
SEED = 0
print("seed", SEED)


def randomize_hf(model, seed, zero_centered):
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if "norm" in name:
                value = (0.0 if zero_centered and "linear_attn.norm" not in name else 1.0) + 0.3 * rng.standard_normal(shape)
            elif name.endswith("A_log"):
                value = np.log(rng.uniform(0.05, 8.0, shape))
            elif name.endswith("dt_bias"):
                value = rng.uniform(-1.0, 1.0, shape)
            elif name.endswith("mlp.gate.weight"):
                value = rng.normal(0.0, 2.0 / np.sqrt(shape[-1]), shape)
            elif "embed_tokens" in name:
                value = rng.standard_normal(shape)
            else:
                value = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
            p.copy_(torch.from_numpy(value))
    return model.eval()


parity = {}
if torch is None:
    print("SKIP: parity with HF")
else:
    ids = np.random.default_rng(SEED).integers(0, 97, (2, 13))
    for name, HFModel, HFConfig, kw in (("Qwen3-Next", Qwen3NextForCausalLM, HFNextConfig, TINY_NEXT),
                                        ("Qwen3-MoE", Qwen3MoeForCausalLM, HFMoeConfig, TINY_MOE)):
        torch.manual_seed(SEED)
        hf = randomize_hf(HFModel(HFConfig(**kw)), SEED, zero_centered=name == "Qwen3-Next")
        hf.save_pretrained(TMP / name)
        ours = load_hf(TMP / name)
        with torch.no_grad():
            ref = hf(torch.from_numpy(ids)).logits.numpy()
            hf_tokens = hf.generate(torch.from_numpy(ids[:1]), max_new_tokens=20, do_sample=False, min_new_tokens=20,
                                    pad_token_id=0, eos_token_id=None)[0, ids.shape[1]:].tolist()
        err = np.abs(ours(ids).data - ref).max()
        tokens = generate(ours, None, ids[0].tolist(), max_new_tokens=20).token_ids
        parity[name] = (err, np.abs(ref).max(), tokens == hf_tokens)
        print(f"{name}: {type(ours).__name__}, logits max |ours - HF| = {err:.2e} (logits up to {np.abs(ref).max():.1f}); "
              f"20 greedy tokens identical: {tokens == hf_tokens}")
        assert err <= 1e-4 and tokens == hf_tokens

# %% [markdown]
# ## 3. Inside the mixed cache
#
# `new_cache` gives each layer what its token mixer needs: a KVCache for the attention layer, a
# DeltaNetCache for each DeltaNet layer. After 10 and after 1,000 tokens, the DeltaNet layers hold the
# same bytes; the attention layer's K/V holds 100 times more rows.

# %%
lt.manual_seed(1)
tiny = Qwen3Next(Qwen3NextConfig(**TINY_NEXT))
rng = np.random.default_rng(1)
for n in (10, 1000):
    cache = tiny.new_cache(1, 1000)
    with lt.no_grad():
        tiny(rng.integers(0, 97, (1, n)), cache=cache)
    used = [c.nbytes if isinstance(c, nn.DeltaNetCache) else c.bytes_per_token * len(c) for c in cache]
    print(f"after {n:4d} tokens: bytes in use per layer {used}  (layer kinds {repr(cache).split()[0][19:]})")
try:
    cache.crop(500)
except CacheError as e:
    print("crop(500) ->", type(e).__name__ + ":", str(e)[:110], "...")
print("rewindable:", cache.rewindable, "| Qwen3-MoE's cache rewindable:",
      Qwen3Moe(Qwen3MoeConfig(**TINY_MOE)).new_cache(1, 8).rewindable)

# Chunked prefill is exact (the delta rule continues from the cached state): one call = chunks of 7 = token by token
tiny64 = tiny.to(np.float64)
ids = rng.integers(0, 97, (1, 40))
with lt.no_grad():
    full = tiny64(ids).data
runs = {c: PromptCache(tiny64, 40, runtime=Runtime(prefill_chunk=c, decode_threads=None)).extend(ids[0], logits_to_keep=0)
        for c in (None, 7, 1)}
errs = {c: np.abs(r - full).max() for c, r in runs.items()}
print("float64, max |runtime - one uncached call| by prefill_chunk:", {str(c): f"{e:.1e}" for c, e in errs.items()})
assert max(errs.values()) <= 1e-10
tiny.to(np.float32)

# %% [markdown]
# ## 4. Memory against context, and the cost table
#
# Measured on the tiny model (`cache.nbytes` after allocating `max_len` positions) and computed on paper
# by `models/costs.py` for the 80B model in bf16 (2 bytes a number), next to an all-attention model of
# the same shape (every layer attention) — what the DeltaNet layers save.

# %%
for n in (16, 256, 2048):
    measured = tiny.new_cache(1, n).nbytes
    paper = decode_state_bytes(tiny.config, n)["total"]
    print(f"tiny Qwen3-Next, float32, {n:5d} positions: measured {measured:9,d} B, on paper {paper:9,d} B")
    assert measured == paper

all_attention = dataclasses.replace(big, layer_types=["full_attention"] * big.num_hidden_layers)
contexts = np.array([1 << p for p in range(10, 19)])  # 1K .. 256K
rows = []
for name, cfg in (("Qwen3-Next-80B-A3B (36 D + 12 A)", big), ("same shape, 48 attention layers", all_attention)):
    mem = [decode_state_bytes(cfg, int(n), dtype=np.float16)["total"] for n in contexts]  # 2-byte numbers (bf16)
    rows.append((name, mem))
    d = decode_state_bytes(cfg, 32768, dtype=np.float16)
    print(f"{name}: K/V {d['kv_per_token']:,} B per token, DeltaNet states {d['recurrent'] / 2**20:.1f} MiB fixed; "
          f"at 32K {d['total'] / 2**30:.2f} GiB, at 256K {mem[-1] / 2**30:.2f} GiB")

fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
for name, mem in rows:
    ax.plot(contexts, np.array(mem) / 2**20, marker="o", label=name)
state = decode_state_bytes(big, 1, dtype=np.float16)["recurrent"] / 2**20
ax.plot(contexts, np.full(len(contexts), state), ls="--", color="gray", label="of which the 36 DeltaNet states")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("context (tokens)")
ax.set_ylabel("decode memory per sequence (MiB, bf16)")
ax.set_title("K/V grows with the context; a DeltaNet state does not")
ax.legend(fontsize=8)
fig.savefig(OUT / "26-memory-vs-context.png", dpi=110)
print("saved", OUT / "26-memory-vs-context.png")

print(f"\n{'model':<34}{'total':>16}{'active':>16}{'active w/o emb.':>17}")
for name, cfg in (("Qwen3-Next-80B-A3B", big), ("Qwen3-MoE defaults (15B-A2B)", Qwen3MoeConfig()),
                  ("tiny Qwen3-Next (above)", tiny.config)):
    c = parameter_counts(cfg)
    print(f"{name:<34}{c['total']:>16,}{c['active']:>16,}{c['active_without_embeddings']:>17,}")
assert parameter_counts(tiny.config)["total"] == tiny.num_parameters()
if torch is not None:
    with torch.device("meta"):
        hf_total = sum(p.numel() for p in Qwen3NextForCausalLM(HFNextConfig()).parameters())
    print(f"HF Qwen3NextForCausalLM(Qwen3NextConfig()) on the meta device: {hf_total:,} parameters")
    assert hf_total == parameter_counts(big)["total"]

# %% [markdown]
# ## 5. Training a small hybrid on stories
#
# Four layers (D D D A), MoE with E = 8, k = 2 and a shared expert in every layer, tied embeddings;
# character-level stories from `StoryDataset`. Weights start as HF initializes them (normal, std 0.02)
# except the router (litetorch's default, U(±1/√C), so routing starts decided). Twice from the same
# weights and batches: on the language-model loss alone, and with α × `load_balancing_loss` added.
# We count, on a fixed validation batch, how many of its 2 × 2048 routing slots each expert gets.

# %%
DATA_SEED, INIT_SEED, BATCH_SEED, STEPS, ALPHA = 0, 0, 1, 150, 0.05
print(f"seeds: data {DATA_SEED}, weights {INIT_SEED}, batches {BATCH_SEED}; {STEPS} AdamW steps (lr 3e-3) "
      f"of 12 x 64 characters; alpha {ALPHA}")
ds = StoryDataset(n_stories=2000, seed=DATA_SEED)
train_cfg = Qwen3NextConfig(vocab_size=ds.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                            num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2,
                            linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
                            num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                            shared_expert_intermediate_size=64, max_position_embeddings=256, tie_word_embeddings=True)


def initial_model():
    lt.manual_seed(INIT_SEED)
    model = Qwen3Next(train_cfg)
    rng = np.random.default_rng(INIT_SEED)
    sd = model.state_dict()
    for k, v in sd.items():  # HF's init (normal, std 0.02) for every matrix but the router and the conv
        if v.ndim >= 2 and "conv1d" not in k and not k.endswith("mlp.gate.weight"):
            sd[k] = rng.normal(0.0, 0.02, v.shape).astype(np.float32)
    model.load_state_dict(sd)
    return model


x_val, y_val = ds.get_batch("val", 32, 64, np.random.default_rng(99))


def expert_load(model):
    """Routing slots per expert on the validation batch: [layers, E] (each row sums to 2 x 2048)."""
    with lt.no_grad():
        _, router_logits = model(x_val, output_router_logits=True)
    return np.stack([nn.tokens_per_expert(np.argsort(-l.data, axis=-1, kind="stable")[:, :2], 8)
                     for l in router_logits])


def train(alpha):
    model = initial_model()
    opt = optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    rng, history, t0 = np.random.default_rng(BATCH_SEED), [], time.perf_counter()
    with blas_threads(1):  # small matmuls: one BLAS thread is fastest, and immune to a busy second core
        for step in range(STEPS):
            x, y = ds.get_batch("train", 12, 64, rng)
            logits, router_logits = model(x, output_router_logits=True)
            loss = F.cross_entropy(logits.reshape(-1, ds.vocab_size), y.reshape(-1))
            aux = nn.load_balancing_loss(router_logits, 8, 2)
            opt.zero_grad()
            (loss + alpha * aux).backward()
            opt.step()
            history.append((loss.item(), aux.item()))
        with lt.no_grad():
            val = F.cross_entropy(model(x_val).reshape(-1, ds.vocab_size), y_val.reshape(-1)).item()
    seconds = time.perf_counter() - t0
    history = np.array(history)
    print(f"alpha {alpha}: train loss {history[0, 0]:.3f} -> {history[-20:, 0].mean():.3f} (mean of the last 20), "
          f"val {val:.3f} nats/char, aux loss {history[:20, 1].mean():.3f} -> {history[-20:, 1].mean():.3f}, "
          f"{seconds:.0f} s")
    return model, history, val


def show_load(title, load):
    cv = load.std(axis=1) / load.mean(axis=1)
    print(f"{title}: tokens per expert (rows = MoE layers 0-3), std/mean per layer {np.round(cv, 2)}")
    print(load)
    return cv


load_init = expert_load(initial_model())
cv_init = show_load("initial router", load_init)
model_plain, hist_plain, val_plain = train(0.0)
model_aux, hist_aux, val_aux = train(ALPHA)
load_plain, load_aux = expert_load(model_plain), expert_load(model_aux)
cv_plain = show_load("trained on the LM loss alone", load_plain)
cv_aux = show_load(f"trained with + {ALPHA} x aux loss", load_aux)
print(f"unigram baseline {ds.unigram_baseline():.3f} nats/char; mean std/mean: init {cv_init.mean():.2f}, "
      f"LM loss alone {cv_plain.mean():.2f}, with aux {cv_aux.mean():.2f}")
assert hist_plain[-20:, 0].mean() < 0.25 * hist_plain[0, 0] and val_plain < 0.5 * ds.unigram_baseline()  # it learns
assert hist_aux[-20:, 1].mean() < hist_plain[-20:, 1].mean()  # the auxiliary loss is what the second run lowers

prompt_text = "Once upon a time"
out = generate(model_aux, ds.tokenizer, prompt_text, max_new_tokens=120, raw=True, seed=0, temperature=0.0)
print(repr(prompt_text + out.text))

fig, axes = plt.subplots(1, 4, figsize=(15, 3.6), layout="constrained")
for hist, label in ((hist_plain, "LM loss alone"), (hist_aux, f"+ {ALPHA} x aux loss")):
    axes[0].plot(hist[:, 0], label=label)
axes[0].axhline(ds.unigram_baseline(), color="gray", ls=":", label="unigram baseline")
axes[0].set_yscale("log")
axes[0].set_xlabel("step")
axes[0].set_title("training loss (nats/char)", fontsize=10)
axes[0].legend(fontsize=8)
vmax = max(load_init.max(), load_plain.max(), load_aux.max())
for ax, (title, load) in zip(axes[1:], (("initial router", load_init), ("trained, LM loss alone", load_plain),
                                          (f"trained, + {ALPHA} x aux loss", load_aux))):
    im = ax.imshow(load, cmap="viridis", vmin=0, vmax=vmax)
    ax.set_title(f"{title}\nstd/mean {np.mean(load.std(1) / load.mean(1)):.2f}", fontsize=10)
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
fig.colorbar(im, ax=axes[1:], shrink=0.8, label="routing slots (of 4096)")
fig.savefig(OUT / "26-training.png", dpi=110)
print("saved", OUT / "26-training.png")

# %% [markdown]
# ## 6. A GGUF round trip
#
# The trained model written with llama.cpp's qwen3next tensor names and keys, read back: the same logits,
# bit for bit (the reader recovers A_log and the zero-centred norm weights exactly; see `qwen3_io.py`).

# %%
path = save_gguf(model_aux, TMP / "hybrid.gguf")
again = load_gguf(path)
with lt.no_grad():
    same = np.array_equal(again(x_val[:2]).data, model_aux(x_val[:2]).data)
print(f"{path.name}: {path.stat().st_size:,} bytes; logits identical after the round trip: {same}")
assert same
print(f"notebook ran in {time.perf_counter() - t_start:.0f} s")
