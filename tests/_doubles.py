"""Test doubles shared by test_generation.py, test_chat.py and test_trace_inspect.py.

- `ByteTokenizer`: ids 0..255 are UTF-8 bytes (one emoji is 4 tokens), 256..258 ChatML's specials;
- `tiny_llama`: a random 2-layer GQA Llama in float64, so cached and uncached logits agree to ~1e-15;
- `forward_lengths`, `force`, `assert_consistent`: ways to watch and steer a generation loop.
"""
import re
from contextlib import contextmanager

import numpy as np

import litetorch as lt
from litetorch.errors import TokenizerError
from litetorch.generation import PromptCache
from litetorch.models.config import LlamaConfig
from litetorch.models.llama import Llama
from litetorch.tokenizer import IncrementalDecoder


class ByteTokenizer:
    """Ids 0..255 are UTF-8 bytes; 256..258 are ChatML's special tokens. Enough for generate()."""

    SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}
    vocab_size = 259
    eos_token_id = 258
    eos_token_ids = {256, 258}
    bos_token_id = None
    add_bos_token = False

    def encode(self, text):
        ids = []
        for part in re.split(r"(<\|endoftext\|>|<\|im_start\|>|<\|im_end\|>)", text):
            ids += [self.SPECIALS[part]] if part in self.SPECIALS else list(part.encode("utf-8"))
        return ids

    def decode(self, ids, skip_special_tokens=False):
        names = {i: s for s, i in self.SPECIALS.items()}
        out, run = [], bytearray()
        for i in self._check_ids(ids):
            if i < 256:
                run.append(i)
                continue
            out.append(run.decode("utf-8", errors="replace"))
            run = bytearray()
            out.append("" if skip_special_tokens else names[i])
        return "".join(out) + run.decode("utf-8", errors="replace")

    def _check_ids(self, ids):
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise TokenizerError(f"id out of range in {ids}")
        return ids

    def stream_decoder(self, skip_special_tokens=False):
        return IncrementalDecoder(self, skip_special_tokens)

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False,
                            allow_special_tokens_in_content=False):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        text += "<|im_start|>assistant\n" if add_generation_prompt else ""
        if not tokenize:
            return text
        if allow_special_tokens_in_content:
            return self.encode(text)
        ids = []  # content is text: its bytes, even where they spell a special token (as litetorch's Tokenizer)
        for m in messages:
            ids += self.encode(f"<|im_start|>{m['role']}\n") + list(m["content"].encode("utf-8")) + self.encode("<|im_end|>\n")
        return ids + (self.encode("<|im_start|>assistant\n") if add_generation_prompt else [])


def tiny_llama(seed=0, n_ctx=128) -> Llama:
    """A random 2-layer GQA Llama in float64 (so cached and uncached logits agree to ~1e-15)."""
    lt.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=ByteTokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=n_ctx, rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = Llama(cfg).eval()  # untied: a random tied model just repeats its input token
    return model.to(np.float64)


@contextmanager
def forward_lengths(model):
    """Record T of every model(ids [B, T]) call: the number of tokens each forward pass processed."""
    lengths, original = [], model.forward

    def forward(input_ids, *args, **kwargs):
        lengths.append(np.asarray(input_ids).shape[1])
        return original(input_ids, *args, **kwargs)

    object.__setattr__(model, "forward", forward)  # an instance attribute shadows the method
    try:
        yield lengths
    finally:
        model.__dict__.pop("forward", None)


def force(text_or_ids, tok=None):
    """An on_token callback that replaces the first sampled tokens by these ids (then lets the model go)."""
    ids = tok.encode(text_or_ids) if isinstance(text_or_ids, str) else list(text_or_ids)
    return lambda step, token, logits: ids[step] if step < len(ids) else None


def assert_consistent(pc: PromptCache):
    lengths = {layer.length for layer in pc.caches}
    assert lengths == {len(pc.ids)}, f"cache lengths {lengths} but {len(pc.ids)} ids"
