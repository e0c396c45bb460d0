"""End-to-end training on the fixture corpus: loss falls, runs resume exactly, bad input fails early."""

import csv
import hashlib
import json
import math
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.run import run
from lit_inheritune.training import runner
from lit_inheritune.training.runner import ConfigError


def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


def _metrics(run_dir):
    with open(Path(run_dir) / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_tiny_model_loss_falls(tmp_path, fixture_data_dir):
    cfg = _cfg(tmp_path, fixture_data_dir, "train.max_steps=50", "train.val_every_n_steps=25")
    [result] = run(cfg)
    assert result["steps"] == 50
    rows = _metrics(cfg.run_dir)
    train = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val = [float(r["val/loss"]) for r in rows if r.get("val/loss")]
    assert len(val) == 2 and val[1] < val[0]
    assert train[0] == pytest.approx(torch.log(torch.tensor(512.0)).item(), abs=0.3)  # GPT-2 init: ~uniform
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3 - 0.5
    assert result["val_loss"] == pytest.approx(val[-1])
    ppl = [float(r["val/ppl"]) for r in rows if r.get("val/ppl")]
    assert ppl == pytest.approx([math.exp(v) for v in val], rel=1e-5)  # the same evaluation, not the previous one
    assert result["val_loss"] < torch.log(torch.tensor(512.0)).item() - 0.7
    assert any(r.get("train/tokens_per_sec") for r in rows)
    assert any(r.get("lr-AdamW/decay") for r in rows)
    saved = json.loads((Path(cfg.run_dir) / "result.json").read_text())
    assert saved["val_loss"] == result["val_loss"]
    config = (Path(cfg.run_dir) / "config.yaml").read_bytes()
    assert saved["provenance"]["config_sha256"] == hashlib.sha256(config).hexdigest()[:16]
    assert saved["provenance"]["seed"] == cfg.seed and saved["provenance"]["commit"]


class _CrashAt(runner.L.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("simulated kill")


class _SlowUntil(runner.L.Callback):
    """Sleeps 0.2 s inside each training batch before optimizer step `step` (the SpeedMonitor's clock runs)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step < self.step:
            time.sleep(0.2)


def test_killed_run_resumes_from_saved_step_with_same_data_order(tmp_path, fixture_data_dir, monkeypatch):
    straight = _cfg(tmp_path / "a", fixture_data_dir)
    [expected] = run(straight)
    weights_expected = torch.load(expected["last_checkpoint"], weights_only=True)["state_dict"]

    killed = _cfg(tmp_path / "b", fixture_data_dir)
    original = runner._callbacks
    # the 20 steps before the kill's last checkpoint take 4 s, more than the 20 after the resume
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), _SlowUntil(20), _CrashAt(30)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(killed)
    last = Path(killed.run_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 20
    clock = torch.load(last, weights_only=True)["callbacks"]["SpeedMonitor"]
    assert clock["train_seconds"] >= 4.0
    assert not (Path(killed.run_dir) / "result.json").exists()
    monkeypatch.setattr(runner, "_callbacks", original)

    with pytest.raises(ConfigError, match="resume=true"):
        run(killed)  # an interrupted run is never overwritten silently

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [resumed] = run(_cfg(tmp_path / "b", fixture_data_dir, "resume=true"))
    assert not [w for w in caught if "Checkpoint directory" in str(w.message)]  # resuming there is the point
    assert resumed["steps"] == 40
    weights = torch.load(resumed["last_checkpoint"], weights_only=True)["state_dict"]
    for name, tensor in weights_expected.items():
        torch.testing.assert_close(weights[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
    assert resumed["val_loss"] == pytest.approx(expected["val_loss"], abs=1e-4)
    # the clock counts the whole run: every step's tokens, and at least the time the checkpoint had recorded
    assert resumed["tokens_per_sec"] * resumed["train_seconds"] == pytest.approx(resumed["tokens"])
    assert resumed["train_seconds"] > clock["train_seconds"] and resumed["wall_seconds"] > clock["wall_seconds"]

    # A finished run is not trained again.
    [again] = run(_cfg(tmp_path / "b", fixture_data_dir, "resume=true"))
    assert again == resumed

    # The CSV log holds what the uninterrupted run's does: every logged step once, the steps from before the kill
    # kept (Lightning's CSVLogger deletes them), the steps after the checkpoint not doubled.
    def logged(run_dir):
        return sorted((int(r["step"]), tuple(sorted(k for k, v in r.items() if v and k != "step")))
                      for r in _metrics(run_dir))

    assert logged(killed.run_dir) == logged(straight.run_dir)
    assert any(step < 20 for step, _ in logged(killed.run_dir))


def test_non_finite_loss_stops_with_the_step_named(tmp_path, fixture_data_dir, monkeypatch):
    from lit_inheritune.models.gpt import GPT

    forward = GPT.forward

    def poisoned(self, idx, targets=None, return_attn=False):
        out = forward(self, idx, targets, return_attn)
        if self.training and poisoned.calls == 3:
            out["loss"] = out["loss"] * float("nan")
        poisoned.calls += self.training
        return out

    poisoned.calls = 0
    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(FloatingPointError, match="at step 3"):
        run(_cfg(tmp_path, fixture_data_dir))


def test_schedule_must_end_on_a_validation_step(tmp_path, fixture_data_dir):
    from lit_inheritune import errors  # raised by the checks before any compute (lit_inheritune/checks.py)

    with pytest.raises(errors.ConfigError, match="multiple of train.val_every_n_steps"):
        run(_cfg(tmp_path, fixture_data_dir, "train.max_steps=45"))


def test_model_vocab_smaller_than_data_vocab_is_a_clear_error(tmp_path, fixture_data_dir):
    from lit_inheritune.data.prepare import DataError

    with pytest.raises(DataError, match="vocab_size=256"):
        run(_cfg(tmp_path, fixture_data_dir, "model.vocab_size=256"))


def test_cli_multirun_over_seeds(tmp_path, fixture_data_dir, run_in_process):
    """The thin __main__ (run in this process, as `python -m lit_inheritune` runs it): a Hydra multirun of two
    seeds, each ending in its summary line."""
    argv = ["lit_inheritune", "-m", *TINY, "train.max_steps=10", "train.val_every_n_steps=10",
            f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "name=cli", "seed=1,2"]
    out = run_in_process(argv, tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("[cli] scratch")]
    assert len(lines) == 2, out.stdout
    for seed in (1, 2):
        assert (tmp_path / "outputs" / "cli" / f"scratch-L2-T10-s{seed}" / "result.json").exists()


def test_wandb_offline_run_is_grouped_by_experiment(tmp_path, fixture_data_dir):
    pytest.importorskip("wandb")
    cfg = _cfg(tmp_path, fixture_data_dir, "logger=default", "train.max_steps=10", "train.val_every_n_steps=10",
               "name=wb")
    loggers = runner._loggers(cfg, Path(cfg.run_dir), "scratch", n_layer=3)
    [wandb_logger] = [lg for lg in loggers if hasattr(lg, "_wandb_init")]
    init = wandb_logger._wandb_init
    assert (init["group"], init["job_type"], init["name"]) == ("wb", "scratch", f"{cfg.run_name}/scratch")
    assert init["tags"] == [f"d{cfg.model.n_embd}", "seed1", "scratch", "3L", "scratch"]
    assert wandb_logger._offline  # no WANDB_API_KEY in tests
    run(cfg)
    assert len(list((Path(cfg.run_dir) / "wandb").glob("offline-run-*"))) == 1
