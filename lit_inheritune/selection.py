"""Which reference blocks an Inheritune target inherits (`method.select`, issue #23 item 1).

- `first`: blocks 0..n-1 (the paper, the default);
- `potent` / `lazy`: the n blocks with the highest / lowest AvgRank of the reference's attention (analysis.py's
  measure at the analysis config's defaults: 100 val windows of 100 tokens, seed 0, tau 0.9; windows shortened to
  the model's context when it is shorter);
- `block_influence`: the n blocks with the highest Block Influence (ShortGPT: 1 - mean cos(h_in, h_out)) on the
  run's val windows (layer_study.block_influence);
- `random`: drawn by numpy's Generator seeded with the run's seed (layer_study.select_blocks).

The chosen blocks keep their reference order. A growing run adds the next blocks by the same measure: round r
inherits the n + (r-1)g best blocks, the blocks of round r-1 plus the g best of the rest (`chosen_blocks`); for
`random`, the g drawn from the rest with seed + r-1.

A measure is computed once per reference and cached as JSON (written atomically) beside it (`cache_dir`): with
what determined it (the measure, the reference identity's fingerprint, its settings and a hash of the tokens it
read). A cached file that does not record exactly the determinants now asked for is computed again and replaced.

Torch-free at import (method validation imports SELECTIONS); the measures import torch when they run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

SELECTIONS = ("first", "potent", "lazy", "block_influence", "random")  # = layer_study.STRATEGIES (a test checks)
MEASURE_OF = {"potent": "avg_rank", "lazy": "avg_rank", "block_influence": "block_influence"}
TITLES = {"first": "first", "potent": "highest-AvgRank", "lazy": "lowest-AvgRank", "block_influence": "highest-BI",
          "random": "randomly drawn"}
# AvgRank as `python -m lit_inheritune.analyze` measures it by default (conf/analyze.yaml's n_seq, seq_len and seed;
# analysis.PRIMARY_TAU; a test checks both).
ATTENTION = {"n_seq": 100, "seq_len": 100, "seed": 0, "tau": 0.9}
# Block Influence: every val window of the run's datamodule, this many per forward.
BI_BATCH_SIZE = 8
CACHE_VERSION = 1


def measure_settings(select: str) -> dict | None:
    """What, besides the reference and the data, determines the measure a selection ranks blocks by (recorded in
    the rounds' identities); None for `first` and `random`, which use none."""
    measure = MEASURE_OF.get(select)
    if measure == "avg_rank":
        return {"measure": measure, **ATTENTION}
    if measure == "block_influence":
        return {"measure": measure, "windows": "val"}
    return None


def reference_cache_dir(log_dir: Path, name: str, reference_stage_dir: Path | None, reference_fingerprint: str) -> Path:
    """Where a reference's measures are cached: inside its training stage's directory when it is trained here,
    else (a checkpoint, a pretrained model) under the experiment's directory, keyed by the reference identity's
    fingerprint (shared by the experiment's seeds)."""
    if reference_stage_dir is not None:
        return Path(reference_stage_dir) / "measures"
    return Path(log_dir) / name / f"reference-measures-{reference_fingerprint}"


def chosen_blocks(select: str, depths: Sequence[int], n_layer: int, values: Sequence[float] | None = None,
                  seed: int = 0) -> list[list[int]]:
    """The reference blocks of each round (depths n, n + g, ...), each list in reference order and each round's
    a superset of the round before: round r keeps round r-1's blocks and adds the best of the rest by the measure
    `values` (one per reference block), so round r holds the n + (r-1)g best blocks overall (ties: the earlier
    block). `random` draws round r's new blocks from the rest with seed + r (round 0: layer_study's draw with
    `seed`)."""
    from lit_inheritune.layer_study import select_blocks

    rounds, chosen = [], []
    for rnd, depth in enumerate(depths):
        rest = [b for b in range(n_layer) if b not in chosen]
        sub = None if values is None else [float(values[b]) for b in rest]
        picked = select_blocks(select, int(depth) - len(chosen), len(rest), sub, sub, seed=int(seed) + rnd)
        chosen = sorted(chosen + [rest[i] for i in picked])
        rounds.append(chosen)
    return rounds


def _sha256(tensor) -> str:
    return hashlib.sha256(tensor.contiguous().cpu().numpy().tobytes()).hexdigest()


def reference_measure(measure: str, reference, datamodule, cache_dir: Path, reference_fingerprint: str,
                      log: Callable[[str], None] = print) -> list[float]:
    """The measure (`avg_rank` or `block_influence`) of every reference block, read from `cache_dir` when a file
    there records the same determinants, else computed on the datamodule's val split and written there."""
    from lit_inheritune.analysis import measure_attention, sample_windows
    from lit_inheritune.io import write_json_atomic
    from lit_inheritune.layer_study import block_influence
    from lit_inheritune.models import family_of

    if getattr(datamodule, "manifest", None) is None:
        datamodule.setup("validate")
    if measure == "avg_rank":
        seq_len = min(ATTENTION["seq_len"], int(reference.config.block_size))
        _, windows = sample_windows(datamodule.val_tokens, ATTENTION["n_seq"], seq_len, ATTENTION["seed"])
        settings = {**ATTENTION, "seq_len": seq_len}
        what = f"AvgRank (tau {ATTENTION['tau']}, {ATTENTION['n_seq']} val windows of {seq_len} tokens)"

        def compute():
            return measure_attention(reference, datamodule.val_tokens, n_seq=ATTENTION["n_seq"],
                                     seq_len=seq_len, taus=[ATTENTION["tau"]], seed=ATTENTION["seed"],
                                     primary_tau=ATTENTION["tau"])["avg_rank"]
    elif measure == "block_influence":
        windows = datamodule.val_set.tensors[0]
        settings = {"batch_size": BI_BATCH_SIZE}
        what = f"Block Influence ({len(windows)} val windows of {windows.shape[1]} tokens)"

        def compute():
            return block_influence(reference, windows, batch_size=BI_BATCH_SIZE)
    else:
        raise ValueError(f"unknown block measure {measure!r}; one of {sorted(set(MEASURE_OF.values()))}")
    determined_by = {"version": CACHE_VERSION, "measure": measure, "reference": reference_fingerprint,
                     "settings": settings, "windows": {"shape": list(windows.shape), "sha256": _sha256(windows)}}
    n_layer = family_of(reference).n_layer(reference)
    path = Path(cache_dir) / f"{measure}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
        values = cached.get("values")
        if cached.get("determined_by") == determined_by and isinstance(values, list) and len(values) == n_layer:
            log(f"reference {what}: read from {path}")
            return [float(v) for v in values]
        log(f"reference {what}: {path} was made from another reference or with other settings; measuring again")
    values = [float(v) for v in compute()]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"determined_by": determined_by, "values": values})
    log(f"reference {what}: measured, cached in {path}")
    return values


def blocks_text(blocks: Sequence[int]) -> str:
    """A list of blocks for the stage table: 0-3 when contiguous, else 0,2,5."""
    blocks = [int(b) for b in blocks]
    if blocks and blocks == list(range(blocks[0], blocks[-1] + 1)) and len(blocks) > 1:
        return f"{blocks[0]}-{blocks[-1]}"
    return ",".join(map(str, blocks))
