"""What a run prints: a log (stdout not a terminal, e.g. a SLURM job's file) gets a few lines per stage, not a
progress bar's redraws; a terminal keeps its live bar."""

import io
import os
import re
import subprocess
import sys

import pytest
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.run import run
from lit_inheritune.training.callbacks import PROGRESS_EVERY_ENV, StageProgressBar

STAGES = ["reference", "round1-L1", "round2-L2", "round3-L3", "round4-L4", "round5-L5"]


def _lines(text: str) -> list[str]:
    """The lines a reader of the log sees: a carriage return (a bar's redraw) starts a line too."""
    return [line for line in re.split(r"[\r\n]", text) if line.strip()]


def test_a_six_stage_growing_run_logged_to_a_file_prints_at_most_40_lines(tmp_path, fixture_data_dir):
    """The reference and five Inheritune rounds (1 to 5 layers), with the progress bar and W&B (offline) on, and
    stdout and stderr going to a pipe, as in a batch job: every stage's header and result still show, W&B says
    where each of its runs is in one line, Lightning says nothing, and the bar does not redraw per step."""
    cmd = [sys.executable, "-m", "lit_inheritune", *TINY, "logger=default", "trainer.enable_progress_bar=true",
           "method=inheritune", "model.n_layer=6", "method.n_layer=1", "method.grow_by=1", "method.max_layers=5",
           "method.tolerance=-100", "train.max_steps=10", "train.val_every_n_steps=10", "name=quiet",
           f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"]
    env = {k: v for k, v in os.environ.items() if k != PROGRESS_EVERY_ENV}  # the default throttle
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, env=env)
    out = done.stdout
    assert done.returncode == 0, out[-3000:]
    lines = _lines(out)
    assert len(lines) <= 40, f"{len(lines)} lines:\n" + "\n".join(lines)
    for i, stage in enumerate(STAGES, start=1):
        assert any(line.startswith(f"[quiet] stage {i} of up to 6: {stage} (") for line in lines), stage
        # the bar's last line: the stage's step count and final losses
        assert any(re.match(rf"{stage}: 10/10 steps \[.*val/loss=", line) for line in lines), stage
        if stage != "reference":
            assert any(line.startswith(f"[quiet] {stage}: val loss ") for line in lines), stage  # the round's verdict
            assert any(line.startswith(f"[quiet] {stage} {i - 1}L (") for line in lines), stage  # run.py's summary
        assert any(line.startswith(f"| {stage} | ") for line in lines), stage  # the stages table
    assert any(line.startswith("[quiet] Inheritune 5L did not match the reference") for line in lines)
    # W&B: one line per W&B run (the reference's and the growing fit's), saying where it is
    wandb_lines = [line for line in lines if re.search(r"wandb|W&B", line, re.IGNORECASE)]
    assert len(wandb_lines) == 2 and all(line.startswith("W&B offline run: ") for line in wandb_lines), wandb_lines
    chatter = r"GPU available|TPU available|HPU available|LOCAL_RANK|Trainable params|`Trainer.fit` stopped|Warning"
    assert not [line for line in lines if re.search(chatter, line)]


def _scratch(tmp_path, data_dir, steps: int, *extra):
    return compose([*TINY, "trainer.enable_progress_bar=true", f"train.max_steps={steps}",
                    "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


def test_a_log_gets_a_progress_line_every_n_steps_and_one_at_the_stage_end(tmp_path, fixture_data_dir, monkeypatch,
                                                                         capsys):
    """Captured stdout is not a terminal: no redraws, one line per `every` steps plus the stage's last one."""
    monkeypatch.setenv(PROGRESS_EVERY_ENV, "7")
    steps, every = 30, 7
    run(_scratch(tmp_path, fixture_data_dir, steps))
    out = capsys.readouterr().out
    assert "\r" not in out
    progress = [line for line in _lines(out) if re.match(r"\S+: \d+/30 steps \[", line)]
    assert len(progress) <= steps // every + 1
    assert [int(re.match(r"\S+: (\d+)/", line).group(1)) for line in progress] == [7, 14, 21, 28, 30]
    assert "val/loss=" in progress[-1]  # printed after the stage's last validation


def test_a_terminal_keeps_a_live_bar(tmp_path, fixture_data_dir, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv(PROGRESS_EVERY_ENV, "7")  # a log's throttle: not the terminal's
    run(_scratch(tmp_path, fixture_data_dir, 20))
    redraws = [line for line in terminal.getvalue().split("\r") if re.search(r"\d+/20 \[", line)]
    assert len(redraws) >= 20  # redrawn every step
    assert not re.search(r"\d+/20 steps \[", terminal.getvalue())  # and no log lines


@pytest.mark.parametrize("value", ["0", "-5", "often"])
def test_a_bad_progress_interval_is_a_config_error(monkeypatch, value):
    monkeypatch.setenv(PROGRESS_EVERY_ENV, value)
    with pytest.raises(ConfigError, match=PROGRESS_EVERY_ENV):
        StageProgressBar("stage")


def test_the_progress_interval_defaults_to_50_steps(monkeypatch):
    monkeypatch.delenv(PROGRESS_EVERY_ENV, raising=False)
    assert StageProgressBar("stage").every == 50
    assert StageProgressBar("stage", every=3).every == 3
