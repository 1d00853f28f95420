# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # 12 — Tokenization: byte-level BPE from scratch
#
# A model reads integers. We build SmolLM2's tokenizer in pure Python — the byte alphabet, the
# pre-tokenizer regex, the BPE merges — and check it id for id against `litetorch.Tokenizer`
# (which runs the same algorithm in HF's Rust `tokenizers`). Lesson: `lessons/12-tokenization.md`.

# %%
import os
import sys
import unicodedata
from pathlib import Path

import matplotlib.pyplot as plt

try:
    import litetorch  # noqa: F401
except ImportError:  # a source checkout without `pip install -e .`: use the repo next to this notebook
    sys.path.insert(0, str(Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
from litetorch.tokenizer import Tokenizer  # noqa: E402

OUT = Path(__file__).resolve().parent / "_out" if "__file__" in globals() else Path("_out")
OUT.mkdir(parents=True, exist_ok=True)

MODEL = Path(os.environ.get("LITETORCH_MODEL") or
             Path(os.environ.get("LITETORCH_HOME") or Path.home() / ".cache" / "litetorch")
             / "SmolLM2-135M-Instruct.Q4_1.gguf")
if not MODEL.is_file():
    print(f"SKIP: model file not found at {MODEL}.\n"
          "Set LITETORCH_MODEL or run `python -c 'from litetorch.io.hub import default_model_path as d; d()'`.")
    sys.exit(0)

# %% [markdown]
# ## The vocabulary and the merges live in the GGUF's metadata

# %%
from litetorch.io.gguf import GGUFFile  # noqa: E402

md = GGUFFile(MODEL).metadata
tokens = md["tokenizer.ggml.tokens"]          # id -> token string
merges = md["tokenizer.ggml.merges"]          # "a b", best first
print(f"{len(tokens)} tokens, {len(merges)} merges, pre-tokenizer {md['tokenizer.ggml.pre']!r}")
print("first tokens:", tokens[:5], "... first merges:", merges[:5])

# %% [markdown]
# ## Step 1 — the byte alphabet
#
# Every text is a sequence of UTF-8 bytes, so 256 symbols can spell anything: no "unknown token"
# ever. GPT-2 gives each byte a *printable* character so tokens stay readable strings: printable
# bytes stand for themselves, the others (space, newline, control bytes...) are shifted to
# characters from 256 up. That is why a space shows as `Ġ` (256 + 32) and a newline as `Ċ`.

# %%
def bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
print({repr(chr(b)): BYTE_TO_CHAR[b] for b in [ord(" "), ord("\n"), ord("a"), 0xE4]})

# %% [markdown]
# ## Step 2 — pre-tokenization: cut the text into words first
#
# Merges never cross a word boundary, so " the" and "the" can be different tokens but "e t" never
# becomes one. SmolLM2's rule (llama.cpp calls it `smollm`):
# 1. special tokens like `<|im_start|>` are cut out whole first (they are never merged);
# 2. every digit becomes its own piece (`\p{N}`: any Unicode number);
# 3. the GPT-2 regex splits the rest: contractions, ` ?letters`, ` ?numbers`, ` ?symbols`, spaces.
#
# Python's `re` has no `\p{L}` (Unicode letters), so we build those character classes from the
# Unicode database: a character is a letter if its category starts with `L`.

# %%
def unicode_class(first_letter: str) -> str:
    """A regex character-class body covering every code point whose category starts with `first_letter`."""
    ranges, start = [], None
    for cp in range(sys.maxunicode + 2):
        inside = cp <= sys.maxunicode and unicodedata.category(chr(cp))[0] == first_letter
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append(f"\\U{start:08x}-\\U{cp - 1:08x}")
            start = None
    return "".join(ranges)


import re  # noqa: E402

L, N = unicode_class("L"), unicode_class("N")
GPT2_REGEX = re.compile(rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^\s{L}{N}]+|\s+(?!\S)|\s+")
DIGIT = re.compile(rf"([{N}])")

SPECIALS = [t for t, ty in zip(tokens, md["tokenizer.ggml.token_type"]) if ty == 3]   # CONTROL tokens
SPECIAL_SPLIT = re.compile("(" + "|".join(re.escape(s) for s in sorted(SPECIALS, key=len, reverse=True)) + ")")


def pre_tokenize(text: str) -> list[str]:
    words = []
    for chunk in SPECIAL_SPLIT.split(text):            # (1) specials stay whole
        if chunk in SPECIALS:
            words.append(chunk)
            continue
        for piece in DIGIT.split(chunk):                # (2) digits one by one
            if piece:
                words.extend(GPT2_REGEX.findall(piece))  # (3) GPT-2 regex
    return words


print(pre_tokenize("<|im_start|>user\nIn 2024, I'd   say: tokenizers are fun!"))

# %% [markdown]
# ## Step 3 — BPE: apply merges by rank
#
# Start from single bytes; repeatedly find the adjacent pair with the best (lowest) rank in the
# merge list and glue it everywhere in the word; stop when no adjacent pair is a merge.

# %%
RANK = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
VOCAB = {t: i for i, t in enumerate(tokens)}


def bpe(word: str, verbose: bool = False) -> list[str]:
    symbols = [BYTE_TO_CHAR[b] for b in word.encode("utf-8")]   # bytes -> printable symbols
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: RANK.get(p, float("inf")))
        if best not in RANK:
            break
        merged, i = [], 0
        while i < len(symbols):                                   # glue every occurrence, left to right
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
        if verbose:
            print(f"  merge #{RANK[best]:>5} {best[0]!r:>10} + {best[1]!r:<10} -> {symbols}")
    return symbols


def encode(text: str) -> list[int]:
    ids = []
    for word in pre_tokenize(text):
        ids.extend([VOCAB[word]] if word in SPECIALS else [VOCAB[t] for t in bpe(word)])
    return ids


def decode(ids: list[int]) -> str:
    # a special token is its own text; any other token is spelled in the byte alphabet
    raw = b"".join(tokens[i].encode("utf-8") if tokens[i] in SPECIALS else bytes(CHAR_TO_BYTE[c] for c in tokens[i])
                   for i in ids)
    return raw.decode("utf-8", errors="replace")   # a character cut in half would show as U+FFFD


print("merging ' tokenization' step by step:")
print("final:", bpe(" tokenization", verbose=True))

# %% [markdown]
# ## Check: the same ids as litetorch.Tokenizer (HF `tokenizers` underneath)

# %%
tok = Tokenizer.from_gguf_metadata(md)
samples = [
    "Hello world!", "The year 2024 had 366 days.", "  indented\n\tcode = x**2  # square",
    "naïve café résumé", "日本語のテキスト", "whales 🐋 and emoji 👨‍👩‍👧", "don't you'll we've",
    "<|im_start|>user\nhi<|im_end|>", "3.14159 and ٣ and ２", "    ", "a\n\n\nb", "tokenization",
]
for text in samples:
    ours, reference = encode(text), tok.encode(text)
    assert ours == reference, (text, ours, reference)
    assert decode(ours) == tok.decode(ours) == text
    print(f"OK {len(ours):>3} tokens  {text!r:.45}")
print("pure-Python BPE == litetorch.Tokenizer on", len(samples), "strings")

# %% [markdown]
# ## Pictures: how long are tokens, and how many does each language need?

# %%
lengths = [len(t.encode("utf-8")) if t in SPECIALS else len(t) for t in tokens]   # bytes per token
texts = {
    "English": "The quick brown fox jumps over the lazy dog because it wanted to see the world.",
    "French": "Le renard brun rapide saute par-dessus le chien paresseux parce qu'il voulait voir le monde.",
    "German": "Der schnelle braune Fuchs springt über den faulen Hund, weil er die Welt sehen wollte.",
    "Python": "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "Chinese": "敏捷的棕色狐狸跳过了懒狗，因为它想看看这个世界。",
    "Emoji": "🐋🐬🐟🦈🐙🦑🦀🐡🐠🦐",
}
bytes_per_token = {k: len(v.encode("utf-8")) / len(tok.encode(v)) for k, v in texts.items()}

fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
ax1.hist([min(n, 20) for n in lengths], bins=range(1, 22), color="tab:blue", edgecolor="white")
ax1.set(title="SmolLM2 vocabulary: token length", xlabel="bytes per token (20 = 20 or more)", ylabel="tokens")
ax2.bar(list(bytes_per_token), list(bytes_per_token.values()), color="tab:orange")
ax2.set(title="compression: UTF-8 bytes per token", ylabel="bytes / token")
fig.tight_layout()
fig.savefig(OUT / "12-tokenization.png", dpi=120)
print({k: round(v, 2) for k, v in bytes_per_token.items()})
print("saved", OUT / "12-tokenization.png")

# %% [markdown]
# English packs ~4.5 bytes into a token; Chinese and emoji need a token for every 1–2 bytes, so the
# same sentence costs several times more context (and compute) — the vocabulary was learned mostly
# from English text and code.
