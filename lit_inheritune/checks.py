"""Every check of a training config that needs no trained model, run before any run directory, W&B run or
training starts: the schedule, optimizer and model shape; each method's parameters against the reference; a
given reference checkpoint's shape against the config; the prepared data against `data.prepare` and its shard
checksums; and that checkpoints this run would resume from can be read.

`preflight(cfg)` runs them (run.run calls it first). From the command line they run even earlier: the `Preflight`
Hydra callback (hydra.callbacks in config.yaml) calls them before Hydra creates the run directory, and for a
sweep on every job's config before the first job starts.

Types and key names are checked earlier still, while the config is composed (lit_inheritune/schema.py). What a
model family allows (which methods, how its blocks are inherited) comes from its registration in the model-family
interface (lit_inheritune/models/__init__.py). This module imports neither torch nor Lightning unless a checkpoint
has to be read.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

from lit_inheritune.errors import CheckpointError, ConfigError, cli_errors
from lit_inheritune.models import checkpoint_shape, family_of

BLOCK_PARTS = ("block", "attn", "mlp", "attn_mlp")  # models.gpt.BLOCK_PARTS (tests compare the two)
GROW_MODES = ("append", "reinherit")
ATTN_SCALES = ("position", "source")  # models.ATTN_SCALES


def distilbert_blocks(n_teacher: int, n_student: int) -> list[int]:
    """Teacher blocks a DistilBERT-style student starts from: every other block (0, 2, 4, ...), then, for
    students deeper than half the teacher, the blocks just before the last two (the paper's 16L student of
    a 24L teacher: 0, 2, ..., 22, then 18..21)."""
    evens = list(range(0, n_teacher, 2))[:n_student]
    extra = n_student - len(evens)
    return evens + list(range(n_teacher - 2 - extra, n_teacher - 2))


# ----------------------------------------------------------------------------------------------------------------
# Schedule, optimizer, model


def _positive(key: str, value) -> None:
    if value < 1:
        raise ConfigError(f"{key}={value} must be positive")


def check_steps(cfg: DictConfig, key: str, steps: int) -> None:
    """A stage's step count: positive, and ending on a validation step so the stage ends with a val loss and a
    checkpoint."""
    every = cfg.train.val_every_n_steps
    _positive(key, steps)
    if steps % every:
        raise ConfigError(f"{key}: {steps} steps is not a multiple of train.val_every_n_steps={every}: the final "
                          "step must be a validation step so the run ends with a val loss and a checkpoint")


def check_train(cfg: DictConfig) -> None:
    for key in ("val_every_n_steps", "log_every_n_steps", "accumulate_grad_batches"):
        _positive(f"train.{key}", cfg.train[key])
    check_steps(cfg, "train.max_steps", cfg.train.max_steps)
    # Stages end by asking the Trainer to stop (a matched round, stacking's stage 1), and Lightning ignores that
    # request until min_steps / min_epochs are reached (min_epochs=1 is an endless epoch here).
    for key in ("min_steps", "min_epochs"):
        if cfg.trainer.get(key):  # (0 and null are the defaults)
            raise ConfigError(f"trainer.{key}={cfg.trainer[key]}: a stage's length is train.max_steps (and the "
                              f"method's rounds); remove trainer.{key}")


def check_optim(cfg: DictConfig) -> None:
    o = cfg.optim
    if not o.lr > 0:
        raise ConfigError(f"optim.lr={o.lr} must be positive")
    if not 0 <= o.min_lr <= o.lr:
        raise ConfigError(f"optim.min_lr={o.min_lr} must lie between 0 and optim.lr={o.lr}")
    if o.warmup_steps < 0 or o.weight_decay < 0:
        raise ConfigError(f"optim.warmup_steps={o.warmup_steps} and optim.weight_decay={o.weight_decay} must not "
                          "be negative")
    for key in ("beta1", "beta2"):
        if not 0 <= o[key] < 1:
            raise ConfigError(f"optim.{key}={o[key]} must lie in [0, 1)")


def check_model(cfg: DictConfig) -> None:
    m = cfg.model
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
        _positive(f"model.{key}", m[key])
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}")


# ----------------------------------------------------------------------------------------------------------------
# Methods: `model` is the reference (k layers); each method's parameters are checked against it.


def method_recipe(cfg: DictConfig) -> type:
    """The recipe class `method._target_` names (methods.py), imported but not built. Its attributes say what
    the checks need: `uses_reference` (starts from method.reference) and `validate(cfg)`, the method's own
    checks. Which methods a model family supports is the family's (models.ModelFamily.methods)."""
    target = cfg.method.get("_target_")
    if not target:
        raise ConfigError("method._target_ is missing: a method config names its recipe class, e.g. "
                          "_target_: lit_inheritune.methods.Inheritune")
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception as err:  # Hydra wraps the import error; its message names the module
        raise ConfigError(f"method._target_={target!r} cannot be imported: {str(err).splitlines()[0]}") from None
    if not (callable(getattr(cls, "plan", None)) and callable(getattr(cls, "run", None))):
        raise ConfigError(f"method._target_={target!r} is not a recipe: it needs plan(cfg) and run(cfg, datamodule)")
    return cls


def uses_reference(cfg: DictConfig) -> bool:
    return bool(getattr(method_recipe(cfg), "uses_reference", False))


def _trains_reference(cfg: DictConfig) -> bool:
    return uses_reference(cfg) and not cfg.method.reference.ckpt and not family_of(cfg.model).pretrained


def check_reference_steps(cfg: DictConfig) -> None:
    if _trains_reference(cfg):
        check_steps(cfg, "method.reference.max_steps", cfg.method.reference.max_steps)


def check_scratch(cfg: DictConfig) -> None:
    pass  # the schedule and the model are all there is


def check_inheritune(cfg: DictConfig) -> None:
    m, k = cfg.method, cfg.model.n_layer
    if m.blocks:
        n = len(m.blocks)
        if not all(0 <= b < k for b in m.blocks):
            raise ConfigError(f"method.blocks={list(m.blocks)} names blocks outside the {k}-layer reference "
                              f"(0..{k - 1}; model.n_layer={k})")
    else:
        n = m.n_layer
        if not 1 <= n <= k:
            raise ConfigError(f"method.n_layer={n}: cannot inherit {n} layers from a {k}-layer reference "
                              f"(model.n_layer={k})")
    if m.parts not in BLOCK_PARTS:
        raise ConfigError(f"method.parts={m.parts!r} is not one of {', '.join(BLOCK_PARTS)}")
    if m.grow_mode not in GROW_MODES:
        raise ConfigError(f"method.grow_mode={m.grow_mode!r} is not one of {', '.join(GROW_MODES)}")
    if m.grow_by < 1:
        raise ConfigError(f"method.grow_by={m.grow_by}: a growth round adds at least 1 layer")
    if m.max_layers > k:
        raise ConfigError(f"method.max_layers={m.max_layers} exceeds the reference's {k} layers (model.n_layer)")
    if m.max_layers < n:
        raise ConfigError(f"method.max_layers={m.max_layers} is below the target's {n} layers; set it between "
                          f"{n} (no growth) and {k}")
    if m.get("carry_optimizer") and m.grow_mode != "append":
        raise ConfigError("method.carry_optimizer=true keeps the AdamW state of the parameters that survive a "
                          "growth; only method.grow_mode=append keeps any (reinherit starts from fresh copies)")
    check_reference_steps(cfg)
    for steps in m.scratch_baselines or []:
        check_steps(cfg, "method.scratch_baselines", steps)
    family = family_of(cfg.model)
    if family.inherits_whole and (m.parts != "block" or not m.copy_wpe or not m.copy_ln_f):
        raise ConfigError(f"a {family.title} reference is inherited as the official lit-gpt code did (whole layers, "
                          "plus embeddings, final norm and head): set method.parts=block, method.copy_wpe=true "
                          "and method.copy_ln_f=true")
    if not family.keeps_source_scale and m.attn_scale == "source" and cfg.model.scale_attn_by_inverse_layer_idx:
        raise ConfigError(f"a {family.title} model scales attention by each layer's position (e.g. GPT-2); "
                          "method.attn_scale=source cannot be expressed there (use method.attn_scale=position)")


def check_stacking(cfg: DictConfig) -> None:
    n, k = cfg.method.n_layer, cfg.model.n_layer
    if n % 2 or not 2 <= n <= k:
        raise ConfigError(f"stacking needs an even method.n_layer <= {k} (model.n_layer), got {n}")


def check_hybrid_stacking(cfg: DictConfig) -> None:
    n, k = cfg.method.n_layer, cfg.model.n_layer
    if not 2 <= n <= k:
        raise ConfigError(f"hybrid stacking needs 2 <= method.n_layer <= {k} (model.n_layer), got {n}")
    check_reference_steps(cfg)


def check_half_width(cfg: DictConfig) -> None:
    if cfg.model.n_head % 2 or cfg.model.n_embd % 2:
        raise ConfigError(f"half width needs even heads and width, got model.n_head={cfg.model.n_head}, "
                          f"model.n_embd={cfg.model.n_embd} (the paper's XLarge has 25 heads and no half-width row)")
    check_reference_steps(cfg)


def check_kd(cfg: DictConfig) -> None:
    m, k = cfg.method, cfg.model.n_layer
    _positive("method.n_layer", m.n_layer)
    if not 0 <= m.alpha <= 1:
        raise ConfigError(f"method.alpha={m.alpha} (the weight of the CE term) must lie in [0, 1]")
    if not m.temperature > 0:
        raise ConfigError(f"method.temperature={m.temperature} must be positive")
    if m.min_lr is not None and not 0 <= m.min_lr <= cfg.optim.lr:
        raise ConfigError(f"method.min_lr={m.min_lr} (the student's lr floor) must lie between 0 and "
                          f"optim.lr={cfg.optim.lr}")
    if m.name == "distilbert_kd":
        blocks = list(m.student_blocks) if m.student_blocks else distilbert_blocks(k, m.n_layer)
        missing = [b for b in blocks if not 0 <= b < k]
        if len(blocks) != m.n_layer or missing:
            raise ConfigError(f"method.student_blocks={blocks} must list {m.n_layer} blocks of the {k}-layer "
                              "teacher" + (f"; {missing} do not exist" if missing else ""))
    check_reference_steps(cfg)


def check_method(cfg: DictConfig) -> None:
    m = cfg.method
    recipe = method_recipe(cfg)
    family = family_of(cfg.model)
    if family.methods is not None and m.name not in family.methods:
        raise ConfigError(f"method {m.name!r} does not support {family.title} models; with this model use one of "
                          f"{', '.join(family.methods)}")
    if m.attn_scale is not None and m.attn_scale not in ATTN_SCALES:
        raise ConfigError(f"method.attn_scale={m.attn_scale!r} is not one of {', '.join(ATTN_SCALES)}")
    validate = getattr(recipe, "validate", None)
    if validate is not None:
        validate(cfg)



# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_config(path: str | Path) -> dict:
    """The model hyper-parameters recorded in one of our checkpoints, read without loading the weights (mmap).
    Raises CheckpointError naming the file when it is missing, corrupt (e.g. truncated) or not one of ours."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; give the path of a last.ckpt or best.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        best = path.with_name("best.ckpt")
        stage = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        instead = f"use {best} (the best validation step) instead, or " if best.is_file() and best != path else ""
        raise CheckpointError(f"checkpoint {path} is corrupt (truncated or not a torch file: {reason}); {instead}"
                              f"remove {stage} to train that stage again") from None
    model = (ckpt.get("hyper_parameters") or {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a lit_inheritune checkpoint (no model hyper-parameters)")
    return model


def check_reference_checkpoint(cfg: DictConfig) -> None:
    """A given reference checkpoint has the depth and width the config describes (`model` is the reference),
    so targets, growth and baselines are sized against the model that is actually loaded."""
    if not uses_reference(cfg) or not cfg.method.reference.ckpt:
        return
    path = Path(cfg.method.reference.ckpt)
    if not path.is_file():
        raise ConfigError(f"method.reference.ckpt={path}: no such file")
    hparams = checkpoint_config(path)
    theirs, ours = family_of(hparams), family_of(cfg.model)
    if theirs is not ours:
        raise ConfigError(f"method.reference.ckpt={path} holds a {theirs.title} model but the config's model is a "
                          f"{ours.title} model; choose the model config the checkpoint was trained with")
    shape = checkpoint_shape(hparams)
    differ = {key: value for key, value in shape.items() if value is not None and value != cfg.model[key]}
    if differ:
        theirs = ", ".join(f"{key}={value}" for key, value in differ.items())
        ours = " ".join(f"model.{key}={cfg.model[key]}" for key in differ)
        fix = " ".join(f"model.{key}={value}" for key, value in differ.items())
        raise ConfigError(f"method.reference.ckpt={path} has {theirs} but the config describes a reference with "
                          f"{ours}; pass {fix} to use this checkpoint, or give a checkpoint of this model")


def check_stage_checkpoints(cfg: DictConfig) -> None:
    """Checkpoints this run would resume from or build on (its own stages) can be read."""
    run_dir = Path(cfg.run_dir)
    if run_dir.is_dir():
        for last in sorted(run_dir.glob("**/checkpoints/last.ckpt")):
            checkpoint_config(last)


# ----------------------------------------------------------------------------------------------------------------
# Data


def check_data(cfg: DictConfig) -> None:
    """A prepared data directory matches `data.prepare`, its shards their checksums, and it fits the model; a
    directory still to be prepared has a `prepare` section whose source and tokenizer can work."""
    from lit_inheritune.data.prepare import (
        MANIFEST_FILE,
        DataError,
        check_fits,
        check_request,
        load_prepared,
        request_differences,
    )

    d = cfg.data
    for key in ("batch_size", "num_val_windows"):
        _positive(f"data.{key}", d[key])
    if d.sampling not in ("random", "sequential"):
        raise ConfigError(f"data.sampling={d.sampling!r} is not one of random, sequential")
    data_dir = Path(d.data_dir)
    request = OmegaConf.to_container(d.prepare, resolve=True, throw_on_missing=True) if d.prepare else None
    if not (data_dir / MANIFEST_FILE).is_file():
        if request is None:
            raise DataError(f"no prepared data in data.data_dir={data_dir} (no {MANIFEST_FILE}) and the data "
                            "config has no prepare section; prepare it with `python -m lit_inheritune.data.prepare "
                            f"--out {data_dir} ...` or point data.data_dir at a prepared directory")
        check_request(request, model_vocab_size=cfg.model.vocab_size)  # prepared when training starts
        return
    manifest, train, val = load_prepared(data_dir, verify_checksum=d.verify_checksum)
    if request is not None:
        differences = request_differences(manifest, request)
        if differences:
            raise DataError(f"data.data_dir={data_dir} holds data prepared with other settings than data.prepare "
                            f"asks for ({'; '.join(differences)}); point data.data_dir at a new directory (it is "
                            f"prepared on first use) or delete {data_dir}")
    check_fits(data_dir, manifest, train, val, block_size=cfg.model.block_size, model_vocab_size=cfg.model.vocab_size)


def check_analysis(cfg: DictConfig) -> None:
    a = cfg.analysis
    _positive("analysis.n_seq", a.n_seq)
    if a.seq_len < 2:
        raise ConfigError(f"analysis.seq_len={a.seq_len} must be at least 2")
    if not a.taus or not all(0 < t <= 1 for t in a.taus) or not 0 < a.eta <= 1:
        raise ConfigError(f"analysis.taus={list(a.taus)} and analysis.eta={a.eta} must lie in (0, 1]")


def preflight(cfg: DictConfig) -> None:
    """Raise ConfigError, DataError or CheckpointError for anything in `cfg` that cannot work, before any
    compute. Cheap, except that shard checksums are verified (unless data.verify_checksum=false)."""
    check_train(cfg)
    check_optim(cfg)
    check_model(cfg)
    check_method(cfg)
    if cfg.analyze:
        check_analysis(cfg)
    check_reference_checkpoint(cfg)
    check_data(cfg)
    check_stage_checkpoints(cfg)


# ----------------------------------------------------------------------------------------------------------------
# Hydra


class Preflight(Callback):
    """Runs `check` (a dotted path to a function of the job's config) before Hydra creates the job's output
    directory; for a sweep of the basic sweeper, on every job's config before the first job starts."""

    def __init__(self, check: str) -> None:
        module, _, name = check.rpartition(".")
        self.check = getattr(importlib.import_module(module), name)

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        with cli_errors():  # else Hydra would only warn and start the job
            self.check(_job_config(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        with cli_errors():
            for job in _sweep_jobs(config):
                self.check(job)


def _job_config(config: DictConfig) -> DictConfig:
    job = config.copy()
    with open_dict(job):
        del job["hydra"]
    return job


def _sweep_jobs(config: DictConfig) -> Sequence[DictConfig]:
    """The config of every job of a basic-sweeper sweep, composed as its launcher will (other sweepers, e.g.
    Optuna, choose their jobs as they go: theirs are checked by run.run as each starts)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    sweeper = config.hydra.sweeper
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return []
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
    [jobs] = BasicSweeper.split_arguments(overrides, max_batch_size=None)  # one batch: every job's overrides
    hydra = GlobalHydra.instance().hydra
    return [_job_config(hydra.compose_config(config.hydra.job.config_name, job, run_mode=RunMode.RUN))
            for job in jobs]
