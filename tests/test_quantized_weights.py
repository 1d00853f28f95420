"""`load_model(path, weights="quantized")`: the file's blocks stay memory-mapped and each weight is expanded
when a layer reads it (models/quantized.py). The claims: the same logits as the float32 path, bit for bit
(the same function expands both), through the one forward; a bounded cache; read-only weights whose
misuse (assign, cast, load, train) fails clearly before anything changes; unsupported types named.
"""
import json
import struct

import numpy as np
import pytest
from _kquant_files import write_small_llama

import litetorch as lt
from litetorch import cli
from litetorch.errors import ConfigError, ModelFormatError
from litetorch.io.gguf import GGUFFile
from litetorch.models.loading import load_model
from litetorch.models.quantized import QuantizedParameter
from litetorch.nn.rope import unpermute_qk

from conftest import FIXTURES

IDS = np.array([[1, 259, 293, 390, 643, 355, 267, 388, 260]])   # "<s> Hello there, ..." in the small vocabulary


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return write_small_llama(tmp_path_factory.mktemp("q") / "small.Q4_K_M.gguf")


@pytest.fixture(scope="module")
def small_tied(tmp_path_factory):
    return write_small_llama(tmp_path_factory.mktemp("q") / "tied.Q4_K_M.gguf", tied=True)


def logits(model, ids=IDS, **kw):
    with lt.no_grad():
        return model(ids, **kw).data


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("which", ["small", "small_tied"])
def test_quantized_weights_give_logits_identical_to_the_float32_path(request, which, dtype):
    path = request.getfixturevalue(which)
    preloaded, _ = load_model(path, dtype=dtype)
    on_demand, _ = load_model(path, dtype=dtype, weights="quantized")
    a, b = logits(preloaded), logits(on_demand)
    assert a.dtype == b.dtype == dtype
    assert np.array_equal(a, b)                                       # the same numbers, not merely close
    for (name, p), (name2, q) in zip(preloaded.named_parameters(), on_demand.named_parameters()):
        assert name == name2 and isinstance(q, QuantizedParameter) and np.array_equal(p.data, q.data)


def test_every_parameter_reads_from_one_owner_and_tied_weights_stay_one_parameter(small_tied):
    model, _ = load_model(small_tied, weights="quantized")
    params = dict(model.named_parameters(remove_duplicate=False))
    assert all(isinstance(p, QuantizedParameter) for p in params.values())
    assert len({id(p._weights) for p in params.values()}) == 1
    assert model.lm_head.weight is model.model.embed_tokens.weight


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_cached_decode_equals_the_uncached_forward(small, dtype, tol):
    model, _ = load_model(small, dtype=dtype, weights="quantized")
    full = logits(model)[0]                                           # [T, V], no cache
    cache = model.new_cache(1, 32)
    steps = [logits(model, IDS[:, :5], cache=cache)[0]]               # prefill 5 tokens
    steps += [logits(model, IDS[:, t:t + 1], cache=cache)[0] for t in range(5, IDS.shape[1])]  # decode one by one
    cached = np.concatenate(steps)
    scale = np.abs(full).max() if dtype == np.float32 else 1.0
    assert np.abs(cached - full).max() <= tol * scale


def test_the_cache_keeps_the_first_arrays_that_fit_and_never_exceeds_its_budget(small_tied):
    budget = 3 * 2**20
    model, _ = load_model(small_tied, weights="quantized", cache_bytes=budget)
    store = model.model.embed_tokens.weight._weights
    logits(model)
    first = dict(store._cache)
    assert 0 < store.cached_bytes <= budget
    assert list(first)[0] == "model.embed_tokens.weight"              # read first, kept: [1024, 256] float32 = 1 MiB
    assert store.hits == 1                                            # the tied lm_head found the embedding
    reads, misses = store.hits + store.misses, store.misses           # 15 reads: 14 parameters + the tied lm_head
    assert reads == 15 and 1 < len(first) < 14
    logits(model)
    hits = len(first) + 1                                             # every kept array, the embedding twice
    assert store.hits == 1 + hits and store.misses == misses + reads - hits
    assert all(store._cache[k] is v for k, v in first.items())        # never evicted, never replaced


def test_with_no_cache_every_read_expands_again_and_nothing_is_kept(small):
    model, _ = load_model(small, weights="quantized", cache_bytes=0)
    store = model.model.embed_tokens.weight._weights
    logits(model)
    n_params = len(list(model.parameters()))
    assert store.misses == n_params and store.hits == 0 and store.cached_bytes == 0


def test_shapes_and_counts_answer_without_expanding_anything(small):
    model, _ = load_model(small, weights="quantized", cache_bytes=0)
    store = model.model.embed_tokens.weight._weights
    p = model.model.layers[0].self_attn.qkv_proj.weight
    assert p.shape == (256 + 2 * 128, 256) and p.dtype == np.float32 and p.ndim == 2 and len(p) == 512
    float_model, _ = load_model(small)
    assert model.num_parameters() == float_model.num_parameters() and model.dtype == np.float32
    assert store.misses == 0


def test_expanded_arrays_are_read_only_and_an_array_kept_by_a_caller_never_changes(small):
    model, _ = load_model(small, weights="quantized", cache_bytes=0)
    w = model.model.layers[0].mlp.down_proj.weight.data              # lives in the scratch buffer ...
    kept = w.copy()
    logits(model)                                                      # ... which every other expansion would reuse
    assert np.array_equal(w, kept)
    with pytest.raises(ValueError, match="read-only"):
        w[0, 0] = 1.0


@pytest.mark.parametrize("misuse", ["assign", "to", "load_state_dict", "requires_grad"])
def test_changing_quantized_weights_raises_a_config_error_and_changes_nothing(small, misuse):
    model, _ = load_model(small, weights="quantized")
    float_model, _ = load_model(small)
    before = logits(model)
    attempts = {
        "assign": lambda: setattr(model.model.layers[0].self_attn.o_proj.weight, "data", np.zeros((256, 256))),
        "to": lambda: model.to(np.float64),
        "load_state_dict": lambda: model.load_state_dict(float_model.state_dict()),
        "requires_grad": lambda: model.requires_grad_(True),
    }
    with pytest.raises(ConfigError, match=r"weights='quantized'.*load the model with weights='float32'"):
        attempts[misuse]()
    assert np.array_equal(logits(model), before) and model.dtype == np.float32
    assert not any(p.requires_grad for p in model.parameters())


def test_state_dict_of_a_quantized_model_equals_the_float32_models(small):
    model, _ = load_model(small, weights="quantized")
    float_model, _ = load_model(small)
    ours, theirs = model.state_dict(split_fused=True), float_model.state_dict(split_fused=True)
    assert list(ours) == list(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert all(v.flags.writeable for v in ours.values())              # copies, free to change


def test_gguf_view_returns_the_dequantized_matrix_as_stored(small):
    gguf = pytest.importorskip("gguf")
    model, _ = load_model(small, weights="quantized")
    t = {t.name: t for t in gguf.GGUFReader(small).tensors}["blk.1.attn_q.weight"]
    expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(256, 256)
    assert np.array_equal(model.gguf.blk[1].attn_q.weight, expected)
    q = model.model.layers[1].self_attn.qkv_proj.weight.data[:256]
    assert np.array_equal(q, unpermute_qk(expected, 4))               # the loaded rows: un-permuted


def test_the_weights_argument_is_checked_before_anything_is_read(small, tmp_path, monkeypatch):
    monkeypatch.setattr(GGUFFile, "__init__", lambda *a, **k: pytest.fail("the file was opened"))
    with pytest.raises(ConfigError, match=r"weights must be one of 'float32', 'quantized'; got 'int4'"):
        load_model(small, weights="int4")
    with pytest.raises(ConfigError, match="cache_bytes must be"):
        load_model(small, weights="quantized", cache_bytes=-1)
    monkeypatch.undo()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="HF checkpoint directory .* load it with weights='float32'"):
        load_model(tmp_path, weights="quantized")


def _with_type(src, dst, tensor: str, type_id: int):
    """A copy of GGUF `src` with `tensor`'s ggml type id replaced (its data left as it is)."""
    data = bytearray(src.read_bytes())
    name = tensor.encode()
    at = data.find(struct.pack("<Q", len(name)) + name) + 8 + len(name)   # -> n_dims, dims, type
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_id)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("weights", ["float32", "quantized"])
def test_an_iq_quant_is_named_with_every_supported_type_before_any_weight_is_read(small, tmp_path, monkeypatch,
                                                                                    weights):
    path = _with_type(small, tmp_path / "iq.gguf", "blk.0.attn_q.weight", 16)      # IQ2_XXS: 66 bytes per 256
    monkeypatch.setattr(GGUFFile, "dequantize", lambda *a, **k: pytest.fail("a weight was read"))
    with pytest.raises(ModelFormatError) as e:
        load_model(path, weights=weights)
    msg = str(e.value)
    assert "'blk.0.attn_q.weight' has ggml type 16 (IQ2_XXS)" in msg and str(path) in msg
    assert "supported types: F32, F16, BF16, I8, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, TQ2_0" in msg


def test_the_cli_reports_an_unsupported_type_in_one_line(small, tmp_path, capsys):
    path = _with_type(small, tmp_path / "iq.gguf", "blk.1.ffn_up.weight", 23)      # IQ4_XS
    assert cli.main(["generate", "Hi", "--model", str(path), "--weights", "quantized"]) == 1
    err = capsys.readouterr().err
    assert "error: ModelFormatError:" in err and "(IQ4_XS)" in err and "supported types: F32" in err


def test_cli_generate_with_weights_quantized_prints_the_float32_answer(small, capsys):
    outs = []
    for weights in ("float32", "quantized"):
        assert cli.main(["generate", "Hi", "--model", str(small), "--weights", weights, "--max-new-tokens", "5"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and outs[0].strip()


@pytest.mark.slow
def test_smollm2_on_demand_matches_the_hf_fixture_and_its_greedy_tokens(smollm2_path):
    """tests/fixtures/smollm2_reference.npz: HF's GGUF loader on the same file, float32 (7 prompts)."""
    meta = json.loads((FIXTURES / "smollm2_reference.json").read_text(encoding="utf-8"))
    model, tok = load_model(smollm2_path, weights="quantized")
    with np.load(FIXTURES / "smollm2_reference.npz") as z:
        for p in meta["prompts"]:
            ours = logits(model, np.array([p["input_ids"]]), logits_to_keep=1)[0, -1]
            err = np.abs(ours - z[f"{p['name']}.last_logits"]).max()
            assert err <= 1e-4, (p["name"], err)                       # float32 measures <= 7.4e-5 (test_llama)
    prompt = {p["name"]: p for p in meta["prompts"]}["chat_france"]
    result = lt.generate(model, tok, prompt["input_ids"], max_new_tokens=12, temperature=0)
    assert result.token_ids == list(prompt["greedy_ids"])[:len(result.token_ids)] and len(result.token_ids) >= 8
