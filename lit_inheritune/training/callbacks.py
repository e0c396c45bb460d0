"""Small pieces around Lightning's Trainer: throughput logging and crash-safe checkpoint files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class SpeedMonitor(L.Callback):
    """Logs tokens seen and training tokens/s (all ranks) every `log_every_n_steps` optimizer steps.

    Only time inside training batches counts, so validation and checkpointing don't dilute tokens/s.
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.train_tokens = 0
        self._t0: float | None = None
        self._window = [0, 0.0]  # tokens, seconds since the last log

    @property
    def tokens_per_sec(self) -> float:
        """Mean over this fit (resumed runs count from the resume)."""
        return self.train_tokens / self.train_seconds if self.train_seconds else float("nan")

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


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it into place: a run killed mid-write leaves
    the previous checkpoint intact, never a truncated one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


class RankConsistencyCheck(L.Callback):
    """At the end of a fit, every rank hashes its weights; ranks that disagree stop the run.

    Surgery between stages happens on every rank independently, so this is the check that they all
    built the same model. The digests are written to `<dirpath>/weights_digest.json`.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath

    def on_train_end(self, trainer, pl_module) -> None:
        h = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        mine = torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).to(pl_module.device)
        every = trainer.strategy.all_gather(mine).reshape(-1, mine.numel())
        digests = [bytes(row.tolist()).hex() for row in every.cpu()]
        if trainer.is_global_zero and self.dirpath:
            Path(self.dirpath).mkdir(parents=True, exist_ok=True)
            (Path(self.dirpath) / "weights_digest.json").write_text(json.dumps({"ranks": digests}, indent=2))
        if len(set(digests)) > 1:
            raise RuntimeError(f"ranks hold different weights after training: {digests}")
