"""Turn a composed config into stages and run them. Each method is one function of the config."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.checks import distilbert_blocks, preflight
from lit_inheritune.checks import is_hf as _is_hf
from lit_inheritune.model import GPT
from lit_inheritune.provenance import provenance
from lit_inheritune.surgery import (
    check_same_family,
    gpt_from_checkpoint,
    grow,
    half_width,
    hybrid_stack,
    inherit_blocks,
    stack_blocks,
)
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig
from lit_inheritune.training.runner import fit_stage, write_json_atomic


def _meta(cfg: DictConfig, stage: str) -> dict:
    return {"experiment": cfg.name, "method": cfg.method.name, "seed": int(cfg.seed), "stage": stage}


def _optim(cfg: DictConfig, max_steps: int) -> OptimConfig:
    """A fresh schedule for a stage of `max_steps` steps (each stage restarts warmup and cosine)."""
    return instantiate(cfg.optim, decay_steps=max_steps)


def scratch_dir(cfg: DictConfig, n_layer: int, steps: int, seed: int | None = None) -> Path:
    """Where `method=scratch` with this depth, step count and seed runs (its tag), so other methods can share it."""
    seed = cfg.seed if seed is None else seed
    return Path(cfg.paths.log_dir) / cfg.name / f"scratch-L{n_layer}-T{steps}-s{seed}"


def train_scratch(cfg: DictConfig, datamodule, n_layer: int, steps: int, stage: str = "scratch",
                  seed: int | None = None) -> dict:
    """The scratch run of this depth, steps and seed (default: the run's); with another seed it also draws
    that seed's batches, so the run is the same whichever sweep job trains it."""
    if seed is not None and seed != cfg.seed:
        cfg = OmegaConf.merge(cfg, {"seed": seed})
        datamodule = instantiate(cfg.data, seed=seed)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cfg = instantiate(cfg.model, n_layer=n_layer)
    if _is_hf(cfg):  # a random-init model of the reference's architecture
        module = CausalLM(model_cfg.random(), _optim(cfg, steps), _meta(cfg, stage))
    else:
        module = CausalLM.from_config(model_cfg, _optim(cfg, steps), _meta(cfg, stage))
    return fit_stage(cfg, module, datamodule, scratch_dir(cfg, n_layer, steps), stage=stage, max_steps=steps)


def run_scratch(cfg: DictConfig) -> list[dict]:
    """A randomly initialised model, trained once: the reference and the scratch baselines."""
    return [train_scratch(cfg, instantiate(cfg.data), cfg.model.n_layer, cfg.train.max_steps)]


def reference_dir(cfg: DictConfig) -> Path:
    """The reference is the experiment's scratch run of the reference's depth and steps, so a sweep over n
    trains it once, and `method=scratch` of that size (Table 1's full-model row) is the same run."""
    return scratch_dir(cfg, cfg.model.n_layer, cfg.method.reference.max_steps, cfg.method.reference.seed)


def obtain_reference(cfg: DictConfig, datamodule) -> tuple[GPT, dict | None]:
    """The trained reference model and its result (None for a given checkpoint, whose val loss is
    measured on this experiment's val windows by the caller)."""
    ref_cfg = cfg.method.reference
    if ref_cfg.ckpt:
        reference = gpt_from_checkpoint(ref_cfg.ckpt)
        check_same_family(instantiate(cfg.model), reference.config, what=f"reference checkpoint {ref_cfg.ckpt}")
        return reference, None
    if _is_hf(cfg):  # a pretrained model: loaded, never trained here
        return instantiate(cfg.model).load(), None
    steps = int(ref_cfg.max_steps)
    result = train_scratch(cfg, datamodule, cfg.model.n_layer, steps, stage="reference", seed=int(ref_cfg.seed))
    return gpt_from_checkpoint(result["last_checkpoint"]), result


def _surgery(cfg: DictConfig):
    """(inherit(reference, n_layer, blocks), grow(target, reference, n_new)) for the configured model: surgery.py
    for our GPT, hf.py for Hugging Face models (whose targets train in float32 whatever the reference's dtype)."""
    m = cfg.method
    if _is_hf(cfg):
        from lit_inheritune.hf import grow_hf, inherit_hf_layers

        return (lambda ref, n, blocks: inherit_hf_layers(ref, n_layer=n, blocks=blocks).float(),
                lambda tgt, ref, n_new: grow_hf(tgt, ref, n_new=n_new, mode=m.grow_mode).float())
    kwargs = dict(parts=m.parts, copy_wpe=m.copy_wpe, copy_ln_f=m.copy_ln_f)
    return (lambda ref, n, blocks: inherit_blocks(ref, n_layer=n, blocks=blocks, **kwargs),
            lambda tgt, ref, n_new: grow(tgt, ref, n_new=n_new, mode=m.grow_mode, **kwargs))


def run_inheritune(cfg: DictConfig) -> list[dict]:
    """Algorithm 1: inherit, train, and grow until the target matches the reference's val loss."""
    m = cfg.method
    datamodule = instantiate(cfg.data)
    reference, ref_result = obtain_reference(cfg, datamodule)
    if ref_result is None:
        ref_result = _measure(cfg, reference, datamodule)
        print(f"[{cfg.name}] reference {ref_result['n_layer']}L (given, not trained here): val loss "
              f"{ref_result['val_loss']:.4f} on this experiment's val windows", flush=True)
    inherit, grow_target = _surgery(cfg)
    results, target, rnd = [], None, 0
    n_layer = len(m.blocks) if m.blocks else int(m.n_layer)
    while True:
        L.seed_everything(cfg.seed + rnd, workers=True, verbose=False)
        stage = f"round{rnd + 1}-L{n_layer}"
        if target is None:
            blocks = list(m.blocks) if m.blocks else None
            target = inherit(reference, None if blocks else n_layer, blocks)
        else:
            target = grow_target(target, reference, n_layer - target.config.n_layer)
        result = _judge(_train_from(cfg, datamodule, target, stage), ref_result, m)
        results.append(result)
        print(f"[{cfg.name}] {stage}: val loss {result['val_loss']:.4f} vs reference "
              f"{ref_result['val_loss']:.4f}: {'matched' if result['matched'] else 'not matched'}", flush=True)
        if result["matched"] or m.blocks or n_layer + m.grow_by > m.max_layers:
            break
        target = gpt_from_checkpoint(result["last_checkpoint"])  # the trained weights, also on resume
        n_layer += m.grow_by
        rnd += 1
    baselines = [  # same-size random init, e.g. [T, 2T] as in Table 1
        _judge(train_scratch(cfg, datamodule, n_layer, int(steps), stage=f"scratch-L{n_layer}-T{steps}"), ref_result, m)
        for steps in m.scratch_baselines or []
    ]
    write_stage_table(cfg, ref_result, results + baselines)
    return results + baselines


def _judge(result: dict, ref: dict, m: DictConfig) -> dict:
    return {**result, "reference_val_loss": ref["val_loss"], "matched": result["val_loss"] <= ref["val_loss"] + m.tolerance}


def _measure(cfg: DictConfig, model: GPT, datamodule) -> dict:
    """Val loss of a given model on this experiment's val windows (no training)."""
    trainer = L.Trainer(accelerator=cfg.trainer.accelerator, devices=1, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    module = CausalLM(model, _optim(cfg, 1))
    val_loss = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    return {"stage": "reference", "n_layer": model.config.n_layer, "params": model.num_params(),
            "steps": None, "tokens": None, "val_loss": float(val_loss)}


def write_stage_table(cfg: DictConfig, ref: dict, results: list[dict]) -> str:
    rows = [("reference", ref, "")] + [(r["stage"], r, "yes" if r["matched"] else "no") for r in results]
    lines = ["| stage | layers | params | steps | tokens | val loss | reference val loss | matched |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r, matched in rows:
        steps = "" if r.get("steps") is None else r["steps"]
        tokens = "" if r.get("tokens") is None else f"{r['tokens'] / 1e6:.2f}M"
        lines.append(f"| {name} | {r['n_layer']} | {r['params'] / 1e6:.2f}M | {steps} | {tokens} | "
                     f"{r['val_loss']:.4f} | {ref['val_loss']:.4f} | {matched} |")
    table = "\n".join(lines) + "\n"
    prov = {**provenance(), "seed": int(cfg.seed), "experiment": cfg.name}
    header = "".join(f"- {k}: `{v}`\n" for k, v in prov.items())
    run_dir = Path(cfg.run_dir)
    (run_dir / "stages.md").write_text(f"{header}\n{table}")
    write_json_atomic(run_dir / "stages.json", {"reference": ref, "stages": results, "provenance": prov})
    return table


def _train_from(cfg: DictConfig, datamodule, model: GPT, stage: str) -> dict:
    """Train an initialised model for train.max_steps in <run dir>/<stage>, with a fresh schedule."""
    module = CausalLM(model, _optim(cfg, cfg.train.max_steps), _meta(cfg, stage))
    return fit_stage(cfg, module, datamodule, Path(cfg.run_dir) / stage, stage=stage)


def run_stacking(cfg: DictConfig) -> list[dict]:
    """Stacking: train an n/2-layer model from scratch for T steps (the scratch run of that size), copy its
    blocks 0..n/2-1 into n/2..n-1 and train T more steps. `model` is the reference; n = method.n_layer."""
    n = int(cfg.method.n_layer)
    datamodule = instantiate(cfg.data)
    first = train_scratch(cfg, datamodule, n // 2, cfg.train.max_steps, stage=f"stage1-L{n // 2}")
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    stacked = stack_blocks(gpt_from_checkpoint(first["last_checkpoint"]))
    return [first, _train_from(cfg, datamodule, stacked, f"stage2-L{n}")]


def run_hybrid_stacking(cfg: DictConfig) -> list[dict]:
    """Hybrid stacking: reference blocks 0..n/2-1 repeated to fill n blocks, trained T steps."""
    n = int(cfg.method.n_layer)
    datamodule = instantiate(cfg.data)
    reference, _ = obtain_reference(cfg, datamodule)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return [_train_from(cfg, datamodule, hybrid_stack(reference, n_source=n // 2, n_layer=n), f"hybrid-L{n}")]


def run_half_width(cfg: DictConfig) -> list[dict]:
    """Half width: the reference's depth at half its width and heads, sliced from it, trained T steps."""
    datamodule = instantiate(cfg.data)
    reference, _ = obtain_reference(cfg, datamodule)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model = half_width(reference)
    return [_train_from(cfg, datamodule, model, f"halfwidth-L{model.config.n_layer}-d{model.config.n_embd}")]


def run_kd(cfg: DictConfig) -> list[dict]:
    """Logit distillation (`kd`: random-init student) or DistilBERT-style (`distilbert_kd`: student blocks
    copied from teacher blocks, with the token embedding) from the reference as a frozen teacher."""
    from lit_inheritune.training.distill import DistillationLM

    m, k = cfg.method, cfg.model.n_layer
    n = int(m.n_layer)
    blocks = None
    if m.name == "distilbert_kd":
        blocks = list(m.student_blocks) if m.student_blocks else distilbert_blocks(k, n)
    datamodule = instantiate(cfg.data)
    teacher, _ = obtain_reference(cfg, datamodule)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    student = inherit_blocks(teacher, blocks=blocks) if blocks else GPT(instantiate(cfg.model, n_layer=n))
    stage = f"student-L{n}"
    module = DistillationLM(student, teacher, _optim(cfg, cfg.train.max_steps), alpha=m.alpha,
                            temperature=m.temperature, meta=_meta(cfg, stage))
    return [fit_stage(cfg, module, datamodule, Path(cfg.run_dir) / stage, stage=stage)]


METHODS = {
    "scratch": run_scratch,
    "inheritune": run_inheritune,
    "stacking": run_stacking,
    "hybrid_stacking": run_hybrid_stacking,
    "half_width": run_half_width,
    "kd": run_kd,
    "distilbert_kd": run_kd,
}


def summary_line(cfg: DictConfig, result: dict) -> str:
    return (
        f"[{cfg.name}] {result['stage']} {result['n_layer']}L ({result['params'] / 1e6:.2f}M params): "
        f"val loss {result['val_loss']:.4f} (ppl {result['val_ppl']:.1f}) after {result['steps']} steps, "
        f"{result['tokens'] / 1e6:.2f}M tokens, {result['tokens_per_sec']:.0f} tok/s, "
        f"{result['wall_seconds'] / 60:.1f} min | checkpoint {result['last_checkpoint']} | "
        f"logs {Path(result['last_checkpoint']).parent.parent}"
    )


def analyze_run(cfg: DictConfig, results: list[dict]) -> Path:
    """Attention analysis (PAPER.md section 5) of a finished run's final checkpoints, written to
    <run dir>/analysis and, when W&B logging is configured, logged as images to the experiment's group."""
    from lit_inheritune.analysis import analyze_checkpoint

    stages = Path(cfg.run_dir) / "stages.json"
    if stages.exists():  # Inheritune: the reference beside every trained stage
        data = json.loads(stages.read_text())
        results = [data["reference"], *data["stages"]]
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
    print(f"[{cfg.name}] attention analysis: {out_dir / 'max_rank.md'}", flush=True)
    return out_dir


def run(cfg: DictConfig) -> list[dict]:
    preflight(cfg)  # every check that needs no trained model (lit_inheritune/checks.py), before any compute
    results = METHODS[cfg.method.name](cfg)
    for result in results:
        print(summary_line(cfg, result), flush=True)
    table = Path(cfg.run_dir) / "stages.md"
    if "reference_val_loss" in results[-1] and table.exists():
        rounds = [r for r in results if r["stage"].startswith("round")]
        final = rounds[-1]
        print("\n" + table.read_text().split("\n\n", 1)[-1], flush=True)
        print(f"[{cfg.name}] Inheritune {final['n_layer']}L {'matched' if final['matched'] else 'did not match'} "
              f"the reference (val loss {final['val_loss']:.4f} vs {final['reference_val_loss']:.4f}) after "
              f"{len(rounds)} round(s) | table {table}", flush=True)
    if cfg.get("analyze"):
        analyze_run(cfg, results)
    return results
