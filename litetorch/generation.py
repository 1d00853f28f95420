"""The generation loop: prefill once, then one token per step through the KV cache (lesson 14).

    ids = encode(prompt)                          # [T]
    logits = model(ids, cache)[-1]                # prefill: T tokens in one pass
    repeat:
        next = sample(logits)                     # greedy / temperature / top-k / top-p / min-p
        if next is EOS or a stop string appears or the budget is spent: stop
        logits = model([next], cache)[-1]         # decode: one token, attending to the cache

`PromptCache` keeps the KV cache between calls together with the ids it holds, so a later
prompt that starts with the same tokens (a shared system prompt, the earlier turns of a chat)
only pays for its new tokens (lesson 16). `ChatSession` (litetorch/chat.py) builds multi-turn
chat on top of it.

Shapes: T = tokens, V = vocabulary size, Hkv = key/value heads, Dh = head dim.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import CacheError, ContextLengthError, TokenizerError
from .sampling import Sampler
from .tensor import no_grad
from .threads import decode_threads


# ------------------------------------------------------------------------------------------------
# Prompt cache
# ------------------------------------------------------------------------------------------------
class PromptCache:
    """A model's KV cache plus the token ids it holds (`ids[i]` is at cache position i).

        pc = PromptCache.from_prefix(model, system_ids)   # process a shared prefix once
        generate(model, tok, prompt, cache=pc)            # reuses the longest common prefix

    The invariant `len(pc.ids) == pc.caches.length` holds after every call, including one that
    raised or was interrupted: `extend` crops every layer back if the forward pass fails midway.
    The cache is preallocated; when a longer conversation needs more room it is reallocated
    once at double the size (an O(n) copy that happens log(n) times, never per token).
    """

    def __init__(self, model, max_len: int | None = None):
        self.model = model
        self.caches = model.new_cache(1, max_len or 256)  # [1, Hkv, max_len, Dh] K and V per layer
        self.ids: list[int] = []

    @classmethod
    def from_prefix(cls, model, ids) -> "PromptCache":
        """A cache that already holds `ids` (e.g. the rendered system prompt)."""
        pc = cls(model, max(len(ids) * 2, 256))
        pc.extend(ids)
        return pc

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self):
        return f"PromptCache({len(self.ids)} tokens, room for {self.caches.max_len}, {self.nbytes / 2**20:.1f} MiB)"

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated K/V buffers (every layer)."""
        return self.caches.nbytes

    @property
    def bytes_per_token(self) -> int:
        """What one cached position costs: 2 (K and V) * n_layers * Hkv * Dh * itemsize."""
        return self.caches.bytes_per_token

    def reserve(self, n_tokens: int) -> None:
        """Make room for `n_tokens` positions (reallocate at double size, copying the filled part)."""
        if n_tokens <= self.caches.max_len:
            return
        n_ctx = self.model.config.max_position_embeddings
        if n_tokens > n_ctx:
            raise ContextLengthError(f"{n_tokens} tokens exceed the model's context length of {n_ctx}")
        new = self.model.new_cache(1, min(n_ctx, max(n_tokens, 2 * self.caches.max_len)))
        n = len(self.ids)
        for old_layer, new_layer in zip(self.caches, new):
            new_layer.append(old_layer.k[:, :, :n], old_layer.v[:, :, :n])
        self.caches = new

    def crop(self, n: int) -> None:
        """Keep the first n positions (raises CacheError, changing nothing, if n is out of range)."""
        self.caches.crop(n)
        del self.ids[n:]

    def reset(self) -> None:
        self.caches.reset()
        self.ids.clear()

    # lesson 16: begin
    def common_prefix(self, ids) -> int:
        """How many leading ids of `ids` are already in the cache."""
        n = 0
        for a, b in zip(self.ids, ids):
            if a != b:
                break
            n += 1
        return n

    def extend(self, new_ids, logits_to_keep: int = 1) -> np.ndarray:
        """Run `new_ids` through the model after what is cached; return logits [k, V] of the last k.

        If anything fails midway (an error, Ctrl-C), every layer is cropped back, so the cache and
        `ids` always agree.
        """
        new_ids = [int(i) for i in new_ids]
        if not new_ids:
            raise ValueError("extend() needs at least one token id")
        before = len(self.ids)
        self.reserve(before + len(new_ids))
        # one token = matrix-vector products: one BLAS thread (see threads.py)
        threads = decode_threads() if len(new_ids) == 1 else nullcontext()
        try:
            with no_grad(), threads:
                logits = self.model(np.asarray([new_ids], dtype=np.int64), cache=self.caches,
                                    logits_to_keep=logits_to_keep)  # [1, T_new] -> [1, k, V]
        except BaseException:  # BaseException: a Ctrl-C in layer 17 must not leave 17 layers longer
            for layer in self.caches:
                layer.crop(min(layer.length, before))
            raise
        self.ids.extend(new_ids)
        return logits.data[0]  # [k, V]
    # lesson 16: end


# ------------------------------------------------------------------------------------------------
# Results
# ------------------------------------------------------------------------------------------------
@dataclass
class GenerationStats:
    prompt_tokens: int = 0        # tokens in the prompt
    reused_tokens: int = 0        # of those, already in the prompt cache (not recomputed)
    prefill_tokens: int = 0       # prompt tokens run through the model (prompt_tokens - reused_tokens)
    decode_tokens: int = 0        # decode steps (one new token each)
    forwarded_tokens: int = 0     # token positions the model computed in all (use_cache=False: ~T^2/2)
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0   # time inside the loop, not counting a stream consumer's own time

    @property
    def tokens_processed(self) -> int:
        return self.forwarded_tokens

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode speed excludes the prompt: one forwarded token per step, over decode time only."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else float("nan")

    def __str__(self):
        return (f"prompt {self.prompt_tokens} tok ({self.reused_tokens} reused), "
                f"prefill {self.prefill_tokens} tok at {self.prefill_tokens_per_s:.1f} tok/s, "
                f"decode {self.decode_tokens} tok at {self.decode_tokens_per_s:.1f} tok/s")


@dataclass
class GenerationResult:
    text: str                     # the new text (no EOS token, no stop string, no half character)
    token_ids: list[int]          # the new tokens only (the EOS token included when it ended the text)
    finish_reason: str            # "eos", "stop" (a stop string), or "length"
    stats: GenerationStats
    prompt_ids: list[int] = field(default_factory=list)


class GenerationStream:
    """Iterate once to get text pieces as they are generated; `.result` is set when it is exhausted.

    The pieces concatenate to `.result.text`. Stopping early (break) is safe: the prompt cache
    stays consistent, there is just no `.result`.
    """

    def __init__(self, gen):
        self._gen = gen
        self._started = False
        self.result: GenerationResult | None = None

    def __iter__(self):
        if self._started:
            raise RuntimeError("a GenerationStream can be iterated only once; call generate() again")
        self._started = True
        self.result = yield from self._gen
        return self.result


# ------------------------------------------------------------------------------------------------
# Input checks (all of them run before any cache is touched)
# ------------------------------------------------------------------------------------------------
_EMPTY = "prompt is empty: give at least one character, message or token id"


def _check_messages(messages) -> None:
    for i, m in enumerate(messages):
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else f"a {type(m[key]).__name__}"
                raise TokenizerError(f"messages[{i}][{key!r}] must be a str, got {got} (message: {m!r})")


def prompt_to_ids(tokenizer, prompt) -> list[int]:
    """A string is tokenized (with BOS if the tokenizer asks for one); a list of chat messages goes
    through the chat template; a list of token ids is used as is."""
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError(_EMPTY)
        ids = list(tokenizer.encode(prompt))
        bos = getattr(tokenizer, "bos_token_id", None)
        if getattr(tokenizer, "add_bos_token", False) and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids  # what HF's tokenizer(prompt) does for Llama-2-style tokenizers
        return ids
    if isinstance(prompt, Mapping):
        raise ValueError("prompt is one message: pass a list of messages, [{'role': 'user', 'content': ...}]")
    prompt = list(prompt)
    if not prompt:
        raise ValueError(_EMPTY)
    if all(isinstance(m, Mapping) for m in prompt):
        _check_messages(prompt)
        return list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
    if all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in prompt):
        ids = [int(i) for i in prompt]
        bad = [i for i in ids if not 0 <= i < tokenizer.vocab_size]
        if bad:
            raise TokenizerError(f"token id {bad[0]} is out of range for vocab_size {tokenizer.vocab_size}")
        return ids
    raise ValueError("prompt must be a string, a list of {'role', 'content'} messages, or a list of token ids")


def _check_positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_stop(stop) -> list[str]:
    stop = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
    if any(not isinstance(s, str) or not s for s in stop):
        raise ValueError(f"stop must be a non-empty string or a list of them, got {stop!r}")
    return stop


def _checked_override(value, vocab_size: int) -> int:
    """The id an `on_token` callback returned instead of the sampled one."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < vocab_size:
        raise TokenizerError(f"on_token returned {value!r}; it must return None or a token id in 0..{vocab_size - 1}")
    return int(value)


# ------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------
def generate(model, tokenizer, prompt, max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None, stop=(), seed: int | None = None,
             stream: bool = False, on_token=None, use_cache: bool = True,
             cache: PromptCache | None = None):
    """Generate a continuation of `prompt`. Returns a GenerationResult, or with `stream=True` a
    GenerationStream yielding text pieces (never a broken UTF-8 character).

    prompt: a string (used as is: no chat template), a list of {"role", "content"} messages
        (rendered with the model's chat template, ending with the assistant header), or token ids.
    temperature 0 (the default) is greedy decoding, token for token what HF's
        `generate(do_sample=False)` gives. `seed`: the same seed gives the same sampled tokens.
    stop: strings that end the generation (not included in the text).
    on_token(step, token_id, logits [V]) is called for every new token; if it returns an int, that
        id replaces the sampled one (lessons use it to steer).
    cache: a PromptCache to reuse across calls (prompt caching). `use_cache=False` recomputes the
        whole sequence at every step (slow: for checking that the cache changes nothing).

    Every argument is checked before anything runs; an error leaves `cache` unchanged. If the
    forward pass fails or is interrupted midway, `cache` stays consistent (its ids match its length).
    """
    max_new_tokens = _check_positive_int("max_new_tokens", max_new_tokens)
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                      repetition_penalty=repetition_penalty, seed=seed)
    stop = _check_stop(stop)
    if on_token is not None and not callable(on_token):
        raise TypeError(f"on_token must be callable, got {type(on_token).__name__}")
    if cache is not None:
        if not isinstance(cache, PromptCache):
            raise CacheError(f"cache must be a PromptCache, got {type(cache).__name__} "
                             f"(wrap a model with PromptCache(model) or PromptCache.from_prefix(model, ids))")
        if cache.model is not model:
            raise CacheError("this PromptCache belongs to a different model; its keys and values mean "
                             "nothing to this one")
        if not use_cache:
            raise ValueError("cache= needs use_cache=True (use_cache=False recomputes everything and keeps no cache)")
    ids = prompt_to_ids(tokenizer, prompt)
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to no tokens at all")
    vocab = model.config.vocab_size
    if max(ids) >= vocab or min(ids) < 0:
        bad = max(ids) if max(ids) >= vocab else min(ids)
        raise TokenizerError(f"token id {bad} is out of range for this model's vocabulary of {vocab}")
    n_ctx = model.config.max_position_embeddings
    if len(ids) + max_new_tokens > n_ctx:
        raise ContextLengthError(f"prompt of {len(ids)} tokens + max_new_tokens={max_new_tokens} = "
                                 f"{len(ids) + max_new_tokens} exceeds the context length of {n_ctx}")

    gen = _generate(model, tokenizer, ids, max_new_tokens, sampler, stop, on_token, use_cache, cache)
    if stream:
        return GenerationStream(gen)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def _full_forward(model, ids) -> np.ndarray:
    """No cache: run the whole sequence [1, T] and keep the last position's logits [V]."""
    with no_grad():
        return model(np.asarray([ids], dtype=np.int64), logits_to_keep=1).data[0, -1]


def _find_stop(text: str, stop) -> int:
    """Index of the earliest stop string in text, or -1."""
    return min((text.find(s) for s in stop if s in text), default=-1)


# lesson 14: begin
def _generate(model, tokenizer, ids, max_new_tokens, sampler, stop, on_token, use_cache, cache):
    stats = GenerationStats(prompt_tokens=len(ids))
    eos = set(getattr(tokenizer, "eos_token_ids", None) or {tokenizer.eos_token_id}) - {None}
    decoder = tokenizer.stream_decoder()  # turns ids into text, never splitting a UTF-8 character
    hold = max((len(s) for s in stop), default=1) - 1  # chars held back: they may start a stop string

    # Prefill: run the prompt through the model once (only the part not already cached).
    t0 = time.perf_counter()
    if use_cache:
        pc = cache if cache is not None else PromptCache(model, len(ids) + max_new_tokens)
        reuse = min(pc.common_prefix(ids), len(ids) - 1)  # recompute >= 1 token: we need its logits
        pc.crop(reuse)
        logits = pc.extend(ids[reuse:])[-1]  # [T - reuse] tokens in, next-token logits [V] out
    else:
        reuse = 0
        logits = _full_forward(model, ids)  # [V]
    stats.reused_tokens = reuse
    stats.prefill_tokens = stats.forwarded_tokens = len(ids) - reuse
    stats.prefill_seconds = time.perf_counter() - t0

    new_ids, text, emitted, finish = [], "", 0, "length"
    t0, paused = time.perf_counter(), 0.0
    for step in range(max_new_tokens):
        # Sample: logits [V] -> one token id (argmax when temperature == 0).
        token = sampler(logits, previous_ids=ids + new_ids)
        if on_token is not None:
            override = on_token(step, token, logits)
            if override is not None:
                token = _checked_override(override, model.config.vocab_size)
        new_ids.append(token)
        if token in eos:
            finish = "eos"
            break
        # Detokenize; cut at a stop string; emit only text that cannot be the start of one.
        text += decoder.feed(token)
        cut = _find_stop(text, stop)
        if cut >= 0:
            text, finish = text[:cut], "stop"
            break
        if len(text) - hold > emitted:
            t_pause = time.perf_counter()
            yield text[emitted:len(text) - hold]  # the consumer's time here is not decode time
            paused += time.perf_counter() - t_pause
            emitted = len(text) - hold
        if step == max_new_tokens - 1:
            break  # budget spent: the last token never needs a forward pass of its own
        # Decode: one new token through every layer, attending to everything cached.
        if use_cache:
            logits = pc.extend([token])[-1]  # [1] token in, [V] out
            stats.forwarded_tokens += 1
        else:
            logits = _full_forward(model, ids + new_ids)  # all T + step + 1 tokens, again
            stats.forwarded_tokens += len(ids) + len(new_ids)
        stats.decode_tokens += 1
    if finish != "stop":
        text += decoder.flush().rstrip("\ufffd")  # drop a character the budget cut in half
        cut = _find_stop(text, stop)
        if cut >= 0:
            text, finish = text[:cut], "stop"
    stats.decode_seconds = time.perf_counter() - t0 - paused
    if len(text) > emitted:
        yield text[emitted:]
    return GenerationResult(text=text, token_ids=new_ids, finish_reason=finish, stats=stats, prompt_ids=list(ids))
# lesson 14: end
