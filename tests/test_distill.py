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


def test_the_configured_alpha_and_temperature_reach_the_loss_each_training_step_returns(
        tmp_path, fixture_data_dir, monkeypatch, shared_reference):
    """method=kd with alpha=0.3, temperature=2 and min_lr set: every training step of the run returns (and logs)
    0.3 * CE + 0.7 * 2^2 * KL(teacher || student) at temperature 2, computed here by hand from the step's batch, the
    student as it is at that step and the trained reference loaded from its checkpoint; the student's schedule
    floors at method.min_lr."""
    import torch.nn.functional as F
    from conftest import TINY

    from lit_inheritune.config import compose
    from lit_inheritune.methods import reference_dir
    from lit_inheritune.models import load_checkpoint
    from lit_inheritune.run import run

    alpha, t, min_lr = 0.3, 2.0, 2e-4
    cfg = shared_reference(compose([*TINY, "method=kd", "model.n_layer=4", "method.n_layer=2", f"method.alpha={alpha}",
                                    f"method.temperature={t}", f"method.min_lr={min_lr}", "train.max_steps=10",
                                    "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}",
                                    f"data.data_dir={fixture_data_dir}"]))
    teacher = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt").eval()
    steps = []
    training_step = DistillationLM.training_step

    def checked(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad():
            student, reference = self.model(x)["logits"], teacher(x)["logits"]
            V = student.size(-1)
            ce = F.cross_entropy(student.reshape(-1, V), y.reshape(-1))
            p_t = (reference / t).softmax(-1)
            kl = (p_t * (p_t.log() - (student / t).log_softmax(-1))).sum(-1).mean() * t * t
            floor = self.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].floor
        loss = training_step(self, batch, batch_idx)
        steps.append((loss.item(), (alpha * ce + (1 - alpha) * kl).item(), (0.6 * ce + 0.4 * kl / t / t).item(),
                      floor))
        return loss

    monkeypatch.setattr(DistillationLM, "training_step", checked)
    [result] = run(cfg)
    assert result["stage"] == "student-L2" and len(steps) == 10
    for loss, want, default, floor in steps:
        assert loss == pytest.approx(want, rel=1e-5)
        assert default != pytest.approx(want, rel=1e-3)  # the premise: the defaults' loss is another number
        assert floor == pytest.approx(min_lr / cfg.optim.lr)
