"""`LlamaConfig`: every shape of a Llama-family model, read from the file (nothing hard-coded).

Two sources say the same things in different words:

| LlamaConfig field         | GGUF metadata key (arch = "llama")        | HF config.json key          |
|---------------------------|-------------------------------------------|-----------------------------|
| vocab_size                | llama.vocab_size (or len(tokens))         | vocab_size                  |
| hidden_size (C)           | llama.embedding_length                    | hidden_size                 |
| intermediate_size         | llama.feed_forward_length                 | intermediate_size           |
| num_hidden_layers         | llama.block_count                         | num_hidden_layers           |
| num_attention_heads (H)   | llama.attention.head_count                | num_attention_heads         |
| num_key_value_heads (Hkv) | llama.attention.head_count_kv             | num_key_value_heads         |
| head_dim (Dh)             | llama.attention.key_length / C // H       | head_dim or C // H          |
| rms_norm_eps              | llama.attention.layer_norm_rms_epsilon    | rms_norm_eps                |
| rope_theta                | llama.rope.freq_base                      | rope_theta                  |
| max_position_embeddings   | llama.context_length                      | max_position_embeddings     |
| tie_word_embeddings       | no `output.weight` tensor in the file     | tie_word_embeddings         |

What litetorch cannot run it refuses with a ModelFormatError instead of computing something
subtly wrong: RoPE scaling (Llama-3.1 `rope_freqs`, YaRN, linear), partial rotary dimensions,
activations other than SiLU.

Files come from strangers, and a number in the metadata is a promise the weights may not keep:
`llama.block_count = 20000` in a 2-layer file used to build 20,000 layers (14 s, 900 MB) before the
loader noticed the missing weights. So every value is checked, before any model is built, three ways:

1. its type, exactly: an integer field takes an integer (not "2", 2.9 or True), a float field a finite
   number (an eps of +inf passes `eps > 0` and turns every logit into 0); nothing is coerced;
2. against `LIMITS`, upper bounds far above any released model;
3. against the tensor table: the sizes must be the shapes of the weights actually in the file
   (`_SHAPE_PINS`), and the layer count the number of layers that have weights.

A bad value in a file raises ModelFormatError naming the key; the same value passed to
`LlamaConfig(...)` directly raises ConfigError.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Mapping

import numpy as np

from ..errors import ConfigError, ModelFormatError

# Upper limits of a config's sizes, in one place. Each is far above every released model (the comment
# names the largest we know of), so no real file is refused; they make a hostile or corrupt file fail
# in microseconds instead of allocating (metadata is also checked against the tensor table below).
LIMITS = {
    "vocab_size": 1 << 20,               # 1,048,576; the largest vocabularies in use are ~256k (Gemma: 262,144)
    "hidden_size": 1 << 16,              # 65,536; Llama-3.1-405B: 16,384
    "intermediate_size": 1 << 18,        # 262,144; Llama-3.1-405B: 53,248
    "num_hidden_layers": 1 << 10,        # 1,024; Llama-3.1-405B: 126
    "num_attention_heads": 1 << 10,      # 1,024; Llama-3.1-405B: 128
    "num_key_value_heads": 1 << 10,      # (at most num_attention_heads anyway)
    "head_dim": 1 << 10,                 # 1,024; Gemma: 256, most models 64 or 128
    "max_position_embeddings": 1 << 24,  # 16,777,216; Llama-4-Scout: 10M. A long context costs nothing until it
                                         # is used: RoPE's table grows with the positions seen, caches are sized by
                                         # their caller
}
# rms_norm_eps must lie in (0, 1): real models use 1e-6 .. 1e-5; an eps of 1 or more swamps the mean square
# of unit-scale activations. rope_theta must be finite and > 0.
_INT_FIELDS = tuple(LIMITS)
_REQUIRED = object()  # the default of a metadata key that must be present
_BOOL_FIELDS = ("tie_word_embeddings", "attention_bias", "mlp_bias")


def _check_int(value, label: str, field: str, error=ConfigError) -> int:
    """An integer in [1, LIMITS[field]]: a Python or NumPy int, never a bool, float or string."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)):
        raise error(f"{label} must be an integer, got {value!r:.100} ({type(value).__name__})")
    value, limit = int(value), LIMITS[field]  # (int() of an integer is exact: NumPy scalar -> Python int)
    if not 1 <= value <= limit:
        raise error(f"{label} must be between 1 and {limit} (litetorch's limit for {field}), got {value}")
    return value


def _check_float(value, label: str, error=ConfigError) -> float:
    """A finite real number (an int is accepted: JSON writes 10000.0 as 10000), never a bool or string."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        raise error(f"{label} must be a number, got {value!r:.100} ({type(value).__name__})")
    try:
        value = float(value)  # (exact for floats; an int rounds to the nearest float, as JSON's 1e4 does)
    except OverflowError:  # JSON allows a 400-digit integer
        raise error(f"{label} must be finite, got an integer of {value.bit_length()} bits") from None
    if not math.isfinite(value):
        raise error(f"{label} must be finite, got {value}")
    return value


def _check_bool(value, label: str, error=ConfigError) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{label} must be true or false, got {value!r:.100} ({type(value).__name__})")
    return bool(value)


@dataclass
class LlamaConfig:
    """The shapes of a Llama model. Letters used in shape comments: V = vocab_size,
    C = hidden_size, H = num_attention_heads, Hkv = num_key_value_heads, Dh = head_dim."""
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None   # None: = num_attention_heads (plain multi-head attention)
    head_dim: int | None = None              # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048      # the context length
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False

    def __post_init__(self):
        def check_int(name):
            setattr(self, name, _check_int(getattr(self, name), f"LlamaConfig.{name}", name))

        check_int("num_attention_heads")
        check_int("hidden_size")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
            if self.head_dim == 0:
                raise ConfigError(f"head_dim = hidden_size // num_attention_heads = {self.hidden_size} // "
                                  f"{self.num_attention_heads} = 0; give head_dim explicitly or fewer heads")
        for name in _INT_FIELDS:
            check_int(name)
        self.rms_norm_eps = _check_float(self.rms_norm_eps, "LlamaConfig.rms_norm_eps")
        self.rope_theta = _check_float(self.rope_theta, "LlamaConfig.rope_theta")
        for name in _BOOL_FIELDS:
            setattr(self, name, _check_bool(getattr(self, name), f"LlamaConfig.{name}"))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        if not 0 < self.rms_norm_eps < 1:
            raise ConfigError(f"rms_norm_eps must be in (0, 1) (real models use 1e-6 .. 1e-5), got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta must be positive, got {self.rope_theta}")
        if self.attention_bias != self.mlp_bias:
            raise ConfigError(f"attention_bias={self.attention_bias} but mlp_bias={self.mlp_bias}: "
                              f"litetorch's DecoderBlock has one `bias` switch for both")

    def to_dict(self) -> dict:
        return asdict(self)

    # --- from a GGUF file --------------------------------------------------------------------------

    @classmethod
    def from_gguf_metadata(cls, md: Mapping, tensors=()) -> "LlamaConfig":
        """The config a GGUF's metadata describes. `tensors` is the file's tensor table (name -> TensorInfo
        or shape; `GGUFFile.tensors`): the metadata is checked against it before anything is built (with
        only names, or nothing, only the metadata itself is checked)."""
        arch = md.get("general.architecture")
        if not isinstance(arch, str) or arch != "llama":  # (an array == "llama" is an array, not a bool)
            raise ModelFormatError(f"unsupported GGUF architecture {arch!r}: litetorch loads 'llama' models")
        config = _wrap(lambda: cls._from_gguf(md, tensors), "GGUF metadata")
        if isinstance(tensors, Mapping):
            _check_tensor_table(config, tensors, "gguf")
        return config

    @classmethod
    def _from_gguf(cls, md: Mapping, tensors) -> "LlamaConfig":
        def get(key, field=None, default=_REQUIRED, kind="int"):
            if key not in md:
                if default is _REQUIRED:
                    raise ModelFormatError(f"GGUF metadata is missing {key!r}")
                return default
            value = md[key]
            if kind == "int":
                return _check_int(value, f"GGUF metadata {key}", field, ModelFormatError)
            return _check_float(value, f"GGUF metadata {key}", ModelFormatError)

        n_heads = get("llama.attention.head_count", "num_attention_heads")
        hidden = get("llama.embedding_length", "hidden_size")
        if "llama.vocab_size" in md:
            vocab = get("llama.vocab_size", "vocab_size")
        else:  # llama.cpp's rule: the vocabulary is the token list
            tokens = md.get("tokenizer.ggml.tokens")
            if not isinstance(tokens, list):
                raise ModelFormatError("GGUF metadata has neither 'llama.vocab_size' nor a list "
                                       f"'tokenizer.ggml.tokens' to count (got {type(tokens).__name__})")
            vocab = _check_int(len(tokens), "the number of tokenizer.ggml.tokens", "vocab_size", ModelFormatError)
        head_dim = get("llama.attention.key_length", "head_dim", hidden // n_heads)
        if head_dim == 0:  # (the default; a stored 0 was refused above)
            raise ModelFormatError(f"GGUF metadata: llama.embedding_length // llama.attention.head_count = "
                                   f"{hidden} // {n_heads} = 0 and no llama.attention.key_length is given")
        rope_dim = get("llama.rope.dimension_count", "head_dim", head_dim)
        if rope_dim != head_dim:
            raise ModelFormatError(f"llama.rope.dimension_count is {rope_dim} but head_dim is {head_dim}: "
                                   f"partial rotary embeddings are not supported")
        value_dim = get("llama.attention.value_length", "head_dim", head_dim)
        if value_dim != head_dim:
            raise ModelFormatError(f"llama.attention.value_length is {value_dim} but key_length is {head_dim}: "
                                   f"litetorch's attention needs keys and values of one head_dim")
        scaling = md.get("llama.rope.scaling.type", "none")
        if not isinstance(scaling, str) or scaling != "none":
            raise ModelFormatError(f"llama.rope.scaling.type {scaling!r} is not supported (only 'none')")
        names = tensors.keys() if isinstance(tensors, Mapping) else set(tensors)
        return cls(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=get("llama.feed_forward_length", "intermediate_size"),
            num_hidden_layers=get("llama.block_count", "num_hidden_layers"),
            num_attention_heads=n_heads,
            num_key_value_heads=get("llama.attention.head_count_kv", "num_key_value_heads", n_heads),
            head_dim=head_dim,
            rms_norm_eps=get("llama.attention.layer_norm_rms_epsilon", default=1e-5, kind="float"),
            rope_theta=get("llama.rope.freq_base", default=10000.0, kind="float"),
            max_position_embeddings=get("llama.context_length", "max_position_embeddings", 2048),
            tie_word_embeddings="output.weight" not in names,
        )

    # --- from an HF checkpoint ---------------------------------------------------------------------

    @classmethod
    def from_hf_config(cls, cfg: Mapping, tensors=None) -> "LlamaConfig":
        """The config an HF `config.json` (as a dict) describes. `tensors` (name -> array or shape, the
        checkpoint's tensors) checks it against the weights before anything is built."""
        if not isinstance(cfg, Mapping):
            raise ModelFormatError(f"config.json should hold a JSON object, got {type(cfg).__name__}")
        config = _wrap(lambda: cls._from_hf(cfg), "config.json")
        if tensors is not None:
            _check_tensor_table(config, tensors, "hf")
        return config

    @classmethod
    def _from_hf(cls, cfg: Mapping) -> "LlamaConfig":
        model_type, archs = cfg.get("model_type"), cfg.get("architectures") or []
        if not isinstance(archs, list) or not all(isinstance(a, str) for a in archs):
            raise ModelFormatError(f"config.json: 'architectures' should be a list of names, got {archs!r}")
        if model_type not in ("llama", "mistral") and not {"LlamaForCausalLM", "MistralForCausalLM"} & set(archs):
            raise ModelFormatError(f"unsupported model_type {model_type!r} (architectures {archs}): "
                                   f"litetorch loads Llama models")
        if cfg.get("sliding_window"):
            raise ModelFormatError(f"sliding_window={cfg['sliding_window']} attention is not supported")

        def get(key, field=None, default=_REQUIRED, kind="int"):
            value = cfg.get(key)
            if value is None:  # absent, or null: HF's "use the default"
                if default is _REQUIRED:
                    raise ModelFormatError(f"config.json is missing {key!r}")
                return default
            label = f"config.json {key}"
            if kind == "int":
                return _check_int(value, label, field, ModelFormatError)
            if kind == "bool":
                return _check_bool(value, label, ModelFormatError)
            return _check_float(value, label, ModelFormatError)

        # transformers 4 writes `rope_theta` (+ `rope_scaling`); 5 writes `rope_parameters`.
        rope, scaling = cfg.get("rope_parameters") or {}, cfg.get("rope_scaling") or {}
        if not isinstance(rope, Mapping) or not isinstance(scaling, Mapping):
            raise ModelFormatError(f"config.json: rope_parameters / rope_scaling should be objects, got "
                                   f"{rope!r} / {scaling!r}")
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type != "default":
            raise ModelFormatError(f"RoPE type {rope_type!r} (rope scaling) is not supported yet; only 'default'")
        rope_theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ModelFormatError(f"hidden_act {act!r} is not supported: Llama's SwiGLU uses 'silu'")
        n_heads, hidden = get("num_attention_heads", "num_attention_heads"), get("hidden_size", "hidden_size")
        head_dim = get("head_dim", "head_dim", hidden // n_heads)
        if head_dim == 0:  # (the default; a stored 0 was refused above)
            raise ModelFormatError(f"config.json: hidden_size // num_attention_heads = {hidden} // {n_heads} = 0 "
                                   f"and no head_dim is given")
        return cls(
            vocab_size=get("vocab_size", "vocab_size"),
            hidden_size=hidden,
            intermediate_size=get("intermediate_size", "intermediate_size"),
            num_hidden_layers=get("num_hidden_layers", "num_hidden_layers"),
            num_attention_heads=n_heads,
            num_key_value_heads=get("num_key_value_heads", "num_key_value_heads", n_heads),
            head_dim=head_dim,
            rms_norm_eps=get("rms_norm_eps", default=1e-6, kind="float"),
            rope_theta=_check_float(rope_theta, "config.json rope_theta", ModelFormatError),
            max_position_embeddings=get("max_position_embeddings", "max_position_embeddings", 2048),
            tie_word_embeddings=get("tie_word_embeddings", default=False, kind="bool"),
            attention_bias=get("attention_bias", default=False, kind="bool"),
            mlp_bias=get("mlp_bias", default=False, kind="bool"),
        )


def _wrap(build, source: str) -> LlamaConfig:
    """Run a from_* builder; a ConfigError (a value out of range or inconsistent with another) came from
    the file, so it is the file's format error."""
    try:
        return build()
    except ConfigError as e:
        raise ModelFormatError(f"{source}: {e}") from None


# Which weights pin which sizes, by the name each format gives them ({N}: every layer). Checked before a
# model is built, so metadata that disagrees with the weights in the file fails at once instead of
# allocating a model of the metadata's size; together they bound every parameter the model will allocate.
# Everything else (norms, v/o/gate/down, lm_head) is checked by the strict state_dict load.
_SHAPE_PINS = [  # (GGUF name, HF name, expected shape)
    ("token_embd.weight", "model.embed_tokens.weight", lambda c: (c.vocab_size, c.hidden_size)),
    ("blk.{N}.attn_q.weight", "model.layers.{N}.self_attn.q_proj.weight",
     lambda c: (c.num_attention_heads * c.head_dim, c.hidden_size)),
    ("blk.{N}.attn_k.weight", "model.layers.{N}.self_attn.k_proj.weight",
     lambda c: (c.num_key_value_heads * c.head_dim, c.hidden_size)),
    ("blk.{N}.ffn_up.weight", "model.layers.{N}.mlp.up_proj.weight", lambda c: (c.intermediate_size, c.hidden_size)),
]
_LAYER_NAME = {"gguf": re.compile(r"blk\.(\d{1,9})\."), "hf": re.compile(r"model\.layers\.(\d{1,9})\.")}
_LAYER_KEY = {"gguf": "llama.block_count", "hf": "num_hidden_layers"}


def _check_tensor_table(config: LlamaConfig, tensors: Mapping, naming: str) -> None:
    """The config must describe the weights in `tensors` (name -> TensorInfo, array or shape, named the
    `naming` way: "gguf" or "hf"): as many layers as have weights, and the shapes of `_SHAPE_PINS`."""
    layer_name = _LAYER_NAME[naming]
    layers = {int(m.group(1)) for name in tensors if (m := layer_name.match(name))}
    n = config.num_hidden_layers
    if layers != set(range(n)):
        found = (f"layers 0..{max(layers)} ({len(layers)} layers)" if layers == set(range(len(layers))) and layers
                 else f"{len(layers)} layer numbers {sorted(layers)[:8]}{' ...' if len(layers) > 8 else ''}")
        raise ModelFormatError(f"{_LAYER_KEY[naming]} is {n}, but the tensor table holds weights for {found}")
    for gguf_name, hf_name, expected in _SHAPE_PINS:
        name = gguf_name if naming == "gguf" else hf_name
        want = expected(config)
        for i in range(n) if "{N}" in name else [None]:
            key = name.format(N=i)
            if key not in tensors:
                raise ModelFormatError(f"tensor {key!r} is missing from the file")
            value = tensors[key]
            shape = tuple(value.shape if hasattr(value, "shape") else value)
            if shape != want:
                raise ModelFormatError(
                    f"tensor {key!r} has shape {shape}, but the config read from the file needs {want} "
                    f"({_describe(config)})")


def _describe(c: LlamaConfig) -> str:
    return (f"vocab_size={c.vocab_size}, hidden_size={c.hidden_size}, intermediate_size={c.intermediate_size}, "
            f"num_attention_heads={c.num_attention_heads}, num_key_value_heads={c.num_key_value_heads}, "
            f"head_dim={c.head_dim}")
