"""Fit one stage: one `Trainer.fit` in its own directory, resumable, ending in a result.json.

Every method is a sequence of stages (the reference and scratch runs are one stage; Inheritune's
growth rounds and stacking are several). A stage whose result.json exists is done and is skipped,
so rerunning a killed multi-stage job with resume=true picks up at the stage and step it reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import secrets
import time
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.errors import ConfigError
from lit_inheritune.provenance import provenance
from lit_inheritune.training.callbacks import AtomicCheckpointIO, LogHistory, SpeedMonitor, StageProgressBar
from lit_inheritune.training.identity import IDENTITY_FILE, check_stage_dir, fingerprint

WANDB_ID_FILE = "wandb_run_id"


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _loggers(cfg: DictConfig, stage_dir: Path, stage: str, n_layer: int) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        overrides = {"save_dir": str(stage_dir)}
        if name == "wandb":
            overrides["name"] = f"{cfg.run_name}/{stage}"
            # the stage's own depth: a sweep's runs differ in it, and the config's model is the reference
            overrides["tags"] = [*logger_cfg.get("tags", []), f"{n_layer}L", stage]
            if logger_cfg.get("offline") is None:
                overrides["offline"] = not os.environ.get("WANDB_API_KEY")
            # one W&B run per stage, also across a kill and resume: the id is kept in the stage directory
            overrides["id"] = _wandb_run_id(stage_dir)
            overrides["resume"] = "allow"
        loggers.append(instantiate(logger_cfg, **overrides))
    return loggers


def _wandb_run_id(stage_dir: Path) -> str:
    path = stage_dir / WANDB_ID_FILE
    if not path.exists():
        stage_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(4) + "\n")
    return path.read_text().strip()


def _callbacks(cfg: DictConfig, stage_dir: Path, stage: str) -> list[L.Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        overrides = {"dirpath": str(stage_dir / "checkpoints")} if name == "checkpoint" else {}
        if name == "weights_check":
            overrides = {"dirpath": str(stage_dir)}
        callbacks.append(instantiate(cb_cfg, **overrides))
    if not any(isinstance(c, SpeedMonitor) for c in callbacks):
        callbacks.append(SpeedMonitor())
    callbacks.append(LogHistory())
    if cfg.trainer.get("enable_progress_bar", True):
        callbacks.append(StageProgressBar(stage))
    return callbacks


def quiet_third_parties() -> None:
    """One line per event of our own instead of Lightning's start-up notes and tips, W&B's banners and run
    summaries, and deprecation warnings that third-party code raises about itself."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The anonymous setting has no effect")


def fit_stage(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule,
              stage_dir: Path, stage: str, identity: dict, max_steps: int | None = None,
              header: str = "") -> dict:
    """Train `module` in `stage_dir` and return its result (also written to stage_dir/result.json).

    The stage directory is reused only when the identity it recorded equals `identity` (training/identity.py):
    a finished stage is skipped, a killed one continues from its last checkpoint with resume=true."""
    quiet_third_parties()
    stage_dir = Path(stage_dir)
    result_path = stage_dir / "result.json"
    check_stage_dir(stage_dir, identity)
    steps = int(max_steps or cfg.train.max_steps)
    if result_path.exists():
        result = json.loads(result_path.read_text())
        # The recorded paths were relative to where that run was launched; the stage is here now.
        result["last_checkpoint"] = str(stage_dir / "checkpoints" / "last.ckpt")
        print(f"{header}: already done, val loss {result['val_loss']:.4f} ({stage_dir})", flush=True)
        return result
    last = stage_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not cfg.resume:
        raise ConfigError(
            f"{last} exists: pass resume=true to continue that run, or remove {stage_dir} to start over"
        )
    print(f"{header}, {steps} steps{' (resuming from its last checkpoint)' if last.exists() else ''}", flush=True)
    stage_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(stage_dir / IDENTITY_FILE, identity)
    OmegaConf.save(cfg, stage_dir / "config.yaml", resolve=True)
    config_sha256 = hashlib.sha256((stage_dir / "config.yaml").read_bytes()).hexdigest()[:16]

    callbacks = _callbacks(cfg, stage_dir, stage)
    speed = next(c for c in callbacks if isinstance(c, SpeedMonitor))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=_loggers(cfg, stage_dir, stage, module.model.config.n_layer) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(stage_dir),
        max_steps=steps,
    )
    started = time.time()
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)

    val_loss = trainer.callback_metrics.get("val/loss")
    if val_loss is None:  # resumed after the last validation had already run: measure again
        val_loss = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    val_loss = float(val_loss)
    ckpt_cb = trainer.checkpoint_callback
    result = {
        "stage": stage,
        "n_layer": module.model.config.n_layer,
        "params": module.model.num_params(),
        "steps": trainer.global_step,
        "tokens": trainer.global_step * datamodule.tokens_per_step * trainer.accumulate_grad_batches
        * trainer.world_size,
        "val_loss": val_loss,
        "val_ppl": math.exp(min(val_loss, 50.0)),
        "tokens_per_sec": speed.tokens_per_sec,
        "train_seconds": speed.train_seconds,
        "wall_seconds": time.time() - started,
        "last_checkpoint": str(last),
        "best_checkpoint": ckpt_cb.best_model_path if ckpt_cb else "",
        "fingerprint": fingerprint(identity),
        "provenance": {**provenance(), "seed": int(cfg.seed), "config_sha256": config_sha256},
    }
    if trainer.is_global_zero:
        write_json_atomic(result_path, result)
    _finish_wandb(trainer)
    return result


def _finish_wandb(trainer: L.Trainer) -> None:
    """Close the W&B run so the next stage or multirun job starts a fresh one, and say where an offline run is."""
    from lightning.pytorch.loggers import WandbLogger

    runs = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if runs:
        import wandb

        run_dir = getattr(wandb.run, "dir", None)
        offline = getattr(getattr(wandb.run, "settings", None), "mode", "") in ("offline", "dryrun")
        wandb.finish()
        if offline and run_dir and trainer.is_global_zero:
            print(f"W&B offline run: {Path(run_dir).parent} (upload with `wandb sync`)", flush=True)
