"""Fuzzing the loaders: mutated and truncated model files load or raise ModelFormatError, nothing else.

Two small checkpoints written by litetorch's own writers (`tests/_tiny_files.py`):

- a GGUF (2-layer GQA Llama with F32, F16, Q8_0, Q4_0 and Q4_1 tensors, a byte-level BPE tokenizer
  and a chat template), loaded with `load_model` (model and tokenizer);
- an HF directory (config.json + model.safetensors), loaded with `load_llama`.

Each case flips bytes or bits (mostly where the structure lives: the header, the metadata, the
tensor table), overwrites an 8-byte field with an extreme value, or truncates the file, then loads
it. Byte flips rarely make a well-formed file with a *wrong value*, so two more kinds of case
replace one metadata value (GGUF) or one number in config.json by a hostile value of any type
(2**32 - 1, -1, 2.5, inf, NaN, "2", true, [1, 2], ...) and write the file properly. The claim: every outcome is a successful load (and a one-token forward runs) or a
ModelFormatError. Not another exception, not a hang (a case that runs past HANG_SECONDS raises in
the test), and not an allocation above MEMORY_CAP (tracemalloc's peak, which sees every NumPy
allocation, per case). Seeded, so a failure replays; the summary printed at the end (`-s`) gives the
counts and the worst case's time and memory.
"""
import json
import re
import signal
import time
import tracemalloc

import numpy as np
import pytest

import litetorch as lt
from _tiny_files import tiny_gguf_metadata, write_tiny_gguf, write_tiny_hf
from litetorch.errors import ModelFormatError
from litetorch.io.gguf import GGUFFile
from litetorch.models import load_llama, load_model

N_GGUF_CASES = 300
N_GGUF_VALUE_CASES = 150
N_HF_CASES = 300
MEMORY_CAP = 32 * 2**20  # bytes per case; a clean load of either file peaks at ~1 MiB
HANG_SECONDS = 10  # per case; a clean load takes ~20-50 ms
QUANT_TYPES = {"blk.0.ffn_up.weight": "Q8_0", "blk.0.ffn_gate.weight": "Q4_0", "blk.1.ffn_up.weight": "Q4_1",
               "blk.1.ffn_gate.weight": "F16"}


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang(f"a single case ran longer than {HANG_SECONDS} s")


def run_case(load, path) -> tuple[str, float, int]:
    """(outcome, seconds, peak bytes) of loading `path`; outcome is 'loaded' or 'ModelFormatError'.
    Anything else (another exception, a hang) propagates and fails the test with this case's seed."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with np.errstate(all="ignore"):  # mutated weights may be inf/NaN: that is not a format error
            model = load(path)
            model = model[0] if isinstance(model, tuple) else model
            with lt.no_grad():
                model(np.array([[0]]))
        outcome = "loaded"
    except ModelFormatError:
        outcome = "ModelFormatError"
    finally:
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return outcome, seconds, peak


def mutate(data: bytes, structure_end: int, rng, digits_only: bool = False) -> tuple[bytes, str]:
    """One random corruption of `data`; `structure_end` is where the header/metadata/tensor table end
    (most corruptions land before it: random bytes in the weights are just other weights)."""
    data = bytearray(data)

    def where():
        return int(rng.integers(0, structure_end if rng.random() < 0.85 else len(data)))

    if digits_only:  # text (JSON): replace one digit by another, so numbers change but the syntax holds
        at = [i for i in range(structure_end) if 48 <= data[i] <= 57]
        i = at[int(rng.integers(len(at)))]
        data[i] = int(rng.integers(48, 58))
        return bytes(data), f"digit at {i}"
    kind = int(rng.integers(5))
    if kind == 0:
        spots = [where() for _ in range(int(rng.integers(1, 5)))]
        for i in spots:
            data[i] = int(rng.integers(256))
        return bytes(data), f"bytes at {spots}"
    if kind == 1:
        i = where()
        data[i] ^= 1 << int(rng.integers(8))
        return bytes(data), f"bit flip at {i}"
    if kind == 2:
        i = min(where(), len(data) - 8)
        value = [b"\xff" * 8, b"\x00" * 8, (2**62).to_bytes(8, "little"), (2**31).to_bytes(8, "little"),
                 bytes(rng.integers(0, 256, 8, dtype=np.uint8))][int(rng.integers(5))]
        data[i:i + 8] = value
        return bytes(data), f"8 bytes {value.hex()} at {i}"
    if kind == 3:
        i = int(rng.integers(0, structure_end + 64))
        return bytes(data[:i]), f"truncated to {i} bytes"
    i = int(rng.integers(0, len(data)))
    return bytes(data[:i]), f"truncated to {i} bytes"


def hostile_value(rng):
    """A value of any GGUF-storable type, chosen to break something: huge, negative, fractional,
    infinite, NaN, a number as text, a bool, an array where a scalar belongs (or the reverse)."""
    values = [0, 1, 3, 2**31, 2**32 - 1, np.uint64(2**63), np.int64(-1), np.int32(-2**31), 2.5, 1e-5,
              float("inf"), float("-inf"), float("nan"), np.float64(1e300), "2", "abc", "", "{% if %}", True,
              False, [1, 2], ["a", "b"], [], np.array([1.5], np.float32), [[1], [2, 3]]]
    return values[int(rng.integers(len(values)))]


HOSTILE_JSON = ["0", "-1", "4294967295", "1099511627776", "2.5", "1e400", "-1e400", "NaN", "true", "null",
                '"2"', "[2]", "{}", "1e-400", "9" * 400]


def fuzz(load, n_cases, make_case, label):
    outcomes = {"loaded": 0, "ModelFormatError": 0}
    worst_time, worst_peak = (0.0, ""), (0, "")
    for case in range(n_cases):
        path, what = make_case(case)
        try:
            outcome, seconds, peak = run_case(load, path)
        except Exception as exc:
            raise AssertionError(f"{label} case {case} ({what}) raised {type(exc).__name__}: {exc}") from exc
        outcomes[outcome] += 1
        worst_time = max(worst_time, (seconds, f"case {case}: {what}"))
        worst_peak = max(worst_peak, (peak, f"case {case}: {what}"))
        assert peak <= MEMORY_CAP, f"{label} case {case} ({what}) allocated {peak / 2**20:.1f} MiB"
    print(f"\n{label}: {n_cases} cases, {outcomes['loaded']} loaded, {outcomes['ModelFormatError']} rejected; "
          f"worst time {worst_time[0] * 1e3:.0f} ms ({worst_time[1]}), "
          f"worst peak {worst_peak[0] / 2**20:.2f} MiB ({worst_peak[1]})")
    return outcomes


def test_fuzzed_gguf_loads_or_raises_model_format_error(tmp_path):
    good = write_tiny_gguf(tmp_path / "good.gguf", types=QUANT_TYPES)
    run_case(load_model, good)  # (warm-up: the first load imports jinja2 etc.)
    assert run_case(load_model, good)[0] == "loaded"
    original = good.read_bytes()
    with GGUFFile(good) as f:
        structure_end = f.data_offset
    rng = np.random.default_rng(17)

    def make_case(case):
        data, what = mutate(original, structure_end, rng)
        path = tmp_path / f"fuzz{case % 4}.gguf"
        path.write_bytes(data)
        return path, what

    outcomes = fuzz(load_model, N_GGUF_CASES, make_case, "GGUF")
    assert outcomes["loaded"] >= 10 and outcomes["ModelFormatError"] >= N_GGUF_CASES // 2, outcomes


def test_hostile_gguf_metadata_values_load_or_raise_model_format_error(tmp_path):
    keys = sorted(tiny_gguf_metadata())
    rng = np.random.default_rng(18)

    def make_case(case):
        key, value = keys[int(rng.integers(len(keys)))], hostile_value(rng)
        path = write_tiny_gguf(tmp_path / f"value{case % 4}.gguf", **{key.replace(".", "__"): value})
        return path, f"{key} = {value!r}"

    outcomes = fuzz(load_model, N_GGUF_VALUE_CASES, make_case, "GGUF metadata values")
    assert outcomes["loaded"] >= 10 and outcomes["ModelFormatError"] >= N_GGUF_VALUE_CASES // 2, outcomes


def test_fuzzed_hf_checkpoint_loads_or_raises_model_format_error(tmp_path):
    good = write_tiny_hf(tmp_path / "good")
    assert run_case(load_llama, good)[0] == "loaded"
    weights, config = (good / "model.safetensors").read_bytes(), (good / "config.json").read_bytes()
    header_end = 8 + int.from_bytes(weights[:8], "little")
    rng = np.random.default_rng(17)

    def make_case(case):
        directory = tmp_path / f"fuzz{case % 4}"
        directory.mkdir(exist_ok=True)
        if case % 4 == 3:  # config.json: one value replaced by a hostile one (a syntax error is just "not JSON")
            spans = [m.span(1) for m in re.finditer(rb': ([^,\n{}\[\]]+)', config)]
            begin, end = spans[int(rng.integers(len(spans)))]
            value = HOSTILE_JSON[int(rng.integers(len(HOSTILE_JSON)))].encode()
            (directory / "config.json").write_bytes(config[:begin] + value + config[end:])
            (directory / "model.safetensors").write_bytes(weights)
            return directory, f"config.json {config[begin:end].decode()} -> {value.decode()}"
        data, what = mutate(weights, header_end, rng, digits_only=case % 4 == 2)
        (directory / "config.json").write_bytes(config)
        (directory / "model.safetensors").write_bytes(data)
        return directory, "model.safetensors " + what

    outcomes = fuzz(load_llama, N_HF_CASES, make_case, "HF safetensors")
    assert outcomes["loaded"] >= 10 and outcomes["ModelFormatError"] >= N_HF_CASES // 2, outcomes
