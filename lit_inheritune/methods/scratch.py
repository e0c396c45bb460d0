"""`method=scratch`: a randomly initialised model trained T steps; the reference and the scratch baselines."""

from __future__ import annotations

from dataclasses import dataclass

from lit_inheritune.methods.base import Method, Run, scratch_stage, train_scratch


@dataclass
class Scratch(Method):
    """A randomly initialised `model.n_layer`-layer model, trained train.max_steps steps."""

    name: str = "scratch"

    def plan(self, run: Run):
        return [scratch_stage(run, run.depth, run.steps)]

    def run(self, run: Run, datamodule):
        stage = self.plan(run)[0]
        return [train_scratch(run, datamodule, stage, run.depth, run.steps, header=stage.header(run, 1, "1"))]
