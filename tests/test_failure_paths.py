"""Failure paths that must still be one `error:` line with exit code 2 before any compute (issue #25): trainer
values, a diverging loss, system failures on files, Ctrl-C, corrupt checkpoints by where they are, run names,
repeated blocks, an empty report, rank-0 output, carry_optimizer under FSDP. And what a failed stage leaves never
refuses the corrected command. In-process: `errors.run_cli` around `run` is what the command line does after
Hydra composed the config (tests/test_cli_errors.py runs real subprocesses)."""

import errno
import json
import shutil
import signal

import pytest
from conftest import TINY

from lit_inheritune import checks, errors
from lit_inheritune.config import compose
from lit_inheritune.data.prepare import DataError
from lit_inheritune.errors import CheckpointError, ConfigError
from lit_inheritune.run import run
from lit_inheritune.training.identity import IDENTITY_FILE

SHORT = ["train.max_steps=20", "train.val_every_n_steps=10"]


def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, *SHORT, f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


def _cli(entry, capsys) -> tuple[int, list[str]]:
    """What the command line would do with `entry`: (exit code, stderr lines)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        errors.run_cli(entry)
    return exit_.value.code, capsys.readouterr().err.splitlines()


def _poison_step(monkeypatch, at: int, make):
    """The model's training forward at optimizer step `at` (counting from 0) returns a loss `make(loss)`."""
    from lit_inheritune.models.gpt import GPT

    forward = GPT.forward

    def poisoned(self, idx, targets=None, return_attn=False):
        out = forward(self, idx, targets, return_attn)
        if self.training:
            if poisoned.calls == at:
                out["loss"] = make(out["loss"])
            poisoned.calls += 1
        return out

    poisoned.calls = 0
    monkeypatch.setattr(GPT, "forward", poisoned)


# ---------------------------------------------------------------------------------------------------------------
# 1. Trainer values


@pytest.mark.parametrize("override, fragments", [
    ("trainer.precision=bogus", ["trainer.precision='bogus'", "32-true"]),
    ("trainer.accelerator=quantum", ["trainer.accelerator='quantum'", "trainer=cpu"]),
    ("trainer=gpu", ["trainer.accelerator=gpu", "no GPU", "trainer=cpu"]),
])
def test_trainer_values_are_checked_before_any_directory(override, fragments, tmp_path, fixture_data_dir):
    import torch

    if override == "trainer=gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError) as error:
        run(_cfg(tmp_path, fixture_data_dir, override))
    for fragment in fragments:
        assert fragment in str(error.value)
    assert not (tmp_path / "outputs").exists()


def test_compile_without_a_c_compiler_is_one_line_before_any_directory(tmp_path, fixture_data_dir, monkeypatch):
    """torch.compile's inductor builds kernels with a C/C++ compiler: without one on PATH the run stops at once,
    not with a traceback at its first step."""
    assert checks.c_compiler()  # this machine has one: the check passes where compiling works
    empty = tmp_path / "bin"
    empty.mkdir()
    for key in ("CXX", "CC"):
        monkeypatch.delenv(key, raising=False)
    cfg = _cfg(tmp_path, fixture_data_dir, "train.compile=true")
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ConfigError, match=r"train\.compile=true: torch\.compile builds its kernels with a C/C\+\+ "
                                          r"compiler and none was found .* or set train\.compile=false"):
        run(cfg)
    assert not (tmp_path / "outputs").exists()


def test_the_trainer_values_known_are_lightnings():
    import typing

    from lightning.fabric.plugins.precision import precision
    from lightning.pytorch.accelerators import AcceleratorRegistry

    lightning_precisions = {str(p) for alias in ("_PRECISION_INPUT_STR", "_PRECISION_INPUT_INT",
                                                 "_PRECISION_INPUT_STR_ALIAS")
                            for p in typing.get_args(getattr(precision, alias))}
    assert set(checks.PRECISIONS) == lightning_precisions
    assert set(checks.ACCELERATORS) == {"auto", "gpu", *AcceleratorRegistry.available_accelerators()}


def test_a_trainer_that_cannot_be_built_leaves_no_stage_behind(tmp_path, fixture_data_dir, monkeypatch):
    """Whatever the checks miss: the stage directory is claimed (identity.json) only once the Trainer is built."""
    monkeypatch.setattr(checks, "check_trainer", lambda cfg: None)
    cfg = _cfg(tmp_path, fixture_data_dir, "trainer.precision=bogus")
    with pytest.raises(Exception, match="bogus"):
        run(cfg)
    assert not (tmp_path / "outputs" / "default" / cfg.run_name / IDENTITY_FILE).exists()


# ---------------------------------------------------------------------------------------------------------------
# 2. A diverging loss


def test_a_diverging_run_is_one_line_and_the_corrected_command_runs(tmp_path, fixture_data_dir, capsys):
    bad = _cfg(tmp_path, fixture_data_dir, "optim.lr=1e3", "optim.min_lr=0", "optim.warmup_steps=1")
    code, lines = _cli(lambda: run(bad), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: stage scratch (") and "diverged: training loss is nan at step" in lines[0]
    assert "lower optim.lr (now 1000.0)" in lines[0] and "files were removed" in lines[0]
    assert not (tmp_path / "outputs" / "default" / bad.run_name / IDENTITY_FILE).exists()
    [result] = run(_cfg(tmp_path, fixture_data_dir))  # another lr, the same name: not "made under other settings"
    assert result["steps"] == 20


def test_a_run_diverging_after_a_checkpoint_keeps_it_and_names_what_to_remove(tmp_path, fixture_data_dir, capsys,
                                                                              monkeypatch):
    _poison_step(monkeypatch, 14, lambda loss: loss * float("nan"))
    cfg = _cfg(tmp_path, fixture_data_dir)
    code, lines = _cli(lambda: run(cfg), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "at step 14" in lines[0]
    assert f"{cfg.run_dir} keeps its last checkpoint (step 10)" in lines[0] and f"remove {cfg.run_dir}" in lines[0]
    assert (tmp_path / "outputs" / "default" / cfg.run_name / "checkpoints" / "last.ckpt").is_file()


# ---------------------------------------------------------------------------------------------------------------
# 3. System failures on files


def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(tmp_path, fixture_data_dir,
                                                                                 capsys, monkeypatch):
    from lit_inheritune import io
    from lit_inheritune.training import callbacks

    def disk_full(path, data):
        with io.atomic_open(path, "wb") as f:
            f.write(b"the first bytes")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks, "write_bytes_atomic", disk_full)
    cfg = _cfg(tmp_path, fixture_data_dir)
    code, lines = _cli(lambda: run(cfg), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {cfg.run_dir}/checkpoints/") and ".ckpt: No space left on device" in lines[0]
    assert "the disk is full" in lines[0]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
    assert not (tmp_path / "outputs" / "default" / cfg.run_name / IDENTITY_FILE).exists()  # nothing was trained


def test_an_output_path_below_a_file_is_one_line_saying_what_to_do(tmp_path, fixture_data_dir, capsys):
    (tmp_path / "a-file").write_text("not a directory")
    cfg = compose([*TINY, *SHORT, f"paths.root_dir={tmp_path}/a-file/below", f"data.data_dir={fixture_data_dir}"])
    code, lines = _cli(lambda: run(cfg), capsys)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"error: {tmp_path}/a-file/below/") and "a part of the path is a file" in lines[0]


def test_a_read_only_filesystem_is_one_line_naming_the_path(capsys):
    def write():
        raise OSError(errno.EROFS, "Read-only file system", "/mnt/ro/outputs/x")

    code, lines = _cli(write, capsys)
    assert code == 2
    assert lines == ["error: /mnt/ro/outputs/x: Read-only file system; the filesystem is read-only, so the path "
                     "cannot be written: point paths.root_dir (or the command's out=) at a directory you can write"]


@pytest.mark.parametrize("damage", ["truncated", "a list", "no splits", "a split without its checksum"])
def test_a_broken_manifest_is_one_line_saying_to_prepare_again(damage, tmp_path, fixture_data_dir):
    data = tmp_path / "data"
    shutil.copytree(fixture_data_dir, data)
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    if damage == "truncated":
        path.write_text(path.read_text()[:100])
    elif damage == "a list":
        path.write_text("[]")
    elif damage == "no splits":
        path.write_text(json.dumps({k: v for k, v in manifest.items() if k != "splits"}))
    else:
        del manifest["splits"]["val"]["sha256"]
        path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as error:
        checks.preflight(_cfg(tmp_path, data))
    message = str(error.value)
    assert message.startswith(f"{path} is not a valid manifest") and f"delete {data} and prepare it again" in message


# ---------------------------------------------------------------------------------------------------------------
# 4. Ctrl-C


@pytest.fixture
def sigint_restored():
    """Lightning ignores SIGINT once it has handled a KeyboardInterrupt; the test process must not."""
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def test_ctrl_c_says_what_the_run_keeps_and_exits_130(tmp_path, fixture_data_dir, capsys, monkeypatch,
                                                      sigint_restored):
    def interrupt(loss):
        raise KeyboardInterrupt

    _poison_step(monkeypatch, 14, interrupt)
    cfg = _cfg(tmp_path, fixture_data_dir)
    code, lines = _cli(lambda: run(cfg), capsys)
    assert code == 130
    assert lines == [f"interrupted: {cfg.run_dir} keeps its last checkpoint (step 10); rerun the same command with "
                     "resume=true to continue"]
    monkeypatch.undo()
    [result] = run(_cfg(tmp_path, fixture_data_dir, "resume=true"))
    assert result["steps"] == 20


# ---------------------------------------------------------------------------------------------------------------
# 5. A corrupt checkpoint: the advice depends on where it is


def test_a_corrupt_checkpoint_in_the_users_own_folder_is_just_not_usable(tmp_path):
    folder = tmp_path / "my-models"
    folder.mkdir()
    (folder / "notes.txt").write_text("everything I have")
    path = folder / "model.ckpt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as error:
        checks.checkpoint_config(path, key="reference.ckpt")
    message = str(error.value)
    assert "it is not a usable checkpoint: give another reference.ckpt=" in message
    assert "remove" not in message and str(folder) + " " not in message


def test_a_corrupt_checkpoint_of_a_stage_says_how_to_use_its_best_one(tmp_path):
    stage = tmp_path / "outputs" / "x" / "round1-L4"
    (stage / "checkpoints").mkdir(parents=True)
    (stage / IDENTITY_FILE).write_text("{}")
    path, best = stage / "checkpoints" / "last.ckpt", stage / "checkpoints" / "best.ckpt"
    path.write_bytes(b"PK\x03\x04 truncated")
    best.write_bytes(b"a good one")
    with pytest.raises(CheckpointError) as error:
        checks.checkpoint_config(path, key="ckpt")
    message = str(error.value)
    assert f"`cp {best} {path}` and rerun with resume=true" in message
    assert f"or pass ckpt={best}" in message and f"or remove {stage} to train that stage again" in message


# ---------------------------------------------------------------------------------------------------------------
# 6. Run names, repeated blocks, an empty report


@pytest.mark.parametrize("override, key", [("name=../x", "name='../x'"), ("name=a/b", "name='a/b'"),
                                           ("name=..", "name='..'"), ("method.tag=a/b", "run_name='a/b-s1'")])
def test_a_run_name_that_leaves_its_folder_is_refused(override, key, tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match="must be one folder name") as error:
        checks.preflight(_cfg(tmp_path, fixture_data_dir, override))
    assert str(error.value).startswith(key)


def test_inheriting_a_block_twice_is_refused(tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match=r"method.blocks=\[1, 1\] names block\(s\) \[1\] more than once"):
        checks.preflight(_cfg(tmp_path, fixture_data_dir, "method=inheritune", "method.blocks=[1,1]"))


def test_a_report_of_a_folder_without_runs_is_an_error(tmp_path, capsys):
    from lit_inheritune.report.__main__ import main

    (tmp_path / "empty").mkdir()
    code, lines = _cli(lambda: main([str(tmp_path / "empty"), "--out", str(tmp_path / "report")]), capsys)
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'empty'} holds no finished run")
    assert not (tmp_path / "report").exists()


# ---------------------------------------------------------------------------------------------------------------
# 7. One process prints


@pytest.mark.parametrize("variable", ["RANK", "LOCAL_RANK", "SLURM_PROCID"])
def test_the_rank_comes_from_the_launchers_environment(variable, monkeypatch):
    from lit_inheritune.training import strategy

    for name in (*strategy.RANK_VARIABLES, "NODE_RANK", "GROUP_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert strategy.global_rank() == 0
    monkeypatch.setenv(variable, "1")
    assert strategy.global_rank() == 1


def test_only_rank_zero_prints_the_stage_header_and_summary(tmp_path, fixture_data_dir, capsys, monkeypatch):
    from lit_inheritune.training import strategy

    cfg = _cfg(tmp_path, fixture_data_dir, "train.max_steps=10")
    monkeypatch.setattr(strategy, "global_rank", lambda: 1)
    run(cfg)
    assert "[default]" not in capsys.readouterr().out
    monkeypatch.setattr(strategy, "global_rank", lambda: 0)
    run(cfg)  # done: its "already done" line and summary, once
    assert capsys.readouterr().out.count("[default]") == 2


# ---------------------------------------------------------------------------------------------------------------
# 8. carry_optimizer under FSDP


def test_carry_optimizer_under_fsdp_is_refused(tmp_path, fixture_data_dir):
    cfg = _cfg(tmp_path, fixture_data_dir, "trainer=fsdp", "method=inheritune", "method.grow_mode=append",
               "method.carry_optimizer=true")
    with pytest.raises(ConfigError, match=r"method.carry_optimizer=true cannot be honoured under FSDP"):
        checks.check_method(cfg)
