"""The layer study's measures (lit_inheritune/layer_study.py) on tiny models where the answer is known, on both
families, then the command."""

import copy
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lit_inheritune.layer_study import (
    STRATEGIES,
    block_influence,
    blocks_skipped,
    layer_study,
    pearson,
    ranks,
    removal_losses,
    select_blocks,
    spearman,
    val_loss,
)
from lit_inheritune.models import family_of
from lit_inheritune.models.common import SurgeryError
from lit_inheritune.models.gpt import GPT, GPTConfig

VOCAB = 64


def tiny_gpt(n_layer: int = 4, block_size: int = 16, vocab_size: int = VOCAB, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    # scale_attn_by_inverse_layer_idx (the default): a block that moved would change its attention scale
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=32, block_size=block_size, vocab_size=vocab_size)).eval()


def windows(n: int = 6, T: int = 16, vocab: int = VOCAB, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, vocab, (n, T + 1), generator=g)
    return rows[:, :-1], rows[:, 1:]


def zero_outputs(block) -> None:
    """Zero a GPT block's residual projections: it adds nothing to the stream, an identity."""
    with torch.no_grad():
        block.attn.c_proj.weight.zero_()
        block.mlp.c_proj.weight.zero_()


class Turn(torch.nn.Module):
    """A stand-in block with our GPT block's signature whose output is cos(theta) h + sin(theta) J h, J turning each
    pair of coordinates by 90 degrees (J h is orthogonal to h and as long), times `scale`: cos(h_in, h_out) is
    sign(scale) cos(theta) on every token, so BI = 1 - sign(scale) cos(theta) exactly."""

    def __init__(self, theta: float, scale: float = 1.0):
        super().__init__()
        self.theta, self.scale = theta, scale

    def forward(self, x, return_attn=False):
        turned = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)  # (a, b) -> (-b, a)
        return self.scale * (math.cos(self.theta) * x + math.sin(self.theta) * turned), None


def manual_hidden_states(model: GPT, x: torch.Tensor) -> list[torch.Tensor]:
    """h_0 (embeddings) ... h_L (before ln_f), computed block by block."""
    pos = torch.arange(x.shape[1])
    h = [model.transformer.wte(x) + model.transformer.wpe(pos)]
    for block in model.transformer.h:
        h.append(block(h[-1])[0])
    return h


# ----------------------------------------------------------------------------------------------------
# Block Influence


def test_block_influence_of_an_identity_block_is_zero_and_removing_it_changes_nothing():
    model = tiny_gpt()
    zero_outputs(model.transformer.h[2])
    x, y = windows()
    bi = block_influence(model, x, batch_size=4)
    assert abs(bi[2]) < 1e-6
    assert all(b > 1e-4 for i, b in enumerate(bi) if i != 2)  # the others do move the hidden state
    full = val_loss(model, x, y)
    removed = removal_losses(model, x, y, batch_size=4)
    assert removed[2] == pytest.approx(full, abs=1e-6)
    assert all(abs(r - full) > 1e-5 for i, r in enumerate(removed) if i != 2)


@pytest.mark.parametrize("theta, scale", [(math.pi / 3, 1.0), (math.pi / 2, 1.0), (0.0, 3.0), (0.0, -1.0),
                                          (math.pi / 4, -2.0)])
def test_block_influence_of_a_turning_or_scaling_block_is_known(theta, scale):
    model = tiny_gpt()
    model.transformer.h[1] = Turn(theta, scale)
    x, _ = windows()
    bi = block_influence(model, x, batch_size=4)
    assert bi[1] == pytest.approx(1 - math.copysign(1, scale) * math.cos(theta), abs=1e-5)


def test_block_influence_is_one_minus_the_mean_cosine_of_each_blocks_input_and_output():
    model = tiny_gpt(n_layer=3)
    x, _ = windows(n=5)
    with torch.no_grad():
        h = manual_hidden_states(model, x)
    expected = [1 - torch.nn.functional.cosine_similarity(h[i], h[i + 1], dim=-1).mean().item() for i in range(3)]
    got = block_influence(model, x, batch_size=2)  # 5 windows in batches of 2, 2, 1: every token weighs the same
    assert got == pytest.approx(expected, abs=1e-6)
    assert model.transformer.h[0]._forward_hooks == {}  # the hooks are gone


# ----------------------------------------------------------------------------------------------------
# Removal


def test_a_removed_block_is_the_model_without_it_and_the_model_is_restored():
    model = tiny_gpt(n_layer=4)
    x, y = windows()
    full = val_loss(model, x, y)
    removed = removal_losses(model, x, y, batch_size=4)
    for i in range(4):
        without = copy.deepcopy(model)
        del without.transformer.h[i]  # every other block keeps its own attention scale
        assert removed[i] == pytest.approx(val_loss(without, x, y), abs=1e-6)
        # the same model through the family's surgery: the other blocks, whole, at their source scale
        others = [b for b in range(4) if b != i]
        inherited = family_of(model).inherit(model, blocks=others, parts="block", copy_wpe=True, copy_ln_f=True,
                                             attn_scale="source")
        assert removed[i] == pytest.approx(val_loss(inherited, x, y), abs=1e-6)
    assert val_loss(model, x, y) == full  # no hook left behind
    with blocks_skipped(model, [0, 1, 2, 3]):  # every block skipped: embeddings -> ln_f -> head
        logits = model(x)["logits"]
    pos = torch.arange(x.shape[1])
    direct = model.lm_head(model.transformer.ln_f(model.transformer.wte(x) + model.transformer.wpe(pos)))
    torch.testing.assert_close(logits, direct)
    with pytest.raises(Exception, match="out of range"):
        with blocks_skipped(model, [4]):
            pass


def test_val_loss_weighs_every_token_once_whatever_the_batches():
    model = tiny_gpt()
    x, y = windows(n=7)
    with torch.no_grad():
        expected = model(x, y)["loss"].item()
    for batch_size in (1, 3, 7, 100):
        assert val_loss(model, x, y, batch_size) == pytest.approx(expected, abs=1e-6)
    assert not model.training


def _tiny_llama(n_layer: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_inheritune.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=n_layer, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, tie_word_embeddings=True)
    return HFCausalLM(LlamaForCausalLM(config).eval(), block_size=16).eval()


def test_measures_on_a_hugging_face_model():
    """The same measures through the HF family: decoder layers called with `hidden_states` returning a tensor."""
    model = _tiny_llama()
    x, y = windows()
    layer = model.hf.model.layers[1]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()
    bi = block_influence(model, x, batch_size=4)
    assert abs(bi[1]) < 1e-6 and all(b > 1e-4 for i, b in enumerate(bi) if i != 1)
    full = val_loss(model, x, y)
    removed = removal_losses(model, x, y, batch_size=4)
    assert removed[1] == pytest.approx(full, abs=1e-6)
    fam = family_of(model)
    for i in (0, 3):
        inherited = fam.inherit(model, blocks=[b for b in range(4) if b != i])
        assert removed[i] == pytest.approx(val_loss(inherited, x, y), abs=1e-5)


# ----------------------------------------------------------------------------------------------------
# Selection and correlations


def test_each_strategy_selects_its_blocks_in_reference_order():
    avg_rank = [5.0, 1.0, 3.0, 1.0, 9.0, 2.0]
    bi = [0.9, 0.01, 0.3, 0.02, 0.05, 0.2]
    pick = lambda s, n=3, seed=0: select_blocks(s, n, 6, avg_rank, bi, seed)
    assert pick("first") == [0, 1, 2]
    assert pick("potent") == [0, 2, 4]  # AvgRank 9, 5, 3
    assert pick("lazy") == [1, 3, 5]  # AvgRank 1, 1, 2
    assert pick("block_influence") == [0, 2, 5]  # BI 0.9, 0.3, 0.2
    assert pick("lazy", 1) == [1]  # a tie goes to the earlier block
    draws = {tuple(pick("random", 3, seed)) for seed in range(20)}
    assert pick("random", 3, 0) == pick("random", 3, 0) == sorted(np.random.default_rng(0).choice(6, 3, replace=False))
    assert len(draws) > 5 and all(len(set(d)) == 3 and list(d) == sorted(d) for d in draws)
    assert pick("potent", 6) == list(range(6))
    with pytest.raises(ValueError, match="cannot keep 7 of 6"):
        pick("first", 7)
    with pytest.raises(ValueError, match="unknown selection strategy 'best'"):
        pick("best")
    with pytest.raises(ValueError, match="needs one AvgRank value per block"):
        select_blocks("lazy", 2, 6)


def test_pearson_and_spearman():
    assert pearson([1, 2, 3, 4], [3, 5, 7, 9]) == pytest.approx(1.0)
    assert pearson([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(pearson([1, 1, 1], [1, 2, 3]))
    a, b = [1, 2, 3, 4, 5], [1, 4, 9, 16, 1000]  # monotone, far from linear
    assert spearman(a, b) == pytest.approx(1.0) and pearson(a, b) < 0.8
    assert ranks([3.0, 1.0, 3.0, 2.0]).tolist() == [2.5, 0.0, 2.5, 1.0]  # ties share the mean rank
    # with ties: the textbook value (Pearson's r of the mid-ranks), 0.9486832980505138 here
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    u, v = rng.integers(0, 5, 40), rng.normal(size=40)
    assert spearman(u, v) == pytest.approx(stats.spearmanr(u, v).statistic)
    assert pearson(u, v) == pytest.approx(stats.pearsonr(u, v).statistic)


def test_the_study_scores_each_selection_as_the_family_inherits_it():
    model = tiny_gpt(n_layer=4, block_size=16)
    x, y = windows()
    tokens = np.random.default_rng(0).integers(0, VOCAB, 4000)
    study = layer_study(model, x, y, tokens, sizes=[2, 4], n_seq=6, seq_len=16, log=lambda line: None)
    assert study["n_layer"] == 4 and len(study["removed_val_loss"]) == len(study["block_influence"]) == 4
    assert study["loss_increase"] == pytest.approx([r - study["full_val_loss"] for r in study["removed_val_loss"]])
    assert [(s["n_layer"], s["strategy"]) for s in study["selections"]] == [(n, s) for n in (2, 4) for s in STRATEGIES]
    fam = family_of(model)
    for s in study["selections"]:
        small = fam.inherit(model, blocks=s["blocks"], parts="block", copy_wpe=True, copy_ln_f=True)
        assert s["val_loss"] == pytest.approx(val_loss(small, x, y), abs=1e-6), s
        if s["n_layer"] == 4:  # all blocks, in order: the reference itself
            assert s["val_loss"] == pytest.approx(study["full_val_loss"], abs=1e-6)
    first = next(s for s in study["selections"] if s["strategy"] == "first" and s["n_layer"] == 2)
    assert first["blocks"] == [0, 1]
    for c in study["correlations"].values():
        assert c["spearman"] is None or -1 <= c["spearman"] <= 1
    with pytest.raises(ValueError, match="cannot keep 5"):
        layer_study(model, x, y, tokens, sizes=[5], n_seq=2, seq_len=16, log=lambda line: None)
    with pytest.raises(SurgeryError):
        family_of(model).inherit(model, blocks=[9])


# ----------------------------------------------------------------------------------------------------
# The command


def save_checkpoint(path, model: GPT):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config.to_dict()}}, path)
    return path


def run_cli(*overrides: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lit_inheritune.layer_study", *overrides], capture_output=True,
                          text=True, env=env, timeout=300, cwd=cwd)


def test_cli_end_to_end(tmp_path, fixture_data_dir):
    ckpt = save_checkpoint(tmp_path / "runs" / "tiny-s1" / "checkpoints" / "last.ckpt",
                           tiny_gpt(n_layer=3, vocab_size=512))
    done = run_cli(f"ckpt={ckpt}", f"data_dir={fixture_data_dir}", "block_size=16", "num_val_windows=4",
                   "batch_size=3", "n_seq=4", "seq_len=16", "sizes=[2,1]")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "tiny-s1" / "layer_study"  # default: beside the checkpoint's run dir
    study = json.loads((out / "study.json").read_text())
    assert {"command", "commit", "hardware", "date"} <= set(study["provenance"])
    assert study["val_windows"] == {"n": 4, "tokens": 16, "batch_size": 3} and study["n_layer"] == 3
    assert len(study["selections"]) == 2 * len(STRATEGIES)
    table = (out / "table.md").read_text()
    for line in ("- command: `python -m lit_inheritune.layer_study", "- commit:", "- hardware:", "- seed: 0",
                 "4 fixed val windows of 16 tokens", "| block | val loss without it | increase (+- s.e.) | AvgRank |",
                 "| BI | 1 - mean cos", "| 2 | random |"):
        assert line in table, line
    assert f"| 0 | {study['removed_val_loss'][0]:.4f} | {study['loss_increase'][0]:+.4f} +- " in table
    assert (out / "layers.png").stat().st_size > 10_000


def compose_study(*overrides: str):
    from hydra import compose, initialize_config_dir

    from lit_inheritune.config import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="layer_study", overrides=list(overrides))


def test_bad_requests_fail_before_compute(tmp_path, fixture_data_dir):
    from lit_inheritune.analysis import AnalysisError
    from lit_inheritune.layer_study import run

    ckpt = save_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tiny_gpt(n_layer=2, vocab_size=512))
    data, out = f"data_dir={fixture_data_dir}", f"out={tmp_path / 'out'}"
    cases = {
        "pass one model": [data],
        "unknown selection strategy 'best'": [f"ckpt={ckpt}", data, "strategies=[first,best]"],
        "sizes: cannot keep 3 of the model's 2 blocks": [f"ckpt={ckpt}", data, "block_size=16", "seq_len=16",
                                                        "sizes=[3]"],
        "exceed the model's 16 positions": [f"ckpt={ckpt}", data],
        "holds no prepared dataset": [f"ckpt={ckpt}", f"data_dir={tmp_path / 'nowhere'}"],
    }
    for message, overrides in cases.items():
        with pytest.raises(AnalysisError, match=message):
            run(compose_study(*overrides, out))
    assert not (tmp_path / "out").exists()
    # through the command: one line, exit code 2, nothing written
    done = run_cli(data, out, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("error: pass one model"), done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
