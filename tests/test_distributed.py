"""The recipe under DDP and FSDP on two CPU processes (gloo)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY

# Each test launches `python -m lit_inheritune` with two training processes.
pytestmark = [pytest.mark.distributed, pytest.mark.subprocess]


def test_inheritune_grow_under_ddp_keeps_ranks_identical(tmp_path, fixture_data_dir):
    cmd = [sys.executable, "-m", "lit_inheritune", *TINY, "trainer=ddp_cpu", "method=inheritune",
           "model.n_layer=4", "method.n_layer=2", "method.grow_by=1", "method.max_layers=3",
           "method.tolerance=-100", "method.grow_mode=append", "train.max_steps=10", "train.val_every_n_steps=10",
           f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "name=ddp"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = tmp_path / "outputs" / "ddp" / "inheritune-n2-block-append-s1"
    for stage in ("round1-L2", "round2-L3"):
        digests = json.loads((run_dir / stage / "weights_digest.json").read_text())["ranks"]
        assert len(digests) == 2 and digests[0] == digests[1]
        assert json.loads((run_dir / stage / "result.json").read_text())["n_layer"] == int(stage[-1])
    # each round's starting model was scored (by both ranks, on their shares of the val windows) at its first step
    with open(run_dir / "csv" / "metrics.csv") as f:
        starts = {int(r["step"]): float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/stage_start")}
    assert sorted(starts) == [0, 10] and all(0 < v < 10 for v in starts.values())


def test_fsdp_trains_with_global_norm_clipping(tmp_path, fixture_data_dir):
    """trainer=fsdp (the XLarge runs) on two CPU processes: Lightning's FSDP precision plugin refuses norm
    clipping, so CausalLM clips through the root FSDP module; every step must use gradients whose norm over
    all shards is the clip value. The tiny model's gradient norms here are 0.4-0.7, so the test clips at 0.3
    to engage clipping on every step (the paper's 1.0 is the trainer config's, checked in test_configs)."""
    import os

    from lit_inheritune.models import load_checkpoint

    norms, clip = tmp_path / "grad_norms.json", 0.3
    cmd = [sys.executable, "-m", "lit_inheritune", *TINY, "trainer=fsdp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", f"trainer.gradient_clip_val={clip}",
           "trainer.strategy._target_=fsdp_cpu.CPUFSDPStrategy", "+callbacks.grad_norm._target_=fsdp_cpu.GradNormProbe",
           f"+callbacks.grad_norm.path={norms}", "method=inheritune", "model.n_layer=4", "method.n_layer=2",
           "method.max_layers=2", "train.max_steps=10", "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}",
           f"data.data_dir={fixture_data_dir}", "name=fsdp"]
    tests_dir = str(Path(__file__).parent)  # fsdp_cpu.py, imported by the launched ranks
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    record = json.loads(norms.read_text())
    assert set(record) == {"reference", "round1-L2"}
    for stage in record.values():
        assert stage["world_size"] == 2 and len(stage["steps"]) == 10
        for step in stage["steps"]:
            assert step["before_clip"] > clip
            assert step["stepped"] == pytest.approx(clip, rel=1e-4)
    run_dir = tmp_path / "outputs" / "fsdp" / "inheritune-n2-block-reinherit-s1"
    digests = json.loads((run_dir / "round1-L2" / "weights_digest.json").read_text())["built"]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks built the same target before sharding
    assert load_checkpoint(run_dir / "round1-L2" / "checkpoints" / "last.ckpt").config.n_layer == 2
