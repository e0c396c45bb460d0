"""Re-judge a committed suite report from its own tables.json, where the runs themselves are not on this machine.

    python -m lit_inheritune.report.rejudge experiments/results/cpu_medium_16l

tables.json keeps every row's per-seed values, so the claim checks can be judged again under the current rules
(claims.judge_checks) and the current rows of paper/suites.yaml (a row added since shows as "not run"). Each
table's section of tables.md is rewritten in place; the header, the curves, the compute figures and the growth
section stay as the runs wrote them, and the header says what was re-judged, when and by which commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import yaml

from lit_inheritune.errors import ArgumentParser, ConfigError, run_cli
from lit_inheritune.matched import row_run
from lit_inheritune.paper import HERE as PAPER_DIR
from lit_inheritune.provenance import provenance
from lit_inheritune.report.claims import _paper_row, judge_checks, suite_markdown

_KEPT = ("ours", "seeds", "last_word_acc", "config_sha256", "not_run", "tokens", "flops", "cumulative_flops")


def _value_seeds(old: dict) -> list | None:
    """The seeds in the order of the row's values. Reports before `ours_seeds` listed the values in path order
    and the seeds sorted: the same order while every seed is a single digit (s1 < s2 < ... as text and number)."""
    if "ours_seeds" in old:
        return old["ours_seeds"]
    seeds = old.get("seeds") or []
    return seeds if len(seeds) == len(old["ours"]) and all(isinstance(s, int) and 0 <= s < 10 for s in seeds) else None


def _key(row: dict) -> tuple:
    """What fills a row: its run label, where on the curve and which of the label's seeds."""
    return row["run"], row.get("at_step"), tuple(row.get("only_seeds") or ())


def _find(row: dict, rows: dict) -> dict | None:
    """The old row with this row's values: the same key, or (a row that names `only_seeds` since) the old row of
    its label whose seeds are all among them."""
    if _key(row) in rows:
        return rows[_key(row)]
    old = rows.get((row["run"], row.get("at_step"), ()))
    only = row.get("only_seeds")
    return old if old and only and set(old.get("seeds") or ()) <= set(only) else None


def rejudged_tables(report: dict) -> list[dict]:
    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())[report["suite"]]
    old_tables = {t["id"]: t for t in report["tables"]}
    # a run can fill rows of several tables: a row new to one table takes the run's values from another
    anywhere = {_key(r): r for t in report["tables"] for r in t["rows"]}
    tables = []
    for table in spec["tables"]:
        if table["id"] not in old_tables:  # added to the suite since: it needs the runs (report --suite)
            continue
        old_rows = {_key(r): r for r in old_tables[table["id"]]["rows"]}
        rows = []
        for row in table["rows"]:
            row = {**row, "run": row_run(row)}
            old = _find(row, old_rows) or _find(row, anywhere)
            kept = {k: old[k] for k in _KEPT} if old else {
                "ours": [], "seeds": [], "last_word_acc": [], "config_sha256": [], "not_run": None,
                "tokens": None, "flops": None, "cumulative_flops": None}
            rows.append({"name": row["name"], "run": row["run"], "at_step": row.get("at_step"),
                         "only_seeds": row.get("only_seeds"), **kept,
                         "ours_seeds": _value_seeds(old) if old else [],
                         "mean": statistics.fmean(kept["ours"]) if kept["ours"] else None,
                         "paper": _paper_row(row["paper"]) if row.get("paper") else None})
        tables.append({"id": table["id"], "title": table["title"], "rows": rows,
                       "checks": judge_checks(table, rows), "old_title": old_tables[table["id"]]["title"]})
    return tables


def rejudge(out_dir: str | Path, command: str | None = None) -> Path:
    out_dir = Path(out_dir)
    report = json.loads((out_dir / "tables.json").read_text())
    md = (out_dir / "tables.md").read_text()
    tables = rejudged_tables(report)
    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())[report["suite"]]
    for table in tables:
        start = md.index(f"## {table.pop('old_title')}\n")
        end = md.index(f"\n![{table['id']} curves]", start)
        md = md[:start] + suite_markdown(table) + md[end:]
    # the suite's description heads the report and may have changed with its rows (write_suite's layout)
    title = f"# Paper tables: {report['suite']}\n\n"
    if md.startswith(title) and "\n- command: `" in md:
        md = title + spec["description"].strip() + "\n\n" + md[md.index("- command: `"):]
    prov = provenance(command)
    added = [t["id"] for t in spec["tables"] if t["id"] not in {t["id"] for t in tables}]
    note = (f"- verdicts re-judged from this report's tables.json by `{prov['command']}` at commit `{prov['commit']}`"
            f" ({prov['date']}): rows as the runs wrote them, checks under the current rules and suite rows"
            + (f"; the suite's tables added since ({', '.join(added)}) are not in this report: they need the runs "
               "(python -m lit_inheritune.report --suite)" if added else "") + "\n")
    md = "".join(line for line in md.splitlines(keepends=True) if not line.startswith("- verdicts re-judged"))
    marker = "\nCompute: tokens trained"
    md = md.replace(marker, note + marker, 1) if marker in md else md
    (out_dir / "tables.md").write_text(md)
    (out_dir / "tables.json").write_text(json.dumps({**report, "tables": tables, "rejudged": prov}, indent=2) + "\n")
    return out_dir / "tables.md"


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m lit_inheritune.report.rejudge", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report_dir", type=Path, help="a directory with tables.md and tables.json")
    args = parser.parse_args(argv)
    if not (args.report_dir / "tables.json").is_file():
        raise ConfigError(f"{args.report_dir} has no tables.json (written by python -m lit_inheritune.report --suite)")
    print(f"wrote {rejudge(args.report_dir)}")


if __name__ == "__main__":
    run_cli(main)
