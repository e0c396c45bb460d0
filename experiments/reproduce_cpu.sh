#!/usr/bin/env bash
# `make reproduce-cpu`: the whole CPU-scale suite (issue #15's regime), then the reports in experiments/results/.
# Resumable: every experiment sets resume=true, a finished run (its result.json / fit.json) is skipped, and a
# killed one continues from its last checkpoint, so rerunning this script after an interruption finishes the job.
# The 8-layer reference trains first, alone; then every other run is an independent job, two at a time with one
# thread each (1.15x one two-thread run on this 2-core machine, CPU_SCALE.md). About 9 hours (a 500-step 4L
# job takes ~11 min on one thread beside another; the 12L reference 60 min), plus about 8 h for Table 1's
# controls (scratch 4L at 2000 and ~2950 steps, 3 seeds), about 2 h for the growth twin (experiment=cpu_medium_grow,
# both modes) and about 1.5 h for a second 8L reference (seed 1) with Inheritune 4L on it; SEEDS=1 for one seed.
# The SmolLM2 studies are `make reproduce-smollm2`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
SEEDS=${SEEDS:-1 2 3}
JOBS=${JOBS:-2}
# Runs and data live below LIT_INHERITUNE_ROOT (default: the repository), as for every command.
ROOT=${LIT_INHERITUNE_ROOT:-.}
OUT=$ROOT/outputs
DATA=$ROOT/data/embedded-bpe4096
RESULTS=$ROOT/experiments/results
export WANDB_MODE=${WANDB_MODE:-offline}
run() { echo "+ $*"; "$PY" -m lit_inheritune "$@" trainer.enable_progress_bar=false; }
# 1. The 8-layer reference of Tables 1-3 and KD (3T = 1500 steps, cpu_medium_16l's header says why), alone.
REFERENCE="experiment=cpu_medium method=scratch train.max_steps=1500 seed=0"

# 2. Every other run, one job per line, $JOBS at a time on one thread each. No two jobs share a run directory
#    (Inheritune's scratch baselines are their own jobs here), and a reference is only read once trained.
#    Pool 1: the lazy-transfer twin's 12-layer reference (early, so that pool 2 can follow at once) beside the
#    runs on the 8-layer one, Table 1 first (Inheritune's rounds, then its scratch rows), seed by seed.
#    Pool 2: the runs on the 12-layer reference and Appendix B's.
pool1=()
for s in $SEEDS; do pool1+=("experiment=cpu_medium_16l seed=$s method.scratch_baselines=[]"); done  # Table 1 rounds
pool1+=("experiment=cpu_lazy method=scratch model.n_layer=12 train.max_steps=1500 seed=0")
pool1+=("experiment=cpu_medium method=scratch train.max_steps=1000 seed=0")  # the equal-steps premise row
for s in $SEEDS; do for t in 500 1000; do
    pool1+=("experiment=cpu_medium method=scratch model.n_layer=4 train.max_steps=$t seed=$s")
done; done
# Table 1's controls (issue #23): scratch 4L at 4T (the inherited blocks' 3T + T updates) and at the FLOPs of the
# reference and Inheritune together (the step count computed from the two configs by lit_inheritune/matched.py,
# the suite row that reports it), and the embedding-only 4L control (the reference's embedding, fresh blocks).
MATCHED=$("$PY" -m lit_inheritune.matched cpu_medium_16l "scratch 4L, FLOPs-equal to reference + Inheritune")
for s in $SEEDS; do
    for t in 2000 "$MATCHED"; do
        pool1+=("experiment=cpu_medium method=scratch model.n_layer=4 train.max_steps=$t seed=$s")
    done
    pool1+=("experiment=cpu_medium method=embedding_only method.n_layer=4 seed=$s")
    # Growth that runs (issue #23): Algorithm 1 from n = k/4 = 2 blocks, growing by 1 until it matches, both modes.
    pool1+=("experiment=cpu_medium_grow seed=$s")
    pool1+=("experiment=cpu_medium_grow method.grow_mode=append method.carry_optimizer=true seed=$s")
done
# The reference's own variance (issue #23): a second 8-layer reference, seed 1, in pool 1; Inheritune 4L on it in
# pool 2, in run directories of their own (run_name: the ones on reference seed 0 keep theirs).
pool1+=("experiment=cpu_medium method=scratch train.max_steps=1500 seed=1")
pool2=()
for s in $SEEDS; do
    pool2+=("experiment=cpu_medium_16l seed=$s reference.seed=1 method.scratch_baselines=[] run_name=inheritune-n4-block-reinherit-ref1-s$s")
done
for s in $SEEDS; do
    for parts in attn mlp attn_mlp; do pool1+=("experiment=cpu_medium_table3 method.parts=$parts seed=$s"); done
    for m in stacking hybrid_stacking half_width; do pool1+=("experiment=cpu_medium_table2 method=$m seed=$s"); done
    for m in kd distilbert_kd; do pool1+=("experiment=cpu_medium_kd method=$m seed=$s"); done
    # v4 Table 4's twin: targets from blocks 0-3, 4-7, 8-11 (moved blocks scaled by their new position, as the
    # official code), the moved ones again keeping their own scale, and a random 4-layer model.
    for b in 0,1,2,3 4,5,6,7 8,9,10,11; do pool2+=("experiment=cpu_lazy_transfer method.blocks=[$b] seed=$s"); done
    for b in 4,5,6,7 8,9,10,11; do
        pool2+=("experiment=cpu_lazy_transfer method.blocks=[$b] method.attn_scale=source seed=$s")
    done
    pool2+=("experiment=cpu_lazy method=scratch model.n_layer=4 seed=$s")
done
pool2+=("experiment=cpu_smollm2_15l")  # Appendix B's training run; its evaluations and table come last (6.)
# Pool 3: the Medium-like twin's scratch 5L rows, the bar for a round 2. Algorithm 1 runs round 2 only where round
# 1 fell short, so these train only when some seed's fit reached it (about 1 h 40 min); otherwise their table
# rows read "not run", with the reason, like the round itself (suites.yaml's needed_by).
pool3=()
for s in $SEEDS; do for t in 500 1000; do
    pool3+=("experiment=cpu_medium method=scratch model.n_layer=5 train.max_steps=$t seed=$s")
done; done
if [ "${1:-}" = "--list" ]; then  # every training job's overrides, one per line, "--" between the phases
    printf '%s\n' "$REFERENCE" -- "${pool1[@]}" -- "${pool2[@]}" -- "${pool3[@]}"  # (the tests compose each)
    exit 0
fi
run $REFERENCE  # alone, two threads
export PY
pool() {
    printf '%s\n' "$@" | OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 xargs -P "$JOBS" -I{} bash -c \
        'echo "+ {}"; "$PY" -m lit_inheritune {} trainer.enable_progress_bar=false || echo "error: job failed: {}"'
}
pool "${pool1[@]}"
# A failed job only prints its error so that the others go on, but pool 2 reads the 12-layer reference: without
# it every job there would train the reference itself, two of them into one directory.
for REF in "$OUT"/cpu_lazy_transfer/scratch-L12-T1500-s0/result.json "$OUT"/cpu_medium_16l/scratch-L8-T1500-s1/result.json; do
    [ -f "$REF" ] || { echo "error: $REF is missing: that reference failed; see above" >&2; exit 1; }
done
pool "${pool2[@]}"
if compgen -G "$OUT/cpu_medium_16l/inheritune-n4-block-reinherit-s[0-9]*/round2-L5" > /dev/null; then
    pool "${pool3[@]}"
else
    echo "[cpu_medium_16l] no seed needed a round 2: the scratch 5L rows (its bar) are not trained"
fi

# 3. Downstream, LAMBADA's stand-in: the embedded corpus's own last-word task for Table 1's models.
for stage in "$OUT"/cpu_medium_16l/scratch-L8-T1500-s0 "$OUT"/cpu_medium_16l/scratch-L[45]-T*-s* \
             "$OUT"/cpu_medium_16l/inheritune-n4-block-reinherit-s*/round*-L*; do
    [ -f "$stage/eval/results.json" ] || "$PY" -m lit_inheritune.evaluate ckpt="$stage/checkpoints/last.ckpt" 'tasks=[lastword]'
done
# 4. Attention analysis (every tau of conf/analyze.yaml) of both references and the round-1 targets (seed 1).
"$PY" -m lit_inheritune.analyze data_dir="$DATA" out_dir="$RESULTS/cpu_medium_16l/analysis" \
    +ckpts.reference_8L="$OUT"/cpu_medium_16l/scratch-L8-T1500-s0/checkpoints/last.ckpt \
    +ckpts.inheritune_4L="$OUT"/cpu_medium_16l/inheritune-n4-block-reinherit-s1/round1-L4/checkpoints/last.ckpt
"$PY" -m lit_inheritune.analyze data_dir="$DATA" out_dir="$RESULTS"/cpu_lazy_transfer/analysis \
    +ckpts.reference_12L="$OUT"/cpu_lazy_transfer/scratch-L12-T1500-s0/checkpoints/last.ckpt
# 5. The paper's tables, ours beside the published numbers, with the curves.
"$PY" -m lit_inheritune.report "$OUT"/cpu_medium_16l --out "$RESULTS"/cpu_medium_16l --suite cpu_medium_16l
"$PY" -m lit_inheritune.report "$OUT"/cpu_medium_16l --out "$RESULTS"/cpu_medium_16l_reference_seeds \
    --suite cpu_medium_16l_reference_seeds
"$PY" -m lit_inheritune.report "$OUT"/cpu_lazy_transfer --out "$RESULTS"/cpu_lazy_transfer --suite cpu_lazy_transfer
# 6. Appendix B's twin: a pretrained SmolLM2-135M as the reference (issue #7).
PY="$PY" bash experiments/appendix_b_cpu.sh
