"""litetorch.sampling: each logits processor equals Hugging Face's, and draws follow the processed distribution.

Reference: `transformers.generation.logits_process` live when transformers is installed, otherwise the
committed fixture tests/fixtures/sampling.npz (made by tests/fixtures/make_fixtures_sampling.py).
"""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
from litetorch.sampling import (Sampler, apply_temperature, greedy, min_p_filter, repetition_penalty, sample,
                                softmax, top_k_filter, top_p_filter)

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_fixtures_sampling as mfs  # noqa: E402  (numpy-only: logits, cases, HF wrappers)

RTOL = {"float32": 1e-6, "float64": 1e-12}
CASE_IDS = [f"{name}={param}" for name, param in mfs.CASES]


def apply(name, param, logits, previous_ids):
    """Run the litetorch function for one (processor, parameter) case."""
    if name == "temperature":
        return apply_temperature(logits, param)
    if name == "top_k":
        return top_k_filter(logits, param)
    if name == "top_p":
        return top_p_filter(logits, param)
    if name == "min_p":
        return min_p_filter(logits, param)
    if name == "repetition_penalty":
        return repetition_penalty(logits, previous_ids, param)
    raise KeyError(name)


def assert_same_as_hf(ours, hf, logits, rtol):
    """Same -inf positions and equal finite values.

    One allowed difference: when tokens tied in logit straddle the top-p cut, HF removes members of
    the tie in torch.sort's (unstable) order and litetorch by token id. Then both remove the *same
    number* of tokens per row, and every position that differs holds that one tied logit value.
    """
    assert ours.shape == hf.shape and ours.dtype == hf.dtype, (ours.shape, ours.dtype, hf.shape, hf.dtype)
    assert not np.isnan(ours).any()
    ours_inf, hf_inf = np.isneginf(ours), np.isneginf(hf)
    np.testing.assert_array_equal(ours_inf.sum(-1), hf_inf.sum(-1), err_msg="number of removed tokens per row")
    for row in np.nonzero((ours_inf != hf_inf).any(-1))[0]:
        tied = np.unique(logits[row][ours_inf[row] != hf_inf[row]])
        assert len(tied) == 1, f"row {row}: masks differ beyond one tie group (logits {tied})"
    both = np.isfinite(ours) & np.isfinite(hf)
    np.testing.assert_allclose(ours[both], hf[both], rtol=rtol, atol=0)
    np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(hf))


# ------------------------------------------------------------------------------------------------
# (a) each processor == HF: committed fixture (always) and live (when transformers is importable)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_fixture():
    with np.load(FIXTURES / "sampling.npz") as z:          # never allow_pickle
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("dtype", mfs.DTYPES)
@pytest.mark.parametrize("name,param", mfs.CASES, ids=CASE_IDS)
def test_processor_equals_hf_fixture(hf_fixture, dtype, name, param):
    logits = hf_fixture[f"{dtype}.logits"]
    ours = apply(name, param, logits, hf_fixture["previous_ids"])
    assert_same_as_hf(ours, hf_fixture[f"{dtype}.{name}.{param}"], logits, RTOL[dtype])


@pytest.mark.parametrize("dtype", mfs.DTYPES)
def test_sampler_chain_equals_hf_processor_list_fixture(hf_fixture, dtype):
    logits = hf_fixture[f"{dtype}.logits"]
    ours = Sampler(**mfs.COMPOSED).process(logits, hf_fixture["previous_ids"])
    assert_same_as_hf(ours, hf_fixture[f"{dtype}.composed"], logits, RTOL[dtype])


def test_fixture_inputs_are_reproducible(hf_fixture):
    """The committed inputs are what make_fixtures_sampling.py's numpy-only code makes today."""
    for dtype in mfs.DTYPES:
        np.testing.assert_array_equal(hf_fixture[f"{dtype}.logits"], mfs.make_logits(dtype))
    np.testing.assert_array_equal(hf_fixture["previous_ids"], mfs.make_previous_ids())


@pytest.mark.parametrize("vocab", [64, 49152])
@pytest.mark.parametrize("dtype", mfs.DTYPES)
@pytest.mark.parametrize("name,param", mfs.CASES, ids=CASE_IDS)
def test_processor_equals_hf_live(dtype, vocab, name, param):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    logits = mfs.make_logits(dtype, seed=7, vocab=vocab)
    previous_ids = mfs.make_previous_ids(seed=7, vocab=vocab, length=50)
    hf = mfs.hf_apply(mfs.hf_processor(name, param), logits, previous_ids)
    assert_same_as_hf(apply(name, param, logits, previous_ids), hf, logits, RTOL[dtype])


def test_sampler_order_is_hf_generate_order_live():
    """Ask transformers itself which processors `generate` builds, and in which order."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1)
    model = transformers.LlamaForCausalLM(config)
    gen_config = transformers.GenerationConfig(do_sample=True, **mfs.COMPOSED)
    try:
        processors = model._get_logits_processor(generation_config=gen_config, input_ids_seq_length=12,
                                                 device="cpu", model_kwargs={})
    except (AttributeError, TypeError) as e:   # a private API: skip if a future version renames it
        pytest.skip(f"transformers' _get_logits_processor changed: {e}")
    assert [type(p).__name__ for p in processors] == [
        "RepetitionPenaltyLogitsProcessor", "TemperatureLogitsWarper", "TopKLogitsWarper",
        "TopPLogitsWarper", "MinPLogitsWarper"]
    logits, previous_ids = mfs.make_logits("float32", seed=3), mfs.make_previous_ids(seed=3)
    hf = processors(torch.from_numpy(previous_ids), torch.from_numpy(logits.copy())).numpy()
    assert_same_as_hf(Sampler(**mfs.COMPOSED).process(logits, previous_ids), hf, logits, RTOL["float32"])


# ------------------------------------------------------------------------------------------------
# the edge cases the docstrings promise
# ------------------------------------------------------------------------------------------------
def test_top_k_keeps_ties_with_the_kth_value():
    x = np.array([3.0, 1.0, 2.0, 2.0, 0.0], dtype=np.float32)
    np.testing.assert_array_equal(top_k_filter(x, 2), [3.0, -np.inf, 2.0, 2.0, -np.inf])


def test_top_k_larger_than_vocab_or_zero_keeps_everything():
    x = np.array([3.0, 1.0, -np.inf, 0.0])
    np.testing.assert_array_equal(top_k_filter(x, 100), x)
    np.testing.assert_array_equal(top_k_filter(x, 0), x)


def test_top_p_one_keeps_everything_and_zero_keeps_the_top_token():
    x = np.array([1.0, 5.0, 5.0, -np.inf, 2.0])
    np.testing.assert_array_equal(top_p_filter(x, 1.0), x)
    np.testing.assert_array_equal(top_p_filter(x, 0.0), [-np.inf, 5.0, -np.inf, -np.inf, -np.inf])  # tie -> lower id
    assert np.isfinite(top_p_filter(x, 1e-12)).sum() == 1


# HF's TopPLogitsWarper on n equal logits keeps n * p of them: a token is removed only when the mass at or
# below it is <= 1 - p, so the token whose mass reaches exactly 1 - p goes and the ones above it stay.
# (Computed with transformers 5.25: TopPLogitsWarper(p)(None, torch.zeros(1, n)).)
HF_TOP_P_TIES = [(0.5, 4, 2), (0.5, 8, 4), (0.25, 4, 1), (0.25, 8, 2), (0.75, 4, 3), (0.75, 8, 6)]


@pytest.mark.parametrize("p, n, kept", HF_TOP_P_TIES)
def test_top_p_at_a_tie_keeps_as_many_tokens_as_hf(p, n, kept):
    for dtype in (np.float32, np.float64):
        assert np.isfinite(top_p_filter(np.zeros(n, dtype), p)).sum() == kept


def test_top_p_tie_counts_are_hf_live():
    torch = pytest.importorskip("torch")
    warper = pytest.importorskip("transformers.generation.logits_process").TopPLogitsWarper
    for p, n, kept in HF_TOP_P_TIES:
        assert int(torch.isfinite(warper(p)(None, torch.zeros(1, n))).sum()) == kept


def test_softmax_of_an_all_minus_inf_row_is_zeros_and_inf_entries_share_the_mass():
    """The filters can leave a row with no finite logit; its probabilities are 0 (not NaN), so `sample`
    can say so instead of drawing from NaNs. +inf entries share all the mass equally."""
    np.testing.assert_array_equal(softmax(np.array([[-np.inf] * 3, [0.0, -np.inf, 0.0]])),
                                  [[0.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    np.testing.assert_array_equal(softmax(np.array([np.inf, 1.0, np.inf])), [0.5, 0.0, 0.5])


def test_min_p_one_keeps_only_the_tied_top_tokens():
    x = np.array([1.0, 5.0, 5.0, 4.9])
    np.testing.assert_array_equal(min_p_filter(x, 1.0), [-np.inf, 5.0, 5.0, -np.inf])
    np.testing.assert_array_equal(min_p_filter(x, 0.0), x)


def test_repetition_penalty_divides_positive_multiplies_negative_once_per_token():
    x = np.array([2.0, -2.0, 0.0, 4.0])
    out = repetition_penalty(x, [0, 1, 1, 1, 2], 2.0)
    np.testing.assert_array_equal(out, [1.0, -4.0, 0.0, 4.0])
    np.testing.assert_array_equal(x, [2.0, -2.0, 0.0, 4.0])       # the input is not modified


def test_every_function_keeps_float32_float32():
    x = np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32)
    for out in (apply_temperature(x, 0.5), top_k_filter(x, 3), top_p_filter(x, 0.5), min_p_filter(x, 0.1),
                repetition_penalty(x, [[1, 2], [3]], 1.3), Sampler(0.7, 5, 0.9, 0.05, 1.2).process(x, [[1], [2]])):
        assert out.dtype == np.float32


def test_temperature_zero_is_greedy_after_the_repetition_penalty():
    x = np.array([1.0, 3.0, 2.9, -1.0])
    assert Sampler(temperature=0)(x) == greedy(x) == 1
    assert Sampler(temperature=0, repetition_penalty=1.5)(x, previous_ids=[1]) == 2   # 3.0 / 1.5 = 2.0 < 2.9


def test_greedy_and_sample_on_a_batch_return_one_id_per_row():
    x = np.array([[0.0, 9.0, 0.0], [9.0, 0.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(greedy(x), [1, 0])
    ids = Sampler(temperature=0.01, seed=0)(x)
    assert ids.shape == (2,) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, [1, 0])


def test_a_batch_draw_equals_row_by_row_draws_with_the_same_seed():
    x = np.random.default_rng(1).standard_normal((5, 30))
    batch = sample(x, lt.Generator(4))
    gen = lt.Generator(4)
    np.testing.assert_array_equal(batch, [sample(row, gen) for row in x])


def test_a_minus_inf_token_is_never_drawn():
    x = np.zeros(6)
    x[[0, 2, 5]] = -np.inf
    gen = lt.Generator(0)
    drawn = {sample(x, gen) for _ in range(2000)}
    assert drawn == {1, 3, 4}


# ------------------------------------------------------------------------------------------------
# (b) seeds
# ------------------------------------------------------------------------------------------------
def _draws(sampler, logits, n=50):
    return [sampler(logits) for _ in range(n)]


def test_same_seed_same_tokens_different_seed_different_tokens():
    logits = np.random.default_rng(0).standard_normal(100).astype(np.float32)
    a = _draws(Sampler(temperature=1.0, top_p=0.95, seed=123), logits)
    b = _draws(Sampler(temperature=1.0, top_p=0.95, seed=123), logits)
    c = _draws(Sampler(temperature=1.0, top_p=0.95, seed=124), logits)
    assert a == b
    assert a != c


def test_unseeded_samplers_draw_fresh_randomness_and_report_a_seed_that_replays():
    """Like HF, llama.cpp and torch: no seed means fresh entropy (lt.manual_seed does not fix sampling);
    the seed drawn is kept, and passing it back gives the same tokens."""
    logits = np.random.default_rng(0).standard_normal(100)
    lt.manual_seed(7)
    first, second = Sampler(), Sampler()
    a, b = _draws(first, logits), _draws(second, logits)
    assert first.seed != second.seed and a != b
    assert _draws(Sampler(seed=first.seed), logits) == a
    assert Sampler(temperature=0).seed is None  # greedy draws nothing


# ------------------------------------------------------------------------------------------------
# (c) draws follow the processed distribution: Pearson chi-square goodness of fit
# ------------------------------------------------------------------------------------------------
def chi2_sf(x: float, dof: int) -> float:
    """P(X > x) for a chi-square variable with integer dof (closed forms of the incomplete gamma)."""
    h = x / 2
    if dof % 2 == 0:       # Q = e^{-h} sum_{i < dof/2} h^i / i!
        return math.exp(-h) * sum(h ** i / math.factorial(i) for i in range(dof // 2))
    # odd: Q = erfc(sqrt h) + e^{-h} sum_{i < (dof-1)/2} h^{i+1/2} / Gamma(i + 3/2)
    return math.erfc(math.sqrt(h)) + math.exp(-h) * sum(h ** (i + 0.5) / math.gamma(i + 1.5)
                                                        for i in range((dof - 1) // 2))


def chi_square(counts, expected_probs):
    """(statistic, p-value); tokens with expected probability 0 must never be drawn."""
    counts, p = np.asarray(counts, dtype=np.float64), np.asarray(expected_probs, dtype=np.float64)
    zero = p == 0
    assert counts[zero].sum() == 0, f"drew tokens {np.nonzero(zero & (counts > 0))[0]} that have probability 0"
    expected = counts.sum() * p[~zero]
    stat = float(((counts[~zero] - expected) ** 2 / expected).sum())
    return stat, chi2_sf(stat, int((~zero).sum()) - 1)


def test_chi2_sf_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    for dof in (1, 2, 3, 4, 7):
        for x in (0.1, 1.0, 5.0, 20.0):
            assert chi2_sf(x, dof) == pytest.approx(stats.chi2.sf(x, dof), rel=1e-10)


LOGITS8 = np.array([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -3.0])


def _reference_probs(logits, temperature=1.0, top_k=None, top_p=None, min_p=None):
    """The processed distribution, written out directly (descending sort, mass *before* a token < p)."""
    p = np.exp(logits / temperature)
    p /= p.sum()
    keep = np.ones(len(p), bool)
    ranked = np.argsort(-p)
    if top_k is not None:
        keep[ranked[top_k:]] = False
    if top_p is not None:
        q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
        mass_before = np.concatenate([[0.0], np.cumsum(q[ranked])[:-1]])
        keep[ranked[mass_before >= top_p]] = False
    if min_p is not None:
        q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
        keep &= q >= min_p * q.max()
    p = np.where(keep, p, 0)
    return p / p.sum()


CHI2_CONFIGS = [dict(), dict(temperature=0.5), dict(temperature=2.0), dict(top_k=3), dict(top_p=0.8),
                dict(min_p=0.2), dict(temperature=0.7, top_k=5, top_p=0.9)]


@pytest.mark.parametrize("config", CHI2_CONFIGS, ids=[str(c) or "plain" for c in CHI2_CONFIGS])
def test_samples_follow_the_processed_distribution_chi_square(config):
    draws = Sampler(seed=2024, **config)(np.tile(LOGITS8, (20000, 1)))     # 20000 rows: one draw each
    counts = np.bincount(draws, minlength=8)
    stat, p_value = chi_square(counts, _reference_probs(LOGITS8, **config))
    assert p_value > 1e-3, f"chi2 = {stat:.1f}, p = {p_value:.2e}: draws do not follow the distribution"


def test_chi_square_detects_the_wrong_distribution():
    """The test has power: T=1 draws are rejected as samples of the T=0.5 distribution."""
    counts = np.bincount(Sampler(seed=2024)(np.tile(LOGITS8, (20000, 1))), minlength=8)
    stat, p_value = chi_square(counts, _reference_probs(LOGITS8, temperature=0.5))
    assert p_value < 1e-6, (stat, p_value)


# ------------------------------------------------------------------------------------------------
# (d) extreme inputs: never NaN, never a crash
# ------------------------------------------------------------------------------------------------
def _extreme_logits():
    v = 50
    big = np.random.default_rng(0).choice([-1e4, 1e4, 0.0, 3.0], v)
    one_finite = np.full(v, -np.inf)
    one_finite[17] = -1e4
    with_inf = np.random.default_rng(1).standard_normal(v)
    with_inf[[3, 9]] = np.inf
    with_inf[[4, 5]] = -np.inf
    return {"pm1e4": big, "all_minus_inf_but_one": one_finite, "plus_and_minus_inf": with_inf,
            "huge_and_tiny": np.array([3e38, -3e38, 1e-38, 0.0, 1.0])}


SAMPLERS = [Sampler(seed=0), Sampler(temperature=0, seed=0), Sampler(temperature=1e-30, seed=0),
            Sampler(temperature=1e30, seed=0), Sampler(top_k=1000, seed=0), Sampler(top_p=0.0, seed=0),
            Sampler(top_p=1.0, seed=0), Sampler(min_p=1.0, seed=0), Sampler(min_p=0.0, seed=0),
            Sampler(temperature=0.3, top_k=40, top_p=0.9, min_p=0.1, repetition_penalty=1e6, seed=0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(_extreme_logits()))
def test_extreme_logits_never_give_nan(dtype, name):
    # Overflow to +-inf is allowed (1e4 / 1e-30 is inf, and the filters handle inf); NaN is not, so any
    # invalid operation (inf - inf, 0/0, inf * 0) or division by zero raises here.
    with np.errstate(over="ignore", invalid="raise", divide="raise"):
        x = _extreme_logits()[name].astype(dtype)          # 3e38 does not fit float32: it becomes inf
        prev = np.arange(0, len(x), 3)
        outs = [apply_temperature(x, 1e-3), top_k_filter(x, 5), top_k_filter(x, 10 ** 6), top_p_filter(x, 0.0),
                top_p_filter(x, 0.5), top_p_filter(x, 1.0), min_p_filter(x, 0.5), repetition_penalty(x, prev, 1.7),
                softmax(x)]
        tokens = [sampler(x, previous_ids=prev) for sampler in SAMPLERS]
    for out in outs:
        assert not np.isnan(out).any() and out.dtype == dtype
    for sampler, token in zip(SAMPLERS, tokens):
        assert isinstance(token, int) and 0 <= token < len(x) and not np.isneginf(x[token]), (sampler, token)
        if name in ("all_minus_inf_but_one", "plus_and_minus_inf"):    # only the max (the finite one / +inf)
            assert x[token] == x.max(), (sampler, token)


# ------------------------------------------------------------------------------------------------
# (e) invalid arguments
# ------------------------------------------------------------------------------------------------
X = np.zeros(4)


@pytest.mark.parametrize("call, message", [
    (lambda: apply_temperature(X, -0.5), "temperature"),
    (lambda: apply_temperature(X, 0.0), "greedy"),
    (lambda: apply_temperature(X, float("nan")), "temperature"),
    (lambda: top_k_filter(X, -1), "top_k"),
    (lambda: top_k_filter(X, 2.5), "top_k"),
    (lambda: top_p_filter(X, -0.1), "top_p"),
    (lambda: top_p_filter(X, 1.5), "top_p"),
    (lambda: min_p_filter(X, -0.1), "min_p"),
    (lambda: min_p_filter(X, 1.01), "min_p"),
    (lambda: repetition_penalty(X, [1], 0.0), "repetition_penalty"),
    (lambda: repetition_penalty(X, [1], -1.2), "repetition_penalty"),
    (lambda: repetition_penalty(X, [-1], 1.2), "previous_ids"),
    (lambda: repetition_penalty(np.zeros((2, 4)), [[1]], 1.2), "rows"),
    (lambda: Sampler(temperature=-1), "temperature"),
    (lambda: Sampler(top_k=-3), "top_k"),
    (lambda: Sampler(top_p=2), "top_p"),
    (lambda: Sampler(min_p=-1), "min_p"),
    (lambda: Sampler(repetition_penalty=0), "repetition_penalty"),
    (lambda: sample(np.full(4, -np.inf)), "-inf"),
    (lambda: sample(np.array([0.0, np.nan])), "NaN"),
    (lambda: greedy(np.array([0.0, np.nan])), "NaN"),
    (lambda: greedy(np.zeros((2, 3, 4))), "shape"),
])
def test_invalid_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
