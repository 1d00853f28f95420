"""Reading and writing model files (GGUF, safetensors) in NumPy."""
