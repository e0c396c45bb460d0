"""Collect an experiment group's finished runs into one table: mean +- std over seeds, never a made-up cell.

    python -m lit_inheritune.report outputs/cpu_medium_16l --out experiments/results/cpu_medium_16l \
        --expect scratch-L8-T2000 inheritune-n4-block-reinherit/round1-L4 scratch-L6-T1000

Every `result.json` below the group directory is one run (or one stage of a multi-stage run). Its row
label is its path inside the group with the seed suffix removed (`inheritune-n4-block-reinherit-s2/
round1-L4` -> `inheritune-n4-block-reinherit/round1-L4`), so the same stage of different seeds shares a row.
Rows named with --expect but absent show as missing; nothing is filled in.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from lit_inheritune.provenance import provenance

_SEED = re.compile(r"-s(\d+)$")


def collect(group_dir: str | Path) -> list[dict]:
    """One dict per result.json: the result plus `label` (seedless path) and `seed`."""
    group_dir = Path(group_dir)
    rows = []
    for path in sorted(group_dir.rglob("result.json")):
        parts = list(path.parent.relative_to(group_dir).parts)
        seed = None
        for i, part in enumerate(parts):
            match = _SEED.search(part)
            if match:
                seed, parts[i] = int(match.group(1)), part[: match.start()]
        rows.append({**json.loads(path.read_text()), "label": "/".join(parts), "seed": seed})
    return rows


def summarize(rows: list[dict]) -> dict[str, dict]:
    """label -> layers, steps, seeds, val loss mean and sample std (None for one seed)."""
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row)
    summary = {}
    for label, runs in by_label.items():
        losses = [r["val_loss"] for r in runs]
        summary[label] = {
            "n_layer": runs[0]["n_layer"],
            "steps": runs[0]["steps"],
            "seeds": sorted(r["seed"] for r in runs if r["seed"] is not None),
            "val_loss_mean": statistics.fmean(losses),
            "val_loss_std": statistics.stdev(losses) if len(losses) > 1 else None,
            "wall_minutes": sum(r.get("wall_seconds", 0.0) for r in runs) / 60,
        }
    return summary


def markdown_table(summary: dict[str, dict], expect: list[str] | None = None) -> str:
    labels = list(expect) if expect else sorted(summary)
    lines = ["| run | layers | steps | seeds | val loss (mean +- std) | wall time (min, all seeds) |",
             "|---|---|---|---|---|---|"]
    for label in labels:
        s = summary.get(label)
        if s is None:
            lines.append(f"| {label} | | | 0 | missing | |")
            continue
        std = "" if s["val_loss_std"] is None else f" +- {s['val_loss_std']:.4f}"
        seeds = ",".join(map(str, s["seeds"])) or "-"
        lines.append(f"| {label} | {s['n_layer']} | {s['steps']} | {seeds} | {s['val_loss_mean']:.4f}{std} | "
                     f"{s['wall_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(group_dir: str | Path, out_dir: str | Path, expect: list[str] | None = None) -> Path:
    summary = summarize(collect(group_dir))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    header = "".join(f"- {k}: `{v}`\n" for k, v in prov.items())
    (out_dir / "runs.md").write_text(f"# Runs of {Path(group_dir).name}\n\n{header}\n{markdown_table(summary, expect)}")
    (out_dir / "runs.json").write_text(json.dumps({"provenance": prov, "runs": summary}, indent=2) + "\n")
    return out_dir / "runs.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("group_dir", type=Path, help="outputs/<experiment name>")
    parser.add_argument("--out", type=Path, required=True, help="where runs.md and runs.json go")
    parser.add_argument("--expect", nargs="*", default=None, help="row labels to list, in order; absent = missing")
    args = parser.parse_args(argv)
    if not args.group_dir.is_dir():
        raise SystemExit(f"error: {args.group_dir} is not a directory of runs")
    print(f"wrote {write_report(args.group_dir, args.out, args.expect)}")


if __name__ == "__main__":
    main()
