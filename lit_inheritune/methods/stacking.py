"""`method=stacking` and `method=hybrid_stacking` (PAPER.md section 4), the growth baselines of Table 2."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from lit_inheritune.errors import ConfigError
from lit_inheritune.methods.base import (
    FromReference,
    Headers,
    Method,
    Run,
    Stage,
    derived_stage,
    random_model,
    reference_identity,
)
from lit_inheritune.methods.checks import check_attn_scale
from lit_inheritune.methods.growing import causal_lm_stages, first_batch, fit_identity
from lit_inheritune.training.identity import stage_identity


@dataclass
class Stacking(Method):
    """Stacking (Gong et al. 2019): an n/2-layer model trained from scratch for T steps, its blocks copied into
    n/2..n-1 at step T (the GrowCallback with the stack operator), trained T more. `model` is the reference's shape;
    n = method.n_layer."""

    name: str = "stacking"
    n_layer: int = MISSING
    attn_scale: str = "position"  # of the stacked copies: their new position's, or the block each repeats (source)

    def validate(self, run: Run) -> None:
        n, k = self.n_layer, run.depth
        if n % 2 or not 2 <= n <= k:
            raise ConfigError(f"stacking needs an even method.n_layer <= {k} (model.n_layer), got {n}")
        check_attn_scale(self.attn_scale)

    def plan(self, run: Run) -> list[Stage]:
        n, T = int(self.n_layer), run.steps
        first_identity = stage_identity(run.cfg, n_layer=n // 2, steps=T, seed=run.seed, init={"kind": "random"})
        first = Stage(f"stage1-L{n // 2}", run.run_dir / f"stage1-L{n // 2}", first_identity,
                      f"random init, {n // 2}L, seed {run.seed}")
        return [first, derived_stage(run, f"stage2-L{n}", n, "stacking", f"{n // 2}L stage 1 stacked twice",
                                     previous=first.identity, **first_batch(run, 1))]

    def check(self, run):
        from lit_inheritune.training.identity import check_stage_dir

        super().check(run)
        check_stage_dir(run.run_dir, fit_identity(self.plan(run)))

    def run(self, run, datamodule):
        import lightning as L

        from lit_inheritune.surgery import stack_blocks
        from lit_inheritune.training.grow import Growth
        from lit_inheritune.training.runner import fit_growth

        stages = self.plan(run)
        headers = Headers(run, stages)
        L.seed_everything(run.seed, workers=True, verbose=False)
        first = random_model(run, int(self.n_layer) // 2)
        growth = Growth(stages=stages, steps=run.steps, seeds=[run.seed] * 2, name=run.name,
                        grow=lambda model, i: stack_blocks(model, attn_scale=self.attn_scale),
                        stop=lambda r: False)
        return fit_growth(run.cfg, causal_lm_stages(run), first, datamodule, growth, fit_identity(stages), headers)


@dataclass
class HybridStacking(FromReference):
    """Hybrid stacking: reference blocks 0..n/2-1 repeated to fill n blocks, trained T steps."""

    name: str = "hybrid_stacking"
    n_layer: int = MISSING
    attn_scale: str = "position"  # of the repeated blocks: their new position's, or their reference block's

    def validate(self, run: Run) -> None:
        n, k = self.n_layer, run.depth
        if not 2 <= n <= k:
            raise ConfigError(f"hybrid stacking needs 2 <= method.n_layer <= {k} (model.n_layer), got {n}")
        check_attn_scale(self.attn_scale)

    def stage(self, run):
        n = int(self.n_layer)
        return derived_stage(run, f"hybrid-L{n}", n, "hybrid_stacking",
                             f"reference blocks 0-{n // 2 - 1} repeated to {n} blocks", reference=reference_identity(run))

    def build(self, run, reference):
        from lit_inheritune.surgery import hybrid_stack

        n = int(self.n_layer)
        return hybrid_stack(reference, n_source=n // 2, n_layer=n, attn_scale=self.attn_scale)
