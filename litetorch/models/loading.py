"""Loading real weights: GGUF files and Hugging Face checkpoints into `Llama` (lesson 11).

GGUF and HF name the same tensors differently, and GGUF stores the rows of Q and K permuted
for llama.cpp's *interleaved* RoPE. litetorch uses HF's half-split RoPE, so the loader
un-permutes them (`unpermute_qk`). Forget that and position 0 is still exact (a rotation by
angle 0 does nothing, whatever the pairing), but every later position rotates the wrong pairs of
coordinates: SmolLM2's logits are off by 4 at position 1 and 10-25 after, and greedy text
degenerates into loops (or a chat reply ends at once). No shape is wrong and nothing crashes.

A GGUF is loaded in two steps. `gguf_plan` says, for every parameter of the model, which GGUF
tensors make it (a fused `qkv_proj` stacks attn_q, attn_k and attn_v; Q/K are un-permuted), and
checks every name, type and shape before a single weight is read. `expand` then computes one
parameter's values from its tensors, each dequantized by its own ggml type, so files that mix
types (Q4_K_M: Q4_K, Q6_K, F32, ...) load like any other. The weights mode chooses when:

    weights="float32"    every parameter expanded once, at load (4 bytes per weight in memory)
    weights="quantized"  the file's blocks stay memory-mapped; a parameter is expanded each time a
                         layer reads it (models/quantized.py), with the same numbers

    load_model(path, dtype, weights)     -> (Llama, Tokenizer)   GGUF file or HF directory; default SmolLM2
    load_llama(path, dtype, weights)     -> Llama                the format is detected
    load_gguf(path, dtype, unpermute=True, weights="float32")        a Llama-architecture GGUF
    load_hf(directory, dtype)            -> Llama | Qwen3Moe | Qwen3Next, by config.json's model_type
                                                                   (the Qwen3 models' files: models/qwen3_io.py)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import checks
from ..errors import ConfigError, ModelFormatError, StateDictError
from ..io.hub import resolve_model_path
from ..nn.module import fused_keys
from ..nn.rope import unpermute_qk
from .base import empty_model
from .base import float_dtype as _float_dtype
from .config import LlamaConfig
from .llama import Llama
from .quantized import DEFAULT_CACHE_BYTES, QuantizedWeights

WEIGHTS_MODES = ("float32", "quantized")

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


@dataclass(frozen=True)
class Part:
    """One GGUF tensor's rows inside a parameter: `heads` > 0 means un-permute them for that many heads."""
    tensor: str
    heads: int = 0


def gguf_plan(gguf, model: Llama, unpermute: bool = True) -> dict[str, tuple[Part, ...]]:
    """Parameter name -> the GGUF tensors whose rows it stacks, in order; everything checked first.

    Every tensor of the file must map to a parameter and every parameter must be made (a tied model
    has no output.weight: lm_head is the embedding), each part must have the shape the model expects,
    and every type must be one litetorch dequantizes. A ModelFormatError names the file and the
    problem before any weight is read or any parameter is filled.
    """
    from ..io import quants
    config, where = model.config, str(gguf.path)
    by_hf = {}
    for name, info in gguf.tensors.items():
        hf = gguf_name_to_hf(name)
        if hf is None:
            if "rope_freqs" in name:
                raise ModelFormatError(f"{where}: tensor {name!r} (RoPE frequency scaling) is not supported")
            raise ModelFormatError(f"{where}: unexpected tensor {name!r}; litetorch maps only Llama tensors")
        try:
            quants.check_dequantizable(info.ggml_type, name)
        except ModelFormatError as e:
            raise ModelFormatError(f"{where}: {e}") from None
        by_hf[hf] = name
    heads = {"q_proj.weight": config.num_attention_heads, "k_proj.weight": config.num_key_value_heads}
    fused = fused_keys(model)
    plan, missing, used, wrong = {}, [], set(), []
    for key, param in model.named_parameters():  # a tied lm_head.weight is the embedding: listed once
        rows = fused.get(key, [(key, param.shape[0])])  # [(HF name, rows), ...]: one part unless fused
        parts = []
        for hf, n in rows:
            if hf not in by_hf:
                missing.append(hf)
                continue
            name = by_hf[hf]
            used.add(name)
            expected = (n, *param.shape[1:])
            if gguf.tensors[name].shape != expected:
                wrong.append(f"{name} has shape {gguf.tensors[name].shape}, expected {expected}")
            n_heads = next((h for suffix, h in heads.items() if hf.endswith(suffix)), 0) if unpermute else 0
            parts.append(Part(name, n_heads))
        plan[key] = tuple(parts)
    unexpected = sorted(set(gguf.tensors) - used)
    problems = ([f"missing tensors for {', '.join(missing)}"] if missing else []) + wrong + (
        [f"unexpected tensors {', '.join(unexpected)}"] if unexpected else [])
    if problems:
        raise ModelFormatError(f"{where}: " + "; ".join(problems))
    return plan


# lesson 11: begin (expand)
def expand(gguf, parts: tuple[Part, ...], out: np.ndarray) -> np.ndarray:
    """Write one parameter's values into `out` ([rows, ...] float32/float64, C-contiguous) and return it:
    its GGUF tensors dequantized (each by its own type), Q/K rows un-permuted, stacked in order."""
    r = 0
    for part in parts:  # qkv_proj: attn_q, attn_k, attn_v; gate_up_proj: ffn_gate, ffn_up; else one tensor
        rows = gguf.tensors[part.tensor].shape[0]
        view = out[r:r + rows]  # [rows, C]: this tensor's rows of the stacked parameter
        gguf.dequantize(part.tensor, out=view)  # by the tensor's own ggml type, written in place
        # GGUF keeps each head's rows of W_q / W_k in llama.cpp's interleaved-RoPE order; litetorch
        # (like HF) rotates the halves of each head, so put the rows back in half-split order.
        if part.heads:
            # [H*Dh, C]; rows within a head: [a0, b0, a1, b1, ...] -> [a0, a1, ..., b0, b1, ...]
            view[...] = unpermute_qk(view, part.heads)
        r += rows
    return out
# lesson 11: end (expand)


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
def load_gguf(path, dtype=np.float32, unpermute: bool = True, weights: str = "float32",
              cache_bytes: int = DEFAULT_CACHE_BYTES) -> Llama:
    """A GGUF file (a path, or a GGUFFile already open) -> Llama computing in `dtype`.
    weights="float32": every parameter expanded at load; "quantized": expanded when used, from the
    memory-mapped blocks, keeping at most `cache_bytes` of expanded arrays (see models/quantized.py).
    The raw file stays reachable as `model.gguf` (see GGUFView). `unpermute=False` keeps GGUF's Q/K
    row order: only for lessons that show why the un-permute is needed."""
    from ..io.gguf import GGUFFile
    _check_weights(weights, cache_bytes)
    gguf = path if isinstance(path, GGUFFile) else GGUFFile(path)  # header, metadata, tensor table; weights stay on disk
    config = LlamaConfig.from_gguf_metadata(gguf.metadata, gguf.tensors)  # shapes from the file, checked against it
    model = _empty_model(config, dtype)  # the module tree, parameters not yet filled
    plan = gguf_plan(gguf, model, unpermute)  # parameter -> its GGUF tensors; names, types, shapes checked
    if weights == "float32":
        for key, param in model.named_parameters():  # one parameter at a time: no second copy of the model
            param.data = expand(gguf, plan[key], out=np.empty(param.shape, model.dtype))
            gguf.release(*(part.tensor for part in plan[key]))  # the values are ours now: let the file's pages go
    else:  # every parameter becomes a view of the file, expanded when a layer reads it
        _expand_on_use(model, gguf, plan, cache_bytes)
    model.gguf = GGUFView(gguf)
    return model.eval()
# lesson 11: end (load_gguf)


def _expand_on_use(model: Llama, gguf, plan: dict, cache_bytes: int) -> None:
    """Replace every parameter by a QuantizedParameter reading from one QuantizedWeights (tied
    parameters stay one object)."""
    shapes = {key: param.shape for key, param in model.named_parameters()}

    def expand_on_use(key: str, out: np.ndarray) -> None:  # the same numbers as the float32 loader's
        expand(gguf, plan[key], out=out)

    store = QuantizedWeights(expand_on_use, shapes, model.dtype, cache_bytes, source=str(gguf.path))
    new = {id(param): store.parameter(key) for key, param in model.named_parameters()}
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                setattr(module, name, new[id(param)])  # a tied lm_head gets the embedding's new parameter


def _check_weights(weights, cache_bytes) -> None:
    checks.choice("weights", weights, WEIGHTS_MODES)
    checks.integer("cache_bytes", cache_bytes, lo=0)


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


def load_llama(path, dtype=np.float32, weights: str = "float32", cache_bytes: int = DEFAULT_CACHE_BYTES) -> Llama:
    """A GGUF file or an HF checkpoint directory -> Llama (the format is detected).
    weights="quantized" needs a GGUF file (an HF checkpoint holds no quantized blocks)."""
    _float_dtype(dtype)  # fail before reading anything
    _check_weights(weights, cache_bytes)
    path = resolve_model_path(path)  # a str or PathLike that exists, else ConfigError / ModelNotFoundError
    if path.is_dir():
        _check_hf_weights(weights, path)
        return load_hf(path, dtype)
    if path.suffix == ".gguf" or _magic(path) == b"GGUF":
        return load_gguf(path, dtype, weights=weights, cache_bytes=cache_bytes)
    raise ModelFormatError(f"{path}: not a GGUF file or an HF checkpoint directory")


def _check_hf_weights(weights: str, path: Path) -> None:
    if weights != "float32":
        raise ConfigError(f"weights={weights!r} keeps a GGUF file's quantized blocks; {path} is an HF checkpoint "
                          f"directory (float tensors): load it with weights='float32'")


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


def load_model(path=None, dtype=np.float32, weights: str = "float32", cache_bytes: int = DEFAULT_CACHE_BYTES):
    """(model, tokenizer) for any GGUF file / HF directory, or by default `LITETORCH_MODEL`, else the
    default SmolLM2-135M-Instruct (fetched once into LITETORCH_HOME).

    weights="float32" (default) expands every weight at load; weights="quantized" keeps a GGUF's
    blocks memory-mapped and expands each weight when it is used (less memory, slower; the same
    logits). `dtype` is what the model computes in either way."""
    _float_dtype(dtype)  # fail before reading (or fetching) anything
    _check_weights(weights, cache_bytes)
    path = resolve_model_path(path)
    if path.is_dir():  # tokenizer first: a missing tokenizer.json fails fast
        _check_hf_weights(weights, path)
        tok = load_tokenizer(path)
        return load_hf(path, dtype), tok
    from ..io.gguf import GGUFFile
    from ..tokenizer import Tokenizer
    gguf = GGUFFile(Path(path).expanduser())  # parsed once, for the tokenizer and the model
    tok = Tokenizer.from_gguf_metadata(gguf.metadata)  # first: bad tokenizer metadata fails before any weight is read
    return load_gguf(gguf, dtype, weights=weights, cache_bytes=cache_bytes), tok
