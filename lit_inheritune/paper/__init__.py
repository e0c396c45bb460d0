"""The paper's published numbers and official training curves, as data shipped with the package."""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

import yaml

HERE = Path(__file__).parent


@lru_cache(maxsize=1)
def published() -> dict:
    """tables.yaml: every published number this project compares against, with its official run."""
    return yaml.safe_load((HERE / "tables.yaml").read_text())


@lru_cache(maxsize=1)
def official_curves() -> dict[str, list[dict]]:
    """run name -> [{step, train_loss, val_loss}, ...] from the official training logs (every 1000 steps)."""
    curves: dict[str, list[dict]] = {}
    with open(HERE / "official_curves.csv", newline="") as f:
        for row in csv.DictReader(f):
            curves.setdefault(row["run"], []).append(
                {"step": int(row["step"]), "train_loss": float(row["train_loss"]), "val_loss": float(row["val_loss"])}
            )
    return curves
