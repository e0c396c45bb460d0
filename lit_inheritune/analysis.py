"""Attention degeneration (PAPER.md section 5): how close to rank 1 each layer's attention is.

For every layer l, head h and validation sequence n the post-softmax causal attention A is T x T.
- Approximate rank k* = min k with sum_{i<=k} s_i^2 / sum_j s_j^2 >= tau (s = singular values of A).
- Rank(h, l) = mean over sequences of k*; MaxRank(l) = max over heads, AvgRank(l) = mean over heads.
  A layer is lazy when MaxRank(l) == 1, i.e. every head puts >= tau of its energy in one direction
  on every sequence.
- Column mass: share_j = ||A[:, j]||^2 / ||A||_F^2; m* = min m whose FIRST m columns (unsorted, as
  in v4's formula) hold >= eta. AvgMass(l) = mean over heads of the per-head mean over sequences.

Everything is batched: one `torch.linalg.eigvalsh` call per layer (on the Gram matrices A A^T, whose
eigenvalues are the squared singular values) covers all (sequence, head) pairs of a batch.
Shapes: N sequences, B batch, L layers, H heads, T tokens, n_taus thresholds.

A model of any family is measured through the model-family interface (lit_inheritune/models/__init__.py): its
family yields each layer's attention probabilities and takes the Q/K gradient norms.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lit_inheritune.models import family_of

DEFAULT_TAUS = (0.8, 0.85, 0.9, 0.95)
PRIMARY_TAU = 0.9  # the paper's threshold; lazy flags and the figures use it
# Energy fractions within THRESHOLD_EPS below a threshold count as reaching it. Constructed matrices
# hit thresholds exactly (the causal identity holds 9/10 of its energy in 9 of 10 directions), and
# float32 SVD noise is ~1e-7 relative, so 1e-6 keeps ties on the right side without moving real values.
THRESHOLD_EPS = 1e-6
# Heads whose mean k* is at most this are drawn and counted as near-rank-1 (a head that is rank 1 on
# at least half the sequences and rank 2 on the rest sits at 1.5).
NEAR_RANK1 = 1.5
# Attention probabilities held at once when batch_size is automatic: B * H * T * T float32 per layer.
ATTN_BYTES_BUDGET = 256 * 2**20


class AnalysisError(ValueError):
    """An analysis request that cannot work (missing files, sequences longer than the context)."""


def tau_key(tau: float) -> str:
    """JSON key of a threshold: 0.9 -> '0.9'."""
    return f"{float(tau):g}"


# ----------------------------------------------------------------------------------------------------
# Measures on attention matrices: pure, batched over any leading dims


def _first_reaching(cum_fraction: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """cum_fraction (..., T) nondecreasing in [0, 1], thresholds (n,) -> (n, ...) long: the smallest
    1-based k with cum_fraction[..., k-1] >= threshold, i.e. one plus the number of prefixes below it."""
    T = cum_fraction.size(-1)
    cut = (thresholds.to(cum_fraction) - THRESHOLD_EPS).view(-1, *[1] * cum_fraction.dim())  # (n, 1.., 1)
    below = cum_fraction.unsqueeze(0) < cut  # (n, ..., T)
    return (below.sum(-1) + 1).clamp(max=T)


def _as_thresholds(values: float | Sequence[float]) -> tuple[torch.Tensor, bool]:
    scalar = isinstance(values, (int, float))
    thresholds = torch.tensor([values] if scalar else list(values), dtype=torch.float64)
    if thresholds.numel() == 0 or (thresholds <= 0).any() or (thresholds > 1).any():
        raise ValueError(f"thresholds must be in (0, 1], got {values}")
    return thresholds, scalar


def approx_rank(attn: torch.Tensor, tau: float | Sequence[float]) -> torch.Tensor:
    """attn (..., T, T) -> k* (...) for a float tau, or (n_taus, ...) for a list of taus.

    The squared singular values of A are the eigenvalues of the Gram matrix A A^T, and `eigvalsh` of the
    Gram is twice as fast as `svdvals` of A on CPU (the analysis's second cost after the forward pass).
    Tiny negative eigenvalues from rounding are clamped to 0; the energy fractions are summed in float64.
    """
    thresholds, scalar = _as_thresholds(tau)
    a = attn.float()
    gram = a @ a.transpose(-1, -2)  # (..., T, T), symmetric PSD
    energy = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0).double()  # (..., T): s_i^2, descending
    total = energy.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    k = _first_reaching(energy.cumsum(-1) / total, thresholds)  # (n_taus, ...)
    return k[0] if scalar else k


def column_shares(attn: torch.Tensor) -> torch.Tensor:
    """attn (..., T, T) -> (..., T) share of the squared Frobenius norm in each key column j."""
    col_energy = attn.double().square().sum(-2)  # (..., T): ||A[:, j]||^2
    return col_energy / col_energy.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def column_mass(attn: torch.Tensor, eta: float | Sequence[float]) -> torch.Tensor:
    """attn (..., T, T) -> m* (...) (or (n_etas, ...)): the fewest leading columns, in position order
    and unsorted as in v4's formula, holding >= eta of the squared Frobenius norm."""
    return mass_from_shares(column_shares(attn), eta)


def mass_from_shares(shares: torch.Tensor, eta: float | Sequence[float]) -> torch.Tensor:
    """column_mass from precomputed column shares (..., T), for callers that also need the shares."""
    thresholds, scalar = _as_thresholds(eta)
    m = _first_reaching(shares.cumsum(-1), thresholds)
    return m[0] if scalar else m


# ----------------------------------------------------------------------------------------------------
# Measures on a model


def sample_windows(tokens: np.ndarray, n: int, length: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """n windows of `length` tokens at uniform random starts drawn by a seeded numpy Generator.
    Returns (starts (n,), windows (n, length) int64)."""
    if len(tokens) < length:
        raise AnalysisError(f"the split holds {len(tokens)} tokens, fewer than one window of {length}")
    starts = np.random.default_rng(seed).integers(0, len(tokens) - length + 1, size=n)
    windows = np.stack([np.asarray(tokens[s : s + length], dtype=np.int64) for s in starts])
    return starts, torch.from_numpy(windows)


def attention_per_layer(model: nn.Module, idx: torch.Tensor):
    """Yield each layer's post-softmax attention (B, H, T, T) for idx (B, T), as the model's family computes it
    (our GPT: one layer at a time, without ln_f and the LM head; a test checks it against the forward)."""
    B, T = idx.shape
    if T > model.config.block_size:
        raise AnalysisError(f"sequences of {T} tokens exceed the model's block_size={model.config.block_size}")
    yield from family_of(model).attention_per_layer(model, idx)


def _auto_batch_size(model: nn.Module, seq_len: int) -> int:
    # Some families (Hugging Face) return every layer's attention at once.
    bytes_per_seq = model.config.n_head * seq_len * seq_len * 4 * family_of(model).attention_layers_alive(model)
    return max(1, ATTN_BYTES_BUDGET // bytes_per_seq)


@torch.no_grad()
def measure_attention(
    model: nn.Module,
    val_tokens: np.ndarray,
    n_seq: int = 100,
    seq_len: int = 100,
    taus: Sequence[float] = DEFAULT_TAUS,
    eta: float = 0.9,
    seed: int = 0,
    batch_size: int | None = None,
    near_rank1: float = NEAR_RANK1,
    primary_tau: float = PRIMARY_TAU,
    precision: str = "32",
) -> dict:
    """Rank / column-mass statistics of every layer and head over n_seq random val windows.

    Returns a JSON-able dict (lists, not tensors). Per threshold tau (key `tau_key(tau)`) under
    `per_tau`: rank [L][H] (mean k*), max_rank [L], avg_rank [L], lazy_layers (MaxRank == 1) and
    near_rank1_heads [L] (heads with Rank <= near_rank1). At top level: avg_mass [L] (mean m* at eta),
    column0_mass [L] (mean share of column 0), the primary tau's max_rank / avg_rank / lazy_layers
    copied up, and the same for the last half of the layers (where the paper counts lazy layers).
    `batch_size` (sequences per forward) defaults to what keeps one layer's attention under 256 MiB.
    `precision="bf16"` runs the forward under bfloat16 autocast, as the paper's models were trained: ~2.5x
    faster on CPUs with AMX; the measures themselves are always computed in float32/float64.
    """
    if precision not in ("32", "bf16"):
        raise AnalysisError(f"precision must be '32' or 'bf16', got {precision!r}")
    taus = sorted({float(t) for t in taus} | {float(primary_tau)})
    L, H = model.config.n_layer, model.config.n_head
    starts, windows = sample_windows(val_tokens, n_seq, seq_len, seed)  # windows (N, T)
    device = next(model.parameters()).device
    batch_size = batch_size or _auto_batch_size(model, seq_len)

    k_sum = torch.zeros(len(taus), L, H, dtype=torch.float64)  # sum over sequences of k*
    m_sum = torch.zeros(L, H, dtype=torch.float64)  # sum over sequences of m*
    col0_sum = torch.zeros(L, H, dtype=torch.float64)  # sum over sequences of column-0 share
    was_training = model.training
    model.eval()
    try:
        for i in range(0, n_seq, batch_size):
            idx = windows[i : i + batch_size].to(device)  # (B, T)
            layers = attention_per_layer(model, idx)
            for layer in range(L):
                # Autocast only around the forward step, so the measures below run in full precision.
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    attn = next(layers).float()  # (B, H, T, T)
                k_sum[:, layer] += approx_rank(attn, taus).sum(1).cpu()  # (n_taus, B, H) -> (n_taus, H)
                shares = column_shares(attn)  # (B, H, T)
                m_sum[layer] += mass_from_shares(shares, eta).sum(0).cpu()
                col0_sum[layer] += shares[..., 0].sum(0).cpu()
    finally:
        model.train(was_training)

    rank = k_sum / n_seq  # (n_taus, L, H): Rank(h, l) per tau
    max_rank = rank.amax(-1)  # (n_taus, L)
    avg_rank = rank.mean(-1)  # (n_taus, L)
    per_tau = {}
    for t, tau in enumerate(taus):
        per_tau[tau_key(tau)] = {
            "rank": rank[t].tolist(),
            "max_rank": max_rank[t].tolist(),
            "avg_rank": avg_rank[t].tolist(),
            # k* >= 1 always, so a mean of exactly 1.0 means rank 1 on every sequence and head.
            "lazy_layers": [layer for layer in range(L) if max_rank[t, layer] <= 1.0],
            "near_rank1_heads": (rank[t] <= near_rank1).sum(-1).tolist(),
        }
    primary = per_tau[tau_key(primary_tau)]
    last_half = list(range(L // 2, L))
    mean_max_rank_last_half = float(np.mean([primary["max_rank"][layer] for layer in last_half]))
    return {
        "n_layer": L,
        "n_head": H,
        "n_seq": n_seq,
        "seq_len": seq_len,
        "taus": taus,
        "eta": eta,
        "seed": seed,
        "near_rank1": near_rank1,
        "precision": precision,
        "primary_tau": tau_key(primary_tau),
        "window_starts": starts.tolist(),
        "per_tau": per_tau,
        "max_rank": primary["max_rank"],
        "avg_rank": primary["avg_rank"],
        "lazy_layers": primary["lazy_layers"],
        "avg_mass": (m_sum / n_seq).mean(-1).tolist(),  # (L,)
        "column0_mass": (col0_sum / n_seq).mean(-1).tolist(),  # (L,)
        "last_half": {
            "layers": last_half,
            "n_lazy": sum(layer in primary["lazy_layers"] for layer in last_half),
            "mean_max_rank": mean_max_rank_last_half,
            # PAPER.md: a group of layers is lazy when floor(mean MaxRank) == 1.
            "group_lazy": math.floor(mean_max_rank_last_half) == 1,
        },
    }


def qk_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Frobenius norms of dLoss/dW for W_Q, W_K, W_V and the attention output projection, per layer, from one
    forward/backward on (x, y) (B, T), as {"loss", "q", "k", "v", "proj"} (the slicing of fused projections is
    the family's). Uses `torch.autograd.grad` (`models.loss_and_grads`), so no `.grad` is written and the
    weights, their requires_grad flags and the train/eval mode are left as they were."""
    return family_of(model).qk_grad_norms(model, x, y)


# ----------------------------------------------------------------------------------------------------
# Figures (matplotlib is imported inside the functions, Agg backend: no display needed)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def uniform_baseline(seq_len: int, tau: float, eta: float) -> tuple[int, int]:
    """(k*, m*) of uniform causal attention over `seq_len` tokens (row i spreads 1/(i+1) over keys 0..i): the rank
    and leading columns of a head that attends to nothing in particular, the level a lazy layer's is read against."""
    rows = torch.arange(1, seq_len + 1, dtype=torch.float64)
    uniform = torch.tril(torch.ones(seq_len, seq_len, dtype=torch.float64)) / rows[:, None]
    return int(approx_rank(uniform, tau)), int(column_mass(uniform, eta))


MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")


def plot_max_rank(reports: Mapping[str, dict], path: str | Path, tau: float | None = None) -> Path:
    """Two panels, one line per model: MaxRank(l) at tau (default: each report's primary tau) and AvgMass(l)."""
    plt = _pyplot()
    fig, (ax_rank, ax_mass) = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    n = len(reports)
    for i, (label, report) in enumerate(reports.items()):
        key = tau_key(tau) if tau is not None else report["primary_tau"]
        layers = range(report["n_layer"])
        # Identical series (the same model under two labels, or two models that measure alike) must not hide
        # each other: each later one is drawn thinner, with a smaller hollow marker of another shape, dashed.
        shrink = i / max(n - 1, 1)
        style = dict(marker=MARKERS[i % len(MARKERS)], ms=9 - 5 * shrink, mfc="none", mew=1.2,
                     ls=LINESTYLES[i % len(LINESTYLES)], lw=2.4 - 1.4 * shrink, label=label)
        ax_rank.plot(layers, report["per_tau"][key]["max_rank"], **style)
        ax_mass.plot(layers, report["avg_mass"], **style)
    key = tau_key(tau) if tau is not None else next(iter(reports.values()))["primary_tau"]
    eta = next(iter(reports.values()))["eta"]
    ax_rank.axhline(1, color="grey", ls="--", lw=1, label="rank 1 (lazy layer)")
    seq_lens = {report["seq_len"] for report in reports.values() if "seq_len" in report}
    if len(seq_lens) == 1:  # one baseline per window length; reports of mixed lengths get none
        uniform = uniform_baseline(seq_lens.pop(), float(key), float(eta))
        for ax, value in zip((ax_rank, ax_mass), uniform):
            ax.axhline(value, color="C7", ls=":", lw=1.2, label="uniform causal attention")
    ax_rank.set(xlabel="layer (0-based)", ylabel=f"MaxRank: max over heads of mean k* (tau={key})",
                title="Approximate rank of attention per layer")
    ax_mass.set(xlabel="layer (0-based)", ylabel=f"AvgMass: mean m* (eta={eta:g})",
                title="Leading columns holding the attention mass")
    for ax in (ax_rank, ax_mass):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_rank_heatmap(report: dict, path: str | Path, tau: float | None = None, title: str = "") -> Path:
    """Head x layer heatmap of Rank(h, l) at tau; near-rank-1 heads (Rank <= near_rank1) marked x."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    key = tau_key(tau) if tau is not None else report["primary_tau"]
    rank = np.asarray(report["per_tau"][key]["rank"]).T  # (H, L)
    H, L = rank.shape
    # Wide and tall enough for the two-line title and the colour bar's label at any depth and head count
    # (constrained_layout keeps everything inside the figure only if it fits).
    fig, ax = plt.subplots(figsize=(max(5.5, 0.35 * L + 3), max(3.8, 0.3 * H + 2.2)), constrained_layout=True)
    image = ax.imshow(rank, origin="lower", aspect="auto", cmap="viridis", vmin=1)
    heads, layers = np.nonzero(rank <= report["near_rank1"])
    ax.scatter(layers, heads, marker="x", color="red", s=25, label=f"near rank 1 (Rank <= {report['near_rank1']:g})")
    fig.colorbar(image, ax=ax, label=f"Rank(h, l): mean k*, tau={key}")
    ax.set(xlabel="layer (0-based)", ylabel="head (0-based)")
    ax.set_title(f"{title + chr(10) if title else ''}approximate rank per head (tau={key})", fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(heads):
        ax.legend(loc="upper left", fontsize=8, framealpha=0.8)
    return _save(fig, path)


def default_pairs(n_layer: int, n_head: int) -> list[tuple[int, int]]:
    """(layer, head) pairs in the spirit of the paper's figure (24L Medium: L4H2, L7H3, L20H2, L22H4):
    two early and two late layers at the same depth fractions, heads taken modulo n_head."""
    pairs = []
    for layer_of_24, head in ((4, 2), (7, 3), (20, 2), (22, 4)):
        pair = (min(n_layer - 1, round(layer_of_24 * n_layer / 24)), head % n_head)
        if pair not in pairs:
            pairs.append(pair)
    return pairs


@torch.no_grad()
def plot_attention_maps(
    model: nn.Module,
    tokenizer,
    strings: Sequence[str] | None,
    pairs: Sequence[tuple[int, int]] | None,
    path: str | Path,
    val_tokens: np.ndarray | None = None,
    n_strings: int = 3,
    string_len: int = 40,
    seed: int = 0,
    title: str = "",
) -> dict:
    """Mean over `strings` of the attention of each (layer, head) in `pairs` (default `default_pairs`).

    Without strings, n_strings windows of string_len tokens are drawn from val_tokens. Strings are
    tokenized and cut to a common length (at most string_len) so their maps can be averaged.
    Returns {"pairs", "strings", "n_tokens"} for the record.
    """
    plt = _pyplot()
    L, H = model.config.n_layer, model.config.n_head
    pairs = [tuple(int(v) for v in p) for p in (pairs or default_pairs(L, H))]
    bad = [p for p in pairs if not (0 <= p[0] < L and 0 <= p[1] < H)]
    if bad:
        raise AnalysisError(f"(layer, head) pairs {bad} out of range for a model with {L} layers of {H} heads")
    if strings:
        ids = [tokenizer.encode(s)[:string_len] for s in strings]
        T = min(len(i) for i in ids)
        if T < 2:
            raise AnalysisError("every attention-map string must encode to at least 2 tokens")
        idx = torch.tensor([i[:T] for i in ids], dtype=torch.long)  # (S, T)
    else:
        if val_tokens is None:
            raise AnalysisError("give strings or val_tokens to draw attention maps from")
        _, idx = sample_windows(val_tokens, n_strings, string_len, seed)  # (S, T)
        strings = [tokenizer.decode(row.tolist()) for row in idx] if tokenizer is not None else []
    idx = idx[:, : model.config.block_size].to(next(model.parameters()).device)
    S, T = idx.shape

    was_training = model.training
    model.eval()
    wanted_layers = {layer for layer, _ in pairs}
    mean_attn = {}  # layer -> (H, T, T) mean over strings
    try:
        for layer, attn in enumerate(attention_per_layer(model, idx)):  # attn (S, H, T, T)
            if layer in wanted_layers:
                mean_attn[layer] = attn.float().mean(0).cpu()
            if layer == max(wanted_layers):
                break
    finally:
        model.train(was_training)

    n_cols = min(4, len(pairs))
    n_rows = math.ceil(len(pairs) / n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.4 * n_cols, 3.3 * n_rows), squeeze=False,
                             constrained_layout=True)
    for ax, (layer, head) in zip(axes.flat, pairs):
        image = ax.imshow(mean_attn[layer][head].numpy(), cmap="viridis", vmin=0)
        ax.set(title=f"L{layer}H{head}", xlabel="key position", ylabel="query position")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[len(pairs) :]:
        ax.axis("off")
    fig.suptitle(f"{title + ': ' if title else ''}attention (mean over {S} strings of {T} tokens)")
    _save(fig, path)
    return {"pairs": [list(p) for p in pairs], "strings": list(strings), "n_tokens": T}


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------
# Checkpoints -> analysis.json, figures, max_rank.md


def _safe_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def check_inputs(ckpt_paths: Mapping[str, str | Path], data_dir: str | Path, seq_len: int) -> dict:
    """Fail before any compute: checkpoints exist and are ours, the data is prepared, the
    windows fit every model's context and the tokenizer's ids fit every model's vocabulary.
    Returns {label: model config dict}."""
    from lit_inheritune.data.prepare import DataError, load_prepared
    from lit_inheritune.runs import checkpoint_config

    if not ckpt_paths:
        raise AnalysisError("no checkpoint given: pass ckpt=PATH or ckpts={label: PATH, ...}")
    missing = {label: str(p) for label, p in ckpt_paths.items() if not Path(p).is_file()}
    if missing:
        raise AnalysisError(f"checkpoint file(s) not found: {missing}")
    try:
        # Sizes are still checked; hashing a multi-GB train shard would cost minutes for a val-only analysis.
        manifest, _, val = load_prepared(data_dir, verify_checksum=False)
    except DataError as e:
        raise AnalysisError(str(e)) from e
    if len(val) < seq_len + 1:
        raise AnalysisError(f"{data_dir} val split holds {len(val)} tokens, too few for windows of {seq_len}")
    configs = {}
    for label, p in ckpt_paths.items():
        config = checkpoint_config(p)  # CheckpointError naming a corrupt or foreign file
        if seq_len > config["block_size"]:
            raise AnalysisError(f"seq_len={seq_len} exceeds block_size={config['block_size']} of {label} ({p})")
        if manifest["vocab_size"] > config["vocab_size"]:
            raise AnalysisError(f"{data_dir} has {manifest['vocab_size']} token ids but {label} ({p}) has "
                                f"vocab_size={config['vocab_size']}: the checkpoint was trained on other data")
        configs[label] = config
    return configs


def write_markdown(reports: Mapping[str, dict], path: str | Path, prov: dict) -> Path:
    """Layer x model table of MaxRank, AvgMass and lazy flags, with provenance lines on top."""
    labels = list(reports)
    first = reports[labels[0]]
    lines = [
        "# Attention degeneration: MaxRank and AvgMass per layer",
        "",
        f"- command: `{prov['command']}`",
        f"- commit: {prov['commit']}",
        f"- hardware: {prov['hardware']}",
        f"- date: {prov['date']}",
        f"- {first['n_seq']} val windows of {first['seq_len']} tokens (seed {first['seed']}); "
        f"MaxRank at tau={first['primary_tau']}, AvgMass at eta={first['eta']:g}; lazy = MaxRank == 1",
        "",
        "| layer | " + " | ".join(f"{lb} MaxRank | {lb} AvgMass | {lb} lazy" for lb in labels) + " |",
        "|---:|" + "---:|---:|:---:|" * len(labels),
    ]
    for layer in range(max(r["n_layer"] for r in reports.values())):
        cells = []
        for r in reports.values():
            if layer < r["n_layer"]:
                lazy = "yes" if layer in r["lazy_layers"] else ""
                cells += [f"{r['max_rank'][layer]:.2f}", f"{r['avg_mass'][layer]:.2f}", lazy]
            else:
                cells += ["", "", ""]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    lines += ["", "| model | lazy layers (tau " + " / ".join(first["per_tau"]) + ") | lazy in last half "
              "| floor(mean MaxRank) of last half == 1 | near-rank-1 heads (Rank <= "
              f"{first['near_rank1']:g}; tau " + " / ".join(first["per_tau"]) + ") |", "|---|---|---:|:---:|---|"]
    for label, r in reports.items():
        per_tau = " / ".join(str(len(v["lazy_layers"])) for v in r["per_tau"].values())
        half = r["last_half"]
        heads = r["n_layer"] * r["n_head"]
        near = " / ".join(str(sum(v["near_rank1_heads"])) for v in r["per_tau"].values())
        lines.append(f"| {label} | {per_tau} | {half['n_lazy']} of {len(half['layers'])} "
                     f"| {'yes' if half['group_lazy'] else 'no'} | {near} of {heads} |")
    none = [label for label, r in reports.items() if not any(
        v["lazy_layers"] or any(v["near_rank1_heads"]) for v in r["per_tau"].values())]
    if none:
        lines += ["", f"No lazy layer and no near-rank-1 head at any tau in: {', '.join(none)}."]
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def analyze_checkpoint(
    ckpt_paths: Mapping[str, str | Path],
    data_dir: str | Path,
    out_dir: str | Path,
    n_seq: int = 100,
    seq_len: int = 100,
    taus: Sequence[float] = DEFAULT_TAUS,
    eta: float = 0.9,
    seed: int = 0,
    near_rank1: float = NEAR_RANK1,
    pairs: Sequence[tuple[int, int]] | None = None,
    strings: Sequence[str] | None = None,
    grad_batch_size: int = 8,
    batch_size: int | None = None,
    command: str | None = None,
    precision: str = "32",
) -> dict:
    """Analyse each checkpoint on the val split of data_dir and write to out_dir: analysis.json
    (reports, Q/K gradient norms, attention-map strings, provenance), max_rank.png, max_rank.md,
    rank_heatmap_<label>.png and attention_maps_<label>.png. Returns what analysis.json holds."""
    from lit_inheritune.data.prepare import load_prepared
    from lit_inheritune.models import load_checkpoint
    from lit_inheritune.provenance import provenance
    from lit_inheritune.tokenizer import load_tokenizer

    check_inputs(ckpt_paths, data_dir, seq_len)
    manifest, _, val_tokens = load_prepared(data_dir, verify_checksum=False)
    tokenizer = load_tokenizer(manifest["tokenizer"], data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # The gradient batch: windows of seq_len + 1 tokens (inputs and shifted targets), another seed.
    _, grad_windows = sample_windows(val_tokens, grad_batch_size, seq_len + 1, seed + 1)
    x, y = grad_windows[:, :-1], grad_windows[:, 1:]  # (B, T) each

    reports, grads, maps = {}, {}, {}
    for label, path in ckpt_paths.items():
        model = load_checkpoint(path)
        reports[label] = measure_attention(model, val_tokens, n_seq=n_seq, seq_len=seq_len, taus=taus, eta=eta,
                                           seed=seed, batch_size=batch_size, near_rank1=near_rank1,
                                           precision=precision)
        reports[label]["checkpoint"] = str(path)
        grads[label] = qk_grad_norms(model, x, y)
        plot_rank_heatmap(reports[label], out_dir / f"rank_heatmap_{_safe_label(label)}.png", title=label)
        maps[label] = plot_attention_maps(model, tokenizer, strings, pairs,
                                          out_dir / f"attention_maps_{_safe_label(label)}.png",
                                          val_tokens=val_tokens, seed=seed, title=label)
        del model
    plot_max_rank(reports, out_dir / "max_rank.png")
    prov = provenance(command)
    result = {"provenance": prov, "data_dir": str(data_dir), "reports": reports, "grad_norms": grads,
              "attention_maps": maps}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1))
    write_markdown(reports, out_dir / "max_rank.md", prov)
    return result


# ----------------------------------------------------------------------------------------------------
# A pretrained model (one whose family loads pretrained weights, e.g. Hugging Face) on local text


def _split_at(tokens: np.ndarray, eot_id: int) -> list[np.ndarray]:
    cuts = np.flatnonzero(tokens == eot_id)
    return [d for d in np.split(tokens, cuts) if len(d)]


def text_tokens(tokenizer, data_dir=None, text=None) -> tuple[np.ndarray, str]:
    """Token ids (documents joined by the EOT id) for analysing a pretrained model with its own tokenizer, and
    where they came from: the val split of a prepared dataset (re-tokenized with the model's tokenizer unless
    it was prepared with it), or text files (a file, a directory of .txt files, or a list of either)."""
    from lit_inheritune.data.prepare import load_prepared
    from lit_inheritune.tokenizer import load_tokenizer

    if data_dir is not None:
        manifest, _, val = load_prepared(data_dir, verify_checksum=False)
        spec, ours = manifest["tokenizer"], tokenizer.spec()
        if all(spec.get(key) == ours.get(key) for key in ("kind", "vocab_size", "path")):
            return np.asarray(val, dtype=np.int64), f"{data_dir} (val split)"
        own = load_tokenizer(spec, Path(data_dir))
        docs = [own.decode(d) for d in _split_at(np.asarray(val), own.eot_id)]
        where = f"{data_dir} (val split, re-tokenized from {own.name})"
    else:
        if text is None:
            raise ValueError("give data_dir (a prepared dataset) or text (files or a directory of .txt files)")
        files = []
        for item in [text] if isinstance(text, (str, os.PathLike)) else list(text):
            item = Path(item)
            files += sorted(item.glob("*.txt")) if item.is_dir() else [item]
        if not files:
            raise ValueError(f"no text files in {text}")
        docs = [f.read_text(encoding="utf-8") for f in files]
        where = f"{len(files)} text files from {text}"
    ids = []
    for doc in tokenizer.encode_batch(docs):
        ids += doc + [tokenizer.eot_id]
    return np.asarray(ids, dtype=np.int64), where


def analyze_pretrained(family, path: str, out_dir, gguf_file: str | None = None, cache_dir=None, data_dir=None,
                       text=None, label: str | None = None, n_seq: int = 100, seq_len: int = 100,
                       taus=(0.8, 0.85, 0.9, 0.95), eta: float = 0.9, seed: int = 0, near_rank1: float = 1.5,
                       batch_size: int | None = None, precision: str = "32", command: str | None = None) -> dict:
    """Attention degeneration (PAPER.md section 5) of a pretrained model of `family` (a `models.ModelFamily`;
    `path`: a name it knows, a local dir or a hub id, `gguf_file` a GGUF file inside it) on n_seq windows of
    seq_len tokens of local text; writes analysis.json, max_rank.md, max_rank.png and rank_heatmap_<label>.png
    to out_dir."""
    from lit_inheritune.provenance import provenance

    started = time.perf_counter()
    model, tokenizer, source = family.pretrained_model(path, gguf_file, cache_dir)
    label = label or Path(source["gguf_file"] or source["path"]).stem
    loaded = time.perf_counter()
    tokens, where = text_tokens(tokenizer, data_dir=data_dir, text=text)
    if seq_len > model.block_size:
        raise AnalysisError(f"seq_len={seq_len} exceeds the model's {model.block_size} positions")
    report = measure_attention(model, tokens, n_seq=n_seq, seq_len=seq_len, taus=taus, eta=eta, seed=seed,
                               batch_size=batch_size, near_rank1=near_rank1, precision=precision)
    report.update(model=source["path"], gguf_file=source["gguf_file"], text=where, load_seconds=loaded - started,
                  measure_seconds=time.perf_counter() - loaded)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_max_rank({label: report}, out_dir / "max_rank.png")
    plot_rank_heatmap(report, out_dir / f"rank_heatmap_{_safe_label(label)}.png", title=label)
    prov = provenance(command)
    result = {"provenance": prov, "text": where, "reports": {label: report}}
    (out_dir / "analysis.json").write_text(json.dumps(result, indent=1))
    write_markdown({label: report}, out_dir / "max_rank.md", prov)
    return result
