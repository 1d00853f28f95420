"""LoopLM files: GGUF (weights + `looplm.*` metadata, ternary weights packed), npz, safetensors. Lesson 21.

GGUF is the deployment file, and it is *one* file: the config (layer kinds, loop, exit, KV policy,
hyper-connection settings) as `looplm.*` metadata, every weight (the hyper-connections' mappings
included, as ordinary tensors next to the blocks they belong to) under litetorch's state_dict names.
The design we were handed wrote the mHC parameters to a sidecar `.mhc` file instead; one file cannot
be half-copied, its metadata describes exactly the tensors it holds, and the GGUF reader's checks
(every offset and length against the file size) cover the mappings too.

Ternary layers (BitLinear, `bitlinear=True`) are written packed by default (`ternary="packed"`):

    X.weight         the ternary matrix T [out, in]: llama.cpp's TQ2_0 (2.06 bits per weight, byte for
                     byte what the gguf package writes) when in % 256 == 0; otherwise litetorch's own
                     2-bit layout (`nn.bitlinear.pack_ternary`, four weights per byte) as an I8 tensor
                     [out, ceil(in / 4)], named in `looplm.ternary_layout`
    X.weight_scale   F32 [number of stacked matrices]: s = 1 / mean|W| of each, W_q = T / s

Loading a packed file builds the model with `PackedBitLinear` layers, whose logits equal the float
path's exactly. `ternary="float"` keeps BitLinear's float latent weights (to resume training).
npz and safetensors hold the state_dict as it is (packed or not) and the config as JSON.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelFormatError, ModelNotFoundError
from ..nn.bitlinear import BitLinear, PackedBitLinear, pack_ternary
from .looplm import LoopConfig, LoopLM

# llama.cpp-style names for the hyper-parameters llama models share; every other field is looplm.<field>
_FIELD_TO_META = {"vocab_size": "vocab_size", "d_model": "embedding_length", "n_heads": "attention.head_count",
                  "n_kv_heads": "attention.head_count_kv", "hidden": "feed_forward_length",
                  "max_len": "context_length", "eps": "attention.layer_norm_rms_epsilon", "rope": "rope.enabled",
                  "rope_base": "rope.freq_base"}
_META_TO_FIELD = {v: k for k, v in _FIELD_TO_META.items()}
TERNARY_LAYOUT = ("tq2_0 if in_features % 256 == 0, else litetorch-2bit "
                  "(I8 [out, ceil(in/4)]: code T+1, 4 per byte, low bits first)")


def gguf_metadata(config: LoopConfig, name: str = "looplm") -> dict:
    """`looplm.*` keys, the way llama.cpp names its `llama.*` hyper-parameters (None fields are left out)."""
    meta = {"general.architecture": "looplm", "general.name": name}
    for field, value in config.to_dict().items():
        if value is None:
            continue
        key = "looplm." + _FIELD_TO_META.get(field, field)
        if isinstance(value, float):
            value = np.float64(value)  # FLOAT64: the value comes back exactly
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = int(value)
        meta[key] = value
    return meta


def _ternary_layers(model: LoopLM) -> dict:
    """name prefix -> BitLinear or PackedBitLinear, for every ternary layer of the model."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (BitLinear, PackedBitLinear))}


def save_gguf(model: LoopLM, path, name: str = "looplm", ternary: str = "packed") -> Path:
    """Write weights (litetorch's state_dict names) and `looplm.*` metadata to one GGUF file.

    ternary: "packed" (T as TQ2_0 or litetorch's 2-bit I8 layout, plus the scales) or "float" (BitLinear's
    float latent weights as F32; a packed model can only be saved packed)."""
    from ..io.gguf import write_gguf
    if ternary not in ("packed", "float"):
        raise ConfigError(f"ternary must be 'packed' or 'float', got {ternary!r}")
    layers = _ternary_layers(model)
    if ternary == "float" and any(isinstance(m, PackedBitLinear) for m in layers.values()):
        raise ConfigError("this model's ternary layers are packed (their float weights are gone): save with "
                          "ternary='packed'")
    tensors, types = {}, {}
    for key, value in model.state_dict().items():
        if key.endswith(".weight_packed"):
            continue  # written below, from T
        tensors[key] = np.ascontiguousarray(np.atleast_1d(value), dtype=np.float32)  # 0-d alphas -> [1]
    if ternary == "packed":
        for prefix, layer in layers.items():
            T, scales = (layer.ternary(), layer.weight_scale) if isinstance(layer, PackedBitLinear) \
                else layer.ternary_weight()
            if layer.in_features % 256 == 0:  # llama.cpp's TQ2_0 (d = 1 per block: T exactly)
                tensors[f"{prefix}.weight"], types[f"{prefix}.weight"] = T.astype(np.float32), "TQ2_0"
            else:  # litetorch's 2-bit layout, bytes as int8
                tensors[f"{prefix}.weight"], types[f"{prefix}.weight"] = pack_ternary(T).view(np.int8), "I8"
            tensors[f"{prefix}.weight_scale"] = np.asarray(scales, dtype=np.float32)
    meta = gguf_metadata(model.config, name)
    if ternary == "packed" and layers:
        meta["looplm.ternary_layout"] = TERNARY_LAYOUT
    return write_gguf(path, meta, tensors, types=types)


def load_gguf(path) -> LoopLM:
    """Rebuild a LoopLM from `save_gguf`'s file: config from `looplm.*`, weights by name (packed ternary
    layers become PackedBitLinear)."""
    from ..io.gguf import GGUFFile
    from ..io.quants import ggml_type_name
    with GGUFFile(path) as f:
        if f.get("general.architecture") != "looplm":
            raise ModelFormatError(f"{path}: general.architecture is {f.get('general.architecture')!r}, not 'looplm'")
        d = {}
        for key, value in f.metadata.items():
            if key.startswith("looplm."):
                k = key[len("looplm."):]
                d[_META_TO_FIELD.get(k, k)] = value.item() if isinstance(value, np.generic) else value
        d.pop("ternary_layout", None)
        try:
            model = LoopLM(LoopConfig.from_dict(d))
        except (ConfigError, TypeError, ValueError) as e:
            raise ModelFormatError(f"{path}: the looplm.* metadata is not a valid LoopLM config: {e}") from None
        packed = any(k.endswith(".weight_scale") for k in f.tensors)
        if packed:
            model.pack_ternary()
        layers = _ternary_layers(model) if packed else {}
        want = model.state_dict()
        sd = {}
        for key, info in f.tensors.items():
            prefix = key[:-len(".weight")] if key.endswith(".weight") else None
            if prefix in layers:  # T, packed
                layer = layers[prefix]
                if ggml_type_name(info.ggml_type) == "TQ2_0":
                    sd[f"{prefix}.weight_packed"] = pack_ternary(f.dequantize(key).astype(np.int8))
                else:
                    raw = np.asarray(f.raw(key)).reshape(info.shape).view(np.uint8)
                    sd[f"{prefix}.weight_packed"] = raw.copy()
                if sd[f"{prefix}.weight_packed"].shape != layer.weight_packed.shape:
                    raise ModelFormatError(f"{path}: tensor {key!r} unpacks to {sd[prefix + '.weight_packed'].shape}, "
                                           f"the config needs {layer.weight_packed.shape}")
                continue
            arr = f.dequantize(key)
            if key in want and arr.size == np.size(want[key]):
                arr = arr.reshape(np.shape(want[key]))  # 0-d parameters were written as [1]
            sd[key] = arr
        model.load_state_dict(sd)
    return model


def _build(config_json: str, keys) -> LoopLM:
    model = LoopLM(LoopConfig.from_dict(json.loads(config_json)))
    if any(k.endswith(".weight_packed") for k in keys):
        model.pack_ternary()
    return model


def save_npz(model: LoopLM, path) -> None:
    """state_dict + the config as JSON (np.load(path) needs no pickle)."""
    np.savez(path, __config__=np.array(json.dumps(model.config.to_dict())), **model.state_dict())


def load_npz(path) -> LoopLM:
    with np.load(path, allow_pickle=False) as z:
        names = [k for k in z.files if k != "__config__"]
        model = _build(str(z["__config__"]), names)
        model.load_state_dict({k: z[k] for k in names})
    return model


def save_safetensors(model: LoopLM, path, metadata: dict | None = None) -> None:
    from ..io.safetensors import save_safetensors as _save
    _save(path, model.state_dict(), metadata={"looplm_config": json.dumps(model.config.to_dict()), **(metadata or {})})


def load_safetensors(path) -> LoopLM:
    from ..io.safetensors import load_safetensors as _load
    from ..io.safetensors import read_safetensors_header
    meta = read_safetensors_header(path)[1]
    if "looplm_config" not in meta:
        raise ModelFormatError(f"{path}: no 'looplm_config' in the safetensors metadata: not a LoopLM checkpoint")
    tensors = _load(path)
    model = _build(meta["looplm_config"], tensors)
    model.load_state_dict(tensors)
    return model


def load_looplm(path) -> LoopLM:
    """A LoopLM from a .gguf, .npz or .safetensors file (by extension)."""
    path = Path(path)
    loaders = {".gguf": load_gguf, ".npz": load_npz, ".safetensors": load_safetensors}
    if path.suffix not in loaders:
        raise ModelFormatError(f"{path}: a LoopLM checkpoint is a .gguf, .npz or .safetensors file")
    if not path.exists():
        raise ModelNotFoundError(f"{path}: no such file")
    return loaders[path.suffix](path)
