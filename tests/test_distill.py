import math

import pytest
import torch

from lit_inheritune.model import GPT, GPTConfig
from lit_inheritune.training.distill import DistillationLM, kd_loss
from lit_inheritune.training.optim import OptimConfig


def test_kd_loss_matches_a_hand_computed_value():
    student = torch.log(torch.tensor([[[0.5, 0.25, 0.25]]]))  # (1, 1, 3): softmax gives these probs
    teacher = torch.log(torch.tensor([[[0.25, 0.5, 0.25]]]))
    target = torch.tensor([[1]])
    loss, ce, kl = kd_loss(student, teacher, target, alpha=0.6, temperature=1.0)
    expected_ce = -math.log(0.25)
    expected_kl = 0.25 * math.log(0.25 / 0.5) + 0.5 * math.log(0.5 / 0.25) + 0.25 * math.log(1.0)
    assert ce.item() == pytest.approx(expected_ce)
    assert kl.item() == pytest.approx(expected_kl)
    assert loss.item() == pytest.approx(0.6 * expected_ce + 0.4 * expected_kl)


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
