"""Fit one stage: one `Trainer.fit` in its own directory, resumable, ending in a result.json.

Every method is a sequence of stages (the reference and scratch runs are one stage; Inheritune's
growth rounds and stacking are several). A stage whose result.json exists is done and is skipped,
so rerunning a killed multi-stage job with resume=true picks up at the stage and step it reached.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.provenance import provenance
from lit_inheritune.training.callbacks import AtomicCheckpointIO, SpeedMonitor


class ConfigError(ValueError):
    """A request that cannot work, caught before any compute is spent."""


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def check_schedule(cfg: DictConfig) -> None:
    every, steps = cfg.train.val_every_n_steps, cfg.train.max_steps
    if steps < 1 or every < 1:
        raise ConfigError(f"train.max_steps ({steps}) and train.val_every_n_steps ({every}) must be positive")
    if steps % every:
        raise ConfigError(
            f"train.max_steps={steps} is not a multiple of train.val_every_n_steps={every}: the final step "
            "must be a validation step so the run ends with a val loss and a checkpoint"
        )


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
        loggers.append(instantiate(logger_cfg, **overrides))
    return loggers


def _callbacks(cfg: DictConfig, stage_dir: Path) -> list[L.Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        overrides = {"dirpath": str(stage_dir / "checkpoints")} if name == "checkpoint" else {}
        if name == "weights_check":
            overrides = {"dirpath": str(stage_dir)}
        callbacks.append(instantiate(cb_cfg, **overrides))
    if not any(isinstance(c, SpeedMonitor) for c in callbacks):
        callbacks.append(SpeedMonitor())
    return callbacks


def fit_stage(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule,
              stage_dir: Path, stage: str, max_steps: int | None = None) -> dict:
    """Train `module` in `stage_dir` and return its result (also written to stage_dir/result.json)."""
    stage_dir = Path(stage_dir)
    result_path = stage_dir / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        # The recorded paths were relative to where that run was launched; the stage is here now.
        result["last_checkpoint"] = str(stage_dir / "checkpoints" / "last.ckpt")
        print(f"[{stage}] already done: val loss {result['val_loss']:.4f} ({result_path})", flush=True)
        return result
    last = stage_dir / "checkpoints" / "last.ckpt"
    if last.exists() and not cfg.resume:
        raise ConfigError(
            f"{last} exists: pass resume=true to continue that run, or remove {stage_dir} to start over"
        )
    stage_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, stage_dir / "config.yaml", resolve=True)
    config_sha256 = hashlib.sha256((stage_dir / "config.yaml").read_bytes()).hexdigest()[:16]

    callbacks = _callbacks(cfg, stage_dir)
    speed = next(c for c in callbacks if isinstance(c, SpeedMonitor))
    trainer_overrides = {}
    if max_steps is not None:
        trainer_overrides["max_steps"] = max_steps
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=_loggers(cfg, stage_dir, stage, module.model.config.n_layer) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(stage_dir),
        **trainer_overrides,
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
        "provenance": {**provenance(), "seed": int(cfg.seed), "config_sha256": config_sha256},
    }
    if trainer.is_global_zero:
        write_json_atomic(result_path, result)
    _finish_wandb(trainer)
    return result


def _finish_wandb(trainer: L.Trainer) -> None:
    """Close the W&B run so the next stage or multirun job starts a fresh one."""
    from lightning.pytorch.loggers import WandbLogger

    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()
