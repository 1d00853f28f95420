"""Loading real weights: GGUF files and Hugging Face checkpoints into `Llama` (lesson 11).

GGUF and HF name the same tensors differently, and GGUF stores the rows of Q and K permuted
for llama.cpp's *interleaved* RoPE. litetorch uses HF's half-split RoPE, so the loader
un-permutes them (`unpermute_qk`). Forget that and the model still produces fluent text for a
few tokens (position 0 is not rotated at all) and then drifts into nonsense.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from ..nn.rope import unpermute_qk
from .config import LlamaConfig
from .llama import Llama

# lesson 11: begin (name map)
# GGUF name (per layer N)        -> HF name
GGUF_TO_HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{N}.attn_norm.weight": "model.layers.{N}.input_layernorm.weight",
    "blk.{N}.attn_q.weight": "model.layers.{N}.self_attn.q_proj.weight",  # rows permuted (interleaved RoPE)
    "blk.{N}.attn_k.weight": "model.layers.{N}.self_attn.k_proj.weight",  # rows permuted (interleaved RoPE)
    "blk.{N}.attn_v.weight": "model.layers.{N}.self_attn.v_proj.weight",
    "blk.{N}.attn_output.weight": "model.layers.{N}.self_attn.o_proj.weight",
    "blk.{N}.ffn_norm.weight": "model.layers.{N}.post_attention_layernorm.weight",
    "blk.{N}.ffn_gate.weight": "model.layers.{N}.mlp.gate_proj.weight",
    "blk.{N}.ffn_up.weight": "model.layers.{N}.mlp.up_proj.weight",
    "blk.{N}.ffn_down.weight": "model.layers.{N}.mlp.down_proj.weight",
}
# lesson 11: end (name map)
_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


def gguf_name_to_hf(name: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight` (None for unknown names)."""
    if name in GGUF_TO_HF:
        return GGUF_TO_HF[name]
    m = _LAYER.match(name)
    if m:
        pattern = GGUF_TO_HF.get(f"blk.{{N}}.{m.group(2)}")
        if pattern:
            return pattern.format(N=m.group(1))
    return None


def gguf_state_dict(gguf, config: LlamaConfig, dtype=np.float32, unpermute: bool = True) -> dict:
    """Dequantize every tensor of a GGUF file into an HF-named state_dict (Q/K un-permuted)."""
    out = {}
    for name in gguf.tensors:
        hf = gguf_name_to_hf(name)
        if hf is None:
            if name.startswith("rope_freqs") or name.endswith("rope_freqs.weight"):
                raise ModelFormatError(f"{gguf.path}: tensor {name!r} (RoPE frequency scaling) is not supported")
            raise ModelFormatError(f"{gguf.path}: unexpected tensor {name!r}; litetorch maps only Llama tensors")
        w = gguf.dequantize(name).astype(dtype, copy=False)
        if unpermute and hf.endswith("q_proj.weight"):
            w = unpermute_qk(w, config.num_attention_heads)
        elif unpermute and hf.endswith("k_proj.weight"):
            w = unpermute_qk(w, config.num_key_value_heads)
        out[hf] = w
    return out


class GGUFView:
    """The raw file, as stored, for lessons: `model.gguf.blk[3].attn_q.weight` (dequantized, *not*
    un-permuted, NumPy order), `model.gguf.token_embd.weight`, `model.gguf.file.metadata`."""

    def __init__(self, gguf):
        self.file = gguf
        n = int(gguf.metadata.get("llama.block_count", 0))
        self.blk = [_Prefix(gguf, f"blk.{i}.") for i in range(n)]

    def __getattr__(self, name):
        return getattr(_Prefix(self.__dict__["file"], ""), name)

    def __repr__(self):
        return f"GGUFView({self.file.path}, {len(self.file.tensors)} tensors)"


class _Prefix:
    def __init__(self, gguf, prefix):
        self._gguf, self._prefix = gguf, prefix

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        full = self._prefix + name
        if full in self._gguf.tensors:
            return self._gguf.dequantize(full)
        if any(t.startswith(full + ".") for t in self._gguf.tensors):
            return _Prefix(self._gguf, full + ".")
        raise AttributeError(f"GGUF has no tensor or group {full!r}")

    def __dir__(self):
        return sorted({t[len(self._prefix):].split(".")[0] for t in self._gguf.tensors if t.startswith(self._prefix)})


def _empty_model(config: LlamaConfig) -> Llama:
    """Build the module tree without spending time and memory on a random init we overwrite."""
    from ..nn import init
    with init.skip_init():
        return Llama(config)


def load_gguf(path, dtype=np.float32, unpermute: bool = True) -> Llama:
    from ..io.gguf import GGUFFile
    gguf = GGUFFile(path)
    config = LlamaConfig.from_gguf_metadata(gguf.metadata, gguf.tensors.keys())
    model = _empty_model(config)
    sd = gguf_state_dict(gguf, config, dtype, unpermute=unpermute)
    _load(model, sd, str(path))
    model.gguf = GGUFView(gguf)
    model.to(dtype)
    return model.eval()


def load_hf(directory, dtype=np.float32) -> Llama:
    from ..io.safetensors import load_hf_checkpoint
    cfg, tensors = load_hf_checkpoint(directory)
    config = LlamaConfig.from_hf_config(cfg)
    model = _empty_model(config)
    sd = {k: np.asarray(v, dtype=dtype) for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    _load(model, sd, str(directory))
    model.to(dtype)
    return model.eval()


def _load(model: Llama, sd: dict, where: str) -> None:
    """Strict load, except that a tied model may omit `lm_head.weight` (it is the embedding)."""
    if model.config.tie_word_embeddings:
        sd.setdefault("lm_head.weight", sd.get("model.embed_tokens.weight"))
    try:
        model.load_state_dict(sd, strict=True)
    except Exception as e:  # name the file: "which checkpoint" is the first question
        raise ModelFormatError(f"{where}: {e}") from None


def load_llama(path, dtype=np.float32) -> Llama:
    path = Path(path)
    if path.is_dir():
        return load_hf(path, dtype)
    if path.suffix == ".gguf" or (path.is_file() and _magic(path) == b"GGUF"):
        return load_gguf(path, dtype)
    if not path.exists():
        raise FileNotFoundError(f"no model at {path}")
    raise ModelFormatError(f"{path}: not a GGUF file or an HF checkpoint directory")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def load_tokenizer(path):
    from ..tokenizer import Tokenizer
    path = Path(path)
    if path.is_dir():
        return Tokenizer.from_pretrained_dir(path)
    from ..io.gguf import GGUFFile
    return Tokenizer.from_gguf_metadata(GGUFFile(path).metadata)


def load_model(path=None, dtype=np.float32):
    """(model, tokenizer) for the default SmolLM2 (fetched once) or any GGUF file / HF directory."""
    if path is None:
        path = os.environ.get("LITETORCH_MODEL")
    if path is None:
        from ..io.hub import default_model_path
        path = default_model_path()
    model = load_llama(path, dtype)
    tok = (load_tokenizer(path) if Path(path).is_dir()
           else __import__("litetorch.tokenizer", fromlist=["Tokenizer"]).Tokenizer.from_gguf_metadata(
               model.gguf.file.metadata))
    return model, tok
