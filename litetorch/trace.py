"""`trace`: every named intermediate of a forward pass, saved as a reference file.

For people writing a transformer in another language: run the same prompt through your
implementation, load this `.npz` and compare tensor by tensor, in data order, to find the first
place where you disagree (`litetorch.debug.compare` does exactly that in Python).

Names (for a Llama; N = layer index), in the order the data flows:

    input_ids                       [1, T] int64
    embeddings                      [1, T, C]   model.embed_tokens output
    layers.N.input                  [1, T, C]   residual stream entering block N
    layers.N.attn_norm              [1, T, C]   RMSNorm before attention
    layers.N.attn_out               [1, T, C]   attention output (after o_proj), before the residual add
    layers.N.resid_mid              [1, T, C]   residual stream after adding attention
    layers.N.ffn_norm               [1, T, C]   RMSNorm before the MLP
    layers.N.ffn_out                [1, T, C]   SwiGLU output (after down_proj), before the residual add
    layers.N.output                 [1, T, C]   residual stream leaving block N
    final_norm                      [1, T, C]   model.norm output
    logits                          [1, T, V]

The file also holds `manifest` (a JSON string: names in order, shapes, dtypes, model config,
prompt, litetorch version), readable with `np.load(path)["manifest"].item()`; no pickles.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .debug import capture
from .errors import ConfigError
from .tensor import no_grad


def trace_llama(model, input_ids) -> dict:
    """Run `model` on input_ids [B, T] (usually B = 1); return {name: ndarray} in data order (see
    the module docstring). One plain forward pass, no cache: the same numbers `model(ids)` gives."""
    ids = np.asarray(input_ids, dtype=np.int64)
    if ids.ndim == 1:
        ids = ids[None, :]  # [T] -> [1, T]
    n_layers = model.config.num_hidden_layers
    parts = ("", ".input_layernorm", ".self_attn", ".post_attention_layernorm", ".mlp")
    names = ["model.embed_tokens", "model.norm"] + [f"model.layers.{i}{p}" for i in range(n_layers) for p in parts]
    with no_grad(), capture(model, names=names) as rec:  # records (copies of) just these outputs
        logits = model(ids)
    out = {"input_ids": ids, "embeddings": rec["model.embed_tokens"]}
    prev = out["embeddings"]
    for i in range(n_layers):
        p = f"model.layers.{i}"
        out[f"layers.{i}.input"] = prev
        out[f"layers.{i}.attn_norm"] = rec[f"{p}.input_layernorm"]
        out[f"layers.{i}.attn_out"] = rec[f"{p}.self_attn"]
        out[f"layers.{i}.resid_mid"] = prev + rec[f"{p}.self_attn"]  # the block's own add, same dtype
        out[f"layers.{i}.ffn_norm"] = rec[f"{p}.post_attention_layernorm"]
        out[f"layers.{i}.ffn_out"] = rec[f"{p}.mlp"]
        out[f"layers.{i}.output"] = rec[p]
        prev = rec[p]
    out["final_norm"] = rec["model.norm"]
    out["logits"] = np.array(logits.data, copy=True)
    return out


def save_trace(path, tensors: dict, **info) -> Path:
    from . import __version__
    path = Path(path)
    if not path.parent.is_dir():  # (np.savez would name the temporary file below, not the folder)
        raise ConfigError(f"cannot write {path}: the folder {path.parent} does not exist")
    manifest = {
        "names": list(tensors),
        "shapes": {k: list(v.shape) for k, v in tensors.items()},
        "dtypes": {k: str(v.dtype) for k, v in tensors.items()},
        "litetorch_version": __version__,
        "numpy_version": np.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **info,
    }
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, manifest=np.array(json.dumps(manifest)), **tensors)
    tmp.replace(path)
    return path


def load_trace(path) -> tuple[dict, dict]:
    """(tensors in data order, manifest)."""
    with np.load(path, allow_pickle=False) as f:
        manifest = json.loads(f["manifest"].item())
        tensors = {k: f[k] for k in manifest["names"]}
    return tensors, manifest
