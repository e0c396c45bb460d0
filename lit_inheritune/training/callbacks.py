"""Small pieces around Lightning's Trainer: throughput logging, crash-safe checkpoint files, a CSV log that
survives a resume, and a progress bar that counts a stage's steps."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_inheritune.errors import ConfigError
from lit_inheritune.io import write_bytes_atomic, write_csv_atomic


class SpeedMonitor(L.Callback):
    """Logs tokens seen and training tokens/s (all ranks) every `log_every_n_steps` optimizer steps.

    Only time inside training batches counts, so validation and checkpointing don't dilute tokens/s. The
    totals ride in the checkpoint, so a resumed run's result counts the time it spent before the kill (up to
    its last checkpoint) too.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.train_tokens = 0
        self._wall_before = 0.0  # wall seconds of the run before this fit resumed it
        self._fit_start: float | None = None
        self._t0: float | None = None
        self._window = [0, 0.0]  # tokens, seconds since the last log

    @property
    def tokens_per_sec(self) -> float:
        """Mean over the whole run, resumes included."""
        return self.train_tokens / self.train_seconds if self.train_seconds else float("nan")

    @property
    def wall_seconds(self) -> float:
        """Wall time of the whole run, resumes included (a killed fit's time after its last checkpoint is not)."""
        return self._wall_before + (time.time() - self._fit_start if self._fit_start is not None else 0.0)

    def state_dict(self) -> dict:
        return {"train_seconds": self.train_seconds, "train_tokens": self.train_tokens,
                "wall_seconds": self.wall_seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.train_seconds = float(state_dict["train_seconds"])
        self.train_tokens = int(state_dict["train_tokens"])
        self._wall_before = float(state_dict["wall_seconds"])

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.time()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        dt = time.perf_counter() - self._t0
        x = batch[0]
        tokens = x.numel() * trainer.world_size
        self.train_seconds += dt
        self.train_tokens += tokens
        self._window[0] += tokens
        self._window[1] += dt
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # mid-accumulation: no optimizer step yet
        step = trainer.global_step
        if step % trainer.log_every_n_steps == 0:
            pl_module.log("train/tokens_per_sec", self._window[0] / self._window[1])
            self._window = [0, 0.0]
            tokens_per_step = tokens * trainer.accumulate_grad_batches
            pl_module.log("train/tokens", float(step * tokens_per_step))


class ComputeMonitor(L.Callback):
    """Logs, beside SpeedMonitor's `train/tokens`, what the run has cost so far with everything it was built from
    (compute.py, as the report counts it): `train/cumulative_tokens` and `train/cumulative_flops`, the reference's
    training included, and for a growing fit its earlier rounds. Same values in the fit's log and in each grown
    stage's slice of it, so stage_record.write_stage_log copies them unchanged.

    In W&B they are declared step metrics, and val/loss, val/ppl and train/loss are plotted against
    train/cumulative_flops by default: one chart of a group (one W&B group per experiment) puts every method on
    the same compute axis. A stage whose sources' cost is unknown (a given, pretrained reference) logs neither and
    keeps Lightning's trainer/global_step axis."""

    X_AXIS = "train/cumulative_flops"
    ON_X_AXIS = ("val/loss", "val/ppl", "train/loss")

    def __init__(self, identity: dict, earlier: list[dict] = (), grow=None):
        self.identity = identity  # the fit's (a growing fit's stages come from its GrowCallback, `grow`)
        self.earlier = list(earlier)  # stages trained before this fit that it does not nest (compute.py)
        self.grow = grow

    def _stage(self, trainer) -> tuple[dict, list[dict], int]:
        """The identity of the stage being trained, the earlier stages to count, and its first global step."""
        grow = self.grow
        if grow is None:
            return self.identity, self.earlier, 0
        # every earlier stage of a growing fit was trained in it (compute.py counts a nested one once)
        stages = grow.growth.stages
        return stages[grow.index].identity, [*self.earlier, *(s.identity for s in stages[:grow.index])], \
            grow.stage_start

    def costs(self, trainer) -> dict[str, float]:
        from lit_inheritune.compute import cumulative_at

        identity, earlier, start = self._stage(trainer)
        if "train" not in identity:
            return {}
        return {f"train/{k}": v for k, v in cumulative_at(identity, earlier, trainer.global_step - start).items()}

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or self.X_AXIS not in self.costs(trainer):
            return
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                run = logger.experiment  # Lightning's define_metric("*", step_metric="trainer/global_step") first
                for name in ("train/tokens", "train/cumulative_tokens", self.X_AXIS):
                    run.define_metric(name)
                for name in self.ON_X_AXIS:
                    # step_sync: a val/loss row, logged apart from the training rows, takes the last value
                    run.define_metric(name, step_metric=self.X_AXIS, step_sync=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # on the rows SpeedMonitor logs train/tokens on
        if (batch_idx + 1) % trainer.accumulate_grad_batches or trainer.global_step % trainer.log_every_n_steps:
            return
        for name, value in self.costs(trainer).items():
            pl_module.log(name, value)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it into place: a run killed mid-write leaves
    the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        write_bytes_atomic(path, buffer.getbuffer())


class RankConsistencyCheck(L.Callback):
    """Every rank hashes its weights; ranks that disagree stop the run. Digests go to `<dirpath>/weights_digest.json`.

    - `built`: at the start of a fit, the model as this rank built it, before the strategy wraps it. Surgery
      between stages happens on every rank independently, and DDP would silently overwrite a disagreement with
      rank 0's weights (FSDP would shard a mixture of them), so this is the check that they built the same model.
    - `ranks`: at the end of a fit, the trained weights (DDP keeps them in sync). Not under FSDP, where each rank
      holds a different shard by design.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.digests: dict[str, list[str]] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self.compare(trainer, pl_module, "built")

    def on_train_end(self, trainer, pl_module) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if not isinstance(trainer.strategy, FSDPStrategy):
            self.compare(trainer, pl_module, "ranks")

    def compare(self, trainer, pl_module, when: str, dirpath: str | Path | None = None) -> None:
        """Hash every rank's weights and raise if they differ; record the digests under `when` in
        `<dirpath or self.dirpath>/weights_digest.json` (the GrowCallback passes each stage's directory)."""
        from lightning.pytorch.strategies import FSDPStrategy

        if when == "ranks" and isinstance(trainer.strategy, FSDPStrategy):
            return
        h = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        # On the strategy's device: before the strategy has set up, the module may not be there yet.
        mine = torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).to(trainer.strategy.root_device)
        every = trainer.strategy.all_gather(mine).reshape(-1, mine.numel())
        digests = [bytes(row.tolist()).hex() for row in every.cpu()]
        self.digests[when] = digests
        out_dir = dirpath or self.dirpath
        if trainer.is_global_zero and out_dir:
            path = Path(out_dir) / "weights_digest.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            recorded = json.loads(path.read_text()) if dirpath and path.exists() else {}
            path.write_text(json.dumps({**recorded, **({when: digests} if dirpath else self.digests)}, indent=2))
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different weights ({when}): {digests}")


class _HistoryKeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv when it opens the directory; this one keeps it, so
    a resumed stage's log holds the steps from before the kill (trimmed by `keep_steps_before`)."""

    def _check_log_dir_exists(self) -> None:
        pass

    def keep_steps_before(self, step: int) -> None:
        """Drop the rows of steps >= `step` (logged after the checkpoint the run resumes from: they are trained
        and logged again), so every logged step appears once."""
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = sorted(reader.fieldnames or []), [r for r in reader if int(r["step"]) < step]
        write_csv_atomic(path, header, rows)
        self.metrics_keys = header  # later rows append under the same columns


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv survives a kill and resume with each logged step exactly once
    (with `LogHistory`, which the runner adds beside it)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _HistoryKeepingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryKeepingWriter(log_dir=self.log_dir)
        return self._experiment


class LogHistory(L.Callback):
    """Trims a resumed stage's CSV to the steps before its checkpoint when training starts, and flushes the CSV
    whenever a checkpoint is saved, so no step before a checkpoint is ever lost to a kill."""

    def _csv(self, trainer) -> list[ResumableCSVLogger]:
        return [lg for lg in trainer.loggers if isinstance(lg, ResumableCSVLogger)]

    def on_train_start(self, trainer, pl_module) -> None:
        for logger in self._csv(trainer):
            if trainer.is_global_zero:
                logger.experiment.keep_steps_before(trainer.global_step)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        for logger in self._csv(trainer):
            logger.save()


PROGRESS_EVERY_ENV = "LIT_INHERITUNE_PROGRESS_EVERY"
PROGRESS_EVERY = 50  # steps between progress lines in a log: a 100K-step stage writes 2,000 lines


def _progress_every() -> int:
    value = os.environ.get(PROGRESS_EVERY_ENV, "")
    try:
        every = int(value) if value else PROGRESS_EVERY
    except ValueError:
        every = 0
    if every < 1:
        raise ConfigError(f"{PROGRESS_EVERY_ENV}={value!r}: expected a whole number of steps >= 1")
    return every


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class StageProgressBar(TQDMProgressBar):
    """The training bar names the stage and counts optimizer steps to the stage's real total (Lightning's own
    counts batches of an endless epoch: "Epoch 0/-2", and "120/59" after a resume).

    On a terminal the bar is live. When stdout is not a terminal (a file, a pipe, a SLURM log), where every redraw
    would be a line of its own, there is no bar: one plain line every `every` optimizer steps (default 50, or the
    environment's LIT_INHERITUNE_PROGRESS_EVERY) and one when the stage ends, with its final losses."""

    def __init__(self, stage: str, refresh_rate: int = 1, every: int | None = None):
        super().__init__(refresh_rate=refresh_rate)
        self.stage = stage
        self.start, self.total = 0, None  # the stage's first global step and its length (None: to max_steps)
        self.every = int(every) if every is not None else _progress_every()
        self.live = True  # decided when training starts: a live bar only on a terminal
        self._clock = (time.monotonic(), 0)  # when the stage's count started, and at which step
        self._printed = None  # the stage's step of the last line printed (a log's bar)

    @property
    def train_description(self) -> str:
        return self.stage

    def init_train_tqdm(self) -> Tqdm:
        self.live = _is_terminal(sys.stdout)
        if self.live:
            return super().init_train_tqdm()
        return Tqdm(desc=self.train_description, disable=True)  # counts steps; _print_progress writes the lines

    def set_stage(self, stage: str, start: int, total: int) -> None:
        """A fit that grows (GrowCallback) runs several stages: the bar counts the current one."""
        self.stage, self.start, self.total = stage, start, total
        self._clock, self._printed = (time.monotonic(), 0), None
        bar = self.train_progress_bar
        if bar is not None:
            bar.set_description(stage)
            bar.reset(total=total)
            bar.initial = 0

    def _total(self, trainer) -> int:
        return self.total if self.total is not None else trainer.max_steps

    def on_train_epoch_start(self, trainer, *_) -> None:
        bar = self.train_progress_bar
        bar.reset(total=self._total(trainer))
        bar.initial = bar.n = trainer.global_step - self.start
        self._clock, self._printed = (time.monotonic(), bar.n), None

    def init_validation_tqdm(self):
        # the val loss shows in the training bar's postfix; a bar per evaluation would only add lines
        return Tqdm(disable=True)

    def get_metrics(self, trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = trainer.global_step - self.start
        bar = self.train_progress_bar
        if bar is None:
            return
        if bar.total != self._total(trainer):
            # a fit resumed mid-epoch starts without on_train_epoch_start
            bar.reset(total=self._total(trainer))
            bar.initial = n
        if not self.live:
            bar.n = n
            if n % self.every == 0 and (bar.total is None or n < bar.total):  # the last step: after its validation
                self._print_progress(trainer, pl_module)
        elif self._should_update(n, bar.total):
            bar.n = n
            bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=False)
            bar.refresh()  # one redraw per step, not two

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        bar = self._train_progress_bar
        if not self.live and bar is not None and trainer.state.fn == "fit" and not trainer.sanity_checking \
                and trainer.global_step - self.start == bar.total:
            self._print_progress(trainer, pl_module)  # the stage's end, with its final val loss

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.live and self._train_progress_bar is not None:
            self._print_progress(trainer, pl_module)  # a fit that stopped without a validation at its end
        super().on_train_end(trainer, pl_module)

    def _print_progress(self, trainer, pl_module) -> None:
        """One line of a log's bar: the stage, its step, the speed and the losses (once per step)."""
        bar = self.train_progress_bar
        n = trainer.global_step - self.start
        if self.is_disabled or n == self._printed or n <= self._clock[1]:
            return
        self._printed = n
        seconds = time.monotonic() - self._clock[0]
        rate = (n - self._clock[1]) / seconds if seconds > 0 else float("nan")
        left = (bar.total - n) / rate if bar.total and rate > 0 else None
        times = Tqdm.format_interval(seconds) + (f"<{Tqdm.format_interval(left)}" if left is not None else "")
        metrics = ", ".join(f"{k}={Tqdm.format_num(v)}" for k, v in self.get_metrics(trainer, pl_module).items())
        total = f"/{bar.total}" if bar.total else ""
        print(f"{self.stage}: {n}{total} steps [{times}, {rate:.2f} steps/s]{' ' + metrics if metrics else ''}",
              flush=True)


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger always passes wandb's deprecated `anonymous` setting, which makes W&B print a
    warning in every process; this one leaves it out."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wandb_init.pop("anonymous", None)
