"""Facts about the configured Trainer's strategy, read from the config without importing Lightning."""

from __future__ import annotations

from omegaconf import DictConfig


def is_fsdp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    return "fsdp" in name.lower()


# The variables a launcher sets for every process but the first (Lightning's own rank_zero_only reads the same):
# Lightning's DDP launcher re-runs the command with LOCAL_RANK (and NODE_RANK), torchrun sets RANK, SLURM its own.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def global_rank() -> int:
    """This process's rank among a distributed run's processes (0 when it is the only one), from the launcher's
    environment, so it is known before a Trainer exists."""
    import os

    for name in RANK_VARIABLES:
        value = os.environ.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return 0


def say(*lines: str) -> None:
    """Print our own lines (stage headers, summaries) once per run: on rank 0 only."""
    if global_rank() == 0:
        for line in lines:
            print(line, flush=True)
