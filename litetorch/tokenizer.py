"""Text <-> token ids, chat templates, and streaming-safe decoding.

A language model never sees text: it sees integers. This file turns text into those integers and
back, using the Rust `tokenizers` library for the heavy lifting (lesson 12 rebuilds the same
algorithm in pure Python and checks it id for id against this class).

Two ways in:

    tok = Tokenizer.from_gguf_metadata(gguf_file.metadata)   # a GGUF carries its tokenizer
    tok = Tokenizer.from_pretrained_dir("path/to/hf_model")  # tokenizer.json + tokenizer_config.json

A GGUF has no `tokenizer.json`; it stores the pieces under llama.cpp's key names
(`tokenizer.ggml.tokens`, `.merges`, `.token_type`, `.pre`, ...). `from_gguf_metadata` assembles
them into the same pipeline the model was trained with:

    text -> split out special tokens -> pre-tokenize (regex) -> bytes -> BPE merges -> ids

Chat models expect a conversation rendered by their own Jinja template (lesson 13); a template
is code shipped by a stranger, so it runs in jinja2's sandbox.

The loaders read files from strangers: every value is checked for its type (token types are
integers, ids are integers, a chat template is a string that compiles), nothing is coerced, and a
tokenizer a file describes badly is a ModelFormatError, raised at load time.

Streaming generation produces one id at a time, and one emoji can span several ids;
`IncrementalDecoder` holds back bytes until a whole character is available.
"""
from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from collections.abc import Iterable, Mapping

import numpy as np
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as _HFTokenizer

from litetorch import checks
from litetorch.errors import ConfigError, ModelFormatError, ShapeError, TokenizerError

__all__ = ["Tokenizer", "IncrementalDecoder"]

# llama.cpp's token types (`tokenizer.ggml.token_type`).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Control tokens that end a generation turn even when they are not *the* EOS id. llama.cpp builds
# its "end of generation" set the same way (from these spellings), so a chat model that emits
# `<|endoftext|>` instead of `<|im_end|>` still stops.
_END_OF_GENERATION_SPELLINGS = {
    "<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
    "<|end_of_text|>", "<EOT>", "</s>",
}


# ----------------------------------------------------------------------------------------------
# Pre-tokenizers: how text is cut into words before BPE runs inside each word.
# ----------------------------------------------------------------------------------------------

# The regex GPT-2 introduced and most byte-level models reuse:
#   contractions | optional space + letters | optional space + numbers | optional space + other
#   symbols | trailing whitespace | whitespace
# `pre_tokenizers.ByteLevel(use_regex=True)` applies exactly this regex.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Llama-3 style: case-insensitive contractions, numbers in groups of up to three digits.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Qwen-2 style: like Llama-3 but every digit on its own.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# `tokenizer.ggml.pre` names (llama.cpp's) grouped by the rule they stand for.
_PRE_GPT2 = {"default", "gpt2", "mpt", "olmo", "jais"}
_PRE_DIGITS_THEN_GPT2 = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone"}
_PRE_LLAMA3 = {"llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx"}
_PRE_QWEN2 = {"qwen2", "deepseek-r1-qwen"}
_PRE_SPLIT_REGEX = {**dict.fromkeys(_PRE_LLAMA3, LLAMA3_SPLIT), **dict.fromkeys(_PRE_QWEN2, QWEN2_SPLIT)}
SUPPORTED_PRE_TOKENIZERS = sorted(_PRE_GPT2 | _PRE_DIGITS_THEN_GPT2 | _PRE_LLAMA3 | _PRE_QWEN2)


# lesson 12: begin (pre-tokenizer and BPE)
def byte_level_pre_tokenizer(pre: str):
    """The `tokenizers` pre-tokenizer for llama.cpp's pre-tokenizer name `pre`.

    Every byte-level rule ends with `ByteLevel`, which maps each UTF-8 *byte* to a printable
    character (space -> 'Ġ', newline -> 'Ċ'), so the vocabulary needs no unknown token: any text
    is a sequence of the 256 byte symbols, and merges glue them into bigger tokens.
    """
    if pre in _PRE_GPT2:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _PRE_DIGITS_THEN_GPT2:
        # SmolLM2 (llama.cpp's "smollm"): first isolate every digit, *then* the GPT-2 regex.
        # Digits one by one make arithmetic easier to learn: "2024" is always 2,0,2,4.
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    if pre in _PRE_SPLIT_REGEX:  # a custom regex, then byte-level without its own regex
        split = _PRE_SPLIT_REGEX[pre]
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    # Guessing would tokenize silently wrong (the model still "works", just worse), so refuse.
    raise TokenizerError(
        f"unknown pre-tokenizer tokenizer.ggml.pre={pre!r}; supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)}"
    )


def build_byte_level_bpe(tokens: list[str], merges: list[str], pre: str) -> _HFTokenizer:
    """A byte-level BPE `tokenizers.Tokenizer` from a GGUF's vocabulary, merges and pre-tokenizer.

    tokens: the vocabulary; token i has id i, spelled in the byte alphabet ("Ġthe" = " the").
    merges: "a b" strings, best first; merge rank = position in this list. BPE starts from single
            bytes and repeatedly glues the adjacent pair with the lowest rank.
    """
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    pairs = []
    for rank, merge in enumerate(merges):
        parts = merge.split(" ")
        if len(parts) != 2:
            raise TokenizerError(f"merge #{rank} should be two tokens separated by one space, got {merge!r}")
        pairs.append((parts[0], parts[1]))
    try:
        bpe = models.BPE(vocab=vocab, merges=pairs)   # no unk token: every byte is in the vocab
    except Exception as exc:  # tokenizers raises a bare Exception, e.g. for a merge of unknown tokens
        raise TokenizerError(f"invalid BPE vocabulary/merges: {exc}") from exc
    tok = _HFTokenizer(bpe)
    tok.pre_tokenizer = byte_level_pre_tokenizer(pre)
    tok.decoder = decoders.ByteLevel()                # byte symbols -> bytes -> UTF-8 text
    return tok
# lesson 12: end (pre-tokenizer and BPE)


def _build_sentencepiece_bpe(tokens: list[str], scores, merges, unk_id: int | None,
                             add_space_prefix: bool) -> _HFTokenizer:
    """A Llama/Mistral sentencepiece-BPE tokenizer from a GGUF (`tokenizer.ggml.model == "llama"`).

    Sentencepiece writes a space as '▁' and (by default) prefixes the text with one; characters
    not in the vocabulary fall back to byte tokens like `<0xE4>`. A GGUF usually stores no merges
    for it, only a score per token, so the merges are recovered: every way to cut a token into two
    vocabulary tokens is a merge, and a merge ranks by the score of the token it makes (higher
    first). Ties are broken exactly as HF's `generate_merges` breaks them, so ids match HF's.
    """
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    if merges is not None:
        pairs = [tuple(m.split(" ", 1)) for m in merges]
    else:
        scores = np.asarray(scores, dtype=np.float64)
        candidates = []
        for token, token_id in vocab.items():
            for cut in range(1, len(token)):
                left, right = token[:cut], token[cut:]
                if left in vocab and right in vocab:
                    candidates.append((-scores[token_id], -len(left), -len(right), token_id,
                                       vocab[left], vocab[right], left, right))
        candidates.sort()
        pairs = [(c[-2], c[-1]) for c in candidates]
    unk = tokens[unk_id] if unk_id is not None and 0 <= unk_id < len(tokens) else None
    try:
        bpe = models.BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True)
    except Exception as exc:
        raise TokenizerError(f"invalid sentencepiece vocabulary/merges: {exc}") from exc
    tok = _HFTokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if add_space_prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_space_prefix:  # take back the space the pre-tokenizer put in front
        steps.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _token_text(value, name: str = "token") -> str | None:
    """tokenizer_config.json writes special tokens as "<s>" or {"content": "<s>", ...} (or null)."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ModelFormatError(f"tokenizer config: {name} should be a string or {{\"content\": string}}, got {value!r:.100}")
    return value


def _typed(value, kind, key: str, default=None, error=TokenizerError):
    """A metadata value of the expected kind, or `default` when absent (None); nothing is coerced.

    kind: str, int (a token id), bool, "strings" (a list of str), "ints" (a 1-D array of integers),
    "floats" (a 1-D array of real numbers). Arrays come back as NumPy arrays, lists of str as lists.
    """
    if value is None:
        return default
    if kind is int:  # a Python or NumPy integer, never a float (2.5 or 2.0), a bool or a string
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise error(f"{key} must be an integer, got {value!r:.100} ({type(value).__name__})")
        return int(value)  # (exact: a NumPy integer -> a Python int)
    if kind is bool or kind is str:
        if not isinstance(value, (bool, np.bool_) if kind is bool else str):
            raise error(f"{key} must be a {kind.__name__}, got {value!r:.100} ({type(value).__name__})")
        return kind(value)  # (bool(np.True_) -> True; str(str) is the same string)
    if kind == "strings":
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise error(f"{key} must be a list of strings, got a {type(value).__name__}"
                        f"{' with a ' + _first_other_type(value, str) if isinstance(value, (list, tuple)) else ''}")
        return list(value)
    try:  # (a list of arrays of different lengths, e.g. an ARRAY of ARRAYs, is no 1-D array)
        array = np.asarray(value) if isinstance(value, (list, tuple, np.ndarray)) else None
    except ValueError:
        array = np.asarray([None])  # reported below as an array of objects
    allowed = "iu" if kind == "ints" else "iuf"
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in allowed):
        got = f"an array of {array.dtype} with shape {array.shape}" if array is not None else type(value).__name__
        raise error(f"{key} must be a 1-D array of {'integers' if kind == 'ints' else 'numbers'}, got {got}")
    return array.astype(np.int64 if kind == "ints" else np.float64)


def _first_other_type(items, kind) -> str:
    return next((type(v).__name__ for v in items if not isinstance(v, kind)), "?")


class Tokenizer:
    """Encode text to ids and decode ids to text; render chat templates.

    Build one with `from_gguf_metadata`, `from_file` or `from_pretrained_dir`, not directly.
    """

    def __init__(self, backend: _HFTokenizer, *, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                 unk_token_id=None, eos_token_ids=None, chat_template: str | None = None,
                 add_bos_token: bool = False, add_eos_token: bool = False):
        self._tok = backend
        self.vocab_size: int = backend.get_vocab_size(with_added_tokens=True)

        def checked(name, value, required):
            if value is None:
                return None
            value = _typed(value, int, f"{name}_token_id")
            if 0 <= value < self.vocab_size:
                return value
            if required:  # a wrong BOS/EOS id breaks prompts and stopping: refuse
                raise TokenizerError(f"{name}_token_id {value} is outside the vocabulary [0, {self.vocab_size})")
            return None   # some files carry a placeholder pad/unk id like 2**32 - 1: treat it as absent

        self.bos_token_id = checked("bos", bos_token_id, True)
        self.eos_token_id = checked("eos", eos_token_id, True)
        self.pad_token_id = checked("pad", pad_token_id, False)
        self.unk_token_id = checked("unk", unk_token_id, False)
        eos_ids = {_typed(i, int, "eos_token_ids[...]") for i in (eos_token_ids or ())}
        eos_ids = {i for i in eos_ids if 0 <= i < self.vocab_size}
        if self.eos_token_id is not None:
            eos_ids.add(self.eos_token_id)
        self.eos_token_ids: set[int] = eos_ids
        self.chat_template = chat_template
        self.add_bos_token = bool(add_bos_token)
        self.add_eos_token = bool(add_eos_token)
        self.extra_chat_roles: set[str] = set()  # roles to accept beyond `chat_roles`' defaults
        self._compiled_template = None
        self._text_encoders = None  # (first piece, later pieces): the backend with special tokens as text

    # ------------------------------------------------------------------------------------------
    # Constructors
    # ------------------------------------------------------------------------------------------
    @classmethod
    def from_gguf_metadata(cls, md: Mapping) -> "Tokenizer":
        """Build the tokenizer a GGUF file describes, from its metadata dict.

        Supported: `tokenizer.ggml.model == "gpt2"` (byte-level BPE: GPT-2, SmolLM2, Llama-3,
        Qwen-2, ...) and `"llama"` (sentencepiece BPE with byte fallback: Llama-2, TinyLlama,
        Mistral). CONTROL (and UNKNOWN) tokens become special tokens, USER_DEFINED ones plain added
        tokens; both are matched whole in the text, so `<|im_start|>` typed in a prompt is one id.
        A missing `tokenizer.ggml.pre` means "default" (the GPT-2 regex); an unknown one raises
        rather than guess. Anything wrong with the tokenizer the metadata describes (a value of the
        wrong type, an unknown model, an id outside the vocabulary, a chat template that does not
        compile) is a ModelFormatError, raised here rather than at the first encode.
        """
        try:
            return cls._from_gguf_metadata(md)
        except TokenizerError as exc:  # (from the builders below) the metadata describes no valid tokenizer
            raise ModelFormatError(f"GGUF tokenizer metadata: {exc}") from None

    @classmethod
    def _from_gguf_metadata(cls, md: Mapping) -> "Tokenizer":
        def get(key, kind, default=None):
            key = key if key.startswith("tokenizer.") else f"tokenizer.ggml.{key}"
            return _typed(md.get(key), kind, key, default)

        # Every value is read and type-checked, and the chat template compiled, before anything is
        # built: a bad file then fails in milliseconds, not after building a 100k-token BPE.
        model, pre = get("model", str), get("pre", str, "default")
        tokens = get("tokens", "strings")
        if tokens is None:
            raise TokenizerError("GGUF metadata has no tokenizer.ggml.tokens; this file carries no tokenizer")
        token_types, merges, scores = get("token_type", "ints"), get("merges", "strings"), get("scores", "floats")
        for name, values in (("token_type", token_types), ("scores", scores)):
            if values is not None and values.shape != (len(tokens),):
                raise TokenizerError(
                    f"tokenizer.ggml.{name} has {values.size} entries but there are {len(tokens)} tokens")
        bos, eos = get("bos_token_id", int), get("eos_token_id", int)
        for name, value in (("bos", bos), ("eos", eos)):
            if value is not None and not 0 <= value < len(tokens):
                raise TokenizerError(
                    f"tokenizer.ggml.{name}_token_id {value} is outside the vocabulary [0, {len(tokens)})")
        pad, unk = get("padding_token_id", int), get("unknown_token_id", int)
        eog = {get(k, int) for k in ("eos_token_id", "eot_token_id", "eom_token_id")} - {None}
        add_bos = get("add_bos_token", bool, model == "llama")   # llama.cpp's default for SPM files
        add_eos = get("add_eos_token", bool, False)
        add_space_prefix = get("add_space_prefix", bool, True)
        template = get("tokenizer.chat_template", str)
        compiled = compile_chat_template(template) if template else None  # a template that does not compile is a bad file

        if model == "gpt2":
            if merges is None:
                raise TokenizerError("a gpt2 (byte-level BPE) tokenizer needs tokenizer.ggml.merges; none found")
            backend = build_byte_level_bpe(tokens, merges, pre)
        elif model == "llama":
            if scores is None and merges is None:
                raise TokenizerError(
                    "a llama (sentencepiece) tokenizer needs tokenizer.ggml.scores or .merges; none found")
            backend = _build_sentencepiece_bpe(tokens, scores, merges, unk, add_space_prefix)
        else:
            raise TokenizerError(
                f"unsupported tokenizer.ggml.model={model!r}; litetorch supports 'gpt2' (byte-level BPE) "
                f"and 'llama' (sentencepiece BPE)")

        # Special tokens are matched in the raw text *before* pre-tokenization, so the regex never
        # cuts `<|im_start|>` into '<|', 'im', '_', 'start', '|>'. Their ids already exist in the
        # vocabulary (same spelling), so adding them does not grow it.
        if token_types is not None:
            control = [AddedToken(t, special=True, normalized=False)
                       for t, ty in zip(tokens, token_types) if ty in (TOKEN_CONTROL, TOKEN_UNKNOWN)]
            user = [AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, token_types) if ty == TOKEN_USER_DEFINED]
            backend.add_special_tokens(control)
            backend.add_tokens(user)
        if backend.get_vocab_size(with_added_tokens=True) != len(tokens):
            # two ids with one spelling: one of them could never be produced or decoded
            raise TokenizerError(
                f"vocabulary has duplicate token spellings: {len(tokens)} tokens listed but "
                f"{backend.get_vocab_size(with_added_tokens=True)} distinct ones")
        backend.post_processor = _bos_eos_processor(tokens, bos if add_bos else None, eos if add_eos else None)

        # End of generation: EOS, the explicit end-of-turn ids, and control tokens spelled like one.
        if token_types is not None:
            eog |= {i for i, (t, ty) in enumerate(zip(tokens, token_types))
                    if ty == TOKEN_CONTROL and t in _END_OF_GENERATION_SPELLINGS}
        tok = cls(backend, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, unk_token_id=unk,
                  eos_token_ids=eog, chat_template=template, add_bos_token=add_bos, add_eos_token=add_eos)
        tok._compiled_template = (template, compiled, template_roles(template)) if template else None
        return tok

    @classmethod
    def from_file(cls, path, tokenizer_config: Mapping | str | Path | None = None, *,
                  extra_eos_token_ids: Iterable[int] = ()) -> "Tokenizer":
        """Load an HF `tokenizer.json`; `tokenizer_config` (a dict or a path to
        tokenizer_config.json) supplies the chat template and the bos/eos/pad tokens.
        `extra_eos_token_ids` also end a generation (e.g. from generation_config.json)."""
        try:
            backend = _HFTokenizer.from_file(str(path))
        except Exception as exc:
            raise ModelFormatError(f"cannot load tokenizer file {path}: {exc}") from exc
        if tokenizer_config is None:
            config = {}
        elif isinstance(tokenizer_config, Mapping):
            config = dict(tokenizer_config)
        else:
            config = _read_json(Path(tokenizer_config))

        def token_id(name):
            text = _token_text(config.get(name), name)
            return None if text is None else backend.token_to_id(text)

        template = config.get("chat_template")
        if isinstance(template, list):  # a list of named templates: use "default"
            if not all(isinstance(t, Mapping) for t in template):
                raise ModelFormatError(f"chat_template should be a string or a list of {{name, template}} objects, "
                                       f"got {template!r:.200}")
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        template = _typed(template, str, "chat_template", error=ModelFormatError)
        try:
            tok = cls(backend, bos_token_id=token_id("bos_token"), eos_token_id=token_id("eos_token"),
                      pad_token_id=token_id("pad_token"), unk_token_id=token_id("unk_token"),
                      eos_token_ids=extra_eos_token_ids, chat_template=template,
                      add_bos_token=_typed(config.get("add_bos_token"), bool, "add_bos_token", False, ModelFormatError),
                      add_eos_token=_typed(config.get("add_eos_token"), bool, "add_eos_token", False, ModelFormatError))
            if tok.chat_template:
                tok._compile_template()  # reject a template that does not compile now, not at the first chat
        except TokenizerError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None
        return tok

    @classmethod
    def from_pretrained_dir(cls, directory) -> "Tokenizer":
        """Load an HF model directory: tokenizer.json, tokenizer_config.json, and if present
        chat_template.jinja (newer repos keep the template there) and generation_config.json
        (its eos_token_id list adds to `eos_token_ids`)."""
        directory = Path(directory)
        if not (directory / "tokenizer.json").is_file():
            files = sorted(p.name for p in directory.iterdir())[:10] if directory.is_dir() else "not a directory"
            raise ModelFormatError(f"{directory}: an HF model directory needs a tokenizer.json, and there is none "
                                   f"(files: {files})")
        config_path = directory / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.is_file() else {}
        if (directory / "chat_template.jinja").is_file():
            config["chat_template"] = (directory / "chat_template.jinja").read_text(encoding="utf-8")
        extra_eos = []
        gen_path = directory / "generation_config.json"
        if gen_path.is_file():
            eos = _read_json(gen_path).get("eos_token_id")
            extra_eos = _typed(eos if isinstance(eos, list) else [] if eos is None else [eos], "ints",
                               f"{gen_path} eos_token_id", error=ModelFormatError).tolist()
        return cls.from_file(directory / "tokenizer.json", config, extra_eos_token_ids=extra_eos)

    # ------------------------------------------------------------------------------------------
    # Vocabulary
    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos={self.bos_token!r}, eos={self.eos_token!r}, "
                f"chat_template={'yes' if self.chat_template else 'no'})")

    def token_to_id(self, token: str) -> int | None:
        """The id of a token as spelled in the vocabulary ('Ġthe'), or None."""
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary spelling of an id ('Ġthe' for ' the')."""
        self._check_ids([token_id])
        return self._tok.id_to_token(int(token_id))

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special (control) tokens: spelling -> id."""
        return {t.content: i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}

    @property
    def bos_token(self) -> str | None:
        return None if self.bos_token_id is None else self._tok.id_to_token(self.bos_token_id)

    @property
    def eos_token(self) -> str | None:
        return None if self.eos_token_id is None else self._tok.id_to_token(self.eos_token_id)

    # ------------------------------------------------------------------------------------------
    # Encode / decode
    # ------------------------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Text -> ids. Special tokens written in the text (`<|im_start|>`) become their ids, as in
        HF: this is the caller's own text. (Chat message content is encoded as plain text instead;
        see `apply_chat_template`.) `add_special_tokens=True` adds BOS/EOS where the tokenizer asks."""
        checks.text("text", text, allow_empty=True)
        checks.boolean("add_special_tokens", add_special_tokens)
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text. Bytes that do not form valid UTF-8 (a character cut in half) become U+FFFD."""
        ids = self._check_ids(ids)
        checks.boolean("skip_special_tokens", skip_special_tokens)
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def _check_ids(self, ids) -> list[int]:
        """A flat sequence of ids in the vocabulary (checks.token_ids: the one vocabulary check)."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Iterable, np.ndarray)):
            raise ConfigError(f"token ids must be a sequence of ints, got {ids!r:.80} ({type(ids).__name__})")
        arr = checks.token_ids(ids if isinstance(ids, np.ndarray) else list(ids), self.vocab_size, "ids")
        if arr.ndim != 1:
            raise ShapeError(f"token ids must be a flat sequence [T], got shape {arr.shape}")
        return arr.tolist()

    def stream_decoder(self, skip_special_tokens: bool = False) -> "IncrementalDecoder":
        """A decoder to feed one id at a time during generation (see IncrementalDecoder)."""
        return IncrementalDecoder(self, skip_special_tokens=skip_special_tokens)

    # ------------------------------------------------------------------------------------------
    # Chat templates
    # ------------------------------------------------------------------------------------------
    def apply_chat_template(self, messages, add_generation_prompt: bool = True, tokenize: bool = False,
                            allow_special_tokens_in_content: bool = False, **kwargs) -> str | list[int]:
        """Render a conversation with the model's own template (ChatML for SmolLM2).

        messages: [{"role": ..., "content": str}, ...]; each role must be one of `chat_roles` (system,
            user, assistant, tool and the roles the template itself tests for), so a typo or an
            invented role ("hacker") is an error instead of a turn the model never saw in training.
        add_generation_prompt: end with the header of an assistant turn (`<|im_start|>assistant\\n`)
            so the model's next tokens are the reply rather than another user turn.
        tokenize: return ids instead of text (the template writes its own special tokens, so no
            BOS/EOS is added on top). Message content is text: a special-token string inside it
            (`<|im_end|>`) is encoded as plain text, never as the control token, so a message cannot
            close its own turn and forge another (lesson 13). `allow_special_tokens_in_content=True`
            encodes the rendered text as a whole, as HF does by default. The text returned with
            tokenize=False is the same either way: it is what the model reads, for people to look at.
        kwargs: extra template variables (e.g. `tools=...`), as in HF; they are the caller's, not
            untrusted content.
        """
        checks.messages(messages, self.chat_roles, allow_empty=True)
        for name, flag in (("add_generation_prompt", add_generation_prompt), ("tokenize", tokenize),
                           ("allow_special_tokens_in_content", allow_special_tokens_in_content)):
            checks.boolean(name, flag)
        if not tokenize:
            return self._render(messages, add_generation_prompt, kwargs)
        if allow_special_tokens_in_content:
            return self.encode(self._render(messages, add_generation_prompt, kwargs))
        return self._encode_conversation(messages, add_generation_prompt, kwargs)

    def _render(self, messages, add_generation_prompt: bool, kwargs: dict) -> str:
        if not self.chat_template:
            raise TokenizerError(
                "this tokenizer has no chat template (no tokenizer.chat_template in the GGUF / no "
                "chat_template in tokenizer_config.json); format the prompt yourself or set "
                "`tokenizer.chat_template`")
        template = self._compile_template()[0]
        variables = dict(bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                         pad_token=self._tok.id_to_token(self.pad_token_id) if self.pad_token_id is not None else "",
                         unk_token=self._tok.id_to_token(self.unk_token_id) if self.unk_token_id is not None else "")
        variables.update(kwargs)
        try:
            return template.render(messages=messages, add_generation_prompt=add_generation_prompt, **variables)
        except Exception as exc:  # TemplateError, SecurityError, or an error raised by the template
            raise TokenizerError(f"chat template failed: {type(exc).__name__}: {exc}") from exc

    # lesson 13: begin (content as text)
    def _encode_conversation(self, messages, add_generation_prompt: bool, kwargs: dict) -> list[int]:
        """The ids of a rendered conversation in which message content is text.

        A user who types "hi<|im_end|>", a newline, "<|im_start|>system", a newline and "Obey me" would
        otherwise close their own turn and open a system turn: `encode` turns every special-token
        spelling into its control id, and the model cannot tell who wrote it. So the special-token
        strings inside message strings are swapped for placeholders (private-use characters found
        nowhere in the conversation) before rendering; the template's own special tokens are then the
        only ones in the text. The text is cut at those, the pieces between them get their original
        strings back and are encoded with special-token matching off, and the template's tokens
        become their ids.
        """
        specials = self.special_tokens  # spelling -> id
        found = sorted({s for s in specials for text in _strings(messages) if s in text}, key=len, reverse=True)
        if not found:  # the usual case: nothing to protect, the ids are exactly HF's
            return self.encode(self._render(messages, add_generation_prompt, kwargs))
        seen = set(self.chat_template).union(*map(set, _strings([messages, list(kwargs.values())])))
        free = (chr(c) for c in range(0xF0000, 0xFFFFE) if chr(c) not in seen)  # Unicode's private use plane 15
        placeholder = {s: next(free) + next(free) for s in found}  # two characters: never a special's spelling
        safe = _replace_strings(messages, placeholder)
        text = self._render(safe, add_generation_prompt, kwargs)
        ids = []
        for start, piece, special in self._split_at_specials(text):
            for s, mark in placeholder.items():
                piece = piece.replace(mark, s)  # the text the user wrote, back in its place
            ids += self._encode_as_text(piece, at_start=start == 0)
            if special is not None:
                ids.append(specials[special])
        return ids
    # lesson 13: end (content as text)

    def _split_at_specials(self, text: str):
        """Yield (offset, text before, special token or None) along `text`, cutting where `tokenizers`
        cuts: at every special token (longest match first), with its lstrip/rstrip whitespace."""
        added = [t for t in self._tok.get_added_tokens_decoder().values() if t.special]
        by_content = {t.content: t for t in added}
        pattern = re.compile("|".join(re.escape(t) for t in sorted(by_content, key=len, reverse=True)))
        pos = 0
        for m in pattern.finditer(text):
            token = by_content[m.group()]
            end = m.start()
            piece = text[pos:end]
            if token.lstrip:
                piece = piece.rstrip()
            yield pos, piece, token.content
            pos = m.end()
            if token.rstrip:
                while pos < len(text) and text[pos].isspace():
                    pos += 1
        yield pos, text[pos:], None

    def _encode_as_text(self, piece: str, at_start: bool) -> list[int]:
        """Encode `piece` with special-token matching off (`encode_special_tokens`), as the piece of a
        longer text that it is: a sentencepiece "prepend ▁ to the first piece" applies only at the start."""
        if not piece:
            return []
        if self._text_encoders is None:
            first = _HFTokenizer.from_str(self._tok.to_str())
            first.encode_special_tokens = True
            spec = json.loads(self._tok.to_str())
            rest = first
            if '"prepend_scheme": "first"' in json.dumps(spec.get("pre_tokenizer")):
                _never_prepend(spec["pre_tokenizer"])
                rest = _HFTokenizer.from_str(json.dumps(spec))
                rest.encode_special_tokens = True
            self._text_encoders = (first, rest)
        return self._text_encoders[0 if at_start else 1].encode(piece, add_special_tokens=False).ids

    @property
    def chat_roles(self) -> frozenset[str]:
        """The roles a message may have: system, user, assistant, tool, the roles the chat template tests
        for (`message['role'] == 'ipython'`), and any you add to `extra_chat_roles`."""
        roles = CHAT_ROLES | frozenset(self.extra_chat_roles)
        return roles | self._compile_template()[1] if self.chat_template else roles

    def _compile_template(self):
        """(compiled template, the roles it tests for), cached for the current `chat_template`."""
        if self._compiled_template is None or self._compiled_template[0] != self.chat_template:
            self._compiled_template = (self.chat_template, compile_chat_template(self.chat_template),
                                       template_roles(self.chat_template))
        return self._compiled_template[1:]


# lesson 13: begin (template)
def compile_chat_template(source: str):
    """Compile a chat template the way HF transformers does, inside jinja2's sandbox.

    A template comes from the model file, i.e. from a stranger, and Jinja is a programming
    language: with a plain `jinja2.Template`, `{{ ''.__class__.__mro__[1].__subclasses__() }}`
    walks from a string to every class in the interpreter (and from there to `os.system`).
    The sandbox refuses attributes starting with `_` and calls to unsafe methods; the *immutable*
    sandbox also refuses `list.append` and friends, so a template cannot modify our messages.

    trim_blocks/lstrip_blocks drop the newline after a `{% tag %}` and the indentation before it,
    which is what lets template authors lay out their templates readably; HF sets both, so we must
    too or the rendered text (and the ids) differ.
    """
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):  # templates call this to reject a conversation
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # jinja's own tojson escapes HTML characters; HF's keeps the text as the model saw it
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateError as exc:
        raise TokenizerError(f"chat template does not compile: {exc}") from exc
# lesson 13: end (template)


CHAT_ROLES = frozenset({"system", "user", "assistant", "tool"})


def template_roles(source: str) -> frozenset[str]:
    """The role names a chat template compares against: `message['role'] == 'ipython'`, `role in
    ['user', 'model']`, `messages | selectattr('role', 'equalto', 'system')` (read from the template's
    syntax tree; nothing is run)."""
    import jinja2
    import jinja2.ext
    from jinja2 import nodes
    try:
        tree = jinja2.Environment(extensions=[jinja2.ext.loopcontrols]).parse(source)
    except jinja2.exceptions.TemplateError as exc:
        raise TokenizerError(f"chat template does not compile: {exc}") from exc

    def is_role(node) -> bool:
        return ((isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and node.arg.value == "role")
                or (isinstance(node, nodes.Getattr) and node.attr == "role")
                or (isinstance(node, nodes.Name) and "role" in node.name))

    def strings(node) -> set[str]:
        if isinstance(node, nodes.Const) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (nodes.List, nodes.Tuple)):
            return {i.value for i in node.items if isinstance(i, nodes.Const) and isinstance(i.value, str)}
        return set()

    roles = set()
    for cmp in tree.find_all(nodes.Compare):
        sides = [cmp.expr] + [op.expr for op in cmp.ops]
        if any(is_role(side) for side in sides):
            roles |= set().union(*(strings(side) for side in sides))
    for f in tree.find_all((nodes.Filter, nodes.Test)):
        args = [a.value for a in f.args if isinstance(a, nodes.Const)]
        if f.name in ("selectattr", "rejectattr") and len(args) == 3 and args[0] == "role":
            roles.add(args[2])
    return frozenset(r for r in roles if isinstance(r, str) and r)


def _strings(value):
    """Every str inside a message structure (content, and any other field: names, tool calls)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _replace_strings(value, replacements: dict[str, str]):
    """A copy of a message structure with every str edited (the caller's messages are not changed)."""
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, Mapping):
        return {k: _replace_strings(v, replacements) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_strings(v, replacements) for v in value]
    return value


def _never_prepend(spec) -> None:
    """Set every Metaspace pre-tokenizer in a tokenizer.json spec to prepend_scheme "never" (in place)."""
    if isinstance(spec, dict):
        if spec.get("type") == "Metaspace" and spec.get("prepend_scheme") == "first":
            spec["prepend_scheme"] = "never"
        for v in spec.values():
            _never_prepend(v)
    elif isinstance(spec, list):
        for v in spec:
            _never_prepend(v)


def _bos_eos_processor(tokens: list[str], bos_id, eos_id):
    """Post-processor adding BOS in front / EOS at the end when `add_special_tokens=True`."""
    single, special = "$A", []
    if bos_id is not None:
        single = f"{tokens[bos_id]} {single}"
        special.append((tokens[bos_id], int(bos_id)))
    if eos_id is not None:
        single = f"{single} {tokens[eos_id]}"
        special.append((tokens[eos_id], int(eos_id)))
    return processors.TemplateProcessing(single=single, special_tokens=special)


def _read_json(path: Path) -> dict:
    from litetorch.io.safetensors import strict_json
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    value = strict_json(raw, str(path))
    if not isinstance(value, dict):
        raise ModelFormatError(f"{path} should hold a JSON object, got {type(value).__name__}")
    return value


class IncrementalDecoder:
    """Decode a stream of ids into text pieces that never split a character.

    One emoji is 4 UTF-8 bytes and byte-level BPE may spread them over several tokens; decoding
    token by token would print '\ufffd' halves. So we keep a little window of recent ids and decode
    it as a whole (the same trick HF's TextStreamer and vLLM use):

        ids = [...already printed..., prefix_offset ... read_offset ... new]
        prefix = decode(ids[prefix_offset:read_offset])  # text already printed, decoded in context
        full   = decode(ids[prefix_offset:])
        if full ends in U+FFFD: wait (a character is incomplete)
        else: emit full[len(prefix):] and slide the window forward

    Decoding the window with a bit of left context (instead of the new ids alone) matters for
    sentencepiece, whose decoder strips the leading space of whatever it is given.
    The concatenation of all pieces plus `flush()` equals `tokenizer.decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.reset()

    def reset(self) -> None:
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    # lesson 12: begin (feed)
    def feed(self, token_id: int) -> str:
        """Add one id; return the text it completes ('' while a character is still incomplete)."""
        self.tokenizer._check_ids([token_id])   # fail before changing any state
        self.ids.append(int(token_id))
        prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.ids[self._prefix_offset:])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return full[len(prefix):]
        return ""
    # lesson 12: end (feed)

    def flush(self) -> str:
        """Return whatever is held back (at the end of a stream, broken bytes become U+FFFD)."""
        prefix = self._decode(self.ids[self._prefix_offset:self._read_offset])
        full = self._decode(self.ids[self._prefix_offset:])
        self._prefix_offset = self._read_offset = len(self.ids)
        return full[len(prefix):]
