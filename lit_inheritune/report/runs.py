"""Collecting a group's runs: every result.json below the group directory is one run (or one stage of a
multi-stage run), labelled by its path with the seed suffix removed; their summary as runs.md / runs.json."""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

from lit_inheritune.errors import ConfigError
from lit_inheritune.provenance import provenance
from lit_inheritune.training.identity import IDENTITY_FILE, differences

_SEED = re.compile(r"-s(\d+)$")


def _label_and_seed(group_dir: Path, run_dir: Path) -> tuple[str, int | None]:
    parts = list(run_dir.relative_to(group_dir).parts)
    seed = None
    for i, part in enumerate(parts):
        match = _SEED.search(part)
        if match:
            seed, parts[i] = int(match.group(1)), part[: match.start()]
    return "/".join(parts), seed


def collect(group_dir: str | Path) -> list[dict]:
    """One dict per result.json: the result plus `label` (seedless path), `seed` and `dir`. A reference that
    was given rather than trained (a pretrained HF model, `method.reference.ckpt`) has no result.json; its val
    loss, measured on the run's own val windows, comes from the run's stages.json as `<run label>/reference`
    (dir: <run dir>/reference, where its `evaluate` results go)."""
    group_dir = Path(group_dir)
    rows = []
    for path in sorted(group_dir.rglob("result.json")):
        label, seed = _label_and_seed(group_dir, path.parent)
        identity = path.parent / IDENTITY_FILE
        rows.append({**json.loads(path.read_text()), "label": label, "seed": seed, "dir": str(path.parent),
                     "identity": json.loads(identity.read_text()) if identity.exists() else None})
    for path in sorted(group_dir.rglob("stages.json")):
        stages = json.loads(path.read_text())
        reference = stages["reference"]
        if "last_checkpoint" in reference:  # trained in this group: its own result.json is above
            continue
        label, seed = _label_and_seed(group_dir, path.parent)
        rows.append({**reference, "provenance": stages.get("provenance", {}), "label": f"{label}/reference",
                     "seed": seed, "dir": str(path.parent / "reference")})
    return rows


def row_runs(row: dict, runs: list[dict]) -> list[dict]:
    """The runs that fill a suite row: those of its label, limited to the row's `only_seeds` where it names them
    (one reference seed of several trained in the group, say)."""
    only = row.get("only_seeds")
    return [r for r in runs if r["label"] == row["run"] and (only is None or r["seed"] in only)]


def val_curve(stage_dir: str | Path, starts: bool = True) -> dict[int, float]:
    """step -> val loss from a stage's CSV log. Lightning logs a validation at the 0-based index of the last
    training batch, so a row's step + 1 is the number of optimizer steps taken; a resumed run's repeated
    steps keep their last value. A growing fit also scores each stage's starting model (a row marked
    val/stage_start, at the stage's first step: 0 steps taken), kept with `starts` (in a whole fit's log it would
    replace the previous stage's last score, which is at the same step)."""
    path = Path(stage_dir) / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {int(r["step"]) + (0 if r.get("val/stage_start") else 1): float(r["val/loss"])
                for r in csv.DictReader(f) if r.get("val/loss") and (starts or not r.get("val/stage_start"))}


def check_seeds_agree(rows: list[dict]) -> None:
    """The seeds of one row must differ in their seed only: a mean over runs made under other settings (an
    lr changed between seeds, another reference) would be a number of nothing."""
    first: dict[str, dict] = {}
    for row in rows:
        if row.get("identity") is None:
            continue  # made before identities were recorded
        unseeded = _without_seed(row["identity"])
        if row["label"] not in first:
            first[row["label"]] = {"seed": row["seed"], "identity": unseeded}
            continue
        diffs = differences(first[row["label"]]["identity"], unseeded)
        if diffs:
            key, a, b = diffs[0]
            raise ConfigError(f"the seeds of {row['label']} were made under different settings ({key}: {a} for seed "
                              f"{first[row['label']]['seed']}, {b} for seed {row['seed']}); rerun them alike or "
                              "report them under separate experiment names")


def _without_seed(identity: dict) -> dict:
    """A stage's identity less its own seed (the sweep variable), and less the seed of the earlier stage of the
    same run it builds on (`init.previous`: stacking's first stage, append growth's round before), which the
    sweep seeded too. Shared sources (the reference, a teacher) keep theirs."""
    unseeded = {**identity, "seed": None, "data": {**identity.get("data", {}), "seed": None}}
    init = identity.get("init") or {}
    if init.get("previous"):
        unseeded["init"] = {**init, "previous": _without_seed(init["previous"])}
    return unseeded


def summarize(rows: list[dict]) -> dict[str, dict]:
    """label -> layers, steps, seeds, val loss mean and sample std (None for one seed)."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    summary = {}
    for label, runs in by_label.items():
        losses = [r["val_loss"] for r in runs]
        summary[label] = {
            "n_layer": runs[0]["n_layer"],
            "steps": runs[0]["steps"],
            "seeds": sorted(r["seed"] for r in runs if r["seed"] is not None),
            "val_loss_mean": statistics.fmean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
            "wall_minutes": sum(r.get("wall_seconds", 0.0) for r in runs) / 60,
        }
    return summary


def markdown_table(summary: dict[str, dict], expect: list[str] | None = None) -> str:
    labels = list(expect) if expect else sorted(summary)
    lines = ["| run | layers | steps | seeds | val loss (mean +- std) | wall time (min, all seeds) |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        s = summary.get(label)
        if s is None:
            lines.append(f"| {label} | | | 0 | missing | |")
            continue
        std = "" if s["val_loss_std"] is None else f" +- {s['val_loss_std']:.4f}"
        seeds = ",".join(map(str, s["seeds"])) or "-"
        steps = "" if s["steps"] is None else s["steps"]  # a given reference: loaded, not trained
        lines.append(f"| {label} | {s['n_layer']} | {steps} | {seeds} | {s['val_loss_mean']:.4f}{std} | "
                     f"{s['wall_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(group_dir: str | Path, out_dir: str | Path, expect: list[str] | None = None) -> Path:
    rows = collect(group_dir)
    check_seeds_agree(rows)
    summary = summarize(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    header = "".join(f"- {k}: `{v}`\n" for k, v in prov.items())
    (out_dir / "runs.md").write_text(f"# Runs of {Path(group_dir).name}\n\n{header}\n{markdown_table(summary, expect)}")
    (out_dir / "runs.json").write_text(json.dumps({"provenance": prov, "runs": summary}, indent=2) + "\n")
    return out_dir / "runs.md"


def last_word_acc(stage_dir: str | Path) -> float | None:
    """Accuracy on the dataset's own last-word task (`evaluate tasks=[lastword]`) if the stage was evaluated:
    the CPU-scale stand-in for the paper's LAMBADA column."""
    path = Path(stage_dir) / "eval" / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())["results"]
    return next((r["acc,none"] for name, r in results.items() if name.startswith("lastword_")), None)
