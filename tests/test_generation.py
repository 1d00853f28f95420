"""generate(): the KV cache changes nothing, HF greedy tokens, seeds, stops, streaming, prompt caching, errors.

Two kinds of model:
- a tiny random Llama (2 layers, C = 32, float64) driven by `ByteTokenizer` (ids 0..255 are bytes,
  so one emoji is 4 tokens; both in _doubles.py): fast, exercises every branch of the loop;
- the real SmolLM2-135M-Instruct (loaded once for this module) against the HF greedy
  continuations stored in tests/fixtures/smollm2_reference.json (made by make_fixtures_llama.py
  with `model.generate(do_sample=False)`): the parity claims.
"""
import json
from pathlib import Path

import numpy as np
import pytest

from litetorch.errors import CacheError, ContextLengthError, DTypeError, TokenizerError
from litetorch.runtime import DEFAULT as DEFAULT_RUNTIME
from litetorch.generation import GenerationStream, PromptCache, generate, prompt_to_ids

from _doubles import ByteTokenizer, assert_consistent, force, forward_lengths, tiny_llama

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def tiny():
    return tiny_llama(), ByteTokenizer()


# ------------------------------------------------------------------------------------------------
# The cache changes nothing, and decode forwards one token per step (tiny model)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt", ["Hello", "a", "The quick brown fox", [257, 10, 20, 30, 258, 10]])
def test_cached_greedy_equals_uncached_greedy(tiny, prompt):
    model, tok = tiny
    cached = generate(model, tok, prompt, max_new_tokens=20)
    uncached = generate(model, tok, prompt, max_new_tokens=20, use_cache=False)
    assert cached.token_ids == uncached.token_ids
    assert cached.text == uncached.text
    assert len(cached.token_ids) == 20 or cached.finish_reason == "eos"


def test_each_decode_step_forwards_one_token(tiny):
    model, tok = tiny
    prompt = tok.encode("one token at a time")
    pc = PromptCache(model)
    with forward_lengths(model) as lengths:
        r = generate(model, tok, prompt, max_new_tokens=10, cache=pc, on_token=force([65] * 10))
    assert lengths == [len(prompt)] + [1] * 9  # prefill, then 9 decode steps (the 10th token is never fed)
    assert r.stats.prefill_tokens == len(prompt) and r.stats.decode_tokens == 9
    assert r.stats.forwarded_tokens == len(prompt) + 9
    assert len(pc) == pc.caches.length == len(prompt) + 9  # the cache grew by one row per step
    assert pc.ids == prompt + r.token_ids[:-1]


def test_uncached_generation_recomputes_the_whole_sequence(tiny):
    model, tok = tiny
    prompt = tok.encode("again")
    with forward_lengths(model) as lengths:
        r = generate(model, tok, prompt, max_new_tokens=4, use_cache=False, on_token=force([65] * 4))
    assert lengths == [5, 6, 7, 8]
    assert r.stats.forwarded_tokens == 5 + 6 + 7 + 8


def test_cache_growth_beyond_its_first_allocation_changes_nothing(tiny):
    model, tok = tiny
    prompt = tok.encode("a prompt longer than the cache")
    pc = PromptCache(model, max_len=4)  # forces several reallocations (each a copy of the filled rows)
    grown = generate(model, tok, prompt, max_new_tokens=30, cache=pc)
    assert pc.caches.max_len >= len(prompt) + 29
    assert grown.token_ids == generate(model, tok, prompt, max_new_tokens=30, use_cache=False).token_ids


# ------------------------------------------------------------------------------------------------
# Sampling seeds, EOS, stop strings, streaming
# ------------------------------------------------------------------------------------------------
def test_same_seed_same_tokens_different_seed_different_tokens(tiny):
    model, tok = tiny
    opts = dict(max_new_tokens=16, temperature=1.0, top_p=0.95)
    a = generate(model, tok, "seed", seed=0, **opts).token_ids
    b = generate(model, tok, "seed", seed=0, **opts).token_ids
    c = generate(model, tok, "seed", seed=1, **opts).token_ids
    assert a == b
    assert a != c
    greedy = generate(model, tok, "seed", max_new_tokens=16).token_ids
    assert a != greedy  # it really sampled


def test_eos_ends_generation_and_is_not_in_the_text(tiny):
    model, tok = tiny
    r = generate(model, tok, "x", max_new_tokens=10, on_token=force([72, 105, 258]))
    assert r.finish_reason == "eos"
    assert r.token_ids == [72, 105, 258]
    assert r.text == "Hi"
    assert r.stats.decode_tokens == 2  # the EOS token itself is never fed back


def test_generation_stops_on_every_end_of_turn_id_not_only_eos(tiny):
    """ByteTokenizer's EOS is <|im_end|> (258) but <|endoftext|> (256) ends a turn too (tokenizer.eos_token_ids,
    as llama.cpp's end-of-generation set): a chat model that emits either must stop there."""
    model, tok = tiny
    assert tok.eos_token_id == 258 and tok.eos_token_ids == {256, 258}
    for end in (256, 258):
        r = generate(model, tok, "hi", max_new_tokens=10, on_token=force([104, end, 105, 105]))
        assert r.finish_reason == "eos" and r.token_ids == [104, end] and r.text == "h"


def test_budget_ends_generation_with_length(tiny):
    model, tok = tiny
    r = generate(model, tok, "x", max_new_tokens=3, on_token=force("abc", tok))
    assert (r.finish_reason, r.text, len(r.token_ids)) == ("length", "abc", 3)


def test_stop_string_ends_generation_and_is_not_included(tiny):
    model, tok = tiny
    forced = force("Hello. END more text", tok)
    stream = generate(model, tok, "x", max_new_tokens=30, stop=["END", "never"], on_token=forced, stream=True)
    pieces = list(stream)
    r = stream.result
    assert r.finish_reason == "stop"
    assert r.text == "Hello. "
    assert "".join(pieces) == r.text  # nothing of "END" was emitted before it was recognised
    assert len(r.token_ids) == len("Hello. END")  # it stopped on the D


def test_stop_string_split_across_a_multibyte_character(tiny):
    model, tok = tiny
    r = generate(model, tok, "x", max_new_tokens=30, stop="鲸", on_token=force("ok 鲸鱼", tok))
    assert (r.text, r.finish_reason) == ("ok ", "stop")


def test_streaming_never_yields_a_broken_character(tiny):
    model, tok = tiny
    text = "🐳 鲸鱼 é!"
    stream = generate(model, tok, "x", max_new_tokens=len(tok.encode(text)), on_token=force(text, tok), stream=True)
    pieces = list(stream)
    assert all("\ufffd" not in p for p in pieces), pieces
    assert "".join(pieces) == stream.result.text == text
    assert len(pieces) > 3  # it did stream, piece by piece


def test_a_character_cut_by_the_budget_is_dropped_not_shown_as_a_replacement_char(tiny):
    model, tok = tiny
    whale = tok.encode("🐳")  # 4 byte tokens; stop after 2 of them
    r = generate(model, tok, "x", max_new_tokens=3, on_token=force([65] + whale))
    assert r.token_ids == [65] + whale[:2]
    assert r.text == "A"


def test_a_stream_can_be_iterated_once(tiny):
    model, tok = tiny
    stream = generate(model, tok, "x", max_new_tokens=3, stream=True)
    assert isinstance(stream, GenerationStream)
    text = "".join(stream)
    assert text == stream.result.text
    with pytest.raises(RuntimeError, match="only once"):
        list(stream)


def test_bos_is_added_when_the_tokenizer_asks(tiny):
    class BosTokenizer(ByteTokenizer):
        bos_token_id, add_bos_token = 256, True

    assert prompt_to_ids(BosTokenizer(), "hi", raw=True) == ([[256, 104, 105]], "raw")
    assert prompt_to_ids(BosTokenizer(), "<|endoftext|>hi", raw=True) == ([[256, 104, 105]], "raw")  # once, not twice
    assert prompt_to_ids(ByteTokenizer(), "hi", raw=True) == ([[104, 105]], "raw")
    assert prompt_to_ids(BosTokenizer(), [104, 105]) == ([[104, 105]], "ids")  # ids are used as given


# ------------------------------------------------------------------------------------------------
# Prompt caching (tiny model)
# ------------------------------------------------------------------------------------------------
def test_cached_system_prompt_gives_the_same_tokens_and_skips_the_prefix(tiny):
    model, tok = tiny
    system = [{"role": "system", "content": "You are a tiny random model."}]
    system_ids = tok.apply_chat_template(system, add_generation_prompt=False, tokenize=True)
    pc = PromptCache.from_prefix(model, system_ids)
    for question in ("Hi?", "What now?"):
        msgs = system + [{"role": "user", "content": question}]
        ids = tok.apply_chat_template(msgs, tokenize=True)
        with forward_lengths(model) as lengths:
            cached = generate(model, tok, msgs, max_new_tokens=8, cache=pc)
        fresh = generate(model, tok, msgs, max_new_tokens=8, use_cache=False)
        assert cached.token_ids == fresh.token_ids
        if question == "Hi?":  # the first question reuses exactly the system prompt ...
            assert cached.stats.reused_tokens == len(system_ids)
        else:  # ... the next one also "<|im_start|>user\n", which the first question left in the cache
            assert cached.stats.reused_tokens == len(system_ids) + len(tok.encode("<|im_start|>user\n"))
        assert cached.stats.prefill_tokens == len(ids) - cached.stats.reused_tokens == lengths[0]
        assert_consistent(pc)


def test_the_same_prompt_twice_recomputes_only_the_last_token(tiny):
    model, tok = tiny
    pc = PromptCache(model)
    first = generate(model, tok, "same prompt", max_new_tokens=5, cache=pc)
    again = generate(model, tok, "same prompt", max_new_tokens=5, cache=pc)
    assert again.token_ids == first.token_ids
    assert again.stats.reused_tokens == len("same prompt") - 1  # the last token's logits are needed
    assert again.stats.prefill_tokens == 1


# ------------------------------------------------------------------------------------------------
# Bad input: a clear error, and the cache exactly as it was
# ------------------------------------------------------------------------------------------------
BAD_CALLS = {
    "empty string": (dict(prompt=""), ValueError, "empty"),
    "empty list": (dict(prompt=[]), ValueError, "empty"),
    "max_new_tokens 0": (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
    "max_new_tokens -3": (dict(max_new_tokens=-3), ValueError, "max_new_tokens"),
    "max_new_tokens 2.5": (dict(max_new_tokens=2.5), ValueError, "max_new_tokens"),
    "max_new_tokens None": (dict(max_new_tokens=None), ValueError, "max_new_tokens"),
    "top_p 1.5": (dict(top_p=1.5), ValueError, "top_p"),
    "top_p -0.1": (dict(top_p=-0.1), ValueError, "top_p"),
    "temperature -1": (dict(temperature=-1.0), ValueError, "temperature"),
    "top_k -1": (dict(top_k=-1), ValueError, "top_k"),
    "empty stop string": (dict(stop=[""]), ValueError, "stop"),
    "id out of range": (dict(prompt=[1, 2, 999]), TokenizerError, "999"),
    "message without content": (dict(prompt=[{"role": "user"}]), TokenizerError, "content"),
    "message content not a str": (dict(prompt=[{"role": "user", "content": 5}]), TokenizerError, "content"),
    "one message, not a list": (dict(prompt={"role": "user", "content": "hi"}), ValueError, "list of messages"),
    "mixed prompt list": (dict(prompt=[1, "a"]), DTypeError, "prompt must be integer token ids"),
    "context overflow": (dict(prompt="x" * 100, max_new_tokens=29), ContextLengthError, "129 exceeds"),
    "cache is a LayerCaches": (dict(cache="layer_caches"), CacheError, "PromptCache"),
    "cache is a dict": (dict(cache={}), CacheError, "PromptCache"),
    "cache of another model": (dict(cache="other_model"), CacheError, "different model"),
    "cache with use_cache=False": (dict(use_cache=False, cache="own"), ValueError, "use_cache"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_raises_before_the_cache_changes(tiny, case):
    model, tok = tiny
    pc = PromptCache(model)
    generate(model, tok, "a shared prefix", max_new_tokens=3, cache=pc)
    ids_before, k_before = list(pc.ids), pc.caches[0].keys.data.copy()
    kwargs, error, match = BAD_CALLS[case]
    kwargs = dict(dict(prompt="a shared prefix and more", max_new_tokens=4, cache=pc), **kwargs)
    if kwargs["cache"] == "layer_caches":
        kwargs["cache"] = model.new_cache(1, 64)
    elif kwargs["cache"] == "other_model":
        kwargs["cache"] = PromptCache(tiny_llama(seed=1))
    elif kwargs["cache"] == "own":
        kwargs["cache"] = pc
    with pytest.raises(error, match=match):
        generate(model, tok, kwargs.pop("prompt"), **kwargs)
    assert pc.ids == ids_before
    assert_consistent(pc)
    np.testing.assert_array_equal(pc.caches[0].keys.data, k_before)


def test_prompt_cache_grows_by_doubling_so_a_long_chat_copies_log_n_times(tiny):
    """Growing a KV cache copies everything cached; growing to exactly what is needed would copy at every
    decode step past the first allocation (O(n^2)). Doubling copies log2(n) times, capped at the context."""
    model, _ = tiny  # context 128
    pc = PromptCache(model, max_len=8)
    sizes = []
    for token in range(100):  # one token at a time, as decoding does
        pc.extend([token % 200])
        if not sizes or pc.caches.max_len != sizes[-1]:
            sizes.append(pc.caches.max_len)
    assert sizes == [8, 16, 32, 64, 128]
    assert_consistent(pc)
    pc.reserve(128)  # already there: nothing to do
    assert pc.caches.max_len == 128
    with pytest.raises(ContextLengthError, match="context length of 128"):
        pc.reserve(129)


def test_exactly_filling_the_context_is_allowed(tiny):
    model, tok = tiny  # n_ctx = 128
    r = generate(model, tok, "x" * 100, max_new_tokens=28)
    assert len(r.prompt_ids) + r.stats.decode_tokens <= 128


def test_from_prefix_rejects_a_prefix_longer_than_the_context(tiny):
    model, _ = tiny
    with pytest.raises(ContextLengthError, match="context length of 128"):
        PromptCache.from_prefix(model, [1] * 129)
    with pytest.raises(ValueError, match="at least one"):
        PromptCache.from_prefix(model, [])


def test_on_token_returning_a_bad_id_is_an_error(tiny):
    model, tok = tiny
    pc = PromptCache(model)
    with pytest.raises(TokenizerError, match="on_token returned 9999"):
        generate(model, tok, "x", max_new_tokens=5, cache=pc, on_token=lambda s, t, l: 9999 if s == 2 else None)
    assert_consistent(pc)


# ------------------------------------------------------------------------------------------------
# Failures midway: the cache stays consistent and the next call is exactly a fresh run
# ------------------------------------------------------------------------------------------------
def test_callback_raising_on_step_3_leaves_the_cache_consistent(tiny):
    model, tok = tiny

    def boom(step, token, logits):
        if step == 3:
            raise RuntimeError("callback failed")

    pc = PromptCache(model)
    with pytest.raises(RuntimeError, match="callback failed"):
        generate(model, tok, "first prompt", max_new_tokens=10, cache=pc, on_token=boom)
    assert_consistent(pc)
    assert len(pc) == len("first prompt") + 3  # prompt + the 3 tokens fed before the failure
    after = generate(model, tok, "second prompt", max_new_tokens=10, cache=pc)
    assert after.token_ids == generate(model, tok, "second prompt", max_new_tokens=10, use_cache=False).token_ids


@pytest.mark.parametrize("fail_on_call", [1, 3], ids=["during prefill", "during decode"])
def test_interrupt_inside_a_layer_leaves_the_cache_consistent(tiny, fail_on_call):
    model, tok = tiny
    layer = model.model.layers[1]  # layer 0 has already appended its K/V when this one raises
    calls, original = [0], layer.forward

    def flaky(*args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_on_call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    pc = PromptCache.from_prefix(model, tok.encode("shared "))
    object.__setattr__(layer, "forward", flaky)
    try:
        with pytest.raises(KeyboardInterrupt):
            generate(model, tok, "shared prefix, then Ctrl-C", max_new_tokens=10, cache=pc)
    finally:
        layer.__dict__.pop("forward", None)
    assert_consistent(pc)
    prompt = tok.encode("shared prefix, then Ctrl-C")
    if fail_on_call == 1:  # the prefill of the new part is undone: the shared prefix stays
        assert pc.ids == tok.encode("shared ")
    else:  # prefill + decode step 0 stay; the interrupted decode step 1 is undone
        assert pc.ids[:-1] == prompt and len(pc) == len(prompt) + 1
    again = generate(model, tok, "shared prefix, then Ctrl-C", max_new_tokens=10, cache=pc)
    fresh = generate(model, tok, "shared prefix, then Ctrl-C", max_new_tokens=10, use_cache=False)
    assert again.token_ids == fresh.token_ids


def test_abandoning_a_stream_leaves_the_cache_consistent(tiny):
    model, tok = tiny
    pc = PromptCache(model)
    stream = generate(model, tok, "stop reading early", max_new_tokens=20, cache=pc, stream=True,
                      on_token=force("abcdefghij", tok))
    for i, _ in enumerate(stream):
        if i == 3:
            break
    assert stream.result is None
    assert_consistent(pc)
    r = generate(model, tok, "stop reading early", max_new_tokens=6, cache=pc)
    assert r.token_ids == generate(model, tok, "stop reading early", max_new_tokens=6, use_cache=False).token_ids


# ------------------------------------------------------------------------------------------------
# The real model: parity with HF greedy, cached == uncached, one token per decode step
# ------------------------------------------------------------------------------------------------
REFERENCE = json.loads((FIXTURES / "smollm2_reference.json").read_text())
PROMPTS = {p["name"]: p for p in REFERENCE["prompts"]}
N_TOKENS = 12  # HF's greedy continuation is compared on its first 12 tokens (all of it if it ends sooner)


@pytest.fixture(scope="module")
def real(smollm2_path):
    from litetorch.models.loading import load_model
    return load_model(smollm2_path)


def _prompt(p):
    return p["messages"] if p["kind"] == "chat" else p["text"]


@pytest.fixture(scope="module")
def cached_runs(real):
    """Greedy, with the cache, on every fixture prompt; with the forward lengths of each run."""
    model, tok = real
    out = {}
    for name, p in PROMPTS.items():
        with forward_lengths(model) as lengths:
            r = generate(model, tok, _prompt(p), raw=True, max_new_tokens=min(N_TOKENS, len(p["greedy_ids"])))
        out[name] = (r, lengths)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PROMPTS))
def test_cached_greedy_equals_hf_greedy(real, cached_runs, name):
    p = PROMPTS[name]
    r, lengths = cached_runs[name]
    assert r.prompt_ids == p["input_ids"]  # same tokenization and chat template as HF
    hf = p["greedy_ids"][:len(r.token_ids)]
    assert r.token_ids == hf, f"{name}: ours {r.token_ids} vs HF {hf}"
    chunk = DEFAULT_RUNTIME.prefill_chunk or p["n_tokens"]  # prefill in pieces of this many tokens (None: one)
    n_pieces = -(-p["n_tokens"] // chunk)
    assert lengths[:n_pieces] == [chunk] * (n_pieces - 1) + [p["n_tokens"] - chunk * (n_pieces - 1)]
    assert lengths[n_pieces:] == [1] * r.stats.decode_tokens  # then ONE token per step
    if p["eos_stopped"] and len(p["greedy_ids"]) <= N_TOKENS:
        assert r.finish_reason == "eos" and r.token_ids == p["greedy_ids"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["short", "chat_france", "arithmetic"])
def test_uncached_greedy_equals_cached_and_hf(real, cached_runs, name):
    model, tok = real
    p = PROMPTS[name]
    cached = cached_runs[name][0]
    uncached = generate(model, tok, _prompt(p), raw=True, max_new_tokens=8, use_cache=False)
    assert uncached.token_ids == cached.token_ids[:8] == p["greedy_ids"][:8]


@pytest.mark.slow
def test_real_cached_system_prompt_equals_from_scratch_and_hf(real):
    model, tok = real
    p = PROMPTS["chat_system"]  # system "You are a pirate..." + user "Where do whales live?"
    system_ids = tok.apply_chat_template(p["messages"][:1], add_generation_prompt=False, tokenize=True)
    pc = PromptCache.from_prefix(model, system_ids)
    cached = generate(model, tok, p["messages"], max_new_tokens=8, cache=pc)
    assert cached.stats.reused_tokens == len(system_ids)
    assert cached.stats.prefill_tokens == p["n_tokens"] - len(system_ids)
    assert cached.token_ids == p["greedy_ids"][:8]  # HF, from scratch
    # a different question with the same system prompt reuses the system prompt again
    other = p["messages"][:1] + [{"role": "user", "content": "Name a fish."}]
    again = generate(model, tok, other, max_new_tokens=4, cache=pc)
    assert again.stats.reused_tokens == len(system_ids) + len(tok.encode("<|im_start|>user\n"))
    assert again.token_ids == generate(model, tok, other, max_new_tokens=4).token_ids


@pytest.mark.slow
def test_real_stop_string(real):
    model, tok = real
    p = PROMPTS["chat_france"]  # HF: "The capital of France is Paris.<|im_end|>"
    r = generate(model, tok, p["messages"], max_new_tokens=8, stop=[" Paris"])
    assert (r.text, r.finish_reason) == ("The capital of France is", "stop")


@pytest.mark.slow
def test_real_streaming_of_forced_emoji_and_cjk_never_shows_a_replacement_char(real):
    model, tok = real
    forced = tok.encode("🐳鲸")  # 3 + 3 byte-level tokens, none of them a whole character
    assert all("\ufffd" in tok.decode([i]) for i in forced)
    stream = generate(model, tok, [{"role": "user", "content": "Draw a whale."}], max_new_tokens=len(forced) + 2,
                      on_token=force(forced), stream=True)
    pieces = list(stream)
    assert all("\ufffd" not in piece for piece in pieces), pieces
    assert "".join(pieces) == stream.result.text
    assert stream.result.text.startswith("🐳鲸")
