"""The TinyLlama-shaped Q4_K_M file (scripts/make_tinyllama_gguf.py): TinyLlama-1.1B's shapes, random
weights, a sentencepiece tokenizer and Zephyr's chat template, 0.67 GB. Written once per module into a
temp directory (about 10 s). Slow: every on-demand forward dequantizes 1.1B weights (5-10 s here), and
the memory test loads the float32 model (4.4 GB) in a subprocess.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _kquant_files import tinyllama as script

import litetorch as lt
from litetorch.io.gguf import GGUFFile
from litetorch.models.loading import load_model
from litetorch.nn.rope import unpermute_qk

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
GB = 1e9


@pytest.fixture(scope="module")
def path(tmp_path_factory):
    return script.make_gguf(tmp_path_factory.mktemp("tinyllama") / "tinyllama-shaped-random.Q4_K_M.gguf")


@pytest.fixture(scope="module")
def on_demand(path):
    return load_model(path, weights="quantized")


def test_the_file_has_tinyllamas_shapes_and_llama_cpps_q4_k_m_types(path, on_demand):
    model, tok = on_demand
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size,
            c.vocab_size, c.rope_theta, c.max_position_embeddings) == (22, 2048, 32, 4, 5632, 32000, 10000.0, 2048)
    assert not c.tie_word_embeddings and model.num_parameters() == 1_100_048_384   # TinyLlama-1.1B's count
    types = [t.type_name for t in GGUFFile(path).tensors.values()]
    assert (types.count("Q4_K"), types.count("Q6_K"), types.count("F32")) == (135, 21, 45)
    assert 0.66 * GB < path.stat().st_size < 0.68 * GB
    assert tok.vocab_size == 32000 and (tok.bos_token_id, tok.eos_token_id) == (1, 2)


def test_load_model_renders_the_zephyr_chat_template_and_generates(on_demand):
    model, tok = on_demand
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello!"}]
    assert tok.apply_chat_template(msgs) == "<|system|>\nBe brief.</s>\n<|user|>\nHello!</s>\n<|assistant|>\n"
    result = lt.generate(model, tok, msgs, max_new_tokens=2, temperature=0)
    assert len(result.token_ids) in (1, 2) and isinstance(result.text, str)
    assert result.prompt_ids == tok.apply_chat_template(msgs, tokenize=True)


def test_cached_decode_equals_the_uncached_forward(on_demand):
    model, tok = on_demand
    ids = tok.encode("The weather today", add_special_tokens=True)            # [BOS, ...]
    with lt.no_grad():
        cache = model.new_cache(1, 16)
        first = model(np.array([ids]), cache=cache).data[0, -1]                   # prefill
        nxt = int(first.argmax())
        second = model(np.array([[nxt]]), cache=cache).data[0, -1]               # one decode step
        full = model(np.array([ids + [nxt]])).data[0, -2:]                       # no cache, both positions
    cached = np.stack([first, second])
    assert np.abs(cached - full).max() <= 1e-5 * np.abs(full).max()             # float32: 1e-5 of the scale


def test_gguf_view_of_block_21_attn_q_is_the_dequantized_matrix(path, on_demand):
    gguf = pytest.importorskip("gguf")
    model, _ = on_demand
    t = {t.name: t for t in gguf.GGUFReader(path).tensors}["blk.21.attn_q.weight"]
    expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(2048, 2048)
    w = model.gguf.blk[21].attn_q.weight
    assert w.shape == (2048, 2048) and w.dtype == np.float32 and np.array_equal(w, expected)
    q = model.model.layers[21].self_attn.qkv_proj.weight.data[:2048]
    assert np.array_equal(q, unpermute_qk(expected, 32))


def _peak_rss(path, weights):
    """One benchmark worker (benchmarks/weight_modes.py) in its own process: load, prefill 8, decode 2."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "weight_modes.py"), "--worker",
                          "--model", str(path), "--weights", weights, "--prompt-tokens", "8", "--new-tokens", "2"],
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_is_under_1_5_gb_on_demand_and_5_5_gb_preloaded(path):
    quantized = _peak_rss(path, "quantized")
    preloaded = _peak_rss(path, "float32")
    print(f"peak RSS: quantized {quantized['peak_rss_mb']:.0f} MiB, float32 {preloaded['peak_rss_mb']:.0f} MiB")
    assert quantized["peak_rss_mb"] * 2**20 <= 1.5 * GB      # measured 1.28 GB: file pages + cache + scratch
    assert preloaded["peak_rss_mb"] * 2**20 <= 5.5 * GB      # measured 4.55 GB: 4.4 GB of float32 weights
    assert quantized["tokens"] == preloaded["tokens"]         # the same numbers, the same greedy tokens
