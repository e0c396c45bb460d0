"""Turn a composed config into stages and run them. Each method is one function of the config.

Every method first lays out its stages (`plan`): the directory each stage trains in and its identity, the
settings that determine it (training/identity.py). `run` checks every planned directory before any training,
so a stage made under other settings is an error, never silently reused, whichever stage of the run it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lit_inheritune.checks import distilbert_blocks, preflight
from lit_inheritune.errors import ConfigError
from lit_inheritune.models import check_same_family, family_of, load_checkpoint
from lit_inheritune.provenance import provenance
from lit_inheritune.surgery import half_width, hybrid_stack, inherit_blocks, stack_blocks
from lit_inheritune.training.identity import check_stage_dir, method_identity, stage_identity
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig
from lit_inheritune.training.runner import fit_stage, write_json_atomic


def _meta(cfg: DictConfig, stage: str) -> dict:
    return {"experiment": cfg.name, "method": cfg.method.name, "seed": int(cfg.seed), "stage": stage}


def _optim(cfg: DictConfig, max_steps: int) -> OptimConfig:
    """A fresh schedule for a stage of `max_steps` steps (each stage restarts warmup and cosine)."""
    return instantiate(cfg.optim, decay_steps=max_steps)


@dataclass
class Stage:
    """One planned stage: its name, directory and identity, and a few words on how it starts."""

    name: str
    dir: Path
    identity: dict
    init: str

    def header(self, cfg: DictConfig, number: int, total: str) -> str:
        return f"[{cfg.name}] stage {number} of {total}: {self.name} ({self.init})"


def scratch_dir(cfg: DictConfig, n_layer: int, steps: int, seed: int | None = None) -> Path:
    """Where `method=scratch` with this depth, step count and seed runs (its tag), so other methods can share it."""
    seed = cfg.seed if seed is None else seed
    return Path(cfg.paths.log_dir) / cfg.name / f"scratch-L{n_layer}-T{steps}-s{seed}"


def scratch_stage(cfg: DictConfig, n_layer: int, steps: int, name: str = "scratch", seed: int | None = None) -> Stage:
    seed = int(cfg.seed if seed is None else seed)
    identity = stage_identity(cfg, n_layer=n_layer, steps=steps, seed=seed, init={"kind": "random"})
    return Stage(name, scratch_dir(cfg, n_layer, steps, seed), identity, f"random init, {n_layer}L, seed {seed}")


def train_scratch(cfg: DictConfig, datamodule, stage: Stage, n_layer: int, steps: int, seed: int | None = None,
                  header: str = "") -> dict:
    """The scratch run of this depth, steps and seed (default: the run's); with another seed it also draws
    that seed's batches, so the run is the same whichever sweep job trains it."""
    if seed is not None and seed != cfg.seed:
        cfg = OmegaConf.merge(cfg, {"seed": seed})
        datamodule = instantiate(cfg.data, seed=seed)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    model_cfg = instantiate(cfg.model, n_layer=n_layer)
    module = CausalLM(family_of(cfg.model).random(model_cfg), _optim(cfg, steps), _meta(cfg, stage.name))
    return fit_stage(cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity,
                     max_steps=steps, header=header)


def reference_dir(cfg: DictConfig) -> Path:
    """The reference is the experiment's scratch run of the reference's depth and steps, so a sweep over n
    trains it once, and `method=scratch` of that size (Table 1's full-model row) is the same run."""
    return scratch_dir(cfg, cfg.model.n_layer, cfg.method.reference.max_steps, cfg.method.reference.seed)


def reference_stage(cfg: DictConfig) -> Stage | None:
    """The reference's training stage, or None when the reference is given (a checkpoint, a pretrained model)."""
    ref = cfg.method.reference
    if ref.ckpt or family_of(cfg.model).pretrained:
        return None
    return scratch_stage(cfg, cfg.model.n_layer, int(ref.max_steps), "reference", int(ref.seed))


def reference_identity(cfg: DictConfig) -> dict:
    """What the reference is: its training stage's identity, or the given checkpoint's content, or the
    pretrained model's spec."""
    stage = reference_stage(cfg)
    if stage is not None:
        return stage.identity
    if cfg.method.reference.ckpt:
        return {"kind": "checkpoint", "sha256": _file_sha256(Path(cfg.method.reference.ckpt))}
    return {"kind": "pretrained", "model": stage_identity(cfg, n_layer=cfg.model.n_layer, steps=0, seed=0,
                                                          init={})["model"]}


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def obtain_reference(cfg: DictConfig, datamodule, header: str = "") -> tuple[nn.Module, dict | None]:
    """The trained reference model and its result (None for a given checkpoint, whose val loss is
    measured on this experiment's val windows by the caller)."""
    ref_cfg = cfg.method.reference
    if ref_cfg.ckpt:
        reference = load_checkpoint(ref_cfg.ckpt)
        check_same_family(instantiate(cfg.model), reference.config, what=f"reference checkpoint {ref_cfg.ckpt}")
        return reference, None
    family = family_of(cfg.model)
    if family.pretrained:  # a pretrained model: loaded, never trained here
        return family.load(instantiate(cfg.model)), None
    steps = int(ref_cfg.max_steps)
    result = train_scratch(cfg, datamodule, reference_stage(cfg), cfg.model.n_layer, steps, seed=int(ref_cfg.seed),
                           header=header)
    return load_checkpoint(result["last_checkpoint"]), result


def _derived(cfg: DictConfig, name: str, n_layer: int, kind: str, init: str, model: dict | None = None,
             **sources) -> Stage:
    """A stage of this run (in the run directory) initialised by `kind` from `sources` (identities)."""
    identity = stage_identity(cfg, n_layer=n_layer, steps=int(cfg.train.max_steps), seed=int(cfg.seed),
                              init={"kind": kind, "method": method_identity(cfg), **sources}, model=model)
    return Stage(name, Path(cfg.run_dir) / name, identity, init)


def inheritune_depths(cfg: DictConfig) -> list[int]:
    """The depth of every round Algorithm 1 may run: n, n + g, ... up to max_layers (one round for a list of
    blocks, which does not grow)."""
    m = cfg.method
    n = len(m.blocks) if m.blocks else int(m.n_layer)
    return [n] if m.blocks else list(range(n, int(m.max_layers) + 1, int(m.grow_by)))


def plan_inheritune(cfg: DictConfig) -> tuple[list[Stage], dict[int, list[Stage]]]:
    """The rounds (each identified by the reference, the method and, for append growth, the round before) and
    the scratch baselines for every depth the run may end at."""
    m = cfg.method
    ref = reference_identity(cfg)
    rounds: list[Stage] = []
    for rnd, n_layer in enumerate(inheritune_depths(cfg)):
        sources = {"reference": ref, "round": rnd}
        if rnd and m.grow_mode == "append":
            sources["previous"] = rounds[-1].identity
        if rnd == 0:
            what = f"blocks {list(m.blocks)}" if m.blocks else f"blocks 0-{n_layer - 1}"
            init = f"inherits {what} of the reference ({m.parts})"
        elif m.grow_mode == "append":
            init = f"round {rnd}'s target + reference blocks {rounds[-1].identity['model']['n_layer']}-{n_layer - 1}"
        else:
            init = f"inherits blocks 0-{n_layer - 1} of the reference afresh ({m.parts})"
        rounds.append(_derived(cfg, f"round{rnd + 1}-L{n_layer}", n_layer, "inheritune", init, **sources))
    baselines = {n: [scratch_stage(cfg, n, int(steps), f"scratch-L{n}-T{steps}") for steps in m.scratch_baselines or []]
                 for n in inheritune_depths(cfg)}
    return rounds, baselines


def _surgery(cfg: DictConfig):
    """(inherit(reference, n_layer, blocks), grow(target, reference, n_new)) for the configured model: its model
    family's surgery (targets train in float32 whatever the reference's dtype)."""
    m = cfg.method
    family = family_of(cfg.model)
    kwargs = dict(parts=m.parts, copy_wpe=m.copy_wpe, copy_ln_f=m.copy_ln_f, attn_scale=m.attn_scale)
    return (lambda ref, n, blocks: family.inherit(ref, n_layer=n, blocks=blocks, **kwargs),
            lambda tgt, ref, n_new: family.grow(tgt, ref, n_new=n_new, mode=m.grow_mode, **kwargs))


class _Headers:
    """Numbers the stages as they start: "stage 2 of 5" (or "of up to 6" when rounds may stop early)."""

    def __init__(self, cfg: DictConfig, stages: list[Stage], may_stop_early: bool = False):
        self.cfg, self.done = cfg, 0
        self.total = f"up to {len(stages)}" if may_stop_early else str(len(stages))

    def __call__(self, stage: Stage) -> str:
        self.done += 1
        return stage.header(self.cfg, self.done, self.total)


def _unique(stages: list[Stage | None]) -> list[Stage]:
    """Planned stages without repeats: a scratch baseline of the reference's size and steps is the reference."""
    seen, out = set(), []
    for stage in stages:
        if stage is not None and stage.dir not in seen:
            seen.add(stage.dir)
            out.append(stage)
    return out


def plan(cfg: DictConfig) -> list[Stage]:
    """Every stage the configured method may train, in order (Inheritune: every round up to max_layers and the
    scratch baselines at every depth the run may end at)."""
    m, k, T = cfg.method, int(cfg.model.n_layer), int(cfg.train.max_steps)
    ref = reference_identity(cfg) if m.get("reference") is not None else None
    if m.name == "scratch":
        return [scratch_stage(cfg, k, T)]
    if m.name == "inheritune":
        rounds, baselines = plan_inheritune(cfg)
        return _unique([reference_stage(cfg), *rounds, *(s for stages in baselines.values() for s in stages)])
    n = int(m.get("n_layer") or k)
    if m.name == "stacking":
        first = scratch_stage(cfg, n // 2, T, f"stage1-L{n // 2}")
        return [first, _derived(cfg, f"stage2-L{n}", n, "stacking", f"{n // 2}L stage 1 stacked twice",
                                previous=first.identity)]
    if m.name == "hybrid_stacking":
        return _unique([reference_stage(cfg), _derived(
            cfg, f"hybrid-L{n}", n, "hybrid_stacking", f"reference blocks 0-{n // 2 - 1} repeated to {n} blocks",
            reference=ref)])
    if m.name == "half_width":
        H, C = int(cfg.model.n_head), int(cfg.model.n_embd)
        return _unique([reference_stage(cfg), _derived(
            cfg, f"halfwidth-L{k}-d{C // 2}", k, "half_width", f"the reference sliced to d={C // 2}",
            model={"n_embd": C // 2, "n_head": H // 2}, reference=ref)])
    if m.name in ("kd", "distilbert_kd"):
        blocks = _student_blocks(cfg)
        init = f"teacher blocks {blocks}" if blocks else "random init"
        return _unique([reference_stage(cfg), _derived(cfg, f"student-L{n}", n, m.name, f"{init}, distilled",
                                                       teacher=ref)])
    raise ConfigError(f"unknown method {m.name!r}; known: {sorted(METHODS)}")


def run_scratch(cfg: DictConfig, datamodule) -> list[dict]:
    """A randomly initialised model, trained once: the reference and the scratch baselines."""
    stages = plan(cfg)
    headers = _Headers(cfg, stages)
    return [train_scratch(cfg, datamodule, stages[0], cfg.model.n_layer, cfg.train.max_steps, header=headers(stages[0]))]


def run_inheritune(cfg: DictConfig, datamodule) -> list[dict]:
    """Algorithm 1: inherit, train, and grow until the target matches the reference's val loss."""
    m = cfg.method
    rounds, baselines = plan_inheritune(cfg)
    headers = _Headers(cfg, plan(cfg), may_stop_early=len(rounds) > 1)
    reference, ref_result = obtain_reference(cfg, datamodule, header=_ref_header(cfg, headers))
    if ref_result is None:
        ref_result = _measure(cfg, reference, datamodule)
        print(f"[{cfg.name}] reference {ref_result['n_layer']}L (given, not trained here): val loss "
              f"{ref_result['val_loss']:.4f} on this experiment's val windows", flush=True)
    inherit, grow_target = _surgery(cfg)
    results, target = [], None
    for rnd, stage in enumerate(rounds):
        n_layer = stage.identity["model"]["n_layer"]
        L.seed_everything(cfg.seed + rnd, workers=True, verbose=False)
        if target is None:
            blocks = list(m.blocks) if m.blocks else None
            target = inherit(reference, None if blocks else n_layer, blocks)
        else:
            target = grow_target(target, reference, n_layer - target.config.n_layer)
        result = _judge(_train_from(cfg, datamodule, target, stage, headers(stage)), ref_result, m)
        results.append(result)
        print(f"[{cfg.name}] {stage.name}: val loss {result['val_loss']:.4f} vs reference "
              f"{ref_result['val_loss']:.4f}: {'matched' if result['matched'] else 'not matched'}", flush=True)
        if result["matched"]:
            break
        target = load_checkpoint(result["last_checkpoint"])  # the trained weights, also on resume
    final = results[-1]["n_layer"]
    reference_dir_ = reference_stage(cfg).dir if reference_stage(cfg) else None
    scratch = [  # same-size random init, e.g. [T, 2T] as in Table 1
        _judge(train_scratch(cfg, datamodule, stage, final, stage.identity["train"]["max_steps"],
                             header=headers(stage)), ref_result, m)
        for stage in baselines[final]
    ]
    # a baseline that is the reference's own run (same depth, steps, seed) is the reference's row already
    scratch = [r for r, stage in zip(scratch, baselines[final]) if stage.dir != reference_dir_]
    write_stage_table(cfg, ref_result, results + scratch)
    return results + scratch


def _ref_header(cfg: DictConfig, headers: _Headers) -> str:
    stage = reference_stage(cfg)
    return headers(stage) if stage else ""


def _judge(result: dict, ref: dict, m: DictConfig) -> dict:
    return {**result, "reference_val_loss": ref["val_loss"], "matched": result["val_loss"] <= ref["val_loss"] + m.tolerance}


def _measure(cfg: DictConfig, model: nn.Module, datamodule) -> dict:
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


def _train_from(cfg: DictConfig, datamodule, model: nn.Module, stage: Stage, header: str) -> dict:
    """Train an initialised model for train.max_steps in its stage directory, with a fresh schedule."""
    module = CausalLM(model, _optim(cfg, cfg.train.max_steps), _meta(cfg, stage.name))
    return fit_stage(cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity, header=header)


def run_stacking(cfg: DictConfig, datamodule) -> list[dict]:
    """Stacking: train an n/2-layer model from scratch for T steps (the scratch run of that size), copy its
    blocks 0..n/2-1 into n/2..n-1 and train T more steps. `model` is the reference; n = method.n_layer."""
    n = int(cfg.method.n_layer)
    first_stage, second_stage = stages = plan(cfg)
    headers = _Headers(cfg, stages)
    first = train_scratch(cfg, datamodule, first_stage, n // 2, cfg.train.max_steps, header=headers(first_stage))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    stacked = stack_blocks(load_checkpoint(first["last_checkpoint"]), attn_scale=cfg.method.attn_scale)
    return [first, _train_from(cfg, datamodule, stacked, second_stage, headers(second_stage))]


def _from_reference(cfg: DictConfig, datamodule, build) -> list[dict]:
    """A one-stage method initialised from the reference by `build(reference)`."""
    stages = plan(cfg)
    headers = _Headers(cfg, stages)
    reference, _ = obtain_reference(cfg, datamodule, header=_ref_header(cfg, headers))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return [_train_from(cfg, datamodule, build(reference), stages[-1], headers(stages[-1]))]


def run_hybrid_stacking(cfg: DictConfig, datamodule) -> list[dict]:
    """Hybrid stacking: reference blocks 0..n/2-1 repeated to fill n blocks, trained T steps."""
    n = int(cfg.method.n_layer)
    return _from_reference(cfg, datamodule, lambda ref: hybrid_stack(ref, n_source=n // 2, n_layer=n,
                                                                     attn_scale=cfg.method.attn_scale))


def run_half_width(cfg: DictConfig, datamodule) -> list[dict]:
    """Half width: the reference's depth at half its width and heads, sliced from it, trained T steps."""
    return _from_reference(cfg, datamodule, half_width)


def _student_blocks(cfg: DictConfig) -> list[int] | None:
    """The teacher blocks a DistilBERT-style student starts from (None: a random-init logit-KD student)."""
    m, k = cfg.method, cfg.model.n_layer
    n = int(m.n_layer)
    if m.name != "distilbert_kd":
        return None
    return list(m.student_blocks) if m.student_blocks else distilbert_blocks(k, n)


def run_kd(cfg: DictConfig, datamodule) -> list[dict]:
    """Logit distillation (`kd`: random-init student) or DistilBERT-style (`distilbert_kd`: student blocks
    copied from teacher blocks, with the token embedding) from the reference as a frozen teacher."""
    from lit_inheritune.training.distill import DistillationLM

    m = cfg.method
    n = int(m.n_layer)
    blocks = _student_blocks(cfg)
    stages = plan(cfg)
    headers = _Headers(cfg, stages)
    teacher, _ = obtain_reference(cfg, datamodule, header=_ref_header(cfg, headers))
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    student = (inherit_blocks(teacher, blocks=blocks, attn_scale=m.attn_scale) if blocks
               else family_of(cfg.model).random(instantiate(cfg.model, n_layer=n)))
    stage = stages[-1]
    optim = _optim(cfg, cfg.train.max_steps)
    if m.min_lr is not None:  # the student's own floor; cfg.optim is also the teacher's
        optim = replace(optim, min_lr=m.min_lr)
    module = DistillationLM(student, teacher, optim, alpha=m.alpha,
                            temperature=m.temperature, meta=_meta(cfg, stage.name))
    return [fit_stage(cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity,
                      header=headers(stage))]


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
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # the stages' identities name the prepared shards
    for stage in plan(cfg):  # before any training: no stage of this run may hold work made under other settings
        check_stage_dir(stage.dir, stage.identity)
    results = METHODS[cfg.method.name](cfg, datamodule)
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
