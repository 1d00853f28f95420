"""Stage-1 training: CE + w tau^2 KL(teacher || student) + the annealed loop-scale penalty.

Claims:
- The loss and every gradient equal the torch twin's (tests/reference/torch_looplm.py) in float64
  (<= 1e-10): with Ouro's exit gate (expectation over exit steps, entropy bonus, penalty) and without
  it (the last step), for a hybrid, hyper-connected student.
- The penalty weight anneals as stated: 0 at the first step, the full weight at the last (linear,
  cosine), or constant; the KL term is 0 when the student is the teacher.
- fit(teacher=...) accepts a LoopLM, a Llama and a checkpoint path; distillation pulls the student
  towards the teacher (its KL to the teacher ends lower than the same run's without the term).
- Bad arguments raise ConfigError before any step runs.
"""
import sys
from pathlib import Path

import numpy as np
import pytest

import litetorch as lt
from litetorch.errors import ConfigError
from litetorch.models.config import LlamaConfig
from litetorch.models.llama import Llama
from litetorch.models.looplm_files import save_npz
from litetorch.models.looplm_train import fit, looplm_loss, penalty_weight, teacher_logits
from litetorch.nn.looped import kl_divergence
from litetorch.testing import named_grads

from _torch_ref import requires_torch, torch
from test_looplm_hybrid import ids_for, make

if torch is not None:
    sys.path.insert(0, str(Path(__file__).parent / "reference"))
    import torch_looplm as ref
    from test_looplm import twin

CASES = {
    "gate-mhc-deltanet": dict(n_before=1, max_loops=3, exit="gate", exit_threshold=0.5, hyper="mhc", hyper_streams=2,
                              layer_types=["deltanet", "attention"]),
    "last-step-gated-moe": dict(n_after=1, loop_count=2, gating=True, mlp_types=["dense", "moe"]),
}


@requires_torch
@pytest.mark.parametrize("name", list(CASES))
def test_distillation_loss_and_gradients_equal_torch_float64(name):
    m = make(**CASES[name])
    ids = ids_for(m, T=6)
    r = np.random.default_rng(7)
    tgt = r.integers(0, m.config.vocab_size, ids.shape)
    tgt[0, :2] = -100
    teacher = r.standard_normal(ids.shape + (m.config.vocab_size,)) * 2.0
    steps = m.config.exit == "gate"
    lam = penalty_weight(0.05, step=30, steps=100, schedule="cosine")
    kw = dict(beta=0.03, compute_penalty=lam, temperature=2.0)
    loss = looplm_loss(m.run(ids, steps=steps), tgt, teacher_logits=teacher, distill_weight=0.7, **kw)
    loss.backward()
    tm = twin(m)
    tl, _, tsteps, tprobs = tm(torch.from_numpy(ids), steps=steps)
    tloss = ref.looplm_loss(tl, tsteps, tprobs, torch.from_numpy(tgt), beta=0.03, compute_penalty=lam,
                            teacher=torch.from_numpy(teacher), tau=2.0, distill_weight=0.7)
    tloss.backward()
    assert abs(loss.item() - tloss.item()) <= 1e-10
    grads = dict(tm.named_parameters())
    worst = max(np.abs(g - grads[k].grad.numpy()).max() for k, g in named_grads(m).items())
    print(f"{name}: loss {loss.item():.6f}, |loss error| {abs(loss.item() - tloss.item()):.1e}, worst grad {worst:.1e}")
    assert worst <= 1e-10
    # the distillation term is really in there: without it the loss changes
    assert abs(looplm_loss(m.run(ids, steps=steps), tgt, **kw).item() - loss.item()) > 1e-3


def test_the_kl_term_vanishes_when_the_student_is_the_teacher():
    m = make(loop_count=2)
    ids = ids_for(m)
    tgt = ids_for(m, seed=3)
    out = m.run(ids)
    same = looplm_loss(out, tgt, teacher_logits=out.logits.data, distill_weight=5.0, temperature=3.0).item()
    assert abs(same - looplm_loss(out, tgt).item()) <= 1e-12


def test_penalty_weight_anneals_from_zero_to_full():
    for schedule in ("linear", "cosine"):
        assert penalty_weight(0.2, 0, 11, schedule) == 0.0
        assert penalty_weight(0.2, 10, 11, schedule) == pytest.approx(0.2, abs=1e-15)
        assert penalty_weight(0.2, 5, 11, schedule) == pytest.approx(0.1, abs=1e-15)  # the midpoint
    assert penalty_weight(0.2, 2, 11, "linear") == pytest.approx(0.04, abs=1e-15)
    assert penalty_weight(0.2, 2, 11, "cosine") < penalty_weight(0.2, 2, 11, "linear")  # cosine starts slower
    assert penalty_weight(0.2, 0, 11, "constant") == 0.2
    assert penalty_weight(0.2, 3, 11, lambda s, n: 0.5) == 0.1


def _batches(V, seed=0, B=4, T=8):
    g = np.random.default_rng(seed)

    def batch():
        ids = g.integers(0, V, (B, T + 1))
        return ids[:, :-1], ids[:, 1:]
    return batch


def _kl_to(teacher, student, ids):
    return float(kl_divergence(teacher_logits(teacher, ids), teacher_logits(student, ids)).mean())


def test_fit_distils_a_teacher_into_the_student():
    """Same seed, same batches: the run with the KL term ends closer to the teacher (in KL) than the run without."""
    teacher = make(seed=5, dtype=np.float32, n_before=2, n_after=2, loop_count=1)
    ids = ids_for(teacher, B=4, T=8, seed=11)
    kls = {}
    for w in (0.0, 5.0):
        student = make(seed=1, dtype=np.float32, max_loops=3, exit="gate", exit_threshold=0.5)
        log = fit(student, _batches(23), 40, lr=1e-2, teacher=teacher, distill_kl_weight=w, distill_temperature=1.0,
                  loop_scale_penalty=0.01, penalty_schedule="linear")
        assert log["penalty_weights"][0] == 0.0 and log["penalty_weights"][-1] == pytest.approx(0.01)
        kls[w] = _kl_to(teacher, student, ids)
    print("KL(teacher || student) without / with distillation:", kls)
    assert kls[5.0] < 0.6 * kls[0.0]


def test_fit_accepts_a_llama_and_a_checkpoint_path_as_teacher(tmp_path):
    cfg = LlamaConfig(vocab_size=23, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=32)
    lt.manual_seed(0)
    llama = Llama(cfg)
    loop_teacher = make(seed=3, dtype=np.float32, loop_count=1)
    save_npz(loop_teacher, tmp_path / "teacher.npz")
    for teacher in (llama, tmp_path / "teacher.npz", str(tmp_path / "teacher.npz")):
        student = make(dtype=np.float32, loop_count=2)
        log = fit(student, _batches(23), 2, teacher=teacher, distill_kl_weight=0.5, distill_temperature=2.0)
        assert len(log["losses"]) == 2 and all(np.isfinite(log["losses"]))


def test_bad_distillation_arguments_raise_before_any_step():
    student = make(dtype=np.float32, loop_count=2)
    other = make(dtype=np.float32, vocab_size=30, loop_count=1)
    before = {k: v.copy() for k, v in student.state_dict().items()}
    cases = [(dict(teacher=other, distill_kl_weight=1.0), "vocabulary"),
             (dict(distill_kl_weight=1.0), "needs a teacher"),
             (dict(loop_scale_penalty=0.1), "exit gate"),
             (dict(teacher=other, distill_temperature=0.0), "distill_temperature"),
             (dict(penalty_schedule="exponential"), "penalty_schedule"),
             (dict(teacher=42), "teacher must be")]
    for kw, match in cases:
        with pytest.raises(ConfigError, match=match):
            fit(student, _batches(23), 3, **kw)
    with pytest.raises(FileNotFoundError):
        fit(student, _batches(23), 3, teacher="no/such/teacher.npz", distill_kl_weight=1.0)
    assert all(np.array_equal(v, before[k]) for k, v in student.state_dict().items())
