"""The one small hierarchy of litetorch errors.

Every message names the expected and the actual value, and every error is raised
*before* any state (a KV cache, a chat history, a parameter) is modified.
"""


class LitetorchError(Exception):
    """Base class: catch this to catch every litetorch error."""


class ShapeError(LitetorchError, ValueError):
    """A tensor has the wrong shape (or shapes that do not broadcast / multiply)."""


class DTypeError(LitetorchError, TypeError):
    """A tensor has the wrong dtype, or two tensors' dtypes would be silently mixed."""


class ContextLengthError(LitetorchError, ValueError):
    """A prompt or a turn would not fit in the model's context window."""


class TokenizerError(LitetorchError, ValueError):
    """A token id is out of range, or text/tokenizer data is invalid."""


class ModelFormatError(LitetorchError, ValueError):
    """A model file is corrupt, truncated, unsupported, or missing a tensor."""


class CacheError(LitetorchError, ValueError):
    """A KV cache would overflow, or was given tensors of the wrong shape/dtype."""


class StateDictError(LitetorchError, KeyError):
    """`load_state_dict` was given missing/unexpected keys or mismatched shapes."""

    def __str__(self):  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(LitetorchError, ValueError, TypeError):
    """An argument or a config value is invalid: wrong type, out of range, or inconsistent with another.

    It is both a ValueError and a TypeError (Python raises either for a bad argument, depending on what
    is wrong with it), so code written against the builtins keeps catching it."""
