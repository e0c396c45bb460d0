"""Preemption on SLURM: the run saves its checkpoint, requeues its job, and the requeued job resumes from it.

SLURM signals a job a while before it kills it: at its time limit, and on preemption when the cluster sets
PreemptParameters=send_user_signal. conf/hydra/launcher/slurm.yaml asks for submitit's signal (USR2, or
SUBMITIT_PREEMPT_SIGNAL) `signal_delay_s` before the kill. The handler installed here only notes the signal; the
`Preemption` callback answers it at the end of the next optimizer step that neither validates nor logs, when the
training state is whole. (Lightning's own auto-requeue saves from inside the handler, which may run between two
tensors of an optimizer update, and under DDP starts a collective in the middle of the step's own.) It then

- saves checkpoints/last.ckpt (the stage's resume point) and writes `preempted` beside it,
- requeues the job: under Hydra's submitit launcher by calling submitit's handler for the signal (it requeues with
  its count of time-outs, and exits), otherwise with `scontrol requeue`,
- and stops the process.

The requeued job runs the same command. fit_stage resumes the stage from last.ckpt without resume=true when SLURM
says the job was requeued (SLURM_RESTART_COUNT) or the stage recorded a preemption: nothing else writes
checkpoints in between, so last.ckpt is the latest state (no hpc_ckpt_*.ckpt: Lightning's auto-requeue is off).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import NoReturn

import lightning as L

from lit_inheritune.io import write_text_atomic
from lit_inheritune.training.stage_record import checkpoint_path
from lit_inheritune.training.strategy import say

PREEMPTED_FILE = "preempted"  # in a stage directory: its last checkpoint was saved on a preemption signal
SIGNAL_ENV = "SUBMITIT_PREEMPT_SIGNAL"  # submitit's own setting: both answer the same signal
EXIT_REQUEUED = 75  # sysexits' EX_TEMPFAIL: the job stopped to be continued


class _Received:
    """The preemption signal, once received, for the rest of the process: a fit that starts after it (the job's
    next stage) answers it at its first step."""

    signum: int | None = None
    previous = None  # the handler ours replaced: submitit's, under its launcher


_received = _Received()


def preemption_signal() -> signal.Signals:
    return getattr(signal, "SIG" + os.environ.get(SIGNAL_ENV, "USR2").removeprefix("SIG"))


def on_slurm() -> bool:
    """Running as a task SLURM started (srun, or submitit's sbatch), as Lightning sees it."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def cluster_plugins() -> list:
    """The Trainer's cluster environment under SLURM: Lightning's, without its auto-requeue (`Preemption` answers
    the signal instead); elsewhere, nothing (Lightning detects the environment itself)."""
    if not on_slurm():
        return []
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)]


def requeued(stage_dir: str | Path) -> bool:
    """Whether the stage in `stage_dir` continues a preempted or requeued job, so it resumes without resume=true."""
    count = os.environ.get("SLURM_RESTART_COUNT", "").strip()
    return (count.isdigit() and int(count) > 0) or (Path(stage_dir) / PREEMPTED_FILE).is_file()


def _note(signum, frame) -> None:
    _received.signum = signum


def install() -> None:
    """Note the preemption signal from now on (once per process; Python lets only the main thread set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signum = preemption_signal()
    current = signal.getsignal(signum)
    if current is not _note:
        _received.previous = current
        signal.signal(signum, _note)


def uninstall() -> None:
    """Give the signal back to the handler it had (submitit's) once a fit ends: between fits there is nothing to
    save, and submitit requeues at once."""
    if threading.current_thread() is not threading.main_thread():
        return
    signum = preemption_signal()
    if signal.getsignal(signum) is _note and _received.previous is not None:
        signal.signal(signum, _received.previous)


def _reports_now(trainer: L.Trainer) -> bool:
    """Whether the step that just ended still validates or logs: Lightning does both after on_train_batch_end, so a
    checkpoint saved before them resumes past them (it counts a due validation as run), losing that evaluation
    (its row and score) or the step's row of train metrics. Lightning's own decisions, asked again."""
    loop = trainer.fit_loop
    validates = loop.epoch_loop._should_check_val_fx(loop._data_fetcher)
    # a log every step leaves no quiet step to wait for
    logs = trainer.log_every_n_steps > 1 and trainer._logger_connector.should_update_logs
    return bool(validates or logs)


# A validation step may be followed by a logging step; should more steps in a row report (a time-based
# val_check_interval), the step is saved anyway: a row is lost rather than the job.
MAX_POSTPONED = 3


class Preemption(L.Callback):
    """Answers the preemption signal at the end of an optimizer step: saves `stage_dir`'s last.ckpt, requeues the
    job and exits (see the module's docstring). fit_stage adds it under SLURM."""

    def __init__(self, stage_dir: str | Path, stage: str = ""):
        self.stage_dir, self.stage = Path(stage_dir), stage
        self._step: int | None = None
        self._postponed = 0

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            install()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            uninstall()

    def on_train_start(self, trainer, pl_module) -> None:
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self._step:
            return  # a micro-batch of an accumulation: no step has ended
        self._step = trainer.global_step
        # Every rank decides at the same step (any rank signalled: all save), so the checkpoint's collectives match.
        if not trainer.strategy.reduce_boolean_decision(_received.signum is not None, all=False):
            return
        if trainer.global_step >= trainer.max_steps:
            return  # the fit ends with this step: it finishes (its result), and the process's next stage answers
        if _reports_now(trainer) and self._postponed < MAX_POSTPONED:
            self._postponed += 1  # a step later: the signal leaves minutes, a step takes seconds
            return
        self._preempt(trainer)

    def _preempt(self, trainer: L.Trainer) -> NoReturn:
        ckpt = checkpoint_path(self.stage_dir)
        trainer.save_checkpoint(ckpt, weights_only=False)  # every rank calls it; rank 0 writes (atomically)
        signum = _received.signum or preemption_signal()
        if trainer.is_global_zero:
            write_text_atomic(self.stage_dir / PREEMPTED_FILE, f"{trainer.global_step}\n")
            say(f"{self.stage or self.stage_dir.name}: preempted ({signal.Signals(signum).name}): saved step "
                f"{trainer.global_step} to {ckpt}")
        _finish_wandb()
        previous = _received.previous
        if callable(previous):
            previous(signum, None)  # submitit's: requeues the job and exits on rank 0; returns on the others
        elif trainer.is_global_zero:
            _requeue()
        raise SystemExit(EXIT_REQUEUED)


def slurm_job() -> str | None:
    """The job to requeue: an array's task as <array job>_<task>, as scontrol names it."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _requeue() -> None:
    job = slurm_job()
    command = ["scontrol", "requeue", str(job)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        failure = f"exit code {done.returncode}: {done.stderr.strip()}" if done.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as error:
        failure = str(error)
    if failure:
        say(f"`{' '.join(command)}` failed ({failure}); run the same command again to continue from the checkpoint")
    else:
        say(f"requeued SLURM job {job}: it continues from the checkpoint")


def _finish_wandb() -> None:
    """Close an open W&B run, so its data up to here is kept; the requeued job continues it under the same id."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=EXIT_REQUEUED)
