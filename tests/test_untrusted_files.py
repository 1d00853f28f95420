"""Model files from strangers: metadata that lies, values of the wrong type, malformed headers.

Each case here reproduces something that once cost seconds and gigabytes before failing, loaded a
broken model, or escaped as a ValueError / TypeError / RecursionError (the "before" column of
issue #17's table). Every one must now be a ModelFormatError naming what is wrong, raised before
any model is built. Memory is measured with tracemalloc (every NumPy allocation is traced): a
metadata-only failure must stay under METADATA_ONLY_PEAK. Times are printed, not asserted.
"""
import json
import time
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pytest

import litetorch as lt
from _tiny_files import CHATML, MERGES, N_CTX, TOKEN_TYPES, TOKENS, V, tiny_weights, write_tiny_gguf, write_tiny_hf
from litetorch.errors import ConfigError, ModelFormatError, TokenizerError
from litetorch.io.safetensors import load_hf_checkpoint, load_safetensors, save_safetensors
from litetorch.models import LlamaConfig, load_llama, load_model
from litetorch.tokenizer import Tokenizer, build_byte_level_bpe

METADATA_ONLY_PEAK = 100 * 2**20  # bytes; measured: < 1 MiB for every case below (before: up to 4.3 GiB)


@contextmanager
def measured(what: str):
    """Trace allocations and time inside the block; yields a dict that gets 'seconds' and 'peak'."""
    stats = {}
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        yield stats
    finally:
        stats["seconds"] = time.perf_counter() - t0
        stats["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"{what}: {stats['seconds'] * 1e3:.1f} ms, peak {stats['peak'] / 2**20:.2f} MiB")


def assert_fails_fast(load, path, match, what):
    with measured(what) as stats, pytest.raises(ModelFormatError, match=match):
        load(path)
    assert stats["peak"] <= METADATA_ONLY_PEAK, f"{what}: peak {stats['peak'] / 2**20:.0f} MiB"


# ----------------------------------------------------------------------------------------------
# The tiny files themselves load (else every failure below would prove nothing)
# ----------------------------------------------------------------------------------------------
def test_tiny_gguf_and_hf_files_load_to_the_same_logits(tmp_path):
    model, tok = load_model(write_tiny_gguf(tmp_path / "tiny.gguf"))
    twin = load_llama(write_tiny_hf(tmp_path / "hf"))
    ids = np.array([tok.encode("hello the")])
    with lt.no_grad():
        a, b = model(ids).data, twin(ids).data
    assert a.shape == (1, 4, V) and np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).endswith("<|im_start|>assistant\n")


# ----------------------------------------------------------------------------------------------
# 1. Metadata that used to cost time and memory before it was rejected
# ----------------------------------------------------------------------------------------------
GGUF_LIES = {  # metadata override -> what the error must say (before: time, memory, outcome)
    # 14 s, 0.9 GiB, then "missing keys"
    "block_count=20000": (dict(llama__block_count=20000), r"llama.block_count must be between 1 and 1024"),
    # 2^32-1: 122 s, 6 GiB, MemoryError
    "block_count=2**32-1": (dict(llama__block_count=2**32 - 1), r"llama.block_count must be between 1 and 1024"),
    # within the limit, so the tensor table decides (0.5 s, 43 MiB before)
    "block_count=1000": (dict(llama__block_count=1000),
                         r"llama.block_count is 1000, but the tensor table holds weights for layers 0..1 \(2 layers\)"),
    # MemoryError asking for 256 GiB
    "feed_forward_length=2**31": (dict(llama__feed_forward_length=2**31), r"feed_forward_length must be between"),
    "feed_forward_length=200000": (dict(llama__feed_forward_length=200_000),
                                   r"'blk.0.ffn_up.weight' has shape \(64, 32\).*needs \(200000, 32\)"),
    # loaded, then every forward asked for a 32 GiB RoPE table
    "context_length=2**32-1": (dict(llama__context_length=2**32 - 1), r"context_length must be between 1 and 16777216"),
    "context_length=0": (dict(llama__context_length=0), r"context_length must be between 1"),
    "vocab_size=2**31": (dict(llama__vocab_size=2**31), r"vocab_size must be between"),
    "vocab_size=10**6": (dict(llama__vocab_size=10**6), r"'token_embd.weight' has shape \(263, 32\).*needs \(1000000, 32\)"),
    "embedding_length=64": (dict(llama__embedding_length=64, llama__attention__key_length=8),
                            r"'token_embd.weight' has shape \(263, 32\).*needs \(263, 64\)"),
    "head_count=2**20": (dict(llama__attention__head_count=2**20), r"head_count must be between 1 and 1024"),
    "head_count_kv=1": (dict(llama__attention__head_count_kv=1), r"'blk.0.attn_k.weight' has shape \(16, 32\).*\(8, 32\)"),
    "key_length=2**20": (dict(llama__attention__key_length=2**20), r"key_length must be between 1 and 1024"),
    # values of the wrong type: int() and float() used to accept them
    "block_count='2'": (dict(llama__block_count="2"), r"llama.block_count must be an integer, got '2' \(str\)"),
    "block_count=2.9": (dict(llama__block_count=2.9), r"llama.block_count must be an integer, got 2.9"),
    "block_count=True": (dict(llama__block_count=True), r"llama.block_count must be an integer, got True"),
    "block_count=[2, 2]": (dict(llama__block_count=[2, 2]), r"llama.block_count must be an integer"),
    # +inf passed `eps > 0` and made every logit 0; NaN failed nothing at all
    "rms_epsilon=+inf": (dict(llama__attention__layer_norm_rms_epsilon=float("inf")), r"must be finite, got inf"),
    "rms_epsilon=nan": (dict(llama__attention__layer_norm_rms_epsilon=float("nan")), r"must be finite, got nan"),
    "rms_epsilon=0": (dict(llama__attention__layer_norm_rms_epsilon=0.0), r"rms_norm_eps must be in \(0, 1\)"),
    "rms_epsilon='1e-5'": (dict(llama__attention__layer_norm_rms_epsilon="1e-5"), r"must be a number, got '1e-5'"),
    "freq_base=+inf": (dict(llama__rope__freq_base=float("inf")), r"freq_base must be finite"),
    "freq_base=-1": (dict(llama__rope__freq_base=-1.0), r"rope_theta must be positive"),
}


@pytest.mark.parametrize("case", list(GGUF_LIES))
def test_gguf_metadata_that_lies_fails_fast_with_model_format_error(tmp_path, case):
    overrides, match = GGUF_LIES[case]
    path = write_tiny_gguf(tmp_path / "lie.gguf", **overrides)
    assert_fails_fast(load_llama, path, match, f"GGUF {case}")


HF_LIES = {  # config.json override -> what the error must say
    # MemoryError asking for 8 TiB at the first forward
    "max_position_embeddings=2**40": (dict(max_position_embeddings=2**40), r"max_position_embeddings must be between"),
    "num_hidden_layers=20000": (dict(num_hidden_layers=20000), r"num_hidden_layers must be between 1 and 1024"),
    "num_hidden_layers=1000": (dict(num_hidden_layers=1000), r"num_hidden_layers is 1000, but the tensor table"),
    "num_hidden_layers='2'": (dict(num_hidden_layers="2"), r"num_hidden_layers must be an integer, got '2'"),
    "vocab_size=263.0": (dict(vocab_size=263.0), r"vocab_size must be an integer, got 263.0"),
    "intermediate_size=100000": (dict(intermediate_size=100_000), r"'model.layers.0.mlp.up_proj.weight' has shape"),
    "head_dim=0": (dict(head_dim=0), r"head_dim must be between 1"),  # `head_dim or C // H` used to hide it
    "rms_norm_eps=1e400": (dict(rms_norm_eps=float("inf")), r"rms_norm_eps must be finite"),
    "rope_theta='1e4'": (dict(rope_theta="1e4"), r"rope_theta must be a number"),
    "rope_theta=10**400": (dict(rope_theta=10**400), r"rope_theta must be finite, got an integer of 1329 bits"),
    # bool("false") is True: the model would have been silently tied
    "tie_word_embeddings='false'": (dict(tie_word_embeddings="false"), r"tie_word_embeddings must be true or false"),
    "rope_parameters=[]": (dict(rope_parameters=[1]), r"rope_parameters / rope_scaling should be objects"),
    "architectures=[{}]": (dict(architectures=[{}]), r"'architectures' should be a list of names"),
}


@pytest.mark.parametrize("case", list(HF_LIES))
def test_hf_config_that_lies_fails_fast_with_model_format_error(tmp_path, case):
    overrides, match = HF_LIES[case]
    directory = write_tiny_hf(tmp_path / "hf", **overrides)
    assert_fails_fast(load_llama, directory, match, f"HF {case}")


def test_layer_numbers_must_be_zero_to_n_minus_one(tmp_path):
    weights = tiny_weights()
    moved = {k.replace("model.layers.1.", "model.layers.7."): v for k, v in weights.items()}
    directory = write_tiny_hf(tmp_path / "hf")
    save_safetensors(directory / "model.safetensors", moved)
    with pytest.raises(ModelFormatError, match=r"holds weights for 2 layer numbers \[0, 7\]"):
        load_llama(directory)


def test_an_hf_config_without_tie_word_embeddings_is_untied_as_in_hf(tmp_path):
    """transformers' LlamaConfig defaults tie_word_embeddings to False; a config.json that leaves the key out
    means an lm_head of its own (which this checkpoint has), not the embedding matrix."""
    model = load_llama(write_tiny_hf(tmp_path / "no_key", tie_word_embeddings=None))
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    np.testing.assert_array_equal(model.lm_head.weight.data, tiny_weights()["lm_head.weight"])


def test_transformers_llama_config_defaults_to_untied_live():
    transformers = pytest.importorskip("transformers")
    assert transformers.LlamaConfig().tie_word_embeddings is False  # the default from_hf_config follows


def test_a_value_passed_directly_is_a_config_error_not_a_file_error():
    for kwargs, match in [(dict(num_hidden_layers="2"), "must be an integer"), (dict(rms_norm_eps=float("inf")), "finite"),
                          (dict(max_position_embeddings=2**40), "between 1 and 16777216"),
                          (dict(tie_word_embeddings=1), "true or false"), (dict(hidden_size=4, num_attention_heads=8), "= 0")]:
        with pytest.raises(ConfigError, match=match):
            LlamaConfig(**kwargs)
    cfg = LlamaConfig(vocab_size=np.uint32(10), hidden_size=32, num_attention_heads=4, rope_theta=10000)
    assert type(cfg.vocab_size) is int and type(cfg.rope_theta) is float  # exact NumPy ints / ints are fine


def test_limits_are_above_every_real_model():
    """The limits refuse nonsense, not models: the largest released dense Llama-family shapes fit."""
    from litetorch.models.config import LIMITS
    llama_405b = dict(vocab_size=128256, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126,
                      num_attention_heads=128, num_key_value_heads=8, max_position_embeddings=131072)
    LlamaConfig(**llama_405b)
    assert all(LIMITS[k] >= 4 * v for k, v in llama_405b.items() if k != "max_position_embeddings")
    LlamaConfig(hidden_size=256, num_attention_heads=4, max_position_embeddings=10_000_000)  # Llama-4-Scout's context


def test_a_declared_million_token_context_costs_nothing_until_used(tmp_path):
    """Before: a 2**20-token context made the first 3-token forward build cos/sin for every position
    (SmolLM2: 7.8 s and +1 GiB). The RoPE table now holds only the positions used."""
    long = load_llama(write_tiny_gguf(tmp_path / "long.gguf", llama__context_length=2**20))
    short = load_llama(write_tiny_gguf(tmp_path / "short.gguf"))
    assert long.config.max_position_embeddings == 2**20 and short.config.max_position_embeddings == N_CTX
    ids = np.array([[1, 2, 3]])
    with measured("3-token forward, 2**20 context") as stats, lt.no_grad():
        logits = long(ids).data
    with lt.no_grad():
        np.testing.assert_array_equal(logits, short(ids).data)
    assert stats["peak"] < 2**20  # bytes; the full table of this tiny model alone would be 2 x 32 MiB


# ----------------------------------------------------------------------------------------------
# 2. Malformed files: ModelFormatError, not ValueError / TypeError / RecursionError
# ----------------------------------------------------------------------------------------------
def write_raw_safetensors(path, header: bytes, data: bytes = b""):
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)
    return path


def entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


SAFETENSORS_MALFORMED = {
    # NumPy: "array is too big" (ValueError): the zero hides 2**62 from the byte count
    "shape [0, 2**62]": (json.dumps({"w": entry(shape=[0, 2**62], offsets=[0, 0])}).encode(), b"", "impossible shape"),
    "shape [2**40, 2**40, 0]": (json.dumps({"w": entry(shape=[2**40, 2**40, 0], offsets=[0, 0])}).encode(), b"",
                                "impossible shape"),
    # NumPy: "maximum supported dimension ... 64, found 70" (ValueError)
    "70 dimensions": (json.dumps({"w": entry(shape=[1] * 70, offsets=[0, 4])}).encode(), bytes(4), "70 dimensions"),
    # json: RecursionError
    "100k nested [": (b"[" * 100_000, b"", "too deeply"),
    "100k nested {": (b'{"a":' * 100_000, b"", "too deeply"),
    # the last copy used to win silently
    "duplicate tensor": (b'{"w": ' + json.dumps(entry()).encode() + b', "w": '
                         + json.dumps(entry(shape=[1], offsets=[0, 4])).encode() + b"}", bytes(8), "'w' appears twice"),
    "duplicate field": (b'{"w": {"dtype": "F32", "shape": [2], "shape": [1], "data_offsets": [0, 8]}}', bytes(8),
                        "'shape' appears twice"),
    "duplicate __metadata__": (b'{"__metadata__": {"a": "1"}, "__metadata__": {"a": "2"}}', b"",
                               "'__metadata__' appears twice"),
    "__metadata__ a list": (b'{"__metadata__": []}', b"", "__metadata__ should map strings to strings"),
    # a 1-byte overlap, in either order and with a zero-size tensor sorting between the two
    "1-byte overlap": (json.dumps({"a": entry(offsets=[0, 8]), "b": entry(offsets=[7, 15])}).encode(), bytes(16),
                       "overlap"),
    "1-byte overlap, reversed": (json.dumps({"b": entry(offsets=[7, 15]), "a": entry(offsets=[0, 8])}).encode(),
                                 bytes(16), "overlap"),
    "1-byte overlap around an empty tensor": (
        json.dumps({"a": entry(offsets=[0, 8]), "z": entry(shape=[0], offsets=[4, 4]),
                    "b": entry("U8", [8], [7, 15])}).encode(), bytes(16), "overlap"),
}


@pytest.mark.parametrize("case", list(SAFETENSORS_MALFORMED))
def test_malformed_safetensors_header_is_a_model_format_error(tmp_path, case):
    header, data, match = SAFETENSORS_MALFORMED[case]
    path = write_raw_safetensors(tmp_path / "bad.safetensors", header, data)
    assert_fails_fast(load_safetensors, path, match, f"safetensors {case}")


def test_adjacent_tensors_and_empty_tensors_are_not_overlaps(tmp_path):
    header = json.dumps({"a": entry(offsets=[0, 8]), "z": entry(shape=[0], offsets=[8, 8]), "b": entry(offsets=[8, 16])})
    tensors = load_safetensors(write_raw_safetensors(tmp_path / "ok.safetensors", header.encode(),
                                                     np.arange(4, dtype="<f4").tobytes()))
    assert tensors["b"].tolist() == [2.0, 3.0] and tensors["z"].shape == (0,)


@pytest.mark.parametrize("name, text, match", [
    ("config.json", '{"vocab_size": 263, "vocab_size": 100000}', "'vocab_size' appears twice"),
    ("config.json", "[" * 100_000, "too deeply"),
    ("model.safetensors.index.json", '{"weight_map": {"w": ["a.safetensors"]}}', "weight_map"),
], ids=["duplicate key", "100k nested [", "shard as a list"])
def test_malformed_json_beside_the_weights_is_a_model_format_error(tmp_path, name, text, match):
    directory = write_tiny_hf(tmp_path / "hf")
    if name.endswith("index.json"):
        (directory / "model.safetensors").unlink()
    (directory / name).write_text(text)
    with pytest.raises(ModelFormatError, match=match):
        load_hf_checkpoint(directory)


GGUF_TOKENIZER_MALFORMED = {
    # np.asarray(..., dtype=np.int64) raised ValueError
    "token types as strings": (dict(tokenizer__ggml__token_type=[str(t) for t in TOKEN_TYPES]),
                               r"token_type must be a 1-D array of integers, got an array of <U1"),
    "token types as floats": (dict(tokenizer__ggml__token_type=np.array(TOKEN_TYPES, np.float32)),
                              r"token_type must be a 1-D array of integers, got an array of float32"),
    "tokens as integers": (dict(tokenizer__ggml__tokens=list(range(V))), r"tokens must be a list of strings"),
    "merges as a string": (dict(tokenizer__ggml__merges="h e"), r"merges must be a list of strings"),
    # int(2.5) == 2 used to load it silently
    "eos_token_id=2.5": (dict(tokenizer__ggml__eos_token_id=2.5), r"eos_token_id must be an integer, got 2.5"),
    # int("abc") raised ValueError
    "bos_token_id='abc'": (dict(tokenizer__ggml__bos_token_id="abc"), r"bos_token_id must be an integer, got 'abc'"),
    "eos_token_id=True": (dict(tokenizer__ggml__eos_token_id=True), r"eos_token_id must be an integer, got True"),
    "add_bos_token='no'": (dict(tokenizer__ggml__add_bos_token="no"), r"add_bos_token must be a bool, got 'no'"),
    "model=7": (dict(tokenizer__ggml__model=7), r"tokenizer.ggml.model must be a str, got 7"),
    # loaded, then failed at the first chat (or, as an int, rendered nothing useful)
    "chat_template=7": (dict(tokenizer__chat_template=7), r"tokenizer.chat_template must be a str, got 7"),
    "chat_template does not compile": (dict(tokenizer__chat_template="{% for m in messages %}"), r"does not compile"),
    "chat_template with an unknown tag": (dict(tokenizer__chat_template="{% exec 'x' %}"), r"does not compile"),
}


@pytest.mark.parametrize("case", list(GGUF_TOKENIZER_MALFORMED))
def test_malformed_gguf_tokenizer_is_a_model_format_error_at_load_time(tmp_path, case):
    overrides, match = GGUF_TOKENIZER_MALFORMED[case]
    path = write_tiny_gguf(tmp_path / "bad.gguf", **overrides)
    assert_fails_fast(load_model, path, match, f"GGUF tokenizer {case}")


def test_load_model_checks_the_tokenizer_before_reading_any_weight(tmp_path, monkeypatch):
    """A bad tokenizer is metadata: it must fail before the weights are read (for SmolLM2 a bad chat
    template used to cost the whole load first: 1.7 s and 650 MiB; now 0.2 s and 14 MiB)."""
    from litetorch.io.gguf import GGUFFile
    path = write_tiny_gguf(tmp_path / "bad.gguf", tokenizer__chat_template="{% if %}")

    def no_weights(self, name, dtype=np.float32):
        raise AssertionError(f"read weight {name!r} before the tokenizer was checked")

    monkeypatch.setattr(GGUFFile, "dequantize", no_weights)
    with pytest.raises(ModelFormatError, match="does not compile"):
        load_model(path)


def write_tiny_tokenizer_dir(directory, config: dict, generation: dict | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    build_byte_level_bpe(TOKENS, MERGES, "smollm").save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    if generation is not None:
        (directory / "generation_config.json").write_text(json.dumps(generation))
    return directory


@pytest.mark.parametrize("config, generation, match", [
    ({"chat_template": 7}, None, "chat_template must be a str, got 7"),
    ({"chat_template": "{% if %}"}, None, "does not compile"),
    ({"chat_template": [7]}, None, "chat_template should be a string or a list"),
    ({"eos_token": 5}, None, "eos_token should be a string"),
    ({"add_bos_token": "yes"}, None, "add_bos_token must be a bool"),
    ({}, {"eos_token_id": "abc"}, "eos_token_id must be a 1-D array of integers"),
    ({}, {"eos_token_id": [2.5]}, "eos_token_id must be a 1-D array of integers"),
], ids=["template int", "template syntax", "template list of int", "eos_token int", "add_bos_token str",
        "generation eos str", "generation eos float"])
def test_malformed_hf_tokenizer_config_is_a_model_format_error_at_load_time(tmp_path, config, generation, match):
    directory = write_tiny_tokenizer_dir(tmp_path / "tok", config, generation)
    with pytest.raises(ModelFormatError, match=match):
        Tokenizer.from_pretrained_dir(directory)


def test_well_formed_hf_tokenizer_dir_loads(tmp_path):
    directory = write_tiny_tokenizer_dir(tmp_path / "tok", {"chat_template": CHATML, "eos_token": "<|im_end|>",
                                                            "add_bos_token": False}, {"eos_token_id": [V - 3]})
    tok = Tokenizer.from_pretrained_dir(directory)
    assert tok.eos_token_id == V - 1 and tok.eos_token_ids == {V - 1, V - 3}
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}]).startswith("<|im_start|>user\nhi")


def test_token_ids_are_never_coerced():
    backend = build_byte_level_bpe(TOKENS, MERGES, "smollm")
    for bad in (2.0, "2", True):
        with pytest.raises(TokenizerError, match="eos_token_id must be an integer"):
            Tokenizer(backend, eos_token_id=bad)
    assert Tokenizer(backend, eos_token_id=np.uint32(2)).eos_token_id == 2


def test_a_gguf_without_a_chat_template_still_loads(tmp_path):
    _, tok = load_model(write_tiny_gguf(tmp_path / "plain.gguf", tokenizer__chat_template=None))
    assert tok.chat_template is None and tok.encode("the") == [TOKENS.index("t"), TOKENS.index("he")]

