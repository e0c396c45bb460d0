"""Growth inside one `Trainer.fit`: Algorithm 1's rounds and stacking's two stages as one run.

The fit trains stage after stage, each `Growth.steps` optimizer steps long. At a stage's last step (a validation
step: the checks require T to be a multiple of train.val_every_n_steps) the `GrowCallback`
- scores the stage (its val loss) and writes the stage's directory as a one-stage run would (stage_record.py): identity.json,
  result.json, checkpoints/last.ckpt and csv/metrics.csv (its slice of the run's log, steps counted from the
  stage's start), so the stage table, the report and the analysis read stages as before;
- asks the recipe whether to stop (matched, deepest stage reached) and, if not, hands the module the recipe's
  grown model with a fresh optimizer and LR schedule (the paper), or, with `carry_optimizer`, the AdamW state of
  every parameter that survives the growth;
- scores the grown model (val/loss logged at the new stage's first step; the first stage's model at the fit's
  start), so each stage's curve starts at the loss of the model it inherited, as the official code's step-0
  validation has it.

The run's checkpoint records the model's config, so a fit killed in any stage resumes at its depth:
`CausalLM.on_load_checkpoint` rebuilds the module at that depth before Lightning loads the weights and the
optimizer, and this callback's state (which stage, the results so far) comes back with it.

DDP: the wrapper and the optimizer are rebuilt around the grown module, and every rank's weights are compared
after each growth (each rank runs the surgery itself). FSDP restores a checkpoint only after wrapping the module,
so a resumed FSDP run could not grow before its weights load: FSDP runs one fit per stage instead
(`Growth.per_stage_fits`), with the same recipe deciding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from lit_inheritune.training.stage_record import (
    finish_grown_stage,
    run_config_sha256,
    stage_result,
    start_grown_stage,
)


@dataclass
class Growth:
    """What the callback needs from a recipe: the stages the fit may run (each with .name, .dir, .identity,
    .init), their length, how to build the next stage's model from the trained one, and when to stop."""

    stages: list
    steps: int
    grow: Callable[[torch.nn.Module, int], torch.nn.Module]  # (trained model, next stage's index) -> its model
    stop: Callable[[dict], bool]  # a finished stage's result -> end the fit here?
    seeds: list[int]  # the global seed set before each stage's surgery (its random parts)
    describe: Callable[[dict], str] = lambda result: ""  # the end-of-stage line's verdict
    carry_optimizer: bool = False
    name: str = ""  # the experiment, for the printed lines
    header: Callable = lambda stage: stage.name  # a stage's start line (the recipe numbers them)

    @property
    def max_steps(self) -> int:
        return self.steps * len(self.stages)


class GrowCallback(L.Callback):
    """Runs `growth`'s stages inside one fit; see the module docstring."""

    def __init__(self, growth: Growth):
        self.growth = growth
        self.index = 0  # the stage being trained
        self.results: list[dict] = []
        self.stopped = False  # the recipe ended the fit (a resumed fit must not train on)
        # the SpeedMonitor's (wall seconds, train seconds, tokens) when the stage began; in the checkpoint, so that
        # a stage resumed mid-way still counts from its real start
        self._stage_clock: tuple[float, float, int] | None = None

    # -- state that a resumed fit needs: which stage, and what the finished ones scored
    def state_dict(self) -> dict:
        return {"index": self.index, "results": self.results, "stopped": self.stopped, "stage_clock": self._stage_clock}

    def load_state_dict(self, state_dict: dict) -> None:
        self.index, self.results = int(state_dict["index"]), list(state_dict["results"])
        self.stopped = bool(state_dict["stopped"])
        clock = state_dict.get("stage_clock")  # absent in checkpoints written before it was kept
        self._stage_clock = tuple(clock) if clock else None

    @property
    def stage_start(self) -> int:
        return self.index * self.growth.steps

    def on_train_start(self, trainer, pl_module) -> None:
        if self.stopped:  # killed after the last stage's result, before the fit's
            trainer.should_stop = True
            _say(trainer, f"{self.growth.header(self.growth.stages[self.index])}: done, finishing the run's record")
        elif trainer.global_step:  # resumed: say in which stage
            _say(trainer, f"{self.growth.header(self.growth.stages[self.index])}, resumed at its step "
                          f"{trainer.global_step - self.stage_start} of {self.growth.steps}")
        pl_module.hparams["meta"]["stage"] = self.growth.stages[self.index].name
        if self._stage_clock is None:
            self._mark_start(trainer)
        if not self.stopped and trainer.global_step == self.stage_start:
            # round 1's start, or a fit resumed from a round boundary's checkpoint: LogHistory has dropped the rows
            # from that step on, the start's score with them, so it is scored again (same weights, same number)
            self._score_start(trainer, pl_module)
        self._update_bar(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        pl_module.log("train/stage", float(self.index + 1))

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.global_step != self.stage_start + self.growth.steps:
            return
        result = self._finish_stage(trainer, pl_module)
        verdict = self.growth.describe(result)
        _say(trainer, f"[{self.growth.name}] {result['stage']}: val loss {result['val_loss']:.4f}"
                      f"{': ' + verdict if verdict else ''}")
        if self.growth.stop(result) or self.index + 1 == len(self.growth.stages):
            self.stopped = trainer.should_stop = True
            return
        self.index += 1
        L.seed_everything(self.growth.seeds[self.index], workers=True, verbose=False)  # surgery's random parts
        grown = self.growth.grow(pl_module.model, self.index)
        self._install(trainer, pl_module, grown)
        self._score_start(trainer, pl_module)
        _say(trainer, f"{self.growth.header(self.growth.stages[self.index])}, {self.growth.steps} steps")
        self._mark_start(trainer)
        self._update_bar(trainer)

    # -- a finished stage: its directory as a one-stage run would leave it
    def _finish_stage(self, trainer, pl_module) -> dict:
        stage = self.growth.stages[self.index]
        stage_dir = Path(stage.dir)
        ckpt = start_grown_stage(trainer, stage_dir, stage.identity)
        _check_ranks(trainer, pl_module, stage_dir, "ranks")
        speed = _speed(trainer)
        wall0, secs0, tokens0 = self._stage_clock  # set when the stage began (on_train_start, or the round before)
        secs = speed.train_seconds - secs0
        tokens_seen = speed.train_tokens - tokens0
        tokens_per_step = trainer.datamodule.tokens_per_step * trainer.accumulate_grad_batches * trainer.world_size
        result = stage_result(
            stage=stage.name, model=pl_module.model, steps=self.growth.steps, tokens=self.growth.steps * tokens_per_step,
            val_loss=float(trainer.callback_metrics["val/loss"]),
            tokens_per_sec=tokens_seen / secs if secs else float("nan"), train_seconds=secs,
            wall_seconds=speed.wall_seconds - wall0, last_checkpoint=ckpt, best_checkpoint="", identity=stage.identity,
            seed=stage.identity["seed"], config_sha256=run_config_sha256(trainer))
        finish_grown_stage(trainer, stage_dir, result, self.stage_start, self.growth.steps, tokens_per_step)
        self.results.append(result)
        return result

    def _install(self, trainer, pl_module, model: torch.nn.Module) -> None:
        """Give the module the grown model: a new optimizer and schedule, and under DDP a new wrapper."""
        old_optimizer = trainer.optimizers[0]
        old_names = {id(p): n for n, p in pl_module.model.named_parameters()}
        # in training mode: this runs after validation, and Lightning restores the mode only of modules it saw before
        pl_module.replace_model(model.to(pl_module.device).train())
        pl_module.hparams["meta"]["stage"] = self.growth.stages[self.index].name
        strategy = trainer.strategy
        strategy.precision_plugin.convert_module(pl_module)  # as Lightning's setup did for the first model
        # before DDP wraps it: the wrapper broadcasts rank 0's weights, which would hide ranks that grew differently
        _check_ranks(trainer, pl_module, Path(self.growth.stages[self.index].dir), "built")
        from lightning.pytorch.strategies import DDPStrategy

        if isinstance(strategy, DDPStrategy):
            strategy.model = pl_module
            strategy.configure_ddp()
        strategy.setup_optimizers(trainer)
        if self.growth.carry_optimizer:
            carry_adam_state(old_optimizer, old_names, trainer.optimizers[0], dict(pl_module.model.named_parameters()))

    def _score_start(self, trainer, pl_module) -> None:
        """The stage's model before its first step on the fit's val windows, under the fit's precision, logged as
        val/loss at the stage's first step. Outside Lightning's validation loop, whose end would also run the
        checkpoint callback (a checkpoint at step 0) and this callback's stage end."""
        import math

        trainer.fit_loop.epoch_loop.val_loop.setup_data()  # the loader the fit validates with (sharded under DDP)
        pl_module.eval()
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            for i, batch in enumerate(trainer.val_dataloaders):  # the datamodule's one loader
                pl_module.validation_step(trainer.strategy.batch_to_device(batch), i)
        loss = float(pl_module.val_loss.compute())  # synced across ranks
        pl_module.val_loss.reset()
        pl_module.train()
        for logger in trainer.loggers:
            # val/stage_start (the stage's number) marks the row: Lightning logs a validation after k steps at step
            # k - 1, so without it a start row at step s would read as a validation after s + 1 steps
            logger.log_metrics({"val/loss": loss, "val/ppl": math.exp(min(loss, 50.0)),
                                "val/stage_start": float(self.index + 1)}, step=self.stage_start)

    def _mark_start(self, trainer) -> None:
        speed = _speed(trainer)
        self._stage_clock = (speed.wall_seconds, speed.train_seconds, speed.train_tokens)

    def _update_bar(self, trainer) -> None:
        from lit_inheritune.training.callbacks import StageProgressBar

        for cb in trainer.callbacks:
            if isinstance(cb, StageProgressBar):
                cb.set_stage(self.growth.stages[self.index].name, self.stage_start, self.growth.steps)


def carry_adam_state(old: torch.optim.Optimizer, old_names: dict[int, str], new: torch.optim.Optimizer,
                     new_params: dict[str, torch.nn.Parameter]) -> int:
    """Copy AdamW's per-parameter state (step, exp_avg, exp_avg_sq) from `old` to `new` for every parameter whose
    name and shape survive the growth (append keeps the trained model's names). Returns how many were carried."""
    by_name = {old_names[id(p)]: old.state[p] for group in old.param_groups for p in group["params"]
               if p in old.state and id(p) in old_names}
    carried = 0
    for group in new.param_groups:
        for p in group["params"]:
            name = next((n for n, q in new_params.items() if q is p), None)
            state = by_name.get(name)
            if state and state["exp_avg"].shape == p.shape:
                new.state[p] = {k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()}
                carried += 1
    return carried


def _say(trainer, text: str) -> None:
    """A line of our own, above the progress bar rather than glued to its last redraw."""
    from lit_inheritune.training.callbacks import StageProgressBar

    bar = next((c for c in trainer.callbacks if isinstance(c, StageProgressBar)), None)
    if bar is not None and bar._train_progress_bar is not None and not bar.train_progress_bar.disable:
        bar.print(text)
    elif trainer.is_global_zero:
        print(text, flush=True)


def _speed(trainer):
    """The fit's SpeedMonitor (runner._callbacks always adds one)."""
    from lit_inheritune.training.callbacks import SpeedMonitor

    return next(c for c in trainer.callbacks if isinstance(c, SpeedMonitor))


def _check_ranks(trainer, pl_module, stage_dir: Path, when: str) -> None:
    from lit_inheritune.training.callbacks import RankConsistencyCheck

    for cb in trainer.callbacks:
        if isinstance(cb, RankConsistencyCheck):
            cb.compare(trainer, pl_module, when, stage_dir)
