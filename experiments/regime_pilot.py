"""Regime pilot (issue #15): where does the paper's premise hold at CPU scale?

The premise: a k-layer reference beats a k/2-layer model trained from scratch for the same steps (the
paper: by 0.05 nats for Medium, 0.12 for Large). Each pilot config trains that pair with `method=scratch`
under one set of overrides, one process per run on one thread, and this script tabulates and plots them.

    python experiments/regime_pilot.py run [--jobs 2] [--configs shape_4v2,steps_bs8] [--seeds 1,2,3]
    python experiments/regime_pilot.py run --fallback [--jobs 2]
    python experiments/regime_pilot.py report --out experiments/results/regime
    python experiments/regime_pilot.py report --configs lr3e-3_4v2 --out experiments/results/regime/lr3e-3_4v2
                                                  # a follow-up: configs run after the pilot, on their own
    python experiments/regime_pilot.py measured   # the findings section only, from the committed pilot.json

Runs live in <LIT_INHERITUNE_ROOT>/outputs/regime_<config>/ like any other run (resumable, skipped when done).

The choice rule, fixed before any Inheritune result in the new regime is looked at (issue #15):
  the cheapest config whose k-layer model beats the k/2-layer model at equal steps by
  gap = mean(k/2) - mean(k) >= 0.05 nats AND gap > 3 x pooled std over seeds (sqrt((s_k^2 + s_half^2) / 2),
  at least 2 seeds each), and whose estimated suite time fits in 8 h on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(os.environ.get("LIT_INHERITUNE_ROOT", Path(__file__).resolve().parents[1]))
PY = os.environ.get("PY", sys.executable)

# name -> (k, steps, overrides, hypothesis). Every config keeps the paper's model (1/(l+1) scale on) unless
# its name says otherwise; the CPU suite's defaults are d=128, 4 heads, ctx 128, BPE-4096, batch 32,
# lr 1e-3 -> 1e-4, warmup 50.
BASE = ["data=embedded", "model=cpu_reference", "optim.lr=1e-3", "optim.min_lr=1e-4", "optim.warmup_steps=50"]
CONFIGS: dict[str, tuple[int, int, list[str], str]] = {
    "base_8v4": (8, 1000, [], "the old twin (after the weight-decay fix), for reference"),
    "shape_4v2": (4, 1000, [], "(c) shape: d/L = 32 at k=4, as the paper's references (33-43)"),
    "steps_bs8_8v4": (8, 4000, ["data.batch_size=8", "train.val_every_n_steps=400", "optim.warmup_steps=200"],
                      "(b) 4x the optimizer steps at the same tokens (batch 8)"),
    "lr3e-3_8v4": (8, 1000, ["optim.lr=3e-3", "optim.min_lr=3e-4"], "(d) 3x the learning rate"),
    "steps_bs8_4v2": (4, 4000, ["data.batch_size=8", "train.val_every_n_steps=400", "optim.warmup_steps=200"],
                      "(b)+(c) d/L = 32 and 4x the steps at the same tokens"),
    "lr3e-3_4v2": (4, 1000, ["optim.lr=3e-3", "optim.min_lr=3e-4"], "(c)+(d) d/L = 32 and 3x the learning rate"),
}

# The issue's fallback when no config meets the rule: keep the twin (k = 8, T = 500 steps per variant) and train
# its reference as many steps as it needs to beat the k/2-layer scratch model trained 2T by at least 0.05 nats
# (and by more than 3 x that model's std over seeds). Candidate reference budgets: 2T (today's), 3T, 4T.
FALLBACK = {"name": "fallback_8v4", "k": 8, "T": 500, "ref_steps": [1000, 1500, 2000], "ref_seed": 0,
            "half_seeds": [1, 2]}

# Groups whose runs are a config's runs too (same overrides, depth and steps): the fallback's 8L and 4L runs at
# 1000 steps are base_8v4's pair.
SAME_RUNS = {"base_8v4": ["fallback_8v4"]}

# The suite of issue #15 item 2 in units of one k/2-layer run of T steps, an estimate for the cost rule:
# Table 1 Large-like (3 seeds x round 1, scratch T, 2T = 12), Medium-like growth (3 x (2 rounds + scratch T, 2T
# at up to 2k/3 depth) ~ 19), Table 2 (~9), Table 3 (9), KD (~5 with the teacher's forward), lazy transfer
# (2 policies x 3 block sets + random = 7), plus three k-layer references (~2 units each).
SUITE_HALF_RUNS = 65
SUITE_REFERENCES = 3
# The machine's training rate, from CPU_SCALE.md's uncontended measurement: the 8L d=128 twin at 5.85K tok/s on
# 2 threads, x 1.15 for two 1-thread runs at a time. The pilot's own run times are not used for the estimate:
# they were taken beside other work on the machine.
MACHINE_FLOPS_PER_SEC = 5850 * 13.37e6 * 1.15


def jobs(configs: list[str], seeds: list[int]) -> list[list[str]]:
    out = []
    for name in configs:
        k, steps, overrides, _ = CONFIGS[name]
        for n_layer in (k, k // 2):
            for seed in seeds:
                out.append(["-m", "lit_inheritune", *BASE, "method=scratch", f"name=regime_{name}",
                            f"model.n_layer={n_layer}", f"train.max_steps={steps}", f"seed={seed}", *overrides,
                            "trainer.enable_progress_bar=false", "logger=csv", "resume=true"])
    return out


def fallback_jobs() -> list[list[str]]:
    f = FALLBACK
    common = [*BASE, "method=scratch", f"name=regime_{f['name']}", "trainer.enable_progress_bar=false",
              "logger=csv", "resume=true"]
    half = [["-m", "lit_inheritune", *common, f"model.n_layer={f['k'] // 2}", f"train.max_steps={2 * f['T']}",
             f"seed={s}"] for s in f["half_seeds"]]
    deep = [["-m", "lit_inheritune", *common, f"model.n_layer={f['k']}", f"train.max_steps={steps}",
             f"seed={f['ref_seed']}"] for steps in f["ref_steps"]]
    return half + deep


def _run(args: list[str]) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    print("+ python", " ".join(args), flush=True)
    return subprocess.run([PY, *args], env=env).returncode


def run(job_list: list[list[str]], n_jobs: int) -> None:
    with ThreadPoolExecutor(n_jobs) as pool:
        codes = list(pool.map(_run, job_list))
    if any(codes):
        sys.exit(f"error: {sum(1 for c in codes if c)} pilot run(s) failed")


def collect() -> dict:
    """config -> {"k": ..., "runs": {n_layer: [result dicts]}} from whatever has finished."""
    from lit_inheritune.report import val_curve

    data = {}
    for name, (k, steps, overrides, hypothesis) in CONFIGS.items():
        runs = {}
        groups = [f"regime_{name}", *(f"regime_{g}" for g in SAME_RUNS.get(name, []))]
        for n_layer in (k, k // 2):
            paths = [p for g in groups for p in (ROOT / "outputs" / g).glob(f"scratch-L{n_layer}-T{steps}-s*/result.json")]
            for path in sorted(paths):
                r = json.loads(path.read_text())
                r["curve"] = sorted(val_curve(path.parent).items())
                runs.setdefault(n_layer, []).append(r)
        data[name] = {"k": k, "steps": steps, "overrides": overrides, "hypothesis": hypothesis, "runs": runs}
    return data


def collect_fallback() -> dict:
    """{"half": [results of the k/2-layer model at 2T], "ref": {steps: result}} from whatever has finished."""
    from lit_inheritune.report import val_curve

    f, out = FALLBACK, {"half": [], "ref": {}}
    group = ROOT / "outputs" / f"regime_{f['name']}"
    for path in sorted(group.glob(f"scratch-L{f['k'] // 2}-T{2 * f['T']}-s*/result.json")):
        out["half"].append({**json.loads(path.read_text()), "curve": sorted(val_curve(path.parent).items())})
    for steps in f["ref_steps"]:
        path = group / f"scratch-L{f['k']}-T{steps}-s{f['ref_seed']}" / "result.json"
        if path.exists():
            out["ref"][steps] = {**json.loads(path.read_text()), "curve": sorted(val_curve(path.parent).items())}
    return out


def judge_fallback(data: dict) -> list[dict]:
    """One row per reference budget: its gap over the k/2-layer model at 2T, and whether it is enough."""
    half = [r["val_loss"] for r in data["half"]]
    if not half:
        return []
    mean = statistics.mean(half)
    std = statistics.stdev(half) if len(half) > 1 else float("nan")
    rows = []
    for steps, r in sorted(data["ref"].items()):
        gap = mean - r["val_loss"]
        enough = gap >= 0.05 and len(half) > 1 and gap > 3 * std
        rows.append({"ref_steps": steps, "ref": r["val_loss"], "half": mean, "half_std": std, "n_half": len(half),
                     "gap": gap, "enough": enough, "sec_ref": r["train_seconds"]})
    return rows


def _run_flops(entry: dict, n_layer: int) -> float:
    """Training FLOPs of one run of the config at this depth (compute.py's formula)."""
    from lit_inheritune.compute import flops_per_token

    batch = next((int(o.split("=")[1]) for o in entry["overrides"] if o.startswith("data.batch_size=")), 32)
    model = {"n_layer": n_layer, "n_embd": 128, "block_size": 128, "vocab_size": 4096}
    return flops_per_token(model) * entry["steps"] * batch * 128


def judge(entry: dict) -> dict:
    k = entry["k"]
    deep, half = entry["runs"].get(k, []), entry["runs"].get(k // 2, [])
    if not deep or not half:
        return {"status": "incomplete"}
    vd, vh = [r["val_loss"] for r in deep], [r["val_loss"] for r in half]
    sd = statistics.stdev(vd) if len(vd) > 1 else float("nan")
    sh = statistics.stdev(vh) if len(vh) > 1 else float("nan")
    pooled = math.sqrt((sd**2 + sh**2) / 2)
    gap = statistics.mean(vh) - statistics.mean(vd)
    sec_deep = statistics.mean(r["train_seconds"] for r in deep)
    sec_half = statistics.mean(r["train_seconds"] for r in half)
    suite_h = (SUITE_HALF_RUNS * _run_flops(entry, k // 2) + SUITE_REFERENCES * _run_flops(entry, k)) \
        / MACHINE_FLOPS_PER_SEC / 3600
    seeded = len(vd) >= 2 and len(vh) >= 2
    meets = seeded and gap >= 0.05 and gap > 3 * pooled and suite_h <= 8
    return {"deep": statistics.mean(vd), "deep_std": sd, "half": statistics.mean(vh), "half_std": sh,
            "n_deep": len(vd), "n_half": len(vh), "gap": gap, "pooled_std": pooled, "sec_deep": sec_deep,
            "sec_half": sec_half, "suite_hours": suite_h,
            "status": "meets the rule" if meets else ("needs seeds" if not seeded and gap >= 0.05 else "fails")}


MEASURED_HEADING = "## What the pilot measured and what it did not try"
# Single-lever changes the pilot can compare: (base config, changed config, the change, what it leaves open)
LEVERS = [
    ("shape_4v2", "steps_bs8_4v2", "4x the optimizer steps at the same tokens (k = 4)",
     "whether more steps would ever close the gap"),
    ("shape_4v2", "lr3e-3_4v2", "3x the learning rate (k = 4)", "whether a higher rate still would close it"),
    ("base_8v4", "steps_bs8_8v4", "4x the optimizer steps at the same tokens (k = 8)",
     "whether more steps would ever close the gap"),
    ("base_8v4", "lr3e-3_8v4", "3x the learning rate (k = 8)", "whether a higher rate still would close it"),
]


def measured_section(verdicts: dict, configs: dict, fallback_below: bool = True,
                     later: dict[str, str] | None = None) -> list[str]:
    """The pilot's findings as measured, without extrapolation: each config's gap (seeds per side), the one change
    of a single lever that was run, and the configs it defined but never ran. Takes pilot.json's `verdicts` and
    `configs`, so it can be rewritten from the committed file (`measured` command) where the runs are gone."""
    ran = {n: v for n, v in verdicts.items() if "gap" in v}
    out = [MEASURED_HEADING, "",
           "Measured (gap = k/2-layer val - k-layer val at equal steps; positive means the deeper model wins):"]
    for name, v in ran.items():
        c = configs[name]
        where = f"; run after the pilot, {later[name]}" if name in (later or {}) else ""
        out.append(f"- {name} ({c['hypothesis']}): k = {c['k']}, {c['steps']} steps, gap {v['gap']:+.4f} "
                   f"({v['n_deep']} seed(s) of the k-layer model, {v['n_half']} of the k/2-layer model{where})")
    for base, changed, lever, question in LEVERS:
        a, b = ran.get(base), ran.get(changed)
        if a and b:
            seeds = "one seed a side" if max(a["n_deep"], a["n_half"], b["n_deep"], b["n_half"]) == 1 else (
                f"seeds {a['n_deep']}/{a['n_half']} and {b['n_deep']}/{b['n_half']} (k / k/2)")
            out.append(f"- {lever} ({changed} against {base}) moved the gap by {b['gap'] - a['gap']:+.4f}, from "
                       f"{seeds}: two points, so no trend is measured and none is extrapolated; {question} is not "
                       "known from the pilot")
    out += ["", "Not tried:"]
    out += [f"- {name} ({configs[name]['hypothesis']}): defined, not run (pilot budget spent)"
            for name, v in verdicts.items() if "gap" not in v]
    out.append("- more tokens per run than the configs above, or another width or context")
    if ran and all(v["n_deep"] == 1 for v in ran.values()):
        out.append("- a second seed of any k-layer model: every gap's k-layer side is one run")
    where = "below" if fallback_below else "experiments/results/regime/pilot.md"
    out += ["", f"No config met the rule, so the twin takes the issue's fallback ({where})." if not any(
                v.get("status") == "meets the rule" for v in verdicts.values()) else "", ""]
    return out


def rewrite_measured(out: Path) -> None:
    """Rewrite pilot.md's findings section from the committed pilot.json, leaving its measured tables as written
    (regenerating those needs the runs under outputs/)."""
    from lit_inheritune.provenance import provenance

    md, data = (out / "pilot.md").read_text(), json.loads((out / "pilot.json").read_text())
    start = next(md.index(h) for h in (MEASURED_HEADING, "## Where the trend would meet the rule") if h in md)
    end = md.index("## Fallback", start)
    prov = provenance("python experiments/regime_pilot.py measured")
    # follow-ups (`report --configs NAME --out <out>/NAME`) measured what the pilot left: their verdicts count here
    later, verdicts = {}, dict(data["verdicts"])
    for path in sorted(out.glob("*/pilot.json")):
        for name, v in json.loads(path.read_text())["verdicts"].items():
            if "gap" in v:
                verdicts[name], later[name] = v, f"{path.parent.name}/pilot.md"
    section = measured_section(verdicts, data["configs"], later=later)
    section.insert(1, f"\n(this section rewritten from pilot.json by `{prov['command']}` at commit `{prov['commit']}`, "
                      f"{prov['date']})")
    (out / "pilot.md").write_text(md[:start] + "\n".join(section) + "\n" + md[end:])


def _fmt(x: float, nd: int = 4) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def report(out: Path, configs: list[str] | None = None) -> None:
    """pilot.md, pilot.json and pilot.png of every config and the fallback; with `configs`, of those configs only (a
    follow-up run after the pilot, reported in its own directory: the pilot's own runs may be gone by then)."""
    from lit_inheritune.provenance import provenance

    data = collect()
    if configs:
        data = {name: data[name] for name in configs}
    verdicts = {name: judge(entry) for name, entry in data.items()}
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Regime pilot" + (f" follow-up ({', '.join(configs)})" if configs else "")
             + ": does the k-layer model beat the k/2-layer model at equal steps?", ""]
    lines += [f"- {k}: `{v}`" for k, v in provenance().items()]
    trained = sorted({r["provenance"]["commit"] for e in data.values() for rs in e["runs"].values() for r in rs})
    lines.append(f"- runs trained at commit(s): {', '.join(f'`{c}`' for c in trained) or '-'} (a run records its "
                 "checkout's HEAD when it finishes)")
    lines += ["- runs: `python experiments/regime_pilot.py run` (one thread per run, two runs at a time); "
              "every run is `python -m lit_inheritune method=scratch` with the config's overrides",
              "- base: d=128, 4 heads, ctx 128, BPE-4096 on the embedded corpus, batch 32, lr 1e-3 -> 1e-4, "
              "warmup 50, weight decay 0.1 on Linear weights, 1/(l+1) attention scale on",
              "- rule (fixed before any Inheritune result): gap = mean(k/2) - mean(k) >= 0.05 and gap > 3 x "
              "pooled std (at least 2 seeds each), and the suite's estimated time <= 8 h on 2 cores "
              f"({SUITE_HALF_RUNS} k/2-layer runs + {SUITE_REFERENCES} k-layer runs, from their FLOPs at the "
              f"machine's measured {MACHINE_FLOPS_PER_SEC / 1e9:.0f} GFLOP/s; batch-8 runs use the cores less well, "
              "so their estimate is low)",
              "- s/run: each run's training seconds on one thread, beside other work on the machine (not comparable "
              "across configs run at different times)",
              "", "| config | hypothesis | k | steps | overrides | k-layer val | k/2-layer val | gap | pooled std "
              "| seeds | s/run (k, k/2) | suite h (est.) | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in data.items():
        v = verdicts[name]
        if v["status"] == "incomplete":
            lines.append(f"| {name} | {entry['hypothesis']} | {entry['k']} | {entry['steps']} | "
                         f"{' '.join(entry['overrides']) or '-'} | | | | | | | | not run (pilot budget spent) |")
            continue
        lines.append(
            f"| {name} | {entry['hypothesis']} | {entry['k']} | {entry['steps']} | {' '.join(entry['overrides']) or '-'} "
            f"| {_fmt(v['deep'])} +- {_fmt(v['deep_std'])} | {_fmt(v['half'])} +- {_fmt(v['half_std'])} "
            f"| {_fmt(v['gap'])} | {_fmt(v['pooled_std'])} | {v['n_deep']}/{v['n_half']} "
            f"| {v['sec_deep']:.0f}, {v['sec_half']:.0f} | {v['suite_hours']:.1f} | {v['status']} |")
    chosen = [n for n, v in verdicts.items() if v["status"] == "meets the rule"]
    chosen.sort(key=lambda n: verdicts[n]["suite_hours"])
    lines += ["", "Chosen regime (cheapest that meets the rule): "
              + (f"**{chosen[0]}**" if chosen else "none: no config met the rule within the pilot"), ""]
    lines += measured_section(verdicts, {n: {k: e[k] for k in ("k", "steps", "hypothesis")}
                                         for n, e in data.items()}, fallback_below=not configs)
    record = {"provenance": provenance(), "verdicts": verdicts, "chosen": chosen[0] if chosen else None,
              "configs": {n: {k: e[k] for k in ("k", "steps", "overrides", "hypothesis")} for n, e in data.items()}}
    # the fallback is the whole pilot's: a follow-up of some configs leaves it to the pilot's own pilot.md
    fb = None if configs else collect_fallback()
    if fb is not None:
        fb_rows = judge_fallback(fb)
        enough = [row["ref_steps"] for row in fb_rows if row["enough"]]
        lines += _fallback_section(fb_rows, enough)
        record["fallback"] = {"config": FALLBACK, "rows": fb_rows, "reference_steps": enough[0] if enough else None}
    (out / "pilot.md").write_text("\n".join(lines) + "\n")
    (out / "pilot.json").write_text(json.dumps(record, indent=2) + "\n")
    _plot(data, verdicts, out / "pilot.png", fb)
    print((out / "pilot.md").read_text())


def _fallback_section(fb_rows: list[dict], enough: list[int]) -> list[str]:
    f = FALLBACK
    lines = [f"## Fallback: the k = {f['k']} reference trained longer, against the {f['k'] // 2}-layer scratch model at 2T",
             "", f"Run with `python experiments/regime_pilot.py run --fallback`. T = {f['T']} steps (the twin's variant "
             f"budget); the reference's seed {f['ref_seed']}, the {f['k'] // 2}-layer model's seeds {f['half_seeds']}; "
             "otherwise the base settings. Enough: gap >= 0.05 and gap > 3 x the 2T model's std over seeds.", "",
             f"| reference steps | {f['k']}L reference val | {f['k'] // 2}L scratch at 2T = {2 * f['T']} | gap | "
             f"enough | s (reference run) |", "|---|---|---|---|---|---|"]
    for row in fb_rows:
        lines.append(f"| {row['ref_steps']} ({row['ref_steps'] // f['T']}T) | {_fmt(row['ref'])} | {_fmt(row['half'])} +- "
                     f"{_fmt(row['half_std'])} ({row['n_half']} seeds) | {_fmt(row['gap'])} | "
                     f"{'yes' if row['enough'] else 'no'} | {row['sec_ref']:.0f} |")
    return lines + ["", "Reference budget for the twin (fewest steps that are enough): "
                    + (f"**{enough[0]} steps ({enough[0] // f['T']}T)**" if enough else "none yet"), ""]


def _plot(data: dict, verdicts: dict, path: Path, fallback: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data)
    cols = 3
    rows = math.ceil((len(names) + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        entry, v = data[name], verdicts[name]
        for n_layer, style in ((entry["k"], "-"), (entry["k"] // 2, "--")):
            for i, r in enumerate(entry["runs"].get(n_layer, [])):
                if r["curve"]:
                    steps, losses = zip(*r["curve"])
                    ax.plot(steps, losses, style, color="C0" if n_layer == entry["k"] else "C1", alpha=0.8,
                            marker="o", markersize=2, label=f"{n_layer}L" if i == 0 else None)
        title = f"{name}: gap {v['gap']:+.3f}" if "gap" in v else f"{name}: no runs"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("val loss")
        finals = [r["val_loss"] for rs in entry["runs"].values() for r in rs]
        if finals:
            lo = min(finals)
            ax.set_ylim(lo - 0.1, lo + 1.2)
            if ax.lines:
                ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no runs", ha="center", va="center", transform=ax.transAxes)
    ax = list(axes.flat)[len(names)]
    if fallback is None:
        ax.axis("off")
    f = FALLBACK
    for i, r in enumerate((fallback or {}).get("half", [])):
        if r["curve"]:
            ax.plot(*zip(*r["curve"]), "--", color="C1", marker="o", markersize=2,
                    label=f"{f['k'] // 2}L, {2 * f['T']} steps" if i == 0 else None)
    for j, (steps, r) in enumerate(sorted((fallback or {}).get("ref", {}).items())):
        if r["curve"]:
            ax.plot(*zip(*r["curve"]), "-", color=f"C{j + 2}", marker="o", markersize=2, label=f"{f['k']}L, {steps} steps")
    ax.set_title(f"fallback: {f['k']}L reference trained longer", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("val loss")
    if fallback is not None and ax.lines:
        lowest = min(min(line.get_ydata()) for line in ax.lines)
        ax.set_ylim(lowest - 0.1, lowest + 1.2)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(names) + 1:]:
        ax.axis("off")
    fig.suptitle("Regime pilot: k-layer (solid) vs k/2-layer (dashed) scratch at equal steps", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--configs", default=",".join(CONFIGS))
    r.add_argument("--seeds", default="1")
    r.add_argument("--jobs", type=int, default=2)
    r.add_argument("--fallback", action="store_true", help="the reference-budget runs instead of the configs")
    for name in ("report", "measured"):  # measured: only the findings section, from the committed pilot.json
        p = sub.add_parser(name)
        p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "regime")
    sub.choices["report"].add_argument("--configs", default=None,
                                       help="a follow-up: only these configs (comma-separated), e.g. into --out "
                                            "experiments/results/regime/<config>")
    a = ap.parse_args()
    if a.cmd == "run":
        unknown = [c for c in a.configs.split(",") if c not in CONFIGS]
        if unknown:
            sys.exit(f"error: unknown pilot config(s) {unknown}; known: {list(CONFIGS)}")
        run(fallback_jobs() if a.fallback else jobs(a.configs.split(","), [int(s) for s in a.seeds.split(",")]), a.jobs)
    elif a.cmd == "measured":
        rewrite_measured(a.out)
    else:
        configs = a.configs.split(",") if a.configs else None
        unknown = [c for c in configs or [] if c not in CONFIGS]
        if unknown:
            sys.exit(f"error: unknown pilot config(s) {unknown}; known: {list(CONFIGS)}")
        report(a.out, configs)


if __name__ == "__main__":
    main()
