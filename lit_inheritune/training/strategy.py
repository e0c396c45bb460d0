"""Facts about the configured Trainer's strategy, read from the config without importing Lightning."""

from __future__ import annotations

from omegaconf import DictConfig


def is_fsdp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    return "fsdp" in name.lower()
