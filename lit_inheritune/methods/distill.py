"""`method=kd` and `method=distilbert_kd` (PAPER.md sections 3-4): distillation from the reference as a frozen
teacher, loss alpha * CE + (1 - alpha) * KL at `temperature`; the student's val loss is its CE."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from lit_inheritune.errors import ConfigError
from lit_inheritune.methods.base import FromReference, Run, derived_stage, random_model, reference_identity
from lit_inheritune.methods.checks import check_attn_scale, positive


def distilbert_blocks(n_teacher: int, n_student: int) -> list[int]:
    """Teacher blocks a DistilBERT-style student starts from: every other block (0, 2, 4, ...), then, for students
    deeper than half the teacher, the blocks just before the last two (the paper's 16L student of a 24L teacher:
    0, 2, ..., 22, then 18..21)."""
    evens = list(range(0, n_teacher, 2))[:n_student]
    extra = n_student - len(evens)
    return evens + list(range(n_teacher - 2 - extra, n_teacher - 2))


@dataclass
class LogitKD(FromReference):
    """Logit distillation (Hinton): a random-init student of n_layer layers."""

    name: str = "kd"
    n_layer: int = MISSING
    alpha: float = 0.6  # the weight of the CE term
    temperature: float = 1.0
    # The student's lr floor; null = optim.min_lr. Its own key because `optim` also trains the teacher (the group's
    # reference) when it is not trained yet.
    min_lr: float | None = None

    def validate(self, run: Run) -> None:
        positive("method.n_layer", self.n_layer)
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"method.alpha={self.alpha} (the weight of the CE term) must lie in [0, 1]")
        if not self.temperature > 0:
            raise ConfigError(f"method.temperature={self.temperature} must be positive")
        lr = run.cfg.optim.lr
        if self.min_lr is not None and not 0 <= self.min_lr <= lr:
            raise ConfigError(f"method.min_lr={self.min_lr} (the student's lr floor) must lie between 0 and "
                              f"optim.lr={lr}")

    def student_blocks_of(self, run: Run) -> list[int] | None:
        """The teacher blocks the student starts from (None: random init)."""
        return None

    def stage(self, run):
        n, blocks = int(self.n_layer), self.student_blocks_of(run)
        init = f"teacher blocks {blocks}" if blocks else "random init"
        return derived_stage(run, f"student-L{n}", n, self.name, f"{init}, distilled", teacher=reference_identity(run))

    def build(self, run, reference):
        return random_model(run, int(self.n_layer))

    def module(self, run, model, reference, stage):
        from dataclasses import replace

        from lit_inheritune.training.distill import DistillationLM

        optim = run.optim(run.steps)
        if self.min_lr is not None:  # the student's own floor; cfg.optim is also the teacher's
            optim = replace(optim, min_lr=self.min_lr)
        return DistillationLM(model, reference, optim, alpha=self.alpha, temperature=self.temperature,
                              meta=run.meta(stage.name))


@dataclass
class DistilBertKD(LogitKD):
    """DistilBERT-style: the logit-KD loss, student blocks initialised from teacher blocks (`student_blocks`; null:
    every other block, then the blocks before the last two), with the token embedding."""

    name: str = "distilbert_kd"
    student_blocks: list[int] | None = None
    attn_scale: str = "position"  # of the student's blocks: their position's, or their teacher block's (source)

    def validate(self, run: Run) -> None:
        super().validate(run)
        k = run.depth
        blocks = self.student_blocks_of(run)
        missing = [b for b in blocks if not 0 <= b < k]
        if len(blocks) != self.n_layer or missing:
            raise ConfigError(f"method.student_blocks={blocks} must list {self.n_layer} blocks of the {k}-layer "
                              "teacher" + (f"; {missing} do not exist" if missing else ""))
        check_attn_scale(self.attn_scale)

    def student_blocks_of(self, run):
        return list(self.student_blocks) if self.student_blocks else distilbert_blocks(run.depth, int(self.n_layer))

    def build(self, run, reference):
        from lit_inheritune.surgery import inherit_blocks

        return inherit_blocks(reference, blocks=self.student_blocks_of(run), attn_scale=self.attn_scale)
