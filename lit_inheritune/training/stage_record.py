"""The record a finished stage leaves: its result dict and its directory, as a one-stage run leaves it.

A stage's directory holds identity.json (what was trained, training/identity.py), checkpoints/last.ckpt,
csv/metrics.csv (its own steps), config.yaml and result.json. `fit_stage` (runner.py) writes a one-stage run's
as it trains; the GrowCallback (grow.py), which trains several stages in one fit, writes each finished stage's
with `start_grown_stage` and `finish_grown_stage`, so the stage table, the report and the analysis read both alike. Both build the
result with `stage_result`.
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

from lit_inheritune.io import file_sha256, write_csv_atomic, write_json_atomic
from lit_inheritune.provenance import provenance
from lit_inheritune.training.identity import IDENTITY_FILE, fingerprint

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"


def checkpoint_path(stage_dir: str | Path) -> Path:
    return Path(stage_dir) / "checkpoints" / "last.ckpt"


def config_sha256(path: str | Path) -> str:
    """The short hash of a run's config.yaml that results record."""
    return file_sha256(path)[:16]


def stage_result(stage: str, model, steps: int, tokens: int, val_loss: float, tokens_per_sec: float,
                 train_seconds: float, wall_seconds: float, last_checkpoint: str | Path, best_checkpoint: str,
                 identity: dict, seed: int, config_sha256: str) -> dict:
    """A stage's result (result.json): what was trained (`model`, a model of any family), how long, how well,
    and where it came from."""
    return {
        "stage": stage,
        "n_layer": model.config.n_layer,
        "params": model.num_params(),
        "steps": steps,
        "tokens": tokens,
        "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 50.0)),
        "tokens_per_sec": tokens_per_sec,
        "train_seconds": train_seconds,
        "wall_seconds": wall_seconds,
        "last_checkpoint": str(last_checkpoint),
        "best_checkpoint": best_checkpoint,
        "fingerprint": fingerprint(identity),
        "provenance": {**provenance(), "seed": int(seed), "config_sha256": config_sha256},
    }


def write_identity(stage_dir: Path, identity: dict) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage_dir / IDENTITY_FILE, identity)


def start_grown_stage(trainer, stage_dir: Path, identity: dict) -> Path:
    """The first half of a grown stage's directory: identity.json (rank 0) and checkpoints/last.ckpt, whose path
    it returns. Every rank must call it (Lightning's save_checkpoint is collective); rank 0 writes (atomically)."""
    if trainer.is_global_zero:
        write_identity(stage_dir, identity)
    ckpt = checkpoint_path(stage_dir)
    trainer.save_checkpoint(ckpt, weights_only=False)  # every rank calls it; rank 0 writes (atomically)
    return ckpt


def finish_grown_stage(trainer, stage_dir: Path, result: dict, start: int, stage_steps: int,
                       tokens_per_step: int) -> None:
    """The rest, on rank 0: the stage's slice of the run's CSV log, the run's config.yaml, and result.json last
    (a stage with a result is done)."""
    if not trainer.is_global_zero:
        return
    write_stage_log(trainer, stage_dir, start, stage_steps, tokens_per_step)
    run_config = Path(trainer.default_root_dir) / CONFIG_FILE
    if run_config.is_file():  # beside the stage's checkpoint, where evaluate/export look for the data
        shutil.copyfile(run_config, stage_dir / CONFIG_FILE)
    write_json_atomic(stage_dir / RESULT_FILE, result)


def run_config_sha256(trainer) -> str:
    """The fit's config.yaml hash (fit_stage's), the stage's config too."""
    path = Path(trainer.default_root_dir) / CONFIG_FILE
    return config_sha256(path) if path.is_file() else ""


def write_stage_log(trainer, stage_dir: Path, start: int, stage_steps: int, tokens_per_step: int) -> None:
    """The stage's rows of the run's CSV log, steps and tokens counted from the stage's start (as its own run
    would log them)."""
    from lit_inheritune.training.callbacks import ResumableCSVLogger

    for logger in trainer.loggers:
        if not isinstance(logger, ResumableCSVLogger):
            continue
        logger.save()
        path = Path(logger.experiment.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            rows = [{**r, "step": int(r["step"]) - start} for r in reader if int(r["step"]) >= start]
        for r in rows:
            if r.get("train/tokens"):
                r["train/tokens"] = float(r["train/tokens"]) - start * tokens_per_step
        write_csv_atomic(stage_dir / "csv" / "metrics.csv", header, [r for r in rows if r["step"] < stage_steps])
