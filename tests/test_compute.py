"""Training compute from stage identities: the formula, and each source counted once."""

import json

import pytest

from lit_inheritune.compute import cumulative_flops, flops_per_token, stage_flops, tokens
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
