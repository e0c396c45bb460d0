"""Knowledge distillation (PAPER.md section 4): a student trained on 0.6 * CE + 0.4 * KL(teacher || student).

The student is an ordinary `CausalLM` (same validation: the student's CE, same checkpoints); the frozen
teacher rides along unregistered, so it has no gradient, no optimizer state and is not saved.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lit_inheritune.errors import DivergenceError
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
            alpha: float = 0.6, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits (B, T, V), targets (B, T) -> (loss, ce, kl), each a scalar mean over tokens.

    loss = alpha * CE(student, targets) + (1 - alpha) * temperature^2 * KL(p_teacher || p_student), both
    distributions softened by `temperature` (Hinton et al.; the t^2 keeps gradient scale, 1 at t = 1).
    """
    V = student_logits.size(-1)
    s = student_logits.reshape(-1, V).float()  # (N, V)
    t = teacher_logits.reshape(-1, V).float()
    ce = F.cross_entropy(s, targets.reshape(-1))
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                  log_target=True, reduction="batchmean") * temperature**2
    return alpha * ce + (1 - alpha) * kl, ce, kl


class DistillationLM(CausalLM):
    def __init__(self, student: torch.nn.Module, teacher: torch.nn.Module, optim: OptimConfig, alpha: float = 0.6,
                 temperature: float = 1.0, meta: dict | None = None):
        super().__init__(student, optim, {**(meta or {}), "alpha": alpha, "temperature": temperature})
        if teacher.config.vocab_size != student.config.vocab_size:
            raise ValueError(f"teacher vocab {teacher.config.vocab_size} != student vocab {student.config.vocab_size}")
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "teacher", teacher)  # not a submodule: not saved, not optimised
        self.alpha, self.temperature = alpha, temperature

    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    def training_step(self, batch, batch_idx):
        x, y = batch
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16,
                                             enabled=self.device.type == "cuda"):
            teacher_logits = self.teacher(x)["logits"]
        loss, ce, kl = kd_loss(self.model(x)["logits"], teacher_logits, y, self.alpha, self.temperature)
        if not torch.isfinite(loss):
            raise DivergenceError(f"training loss is {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({"train/ce": ce, "train/kl": kl})
        return loss
