"""A callback that sends its own process the preemption signal, as SLURM would, at the end of optimizer step `step`
(on rank `rank` only, when given). The SLURM tests add it to runs in this process, and through the config
(+callbacks.signal._target_=slurm_signal.SignalAt) to the processes they launch."""

import os

import lightning as L


class SignalAt(L.Callback):
    def __init__(self, step: int, rank: int | None = None):
        self.step, self.rank, self.sent = step, rank, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        from lit_inheritune.training.preemption import preemption_signal

        if trainer.global_step == self.step and not self.sent and self.rank in (None, trainer.global_rank):
            self.sent = True
            os.kill(os.getpid(), preemption_signal())
