"""Turn a composed config into stages and run them. Each method is one function of the config."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.runner import ConfigError, check_schedule, fit_stage


def _meta(cfg: DictConfig, stage: str) -> dict:
    return {"experiment": cfg.name, "method": cfg.method.name, "seed": int(cfg.seed), "stage": stage}


def run_scratch(cfg: DictConfig) -> list[dict]:
    """A randomly initialised model, trained once: the reference and the scratch baselines."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CausalLM.from_config(instantiate(cfg.model), instantiate(cfg.optim), _meta(cfg, "scratch"))
    datamodule = instantiate(cfg.data)
    return [fit_stage(cfg, module, datamodule, Path(cfg.run_dir), stage="scratch")]


METHODS = {
    "scratch": run_scratch,
}


def summary_line(cfg: DictConfig, result: dict) -> str:
    return (
        f"[{cfg.name}] {cfg.method.name} {result['n_layer']}L ({result['params'] / 1e6:.2f}M params): "
        f"val loss {result['val_loss']:.4f} (ppl {result['val_ppl']:.1f}) after {result['steps']} steps, "
        f"{result['tokens'] / 1e6:.2f}M tokens, {result['tokens_per_sec']:.0f} tok/s, "
        f"{result['wall_seconds'] / 60:.1f} min | checkpoint {result['last_checkpoint']} | "
        f"logs {Path(result['last_checkpoint']).parent.parent}"
    )


def run(cfg: DictConfig) -> list[dict]:
    if cfg.method.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.method.name!r}; known: {sorted(METHODS)}")
    check_schedule(cfg)
    results = METHODS[cfg.method.name](cfg)
    for result in results:
        print(summary_line(cfg, result), flush=True)
    return results
