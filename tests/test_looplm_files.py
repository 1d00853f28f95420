"""Ternary weights stored packed, and the full LoopLM in one GGUF file.

Claims:
- pack_ternary / unpack_ternary are inverse (any row length), 2 bits per weight.
- litetorch's TQ2_0 quantizer writes the gguf package's bytes, and its dequantizer reads them back.
- PackedBitLinear computes exactly what BitLinear computes (np.array_equal, float32 and float64, fused
  projections with one scale per part), and a LoopLM packed in memory gives the float path's logits.
- One GGUF file holds a LoopLM with mixed layer kinds, hyper-connection mappings and packed ternary
  layers (TQ2_0 where the row length allows, litetorch's 2-bit layout otherwise); loading it gives
  identical logits, and the gguf package lists its metadata and reads its TQ2_0 tensors as the ternary
  matrices. The ternary layers take ~1/15.5 of their float32 bytes in the file.
"""
import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import ConfigError, ModelFormatError
from litetorch.io.tquants import dequantize_tq2_0, quantize_tq2_0
from litetorch.models.looplm import LoopConfig
from litetorch.models.looplm_files import load_gguf, load_looplm, load_npz, load_safetensors, save_gguf, save_npz, \
    save_safetensors
from litetorch.nn.bitlinear import BitLinear, PackedBitLinear, pack_ternary, unpack_ternary

from test_looplm_hybrid import ids_for, make


@pytest.mark.parametrize("n_in", [1, 3, 4, 7, 256, 258])
def test_pack_and_unpack_are_inverse(n_in):
    T = np.random.default_rng(n_in).integers(-1, 2, (5, n_in)).astype(np.int8)
    packed = pack_ternary(T)
    assert packed.dtype == np.uint8 and packed.shape == (5, -(-n_in // 4))
    assert np.array_equal(unpack_ternary(packed, n_in), T)
    assert pack_ternary(np.array([[-1, 0, 1, 1]], np.int8))[0, 0] == 0b10_10_01_00  # first weight in the low bits
    with pytest.raises(lt.errors.ShapeError):
        pack_ternary(np.array([[2, 0]], np.int8))


def test_tq2_0_bytes_equal_the_gguf_package():
    gguf = pytest.importorskip("gguf")
    r = np.random.default_rng(0)
    for x in (r.integers(-1, 2, (6, 512)).astype(np.float32), r.standard_normal((3, 256)).astype(np.float32),
              np.zeros((2, 256), np.float32), np.full((1, 256), -2.5, np.float32)):
        ours = quantize_tq2_0(x)
        theirs = gguf.quants.quantize(x, gguf.GGMLQuantizationType.TQ2_0)
        assert np.array_equal(ours, theirs)
        back = dequantize_tq2_0(ours.reshape(-1, 66)).reshape(x.shape)
        assert np.array_equal(back, gguf.quants.dequantize(theirs, gguf.GGMLQuantizationType.TQ2_0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_bitlinear_equals_bitlinear_exactly(dtype):
    lt.manual_seed(0)
    bl = BitLinear(20, 12, bias=True, out_splits=[4, 8]).to(dtype)
    packed = PackedBitLinear.from_bitlinear(bl)
    x = lt.tensor(np.random.default_rng(1).standard_normal((2, 5, 20)).astype(dtype))
    with lt.no_grad():
        assert np.array_equal(packed(x).data, bl(x).data)
    assert np.array_equal(bl(x).data, packed(x).data)  # with a graph, too
    assert packed.weight_packed.nbytes == 12 * 5  # 2 bits per weight: 20 weights -> 5 bytes per row


def test_packed_looplm_gives_the_float_paths_logits_and_tokens():
    m = make(dtype=np.float32, loop_count=2, bitlinear=True, gating=True, n_before=1)
    ids = ids_for(m, T=9)
    with lt.no_grad():
        want = m(ids).data
    greedy = lt.generate(m, None, ids[0, :4].tolist(), max_new_tokens=6).token_ids
    latent = sum(b.weight.data.nbytes for b in m.modules() if isinstance(b, BitLinear))
    m.pack_ternary()
    assert not any(isinstance(b, BitLinear) for b in m.modules())
    packed = sum(b.nbytes for b in m.modules() if isinstance(b, PackedBitLinear))
    with lt.no_grad():
        assert np.array_equal(m(ids).data, want)
    assert lt.generate(m, None, ids[0, :4].tolist(), max_new_tokens=6).token_ids == greedy
    print(f"shared block's ternary layers: float32 {latent} B, packed {packed} B ({latent / packed:.1f}x)")
    assert latent / packed > 14


def full_model(d_model=16, hidden=24, **kw):
    """Every kind at once: DeltaNet and MoE locals, a ternary attention shared block, mHC per iteration."""
    base = dict(dtype=np.float32, n_before=1, n_after=1, max_loops=3, exit="gate", exit_threshold=0.5,
                layer_types=["deltanet", "attention", "attention"], mlp_types=["moe", "dense", "moe"],
                hyper="mhc", hyper_streams=2, bitlinear=True, input_injection=True, d_model=d_model, hidden=hidden)
    base.update(kw)
    return make(**base)


def test_gguf_round_trip_of_the_full_looplm_gives_identical_logits(tmp_path):
    gguf = pytest.importorskip("gguf")
    m = full_model()
    ids = ids_for(m, T=8)
    with lt.no_grad():
        want = m.run(ids)
    path = save_gguf(m, tmp_path / "full.gguf")
    back = load_gguf(path)
    assert back.config == m.config
    with lt.no_grad():
        got = back.run(ids)
    assert np.array_equal(got.logits.data, want.logits.data) and np.array_equal(got.loops, want.loops)
    reader = gguf.GGUFReader(str(path))
    keys = set(reader.fields)
    for k in ("looplm.layer_types", "looplm.mlp_types", "looplm.hyper", "looplm.hyper_streams",
              "looplm.hyper_per_iteration", "looplm.kv_policy", "looplm.exit", "looplm.ternary_layout",
              "looplm.linear_num_value_heads", "looplm.n_experts"):
        assert k in keys, k
    f = reader.fields["looplm.layer_types"]
    assert [bytes(f.parts[i]).decode() for i in f.data] == ["deltanet", "attention", "attention"]
    names = {t.name: t for t in reader.tensors}
    assert "loop.hc_attn.2.phi_res" in names and "layers_before.0.linear_attn.A_log" in names
    assert names["loop.self_attn.qkv_proj.weight"].tensor_type.name == "I8"  # in = 16: litetorch's 2-bit layout
    assert "loop.self_attn.qkv_proj.weight_scale" in names


def test_gguf_writes_tq2_0_where_rows_allow_and_the_file_is_16x_smaller_for_ternary_layers(tmp_path):
    gguf = pytest.importorskip("gguf")
    m = make(dtype=np.float32, d_model=256, n_heads=4, hidden=256, vocab_size=16, loop_count=2, bitlinear=True)
    ids = ids_for(m, T=5)
    with lt.no_grad():
        want = m(ids).data
    path = save_gguf(m, tmp_path / "tq.gguf")
    with lt.no_grad():
        assert np.array_equal(load_gguf(path)(ids).data, want)
    reader = gguf.GGUFReader(str(path))
    ternary = [t for t in reader.tensors if t.tensor_type.name == "TQ2_0"]
    assert {t.name for t in ternary} == {"loop.self_attn.qkv_proj.weight", "loop.self_attn.o_proj.weight",
                                         "loop.mlp.gate_up_proj.weight", "loop.mlp.down_proj.weight"}
    for t in ternary:  # the gguf package reads T itself
        layer = dict(m.named_modules())[t.name[:-len(".weight")]]
        T, _ = layer.ternary_weight()
        assert np.array_equal(gguf.quants.dequantize(t.data, t.tensor_type).reshape(T.shape), T)
    float_bytes = sum(int(np.prod(t.shape)) * 4 for t in ternary)
    file_bytes = sum(t.n_bytes for t in ternary) + sum(t.n_bytes for t in reader.tensors if t.name.endswith("_scale"))
    ratio = float_bytes / file_bytes
    print(f"ternary layers: float32 {float_bytes} B, in the file {file_bytes} B: {ratio:.1f}x smaller")
    assert 15.0 < ratio <= 16.0


def test_float_ternary_gguf_keeps_latent_weights_and_npz_safetensors_round_trip(tmp_path):
    m = full_model()
    ids = ids_for(m, T=6)
    with lt.no_grad():
        want = m(ids).data
    back = load_gguf(save_gguf(m, tmp_path / "f.gguf", ternary="float"))
    assert any(isinstance(b, BitLinear) for b in back.modules())
    save_npz(m, tmp_path / "m.npz")
    save_safetensors(m, tmp_path / "m.safetensors")
    m.pack_ternary()
    save_npz(m, tmp_path / "p.npz")
    for loaded in (back, load_npz(tmp_path / "m.npz"), load_safetensors(tmp_path / "m.safetensors"),
                   load_looplm(tmp_path / "p.npz")):
        with lt.no_grad():
            assert np.array_equal(loaded(ids).data, want)
    with pytest.raises(ConfigError, match="packed"):
        save_gguf(m, tmp_path / "x.gguf", ternary="float")
    with pytest.raises(ModelFormatError):
        load_looplm(tmp_path / "m.txt")


def test_a_gguf_with_bad_looplm_metadata_is_a_model_format_error(tmp_path):
    from litetorch.io.gguf import write_gguf
    from litetorch.models.looplm_files import gguf_metadata
    meta = gguf_metadata(LoopConfig())
    meta["looplm.layer_types"] = ["attention", "mamba"]
    path = write_gguf(tmp_path / "bad.gguf", meta, {"x": np.zeros(4, np.float32)})
    with pytest.raises(ModelFormatError, match="layer_types"):
        load_gguf(path)
