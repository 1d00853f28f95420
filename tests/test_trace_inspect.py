"""`litetorch trace` files and `weight_stats` / `activation_stats` numbers, checked independently.

- trace: the file written by the CLI reloads, its names are in data order, its logits equal the
  model's, and each tensor follows from the previous ones by the block's equations (recomputed
  here in NumPy); on the real model the trace equals HF's hidden states (the committed fixture).
- stats: a tensor with hand-computed statistics (mean 1, std sqrt(4.5), median 0.5, ...).
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from litetorch.inspect import activation_stats, format_table, tensor_stats, weight_stats
from litetorch.io.safetensors import save_safetensors
from litetorch.models.loading import load_llama
from litetorch.trace import load_trace, save_trace, trace_llama
from _doubles import tiny_llama

FIXTURES = Path(__file__).parent / "fixtures"

# 32 numbers with statistics worked out by hand: four copies of [-2, -1, 0, 0, 1, 2, 3, 5]
KNOWN = np.tile(np.array([-2, -1, 0, 0, 1, 2, 3, 5], dtype=np.float32), 4)
KNOWN_STATS = dict(
    mean=8 / 8,                      # sum of one copy is 8
    std=np.sqrt(44 / 8 - 1.0),       # E[x^2] - E[x]^2 = 44/8 - 1 = 4.5
    min=-2.0, max=5.0,
    l2=np.sqrt(4 * 44),              # sum of squares: 4 copies of 44
    l1=4 * 14.0, mean_abs=14 / 8,
    zeros=2 / 8, near_zeros=2 / 8,
    median=0.5,                      # sorted: 4 x -2, 4 x -1, 8 x 0, 4 x 1, ...: the 16th and 17th are 0 and 1
)


def write_hf_dir(model, directory: Path) -> Path:
    """The tiny model as an HF checkpoint directory (config.json + model.safetensors)."""
    c = model.config
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=c.vocab_size,
                  hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
                  num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
                  num_key_value_heads=c.num_key_value_heads, max_position_embeddings=c.max_position_embeddings,
                  rms_norm_eps=c.rms_norm_eps, rope_theta=c.rope_theta, tie_word_embeddings=c.tie_word_embeddings)
    (directory / "config.json").write_text(json.dumps(config))
    save_safetensors(directory / "model.safetensors",  # HF's names: q_proj/k_proj/v_proj, gate_proj/up_proj
                     {k: v.astype(np.float32) for k, v in model.state_dict(split_fused=True).items()})
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    model = tiny_llama()
    model.model.norm.weight.data[:] = KNOWN  # a parameter whose statistics we know by hand
    return write_hf_dir(model, tmp_path_factory.mktemp("tiny_llama"))


def run_cli(*args):
    proc = subprocess.run([sys.executable, "-m", "litetorch.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def rms_norm(x, w, eps):
    x64 = x.astype(np.float64)
    return x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps) * w


# ------------------------------------------------------------------------------------------------
# trace
# ------------------------------------------------------------------------------------------------
def test_cli_trace_reloads_in_data_order_and_its_logits_are_the_models(tiny_dir, tmp_path):
    ids = [72, 101, 108, 108, 111, 33]
    out = tmp_path / "trace.npz"
    assert "wrote 18 tensors for 6 tokens" in run_cli("trace", "--model", tiny_dir, "--ids", "72,101,108,108,111,33",
                                                      "--out", out)
    tensors, manifest = load_trace(out)
    per_layer = ["input", "attn_norm", "attn_out", "resid_mid", "ffn_norm", "ffn_out", "output"]
    expected = (["input_ids", "embeddings"] + [f"layers.{i}.{n}" for i in range(2) for n in per_layer]
                + ["final_norm", "logits"])
    assert list(tensors) == manifest["names"] == expected
    assert manifest["config"]["num_hidden_layers"] == 2
    np.testing.assert_array_equal(tensors["input_ids"], [ids])

    model = load_llama(tiny_dir)
    logits = model(np.array([ids])).data
    assert tensors["logits"].shape == (1, 6, model.config.vocab_size)
    np.testing.assert_allclose(tensors["logits"], logits, rtol=0, atol=1e-6 * np.abs(logits).max())

    # Each tensor follows from the ones before it (recomputed here in float64 NumPy).
    p = {k: v.data.astype(np.float64) for k, v in model.named_parameters()}
    eps, scale = model.config.rms_norm_eps, lambda a: 1e-5 * max(np.abs(a).max(), 1.0)
    np.testing.assert_allclose(tensors["embeddings"][0], p["model.embed_tokens.weight"][ids], atol=1e-7)
    for i in range(2):
        t = {n: tensors[f"layers.{i}.{n}"].astype(np.float64) for n in per_layer}
        w = f"model.layers.{i}."
        np.testing.assert_allclose(t["attn_norm"], rms_norm(t["input"], p[w + "input_layernorm.weight"], eps),
                                   atol=scale(t["attn_norm"]))
        np.testing.assert_allclose(t["resid_mid"], t["input"] + t["attn_out"], atol=scale(t["resid_mid"]))
        np.testing.assert_allclose(t["ffn_norm"], rms_norm(t["resid_mid"], p[w + "post_attention_layernorm.weight"],
                                                           eps), atol=scale(t["ffn_norm"]))
        np.testing.assert_allclose(t["output"], t["resid_mid"] + t["ffn_out"], atol=scale(t["output"]))
        if i == 0:
            np.testing.assert_array_equal(t["input"], tensors["embeddings"])
    final = rms_norm(tensors["layers.1.output"], p["model.norm.weight"], eps)
    np.testing.assert_allclose(tensors["final_norm"], final, atol=scale(final))
    np.testing.assert_allclose(tensors["logits"], final @ p["lm_head.weight"].T, atol=scale(logits))


def test_save_trace_writes_no_pickles_and_refuses_nothing_it_cannot_read(tmp_path):
    tensors = {"a": np.arange(3, dtype=np.float32), "b.c": np.ones((2, 2))}
    path = save_trace(tmp_path / "t.npz", tensors, prompt="hi")
    with np.load(path, allow_pickle=False) as f:  # would raise on an object array
        assert set(f.files) == {"manifest", "a", "b.c"}
    loaded, manifest = load_trace(path)
    assert list(loaded) == ["a", "b.c"] and manifest["prompt"] == "hi"
    assert manifest["shapes"] == {"a": [3], "b.c": [2, 2]}


@pytest.mark.slow
def test_real_trace_equals_hf_hidden_states(smollm2_path):
    ref = np.load(FIXTURES / "smollm2_reference.npz")
    ids, hidden, hf_logits = ref["short.input_ids"], ref["short.hidden_states"], ref["short.all_logits"]
    model = load_llama(smollm2_path)
    t = trace_llama(model, ids[None, :])
    L = model.config.num_hidden_layers
    assert len(t) == 2 + 7 * L + 2 == 214

    def close(ours, theirs, what):
        err, scale = np.abs(ours[0] - theirs).max(), np.abs(theirs).max()
        assert err <= 1e-4 * scale, f"{what}: max err {err:.2e} vs scale {scale:.2e}"

    close(t["embeddings"], hidden[0], "embeddings")
    for i in range(L - 1):  # HF's hidden_states[i + 1] is layer i's output (the last one is normed)
        close(t[f"layers.{i}.output"], hidden[i + 1], f"layers.{i}.output")
    close(t[f"layers.{L - 1}.output"], ref["short.last_layer_output"], "last layer output")
    close(t["final_norm"], hidden[L], "final_norm")
    close(t["logits"], hf_logits, "logits")


# ------------------------------------------------------------------------------------------------
# stats
# ------------------------------------------------------------------------------------------------
def test_tensor_stats_of_a_known_tensor():
    row = tensor_stats("known", KNOWN, compact=False)
    assert row["shape"] == (32,) and row["params"] == 32 and row["dtype"] == "float32"
    for key, value in KNOWN_STATS.items():
        assert row[key] == pytest.approx(value, abs=1e-12), key
    assert row["percentiles"][50] == row["median"]
    assert row["percentiles"][5] == pytest.approx(-2.0) and row["percentiles"][95] == pytest.approx(5.0)
    assert sum(row["histogram"]["counts"]) == 32
    assert row["histogram"]["edges"][0] == -2.0 and row["histogram"]["edges"][-1] == 5.0


def test_tensor_stats_agree_with_numpy_on_a_large_random_tensor(rng):
    x = rng.standard_normal((300, 70)).astype(np.float32) * 3 + 1
    row = tensor_stats("x", x, compact=False)
    x64 = x.astype(np.float64)
    assert row["mean"] == pytest.approx(x64.sum() / x.size, rel=1e-12)
    assert row["std"] == pytest.approx(np.sqrt(((x64 - x64.mean()) ** 2).mean()), rel=1e-12)
    assert row["l2"] == pytest.approx(np.linalg.norm(x64), rel=1e-12)
    assert row["median"] == pytest.approx(np.sort(x64.ravel())[[10499, 10500]].mean(), rel=1e-12)


def test_weight_stats_selects_by_name_and_glob(tiny_dir):
    model = load_llama(tiny_dir)
    rows = weight_stats(model, names=["model.norm.weight", "model.layers.1.mlp.*"])
    assert [r["name"] for r in rows] == ["model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight",
                                         "model.layers.1.mlp.down_proj.weight", "model.norm.weight"]
    norm = rows[-1]
    for key in ("mean", "std", "min", "max", "l2"):
        assert norm[key] == pytest.approx(KNOWN_STATS[key], abs=1e-12), key
    assert sum(r["params"] for r in weight_stats(model)) == sum(p.data.size for p in model.parameters())
    table = format_table(rows)
    assert table.splitlines()[0].split()[:3] == ["name", "shape", "params"] and "model.norm.weight" in table


def test_activation_stats_skips_integer_tensors():
    rows = activation_stats({"input_ids": np.array([[1, 2]]), "known": KNOWN, "other": np.zeros(3)},
                            names=["input_ids", "known"])
    assert [r["name"] for r in rows] == ["known"]
    assert rows[0]["std"] == pytest.approx(KNOWN_STATS["std"], abs=1e-12)


def test_cli_stats_prints_the_known_numbers(tiny_dir):
    rows = json.loads(run_cli("stats", tiny_dir, "--full", "--json", "--names", "model.norm.weight"))
    assert len(rows) == 1 and rows[0]["name"] == "model.norm.weight"
    for key, value in KNOWN_STATS.items():
        assert rows[0][key] == pytest.approx(value, abs=1e-12), key
    table = run_cli("stats", tiny_dir, "--names", "model.norm.weight")
    cells = table.splitlines()[2].split()
    assert cells[0] == "model.norm.weight" and cells[2] == "32"
    assert [float(c) for c in cells[3:8]] == pytest.approx([1.0, np.sqrt(4.5), -2, 5, np.sqrt(176)], rel=1e-3)
