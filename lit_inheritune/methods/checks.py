"""Checks the methods share (torch-free): step counts, attention-scale policies, what a model family allows."""

from __future__ import annotations

from lit_inheritune.errors import ConfigError
from lit_inheritune.models import ATTN_SCALES


def positive(key: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value} must be positive")


def check_steps(cfg, key: str, steps: int) -> None:
    """A stage's step count (`cfg`: the composed config): positive, and ending on a validation step so the stage
    ends with a val loss and a checkpoint."""
    every = cfg.train.val_every_n_steps
    positive(key, steps)
    if steps % every:
        raise ConfigError(f"{key}: {steps} steps is not a multiple of train.val_every_n_steps={every}: the final "
                          "step must be a validation step so the run ends with a val loss and a checkpoint")


def check_attn_scale(value) -> None:
    if value not in ATTN_SCALES:
        raise ConfigError(f"method.attn_scale={value!r} is not one of {', '.join(ATTN_SCALES)}")
