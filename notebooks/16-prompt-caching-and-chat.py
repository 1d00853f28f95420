# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 16 — Prompt caching and chat: only the new tokens
#
# A chat model sees the *whole* conversation on every turn: system prompt, every earlier question
# and answer, then the new question. Recomputed from scratch, turn n costs the full conversation so
# far. But the KV cache from the previous turn already holds the keys and values of everything up
# to the last reply, and a causal model's earlier positions never change. So we keep the cache
# between turns, find the longest common prefix of token ids, and run only the rest.
# Lesson: `lessons/16-prompt-caching-and-chat.md`.

# %%
import os
import sys
import time
from pathlib import Path

import numpy as np

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
from litetorch.chat import ChatSession  # noqa: E402
from litetorch.generation import PromptCache, generate  # noqa: E402
from litetorch.models.loading import load_model  # noqa: E402

MODEL = Path(os.environ.get("LITETORCH_MODEL") or
             Path(os.environ.get("LITETORCH_HOME") or Path.home() / ".cache" / "litetorch")
             / "SmolLM2-135M-Instruct.Q4_1.gguf")
if not MODEL.is_file():
    print(f"SKIP: model file not found at {MODEL}.\n"
          "Set LITETORCH_MODEL or run `python -c 'from litetorch.io.hub import default_model_path as d; d()'`.")
    sys.exit(0)

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(exist_ok=True)
model, tok = load_model(MODEL)

# %% [markdown]
# ## A cached system prompt
#
# `PromptCache.from_prefix` runs a prefix through the model once and keeps its K/V together with
# its ids. `generate(..., cache=pc)` compares the new prompt's ids with the cached ids, crops the
# cache to the common prefix, and runs only what follows.

# %%
SYSTEM = ("You are Harbor, the assistant of Northwind Ferries. Ferries sail daily from 06:00 to 22:00. "
          "The crossing from Port Alder to Bramble Island takes forty minutes. Foot passengers pay twelve "
          "euros, children under twelve travel free, cars cost thirty-five euros including the driver. "
          "Pets are welcome on the open decks. Answer in one or two sentences.")
system_msg = [{"role": "system", "content": SYSTEM}]
system_ids = tok.apply_chat_template(system_msg, add_generation_prompt=False, tokenize=True)
pc = PromptCache.from_prefix(model, system_ids)
print(f"system prompt: {len(system_ids)} tokens cached, {pc}")

# (the second question also reuses "<|im_start|>user\n", which the first one left in the cache)
for question in ["How long is the crossing?", "Can I bring my dog?"]:
    msgs = system_msg + [{"role": "user", "content": question}]
    cached = generate(model, tok, msgs, max_new_tokens=12, cache=pc)
    scratch = generate(model, tok, msgs, max_new_tokens=12)          # a fresh cache: everything recomputed
    assert cached.token_ids == scratch.token_ids
    print(f"{question!r}: {cached.stats.prompt_tokens} prompt tokens, {cached.stats.reused_tokens} reused, "
          f"{cached.stats.prefill_tokens} run -> {cached.text!r}")

# %% [markdown]
# ## A chat, turn by turn
#
# `ChatSession` renders the whole conversation with the chat template every turn and passes it to
# `generate` with one PromptCache. We count what each turn ran through the model, and what it would
# have run without the cache (the full prompt, then one token per decode step).

# %%
chat = ChatSession(model, tok, system_prompt=SYSTEM, max_new_tokens=12)
turns = ["Hi! How long is the crossing to Bramble Island?", "What does it cost with a car?",
         "Can I bring my dog?", "Thanks, bye!"]
rows = []
for text in turns:
    t0 = time.perf_counter()
    r = chat.send(text)
    s = r.stats
    rows.append(dict(prompt=s.prompt_tokens, reused=s.reused_tokens, cached=s.forwarded_tokens,
                     uncached=s.prompt_tokens + s.decode_tokens, seconds=time.perf_counter() - t0,
                     kv=len(chat.cache)))
    print(f"turn {len(rows)}: prompt {s.prompt_tokens:3d} tok, reused {s.reused_tokens:3d}, ran {s.prefill_tokens:3d} "
          f"+ {s.decode_tokens} decode  ({rows[-1]['seconds']:.2f} s) -> {r.text!r}")
print("(the seconds are one run each and vary by machine and with its load; the token counts are exact)")

# the last turn, recomputed from scratch, gives the same tokens
fresh = generate(model, tok, chat.messages()[:-1], max_new_tokens=12)
assert fresh.token_ids == chat.last.token_ids
assert all(r["cached"] < r["uncached"] for r in rows[1:])

# %% [markdown]
# What did the last turn actually run? Everything the cache held is the previous prompt plus the
# previous reply (minus its final token, which was sampled but never fed back); the rest is the end
# of that reply, the new user turn and the assistant header:

# %%
last = chat.last
new_part = last.prompt_ids[last.stats.reused_tokens:]
print(repr(tok.decode(new_part)))

# %% [markdown]
# ## KV-cache memory: bytes per token
#
# Every cached position holds one key and one value vector per KV head per layer:
#
#     bytes per token = 2 (K and V) · n_layers · n_kv_heads · head_dim · 4 (float32)

# %%
c = model.config
per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4
print(f"SmolLM2-135M: 2 * {c.num_hidden_layers} * {c.num_key_value_heads} * {c.head_dim} * 4 = {per_token} bytes "
      f"= {per_token / 1024:.1f} KiB per token; {c.max_position_embeddings} tokens = "
      f"{per_token * c.max_position_embeddings / 2**20:.0f} MiB")
assert per_token == pc.bytes_per_token == chat.cache.bytes_per_token == 46080
print(f"this chat holds {len(chat.cache)} tokens = {len(chat.cache) * per_token / 2**20:.1f} MiB "
      f"(allocated: {chat.cache.nbytes / 2**20:.1f} MiB)")

shapes = {  # (layers, kv heads, head dim), from the models' config files
    "SmolLM2-135M (GQA 9/3)": (30, 3, 64),
    "TinyLlama-1.1B (GQA 32/4)": (22, 4, 64),
    "Llama-3-8B (GQA 32/8)": (32, 8, 128),
    "Llama-2-7B (MHA 32/32)": (32, 32, 128),
}
for name, (L, Hkv, Dh) in shapes.items():
    print(f"  {name:<28} {2 * L * Hkv * Dh * 4 / 1024:7.0f} KiB per token")

# %%
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
n = np.arange(1, len(rows) + 1)
ax[0].bar(n - 0.2, [r["uncached"] for r in rows], width=0.4, label="no prompt cache")
ax[0].bar(n + 0.2, [r["cached"] for r in rows], width=0.4, label="prompt cache")
for i, r in zip(n, rows):
    ax[0].text(i + 0.2, r["cached"], str(r["cached"]), ha="center", va="bottom", fontsize=8)
    ax[0].text(i - 0.2, r["uncached"], str(r["uncached"]), ha="center", va="bottom", fontsize=8)
ax[0].set(xlabel="turn", ylabel="tokens run through the model", title="work per chat turn", xticks=n)
ax[0].legend()
ctx = np.array([512, 1024, 2048, 4096, 8192])
for name, (L, Hkv, Dh) in shapes.items():
    ax[1].plot(ctx, 2 * L * Hkv * Dh * 4 * ctx / 2**20, "o-", label=name)
ax[1].set(xscale="log", yscale="log", xlabel="cached tokens", ylabel="MiB (float32)", title="KV-cache memory")
ax[1].set_xticks(ctx, [str(x) for x in ctx])
ax[1].minorticks_off()
ax[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "16-prompt-cache.png", dpi=110)
print("saved", OUT / "16-prompt-cache.png")
