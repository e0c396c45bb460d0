"""The methods: each `conf/method/<name>.yaml` names its recipe class with `_target_`, and Hydra builds it.

A recipe lays out the stages it may train (`plan`: each stage's directory and identity, training/identity.py)
and trains them (`run`). The runner (run.py) knows no method by name: adding one is a config file and a class
here or anywhere importable. The LightningModule a recipe trains is also the config's (`method.module`, a partial
of CausalLM or DistillationLM); weight surgery is surgery.py's pure functions; growth between stages is the
GrowCallback's (training/grow.py), one Trainer.fit per run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lit_inheritune import checks
from lit_inheritune.checks import distilbert_blocks
from lit_inheritune.models import check_same_family, family_of, load_checkpoint
from lit_inheritune.provenance import provenance
from lit_inheritune.surgery import half_width, hybrid_stack, inherit_blocks, stack_blocks
from lit_inheritune.training.grow import Growth
from lit_inheritune.training.identity import check_stage_dir, method_identity, stage_identity
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig
from lit_inheritune.training.runner import fit_growth, fit_stage, is_fsdp, write_json_atomic


@dataclass
class Stage:
    """One planned stage: its name, directory and identity, and a few words on how it starts."""

    name: str
    dir: Path
    identity: dict
    init: str

    def header(self, cfg: DictConfig, number: int, total: str) -> str:
        return f"[{cfg.name}] stage {number} of {total}: {self.name} ({self.init})"


def _meta(cfg: DictConfig, stage: str) -> dict:
    return {"experiment": cfg.name, "method": cfg.method.name, "seed": int(cfg.seed), "stage": stage}


def _optim(cfg: DictConfig, max_steps: int) -> OptimConfig:
    """A fresh schedule for a stage of `max_steps` steps (each stage restarts warmup and cosine)."""
    return instantiate(cfg.optim, decay_steps=max_steps)


# -- the stages every method shares: scratch runs and the reference

def scratch_dir(cfg: DictConfig, n_layer: int, steps: int, seed: int | None = None) -> Path:
    """Where `method=scratch` with this depth, step count and seed runs (its tag), so other methods can share it."""
    seed = cfg.seed if seed is None else seed
    return Path(cfg.paths.log_dir) / cfg.name / f"scratch-L{n_layer}-T{steps}-s{seed}"


def scratch_stage(cfg: DictConfig, n_layer: int, steps: int, name: str = "scratch", seed: int | None = None) -> Stage:
    seed = int(cfg.seed if seed is None else seed)
    identity = stage_identity(cfg, n_layer=n_layer, steps=steps, seed=seed, init={"kind": "random"})
    return Stage(name, scratch_dir(cfg, n_layer, steps, seed), identity, f"random init, {n_layer}L, seed {seed}")


def random_model(cfg: DictConfig, n_layer: int):
    """A randomly initialised model of the configured family at this depth."""
    return family_of(cfg.model).random(instantiate(cfg.model, n_layer=n_layer))


def train_scratch(cfg: DictConfig, datamodule, stage: Stage, n_layer: int, steps: int, seed: int | None = None,
                  header: str = "") -> dict:
    """The scratch run of this depth, steps and seed (default: the run's); with another seed it also draws
    that seed's batches, so the run is the same whichever sweep job trains it."""
    if seed is not None and seed != cfg.seed:
        cfg = OmegaConf.merge(cfg, {"seed": seed})
        datamodule = instantiate(cfg.data, seed=seed)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CausalLM(random_model(cfg, n_layer), _optim(cfg, steps), _meta(cfg, stage.name))
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


def obtain_reference(cfg: DictConfig, datamodule, header: str = ""):
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


def derived_stage(cfg: DictConfig, name: str, n_layer: int, kind: str, init: str, model: dict | None = None,
                  **sources) -> Stage:
    """A stage of this run (in the run directory) initialised by `kind` from `sources` (identities)."""
    identity = stage_identity(cfg, n_layer=n_layer, steps=int(cfg.train.max_steps), seed=int(cfg.seed),
                              init={"kind": kind, "method": method_identity(cfg), **sources}, model=model)
    return Stage(name, Path(cfg.run_dir) / name, identity, init)


class _Headers:
    """Numbers the stages as they start: "stage 2 of 5" (or "of up to 6" when rounds may stop early)."""

    def __init__(self, cfg: DictConfig, stages: list[Stage], may_stop_early: bool = False):
        self.cfg, self.done = cfg, 0
        self.total = f"up to {len(stages)}" if may_stop_early else str(len(stages))

    def __call__(self, stage: Stage | None) -> str:
        if stage is None:
            return ""
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


# -- recipes

class Recipe:
    """A method: the stages it may train and how. `module` builds its LightningModule (a partial from the
    config: module(model, optim, meta=...)); every other key of the method config is read from cfg.method,
    which also carries the keys of methods an experiment switches between (schema.MethodSchema).

    Class attributes the checks read before any run directory exists (checks.check_method): `validate(cfg)`,
    the method's own config checks, and `uses_reference`, whether it starts from method.reference."""

    uses_reference = False
    validate = None

    def __init__(self, name: str, module=None, **settings):
        self.name = name
        self.module = module or CausalLM

    def plan(self, cfg: DictConfig) -> list[Stage]:
        raise NotImplementedError

    def run(self, cfg: DictConfig, datamodule) -> list[dict]:
        raise NotImplementedError

    def check(self, cfg: DictConfig) -> None:
        """Before any training: no directory this run may write holds work made under other settings."""
        for stage in self.plan(cfg):
            check_stage_dir(stage.dir, stage.identity)

    def train_from(self, cfg: DictConfig, datamodule, model, stage: Stage, header: str) -> dict:
        """Train an initialised model for train.max_steps in its stage directory, with a fresh schedule."""
        module = self.module(model, _optim(cfg, cfg.train.max_steps), meta=_meta(cfg, stage.name))
        return fit_stage(cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity,
                         header=header)


class Scratch(Recipe):
    """A randomly initialised model, trained once: the reference and the scratch baselines."""

    validate = staticmethod(checks.check_scratch)

    def plan(self, cfg):
        return [scratch_stage(cfg, int(cfg.model.n_layer), int(cfg.train.max_steps))]

    def run(self, cfg, datamodule):
        stage = self.plan(cfg)[0]
        return [train_scratch(cfg, datamodule, stage, cfg.model.n_layer, cfg.train.max_steps,
                              header=stage.header(cfg, 1, "1"))]


class Growing(Recipe):
    """A method whose stages follow one another in one fit (training/grow.py): Inheritune's rounds, stacking."""

    def fit_identity(self, cfg: DictConfig, stages: list[Stage]) -> dict:
        """What the run's fit is: its stages, and the settings that decide when it grows and stops."""
        m = cfg.method
        return {"kind": "growth", "stages": [s.identity for s in stages],
                "control": {"tolerance": m.get("tolerance"), "carry_optimizer": bool(m.get("carry_optimizer"))}}

    def grown_stages(self, cfg: DictConfig) -> list[Stage]:
        raise NotImplementedError

    def first_batch(self, cfg: DictConfig, index: int) -> dict:
        """Where stage `index` starts in the seed's batch stream, when not at 0: in one fit, at its first step
        (under FSDP each stage is its own fit and replays the stream from 0, as the earlier runner did)."""
        return {"first_batch": index * int(cfg.train.max_steps)} if index and not is_fsdp(cfg) else {}

    def make_module(self, cfg: DictConfig):
        """(model, stage name) -> the LightningModule of a stage, each with a fresh T-step schedule."""
        return lambda model, stage: self.module(model, _optim(cfg, cfg.train.max_steps), meta=_meta(cfg, stage))

    def check(self, cfg):
        super().check(cfg)
        stages = self.grown_stages(cfg)
        check_stage_dir(Path(cfg.run_dir), self.fit_identity(cfg, stages))


def inheritune_depths(cfg: DictConfig) -> list[int]:
    """The depth of every round Algorithm 1 may run: n, n + g, ... up to max_layers (one round for a list of
    blocks, which does not grow)."""
    m = cfg.method
    n = len(m.blocks) if m.blocks else int(m.n_layer)
    return [n] if m.blocks else list(range(n, int(m.max_layers) + 1, int(m.grow_by)))


class Inheritune(Growing):
    """Algorithm 1: inherit the reference's first n blocks, train T steps, and grow by `grow_by` (reinherit: a
    fresh copy of the first n + g reference blocks; append: the trained blocks plus the next reference blocks)
    until the target's val loss matches the reference's, up to max_layers. Then the scratch baselines."""

    uses_reference = True
    validate = staticmethod(checks.check_inheritune)

    def rounds(self, cfg: DictConfig) -> list[Stage]:
        m = cfg.method
        ref = reference_identity(cfg)
        rounds: list[Stage] = []
        for rnd, n_layer in enumerate(inheritune_depths(cfg)):
            sources = {"reference": ref, "round": rnd, **self.first_batch(cfg, rnd)}
            if rnd and m.grow_mode == "append":
                sources["previous"] = rounds[-1].identity
                if m.get("carry_optimizer"):
                    sources["carry_optimizer"] = True
            if rnd == 0:
                what = f"blocks {list(m.blocks)}" if m.blocks else f"blocks 0-{n_layer - 1}"
                init = f"inherits {what} of the reference ({m.parts})"
            elif m.grow_mode == "append":
                init = (f"round {rnd}'s target + reference blocks {rounds[-1].identity['model']['n_layer']}-"
                        f"{n_layer - 1}{', its AdamW state carried' if m.get('carry_optimizer') else ''}")
            else:
                init = f"inherits blocks 0-{n_layer - 1} of the reference afresh ({m.parts})"
            rounds.append(derived_stage(cfg, f"round{rnd + 1}-L{n_layer}", n_layer, "inheritune", init, **sources))
        return rounds

    grown_stages = rounds

    def baselines(self, cfg: DictConfig) -> dict[int, list[Stage]]:
        """The scratch baselines for every depth the run may end at (e.g. [T, 2T] as in Table 1)."""
        return {n: [scratch_stage(cfg, n, int(steps), f"scratch-L{n}-T{steps}")
                    for steps in cfg.method.scratch_baselines or []] for n in inheritune_depths(cfg)}

    def plan(self, cfg):
        return _unique([reference_stage(cfg), *self.rounds(cfg),
                        *(s for stages in self.baselines(cfg).values() for s in stages)])

    def surgery(self, cfg: DictConfig):
        """(inherit(reference, n_layer, blocks), grow(target, reference, n_new)) for the configured model: its model
        family's surgery (targets train in float32 whatever the reference's dtype)."""
        m = cfg.method
        family = family_of(cfg.model)
        kwargs = dict(parts=m.parts, copy_wpe=m.copy_wpe, copy_ln_f=m.copy_ln_f, attn_scale=m.attn_scale)
        return (lambda ref, n, blocks: family.inherit(ref, n_layer=n, blocks=blocks, **kwargs),
                lambda tgt, ref, n_new: family.grow(tgt, ref, n_new=n_new, mode=m.grow_mode, **kwargs))

    def run(self, cfg, datamodule):
        m = cfg.method
        rounds = self.rounds(cfg)
        headers = _Headers(cfg, self.plan(cfg), may_stop_early=len(rounds) > 1)
        reference, ref_result = obtain_reference(cfg, datamodule, header=headers(reference_stage(cfg)))
        if ref_result is None:
            ref_result = measure(cfg, reference, datamodule)
            print(f"[{cfg.name}] reference {ref_result['n_layer']}L (given, not trained here): val loss "
                  f"{ref_result['val_loss']:.4f} on this experiment's val windows", flush=True)
        inherit, grow_target = self.surgery(cfg)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        blocks = list(m.blocks) if m.blocks else None
        target = inherit(reference, None if blocks else rounds[0].identity["model"]["n_layer"], blocks)
        depths = [s.identity["model"]["n_layer"] for s in rounds]
        growth = Growth(
            stages=rounds, steps=int(cfg.train.max_steps), seeds=[int(cfg.seed) + i for i in range(len(rounds))],
            name=cfg.name,
            grow=lambda model, i: grow_target(model, reference, depths[i] - model.config.n_layer),
            stop=lambda r: _judge(r, ref_result, m)["matched"],
            describe=lambda r: (f"vs reference {ref_result['val_loss']:.4f}: "
                                + ("matched" if _judge(r, ref_result, m)["matched"] else "not matched")),
            carry_optimizer=bool(m.get("carry_optimizer")))
        results = [_judge(r, ref_result, m) for r in fit_growth(
            cfg, self.make_module(cfg), target, datamodule, growth, self.fit_identity(cfg, rounds), headers)]
        final = results[-1]["n_layer"]
        baselines = self.baselines(cfg)[final]
        reference_dir_ = reference_stage(cfg).dir if reference_stage(cfg) else None
        scratch = [  # same-size random init, e.g. [T, 2T] as in Table 1
            _judge(train_scratch(cfg, datamodule, stage, final, stage.identity["train"]["max_steps"],
                                 header=headers(stage)), ref_result, m)
            for stage in baselines
        ]
        # a baseline that is the reference's own run (same depth, steps, seed) is the reference's row already
        scratch = [r for r, stage in zip(scratch, baselines) if stage.dir != reference_dir_]
        write_stage_table(cfg, ref_result, results + scratch)
        return results + scratch


def _judge(result: dict, ref: dict, m: DictConfig) -> dict:
    return {**result, "reference_val_loss": ref["val_loss"],
            "matched": result["val_loss"] <= ref["val_loss"] + m.tolerance}


def measure(cfg: DictConfig, model, datamodule) -> dict:
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


class Stacking(Growing):
    """Stacking (Gong et al. 2019): an n/2-layer model trained from scratch for T steps, its blocks copied into
    n/2..n-1 at step T (the GrowCallback with the stack operator), trained T more. `model` is the reference's
    shape; n = method.n_layer."""

    validate = staticmethod(checks.check_stacking)

    def grown_stages(self, cfg):
        n, T = int(cfg.method.n_layer), int(cfg.train.max_steps)
        first_identity = stage_identity(cfg, n_layer=n // 2, steps=T, seed=int(cfg.seed), init={"kind": "random"})
        first = Stage(f"stage1-L{n // 2}", Path(cfg.run_dir) / f"stage1-L{n // 2}", first_identity,
                      f"random init, {n // 2}L, seed {cfg.seed}")
        return [first, derived_stage(cfg, f"stage2-L{n}", n, "stacking", f"{n // 2}L stage 1 stacked twice",
                                     previous=first.identity, **self.first_batch(cfg, 1))]

    plan = grown_stages

    def run(self, cfg, datamodule):
        stages = self.grown_stages(cfg)
        headers = _Headers(cfg, stages)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        first = random_model(cfg, int(cfg.method.n_layer) // 2)
        growth = Growth(stages=stages, steps=int(cfg.train.max_steps), seeds=[int(cfg.seed)] * 2, name=cfg.name,
                        grow=lambda model, i: stack_blocks(model, attn_scale=cfg.method.attn_scale),
                        stop=lambda r: False)
        return fit_growth(cfg, self.make_module(cfg), first, datamodule, growth, self.fit_identity(cfg, stages),
                          headers)


class FromReference(Recipe):
    """A one-stage method initialised from the reference by `build(cfg, reference)`."""

    uses_reference = True

    def stage(self, cfg: DictConfig) -> Stage:
        raise NotImplementedError

    def build(self, cfg: DictConfig, reference):
        raise NotImplementedError

    def plan(self, cfg):
        return _unique([reference_stage(cfg), self.stage(cfg)])

    def run(self, cfg, datamodule):
        stages = self.plan(cfg)
        headers = _Headers(cfg, stages)
        reference, _ = obtain_reference(cfg, datamodule, header=headers(reference_stage(cfg)))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        stage = stages[-1]
        return [self.train_from(cfg, datamodule, self.build(cfg, reference), stage, headers(stage))]


class HybridStacking(FromReference):
    """Hybrid stacking: reference blocks 0..n/2-1 repeated to fill n blocks, trained T steps."""

    validate = staticmethod(checks.check_hybrid_stacking)

    def stage(self, cfg):
        n = int(cfg.method.n_layer)
        return derived_stage(cfg, f"hybrid-L{n}", n, "hybrid_stacking",
                             f"reference blocks 0-{n // 2 - 1} repeated to {n} blocks", reference=reference_identity(cfg))

    def build(self, cfg, reference):
        n = int(cfg.method.n_layer)
        return hybrid_stack(reference, n_source=n // 2, n_layer=n, attn_scale=cfg.method.attn_scale)


class HalfWidth(FromReference):
    """Half width: the reference's depth at half its width and heads, sliced from it, trained T steps."""

    validate = staticmethod(checks.check_half_width)

    def stage(self, cfg):
        k, H, C = int(cfg.model.n_layer), int(cfg.model.n_head), int(cfg.model.n_embd)
        return derived_stage(cfg, f"halfwidth-L{k}-d{C // 2}", k, "half_width", f"the reference sliced to d={C // 2}",
                             model={"n_embd": C // 2, "n_head": H // 2}, reference=reference_identity(cfg))

    def build(self, cfg, reference):
        return half_width(reference)


class Distillation(FromReference):
    """Logit distillation (`kd`: random-init student) or DistilBERT-style (`distilbert_kd`: student blocks
    copied from teacher blocks, with the token embedding) from the reference as a frozen teacher; `module` is
    DistillationLM with the method's alpha and temperature."""

    validate = staticmethod(checks.check_kd)

    def student_blocks(self, cfg: DictConfig) -> list[int] | None:
        """The teacher blocks the student starts from (None: a random-init logit-KD student)."""
        m = cfg.method
        if m.name != "distilbert_kd":
            return None
        return list(m.student_blocks) if m.student_blocks else distilbert_blocks(cfg.model.n_layer, int(m.n_layer))

    def stage(self, cfg):
        n, blocks = int(cfg.method.n_layer), self.student_blocks(cfg)
        init = f"teacher blocks {blocks}" if blocks else "random init"
        return derived_stage(cfg, f"student-L{n}", n, cfg.method.name, f"{init}, distilled",
                             teacher=reference_identity(cfg))

    def build(self, cfg, reference):
        blocks = self.student_blocks(cfg)
        if blocks:
            return inherit_blocks(reference, blocks=blocks, attn_scale=cfg.method.attn_scale)
        return random_model(cfg, int(cfg.method.n_layer))

    def run(self, cfg, datamodule):
        m = cfg.method
        stages = self.plan(cfg)
        headers = _Headers(cfg, stages)
        teacher, _ = obtain_reference(cfg, datamodule, header=headers(reference_stage(cfg)))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        student, stage = self.build(cfg, teacher), stages[-1]
        optim = _optim(cfg, cfg.train.max_steps)
        if m.min_lr is not None:  # the student's own floor; cfg.optim is also the teacher's
            optim = replace(optim, min_lr=m.min_lr)
        module = self.module(student, teacher, optim, meta=_meta(cfg, stage.name))
        return [fit_stage(cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity,
                          header=headers(stage))]


def recipe(cfg: DictConfig) -> Recipe:
    """The configured method's recipe, built by Hydra from cfg.method (`_target_`)."""
    return instantiate(cfg.method, _convert_="all")
