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
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import ModelFormatError


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
        def positive_int(name):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ModelFormatError(f"LlamaConfig.{name} must be a positive integer, got {v!r}")

        positive_int("num_attention_heads")
        positive_int("hidden_size")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        for name in ("vocab_size", "intermediate_size", "num_hidden_layers", "num_key_value_heads", "head_dim",
                     "max_position_embeddings"):
            positive_int(name)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelFormatError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ModelFormatError(f"head_dim must be even (RoPE rotates pairs), got {self.head_dim}")
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ModelFormatError(f"rms_norm_eps ({self.rms_norm_eps}) and rope_theta ({self.rope_theta}) "
                                   f"must be positive")
        if self.attention_bias != self.mlp_bias:
            raise ModelFormatError(f"attention_bias={self.attention_bias} but mlp_bias={self.mlp_bias}: "
                                   f"litetorch's DecoderBlock has one `bias` switch for both")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_gguf_metadata(cls, md: dict, tensor_names=()) -> "LlamaConfig":
        arch = md.get("general.architecture")
        if arch != "llama":
            raise ModelFormatError(f"unsupported GGUF architecture {arch!r}: litetorch loads 'llama' models")
        try:
            return cls._from_gguf(md, tensor_names)
        except (TypeError, ValueError, ZeroDivisionError) as e:  # e.g. a per-layer array where a number belongs
            if isinstance(e, ModelFormatError):
                raise
            raise ModelFormatError(f"GGUF metadata has a value of the wrong kind: {e}") from None

    @classmethod
    def _from_gguf(cls, md: dict, tensor_names) -> "LlamaConfig":
        def need(key):
            if key not in md:
                raise ModelFormatError(f"GGUF metadata is missing {key!r}")
            return md[key]

        n_heads = int(need("llama.attention.head_count"))
        hidden = int(need("llama.embedding_length"))
        vocab = md.get("llama.vocab_size")
        if vocab is None:
            vocab = len(need("tokenizer.ggml.tokens"))
        head_dim = int(md.get("llama.attention.key_length", hidden // n_heads))
        rope_dim = int(md.get("llama.rope.dimension_count", head_dim))
        if rope_dim != head_dim:
            raise ModelFormatError(f"llama.rope.dimension_count is {rope_dim} but head_dim is {head_dim}: "
                                   f"partial rotary embeddings are not supported")
        scaling = md.get("llama.rope.scaling.type", "none")
        if scaling != "none":
            raise ModelFormatError(f"llama.rope.scaling.type {scaling!r} is not supported (only 'none')")
        return cls(
            vocab_size=int(vocab),
            hidden_size=hidden,
            intermediate_size=int(need("llama.feed_forward_length")),
            num_hidden_layers=int(need("llama.block_count")),
            num_attention_heads=n_heads,
            num_key_value_heads=int(md.get("llama.attention.head_count_kv", n_heads)),
            head_dim=head_dim,
            rms_norm_eps=float(md.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(md.get("llama.rope.freq_base", 10000.0)),
            max_position_embeddings=int(md.get("llama.context_length", 2048)),
            tie_word_embeddings="output.weight" not in set(tensor_names),
        )

    @classmethod
    def from_hf_config(cls, cfg: dict) -> "LlamaConfig":
        try:
            return cls._from_hf(cfg)
        except (TypeError, ValueError, ZeroDivisionError, AttributeError) as e:
            if isinstance(e, ModelFormatError):
                raise
            raise ModelFormatError(f"config.json has a value of the wrong kind: {e}") from None

    @classmethod
    def _from_hf(cls, cfg: dict) -> "LlamaConfig":
        model_type, archs = cfg.get("model_type"), cfg.get("architectures") or []
        if model_type not in ("llama", "mistral") and not {"LlamaForCausalLM", "MistralForCausalLM"} & set(archs):
            raise ModelFormatError(f"unsupported model_type {model_type!r} (architectures {archs}): "
                                   f"litetorch loads Llama models")
        if cfg.get("sliding_window"):
            raise ModelFormatError(f"sliding_window={cfg['sliding_window']} attention is not supported")

        def need(key):
            if key not in cfg:
                raise ModelFormatError(f"config.json is missing {key!r}")
            return cfg[key]

        # transformers 4 writes `rope_theta` (+ `rope_scaling`); 5 writes `rope_parameters`.
        rope = dict(cfg.get("rope_parameters") or {})
        scaling = cfg.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
        if rope_type != "default":
            raise ModelFormatError(f"RoPE type {rope_type!r} (rope scaling) is not supported yet; only 'default'")
        rope_theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        act = cfg.get("hidden_act", "silu")
        if act != "silu":
            raise ModelFormatError(f"hidden_act {act!r} is not supported: Llama's SwiGLU uses 'silu'")
        n_heads, hidden = int(need("num_attention_heads")), int(need("hidden_size"))
        return cls(
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=n_heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or n_heads),
            head_dim=int(cfg.get("head_dim") or hidden // n_heads),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
        )
