"""`Qwen3MoeConfig` and `Qwen3NextConfig`: every shape of the two models, with HF's field names and defaults.

HF's defaults are the released models' shapes (Qwen3-30B-A3B's family for Qwen3-MoE; Qwen3-Next-80B-A3B),
so `Qwen3NextConfig()` describes the 80B model, which `models/costs.py` prices on paper.

Which layer is what:
- the token mixer of layer i is `layer_types[i]`: "full_attention" (Qwen3Attention, a KV cache) or
  "linear_attention" (GatedDeltaNet, a fixed-size state). Qwen3-MoE has attention everywhere; Qwen3-Next
  takes `layer_types` from the config, or builds it from `full_attention_interval` n: every n-th layer
  is attention, the others DeltaNet (n = 4: three DeltaNet layers, then one attention layer);
- the MLP of layer i is a SparseMoeBlock unless i is in `mlp_only_layers`, `num_experts` is 0, or
  (i + 1) is not a multiple of `decoder_sparse_step`; those layers get a dense SwiGLU of
  `intermediate_size` (HF's rule, `is_moe_layer`).

Bad values raise ConfigError naming the field; read from a config.json or GGUF metadata they raise
ModelFormatError. Every size has an upper limit (`QWEN3_LIMITS`), and the loaders check the sizes
against the weights in the file before any model is built (see `models/config.py` for why).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Mapping

import numpy as np

from ..errors import ConfigError, ModelFormatError
from .config import LIMITS

LAYER_TYPES = ("full_attention", "linear_attention")

# Upper limits for the sizes Llama does not have (far above every released model; Qwen3-Next-80B's in comments).
QWEN3_LIMITS = {
    **LIMITS,
    "moe_intermediate_size": 1 << 16,           # 512
    "shared_expert_intermediate_size": 1 << 18,  # 512
    "num_experts": 1 << 14,                     # 512
    "num_experts_per_tok": 1 << 14,             # 10
    "decoder_sparse_step": 1 << 10,             # 1
    "linear_conv_kernel_dim": 1 << 6,           # 4
    "linear_key_head_dim": 1 << 10,             # 128
    "linear_value_head_dim": 1 << 10,           # 128
    "linear_num_key_heads": 1 << 10,            # 16
    "linear_num_value_heads": 1 << 10,          # 32
    "full_attention_interval": 1 << 10,         # 4
}


def _int(value, name: str, lo: int = 1, error=ConfigError, label: str | None = None) -> int:
    """An integer in [lo, QWEN3_LIMITS[name]]: a Python or NumPy int, never a bool, float or string.
    `label` names it in the message (default: the field name)."""
    label = label or name
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise error(f"{label} must be an integer, got {value!r:.100} ({type(value).__name__})")
    limit = QWEN3_LIMITS[name]
    if not lo <= value <= limit:
        raise error(f"{label} must be between {lo} and {limit} (litetorch's limit), got {value}")
    return int(value)


def _float(value, name: str, ok, span: str, error=ConfigError) -> float:
    """A finite number for which ok(v) holds (span says which, for the message), never a bool or string."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be a number, got {value!r:.100} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v) or not ok(v):
        raise error(f"{name} must be a finite number {span}, got {value!r}")
    return v


def _bool(value, name: str, error=ConfigError) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be true or false, got {value!r:.100} ({type(value).__name__})")
    return bool(value)


class _Qwen3Shapes:
    """What both configs share: the checks, the MLP rule, the HF reader."""

    model_type = ""

    def _check_common(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "max_position_embeddings", "moe_intermediate_size", "decoder_sparse_step"):
            setattr(self, name, _int(getattr(self, name), name))
        if self.head_dim is None:  # HF: getattr(config, "head_dim", hidden_size // num_attention_heads)
            self.head_dim = self.hidden_size // self.num_attention_heads
        self.head_dim = _int(self.head_dim, "head_dim")
        self.num_experts = _int(self.num_experts, "num_experts", lo=0)  # 0: every layer is dense
        self.num_experts_per_tok = _int(self.num_experts_per_tok, "num_experts_per_tok")
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            raise ConfigError(f"num_experts_per_tok = {self.num_experts_per_tok} > num_experts = {self.num_experts}: "
                              f"a token cannot use more experts than there are")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        self.rms_norm_eps = _float(self.rms_norm_eps, "rms_norm_eps", lambda v: 0 < v < 1, "in (0, 1)")
        self.rope_theta = _float(self.rope_theta, "rope_theta", lambda v: v > 0, "> 0")
        self.router_aux_loss_coef = _float(self.router_aux_loss_coef, "router_aux_loss_coef", lambda v: v >= 0, ">= 0")
        for name in ("tie_word_embeddings", "attention_bias", "norm_topk_prob"):
            setattr(self, name, _bool(getattr(self, name), name))
        layers = self.mlp_only_layers
        if not isinstance(layers, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
                                                        or not 0 <= i < self.num_hidden_layers for i in layers):
            raise ConfigError(f"mlp_only_layers must be a list of layer indices in 0..{self.num_hidden_layers - 1}, "
                              f"got {layers!r:.100}")
        self.mlp_only_layers = sorted({int(i) for i in layers})

    def is_moe_layer(self, i: int) -> bool:
        """HF's rule: a sparse MoE block unless listed in mlp_only_layers, no experts, or off the sparse step."""
        return i not in self.mlp_only_layers and self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0

    @property
    def rotary_dim(self) -> int:
        return self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    # --- from an HF config.json ---------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, cfg: Mapping):
        """The config an HF `config.json` (a dict) describes; ModelFormatError for anything litetorch cannot run
        exactly (another model_type, RoPE scaling, sliding windows, an activation other than SiLU)."""
        if not isinstance(cfg, Mapping):
            raise ModelFormatError(f"config.json should hold a JSON object, got {type(cfg).__name__}")
        if cfg.get("model_type") != cls.model_type:
            raise ModelFormatError(f"config.json: model_type is {cfg.get('model_type')!r}, expected {cls.model_type!r}")
        if cfg.get("hidden_act", "silu") != "silu":
            raise ModelFormatError(f"config.json: hidden_act {cfg['hidden_act']!r} is not supported (only 'silu')")
        if cfg.get("use_sliding_window"):  # (HF's Qwen3-MoE ignores sliding_window unless this is set)
            raise ModelFormatError(f"config.json: sliding-window attention is not supported "
                                   f"(use_sliding_window=true, sliding_window={cfg.get('sliding_window')!r})")
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        if not isinstance(rope, Mapping):
            raise ModelFormatError(f"config.json: rope_parameters should be an object, got {rope!r:.100}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ModelFormatError(f"config.json: RoPE type {rope_type!r} (rope scaling) is not supported; only 'default'")
        values = {}
        for f in fields(cls):
            if f.name in cfg and cfg[f.name] is not None:  # null: HF's "use the default"
                values[f.name] = cfg[f.name]
        if "num_experts" not in values and cfg.get("num_local_experts") is not None:
            values["num_experts"] = cfg["num_local_experts"]  # HF's Qwen3MoeConfig saves num_experts under this name
        if "rope_theta" in rope:
            values["rope_theta"] = rope["rope_theta"]
        if "partial_rotary_factor" in rope and "partial_rotary_factor" in {f.name for f in fields(cls)}:
            values["partial_rotary_factor"] = rope["partial_rotary_factor"]
        try:
            return cls(**values)
        except ConfigError as e:  # a bad value read from a file is the file's format error
            raise ModelFormatError(f"config.json: {e}") from None


@dataclass
class Qwen3MoeConfig(_Qwen3Shapes):
    """Qwen3-MoE (HF `Qwen3MoeConfig`): attention in every layer (plain RMSNorm q/k norms, full RoPE),
    a sparse MoE MLP in every layer (unless mlp_only_layers / decoder_sparse_step say otherwise).
    Letters: V = vocab_size, C = hidden_size, H, Hkv = attention heads, Dh = head_dim, E = num_experts,
    k = num_experts_per_tok, I = moe_intermediate_size."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 6144
    num_hidden_layers: int = 24
    num_attention_heads: int = 32
    num_key_value_heads: int = 4
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    decoder_sparse_step: int = 1
    moe_intermediate_size: int = 768
    num_experts_per_tok: int = 8
    num_experts: int = 128
    norm_topk_prob: bool = False
    mlp_only_layers: list = field(default_factory=list)
    router_aux_loss_coef: float = 0.001

    model_type = "qwen3_moe"
    zero_centered_norms = False      # RMSNorm weight is the scale itself
    attention_output_gate = False    # no sigmoid gate after attention
    shared_expert_intermediate_size = None

    def __post_init__(self):
        self._check_common()

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention"] * self.num_hidden_layers


@dataclass
class Qwen3NextConfig(_Qwen3Shapes):
    """Qwen3-Next (HF `Qwen3NextConfig`; the defaults are Qwen3-Next-80B-A3B): Gated DeltaNet layers and
    gated attention layers (zero-centred q/k norms, RoPE on a quarter of each head), a sparse MoE with
    a shared expert in every layer, zero-centred RMSNorms (scale 1 + w) everywhere but inside DeltaNet.
    Extra letters: Hk, Hv = linear_num_key_heads, linear_num_value_heads; Dk, Dv = linear_key_head_dim,
    linear_value_head_dim; K = linear_conv_kernel_dim."""

    vocab_size: int = 151936
    hidden_size: int = 2048
    intermediate_size: int = 5632
    num_hidden_layers: int = 48
    num_attention_heads: int = 16
    num_key_value_heads: int = 2
    head_dim: int | None = 256
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.25
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    linear_conv_kernel_dim: int = 4
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 32
    decoder_sparse_step: int = 1
    moe_intermediate_size: int = 512
    shared_expert_intermediate_size: int = 512
    num_experts_per_tok: int = 10
    num_experts: int = 512
    norm_topk_prob: bool = True
    mlp_only_layers: list = field(default_factory=list)
    layer_types: list | None = None  # None: built from full_attention_interval
    full_attention_interval: int = 4
    router_aux_loss_coef: float = 0.001

    model_type = "qwen3_next"
    zero_centered_norms = True
    attention_output_gate = True

    def __post_init__(self):
        self._check_common()
        for name in ("linear_conv_kernel_dim", "linear_key_head_dim", "linear_value_head_dim", "linear_num_key_heads",
                     "linear_num_value_heads", "shared_expert_intermediate_size", "full_attention_interval"):
            setattr(self, name, _int(getattr(self, name), name))
        if self.linear_num_value_heads % self.linear_num_key_heads:
            raise ConfigError(f"linear_num_value_heads ({self.linear_num_value_heads}) must be a multiple of "
                              f"linear_num_key_heads ({self.linear_num_key_heads}): each key head serves an equal "
                              f"group of value heads")
        self.partial_rotary_factor = _float(self.partial_rotary_factor, "partial_rotary_factor",
                                            lambda v: 0 < v <= 1, "in (0, 1]")
        if self.rotary_dim < 2 or self.rotary_dim % 2:
            raise ConfigError(f"int(head_dim * partial_rotary_factor) = int({self.head_dim} * "
                              f"{self.partial_rotary_factor}) = {self.rotary_dim} rotary dims; RoPE needs an even "
                              f"number >= 2")
        if self.layer_types is None:  # HF: every full_attention_interval-th layer is attention
            n = self.full_attention_interval
            self.layer_types = ["linear_attention" if (i + 1) % n else "full_attention"
                                for i in range(self.num_hidden_layers)]
        if not isinstance(self.layer_types, (list, tuple)) or len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types must list one type per layer ({self.num_hidden_layers}), "
                              f"got {self.layer_types!r:.100}")
        unknown = sorted({repr(t) for t in self.layer_types if not isinstance(t, str) or t not in LAYER_TYPES})
        if unknown:
            raise ConfigError(f"unknown layer type {', '.join(unknown)} in layer_types; litetorch knows {LAYER_TYPES}")
        self.layer_types = list(self.layer_types)

    @property
    def rotary_dim(self) -> int:
        """HF: int(head_dim * partial_rotary_factor) leading coordinates of each head rotate (64 of 256)."""
        return int(self.head_dim * self.partial_rotary_factor)
