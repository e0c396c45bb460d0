"""Training compute from stage identities: the formula, and each source counted once."""

import json
from pathlib import Path

import pytest

from lit_inheritune.compute import cumulative_at, cumulative_flops, flops_per_token, stage_flops, tokens
from lit_inheritune.config import compose
from lit_inheritune.run import plan


def test_flops_per_token_formula():
    model = {"n_layer": 8, "n_embd": 128, "block_size": 128, "vocab_size": 4096}
    forward = 2 * (12 * 8 * 128**2 + 128 * 4096) + 2 * 8 * 128 * 128
    assert flops_per_token(model) == 3 * forward and flops_per_token(model, forward_only=True) == forward


def _ids(*overrides):
    cfg = compose(["model=cpu_reference", "data.batch_size=32", "train.max_steps=500", "train.val_every_n_steps=50",
                   *overrides])
    return {s.name: s.identity for s in plan(cfg)}


def test_inheritune_round_counts_the_reference_once_and_earlier_rounds_by_mode():
    per = lambda n: flops_per_token({"n_layer": n, "n_embd": 128, "block_size": 128, "vocab_size": 4096})
    t = 500 * 32 * 128
    ids = _ids("method=inheritune", "method.n_layer=4", "method.grow_by=1", "method.max_layers=6",
               "reference.max_steps=1000", "method.grow_mode=append")
    ref = per(8) * 2 * t
    assert tokens(ids["round1-L4"]) == t and stage_flops(ids["reference"]) == pytest.approx(ref)
    assert cumulative_flops(ids["round1-L4"]) == pytest.approx(ref + per(4) * t)
    # append: round 3 builds on rounds 2 and 1, which build on the reference: each counted once
    assert cumulative_flops(ids["round3-L6"]) == pytest.approx(ref + (per(4) + per(5) + per(6)) * t)
    # reinherit: round 3 nests only the reference; the earlier rounds are passed in
    ids = _ids("method=inheritune", "method.n_layer=4", "method.grow_by=1", "method.max_layers=6",
               "reference.max_steps=1000")
    assert cumulative_flops(ids["round3-L6"]) == pytest.approx(ref + per(6) * t)
    assert cumulative_flops(ids["round3-L6"], [ids["round1-L4"], ids["round2-L5"]]) == pytest.approx(
        ref + (per(4) + per(5) + per(6)) * t)


def test_kd_adds_the_teachers_forward_and_the_teachers_training():
    ids = _ids("method=kd", "method.n_layer=4", "reference.max_steps=1000")
    student = ids["student-L4"]
    teacher = {"n_layer": 8, "n_embd": 128, "block_size": 128, "vocab_size": 4096}
    student_model = {**teacher, "n_layer": 4}
    t = tokens(student)
    assert stage_flops(student) == pytest.approx((flops_per_token(student_model)
                                                  + flops_per_token(teacher, forward_only=True)) * t)
    assert cumulative_flops(student) == pytest.approx(stage_flops(student) + flops_per_token(teacher) * 2 * t)


def test_a_given_reference_has_no_known_cost(tmp_path):
    ckpt = tmp_path / "ref.ckpt"
    ckpt.write_bytes(b"weights")
    ids = _ids("method=inheritune", "method.n_layer=4", "method.max_layers=4", "reference=ckpt", f"reference.ckpt={ckpt}")
    assert stage_flops(ids["round1-L4"]) > 0 and cumulative_flops(ids["round1-L4"]) is None


def test_report_counts_the_compute_to_match_the_reference(tmp_path, fixture_data_dir, shared_reference):
    """A real tiny Algorithm-1 run whose round 1 matches (tolerance 10): the report's growth table counts the
    reference's training and round 1's, once each."""
    from conftest import TINY

    from lit_inheritune.report import collect, growth_cost
    from lit_inheritune.run import run

    cfg = compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "method=inheritune",
                   "method.n_layer=1", "method.grow_by=1", "method.max_layers=2", "method.tolerance=10",
                   "train.max_steps=10", "train.val_every_n_steps=10", "reference.max_steps=20", "name=cost"])
    stages = {s.name: s.identity for s in plan(cfg)}
    run(shared_reference(cfg))
    group = tmp_path / "outputs" / "cost"
    lines = growth_cost(group, collect(group))
    expected = cumulative_flops(stages["round1-L1"])
    assert expected == pytest.approx(stage_flops(stages["reference"]) + stage_flops(stages["round1-L1"]))
    assert lines[4] == f"| `inheritune-n1-block-reinherit` | 1 | round1-L1 (seed 1) | {expected:.2e} FLOPs (mean of 1) |"
    assert lines[6].startswith("Round 1 matched the reference in every seed of `inheritune-n1-block-reinherit`: no growth")


def test_growth_cost_says_which_seed_matched_where(tmp_path):
    """Seeds that disagree (one matched in round 1, one never) are named per outcome, not merged into one list."""
    from lit_inheritune.report import growth_cost

    for seed, matched in ((1, True), (2, False)):
        fit = tmp_path / f"inheritune-n4-block-reinherit-s{seed}"
        fit.mkdir()
        stages = [{"stage": "reference"}, {"stage": "round1-L4", "matched": matched}]
        (fit / "stages.json").write_text(json.dumps({"stages": stages}))
        (fit / "round1-L4").mkdir()  # the method that made the run is read from its stages' identities
        (fit / "round1-L4" / "identity.json").write_text(json.dumps({"init": {"kind": "inheritune",
                                                                             "method": {"name": "inheritune"}}}))
    lines = growth_cost(tmp_path, [])
    assert lines[4] == "| `inheritune-n4-block-reinherit` | 2 | not reached (seed 2); round1-L4 (seed 1) | - |"
    assert len(lines) == 6  # no "round 1 matched in every seed" note: seed 2 did not


def test_cumulative_at_a_step_is_the_reports_count_and_unknown_with_a_given_reference(tmp_path):
    ids = _ids("method=inheritune", "method.n_layer=4", "method.grow_by=1", "method.max_layers=5",
               "reference.max_steps=1000")
    r1, r2 = ids["round1-L4"], ids["round2-L5"]
    start, end = cumulative_at(r2, [r1], 0), cumulative_at(r2, [r1], 500)
    assert end == {"cumulative_tokens": pytest.approx(tokens(ids["reference"]) + tokens(r1) + tokens(r2)),
                   "cumulative_flops": pytest.approx(cumulative_flops(r2, [r1]))}
    assert start["cumulative_flops"] == pytest.approx(cumulative_flops(r2, [r1]) - stage_flops(r2))
    ckpt = tmp_path / "ref.ckpt"
    ckpt.write_bytes(b"weights")
    given = _ids("method=inheritune", "method.n_layer=4", "method.max_layers=4", "reference=ckpt", f"reference.ckpt={ckpt}")
    assert cumulative_at(given["round1-L4"], [], 100) == {}


# -- what a run logs: tokens and cumulative FLOPs on every logging step, in the CSV and as W&B axes (issue #22)

def _logged_compute(csv_path) -> list[tuple[int, float, float, float]]:
    """(CSV step, train/tokens, train/cumulative_tokens, train/cumulative_flops) of the rows that log them."""
    import csv

    with open(csv_path, newline="") as f:
        return [(int(r["step"]), float(r["train/tokens"]), float(r["train/cumulative_tokens"]),
                 float(r["train/cumulative_flops"])) for r in csv.DictReader(f) if r.get("train/cumulative_flops")]


def test_a_run_logs_its_tokens_and_flops_on_every_logging_step(tmp_path, fixture_data_dir):
    from conftest import TINY

    from lit_inheritune.run import run

    cfg = compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"])  # scratch: nothing before it
    run(cfg)
    identity = json.loads((Path(cfg.run_dir) / "identity.json").read_text())
    per_step = cfg.data.batch_size * cfg.model.block_size
    rows = _logged_compute(Path(cfg.run_dir) / "csv" / "metrics.csv")
    assert [step for step, *_ in rows] == list(range(4, 40, 5))  # log_every_n_steps=5 (the CSV counts from 0)
    for step, own, cumulative, flops in rows:
        assert own == cumulative == (step + 1) * per_step
        assert flops == pytest.approx(flops_per_token(identity["model"]) * (step + 1) * per_step, rel=1e-12)
    assert flops == pytest.approx(stage_flops(identity), rel=1e-12)


def test_a_growing_run_counts_the_reference_and_its_earlier_rounds(tmp_path, fixture_data_dir, shared_reference):
    """Re-inherited rounds (which nest only the reference) in one fit: the logged cumulative compute starts at the
    reference's, goes on through round 1 into round 2 without a jump, is the same in each stage's slice of the log,
    and ends each stage at the report's cumulative FLOPs (Inheritune.earlier_stages counting round 1 for round 2)."""
    from conftest import TINY

    from lit_inheritune.methods import method_by_name
    from lit_inheritune.run import run

    cfg = shared_reference(compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}",
                                    "method=inheritune", "model.n_layer=4", "method.n_layer=2", "method.grow_by=1",
                                    "method.max_layers=3", "method.tolerance=-100", "train.max_steps=10",
                                    "train.val_every_n_steps=10"]))
    ids = {s.name: s.identity for s in plan(cfg)}
    ref, r1 = ids["reference"], ids["round1-L2"]
    run(cfg)
    per_step = cfg.data.batch_size * cfg.model.block_size
    per = {n: flops_per_token({**cfg.model, "n_layer": n}) * per_step for n in (2, 3)}
    run_dir = Path(cfg.run_dir)
    rows = _logged_compute(run_dir / "csv" / "metrics.csv")
    expected = [(4, 5 * per[2]), (9, 10 * per[2]), (14, 10 * per[2] + 5 * per[3]), (19, 10 * per[2] + 10 * per[3])]
    assert [step for step, *_ in rows] == [step for step, _ in expected]
    for (step, own, cumulative, flops), (_, trained) in zip(rows, expected, strict=True):
        assert own == (step + 1) * per_step  # the fit's tokens: both rounds
        assert cumulative == tokens(ref) + (step + 1) * per_step
        assert flops == pytest.approx(stage_flops(ref) + trained, rel=1e-12)
    inheritune = method_by_name("inheritune")
    for name, fit_rows in (("round1-L2", rows[:2]), ("round2-L3", rows[2:])):
        stage_rows = _logged_compute(run_dir / name / "csv" / "metrics.csv")
        assert [r[2:] for r in stage_rows] == [r[2:] for r in fit_rows]
        earlier = inheritune.earlier_stages(name, ids[name], {"round1-L2": r1} if name == "round2-L3" else {})
        assert stage_rows[-1][3] == pytest.approx(cumulative_flops(ids[name], earlier), rel=1e-12)


def test_wandb_plots_losses_against_cumulative_flops(tmp_path, fixture_data_dir, monkeypatch):
    """The W&B run declares the compute metrics as axes and val/loss, val/ppl and train/loss on cumulative FLOPs,
    after Lightning's catch-all on trainer/global_step (a glob: the named metrics take precedence over it)."""
    wandb = pytest.importorskip("wandb")
    from conftest import TINY

    from lit_inheritune.run import run

    declared = []
    define = wandb.sdk.wandb_run.Run.define_metric

    def spy(self, name, step_metric=None, *args, **kwargs):
        declared.append((name, step_metric, kwargs.get("step_sync")))
        return define(self, name, step_metric, *args, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "define_metric", spy)
    cfg = compose([*TINY, f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "logger=default",
                   "train.max_steps=10", "train.val_every_n_steps=5", "name=wb"])
    run(cfg)
    axis = "train/cumulative_flops"
    assert declared[:2] == [("trainer/global_step", None, None), ("*", "trainer/global_step", True)]
    assert set(declared[2:]) == {("train/tokens", None, None), ("train/cumulative_tokens", None, None),
                                 (axis, None, None), ("val/loss", axis, True), ("val/ppl", axis, True),
                                 ("train/loss", axis, True)}
    assert _logged_compute(Path(cfg.run_dir) / "csv" / "metrics.csv")  # the values those axes plot
