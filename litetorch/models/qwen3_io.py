"""Qwen3-MoE and Qwen3-Next files: HF checkpoints in, GGUF files out and in. Lesson 26.

HF checkpoints (`load_hf` in loading.py dispatches here on config.json's model_type). Names are already
litetorch's, but for the experts: transformers 5 keeps them in memory as two 3-D tensors per layer
(`mlp.experts.gate_up_proj` [E, 2I, C], `mlp.experts.down_proj` [E, C, I]) and `save_pretrained` writes
them one expert at a time (`mlp.experts.{e}.gate_proj.weight` [I, C], `up_proj` [I, C], `down_proj` [C, I]),
as the released checkpoints do. Both forms load; `stack_experts` turns the second into the first.
Qwen3-Next checkpoints also carry a multi-token-prediction head (`mtp.*`), which HF ignores and so do we.

GGUF: llama.cpp's architectures "qwen3moe" and "qwen3next", with llama.cpp's tensor names, metadata keys
and stored values (`GGUF_NAMES`). Most tensors are stored as they are; five conversions, each undone on
reading:
- zero-centred norms (Qwen3-Next) are stored as the scale the forward multiplies by, 1 + w;
- `A_log` is stored as A = -exp(A_log), the decay rate itself;
- the DeltaNet input projection `in_proj_qkvz`, interleaved per key head [q_j k_j v_j z_j], is stored as
  `attn_qkv` = [all q | all k | all v] and `attn_gate` = [all z];
- the conv weight [D, 1, K] is stored as [D, K]; the shared expert's gate [1, C] as [C];
- each expert stack `gate_up_proj` [E, 2I, C] is stored as `ffn_gate_exps` and `ffn_up_exps` [E, I, C].
Reading A_log back as log(-A) and w as (1 + w) - 1 can miss the original by an ulp, so the reader picks,
among the float32 neighbours, the value whose forward computation (-exp(A_log), w + 1) gives back the
stored number exactly: a float32 model written and read again computes bit for bit the same logits.
Which layer is attention or DeltaNet, MoE or dense, is read from the tensor table (and checked against
`full_attention_interval` when the file has it). Dense MLP layers (`mlp_only_layers`), which llama.cpp's
qwen3next does not define, use llama's `ffn_gate` / `ffn_up` / `ffn_down`.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import ConfigError, ModelFormatError, StateDictError
from .base import empty_model, float_dtype
from .qwen3 import Qwen3Moe, Qwen3Next
from .qwen3_config import Qwen3MoeConfig, Qwen3NextConfig, _bool, _float, _int

MODELS = {"qwen3_moe": Qwen3Moe, "qwen3_next": Qwen3Next}  # HF model_type -> litetorch model
GGUF_ARCHS = {"qwen3moe": Qwen3Moe, "qwen3next": Qwen3Next}  # GGUF general.architecture -> litetorch model


# ------------------------------------------------------------------------------------------------
# HF checkpoints
# ------------------------------------------------------------------------------------------------
_EXPERT = re.compile(r"^(model\.layers\.\d{1,9}\.mlp\.experts)\.(\d{1,9})\.(gate_proj|up_proj|down_proj)\.weight$")


def stack_experts(tensors: dict, config, where: str = "checkpoint") -> dict:
    """Per-expert tensors (`...experts.{e}.gate_proj.weight` etc.) -> the 3-D stacks `...experts.gate_up_proj`
    [E, 2I, C] and `...experts.down_proj` [E, C, I]; other tensors pass unchanged. Every expert 0..E-1 must be
    there with its three matrices of the config's shapes (checked before anything is copied)."""
    E, I, C = config.num_experts, config.moe_intermediate_size, config.hidden_size
    groups, out = {}, {}
    for name, value in tensors.items():
        m = _EXPERT.match(name)
        if m:
            groups.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = value
        else:
            out[name] = value
    want = {"gate_proj": (I, C), "up_proj": (I, C), "down_proj": (C, I)}
    for prefix, experts in groups.items():
        if f"{prefix}.gate_up_proj" in out or f"{prefix}.down_proj" in out:
            raise ModelFormatError(f"{where}: {prefix} is stored both as 3-D stacks and one expert at a time")
        if set(experts) != set(range(E)):
            raise ModelFormatError(f"{where}: {prefix} should hold experts 0..{E - 1} (num_experts = {E}), found "
                                   f"{len(experts)} expert numbers {sorted(experts)[:8]}")
        for e, parts in experts.items():
            for part, shape in want.items():
                got = tuple(parts[part].shape) if part in parts else None
                if got != shape:
                    raise ModelFormatError(f"{where}: {prefix}.{e}.{part}.weight is "
                                           f"{'missing' if got is None else got}, expected {shape}")
    for prefix, experts in groups.items():  # shapes are right: now copy
        out[f"{prefix}.gate_up_proj"] = np.stack([np.concatenate([experts[e]["gate_proj"], experts[e]["up_proj"]])
                                                  for e in range(E)])  # [E, 2I, C]: per expert [gate ; up] rows
        out[f"{prefix}.down_proj"] = np.stack([experts[e]["down_proj"] for e in range(E)])  # [E, C, I]
    return out


def _hf_pins(config) -> dict:
    """name -> the shape the config says it has: together they bound every tensor the model allocates."""
    c, pins = config, {}
    C = c.hidden_size
    pins["model.embed_tokens.weight"] = (c.vocab_size, C)
    for i, kind in enumerate(c.layer_types):
        p = f"model.layers.{i}."
        pins[p + "input_layernorm.weight"] = (C,)
        if kind == "linear_attention":
            qkvz = 2 * c.linear_num_key_heads * c.linear_key_head_dim + 2 * c.linear_num_value_heads * c.linear_value_head_dim
            pins[p + "linear_attn.in_proj_qkvz.weight"] = (qkvz, C)
            pins[p + "linear_attn.A_log"] = (c.linear_num_value_heads,)
        else:
            q_rows = (2 if c.attention_output_gate else 1) * c.num_attention_heads * c.head_dim
            pins[p + "self_attn.q_proj.weight"] = (q_rows, C)
            pins[p + "self_attn.k_proj.weight"] = (c.num_key_value_heads * c.head_dim, C)
        if c.is_moe_layer(i):
            pins[p + "mlp.gate.weight"] = (c.num_experts, C)
            if c.shared_expert_intermediate_size:
                pins[p + "mlp.shared_expert.up_proj.weight"] = (c.shared_expert_intermediate_size, C)
        else:
            pins[p + "mlp.up_proj.weight"] = (c.intermediate_size, C)
    return pins


def check_tensor_table(pins: dict, tensors: dict, layer_name: re.Pattern, n_layers: int, where: str) -> None:
    """As many layers as the config says, and every pinned tensor present with its shape (before any model exists)."""
    layers = {int(m.group(1)) for name in tensors if (m := layer_name.match(name))}
    if layers != set(range(n_layers)):
        raise ModelFormatError(f"{where}: the config has {n_layers} layers, but the tensor table holds weights for "
                               f"{len(layers)} layer numbers {sorted(layers)[:8]}{' ...' if len(layers) > 8 else ''}")
    for name, want in pins.items():
        if name not in tensors:
            raise ModelFormatError(f"{where}: tensor {name!r} is missing (the config's layout needs it)")
        value = tensors[name]
        shape = tuple(value.shape if hasattr(value, "shape") else value)
        if shape != want:
            raise ModelFormatError(f"{where}: tensor {name!r} has shape {shape}, but the config needs {want}")


def model_from_hf(cfg: dict, tensors: dict, dtype=np.float32, where: str = "checkpoint"):
    """config.json (a dict) + the checkpoint's tensors -> Qwen3Moe or Qwen3Next in `dtype`."""
    cls = MODELS[cfg.get("model_type")]
    config = cls.config_class.from_hf_config(cfg)  # types, limits, consistency: ModelFormatError
    tensors = {k: v for k, v in tensors.items() if not k.startswith("mtp.") and not k.endswith("rotary_emb.inv_freq")}
    pins = _hf_pins(config)
    E, I, C = config.num_experts, config.moe_intermediate_size, config.hidden_size
    for router in [k for k in pins if k.endswith("mlp.gate.weight")]:
        experts = router[:-len("gate.weight")] + "experts."
        if experts + "gate_up_proj" in tensors:  # stacked (transformers' in-memory form)
            pins[experts + "gate_up_proj"] = (E, 2 * I, C)
        else:  # one expert at a time (save_pretrained's form): expert 0 pins I, stack_experts checks every one
            pins[experts + "0.up_proj.weight"] = (I, C)
    check_tensor_table(pins, tensors, re.compile(r"model\.layers\.(\d{1,9})\."), config.num_hidden_layers, where)
    sd = stack_experts(tensors, config, where)
    model = empty_model(cls, config, dtype)
    _load(model, {k: np.array(v, dtype=dtype) for k, v in sd.items()}, where)  # copy out of the memory map
    return model.eval()


def _load(model, sd: dict, where: str) -> None:
    """Strict load, except that a tied model may omit `lm_head.weight` (it is the embedding)."""
    if model.config.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        sd.setdefault("lm_head.weight", sd["model.embed_tokens.weight"])
    try:
        model.load_state_dict(sd, strict=True, assign=True)
    except StateDictError as e:
        raise ModelFormatError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------------
# GGUF: the name table
# ------------------------------------------------------------------------------------------------
# lesson 26: begin (GGUF names)
# HF name ({N}: layer)                       GGUF name (llama.cpp)                       stored value
GGUF_NAMES = [
    ("model.embed_tokens.weight",                "token_embd.weight",                        "as is"),
    ("model.norm.weight",                        "output_norm.weight",                       "norm"),
    ("lm_head.weight",                           "output.weight",                            "as is"),  # absent if tied
    ("model.layers.{N}.input_layernorm.weight",  "blk.{N}.attn_norm.weight",                 "norm"),
    ("model.layers.{N}.post_attention_layernorm.weight", "blk.{N}.post_attention_norm.weight", "norm"),  # qwen3next
    ("model.layers.{N}.post_attention_layernorm.weight", "blk.{N}.ffn_norm.weight",          "norm"),  # qwen3moe
    # gated attention (q_proj holds [query ; gate] per head) / Qwen3-MoE attention
    ("model.layers.{N}.self_attn.q_proj.weight", "blk.{N}.attn_q.weight",                    "as is"),
    ("model.layers.{N}.self_attn.k_proj.weight", "blk.{N}.attn_k.weight",                    "as is"),
    ("model.layers.{N}.self_attn.v_proj.weight", "blk.{N}.attn_v.weight",                    "as is"),
    ("model.layers.{N}.self_attn.o_proj.weight", "blk.{N}.attn_output.weight",               "as is"),
    ("model.layers.{N}.self_attn.q_norm.weight", "blk.{N}.attn_q_norm.weight",               "norm"),
    ("model.layers.{N}.self_attn.k_norm.weight", "blk.{N}.attn_k_norm.weight",               "norm"),
    # Gated DeltaNet
    ("model.layers.{N}.linear_attn.in_proj_qkvz.weight", ("blk.{N}.attn_qkv.weight", "blk.{N}.attn_gate.weight"),
     "[q k v] | [z]"),
    ("model.layers.{N}.linear_attn.in_proj_ba.weight",   "blk.{N}.ssm_ba.weight",            "as is"),
    ("model.layers.{N}.linear_attn.conv1d.weight",       "blk.{N}.ssm_conv1d.weight",        "[D, K]"),
    ("model.layers.{N}.linear_attn.dt_bias",             "blk.{N}.ssm_dt.bias",              "as is"),
    ("model.layers.{N}.linear_attn.A_log",               "blk.{N}.ssm_a",                    "-exp"),
    ("model.layers.{N}.linear_attn.norm.weight",         "blk.{N}.ssm_norm.weight",          "as is"),
    ("model.layers.{N}.linear_attn.out_proj.weight",     "blk.{N}.ssm_out.weight",           "as is"),
    # sparse MoE: router, expert stacks, shared expert
    ("model.layers.{N}.mlp.gate.weight",                 "blk.{N}.ffn_gate_inp.weight",      "as is"),
    ("model.layers.{N}.mlp.experts.gate_up_proj",        ("blk.{N}.ffn_gate_exps.weight", "blk.{N}.ffn_up_exps.weight"),
     "[gate] | [up]"),
    ("model.layers.{N}.mlp.experts.down_proj",           "blk.{N}.ffn_down_exps.weight",     "as is"),
    ("model.layers.{N}.mlp.shared_expert.gate_proj.weight", "blk.{N}.ffn_gate_shexp.weight", "as is"),
    ("model.layers.{N}.mlp.shared_expert.up_proj.weight",   "blk.{N}.ffn_up_shexp.weight",   "as is"),
    ("model.layers.{N}.mlp.shared_expert.down_proj.weight", "blk.{N}.ffn_down_shexp.weight", "as is"),
    ("model.layers.{N}.mlp.shared_expert_gate.weight",   "blk.{N}.ffn_gate_inp_shexp.weight", "[C]"),
    # dense MLP layers (mlp_only_layers): llama's names
    ("model.layers.{N}.mlp.gate_proj.weight",            "blk.{N}.ffn_gate.weight",          "as is"),
    ("model.layers.{N}.mlp.up_proj.weight",              "blk.{N}.ffn_up.weight",            "as is"),
    ("model.layers.{N}.mlp.down_proj.weight",            "blk.{N}.ffn_down.weight",          "as is"),
]
# lesson 26: end (GGUF names)
_ATTN_BIASES = [(f"model.layers.{{N}}.self_attn.{p}.bias", f"blk.{{N}}.attn_{g}.bias", "as is")
                for p, g in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("o_proj", "output"))]


def _table(arch: str) -> list:
    """GGUF_NAMES for one architecture (post-attention norm: qwen3next's or qwen3moe's name) plus biases."""
    skip = "blk.{N}.ffn_norm.weight" if arch == "qwen3next" else "blk.{N}.post_attention_norm.weight"
    return [row for row in GGUF_NAMES if row[1] != skip] + _ATTN_BIASES


_HF_LAYER = re.compile(r"^model\.layers\.(\d{1,9})\.(.+)$")
_GGUF_LAYER = re.compile(r"^blk\.(\d{1,9})\.(.+)$")


def _template(name: str, pattern: re.Pattern, prefix: str) -> tuple[str, str | None]:
    m = pattern.match(name)
    return (f"{prefix}{{N}}.{m.group(2)}", m.group(1)) if m else (name, None)


def _float32_preimage(target: np.ndarray, guess: np.ndarray, forward, reach: int = 8) -> np.ndarray:
    """For each element, the float32 x nearest `guess` with forward(x) == target exactly (searching `reach`
    float32 neighbours each way); where none is found, `guess` itself."""
    target, best = np.asarray(target, np.float32), np.asarray(guess, np.float32).copy()
    found = forward(best) == target
    up, down = best.copy(), best.copy()
    for _ in range(reach):
        if found.all():
            break
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        for candidate in (up, down):
            hit = ~found & (forward(candidate) == target)
            best[hit], found = candidate[hit], found | hit
    return best


def _to_gguf(value: np.ndarray, kind: str, config) -> tuple:
    """One HF-named tensor (float32) -> the tensor(s) GGUF stores."""
    if kind == "norm" and config.zero_centered_norms:
        return (value + np.float32(1.0),)  # the scale the forward multiplies by: 1 + w, rounded as it computes it
    if kind == "-exp":
        return (-np.exp(value),)  # A = -exp(A_log): the decay rate the forward uses
    if kind == "[D, K]":
        return (value[:, 0, :],)  # [D, 1, K] -> [D, K]
    if kind == "[C]":
        return (value.reshape(-1),)  # [1, C] -> [C]
    if kind == "[gate] | [up]":
        return tuple(np.split(value, 2, axis=1))  # [E, 2I, C] -> [E, I, C] twice
    if kind == "[q k v] | [z]":
        Hk, Dk, r, Dv = (config.linear_num_key_heads, config.linear_key_head_dim,
                         config.linear_num_value_heads // config.linear_num_key_heads, config.linear_value_head_dim)
        w = value.reshape(Hk, 2 * Dk + 2 * r * Dv, -1)  # [Hk*(2Dk + 2rDv), C] -> [Hk, per key head, C]
        q, k, v, z = np.split(w, np.cumsum([Dk, Dk, r * Dv]), axis=1)  # [Hk, Dk, C] x2, [Hk, rDv, C] x2
        qkv = np.concatenate([t.reshape(-1, w.shape[-1]) for t in (q, k, v)])  # [Hk*Dk + Hk*Dk + Hv*Dv, C]
        return qkv, z.reshape(-1, w.shape[-1])  # and [Hv*Dv, C]
    return (value,)


def _from_gguf(parts: list, kind: str, config) -> np.ndarray:
    """The tensor(s) GGUF stores (float32) -> the HF-named tensor; the inverse of `_to_gguf`."""
    value = parts[0]
    if kind == "norm" and config.zero_centered_norms:
        return _float32_preimage(value, value - np.float32(1.0), lambda w: w + np.float32(1.0))
    if kind == "-exp":
        return _float32_preimage(value, np.log(-value), lambda a: -np.exp(a))
    if kind == "[D, K]":
        return value[:, None, :]  # [D, K] -> [D, 1, K]
    if kind == "[C]":
        return value.reshape(1, -1)  # [C] -> [1, C]
    if kind == "[gate] | [up]":
        return np.concatenate(parts, axis=1)  # [E, I, C] twice -> [E, 2I, C]
    if kind == "[q k v] | [z]":
        qkv, z = parts
        Hk, Dk, r, Dv = (config.linear_num_key_heads, config.linear_key_head_dim,
                         config.linear_num_value_heads // config.linear_num_key_heads, config.linear_value_head_dim)
        C = qkv.shape[-1]
        q, k, v = np.split(qkv, np.cumsum([Hk * Dk, Hk * Dk]))  # [Hk*Dk, C] x2, [Hv*Dv, C]
        w = np.concatenate([q.reshape(Hk, Dk, C), k.reshape(Hk, Dk, C), v.reshape(Hk, r * Dv, C),
                            z.reshape(Hk, r * Dv, C)], axis=1)  # [Hk, 2Dk + 2rDv, C]: per key head [q k v z]
        return w.reshape(-1, C)
    return value


# ------------------------------------------------------------------------------------------------
# GGUF: metadata
# ------------------------------------------------------------------------------------------------
def gguf_metadata(config, name: str = "litetorch") -> dict:
    """llama.cpp's `{arch}.*` keys for a Qwen3MoeConfig ("qwen3moe") or Qwen3NextConfig ("qwen3next")."""
    c = config
    arch = "qwen3next" if isinstance(c, Qwen3NextConfig) else "qwen3moe"
    md = {"general.architecture": arch, "general.name": name,
          f"{arch}.vocab_size": c.vocab_size, f"{arch}.context_length": c.max_position_embeddings,
          f"{arch}.embedding_length": c.hidden_size, f"{arch}.feed_forward_length": c.intermediate_size,
          f"{arch}.block_count": c.num_hidden_layers,
          f"{arch}.attention.head_count": c.num_attention_heads,
          f"{arch}.attention.head_count_kv": c.num_key_value_heads,
          f"{arch}.attention.key_length": c.head_dim, f"{arch}.attention.value_length": c.head_dim,
          f"{arch}.attention.layer_norm_rms_epsilon": np.float32(c.rms_norm_eps),
          f"{arch}.rope.freq_base": np.float32(c.rope_theta), f"{arch}.rope.dimension_count": c.rotary_dim,
          f"{arch}.expert_count": c.num_experts, f"{arch}.expert_used_count": c.num_experts_per_tok,
          f"{arch}.expert_feed_forward_length": c.moe_intermediate_size,
          f"{arch}.expert_weights_norm": c.norm_topk_prob}
    if arch == "qwen3next":
        md.update({f"{arch}.expert_shared_feed_forward_length": c.shared_expert_intermediate_size,
                   f"{arch}.ssm.conv_kernel": c.linear_conv_kernel_dim, f"{arch}.ssm.state_size": c.linear_key_head_dim,
                   f"{arch}.ssm.group_count": c.linear_num_key_heads,
                   f"{arch}.ssm.time_step_rank": c.linear_num_value_heads,
                   f"{arch}.ssm.inner_size": c.linear_num_value_heads * c.linear_value_head_dim})
        n = c.full_attention_interval
        if c.layer_types == ["linear_attention" if (i + 1) % n else "full_attention" for i in range(c.num_hidden_layers)]:
            md[f"{arch}.full_attention_interval"] = n  # otherwise the tensor table alone says which layer is which
    return md


def config_from_gguf(md, tensors, where: str = "GGUF"):
    """The config a GGUF's metadata and tensor table describe, checked against each other before any model exists."""
    arch = md.get("general.architecture")
    if not isinstance(arch, str) or arch not in GGUF_ARCHS:
        raise ModelFormatError(f"{where}: general.architecture is {arch!r:.60}; this loader reads "
                               f"{', '.join(GGUF_ARCHS)}")

    def get(key, kind=int, default=None):
        full = f"{arch}.{key}"
        if full not in md:
            if default is None:
                raise ModelFormatError(f"{where}: metadata is missing {full!r}")
            return default
        value = md[full]
        if kind is bool:
            return _bool(value, f"metadata {full}", ModelFormatError)
        if kind is float:
            return _float(value, f"metadata {full}", lambda v: True, "", ModelFormatError)
        if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
            raise ModelFormatError(f"{where}: metadata {full} must be an integer, got {value!r:.60}")
        return int(value)

    L = _int(get("block_count"), "num_hidden_layers", error=ModelFormatError,
             label=f"{where}: metadata {arch}.block_count")  # bounded before anything loops over it
    layers = [set() for _ in range(L)]
    for name in tensors:
        m = _GGUF_LAYER.match(name)
        if m:
            i = int(m.group(1))
            if i >= len(layers):
                raise ModelFormatError(f"{where}: tensor {name!r} is in layer {i}, but block_count is {L}")
            layers[i].add(m.group(2))
    head_dim = get("attention.key_length")
    if get("attention.value_length", default=head_dim) != head_dim:
        raise ModelFormatError(f"{where}: {arch}.attention.value_length differs from key_length; litetorch's "
                               f"attention needs keys and values of one head_dim")
    dense = [i for i, names in enumerate(layers) if "ffn_gate_inp.weight" not in names]
    values = dict(
        vocab_size=get("vocab_size", default=tuple(tensors["token_embd.weight"].shape)[0]
                       if "token_embd.weight" in tensors else None),
        hidden_size=get("embedding_length"), intermediate_size=get("feed_forward_length"), num_hidden_layers=L,
        num_attention_heads=get("attention.head_count"), num_key_value_heads=get("attention.head_count_kv"),
        head_dim=head_dim, rms_norm_eps=get("attention.layer_norm_rms_epsilon", float),
        rope_theta=get("rope.freq_base", float), max_position_embeddings=get("context_length"),
        tie_word_embeddings="output.weight" not in tensors,
        attention_bias=any("attn_q.bias" in names for names in layers),
        num_experts=get("expert_count"), num_experts_per_tok=get("expert_used_count"),
        moe_intermediate_size=get("expert_feed_forward_length"), norm_topk_prob=get("expert_weights_norm", bool),
        decoder_sparse_step=1, mlp_only_layers=dense)
    try:
        if arch == "qwen3moe":
            return Qwen3MoeConfig(**values)
        Hv, inner = get("ssm.time_step_rank"), get("ssm.inner_size")
        rotary = get("rope.dimension_count")
        if Hv < 1 or inner % Hv:
            raise ModelFormatError(f"{where}: {arch}.ssm.inner_size {inner} is not a positive multiple of "
                                   f"ssm.time_step_rank {Hv}")
        layer_types = ["linear_attention" if "ssm_a" in names else "full_attention" for names in layers]
        n = get("full_attention_interval", default=0)
        if n and layer_types != ["linear_attention" if (i + 1) % n else "full_attention" for i in range(L)]:
            raise ModelFormatError(f"{where}: {arch}.full_attention_interval is {n}, but the tensor table has "
                                   f"attention layers at {[i for i, t in enumerate(layer_types) if t == 'full_attention']}")
        config = Qwen3NextConfig(**values, partial_rotary_factor=rotary / head_dim, layer_types=layer_types,
                                 linear_conv_kernel_dim=get("ssm.conv_kernel"), linear_key_head_dim=get("ssm.state_size"),
                                 linear_num_key_heads=get("ssm.group_count"), linear_num_value_heads=Hv,
                                 linear_value_head_dim=inner // Hv,
                                 shared_expert_intermediate_size=get("expert_shared_feed_forward_length"))
        if config.rotary_dim != rotary:
            raise ModelFormatError(f"{where}: {arch}.rope.dimension_count {rotary} is not int(head_dim * factor) "
                                   f"for any factor litetorch can represent exactly")
        return config
    except ConfigError as e:
        raise ModelFormatError(f"{where}: {e}") from None


def _gguf_pins(config) -> dict:
    c, pins = config, {"token_embd.weight": (config.vocab_size, config.hidden_size)}
    for hf, shape in _hf_pins(c).items():
        if "in_proj_qkvz" in hf:  # stored split: pin both parts
            N = _HF_LAYER.match(hf).group(1)
            qk = 2 * c.linear_num_key_heads * c.linear_key_head_dim
            Vd = c.linear_num_value_heads * c.linear_value_head_dim
            pins[f"blk.{N}.attn_qkv.weight"], pins[f"blk.{N}.attn_gate.weight"] = (qk + Vd, c.hidden_size), (Vd, c.hidden_size)
            continue
        template, N = _template(hf, _HF_LAYER, "model.layers.")
        row = next((r for r in _table("qwen3next" if isinstance(c, Qwen3NextConfig) else "qwen3moe") if r[0] == template), None)
        if row is not None and isinstance(row[1], str) and row[2] in ("as is", "norm", "-exp"):
            pins[row[1].format(N=N)] = shape
        if hf.endswith("mlp.gate.weight"):
            pins[f"blk.{N}.ffn_up_exps.weight"] = (c.num_experts, c.moe_intermediate_size, c.hidden_size)
    return pins


# ------------------------------------------------------------------------------------------------
# GGUF: write and read
# ------------------------------------------------------------------------------------------------
def save_gguf(model, path, name: str = "litetorch", types: dict | None = None) -> Path:
    """Write a Qwen3Moe / Qwen3Next to a GGUF file: llama.cpp's names, keys and stored values (see above).
    Weights are F32 unless `types` names a quantized type per GGUF tensor name."""
    from ..io.gguf import write_gguf
    config = model.config
    arch = "qwen3next" if isinstance(config, Qwen3NextConfig) else "qwen3moe"
    rows = {r[0]: r for r in _table(arch)}
    tensors = {}
    for hf_name, value in model.state_dict(split_fused=True).items():  # HF names: q_proj, k_proj, gate_proj, ...
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: the embedding is the output projection
        template, N = _template(hf_name, _HF_LAYER, "model.layers.")
        if template not in rows:
            raise ModelFormatError(f"save_gguf: no GGUF name for {hf_name!r} (add it to GGUF_NAMES)")
        _, gguf_names, kind = rows[template]
        gguf_names = (gguf_names,) if isinstance(gguf_names, str) else gguf_names
        stored = _to_gguf(np.asarray(value, dtype=np.float32), kind, config)
        for g, array in zip(gguf_names, stored):
            tensors[g.format(N=N)] = np.ascontiguousarray(array)
    return write_gguf(path, gguf_metadata(config, name), tensors, types)


def load_gguf(path, dtype=np.float32):
    """A "qwen3moe" / "qwen3next" GGUF file -> Qwen3Moe / Qwen3Next in `dtype` (tensors dequantized)."""
    from ..io.gguf import GGUFFile
    dtype = float_dtype(dtype)
    with GGUFFile(path) as f:
        where = str(f.path)
        config = config_from_gguf(f.metadata, f.tensors, where)
        check_tensor_table(_gguf_pins(config), f.tensors, re.compile(r"blk\.(\d{1,9})\."), config.num_hidden_layers,
                           where)
        arch = f.metadata["general.architecture"]
        by_gguf = {}  # GGUF template -> (HF template, kind, all GGUF templates of that HF tensor)
        for hf, g, kind in _table(arch):
            for part in ((g,) if isinstance(g, str) else g):
                by_gguf[part] = (hf, kind, (g,) if isinstance(g, str) else g)
        sd = {}
        for name in f.tensors:
            template, N = _template(name, _GGUF_LAYER, "blk.")
            if template not in by_gguf:
                raise ModelFormatError(f"{where}: unexpected tensor {name!r} for {arch}")
            hf, kind, parts = by_gguf[template]
            if template != parts[0]:
                continue  # the second part of a split tensor: read with the first
            names = [p.format(N=N) for p in parts]
            missing = [n for n in names if n not in f.tensors]
            if missing:
                raise ModelFormatError(f"{where}: {names[0]!r} needs {missing[0]!r}, which is missing")
            sd[hf.format(N=N)] = _from_gguf([f.dequantize(n) for n in names], kind, config).astype(dtype)
        model = empty_model(GGUF_ARCHS[arch], config, dtype)
        _load(model, sd, where)
    return model.eval()
