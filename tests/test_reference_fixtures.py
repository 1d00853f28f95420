"""The committed HF reference for SmolLM2 (tests/fixtures/smollm2_reference.*) is complete and sane.

Made by tests/fixtures/make_fixtures_llama.py; read here with numpy alone (no torch, no pickle).
Parity tests of the litetorch Llama against these numbers live with the model's tests.
"""
import json
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
NPZ, JSON = FIXTURES / "smollm2_reference.npz", FIXTURES / "smollm2_reference.json"


@pytest.fixture(scope="module")
def ref():
    with np.load(NPZ) as z:                       # allow_pickle defaults to False: plain arrays only
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def info():
    return json.loads(JSON.read_text(encoding="utf-8"))


def test_json_and_npz_describe_the_same_arrays(ref, info):
    assert json.loads(str(ref["metadata"])) == info["metadata"]
    assert set(info["arrays"]) == set(ref) - {"metadata"}
    for key, spec in info["arrays"].items():
        assert list(ref[key].shape) == spec["shape"] and str(ref[key].dtype) == spec["dtype"], key


def test_metadata_names_versions_and_the_model_hash(info):
    meta = info["metadata"]
    for field in ("transformers", "torch", "numpy", "gguf", "script", "date"):
        assert meta[field], field
    assert meta["model_sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert (meta["n_layers"], meta["d_model"], meta["vocab_size"], meta["eos_token_id"]) == (30, 576, 49152, 2)


def test_prompts_cover_chat_long_and_short(info):
    prompts = {p["name"]: p for p in info["prompts"]}
    assert len(prompts) >= 6
    assert any(p["kind"] == "chat" for p in prompts.values())
    assert max(p["n_tokens"] for p in prompts.values()) > 200
    france = prompts["chat_france"]
    assert france["rendered"].endswith("<|im_start|>assistant\n")    # the generation prompt
    assert "<|im_start|>system\n" in france["rendered"]              # the template's default system message


def test_arrays_have_the_documented_shapes(ref, info):
    meta = info["metadata"]
    L, D, V = meta["n_layers"], meta["d_model"], meta["vocab_size"]
    for p in info["prompts"]:
        name, T = p["name"], p["n_tokens"]
        ids = ref[f"{name}.input_ids"]
        assert ids.shape == (T,) and ids.dtype == np.int32 and ids.tolist() == p["input_ids"]
        assert ids.min() >= 0 and ids.max() < V
        assert ref[f"{name}.last_logits"].shape == (V,) and ref[f"{name}.last_logits"].dtype == np.float32
        greedy = ref[f"{name}.greedy_ids"]
        assert 1 <= len(greedy) <= meta["max_new_tokens"] and greedy.tolist() == p["greedy_ids"]
        assert np.isfinite(ref[f"{name}.last_logits"]).all()
    short, T = meta["all_positions_prompt"], len(ref[f"{meta['all_positions_prompt']}.input_ids"])
    assert ref[f"{short}.all_logits"].shape == (T, V)
    assert ref[f"{short}.hidden_states"].shape == (L + 1, T, D)
    assert ref[f"{short}.last_layer_output"].shape == (T, D)
    top = meta["top20_prompt"]
    T = len(ref[f"{top}.input_ids"])
    assert ref[f"{top}.top20_ids"].shape == ref[f"{top}.top20_logits"].shape == (T, 20)
    assert sum(a.nbytes for a in ref.values()) < 5e6 and NPZ.stat().st_size < 5e6


def test_arrays_agree_with_each_other(ref, info):
    """Facts that tie the arrays together, checked with numpy alone."""
    meta = info["metadata"]
    short = meta["all_positions_prompt"]
    # the last row of all-position logits is the last-position logits
    np.testing.assert_array_equal(ref[f"{short}.all_logits"][-1], ref[f"{short}.last_logits"])
    # greedy decoding starts with the argmax of the last-position logits
    for p in info["prompts"]:
        assert ref[f"{p['name']}.greedy_ids"][0] == np.argmax(ref[f"{p['name']}.last_logits"]), p["name"]
    # top-20 is sorted and its first id is the argmax at every position
    top = meta["top20_prompt"]
    assert (np.diff(ref[f"{top}.top20_logits"], axis=-1) <= 0).all()
    np.testing.assert_array_equal(ref[f"{top}.top20_ids"][-1, 0], np.argmax(ref[f"{top}.last_logits"]))
    # hidden_states[L] is RMSNorm(last layer output) * weight: the ratio is one weight vector [D] at every position
    x = ref[f"{short}.last_layer_output"].astype(np.float64)
    normed = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5)
    weight = ref[f"{short}.hidden_states"][-1] / normed                   # [T, D], each row the same
    np.testing.assert_allclose(weight, np.broadcast_to(np.median(weight, axis=0), weight.shape), rtol=1e-3, atol=1e-4)
    # ... and the other hidden states are the raw residual stream: not normalized
    rms = np.sqrt(np.mean(ref[f"{short}.hidden_states"][1:-1].astype(np.float64) ** 2, axis=-1))
    assert rms.max() > 2.0


def test_greedy_continuations_are_sensible_text(info):
    prompts = {p["name"]: p for p in info["prompts"]}
    assert prompts["chat_france"]["greedy_text"].startswith("The capital of France is Paris")
    assert prompts["chat_france"]["eos_stopped"]
    assert "ocean" in prompts["chat_system"]["greedy_text"]
    assert "fibonacci" in prompts["code"]["greedy_text"].lower()
    for p in prompts.values():
        assert p["eos_stopped"] or len(p["greedy_ids"]) == info["metadata"]["max_new_tokens"], p["name"]


@pytest.mark.slow
def test_greedy_ids_decode_to_the_recorded_text_with_the_hf_tokenizer(info, smollm2_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    tok = transformers.AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    for p in info["prompts"]:
        assert tok.decode(p["greedy_ids"]) == p["greedy_text"], p["name"]
        assert tok(p["rendered"], add_special_tokens=False)["input_ids"] == p["input_ids"], p["name"]
        if p["kind"] == "chat":
            rendered = tok.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
            assert rendered == p["rendered"], p["name"]
