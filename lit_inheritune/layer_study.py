"""The step-0 layer study (issue #23): how much each block of a trained model matters, measured three ways, and
what the models built by keeping n of its blocks score before any training.

Per block i of a model of any family (reached through lit_inheritune/models, never a family's module):

- Block Influence (ShortGPT, Men et al. 2024): BI_i = 1 - mean over tokens of cos(h_in_i, h_out_i), the hidden
  state entering block i against the one leaving it (`block_influence`). An identity block has BI 0.
- The val loss with block i removed (`removal_losses`): the model with block i skipped, i.e. its output replaced
  by its input (`blocks_skipped`), on the same fixed val windows as the full model.
- The attention measures of PAPER.md section 5 (AvgRank, MaxRank, column mass), from analysis.measure_attention.

`select_blocks` names the n blocks each strategy keeps (first, potent, lazy, block_influence, random), always in
reference order; `layer_study` runs all of it on one model and correlates the loss increase with each measure.

    python -m lit_inheritune.layer_study hf=smollm2 data_dir=data/embedded-smollm2 out=DIR
    python -m lit_inheritune.layer_study ckpt=outputs/.../checkpoints/last.ckpt data_dir=DIR sizes=[4,2]

writes table.md (with command, commit, seed and hardware), study.json and layers.png to `out`. See
lit_inheritune/conf/layer_study.yaml for the keys.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import hydra
import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from lit_inheritune.analysis import (
    DEFAULT_TAUS,
    NEAR_RANK1,
    AnalysisError,
    _pyplot,
    _safe_label,
    _save,
    measure_attention,
)
from lit_inheritune.config import CONFIG_DIR
from lit_inheritune.errors import cli_errors, run_cli
from lit_inheritune.models import family, family_of

STRATEGIES = ("first", "potent", "lazy", "block_influence", "random")
# Selected blocks are inherited whole with the embeddings, final norm and head, as the HF family's inherit does
# (and the only options it takes); our GPT family needs copy_wpe / copy_ln_f to do the same.
INHERIT_WHOLE = {"parts": "block", "copy_wpe": True, "copy_ln_f": True}
# The model family of the pretrained models `hf=NAME` names (conf/layer_study.yaml).
PRETRAINED_FAMILY = "hf"
# The measures correlated with the loss increase: study key -> (report column, what it is).
MEASURES = {
    "avg_rank": ("AvgRank", "mean over heads of mean k*"),
    "max_rank": ("MaxRank", "max over heads of mean k*"),
    "column0_mass": ("first-column mass", "share of the attention's squared norm in column 0"),
    "avg_mass": ("AvgMass", "mean m*, leading columns holding eta of the mass"),
    "block_influence": ("BI", "1 - mean cos(h_in, h_out)"),
}


# ----------------------------------------------------------------------------------------------------
# Hidden states around a block, whatever the family's block signature


def _hidden_in(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden state a block was called with: its first argument (our GPT's `x`, HF's `hidden_states`)."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        raise AnalysisError("a block was called without a hidden-state tensor as its first argument "
                            "(or `hidden_states`); the layer study cannot read its input")
    return hidden


def _hidden_out(output) -> torch.Tensor:
    """The hidden state a block returned: the output itself (HF LLaMA) or its first element (our GPT: (x, attn);
    older HF layers: (hidden_states, ...))."""
    hidden = output if isinstance(output, torch.Tensor) else output[0] if isinstance(output, (tuple, list)) else None
    if not isinstance(hidden, torch.Tensor):
        raise AnalysisError(f"a block returned {type(output).__name__}, not a hidden-state tensor or a tuple "
                            "starting with one; the layer study cannot read its output")
    return hidden


def _with_hidden(output, hidden: torch.Tensor):
    """`output` with its hidden state replaced by `hidden` (same structure)."""
    if isinstance(output, torch.Tensor):
        return hidden
    return type(output)((hidden, *output[1:]))


@contextmanager
def blocks_skipped(model: torch.nn.Module, indices: Iterable[int]):
    """The model with the listed blocks skipped: each passes the hidden state it receives on unchanged (a forward
    hook replaces its output by its input), so the model computes what it would with those blocks removed and every
    other block where it is. Works on any family's blocks; the hooks are removed on exit."""
    blocks = family_of(model).blocks(model)
    indices = sorted({int(i) for i in indices})
    bad = [i for i in indices if not 0 <= i < len(blocks)]
    if bad:
        raise AnalysisError(f"block(s) {bad} out of range: the model has {len(blocks)} blocks")

    def identity(module, args, kwargs, output):
        return _with_hidden(output, _hidden_in(args, kwargs))

    handles = [blocks[i].register_forward_hook(identity, with_kwargs=True) for i in indices]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------------------
# Measures on a model, over fixed val windows x, y (N, T)


@contextmanager
def _eval_mode(model: torch.nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _batches(n: int, batch_size: int) -> Iterable[slice]:
    if batch_size < 1:
        raise AnalysisError(f"batch_size must be >= 1, got {batch_size}")
    return (slice(i, i + batch_size) for i in range(0, n, batch_size))


@torch.no_grad()
def window_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> np.ndarray:
    """The mean next-token cross-entropy of each window x, y (N, T) -> (N,), from the model's logits
    (`forward(x)["logits"]`, as its own loss is computed), in eval mode (restored after)."""
    device = next(model.parameters()).device
    losses = []
    with _eval_mode(model):
        for part in _batches(len(x), batch_size):
            yb = y[part].to(device)
            logits = model(x[part].to(device))["logits"]  # (B, T, V)
            ce = F.cross_entropy(logits.float().flatten(0, 1), yb.flatten(), reduction="none")
            losses.append(ce.view(yb.shape).double().mean(1).cpu())
    return torch.cat(losses).numpy()


def val_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> float:
    """The mean next-token cross-entropy over every target token of the windows x, y (N, T)."""
    return float(window_losses(model, x, y, batch_size).mean())


@torch.no_grad()
def block_influence(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 8) -> list[float]:
    """BI_i = 1 - mean over every token of the windows x (N, T) of cos(h_in_i, h_out_i), for each block i (ShortGPT's
    Block Influence): 0 for a block that leaves the hidden state's direction alone, 1 when it turns it orthogonal, 2
    when it reverses it. One forward per batch, the block inputs and outputs read by forward hooks."""
    blocks = family_of(model).blocks(model)
    cos_sum = torch.zeros(len(blocks), dtype=torch.float64)
    count = 0

    def hook(i: int):
        def record(module, args, kwargs, output):
            h_in, h_out = _hidden_in(args, kwargs), _hidden_out(output)
            cos_sum[i] += F.cosine_similarity(h_in.float(), h_out.float(), dim=-1).double().sum().cpu()
        return record

    device = next(model.parameters()).device
    handles = [block.register_forward_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        with _eval_mode(model):
            for part in _batches(len(x), batch_size):
                xb = x[part].to(device)
                model(xb)
                count += xb.numel()  # one cosine per token position
    finally:
        for handle in handles:
            handle.remove()
    return (1.0 - cos_sum / count).tolist()


def removal_window_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8,
                          on_block: Callable[[int, float], None] | None = None) -> np.ndarray:
    """(L, N): for each block i, the loss of each window (`window_losses`) of the model with block i skipped
    (`blocks_skipped`). `on_block(i, mean loss)` is called after each block."""
    losses = []
    for i in range(family_of(model).n_layer(model)):
        with blocks_skipped(model, [i]):
            losses.append(window_losses(model, x, y, batch_size))
        if on_block is not None:
            on_block(i, float(losses[-1].mean()))
    return np.stack(losses)


def removal_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> list[float]:
    """For each block i, the val loss on x, y of the model with block i skipped."""
    return removal_window_losses(model, x, y, batch_size).mean(1).tolist()


# ----------------------------------------------------------------------------------------------------
# Which blocks to keep


def select_blocks(strategy: str, n: int, n_layer: int, avg_rank: Sequence[float] | None = None,
                  influence: Sequence[float] | None = None, seed: int = 0) -> list[int]:
    """The n of n_layer blocks a strategy keeps, in reference order: `first` (0..n-1, the paper), `potent` (the n
    with the highest AvgRank), `lazy` (the lowest AvgRank), `block_influence` (the highest BI), `random` (drawn
    without replacement by numpy's Generator seeded with `seed`). Ties go to the earlier block."""
    if strategy not in STRATEGIES:
        raise AnalysisError(f"unknown selection strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not 1 <= n <= n_layer:
        raise AnalysisError(f"cannot keep {n} of {n_layer} blocks")
    needs = {"potent": avg_rank, "lazy": avg_rank, "block_influence": influence}
    if strategy in needs:
        values = needs[strategy]
        if values is None or len(values) != n_layer:
            raise AnalysisError(f"strategy {strategy!r} needs one {'BI' if strategy == 'block_influence' else 'AvgRank'}"
                                f" value per block ({n_layer})")
        sign = 1.0 if strategy == "lazy" else -1.0
        chosen = sorted(range(n_layer), key=lambda i: (sign * float(values[i]), i))[:n]
    elif strategy == "random":
        chosen = np.random.default_rng(seed).choice(n_layer, size=n, replace=False)
    else:
        chosen = range(n)
    return sorted(int(i) for i in chosen)


# ----------------------------------------------------------------------------------------------------
# Correlations (numpy only)


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson's r; nan when either side is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"pearson needs two sequences of one length >= 2, got {a.size} and {b.size}")
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def ranks(values: Sequence[float]) -> np.ndarray:
    """0-based ranks, ties given the mean of the ranks they span (as Spearman's rho needs)."""
    v = np.asarray(values, dtype=np.float64)
    order = np.argsort(v, kind="stable")
    out = np.empty(len(v))
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho: Pearson's r of the (tie-averaged) ranks."""
    return pearson(ranks(a), ranks(b))


# ----------------------------------------------------------------------------------------------------
# The study


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no nan


def _paired_se(losses: np.ndarray, full: np.ndarray) -> list[float | None]:
    """Standard error over windows of each row's mean increase over `full`, paired by window: (K, N), (N,) -> K."""
    if losses.shape[1] < 2:
        return [None] * len(losses)
    return (np.std(losses - full[None], axis=1, ddof=1) / math.sqrt(losses.shape[1])).tolist()


def layer_study(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, attn_tokens: np.ndarray, *,
                sizes: Sequence[int], strategies: Sequence[str] = STRATEGIES, seed: int = 0, batch_size: int = 8,
                n_seq: int = 100, seq_len: int = 100, taus: Sequence[float] = DEFAULT_TAUS, eta: float = 0.9,
                attn_seed: int = 0, near_rank1: float = NEAR_RANK1, log: Callable[[str], None] = print) -> dict:
    """Everything the study measures on `model` at its current weights (step 0: no training):

    - `attention`: analysis.measure_attention on n_seq windows of seq_len tokens of `attn_tokens` (every tau;
      the per-layer columns use the primary tau, 0.9);
    - `full_val_loss` on the windows x, y (N, T); per layer `removed_val_loss`, `loss_increase` (over the full
      model) and `block_influence`, with `avg_rank`, `max_rank`, `column0_mass`, `avg_mass`;
    - `correlations`: Pearson and Spearman of the loss increase with each measure;
    - `selections`: for each n in `sizes` and each strategy, the blocks kept and the step-0 val loss of the model
      the family's `inherit` builds of them (with the embeddings, final norm and head);
    - `seconds`: wall time of each part.
    """
    fam = family_of(model)
    L = fam.n_layer(model)
    for strategy in strategies:
        select_blocks(strategy, 1, L, [0.0] * L, [0.0] * L)  # unknown strategies fail before any compute
    for n in sizes:
        if not 1 <= int(n) <= L:
            raise AnalysisError(f"sizes: cannot keep {n} of the model's {L} blocks")
    seconds = {}

    started = time.perf_counter()
    attention = measure_attention(model, attn_tokens, n_seq=n_seq, seq_len=seq_len, taus=taus, eta=eta,
                                  seed=attn_seed, batch_size=None, near_rank1=near_rank1)
    seconds["attention"] = time.perf_counter() - started
    log(f"attention ({seconds['attention']:.0f} s): AvgRank {[round(r, 2) for r in attention['avg_rank']]}")

    started = time.perf_counter()
    full_windows = window_losses(model, x, y, batch_size)
    full = float(full_windows.mean())
    influence = block_influence(model, x, batch_size)
    seconds["full_and_block_influence"] = time.perf_counter() - started
    log(f"full model: val loss {full:.4f}; BI {[round(b, 3) for b in influence]} "
        f"({seconds['full_and_block_influence']:.0f} s)")

    started = time.perf_counter()
    removed_windows = removal_window_losses(model, x, y, batch_size, on_block=lambda i, loss: log(
        f"block {i} removed: val loss {loss:.4f} ({loss - full:+.4f}; {time.perf_counter() - started:.0f} s)"))
    seconds["removal"] = time.perf_counter() - started
    removed = removed_windows.mean(1).tolist()
    increase = [r - full for r in removed]
    increase_se = _paired_se(removed_windows, full_windows)

    measures = {"avg_rank": attention["avg_rank"], "max_rank": attention["max_rank"],
                "column0_mass": attention["column0_mass"], "avg_mass": attention["avg_mass"],
                "block_influence": influence}

    def correlate(blocks: Sequence[int]) -> dict:
        inc = [increase[i] for i in blocks]
        return {name: {"pearson": _finite(pearson(inc, [values[i] for i in blocks])),
                       "spearman": _finite(spearman(inc, [values[i] for i in blocks]))}
                for name, values in measures.items()}

    correlations = correlate(range(L))
    # Block 0 turns embeddings into hidden states; its removal dwarfs the others' and can carry Pearson's r alone.
    correlations_without_first = correlate(range(1, L)) if L > 2 else None

    started = time.perf_counter()
    selections, scored = [], {}
    for n in sizes:
        for strategy in strategies:
            blocks = select_blocks(strategy, int(n), L, attention["avg_rank"], influence, seed)
            key = tuple(blocks)
            if key not in scored:  # strategies that agree are scored once
                small = fam.inherit(model, blocks=blocks, **INHERIT_WHOLE)
                scored[key] = window_losses(small, x, y, batch_size)
                del small
            loss = float(scored[key].mean())
            selections.append({"strategy": strategy, "n_layer": int(n), "blocks": blocks, "val_loss": loss,
                               "increase": loss - full, "increase_se": _paired_se(scored[key][None], full_windows)[0]})
            log(f"{strategy} {n}L {blocks}: val loss {loss:.4f}")
    seconds["selections"] = time.perf_counter() - started

    order = sorted(range(L), key=lambda i: (attention["avg_rank"][i], i))
    k = max(1, L // 6)
    near = [i for i in range(L) if attention["avg_rank"][i] <= near_rank1]
    groups = {
        f"lowest_avg_rank_{k}": order[:k],
        f"highest_avg_rank_{k}": order[-k:],
        "near_rank1": near,  # AvgRank <= near_rank1
        "not_near_rank1": [i for i in range(L) if i not in near],
        "all": list(range(L)),
    }
    group_increase = {}
    for name, layers in groups.items():
        inc = [increase[i] for i in layers]
        group_increase[name] = {"layers": sorted(layers), "mean_increase": float(np.mean(inc)) if inc else None,
                                "median_increase": float(np.median(inc)) if inc else None}
    return {
        "n_layer": L,
        "family": fam.name,
        "val_windows": {"n": int(len(x)), "tokens": int(x.shape[1]), "batch_size": batch_size},
        "seed": seed,
        "primary_tau": attention["primary_tau"],
        "near_rank1": near_rank1,
        "full_val_loss": full,
        "layers": list(range(L)),
        "removed_val_loss": removed,
        "loss_increase": increase,
        "loss_increase_se": increase_se,
        **measures,
        "correlations": correlations,
        "correlations_without_first": correlations_without_first,
        "groups": group_increase,
        "selections": selections,
        "inherit_options": INHERIT_WHOLE,
        "window_losses": {"full": full_windows.tolist(), "removed": removed_windows.tolist()},
        "attention": attention,
        "seconds": seconds,
    }


# ----------------------------------------------------------------------------------------------------
# Outputs: table.md, layers.png


def _fmt(value, spec: str = "+.3f") -> str:
    return "n/a" if value is None else format(value, spec)


def write_table(study: Mapping, path: str | Path, prov: Mapping, label: str, setup: Sequence[str] = ()) -> Path:
    """table.md: provenance and set-up lines, the per-layer table, the correlations, the lazy/potent group means
    and the selections' step-0 val losses."""
    L, att = study["n_layer"], study["attention"]
    win = study["val_windows"]
    sec = study["seconds"]
    lines = [
        f"# Layer study at step 0 (no training): {label}, {L} blocks",
        "",
        f"- command: `{prov['command']}`",
        f"- commit: {prov['commit']}",
        f"- hardware: {prov['hardware']}",
        f"- date: {prov['date']}",
        f"- seed: {study['seed']} (the random selection); val loss on {win['n']} fixed val windows of {win['tokens']} "
        f"tokens (batches of {win['batch_size']}); attention measures on {att['n_seq']} val windows of "
        f"{att['seq_len']} tokens (seed {att['seed']}), AvgRank and MaxRank at tau={study['primary_tau']}, "
        f"AvgMass at eta={att['eta']:g}",
        *[f"- {line}" for line in setup],
        f"- wall time: {sum(sec.values()) / 60:.1f} min (" + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s"
                                                             for k, v in sec.items()) + ")",
        f"- full model val loss: {study['full_val_loss']:.4f}",
        "",
        "## Per block",
        "",
        "Removed: the model with that block skipped (its output replaced by its input), every other block in place. "
        "BI (Block Influence, ShortGPT) = 1 - mean over tokens of cos(hidden state entering, leaving the block).",
        "",
        "| block | val loss without it | increase (+- s.e.) | AvgRank | MaxRank | first-column mass | AvgMass | BI |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i in range(L):
        lines.append(f"| {i} | {study['removed_val_loss'][i]:.4f} | {study['loss_increase'][i]:+.4f} "
                     f"+- {_fmt(study['loss_increase_se'][i], '.4f')} | {study['avg_rank'][i]:.2f} "
                     f"| {study['max_rank'][i]:.2f} | {study['column0_mass'][i]:.3f} | {study['avg_mass'][i]:.2f} "
                     f"| {study['block_influence'][i]:.4f} |")
    without = study.get("correlations_without_first")
    lines += ["", "s.e.: the standard error over the val windows of the mean increase (paired by window).", "",
              f"## Correlation of the loss increase with each measure (over the {L} blocks, and without block 0)", "",
              "| measure | what it is | Pearson r | Spearman rho | Pearson r, blocks 1+ | Spearman rho, blocks 1+ |",
              "|---|---|---:|---:|---:|---:|"]
    for key, (name, what) in MEASURES.items():
        c = study["correlations"][key]
        w = without[key] if without else {"pearson": None, "spearman": None}
        lines.append(f"| {name} | {what} | {_fmt(c['pearson'])} | {_fmt(c['spearman'])} | {_fmt(w['pearson'])} "
                     f"| {_fmt(w['spearman'])} |")
    lines += ["", "## Loss increase of lazy and potent blocks", "",
              "| blocks | which | mean loss increase | median loss increase |", "|---|---|---:|---:|"]
    titles = {"near_rank1": f"AvgRank <= {study['near_rank1']:g} (near rank 1)",
              "not_near_rank1": f"AvgRank > {study['near_rank1']:g}", "all": "all blocks"}
    for name, group in study["groups"].items():
        title = titles.get(name, name.replace("_", " ").replace("avg rank", "AvgRank"))
        which = "all" if name == "all" else ", ".join(map(str, group["layers"])) or "none"
        lines.append(f"| {title} | {which} | {_fmt(group['mean_increase'], '+.4f')} "
                     f"| {_fmt(group['median_increase'], '+.4f')} |")
    lines += ["", "## Models of n kept blocks at step 0", "",
              "Each keeps its blocks in reference order, with the embeddings, final norm and head inherited "
              f"(the family's inherit with {', '.join(f'{k}={v}' for k, v in study['inherit_options'].items())}); "
              "potent: highest AvgRank, lazy: lowest AvgRank, block_influence: highest BI, random: seeded.",
              "", "| blocks kept | strategy | blocks | val loss | vs full model (+- s.e.) |", "|---:|---|---|---:|---:|"]
    for s in study["selections"]:
        lines.append(f"| {s['n_layer']} | {s['strategy']} | {', '.join(map(str, s['blocks']))} "
                     f"| {s['val_loss']:.4f} | {s['increase']:+.4f} +- {_fmt(s['increase_se'], '.4f')} |")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def plot_layers(study: Mapping, path: str | Path, title: str = "") -> Path:
    """Four panels of per-block bars, blocks on a shared x axis: loss increase when removed (symmetric log scale,
    +- its standard error over windows), AvgRank (log), BI (log) and first-column mass. Near-rank-1 blocks
    (AvgRank <= near_rank1) are drawn in orange."""
    plt = _pyplot()
    from matplotlib.patches import Patch

    L = study["n_layer"]
    layers = np.arange(L)
    near = set(study["groups"]["near_rank1"]["layers"])
    colors = ["tab:orange" if i in near else "tab:blue" for i in layers]
    panels = [
        ("loss_increase", "val loss increase\nwhen removed (nats)", "symlog"),
        ("avg_rank", f"AvgRank (tau={study['primary_tau']})", "log"),
        ("block_influence", "Block Influence\n1 - mean cos(in, out)", "log"),
        ("column0_mass", "first-column mass\n(share of attention)", "linear"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.32 * L + 3), 10.5), sharex=True,
                             constrained_layout=True)
    for ax, (key, ylabel, scale) in zip(axes, panels):
        values = np.asarray(study[key], dtype=float)
        se = study.get(f"{key}_se")
        yerr = None if se is None or None in se else np.asarray(se, dtype=float)
        ax.bar(layers, values, color=colors, width=0.8, yerr=yerr, capsize=2, error_kw={"lw": 0.8})
        if scale == "symlog":
            ax.set_yscale("symlog", linthresh=0.01)
            ax.axhline(0, color="black", lw=0.8)
        elif scale == "log":
            ax.set_yscale("log")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    axes[1].axhline(1, color="grey", ls="--", lw=1)
    corr = study["correlations"]
    fig.suptitle(
        (f"{title}: " if title else "") + f"layer study at step 0 (full val loss {study['full_val_loss']:.3f})\n"
        "Spearman rho of the loss increase with AvgRank "
        f"{_fmt(corr['avg_rank']['spearman'], '+.2f')}, BI {_fmt(corr['block_influence']['spearman'], '+.2f')}, "
        f"first-column mass {_fmt(corr['column0_mass']['spearman'], '+.2f')}", fontsize=11)
    fig.legend(handles=[Patch(color="tab:orange", label=f"AvgRank <= {study['near_rank1']:g} (near rank 1)"),
                        Patch(color="tab:blue", label="other blocks")], loc="outside lower center", ncol=2,
               fontsize=9)
    axes[-1].set_xlabel("block (0-based)")
    axes[-1].set_xticks(layers)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# The command


def _default_out(ckpt, hf) -> str:
    if ckpt:
        from lit_inheritune.runs import run_dir_of

        return str(run_dir_of(ckpt) / "layer_study")
    root = Path(os.environ.get("LIT_INHERITUNE_ROOT", "."))
    return str(root / "outputs" / "layer_study" / _safe_label(Path(str(hf or "model")).name))


if not OmegaConf.has_resolver("layer_study_dir"):
    OmegaConf.register_new_resolver("layer_study_dir", _default_out)


def _same_tokenizer(recorded: Mapping, ours: Mapping) -> bool:
    return all(recorded.get(key) == ours.get(key) for key in ("kind", "vocab_size", "path", "gguf_file"))


def _model_data(cfg: DictConfig, tokenizer) -> str:
    """data_dir prepared with the pretrained model's own tokenizer: prepared now (the embedded corpus, as
    conf/data/embedded_hf.yaml would) when it holds nothing, refused when it holds another tokenization."""
    from lit_inheritune.data.prepare import prepare

    data_dir = Path(str(cfg.data_dir))
    spec = tokenizer.spec()
    manifest = data_dir / "manifest.json"
    if manifest.is_file():
        recorded = json.loads(manifest.read_text()).get("config", {}).get("tokenizer", {})
        if not _same_tokenizer(recorded, spec):
            raise AnalysisError(f"data_dir={data_dir} was tokenized with {recorded.get('kind')} "
                                f"{recorded.get('path') or recorded.get('vocab_size')}, not the model's own tokenizer "
                                f"({spec['path']}); give a directory prepared with it (a new path is prepared on "
                                "first use)")
        return str(data_dir)
    request = OmegaConf.to_container(cfg.prepare, resolve=True)
    request["tokenizer"] = {"kind": spec["kind"], "vocab_size": spec["vocab_size"], "path": spec["path"],
                            "gguf_file": spec.get("gguf_file"), "revision": spec.get("revision"),
                            "cache_dir": str(cfg.hf_cache_dir)}
    print(f"preparing {data_dir} (the embedded corpus in the model's own tokenization; once)", flush=True)
    prepare(out_dir=data_dir, **request, show_progress=False)
    return str(data_dir)


def _val_windows(cfg: DictConfig, data_dir: str, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """(x, y) the fixed val windows a training run on data_dir with this block size scores (the datamodule's, with
    its val_seed), and the val split's tokens."""
    from lit_inheritune.data.datamodule import TokenDataModule

    dm = TokenDataModule(data_dir, block_size=int(cfg.block_size), batch_size=int(cfg.batch_size),
                         model_vocab_size=vocab_size, num_val_windows=int(cfg.num_val_windows),
                         val_seed=int(cfg.val_seed), verify_checksum=False)
    dm.setup()
    x, y = dm.val_set.tensors
    return x, y, np.asarray(dm.val_tokens, dtype=np.int64)


def run(cfg: DictConfig) -> dict:
    """The study of the model `hf=` or `ckpt=` names on data_dir, written to `out`."""
    from lit_inheritune.provenance import provenance

    if bool(cfg.ckpt) == bool(cfg.hf):
        raise AnalysisError("pass one model: hf=NAME (a pretrained Hugging Face model, e.g. hf=smollm2) or "
                            "ckpt=PATH (one of our checkpoints)")
    if OmegaConf.is_missing(cfg, "data_dir") or not cfg.data_dir:
        raise AnalysisError("no data directory given: pass data_dir=DIR (a dataset in the model's tokenization; "
                            "for hf=, a new path is prepared on first use)")
    sizes = [int(n) for n in cfg.sizes]
    strategies = [str(s) for s in cfg.strategies]
    for strategy in strategies:
        select_blocks(strategy, 1, 1, [0.0], [0.0])  # a typo fails before the model loads
    if not sizes or min(sizes) < 1:
        raise AnalysisError(f"sizes must list block counts >= 1, got {sizes}")

    started = time.perf_counter()
    if cfg.hf:
        model, tokenizer, source = family(PRETRAINED_FAMILY).pretrained_model(str(cfg.hf), cfg.hf_gguf_file,
                                                                               cfg.hf_cache_dir)
        label = cfg.label or Path(source["gguf_file"] or source["path"]).stem
        data_dir = _model_data(cfg, tokenizer)
        what = f"model: {source['path']}" + (f" ({source['gguf_file']})" if source["gguf_file"] else "")
    else:
        from lit_inheritune.models import load_checkpoint

        if not Path(str(cfg.ckpt)).is_file():
            raise AnalysisError(f"checkpoint file not found: {cfg.ckpt}")
        if not (Path(str(cfg.data_dir)) / "manifest.json").is_file():
            raise AnalysisError(f"{cfg.data_dir} holds no prepared dataset (manifest.json missing)")
        model = load_checkpoint(str(cfg.ckpt))
        label = cfg.label or Path(str(cfg.ckpt)).parent.parent.name
        data_dir, what = str(cfg.data_dir), f"checkpoint: {cfg.ckpt}"
    if int(cfg.block_size) > model.config.block_size or int(cfg.seq_len) > model.config.block_size:
        raise AnalysisError(f"block_size={cfg.block_size} / seq_len={cfg.seq_len} exceed the model's "
                            f"{model.config.block_size} positions")
    x, y, val_tokens = _val_windows(cfg, data_dir, model.config.vocab_size)
    loaded = time.perf_counter() - started
    print(f"[layer_study] {label}: {family_of(model).n_layer(model)} blocks, {len(x)} val windows of {x.shape[1]} "
          f"tokens, torch threads {torch.get_num_threads()} (loaded in {loaded:.0f} s)", flush=True)

    study = layer_study(model, x, y, val_tokens, sizes=sizes, strategies=strategies, seed=int(cfg.seed),
                        batch_size=int(cfg.batch_size), n_seq=int(cfg.n_seq), seq_len=int(cfg.seq_len),
                        taus=list(cfg.taus), eta=float(cfg.eta), attn_seed=int(cfg.attn_seed),
                        near_rank1=float(cfg.near_rank1), log=lambda line: print(f"[layer_study] {line}", flush=True))
    study["seconds"] = {"load": loaded, **study["seconds"]}
    out = Path(str(cfg.out))
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    setup = [what, f"data: {data_dir} (val split; windows drawn as training's val windows, val_seed {cfg.val_seed})"]
    result = {"provenance": prov, "label": label, "model": what, "data_dir": data_dir,
              "config": OmegaConf.to_container(cfg, resolve=True), **study}
    (out / "study.json").write_text(json.dumps(result, indent=1))
    write_table(study, out / "table.md", prov, label, setup)
    plot_layers(study, out / "layers.png", title=label)
    return result


@hydra.main(config_path=str(CONFIG_DIR), config_name="layer_study", version_base="1.3")
def main(cfg: DictConfig) -> dict:
    with cli_errors():
        result = run(cfg)
    corr = result["correlations"]
    print("[layer_study] Spearman rho of the loss increase with " + ", ".join(
        f"{MEASURES[k][0]} {_fmt(v['spearman'])}" for k, v in corr.items()))
    print(f"wrote {Path(str(cfg.out)).resolve()}/table.md, study.json and layers.png")
    return result


if __name__ == "__main__":
    run_cli(main)
