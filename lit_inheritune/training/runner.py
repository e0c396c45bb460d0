"""Fits: one `Trainer.fit` in its own directory, resumable, ending in a result file.

`fit_stage` trains one stage (the reference, a scratch run, a one-stage baseline) and writes its result.json.
`fit_growth` trains the stages of a growing method (Inheritune's rounds, stacking) in one fit in the run
directory, the GrowCallback growing the model between them (training/grow.py), and writes fit.json. A fit whose
result file exists is done and is skipped; a killed one continues from its last checkpoint with resume=true (a
requeued SLURM job's without it: training/preemption.py).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import warnings
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.errors import ConfigError, DivergenceError, Interrupted
from lit_inheritune.io import write_json_atomic, write_text_atomic
from lit_inheritune.training import preemption
from lit_inheritune.training.callbacks import (
    AtomicCheckpointIO,
    ComputeMonitor,
    LogHistory,
    SpeedMonitor,
    StageProgressBar,
)
from lit_inheritune.training.grow import GrowCallback, Growth
from lit_inheritune.training.identity import IDENTITY_FILE, check_stage_dir
from lit_inheritune.training.lock import owned_by_run, stage_lock
from lit_inheritune.training.stage_record import (
    CONFIG_FILE,
    RESULT_FILE,
    checkpoint_path,
    config_sha256,
    stage_result,
    write_identity,
)
from lit_inheritune.training.strategy import global_rank, is_fsdp, say

WANDB_ID_FILE = "wandb_run_id"
FIT_FILE = "fit.json"  # a growing run's record that its fit finished (not result.json: the report reads those)


def _loggers(cfg: DictConfig, stage_dir: Path, stage: str | None, n_layer: int, wandb_id: str | None = None) -> list:
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        overrides = {"save_dir": str(stage_dir)}
        if name == "wandb":
            # one W&B run per stage, or per growing run (stage None: the stage is a logged metric)
            overrides["name"] = f"{cfg.run_name}/{stage}" if stage else cfg.run_name
            # the stage's own depth: a sweep's runs differ in it, and the config's model is the reference
            overrides["tags"] = [*logger_cfg.get("tags", []), *([f"{n_layer}L", stage] if stage else ["growth"])]
            if logger_cfg.get("offline") is None:
                overrides["offline"] = not os.environ.get("WANDB_API_KEY")
            # the same W&B run across a kill and resume: the id is kept in the fit's directory
            overrides["id"] = wandb_id or _wandb_run_id(stage_dir)
            overrides["resume"] = "allow"
        loggers.append(instantiate(logger_cfg, **overrides))
    return loggers


def _wandb_run_id(stage_dir: Path) -> str:
    """The fit's W&B run id: the one its directory recorded, or a new one (fit_stage records it once the Trainer
    is built)."""
    path = stage_dir / WANDB_ID_FILE
    return path.read_text().strip() if path.exists() else secrets.token_hex(4)


def _callbacks(cfg: DictConfig, stage_dir: Path, stage: str, growing: bool = False) -> list[L.Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if name == "grow":
            continue  # built by fit_growth, with the recipe's growth
        overrides = {"dirpath": str(stage_dir / "checkpoints")} if name == "checkpoint" else {}
        if name == "checkpoint" and growing:
            # a "best" val loss across stages of different depths would name a model that was never scored: keep
            # the latest only, as last.ckpt (Lightning writes save_last only beside a top-k file)
            overrides.update(monitor=None, save_top_k=1, filename="last", save_last=False)
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
    # DDP's "Initializing distributed: GLOBAL_RANK: ..." from every rank, twice (Lightning's handler and Hydra's)
    logging.getLogger("lightning.fabric.utilities.distributed").setLevel(logging.WARNING)
    os.environ.setdefault("WANDB_SILENT", "true")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    warnings.filterwarnings("ignore", message=r"The anonymous setting has no effect")
    # Lightning's all_gather (RankConsistencyCheck's digests) calls a torch function torch deprecates, once per rank
    warnings.filterwarnings("ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated")
    # val/loss and val/ppl come from a torchmetrics mean that syncs across ranks itself (CausalLM.val_loss):
    # Lightning's advice to add sync_dist=True, once per metric under DDP, does not apply
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self\.log\('val/(loss|ppl)', \.\.\., sync_dist")
    # A resumed stage writes into its own checkpoints/ by design; whether a directory may be reused at all is
    # decided before (identity.json), so Lightning's warning about a non-empty one only alarms.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def fit_stage(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule,
              stage_dir: Path, stage: str, identity: dict, max_steps: int | None = None,
              header: str = "", grow: GrowCallback | None = None, earlier: list[dict] = ()) -> dict:
    """Train `module` in `stage_dir` and return its result (also written to stage_dir/result.json, or with
    `grow` to stage_dir/fit.json, listing the stages the GrowCallback ran). `earlier`: identities of stages trained
    before this one that it does not nest (a fit per stage of a growing method), counted in its logged compute.

    The stage directory is reused only when the identity it recorded equals `identity` (training/identity.py):
    a finished stage is skipped, a killed one continues from its last checkpoint with resume=true. One process
    trains it (training/lock.py): a stage another process is training is waited for when it is shared by the
    experiment's runs (the reference), an error when it is this run's own."""
    done = Path(stage_dir) / (FIT_FILE if grow else RESULT_FILE)
    with stage_lock(stage_dir, own=owned_by_run(cfg.run_dir, stage_dir), done=done.exists,
                    label=header or f"[{cfg.name}] {stage}"):
        return _fit_stage(cfg, module, datamodule, stage_dir, stage, identity, max_steps, header, grow, earlier)


def _fit_stage(cfg: DictConfig, module: L.LightningModule, datamodule: L.LightningDataModule,
               stage_dir: Path, stage: str, identity: dict, max_steps: int | None, header: str,
               grow: GrowCallback | None, earlier: list[dict]) -> dict:
    quiet_third_parties()
    stage_dir = Path(stage_dir)
    result_path = stage_dir / (FIT_FILE if grow else RESULT_FILE)
    check_stage_dir(stage_dir, identity)
    steps = int(max_steps or cfg.train.max_steps)
    if result_path.exists():
        result = json.loads(result_path.read_text())
        # The recorded paths were relative to where that run was launched; the stage is here now.
        result["last_checkpoint"] = str(checkpoint_path(stage_dir))
        say(f"{header}: already done, val loss {result['val_loss']:.4f} ({stage_dir})")
        return result
    last = checkpoint_path(stage_dir)
    if last.exists() and not cfg.resume and not preemption.requeued(stage_dir):
        raise ConfigError(
            f"{last} exists: pass resume=true to continue that run, or remove {stage_dir} to start over"
        )
    module.compile_model = bool(cfg.train.get("compile", False))  # CausalLM compiles in configure_model
    wandb_id = _wandb_run_id(stage_dir)
    callbacks = [*_callbacks(cfg, stage_dir, stage, growing=grow is not None), *([grow] if grow else []),
                 ComputeMonitor(identity, earlier, grow)]
    if preemption.on_slurm():
        callbacks.append(preemption.Preemption(stage_dir, stage))
    speed = next(c for c in callbacks if isinstance(c, SpeedMonitor))
    # Built before anything is written: a Trainer that cannot be built (checks.check_trainer catches the usual
    # causes first) leaves no directory that would refuse the corrected command.
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        logger=_loggers(cfg, stage_dir, None if grow else stage, module.model.config.n_layer, wandb_id) or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(), *preemption.cluster_plugins()],
        default_root_dir=str(stage_dir),
        max_steps=steps,
    )
    if not (grow and last.exists()):  # a growing fit resumes in a stage only its checkpoint knows: it says which
        length = f"{grow.growth.steps} steps" if grow else f"{steps} steps"
        say(f"{header}, {length}{' (resuming from its last checkpoint)' if last.exists() else ''}")
    existed = set(stage_dir.iterdir()) if stage_dir.is_dir() else None
    try:
        config_hash = None
        if global_rank() == 0:  # under SLURM every rank starts here at once: one writer of the stage's records
            write_identity(stage_dir, identity)
            write_text_atomic(stage_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
            if "wandb" in (cfg.get("logger") or {}) and not (stage_dir / WANDB_ID_FILE).exists():
                write_text_atomic(stage_dir / WANDB_ID_FILE, wandb_id + "\n")
            config_hash = config_sha256(stage_dir / CONFIG_FILE)  # result.json is rank 0's too
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(last) if last.exists() else None)
    except BaseException as error:
        failure = _fit_failed(error, cfg, trainer, stage_dir, existed,
                              grow.growth.stages[grow.index].name if grow else stage)
        if failure is error:
            raise
        raise failure from None

    val_loss = trainer.callback_metrics.get("val/loss")
    if val_loss is None:  # resumed after the last validation had already run: measure again
        val_loss = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    val_loss = float(val_loss)
    ckpt_cb = trainer.checkpoint_callback
    result = stage_result(
        stage=stage, model=module.model, steps=trainer.global_step,
        tokens=trainer.global_step * datamodule.tokens_per_step * trainer.accumulate_grad_batches * trainer.world_size,
        val_loss=val_loss, tokens_per_sec=speed.tokens_per_sec, train_seconds=speed.train_seconds,
        wall_seconds=speed.wall_seconds, last_checkpoint=last, best_checkpoint=ckpt_cb.best_model_path if ckpt_cb else "",
        identity=identity, seed=cfg.seed, config_sha256=config_hash)
    if grow:
        result["stages"] = [r["stage"] for r in grow.results]
    if trainer.is_global_zero:
        write_json_atomic(result_path, result)
        (stage_dir / preemption.PREEMPTED_FILE).unlink(missing_ok=True)  # done: nothing left to resume
    _finish_wandb(trainer)
    return result


def _fit_failed(error: BaseException, cfg: DictConfig, trainer: L.Trainer, stage_dir: Path, existed: set | None,
                stage: str) -> BaseException:
    """What a fit that stopped early leaves, and the error to raise about it. A fit that never reached a checkpoint
    holds nothing trained: what it wrote is removed, so the corrected command (another lr, the same name) is not
    refused as "made under other settings". A kept checkpoint is named, with how to continue or start over.

    Ctrl-C (Lightning turns it into sys.exit(1) after its own shutdown) becomes errors.Interrupted, a divergence an
    expected failure of one line; other failures are re-raised as they are, after the clean-up."""
    interrupted = isinstance(error, KeyboardInterrupt) or (isinstance(error, SystemExit)
                                                        and isinstance(error.__context__, KeyboardInterrupt))
    if isinstance(error, SystemExit) and not interrupted:
        return error
    step = _kept_step(stage_dir)
    if step is None and trainer.is_global_zero:
        _remove_new(stage_dir, existed)
    at = f" (step {step})" if step is not None and step >= 0 else ""
    if interrupted:
        if step is None:
            return Interrupted(f"interrupted: {stage} had reached no checkpoint yet, so nothing of it was kept; rerun "
                               "the same command to start it again")
        return Interrupted(f"interrupted: {stage_dir} keeps its last checkpoint{at}; rerun the same command "
                           "with resume=true to continue")
    if not isinstance(error, DivergenceError):
        return error
    o = cfg.optim
    advice = (f"lower optim.lr (now {o.lr}), or lengthen optim.warmup_steps (now {o.warmup_steps}) or clip harder "
              f"with trainer.gradient_clip_val (now {cfg.trainer.get('gradient_clip_val')})")
    if step is None:
        kept = "it reached no checkpoint, so its files were removed: rerun with other settings, under the same name"
    else:
        kept = (f"{stage_dir} keeps its last checkpoint{at}: to retry under the same name with other "
                f"settings remove {stage_dir} (or give them a new name=...)")
    return DivergenceError(f"stage {stage} ({stage_dir}) diverged: {error}; {advice}; {kept}")


def _kept_step(stage_dir: Path) -> int | None:
    """The step of the last checkpoint a fit in `stage_dir` reached (a growing fit's rounds included), or None
    when it reached none."""
    last = checkpoint_path(stage_dir)
    if not last.is_file():
        kept = [*stage_dir.glob("*/checkpoints/last.ckpt"), *stage_dir.glob("*/result.json")]
        return None if not kept else -1
    try:
        import torch

        return int(torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
    except Exception:  # the step is for the message only
        return -1


def _remove_new(stage_dir: Path, existed: set | None) -> None:
    """Remove what a fit wrote into `stage_dir` (all of it when the directory is new): its identity, config,
    logs. What was there before (e.g. Hydra's .hydra/ when the stage is the run directory) stays."""
    if existed is None:
        shutil.rmtree(stage_dir, ignore_errors=True)
        return
    for path in [*stage_dir.iterdir()] if stage_dir.is_dir() else []:
        if path not in existed or path.name in (IDENTITY_FILE, CONFIG_FILE, WANDB_ID_FILE):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def fit_growth(cfg: DictConfig, make_module, model, datamodule: L.LightningDataModule, growth: Growth,
               identity: dict, header) -> list[dict]:
    """Train `growth`'s stages, starting from `model`, in one fit in the run directory; the results of the stages
    it ran. `make_module(model, stage)` builds the LightningModule; `header(stage)` the stage's start line."""
    run_dir = Path(cfg.run_dir)
    growth.header = header
    if is_fsdp(cfg):
        return _fit_per_stage(cfg, make_module, model, datamodule, growth, header)
    fit_file = run_dir / FIT_FILE
    check_stage_dir(run_dir, identity)
    if fit_file.exists():
        done = json.loads(fit_file.read_text())["stages"]
        results = []
        for stage in growth.stages:
            if stage.name in done:
                result = json.loads((Path(stage.dir) / RESULT_FILE).read_text())
                result["last_checkpoint"] = str(checkpoint_path(stage.dir))
                say(f"{header(stage)}: already done, val loss {result['val_loss']:.4f} ({stage.dir})")
                results.append(result)
        return results
    grow_cfg = (cfg.get("callbacks") or {}).get("grow")
    # a partial, then called: Hydra would turn the Growth dataclass into a config if passed as a kwarg
    callback = instantiate(grow_cfg, _partial_=True)(growth) if grow_cfg else GrowCallback(growth)
    first = growth.stages[0]
    fit_stage(cfg, make_module(model, first.name), datamodule, run_dir, stage=first.name, identity=identity,
              max_steps=growth.max_steps, header=header(first), grow=callback)
    dirs = {stage.name: Path(stage.dir) for stage in growth.stages}
    # results restored from a checkpoint name the paths of the process that wrote them: the stages are here now
    return [{**r, "last_checkpoint": str(checkpoint_path(dirs[r["stage"]]))} for r in callback.results]


def _fit_per_stage(cfg: DictConfig, make_module, model, datamodule, growth: Growth, header) -> list[dict]:
    """FSDP restores a checkpoint only after wrapping the module, so a resumed fit could not grow before its
    weights load: under FSDP every stage is its own fit in its own directory, and the recipe's growth decides."""
    from lit_inheritune.models import load_checkpoint

    results = []
    for i, stage in enumerate(growth.stages):
        if i:
            L.seed_everything(growth.seeds[i], workers=True, verbose=False)
            model = growth.grow(model, i)
        result = fit_stage(cfg, make_module(model, stage.name), datamodule, stage.dir, stage=stage.name,
                           identity=stage.identity, max_steps=growth.steps, header=header(stage),
                           earlier=[s.identity for s in growth.stages[:i]])
        results.append(result)
        if growth.stop(result):
            break
        model = load_checkpoint(result["last_checkpoint"])  # the trained weights, also on resume
    return results


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
