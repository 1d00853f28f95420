"""Which ggml type each tensor of a "Q4_K_M" file gets: llama.cpp's mix, for Llama-architecture files.

A file named Q4_K_M is not all Q4_K. `llama-quantize` (llama_tensor_get_type in llama.cpp's
src/llama-quant.cpp) spends more bits where errors cost most:

    tensor                          type
    output.weight                   Q6_K   (its errors land on every logit)
    token_embd.weight               Q4_K, or Q6_K when the model ties it to the output
    blk.N.attn_v.weight             Q6_K in the "more bits" layers, else Q4_K
    blk.N.ffn_down.weight           Q6_K in the "more bits" layers, else Q4_K
    every other matrix              Q4_K
    1-D tensors (the norms)         F32 (llama-quantize never quantizes them)

The "more bits" layers are the first eighth, the last eighth and every third layer in between:
`i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2` (integer division). For TinyLlama's 22 layers that is
layers 0, 1, 4, 7, 10, 13, 16, 19, 20, 21.

A K-quant needs rows of a multiple of 256 weights. When a row is not (SmolLM2's 576), llama.cpp
falls back: Q4_K -> Q5_0, Q6_K -> Q8_0 (the output/tied embedding goes straight to Q8_0), and to F16
if even 32 does not divide the row.
"""
from __future__ import annotations

import re
from typing import Mapping

from ..errors import ShapeError
from .kquants import QK_K

_LAYER = re.compile(r"^blk\.(\d+)\.")
_FALLBACK = {"Q4_K": "Q5_0", "Q6_K": "Q8_0"}   # llama.cpp's tensor_type_fallback, for the types used here


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama.cpp's rule for the layers whose attn_v and ffn_down get Q6_K in a Q4_K_M file."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def q4_k_m_type(name: str, shape: tuple[int, ...], n_layers: int, tied: bool) -> str:
    """The ggml type llama-quantize gives tensor `name` (NumPy `shape`) in a Q4_K_M file."""
    if len(shape) < 2:
        return "F32"
    row = shape[-1]
    if name == "output.weight" or (tied and name == "token_embd.weight"):
        return "Q6_K" if row % QK_K == 0 else "Q8_0"
    wanted = "Q4_K"
    m = _LAYER.match(name)
    if m and name.endswith(("attn_v.weight", "ffn_down.weight")) and use_more_bits(int(m.group(1)), n_layers):
        wanted = "Q6_K"
    if row % QK_K == 0:
        return wanted
    if row % 32 == 0:
        return _FALLBACK[wanted]
    return "F16"


def q4_k_m_types(shapes: Mapping[str, tuple[int, ...]], n_layers: int) -> dict[str, str]:
    """name -> ggml type for every tensor of a Llama GGUF (name -> NumPy shape), as Q4_K_M.
    The model is tied when it has no `output.weight`, as llama.cpp decides."""
    if n_layers < 1:
        raise ShapeError(f"n_layers must be >= 1, got {n_layers}")
    tied = "output.weight" not in shapes
    return {name: q4_k_m_type(name, tuple(shape), n_layers, tied) for name, shape in shapes.items()}
