"""Small K-quant Llama GGUFs for tests, written by litetorch's own writer and quantizers.

`write_small_llama(path, mix)`: a random 2-layer Llama (C = 256, 4 heads / 2 KV heads of 64, SwiGLU 512,
vocab 1024) with the sentencepiece-style tokenizer and Zephyr chat template of
scripts/make_tinyllama_gguf.py, every matrix quantized from Gaussian floats:

    mix="Q4_K_M"   llama.cpp's mix (quant_mix.q4_k_m_types): Q4_K, attn_v/ffn_down/output in Q6_K
    mix="Q6_K"     every matrix Q6_K (llama-quantize's Q6_K file type)
    mix="Q8_0" ... any one type for every matrix

Rows are 256 or 512 weights, so every K-quant applies without fallback. Norms are F32.
"""
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
try:
    import make_tinyllama_gguf as tinyllama  # noqa: E402
finally:
    sys.path.pop(0)

from litetorch.io.gguf import write_gguf  # noqa: E402
from litetorch.io.quant_mix import q4_k_m_types  # noqa: E402

SMALL = tinyllama.SMALL


def small_shapes(tied: bool = False) -> dict:
    shapes = tinyllama.tensor_shapes(SMALL)
    if tied:
        shapes.pop("output.weight")
    return shapes


def small_types(mix: str, tied: bool = False) -> dict:
    shapes = small_shapes(tied)
    if mix == "Q4_K_M":
        return q4_k_m_types(shapes, SMALL["n_layers"])
    return {name: (mix if len(shape) == 2 else "F32") for name, shape in shapes.items()}


def write_small_llama(path, mix: str = "Q4_K_M", tied: bool = False, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    shapes = small_shapes(tied)
    floats = {name: ((1.0 + 0.1 * rng.standard_normal(shape)) if len(shape) == 1
                     else 0.05 * rng.standard_normal(shape)).astype(np.float32)
              for name, shape in shapes.items()}
    return write_gguf(path, tinyllama.metadata(SMALL, f"small-{mix}"), floats, small_types(mix, tied))
