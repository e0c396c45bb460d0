"""On SLURM (hydra/launcher=slurm): the resources each paper experiment asks for are the ones its Trainer needs, and
a preempted run saves, requeues and resumes exactly (training/preemption.py)."""

import os
import re

import pytest
from hydra.utils import instantiate
from slurm_signal import SignalAt

from lit_inheritune.config import CONFIG_DIR

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

PAPER = sorted(p.stem for pattern in ("gpt2_*", "fineweb_*", "openllama*")
               for p in (CONFIG_DIR / "experiment").glob(f"{pattern}.yaml"))


def _compose(overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True)


def slurm_env(monkeypatch, tasks_per_node: int, nodes: int, **extra: str) -> None:
    """The variables srun sets for task 0 of a job of `nodes` x `tasks_per_node` tasks (what Lightning reads)."""
    for key, value in {"SLURM_NTASKS": str(tasks_per_node * nodes), "SLURM_NTASKS_PER_NODE": str(tasks_per_node),
                       "SLURM_NNODES": str(nodes), "SLURM_JOB_ID": "4242", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "lit_inheritune",
                       "SLURM_NODELIST": "node001", "MASTER_PORT": "29512", "MASTER_ADDR": "127.0.0.1",
                       **extra}.items():
        monkeypatch.setenv(key, value)
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_RESTART_COUNT", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)


def test_there_are_paper_experiments():
    assert {"gpt2_medium_16l", "gpt2_xlarge_24l", "fineweb_medium_16l", "openllama3b_13l"} <= set(PAPER)


@pytest.mark.parametrize("experiment", PAPER)
def test_the_slurm_launcher_asks_for_what_the_trainer_runs(experiment, monkeypatch):
    """tasks and GPUs per node = trainer.devices, nodes = trainer.num_nodes; and the Trainer built in that
    allocation (as task 0 sees it; on the CPU here) passes Lightning's own check of them."""
    from lit_inheritune.checks import check_launcher
    from lit_inheritune.training.preemption import cluster_plugins

    cfg = _compose([f"experiment={experiment}"])
    launcher, trainer = cfg.hydra.launcher, cfg.trainer
    assert isinstance(trainer.devices, int) and trainer.devices >= 1
    assert launcher.tasks_per_node == trainer.devices
    assert launcher.gpus_per_node == trainer.devices  # every paper experiment trains on GPUs
    assert launcher.nodes == trainer.num_nodes == 1
    assert experiment.startswith("openllama") or trainer.devices == 3  # gpt2_medium's 3 GPUs, inherited
    check_launcher(cfg)

    slurm_env(monkeypatch, launcher.tasks_per_node, launcher.nodes)
    built = instantiate(trainer, accelerator="cpu", logger=False, enable_checkpointing=False,
                        plugins=cluster_plugins())
    env = built._accelerator_connector.cluster_environment
    assert type(env).__name__ == "SLURMEnvironment" and not env.auto_requeue  # our callback answers the signal
    # Lightning's check of the allocation against the Trainer (its subprocess launcher runs it; under SLURM, which
    # starts the processes itself, nothing does), and the world the processes will form
    env.validate_settings(num_devices=built.num_devices, num_nodes=built.num_nodes)
    assert built.world_size == built.num_devices * built.num_nodes == trainer.devices * trainer.num_nodes

    # the allocation slurm.yaml asked for before (one task per node) fails both
    slurm_env(monkeypatch, 1, launcher.nodes)
    if trainer.devices > 1:
        with pytest.raises(ValueError, match="--ntasks-per-node=1` does not match"):
            env.validate_settings(num_devices=built.num_devices, num_nodes=built.num_nodes)
        assert built.world_size == 1 != built.num_devices


def test_the_sbatch_script_of_a_paper_sweep_asks_for_its_trainers_resources_and_the_signal(tmp_path, monkeypatch):
    """The launcher itself, as `-m hydra/launcher=slurm experiment=gpt2_medium_16l seed=1,2` runs it, with a stub
    sbatch that keeps the script it is given (and srun, whose presence submitit checks)."""
    import submitit
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import HydraContext

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text('#!/bin/sh\ncp "$1" "$(dirname "$0")/script"\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cfg = _compose(["experiment=gpt2_medium_16l", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    hydra_config = HydraConfig.instance()
    monkeypatch.setattr(hydra_config, "cfg", hydra_config.cfg)  # restored after the test
    hydra_config.set_config(cfg)
    monkeypatch.setattr(submitit.core.core.Job, "results", lambda self: [None])  # no SLURM to wait for
    launcher = instantiate(cfg.hydra.launcher)
    launcher.setup(hydra_context=HydraContext(config_loader=None, callbacks=None), task_function=print, config=cfg)
    launcher.launch([["seed=1"], ["seed=2"]], initial_job_idx=0)
    script = (bin_dir / "script").read_text().splitlines()
    for line in ("--array=0-1%2", "--nodes=1", "--ntasks-per-node=3", "--gpus-per-node=3", "--signal=USR2@300",
                 "--time=4320"):
        assert f"#SBATCH {line}" in script, script
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in script)


def test_a_cpu_trainer_asks_slurm_for_no_gpus():
    cfg = _compose(["trainer=ddp_cpu", "trainer.num_nodes=2"])
    assert (cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.nodes) == (2, None, 2)


@pytest.mark.parametrize("overrides, message", [
    (["trainer=ddp"], r"trainer\.devices='auto': hydra/launcher=slurm .* needs trainer\.devices as a number; "
                      r"set trainer\.devices=<GPUs per node>"),
    (["experiment=gpt2_medium_16l", "hydra.launcher.tasks_per_node=1"],
     r"hydra\.launcher\.tasks_per_node=1 but trainer\.devices=3: Lightning under SLURM needs them equal"),
])
def test_a_slurm_sweep_the_launcher_cannot_size_is_one_error_line_before_anything_is_submitted(
        overrides, message, tmp_path, run_in_process):
    done = run_in_process(["lit_inheritune", "-m", "hydra/launcher=slurm", *overrides], tmp_path)
    assert done.returncode == 2, done.stderr
    assert re.fullmatch(f"error: {message}.*\n", done.stderr), done.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_slurm_sweep_is_checked_without_the_gpus_of_the_machine_that_submits_it(tmp_path, monkeypatch):
    """The login node that submits a GPU sweep has no GPU: the jobs' GPUs are checked where they run."""
    from lit_inheritune.checks import Preflight
    from lit_inheritune.errors import Failure

    def preflight_of(overrides):
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
            Preflight(check=f"{__name__}._record").on_multirun_start(cfg)

    _recorded.clear()
    preflight_of(["hydra/launcher=slurm", "trainer=gpu", "seed=7"])
    assert [job.seed for job in _recorded] == [7]
    with pytest.raises(Failure, match="torch sees no GPU"):  # the same sweep launched here would need one here
        preflight_of(["trainer=gpu", "seed=7"])


_recorded = []


def _record(cfg):
    from lit_inheritune.checks import check_trainer

    check_trainer(cfg)
    _recorded.append(cfg)


# ----------------------------------------------------------------------------------------------------------------
# Preemption


@pytest.fixture
def fresh_process(monkeypatch):
    """`fresh_process()`: the preemption state a new process starts with (no signal received, the signal's handler
    the default); the handler before the test is restored after it."""
    import signal

    from lit_inheritune.training import preemption

    signum = preemption.preemption_signal()
    before = signal.getsignal(signum)

    def reset():
        monkeypatch.setattr(preemption, "_received", preemption._Received())
        signal.signal(signum, signal.SIG_DFL)

    reset()
    yield reset
    signal.signal(signum, before)


def _stub_scontrol(tmp_path, monkeypatch):
    """A `scontrol` first on PATH that records its arguments (one line per call) in the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "calls"


def _logged(run_dir):
    import csv
    from pathlib import Path

    with open(Path(run_dir) / "csv" / "metrics.csv") as f:
        return sorted((int(r["step"]), tuple(sorted(k for k, v in r.items() if v and k != "step")))
                      for r in csv.DictReader(f))


@pytest.mark.parametrize("signal_step, saved_step, restart", [
    (13, 13, "SLURM_RESTART_COUNT"),  # a step that neither validates nor logs: saved at its end
    (20, 21, "the stage's preempted file"),  # a step that validates and logs: saved a step later, after they ran
])
def test_a_preempted_run_saves_requeues_and_its_restart_ends_as_an_uninterrupted_run(
        signal_step, saved_step, restart, tmp_path, fixture_data_dir, monkeypatch, capsys, fresh_process):
    """The signal mid-run under SLURM (simulated: its variables, a stub scontrol): the run saves its checkpoint,
    requeues its job and exits; the same command restarted (SLURM_RESTART_COUNT=1, or the stage's record of the
    preemption) continues the stage without resume=true: the same W&B run, every CSV step once, and the weights of
    a run never interrupted, bit for bit."""
    import json
    from pathlib import Path

    import torch
    from conftest import TINY

    from lit_inheritune.config import compose
    from lit_inheritune.run import run
    from lit_inheritune.training import preemption, runner

    pytest.importorskip("wandb")

    def cfg(root, logger="default"):
        return compose([*TINY, f"paths.root_dir={root}", f"data.data_dir={fixture_data_dir}", f"logger={logger}",
                        "name=pre"])

    straight = cfg(tmp_path / "straight", logger="csv")  # W&B changes no number
    [expected] = run(straight)

    calls = _stub_scontrol(tmp_path, monkeypatch)
    slurm_env(monkeypatch, 1, 1)
    preempted = cfg(tmp_path / "preempted")
    run_dir = Path(preempted.run_dir)
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), SignalAt(signal_step)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        run(preempted)
    assert stopped.value.code == preemption.EXIT_REQUEUED
    out = capsys.readouterr().out
    assert f"preempted (SIGUSR2): saved step {saved_step} to {run_dir / 'checkpoints' / 'last.ckpt'}" in out
    assert "requeued SLURM job 4242: it continues from the checkpoint" in out
    assert calls.read_text() == "requeue 4242\n"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == saved_step
    assert not list(run_dir.rglob("hpc_ckpt_*"))  # Lightning's auto-requeue is off: last.ckpt is the one resume point
    assert not (run_dir / "result.json").exists()
    assert max(step for step, _ in _logged(run_dir)) < 40

    # the job again, as SLURM starts it: a new process, the same command (no resume=true)
    monkeypatch.setattr(runner, "_callbacks", original)
    fresh_process()
    if restart == "SLURM_RESTART_COUNT":
        (run_dir / preemption.PREEMPTED_FILE).unlink()
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    else:
        assert (run_dir / preemption.PREEMPTED_FILE).read_text() == f"{saved_step}\n"
    capsys.readouterr()
    [resumed] = run(preempted)
    assert "(resuming from its last checkpoint)" in capsys.readouterr().out
    assert calls.read_text() == "requeue 4242\n"  # not again
    assert resumed["steps"] == 40 and not (run_dir / preemption.PREEMPTED_FILE).exists()
    weights = torch.load(resumed["last_checkpoint"], weights_only=True)["state_dict"]
    reference = torch.load(expected["last_checkpoint"], weights_only=True)["state_dict"]
    assert weights.keys() == reference.keys()
    assert all(torch.equal(weights[name], reference[name]) for name in reference)
    assert resumed["val_loss"] == expected["val_loss"]
    assert _logged(run_dir) == _logged(straight.run_dir)  # every logged step once, none lost

    wandb_id = (run_dir / runner.WANDB_ID_FILE).read_text().strip()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) >= 1 and {re.match(r"offline-run-\d+_\d+-([0-9a-z]+)", p.name).group(1) for p in runs} == {
        wandb_id}, [p.name for p in runs]
    assert json.loads((run_dir / "result.json").read_text())["steps"] == 40


def test_under_submitit_its_handler_requeues_once_the_checkpoint_is_saved(
        tmp_path, fixture_data_dir, monkeypatch, fresh_process):
    """Hydra's submitit launcher: submitit's handler for the signal (requeue, exit) is called after the checkpoint
    is on disk, not when the signal arrives; scontrol is left to it. Outside a fit the signal is submitit's."""
    import signal
    from pathlib import Path

    import torch
    from conftest import TINY

    from lit_inheritune.config import compose
    from lit_inheritune.run import run
    from lit_inheritune.training import preemption, runner

    calls = _stub_scontrol(tmp_path, monkeypatch)
    slurm_env(monkeypatch, 1, 1)
    cfg = compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"])
    last = Path(cfg.run_dir) / "checkpoints" / "last.ckpt"
    seen = []

    def submitit_handler(signum, frame):  # what submitit's SignalHandler.checkpoint_and_try_requeue does on rank 0
        seen.append((signum, torch.load(last, weights_only=True)["global_step"]))
        raise SystemExit(-1)

    signal.signal(preemption.preemption_signal(), submitit_handler)
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), SignalAt(7)])
    with pytest.raises(SystemExit) as stopped:
        run(cfg)
    assert stopped.value.code == -1
    assert seen == [(preemption.preemption_signal(), 7)]
    assert not calls.exists()

    # requeued: the stage ends, and the signal is submitit's again (between fits it requeues at once)
    monkeypatch.setattr(runner, "_callbacks", original)
    fresh_process()
    signal.signal(preemption.preemption_signal(), submitit_handler)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    [result] = run(cfg)
    assert result["steps"] == 40 and len(seen) == 1
    assert signal.getsignal(preemption.preemption_signal()) is submitit_handler


@pytest.mark.distributed
@pytest.mark.subprocess
def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_step_and_the_restart_is_exact(
        tmp_path, fixture_data_dir, monkeypatch):
    """Two SLURM tasks (trainer=ddp_cpu, started as srun would: one process per task, its SLURM_PROCID), the signal
    reaching rank 1 only: both save the same step (a collective) and stop, rank 0 requeues; the same two commands
    requeued end with the weights and log of an uninterrupted DDP run."""
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import torch
    from conftest import TINY

    from lit_inheritune.training import preemption

    def command(root, *extra):
        return [sys.executable, "-m", "lit_inheritune", *TINY, "trainer=ddp_cpu", f"paths.root_dir={root}",
                f"data.data_dir={fixture_data_dir}", "name=ddp", *extra]

    tests_dir = str(Path(__file__).parent)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("RANK", "LOCAL_RANK")}
    base["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")]))
    straight = subprocess.run(command(tmp_path / "straight"), capture_output=True, text=True, timeout=600, env=base)
    assert straight.returncode == 0, straight.stderr[-3000:]

    calls = _stub_scontrol(tmp_path, monkeypatch)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slurm = {**base, "PATH": os.environ["PATH"], "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
             "SLURM_NNODES": "1", "SLURM_JOB_ID": "4242", "SLURM_NODEID": "0", "SLURM_JOB_NAME": "lit_inheritune",
             "SLURM_NODELIST": "node001", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}

    def srun(**extra):
        cmd = command(tmp_path / "slurm", "+callbacks.signal._target_=slurm_signal.SignalAt",
                      "+callbacks.signal.step=13", "+callbacks.signal.rank=1")
        tasks = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), **extra})
                 for rank in (0, 1)]
        try:  # ranks that disagree on the step to stop at wait for each other's collectives for ever
            outputs = [task.communicate(timeout=300) for task in tasks]
            return [(task.returncode, *output) for task, output in zip(tasks, outputs)]
        finally:
            for task in tasks:
                task.kill()

    run_dir = tmp_path / "slurm" / "outputs" / "ddp" / "scratch-L2-T40-s1"
    first = srun()
    assert [code for code, _, _ in first] == [preemption.EXIT_REQUEUED] * 2, first[0][2][-3000:] + first[1][2][-3000:]
    assert "preempted (SIGUSR2): saved step 13" in first[0][1] and not first[1][1].strip()  # rank 0 speaks
    assert calls.read_text() == "requeue 4242\n"  # once, by rank 0
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 13

    again = srun(SLURM_RESTART_COUNT="1")
    assert [code for code, _, _ in again] == [0, 0], again[0][2][-3000:] + again[1][2][-3000:]
    assert calls.read_text() == "requeue 4242\n"
    straight_dir = tmp_path / "straight" / "outputs" / "ddp" / "scratch-L2-T40-s1"
    weights, reference = (torch.load(d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
                          for d in (run_dir, straight_dir))
    assert weights.keys() == reference.keys() and all(torch.equal(weights[k], reference[k]) for k in reference)
    assert _logged(run_dir) == _logged(straight_dir)


@pytest.mark.parametrize("signal_step, saved_step", [(20, 21), (25, 26)])
def test_a_growing_run_preempted_at_or_after_its_growth_resumes_in_round_two_to_the_uninterrupted_weights(
        signal_step, saved_step, tmp_path, fixture_data_dir, monkeypatch, capsys, shared_reference, fresh_process):
    """Inheritune's rounds are one fit: the signal at step 20 (round 1's last step, a validation and the growth)
    is answered at step 21, round 2's first, in the 3-layer model; at 25 within round 2, a step that logs, at 26.
    The requeued run resumes round 2 at its depth and ends as a run never interrupted."""
    from pathlib import Path

    import torch
    from conftest import TINY

    from lit_inheritune.config import compose
    from lit_inheritune.run import run
    from lit_inheritune.training import preemption, runner

    def cfg(root):
        return compose([*TINY, "method=inheritune", "model.n_layer=4", "method.n_layer=2", "method.grow_by=1",
                        "method.max_layers=3", "method.tolerance=-100", "train.max_steps=20",
                        "train.val_every_n_steps=10", f"paths.root_dir={root}", f"data.data_dir={fixture_data_dir}"])

    whole_cfg = shared_reference(cfg(tmp_path / "whole"))
    whole = run(whole_cfg)
    preempted = shared_reference(cfg(tmp_path / "preempted"))
    run_dir = Path(preempted.run_dir)
    _stub_scontrol(tmp_path, monkeypatch)
    slurm_env(monkeypatch, 1, 1)
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k), SignalAt(signal_step)])
    with pytest.raises(SystemExit, match=str(preemption.EXIT_REQUEUED)):
        run(preempted)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == saved_step
    assert {k for k in ckpt["state_dict"] if ".h.2." in k}  # the grown, 3-layer model
    assert (run_dir / "round1-L2" / "result.json").exists() and not (run_dir / "round2-L3" / "result.json").exists()

    monkeypatch.setattr(runner, "_callbacks", original)
    fresh_process()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    results = run(preempted)
    assert [r["stage"] for r in results] == ["round1-L2", "round2-L3"] == [r["stage"] for r in whole]
    assert [r["val_loss"] for r in results] == [r["val_loss"] for r in whole]
    mine, theirs = (torch.load(r[1]["last_checkpoint"], weights_only=True)["state_dict"] for r in (results, whole))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert _logged(run_dir) == _logged(whole_cfg.run_dir)


def test_a_signal_in_a_fits_last_step_lets_it_finish_and_the_jobs_next_fit_answers_it(
        tmp_path, fixture_data_dir, monkeypatch, capsys, fresh_process):
    """The signal at the reference's last step: the reference finishes (its result), and the growing fit that
    follows in the same job saves at its first step and requeues; the restart reuses the reference."""
    from pathlib import Path

    import torch
    from conftest import TINY

    from lit_inheritune.config import compose
    from lit_inheritune.run import run
    from lit_inheritune.training import preemption, runner

    cfg = compose([*TINY, "method=inheritune", "model.n_layer=4", "method.n_layer=2", "method.grow_by=1",
                   "method.max_layers=3", "method.tolerance=-100", "train.max_steps=20", "train.val_every_n_steps=10",
                   "reference.max_steps=20", f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"])
    calls = _stub_scontrol(tmp_path, monkeypatch)
    slurm_env(monkeypatch, 1, 1)
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks", lambda *a, **k: [*original(*a, **k),
                                                               *([] if k.get("growing") else [SignalAt(20)])])
    with pytest.raises(SystemExit, match=str(preemption.EXIT_REQUEUED)):
        run(cfg)
    run_dir = Path(cfg.run_dir)
    [reference] = [p.parent for p in Path(cfg.paths.log_dir).rglob("result.json")]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 1
    assert calls.read_text() == "requeue 4242\n"
    stamp = (reference / "result.json").stat().st_mtime_ns

    monkeypatch.setattr(runner, "_callbacks", original)
    fresh_process()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    results = run(cfg)
    assert [r["stage"] for r in results] == ["round1-L2", "round2-L3"] and all(r["steps"] == 20 for r in results)
    assert (reference / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("accelerator, gpus", [("cpu", None), ("auto", None), ("gpu", 2), ("cuda", 2)])
def test_slurm_asks_for_gpus_only_for_a_gpu_accelerator(accelerator, gpus):
    cfg = _compose(["trainer=ddp_cpu", f"trainer.accelerator={accelerator}"])
    assert cfg.hydra.launcher.gpus_per_node == gpus
