"""The runner: a composed config in, the configured method's stages trained, a summary out.

The method is the class `cfg.method._target_` names (lit_inheritune/methods/): `plan(run)` lays out every stage it
may train, checked here before any training so a stage made under other settings is an error, never silently
reused; `run(run, datamodule)` trains them; `summary(run, results)` adds its own closing lines. The runner knows no
method, no stage name and no method key.
"""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import DictConfig

from lit_inheritune.checks import preflight
from lit_inheritune.methods import Stage, make_run
from lit_inheritune.training.strategy import say


def plan(cfg: DictConfig) -> list[Stage]:
    """Every stage the configured method may train, in order."""
    run = make_run(cfg)
    return run.method.plan(run)


def summary_line(cfg: DictConfig, result: dict) -> str:
    return (
        f"[{cfg.name}] {result['stage']} {result['n_layer']}L ({result['params'] / 1e6:.2f}M params): "
        f"val loss {result['val_loss']:.4f} (ppl {result['val_ppl']:.1f}) after {result['steps']} steps, "
        f"{result['tokens'] / 1e6:.2f}M tokens, {result['tokens_per_sec']:.0f} tok/s, "
        f"{result['wall_seconds'] / 60:.1f} min | checkpoint {result['last_checkpoint']} | "
        f"logs {Path(result['last_checkpoint']).parent.parent}"
    )


def analyze_run(cfg: DictConfig, results: list[dict]) -> Path:
    """Attention analysis (PAPER.md section 5) of a finished run's final checkpoints (and of its reference, when the
    method trained one), written to <run dir>/analysis and, when W&B logging is configured, logged as images to the
    experiment's group."""
    from lit_inheritune.analysis import analyze_checkpoint

    label = lambda r: r["stage"] if "-L" in r["stage"] else f"{r['stage']}-L{r['n_layer']}"
    ckpts = {label(r): r["last_checkpoint"] for r in results if r.get("last_checkpoint")}
    out_dir = Path(cfg.run_dir) / "analysis"
    a = cfg.analysis
    analyze_checkpoint(ckpts, data_dir=cfg.data.data_dir, out_dir=out_dir, n_seq=a.n_seq,
                       seq_len=min(a.seq_len, cfg.model.block_size), taus=list(a.taus), eta=a.eta, seed=a.seed)
    if "wandb" in (cfg.get("logger") or {}):
        import wandb

        w = cfg.logger.wandb
        mode = "online" if os.environ.get("WANDB_API_KEY") and w.get("offline") is not True else "offline"
        with wandb.init(project=w.project, group=w.group, job_type="analysis", name=f"{cfg.run_name}/analysis",
                        dir=str(out_dir), mode=mode) as wb:
            wb.log({p.stem: wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))})
    say(f"[{cfg.name}] attention analysis: {out_dir / 'max_rank.md'}")
    return out_dir


def run(cfg: DictConfig) -> list[dict]:
    from hydra.utils import instantiate

    run = preflight(cfg)  # every check that needs no trained model (lit_inheritune/checks.py), before any compute
    method = run.method
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # the stages' identities name the prepared shards
    method.check(run)  # before any training: no directory of this run may hold work made under other settings
    results = method.run(run, datamodule)
    # once per run, not once per process of a distributed one
    say(*(summary_line(cfg, result) for result in results), *method.summary(run, results))
    if cfg.get("analyze"):
        analyze_run(cfg, method.analysis_results(run, results))
    return results
