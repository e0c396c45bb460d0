"""What every method shares: the `Method` base class, the run context, planned stages, and the reference.

A method is one module of this package (or any importable module): a dataclass subclassing `Method`. Its fields are
its config keys and their types (the schema `conf/method/<name>.yaml` is checked against, `_target_` naming the
class); its methods say what it does:

- `validate(run)`: its own config checks, before any directory exists (torch-free: a method module imports
  Lightning, surgery and training only inside `run`, so a config error answers at once);
- `plan(run)`: every stage it may train, each with its directory and identity (training/identity.py);
- `run(run, datamodule)`: trains them, returning one result dict per stage;
- `summary(run, results)`: lines printed after the stages' own summary lines;
- `identity()`: what of its config determines its stages' training (fields marked `control(...)` decide which
  stages run, not what one computes, and are left out; `added(...)` ones count only when not at their default);
- `earlier_stages`, `not_run_reason`, `growth_outcome`, `first_stage_note`: what the report asks of its stages.

The runner, run identity, checks and report ask the method; none of them names one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from omegaconf import MISSING, DictConfig, OmegaConf

from lit_inheritune.errors import ConfigError
from lit_inheritune.schema import ReferenceSchema as Reference  # the run's reference (conf/reference/)
from lit_inheritune.training.identity import method_record, register_method_keys, stage_identity


def control(default: Any = MISSING, **kwargs) -> Any:
    """A method field that decides which stages run (how far to grow, when to stop, the baselines to add), not what
    any stage computes: it is left out of the stages' identities, so changing it reuses finished stages."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"control": True}, **kwargs)
    return field(default=default, metadata={"control": True}, **kwargs)


def added(default: Any, **kwargs) -> Any:
    """A method field added after stages were recorded: part of the identity only when set to something other than
    its default, so every stage trained before it existed keeps its identity (and is reused)."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"added": True}, **kwargs)
    return field(default=default, metadata={"added": True}, **kwargs)


@dataclass
class Stage:
    """One planned stage: its name, directory and identity, and a few words on how it starts."""

    name: str
    dir: Path
    identity: dict
    init: str

    def header(self, run: Run, number: int, total: str) -> str:
        return f"[{run.name}] stage {number} of {total}: {self.name} ({self.init})"


@dataclass
class Method:
    """The base of every method; see the module docstring. `name` is the method's name in identities and messages;
    `tag` its run-directory name (without the seed)."""

    name: str = MISSING
    tag: str = control()

    uses_reference: ClassVar[bool] = False  # starts from the run's reference (cfg.reference)

    # -- configuration
    @classmethod
    def identity_keys(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if not f.metadata.get("control"))

    def identity(self) -> dict:
        """The method's part of its stages' identities: its fields but the control ones, and `added` ones at their
        default (in the shape identities have always had, training/identity.py `method_record`)."""
        defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                    for f in dataclasses.fields(self) if f.metadata.get("added")}
        return method_record({key: _plain(getattr(self, key)) for key in self.identity_keys()
                              if key not in defaults or _plain(getattr(self, key)) != defaults[key]})

    def validate(self, run: Run) -> None:
        """The method's own checks against the run (the reference is `run.model`): raise ConfigError."""

    # -- what it trains
    def plan(self, run: Run) -> list[Stage]:
        raise NotImplementedError

    def run(self, run: Run, datamodule) -> list[dict]:
        raise NotImplementedError

    def summary(self, run: Run, results: list[dict]) -> list[str]:
        """Lines printed after each stage's summary line (e.g. Inheritune's stage table and verdict)."""
        return []

    def analysis_results(self, run: Run, results: list[dict]) -> list[dict]:
        """The results whose checkpoints `analyze=true` analyses: the stages run (Inheritune adds its reference)."""
        return results

    def check(self, run: Run) -> None:
        """Before any training: no directory this run may write holds work made under other settings."""
        from lit_inheritune.training.identity import check_stage_dir

        for stage in self.plan(run):
            check_stage_dir(stage.dir, stage.identity)

    # -- what the report asks of a method's stages (report/claims.py); the defaults fit a method whose stages nest
    # every stage they build on and that always trains every stage it plans
    @classmethod
    def earlier_stages(cls, stage: str, identity: dict, siblings: dict[str, dict]) -> list[dict]:
        """Identities of the stages of the same run (`siblings`: name -> identity) that had to be trained before
        `stage` though its identity does not nest them: their compute counts toward its cumulative compute."""
        return []

    @classmethod
    def not_run_reason(cls, stage: str, fits: list[tuple[int | None, list[dict]]]) -> str | None:
        """Why `stage` has no result when the method itself chose not to train it, given every seed's run on disk
        (seed, the records of its stages.json, [] while it has none); None while a seed could still train it."""
        return None

    @classmethod
    def growth_outcome(cls, stages: list[dict]) -> dict | None:
        """For a run that grows until a stage meets the method's bar: {"stages": the stages that compete, "matched":
        the first to meet the bar or None}; None for methods without such a bar."""
        return None

    @classmethod
    def first_stage_note(cls, labels: list[str]) -> str | None:
        """A sentence for the runs (`labels`) whose first stage met the bar in every seed."""
        return None


def seeds_text(seeds) -> str:
    return f"seed{'s' * (len(seeds) > 1)} {','.join(map(str, sorted(seeds)))}"


def _plain(value):
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, tuple):
        return list(value)
    return value


# ----------------------------------------------------------------------------------------------------------------
# The run context: built once from the composed config, handed to the method.


@dataclass
class Run:
    """What a method needs of the run: its name, seed and directories, the reference, the method, and the composed
    config (the training layer builds the Trainer, its loggers and callbacks, and stage identities from it)."""

    cfg: DictConfig
    method: Method
    reference: Reference

    @property
    def name(self) -> str:
        return str(self.cfg.name)

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.run_dir)

    @property
    def log_dir(self) -> Path:
        return Path(self.cfg.paths.log_dir)

    @property
    def steps(self) -> int:
        """T: train.max_steps, the length of each trained stage."""
        return int(self.cfg.train.max_steps)

    @property
    def model(self) -> DictConfig:
        """The configured model: the reference's shape for methods that use one."""
        return self.cfg.model

    @property
    def depth(self) -> int:
        return int(self.cfg.model.n_layer)

    def meta(self, stage: str) -> dict:
        return {"experiment": self.name, "method": self.method.name, "seed": self.seed, "stage": stage}

    def optim(self, max_steps: int, **changes):
        """A fresh schedule for a stage of `max_steps` steps (each stage restarts warmup and cosine)."""
        from hydra.utils import instantiate

        return instantiate(self.cfg.optim, decay_steps=max_steps, **changes)


def method_class(node) -> type[Method]:
    """The Method subclass a method config's `_target_` names, imported but not built."""
    target = node.get("_target_") if node is not None else None
    if not target:
        raise ConfigError("method._target_ is missing: a method config names its class, e.g. "
                          "_target_: lit_inheritune.methods.inheritune.Inheritune")
    from hydra.utils import get_class

    try:
        cls = get_class(target)
    except Exception as err:  # Hydra wraps the import error; its message names the module
        raise ConfigError(f"method._target_={target!r} cannot be imported: {str(err).splitlines()[0]}") from None
    if not (isinstance(cls, type) and issubclass(cls, Method) and dataclasses.is_dataclass(cls)):
        raise ConfigError(f"method._target_={target!r} is not a method: a dataclass subclassing "
                          "lit_inheritune.methods.Method")
    return cls


def load_method(node) -> Method:
    """The method a config describes: its class's fields check the keys and their types (a misspelt or foreign key
    is a ConfigError naming it), interpolations resolved against the whole config the node belongs to."""
    from omegaconf.errors import OmegaConfBaseException

    cls = method_class(node)
    root = node._get_root().copy()  # typed in place, so ${model.n_layer} and the like still resolve
    OmegaConf.set_struct(root, False)
    try:
        root.method = OmegaConf.merge(OmegaConf.structured(cls),
                                      OmegaConf.masked_copy(node, [k for k in node if k != "_target_"]))
        method = OmegaConf.to_object(root.method)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        key = key if key.startswith("method") else f"method.{key}" if key else "method"
        message = str(err).splitlines()[0]
        if "not in" in message:  # a key of another method, or a typo
            message += f" (the keys of method={node.get('name', '?')} are: {', '.join(_fields(cls))})"
        raise ConfigError(f"{key}: {message}") from None
    register_method_keys(method.name, method.identity_keys())
    return method


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def make_run(cfg: DictConfig) -> Run:
    """The run context of a composed config."""
    reference = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Reference),
                                                    OmegaConf.to_container(cfg.reference, resolve=True)))
    return Run(cfg=cfg, method=load_method(cfg.method), reference=reference)


# ----------------------------------------------------------------------------------------------------------------
# Stages every method shares: scratch runs and the reference


def scratch_dir(run: Run, n_layer: int, steps: int, seed: int | None = None) -> Path:
    """Where `method=scratch` with this depth, step count and seed runs (its tag), so other methods can share it."""
    seed = run.seed if seed is None else seed
    return run.log_dir / run.name / f"scratch-L{n_layer}-T{steps}-s{seed}"


def scratch_stage(run: Run, n_layer: int, steps: int, name: str = "scratch", seed: int | None = None) -> Stage:
    seed = int(run.seed if seed is None else seed)
    identity = stage_identity(run.cfg, n_layer=n_layer, steps=steps, seed=seed, init={"kind": "random"})
    return Stage(name, scratch_dir(run, n_layer, steps, seed), identity, f"random init, {n_layer}L, seed {seed}")


def derived_stage(run: Run, name: str, n_layer: int, kind: str, init: str, model: dict | None = None,
                  **sources) -> Stage:
    """A stage of this run (in the run directory) initialised by `kind` from `sources` (identities)."""
    identity = stage_identity(run.cfg, n_layer=n_layer, steps=run.steps, seed=run.seed,
                              init={"kind": kind, "method": run.method.identity(), **sources}, model=model)
    return Stage(name, run.run_dir / name, identity, init)


def reference_stage(run: Run) -> Stage | None:
    """The reference's training stage, or None when it is given (a checkpoint, a pretrained model). The reference is
    the experiment's scratch run of the reference's depth and steps, so a sweep over n trains it once, and
    `method=scratch` of that size (Table 1's full-model row) is the same run."""
    ref = run.reference
    if ref.kind != "train":
        return None
    return scratch_stage(run, run.depth, int(ref.max_steps), "reference", int(ref.seed))


def reference_identity(run: Run) -> dict:
    """What the reference is: its training stage's identity, the given checkpoint's content, or the pretrained
    model's spec."""
    stage = reference_stage(run)
    if stage is not None:
        return stage.identity
    if run.reference.kind == "ckpt":
        from lit_inheritune.io import file_sha256

        return {"kind": "checkpoint", "sha256": file_sha256(Path(run.reference.ckpt))}
    return {"kind": "pretrained", "model": stage_identity(run.cfg, n_layer=run.depth, steps=0, seed=0,
                                                          init={})["model"]}


def unique(stages: list[Stage | None]) -> list[Stage]:
    """Planned stages without repeats: a scratch baseline of the reference's size and steps is the reference."""
    seen, out = set(), []
    for stage in stages:
        if stage is not None and stage.dir not in seen:
            seen.add(stage.dir)
            out.append(stage)
    return out


class Headers:
    """Numbers the stages as they start: "stage 2 of 5" (or "of up to 6" when rounds may stop early). A stage keeps
    its number when its header is asked for again (a lock taken over, then the resume line)."""

    def __init__(self, run: Run, stages: list[Stage], may_stop_early: bool = False):
        self.run, self.numbers = run, {}
        self.total = f"up to {len(stages)}" if may_stop_early else str(len(stages))

    def __call__(self, stage: Stage | None) -> str:
        if stage is None:
            return ""
        number = self.numbers.setdefault(stage.dir, len(self.numbers) + 1)
        return stage.header(self.run, number, self.total)


# ----------------------------------------------------------------------------------------------------------------
# Training helpers (Lightning is imported only here, when a method runs)


def random_model(run: Run, n_layer: int, **changes):
    """A randomly initialised model of the configured family at this depth."""
    from hydra.utils import instantiate

    from lit_inheritune.models import family_of

    return family_of(run.model).random(instantiate(run.model, n_layer=n_layer, **changes))


def train_scratch(run: Run, datamodule, stage: Stage, n_layer: int, steps: int, seed: int | None = None,
                  header: str = "") -> dict:
    """The scratch run of this depth, steps and seed (default: the run's); with another seed it also draws that
    seed's batches, so the run is the same whichever sweep job trains it."""
    import lightning as L
    from hydra.utils import instantiate

    from lit_inheritune.training.lm import CausalLM
    from lit_inheritune.training.runner import fit_stage

    cfg = run.cfg
    if seed is not None and seed != run.seed:
        cfg = OmegaConf.merge(cfg, {"seed": seed})
        datamodule = instantiate(cfg.data, seed=seed)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = CausalLM(random_model(run, n_layer), run.optim(steps), {**run.meta(stage.name), "seed": int(cfg.seed)})
    return fit_stage(cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity,
                     max_steps=steps, header=header)


def train_from(run: Run, datamodule, model, stage: Stage, header: str, module=None) -> dict:
    """Train an initialised model for T steps in its stage directory, with a fresh schedule (`module`: the
    LightningModule, CausalLM around `model` by default)."""
    from lit_inheritune.training.lm import CausalLM
    from lit_inheritune.training.runner import fit_stage

    module = module or CausalLM(model, run.optim(run.steps), meta=run.meta(stage.name))
    return fit_stage(run.cfg, module, datamodule, stage.dir, stage=stage.name, identity=stage.identity,
                     header=header)


def obtain_reference(run: Run, datamodule, header: str = ""):
    """The reference model and its result: trained here (or found done), or given (result None: the caller measures
    its val loss on this experiment's val windows)."""
    from hydra.utils import instantiate

    from lit_inheritune.models import check_same_family, family_of, load_checkpoint

    ref = run.reference
    if ref.kind == "ckpt":
        reference = load_checkpoint(ref.ckpt)
        check_same_family(instantiate(run.model), reference.config, what=f"reference checkpoint {ref.ckpt}")
        return reference, None
    if ref.kind == "pretrained":  # loaded, never trained here
        return family_of(run.model).load(instantiate(run.model)), None
    result = train_scratch(run, datamodule, reference_stage(run), run.depth, int(ref.max_steps), seed=int(ref.seed),
                           header=header)
    return load_checkpoint(result["last_checkpoint"]), result


def measure(run: Run, model, datamodule) -> dict:
    """Val loss of a given model on this experiment's val windows (no training), scored as the stages are: under the
    trainer's precision (bf16-mixed at paper scale), since Inheritune's stop rule compares the two losses at
    tolerance 0 and an fp32 reference would be judged on other numerics than its targets."""
    import lightning as L

    from lit_inheritune.training.lm import CausalLM

    trainer = L.Trainer(accelerator=run.cfg.trainer.accelerator, devices=1,
                        precision=run.cfg.trainer.get("precision"), logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    module = CausalLM(model, run.optim(1))
    val_loss = trainer.validate(module, datamodule=datamodule, verbose=False)[0]["val/loss"]
    return {"stage": "reference", "n_layer": model.config.n_layer, "params": model.num_params(),
            "steps": None, "tokens": None, "val_loss": float(val_loss)}


class FromReference(Method):
    """A one-stage method initialised from the reference by `build(run, reference)`, trained T steps."""

    uses_reference = True

    def stage(self, run: Run) -> Stage:
        raise NotImplementedError

    def build(self, run: Run, reference):
        raise NotImplementedError

    def module(self, run: Run, model, reference, stage: Stage):
        """The LightningModule the stage trains (None: CausalLM around the model)."""
        return None

    def plan(self, run):
        return unique([reference_stage(run), self.stage(run)])

    def run(self, run, datamodule):
        import lightning as L

        stages = self.plan(run)
        headers = Headers(run, stages)
        reference, _ = obtain_reference(run, datamodule, header=headers(reference_stage(run)))
        L.seed_everything(run.seed, workers=True, verbose=False)
        stage = stages[-1]
        model = self.build(run, reference)
        return [train_from(run, datamodule, model, stage, headers(stage),
                           module=self.module(run, model, reference, stage))]
