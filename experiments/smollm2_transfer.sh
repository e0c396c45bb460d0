#!/usr/bin/env bash
# Lazy-vs-potent transfer on SmolLM2-135M (issue #23, item 3; experiment=cpu_smollm2_transfer says what each run
# is). Trains the targets one after another on one thread, most telling first (a killed run resumes; finished
# ones are skipped), then scores each on the last-word passages, analyses the 4-layer targets' attention and
# Q/K gradients beside the reference's, and writes experiments/results/cpu_smollm2_transfer/.
# A 4L run takes ~13 min on one thread beside another job, a 15L run ~45 min: about 4 h in all.
#   bash experiments/smollm2_transfer.sh            # everything
#   bash experiments/smollm2_transfer.sh --report   # only the evaluations, analysis and report of what has run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${LIT_INHERITUNE_ROOT:-.}
GROUP=$ROOT/outputs/cpu_smollm2_transfer
OUT=$ROOT/experiments/results/cpu_smollm2_transfer
export WANDB_MODE=${WANDB_MODE:-offline} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
run() { echo "+ $*"; "$PY" -m lit_inheritune experiment=cpu_smollm2_transfer "$@" trainer.enable_progress_bar=false; }

if [ "${1:-}" != "--report" ]; then
    for select in potent lazy first random; do run method.select=$select seed=1; done
    # embeddings, final norm and head of the reference, fresh blocks (the 15L experiment's growth keys removed)
    run method=embedding_only '~method.max_layers' '~method.parts' seed=1
    for select in potent lazy; do run method.select=$select seed=2; done
    for select in first block_influence potent; do run method.n_layer=15 method.select=$select seed=1; done
fi

# Last-word accuracy of every trained target, and of the reference on the same passages (report.collect reads
# <run>/reference/eval as the reference row's).
for stage in "$GROUP"/*/round1-L* "$GROUP"/embedding_only-*/embedding-L*; do
    [ -f "$stage/checkpoints/last.ckpt" ] || continue
    [ -f "$stage/eval/results.json" ] ||
        "$PY" -m lit_inheritune.evaluate ckpt="$stage/checkpoints/last.ckpt" 'tasks=[lastword]'
done
REFERENCE_RUN=$GROUP/inheritune-n4-block-reinherit-sel_potent-s1
[ -f "$REFERENCE_RUN/reference/eval/results.json" ] ||
    "$PY" -m lit_inheritune.evaluate hf=smollm2 data_dir="$ROOT/data/embedded-smollm2" 'tasks=[lastword]' \
        out="$REFERENCE_RUN/reference/eval"

# Do inherited lazy blocks stay lazy? The trained 4-layer targets of seed 1 (MaxRank / AvgRank per layer and the
# Q/K gradient norms), on the same text as the reference's analysis in experiments/results/analysis/smollm2_135m.
ckpts=()
for label_run in first:inheritune-n4-block-reinherit potent:inheritune-n4-block-reinherit-sel_potent \
                 lazy:inheritune-n4-block-reinherit-sel_lazy random:inheritune-n4-block-reinherit-sel_random; do
    ckpt=$GROUP/${label_run#*:}-s1/round1-L4/checkpoints/last.ckpt
    [ -f "$ckpt" ] && ckpts+=("+ckpts.${label_run%%:*}_4L=$ckpt")
done
ckpt=$GROUP/embedding_only-L4-wpe-lnf-s1/embedding-L4/checkpoints/last.ckpt
[ -f "$ckpt" ] && ckpts+=("+ckpts.embedding_only_4L=$ckpt")
[ ${#ckpts[@]} -eq 0 ] || "$PY" -m lit_inheritune.analyze data_dir="$ROOT/data/embedded-smollm2" \
    out_dir="$OUT/analysis" "${ckpts[@]}"
"$PY" -m lit_inheritune.report "$GROUP" --out "$OUT" --suite cpu_smollm2_transfer
