"""Mutation testing, small and explicit: does the test suite notice when the code is wrong?

Each mutant is one plausible bug written down as an exact text replacement in one file, together with
the fast tests that must fail when it is applied. The script copies the package and its tests to a
temporary directory (the working tree is never edited), checks that every selection passes unmutated,
then applies each mutant on its own, runs its selection, and reports "killed" (a test failed) or
"survived" (every test passed: a bug the tests cannot see). It exits with status 1 unless every
mutant is killed, and with status 2 when a mutant no longer applies (its text is not in the file
exactly once: the code moved, so the mutant must be updated).

    python scripts/mutants.py            # all mutants (a few minutes on 2 cores)
    python scripts/mutants.py --list     # what they are
    python scripts/mutants.py top-p      # the ones whose name contains "top-p"

The first group are the changes issue #17 found passing the whole fast suite; the second are core
bugs chosen here, one or more per subsystem (sampling, RoPE, attention, the KV cache, norms, the
loaders and quantizers, the argument checks, chat templates).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    name: str
    path: str        # relative to the repository root
    old: str         # must occur exactly once in the file
    new: str
    tests: list      # pytest node ids (or files) of fast tests that must fail
    why: str = ""    # what the bug would do


ISSUE = [  # issue #17, point 5: each of these passed the whole fast suite before the tests that kill them
    Mutant("top-p keeps ties with < instead of <=", "litetorch/sampling.py",
           "remove_sorted = mass_at_or_below <= 1 - p", "remove_sorted = mass_at_or_below < 1 - p",
           ["tests/test_sampling.py::test_top_p_at_a_tie_keeps_as_many_tokens_as_hf"],
           "top_p=0.5 over 4 equal logits keeps 3 tokens instead of HF's 2"),
    Mutant("HF config without tie_word_embeddings means tied", "litetorch/models/config.py",
           'tie_word_embeddings=get("tie_word_embeddings", default=False, kind="bool")',
           'tie_word_embeddings=get("tie_word_embeddings", default=True, kind="bool")',
           ["tests/test_untrusted_files.py::test_an_hf_config_without_tie_word_embeddings_is_untied_as_in_hf"],
           "a checkpoint with its own lm_head.weight would be loaded tied (or refused)"),
    Mutant("PromptCache.reserve grows to exactly what is asked", "litetorch/generation.py",
           "self.caches.grow(min(n_ctx, max(n_tokens, 2 * self.caches.max_len)))",
           "self.caches.grow(min(n_ctx, n_tokens))",
           ["tests/test_generation.py::test_prompt_cache_grows_by_doubling_so_a_long_chat_copies_log_n_times"],
           "every decode step past the allocation copies the whole cache: O(n^2)"),
    Mutant("drop_oldest drops one message, not a user/assistant pair", "litetorch/chat.py",
           "history = history[2:]  # drop the oldest user/assistant pair",
           "history = history[1:]  # drop the oldest user/assistant pair",
           ["tests/test_chat.py::test_drop_oldest_drops_whole_pairs_so_the_history_starts_with_a_user_turn"],
           "the history would start with an orphan assistant turn"),
    Mutant("safetensors accepts a 1-byte overlap", "litetorch/io/safetensors.py",
           "if begin < reach and end > begin:", "if begin < reach - 1 and end > begin:",
           ["tests/test_untrusted_files.py::test_malformed_safetensors_header_is_a_model_format_error"],
           "two tensors sharing a byte: writing one corrupts the other"),
    Mutant("BOS prepended to a prompt that already starts with BOS", "litetorch/generation.py",
           "and bos is not None and ids[:1] != [bos]:", "and bos is not None:",
           ["tests/test_generation.py::test_bos_is_added_when_the_tokenizer_asks"],
           "<s><s> at the start of a Llama-2 prompt"),
    Mutant("generation stops on eos_token_id only", "litetorch/generation.py",
           'eos = set(getattr(tokenizer, "eos_token_ids", None) or {getattr(tokenizer, "eos_token_id", None)}) - {None}',
           'eos = {getattr(tokenizer, "eos_token_id", None)} - {None}',
           ["tests/test_generation.py::test_generation_stops_on_every_end_of_turn_id_not_only_eos"],
           "a chat model that ends its turn with <|endoftext|> runs on to max_new_tokens"),
    Mutant("chat template compiled with trim_blocks=False", "litetorch/tokenizer.py",
           "ImmutableSandboxedEnvironment(trim_blocks=True,", "ImmutableSandboxedEnvironment(trim_blocks=False,",
           ["tests/test_tokenizer.py::test_multiline_llama2_style_template_renders_as_hf"],
           "multi-line templates render extra newlines: different ids than the model was tuned on"),
    Mutant("the model-level context check lets n_ctx + 1 tokens through", "litetorch/checks.py",
           "    if past + new > n_ctx:\n", "    if past + new > n_ctx + 1:\n",
           ["tests/test_api_misuse.py::test_misuse_raises_a_litetorch_error_naming_expected_and_actual_and_changes_nothing"],
           "position n_ctx has no RoPE/learned embedding the model was trained with"),
]

CORE = [  # chosen here: one plausible slip per line that matters
    Mutant("top-k removes ties with the k-th value", "litetorch/sampling.py",
           "return np.where(x < kth_largest, -np.inf, x)", "return np.where(x <= kth_largest, -np.inf, x)",
           ["tests/test_sampling.py::test_top_k_keeps_ties_with_the_kth_value"]),
    Mutant("min-p removes the tokens exactly at the threshold", "litetorch/sampling.py",
           "return np.where(probs < threshold, -np.inf, x)", "return np.where(probs <= threshold, -np.inf, x)",
           ["tests/test_sampling.py::test_min_p_one_keeps_only_the_tied_top_tokens"]),
    Mutant("temperature multiplies instead of divides", "litetorch/sampling.py",
           "return x / t      # a Python float", "return x * t      # a Python float",
           ["tests/test_sampling.py::test_processor_equals_hf_fixture"]),
    Mutant("repetition penalty pushes the wrong way", "litetorch/sampling.py",
           "row[ids] = np.where(seen < 0, seen * r, seen / r)", "row[ids] = np.where(seen < 0, seen / r, seen * r)",
           ["tests/test_sampling.py::test_processor_equals_hf_fixture"]),
    Mutant("greedy takes the argmin", "litetorch/sampling.py",
           "ids = np.argmax(x, axis=-1)\n", "ids = np.argmin(x, axis=-1)\n",
           ["tests/test_sampling.py::test_temperature_zero_is_greedy_after_the_repetition_penalty"]),
    Mutant("sampling softmax: an all -inf row becomes NaN", "litetorch/sampling.py",
           "m = np.where(np.isneginf(m), 0.0, m)", "m = m",
           ["tests/test_sampling.py::test_softmax_of_an_all_minus_inf_row_is_zeros_and_inf_entries_share_the_mass"]),
    Mutant("RoPE rotates (a, b) to (b, -a)", "litetorch/nn/rope.py",
           "return np.concatenate([-x[..., d:], x[..., :d]], axis=-1)",
           "return np.concatenate([x[..., d:], -x[..., :d]], axis=-1)",
           ["tests/test_rope.py::test_both_pairings_equal_the_complex_number_form_float64"]),
    Mutant("RoPE frequencies without the 1/", "litetorch/nn/rope.py",
           "return (1.0 / np.float64(base) ** exponent.astype(np.float64)).astype(dt)",
           "return (np.float64(base) ** -exponent.astype(np.float64) * 1.0001).astype(dt)",
           ["tests/test_rope.py::test_rope_frequencies_are_the_nearest_float32_to_the_true_values"]),
    Mutant("GGUF Q/K rows not un-permuted", "litetorch/nn/rope.py",
           "return w.reshape(n_heads, head_dim // 2, 2, *rest).swapaxes(1, 2).reshape(d_out, *rest)",
           "return w.reshape(n_heads, head_dim // 2, 2, *rest).reshape(d_out, *rest)",
           ["tests/test_rope.py::test_unpermute_matches_the_gguf_formula_of_design_md"]),
    Mutant("attention scaled by 1/Dh", "litetorch/nn/sdpa.py",
           "scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None", "scale = 1.0 / q.shape[-1] if scale is None",
           ["tests/test_attention.py::test_sdpa_matches_torch_forward_and_backward"]),
    Mutant("causal mask aligned top-left", "litetorch/nn/sdpa.py",
           "offset = Tk - Tq\n", "offset = 0\n",
           ["tests/test_attention.py::test_decode_step_sees_every_cached_key"]),
    Mutant("GQA pairs query heads with the wrong KV head", "litetorch/nn/sdpa.py",
           "q = q.reshape(q.shape[:-3] + (Hkv, H // Hkv) + q.shape[-2:])",
           "q = q.reshape(q.shape[:-3] + (H // Hkv, Hkv) + q.shape[-2:])",
           ["tests/test_attention.py::test_gqa_equals_attention_over_repeated_kv_heads"]),
    Mutant("KV cache overflow check off by one", "litetorch/nn/kv_cache.py",
           "if self.length + kd.shape[2] > T_max:", "if self.length + kd.shape[2] >= T_max:",
           ["tests/test_kv_cache.py"]),
    Mutant("KV cache crop keeps one position too many", "litetorch/generation.py",
           "            del row[n:]\n", "            del row[n + 1:]\n",
           ["tests/test_generation.py::test_cached_system_prompt_gives_the_same_tokens_and_skips_the_prefix"]),
    Mutant("RMSNorm without eps", "litetorch/nn/functional.py",
           "axis=dims, keepdims=True) / D + float(eps))", "axis=dims, keepdims=True) / D)",
           ["tests/test_nn.py::test_rms_norm_is_x_over_the_root_mean_square_plus_eps_in_float64"]),
    Mutant("LayerNorm with the unbiased variance", "litetorch/nn/functional.py",
           "var = (xc * xc).mean(dim=dims, keepdim=True)",
           "var = (xc * xc).sum(dim=dims, keepdim=True) / (xc.size // mu.size - 1)",
           ["tests/test_nn.py::test_layer_norm_uses_the_biased_variance_in_float64"]),
    Mutant("Q4_0 dequantized without its -8 offset", "litetorch/io/quants.py",
           "q = _unpack_nibbles(blocks[:, 2:18]).astype(np.int8) - 8", "q = _unpack_nibbles(blocks[:, 2:18]).astype(np.int8)",
           ["tests/test_gguf.py::test_block_dequantizers_are_bit_identical_to_gguf_py_on_random_blocks"]),
    Mutant("checks accept a bool as an integer", "litetorch/checks.py",
           "return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))",
           "return isinstance(value, Integral)",
           ["tests/test_api_misuse.py"]),
    Mutant("checks accept NaN as a number in range", "litetorch/checks.py",
           "if not _is_real(value) or not math.isfinite(value):", "if not _is_real(value):",
           ["tests/test_api_misuse.py"]),
    Mutant("the vocabulary check lets id V through", "litetorch/checks.py",
           "if lo < 0 or (vocab_size is not None and hi >= vocab_size):",
           "if lo < 0 or (vocab_size is not None and hi > vocab_size):",
           ["tests/test_api_misuse.py", "tests/test_nn.py::test_errors_name_expected_and_actual"]),
    Mutant("a chat message's special-token strings become control tokens", "litetorch/tokenizer.py",
           "        if not found:  # the usual case", "        if True:  # the usual case",
           ["tests/test_tokenizer.py::test_a_user_message_cannot_forge_a_system_turn"]),
    Mutant("unknown roles accepted", "litetorch/checks.py",
           'if roles is not None and m["role"] not in roles:', 'if False:',
           ["tests/test_api_misuse.py"]),
    Mutant("template roles: comparisons with a list ignored", "litetorch/tokenizer.py",
           "if isinstance(node, (nodes.List, nodes.Tuple)):", "if False:",
           ["tests/test_tokenizer.py::test_chat_roles_are_the_defaults_plus_the_roles_the_template_tests_for"]),
    Mutant("streamed text may end in half a character", "litetorch/tokenizer.py",
           'if len(full) > len(prefix) and not full.endswith("\\ufffd"):', "if len(full) > len(prefix):",
           ["tests/test_generation.py::test_streaming_never_yields_a_broken_character"]),
    Mutant("chunked prefill keeps the wrong positions", "litetorch/runtime.py",
           "wanted = c1 - max(c0, T - keep)", "wanted = c1 - max(c0, T - keep + 1)",
           ["tests/test_runtime.py"]),
    Mutant("blocked attention gives a block one key too few", "litetorch/runtime.py",
           "k[..., :past + c1, :], v[..., :past + c1, :]", "k[..., :past + c1 - 1, :], v[..., :past + c1 - 1, :]",
           ["tests/test_runtime.py::test_blocked_kernel_equals_the_definition_forward_and_backward"],
           "the last query of every block would not see its own key"),
    Mutant("the runtime never installs its attention kernel", "litetorch/runtime.py",
           "with sdpa_kernel(self.attention):", "with sdpa_kernel(scaled_dot_product_attention):",
           ["tests/test_runtime.py::test_the_runtime_installs_its_kernel_for_prefill_only"],
           "prefill would compute the full masked score triangle: slower, with no test noticing"),
    Mutant("softmax without the max subtraction", "litetorch/ops/softmax.py",
           "        e = np.exp(x.data - m)\n", "        e = np.exp(x.data)\n",
           ["tests/test_tensor_ops.py", "-k", "softmax"]),
    Mutant("Adam without bias correction of the first moment", "litetorch/optim/adam.py",
           "bias_correction1 = 1.0 - b1 ** t", "bias_correction1 = 1.0",
           ["tests/test_optim.py::test_the_first_adam_step_moves_every_parameter_by_lr_against_its_gradient"]),
]

MUTANTS = ISSUE + CORE


def copy_tree(dest: Path) -> None:
    """What the tests need: the package, the tests and their fixtures, lessons, notebooks, scripts."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "_out", ".pytest_cache")
    for name in ("litetorch", "tests", "lessons", "notebooks", "scripts", "benchmarks", "docs"):
        if (ROOT / name).exists():
            shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)


def pytest(work: Path, args: list, timeout: int = 600) -> tuple[int, str]:
    """(pytest's exit status, the tail of its output): 0 all passed, 1 a test failed, else an error."""
    env = dict(os.environ, PYTHONPATH=str(work), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow", *args]
    try:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout} s"
    return done.returncode, "\n".join((done.stdout + done.stderr).splitlines()[-15:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("only", nargs="*", help="run the mutants whose name contains one of these")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or any(s in m.name for s in args.only)]
    if args.list:
        for m in chosen:
            print(f"{'issue' if m in ISSUE else 'core '}  {m.name}  [{m.path}]  -> {' '.join(m.tests)}")
        return 0

    stale = [m for m in chosen if (ROOT / m.path).read_text().count(m.old) != 1]
    for m in stale:
        print(f"STALE  {m.name}: {m.old!r} is not in {m.path} exactly once; update the mutant")
    if stale:
        return 2

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="litetorch-mutants-") as tmp:
        work = Path(tmp)
        copy_tree(work)
        selections = sorted({t for m in chosen for t in m.tests if t.startswith("tests/")})
        rc, tail = pytest(work, selections, timeout=1200)  # every selection must pass before mutating
        if rc != 0:
            print(f"the unmutated tests fail (pytest exit {rc}); fix them first:\n{tail}")
            return 2
        print(f"unmutated: the {len(selections)} selections pass ({time.perf_counter() - start:.0f} s)", flush=True)
        survived, errors = [], []
        for i, m in enumerate(chosen, 1):
            path = work / m.path
            original = path.read_text()
            path.write_text(original.replace(m.old, m.new))
            t0 = time.perf_counter()
            rc, tail = pytest(work, m.tests)
            path.write_text(original)
            verdict = {0: "SURVIVED", 1: "killed"}.get(rc, f"ERROR (pytest exit {rc})")
            (survived if rc == 0 else errors if rc != 1 else []).append(m)
            group = "issue" if m in ISSUE else "core"
            print(f"{i:2d}/{len(chosen)}  {verdict:<8}  {group:<5}  {m.name}  ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
            if rc not in (0, 1):
                print("    " + tail.replace("\n", "\n    "))
    killed = len(chosen) - len(survived) - len(errors)
    print(f"\n{killed}/{len(chosen)} mutants killed ({100 * killed / len(chosen):.0f}%), "
          f"{len(survived)} survived, {len(errors)} errors, in {time.perf_counter() - start:.0f} s")
    return 0 if killed == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
