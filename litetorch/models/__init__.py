"""Models built from litetorch.nn pieces, and the loaders that fill them with real weights.

    from litetorch.models import Llama, LlamaConfig, load_model
    model, tok = load_model()                        # default SmolLM2-135M-Instruct (GGUF)
    model = load_llama("path/to/hf_dir")             # or any Llama-family GGUF file
"""
from .config import LlamaConfig
from .llama import Llama
from .loading import load_llama, load_model

__all__ = ["LlamaConfig", "Llama", "load_model", "load_llama"]
