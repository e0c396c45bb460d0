"""Collect an experiment group's finished runs into one table: mean +- std over seeds, never a made-up cell.

    python -m lit_inheritune.report outputs/cpu_medium_16l --out experiments/results/cpu_medium_16l \
        --expect scratch-L8-T2000 inheritune-n4-block-reinherit/round1-L4 scratch-L6-T1000

Every `result.json` below the group directory is one run (or one stage of a multi-stage run). Its row
label is its path inside the group with the seed suffix removed (`inheritune-n4-block-reinherit-s2/
round1-L4` -> `inheritune-n4-block-reinherit/round1-L4`), so the same stage of different seeds shares a row.
Rows named with --expect but absent show as missing; nothing is filled in.

With --suite (a key of paper/suites.yaml) it also writes the paper's tables for that group: each row ours
(mean +- std over seeds) beside the paper's number, the orderings the paper claims checked on both sides
(holds / fails / missing), and per table a PNG of our val loss curves beside the official ones:

    python -m lit_inheritune.report outputs/cpu_medium_16l --out experiments/results/cpu_medium_16l \
        --suite cpu_medium_16l
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from lit_inheritune.errors import ArgumentParser, ConfigError, run_cli
from lit_inheritune.paper import HERE as PAPER_DIR
from lit_inheritune.report.claims import write_suite
from lit_inheritune.report.runs import write_report


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m lit_inheritune.report", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group_dir", type=Path, help="outputs/<experiment name>")
    parser.add_argument("--out", type=Path, required=True, help="where runs.md and runs.json go")
    parser.add_argument("--expect", nargs="*", default=None, help="row labels to list, in order; absent = missing")
    parser.add_argument("--suite", default=None, help="also write the paper's tables (a key of paper/suites.yaml)")
    args = parser.parse_args(argv)
    if not args.group_dir.is_dir():
        raise ConfigError(f"{args.group_dir} is not a directory of runs (outputs/<experiment name>)")
    if next(args.group_dir.rglob("result.json"), None) is None:
        raise ConfigError(f"{args.group_dir} holds no finished run (no result.json below it): give the directory of "
                          "an experiment's runs, outputs/<experiment name>, once a run of it has finished")
    suites = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())
    if args.suite and args.suite not in suites:
        raise ConfigError(f"unknown --suite {args.suite!r}; known: {', '.join(sorted(suites))}")
    print(f"wrote {write_report(args.group_dir, args.out, args.expect)}")
    if args.suite:
        print(f"wrote {write_suite(args.group_dir, args.out, args.suite)}")


if __name__ == "__main__":
    run_cli(main)
