"""Sampling: from next-token logits to one token id.

The model hands us a logits vector `[V]` (or a batch `[B, V]`). Each function below is one small
step on those logits, with the semantics of the same-named Hugging Face processor
(`transformers.generation.logits_process`):

    repetition_penalty  RepetitionPenaltyLogitsProcessor   x_i / r if x_i > 0 else x_i * r, for seen ids
    apply_temperature   TemperatureLogitsWarper            x / T
    top_k_filter        TopKLogitsWarper                   keep the k largest (ties with the k-th kept)
    top_p_filter        TopPLogitsWarper                   keep the smallest top set holding >= p of the mass
    min_p_filter        MinPLogitsWarper                   keep p_i >= min_p * max_j p_j
    greedy / sample     argmax / torch.multinomial         pick a token

Filters never delete entries: they set the losers to -inf, so softmax gives them probability 0
and the shapes stay `[V]` / `[B, V]`. Every step returns a new array of the input's float dtype.

`Sampler` composes the steps in the order HF's `generate` uses (`GenerationMixin.
_get_logits_processor`, transformers 5.x): repetition penalty first (it also applies to greedy
decoding), then, only when sampling, temperature -> top-k -> top-p -> min-p; then the draw.

Shapes: B = batch rows, V = vocabulary size, T = number of previous tokens.
"""
import numpy as np

import secrets

from . import checks
from .errors import ConfigError, DTypeError, ShapeError
from .random import Generator, _gen
from .tensor import Tensor

__all__ = ["apply_temperature", "top_k_filter", "top_p_filter", "min_p_filter", "repetition_penalty",
           "softmax", "greedy", "sample", "Sampler"]


# ----------------------------------------------------------------------------------------------
# helpers: input checks and a softmax that never returns NaN
# ----------------------------------------------------------------------------------------------
def _as_logits(logits) -> np.ndarray:
    """A float array of shape [V] or [B, V] (ints become float32, like torch's default dtype)."""
    x = np.asarray(logits.data if isinstance(logits, Tensor) else logits)
    if x.dtype.kind in "iu":
        x = x.astype(np.float32)
    elif x.dtype.kind != "f":
        raise DTypeError(f"logits must be a float (or integer) array, got dtype {x.dtype}")
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ShapeError(f"logits must have shape [V] or [B, V] with V >= 1, got shape {x.shape}")
    return x


def _check_no_nan(x: np.ndarray) -> None:
    if np.isnan(x).any():
        raise ConfigError(f"logits must be numbers or -inf, got NaN in {int(np.isnan(x).sum())} of {x.size} "
                          f"entries; a token cannot be chosen from NaN scores (check the model's forward pass)")


def softmax(logits, dtype=None) -> np.ndarray:
    """Probabilities over the last axis, `[..., V] -> [..., V]`, computed in `dtype` (default: the input's).

    The stable form exp(x - max) / sum exp(x - max), made safe for every input a filter can produce:
    a row that is all -inf gives all zeros (not NaN), and +inf entries share all the mass equally.
    """
    x = np.asarray(logits, dtype=dtype)
    m = np.max(x, axis=-1, keepdims=True)                          # [..., 1]
    # +inf logits: inf - inf would be NaN, so give the +inf entries logit 0 and everyone else -inf.
    inf_rows = np.isposinf(m)
    if inf_rows.any():
        x = np.where(inf_rows, np.where(np.isposinf(x), 0.0, -np.inf).astype(x.dtype), x)
        m = np.where(inf_rows, 0.0, m)
    m = np.where(np.isneginf(m), 0.0, m)                           # an all -inf row: exp(-inf) = 0 everywhere
    e = np.exp(x - m)
    total = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(total == 0, 1.0, total)


# ----------------------------------------------------------------------------------------------
# argument checks (checks.py: ConfigError naming the argument and the bad value)
# ----------------------------------------------------------------------------------------------
def _check_temperature(t) -> float:
    return checks.number("temperature", t, lo=0.0, meaning=" (0 means greedy)")


def _check_top_k(k) -> int:
    return checks.integer("top_k", k, lo=0)


def _check_unit_interval(name: str, p) -> float:
    return checks.number(name, p, lo=0.0, hi=1.0)


def _check_penalty(r) -> float:
    return checks.number("repetition_penalty", r, lo=0.0, lo_open=True, meaning=" (1.0 means no penalty)")


# lesson 15: begin
# lesson 15: begin (repetition_penalty) exercise
def repetition_penalty(logits, previous_ids, penalty: float) -> np.ndarray:
    """Make tokens that already appeared less likely (penalty > 1) or more likely (penalty < 1).

    x_i -> x_i / penalty  if x_i > 0,   x_i * penalty  if x_i < 0,   for each id i in previous_ids.
    Dividing a positive logit and multiplying a negative one both push it down when penalty > 1.
    Each id is penalized once, however often it appeared (CTRL paper, Keskar et al. 2019).

    logits: [V] with previous_ids a sequence of ids, or [B, V] with one sequence per row ([B, T]).
    Ids >= V are ignored, as in HF (such tokens can never be generated).
    """
    x = _as_logits(logits)
    r = _check_penalty(penalty)
    out = x.copy()
    rows_out = out.reshape(-1, x.shape[-1])                        # [B, V] view of out ([1, V] for a vector)
    rows_ids = [previous_ids] if x.ndim == 1 else list(previous_ids)
    if len(rows_ids) != len(rows_out):
        raise ShapeError(f"previous_ids has {len(rows_ids)} rows but logits has {len(rows_out)} (shape {x.shape})")
    for row, ids in zip(rows_out, rows_ids):                       # row: a [V] view into out
        ids = np.unique(checks.token_ids(ids, None, "previous_ids").reshape(-1))  # sorted; each token penalized once
        ids = ids[ids < x.shape[-1]]
        seen = row[ids]
        row[ids] = np.where(seen < 0, seen * r, seen / r)
    return out
# lesson 15: end (repetition_penalty) exercise


def apply_temperature(logits, temperature: float) -> np.ndarray:
    """x / T: T < 1 sharpens the distribution, T > 1 flattens it. `[V] -> [V]`, `[B, V] -> [B, V]`.

    softmax(x / T) -> one-hot on the argmax as T -> 0 (use `greedy` for T = 0),
                   -> uniform as T -> infinity.
    """
    x = _as_logits(logits)
    t = _check_temperature(temperature)
    if t == 0:
        raise ConfigError("temperature 0 would divide by zero: it means greedy decoding, use greedy(logits) "
                         "(Sampler(temperature=0) does this for you)")
    return x / t      # a Python float keeps float32 logits float32


# lesson 15: begin (top_k) exercise
def top_k_filter(logits, k: int) -> np.ndarray:
    """Keep the k largest logits, set the rest to -inf. `[V] -> [V]`, `[B, V] -> [B, V]`.

    Like HF: a token is removed if its logit is *smaller* than the k-th largest, so tokens tied
    with the k-th largest all stay (more than k may survive). k >= V keeps everything; k = 0 means
    "no top-k" (HF `generate(top_k=0)`).
    """
    x = _as_logits(logits)
    k = min(_check_top_k(k), x.shape[-1])
    if k == 0:
        return x.copy()
    kth_largest = np.sort(x, axis=-1)[..., -k, None]            # [B, 1]: the k-th largest logit per row
    return np.where(x < kth_largest, -np.inf, x)
# lesson 15: end (top_k) exercise


# lesson 15: begin (top_p) exercise
def top_p_filter(logits, p: float) -> np.ndarray:
    """Nucleus sampling (Holtzman et al. 2019): keep the most likely tokens until their mass reaches p.

    Sort the tokens from least to most likely and accumulate their probabilities. A token whose
    cumulative mass (itself plus everything less likely) is <= 1 - p lies entirely in the tail that
    top-p throws away, so it is removed. Equivalently, a token is kept if the tokens ranked above it
    hold less than p of the mass. The top token is always kept (HF's min_tokens_to_keep=1), so p = 0
    keeps just the top token. p = 1 keeps everything (HF's generate skips top-p when p >= 1).

    Matching HF's arithmetic: the probabilities are computed in the logits' dtype and accumulated in
    float64 (as torch's CPU cumsum does), then compared in the logits' dtype. Ties at the cut are
    broken by token id (the lower id ranks higher, as in argmax); HF's unstable torch.sort may pick
    another member of the tie, but always removes the same number of them.
    """
    x = _as_logits(logits)
    p = _check_unit_interval("top_p", p)
    if p >= 1.0:
        return x.copy()
    order = np.argsort(-x, axis=-1, kind="stable")[..., ::-1]     # [B, V] ids, least likely first
    probs_sorted = softmax(np.take_along_axis(x, order, axis=-1))  # [B, V] in ascending order
    mass_at_or_below = np.cumsum(probs_sorted, axis=-1, dtype=np.float64).astype(x.dtype)
    remove_sorted = mass_at_or_below <= 1 - p
    remove_sorted[..., -1] = False                                 # always keep the most likely token
    remove = np.empty_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)       # back to vocabulary order
    return np.where(remove, -np.inf, x)
# lesson 15: end (top_p) exercise


# lesson 15: begin (min_p) exercise
def min_p_filter(logits, min_p: float) -> np.ndarray:
    """Keep tokens whose probability is at least min_p times the top token's probability.

    p_i < min_p * max_j p_j  ->  removed.  The cut scales with the model's confidence: a sharp
    distribution keeps few tokens, a flat one keeps many (Nguyen et al. 2024). min_p = 0 keeps all;
    min_p = 1 keeps only the token(s) tied for the top. The top token is never removed.
    """
    x = _as_logits(logits)
    min_p = _check_unit_interval("min_p", min_p)
    probs = softmax(x)                                             # [B, V] in the logits' dtype, as HF
    threshold = min_p * np.max(probs, axis=-1, keepdims=True)      # [B, 1]
    return np.where(probs < threshold, -np.inf, x)
# lesson 15: end (min_p) exercise


def greedy(logits):
    """The most likely token: argmax over the last axis (ties -> the lowest id, as torch.argmax).

    `[V] -> int`, `[B, V] -> [B] int64 array`.
    """
    x = _as_logits(logits)
    _check_no_nan(x)
    ids = np.argmax(x, axis=-1)
    return int(ids) if x.ndim == 1 else ids.astype(np.int64)


# lesson 15: begin (sample) exercise
def sample(logits, generator: Generator | np.random.Generator | None = None):
    """Draw one token from softmax(logits), in float64. `[V] -> int`, `[B, V] -> [B] int64 array`.

    Inverse-CDF sampling: lay the probabilities end to end on [0, 1), draw u ~ Uniform[0, 1), and
    return the token whose interval contains u. A token with probability 0 (a -inf logit) has an
    empty interval and can never be drawn. `generator`: a litetorch Generator (same seed, same
    tokens), a numpy Generator, or None for the global one (`litetorch.manual_seed`).
    """
    x = _as_logits(logits)
    _check_no_nan(x)
    rng = generator if isinstance(generator, np.random.Generator) else _gen(generator)
    probs = softmax(x, dtype=np.float64).reshape(-1, x.shape[-1])  # [B, V], float64 for the draw
    if not probs.any(axis=-1).all():
        raise ConfigError("every logit in a row is -inf, so no token has nonzero probability "
                           "(expected at least one finite logit per row)")
    cdf = np.cumsum(probs, axis=-1)                                # [B, V]: cdf[i] = p_0 + ... + p_i
    cdf /= cdf[:, -1:]                                             # exactly 1.0 at the end
    u = rng.random((len(cdf), 1))                                  # [B, 1]: one uniform draw per row
    ids = np.sum(cdf <= u, axis=-1)                                # [B]: the first i with cdf[i] > u
    return int(ids[0]) if x.ndim == 1 else ids
# lesson 15: end (sample) exercise
# lesson 15: end


class Sampler:
    """All the steps in HF `generate`'s order, with a seeded generator: `sampler(logits) -> token id`.

        sampler = Sampler(temperature=0.7, top_p=0.9, seed=0)
        next_id = sampler(logits, previous_ids=ids_so_far)      # logits [V] -> int; [B, V] -> [B]

    Order (transformers `_get_logits_processor`): repetition penalty, then only when sampling
    (temperature > 0) temperature -> top-k -> top-p -> min-p, then a draw from softmax in float64.
    temperature=0 means greedy: argmax after the repetition penalty (the filters never change the
    argmax). None (or the neutral value 1.0 / 0 / 1.0 / 0 / 1.0) switches a step off.
    seed: the same seed gives the same tokens. seed=None draws a fresh seed from the operating
    system, as HF, llama.cpp and torch do, and keeps it in `.seed`, so any run can be replayed.
    """

    def __init__(self, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None):
        self.temperature = _check_temperature(temperature)
        self.top_k = None if top_k is None else _check_top_k(top_k)
        self.top_p = None if top_p is None else _check_unit_interval("top_p", top_p)
        self.min_p = None if min_p is None else _check_unit_interval("min_p", min_p)
        self.repetition_penalty = None if repetition_penalty is None else _check_penalty(repetition_penalty)
        seed = checks.seed(seed)
        self.seed = None if self.temperature == 0 else secrets.randbits(63) if seed is None else seed
        self.generator = None if self.seed is None else Generator(self.seed)

    def process(self, logits, previous_ids=()) -> np.ndarray:
        """The logits after every enabled step (what the draw uses). Same shape and dtype as logits."""
        x = _as_logits(logits)
        if self.repetition_penalty not in (None, 1.0) and len(previous_ids):
            x = repetition_penalty(x, previous_ids, self.repetition_penalty)
        if self.temperature == 0:           # greedy: HF applies no warpers when do_sample=False
            return x
        if self.temperature != 1.0:
            x = apply_temperature(x, self.temperature)
        if self.top_k:
            x = top_k_filter(x, self.top_k)
        if self.top_p is not None and self.top_p < 1.0:
            x = top_p_filter(x, self.top_p)
        if self.min_p is not None:
            x = min_p_filter(x, self.min_p)
        return x

    def __call__(self, logits, previous_ids=()):
        x = self.process(logits, previous_ids)
        return greedy(x) if self.temperature == 0 else sample(x, self.generator)

    def __repr__(self):
        fields = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "seed")
        return "Sampler(" + ", ".join(f"{f}={getattr(self, f)!r}" for f in fields) + ")"
