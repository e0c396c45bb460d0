#!/usr/bin/env bash
# `make reproduce-cpu`: the whole CPU-scale suite, then the report that sits in experiments/results/.
# Resumable: every experiment sets resume=true, a finished stage (its result.json) is skipped, and a killed
# stage continues from its last checkpoint, so rerunning this script after an interruption finishes the job.
# Roughly 5-6 hours on 2 cores; SEEDS=1 for a single-seed pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-1,2,3}
# Runs and data live below LIT_INHERITUNE_ROOT (default: the repository), as for every command.
ROOT=${LIT_INHERITUNE_ROOT:-.}
OUT=$ROOT/outputs
DATA=$ROOT/data/embedded-bpe4096
RESULTS=$ROOT/experiments/results
export WANDB_MODE=${WANDB_MODE:-offline}
run() { echo "+ $*"; "$PY" -m lit_inheritune "$@" trainer.enable_progress_bar=false; }

# Table 1: the reference (trained once), Inheritune rounds, scratch at T and 2T.
run -m experiment=cpu_medium_16l seed="$SEEDS"
# Table 3: sub-module inheritance (the whole-block row is Table 1's round 1).
run -m experiment=cpu_medium_table3 method.parts=attn,mlp,attn_mlp seed="$SEEDS"
# Table 2: warm-start baselines.
run -m experiment=cpu_medium_table2 method=stacking,hybrid_stacking,half_width seed="$SEEDS"
# KD comparison.
run -m experiment=cpu_medium_kd method=kd,distilbert_kd seed="$SEEDS"
# Downstream, LAMBADA's stand-in: the embedded corpus's own last-word task for Table 1's models.
for stage in "$OUT"/cpu_medium_16l/scratch-L8-T1000-s0 "$OUT"/cpu_medium_16l/scratch-L4-T*-s* \
             "$OUT"/cpu_medium_16l/inheritune-n4-block-reinherit-s*/round*-L*; do
    [ -f "$stage/eval/results.json" ] || "$PY" -m lit_inheritune.evaluate ckpt="$stage/checkpoints/last.ckpt" 'tasks=[lastword]'
done
# Attention analysis of the reference and its round-1 Inheritune target (seed 1).
"$PY" -m lit_inheritune.analyze data_dir="$DATA" out_dir="$RESULTS/cpu_medium_16l/analysis" \
    +ckpts.reference_8L="$OUT"/cpu_medium_16l/scratch-L8-T1000-s0/checkpoints/last.ckpt \
    +ckpts.inheritune_4L="$OUT"/cpu_medium_16l/inheritune-n4-block-reinherit-s1/round1-L4/checkpoints/last.ckpt
# The paper's tables, ours beside the published numbers, with the curves.
"$PY" -m lit_inheritune.report "$OUT"/cpu_medium_16l --out "$RESULTS"/cpu_medium_16l --suite cpu_medium_16l
# Lazy vs potent transfer (v4 Table 4), one seed: a 12-layer reference, 4-layer targets from blocks 0-3,
# 4-7, 8-11 (moved blocks scaled by their new position, as the official code), a random 4-layer model, and the
# reference's AvgRank per block group.
run -m experiment=cpu_lazy_transfer 'method.blocks=[0,1,2,3],[4,5,6,7],[8,9,10,11]' seed=1
# The moved blocks again, each keeping the attention scale it was trained with (blocks 0-3 do not move).
run -m experiment=cpu_lazy_transfer 'method.blocks=[4,5,6,7],[8,9,10,11]' method.attn_scale=source seed=1
run experiment=cpu_lazy_transfer method=scratch model.n_layer=4 seed=1
"$PY" -m lit_inheritune.analyze data_dir="$DATA" out_dir="$RESULTS"/cpu_lazy_transfer/analysis \
    +ckpts.reference_12L="$OUT"/cpu_lazy_transfer/scratch-L12-T1000-s0/checkpoints/last.ckpt
"$PY" -m lit_inheritune.report "$OUT"/cpu_lazy_transfer --out "$RESULTS"/cpu_lazy_transfer --suite cpu_lazy_transfer
# Appendix B's twin: a pretrained SmolLM2-135M as the reference (issue #7).
PY="$PY" bash experiments/appendix_b_cpu.sh
