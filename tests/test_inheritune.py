"""Algorithm 1 end to end on the fixture corpus: reference, inherit, grow, resume between stages."""

import csv
import hashlib
import json
import re
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.methods import make_run, reference_dir, scratch_dir
from lit_inheritune.models import load_checkpoint
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.run import run
from lit_inheritune.training import runner


def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, "method=inheritune", "model.n_layer=4", "method.n_layer=2", "method.grow_by=1",
                    "method.max_layers=3", "method.tolerance=-100", "train.max_steps=20",
                    "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}",
                    *extra])


class _KillAtStep(runner.L.Callback):
    """Raises after optimizer step `step`: the run's last checkpoint is its last validation before it."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


class _SlowFrom(L.Callback):
    """Sleeps 0.3 s inside each training batch from optimizer step `step` to `until` (the SpeedMonitor's clock runs)."""

    def __init__(self, step, until):
        self.step, self.until = step, until

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.step <= trainer.global_step < self.until:
            time.sleep(0.3)


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.parametrize("grow_mode", ["reinherit", "append"])
def test_a_run_killed_mid_round_two_resumes_at_its_depth_to_the_uninterrupted_weights(tmp_path, fixture_data_dir,
                                                                                      monkeypatch, grow_mode, capsys,
                                                                                      shared_reference):
    """Rounds 1 and 2 are one fit. Killed at step 35 (round 2, 3 layers; its last checkpoint at step 30), the
    resumed fit rebuilds the 3-layer model before loading its weights and optimizer, and ends with the weights,
    val losses and log rows of a run that was never killed. Round 1 is not trained again."""
    whole = run(shared_reference(_cfg(tmp_path / "whole", fixture_data_dir, f"method.grow_mode={grow_mode}")))
    cfg = shared_reference(_cfg(tmp_path / "killed", fixture_data_dir, f"method.grow_mode={grow_mode}"))
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), *(
        [_SlowFrom(20, until=30), _KillAtStep(35)] if k.get("growing") else [])])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    monkeypatch.setattr(runner, "_callbacks", original)
    run_dir = Path(cfg.run_dir)
    round1 = run_dir / "round1-L2" / "result.json"
    assert round1.exists() and not (run_dir / "round2-L3" / "result.json").exists()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    stamp = round1.stat().st_mtime_ns

    with pytest.raises(ConfigError, match="resume=true"):
        run(cfg)
    capsys.readouterr()
    results = run(_cfg(tmp_path / "killed", fixture_data_dir, f"method.grow_mode={grow_mode}", "resume=true"))
    said = [line for line in re.split(r"[\r\n]", capsys.readouterr().out) if "round" in line and "resum" in line]
    assert len(said) == 1 and "round2" in said[0] and said[0].endswith("resumed at its step 10 of 20"), said
    assert [r["stage"] for r in results] == ["round1-L2", "round2-L3"] == [r["stage"] for r in whole]
    assert [r["n_layer"] for r in results] == [2, 3]
    assert all(r["steps"] == 20 and not r["matched"] for r in results)
    # round 2's clock counts from its start: all 20 steps' tokens, and its 3 s before the kill
    assert results[1]["tokens_per_sec"] * results[1]["train_seconds"] == pytest.approx(results[1]["tokens"])
    assert results[1]["train_seconds"] >= 3.0 and results[1]["wall_seconds"] >= 3.0
    assert [r["val_loss"] for r in results] == [r["val_loss"] for r in whole]
    assert round1.stat().st_mtime_ns == stamp  # round 1 was not trained again
    mine, theirs = _state(results[1]["last_checkpoint"]), _state(whole[1]["last_checkpoint"])
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert load_checkpoint(results[1]["last_checkpoint"]).config.n_layer == 3
    # the run's log has every step once (each round's start scored at its first step: 0 and 20), the same rows as the
    # uninterrupted run's; the stage's slice counts from the stage's start
    assert [step for step, _ in _val_rows(run_dir)] == [0, 9, 19, 20, 29, 39]
    assert _val_rows(run_dir) == _val_rows(Path(whole[1]["last_checkpoint"]).parents[2])
    assert [step for step, _ in _val_rows(run_dir / "round2-L3")] == [0, 9, 19]
    table = (run_dir / "stages.md").read_text()
    assert "| reference | 4 |" in table and "| round2-L3 | 3 |" in table

    again = run(_cfg(tmp_path / "killed", fixture_data_dir, f"method.grow_mode={grow_mode}", "resume=true"))
    assert [r["val_loss"] for r in again] == [r["val_loss"] for r in results]  # done: read, not trained


def _val_rows(stage_dir):
    with open(Path(stage_dir) / "csv" / "metrics.csv") as f:
        return [(int(r["step"]), r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")]


def test_the_checkpoint_at_a_round_boundary_is_round_two_at_its_start_and_resumes_from_there(
        tmp_path, fixture_data_dir, monkeypatch, initial_models, shared_reference):
    """The run's checkpoint written when round 1 ends (step 10, T = 10) is round 2 before its first step: the grown 3-layer
    model, an optimizer built around it with no state, the schedule at its step 0, the GrowCallback in round 2. A fit
    killed before its next checkpoint resumes from it to the uninterrupted run's weights, val losses and log rows
    (round 2's start scored once)."""
    short = ["train.max_steps=10", "train.val_every_n_steps=5"]
    whole = run(shared_reference(_cfg(tmp_path / "whole", fixture_data_dir, *short)))
    cfg = shared_reference(_cfg(tmp_path / "killed", fixture_data_dir, *short))
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), *(
        [_KillAtStep(12)] if k.get("growing") else [])])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    monkeypatch.setattr(runner, "_callbacks", original)
    run_dir = Path(cfg.run_dir)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10 and ckpt["callbacks"]["GrowCallback"]["index"] == 1
    assert ckpt["hyper_parameters"]["model"]["n_layer"] == 3
    grown = initial_models["round2-L3"].state_dict()  # what the growth built, before any step
    assert ckpt["state_dict"].keys() == {f"model.{k}" for k in grown}
    assert all(torch.equal(ckpt["state_dict"][f"model.{k}"], v) for k, v in grown.items())
    [optimizer] = ckpt["optimizer_states"]
    assert optimizer["state"] == {}  # fresh: no moments, no step counts (the paper's new optimizer per round)
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(list(initial_models["round2-L3"].parameters()))
    [schedule] = ckpt["lr_schedulers"]
    assert schedule["last_epoch"] == 0
    lr, warmup = float(cfg.optim.lr), int(cfg.optim.warmup_steps)
    assert all(g["lr"] == pytest.approx(lr / (warmup + 1)) for g in optimizer["param_groups"])  # warmup's first step

    results = run(_cfg(tmp_path / "killed", fixture_data_dir, *short, "resume=true"))
    assert [r["val_loss"] for r in results] == [r["val_loss"] for r in whole]
    mine, theirs = _state(results[1]["last_checkpoint"]), _state(whole[1]["last_checkpoint"])
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert _val_rows(run_dir) == _val_rows(tmp_path / "whole" / run_dir.relative_to(tmp_path / "killed"))
    assert [step for step, _ in _val_rows(run_dir)] == [0, 4, 9, 10, 14, 19]


class _Trace(L.Callback):
    """Per micro-batch: its optimizer step, the stage being trained and its depth, the scheduler's step, the lr it
    is trained at and a digest of the batch's tokens."""

    def __init__(self, into: list):
        self.into = into

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        from lit_inheritune.training.grow import GrowCallback

        [grow] = [c for c in trainer.callbacks if isinstance(c, GrowCallback)]
        self.into.append((trainer.global_step, grow.index, pl_module.model.config.n_layer,
                          trainer.lr_scheduler_configs[0].scheduler.last_epoch,
                          trainer.optimizers[0].param_groups[0]["lr"], _digest(batch[0])))


def _digest(tokens: torch.Tensor) -> str:
    return hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16]


def test_growth_and_resume_with_gradient_accumulation_keep_the_stream_schedule_and_boundary(
        tmp_path, fixture_data_dir, monkeypatch, shared_reference):
    """train.accumulate_grad_batches=2 (every paper config accumulates), T = 10: each optimizer step takes the next
    two micro-batches of the seed's stream (round 2 continuing at micro-batch 20), the schedule restarts at the
    boundary (step 10, not micro-batch 10) and counts optimizer steps; killed mid-round-2 (step 17, checkpoint at 15)
    and resumed, the fit sees the same micro-batches, schedule and stages as the uninterrupted one, and ends with its
    weights to the bit."""
    from hydra.utils import instantiate

    from lit_inheritune.data.datamodule import TrainWindows
    from lit_inheritune.training.optim import OptimConfig, WarmupCosine

    accumulate = ["train.accumulate_grad_batches=2", "train.max_steps=10", "train.val_every_n_steps=5"]
    original = runner._callbacks

    def traced(into, *extra):
        monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), *(
            [_Trace(into), *extra] if k.get("growing") else [])])

    whole_trace, killed_trace, resumed_trace = [], [], []
    cfg = shared_reference(_cfg(tmp_path / "whole", fixture_data_dir, *accumulate))
    traced(whole_trace)
    whole = run(cfg)
    killed = shared_reference(_cfg(tmp_path / "killed", fixture_data_dir, *accumulate))
    traced(killed_trace, _KillAtStep(17))
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(killed)
    assert torch.load(Path(killed.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 15
    traced(resumed_trace)
    results = run(_cfg(tmp_path / "killed", fixture_data_dir, *accumulate, "resume=true"))

    # the uninterrupted fit: 20 steps of 2 micro-batches, micro-batches 0..39 of the seed's stream in order
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    windows = iter(TrainWindows(datamodule.train_tokens, datamodule.block_size, datamodule.batch_size, cfg.seed,
                                datamodule.sampling))
    assert [x for *_, x in whole_trace] == [_digest(next(windows)[0]) for _ in range(40)]
    schedule = WarmupCosine(OptimConfig(**{**{k: v for k, v in cfg.optim.items() if k != "_target_"},
                                           "decay_steps": 10}))
    for i, (step, index, n_layer, scheduler_step, lr, _) in enumerate(whole_trace):
        assert step == i // 2 and index == step // 10 and n_layer == [2, 3][index], i
        assert scheduler_step == step - 10 * index and lr == pytest.approx(cfg.optim.lr * schedule(scheduler_step)), i
    # killed and resumed: the same micro-batches, stages and schedule, the steps after the checkpoint trained again
    assert [t for t in killed_trace if t[0] < 15] + resumed_trace == whole_trace
    assert [r["val_loss"] for r in results] == [r["val_loss"] for r in whole]
    assert all(r["tokens"] == 10 * 2 * datamodule.tokens_per_step for r in results)
    mine, theirs = _state(results[1]["last_checkpoint"]), _state(whole[1]["last_checkpoint"])
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_inheritune_stops_when_matched_then_trains_scratch_baselines(tmp_path, fixture_data_dir, shared_reference):
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "method.tolerance=100", "method.scratch_baselines=[20,40]"))
    results = run(cfg)
    assert [r["stage"] for r in results] == ["round1-L2", "scratch-L2-T20", "scratch-L2-T40"]
    assert results[0]["matched"]
    assert [r["steps"] for r in results[1:]] == [20, 40]
    assert all(r["n_layer"] == 2 for r in results)
    assert (scratch_dir(make_run(cfg), 2, 40) / "result.json").exists()
    stages_md = (Path(cfg.run_dir) / "stages.md").read_text()
    assert "| scratch-L2-T40 | 2 |" in stages_md and "- commit: `" in stages_md and "- seed: `1`" in stages_md


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.n_layer=5", "cannot inherit 5 layers from a 4-layer reference"),
        ("method.blocks=[1,4]", "outside the 4-layer reference"),
        ("method.max_layers=6", "exceeds the reference's 4 layers"),
        ("method.scratch_baselines=[15]", "15 steps"),
        ("method.attn_scale=layer", r"method.attn_scale='layer' is not one of position, source"),
        ("model=hf model.scale_attn_by_inverse_layer_idx=true method.copy_wpe=true method.copy_ln_f=true "
         "method.attn_scale=source", "attn_scale=source cannot be expressed"),
    ],
)
def test_bad_inheritune_requests_fail_before_training(tmp_path, fixture_data_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        run(_cfg(tmp_path, fixture_data_dir, *override.split()))
    assert not (tmp_path / "outputs").exists()


def test_reference_is_the_scratch_run_of_reference_depth(tmp_path, fixture_data_dir):
    """Table 1's full-model scratch row and Inheritune's reference are one run, trained once."""
    scratch = compose([*TINY, "model.n_layer=4", "train.max_steps=20", "train.val_every_n_steps=10",
                       f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"])
    [ref] = run(scratch)
    stamp = (Path(scratch.run_dir) / "result.json").stat().st_mtime_ns
    cfg = _cfg(tmp_path, fixture_data_dir, "method.tolerance=100")
    assert reference_dir(cfg) == Path(scratch.run_dir)
    run(cfg)
    assert (Path(scratch.run_dir) / "result.json").stat().st_mtime_ns == stamp
    stages = json.loads((Path(cfg.run_dir) / "stages.json").read_text())
    assert stages["reference"]["val_loss"] == ref["val_loss"]


def test_pinned_reference_seed_is_the_same_run_whichever_seed_trains_it(tmp_path, fixture_data_dir):
    """reference.seed shares one reference across a seed sweep: the Inheritune job of seed 2 trains
    exactly the scratch run of seed 7 (same directory, same batches, same weights)."""
    cfg = _cfg(tmp_path / "a", fixture_data_dir, "seed=2", "reference.seed=7", "method.tolerance=100")
    assert reference_dir(cfg).name.endswith("-s7")
    run(cfg)
    scratch = compose([*TINY, "model.n_layer=4", "train.max_steps=20", "train.val_every_n_steps=10", "seed=7",
                       f"paths.root_dir={tmp_path / 'b'}", f"data.data_dir={fixture_data_dir}"])
    run(scratch)
    shared = torch.load(reference_dir(cfg) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    alone = torch.load(Path(scratch.run_dir) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert shared.keys() == alone.keys()
    assert all(torch.equal(shared[k], alone[k]) for k in shared)


def test_finished_reference_is_found_from_another_working_directory(tmp_path, fixture_data_dir, monkeypatch):
    """Runs record paths relative to where they were launched (root_dir defaults to '.'); a sweep launched
    elsewhere with LIT_INHERITUNE_ROOT pointing at the same outputs still finds the reference's checkpoint."""
    (tmp_path / "repo").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "repo")
    scratch = compose([*TINY, "model.n_layer=4", "train.max_steps=20", "train.val_every_n_steps=10",
                       "paths.root_dir=.", f"data.data_dir={fixture_data_dir}"])
    run(scratch)
    assert not Path(json.loads((Path(scratch.run_dir) / "result.json").read_text())["last_checkpoint"]).is_absolute()
    monkeypatch.chdir(tmp_path / "elsewhere")
    results = run(_cfg(tmp_path / "repo", fixture_data_dir, "method.tolerance=100"))
    assert [r["stage"] for r in results] == ["round1-L2"]


def test_a_given_reference_is_scored_under_the_trainers_precision(tmp_path, fixture_data_dir, initial_models):
    """reference=ckpt: the reference's val loss, which the stop rule compares with each round's at tolerance 0, is
    measured as the rounds are validated, under trainer.precision: a checkpoint trained under bf16-mixed scores what
    its own run's last validation scored, to the last bit, not its fp32 loss. Round 1's start (validated before its
    first step) is scored the same way."""
    from hydra.utils import instantiate

    from lit_inheritune.methods.base import measure

    bf16 = "trainer.precision=bf16-mixed"
    [ref] = run(compose([*TINY, "model.n_layer=4", "train.max_steps=10", "train.val_every_n_steps=10", bf16,
                         f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "name=ref"]))
    given = ["reference=ckpt", f"reference.ckpt={ref['last_checkpoint']}", "method.tolerance=100",
             "train.max_steps=10"]
    cfg = _cfg(tmp_path, fixture_data_dir, bf16, *given)
    run(cfg)
    stages = json.loads((Path(cfg.run_dir) / "stages.json").read_text())
    assert stages["reference"]["val_loss"] == ref["val_loss"]
    # the premise: in fp32 the same weights score another number
    fp32 = _cfg(tmp_path, fixture_data_dir, *given)
    datamodule = instantiate(fp32.data)
    datamodule.setup()
    assert measure(make_run(fp32), load_checkpoint(ref["last_checkpoint"]), datamodule)["val_loss"] != ref["val_loss"]
    from lit_inheritune.report import val_curve

    start = val_curve(Path(cfg.run_dir) / "round1-L2")[0]
    assert start == measure(make_run(cfg), initial_models["round1-L2"], datamodule)["val_loss"]
    assert start != measure(make_run(fp32), initial_models["round1-L2"], datamodule)["val_loss"]


def test_given_reference_checkpoint_of_another_width_is_refused(tmp_path, fixture_data_dir):
    wide = compose([*TINY, "model.n_layer=4", "model.n_embd=64", "train.max_steps=10", "train.val_every_n_steps=10",
                    f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "name=wide"])
    [ref] = run(wide)
    with pytest.raises(ConfigError, match="has n_embd=64 but the config describes a reference with model.n_embd=32"):
        run(_cfg(tmp_path, fixture_data_dir, "reference=ckpt", f"reference.ckpt={ref['last_checkpoint']}"))


def test_analyze_true_analyses_reference_and_stages(tmp_path, fixture_data_dir, shared_reference):
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "method.tolerance=100", "analyze=true", "analysis.n_seq=4"))
    run(cfg)
    out = Path(cfg.run_dir) / "analysis"
    report = json.loads((out / "analysis.json").read_text())
    assert set(report["reports"]) == {"reference-L4", "round1-L2"}
    assert (out / "max_rank.png").stat().st_size > 1000


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _fresh(reference, n_layer, seed):
    """The random init a round's surgery draws everything it does not copy from: run_inheritune seeds
    seed + round - 1, and the new model's init is the first draw after."""
    L.seed_everything(seed, verbose=False)
    return GPT(GPTConfig(**{**reference.config.to_dict(), "n_layer": n_layer}))


# Which sub-modules each Table 3 variant copies (PAPER.md section 4), written out independently of surgery.py.
PARTS = {"block": ("ln_1", "attn", "ln_2", "mlp"), "attn": ("ln_1", "attn"), "mlp": ("ln_2", "mlp")}


@pytest.mark.parametrize("overrides, sources, parts, copy_wpe, copy_ln_f, scales", [
    ([], [0, 1], "block", False, False, [0, 1]),  # the paper: the first n blocks and the token embedding
    (["method.parts=attn", "method.copy_wpe=true", "method.copy_ln_f=true"], [0, 1], "attn", True, True, [0, 1]),
    (["method.parts=mlp"], [0, 1], "mlp", False, False, [0, 1]),
    (["method.blocks=[2,3]", "method.attn_scale=source"], [2, 3], "block", False, False, [2, 3]),
    (["method.blocks=[3,1]"], [3, 1], "block", False, False, [0, 1]),
], ids=["first-n", "attn+wpe+ln_f", "mlp", "blocks-2-3-source-scale", "blocks-3-1"])
def test_round_one_starts_from_the_reference_as_configured(tmp_path, fixture_data_dir, initial_models, overrides,
                                                           sources, parts, copy_wpe, copy_ln_f, scales,
                                                           shared_reference):
    """The model round 1 trains from is the trained reference's chosen parts of the chosen blocks, the token
    embedding, wpe / ln_f only when asked, and a fresh init everywhere else; method.* reaches the surgery."""
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "method.tolerance=100", "train.max_steps=10", *overrides))
    run(cfg)
    reference = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    start, fresh = initial_models["round1-L2"], _fresh(reference, 2, cfg.seed)
    assert torch.equal(start.transformer.wte.weight, reference.transformer.wte.weight)
    for name, copied in (("wpe", copy_wpe), ("ln_f", copy_ln_f)):
        want, other = (reference, fresh) if copied else (fresh, reference)
        assert _same(getattr(start.transformer, name), getattr(want.transformer, name)), name
        assert not _same(getattr(start.transformer, name), getattr(other.transformer, name)), name  # they differ
    for i, src in enumerate(sources):
        for name in ("ln_1", "attn", "ln_2", "mlp"):
            want, other = (reference.transformer.h[src], fresh.transformer.h[i])
            if name not in PARTS[parts]:
                want, other = other, want
            assert _same(getattr(start.transformer.h[i], name), getattr(want, name)), (i, name)
            assert not _same(getattr(start.transformer.h[i], name), getattr(other, name)), (i, name)
    assert [b.layer_idx for b in start.transformer.h] == scales
    assert Path(cfg.run_dir).name.endswith("-scale_source-s1") == ("method.attn_scale=source" in overrides)


@pytest.mark.parametrize("grow_mode", ["reinherit", "append"])
def test_growth_round_starts_from_the_reference_or_the_trained_target(tmp_path, fixture_data_dir, initial_models,
                                                                      grow_mode, shared_reference):
    """reinherit: round 2 is a fresh inheritance of reference blocks 0..2 (the paper); append: round 1's trained
    model (blocks, embeddings, final norm) with reference block 2 appended."""
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, f"method.grow_mode={grow_mode}", "train.max_steps=10"))
    first, _ = run(cfg)
    reference = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    trained = load_checkpoint(first["last_checkpoint"])
    start = initial_models["round2-L3"]
    assert not _same(trained.transformer.h[0], reference.transformer.h[0])  # round 1 moved away from its source
    if grow_mode == "reinherit":
        fresh = _fresh(reference, 3, cfg.seed + 1)
        blocks, rest = [reference.transformer.h[i] for i in range(3)], fresh
        assert torch.equal(start.transformer.wte.weight, reference.transformer.wte.weight)
        names = ("wpe", "ln_f")
    else:
        blocks, rest = [trained.transformer.h[0], trained.transformer.h[1], reference.transformer.h[2]], trained
        names = ("wte", "wpe", "ln_f")
    for i, block in enumerate(blocks):
        assert _same(start.transformer.h[i], block), i
    for name in names:
        assert _same(getattr(start.transformer, name), getattr(rest.transformer, name)), name


def test_a_round_is_judged_against_the_bar_the_tolerance_sets_and_says_so():
    """With method.tolerance the bar is the reference's val loss plus the tolerance: a round below the reference
    but above a negative tolerance's bar is not matched, and its progress line names the bar, not the reference."""
    from hydra.utils import instantiate

    strict = instantiate(compose([*TINY, "method=inheritune", "method.tolerance=-0.02"]).method)
    ref = {"val_loss": 5.385}
    assert not strict.judge({"val_loss": 5.3686}, ref)["matched"] and strict.judge({"val_loss": 5.36}, ref)["matched"]
    assert strict.bar_text(5.385) == "the bar 5.3650 (reference 5.3850 - tolerance 0.02)"
    paper = instantiate(compose([*TINY, "method=inheritune"]).method)
    assert paper.judge({"val_loss": 5.3686}, ref)["matched"] and paper.bar_text(5.385) == "reference 5.3850"
