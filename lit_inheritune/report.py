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
import csv
import json
import math
import re
import statistics
from pathlib import Path

import yaml

from lit_inheritune.compute import cumulative_flops, stage_flops, tokens
from lit_inheritune.errors import ArgumentParser, ConfigError, run_cli
from lit_inheritune.paper import HERE as PAPER_DIR
from lit_inheritune.paper import official_curves, published
from lit_inheritune.provenance import provenance
from lit_inheritune.training.identity import IDENTITY_FILE, differences

_SEED = re.compile(r"-s(\d+)$")


def _label_and_seed(group_dir: Path, run_dir: Path) -> tuple[str, int | None]:
    parts = list(run_dir.relative_to(group_dir).parts)
    seed = None
    for i, part in enumerate(parts):
        match = _SEED.search(part)
        if match:
            seed, parts[i] = int(match.group(1)), part[: match.start()]
    return "/".join(parts), seed


def collect(group_dir: str | Path) -> list[dict]:
    """One dict per result.json: the result plus `label` (seedless path), `seed` and `dir`. A reference that
    was given rather than trained (a pretrained HF model, `method.reference.ckpt`) has no result.json; its val
    loss, measured on the run's own val windows, comes from the run's stages.json as `<run label>/reference`
    (dir: <run dir>/reference, where its `evaluate` results go)."""
    group_dir = Path(group_dir)
    rows = []
    for path in sorted(group_dir.rglob("result.json")):
        label, seed = _label_and_seed(group_dir, path.parent)
        identity = path.parent / IDENTITY_FILE
        rows.append({**json.loads(path.read_text()), "label": label, "seed": seed, "dir": str(path.parent),
                     "identity": json.loads(identity.read_text()) if identity.exists() else None})
    for path in sorted(group_dir.rglob("stages.json")):
        stages = json.loads(path.read_text())
        reference = stages["reference"]
        if "last_checkpoint" in reference:  # trained in this group: its own result.json is above
            continue
        label, seed = _label_and_seed(group_dir, path.parent)
        rows.append({**reference, "provenance": stages.get("provenance", {}), "label": f"{label}/reference",
                     "seed": seed, "dir": str(path.parent / "reference")})
    return rows


def val_curve(stage_dir: str | Path) -> dict[int, float]:
    """step -> val loss from a stage's CSV log. Lightning logs a validation at the 0-based index of the last
    training batch, so a row's step + 1 is the number of optimizer steps taken; a resumed run's repeated
    steps keep their last value."""
    path = Path(stage_dir) / "csv" / "metrics.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {int(r["step"]) + 1: float(r["val/loss"]) for r in csv.DictReader(f) if r.get("val/loss")}


def check_seeds_agree(rows: list[dict]) -> None:
    """The seeds of one row must differ in their seed only: a mean over runs made under other settings (an
    lr changed between seeds, another reference) would be a number of nothing."""
    first: dict[str, dict] = {}
    for row in rows:
        if row.get("identity") is None:
            continue  # made before identities were recorded
        unseeded = _without_seed(row["identity"])
        if row["label"] not in first:
            first[row["label"]] = {"seed": row["seed"], "identity": unseeded}
            continue
        diffs = differences(first[row["label"]]["identity"], unseeded)
        if diffs:
            key, a, b = diffs[0]
            raise ConfigError(f"the seeds of {row['label']} were made under different settings ({key}: {a} for seed "
                              f"{first[row['label']]['seed']}, {b} for seed {row['seed']}); rerun them alike or "
                              "report them under separate experiment names")


def _without_seed(identity: dict) -> dict:
    """A stage's identity less its own seed (the sweep variable), and less the seed of the earlier stage of the
    same run it builds on (`init.previous`: stacking's first stage, append growth's round before), which the
    sweep seeded too. Shared sources (the reference, a teacher) keep theirs."""
    unseeded = {**identity, "seed": None, "data": {**identity.get("data", {}), "seed": None}}
    init = identity.get("init") or {}
    if init.get("previous"):
        unseeded["init"] = {**init, "previous": _without_seed(init["previous"])}
    return unseeded


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
        steps = "" if s["steps"] is None else s["steps"]  # a given reference: loaded, not trained
        lines.append(f"| {label} | {s['n_layer']} | {steps} | {seeds} | {s['val_loss_mean']:.4f}{std} | "
                     f"{s['wall_minutes']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(group_dir: str | Path, out_dir: str | Path, expect: list[str] | None = None) -> Path:
    rows = collect(group_dir)
    check_seeds_agree(rows)
    summary = summarize(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    header = "".join(f"- {k}: `{v}`\n" for k, v in prov.items())
    (out_dir / "runs.md").write_text(f"# Runs of {Path(group_dir).name}\n\n{header}\n{markdown_table(summary, expect)}")
    (out_dir / "runs.json").write_text(json.dumps({"provenance": prov, "runs": summary}, indent=2) + "\n")
    return out_dir / "runs.md"


def _paper_row(path: str) -> dict:
    """A row of tables.yaml by dotted path, e.g. 'table1.large.3'."""
    node = published()
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node


def _ours(row: dict, runs: list[dict]) -> list[float]:
    """The row's val loss, one value per seed that has it (final, or read off the curve at `at_step`)."""
    values = []
    for run in runs:
        if run["label"] != row["run"]:
            continue
        if "at_step" in row:
            value = val_curve(run["dir"]).get(int(row["at_step"]))
            if value is not None:
                values.append(value)
        else:
            values.append(run["val_loss"])
    return values


def last_word_acc(stage_dir: str | Path) -> float | None:
    """Accuracy on the dataset's own last-word task (`evaluate tasks=[lastword]`) if the stage was evaluated:
    the CPU-scale stand-in for the paper's LAMBADA column."""
    path = Path(stage_dir) / "eval" / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())["results"]
    return next((r["acc,none"] for name, r in results.items() if name.startswith("lastword_")), None)


def _fmt_acc(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = f" +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{mean:.1f}{std} ({len(values)} seed{'s' if len(values) > 1 else ''})"


def _fmt(values: list[float]) -> str:
    if not values:
        return "missing"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


# A difference between our rows counts only when it exceeds the seeds' noise: more than NOISE_FACTOR times the
# pooled sample std over seeds, sqrt(mean of the two sides' variances). A side measured once (the shared
# reference) takes its noise from the other side; with one value on both sides the noise is unknown.
NOISE_FACTOR = 2.0


def claim_verdict(lhs: list[float], rhs: list[float]) -> dict:
    """Whether `lhs` is lower (better) than `rhs`: holds, fails, or a tie within the seeds' noise."""
    if not lhs or not rhs:
        return {"verdict": "missing", "margin": None, "noise": None}
    margin = statistics.fmean(rhs) - statistics.fmean(lhs)  # > 0: lhs is lower
    variances = [statistics.variance(v) for v in (lhs, rhs) if len(v) > 1]
    noise = NOISE_FACTOR * math.sqrt(statistics.fmean(variances)) if variances else None
    if noise is None:
        verdict = ("holds" if margin > 0 else "fails" if margin < 0 else "tie") + " (1 seed each: noise unknown)"
    else:
        verdict = "tie" if abs(margin) <= noise else "holds" if margin > 0 else "fails"
    return {"verdict": verdict, "margin": margin, "noise": noise}


def paper_verdict(lhs: float | None, op: str, rhs: float | None) -> str:
    """The paper's side: one published number a row, two decimals, so equal numbers are a tie for "<"."""
    if lhs is None or rhs is None:
        return "missing"
    if lhs == rhs:
        return "holds" if op == "<=" else "tie"
    return "holds" if lhs < rhs else "fails"


_ROUND = re.compile(r"^round(\d+)-L\d+$")


def _earlier_rounds(run: dict, runs: list[dict]) -> list[dict]:
    """Re-inherited Inheritune rounds do not build on the round before, but it had to be trained (and fall
    short) first: the identities of the earlier rounds of the same run."""
    me = _ROUND.match(Path(run["dir"]).name)
    if not me or (run["identity"].get("init") or {}).get("previous"):
        return []
    parent = Path(run["dir"]).parent
    return [r["identity"] for r in runs if r.get("identity") and Path(r["dir"]).parent == parent
            and (m := _ROUND.match(Path(r["dir"]).name)) and int(m.group(1)) < int(me.group(1))]


def rounds_not_needed(label: str, runs: list[dict]) -> str | None:
    """Why an Inheritune round has no result, when the reason is Algorithm 1 itself: every seed's fit stopped
    at an earlier round that matched the reference. None while any seed could still reach the round."""
    parent, _, stage = label.rpartition("/")
    wanted = _ROUND.match(stage)
    if not wanted:
        return None
    known = next((Path(r["dir"]).parent for r in runs if r["label"].startswith(parent + "/")), None)
    if known is None:
        return None
    # every seed's run on disk, finished or not (one still in round 1 has no round result yet)
    fits = [p for p in known.parent.iterdir()
            if p.is_dir() and re.fullmatch(re.escape(_SEED.sub("", known.name)) + r"-s\d+", p.name)]
    matched = {}
    for fit in fits:
        record = fit / "stages.json"
        rounds = json.loads(record.read_text())["stages"] if record.exists() else []
        first = next((st["stage"] for st in rounds if _ROUND.match(st["stage"]) and st.get("matched")), None)
        if first is None or int(_ROUND.match(first).group(1)) >= int(wanted.group(1)):
            return None
        matched.setdefault(first.split("-")[0], []).append(_label_and_seed(fit.parent, fit)[1])
    if not matched:
        return None
    return "not run: " + "; ".join(f"{stage} matched ({_seeds(seeds)})" for stage, seeds in sorted(matched.items()))


def _seeds(seeds) -> str:
    return f"seed{'s' * (len(seeds) > 1)} {','.join(map(str, sorted(seeds)))}"


def row_compute(row: dict, runs: list[dict]) -> dict:
    """Tokens, training FLOPs of the row's own stage and cumulative FLOPs with everything it was built from
    (compute.py), from the first seed's identity (the seeds agree on all but their seed); read off the curve
    at `at_step`, the row's own stage counts up to that step."""
    run = next((r for r in runs if r["label"] == row["run"] and r.get("identity")), None)
    if run is None:
        return {"tokens": None, "flops": None, "cumulative_flops": None}
    ident = run["identity"]
    own, total = stage_flops(ident), cumulative_flops(ident, _earlier_rounds(run, runs))
    fraction = int(row["at_step"]) / ident["train"]["max_steps"] if row.get("at_step") else 1.0
    if own is not None and total is not None:
        total -= own * (1 - fraction)
    return {"tokens": int(tokens(ident) * fraction), "flops": None if own is None else own * fraction,
            "cumulative_flops": total}


def suite_tables(suite: str, runs: list[dict]) -> list[dict]:
    """Every table of a suite as data: rows (ours per seed, paper number) and checks (verdicts both sides)."""
    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())[suite]
    tables = []
    for table in spec["tables"]:
        rows = []
        for row in table["rows"]:
            paper = _paper_row(row["paper"]) if row.get("paper") else None
            values = _ours(row, runs)
            rows.append({"name": row["name"], "run": row["run"], "at_step": row.get("at_step"),
                         "ours": values, "mean": statistics.fmean(values) if values else None,
                         "seeds": sorted(r["seed"] for r in runs if r["label"] == row["run"]),
                         "last_word_acc": [a for r in runs if r["label"] == row["run"] and not row.get("at_step")
                                           and (a := last_word_acc(r["dir"])) is not None],
                         "config_sha256": sorted({r["provenance"]["config_sha256"] for r in runs
                                                  if r["label"] == row["run"] and "config_sha256" in r.get(
                                                      "provenance", {})}),
                         "paper": paper,
                         "not_run": None if values else rounds_not_needed(row.get("needed_by", row["run"]), runs),
                         **row_compute(row, runs)})
        by_name = {r["name"]: r for r in rows}
        checks = []
        for check in table.get("checks", []):
            lhs, rhs = by_name[check["lhs"]], by_name[check["rhs"]]
            p_lhs, p_rhs = (by_name[n] for n in check.get("paper", [check["lhs"], check["rhs"]]))
            paper_value = lambda r: r["paper"]["val_loss"] if r["paper"] else None
            ours = claim_verdict(lhs["ours"], rhs["ours"])
            if ours["verdict"] == "missing" and (lhs["not_run"] or rhs["not_run"]):
                ours["verdict"] = lhs["not_run"] or rhs["not_run"]
            checks.append({"claim": check["claim"], "ours": ours["verdict"], "margin": ours["margin"],
                           "noise": ours["noise"],
                           "paper": paper_verdict(paper_value(p_lhs), check["op"], paper_value(p_rhs)),
                           "ours_values": [lhs["mean"], rhs["mean"]],
                           "paper_values": [paper_value(p_lhs), paper_value(p_rhs)]})
        tables.append({"id": table["id"], "title": table["title"], "rows": rows, "checks": checks})
    return tables


def suite_markdown(table: dict) -> str:
    # Downstream columns only where something was evaluated: our last-word accuracy beside the paper's LAMBADA
    evaluated = any(row["last_word_acc"] for row in table["rows"])
    head = " last-word acc %, ours | paper LAMBADA acc % |" if evaluated else ""
    lines = [f"## {table['title']}", "",
             "| row | our run | seeds | val loss, ours (mean +- std) | tokens | train FLOPs | cumulative FLOPs "
             "| paper row | paper val loss |" + head,
             "|---|---|---|---|---|---|---|---|---|" + "---|---|" * evaluated]
    for row in table["rows"]:
        run = row["run"] + (f" @ step {row['at_step']}" if row["at_step"] else "")
        seeds = ",".join(map(str, row["seeds"])) or "-"
        paper = row["paper"] or {}
        paper_name = paper.get("run", "").rsplit("/", 1)[-1] or paper.get("source") or "-"
        paper_loss = "-" if not paper else f"{paper['val_loss']:.2f}" if round(paper["val_loss"], 2) == paper[
            "val_loss"] else f"{paper['val_loss']:.4f}"
        line = (f"| {row['name']} | `{run}` | {seeds} | {row['not_run'] or _fmt(row['ours'])} | {_fmt_count(row['tokens'])} | "
                f"{_fmt_count(row['flops'])} | {_fmt_count(row['cumulative_flops'])} | {paper_name} | {paper_loss} |")
        if evaluated:
            line += f" {_fmt_acc(row['last_word_acc'])} | {paper.get('lambada_acc', '-')} |"
        lines.append(line)
    if table["checks"]:
        lines += ["", f"A claim holds at our scale only when the margin exceeds the noise ({NOISE_FACTOR:g} x the pooled "
                  "std over seeds); otherwise it is a tie.", "",
                  "| the paper's claim | ours | margin (rhs - lhs) | noise | paper |", "|---|---|---|---|---|"]
        num = lambda x: "-" if x is None else f"{x:+.4f}"
        for c in table["checks"]:
            noise = "-" if c["noise"] is None else f"{c['noise']:.4f}"
            lines.append(f"| {c['claim']} | {c['ours']} | {num(c['margin'])} | {noise} | {c['paper']} |")
    return "\n".join(lines) + "\n"


def _fmt_count(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}" if x < 1e6 else f"{x:.2e}"


COMPUTE_NOTE = ("Compute: tokens trained and training FLOPs = tokens x 3 x (2 x (12 L d^2 + d V) + 2 L T d) "
                "(matrices, the LM head and attention over the full context; KD adds the teacher's forward); "
                "cumulative FLOPs add everything the row was built from, once each: the reference's training, "
                "the earlier rounds or stage, read off the curve where the row is.")


def plot_compute(tables: list[dict], runs: list[dict], path: Path) -> Path | None:
    """Val loss against cumulative training FLOPs (the reference's included) for every row with curves:
    where a method's loss sits once its whole cost is counted. Mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    seen = set()
    for table in tables:
        for row in table["rows"]:
            if row["run"] in seen or row["at_step"] or row["cumulative_flops"] is None or not row["flops"]:
                continue
            seen.add(row["run"])
            curves = [c for r in runs if r["label"] == row["run"] and (c := val_curve(r["dir"]))]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            run = next(r for r in runs if r["label"] == row["run"] and r.get("identity"))
            per_step = row["flops"] / run["identity"]["train"]["max_steps"]
            before = row["cumulative_flops"] - row["flops"]
            ax.plot([before + per_step * s for s in steps], [statistics.fmean(c[s] for c in curves) for s in steps],
                    marker="o", markersize=2, label=row["name"])
    if not ax.lines:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set(xlabel="cumulative training FLOPs (reference included)", ylabel="val loss",
           title="Val loss against the compute spent to get there")
    bests = [min(line.get_ydata()) for line in ax.lines]
    ax.set_ylim(min(bests) - 0.05, min(bests) + 1.0)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def growth_cost(group_dir: Path, runs: list[dict]) -> list[str]:
    """For every Inheritune run of the group: the round that first matched the reference and the cumulative
    FLOPs spent to get there (mean over seeds), so append and reinherit growth can be set side by side."""
    by_run: dict[str, list[tuple[int, str | None, float | None]]] = {}
    for path in sorted(Path(group_dir).rglob("stages.json")):
        stages = json.loads(path.read_text())["stages"]
        rounds = [st for st in stages if _ROUND.match(st["stage"])]
        if not rounds:
            continue
        label, seed = _label_and_seed(Path(group_dir), path.parent)
        matched = next((st for st in rounds if st.get("matched")), None)
        cost = None
        if matched:
            row = next((r for r in runs if r["dir"] == str(path.parent / matched["stage"]) and r.get("identity")), None)
            cost = cumulative_flops(row["identity"], _earlier_rounds(row, runs)) if row else None
        by_run.setdefault(label, []).append((seed, matched["stage"] if matched else None, cost))
    lines = []
    for label, entries in by_run.items():
        reached = [c for _, stage, c in entries if stage and c is not None]
        outcomes: dict[str, list[int]] = {}  # seeds can disagree: say which seed matched where
        for seed, stage, _ in entries:
            outcomes.setdefault(stage or "not reached", []).append(seed)
        rounds = "; ".join(f"{stage} ({_seeds(seeds)})" for stage, seeds in sorted(outcomes.items()))
        cost = f"{statistics.fmean(reached):.2e} FLOPs (mean of {len(reached)})" if reached else "-"
        lines.append(f"| `{label}` | {len(entries)} | {rounds} | {cost} |")
    if not lines:
        return []
    at_once = [f"`{label}`" for label, entries in by_run.items()
               if all(stage and stage.startswith("round1-") for _, stage, _ in entries)]
    note = ["", f"Round 1 matched the reference in every seed of {', '.join(at_once)}: no growth round ran there, "
            "so append, reinherit and carry-optimizer growth (which differ from round 2 on) would cost the same."] \
        if at_once else []
    return ["## Compute to match the reference", "",
            "| Inheritune run | seeds | first matching round | cumulative FLOPs to get there |",
            "|---|---|---|---|", *lines, *note, ""]


def plot_curves(table: dict, runs: list[dict], path: Path) -> Path:
    """Our val loss curves (mean over seeds, band = min..max) beside the paper's official curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    official = official_curves()
    with_paper = any((row["paper"] or {}).get("run") in official for row in table["rows"])
    fig, axes = plt.subplots(1, 2 if with_paper else 1, figsize=(12 if with_paper else 7, 4.5), squeeze=False)
    ax_ours, ax_paper = axes[0][0], axes[0][-1]
    for i, row in enumerate(table["rows"]):  # a row has the same colour in both panels
        curves = [val_curve(r["dir"]) for r in runs if r["label"] == row["run"]]
        curves = [c for c in curves if c]
        if curves:
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            values = [[c[s] for c in curves] for s in steps]
            seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
            ax_ours.plot(steps, [statistics.fmean(v) for v in values], color=f"C{i}", label=f"{row['name']} ({seeds})")
            if len(curves) > 1:
                ax_ours.fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=f"C{i}",
                                     alpha=0.2)
        elif row["mean"] is not None and not row["at_step"]:  # a given reference: measured once, not trained
            ax_ours.axhline(row["mean"], color=f"C{i}", linestyle="--", label=f"{row['name']} (not trained here)")
        paper = row["paper"]
        if paper and paper.get("run") in official:
            points = [p for p in official[paper["run"]] if p["step"] > 0]
            ax_paper.plot([p["step"] for p in points], [p["val_loss"] for p in points], color=f"C{i}",
                          label=f"{row['name']}: {paper['run'].rsplit('/', 1)[-1]}")
    ax_ours.set(title="ours (CPU scale)", xlabel="step", ylabel="val loss")
    if with_paper:
        ax_paper.set(title="paper (official curves)", xlabel="step", ylabel="val loss")
    for ax in {ax_ours, ax_paper}:
        if ax.lines:
            ax.legend(fontsize=7)
            bests = [min(line.get_ydata()) for line in ax.lines]
            # The interesting end, where every curve's best value shows; warmup losses would flatten it.
            ax.set_ylim(min(bests) - 0.05, max(min(bests) + 1.0, max(bests) + 0.5))
        else:  # say so: a blank panel reads as a plotting failure
            ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", fontsize=14,
                    color="grey")
        ax.grid(alpha=0.3)
    fig.suptitle(table["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_growth(group_dir: Path, path: Path) -> Path | None:
    """Every growing run of the group (one fit, several stages: Inheritune's rounds, stacking) as one val loss
    curve over its whole fit, mean over seeds, with a dotted line at each stage boundary and, for Inheritune,
    the reference's val loss (the bar growth must clear)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label: dict[str, list[tuple[dict, dict, dict | None]]] = {}
    for fit in sorted(Path(group_dir).rglob("fit.json")):
        stages_file = fit.parent / "stages.json"
        reference = json.loads(stages_file.read_text())["reference"] if stages_file.exists() else None
        label, _ = _label_and_seed(Path(group_dir), fit.parent)
        by_label.setdefault(label, []).append((val_curve(fit.parent), json.loads(fit.read_text()), reference))
    by_label = {k: v for k, v in by_label.items() if any(c for c, _, _ in v)}
    if not by_label:
        return None
    fig, axes = plt.subplots(len(by_label), 1, figsize=(8, 3.2 * len(by_label)), squeeze=False)
    for ax, (label, entries) in zip(axes[:, 0], sorted(by_label.items())):
        curves = [c for c, _, _ in entries if c]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], marker="o", markersize=2,
                label=f"{label} ({len(curves)} seed{'s' if len(curves) > 1 else ''})")
        longest = max(entries, key=lambda e: len(e[1].get("stages", [])))
        names = longest[1].get("stages", [])
        stage_steps = longest[1]["steps"] // max(1, len(names)) if names else None
        for i, name in enumerate(names):
            if i:
                ax.axvline(i * stage_steps, color="grey", linestyle=":", linewidth=1)
            ax.text((i + 0.5) * stage_steps, 1.0, name, transform=ax.get_xaxis_transform(), ha="center",
                    va="bottom", fontsize=7)
        refs = [r["val_loss"] for _, _, r in entries if r]
        if refs:
            ax.axhline(statistics.fmean(refs), color="C3", linestyle="--", label="reference")
        values = [v for c in curves for v in c.values()]
        ax.set_ylim(min(values) - 0.05, min(values) + 1.0)
        ax.set(xlabel="step of the run's fit", ylabel="val loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("Growing runs: one fit, stage boundaries dotted", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_suite(group_dir: str | Path, out_dir: str | Path, suite: str, command: str | None = None) -> Path:
    """The paper's tables for a group: tables.md, tables.json and one curves PNG per table."""
    runs = collect(group_dir)
    check_seeds_agree(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = suite_tables(suite, runs)
    prov = provenance(command)
    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())[suite]
    trained = sorted({r["provenance"]["commit"] for r in runs if "provenance" in r})
    unrecorded = sum("provenance" not in r for r in runs)
    header = "".join(f"- {k}: `{v}`\n" for k, v in prov.items())
    header += f"- runs trained at commit(s): {', '.join(f'`{c}`' for c in trained) or '-'}"
    header += f" ({unrecorded} of {len(runs)} runs predate recording it)\n" if unrecorded else "\n"
    wall = sum(r.get("wall_seconds", 0.0) for r in runs) / 3600
    header += f"- wall time of all runs in the group: {wall:.2f} h\n"
    parts = [f"# Paper tables: {suite}\n", spec["description"].strip() + "\n", header]
    parts.append(COMPUTE_NOTE + "\n")
    for table in tables:
        png = plot_curves(table, runs, out_dir / f"{table['id']}_curves.png")
        parts.append(suite_markdown(table) + f"\n![{table['id']} curves]({png.name})\n")
    parts += growth_cost(Path(group_dir), runs)
    growth_png = plot_growth(Path(group_dir), out_dir / "growth_curves.png")
    if growth_png:
        parts.append(f"![growing runs, stage boundaries marked]({growth_png.name})\n")
    compute_png = plot_compute(tables, runs, out_dir / "compute_curves.png")
    if compute_png:
        parts.append(f"![val loss against cumulative FLOPs]({compute_png.name})\n")
    (out_dir / "tables.md").write_text("\n".join(parts))
    (out_dir / "tables.json").write_text(json.dumps({"provenance": prov, "suite": suite, "tables": tables},
                                                     indent=2) + "\n")
    return out_dir / "tables.md"


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
    suites = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())
    if args.suite and args.suite not in suites:
        raise ConfigError(f"unknown --suite {args.suite!r}; known: {', '.join(sorted(suites))}")
    print(f"wrote {write_report(args.group_dir, args.out, args.expect)}")
    if args.suite:
        print(f"wrote {write_suite(args.group_dir, args.out, args.suite)}")


if __name__ == "__main__":
    run_cli(main)
