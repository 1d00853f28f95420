"""litetorch.debug: the layer-by-layer [OK]/[DIFF] report and the capture helper."""
import numpy as np
import pytest

import litetorch as lt
from litetorch import nn
from litetorch.debug import capture, compare

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch not installed")


def test_compare_rows_and_report(capsys):
    a = {"emb": np.ones((2, 3)), "block.0": np.zeros(4), "block.1": np.ones((2, 2)), "only_a": np.zeros(1),
         "nan": np.array([np.nan])}
    b = {"emb": np.ones((2, 3)) + 1e-7, "block.0": np.array([0, 0, 0.5, 0]), "block.1": np.ones((2, 3)),
         "only_b": np.zeros(1), "nan": np.array([1.0])}
    rows = compare(a, b, rtol=1e-5)
    assert [(r.name, r.status) for r in rows] == [("emb", "OK"), ("block.0", "DIFF"), ("block.1", "SHAPE"),
                                                  ("only_a", "MISSING"), ("nan", "DIFF"), ("only_b", "MISSING")]
    assert rows[1].max_abs == 0.5 and rows[1].mean_abs == 0.125
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("[OK]      emb      max=1.0e-07 mean=1.0e-07")  # names padded to a column
    assert printed[1].startswith("[DIFF]    block.0  max=5.0e-01 mean=1.2e-01  (tol")
    assert printed[2] == "[SHAPE]   block.1  a=(2, 2) b=(2, 3)"
    assert printed[3] == "[MISSING] only_a   only in a" and printed[5] == "[MISSING] only_b   only in b"
    assert str(rows[0]).startswith("[OK]      emb  max=")
    compare(a, b, print=False)
    assert capsys.readouterr().out == ""


def test_compare_tolerance_is_relative_to_the_output_scale():
    big = np.array([1000.0, 2000.0])
    assert compare({"x": big + 1e-3}, {"x": big}, rtol=1e-5, print=False)[0].status == "OK"  # 1e-3 <= 2e-2
    assert compare({"x": big + 1.0}, {"x": big}, rtol=1e-5, print=False)[0].status == "DIFF"
    assert compare({"x": (lt.tensor([1.0]),)}, {"x": [1.0]}, print=False)[0].status == "OK"  # tuples: first item


def small_model():
    return nn.ModuleList([nn.DecoderBlock(16, 2, 1, 24, rope=nn.RotaryEmbedding(8)) for _ in range(2)])


def run(model, x):
    for blk in model:
        x = blk(x)
    return x


def test_capture_records_named_outputs_in_call_order_and_restores_forward():
    model = small_model()
    x = lt.randn(1, 4, 16)
    with capture(model) as out:
        y = run(model, x)
    names = list(out)
    assert names.index("0.self_attn.qkv_proj") < names.index("0.self_attn") < names.index("0.mlp") < names.index("0")
    assert names[-1] == "1" and np.array_equal(out["1"], y.data)
    assert all("forward" not in m.__dict__ for m in model.modules())  # unwrapped on exit
    with capture(model, names=["*.mlp", "1"]) as sub:
        run(model, x)
    assert list(sub) == ["0.mlp", "1.mlp", "1"]


def test_capture_copies_values_that_would_change_later():
    """A KV-cache view changes when the cache is appended to; capture keeps what it saw."""
    attn = nn.MultiHeadAttention(16, 2, 1, rope=nn.RotaryEmbedding(8))
    cache = nn.KVCache(1, 1, 8, 8)
    with capture(attn, ["qkv_proj"]) as out, lt.no_grad():
        attn(lt.randn(1, 3, 16), cache=cache)
        first = out["qkv_proj"].copy()
        attn(lt.randn(1, 1, 16), cache=cache)
    assert out["qkv_proj"].shape == (1, 1, 32) and first.shape == (1, 3, 32)  # the last call wins


@needs_torch
def test_first_diff_points_at_the_broken_layer():
    """litetorch vs a torch twin: all [OK]; break one weight and the first [DIFF] names its layer."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP
    torch.manual_seed(0)
    ref = torch.nn.ModuleList([LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=24, num_attention_heads=2))
                               for _ in range(3)])
    ours = nn.ModuleList([nn.SwiGLU(16, 24) for _ in range(3)])
    ours.load_state_dict({k: v.detach().numpy() for k, v in ref.state_dict().items()})
    x = np.random.default_rng(0).standard_normal((1, 5, 16)).astype(np.float32)

    def both():
        with capture(ours, ["?"]) as a:
            h = lt.tensor(x)
            for m in ours:
                h = m(h)
        with capture(ref, ["?"]) as b, torch.no_grad():
            h = torch.tensor(x)
            for m in ref:
                h = m(h)
        return compare(a, b, print=False)

    assert [r.status for r in both()] == ["OK", "OK", "OK"]
    assert all(not m._forward_hooks for m in ref.modules())  # hooks removed
    ours[1].gate_up_proj.weight.data[0, 0] += 1.0
    assert [r.status for r in both()] == ["OK", "DIFF", "DIFF"]
