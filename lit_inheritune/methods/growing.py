"""What the growing methods share (Inheritune's rounds, stacking's two stages): their stages are one fit, the
GrowCallback growing the model between them (training/grow.py)."""

from __future__ import annotations

from lit_inheritune.methods.base import Run, Stage
from lit_inheritune.training.strategy import is_fsdp


def fit_identity(stages: list[Stage], tolerance: float | None = None, carry_optimizer: bool = False) -> dict:
    """What the run's fit is: its stages, and the settings that decide when it grows and stops."""
    return {"kind": "growth", "stages": [s.identity for s in stages],
            "control": {"tolerance": tolerance, "carry_optimizer": bool(carry_optimizer)}}


def first_batch(run: Run, index: int) -> dict:
    """Where stage `index` starts in the seed's batch stream, when not at 0: in one fit, at its first step (under FSDP
    each stage is its own fit and replays the stream from 0, as the earlier runner did)."""
    return {"first_batch": index * run.steps} if index and not is_fsdp(run.cfg) else {}


def causal_lm_stages(run: Run):
    """(model, stage name) -> the LightningModule of a stage, each with a fresh T-step schedule."""
    from lit_inheritune.training.lm import CausalLM

    return lambda model, stage: CausalLM(model, run.optim(run.steps), meta=run.meta(stage))
