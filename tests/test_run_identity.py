"""Run identity: a stage directory is reused only under the settings that made it; resume keeps every log."""

import json
import os
import re
from pathlib import Path

import pytest
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.methods import reference_dir
from lit_inheritune.run import plan, run
from lit_inheritune.training import runner
from lit_inheritune.training.identity import IDENTITY_FILE, differences
from lit_inheritune.training.runner import ConfigError


def _cfg(root, data_dir, *extra):
    return compose([*TINY, f"paths.root_dir={root}", f"data.data_dir={data_dir}", "train.max_steps=20",
                    "train.val_every_n_steps=10", *extra])


def _tree(root: Path) -> dict[str, float]:
    """Every file below root with its modification time: what a refused run must leave untouched."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_finished_stage_rerun_with_another_lr_is_refused_before_compute(tmp_path, fixture_data_dir):
    [done] = run(_cfg(tmp_path, fixture_data_dir, "resume=true"))
    before = _tree(tmp_path / "outputs")
    with pytest.raises(ConfigError) as err:
        run(_cfg(tmp_path, fixture_data_dir, "resume=true", "optim.lr=5e-2"))
    message = str(err.value)
    assert "optim.lr: 0.003 (there) vs 0.05 (now)" in message
    assert "name=" in message and "remove" in message  # the two ways out
    assert _tree(tmp_path / "outputs") == before  # nothing trained, nothing rewritten
    # the same settings are reused as before
    [again] = run(_cfg(tmp_path, fixture_data_dir, "resume=true"))
    assert again["val_loss"] == done["val_loss"]


def test_stage_made_from_other_data_is_refused(tmp_path, fixture_data_dir):
    run(_cfg(tmp_path, fixture_data_dir))
    cfg = _cfg(tmp_path, fixture_data_dir, "resume=true", "data.batch_size=4")
    with pytest.raises(ConfigError, match=r"data.batch_size: 8 \(there\) vs 4 \(now\)"):
        run(cfg)
    # the prepare config and the shards are part of the identity: another tokenization is another dataset
    other = tmp_path / "other-data"
    other.mkdir()
    for f in fixture_data_dir.iterdir():
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["config"]["tokenizer"]["vocab_size"] = 256
    (other / "manifest.json").write_text(json.dumps(manifest))
    # (asked for as such: data prepared otherwise than data.prepare asks is refused earlier, by checks.py)
    with pytest.raises(ConfigError, match=r"data.prepared.config.tokenizer.vocab_size: 512 \(there\) vs 256 \(now\)"):
        run(_cfg(tmp_path, other, "resume=true", "data.prepare.tokenizer.vocab_size=256"))


def test_reference_trained_under_another_optim_is_not_picked_up(tmp_path, fixture_data_dir):
    """An Inheritune run whose optim differs from the one its shared reference was trained with stops before
    training anything, naming the reference's directory and the key."""
    args = ["method=inheritune", "method.n_layer=1", "method.max_layers=1", "reference.max_steps=20",
            "reference.seed=0",
            "name=ref", "resume=true"]
    run(_cfg(tmp_path, fixture_data_dir, *args))
    before = _tree(tmp_path / "outputs")
    cfg = _cfg(tmp_path, fixture_data_dir, *args, "optim.min_lr=1e-5", "seed=2")
    with pytest.raises(ConfigError) as err:
        run(cfg)
    assert str(reference_dir(cfg)) in str(err.value) and "optim.min_lr" in str(err.value)
    assert _tree(tmp_path / "outputs") == before
    assert not Path(cfg.run_dir).exists()  # the seed-2 run never started


def test_every_planned_stage_is_checked_before_the_first_trains(tmp_path, fixture_data_dir):
    """A later round made under other settings stops the run before the reference or round 1 train."""
    args = ["method=inheritune", "method.n_layer=1", "method.grow_by=1", "method.max_layers=2",
            "reference.max_steps=20", "name=plan", "resume=true"]
    cfg = _cfg(tmp_path, fixture_data_dir, *args)
    stages = plan(cfg)
    assert [s.name for s in stages] == ["reference", "round1-L1", "round2-L2"]
    later = stages[-1]
    later.dir.mkdir(parents=True)
    (later.dir / IDENTITY_FILE).write_text(json.dumps({**later.identity, "seed": 99}))
    with pytest.raises(ConfigError, match=r"round2-L2 was made under other settings: seed: 99"):
        run(cfg)
    assert not (stages[0].dir / "checkpoints").exists()


def test_append_round_identity_nests_the_round_before():
    cfg = compose([*TINY, "method=inheritune", "method.n_layer=1", "method.grow_by=1", "method.max_layers=2",
                   "method.grow_mode=append"])
    ref, round1, round2 = plan(cfg)
    assert round2.identity["init"]["previous"] == round1.identity
    assert round1.identity["init"]["reference"] == ref.identity
    assert differences(round1.identity, round1.identity) == []


def test_resume_keeps_one_wandb_run(tmp_path, fixture_data_dir, monkeypatch, capsys):
    pytest.importorskip("wandb")

    class CrashAt(runner.L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 15:
                raise RuntimeError("simulated kill")

    cfg = _cfg(tmp_path, fixture_data_dir, "logger=default", "name=wb", "resume=true")
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), CrashAt()])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    import wandb

    wandb.finish()  # the killed process would have taken its run with it
    monkeypatch.setattr(runner, "_callbacks", original)
    run(cfg)
    assert "W&B offline run: " in capsys.readouterr().out
    runs = list((Path(cfg.run_dir) / "wandb").glob("offline-run-*"))
    ids = {re.match(r"offline-run-\d+_\d+-([0-9a-z]+)", p.name).group(1) for p in runs}  # a same-second rerun adds -1
    assert len(ids) == 1 and len(runs) >= 1, [p.name for p in runs]
    assert ids == {(Path(cfg.run_dir) / runner.WANDB_ID_FILE).read_text().strip()}


@pytest.mark.subprocess
def test_a_four_stage_run_prints_a_header_per_stage_and_little_else(tmp_path, fixture_data_dir):
    """Algorithm 1 through the CLI with W&B on (offline): reference, two rounds, a scratch baseline."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "lit_inheritune", *TINY, f"paths.root_dir={tmp_path}",
           f"data.data_dir={fixture_data_dir}", "logger=default", "trainer.enable_progress_bar=true",
           "method=inheritune", "method.n_layer=1", "method.grow_by=1", "method.max_layers=2",
           "method.tolerance=-1", "reference.max_steps=10", "train.max_steps=10", "train.val_every_n_steps=10",
           "method.scratch_baselines=[20]", "name=quiet"]
    # bytes, not text=True, whose universal newlines would turn a progress bar's \r redraws into lines
    out = subprocess.run(cmd, capture_output=True, timeout=600)
    assert out.returncode == 0, out.stderr.decode()[-3000:]
    lines = (out.stdout + out.stderr).decode().rstrip("\n").split("\n")
    # what a terminal draws in turn: bar redraws, and our lines written above the bar after the \r that clears it
    drawn = [part for line in lines for part in line.split("\r")]
    headers = [line for line in drawn if line.startswith("[quiet] stage ")]
    # up to: the reference, 2 rounds and the one scratch baseline of the depth it stops at (it ran all 4)
    assert [h.split(":")[0] for h in headers] == [f"[quiet] stage {i} of up to 4" for i in (1, 2, 3, 4)], headers
    assert "round1-L1 (inherits block 0 of the reference (block)), 10 steps" in headers[1]
    assert "round2-L2 (inherits blocks 0-1 of the reference afresh (block)), 10 steps" in headers[2]
    assert len(lines) <= 40, "\n".join(lines)
    assert not [line for line in lines if line.startswith("wandb:") or "Tip:" in line or "available:" in line]
    assert sum("W&B offline run: " in line for line in lines) == 3  # reference, the growing fit, scratch
    bars = [line for line in drawn if line.startswith("round1-L1: ")]  # not a terminal: the bar is plain lines
    assert bars and "10/10 steps" in bars[-1] and "Epoch" not in bars[-1]
    table = [line for line in lines if line.startswith("| reference ")]
    assert len(table) == 1


def test_progress_bar_counts_a_resumed_stage_to_its_real_total():
    """A fit resumed mid-epoch never calls on_train_epoch_start: the bar still counts to the stage's steps."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm

    from lit_inheritune.training.callbacks import StageProgressBar

    bar = StageProgressBar("round2-L5")
    bar.train_progress_bar = Tqdm(disable=False, file=open(os.devnull, "w"))
    trainer = SimpleNamespace(global_step=120, max_steps=200, progress_bar_metrics={}, loggers=[])
    bar.get_metrics = lambda *args: {}
    bar.on_train_batch_end(trainer, None, None, None, 59)
    assert (bar.train_progress_bar.n, bar.train_progress_bar.total) == (120, 200)


def test_a_stage_keeps_its_number_when_its_header_is_asked_for_again():
    """A fit resumed in round 1 names its stage twice (the lock it takes over, then where it resumes): both lines
    say "stage 1", and the next stage is still stage 2."""
    from types import SimpleNamespace

    from lit_inheritune.methods.base import Headers, Stage

    run_ = SimpleNamespace(name="r")
    first, second = (Stage(f"round{i}-L{i}", Path(f"/runs/round{i}"), {}, "inherits") for i in (1, 2))
    headers = Headers(run_, [first, second], may_stop_early=True)
    said = [headers(first), headers(first), headers(second), headers(first), headers(None)]
    assert said == ["[r] stage 1 of up to 2: round1-L1 (inherits)", "[r] stage 1 of up to 2: round1-L1 (inherits)",
                    "[r] stage 2 of up to 2: round2-L2 (inherits)", "[r] stage 1 of up to 2: round1-L1 (inherits)", ""]
