"""`python -m lit_inheritune.plan`: the stages a run may take and what they cost, before any training."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lit_inheritune.compute import flops_per_token, stage_flops
from lit_inheritune.config import compose
from lit_inheritune.plan import GPUS, memory, param_count, plan_stages, strategy_of
from lit_inheritune.run import plan

REPO = Path(__file__).parents[1]


def tables(out: str) -> list[dict[str, dict[str, str]]]:
    """The Markdown tables of the plan's output: each {stage: {column: cell}}."""
    found, header = [], None
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("|")[1:-1]]
        if not line.startswith("|"):
            header = None
        elif header is None:
            header = cells
            found.append({})
        elif not line.startswith("|-"):
            found[-1][cells[0]] = dict(zip(header, cells))
    return found


# Shapes whose peak is set by the forward (activations) and by the optimizer step (parameters), both small enough
# for a few CPU steps in seconds.
@pytest.mark.subprocess
@pytest.mark.parametrize("shape, batch", [
    (dict(n_layer=4, n_embd=256, n_head=4, block_size=512, vocab_size=8192), 4),
    (dict(n_layer=8, n_embd=768, n_head=12, block_size=128, vocab_size=4096), 2),
], ids=["activations", "optimizer-step"])
def test_memory_model_is_within_25_percent_of_a_measured_cpu_peak(shape, batch):
    """The peak resident memory of 2 real optimizer steps (the runner's CausalLM and AdamW under a Lightning
    Trainer, fp32) in a fresh interpreter, with glibc returning every freed tensor to the OS, so the
    resident peak is the live-tensor peak (tests/peak_memory.py)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, str(REPO / "tests" / "peak_memory.py"), json.dumps(shape), str(batch), "1", "2"],
                         env=env, capture_output=True, text=True, check=True).stdout
    measured = json.loads(out.strip().splitlines()[-1])
    model = {**shape}
    assert measured["params"] == param_count(model)[0]
    predicted = memory(model, micro_batch=batch, precision="32-true", strategy="single", world=1)
    assert predicted.peak == pytest.approx(measured["peak_bytes"], rel=0.25), (predicted, measured)


def test_parameter_counts_are_the_papers():
    """PAPER.md section 2: reference / variant parameters (vocabulary 50304, context 1024, tied head)."""
    shape = lambda L, d: dict(n_layer=L, n_embd=d, block_size=1024, vocab_size=50304)
    for (L, d, variant), (ref, var) in {(24, 1024, 16): (354.6, 253.9), (36, 1280, 18): (773.6, 419.6),
                                        (32, 1280, 16): (694.9, 380.3), (48, 1600, 24): (1556.8, 819.5)}.items():
        assert round(param_count(shape(L, d))[0] / 1e6, 1) == ref
        assert round(param_count(shape(variant, d))[0] / 1e6, 1) == var


def test_each_stages_flops_and_tokens_are_compute_pys():
    """compute.py's formula, by hand: 100K steps x 49,152 tokens of the 16L model (3 devices), twice the tokens on
    two nodes, as the runner counts a step's tokens over every process."""
    model = dict(n_layer=16, n_embd=1024, block_size=1024, vocab_size=50304)
    for nodes in (1, 2):
        cfg = compose(["experiment=gpt2_medium_16l", f"trainer.num_nodes={nodes}"])
        stages = {s.name: s for s in plan_stages(cfg)}
        assert stages["round3-L16"].tokens == 100_000 * 49_152 * nodes
        assert stages["round3-L16"].flops == flops_per_token(model) * 100_000 * 49_152 * nodes


def test_memory_follows_precision_and_strategy():
    model = dict(n_layer=24, n_embd=1024, block_size=1024, vocab_size=50304)
    p = param_count(model)[0]
    single = memory(model, 2, "bf16-mixed", "single", 1)
    assert (single.weights, single.grads, single.adam) == (4 * p, 4 * p, 8 * p)  # fp32 master weights
    true = memory(model, 2, "bf16-true", "single", 1)
    assert (true.weights, true.adam) == (2 * p, 4 * p) and true.activations < single.activations
    ddp = memory(model, 2, "bf16-mixed", "ddp", 3)
    assert ddp.weights == single.weights and ddp.extra == 4 * p  # replicated, plus DDP's gradient buckets
    fsdp = memory(model, 2, "bf16-mixed", "fsdp", 8)
    assert (fsdp.weights, fsdp.grads, fsdp.adam) == (4 * p / 8, 4 * p / 8, 8 * p / 8)
    assert fsdp.peak < ddp.peak and memory(model, 4, "bf16-mixed", "single", 1).peak > single.peak


def test_fsdp_shards_over_devices_times_nodes():
    cfg = compose(["experiment=gpt2_xlarge_24l", "trainer=fsdp", "trainer.devices=4", "trainer.num_nodes=2"])
    assert strategy_of(cfg) == ("fsdp", 8)
    assert strategy_of(compose(["experiment=gpt2_medium_16l"])) == ("ddp", 3)
    assert strategy_of(compose(["experiment=demo"])) == ("single", 1)


@pytest.mark.subprocess
def test_the_command_plans_a_paper_experiment_without_torch(tmp_path):
    """gpt2_medium_16l: the reference and Algorithm 1's three rounds (12 -> 14 -> 16), with the paper's parameter
    counts, the stated GPU and MFU, and a memory breakdown; the command imports no torch."""
    code = ("import runpy, sys; sys.argv = ['plan', 'experiment=gpt2_medium_16l', '--gpu', 'h100', 'plan.mfu=0.5']; "
            "runpy.run_module('lit_inheritune.plan', run_name='__main__'); assert 'torch' not in sys.modules, 'torch'")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LIT_INHERITUNE_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    stages, mem = tables(out)
    assert list(stages) == list(mem) == ["reference", "round1-L12", "round2-L14", "round3-L16"]
    assert [stages[s]["params"] for s in ("reference", "round3-L16")] == ["354.6M", "253.9M"]
    assert set(mem["reference"]) == {"stage", "weights", "gradients", "AdamW moments", "activations", "DDP buckets",
                                     "peak"}
    assert "H100 bf16 peak 989 TFLOP/s x MFU 0.50" in out and "H100-hours" in out
    assert "ddp over 3 devices" in out and "49,152 tokens per step" in out
    hours = float(stages["reference"]["H100-hours"])
    assert hours == pytest.approx(stage_flops(plan(compose(["experiment=gpt2_medium_16l"]))[0].identity)
                                  / (GPUS["H100"] * 0.5) / 3600, abs=0.5)


def test_a_stage_on_disk_shows_done_started_or_made_otherwise(tmp_path, run_in_process):
    overrides = ["experiment=cpu_medium_16l", f"paths.root_dir={tmp_path}"]
    stages = plan(compose(overrides))
    ref, round1, round2 = stages[0], stages[1], stages[2]
    for stage in (ref, round1):
        stage.dir.mkdir(parents=True)
        (stage.dir / "identity.json").write_text(json.dumps(stage.identity))
    (ref.dir / "result.json").write_text("{}")
    (round1.dir / "checkpoints").mkdir()
    (round1.dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    round2.dir.mkdir(parents=True)
    (round2.dir / "identity.json").write_text(json.dumps({**round2.identity, "seed": 99}))
    result = run_in_process(["lit_inheritune.plan", *overrides], tmp_path)
    assert result.returncode == 0, result.stderr
    status = {name: row["on disk"] for name, row in tables(result.stdout)[0].items()}
    assert status["reference"] == "done"
    assert status["round1-L4"] == "started (resume=true)"
    assert status["round2-L5"] == "other settings!"
    assert status["scratch-L4-T500"] == "-"


@pytest.mark.parametrize("args, message", [
    (["--gpu", "b999"], "error: plan.gpu='b999' is not one of A100, H100"),
    (["plan.mfu=1.5"], "error: plan.mfu='1.5' must be a fraction in (0, 1]"),
    (["--mfu"], "error: --mfu needs a value"),
    (["experiment=nope"], "error: no config 'experiment/nope'"),
    (["method.n_layer=40"], "error: method.n_layer=40: cannot inherit 40 layers"),
    (["trainer.precision=bf16_mixed"], "error: trainer.precision='bf16_mixed' is not a precision Lightning knows"),
])
def test_a_bad_request_is_one_error_line(args, message, tmp_path, run_in_process):
    result = run_in_process(["lit_inheritune.plan", "experiment=gpt2_medium_16l", *args], tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr
