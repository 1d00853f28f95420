"""Tiny model files written by litetorch's own writers, for the untrusted-file tests.

- `write_tiny_gguf(path, **metadata_overrides)`: a random 2-layer GQA Llama as a GGUF (llama.cpp names,
  F32 weights) with a byte-level BPE tokenizer and a ChatML template: a complete file that
  `litetorch.load_model` turns into (model, tokenizer). Pass `key=None` to drop a metadata key.
- `write_tiny_hf(directory, **config_overrides)`: the same model as an HF checkpoint directory
  (config.json + model.safetensors written by `save_safetensors`).

No torch needed: the weights are random NumPy arrays (these files test the readers, not the maths).
"""
import json
from pathlib import Path

import numpy as np
from tokenizers import pre_tokenizers

from litetorch.io.gguf import write_gguf
from litetorch.io.safetensors import save_safetensors
from litetorch.nn.rope import permute_qk_to_interleaved

# C = 32, H = 4, Hkv = 2, Dh = 8, I = 64, 2 layers; the vocabulary is the byte alphabet + merges + specials.
C, H, HKV, DH, I, N_LAYERS, N_CTX = 32, 4, 2, 8, 64, 2, 64
BYTES = sorted(pre_tokenizers.ByteLevel.alphabet())  # the 256 byte symbols ('Ġ' is the space)
MERGES = ["h e", "l l", "Ġ t", "Ġt he"]
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENS = BYTES + ["he", "ll", "Ġt", "Ġthe"] + SPECIALS
V = len(TOKENS)  # 263
TOKEN_TYPES = [1] * (V - len(SPECIALS)) + [3] * len(SPECIALS)  # NORMAL ..., CONTROL x 3
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_weights(seed: int = 0, n_layers: int = N_LAYERS) -> dict[str, np.ndarray]:
    """HF-named float32 weights of the tiny Llama (untied: lm_head is its own matrix)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * shape[-1] ** -0.5).astype(np.float32)

    out = {"model.embed_tokens.weight": rng.standard_normal((V, C)).astype(np.float32),
           "model.norm.weight": np.ones(C, np.float32), "lm_head.weight": w(V, C)}
    for n in range(n_layers):
        p = f"model.layers.{n}."
        out.update({
            p + "input_layernorm.weight": np.ones(C, np.float32),
            p + "self_attn.q_proj.weight": w(H * DH, C), p + "self_attn.k_proj.weight": w(HKV * DH, C),
            p + "self_attn.v_proj.weight": w(HKV * DH, C), p + "self_attn.o_proj.weight": w(C, H * DH),
            p + "post_attention_layernorm.weight": np.ones(C, np.float32),
            p + "mlp.gate_proj.weight": w(I, C), p + "mlp.up_proj.weight": w(I, C),
            p + "mlp.down_proj.weight": w(C, I),
        })
    return out


_HF_TO_GGUF = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
               "lm_head.weight": "output.weight", "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q",
               "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
               "post_attention_layernorm": "ffn_norm", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
               "mlp.down_proj": "ffn_down"}


def gguf_name(hf_name: str) -> str:
    if hf_name in _HF_TO_GGUF:
        return _HF_TO_GGUF[hf_name]
    n, rest = hf_name[len("model.layers."):].split(".", 1)
    return f"blk.{n}.{_HF_TO_GGUF[rest.rsplit('.', 1)[0]]}.weight"


def tiny_gguf_metadata() -> dict:
    return {
        "general.architecture": "llama", "general.name": "tiny",
        "llama.vocab_size": np.uint32(V), "llama.embedding_length": np.uint32(C),
        "llama.feed_forward_length": np.uint32(I), "llama.block_count": np.uint32(N_LAYERS),
        "llama.attention.head_count": np.uint32(H), "llama.attention.head_count_kv": np.uint32(HKV),
        "llama.rope.dimension_count": np.uint32(DH), "llama.attention.layer_norm_rms_epsilon": np.float32(1e-5),
        "llama.rope.freq_base": np.float32(10000.0), "llama.context_length": np.uint32(N_CTX),
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": TOKENS,
        "tokenizer.ggml.token_type": np.array(TOKEN_TYPES, np.int32), "tokenizer.ggml.merges": MERGES,
        "tokenizer.ggml.bos_token_id": np.uint32(V - 2), "tokenizer.ggml.eos_token_id": np.uint32(V - 1),
        "tokenizer.chat_template": CHATML,
    }


def write_tiny_gguf(path, seed: int = 0, types: dict | None = None, **overrides) -> Path:
    """The tiny Llama as a GGUF. `overrides` replace metadata values by key with dots written as
    '__' (`llama__block_count=20000`); a value of None drops the key."""
    metadata = tiny_gguf_metadata()
    for key, value in overrides.items():
        key = key.replace("__", ".")
        if value is None:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    tensors = {}
    for name, w in tiny_weights(seed).items():  # Q/K rows as llama.cpp's converter stores them
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            w = permute_qk_to_interleaved(w, H if "q_proj" in name else HKV)
        tensors[gguf_name(name)] = w
    return write_gguf(path, metadata, tensors, types)


def tiny_hf_config() -> dict:
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": V, "hidden_size": C,
            "intermediate_size": I, "num_hidden_layers": N_LAYERS, "num_attention_heads": H,
            "num_key_value_heads": HKV, "head_dim": DH, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": N_CTX, "tie_word_embeddings": False, "hidden_act": "silu"}


def write_tiny_hf(directory, seed: int = 0, **overrides) -> Path:
    """The tiny Llama as an HF checkpoint directory; `overrides` replace config.json values (None drops)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = tiny_hf_config()
    for key, value in overrides.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (directory / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_safetensors(directory / "model.safetensors", tiny_weights(seed), metadata={"format": "pt"})
    return directory
