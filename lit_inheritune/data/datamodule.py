"""Batches from prepared token shards.

Training batches are a pure function of (seed, rank, micro-batch index): a resumed run draws exactly
the batches the uninterrupted run would have drawn, with no sampler state to save. Two orders, as in
the paper's two scripts: `random` windows drawn with replacement (OpenWebText) and `sequential`
windows read in order without repetition (FineWeb-Edu). Validation uses a fixed set of windows drawn
with `val_seed`, independent of the run's seed, so every run of an experiment is scored on the same
tokens.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lit_inheritune.data.prepare import DataError, check_fits, load_prepared, prepare


def _windows(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each (len(starts), block_size), int64."""
    rows = np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int64)
    rows = torch.from_numpy(rows)
    return rows[:, :-1], rows[:, 1:]


class TrainWindows(IterableDataset):
    """An endless stream of (x, y) batches starting at micro-batch `start`."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int,
                 sampling: str, rank: int = 0, world_size: int = 1, start: int = 0):
        self.tokens, self.block_size, self.batch_size = tokens, block_size, batch_size
        self.seed, self.sampling, self.rank, self.world_size, self.start = seed, sampling, rank, world_size, start
        self.n_starts = len(tokens) - block_size - 1  # valid window starts are 0..n_starts-1

    def starts(self, step: int) -> np.ndarray:
        if self.sampling == "random":
            rng = np.random.default_rng([self.seed, self.rank, step])
            return rng.integers(0, self.n_starts, size=self.batch_size)
        # sequential: consecutive non-overlapping windows, ranks interleaved, wrapping after an epoch
        first = (step * self.world_size + self.rank) * self.batch_size
        return ((first + np.arange(self.batch_size)) * self.block_size) % self.n_starts

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        # DataLoader reads workers round-robin, so worker w serving steps w, w+n, ... keeps the order.
        step = self.start + worker
        while True:
            yield _windows(self.tokens, self.starts(step), self.block_size)
            step += n_workers


class TokenDataModule(L.LightningDataModule):
    def __init__(
        self,
        data_dir: str,
        block_size: int,
        batch_size: int,
        model_vocab_size: int,
        sampling: str = "random",
        num_val_windows: int = 64,
        val_batch_size: int | None = None,
        val_seed: int = 1337,
        seed: int = 1,
        num_workers: int = 0,
        verify_checksum: bool = True,
        prepare: dict | None = None,
    ):
        super().__init__()
        if sampling not in ("random", "sequential"):
            raise ValueError(f"data.sampling must be 'random' or 'sequential', got {sampling!r}")
        self.data_dir = Path(data_dir)
        self.block_size, self.batch_size = block_size, batch_size
        self.model_vocab_size = model_vocab_size
        self.sampling, self.seed, self.num_workers = sampling, seed, num_workers
        self.num_val_windows, self.val_seed = num_val_windows, val_seed
        self.val_batch_size = val_batch_size or batch_size
        self.verify_checksum = verify_checksum
        self.prepare_cfg = dict(prepare) if prepare else None
        self.manifest: dict | None = None

    def prepare_data(self) -> None:
        """Build the shards if absent (rank 0 only; Lightning calls it before setup)."""
        if (self.data_dir / "manifest.json").exists():
            return
        if self.prepare_cfg is None:
            raise DataError(
                f"no prepared data in {self.data_dir} (manifest.json missing) and this data config has no "
                "'prepare' section; run `python -m lit_inheritune.data.prepare` first or point data.data_dir "
                "at a prepared directory"
            )
        prepare(out_dir=self.data_dir, **self.prepare_cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.manifest is not None:
            return
        self.manifest, self.train_tokens, self.val_tokens = load_prepared(self.data_dir, self.verify_checksum)
        check_fits(self.data_dir, self.manifest, self.train_tokens, self.val_tokens, self.block_size,
                   self.model_vocab_size)
        rng = np.random.default_rng(self.val_seed)
        starts = rng.integers(0, len(self.val_tokens) - self.block_size - 1, size=self.num_val_windows)
        self.val_set = TensorDataset(*_windows(self.val_tokens, np.sort(starts), self.block_size))

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world, start = 0, 1, 0
        if trainer is not None:
            rank, world = trainer.global_rank, trainer.world_size
            # On resume Lightning restores global_step before asking for the loader.
            start = trainer.global_step * trainer.accumulate_grad_batches
        dataset = TrainWindows(self.train_tokens, self.block_size, self.batch_size, self.seed,
                               self.sampling, rank, world, start)
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per micro-batch on one rank."""
        return self.batch_size * self.block_size
