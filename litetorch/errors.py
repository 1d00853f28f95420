"""The one small hierarchy of litetorch errors.

Every exception litetorch raises on purpose is one of these (catch `LitetorchError` to catch them all),
and each also subclasses the builtin that Python code would catch for the same mistake (ValueError,
TypeError, KeyError, IndexError, FileNotFoundError, RuntimeError). Every message names the expected and
the actual value, and every error is raised *before* any state (a KV cache, a chat history, a
parameter) is modified. The checks that raise them for bad arguments live in `litetorch/checks.py`.

(A few builtins stay, because Python's protocols expect them: `NotImplementedError` from an abstract
method a subclass must define, `AttributeError` from `__getattr__`/`__setattr__`, `SystemExit` from a
command's main, and `AssertionError` from `litetorch.testing`'s assert_close/gradcheck, which are
assertions. tests/test_structure.py checks every other `raise` in the package.)
"""


class LitetorchError(Exception):
    """Base class: catch this to catch every litetorch error."""


class ShapeError(LitetorchError, ValueError):
    """A tensor has the wrong shape (or shapes that do not broadcast / multiply)."""


class DTypeError(LitetorchError, TypeError):
    """A tensor has the wrong dtype (token ids that are not integers), or two dtypes would be silently mixed."""


class ContextLengthError(LitetorchError, ValueError):
    """A prompt or a turn would not fit in the model's context window."""


class TokenizerError(LitetorchError, ValueError):
    """A token id is out of range, a chat message is malformed, or text/tokenizer data is invalid."""


class ModelFormatError(LitetorchError, ValueError):
    """A model file is corrupt, truncated, unsupported, or missing a tensor."""


class ModelNotFoundError(LitetorchError, FileNotFoundError):
    """The model file is not where it was asked for (and downloading was not allowed)."""


class DownloadError(LitetorchError, RuntimeError):
    """Fetching the default model failed (offline, wrong hash, unexpected wheel contents)."""


class CacheError(LitetorchError, ValueError):
    """A KV cache would overflow, or was made for another model, batch size or dtype."""


class StateDictError(LitetorchError, KeyError):
    """`load_state_dict` was given missing/unexpected keys or mismatched shapes."""

    def __str__(self):  # KeyError would otherwise print the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigError(LitetorchError, ValueError, TypeError):
    """An argument or a config value is invalid: wrong type, out of range, or inconsistent with another.

    It is both a ValueError and a TypeError (Python raises either for a bad argument, depending on what
    is wrong with it), so code written against the builtins keeps catching it."""


class OutOfRangeError(LitetorchError, IndexError):
    """An index past the end of a container (a ModuleList, a Sequential)."""


class StateError(LitetorchError, RuntimeError):
    """The call is valid, but not in the object's current state: a stream iterated twice, backward()
    through no graph, an in-place write to a tensor that requires grad, reading a closed file."""


class BenchmarkError(LitetorchError, RuntimeError):
    """A benchmark run cannot give a result: a worker process failed, or runs that must produce the same
    greedy tokens did not (litetorch/bench/)."""
