"""The report's figures: our val loss curves beside the paper's official ones, growing runs over their whole
fit, and val loss against cumulative training FLOPs."""

from __future__ import annotations

import json
import statistics
import textwrap
from pathlib import Path

from lit_inheritune.paper import official_curves
from lit_inheritune.report.runs import _label_and_seed, row_runs, val_curve


def _fitted(title: str, width_inches: float, fontsize: float) -> str:
    """`title` broken into lines that fit the figure's width (a character is about 0.6 em wide)."""
    return textwrap.fill(title, max(20, int(width_inches * 72 / (0.6 * fontsize))))


def plot_compute(tables: list[dict], runs: list[dict], path: Path) -> Path | None:
    """Val loss against cumulative training FLOPs (the reference's included) for every row with curves, one panel
    per table: where a method's loss sits once its whole cost is counted. Mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []  # (table, [(label, xs, ys)]) for every table with a trained row
    for table in tables:
        lines = []
        for row in table["rows"]:
            if row["at_step"] or row["cumulative_flops"] is None or not row["flops"]:
                continue
            curves = [c for r in row_runs(row, runs) if (c := val_curve(r["dir"]))]
            if not curves:
                continue
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            run = next(r for r in row_runs(row, runs) if r.get("identity"))
            per_step = row["flops"] / run["identity"]["train"]["max_steps"]
            before = row["cumulative_flops"] - row["flops"]
            lines.append((row["name"], [before + per_step * s for s in steps],
                          [statistics.fmean(c[s] for c in curves) for s in steps]))
        if lines:
            panels.append((table, lines))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 4.2 * len(panels)), squeeze=False)
    for ax, (table, lines) in zip(axes[:, 0], panels):
        for label, xs, ys in lines:
            ax.plot(xs, ys, marker="o", markersize=2, label=label)
        ax.set_xscale("log")
        ax.set(xlabel="cumulative training FLOPs (reference included)", ylabel="val loss")
        ax.set_title(_fitted(table["title"], fig.get_figwidth(), 8), fontsize=8)
        bests = [min(ys) for _, _, ys in lines]
        ax.set_ylim(min(bests) - 0.05, min(bests) + 1.0)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle("Val loss against the compute spent to get there, one panel per table", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
        curves = [val_curve(r["dir"]) for r in row_runs(row, runs)]
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
                          label=paper.get("name", paper["run"].rsplit("/", 1)[-1]))
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
    fig.suptitle(_fitted(table["title"], fig.get_figwidth(), 10), fontsize=10)
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
        # without the stages' starting scores: at a boundary one would replace the last score of the stage before
        by_label.setdefault(label, []).append((val_curve(fit.parent, starts=False), json.loads(fit.read_text()),
                                               reference))
    # a fit of one stage did not grow: "growing runs" shows only fits with a stage after their first
    by_label = {k: v for k, v in by_label.items()
                if any(c for c, _, _ in v) and any(len(f.get("stages", [])) > 1 for _, f, _ in v)}
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
