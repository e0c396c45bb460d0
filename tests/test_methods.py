"""The methods package (issue #24): identities kept across the move, and config errors that need no Lightning."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lit_inheritune.config import compose
from lit_inheritune.run import plan
from lit_inheritune.training.identity import differences, fingerprint

# Every stage of these configs as planned before the methods became modules (commit d3030e0), identity and
# fingerprint: the stages trained then must be the same stages now, so finished runs stay reusable.
BEFORE = json.loads((Path(__file__).parent / "fixtures" / "identities_before_methods_package.json").read_text())
# Stages whose recorded identity carried another method's value (every Table 2 and KD stage recorded Inheritune's
# grow_mode, leaked by the experiment they were composed from): read as their own method's keys, they are the same
# stage, but their recorded fingerprint was computed with the leaked key.
LEAKED = {"stage2-L4", "hybrid-L4", "halfwidth-L8-d64", "student-L4", "stage2-L16", "student-L16"}


# The demo as it was then (issue #23 made it start from one block, T = 150, with a bar below the reference).
DEMO_THEN = ["method.n_layer=4", "method.max_layers=5", "method.tolerance=0.0", "train.max_steps=200",
             "train.val_every_n_steps=100", "reference.max_steps=600"]


@pytest.mark.parametrize("case", BEFORE, ids=[" ".join(c["overrides"]) for c in BEFORE])
def test_every_stage_keeps_its_identity_across_the_move(case):
    overrides = [o.replace("method.reference.", "reference.") for o in case["overrides"]]
    if "experiment=demo" in overrides:
        overrides += DEMO_THEN
    stages = plan(compose(overrides))
    assert [s.name for s in stages] == [s["name"] for s in case["stages"]]
    for stage, before in zip(stages, case["stages"]):
        assert differences(before["identity"], stage.identity) == [], stage.name
        assert fingerprint(before["identity"]) == fingerprint(stage.identity), stage.name
        if stage.name not in LEAKED:
            assert fingerprint(stage.identity) == before["fingerprint"], stage.name


def test_a_recorded_key_of_another_method_still_counts_for_the_method_that_owns_it():
    """Reading a method's keys as its own must not hide a difference in a key it does own."""
    [_, round1, *_] = plan(compose(["experiment=cpu_medium_16l"]))
    other = json.loads(json.dumps(round1.identity))
    other["init"]["method"]["grow_mode"] = "append"
    assert differences(other, round1.identity) == [("init.method.grow_mode", "append", "reinherit")]


ERRORS = [
    (["method=inheritune", "method.parts=atn"], "error: method.parts='atn' is not one of block, attn, mlp, attn_mlp"),
    (["method=inheritune", "method.grow_by=0"], "error: method.grow_by=0: a growth round adds at least 1 layer"),
    (["method=inheritune", "method.blocks=[0,9]"], "error: method.blocks=[0, 9] names blocks outside the 8-layer "
                                                   "reference (0..7; model.n_layer=8)"),
    (["method=stacking", "method.n_layer=3"], "error: stacking needs an even method.n_layer <= 8 (model.n_layer), got 3"),
    (["method=kd", "method.alpha=2"], "error: method.alpha=2.0 (the weight of the CE term) must lie in [0, 1]"),
    (["experiment=cpu_medium_16l", "method=kd"], "error: method.grow_by: Key 'grow_by' not in 'LogitKD'"),
]

PROBE = """\
import runpy, sys
sys.argv = ["lit_inheritune", *sys.argv[1:]]
try:
    runpy.run_module("lit_inheritune", run_name="__main__")
finally:
    print("imported:", sorted(m for m in ("lightning", "torch", "transformers", "wandb") if m in sys.modules),
          file=sys.stderr)
"""


@pytest.mark.parametrize("overrides, error", ERRORS, ids=[" ".join(o) for o, _ in ERRORS])
def test_a_method_level_config_error_needs_neither_lightning_nor_torch(tmp_path, overrides, error):
    """`python -m lit_inheritune` with a bad method key: one `error:` line, exit 2, nothing written, and neither
    Lightning nor torch imported (they cost seconds; README's Speed table has the times)."""
    out = subprocess.run([sys.executable, "-c", PROBE, *overrides, f"paths.root_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr[-2000:]
    assert lines[0].startswith(error), lines
    assert lines[-1] == "imported: []", lines
    assert list(tmp_path.iterdir()) == []


def test_a_key_added_to_a_method_later_leaves_earlier_identities_alone():
    """A field marked `added` is in the identity only when set otherwise than its default."""
    from dataclasses import dataclass

    from lit_inheritune.methods.base import added
    from lit_inheritune.methods.inheritune import Inheritune

    @dataclass
    class WithSelect(Inheritune):
        select: str = added("first")

    plain = Inheritune(n_layer=4, max_layers=4, tag="t")
    assert WithSelect(n_layer=4, max_layers=4, tag="t").identity() == plain.identity()
    assert WithSelect(n_layer=4, max_layers=4, tag="t", select="potent").identity() == {**plain.identity(),
                                                                                       "select": "potent"}
