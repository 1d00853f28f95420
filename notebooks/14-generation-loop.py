# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 14 — The generation loop: from one forward pass to `generate`
#
# A language model maps ids `[1, T]` to logits `[1, T, V]`: a score for every possible next token
# at every position. Generating text is a loop around that: take the scores at the last position,
# pick a token, append it, run again. We write the loop out by hand for three tokens (no cache),
# then with the KV cache (prefill + one-token decode steps), and check both against
# `litetorch.generate`. Lesson: `lessons/14-generation-loop.md`.

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
import litetorch as lt  # noqa: E402
from litetorch import threads  # noqa: E402
from litetorch.generation import generate  # noqa: E402
from litetorch.runtime import Runtime  # noqa: E402
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

t0 = time.perf_counter()
model, tok = load_model(MODEL)
print(f"loaded in {time.perf_counter() - t0:.1f} s:", model.config)

# %% [markdown]
# ## The prompt
#
# A chat model reads its conversation through the chat template (lesson 13); the prompt ends with
# the assistant header, so the next tokens are the reply.

# %%
messages = [{"role": "user", "content": "What is the capital of France?"}]
prompt_ids = tok.apply_chat_template(messages, tokenize=True)
print(len(prompt_ids), "prompt tokens, ending with", [tok.id_to_token(i) for i in prompt_ids[-4:]])

# %% [markdown]
# ## Three tokens by hand, no cache
#
# Every step runs the *whole* sequence through the model: embed → 30 decoder blocks → final norm →
# `lm_head` → logits. Only the last position's logits matter for the next token, so we normalize
# and project just that one row. Greedy decoding takes the argmax.

# %%
ids = list(prompt_ids)
hand_tokens = []
with lt.no_grad():
    for step in range(3):
        x = model.model.embed_tokens(np.array([ids]))     # [1, T] -> [1, T, C]
        for layer in model.model.layers:                    # 30 x (attention + SwiGLU), residual stream
            x = layer(x)                                     # [1, T, C] -> [1, T, C]
        x = model.model.norm(x[:, -1:])                      # last position only: [1, 1, C]
        logits = model.lm_head(x).data[0, -1]                # [1, 1, C] -> [V]
        next_id = int(np.argmax(logits))                     # greedy
        print(f"step {step}: ran {len(ids)} tokens -> id {next_id:5d} {tok.decode([next_id])!r}"
              f"  (logit {logits[next_id]:.2f}, runner-up {np.sort(logits)[-2]:.2f})")
        ids.append(next_id)
        hand_tokens.append(next_id)

# %% [markdown]
# ## The same three tokens with a KV cache
#
# The keys and values of earlier tokens never change (lesson 09), so each layer keeps them:
# **prefill** runs the prompt once and fills the cache, then each **decode** step runs only the one
# new token, which attends to everything cached.

# %%
cache = model.new_cache(batch_size=1, max_len=len(prompt_ids) + 3)   # one KVCache per layer
cached_tokens = []
with lt.no_grad():
    new = list(prompt_ids)                                  # prefill: the whole prompt once
    for step in range(3):
        x = model.model.embed_tokens(np.array([new]))        # [1, T_new, C]
        for i, layer in enumerate(model.model.layers):
            x = layer(x, cache=cache[i])                     # appends T_new K/V rows to layer i's cache
        logits = model.lm_head(model.model.norm(x[:, -1:])).data[0, -1]   # [V]
        next_id = int(np.argmax(logits))
        print(f"step {step}: ran {len(new):2d} token(s), cache now holds {cache.length} positions -> {next_id}")
        cached_tokens.append(next_id)
        new = [next_id]                                      # decode: only the new token

assert cached_tokens == hand_tokens
print("cached == uncached:", cached_tokens)

# %% [markdown]
# ## `generate` does exactly this
#
# `litetorch.generate` is that loop plus the details: sampling options, stopping on EOS or a stop
# string, streaming text that never splits a UTF-8 character, and a prompt cache. Greedy
# (temperature 0) must give the hand loop's tokens.

# %%
r = generate(model, tok, messages, max_new_tokens=3)
print(r.token_ids, repr(r.text), r.finish_reason)
assert r.token_ids == hand_tokens
assert generate(model, tok, messages, max_new_tokens=3, use_cache=False).token_ids == hand_tokens

# %% [markdown]
# ## Stopping: EOS
#
# The model ends its reply with `<|im_end|>`, the tokenizer's EOS (id 2). The loop stops there;
# the EOS id is in `token_ids` (HF's `generate` returns it too) but not in the text.

# %%
r = generate(model, tok, messages, max_new_tokens=32)
print(repr(r.text), r.finish_reason, r.token_ids[-1], tok.id_to_token(r.token_ids[-1]))
assert r.finish_reason == "eos" and r.token_ids[-1] in tok.eos_token_ids and "Paris" in r.text

# %% [markdown]
# ## Why decode tokens/s excludes the prompt
#
# The prompt runs as one batch of T tokens: big matrix-matrix products, tens to hundreds of
# tokens per second. Each decode step runs one token: matrix-*vector* products that must read every
# weight once per token. Mixing them in one number ("40 tokens in 2 s") says more about the prompt
# length than about the model, so `GenerationStats` reports them apart:

# %%
print(r.stats)
s = r.stats
assert s.prefill_tokens == len(prompt_ids) and s.decode_tokens == len(r.token_ids) - 1
naive = len(r.token_ids) / (s.prefill_seconds + s.decode_seconds)
print(f"'new tokens / total time' would say {naive:.1f} tok/s; decode alone is {s.decode_tokens_per_s:.1f} tok/s, "
      f"prefill {s.prefill_tokens_per_s:.1f} tok/s")

# %% [markdown]
# ## What the cache saves, step by step
#
# We time every step of the same greedy generation with and without the cache (`on_token` is called
# once per new token, right after its forward pass). Without the cache, step t runs T + t tokens;
# with it, one. Each generation runs once to warm up, then 5 times; we plot the median of each
# step over those 5 (one run alone catches every hiccup of a busy machine). BLAS is pinned to one
# thread, prefill and decode alike, so the two curves compare the same hardware.

# %%
def step_times(prompt, use_cache, n=16, runs=5):
    """Greedy generation, once to warm up and then `runs` times -> (median ms of each step, the result).
    Step 0 includes the prefill."""
    per_run = []
    for _ in range(1 + runs):
        stamps = []

        def stamp(step, token, logits):
            stamps.append(time.perf_counter())  # returns None: keep the sampled token

        t_start = time.perf_counter()
        res = generate(model, tok, prompt, max_new_tokens=n, use_cache=use_cache, on_token=stamp, runtime=ONE_THREAD)
        per_run.append(np.diff([t_start] + stamps) * 1e3)
    return np.median(per_run[1:], axis=0), res


poem = [{"role": "user", "content": "Write a short poem about the sea, in four lines."}]
ONE_THREAD = Runtime(decode_threads=1)  # decode steps on 1 thread (the default runtime's "auto" tries 1 and 2)
with threads.blas_threads(1):  # prefill and the uncached forwards too (needs threadpoolctl)
    ms_cache, with_cache = step_times(poem, use_cache=True)
    ms_nocache, without_cache = step_times(poem, use_cache=False)
assert with_cache.token_ids == without_cache.token_ids
print("with cache    (ms/step):", np.round(ms_cache).astype(int))
print("without cache (ms/step):", np.round(ms_nocache).astype(int))
print("(median of 5 runs after one warm-up, 1 BLAS thread; the numbers vary by machine and with its load)")
print("forwarded tokens:", with_cache.stats.forwarded_tokens, "with the cache,",
      without_cache.stats.forwarded_tokens, "without")

# %%
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
steps = np.arange(len(ms_cache))
ax[0].plot(steps[1:], ms_nocache[1:], "o-", label="no cache: run all T + t tokens")
ax[0].plot(steps[1:], ms_cache[1:], "o-", label="KV cache: run 1 token")
ax[0].set(xlabel="decode step", ylabel="ms per step", title="time per new token (step 0 = prefill, not shown)")
ax[0].set_ylim(bottom=0)
ax[0].legend()
T = len(without_cache.prompt_ids)
ax[1].bar(steps - 0.2, [T] + [1] * (len(steps) - 1), width=0.4, label="KV cache")
ax[1].bar(steps + 0.2, T + steps, width=0.4, label="no cache")
ax[1].set(xlabel="step", ylabel="tokens run through the model", title="work per step")
ax[1].legend()
fig.tight_layout()
fig.savefig(OUT / "14-decode-steps.png", dpi=110)
print("saved", OUT / "14-decode-steps.png")
