"""Seeded randomness: a `Generator` like torch's, and the global one behind `manual_seed`.

Initialization, dropout and sampling all draw from a Generator, so the same seed gives the
same weights, masks and tokens. (litetorch's stream is NumPy's PCG64, not torch's Mersenne
Twister, so the same seed does *not* give torch's numbers: parity tests copy weights instead.)
"""
import numpy as np

from . import checks
from .errors import ConfigError


class Generator:
    def __init__(self, seed: int | None = None):
        self.manual_seed(0 if seed is None else seed)

    def manual_seed(self, seed: int) -> "Generator":
        self.seed = checks.integer("seed", seed, lo=0)
        self.np = np.random.default_rng(self.seed)
        return self

    def get_state(self):
        return self.np.bit_generator.state

    def set_state(self, state) -> None:
        self.np.bit_generator.state = state


default_generator = Generator(0)


def manual_seed(seed: int) -> Generator:
    """Reseed the global generator (used when no `generator=` is passed)."""
    return default_generator.manual_seed(seed)


def _gen(generator: "Generator | np.random.Generator | None") -> np.random.Generator:
    """The NumPy generator to draw from: a litetorch Generator's, a NumPy Generator as is, or the global one."""
    if isinstance(generator, np.random.Generator):
        return generator
    if generator is not None and not isinstance(generator, Generator):
        raise ConfigError(f"generator must be a litetorch Generator, a numpy Generator or None, "
                          f"got {type(generator).__name__}")
    return (generator or default_generator).np
