"""Write a TinyLlama-shaped GGUF with random weights, quantized as Q4_K_M (about 670 MB; never committed).

    python scripts/make_tinyllama_gguf.py                      # -> $LITETORCH_HOME/tinyllama-shaped-random.Q4_K_M.gguf
    python scripts/make_tinyllama_gguf.py --out /tmp/t.gguf --seed 1
    python scripts/make_tinyllama_gguf.py --small --out /tmp/s.gguf   # the same layout at 2 layers x 256

TinyLlama-1.1B's shapes: 22 layers, d_model 2048, 32 heads / 4 KV heads (head_dim 64), SwiGLU 5632,
vocab 32000, RoPE base 10000, context 2048, untied output. Each tensor gets the type llama-quantize
gives it in a Q4_K_M file (`litetorch.io.quant_mix`): Q4_K, with attn_v and ffn_down in Q6_K in 10 of
the 22 layers, output.weight in Q6_K, the norms in F32.

The weights are random *blocks*, not quantized random floats: quantizing 1.1B weights with the NumPy
K-quant quantizer runs at about 1.5 M weights/s for Q4_K here (12 minutes), while drawing valid Q4_K
and Q6_K blocks directly takes seconds. A random block is as much a "random weight" as a quantized
Gaussian: its scales are chosen so the weights it decodes to are centred on zero with a standard
deviation of about 0.02 (the usual init), so 22 layers run without overflow. Tensors of other types
(the norms; Q5_0/Q8_0 fallbacks in a small layout whose rows are not a multiple of 256) are drawn
as floats and quantized with litetorch's quantizers.

The tokenizer is sentencepiece-style (`tokenizer.ggml.model = llama`), built programmatically:
<unk>, <s>, </s>, the 256 byte tokens <0x00>..<0xFF>, single characters, then every piece ("▁" +)
letters of length 2, 3, 4 in a fixed order until the vocabulary is full. Each piece splits into two
shorter pieces of the vocabulary, so the BPE merges can be recovered from the scores as llama.cpp and
HF do. The chat template is Zephyr's (TinyLlama-Chat's): <|user|>, <|system|>, <|assistant|> turns,
each closed by </s>.
"""
from __future__ import annotations

import argparse
import os
import string
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from litetorch.io import kquants  # noqa: E402
from litetorch.io.gguf import RawTensor, write_gguf  # noqa: E402
from litetorch.io.quant_mix import q4_k_m_types  # noqa: E402

TINYLLAMA = dict(n_layers=22, d_model=2048, n_heads=32, n_kv_heads=4, d_ff=5632, vocab=32000, n_ctx=2048,
                 rope_base=10000.0)
SMALL = dict(n_layers=2, d_model=256, n_heads=4, n_kv_heads=2, d_ff=512, vocab=1024, n_ctx=512, rope_base=10000.0)
WEIGHT_STD = 0.02

ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n"
    "{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
    "{% endfor %}")

# llama.cpp's token types
NORMAL, UNKNOWN, CONTROL, BYTE = 1, 2, 3, 6


def sentencepiece_vocab(n_tokens: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(tokens, scores [V] float32, token types [V] int32) of a valid sentencepiece-BPE vocabulary.

    Ids 0..2 are <unk>, <s>, </s>; 3..258 the byte tokens; then single characters and pieces of
    2, 3, 4 characters over "▁" and the letters (in English frequency order), "▁" only in front.
    A piece's score is minus its rank among the merged pieces, so earlier pieces merge first.
    """
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    singles = ["▁"] + list(letters) + list(letters.upper()) + list(string.digits) + list(string.punctuation)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + singles
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256 + [NORMAL] * len(singles)
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(singles))]
    prev = ["▁"] + list(letters)                                 # pieces of length n + 1 extend these
    while len(tokens) < n_tokens:
        pieces = [p + c for p in prev for c in letters]          # every piece of this length, in order
        for piece in pieces:
            if len(tokens) == n_tokens:
                break
            tokens.append(piece)
            types.append(NORMAL)
            scores.append(-float(len(scores) - 259))
        prev = pieces
    if len(tokens) != n_tokens:
        raise ValueError(f"cannot build {n_tokens} tokens (need at least {len(tokens)})")
    return tokens, np.array(scores, np.float32), np.array(types, np.int32)


def metadata(cfg: dict, name: str) -> dict:
    tokens, scores, types = sentencepiece_vocab(cfg["vocab"])
    u32 = np.uint32
    return {
        "general.architecture": "llama", "general.name": name, "general.file_type": u32(15),  # MOSTLY_Q4_K_M
        "llama.context_length": u32(cfg["n_ctx"]), "llama.embedding_length": u32(cfg["d_model"]),
        "llama.block_count": u32(cfg["n_layers"]), "llama.feed_forward_length": u32(cfg["d_ff"]),
        "llama.rope.dimension_count": u32(cfg["d_model"] // cfg["n_heads"]),
        "llama.attention.head_count": u32(cfg["n_heads"]), "llama.attention.head_count_kv": u32(cfg["n_kv_heads"]),
        "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5),
        "llama.rope.freq_base": np.float32(cfg["rope_base"]),
        "llama.vocab_size": u32(cfg["vocab"]),
        "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": u32(1),
        "tokenizer.ggml.eos_token_id": u32(2), "tokenizer.ggml.unknown_token_id": u32(0),
        "tokenizer.ggml.padding_token_id": u32(2), "tokenizer.ggml.add_bos_token": True,
        "tokenizer.ggml.add_eos_token": False, "tokenizer.chat_template": ZEPHYR_TEMPLATE,
    }


def tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """GGUF name -> NumPy shape, in llama.cpp's order (embedding, the blocks, the final norm, output)."""
    C, H, Hkv, F, V = cfg["d_model"], cfg["n_heads"], cfg["n_kv_heads"], cfg["d_ff"], cfg["vocab"]
    Dh = C // H
    shapes = {"token_embd.weight": (V, C)}
    for i in range(cfg["n_layers"]):
        p = f"blk.{i}."
        shapes.update({p + "attn_norm.weight": (C,), p + "attn_q.weight": (H * Dh, C),
                       p + "attn_k.weight": (Hkv * Dh, C), p + "attn_v.weight": (Hkv * Dh, C),
                       p + "attn_output.weight": (C, H * Dh), p + "ffn_norm.weight": (C,),
                       p + "ffn_gate.weight": (F, C), p + "ffn_up.weight": (F, C), p + "ffn_down.weight": (C, F)})
    shapes.update({"output_norm.weight": (C,), "output.weight": (V, C)})
    return shapes


def random_q4_k(n_blocks: int, rng: np.random.Generator, std: float) -> np.ndarray:
    """n random valid Q4_K super-blocks whose weights have mean ~0 and standard deviation ~std.

    w = d*sc*q - dmin*m with q uniform in 0..15 (std 4.61). With dmin = 8 d and m = round(7.5 sc / 8),
    every sub-block is centred: w ~ d*sc*(q - 7.5). sc is drawn in 32..63, so d = std / (47.5 * 4.61)."""
    b = np.zeros(n_blocks, kquants.BLOCK_Q4_K)
    d = np.float16(std / (47.5 * 4.61))
    sc = rng.integers(32, 64, size=(n_blocks, 8), dtype=np.uint8)
    m = np.round(sc.astype(np.float32) * 7.5 / 8).astype(np.uint8)        # <= 59: fits in 6 bits
    b["d"], b["dmin"] = d, np.float16(8 * float(d))
    b["scales"] = kquants.pack_scales_q4_k(sc, m)
    b["qs"] = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
    return b.view(np.uint8).reshape(-1)


def random_q6_k(n_blocks: int, rng: np.random.Generator, std: float) -> np.ndarray:
    """n random valid Q6_K super-blocks: w = d*sc*(q - 32), q uniform in 0..63 (std 18.5), sc in 32..127."""
    b = np.zeros(n_blocks, kquants.BLOCK_Q6_K)
    b["ql"] = rng.integers(0, 256, size=(n_blocks, 128), dtype=np.uint8)
    b["qh"] = rng.integers(0, 256, size=(n_blocks, 64), dtype=np.uint8)
    b["scales"] = rng.integers(32, 128, size=(n_blocks, 16), dtype=np.int8)
    b["d"] = np.float16(std / (79.5 * 18.5))
    return b.view(np.uint8).reshape(-1)


RANDOM_BLOCKS = {"Q4_K": random_q4_k, "Q6_K": random_q6_k}


def random_tensor(name: str, shape: tuple[int, ...], type_name: str, rng: np.random.Generator):
    """One tensor: random blocks for Q4_K/Q6_K, else floats (norms ~1, matrices ~N(0, std)) for the writer."""
    if len(shape) == 1:                                    # RMSNorm gains: around 1
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    if type_name in RANDOM_BLOCKS:
        n_blocks = int(np.prod(shape)) // kquants.QK_K
        return RawTensor(type_name, tuple(shape), RANDOM_BLOCKS[type_name](n_blocks, rng, WEIGHT_STD))
    return (WEIGHT_STD * rng.standard_normal(shape)).astype(np.float32)   # quantized by write_gguf


def make_gguf(path, cfg: dict = TINYLLAMA, seed: int = 0, name: str = "TinyLlama-shaped random (Q4_K_M)") -> Path:
    """Write the model to `path` (atomically) and return the path."""
    shapes = tensor_shapes(cfg)
    types = q4_k_m_types(shapes, cfg["n_layers"])
    rng = np.random.default_rng(seed)
    tensors = {n: random_tensor(n, s, types[n], rng) for n, s in shapes.items()}
    float_types = {n: t for n, t in types.items() if not isinstance(tensors[n], RawTensor)}
    return write_gguf(path, metadata(cfg, name), tensors, float_types)


def default_path() -> Path:
    home = Path(os.environ.get("LITETORCH_HOME", Path.home() / ".cache" / "litetorch")).expanduser()
    return home / "tinyllama-shaped-random.Q4_K_M.gguf"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="output file (default: $LITETORCH_HOME/...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="the same layout at 2 layers x 256 (seconds, 1 MB)")
    args = ap.parse_args(argv)
    out = args.out or default_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    make_gguf(out, SMALL if args.small else TINYLLAMA, args.seed)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
