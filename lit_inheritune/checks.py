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

from lit_inheritune.errors import ConfigError, cli_errors
from lit_inheritune.methods.checks import check_steps, positive
from lit_inheritune.models import checkpoint_shape, family_of
from lit_inheritune.runs import checkpoint_config  # noqa: F401  (also checks.checkpoint_config, as before)

REFERENCE_KINDS = ("train", "ckpt", "pretrained")


# ----------------------------------------------------------------------------------------------------------------
# Schedule, optimizer, model


def check_train(cfg: DictConfig) -> None:
    for key in ("val_every_n_steps", "log_every_n_steps", "accumulate_grad_batches"):
        positive(f"train.{key}", cfg.train[key])
    check_steps(cfg, "train.max_steps", cfg.train.max_steps)
    # Stages end by asking the Trainer to stop (a matched round, stacking's stage 1), and Lightning ignores that
    # request until min_steps / min_epochs are reached (min_epochs=1 is an endless epoch here).
    for key in ("min_steps", "min_epochs"):
        if cfg.trainer.get(key):  # (0 and null are the defaults)
            raise ConfigError(f"trainer.{key}={cfg.trainer[key]}: a stage's length is train.max_steps (and the "
                              f"method's rounds); remove trainer.{key}")
    if cfg.train.get("compile") and not c_compiler():
        raise ConfigError("train.compile=true: torch.compile builds its kernels with a C/C++ compiler and none was "
                          "found (CXX, CC, g++, gcc, clang); install one (apt install g++) or set train.compile=false")


def c_compiler() -> str | None:
    """The C/C++ compiler inductor would build with (its CXX, else the usual names), or None: without one a
    compiled run fails at its first step, deep in a traceback."""
    import os
    import shutil

    names = [os.environ.get("CXX"), os.environ.get("CC"), "g++", "c++", "gcc", "cc", "clang++", "clang"]
    return next((path for name in names if name and (path := shutil.which(name))), None)


# What Lightning's Trainer accepts (lightning.fabric.plugins.precision.precision._PRECISION_INPUT and the accelerator
# registry, plus "auto" and "gpu"), listed here so checking them imports no Lightning: tests/test_failure_paths.py
# compares them with the installed Lightning's.
PRECISIONS = ("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed",
              "32-true", "64-true", "64", "32", "16", "bf16")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


def check_trainer(cfg: DictConfig, count_gpus: bool = True) -> None:
    """The Trainer can be built on this machine: a precision and an accelerator Lightning knows, and (`count_gpus`)
    the GPUs a GPU trainer asks for (torch is imported only then). Checked here, not by Lightning inside the first stage, so a
    typo fails before any directory is written."""
    t = cfg.trainer
    precision = t.get("precision")
    if precision is not None and str(precision) not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not a precision Lightning knows; use one of "
                          f"{', '.join(PRECISIONS[2:8])} (32-true on CPU, bf16-mixed on a recent GPU)")
    accelerator = t.get("accelerator")
    if not isinstance(accelerator, str):
        return  # unset (Lightning's auto), or an Accelerator object the config builds
    if accelerator not in ACCELERATORS:
        raise ConfigError(f"trainer.accelerator={accelerator!r} is not one of {', '.join(ACCELERATORS)} (or pick a "
                          "trainer config: trainer=cpu|gpu|ddp|ddp_cpu|fsdp)")
    if accelerator in ("gpu", "cuda", "mps") and count_gpus and not _JOBS_RUN_ELSEWHERE[0]:
        import torch

        mps = getattr(torch.backends, "mps", None)
        available = {"cuda": torch.cuda.device_count(),
                     "mps": int(bool(mps and mps.is_available()))}
        count = available["mps"] if accelerator == "mps" else available["cuda"] or (
            available["mps"] if accelerator == "gpu" else 0)
        if not count:
            raise ConfigError(f"trainer.accelerator={accelerator} but torch sees no {'GPU' if accelerator != 'mps' else 'MPS device'} "
                              "on this machine; train on the CPU with trainer=cpu (trainer=ddp_cpu for several "
                              "processes), or run this command where a GPU is")
        devices = t.get("devices")
        if isinstance(devices, int) and not isinstance(devices, bool) and devices > count:
            raise ConfigError(f"trainer.devices={devices} but this machine has {count} GPU(s); set "
                              f"trainer.devices={count} (or trainer.devices=auto)")


# Set while a sweep whose launcher runs its jobs on other machines (SLURM) is checked on the machine that submits
# it, often a login node without GPUs: the GPUs are checked where each job runs (run.run's preflight).
_JOBS_RUN_ELSEWHERE = [False]

SLURM_LAUNCHER = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"


def check_launcher(config: DictConfig) -> None:
    """hydra/launcher=slurm (conf/hydra/launcher/slurm.yaml) asks SLURM for a task, and a GPU, per device of the
    trainer on each of its nodes: Lightning under SLURM runs one process per task and stops unless
    --ntasks-per-node equals trainer.devices and --nodes trainer.num_nodes. Checked before anything is submitted,
    on the command's config (`config`, with its hydra node)."""
    launcher = config.hydra.get("launcher") or {}
    if launcher.get("_target_") != SLURM_LAUNCHER:
        return
    t = config.trainer
    wanted = {}
    for key, value, unit in (("trainer.devices", t.get("devices"), "GPUs per node"),
                             ("trainer.num_nodes", t.get("num_nodes", 1), "nodes")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(
                f"{key}={value!r}: hydra/launcher=slurm asks SLURM for one task and one GPU per device on each "
                f"node, so it needs {key} as a number; set {key}=<{unit}> (the gpt2_* experiments set "
                "trainer.devices=3)")
        wanted[key] = value
    asked = {"tasks_per_node": ("trainer.devices", wanted["trainer.devices"]),
             "nodes": ("trainer.num_nodes", wanted["trainer.num_nodes"])}
    for name, (key, value) in asked.items():
        given = OmegaConf.select(launcher, name)
        if given != value:
            raise ConfigError(f"hydra.launcher.{name}={given} but {key}={value}: Lightning under SLURM needs them "
                              f"equal; leave hydra.launcher.{name} to follow {key}")


def check_names(cfg: DictConfig) -> None:
    """`name` and `run_name` (method.tag and the seed) are folders below paths.log_dir, one level each: a "/" or
    ".." would put the run's directory (and what the report collects) somewhere else."""
    for key, value in (("name", cfg.name), ("run_name", cfg.run_name)):
        value = str(value)
        if value in ("", ".", "..") or "/" in value or "\\" in value:
            fix = value.replace("/", "-").replace("\\", "-").strip(".-") or "my-experiment"
            source = "" if key == "name" else f" (method.tag={cfg.method.get('tag')!r}, seed={cfg.seed})"
            raise ConfigError(f"{key}={value!r}{source} must be one folder name (no '/' or '\\', not '.' or "
                              f"'..'): it names the run's folder below paths.log_dir; use e.g. "
                              f"{'name' if key == 'name' else 'method.tag'}={fix}")


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
        positive(f"model.{key}", m[key])
    if m.n_embd % m.n_head:
        raise ConfigError(f"model.n_embd={m.n_embd} is not divisible by model.n_head={m.n_head}")


# ----------------------------------------------------------------------------------------------------------------
# The method and the reference: `model` is the reference (k layers); the method checks its own keys against it.


def check_reference(run) -> None:
    """The reference a method starts from is one that can exist: trained here with a step count that ends on a
    validation step, a given checkpoint, or the pretrained model the model config names."""
    ref, family = run.reference, family_of(run.model)
    if ref.kind not in REFERENCE_KINDS:
        raise ConfigError(f"reference.kind={ref.kind!r} is not one of {', '.join(REFERENCE_KINDS)} (the options of "
                          "the reference group: reference=train|ckpt|pretrained)")
    if not run.method.uses_reference:
        return
    if family.pretrained and ref.kind == "train":
        raise ConfigError(f"a {family.title} model config names pretrained weights, which are loaded, never trained "
                          "here: add reference=pretrained")
    if ref.kind == "pretrained" and not family.pretrained:
        raise ConfigError(f"reference=pretrained needs a model config that names pretrained weights (e.g. model=hf); "
                          f"a {family.title} model config has none: use reference=train or reference=ckpt")
    if ref.kind != "ckpt" and ref.ckpt:
        raise ConfigError(f"reference.ckpt={ref.ckpt} is given but the reference is {ref.kind!r}: add reference=ckpt "
                          "to start from that checkpoint")
    if ref.kind == "train":
        for key in ("max_steps", "seed"):
            if getattr(ref, key) is None:
                raise ConfigError(f"reference.{key} is not set: the reference is trained here (reference=train)")
        check_steps(run.cfg, "reference.max_steps", ref.max_steps)


def check_method(cfg: DictConfig):
    """The run context (methods.make_run): the method's keys and types checked against its class, then its own
    checks, then the reference it starts from. Which methods a model family supports is the family's."""
    from lit_inheritune.methods import make_run

    run = make_run(cfg)
    family = family_of(cfg.model)
    if family.methods is not None and run.method.name not in family.methods:
        raise ConfigError(f"method {run.method.name!r} does not support {family.title} models; with this model use "
                          f"one of {', '.join(family.methods)}")
    run.method.validate(run)
    check_reference(run)
    return run


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def check_reference_checkpoint(run) -> None:
    """A given reference checkpoint has the depth and width the config describes (`model` is the reference),
    so targets, growth and baselines are sized against the model that is actually loaded."""
    if not run.method.uses_reference or run.reference.kind != "ckpt":
        return
    cfg = run.cfg
    path = Path(run.reference.ckpt)
    if not path.is_file():
        raise ConfigError(f"reference.ckpt={path}: no such file")
    hparams = checkpoint_config(path, key="reference.ckpt")
    theirs, ours = family_of(hparams), family_of(cfg.model)
    if theirs is not ours:
        raise ConfigError(f"reference.ckpt={path} holds a {theirs.title} model but the config's model is a "
                          f"{ours.title} model; choose the model config the checkpoint was trained with")
    shape = checkpoint_shape(hparams)
    differ = {key: value for key, value in shape.items() if value is not None and value != cfg.model[key]}
    if differ:
        theirs = ", ".join(f"{key}={value}" for key, value in differ.items())
        ours = " ".join(f"model.{key}={cfg.model[key]}" for key in differ)
        fix = " ".join(f"model.{key}={value}" for key, value in differ.items())
        raise ConfigError(f"reference.ckpt={path} has {theirs} but the config describes a reference with "
                          f"{ours}; pass {fix} to use this checkpoint, or give a checkpoint of this model")


def check_stage_checkpoints(cfg: DictConfig) -> None:
    """Checkpoints this run would resume from or build on (its own stages) can be read."""
    run_dir = Path(cfg.run_dir)
    if run_dir.is_dir():
        for last in sorted(run_dir.glob("**/checkpoints/last.ckpt")):
            checkpoint_config(last, own_stage=True)


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
        positive(f"data.{key}", d[key])
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
    positive("analysis.n_seq", a.n_seq)
    if a.seq_len < 2:
        raise ConfigError(f"analysis.seq_len={a.seq_len} must be at least 2")
    if not a.taus or not all(0 < t <= 1 for t in a.taus) or not 0 < a.eta <= 1:
        raise ConfigError(f"analysis.taus={list(a.taus)} and analysis.eta={a.eta} must lie in (0, 1]")


def preflight(cfg: DictConfig):
    """Raise ConfigError, DataError or CheckpointError for anything in `cfg` that cannot work, before any
    compute; return the run context (methods.make_run). Cheap, except that shard checksums are verified (unless
    data.verify_checksum=false)."""
    check_names(cfg)
    check_train(cfg)
    check_trainer(cfg)
    check_optim(cfg)
    check_model(cfg)
    run = check_method(cfg)
    if cfg.analyze:
        check_analysis(cfg)
    check_reference_checkpoint(run)
    check_data(cfg)
    check_stage_checkpoints(cfg)
    return run


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
            check_launcher(config)
            elsewhere = (config.hydra.get("launcher") or {}).get("_target_") == SLURM_LAUNCHER
            _JOBS_RUN_ELSEWHERE[0] = elsewhere
            try:
                for job in _sweep_jobs(config):
                    self.check(job)
            finally:
                _JOBS_RUN_ELSEWHERE[0] = False


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
