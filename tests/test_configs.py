from pathlib import Path

import pytest
from hydra.utils import instantiate

from lit_inheritune.config import CONFIG_DIR, compose
from lit_inheritune.data.datamodule import TokenDataModule
from lit_inheritune.model import GPTConfig
from lit_inheritune.training.optim import OptimConfig

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONFIG_DIR / "data").glob("*.yaml"))


def test_there_is_something_to_compose():
    assert "demo" in EXPERIMENTS
    assert {"cpu", "gpu", "ddp", "fsdp"} <= set(TRAINERS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_resolves(experiment):
    cfg = compose([f"experiment={experiment}"])
    assert isinstance(instantiate(cfg.model), GPTConfig)
    assert isinstance(instantiate(cfg.optim), OptimConfig)
    assert cfg.train.max_steps % cfg.train.val_every_n_steps == 0
    assert cfg.run_dir.startswith(cfg.paths.log_dir)
    assert cfg.data.model_vocab_size == cfg.model.vocab_size


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_composes(trainer):
    cfg = compose([f"trainer={trainer}"])
    assert cfg.trainer.max_steps == cfg.train.max_steps
    assert cfg.trainer.gradient_clip_val == 1.0


def test_cpu_trainer_instantiates():
    trainer = instantiate(compose(["trainer=cpu"]).trainer, logger=False, enable_checkpointing=False)
    assert trainer.max_steps == 1000


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_builds_a_datamodule(data):
    overrides = [f"data={data}"]
    if data == "local":
        overrides.append("data.prepare.source.paths=[x.txt]")
    dm = instantiate(compose(overrides).data)
    assert isinstance(dm, TokenDataModule)


def test_val_interval_counts_micro_batches():
    cfg = compose(["train.accumulate_grad_batches=4", "train.val_every_n_steps=50"])
    assert cfg.trainer.val_check_interval == 200


def test_slurm_launcher_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher.gpus_per_node == 1
    assert "submitit" in cfg.hydra.launcher._target_


def test_paths_default_below_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_INHERITUNE_ROOT", str(tmp_path))
    cfg = compose([])
    assert Path(cfg.paths.data_dir).parent == tmp_path


def _reproduce_jobs():
    """Every job `make reproduce-cpu` launches: each `run ...` line of the script, sweeps expanded."""
    import itertools
    import shlex

    script = Path(__file__).parents[1] / "experiments" / "reproduce_cpu.sh"
    for line in script.read_text().splitlines():
        if not line.startswith("run "):
            continue
        args = [a.replace('"$SEEDS"', "1,2,3") for a in shlex.split(line, posix=False)[1:] if a != "-m"]
        args = [a.strip("'") for a in args]
        choices = [[f"{a.split('=', 1)[0]}={v}" for v in _sweep_values(a.split("=", 1)[1])] for a in args]
        yield from (list(job) for job in itertools.product(*choices))


def _sweep_values(value: str) -> list[str]:
    """Hydra's comma sweep, keeping commas inside [...] lists: '[0,1],[2,3]' -> ['[0,1]', '[2,3]']."""
    values, depth, current = [], 0, ""
    for ch in value:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            values.append(current)
            current = ""
        else:
            current += ch
    return [*values, current]


def test_every_job_of_reproduce_cpu_composes_and_shares_one_reference():
    from lit_inheritune.run import reference_dir

    jobs = list(_reproduce_jobs())
    assert len(jobs) == 3 + 9 + 9 + 6 + 3 + 1  # Table 1, 3, 2 and KD over 3 seeds; lazy transfer
    references = set()
    for job in jobs:
        cfg = compose(job)
        if cfg.method.name not in ("scratch", "stacking"):  # the methods that start from the reference
            references.add((cfg.name, reference_dir(cfg).name))
    assert references == {("cpu_medium_16l", "scratch-L8-T1000-s0"), ("cpu_lazy_transfer", "scratch-L12-T1000-s0")}
