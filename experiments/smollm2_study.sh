#!/usr/bin/env bash
# The step-0 layer study of SmolLM2-135M (issue #23, item 2): for each of its 30 blocks, the val loss with the
# block removed, Block Influence, AvgRank / MaxRank and first-column mass, their correlations, and the step-0 val
# loss of the 15- and 4-block models each selection strategy builds (first, potent, lazy, block_influence, random).
# Writes table.md, study.json and layers.png to experiments/results/smollm2_layer_study/. No training: ~15 min on
# one free core (one thread); the committed run took 29 min beside other jobs. The first run prepares data/embedded-smollm2 (the embedded
# corpus in SmolLM2's tokenization, the one experiment=cpu_smollm2_15l trains on) and converts the GGUF once.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${LIT_INHERITUNE_ROOT:-.}
OUT=$ROOT/experiments/results/smollm2_layer_study
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT"

"$PY" -m lit_inheritune.layer_study hf=smollm2 data_dir="$ROOT/data/embedded-smollm2" out="$OUT" \
    num_val_windows=32 'sizes=[15,4]' seed=0 2>&1 | grep --line-buffered -v 'Loading weights' | tee "$OUT/layer_study.log"
