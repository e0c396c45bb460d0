import os
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from lit_inheritune.config import CONFIG_DIR, compose
from lit_inheritune.data.datamodule import TokenDataModule
from lit_inheritune.models.gpt import GPTConfig
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
    # the default trainer's: one CPU process (the paper experiments' resources: tests/test_slurm.py)
    assert (cfg.hydra.launcher.tasks_per_node, cfg.hydra.launcher.gpus_per_node, cfg.hydra.launcher.nodes) == (1, None, 1)
    assert "submitit" in cfg.hydra.launcher._target_


def test_paths_default_below_root(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_INHERITUNE_ROOT", str(tmp_path))
    cfg = compose([])
    assert Path(cfg.paths.data_dir).parent == tmp_path


def _reproduce_phases():
    """Every training job `make reproduce-cpu` launches, as the script lists them (`--list`): the phases it runs
    one after the other (the reference alone, pools 1, 2 and 3), each a list of jobs' overrides."""
    import subprocess

    script = Path(__file__).parents[1] / "experiments" / "reproduce_cpu.sh"
    # the script asks python for the FLOPs-matched step count even to list its jobs: this interpreter
    env = {**os.environ, "PY": sys.executable}
    out = subprocess.run(["bash", str(script), "--list"], capture_output=True, text=True, check=True, env=env).stdout
    return [[line.split() for line in phase.strip().splitlines()] for phase in out.split("--\n")]


@pytest.mark.subprocess
def test_every_job_of_reproduce_cpu_composes_and_reads_a_reference_trained_in_an_earlier_phase():
    from lit_inheritune.methods import reference_dir

    phases = _reproduce_phases()
    # 2 references, the equal-steps 8L row; per seed: Table 1, 2 scratch 4L rows, Table 3 (3), Table 2 (3), KD (2),
    # lazy transfer (3 position + 2 source + random); Table 1's controls (scratch 4L at 4T and FLOPs-equal, the
    # embedding-only 4L) and the growth twin (2 modes); Appendix B's run on its pretrained reference; the scratch 5L
    # rows (2 per seed; trained only when some seed needed a round 2); a second 8L reference (seed 1) and
    # Inheritune 4L on it (3 seeds)
    assert [len(p) for p in phases] == [1, 3 + 1 + 1 + 3 * (2 + 3 + 3 + 2 + 3 + 2) + 1, 3 * 6 + 1 + 3, 3 * 2]
    trained_in, reads = {}, []
    for phase, jobs in enumerate(phases):
        for job in jobs:
            cfg = compose(job)
            assert Path(cfg.run_dir) not in trained_in  # jobs run two at a time: no two may write one run directory
            trained_in[Path(cfg.run_dir)] = phase
            if cfg.method.name not in ("scratch", "stacking") and cfg.name != "cpu_smollm2_15l":  # trained refs
                reads.append((phase, cfg.name, Path(reference_dir(cfg))))
    assert {(name, ref.name) for _, name, ref in reads} == {
        ("cpu_medium_16l", "scratch-L8-T1500-s0"), ("cpu_medium_16l", "scratch-L8-T1500-s1"),
        ("cpu_lazy_transfer", "scratch-L12-T1500-s0")}
    # Inheritune on the second reference: its own run directories, beside those on reference seed 0
    on_ref1 = [compose(job) for job in phases[2] if "reference.seed=1" in job]
    assert sorted(Path(c.run_dir).name for c in on_ref1) == [f"inheritune-n4-block-reinherit-ref1-s{s}" for s in (1, 2, 3)]
    # a reference is trained, by one job, in a phase that ends before any job reading it starts
    assert all(trained_in[ref] < phase for phase, _, ref in reads)
    assert phases[0] == [["experiment=cpu_medium", "method=scratch", "train.max_steps=1500", "seed=0"]]
    # the controls: 4T, and the step count at which scratch 4L's own FLOPs equal the reference's 1500 8L steps
    # plus Inheritune's 500 4L steps (compute.py's formula, per token: 3 x (2 x (12 L d^2 + d V) + 2 L T d)),
    # rounded to the validation interval (50)
    per_token = {L: 3 * (2 * (12 * L * 128**2 + 128 * 4096) + 2 * L * 128 * 128) for L in (4, 8)}
    matched = 50 * round((1500 * per_token[8] / per_token[4] + 500) / 50)
    scratch_4l = {int(o.split("=")[1]) for job in phases[1] for o in job
                  if "model.n_layer=4" in job and "method=scratch" in job and o.startswith("train.max_steps=")}
    assert scratch_4l == {500, 1000, 2000, matched} and 2900 <= matched <= 3000
    controls = [compose(job) for job in phases[1] if "method=embedding_only" in job]
    assert sorted(Path(c.run_dir).name for c in controls) == [f"embedding_only-L4-s{s}" for s in (1, 2, 3)]
    assert all(c.name == "cpu_medium_16l" and c.method.n_layer == 4 for c in controls)
    # the growth twin starts from k/4 of the same reference and may grow to its full depth, in both modes
    growth = [compose(job) for job in phases[1] if "experiment=cpu_medium_grow" in job]
    assert sorted(Path(c.run_dir).name for c in growth) == sorted(
        f"inheritune-n2-block-{mode}-s{s}" for s in (1, 2, 3) for mode in ("reinherit", "append-carry"))
    assert all(c.name == "cpu_medium_16l" and (c.method.n_layer, c.method.grow_by, c.method.max_layers) == (2, 1, 8)
               for c in growth)


@pytest.mark.subprocess
def test_reproduce_cpu_trains_the_scratch_5l_rows_only_when_a_seed_reached_round_2(tmp_path):
    """The whole script with a stub for python that records each command: pool 3 (the scratch 5L rows) runs
    only once some seed of the Medium-like twin has a round2-L5 (another run's round 2 does not count)."""
    import subprocess

    script = Path(__file__).parents[1] / "experiments" / "reproduce_cpu.sh"
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/calls"\n')
    stub.chmod(0o755)
    out = tmp_path / "outputs"
    (out / "cpu_lazy_transfer" / "scratch-L12-T1500-s0").mkdir(parents=True)
    (out / "cpu_lazy_transfer" / "scratch-L12-T1500-s0" / "result.json").write_text("{}")
    (out / "cpu_medium_16l" / "inheritune-n4-block-reinherit-scale_source-s1" / "round2-L5").mkdir(parents=True)
    env = {**os.environ, "PY": str(stub), "LIT_INHERITUNE_ROOT": str(tmp_path), "SEEDS": "1"}
    # pool 2 reads the second 8L reference too: without it the script stops before pool 2, naming it
    failed = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    second = out / "cpu_medium_16l" / "scratch-L8-T1500-s1" / "result.json"
    assert failed.returncode == 1 and f"error: {second} is missing" in failed.stderr
    second.parent.mkdir(parents=True)
    second.write_text("{}")

    def trained_5l() -> int:
        (tmp_path / "calls").unlink(missing_ok=True)
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
        calls = (tmp_path / "calls").read_text().splitlines()
        return sum("model.n_layer=5" in c for c in calls)

    assert trained_5l() == 0
    (out / "cpu_medium_16l" / "inheritune-n4-block-reinherit-s1" / "round2-L5").mkdir(parents=True)
    assert trained_5l() == 2


@pytest.mark.subprocess
def test_every_row_of_the_smollm2_transfer_suite_is_a_stage_its_script_trains_evaluates_and_analyses(tmp_path):
    """experiments/smollm2_transfer.sh with a stub for python: each suite row names a stage one of its training
    commands plans (the embedding-only control once read "not run": its stage sits one folder below the run),
    and once those stages have checkpoints, every one is evaluated and every 4-layer one analysed."""
    import shlex
    import subprocess

    import yaml

    from lit_inheritune.paper import HERE as PAPER_DIR
    from lit_inheritune.report.runs import _label_and_seed
    from lit_inheritune.run import plan

    script = Path(__file__).parents[1] / "experiments" / "smollm2_transfer.sh"
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\necho "$*" >> "$(dirname "$0")/calls"\n')
    stub.chmod(0o755)

    def calls() -> list[list[str]]:
        (tmp_path / "calls").unlink(missing_ok=True)
        env = {**os.environ, "PY": str(stub)}  # LIT_INHERITUNE_ROOT: the test's own root, as compose's
        subprocess.run(["bash", str(script)], env=env, check=True, capture_output=True)
        return [shlex.split(c) for c in (tmp_path / "calls").read_text().splitlines()]

    group = Path(os.environ["LIT_INHERITUNE_ROOT"]) / "outputs" / "cpu_smollm2_transfer"
    stages = {}
    for call in calls():
        if call[:2] == ["-m", "lit_inheritune"]:
            for stage in plan(compose(call[2:])):
                stages[_label_and_seed(group, stage.dir)[0]] = stage.dir
    suite = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())["cpu_smollm2_transfer"]
    rows = {row["run"] for table in suite["tables"] for row in table["rows"]}
    assert {r for r in rows if not r.endswith("/reference")} <= set(stages)

    for stage_dir in stages.values():
        (stage_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (stage_dir / "checkpoints" / "last.ckpt").write_text("")
    later = calls()
    evaluated = {c[2].removeprefix("ckpt=") for c in later if c[:2] == ["-m", "lit_inheritune.evaluate"]
                 and c[2].startswith("ckpt=")}
    assert evaluated == {str(d / "checkpoints" / "last.ckpt") for d in stages.values()}
    [analyze] = [c for c in later if c[:2] == ["-m", "lit_inheritune.analyze"]]
    analysed = {o.split("=", 1)[1] for o in analyze if o.startswith("+ckpts.")}
    assert analysed == {str(d / "checkpoints" / "last.ckpt") for d in stages.values()
                        if d.name.endswith("-L4") and d.parent.name.endswith("-s1")}


# What each paper experiment must compose to, from PAPER.md sections 2-4. `ref` is the reference's
# (layers, width, heads); tokens per step = batch x context x accumulation x devices as configured.
OPENWEBTEXT = dict(steps=100_000, lr_floor=1e-5, warmup=2000, beta2=0.95, tokens_per_step=49_152,  # v2 code
                   sampling="random")
FINEWEB = dict(OPENWEBTEXT, tokens_per_step=61_440, beta2=0.999, sampling="sequential")
MEDIUM, LARGE, XLARGE = (24, 1024, 16), (36, 1280, 20), (48, 1600, 25)
PAPER_EXPERIMENTS = {
    # The groups: a reference with its data and schedule, any method (scratch by default).
    "gpt2_medium": dict(OPENWEBTEXT, ref=MEDIUM, lr=3e-4, method="scratch"),
    "gpt2_large": dict(OPENWEBTEXT, ref=LARGE, lr=2e-4, method="scratch"),
    "gpt2_xlarge": dict(OPENWEBTEXT, ref=XLARGE, lr=1.5e-4, method="scratch"),
    "lazy_small": dict(OPENWEBTEXT, ref=(12, 768, 12), lr=6e-4, method="scratch"),
    # Table 1: Inheritune 12 -> 14 -> 16 for Medium, one round of k/2 for Large and XLarge.
    "gpt2_medium_16l": dict(OPENWEBTEXT, ref=MEDIUM, lr=3e-4, method="inheritune", n_layer=12, grow_by=2, max_layers=16),
    "gpt2_medium_scratch": dict(OPENWEBTEXT, ref=MEDIUM, lr=3e-4, method="scratch"),
    "gpt2_large_18l": dict(OPENWEBTEXT, ref=LARGE, lr=2e-4, method="inheritune", n_layer=18),
    "gpt2_xlarge_24l": dict(OPENWEBTEXT, ref=XLARGE, lr=1.5e-4, method="inheritune", n_layer=24),
    # Table 2: stacking Medium 8 -> 16, Large 9 -> 18, XLarge 12 -> 24 (method.n_layer is the stacked depth).
    "gpt2_medium_table2": dict(OPENWEBTEXT, ref=MEDIUM, lr=3e-4, method="stacking", n_layer=16),
    "gpt2_large_table2": dict(OPENWEBTEXT, ref=LARGE, lr=2e-4, method="stacking", n_layer=18),
    "gpt2_xlarge_table2": dict(OPENWEBTEXT, ref=XLARGE, lr=1.5e-4, method="stacking", n_layer=24),
    # Table 3: one 16L round from the 24L Medium reference.
    "gpt2_medium_table3": dict(OPENWEBTEXT, ref=MEDIUM, lr=3e-4, method="inheritune", n_layer=16, max_layers=16),
    # KD: 16L students, 50K steps, lr 3e-4 cosine to lr/10 (the student's floor), 0.6 CE + 0.4 KL at T = 1.
    "gpt2_medium_kd": dict(OPENWEBTEXT, ref=MEDIUM, lr=3e-4, method="kd", n_layer=16, steps=50_000, student_lr_floor=3e-5,
                           alpha=0.6, temperature=1.0),
    # Table 4 [v4 Table 1], FineWeb-Edu: 16L of the 24L Medium and of the 32L Large-dagger, one round. The lr is
    # section 3's for the family (FineWeb's script is not quoted for it; README: project choices).
    "fineweb_medium_16l": dict(FINEWEB, ref=MEDIUM, lr=3e-4, method="inheritune", n_layer=16, max_layers=16),
    "fineweb_large_dagger_16l": dict(FINEWEB, ref=(32, 1280, 20), lr=2e-4, method="inheritune", n_layer=16,
                                     max_layers=16),
    # v4 Table 4: 4-layer variants of a 12L GPT-2 Small from blocks 1-4 (0-based 0-3) by default; Small's lr is
    # not in the paper (6e-4 is a project choice).
    "lazy_transfer_small": dict(OPENWEBTEXT, ref=(12, 768, 12), lr=6e-4, method="inheritune", n_layer=4,
                                blocks=[0, 1, 2, 3]),
    # Appendix B: OpenLLaMA-3B, first 13 of 26 layers, lr 3e-4, warmup 1000, 131K tokens per batch, one round.
    "openllama3b_13l": dict(ref=(26, 3200, 32), lr=3e-4, warmup=1000, tokens_per_step=131_072, beta2=0.95,
                            sampling="random", method="inheritune", n_layer=13, max_layers=13),
}


def test_every_paper_experiment_is_checked_against_the_paper():
    paper = {e for e in EXPERIMENTS if e.startswith(("gpt2_", "fineweb_"))
             or e in ("lazy_small", "lazy_transfer_small", "openllama3b_13l")}
    assert paper == set(PAPER_EXPERIMENTS)


@pytest.mark.parametrize("experiment", sorted(PAPER_EXPERIMENTS))
def test_paper_experiment_has_the_papers_numbers(experiment):
    want, cfg = PAPER_EXPERIMENTS[experiment], compose([f"experiment={experiment}"])
    m, o, t = cfg.model, cfg.optim, cfg.train
    assert (m.n_layer, m.n_embd, m.n_head) == want["ref"]
    assert cfg.method.name == want["method"]
    for key in ("n_layer", "grow_by", "max_layers", "blocks", "alpha", "temperature"):
        if key in want:
            assert cfg.method[key] == want[key], key
    assert o.lr == want["lr"] and o.warmup_steps == want["warmup"] and o.beta2 == want["beta2"]
    assert (o.beta1, o.weight_decay, cfg.trainer.gradient_clip_val) == (0.9, 0.1, 1.0)
    assert cfg.trainer.precision == "bf16-mixed"
    tokens_per_step = cfg.data.batch_size * m.block_size * t.accumulate_grad_batches * cfg.trainer.devices
    assert tokens_per_step == want["tokens_per_step"]
    assert cfg.data.sampling == want["sampling"]
    if experiment == "openllama3b_13l":  # 1B tokens x 8 epochs; the step count follows the token budget
        assert m.block_size == 2048 and t.max_steps * tokens_per_step == pytest.approx(8e9, rel=0.01)
        return
    assert m.block_size == 1024 and t.max_steps == want["steps"] and t.val_every_n_steps == 1000
    assert o.min_lr == want["lr_floor"]  # the reference's (and Inheritune's) floor
    if "student_lr_floor" in want:
        assert cfg.method.min_lr == want["student_lr_floor"]


def _reference_recipe(cfg) -> tuple[str, dict]:
    """Where a job finds its reference and the identity it expects that reference to have (what the run-identity
    check compares before reusing it). For method=scratch the job's own run is the reference's when it has the
    reference's depth, steps and seed."""
    from lit_inheritune.methods import make_run, reference_dir, reference_identity
    from lit_inheritune.run import plan

    if cfg.method.name == "scratch":
        [stage] = plan(cfg)
        return str(stage.dir), stage.identity
    return str(reference_dir(cfg)), reference_identity(make_run(cfg))


@pytest.mark.parametrize("jobs", [
    ["experiment=gpt2_medium_16l", "experiment=gpt2_medium_scratch", "experiment=gpt2_medium_table3",
     "experiment=gpt2_medium_table2 method=hybrid_stacking", "experiment=gpt2_medium method=half_width",
     "experiment=gpt2_medium_kd", "experiment=gpt2_medium_kd method=distilbert_kd"],
    ["experiment=gpt2_large_18l", "experiment=gpt2_large_table2 method=hybrid_stacking",
     "experiment=gpt2_large method=half_width"],
    ["experiment=gpt2_xlarge_24l", "experiment=gpt2_xlarge_table2 method=hybrid_stacking"],
    ["experiment=cpu_medium_16l", "experiment=cpu_medium_table3", "experiment=cpu_medium_table2 method=hybrid_stacking",
     "experiment=cpu_medium_table2 method=half_width", "experiment=cpu_medium_kd",
     "experiment=cpu_medium_kd method=distilbert_kd"],
], ids=lambda jobs: jobs[0].split("=")[1])
def test_a_groups_jobs_share_one_reference_trained_one_way(jobs):
    """Every job of a group that uses the reference finds the same run and would train it the same way, so the
    reference one job trained is the one every other job would have trained (KD's student schedule included)."""
    recipes = [_reference_recipe(compose(job.split())) for job in jobs]
    for job, recipe in zip(jobs[1:], recipes[1:]):
        assert recipe == recipes[0], job


@pytest.mark.parametrize("job", ["experiment=cpu_lazy_transfer method.blocks=[4,5,6,7]",
                                 "experiment=cpu_medium_table2 method=stacking",
                                 "experiment=cpu_medium_table2 method=hybrid_stacking",
                                 "experiment=cpu_medium_kd method=distilbert_kd"])
def test_attention_scale_policies_run_apart_on_one_reference(job):
    from lit_inheritune.methods import reference_dir

    official, kept = (compose([*job.split(), f"method.attn_scale={policy}"]) for policy in ("position", "source"))
    assert official.run_dir == compose(job.split()).run_dir  # the default keeps the runs' existing names
    assert kept.run_dir == official.run_dir.replace(official.run_name, official.method.tag + "-scale_source-s1")
    if official.method.name != "stacking":  # stacking starts from its own half-depth run, not the reference
        assert reference_dir(official) == reference_dir(kept)


def test_a_compute_matched_run_against_a_given_reference_is_one_error(tmp_path):
    """A reference given as a checkpoint has no known training cost: no step count can match it."""
    from lit_inheritune import matched
    from lit_inheritune.errors import ConfigError

    ckpt = tmp_path / "given.ckpt"
    ckpt.write_bytes(b"weights")
    spec = {"budget": ["experiment=cpu_medium_16l", "reference=ckpt", f"reference.ckpt={ckpt}"],
            "stage": "round1-L4", "target": ["experiment=cpu_medium", "method=scratch", "model.n_layer=4"]}
    with pytest.raises(ConfigError, match="cost of 'round1-L4' .* is unknown"):
        matched.steps(spec)

