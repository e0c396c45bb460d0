import math

import pytest
import torch

from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.training.distill import DistillationLM, kd_loss
from lit_inheritune.training.optim import OptimConfig


def _softmax(logits, t):
    exps = [math.exp(v / t) for v in logits]
    return [e / sum(exps) for e in exps]


def _kd_loss_by_hand(student, teacher, targets, alpha, t):
    """The loss in plain Python, token by token: alpha * CE(student at temperature 1) + (1 - alpha) * t^2 *
    KL(p_teacher || p_student) with both softened by t, each averaged over tokens (PAPER.md section 3)."""
    ce = [-math.log(_softmax(s, 1.0)[y]) for s, y in zip(student, targets)]
    kl = [sum(p * math.log(p / q) for p, q in zip(_softmax(te, t), _softmax(s, t))) for s, te in zip(student, teacher)]
    ce, kl = sum(ce) / len(ce), t * t * sum(kl) / len(kl)
    return alpha * ce + (1 - alpha) * kl, ce, kl


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_loss_matches_an_independent_computation(temperature):
    # Unrelated distributions (not permutations of each other), so KL(t || s) != KL(s || t), over 2 x 2 tokens.
    student = [[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 3.0, -0.4], [1.5, -2.0, 0.3, 0.9], [-0.7, 0.0, 0.4, 2.2]]
    teacher = [[1.0, 1.5, 0.0, -0.5], [-0.5, 2.0, 0.3, 0.1], [0.0, 0.2, -1.1, 2.4], [0.6, 0.6, -0.3, 0.0]]
    targets = [1, 2, 0, 3]
    loss, ce, kl = kd_loss(torch.tensor(student).view(2, 2, 4), torch.tensor(teacher).view(2, 2, 4),
                           torch.tensor(targets).view(2, 2), alpha=0.6, temperature=temperature)
    want_loss, want_ce, want_kl = _kd_loss_by_hand(student, teacher, targets, 0.6, temperature)
    assert ce.item() == pytest.approx(want_ce, rel=1e-6)
    assert kl.item() == pytest.approx(want_kl, rel=1e-5)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    # The premise: here the direction of the KL matters far beyond the tolerance above.
    assert _kd_loss_by_hand(teacher, student, targets, 0.6, temperature)[2] != pytest.approx(want_kl, rel=1e-2)


def test_kd_loss_is_ce_at_alpha_one():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    y = torch.randint(0, 11, (2, 5))
    loss, ce, _ = kd_loss(s, t, y, alpha=1.0)
    assert torch.equal(loss, ce)
    assert ce.item() == pytest.approx(torch.nn.functional.cross_entropy(s.view(-1, 11), y.view(-1)).item())


def test_teacher_gets_no_gradient_no_optimizer_state_and_is_not_saved():
    torch.manual_seed(0)
    cfg = dict(n_head=2, n_embd=16, block_size=8, vocab_size=32)
    teacher, student = GPT(GPTConfig(n_layer=3, **cfg)), GPT(GPTConfig(n_layer=2, **cfg))
    module = DistillationLM(student, teacher, OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=1, decay_steps=10))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.randint(0, 32, (2, 8))
    module.training_step((x, x), 0).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    optimizer = module.configure_optimizers()["optimizer"]
    optimised = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in teacher.parameters()}
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(k.startswith("model.") for k in module.state_dict())
