"""litetorch: transformers from first principles in NumPy.

    import litetorch as lt
    x = lt.tensor(np.random.randn(2, 3), requires_grad=True)
    (x @ x.T).sum().backward(); x.grad

    model, tok = lt.load_model()                  # SmolLM2-135M-Instruct, fetched once
    lt.generate(model, tok, "Why is the sky blue?").text
    chat = lt.ChatSession(model, tok); chat.send("Hi!").text
"""
from . import ops as _ops  # noqa: F401  (binds operators and methods onto Tensor)
from .creation import arange, from_numpy, full, ones, ones_like, rand, randint, randn, tensor, zeros, zeros_like
from .errors import (BenchmarkError, CacheError, ConfigError, ContextLengthError, DownloadError, DTypeError,
                     LitetorchError, ModelFormatError, ModelNotFoundError, OutOfRangeError, ShapeError, StateDictError,
                     StateError, TokenizerError)
from .ops import (abs, argmax, cat, chunk, clamp, exp, log, masked_fill, matmul_fn as matmul, max, mean, min, relu,
                  reshape, rsqrt, sigmoid, silu, softmax, split, sqrt, stack, sum, tanh, var, where, permute,
                  transpose, log_softmax)
from .random import Generator, manual_seed
from .tensor import (Parameter, Tensor, bool_, enable_grad, float16, float32, float64, get_default_dtype, int32, int64,
                     is_grad_enabled, no_grad, set_default_dtype)

concatenate = cat

__version__ = "0.1.0"


def __getattr__(name):
    # Heavier pieces load lazily so `import litetorch` stays instant and NumPy-only.
    if name in ("load_model",):
        from .models.loading import load_model
        return load_model
    if name in ("generate",):
        from .generation import generate
        return generate
    if name in ("ChatSession",):
        from .chat import ChatSession
        return ChatSession
    if name in ("nn", "optim", "testing", "debug", "io", "models"):
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'litetorch' has no attribute {name!r}")
