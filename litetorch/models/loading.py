"""Loading real weights: GGUF files and Hugging Face checkpoints into `Llama` (lesson 11).

GGUF and HF name the same tensors differently, and GGUF stores the rows of Q and K permuted
for llama.cpp's *interleaved* RoPE. litetorch uses HF's half-split RoPE, so the loader
un-permutes them (`unpermute_qk`). Forget that and position 0 is still exact (a rotation by
angle 0 does nothing, whatever the pairing), but every later position rotates the wrong pairs of
coordinates: SmolLM2's logits are off by 4 at position 1 and 10-25 after, and greedy text
degenerates into loops (or a chat reply ends at once). No shape is wrong and nothing crashes.

    load_model(path)           -> (model, Tokenizer)   GGUF file or HF directory; default SmolLM2
    load_llama(path, dtype)    -> Llama                the format is detected
    load_gguf(path, dtype, unpermute=True)             a Llama-architecture GGUF
    load_hf(directory, dtype)  -> Llama | Qwen3Moe | Qwen3Next, by config.json's model_type
                                                       (the Qwen3 models' files: models/qwen3_io.py)
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError, StateDictError
from ..io.hub import resolve_model_path
from ..nn.rope import unpermute_qk
from .base import empty_model
from .base import float_dtype as _float_dtype
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
            if "rope_freqs" in name:
                raise ModelFormatError(f"{gguf.path}: tensor {name!r} (RoPE frequency scaling) is not supported")
            raise ModelFormatError(f"{gguf.path}: unexpected tensor {name!r}; litetorch maps only Llama tensors")
        w = gguf.dequantize(name).astype(dtype, copy=False)  # NumPy order: [out_features, in_features]
        # lesson 11: begin (un-permute)
        # GGUF keeps each head's rows of W_q / W_k in llama.cpp's interleaved-RoPE order; litetorch
        # (like HF) rotates the halves of each head, so put the rows back in half-split order.
        if unpermute and hf.endswith(("q_proj.weight", "k_proj.weight")):
            n_heads = config.num_attention_heads if hf.endswith("q_proj.weight") else config.num_key_value_heads
            expected = (n_heads * config.head_dim, config.hidden_size)
            if w.shape != expected:
                raise ModelFormatError(f"{gguf.path}: tensor {name!r} has shape {w.shape}, expected {expected}")
            # [H*Dh, C]; rows within a head: [a0, b0, a1, b1, ...] -> [a0, a1, ..., b0, b1, ...]
            w = unpermute_qk(w, n_heads)
        # lesson 11: end (un-permute)
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
        if name.startswith("_") or "file" not in self.__dict__:  # copy/pickle probe private names
            raise AttributeError(name)
        return getattr(_Prefix(self.file, ""), name)

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


def _empty_model(config: LlamaConfig, dtype) -> Llama:
    """The Llama module tree in `dtype`, parameters not yet filled (see `base.empty_model`)."""
    return empty_model(Llama, config, dtype)


# lesson 11: begin (load_gguf)
def load_gguf(path, dtype=np.float32, unpermute: bool = True) -> Llama:
    """A GGUF file (a path, or a GGUFFile already open) -> Llama, every tensor dequantized to `dtype`.
    The raw file stays reachable as `model.gguf` (see GGUFView). `unpermute=False` keeps GGUF's Q/K
    row order: only for lessons that show why the un-permute is needed."""
    from ..io.gguf import GGUFFile
    gguf = path if isinstance(path, GGUFFile) else GGUFFile(path)  # header, metadata, tensor table; weights stay on disk
    config = LlamaConfig.from_gguf_metadata(gguf.metadata, gguf.tensors)  # shapes from the file, checked against it
    model = _empty_model(config, dtype)  # the module tree, parameters not yet filled
    sd = gguf_state_dict(gguf, config, model.dtype, unpermute=unpermute)  # HF names -> dequantized arrays
    _load(model, sd, str(gguf.path))  # strict: a missing or unexpected tensor is an error
    model.gguf = GGUFView(gguf)
    return model.eval()
# lesson 11: end (load_gguf)


# config.json's model_type -> the litetorch model it loads into
HF_MODEL_TYPES = {"llama": "Llama", "mistral": "Llama", "qwen3_moe": "Qwen3Moe", "qwen3_next": "Qwen3Next"}


def load_hf(directory, dtype=np.float32):
    """An HF checkpoint directory (config.json + *.safetensors) -> the model its `model_type` names:
    Llama ("llama", "mistral"), Qwen3Moe ("qwen3_moe") or Qwen3Next ("qwen3_next"). Names are HF's."""
    from ..io.safetensors import load_hf_checkpoint
    _float_dtype(dtype)  # fail before reading anything
    cfg, tensors = load_hf_checkpoint(directory)
    model_type = _hf_model_type(cfg, directory)
    if model_type in ("qwen3_moe", "qwen3_next"):
        from .qwen3_io import model_from_hf
        return model_from_hf(cfg, tensors, dtype, str(directory))
    config = LlamaConfig.from_hf_config(cfg, tensors)  # checked against the tensors' shapes
    model = _empty_model(config, dtype)
    # Old checkpoints saved RoPE's inv_freq as a buffer; we compute it, so drop it.
    # copy out of the read-only memory map (the parameters must own writable memory)
    sd = {k: np.array(v, dtype=dtype) for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    _load(model, sd, str(directory))
    return model.eval()


def _hf_model_type(cfg, directory) -> str:
    """config.json's model_type if litetorch loads it (a config naming a Llama/Mistral architecture counts as
    "llama", whatever its model_type, as before); otherwise ModelFormatError naming the supported types."""
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if isinstance(model_type, str) and model_type in HF_MODEL_TYPES:
        return model_type
    archs = cfg.get("architectures") if isinstance(cfg, dict) else None
    if isinstance(archs, list) and {"LlamaForCausalLM", "MistralForCausalLM"} & set(
            a for a in archs if isinstance(a, str)):
        return "llama"
    raise ModelFormatError(f"{directory}: unsupported model_type {model_type!r:.60} (architectures {archs!r:.100}); "
                           f"litetorch loads {', '.join(HF_MODEL_TYPES)}")


def _load(model: Llama, sd: dict, where: str) -> None:
    """Strict load, except that a tied model may omit `lm_head.weight` (it is the embedding)."""
    if model.config.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    try:
        model.load_state_dict(sd, strict=True, assign=True)  # casts to the parameters' dtype; no extra copy
    except StateDictError as e:  # name the file: "which checkpoint" is the first question
        raise ModelFormatError(f"{where}: {e}") from None


def load_llama(path, dtype=np.float32) -> Llama:
    """A GGUF file or an HF checkpoint directory -> Llama (the format is detected)."""
    _float_dtype(dtype)  # fail before reading anything
    path = resolve_model_path(path)  # a str or PathLike that exists, else ConfigError / ModelNotFoundError
    if path.is_dir():
        return load_hf(path, dtype)
    if path.suffix == ".gguf" or _magic(path) == b"GGUF":
        return load_gguf(path, dtype)
    raise ModelFormatError(f"{path}: not a GGUF file or an HF checkpoint directory")


def _magic(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read(4)


def load_tokenizer(path):
    """The tokenizer stored with a model: an HF directory's tokenizer.json, or a GGUF's metadata."""
    from ..io.gguf import GGUFFile
    from ..tokenizer import Tokenizer
    path = Path(path).expanduser()
    if path.is_dir():
        return Tokenizer.from_pretrained_dir(path)
    return Tokenizer.from_gguf_metadata(GGUFFile(path).metadata)


def load_model(path=None, dtype=np.float32):
    """(model, tokenizer) for any GGUF file / HF directory, or by default `LITETORCH_MODEL`, else the
    default SmolLM2-135M-Instruct (fetched once into LITETORCH_HOME)."""
    _float_dtype(dtype)  # fail before reading anything
    path = resolve_model_path(path)
    if path.is_dir():  # tokenizer first: a missing tokenizer.json fails fast
        tok = load_tokenizer(path)
        return load_hf(path, dtype), tok
    from ..io.gguf import GGUFFile
    from ..tokenizer import Tokenizer
    _float_dtype(dtype)  # fail before reading anything
    gguf = GGUFFile(Path(path).expanduser())  # parsed once, for the tokenizer and the model
    tok = Tokenizer.from_gguf_metadata(gguf.metadata)  # first: bad tokenizer metadata fails before any weight is read
    return load_gguf(gguf, dtype), tok
