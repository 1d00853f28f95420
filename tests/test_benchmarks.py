"""The benchmark suite runs end to end on a tiny random model (a smoke test: it asserts no speed)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_benchmark_smoke_run_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--tiny", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "bench_tiny.json").read_text())
    run = res["runs"][0]
    # every speed row is paired with a token-identity check
    assert run["litetorch"]["decode_tokens"] == run["hf"]["decode_tokens"]
    assert run["litetorch"]["nocache_tokens"] == run["hf"]["nocache_tokens"]
    assert run["litetorch"]["nocache_equals_cached"]
    assert run["litetorch"]["decode_split_ms"]["tokens_identical"]  # the matmul/other split's own decode
    assert 0 < run["litetorch"]["interleaved"]["share"] < 1  # decode cannot beat a pass of its own matmuls
    for engine in ("litetorch", "hf"):  # best of 3 rounds, each kept (and each gave the same tokens)
        assert len(run[engine]["decode_s_repeats"]) == 3
        assert run[engine]["decode_s"] == min(run[engine]["decode_s_repeats"])
    # the engines took turns: round r's ratio divides the r-th timed run of one engine by the other's
    paired = run["per_round_ratio"]
    lt, hf = run["litetorch"], run["hf"]
    assert paired["decode"] == [h / t for h, t in zip(hf["decode_s_repeats"], lt["decode_s_repeats"])]
    assert paired["prefill"] == [h / t for h, t in zip(hf["prefill_s_repeats"], lt["prefill_s_repeats"])]
    assert paired["decode_median"] == sorted(paired["decode"])[1]
    assert "| decode tok/s (KV cache, best of 3 rounds) |" in out.stdout
    assert "| prefill, litetorch ÷ HF within each round (median of 3) |" in out.stdout
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for plot in ("bench_tiny_context.png", "bench_tiny_speed.png"):
        assert (tmp_path / plot).stat().st_size > 0


@pytest.mark.slow
def test_decode_split_runs_on_a_tiny_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from run import tiny_checkpoint
    finally:
        sys.path.pop(0)
    ckpt = tiny_checkpoint(tmp_path / "tiny")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_split.py"), "--model", str(ckpt),
                          "--context", "16", "--tokens", "3", "--reps", "2"],  # its own process: it pins BLAS threads
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["reps"] == 2 and res["step_ms_min"] > 0
    # with two repetitions the median is the mean, so the split adds up: step = matmuls + everything else
    assert res["weight_matmuls_ms_median"] + res["other_ms_median"] == pytest.approx(res["step_ms_median"])
    assert 0 < res["weight_matmuls_ms_min"] < res["step_ms_min"]
    # the same steps with stored matmul outputs (no weights read): only "everything else" is timed
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "decode_split.py"), "--model", str(ckpt),
                          "--context", "16", "--tokens", "3", "--reps", "2", "--without-weight-traffic"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["without_weight_traffic"] and 0 < res["other_ms_min"] <= res["other_ms_median"]


def test_a_workers_peak_rss_is_its_own_not_its_parents():
    """Linux keeps ru_maxrss across exec: a worker spawned by a 2.4 GB pytest process reported 2.4 GB
    (a CI failure of the TinyLlama memory test). The probe reads the worker's own high-water mark."""
    np = pytest.importorskip("numpy")
    big = np.ones(400 * 2**20 // 8)  # this process now holds 400 MiB
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); from run import peak_rss_mb; "
            f"print(peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    child = float(out.stdout.strip().splitlines()[-1])
    assert big.nbytes == 400 * 2**20 and child < 300, f"the child reported {child:.0f} MiB, its parent's 400 MiB"
