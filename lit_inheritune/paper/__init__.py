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


_SIZES = {"medium": "GPT-2 Medium", "large": "GPT-2 Large", "xlarge": "GPT-2 XLarge"}
_METHODS = {"half_width": "half width", "stacking": "stacking", "hybrid_stacking": "hybrid stacking",
            "inheritune": "Inheritune", "kd": "logit KD student", "distilbert_kd": "DistilBERT-style KD student"}
_PARTS = {"attn": "attention init", "mlp": "MLP init", "attn_mlp": "attention + MLP init", "block": "whole-block init"}


def paper_name(path: str) -> str:
    """A published row as the paper names it, from its tables.yaml path: 'table1.large.3' -> 'GPT-2 Large 18L,
    Inheritune round 1, 100K steps' (the figures label the official curves with these, not with log file names)."""
    keys = path.split(".")
    node = published()
    for key in keys:
        node = node[int(key)] if isinstance(node, list) else node[key]
    size = next((_SIZES[k] for k in keys if k in _SIZES), "GPT-2 Medium" if keys[0] in ("table3", "kd") else
                "GPT-2 Small")
    if node.get("init"):
        what = f"Inheritune round {node['round']}" if node["init"] == "inheritune" else "random init"
    elif node.get("method"):
        what = _METHODS[node["method"]]
    elif node.get("parts"):
        what = _PARTS[node["parts"]]
    else:
        what = "random init" if node["source"] == "random" else f"from {node['source']}"
    layers = f" {node['layers']}L" if node.get("layers") else " 4L" if keys[0] == "lazy_transfer" else ""
    steps = f", {node['steps'] // 1000}K steps" if node.get("steps") else ""
    return f"{size}{layers}, {what}{steps}"
