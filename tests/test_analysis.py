"""Attention-degeneration measures against matrices with known answers, then on tiny models and the CLI."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_inheritune.analysis import (
    AnalysisError,
    analyze_checkpoint,
    approx_rank,
    attention_per_layer,
    column_mass,
    column_shares,
    default_pairs,
    measure_attention,
    qk_grad_norms,
)
from lit_inheritune.models.gpt import GPT, GPTConfig

TAUS = [0.6, 0.8, 0.85, 0.9, 0.95, 0.99]


def sink(T: int) -> torch.Tensor:
    """Every query attends only to token 0: rank 1, all mass in column 0."""
    A = torch.zeros(T, T)
    A[:, 0] = 1.0
    return A


def three_blocks() -> torch.Tensor:
    """12 x 12 causal attention with 3 distinct rows on disjoint column sets (so orthogonal):
    rows 0-3 -> column 0; rows 4-7 -> columns 1-4 uniformly; rows 8-11 -> columns 5-8 uniformly.
    Squared singular values are the groups' energies, 4 rows x ||row||^2: 4, 1, 1 (total 6),
    so the top-k energy fractions are 4/6, 5/6, 1."""
    A = torch.zeros(12, 12)
    A[0:4, 0] = 1.0
    A[4:8, 1:5] = 1 / 4
    A[8:12, 5:9] = 1 / 4
    return A


def random_attention(*shape: int, T: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(*shape, T, T, generator=g)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return logits.masked_fill(~causal, float("-inf")).softmax(-1)


def test_sink_is_rank_one_with_all_mass_in_column_zero():
    A = sink(16)
    assert approx_rank(A, 0.9).item() == 1
    assert approx_rank(A, TAUS).tolist() == [1] * len(TAUS)
    assert column_mass(A, 0.9).item() == 1
    assert column_shares(A)[0].item() == pytest.approx(1.0)


@pytest.mark.parametrize("T", [10, 16, 100])
def test_causal_identity_needs_ceil_tau_T(T):
    A = torch.eye(T)  # each token attends to itself only: all singular values 1, all columns equal
    for tau in TAUS:
        assert approx_rank(A, tau).item() == math.ceil(round(tau * T, 9))
        assert column_mass(A, tau).item() == math.ceil(round(tau * T, 9))


def test_block_structure_has_its_known_rank_and_column_mass():
    A = three_blocks()
    # energy fractions 0.667, 0.833, 1 -> the first k reaching each tau
    expected = {0.6: 1, 0.8: 2, 0.85: 3, 0.9: 3, 0.95: 3, 0.99: 3, 0.999: 3}
    assert approx_rank(A, list(expected)).tolist() == list(expected.values())
    # column energies 4, then 0.25 each for columns 1-8 (total 6): 0.9 * 6 = 5.4 needs 4 + 6 * 0.25 -> 7 columns
    assert column_mass(A, 0.9).item() == 7
    assert column_mass(A, 0.6).item() == 1


def test_thresholds_are_monotone():
    A = random_attention(4, 3, T=24)
    k = approx_rank(A, TAUS)  # (n_taus, 4, 3)
    m = column_mass(A, TAUS)
    assert k.shape == m.shape == (len(TAUS), 4, 3)
    assert (k.diff(dim=0) >= 0).all() and (m.diff(dim=0) >= 0).all()
    assert (k >= 1).all() and (k <= 24).all() and (m >= 1).all() and (m <= 24).all()


def test_batched_equals_per_matrix():
    A = random_attention(3, 4, T=20, seed=1)  # (B, H, T, T)
    k = approx_rank(A, TAUS)
    m = column_mass(A, 0.9)
    for b in range(3):
        for h in range(4):
            assert approx_rank(A[b, h], TAUS).tolist() == k[:, b, h].tolist()
            assert column_mass(A[b, h], 0.9).item() == m[b, h].item()
    # the scalar-tau form is the list form's row
    assert torch.equal(approx_rank(A, 0.9), k[TAUS.index(0.9)])


def test_thresholds_must_be_fractions():
    with pytest.raises(ValueError, match="thresholds"):
        approx_rank(sink(4), 1.5)
    with pytest.raises(ValueError, match="thresholds"):
        column_mass(sink(4), [])


def tiny_gpt(n_layer: int = 3, n_head: int = 4, block_size: int = 16, vocab_size: int = 512) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=32, block_size=block_size, vocab_size=vocab_size))


def test_attention_per_layer_matches_the_model_forward():
    model = tiny_gpt().eval()
    idx = torch.randint(0, 512, (2, 16))
    with torch.no_grad():
        expected = model(idx, return_attn=True)["attn"]
        got = list(attention_per_layer(model, idx))
    assert len(got) == len(expected) == 3
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


def test_measure_attention_shapes_and_orderings():
    model = tiny_gpt()
    val = np.random.default_rng(0).integers(0, 512, size=500).astype(np.uint16)
    report = measure_attention(model, val, n_seq=10, seq_len=16, taus=(0.8, 0.9), batch_size=4)
    json.dumps(report)  # plain data only
    assert model.training  # mode restored
    assert report["taus"] == [0.8, 0.9] and report["primary_tau"] == "0.9"
    assert len(report["window_starts"]) == 10
    for key in ("max_rank", "avg_rank", "avg_mass", "column0_mass"):
        assert len(report[key]) == 3
    for per in report["per_tau"].values():
        assert np.asarray(per["rank"]).shape == (3, 4)
        assert len(per["near_rank1_heads"]) == 3
        assert all(mx >= av - 1e-12 for mx, av in zip(per["max_rank"], per["avg_rank"]))
        assert all(1 <= r <= 16 for row in per["rank"] for r in row)
    # higher tau never lowers the rank
    assert all(a <= b for a, b in zip(report["per_tau"]["0.8"]["max_rank"], report["per_tau"]["0.9"]["max_rank"]))
    # the same seed draws the same windows and gives the same numbers, whatever the batch size
    again = measure_attention(model, val, n_seq=10, seq_len=16, taus=(0.8, 0.9), batch_size=10)
    assert again["window_starts"] == report["window_starts"]
    np.testing.assert_allclose(again["per_tau"]["0.9"]["rank"], report["per_tau"]["0.9"]["rank"])
    with pytest.raises(AnalysisError, match="block_size"):
        measure_attention(model, val, n_seq=2, seq_len=17)


def test_lazy_layers_and_near_rank1_heads_are_counted(monkeypatch, tmp_path):
    """Stub the attention so the answers are known: layer 0 random, layer 1 all sink (lazy),
    layer 2 one sink head among random ones."""
    from lit_inheritune import analysis

    def fake_attention(model, idx):
        B, T = idx.shape
        H = model.config.n_head
        yield random_attention(B, H, T=T, seed=1)
        yield sink(T).expand(B, H, T, T)
        mixed = random_attention(B, H, T=T, seed=2)
        mixed[:, 0] = sink(T)
        yield mixed

    monkeypatch.setattr(analysis, "attention_per_layer", fake_attention)
    val = np.arange(200, dtype=np.uint16)
    report = measure_attention(tiny_gpt(), val, n_seq=5, seq_len=16, near_rank1=1.5)
    assert report["lazy_layers"] == [1]
    assert report["max_rank"][1] == 1.0 and report["avg_mass"][1] == 1.0
    assert report["column0_mass"][1] == pytest.approx(1.0)
    assert report["per_tau"]["0.9"]["near_rank1_heads"][1:] == [4, 1]
    assert report["per_tau"]["0.9"]["rank"][2][0] == 1.0
    assert report["last_half"] == {"layers": [1, 2], "n_lazy": 1, "mean_max_rank": pytest.approx(
        (1 + report["max_rank"][2]) / 2), "group_lazy": math.floor((1 + report["max_rank"][2]) / 2) == 1}
    assert all(report["per_tau"][key]["lazy_layers"] == [1] for key in report["per_tau"])

    # the table says in words which models have nothing lazy at any tau
    monkeypatch.undo()
    clean = measure_attention(tiny_gpt(), val, n_seq=5, seq_len=16, near_rank1=0.5)  # no head can be <= 0.5
    prov = dict(command="c", commit="x", hardware="h", date="d")
    path = analysis.write_markdown({"lazy": report, "clean": clean}, tmp_path / "max_rank.md", prov)
    assert path.read_text().rstrip().endswith("No lazy layer and no near-rank-1 head at any tau in: clean.")
    analysis.write_markdown({"lazy": report}, path, prov)
    assert "No lazy layer" not in path.read_text()


def test_qk_grad_norms_leave_the_model_untouched():
    model = tiny_gpt()
    model.transformer.h[1].attn.c_attn.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randint(0, 512, (2, 16))
    y = torch.randint(0, 512, (2, 16))
    norms = qk_grad_norms(model, x, y)
    for key in ("q", "k", "v", "proj"):
        assert len(norms[key]) == 3 and all(n > 0 for n in norms[key])
    assert norms["loss"] > 0
    assert all(p.grad is None for p in model.parameters())
    assert not model.transformer.h[1].attn.c_attn.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_default_pairs_follow_the_paper_and_fit_small_models():
    assert default_pairs(24, 16) == [(4, 2), (7, 3), (20, 2), (22, 4)]
    assert default_pairs(16, 16) == [(3, 2), (5, 3), (13, 2), (15, 4)]
    assert all(0 <= layer < 2 and 0 <= head < 2 for layer, head in default_pairs(2, 2))


def save_tiny_checkpoint(path: Path, model: GPT) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config.to_dict()}}, path)
    return path


def test_cli_end_to_end(tmp_path, fixture_data_dir, run_in_process):
    """`python -m lit_inheritune.analyze`, run in this process (conftest.run_in_process; test_cli_errors.py runs the
    analyze CLI as a real interpreter)."""
    first = save_tiny_checkpoint(tmp_path / "runs" / "vanilla-s1" / "checkpoints" / "last.ckpt", tiny_gpt(3))
    second = save_tiny_checkpoint(tmp_path / "runs" / "inh-s1" / "checkpoints" / "last.ckpt", tiny_gpt(2))
    done = run_in_process(["lit_inheritune.analyze", f"ckpt={first}", f"+ckpts.inheritune={second}",
                           f"data_dir={fixture_data_dir}", "n_seq=6", "seq_len=16", "grad_batch_size=2"], tmp_path)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "vanilla-s1" / "analysis"  # default: next to the first checkpoint's run dir
    result = json.loads((out / "analysis.json").read_text())
    assert set(result["reports"]) == {"vanilla-s1", "inheritune"}
    assert result["reports"]["inheritune"]["n_layer"] == 2
    assert {"command", "commit", "hardware", "date"} <= set(result["provenance"])
    assert len(result["attention_maps"]["vanilla-s1"]["strings"]) == 3
    for name in ("max_rank.png", "rank_heatmap_vanilla-s1.png", "rank_heatmap_inheritune.png",
                 "attention_maps_vanilla-s1.png", "attention_maps_inheritune.png"):
        assert (out / name).stat().st_size > 1000, name
    table = (out / "max_rank.md").read_text()
    assert "- commit:" in table and "- hardware:" in table and "| vanilla-s1 MaxRank |" in table
    inh = result["reports"]["inheritune"]
    near = " / ".join(str(sum(v["near_rank1_heads"])) for v in inh["per_tau"].values())
    assert f"| {near} of {2 * inh['n_head']} |" in table  # near-rank-1 heads per tau, of all heads


def test_bad_requests_fail_clearly_before_compute(tmp_path, fixture_data_dir, run_in_process):
    ckpt = save_tiny_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tiny_gpt(2))
    with pytest.raises(AnalysisError, match="does not exist"):
        analyze_checkpoint({"a": ckpt}, tmp_path / "no-data", tmp_path / "out")
    with pytest.raises(AnalysisError, match="exceeds block_size=16"):
        analyze_checkpoint({"a": ckpt}, fixture_data_dir, tmp_path / "out", seq_len=17)
    small_vocab = save_tiny_checkpoint(tmp_path / "small" / "last.ckpt", tiny_gpt(2, vocab_size=300))
    with pytest.raises(AnalysisError, match="vocab_size=300"):
        analyze_checkpoint({"a": small_vocab}, fixture_data_dir, tmp_path / "out", seq_len=16)
    assert not (tmp_path / "out").exists()
    # and through the CLI (in this process, as above): a one-line message, no traceback
    missing = run_in_process(["lit_inheritune.analyze", f"ckpt={tmp_path / 'nope.ckpt'}",
                              f"data_dir={fixture_data_dir}"], tmp_path)
    assert missing.returncode != 0 and "error: checkpoint file(s) not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_approx_rank_equals_the_singular_value_definition_on_random_attention():
    """The Gram-eigenvalue path gives the k* that singular values of A give, per PAPER.md's definition."""
    torch.manual_seed(0)
    T = 50
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    logits = torch.randn(40, 4, T, T) * torch.linspace(0.1, 6.0, 40).view(-1, 1, 1, 1)  # flat .. peaked
    attn = logits.masked_fill(~causal, float("-inf")).softmax(-1)
    s2 = torch.linalg.svdvals(attn.double()).square()
    fraction = s2.cumsum(-1) / s2.sum(-1, keepdim=True)
    for tau in (0.8, 0.9, 0.95):
        expected = (fraction < tau).sum(-1) + 1
        assert torch.equal(approx_rank(attn, tau), expected)


def test_bf16_forward_agrees_with_fp32_and_leaves_autocast_off():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=32, vocab_size=64))
    tokens = np.random.default_rng(0).integers(0, 64, size=5000).astype(np.uint16)
    exact = measure_attention(model, tokens, n_seq=8, seq_len=32)
    fast = measure_attention(model, tokens, n_seq=8, seq_len=32, precision="bf16")
    assert not torch.is_autocast_enabled("cpu")
    assert fast["precision"] == "bf16"
    assert np.allclose(exact["max_rank"], fast["max_rank"], atol=0.5)
    with pytest.raises(AnalysisError, match="precision"):
        measure_attention(model, tokens, n_seq=2, seq_len=8, precision="fp8")


def one_hot_groups(T: int, k: int) -> torch.Tensor:
    """T x T causal attention whose rows fall in k equal groups, each attending only to its group's first token:
    the squared singular values are the groups' sizes (A^T A is diagonal), T/k each, so the top-i energy fraction is
    i/k and k* is the smallest i with i/k >= tau (k = 1 is the sink)."""
    A = torch.zeros(T, T)
    for g in range(k):
        rows = slice(g * T // k, (g + 1) * T // k)
        A[rows, g * T // k] = 1.0
    return A


def test_max_rank_is_the_max_over_heads_and_avg_rank_the_mean(monkeypatch):
    """A model whose heads have known ranks, different per head, layer and sequence (T = 16): one-hot groups of
    1, 2 and 4 columns (k* = 1, 2, 4 at tau 0.9; 1, 1, 2 at tau 0.5) and the causal identity (k* = 15 at 0.9, 8 at
    0.5). Rank(h, l) is the mean over sequences, MaxRank(l) the max over heads, AvgRank(l) their mean."""
    from lit_inheritune.models import gpt

    T, taus = 16, (0.5, 0.9)
    known = {"sink": one_hot_groups(T, 1), "two": one_hot_groups(T, 2), "four": one_hot_groups(T, 4),
             "eye": torch.eye(T)}
    k_star = {0.5: {"sink": 1, "two": 1, "four": 2, "eye": 8}, 0.9: {"sink": 1, "two": 2, "four": 4, "eye": 15}}
    # per layer, per head: the pattern on even and on odd sequences
    heads = [[("two", "two"), ("eye", "eye"), ("sink", "sink"), ("four", "four")],
             [("sink", "four"), ("two", "two"), ("sink", "sink"), ("four", "two")]]
    seen = [0]  # sequences measured so far: the analysis batches them

    def known_attention(model, idx):
        B = idx.size(0)
        parity = [(seen[0] + b) % 2 for b in range(B)]
        seen[0] += B
        for layer in heads:
            yield torch.stack([torch.stack([known[head[p]] for head in layer]) for p in parity])  # (B, H, T, T)

    monkeypatch.setattr(gpt, "attention_per_layer", known_attention)
    model = tiny_gpt(n_layer=2, n_head=4, block_size=T)
    report = measure_attention(model, np.arange(500, dtype=np.uint16), n_seq=6, seq_len=T, taus=taus, batch_size=4)
    for tau in taus:
        rank = [[(k_star[tau][even] + k_star[tau][odd]) / 2 for even, odd in layer] for layer in heads]
        per = report["per_tau"][f"{tau:g}"]
        assert per["rank"] == rank, tau
        assert per["max_rank"] == [max(r) for r in rank], tau
        assert per["avg_rank"] == [sum(r) / len(r) for r in rank], tau
    # at the paper's tau: layer 0 peaks at its identity head (15) and averages 5.5; layer 1 at 3 and averages 2.125
    assert report["max_rank"] == [15.0, 3.0] and report["avg_rank"] == [5.5, 2.125]
    assert report["lazy_layers"] == [] and report["per_tau"]["0.9"]["near_rank1_heads"] == [1, 1]
