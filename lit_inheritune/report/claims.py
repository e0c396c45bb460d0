"""The paper's tables for a group (paper/suites.yaml): each row ours beside the paper's number, the orderings
the paper claims checked on both sides, the compute each row cost, and tables.md / tables.json."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import yaml

from lit_inheritune.compute import cumulative_flops, stage_flops, tokens
from lit_inheritune.matched import row_run
from lit_inheritune.methods import method_by_name, seeds_text
from lit_inheritune.paper import HERE as PAPER_DIR
from lit_inheritune.paper import official_curves, paper_name, published
from lit_inheritune.provenance import provenance
from lit_inheritune.report.plots import plot_compute, plot_curves, plot_growth
from lit_inheritune.report.runs import (
    _SEED,
    _label_and_seed,
    check_seeds_agree,
    collect,
    last_word_acc,
    row_runs,
    val_curve,
)
from lit_inheritune.report.stats import ALPHA, compare
from lit_inheritune.training.identity import IDENTITY_FILE


def _paper_row(path: str) -> dict:
    """A row of tables.yaml by dotted path, e.g. 'table1.large.3', with the name the paper gives it."""
    node = published()
    for key in path.split("."):
        node = node[int(key)] if isinstance(node, list) else node[key]
    return {**node, "name": paper_name(path)}


def _ours(row: dict, runs: list[dict]) -> tuple[list[float], list]:
    """The row's val loss, one value per seed that has it (final, or read off the curve at `at_step`), and those
    seeds in the same order (a paired test matches them)."""
    values, seeds = [], []
    for run in row_runs(row, runs):
        if "at_step" in row:
            value = val_curve(run["dir"]).get(int(row["at_step"]))
            if value is not None:
                values.append(value)
                seeds.append(run["seed"])
        else:
            values.append(run["val_loss"])
            seeds.append(run["seed"])
    return values, seeds


def _fmt_acc(values: list[float]) -> str:
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    std = f" +- {100 * statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{mean:.1f}{std} ({len(values)} seed{'s' if len(values) > 1 else ''})"


def _fmt(values: list[float]) -> str:
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.fmean(values):.4f} +- {statistics.stdev(values):.4f}"


def claim_verdict(lhs: list[float], rhs: list[float], lhs_seeds: list | None = None,
                  rhs_seeds: list | None = None) -> dict:
    """Whether `lhs` is lower (better) than `rhs`: holds or fails when the difference is significant (stats.py:
    the test that fits what was measured, two-sided, p < ALPHA), a tie otherwise; untested with one value each."""
    if not lhs or not rhs:
        return {"verdict": "missing", "margin": None, "test": None, "p": None}
    margin = statistics.fmean(rhs) - statistics.fmean(lhs)  # > 0: lhs is lower
    result = compare(lhs, rhs, lhs_seeds, rhs_seeds)
    direction = "holds" if margin > 0 else "fails" if margin < 0 else "tie"
    if result is None:
        return {"verdict": f"{direction} (1 seed each: untested)", "margin": margin, "test": None, "p": None}
    return {"verdict": direction if result["p"] < ALPHA else "tie", "margin": margin, "test": result["test"],
            "p": result["p"], "t": result["t"], "df": result["df"]}


# The paper gives one number a row, so its own noise comes from its official curves: the spread of the last
# PAPER_NOISE_EVALS evaluations (up to the published step) about a straight line through them, which leaves out
# the curve's slow trend. With two decimals printed, a published gap of 0.01 is often inside it.
PAPER_NOISE_EVALS = 10


def paper_noise(row: dict | None) -> float | None:
    """The eval-to-eval noise of a published row's official curve (None without one): the residual sample std about
    a least-squares line through its last PAPER_NOISE_EVALS evaluations at or before the row's step."""
    curve = official_curves().get((row or {}).get("run", ""), [])
    last = [p for p in curve if p["step"] <= row.get("steps", math.inf)][-PAPER_NOISE_EVALS:] if curve else []
    if len(last) < 3:
        return None
    steps, losses = [p["step"] for p in last], [p["val_loss"] for p in last]
    slope, intercept = statistics.linear_regression(steps, losses)
    residuals = [v - (slope * s + intercept) for s, v in zip(steps, losses)]
    return math.sqrt(sum(r * r for r in residuals) / (len(residuals) - 2))


def paper_verdict(lhs: float | None, op: str, rhs: float | None, noise: float | None = None) -> str:
    """The paper's side: one published number a row, two decimals, so equal numbers are a tie for "<"; a difference
    no larger than `noise` (the noise of their difference, pooled_paper_noise) is within the paper's noise."""
    if lhs is None or rhs is None:
        return "missing"
    if lhs == rhs:
        return "holds" if op == "<=" else "tie"
    if noise is not None and abs(lhs - rhs) <= noise:
        return "within the paper's noise"
    return "holds" if lhs < rhs else "fails"


def pooled_paper_noise(a: dict | None, b: dict | None) -> float | None:
    """The noise of the difference of two rows' published numbers: each curve's own noise, added in quadrature."""
    noises = [paper_noise(a), paper_noise(b)]
    return None if None in noises else math.sqrt(sum(n * n for n in noises))


def _method(record: dict | None):
    """The method class that made a run record's stage (None for a stage that names no method: a scratch run, the
    reference, stacking's first stage)."""
    name = ((((record or {}).get("identity") or {}).get("init") or {}).get("method") or {}).get("name")
    return method_by_name(name) if name else None


def _run_method(run_dir: Path, stages: list[dict]):
    """The method of a run directory's stages (stages.json), read from the first stage identity on disk."""
    for stage in stages:
        path = run_dir / stage["stage"] / IDENTITY_FILE
        if path.is_file():
            cls = _method({"identity": json.loads(path.read_text())})
            if cls:
                return cls
    return None


def _earlier_stages(run: dict, runs: list[dict]) -> list[dict]:
    """Identities of the stages of the same run that had to be trained before this one though its identity does not
    nest them (the method says which: Inheritune's re-inherited rounds)."""
    cls = _method(run)
    if cls is None:
        return []
    parent = Path(run["dir"]).parent
    siblings = {Path(r["dir"]).name: r["identity"] for r in runs
                if r.get("identity") and Path(r["dir"]).parent == parent and r["dir"] != run["dir"]}
    return cls.earlier_stages(Path(run["dir"]).name, run["identity"], siblings)


def not_run_reason(label: str, runs: list[dict]) -> str | None:
    """Why a stage has no result, when the reason is its method's own decision (Algorithm 1 stopped at an earlier
    round that matched the reference in every seed); None while any seed could still reach it."""
    parent, _, stage = label.rpartition("/")
    sibling = next((r for r in runs if r["label"].startswith(parent + "/") and _method(r)), None)
    if sibling is None:
        return None
    known = Path(sibling["dir"]).parent
    # every seed's run on disk, finished or not (one still in its first stage has no stage record yet)
    fits = []
    for fit in sorted(known.parent.iterdir()):
        if fit.is_dir() and re.fullmatch(re.escape(_SEED.sub("", known.name)) + r"-s\d+", fit.name):
            record = fit / "stages.json"
            fits.append((_label_and_seed(fit.parent, fit)[1],
                         json.loads(record.read_text())["stages"] if record.exists() else []))
    return _method(sibling).not_run_reason(stage, fits) if fits else None


def row_compute(row: dict, runs: list[dict]) -> dict:
    """Tokens, training FLOPs of the row's own stage and cumulative FLOPs with everything it was built from
    (compute.py), from the first seed's identity (the seeds agree on all but their seed); read off the curve
    at `at_step`, the row's own stage counts up to that step."""
    run = next((r for r in row_runs(row, runs) if r.get("identity")), None)
    if run is None:
        return {"tokens": None, "flops": None, "cumulative_flops": None}
    ident = run["identity"]
    own, total = stage_flops(ident), cumulative_flops(ident, _earlier_stages(run, runs))
    fraction = int(row["at_step"]) / ident["train"]["max_steps"] if row.get("at_step") else 1.0
    if own is not None and total is not None:
        total -= own * (1 - fraction)
    return {"tokens": int(tokens(ident) * fraction), "flops": None if own is None else own * fraction,
            "cumulative_flops": total}


def judge_checks(table: dict, rows: list[dict]) -> list[dict]:
    """A suite table's checks (paper/suites.yaml) judged on its rows: ours by the test (claim_verdict), the
    paper's against its official curves' noise (paper_verdict)."""
    by_name = {r["name"]: r for r in rows}
    checks = []
    for check in table.get("checks", []):
        lhs, rhs = by_name[check["lhs"]], by_name[check["rhs"]]
        p_lhs, p_rhs = (by_name[n] for n in check.get("paper", [check["lhs"], check["rhs"]]))
        paper_value = lambda r: r["paper"]["val_loss"] if r["paper"] else None
        ours = claim_verdict(lhs["ours"], rhs["ours"], lhs.get("ours_seeds"), rhs.get("ours_seeds"))
        if ours["verdict"] == "missing":  # as its rows read: not run, with the method's reason where it has one
            ours["verdict"] = lhs["not_run"] or rhs["not_run"] or "not run"
        noise = pooled_paper_noise(p_lhs["paper"], p_rhs["paper"])
        paper = paper_verdict(paper_value(p_lhs), check["op"], paper_value(p_rhs), noise)
        if noise is None and paper != "missing":  # v4 Table 4 and others published without a curve
            paper += " (no official curve: noise unknown)"
        checks.append({"claim": check["claim"], "ours": ours["verdict"], "margin": ours["margin"],
                       "test": ours["test"], "p": ours["p"], "paper": paper,
                       "paper_noise": noise,
                       "ours_values": [lhs["mean"], rhs["mean"]],
                       "paper_values": [paper_value(p_lhs), paper_value(p_rhs)]})
    return checks


def suite_tables(suite: str, runs: list[dict]) -> list[dict]:
    """Every table of a suite as data: rows (ours per seed, paper number) and checks (verdicts both sides)."""
    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())[suite]
    tables = []
    for table in spec["tables"]:
        rows = []
        for row in table["rows"]:
            row = {**row, "run": row_run(row)}
            paper = _paper_row(row["paper"]) if row.get("paper") else None
            values, value_seeds = _ours(row, runs)
            mine = row_runs(row, runs)
            rows.append({"name": row["name"], "run": row["run"], "at_step": row.get("at_step"),
                         "only_seeds": row.get("only_seeds"),
                         "ours": values, "ours_seeds": value_seeds, "mean": statistics.fmean(values) if values else None,
                         "seeds": sorted(r["seed"] for r in mine),
                         "last_word_acc": [a for r in mine if not row.get("at_step")
                                           and (a := last_word_acc(r["dir"])) is not None],
                         "config_sha256": sorted({r["provenance"]["config_sha256"] for r in mine
                                                  if "config_sha256" in r.get("provenance", {})}),
                         "paper": paper,
                         "not_run": None if values else not_run_reason(row.get("needed_by", row["run"]), runs),
                         **row_compute(row, runs)})
        checks = judge_checks(table, rows)
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
        paper_label = paper.get("name") or paper.get("run", "").rsplit("/", 1)[-1] or paper.get("source") or "-"
        paper_loss = "-" if not paper else f"{paper['val_loss']:.2f}" if round(paper["val_loss"], 2) == paper[
            "val_loss"] else f"{paper['val_loss']:.4f}"
        line = (f"| {row['name']} | `{run}` | {seeds} | {row['not_run'] or _fmt(row['ours'])} | {_fmt_count(row['tokens'])} | "
                f"{_fmt_count(row['flops'])} | {_fmt_count(row['cumulative_flops'])} | {paper_label} | {paper_loss} |")
        if evaluated:
            line += f" {_fmt_acc(row['last_word_acc'])} | {paper.get('lambada_acc', '-')} |"
        lines.append(line)
    if table["checks"]:
        lines += ["", TEST_NOTE, "",
                  "| the paper's claim | ours | margin (rhs - lhs) | test | p | paper | paper gap | paper noise |",
                  "|---|---|---|---|---|---|---|---|"]
        num = lambda x: "-" if x is None else f"{x:+.4f}"
        for c in table["checks"]:
            p = "-" if c["p"] is None else f"{c['p']:.2g}"
            noise = "-" if c.get("paper_noise") is None else f"{c['paper_noise']:.4f}"
            gap = "-" if None in c["paper_values"] else f"{c['paper_values'][1] - c['paper_values'][0]:+.2f}"
            lines.append(f"| {c['claim']} | {c['ours']} | {num(c['margin'])} | {c['test'] or '-'} | {p} | "
                         f"{c['paper']} | {gap} | {noise} |")
    return "\n".join(lines) + "\n"


def _fmt_count(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}" if x < 1e6 else f"{x:.2e}"


TEST_NOTE = (f"Ours: a claim holds (or fails) only when the difference is significant, two-sided p < {ALPHA:g}, by the "
             "test named in its row: a paired t-test by seed where both rows ran the same seeds (a seed fixes the "
             "training batches), Welch's t-test otherwise, and a one-sample t-test of the other row against a row "
             "measured once (the single run taken as exact: its own seed-to-seed variance is not counted); "
             "otherwise it is a tie, and with one value on each side it is untested. Paper: one published number a "
             "row; a gap (rhs - lhs) no larger than the paper noise, the pooled residual std of each official curve's "
             f"last {PAPER_NOISE_EVALS} evaluations about a straight line, reads \"within the paper's noise\".")


COMPUTE_NOTE = ("Compute: tokens trained and training FLOPs = tokens x 3 x (2 x (12 L d^2 + d V) + 2 L T d) "
                "(matrices, the LM head and attention over the full context; KD adds the teacher's forward); "
                "cumulative FLOPs add everything the row was built from, once each: the reference's training, "
                "the earlier rounds or stage, read off the curve where the row is.")


def growth_cost(group_dir: Path, runs: list[dict]) -> list[str]:
    """For every run of the group whose method grows until a stage meets its bar (Inheritune's rounds): the stage
    that first met it and the cumulative FLOPs spent to get there (mean over seeds), so ways of growing can be set
    side by side."""
    by_run: dict[str, list[tuple[int, str | None, float | None]]] = {}
    methods = {}
    for path in sorted(Path(group_dir).rglob("stages.json")):
        stages = json.loads(path.read_text())["stages"]
        cls = _run_method(path.parent, stages)
        outcome = cls.growth_outcome(stages) if cls else None
        if not outcome:
            continue
        label, seed = _label_and_seed(Path(group_dir), path.parent)
        methods[label] = (cls, outcome["stages"][0]["stage"])
        matched = outcome["matched"]
        cost = None
        if matched:
            row = next((r for r in runs if r["dir"] == str(path.parent / matched["stage"]) and r.get("identity")), None)
            cost = cumulative_flops(row["identity"], _earlier_stages(row, runs)) if row else None
        by_run.setdefault(label, []).append((seed, matched["stage"] if matched else None, cost))
    lines = []
    for label, entries in by_run.items():
        reached = [c for _, stage, c in entries if stage and c is not None]
        outcomes: dict[str, list[int]] = {}  # seeds can disagree: say which seed matched where
        for seed, stage, _ in entries:
            outcomes.setdefault(stage or "not reached", []).append(seed)
        stages = "; ".join(f"{stage} ({seeds_text(seeds)})" for stage, seeds in sorted(outcomes.items()))
        cost = f"{statistics.fmean(reached):.2e} FLOPs (mean of {len(reached)})" if reached else "-"
        lines.append(f"| `{label}` | {len(entries)} | {stages} | {cost} |")
    if not lines:
        return []
    notes = []
    for cls in dict.fromkeys(cls for cls, _ in methods.values()):
        at_once = [f"`{label}`" for label, entries in by_run.items() if methods[label][0] is cls
                   and all(stage == methods[label][1] for _, stage, _ in entries)]
        note = cls.first_stage_note(at_once) if at_once else None
        notes += ["", note] if note else []
    return ["## Compute to match the reference", "",
            "| growing run | seeds | first stage to match | cumulative FLOPs to get there |",
            "|---|---|---|---|", *lines, *notes, ""]


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
