"""On SLURM (hydra/launcher=slurm): the resources each paper experiment asks for are the ones its Trainer needs, and
a preempted run saves, requeues and resumes exactly (training/preemption.py)."""

import re

import pytest
from hydra.utils import instantiate

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
