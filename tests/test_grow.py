"""Growth inside one fit (training/grow.py), and a method added as a module and a yaml (lit_inheritune/methods/)."""

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.run import run
from lit_inheritune.training import grow, runner


def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, "method=inheritune", "model.n_layer=4", "method.n_layer=2", "method.grow_by=1",
                    "method.max_layers=3", "method.tolerance=-100", "train.max_steps=10",
                    "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


@pytest.mark.parametrize("carry", [True, False])
def test_carry_optimizer_keeps_the_adamw_state_of_every_surviving_parameter(tmp_path, fixture_data_dir, monkeypatch,
                                                                           carry, shared_reference):
    """append growth: with method.carry_optimizer=true the new optimizer holds exactly the moments (and step
    counts) the old one had for round 1's parameters, and none for the appended block; without it, none at all.
    The LR schedule restarts either way."""
    seen = {}
    install = grow.GrowCallback._install

    def spy(self, trainer, pl_module, model):
        old = trainer.optimizers[0]
        seen["before"] = {n: {k: v.clone() for k, v in old.state[p].items()}
                          for n, p in pl_module.model.named_parameters() if p in old.state}
        install(self, trainer, pl_module, model)
        new = trainer.optimizers[0]
        seen["after"] = {n: {k: v.clone() for k, v in new.state[p].items()}
                         for n, p in pl_module.model.named_parameters() if p in new.state}
        seen["names"] = [n for n, _ in pl_module.model.named_parameters()]
        seen["lr"] = trainer.lr_scheduler_configs[0].scheduler.last_epoch

    monkeypatch.setattr(grow.GrowCallback, "_install", spy)
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "method.grow_mode=append",
                                f"method.carry_optimizer={str(carry).lower()}"))
    results = run(cfg)
    assert [r["n_layer"] for r in results] == [2, 3]
    assert Path(cfg.run_dir).name == f"inheritune-n2-block-append{'-carry' if carry else ''}-s1"
    before, after = seen["before"], seen["after"]
    survivors = [n for n in seen["names"] if not n.startswith("transformer.h.2.")]
    assert sorted(before) == sorted(survivors)  # every parameter of round 1 had taken its 10 steps
    assert all(torch.equal(s["step"], torch.tensor(10.0)) for s in before.values())
    assert seen["lr"] == 0  # a fresh schedule for the new round
    if not carry:
        assert after == {}
        return
    assert set(after) == set(before)  # round 1's parameters, under the same names
    assert not any(n.startswith("transformer.h.2.") for n in after) and "transformer.h.2.attn.c_attn.weight" in seen["names"]
    for name, state in before.items():
        assert set(after[name]) == set(state)
        for key, value in state.items():
            assert torch.equal(after[name][key], value), (name, key)


def test_carry_optimizer_with_reinherit_is_refused(tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match="only method.grow_mode=append keeps any"):
        run(_cfg(tmp_path, fixture_data_dir, "method.carry_optimizer=true"))
    assert not (tmp_path / "outputs").exists()


def test_growth_needs_stages_that_end_on_a_validation(tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match="10 steps is not a multiple of train.val_every_n_steps=4"):
        run(_cfg(tmp_path, fixture_data_dir, "train.val_every_n_steps=4"))


def test_one_wandb_run_per_algorithm_one_run_with_the_stage_as_a_metric(tmp_path, fixture_data_dir, monkeypatch,
                                                                        shared_reference):
    """Rounds 1 and 2 log to one W&B run (and one CSV), also across a kill in round 2 and a resume; the stage
    number is a logged metric; no stage directory starts a W&B run of its own."""
    pytest.importorskip("wandb")
    import csv

    import wandb

    class KillInRoundTwo(runner.L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            if trainer.global_step == 15:
                raise RuntimeError("simulated kill")

    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "logger=default", "name=wb", "train.val_every_n_steps=5",
                                "resume=true"))
    original = runner._callbacks
    monkeypatch.setattr(runner, "_callbacks",
                        lambda *a, **k: [*original(*a, **k), *([KillInRoundTwo()] if k.get("growing") else [])])
    with pytest.raises(RuntimeError, match="simulated kill"):
        run(cfg)
    wandb.finish()  # the killed process would have taken its run with it
    monkeypatch.setattr(runner, "_callbacks", original)
    run(cfg)
    run_dir = Path(cfg.run_dir)
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    ids = {re.match(r"offline-run-\d+_\d+-([0-9a-z]+)", p.name).group(1) for p in runs}  # a same-second rerun adds -1
    assert ids == {(run_dir / runner.WANDB_ID_FILE).read_text().strip()} and len(runs) == 2  # killed + resumed
    for stage in ("round1-L2", "round2-L3"):
        assert not (run_dir / stage / "wandb").exists() and not (run_dir / stage / runner.WANDB_ID_FILE).exists()
    with open(run_dir / "csv" / "metrics.csv") as f:
        stages = {int(r["step"]): float(r["train/stage"]) for r in csv.DictReader(f) if r.get("train/stage")}
    assert stages[4] == 1.0 and stages[14] == 2.0 and set(stages.values()) == {1.0, 2.0}


def _log(run_dir: Path, *columns: str) -> list[tuple]:
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        return [tuple(r[c] for c in columns) for r in csv.DictReader(f) if any(r[c] for c in columns[1:])]


# -- a method added as one module and one yaml, touching no other file (issue #24)

METHOD_MODULE = '''\
"""A random-init model that inherits only the reference's token embedding, scaled by a key of its own
(`embedding_scale`), trained T steps (a variant of the built-in method=embedding_only)."""

from dataclasses import dataclass

from omegaconf import MISSING

from lit_inheritune.errors import ConfigError
from lit_inheritune.methods import FromReference, derived_stage, random_model, reference_identity


@dataclass
class ScaledEmbedding(FromReference):
    name: str = "scaled_embedding"
    n_layer: int = MISSING
    embedding_scale: float = 1.0

    def validate(self, run):
        if not self.embedding_scale > 0:
            raise ConfigError(f"method.embedding_scale={self.embedding_scale} must be positive")

    def stage(self, run):
        return derived_stage(run, f"embedding-L{self.n_layer}", self.n_layer, "scaled_embedding",
                             "the reference's token embedding only", reference=reference_identity(run))

    def build(self, run, reference):
        model = random_model(run, self.n_layer)
        model.transformer.wte.weight.data.copy_(reference.transformer.wte.weight.data * self.embedding_scale)
        return model
'''

METHOD_YAML = """\
_target_: my_methods.ScaledEmbedding
name: scaled_embedding
n_layer: 2
embedding_scale: 1.0
tag: scaled_embedding-L${method.n_layer}-x${method.embedding_scale}
"""


def test_a_new_method_is_one_module_and_one_yaml(tmp_path, fixture_data_dir, shared_reference, run_in_process,
                                                monkeypatch):
    """A method with a key of its own, written as a module and a yaml outside the package (the module importable,
    the yaml on Hydra's search path): `python -m lit_inheritune` (run in this process) type-checks and validates its
    key, runs it after the reference (found trained), its identity records the key, and the report shows its stage."""
    (tmp_path / "my_methods.py").write_text(METHOD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    conf = tmp_path / "conf"
    (conf / "method").mkdir(parents=True)
    (conf / "method" / "scaled_embedding.yaml").write_text(METHOD_YAML)
    args = [f"hydra.searchpath=[file://{conf}]", "method=scaled_embedding", *TINY, "model.n_layer=4",
            "train.max_steps=10", "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}",
            f"data.data_dir={fixture_data_dir}", "name=new"]
    for bad, error in (("method.embedding_scale=-1", "error: method.embedding_scale=-1.0 must be positive"),
                       ("method.embedding_scale=big", "error: method.embedding_scale: Value 'big' of type 'str' "
                                                      "could not be converted to Float")):
        out = run_in_process(["lit_inheritune", *args, bad], tmp_path)
        assert (out.returncode, out.stderr.strip()) == (2, error)
    assert not (tmp_path / "outputs").exists()
    shared_reference(compose(args))
    out = run_in_process(["lit_inheritune", *args, "method.embedding_scale=0.5"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "[new] stage 2 of 2: embedding-L2 (the reference's token embedding only), 10 steps" in out.stdout
    stage = tmp_path / "outputs" / "new" / "scaled_embedding-L2-x0.5-s1" / "embedding-L2"
    identity = json.loads((stage / "identity.json").read_text())
    assert identity["init"]["method"]["embedding_scale"] == 0.5 and identity["init"]["kind"] == "scaled_embedding"
    from lit_inheritune.models import load_checkpoint

    trained = load_checkpoint(stage / "checkpoints" / "last.ckpt")
    reference = load_checkpoint(tmp_path / "outputs" / "new" / "scratch-L4-T10-s1" / "checkpoints" / "last.ckpt")
    assert trained.config.n_layer == 2 and reference.config.n_layer == 4
    # trained 10 steps from half the reference's embedding: close to it, not equal (a random embedding is far)
    assert 0 < (trained.transformer.wte.weight - 0.5 * reference.transformer.wte.weight).abs().max() < 0.1
    from lit_inheritune.report import write_report

    runs = write_report(tmp_path / "outputs" / "new", tmp_path / "report", expect=None).read_text()
    assert "| scaled_embedding-L2-x0.5/embedding-L2 | 2 |" in runs


def test_a_method_target_that_cannot_be_imported_is_one_clear_error(tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match=r"method._target_='nowhere.Method' cannot be imported"):
        run(_cfg(tmp_path, fixture_data_dir, "method._target_=nowhere.Method"))


def test_round_two_is_a_fit_of_its_own_on_the_batches_that_follow_round_one(tmp_path, fixture_data_dir,
                                                                            initial_models, shared_reference):
    """What growing inside one fit changes against the one-fit-per-round runner, to the last bit: only which
    batches round 2 sees (micro-batches T..2T-1 of the seed's stream instead of 0..T-1). Round 2 trained as a
    fit of its own from the same starting model on those batches ends with the same weights."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lit_inheritune.methods import make_run
    from lit_inheritune.methods.base import measure
    from lit_inheritune.training.lm import CausalLM

    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir))
    _, round2 = run(cfg)

    class FromStepT(type(instantiate(cfg.data))):
        def train_dataloader(self):
            loader = super().train_dataloader()
            loader.dataset.start += int(cfg.train.max_steps)
            return loader

    datamodule = FromStepT(**{k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
                              if k != "_target_"})
    start = measure(make_run(cfg), initial_models["round2-L3"], datamodule)["val_loss"]  # before it trains below
    module = CausalLM(initial_models["round2-L3"], make_run(cfg).optim(cfg.train.max_steps), {"stage": "alone"})
    alone = runner.fit_stage(cfg, module, datamodule, tmp_path / "alone", stage="alone", identity={"alone": 1},
                             max_steps=int(cfg.train.max_steps))
    assert alone["val_loss"] == round2["val_loss"]
    logged = [_log(Path(r["last_checkpoint"]).parents[1], "step", "train/tokens", "val/loss") for r in (alone, round2)]
    # the stage's slice of the fit's log reads as its own run's, but for the row before its first step: the grown
    # model's val loss (the official code's validation at step 0), which a fit of its own does not log
    assert logged[1][0] == ("0", "", str(start)) and logged[1][1:] == logged[0] and logged[0]
    # the report reads it as the loss after 0 steps; in the whole fit's log, where it shares step 10 with round 1's
    # last validation, a curve over the fit can leave it out
    from lit_inheritune.report import val_curve

    round1 = json.loads((Path(cfg.run_dir) / "round1-L2" / "result.json").read_text())
    assert val_curve(Path(round2["last_checkpoint"]).parents[1]) == {0: start, 10: round2["val_loss"]}
    assert val_curve(cfg.run_dir, starts=False) == {10: round1["val_loss"], 20: round2["val_loss"]}
    assert val_curve(cfg.run_dir)[10] == start
    mine, theirs = (torch.load(r["last_checkpoint"], weights_only=True)["state_dict"] for r in (alone, round2))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def _same_module(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_growth_run_with_a_block_list_grows_past_its_list_when_configured_to(tmp_path, fixture_data_dir,
                                                                             shared_reference, initial_models):
    """method.grow_list=true: blocks [1, 2] of the 4-layer reference fall short (tolerance -100) and round 2
    inherits [1, 2, 3], the list plus the reference block after its last, as Algorithm 1 adds the blocks after
    the first n. Without it the list is one round, as before."""
    from lit_inheritune.models import load_checkpoint

    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "method.blocks=[1,2]", "method.grow_list=true"))
    assert Path(cfg.run_dir).name == "inheritune-b1-2-block-reinherit-grow-s1"
    results = run(cfg)
    assert [(r["stage"], r["blocks"], r["matched"]) for r in results] == [
        ("round1-L2", [1, 2], False), ("round2-L3", [1, 2, 3], False)]
    reference = load_checkpoint(Path(cfg.paths.log_dir) / cfg.name / "scratch-L4-T10-s1" / "checkpoints" / "last.ckpt")
    ref_blocks = reference.transformer.h
    for stage, blocks in (("round1-L2", [1, 2]), ("round2-L3", [1, 2, 3])):
        start = initial_models[stage].transformer.h
        assert len(start) == len(blocks) and all(_same_module(start[i], ref_blocks[b]) for i, b in enumerate(blocks))
    identity = json.loads((Path(cfg.run_dir) / "round2-L3" / "identity.json").read_text())
    assert identity["init"]["method"]["grow_list"] is True and identity["model"]["n_layer"] == 3

    fixed = compose([*TINY, "method=inheritune", "model.n_layer=4", "method.blocks=[1,2]", "method.max_layers=3",
                     f"paths.root_dir={tmp_path}"])
    from lit_inheritune.run import plan

    assert [s.name for s in plan(fixed) if s.name.startswith("round")] == ["round1-L2"]
    # a list that grows keeps `grow_list` out of identities recorded before it existed (an `added` key)
    assert "grow_list" not in [s for s in plan(fixed) if s.name == "round1-L2"][0].identity["init"]["method"]


@pytest.mark.parametrize("override, message", [
    ("method.grow_mode=append", "method.grow_list=true cannot grow with method.grow_mode=append"),
    ("method.max_layers=4", r"method.max_layers=4: growing method.blocks=\[1, 2\] by the blocks after its last \(2\) "
                            r"stops at the 4-layer reference's last block; set method.max_layers at most 3"),
    # the depth check needs a valid range of rounds: these keys' own errors come first, not a traceback
    ("method.max_layers=1", r"method.max_layers=1 is below the target's 2 layers"),
    ("method.grow_by=0", r"method.grow_by=0: a growth round adds at least 1 layer"),
])
def test_a_block_list_that_cannot_grow_as_asked_is_a_config_error(tmp_path, fixture_data_dir, override, message):
    with pytest.raises(ConfigError, match=message):
        run(_cfg(tmp_path, fixture_data_dir, "method.blocks=[1,2]", "method.grow_list=true", override))
    with pytest.raises(ConfigError, match="method.grow_list=true grows an explicit list of blocks"):
        run(_cfg(tmp_path, fixture_data_dir, "method.grow_list=true"))


def test_a_block_list_is_checked_against_the_deepest_round_it_can_reach(tmp_path):
    """Growing by 2 from 2 layers with max_layers 3 never reaches a round 2: blocks [2, 3] of a 4-layer reference
    is one round, not a list that would run past the reference's last block."""
    from lit_inheritune.checks import check_method
    from lit_inheritune.run import plan

    cfg = compose([*TINY, "method=inheritune", "model.n_layer=4", "method.blocks=[2,3]", "method.grow_list=true",
                   "method.grow_by=2", "method.max_layers=3", f"paths.root_dir={tmp_path}"])
    check_method(cfg)  # the method's own checks, as every run makes them before any compute
    assert [s.name for s in plan(cfg) if s.name.startswith("round")] == ["round1-L2"]


def test_stage_headers_name_one_block_as_a_block(tmp_path):
    """What each round inherits, as its header says it: 'block 0' and 'block 2', never 'blocks 0-0' or '2-2'."""
    from lit_inheritune.run import plan

    def inits(*extra):
        cfg = compose([*TINY, "method=inheritune", "model.n_layer=4", "method.n_layer=1", "method.grow_by=1",
                       "method.max_layers=3", f"paths.root_dir={tmp_path}", *extra])
        return [s.init for s in plan(cfg) if s.name.startswith("round")]

    assert inits() == ["inherits block 0 of the reference (block)",
                       "inherits blocks 0-1 of the reference afresh (block)",
                       "inherits blocks 0-2 of the reference afresh (block)"]
    assert inits("method.grow_mode=append", "method.carry_optimizer=true")[1:] == [
        "round 1's target + reference block 1, its AdamW state carried",
        "round 2's target + reference block 2, its AdamW state carried"]
    assert inits("method.grow_mode=append", "method.grow_by=2")[1:] == ["round 1's target + reference blocks 1-2"]
