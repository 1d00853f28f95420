"""The generation loop: prefill once, then one token per step through the cache (lesson 14).

    ids = encode(prompt)                          # [T]
    logits = model(ids, cache)[-1]                # prefill: T tokens in one pass
    repeat:
        next = sample(logits)                     # greedy / temperature / top-k / top-p / min-p
        if next is EOS or a stop string appears or the budget is spent: stop
        logits = model([next], cache)[-1]         # decode: one token, attending to the cache

There is one loop for every model: Llama, the classroom GPT and LoopLM all go through it, through
the small contract of `litetorch/models/base.py` (`logits`, `new_cache`, `context_length`). How the
model is run fast (prefill in chunks, the decode thread count) is the runtime's business
(`litetorch/runtime.py`), not the loop's.

`PromptCache` keeps the cache between calls together with the ids it holds, so a later prompt that
starts with the same tokens (a shared system prompt, the earlier turns of a chat) only pays for its
new tokens (lesson 16). `ChatSession` (litetorch/chat.py) builds multi-turn chat on top of it.

Shapes: B = rows (prompts of one length), T = tokens, V = vocabulary size.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from . import checks
from .errors import CacheError, ConfigError, ContextLengthError, ShapeError, StateError, TokenizerError
from .runtime import DEFAULT, Runtime
from .sampling import Sampler
from .tensor import no_grad


# ------------------------------------------------------------------------------------------------
# Prompt cache
# ------------------------------------------------------------------------------------------------
class PromptCache:
    """A model's cache plus the token ids it holds (`ids[i]` is at cache position i).

        pc = PromptCache.from_prefix(model, system_ids)   # process a shared prefix once
        generate(model, tok, prompt, cache=pc)            # reuses the longest common prefix

    The invariant `len(pc.ids) == pc.caches.length` holds after every call, including one that
    raised or was interrupted: `extend` rolls the cache back if the forward pass fails midway.
    The cache is preallocated; when a longer conversation needs more room it grows once to double
    the size (an O(n) copy that happens log(n) times, never per token). `batch_size` > 1 holds B
    rows of equal length (batched generation); prefix reuse is for one row.
    """

    def __init__(self, model, max_len: int | None = None, batch_size: int = 1, runtime: Runtime | None = None):
        self.model = checks.language_model(model)
        self.runtime = _check_runtime(runtime)
        self.batch_size = checks.positive_int("batch_size", batch_size)
        max_len = 256 if max_len is None else checks.positive_int("max_len", max_len)
        self.caches = model.new_cache(batch_size, min(max_len, model.context_length))
        self.rows: list[list[int]] = [[] for _ in range(batch_size)]

    @classmethod
    def from_prefix(cls, model, ids, runtime: Runtime | None = None) -> "PromptCache":
        """A cache that already holds `ids` (e.g. the rendered system prompt)."""
        ids = checks.token_ids(ids, checks.language_model(model).vocab_size, "ids")
        pc = cls(model, max(ids.size * 2, 256), runtime=runtime)
        pc.extend(ids)
        return pc

    @property
    def ids(self) -> list[int]:
        """The ids cached (one row)."""
        if self.batch_size != 1:
            raise CacheError(f"this PromptCache holds {self.batch_size} rows; read .rows")
        return self.rows[0]

    def __len__(self) -> int:
        return len(self.rows[0])

    def __repr__(self):
        return f"PromptCache({len(self)} tokens, room for {self.caches.max_len}, {self.nbytes / 2**20:.1f} MiB)"

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated cache buffers (every layer)."""
        return self.caches.nbytes

    @property
    def bytes_per_token(self) -> int:
        """What one cached position costs (for attention: 2 (K and V) * n_layers * Hkv * Dh * itemsize)."""
        return self.caches.bytes_per_token

    def reserve(self, n_tokens: int) -> None:
        """Make room for `n_tokens` positions (grow to double the size, copying the filled part)."""
        n_tokens = checks.integer("n_tokens", n_tokens, lo=0)
        if n_tokens <= self.caches.max_len:
            return
        n_ctx = self.model.context_length
        if n_tokens > n_ctx:
            raise ContextLengthError(f"{n_tokens} tokens exceed the model's context length of {n_ctx}")
        self.caches.grow(min(n_ctx, max(n_tokens, 2 * self.caches.max_len)))

    def crop(self, n: int) -> None:
        """Keep the first n positions (raises CacheError, changing nothing, if n is out of range)."""
        checks.integer(f"crop(n): n (the cache holds {len(self)} tokens)", n, lo=0, hi=len(self), error=CacheError)
        self.caches.crop(n)
        for row in self.rows:
            del row[n:]

    def reset(self) -> None:
        self.caches.reset()
        for row in self.rows:
            row.clear()

    # lesson 16: begin (prompt cache)
    def common_prefix(self, ids) -> int:
        """How many leading ids of `ids` can be kept from the cache: the shared prefix, short of the last id
        (its logits are needed, and a cache stores no logits), all or nothing for a recurrent state."""
        n = 0
        for a, b in zip(self.ids, ids[:-1]):  # the last id is always run: its logits give the first new token
            if a != b:
                break
            n += 1
        if n < len(self) and not self.caches.rewindable:  # a recurrent state cannot be cut back
            return 0
        return n

    def extend(self, new_ids, logits_to_keep: int = 1) -> np.ndarray:
        """Run `new_ids` ([T], or [B, T] for B rows) through the model after what is cached; return the
        logits of the last k positions: [k, V] (or [B, k, V]).

        If anything fails midway (an error, Ctrl-C), the cache is rolled back, so it and `ids` agree.
        """
        new = checks.token_ids(new_ids, self.model.vocab_size, "new_ids")
        given, one_row = new.shape, new.ndim == 1
        new = new.reshape(1, -1) if one_row else new  # [T] -> [1, T]
        if new.ndim != 2 or new.shape[0] != self.batch_size or new.shape[1] == 0:
            raise ShapeError(f"extend() needs at least one token id, as [T] or [B, T] with B = {self.batch_size}; "
                             f"got shape {given}")
        checks.logits_to_keep(logits_to_keep, new.shape[1])
        self.reserve(len(self) + new.shape[1])
        state = self.caches.checkpoint()
        try:
            logits = self.runtime.forward(self.model, new, self.caches, logits_to_keep)  # [B, k, V]
        except BaseException:  # BaseException: a Ctrl-C in layer 17 must not leave 17 layers longer
            self.caches.rollback(state)
            raise
        for row, added in zip(self.rows, new.tolist()):
            row.extend(added)
        return logits[0] if one_row else logits
    # lesson 16: end (prompt cache)


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
    seed: int | None = None       # the sampler's seed (None: greedy); pass it as seed= to replay the run
    prompt_format: str = "ids"    # "chat" (rendered with the chat template), "raw" (text as is) or "ids"
    loops_per_token: float | None = None  # a looped model (LoopLM): mean iterations over the tokens this call
                                          # ran through the model (from its cache's record; None otherwise)

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prefill_tokens / self.prefill_seconds if self.prefill_seconds else float("nan")

    @property
    def decode_tokens_per_s(self) -> float:
        """Decode speed excludes the prompt: one forwarded token per step, over decode time only."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds else float("nan")

    def __str__(self):
        seed = f", seed {self.seed}" if self.seed is not None else ""
        loops = f", {self.loops_per_token:.2f} loops/token" if self.loops_per_token is not None else ""
        return (f"prompt {self.prompt_tokens} tok ({self.reused_tokens} reused, {self.prompt_format}), "
                f"prefill {self.prefill_tokens} tok at {self.prefill_tokens_per_s:.1f} tok/s, "
                f"decode {self.decode_tokens} tok at {self.decode_tokens_per_s:.1f} tok/s{seed}{loops}")


@dataclass
class GenerationResult:
    text: str | None              # the new text (no EOS token, no stop string, no half character); None without a tokenizer
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
            raise StateError("a GenerationStream can be iterated only once; call generate() again")
        self._started = True
        self.result = (yield from self._gen)[0]  # one row: streaming is for a single prompt
        return self.result


# ------------------------------------------------------------------------------------------------
# From a prompt to token ids (every check runs before any cache is touched)
# ------------------------------------------------------------------------------------------------
_EMPTY = "prompt is empty: give at least one character, message or token id"


def prompt_to_ids(tokenizer, prompt, raw: bool = False, allow_special_tokens_in_content: bool = False
                  ) -> tuple[list[list[int]], str]:
    """(rows of token ids, format). A string is one user message rendered with the chat template,
    as the command line does (`raw=True`, or a tokenizer without a template: the text as is, with BOS
    if the tokenizer asks for one); a list of {"role", "content"} messages goes through the template;
    a list of ids is used as is, and a 2-D list / array of ids is a batch of rows of one length.

    Message content is text: a special-token string inside it (`<|im_end|>`) is encoded as plain text,
    never as the control token, unless `allow_special_tokens_in_content=True` (lesson 13). Raw text is
    the caller's own prompt, written with the control tokens it means."""
    if isinstance(prompt, str):
        if not prompt:
            raise ConfigError(_EMPTY)
        if tokenizer is None:
            raise TokenizerError("a text prompt needs a tokenizer; pass token ids to generate without one")
        if not raw and getattr(tokenizer, "chat_template", None):
            return prompt_to_ids(tokenizer, [{"role": "user", "content": prompt}], False,
                                 allow_special_tokens_in_content)[0], "chat"
        ids = list(tokenizer.encode(prompt))
        bos = getattr(tokenizer, "bos_token_id", None)
        if getattr(tokenizer, "add_bos_token", False) and bos is not None and ids[:1] != [bos]:
            ids = [bos] + ids  # what HF's tokenizer(prompt) does for Llama-2-style tokenizers
        if not ids:
            raise ConfigError(f"prompt {prompt!r} tokenizes to no tokens at all")
        return [ids], "raw"
    if isinstance(prompt, Mapping):
        raise ConfigError("prompt is one message: pass a list of messages, [{'role': 'user', 'content': ...}]")
    if not isinstance(prompt, (list, tuple, np.ndarray)):
        raise ConfigError(f"prompt must be a string, a list of {{'role', 'content'}} messages, or token ids "
                          f"(a list of ints, or rows of them); got {type(prompt).__name__}")
    if len(prompt) == 0:
        raise ConfigError(_EMPTY)
    if any(isinstance(m, Mapping) for m in prompt):
        checks.messages(prompt)
        if tokenizer is None:
            raise TokenizerError("chat messages need a tokenizer with a chat template")
        return [list(tokenizer.apply_chat_template(
            prompt, add_generation_prompt=True, tokenize=True,
            allow_special_tokens_in_content=allow_special_tokens_in_content))], "chat"
    ids = checks.token_ids(prompt, None, "prompt")  # integers >= 0 (the model's vocabulary is checked by generate)
    if ids.ndim == 1:
        return [ids.tolist()], "ids"
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ShapeError(f"a batch of prompts must be non-empty rows of one length (left padding is not "
                         f"supported), got shape {ids.shape}")
    return ids.tolist(), "ids"


def _check_runtime(runtime) -> Runtime:
    if runtime is not None and not isinstance(runtime, Runtime):
        raise ConfigError(f"runtime must be a litetorch.runtime.Runtime or None, got {type(runtime).__name__}")
    return DEFAULT if runtime is None else runtime


# ------------------------------------------------------------------------------------------------
# generate
# ------------------------------------------------------------------------------------------------
def generate(model, tokenizer, prompt, max_new_tokens: int = 256, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
             repetition_penalty: float | None = None, stop=(), seed: int | None = None,
             stream: bool = False, on_token=None, use_cache: bool = True, cache: PromptCache | None = None,
             eos_token_id=None, raw: bool = False, slide: bool = False, runtime: Runtime | None = None,
             allow_special_tokens_in_content: bool = False):
    """Generate a continuation of `prompt` with any litetorch language model (Llama, GPT, LoopLM).
    Returns a GenerationResult (a list of them for a batch), or with `stream=True` a GenerationStream
    yielding text pieces (never a broken UTF-8 character).

    prompt: a string (one user message through the model's chat template, like `litetorch generate`;
        `raw=True` feeds the text as is), a list of {"role", "content"} messages, token ids, or a batch
        of id rows of one length. `tokenizer` may be None when the prompt is ids (then `.text` is None).
    temperature 0 (the default) is greedy decoding, token for token what HF's
        `generate(do_sample=False)` gives. `seed`: the same seed gives the same sampled tokens; without
        one the sampler draws fresh randomness and reports the seed it used in `.stats.seed`.
    stop: strings that end the generation (not included in the text). eos_token_id: an id or ids that
        end it (default: the tokenizer's end-of-turn ids).
    on_token(step, token_id, logits [V]) is called for every new token; if it returns an int, that
        id replaces the sampled one (lessons use it to steer). One row only.
    cache: a PromptCache to reuse across calls (prompt caching). `use_cache=False` recomputes the
        whole sequence at every step (slow: for checking that the cache changes nothing).
    slide: when the context is full, keep going on the last `context_length` tokens (nanoGPT's
        window; every step then re-runs the window). Without it, a prompt + max_new_tokens longer
        than the context is a ContextLengthError.
    runtime: how the model is run fast (runtime.py): prefill chunk, decode threads.
    allow_special_tokens_in_content: message content is text, so `<|im_end|>` typed by a user is encoded
        as plain text and cannot forge a turn (lesson 13); True restores HF's default, where it becomes
        the control token. Raw text (`raw=True`) is always encoded as written.

    Every argument is checked before anything runs; an error leaves `cache` unchanged. If the
    forward pass fails or is interrupted midway, `cache` stays consistent (its ids match its length).
    """
    checks.language_model(model)
    max_new_tokens = checks.positive_int("max_new_tokens", max_new_tokens)
    sampler = Sampler(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                      repetition_penalty=repetition_penalty, seed=seed)
    stop = checks.stop_strings(stop)
    checks.callable_or_none("on_token", on_token)
    for name, flag in (("stream", stream), ("use_cache", use_cache), ("raw", raw), ("slide", slide),
                       ("allow_special_tokens_in_content", allow_special_tokens_in_content)):
        checks.boolean(name, flag)
    runtime = _check_runtime(runtime) if runtime is not None else None
    rows, prompt_format = prompt_to_ids(tokenizer, prompt, raw, allow_special_tokens_in_content)
    checks.token_ids(rows, model.vocab_size, "prompt")
    B, T, n_ctx = len(rows), len(rows[0]), model.context_length
    if B > 1 and (stream or on_token is not None or cache is not None):
        raise ConfigError("a batch of prompts cannot be streamed, steered with on_token, or use a PromptCache; "
                          "generate one prompt at a time for those")
    if cache is not None:
        if not isinstance(cache, PromptCache):
            raise CacheError(f"cache must be a PromptCache, got {type(cache).__name__} "
                             f"(wrap a model with PromptCache(model) or PromptCache.from_prefix(model, ids))")
        if cache.model is not model:
            raise CacheError("this PromptCache belongs to a different model; its keys and values mean "
                             "nothing to this one")
        if not use_cache:
            raise ConfigError("cache= needs use_cache=True (use_cache=False recomputes everything and keeps no cache)")
    if slide:
        rows = [row[-n_ctx:] for row in rows]  # the model sees at most its context (nanoGPT crops the prompt)
    elif T + max_new_tokens > n_ctx:
        raise ContextLengthError(f"prompt of {T} tokens + max_new_tokens={max_new_tokens} = "
                                 f"{T + max_new_tokens} exceeds the context length of {n_ctx}")
    if eos_token_id is None:  # every end-of-turn id the tokenizer knows (<|im_end|> and <|endoftext|>), as llama.cpp
        eos = set(getattr(tokenizer, "eos_token_ids", None) or {getattr(tokenizer, "eos_token_id", None)}) - {None}
    else:
        many = isinstance(eos_token_id, (list, tuple, set, frozenset, np.ndarray))
        eos = set(checks.token_ids(list(eos_token_id) if many else [eos_token_id], model.vocab_size,
                                   "eos_token_id").tolist())

    stats = GenerationStats(prompt_tokens=T, seed=sampler.seed, prompt_format=prompt_format)
    if use_cache and cache is None:
        cache = PromptCache(model, min(n_ctx, T + max_new_tokens), batch_size=B, runtime=runtime)
    gen = _generate(model, tokenizer, rows, max_new_tokens, sampler, stop, eos, on_token, cache, slide, stats)
    if stream:
        return GenerationStream(gen)
    batched = prompt_format == "ids" and not checks._is_int(next(iter(prompt)))  # rows in, a list of results out
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value if batched else done.value[0]


class _Row:
    """One row's output: the new ids, the text so far (cut at a stop string) and why it ended."""

    def __init__(self, tokenizer, stop: list[str], eos: set):
        self.decoder = tokenizer.stream_decoder() if tokenizer is not None else None  # whole characters only
        self.stop, self.eos = stop, eos
        self.hold = max((len(s) for s in stop), default=1) - 1  # chars held back: they may start a stop string
        self.ids, self.text, self.emitted, self.finish = [], "", 0, None

    def add(self, token: int) -> None:
        """Take one new token: EOS ends the row; otherwise detokenize and look for a stop string."""
        self.ids.append(token)
        if token in self.eos:
            self.finish = "eos"
        elif self.decoder is not None:
            self.text += self.decoder.feed(token)
            self._cut()

    def close(self) -> None:
        if self.finish != "stop" and self.decoder is not None:
            self.text += self.decoder.flush().rstrip("\ufffd")  # drop a character the budget cut in half
            self._cut()
        self.finish = self.finish or "length"

    def _cut(self) -> None:
        cut = min((self.text.find(s) for s in self.stop if s in self.text), default=-1)
        if cut >= 0:
            self.text, self.finish = self.text[:cut], "stop"

    def new_text(self, final: bool = False) -> str:
        """Text not yet streamed that can no longer turn into a stop string."""
        end = len(self.text) if final or self.finish else len(self.text) - self.hold
        piece = self.text[self.emitted:end] if end > self.emitted else ""
        self.emitted = max(self.emitted, end)
        return piece


def _forward_all(model, seqs) -> np.ndarray:
    """No cache: run the whole sequences [B, T] and keep the last position's logits [B, V]."""
    with no_grad():
        return model.logits(np.asarray(seqs, dtype=np.int64), None, 1).data[:, -1]


# lesson 14: begin (loop) exercise
def _generate(model, tokenizer, rows, max_new_tokens, sampler, stop, eos, on_token, cache, slide, stats):
    """The loop behind `generate` (checked arguments in, a generator out): yields text pieces as they
    become final (one row only) and returns one GenerationResult per row.

    rows [B][T] prompt ids; sampler(logits [B, V], previous_ids=seqs) -> B ids; cache: a PromptCache
    (`extend(rows)` runs new tokens, returns logits [B, T, V]) or None (recompute with `_forward_all`);
    `_Row` keeps a row's ids, text, stop strings and finish reason; `stats` records the token counts
    (reused, prefill, forwarded, decode) and the prefill and decode seconds.
    """
    n_ctx, outs = model.context_length, [_Row(tokenizer, stop, eos) for _ in rows]
    seqs = [list(row) for row in rows]  # every row's whole sequence: prompt, then each token fed back
    was_training = model.training
    model.eval()  # no dropout while generating
    try:
        # Prefill: run the prompt through the model once (only the part not already cached).
        t0 = time.perf_counter()
        if cache is not None:
            reuse = cache.common_prefix(rows[0]) if len(rows) == 1 else 0  # >= 1 token left to compute
            cache.crop(reuse)
            logits = cache.extend([row[reuse:] for row in rows])[:, -1]  # [B, T - reuse] in, [B, V] out
        else:
            reuse, logits = 0, _forward_all(model, seqs)  # [B, V]
        stats.reused_tokens = reuse
        stats.prefill_tokens = stats.forwarded_tokens = len(rows[0]) - reuse
        stats.prefill_seconds = time.perf_counter() - t0

        t0, paused = time.perf_counter(), 0.0
        for step in range(max_new_tokens):
            # Sample: logits [B, V] -> one token id per row (argmax when temperature == 0).
            tokens = sampler(logits, previous_ids=seqs).tolist()  # [B]
            if on_token is not None:
                override = on_token(step, tokens[0], logits[0])
                tokens[0] = tokens[0] if override is None else _checked_override(override, model.vocab_size)
            for out, seq, token in zip(outs, seqs, tokens):
                seq.append(token)  # a finished row keeps being fed (its output is ignored) so rows stay one length
                if out.finish is None:
                    out.add(token)  # EOS and stop strings end a row; the text grows by whole characters
            if len(outs) == 1:
                piece = outs[0].new_text()
                if piece:
                    t_pause = time.perf_counter()
                    yield piece  # the consumer's time here is not decode time
                    paused += time.perf_counter() - t_pause
            if all(out.finish for out in outs) or step == max_new_tokens - 1:
                break  # the last token never needs a forward pass of its own
            # Decode: one new token per row through every layer, attending to everything cached.
            if cache is None:
                logits = _forward_all(model, [seq[-n_ctx:] for seq in seqs])  # the whole sequence, again
                stats.forwarded_tokens += min(len(seqs[0]), n_ctx)
            elif len(cache) + 1 > n_ctx:  # slide: the window is full, so re-run its last n_ctx tokens
                cache.reset()
                logits = cache.extend([seq[-n_ctx:] for seq in seqs])[:, -1]
                stats.forwarded_tokens += n_ctx
            else:
                logits = cache.extend([[seq[-1]] for seq in seqs])[:, -1]  # [B, 1] in, [B, V] out
                stats.forwarded_tokens += 1
            stats.decode_tokens += 1
        for out in outs:
            out.close()
        stats.decode_seconds = time.perf_counter() - t0 - paused
        stats.loops_per_token = _loops_per_token(cache, reuse)  # a looped model's depth, else None
        if len(outs) == 1:
            piece = outs[0].new_text(final=True)
            if piece:
                yield piece
    finally:
        model.train(was_training)
    results = [GenerationResult(text=out.text if tokenizer is not None else None, token_ids=out.ids,
                                finish_reason=out.finish, stats=stats, prompt_ids=list(row))
               for out, row in zip(outs, rows)]
    return results  # one per row (generate() returns the single result for one prompt)
# lesson 14: end (loop) exercise


def _loops_per_token(cache, reuse: int) -> float | None:
    """Mean iterations over the positions this call computed, if the cache records them (LoopLM's does:
    `LoopCaches.loops` [B, length]); None for a model that does not loop or without a cache."""
    loops = getattr(cache.caches, "loops", None) if cache is not None else None
    return float(loops[:, reuse:].mean()) if loops is not None and loops.shape[1] > reuse else None


def _checked_override(value, vocab_size: int) -> int:
    """The id an `on_token` callback returned instead of the sampled one."""
    if not checks._is_int(value) or not 0 <= value < vocab_size:
        raise TokenizerError(f"on_token returned {value!r}; it must return None or a token id in 0..{vocab_size - 1}")
    return int(value)
