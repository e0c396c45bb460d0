"""Compute-matched rows (issue #23): a run given as many training FLOPs as another row cost cumulatively, its step
count computed from the two configs (compute.py), never typed.

A row of paper/suites.yaml with `matched: {budget: [overrides], stage: <stage name>, target: [overrides]}` and a
`{steps}` in its `run` label is the `target` run trained for the steps at which its own training FLOPs equal the
cumulative FLOPs (reference included) of the `budget` config's `stage`. The report fills the label from it, and
the reproduce script trains the run from it:

    python -m lit_inheritune.matched cpu_medium_16l "scratch 4L, FLOPs-equal to reference + Inheritune"
"""

from __future__ import annotations

import sys
from functools import cache

import yaml

from lit_inheritune.compute import cumulative_flops, matched_steps
from lit_inheritune.errors import ConfigError, run_cli
from lit_inheritune.paper import HERE as PAPER_DIR


@cache
def _steps(budget: tuple[str, ...], stage: str, target: tuple[str, ...]) -> int:
    from lit_inheritune.config import compose
    from lit_inheritune.methods import method_class
    from lit_inheritune.run import plan

    budget_cfg = compose(list(budget))
    stages = {s.name: s for s in plan(budget_cfg)}
    if stage not in stages:
        raise ConfigError(f"matched: {' '.join(budget)} plans no stage {stage!r} (it plans {', '.join(stages)})")
    # the stages the method trained before this one without nesting them (re-inherited rounds), as the report counts
    siblings = {s.name: s.identity for s in stages.values() if s.dir.parent == stages[stage].dir.parent
                and s.name != stage}
    earlier = method_class(budget_cfg.method).earlier_stages(stage, stages[stage].identity, siblings)
    budget_flops = cumulative_flops(stages[stage].identity, earlier)
    if budget_flops is None:
        raise ConfigError(f"matched: the cost of {stage!r} in {' '.join(budget)} is unknown (it is built on a given "
                          "checkpoint or pretrained model): a compute-matched run needs a reference trained here")
    cfg = compose(list(target))
    [own] = plan(cfg)
    return matched_steps(budget_flops, own.identity, int(cfg.train.val_every_n_steps))


def steps(matched: dict) -> int:
    """The step count a `matched` spec (module docstring) gives its run."""
    return _steps(tuple(matched["budget"]), str(matched["stage"]), tuple(matched["target"]))


def row_run(row: dict) -> str:
    """A suite row's run label, its `{steps}` filled in for a compute-matched row."""
    return row["run"].format(steps=steps(row["matched"])) if row.get("matched") else row["run"]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        raise ConfigError("usage: python -m lit_inheritune.matched SUITE ROW_NAME")
    suite, name = args
    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text()).get(suite)
    rows = [r for t in (spec or {}).get("tables", []) for r in t["rows"] if r["name"] == name and r.get("matched")]
    if not rows:
        raise ConfigError(f"suite {suite!r} has no compute-matched row named {name!r}")
    print(steps(rows[0]["matched"]))


if __name__ == "__main__":
    run_cli(main)
