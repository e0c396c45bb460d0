"""Facts about the configured Trainer's strategy, read from the config without importing Lightning."""

from __future__ import annotations

from omegaconf import DictConfig


def is_fsdp(cfg: DictConfig) -> bool:
    strategy = cfg.trainer.get("strategy")
    name = strategy.get("_target_", "") if isinstance(strategy, DictConfig) else str(strategy or "")
    return "fsdp" in name.lower()


# The variables a launcher sets for every process (Lightning's own rank_zero_only reads the same): torchrun sets
# RANK, SLURM and jsrun their own; Lightning's DDP launcher re-runs the command with LOCAL_RANK and NODE_RANK.
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK")


def global_rank() -> int:
    """This process's rank among a distributed run's processes (0 when it is the only one), from the launcher's
    environment, so it is known before a Trainer exists. A local rank is the global one on node 0; on another node
    the rank returned is only known not to be 0 (which is all `say` asks)."""
    import os

    def number(name: str) -> int | None:
        value = os.environ.get(name, "").strip()
        return int(value) if value.isdigit() else None

    for name in RANK_VARIABLES:
        rank = number(name)
        if rank is not None:
            other_node = name == "LOCAL_RANK" and bool(number("NODE_RANK") or number("GROUP_RANK"))
            return rank + 1 if other_node else rank
    return 0


def say(*lines: str) -> None:
    """Print our own lines (stage headers, summaries) once per run: on rank 0 only."""
    if global_rank() == 0:
        for line in lines:
            print(line, flush=True)
