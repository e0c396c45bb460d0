"""Training windows in the paper's two orders (PAPER.md section 3): random windows drawn with replacement
(OpenWebText) and sequential windows without repetition (FineWeb-Edu), each a pure function of (seed, rank, step)."""

import numpy as np
import torch

from lit_inheritune.data.datamodule import TrainWindows

BLOCK, BATCH = 8, 3
TOKENS = np.arange(1000, dtype=np.uint16)  # token i at position i, so a window's first input is its start
N_STARTS = len(TOKENS) - BLOCK - 1  # valid starts 0..990


def _starts(sampling, n, seed=1, rank=0, world_size=1, start=0) -> list[list[int]]:
    """The window starts of n consecutive micro-batches of one rank."""
    stream = iter(TrainWindows(TOKENS, BLOCK, BATCH, seed, sampling, rank, world_size, start))
    batches = [next(stream) for _ in range(n)]
    for x, y in batches:  # inputs and next-token targets, whole windows of the shard
        assert x.shape == y.shape == (BATCH, BLOCK) and x.dtype == torch.int64
        assert torch.equal(x, x[:, :1] + torch.arange(BLOCK)) and torch.equal(y, x + 1)
    return [x[:, 0].tolist() for x, _ in batches]


def test_sequential_reads_consecutive_windows_once_ranks_interleaved():
    # Two ranks, 20 micro-batches each: 120 windows of 8 tokens, the first 960 tokens read once, in order,
    # rank 0 taking batches 0, 2, 4, ... of the stream and rank 1 batches 1, 3, 5, ...
    ranks = [_starts("sequential", 20, rank=r, world_size=2) for r in (0, 1)]
    read = [s for step in range(20) for rank in (0, 1) for s in ranks[rank][step]]
    assert read == [BLOCK * i for i in range(120)]
    assert _starts("sequential", 20, seed=7) == [read[BATCH * i: BATCH * (i + 1)] for i in range(20)]  # no seed
    assert _starts("sequential", 4, start=5) == _starts("sequential", 9)[5:]  # a resumed run reads on


def test_random_windows_are_drawn_with_replacement_from_seed_rank_and_step():
    draws = _starts("random", 300)
    flat = [s for batch in draws for s in batch]
    assert min(flat) >= 0 and max(flat) < N_STARTS
    assert len(set(flat)) < len(flat)  # 900 draws from 991 starts: repeats, as with replacement
    assert any(s % BLOCK for s in flat)  # anywhere, not on a grid of windows
    assert abs(np.mean(flat) - (N_STARTS - 1) / 2) < 30
    assert _starts("random", 4, start=5) == draws[5:9]  # a resumed run draws what the uninterrupted one would
    assert _starts("random", 5, rank=0, world_size=2) == draws[:5]  # a rank's stream depends on its rank only
    assert _starts("random", 5, rank=1, world_size=2) != draws[:5]
    assert _starts("random", 5, seed=2) != draws[:5]
    assert len({tuple(b) for b in draws}) == len(draws)  # every step draws anew


def test_the_datamodule_reads_in_its_configured_order(fixture_data_dir):
    from lit_inheritune.data.datamodule import TokenDataModule

    first_batches = {}
    for sampling in ("sequential", "random"):
        dm = TokenDataModule(str(fixture_data_dir), BLOCK, BATCH, model_vocab_size=512, sampling=sampling, seed=1)
        dm.setup()
        x, _ = next(iter(dm.train_dataloader()))
        first_batches[sampling] = x
        tokens = torch.from_numpy(dm.train_tokens.astype(np.int64))
    assert torch.equal(first_batches["sequential"], torch.stack([tokens[s: s + BLOCK] for s in (0, 8, 16)]))
    starts = TrainWindows(dm.train_tokens, BLOCK, BATCH, 1, "random").starts(0)
    assert torch.equal(first_batches["random"], torch.stack([tokens[s: s + BLOCK] for s in starts]))
