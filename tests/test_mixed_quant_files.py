"""Files that mix ggml types, as people download them (Q4_K_M), checked against llama.cpp's rules,
gguf-py's dequantizer and HF transformers' own GGUF loader.

HF transformers is the second reference here: `from_pretrained(dir, gguf_file=name, dtype=float32)`
dequantizes the file with gguf-py and un-permutes Q/K itself, so it shares nothing with litetorch's
reading path but the file.
"""
import numpy as np
import pytest
from _kquant_files import SMALL, small_shapes, small_types, tinyllama, write_small_llama

import litetorch as lt
from litetorch.errors import ShapeError
from litetorch.io import quants
from litetorch.io.gguf import GGUFFile, RawTensor, write_gguf
from litetorch.io.quant_mix import q4_k_m_types, use_more_bits
from litetorch.models.loading import load_model


# --- which type each tensor gets -----------------------------------------------------------------

def test_q4_k_m_puts_tinyllama_attn_v_and_ffn_down_in_q6_k_in_the_layers_llama_cpp_chooses():
    shapes = tinyllama.tensor_shapes(tinyllama.TINYLLAMA)
    types = q4_k_m_types(shapes, 22)
    # llama.cpp's use_more_bits(i, 22): i < 22/8 = 2, i >= 7*22/8 = 19, or (i - 2) % 3 == 2 -- by hand:
    more = [0, 1, 4, 7, 10, 13, 16, 19, 20, 21]
    assert [i for i in range(22) if types[f"blk.{i}.attn_v.weight"] == "Q6_K"] == more
    assert [i for i in range(22) if types[f"blk.{i}.ffn_down.weight"] == "Q6_K"] == more
    assert {types[f"blk.{i}.{t}.weight"] for i in range(22)
            for t in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")} == {"Q4_K"}
    assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"  # untied: the embedding is Q4_K
    assert {types[n] for n, s in shapes.items() if len(s) == 1} == {"F32"}
    size = sum(quants.tensor_nbytes(s, quants.ggml_type_id(types[n])) for n, s in shapes.items())
    # by hand, in super-blocks of 256 weights (Q4_K 144 bytes, Q6_K 210): embedding 256,000 x 144 + output
    # 256,000 x 210; a layer is 172,032 blocks (q, o 16,384; k, v 2,048; gate, up, down 45,056), of which
    # v and down (47,104) are Q6_K in 10 layers; 45 norms of 2,048 float32
    by_hand = (256_000 * 144 + 256_000 * 210 + 12 * 172_032 * 144 + 10 * (124_928 * 144 + 47_104 * 210)
               + 45 * 2048 * 4)
    assert size == by_hand == 667_078_656  # 0.67 GB, like the Q4_K_M TinyLlama people download


def test_a_tied_embedding_gets_the_output_type_and_rows_of_576_fall_back_as_llama_cpp_does():
    # SmolLM2-135M's shapes: no output.weight (tied), rows of 576 (not a multiple of 256)
    shapes = {"token_embd.weight": (49152, 576), "blk.0.attn_q.weight": (576, 576), "blk.0.attn_v.weight": (192, 576),
              "blk.3.attn_v.weight": (192, 576), "blk.0.ffn_down.weight": (576, 1536), "blk.0.attn_norm.weight": (576,)}
    types = q4_k_m_types(shapes, 30)
    assert types == {"token_embd.weight": "Q8_0",     # the output's rule; 576 % 256 != 0 -> Q8_0
                     "blk.0.attn_q.weight": "Q5_0",   # Q4_K -> fallback Q5_0
                     "blk.0.attn_v.weight": "Q8_0",   # layer 0 gets more bits: Q6_K -> fallback Q8_0
                     "blk.3.attn_v.weight": "Q5_0",   # layer 3 of 30 does not: Q4_K -> Q5_0
                     "blk.0.ffn_down.weight": "Q6_K",  # rows of 1536 = 6 x 256: no fallback
                     "blk.0.attn_norm.weight": "F32"}
    assert use_more_bits(3, 30) is False and use_more_bits(5, 30) is True  # (5 - 3) % 3 == 2


# --- reading: chunked dequantization, raw blocks -------------------------------------------------

@pytest.mark.parametrize("type_name", ["Q4_K", "Q6_K", "Q5_K", "Q4_1", "Q8_0", "Q5_0"])
def test_dequantizing_in_chunks_is_bit_identical_to_gguf_py_across_chunk_boundaries(type_name, rng):
    gguf = pytest.importorskip("gguf")
    x = rng.standard_normal((1200, 512)).astype(np.float32)  # 614,400 weights: 2.3 chunks of CHUNK_WEIGHTS
    assert x.size > 2 * quants.CHUNK_WEIGHTS
    raw = quants.quantize(x, type_name)
    ours = quants.dequantize(raw, quants.ggml_type_id(type_name), x.shape)
    theirs = gguf.quants.dequantize(raw.reshape(x.shape[0], -1), gguf.GGMLQuantizationType[type_name])
    assert np.array_equal(ours.view(np.uint32), theirs.astype(np.float32).view(np.uint32))
    wide = quants.dequantize(raw, quants.ggml_type_id(type_name), x.shape, out=np.empty(x.shape, np.float64))
    assert wide.dtype == np.float64 and np.array_equal(wide, ours.astype(np.float64))  # float32 values, exactly


def test_dequantize_into_out_refuses_a_wrong_shape_dtype_or_layout():
    raw = quants.quantize(np.ones((2, 256), np.float32), "Q4_K")
    type_id = quants.ggml_type_id("Q4_K")
    for bad in (np.empty((2, 255), np.float32), np.empty((2, 256), np.float16), np.empty((256, 2), np.float32).T):
        with pytest.raises(ShapeError, match=r"out must be a C-contiguous float32/float64 array of shape \(2, 256\)"):
            quants.dequantize(raw, type_id, (2, 256), out=bad)


def test_raw_tensors_are_written_byte_for_byte_and_gguf_py_reads_them(tmp_path, rng):
    gguf = pytest.importorskip("gguf")
    blocks = tinyllama.random_q4_k(6, rng, 0.02)                        # 6 super-blocks: a [3, 512] Q4_K tensor
    path = write_gguf(tmp_path / "raw.gguf", {"general.architecture": "test"},
                      {"w": RawTensor("Q4_K", (3, 512), blocks), "n": np.ones(4, np.float32)})
    f = GGUFFile(path)
    assert f.tensors["w"].type_name == "Q4_K" and f.tensors["w"].shape == (3, 512)
    assert np.array_equal(f.raw("w"), blocks)
    t = {t.name: t for t in gguf.GGUFReader(path).tensors}["w"]
    expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(3, 512)
    assert np.array_equal(f.dequantize("w"), expected)


def test_a_released_tensor_reads_the_same_afterwards(tmp_path):
    path = write_small_llama(tmp_path / "small.gguf")
    f = GGUFFile(path)
    before = {name: f.dequantize(name) for name in f.tensors}
    f.release(*f.tensors)                                               # the pages go; the file stays mapped
    assert all(np.array_equal(f.dequantize(name), before[name]) for name in f.tensors)


def test_random_blocks_decode_to_weights_centred_on_zero_with_the_asked_spread(rng):
    for make, type_name in ((tinyllama.random_q4_k, "Q4_K"), (tinyllama.random_q6_k, "Q6_K")):
        w = quants.dequantize(make(400, rng, 0.02), quants.ggml_type_id(type_name), (400, 256))
        assert abs(w.mean()) < 1e-3 and 0.015 < w.std() < 0.025, (type_name, w.mean(), w.std())


@pytest.mark.parametrize("raw, message", [
    (RawTensor("Q4_K", (3, 512), np.zeros(6 * 144 - 1, np.uint8)),
     r"is 864 bytes \(\[864\] uint8\), got uint8 \(863,\)"),
    (RawTensor("Q4_K", (3, 500), np.zeros(864, np.uint8)), "multiple of 256"),
    (RawTensor("Q4_K", (3, 512), np.zeros(864, np.int8)), "got int8"),
])
def test_raw_tensors_of_the_wrong_size_are_refused_before_writing(tmp_path, raw, message):
    with pytest.raises(ShapeError, match=message):
        write_gguf(tmp_path / "bad.gguf", {}, {"w": raw})
    assert not list(tmp_path.iterdir())


# --- a Q4_K_M file loads and runs, against HF's GGUF loader ---------------------------------------

TEXT = "Hello there, the weather is fine today. 123"


def _hf_model(directory, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    return transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32).eval()


def _until_eos(ids, eos):
    ids = list(ids)
    return ids[:ids.index(eos) + 1] if eos in ids else ids


def _check_against_hf(path, weights):
    import torch
    hf = _hf_model(path.parent, path.name)
    model, tok = load_model(path, weights=weights)
    ids = tok.encode(TEXT, add_special_tokens=True)                     # [BOS, ...]
    with lt.no_grad():
        ours = model(np.array([ids])).data                              # [1, T, V]
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()
    err = np.abs(ours - theirs).max()
    assert err <= 1e-4, err
    assert err <= 1e-5 * np.abs(theirs).max(), (err, np.abs(theirs).max())  # float32: 1e-5 of the output's scale
    n = 12
    mine = lt.generate(model, tok, ids, max_new_tokens=n, temperature=0).token_ids
    with torch.no_grad():
        out = hf.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
    assert _until_eos(mine, tok.eos_token_id) == _until_eos(out[0, len(ids):].tolist(), tok.eos_token_id)
    return err


@pytest.mark.parametrize("mix, tied", [("Q4_K_M", False), ("Q4_K_M", True), ("Q6_K", False)])
@pytest.mark.parametrize("weights", ["float32", "quantized"])
def test_k_quant_file_gives_hf_gguf_loaders_logits_and_greedy_tokens(tmp_path, mix, tied, weights):
    path = write_small_llama(tmp_path / f"small.{mix}.gguf", mix, tied=tied)
    f = GGUFFile(path)
    types = {t.type_name for t in f.tensors.values()}
    assert types == ({"Q4_K", "Q6_K", "F32"} if mix == "Q4_K_M" else {"Q6_K", "F32"})  # really mixed
    assert f.tensors["token_embd.weight"].type_name == ("Q6_K" if tied or mix == "Q6_K" else "Q4_K")
    _check_against_hf(path, weights)


@pytest.mark.slow
@pytest.mark.parametrize("mix", ["Q2_K", "Q3_K", "Q5_K", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "F16", "BF16"])
def test_every_other_type_litetorch_writes_gives_hf_gguf_loaders_logits(tmp_path, mix):
    _check_against_hf(write_small_llama(tmp_path / f"small.{mix}.gguf", mix), "float32")


def test_the_tokenizer_hf_reads_from_the_file_encodes_like_litetorchs(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gguf")
    path = write_small_llama(tmp_path / "small.gguf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    _, tok = load_model(path)
    assert tok.encode(TEXT, add_special_tokens=True) == hf_tok.encode(TEXT)
    assert tok.encode(TEXT, add_special_tokens=True)[0] == 1            # <s>: add_bos_token, as llama.cpp
    msgs = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(msgs) == hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


# --- the float32 loader expands one parameter at a time -----------------------------------------------

def test_a_mixed_file_loads_every_tensor_by_its_own_type_and_unpermutes_q_and_k(tmp_path):
    from litetorch.nn.rope import unpermute_qk
    path = write_small_llama(tmp_path / "small.gguf")
    model, _ = load_model(path)
    f = GGUFFile(path)
    attn, mlp = model.model.layers[1].self_attn, model.model.layers[1].mlp
    q, k, v = np.split(attn.qkv_proj.weight.data, [256, 384])
    assert np.array_equal(q, unpermute_qk(f.dequantize("blk.1.attn_q.weight"), 4))
    assert np.array_equal(k, unpermute_qk(f.dequantize("blk.1.attn_k.weight"), 2))
    assert np.array_equal(v, f.dequantize("blk.1.attn_v.weight"))        # Q6_K (layer 1 of 2 gets more bits)
    gate, up = np.split(mlp.gate_up_proj.weight.data, 2)
    assert np.array_equal(gate, f.dequantize("blk.1.ffn_gate.weight"))
    assert np.array_equal(up, f.dequantize("blk.1.ffn_up.weight"))
    assert f.tensors["blk.1.attn_v.weight"].type_name == "Q6_K" and f.tensors["blk.1.attn_q.weight"].type_name == "Q4_K"
    assert SMALL["n_layers"] == 2 and set(small_types("Q4_K_M").values()) == {"Q4_K", "Q6_K", "F32"}
    assert len(small_shapes()) == len(f.tensors)


@pytest.mark.slow
def test_smollm2_in_both_weights_modes_gives_hf_gguf_loaders_logits_and_greedy_tokens(smollm2_path):
    """The default file (Q4_1 matrices, Q8_0 embedding), HF's GGUF loader run live (40-90 s here) on a
    prompt the committed fixture does not have."""
    import torch
    hf = _hf_model(smollm2_path.parent, smollm2_path.name)
    _, tok = load_model(smollm2_path, weights="quantized")
    ids = tok.apply_chat_template([{"role": "user", "content": "Tell me a joke about whales."}], tokenize=True)
    with torch.no_grad():
        theirs = hf(torch.tensor([ids])).logits.numpy()[0]
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False)[0, len(ids):].tolist()
    for weights in ("float32", "quantized"):
        model, tok = load_model(smollm2_path, weights=weights)
        with lt.no_grad():
            ours = model(np.array([ids])).data[0]
        err = np.abs(ours - theirs).max(axis=-1)                        # [T]: per position
        assert err[-1] <= 1e-4, (weights, err[-1])                      # the logits generation reads
        # every position: float32's rule, 1e-5 of the scale (measured 1.03e-4 on logits up to ~28: 3.7e-6)
        assert err.max() <= 1e-5 * np.abs(theirs).max(), (weights, err.max())
        mine = lt.generate(model, tok, ids, max_new_tokens=16, temperature=0).token_ids
        assert _until_eos(mine, 2) == _until_eos(expected, 2), weights
