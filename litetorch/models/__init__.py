"""Models built from litetorch.nn pieces, and the loaders that fill them with real weights.

    from litetorch.models import Llama, LlamaConfig, load_model
    model, tok = load_model()                        # default SmolLM2-135M-Instruct (GGUF)
    model = load_llama("path/to/hf_dir")             # or any Llama-family GGUF file
    model = load_hf("path/to/hf_dir")                # Llama, Qwen3Moe or Qwen3Next, by config.json's model_type
    save_qwen3_gguf(model, "m.gguf"); load_qwen3_gguf("m.gguf")   # Qwen3-MoE / Qwen3-Next as llama.cpp names them
"""
from .config import LlamaConfig
from .llama import Llama
from .loading import load_hf, load_llama, load_model
from .qwen3 import Qwen3Moe, Qwen3Next
from .qwen3_config import Qwen3MoeConfig, Qwen3NextConfig
from .qwen3_io import load_gguf as load_qwen3_gguf
from .qwen3_io import save_gguf as save_qwen3_gguf

__all__ = ["LlamaConfig", "Llama", "load_model", "load_llama", "load_hf", "Qwen3Moe", "Qwen3Next", "Qwen3MoeConfig",
           "Qwen3NextConfig", "load_qwen3_gguf", "save_qwen3_gguf"]
