"""The course's exercises: which marked regions of the library a student writes, and the tests that grade them.

In the spirit of minitorch, the library itself is the solution. A marked region of the source
(docs/ARCHITECTURE.md §9) whose begin and end markers end with the word `exercise` is an exercise. `litetorch exercises start DIR` writes a student copy of the package in which each
such body is replaced by `raise NotImplementedError("lesson 05, exercise 21: <hint>")` (signatures
and docstrings stay), and `litetorch exercises check 21 --dir DIR` runs exactly the tests listed
here against that copy (the machinery is in `student.py`).

Exercises are numbered in the order a student meets them: the tests of exercise K use only
exercises 1..K, so a student who works in order sees each check fail, fills in the body, and sees
it pass. `tests/test_exercises.py` holds the list to the code: every tagged region is listed here
and every entry names a tagged region, the lesson in its marker and tests that exist; the slow test
walks the whole course as a student would (each exercise's tests fail while it is blank, pass once
it is restored).
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Exercise:
    """One exercise: a tagged region `# lesson NN: begin (label) exercise` of `path`, and its tests."""

    number: int        # 1, 2, ... in the order of the course
    name: str          # short handle: `litetorch exercises check top_p` works too
    lesson: int        # the lesson that teaches it (the NN of the marker)
    path: str          # the file, relative to the repository root
    label: str         # the region's label, without parentheses ("" for an unlabelled region)
    task: str          # what to implement, in one line
    hint: str          # one line of help; the student copy raises it in NotImplementedError
    tests: tuple       # pytest node ids, relative to the repository root

    @property
    def marker(self) -> str:
        """The begin marker, as it appears in the source."""
        label = f" ({self.label})" if self.label else ""
        return f"# lesson {self.lesson:02d}: begin{label} exercise"

    @property
    def message(self) -> str:
        """The NotImplementedError message of the blanked body."""
        return f"lesson {self.lesson:02d}, exercise {self.number}: {self.hint}"

    @property
    def command(self) -> str:
        return f"litetorch exercises check {self.number}"


def _ops(*names, dtypes=("float64", "float32")):
    """Node ids of tests/test_tensor_ops.py's live torch comparison for these op cases."""
    return tuple(f"tests/test_tensor_ops.py::test_op_matches_torch_forward_and_backward[{n}-{d}]"
                 for n in names for d in dtypes)


def _layers(*names):
    """Node ids of tests/test_nn.py's layer comparison with torch (float64 and float32)."""
    return tuple(f"tests/test_nn.py::test_layer_matches_torch_forward_and_backward[{n}-{t}]"
                 for n in names for t in ("f64", "f32"))


def _sampling(name, values):
    """Node ids of tests/test_sampling.py's live comparison with the HF logits processor."""
    return tuple(f"tests/test_sampling.py::test_processor_equals_hf_live[{name}={v}-{d}-{V}]"
                 for v in values for d in ("float32", "float64") for V in (64, 49152))


_A, _T, _N, _O = "tests/test_attention.py::", "tests/test_autograd.py::", "tests/test_nn.py::", "tests/test_optim.py::"
_R, _B, _G = "tests/test_rope.py::", "tests/test_blocks.py::", "tests/test_generation.py::"
_SDPA_MHA = tuple(f"{_A}test_sdpa_matches_torch_forward_and_backward[{c}]" for c in (
    "B1H4kv4q16k16d64-float-float64", "B3H3kv3q11k33d64C-none-float32", "B3H4kv4q16k16d64C-bool-float32",
    "B3H8kv8q1k1d24C-bool-float64", "B1H1kv1q33k33d24-float-float64", "B1H9kv9q5k5d16-float-float64"))
_SDPA_GQA = tuple(f"{_A}test_sdpa_matches_torch_forward_and_backward[{c}]" for c in (
    "B2H12kv1q64k64d8-none-float32", "B2H12kv6q2k2d16-bool-float64", "B3H8kv4q34k64d64-none-float64",
    "B3H4kv2q33k33d64C-bool-float32", "B3H6kv2q13k33d16C-none-float64", "B2H11kv1q5k5d8-float-float32"))

_LIST = [
    # ---- lesson 01: tensors and autograd --------------------------------------------------------------
    ("unbroadcast", 1, "litetorch/tensor.py", "unbroadcast",
     "unbroadcast(grad, shape): sum a gradient back down to the shape of an input that was broadcast",
     "sum over the leading axes broadcasting added, then (keepdims) over the axes where shape has a 1",
     (f"{_T}test_unbroadcast_sums_over_the_broadcast_axes",)),
    ("backward", 1, "litetorch/tensor.py", "backward",
     "Tensor.backward: topological order by an iterative DFS, then the reverse walk that adds contributions",
     "order = every node after its parents (iterative DFS, mark when expanded); walk reversed(order), "
     "call node._backward(g), add each parent's contribution",
     (f"{_T}test_reused_non_leaf_accumulates_gradient",
      f"{_T}test_node_feeding_two_branches_of_different_depth_gets_both_contributions",
      f"{_T}test_deep_chain_of_5000_ops_needs_no_recursion",
      f"{_T}test_gradient_of_leaf_that_is_not_used_stays_none",
      f"{_T}test_backward_of_non_scalar_without_grad_is_shape_error")),
    ("mul", 1, "litetorch/ops/arithmetic.py", "mul of two tensors",
     "mul for two tensors: the forward a * b and its backward, for any broadcast shapes",
     "d(ab)/da = b and d(ab)/db = a; unbroadcast each gradient to its input's shape; Tensor._make(data, (a, b), backward, 'mul')",
     _ops("mul_broadcast", "mul_same_tensor")),
    ("div", 1, "litetorch/ops/arithmetic.py", "div",
     "div: a / b with a Python-number fast path, true division of ints, and the backward",
     "d(a/b)/da = 1/b and d(a/b)/db = -a/b^2, each unbroadcast; ints become float32 first (torch's true division)",
     _ops("div_broadcast", "div_python_scalar", "rdiv_python_scalar")),
    ("matmul_backward", 1, "litetorch/ops/matmul.py", "matmul backward",
     "the backward of matmul, including the 1-D cases torch.matmul allows",
     "dA = G @ B^T, dB = A^T @ G on the [.., M, K] / [.., K, N] views (put back the dims a 1-D operand lost), "
     "then unbroadcast the batch dims",
     _ops("matmul_1d_1d", "matmul_1d_2d", "matmul_2d_1d", "matmul_2d_2d", "matmul_batched",
          "matmul_broadcast_batch", "matmul_1d_batched", "matmul_batched_1d")),
    ("amax", 1, "litetorch/ops/reduce.py", "amax",
     "max over all elements or along dims (torch.amax), whose gradient is shared equally among ties",
     "forward np.max over _axes(x, dim, axis); backward: mask = (x == max), gradient = g * mask / (number of ties)",
     _ops("amax_all", "amax_dim", "amax_tuple_dims_keepdim", "amax_with_ties", "amin_dim")),
    ("softmax", 1, "litetorch/ops/softmax.py", "softmax",
     "softmax along a dim, in its stable form, with its Jacobian-vector product",
     "s = exp(x - max) / sum exp(x - max); backward: s * (g - sum(g * s)) along dim",
     _ops("softmax_last_dim", "softmax_dim0", "softmax_extreme_1e4", "softmax_minus_inf_mask")
     + tuple(f"tests/test_tensor_ops.py::test_softmax_and_log_softmax_match_torch_on_inf_and_nan_rows[{d}-softmax-{t}]"
             for d in (-1, 0) for t in ("float32", "float64"))),
    ("log_softmax", 1, "litetorch/ops/softmax.py", "log_softmax",
     "log_softmax: x - max - log(sum exp(x - max)), and its backward",
     "never take the log of an underflowed 0: out = shifted - log(sum(exp(shifted))); backward g - exp(out) * sum(g)",
     _ops("log_softmax_last_dim", "log_softmax_dim1", "log_softmax_extreme_1e4", "log_softmax_minus_inf_mask")
     + tuple(f"tests/test_tensor_ops.py::test_softmax_and_log_softmax_match_torch_on_inf_and_nan_rows[{d}-log_softmax-{t}]"
             for d in (-1, 0) for t in ("float32", "float64"))),
    # ---- lesson 02: modules and optimizers ------------------------------------------------------------
    ("registration", 2, "litetorch/nn/module.py", "registration",
     "Module.__setattr__: register Parameters and sub-Modules under the attribute's name",
     "Parameter -> self._parameters[name], Module -> self._modules[name] (self._forget(name, keep=...) keeps the "
     "order); then object.__setattr__",
     (f"{_N}test_parameters_register_on_assignment", f"{_N}test_replacing_a_module_or_parameter_keeps_its_place",
      f"{_N}test_module_before_super_init_fails_clearly", f"{_N}test_state_dict_names_and_order_equal_torch",
      f"{_N}test_tied_parameters_appear_once")),
    ("linear", 2, "litetorch/ops/matmul.py", "linear",
     "linear(x, W, b) = x W^T + b as one op, with its backward",
     "out = X @ W.T (+ b); dx = g @ W, dW = g2^T @ X2 with every leading dim flattened into rows, db = sum of g's rows",
     _layers("linear", "linear_nobias")),
    ("cross_entropy", 2, "litetorch/nn/functional.py", "cross_entropy loss",
     "the loss of cross_entropy: -log p[target], label smoothing, ignore_index, the three reductions",
     "logp = log_softmax(logits); nll = -logp[rows, targets]; smoothing mixes in -mean(logp); "
     "ops.where(valid, loss, 0.0); 'mean' divides by the number of kept rows",
     _layers("ce_mean", "ce_sum", "ce_none", "ce_ignore", "ce_smooth", "ce_ignore_smooth", "ce_nd", "ce_extreme")
     + (f"{_N}test_cross_entropy_all_ignored_is_nan_like_torch", f"{_N}test_cross_entropy_gradient_by_finite_differences")),
    ("sgd", 2, "litetorch/optim/sgd.py", "sgd",
     "SGD's update: weight decay, momentum with dampening, Nesterov",
     "g += wd * p; buf = g on the first step, else mu * buf + (1 - dampening) * g; g = g + mu * buf (Nesterov) "
     "or buf; p -= lr * g",
     tuple(f"{_O}test_50_steps_on_an_mlp_match_torch_optim[{n}-{t}]"
           for n in ("sgd", "sgd_momentum_wd", "sgd_nesterov") for t in ("f64", "f32"))),
    ("adam", 2, "litetorch/optim/adam.py", "adamw",
     "Adam/AdamW's update: the two moments, bias correction, decoupled or L2 weight decay, amsgrad",
     "m += (1 - b1)(g - m); v = b2 v + (1 - b2) g^2; p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps); "
     "Python floats only",
     tuple(f"{_O}test_50_steps_on_an_mlp_match_torch_optim[{n}-{t}]"
           for n in ("adam", "adam_l2_amsgrad", "adamw", "adamw_amsgrad") for t in ("f64", "f32"))
     + (f"{_O}test_adamw_decoupled_decay_differs_from_adam_l2", f"{_O}test_optimizer_state_stays_in_the_parameter_dtype")),
    ("clip_grad_norm", 2, "litetorch/optim/clip.py", "clip",
     "clip_grad_norm_: scale every gradient in place so that their global norm is at most max_norm",
     "total = norm of the per-tensor norms (_vector_norm); coef = min(max_norm / (total + 1e-6), 1); p.grad *= coef; "
     "return the norm before clipping",
     tuple(f"{_O}test_clip_grad_norm_matches_torch[{n}-{t}]" for n in ("clip_l2", "clip_l2_noop", "clip_inf")
           for t in ("f64", "f32"))
     + (f"{_O}test_clip_grad_norm_caps_the_global_norm_and_keeps_direction", f"{_O}test_clip_grad_norm_edge_cases")),
    ("cosine", 2, "litetorch/optim/lr_scheduler.py", "cosine",
     "warmup_cosine_lambda: linear warmup, then half a cosine from 1 down to min_lr_ratio",
     "step < warmup: step / warmup; then progress = (step - warmup) / (total - warmup), capped at 1; "
     "0.5 (1 + cos(pi progress)) rescaled to [min_lr_ratio, 1]",
     (f"{_O}test_warmup_cosine_equals_hf_transformers_at_every_step[cosine]",
      f"{_O}test_warmup_cosine_equals_hf_transformers_at_every_step[cosine_min_lr]",
      f"{_O}test_50_steps_on_an_mlp_match_torch_optim[adamw_clip_cosine-f64]",
      f"{_O}test_50_steps_on_an_mlp_match_torch_optim[adamw_clip_cosine-f32]")),
    # ---- lesson 03: attention -------------------------------------------------------------------------
    ("causal_mask", 3, "litetorch/nn/sdpa.py", "causal_mask",
     "causal_mask(Tq, Tk): the bool mask aligned to the bottom-right corner (query i is position Tk - Tq + i)",
     "key j is visible to query i iff j <= i + (Tk - Tq): compare np.arange(Tk)[None, :] with np.arange(Tq)[:, None]",
     (f"{_A}test_causal_mask_is_the_lower_triangle_aligned_bottom_right",)),
    ("sdpa", 3, "litetorch/nn/sdpa.py", "sdpa",
     "scaled_dot_product_attention's forward: scale, scores, mask, softmax, dropout, weighted sum",
     "_check_qkv; qs = q * scale; scores = qs @ k^T; _mask_scores; p = _safe_softmax; out = p @ v; "
     "Tensor._make(out, (q, k, v), lambda g: _sdpa_backward(g, *saved), ...)",
     (f"{_A}test_sdpa_from_scratch_formula", f"{_A}test_causal_equals_torch_is_causal_when_tq_equals_tk[float64]",
      f"{_A}test_causal_equals_torch_is_causal_when_tq_equals_tk[float32]", f"{_A}test_decode_step_sees_every_cached_key",
      f"{_A}test_causal_with_more_queries_than_keys_masks_leading_rows", f"{_A}test_extreme_scores_stay_finite",
      f"{_A}test_float32_stays_float32_and_scale_is_a_python_float", f"{_A}test_dropout_on_attention_weights")),
    ("sdpa_backward", 3, "litetorch/nn/sdpa.py", "backward",
     "the backward of attention: dv, then the softmax Jacobian-vector product, then dq and dk (and the float mask)",
     "dv = P'^T g; dP = (g v^T) * keep; dS = P (dP - rowsum(dP P)); dq = dS k * scale; dk = dS^T qs; "
     "unbroadcast the shared kv heads",
     _SDPA_MHA + (f"{_A}test_fully_masked_row_gives_zeros_like_torch[bool]",
                  f"{_A}test_fully_masked_row_gives_zeros_like_torch[float]")),
    # ---- lesson 04: multi-head attention, GQA and MQA -------------------------------------------------
    ("repeat_kv", 4, "litetorch/nn/attention.py", "repeat_kv",
     "repeat_kv: [B, Hkv, T, Dh] -> [B, Hkv * n_rep, T, Dh], kv head j serving query heads j*n_rep ... j*n_rep + n_rep - 1",
     "reshape to [B, Hkv, 1, T, Dh], expand the 1 to n_rep (a view), then reshape to [B, Hkv * n_rep, T, Dh]",
     (f"{_A}test_repeat_kv_is_repeat_interleave",)),
    ("gqa", 4, "litetorch/nn/sdpa.py", "gqa head groups",
     "the GQA head mapping: group q's H heads as [Hkv, G] and give k, v a size-1 group axis that broadcasts",
     "q [.., H, Tq, Dh] -> [.., Hkv, H // Hkv, Tq, Dh]; k, v [.., Hkv, Tk, D] -> [.., Hkv, 1, Tk, D] (no copy)",
     _SDPA_GQA + (f"{_A}test_gqa_equals_attention_over_repeated_kv_heads",
                  f"{_A}test_sdpa_hand_backward_equals_autograd_of_the_composed_ops[0.0]",
                  f"{_A}test_sdpa_hand_backward_equals_autograd_of_the_composed_ops[0.4]")),
    ("attention_project", 4, "litetorch/nn/attention.py", "project",
     "MultiHeadAttention.project: one qkv_proj matmul, split into q, k, v heads, RoPE on q and k",
     "qkv_proj(x) -> reshape [B, T, H + 2 Hkv, Dh] -> transpose(1, 2); ops.split into [H + Hkv, Hkv] heads; "
     "rope(qk, offset=past); split qk into [H, Hkv]",
     (f"{_A}test_attention_padding_mask_combined_with_causal", f"{_A}test_gqa_with_one_kv_head_is_mqa_and_kv_projection_sizes")),
    # ---- lesson 05: normalization ---------------------------------------------------------------------
    ("rms_norm", 5, "litetorch/nn/functional.py", "rms_norm",
     "rms_norm in HF Llama's order (normalize, cast back, scale), as one op with its backward",
     "r = 1 / sqrt(mean(h^2) + eps); n = (h r) in x's dtype; out = n * weight; "
     "dx = r (gn - n * mean(gn n)), dweight = sum over rows of g n",
     (f"{_B}test_rmsnorm_matches_torch[1.0-float64]", f"{_B}test_rmsnorm_matches_torch[1.0-float32]",
      f"{_B}test_rmsnorm_matches_torch[10000.0-float32]", f"{_B}test_rmsnorm_matches_torch[0.0001-float64]")
     + _layers("rms_norm", "rms_norm_default_eps", "rms_norm_no_weight")
     + (f"{_N}test_rms_norm_matches_hf_llama_order_in_float16",
        f"{_N}test_rms_norm_backward_passes_finite_differences[shape0-normalized0]")),
    ("layer_norm", 5, "litetorch/nn/functional.py", "layer_norm",
     "layer_norm from Tensor ops: subtract the mean, divide by sqrt(biased variance + eps), scale and shift",
     "mu = x.mean(dims, keepdim); xc = x - mu; var = (xc * xc).mean(dims, keepdim); h = xc * (var + eps).rsqrt()",
     _layers("layer_norm", "layer_norm_2d")),
    # ---- lesson 06: SwiGLU ----------------------------------------------------------------------------
    ("silu", 6, "litetorch/ops/unary.py", "silu",
     "silu(x) = x * sigmoid(x), with its derivative",
     "s = _sigmoid(x.data); out = x s; d/dx = s + x s (1 - s)",
     _ops("silu") + _layers("silu")),
    ("swiglu", 6, "litetorch/nn/ffn.py", "SwiGLU.forward",
     "SwiGLU.forward: down(silu(gate) * up) with gate and up from the one gate_up_proj",
     "gate, up = ops.split(self.gate_up_proj(x), [hidden, hidden], dim=-1); return self.down_proj(F.silu(gate) * up)",
     (f"{_B}test_swiglu_matches_hf_llama_mlp[float64]", f"{_B}test_swiglu_matches_hf_llama_mlp[float32]")),
    # ---- lesson 07: positions -------------------------------------------------------------------------
    ("sinusoidal", 7, "litetorch/nn/positional.py", "sinusoidal",
     "the sinusoidal table of 'Attention Is All You Need': sin in even columns, cos in odd ones",
     "angles = p * base^(-2i / C) in float64; pe[:, 0::2] = sin, pe[:, 1::2] = cos (an odd C has one more sin column)",
     (f"{_R}test_sinusoidal_table_matches_the_paper_formula", f"{_R}test_sinusoidal_matches_the_pytorch_tutorial",
      f"{_R}test_sinusoidal_module_adds_the_table_at_an_offset")),
    ("rope_frequencies", 7, "litetorch/nn/rope.py", "rope_frequencies",
     "RoPE's frequencies theta_i = base^(-2i / Dh), the same on every CPU",
     "exponent 2i / Dh rounded to dtype (as HF), the power in float64, rounded once to dtype",
     tuple(f"{_R}test_rope_frequencies_are_the_nearest_float32_to_the_true_values[{c}]"
           for c in ("32-10000.0", "64-100000.0", "128-500000.0"))),
    ("rotate_pairs", 7, "litetorch/nn/rope.py", "rotate_pairs",
     "rotate_pairs: (a, b) -> (-b, a) for every pair, in the half-split and the interleaved layout",
     "half: concatenate [-x2, x1] of the two halves; interleaved: out[..., 0::2] = -x[..., 1::2], out[..., 1::2] = x[..., 0::2]",
     (f"{_R}test_rotate_pairs_layouts",)),
    ("apply_rope", 7, "litetorch/nn/rope.py", "rope rotation",
     "apply_rope: x cos + rotate_pairs(x) sin, with checks, as one op with its backward",
     "check dtypes and that cos/sin broadcast to x; backward: g cos - rotate_pairs(g sin) (the rotation's transpose)",
     (f"{_R}test_both_pairings_equal_the_complex_number_form_float64[half]",
      f"{_R}test_both_pairings_equal_the_complex_number_form_float64[interleaved]",
      f"{_R}test_rope_gradient_by_finite_differences", f"{_R}test_rope_scores_depend_only_on_relative_position[half]",
      f"{_A}test_attention_matches_hf_llama_attention_float32[GQA-smollm2-shape]",
      f"{_A}test_attention_matches_torch_reference_float64[GQA]")),
    ("unpermute_qk", 7, "litetorch/nn/rope.py", "permutation",
     "unpermute_qk: GGUF's interleaved row order of W_q / W_k back to HF's half-split order, per head",
     "reshape rows to [n_heads, Dh / 2, 2, ...], swap axes 1 and 2, reshape back",
     (f"{_R}test_permute_and_unpermute_are_inverse", f"{_R}test_unpermute_matches_the_gguf_formula_of_design_md",
      f"{_R}test_rope_interleaved_on_gguf_weights_equals_rope_half_on_unpermuted[float64]")),
    # ---- lesson 08: the decoder block -----------------------------------------------------------------
    ("decoder_block", 8, "litetorch/nn/block.py", "",
     "DecoderBlock.forward: pre-norm (Llama) and post-norm (2017) residual blocks",
     "pre-norm: x = x + attn(norm1(x)); x = x + mlp(norm2(x)). post-norm: x = norm1(x + attn(x)); norm2(x + mlp(x))",
     (f"{_B}test_llama_block_matches_hf_decoder_layer_float32[GQA]", f"{_B}test_llama_block_matches_torch_reference_float64[MQA]",
      f"{_B}test_post_norm_block_matches_transformer_encoder_layer[float64-relu]",
      f"{_B}test_post_norm_block_matches_transformer_encoder_layer[float32-gelu]")),
    # ---- lesson 09: the KV cache ----------------------------------------------------------------------
    ("kv_append", 9, "litetorch/nn/kv_cache.py", "append",
     "KVCache.append: check, write the new rows in place, return views of everything cached",
     "self._check(kd, vd) first; write rows len .. len + T_new of self.k and self.v; advance self.length; "
     "return self._view(...) for k and v",
     ("tests/test_kv_cache.py::test_append_writes_in_place_and_returns_views_of_the_buffer",
      "tests/test_kv_cache.py::test_gradient_flows_to_the_new_rows_only",
      "tests/test_kv_cache.py::test_bad_append_raises_and_leaves_cache_unchanged[heads]",
      "tests/test_kv_cache.py::test_bad_append_raises_and_leaves_cache_unchanged[overflow]",
      f"{_B}test_cached_decode_equals_full_forward[GQA]", f"{_B}test_cached_decode_equals_full_forward[post-norm-MHA]")),
    # ---- lesson 10: what is inside a model file -------------------------------------------------------
    ("q8_0", 10, "litetorch/io/quants.py", "Q8_0",
     "dequantize_q8_0: an fp16 scale and 32 signed bytes per block",
     "d = _fp16(blocks[:, 0:2]); q = blocks[:, 2:34].view(np.int8); w = d * q in float32",
     ("tests/test_gguf.py::test_block_dequantizers_are_bit_identical_to_gguf_py_on_random_blocks[Q8_0]",)),
    ("nibbles", 10, "litetorch/io/quants.py", "nibbles",
     "_unpack_nibbles: 16 bytes -> 32 four-bit numbers, low nibbles first",
     "low = qs & 0x0F are weights 0..15, high = qs >> 4 are weights 16..31: concatenate along axis 1",
     ("tests/test_gguf.py::test_block_dequantizers_are_bit_identical_to_gguf_py_on_random_blocks[Q4_0]",
      "tests/test_gguf.py::test_block_dequantizers_are_bit_identical_to_gguf_py_on_random_blocks[Q5_0]")),
    ("q4_1", 10, "litetorch/io/quants.py", "Q4_1",
     "dequantize_q4_1: w = d * q + m from an fp16 step, an fp16 minimum and 16 bytes of nibbles",
     "d = bytes 0..1, m = bytes 2..3 (both fp16), q = _unpack_nibbles(bytes 4..19) as float32",
     ("tests/test_gguf.py::test_block_dequantizers_are_bit_identical_to_gguf_py_on_random_blocks[Q4_1]",)),
    # ---- lesson 14: the generation loop ---------------------------------------------------------------
    ("generation_loop", 14, "litetorch/generation.py", "loop",
     "the generation loop: prefill once, then sample, stop on EOS / stop strings / budget, decode one token",
     "prefill through cache.extend (reuse the common prefix, at least 1 token recomputed); loop: sampler(logits, seqs), "
     "_Row.add, yield new_text, cache.extend([[last]])",
     tuple(f"{_G}{t}" for t in (
         "test_cached_greedy_equals_uncached_greedy[Hello]", "test_cached_greedy_equals_uncached_greedy[prompt3]",
         "test_each_decode_step_forwards_one_token", "test_uncached_generation_recomputes_the_whole_sequence",
         "test_eos_ends_generation_and_is_not_in_the_text",
         "test_budget_ends_generation_with_length", "test_stop_string_ends_generation_and_is_not_included",
         "test_streaming_never_yields_a_broken_character",
         "test_cached_system_prompt_gives_the_same_tokens_and_skips_the_prefix"))),
    # ---- lesson 15: sampling --------------------------------------------------------------------------
    ("repetition_penalty", 15, "litetorch/sampling.py", "repetition_penalty",
     "repetition_penalty: push down every token already seen, once per token (CTRL)",
     "for each row: ids = np.unique(previous ids) below V; logit / penalty where > 0, * penalty where < 0",
     _sampling("repetition_penalty", (0.5, 1.3, 2.0))
     + ("tests/test_sampling.py::test_repetition_penalty_divides_positive_multiplies_negative_once_per_token",)),
    ("top_k", 15, "litetorch/sampling.py", "top_k",
     "top_k_filter: keep the k largest logits (and every tie with the k-th), -inf for the rest",
     "kth = np.sort(x, axis=-1)[..., -k, None]; np.where(x < kth, -inf, x); k = 0 or k >= V keeps everything",
     _sampling("top_k", (1, 3, 10, 100))
     + ("tests/test_sampling.py::test_top_k_keeps_ties_with_the_kth_value",
        "tests/test_sampling.py::test_top_k_larger_than_vocab_or_zero_keeps_everything")),
    ("top_p", 15, "litetorch/sampling.py", "top_p",
     "top_p_filter: nucleus sampling, keep the most likely tokens until their mass reaches p",
     "sort least likely first; cumulative softmax mass (accumulated in float64); remove where mass <= 1 - p, "
     "never the top token; put_along_axis back",
     _sampling("top_p", (0.0, 0.1, 0.5, 0.9, 0.99))
     + ("tests/test_sampling.py::test_top_p_one_keeps_everything_and_zero_keeps_the_top_token",)),
    ("min_p", 15, "litetorch/sampling.py", "min_p",
     "min_p_filter: keep tokens whose probability is at least min_p times the top token's",
     "probs = softmax(x); threshold = min_p * probs.max(axis=-1, keepdims=True); np.where(probs < threshold, -inf, x)",
     _sampling("min_p", (0.0, 0.05, 0.5, 1.0))
     + ("tests/test_sampling.py::test_min_p_one_keeps_only_the_tied_top_tokens",)),
    ("sample", 15, "litetorch/sampling.py", "sample",
     "sample: draw one token per row from softmax(logits) by inverse-CDF sampling",
     "probs in float64; cdf = cumsum / last; u = rng.random((B, 1)); id = number of cdf entries <= u",
     ("tests/test_sampling.py::test_a_minus_inf_token_is_never_drawn",
      "tests/test_sampling.py::test_a_batch_draw_equals_row_by_row_draws_with_the_same_seed",
      "tests/test_sampling.py::test_same_seed_same_tokens_different_seed_different_tokens",
      "tests/test_generation.py::test_same_seed_same_tokens_different_seed_different_tokens",
      "tests/test_sampling.py::test_samples_follow_the_processed_distribution_chi_square[{}]",
      "tests/test_sampling.py::test_samples_follow_the_processed_distribution_chi_square[{'top_p': 0.8}]",
      "tests/test_sampling.py::test_chi_square_detects_the_wrong_distribution")),
    # ---- lesson 18: looped transformers ---------------------------------------------------------------
    ("gated_loop_block", 18, "litetorch/nn/looped.py", "gated block",
     "LoopBlock.forward: one iteration of the shared block, plain or with per-channel gates and the running mean G",
     "A = attention(norm(x)); h = x + a A + (1 - a) G; F = mlp(norm(h)); h = h + b F + (1 - b) G; "
     "G += ((A + F) / 2 - G) / r",
     ("tests/test_looplm.py::test_one_loop_with_saturated_gates_is_a_plain_block",
      "tests/test_looplm.py::test_forward_backward_match_torch_float64[loop_count=2,gating=True]",
      "tests/test_looplm.py::test_forward_backward_match_torch_float64[loop_count=3,input_injection=True,n_before=1]",
      "tests/test_looplm.py::test_r_loops_equal_r_unrolled_blocks_with_the_same_weights")),
    # ---- lesson 21: ternary weights -------------------------------------------------------------------
    ("ste", 21, "litetorch/nn/bitlinear.py", "ste",
     "ste(x, q): the straight-through estimator, the value of q with the gradient of the identity",
     "the value q exactly, in x's dtype (torch's x + stopgrad(q - x) rounds once); a backward that passes g to x "
     "unchanged: Tensor._make(q, (x,), backward, 'ste')",
     ("tests/test_looplm.py::test_straight_through_estimator_has_the_value_of_q_and_the_gradient_of_x",)),
    ("activation_quant", 21, "litetorch/nn/bitlinear.py", "activation_quant",
     "activation_quant: per-token absmax quantization to signed 8-bit integers, returned dequantized",
     "scale = 127 / max|x| per row (at least 1e-5 in the max); clip(round(x scale), -128, 127) / scale, in x's dtype",
     ("tests/test_looplm.py::test_activation_quant_rounds_half_to_even_per_token",)),
    ("weight_quant", 21, "litetorch/nn/bitlinear.py", "weight_quant",
     "weight_quant: absmean ternary quantization, returned dequantized",
     "scale = 1 / max(mean|W|, 1e-5); clip(round(W scale), -1, 1) / scale, in W's dtype",
     ("tests/test_looplm.py::test_weight_quant_rounds_half_to_even_to_three_values",)),
    ("bitlinear", 21, "litetorch/nn/bitlinear.py", "BitLinear.forward",
     "BitLinear.forward: RMSNorm without weight, 8-bit activations, ternary weights (a scale per stacked part), linear",
     "x_q = ste(x_n, activation_quant(x_n.data)); w_q = ste(W, concatenation of weight_quant per out_splits block); "
     "F.linear(x_q, w_q, bias)",
     ("tests/test_looplm.py::test_bitlinear_matches_torch_ste[float64-1e-12]",
      "tests/test_looplm.py::test_bitlinear_matches_torch_ste[float32-1e-05]",
      "tests/test_looplm.py::test_forward_backward_match_torch_float64[loop_count=2,bitlinear=True]",
      "tests/test_looplm_files.py::test_packed_bitlinear_equals_bitlinear_exactly")),
]

EXERCISES: tuple[Exercise, ...] = tuple(
    Exercise(number, name, lesson, path, label, task, hint, tuple(tests))
    for number, (name, lesson, path, label, task, hint, tests) in enumerate(_LIST, start=1))


def get(key) -> Exercise:
    """An exercise by number (int, or a string of digits) or by name."""
    for ex in EXERCISES:
        if str(key) in (str(ex.number), ex.name):
            return ex
    raise ConfigError(f"no exercise {key!r}: give a number 1..{len(EXERCISES)} or a name "
                      f"(`litetorch exercises list` shows them)")


def for_lesson(lesson: int) -> list[Exercise]:
    return [ex for ex in EXERCISES if ex.lesson == lesson]
