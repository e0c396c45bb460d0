"""train.compile (issue #22): the model is compiled in place, again after each growth, trains as eager does and
saves the same checkpoints; it changes no stage's identity."""

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.run import plan, run


def _growing(tmp_path, data_dir, compile: bool, *extra):
    """An append-growing Inheritune run (round 1 2L, round 2 3L) of 10 steps a round, logging every step."""
    return compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", "method=inheritune",
                    "model.n_layer=4", "method.n_layer=2", "method.grow_by=1", "method.max_layers=3",
                    "method.grow_mode=append", "method.tolerance=-100", "train.max_steps=10",
                    "train.val_every_n_steps=10", "train.log_every_n_steps=1", f"train.compile={str(compile).lower()}",
                    f"name={'compiled' if compile else 'eager'}", *extra])


def _losses(run_dir: Path, column: str) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return {int(r["step"]): float(r[column]) for r in csv.DictReader(f) if r.get(column)}


def _checkpoint(path: Path) -> tuple[list[str], dict]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return sorted(ckpt["state_dict"]), ckpt["hyper_parameters"]


def _spy_compile(monkeypatch, **force) -> list[int]:
    """The depths of the models compiled, in order; `force` overrides the compile's arguments."""
    compiled = []
    compile = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        compiled.append(self.config.n_layer)
        return compile(self, *args, **{**kwargs, **force})

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    return compiled


def test_compile_is_on_by_default_on_a_gpu_trainer_and_no_part_of_a_stages_identity():
    assert {t: compose([f"trainer={t}"]).train.compile for t in ("cpu", "ddp_cpu", "gpu", "ddp", "fsdp")} == {
        "cpu": False, "ddp_cpu": False, "gpu": True, "ddp": True, "fsdp": True}
    assert compose(["trainer=gpu", "train.compile=false"]).train.compile is False
    base = ["method=inheritune", "method.n_layer=2", "method.max_layers=4"]
    eager, compiled = (plan(compose([*base, f"train.compile={c}"])) for c in ("false", "true"))
    assert [(s.name, s.identity) for s in eager] == [(s.name, s.identity) for s in compiled]


def test_a_compiled_growing_run_saves_the_checkpoints_an_eager_one_does(tmp_path, fixture_data_dir, monkeypatch,
                                                                        shared_reference):
    """Each round's model is compiled (the grown one too), and every checkpoint holds the state-dict keys and
    model record of an eager run's: no `_orig_mod.`, so later rounds, evaluation and the analysis load them as
    before. The compile runs dynamo's capture without a code generator (backend "eager") to stay fast: the keys
    do not depend on the backend; test_a_compiled_growing_run_trains_as_eager_does runs inductor."""
    eager = shared_reference(_growing(tmp_path, fixture_data_dir, False))
    compiled = shared_reference(_growing(tmp_path, fixture_data_dir, True))
    run(eager)
    torch._dynamo.reset()
    depths = _spy_compile(monkeypatch, backend="eager")
    run(compiled)
    assert depths == [2, 3]  # round 1's model, then the grown one
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # and both ran through dynamo
    for stage in ("round1-L2", "round2-L3"):
        keys, hparams = _checkpoint(Path(compiled.run_dir) / stage / "checkpoints" / "last.ckpt")
        assert not any("_orig_mod" in k for k in keys)
        assert (keys, hparams["model"]) == (lambda k, h: (k, h["model"]))(
            *_checkpoint(Path(eager.run_dir) / stage / "checkpoints" / "last.ckpt"))
    keys, _ = _checkpoint(Path(compiled.run_dir) / "checkpoints" / "last.ckpt")  # the fit's own, for a resume
    assert keys == _checkpoint(Path(eager.run_dir) / "checkpoints" / "last.ckpt")[0]


@pytest.mark.slow
def test_a_compiled_growing_run_trains_as_eager_does(tmp_path, fixture_data_dir, monkeypatch, shared_reference):
    """With inductor on CPU (a C++ compiler), through a growth round: the same loss at every step and the same val
    losses within rtol 1e-5. Measured: at most 1.7e-7 relative over the 20 steps (fp32 rounding of the fused
    kernels, a few ulps), so 1e-5 holds with a 50x margin while a real difference (a missed growth, another
    model) shows at the first step. 158 s on a busy 2-core machine (load 6), most of it compiling: the two compiled
    rounds alone took 106 s with a cold inductor cache and 14 s with a warm one."""
    eager = shared_reference(_growing(tmp_path, fixture_data_dir, False))
    compiled = shared_reference(_growing(tmp_path, fixture_data_dir, True))
    run(eager)
    torch._dynamo.reset()
    depths = _spy_compile(monkeypatch)
    run(compiled)
    assert depths == [2, 3]
    for column in ("train/loss", "val/loss"):
        want, got = _losses(Path(eager.run_dir), column), _losses(Path(compiled.run_dir), column)
        # val: each round's start (the GrowCallback scores it) and its evaluation at step 10
        assert list(got) == list(want) and len(want) == (20 if column == "train/loss" else 4)
        assert list(got.values()) == pytest.approx(list(want.values()), rel=1e-5, abs=0)
    for stage in ("round1-L2", "round2-L3"):
        assert _checkpoint(Path(compiled.run_dir) / stage / "checkpoints" / "last.ckpt")[0] == \
            _checkpoint(Path(eager.run_dir) / stage / "checkpoints" / "last.ckpt")[0]
