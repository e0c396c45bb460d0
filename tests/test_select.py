"""`method.select` (issue #23 item 1): which reference blocks an Inheritune target inherits, chosen by a measure of the
reference (lit_inheritune/selection.py), on models whose measures are known."""

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY
from omegaconf import OmegaConf

from lit_inheritune import selection
from lit_inheritune.checks import check_method
from lit_inheritune.config import CONFIG_DIR, compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.methods import reference_dir
from lit_inheritune.models import family_of, load_checkpoint
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.run import plan, run
from lit_inheritune.selection import chosen_blocks, reference_measure

VOCAB = 64


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _datamodule(seed: int = 0, n_tokens: int = 4000, block_size: int = 32, n_windows: int = 6):
    """What the measures read of a TokenDataModule after setup: its val tokens and its fixed val windows."""
    tokens = np.random.default_rng(seed).integers(0, VOCAB, size=n_tokens)
    x = torch.from_numpy(np.stack([tokens[i * block_size:(i + 1) * block_size] for i in range(n_windows)]))
    return SimpleNamespace(manifest={}, val_tokens=tokens, val_set=SimpleNamespace(tensors=(x, x)))


# ----------------------------------------------------------------------------------------------------------------
# The selection rule


def test_the_strategies_and_settings_are_the_layer_studys_and_the_analysis_configs():
    from lit_inheritune.analysis import PRIMARY_TAU
    from lit_inheritune.layer_study import STRATEGIES

    assert selection.SELECTIONS == STRATEGIES
    analyze = OmegaConf.load(CONFIG_DIR / "analyze.yaml")
    assert selection.ATTENTION == {"n_seq": analyze.n_seq, "seq_len": analyze.seq_len, "seed": analyze.seed,
                                   "tau": PRIMARY_TAU}


def test_each_strategy_picks_its_measures_best_blocks_in_reference_order_and_growth_adds_the_next_by_it():
    avg_rank = [2.0, 9.0, 1.0, 5.0, 3.0, 7.0]  # best first: 1, 5, 3, 4, 0, 2
    depths = [2, 3, 5]
    assert chosen_blocks("potent", depths, 6, avg_rank) == [[1, 5], [1, 3, 5], [0, 1, 3, 4, 5]]
    assert chosen_blocks("lazy", depths, 6, avg_rank) == [[0, 2], [0, 2, 4], [0, 2, 3, 4, 5]]
    assert chosen_blocks("block_influence", depths, 6, avg_rank) == chosen_blocks("potent", depths, 6, avg_rank)
    assert chosen_blocks("first", depths, 6) == [[0, 1], [0, 1, 2], [0, 1, 2, 3, 4]]  # today's growth
    # ties go to the earlier block, in every round
    assert chosen_blocks("potent", [1, 2, 3], 4, [1.0, 5.0, 5.0, 5.0]) == [[1], [1, 2], [1, 2, 3]]
    # random: round 1 is the layer study's draw with the run's seed; each round keeps the last and adds new blocks
    from lit_inheritune.layer_study import select_blocks

    for seed in range(5):
        rounds = chosen_blocks("random", [2, 4, 6], 8, seed=seed)
        assert rounds[0] == select_blocks("random", 2, 8, seed=seed)
        assert all(set(a) < set(b) and b == sorted(b) and len(b) == d for a, b, d in zip(rounds, rounds[1:], [4, 6]))
    assert len({tuple(chosen_blocks("random", [3], 8, seed=s)[0]) for s in range(6)}) > 1  # the seed matters


# ----------------------------------------------------------------------------------------------------------------
# The measures, on models built to have known ones


def _gpt_with_known_measures() -> GPT:
    """A 4-block GPT whose blocks 0 and 2 attend uniformly (zero queries: AvgRank 4 on 32 tokens, the causal
    average's) and add nothing to the stream (zero output projections: BI 0), while blocks 1 and 3 attend sharply
    (queries 100x their keys: each token mostly to itself, AvgRank well above 4) and change the stream."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=32, vocab_size=VOCAB)).eval()
    C = model.config.n_embd
    with torch.no_grad():
        for i, block in enumerate(model.transformer.h):
            w = block.attn.c_attn.weight  # (3C, C): q, k, v rows
            if i % 2 == 0:
                w[:C].zero_()
                block.attn.c_proj.weight.zero_()
                block.mlp.c_proj.weight.zero_()
            else:
                w[:C] = 100 * w[C:2 * C]
    return model


def test_potent_lazy_and_block_influence_pick_the_blocks_built_to_be_so(tmp_path):
    model = _gpt_with_known_measures()
    dm = _datamodule()
    avg_rank = reference_measure("avg_rank", model, dm, tmp_path, "ref", log=lambda _: None)
    assert avg_rank[0] == pytest.approx(4.0) and avg_rank[2] == pytest.approx(4.0)
    assert min(avg_rank[1], avg_rank[3]) > 8
    bi = reference_measure("block_influence", model, dm, tmp_path, "ref", log=lambda _: None)
    assert bi[0] == pytest.approx(0.0, abs=1e-6) and bi[2] == pytest.approx(0.0, abs=1e-6)
    assert min(bi[1], bi[3]) > 1e-3
    # the measures of analysis.py (at the analysis defaults, windows cut to the context) and layer_study.py (every
    # val window)
    from lit_inheritune.analysis import measure_attention
    from lit_inheritune.layer_study import block_influence

    assert avg_rank == measure_attention(model, dm.val_tokens, n_seq=100, seq_len=32, seed=0)["avg_rank"]
    assert bi == block_influence(model, dm.val_set.tensors[0])
    assert chosen_blocks("potent", [2], 4, avg_rank) == [[1, 3]]
    assert chosen_blocks("lazy", [2], 4, avg_rank) == [[0, 2]]
    assert chosen_blocks("block_influence", [2], 4, bi) == [[1, 3]]


def test_a_hugging_face_reference_is_measured_and_its_chosen_layers_inherited():
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_inheritune.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=4, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32, tie_word_embeddings=True)
    ref = HFCausalLM(LlamaForCausalLM(config).eval(), block_size=16).eval()
    layers = ref.hf.model.layers
    with torch.no_grad():
        for i in (0, 2):  # identity layers: BI 0
            layers[i].self_attn.o_proj.weight.zero_()
            layers[i].mlp.down_proj.weight.zero_()
    import tempfile

    dm = _datamodule(block_size=16)
    with tempfile.TemporaryDirectory() as cache:
        bi = reference_measure("block_influence", ref, dm, Path(cache), "ref", log=lambda _: None)
        # AvgRank of a model trained with SDPA attention: read with eager attention, then SDPA again
        assert ref.hf.config._attn_implementation == "sdpa"
        avg_rank = reference_measure("avg_rank", ref, dm, Path(cache), "ref", log=lambda _: None)
        assert ref.hf.config._attn_implementation == "sdpa"
    from lit_inheritune.analysis import measure_attention
    from lit_inheritune.layer_study import block_influence

    eager = copy.deepcopy(ref)
    eager.hf.set_attn_implementation("eager")
    assert avg_rank == measure_attention(eager, dm.val_tokens, n_seq=100, seq_len=16, seed=0)["avg_rank"]
    assert bi == block_influence(ref, dm.val_set.tensors[0])
    [blocks] = chosen_blocks("block_influence", [2], 4, bi)
    assert blocks == [1, 3]
    target = family_of(ref).inherit(ref, None, blocks, parts="block", copy_wpe=True, copy_ln_f=True)
    assert [_same(t, layers[b]) for t, b in zip(target.hf.model.layers, blocks)] == [True, True]


def test_a_cached_measure_is_reused_only_when_made_from_the_same_reference_settings_and_windows(tmp_path,
                                                                                               monkeypatch):
    from lit_inheritune import layer_study

    calls = []
    real = layer_study.block_influence
    monkeypatch.setattr(layer_study, "block_influence", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = _gpt_with_known_measures()
    dm = _datamodule()
    path = tmp_path / "block_influence.json"

    def measure(dm=dm, fp="ref-a", model=model):
        return reference_measure("block_influence", model, dm, tmp_path, fp, log=lambda _: None)

    first = measure()
    assert len(calls) == 1 and path.is_file() and [p.name for p in tmp_path.iterdir()] == [path.name]
    assert measure() == first and len(calls) == 1  # same reference, settings, windows: read back
    measure(fp="ref-b")  # another reference
    assert len(calls) == 2
    assert measure(fp="ref-b") == first and len(calls) == 2
    measure(dm=_datamodule(seed=1), fp="ref-b")  # other val windows
    assert len(calls) == 3
    record = json.loads(path.read_text())
    assert record["determined_by"]["reference"] == "ref-b"
    record["determined_by"]["settings"]["batch_size"] = 4  # made with other settings
    path.write_text(json.dumps(record))
    measure(dm=_datamodule(seed=1), fp="ref-b")
    assert len(calls) == 4
    record = json.loads(path.read_text())
    record["values"] = record["values"][:3]  # not one value per block
    path.write_text(json.dumps(record))
    measure(dm=_datamodule(seed=1), fp="ref-b")
    assert len(calls) == 5
    path.write_text("{not json")  # unreadable
    measure(dm=_datamodule(seed=1), fp="ref-b")
    assert len(calls) == 6 and json.loads(path.read_text())["determined_by"]["reference"] == "ref-b"


# ----------------------------------------------------------------------------------------------------------------
# The method option


def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, "method=inheritune", "model.n_layer=4", "method.n_layer=2", "method.grow_by=1",
                    "method.max_layers=3", "method.tolerance=-100", "train.max_steps=10",
                    "train.val_every_n_steps=5", f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}",
                    *extra])


AVG_RANK = [1.0, 3.0, 1.2, 2.0]  # potent: 1, 3, then 2; lazy: 0, 2, then 3


def test_a_selecting_run_inherits_and_grows_by_the_measure_and_records_the_blocks(tmp_path, fixture_data_dir,
                                                                                  initial_models, monkeypatch):
    from lit_inheritune import analysis

    calls = []
    monkeypatch.setattr(analysis, "measure_attention",
                        lambda model, *a, **k: calls.append(model.config.n_layer) or {"avg_rank": list(AVG_RANK)})
    cfg = _cfg(tmp_path, fixture_data_dir, "method.select=potent")
    assert Path(cfg.run_dir).name == "inheritune-n2-block-reinherit-sel_potent-s1"
    results = run(cfg)
    assert calls == [4]  # once, on the reference
    assert [(r["stage"], r["blocks"]) for r in results] == [("round1-L2", [1, 3]), ("round2-L3", [1, 2, 3])]
    ref = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    _check_copied(initial_models, ref, {"round1-L2": [1, 3], "round2-L3": [1, 2, 3]})
    stages = json.loads((Path(cfg.run_dir) / "stages.json").read_text())
    assert [s["blocks"] for s in stages["stages"]] == [[1, 3], [1, 2, 3]]
    assert stages["selection"]["select"] == "potent" and stages["selection"]["values"] == AVG_RANK
    table = (Path(cfg.run_dir) / "stages.md").read_text()
    assert "| round1-L2 | 2 |" in table and table.rstrip().endswith("| 1-3 |")
    assert "| 1,3 |" in table and "- select: `potent`" in table
    cached = reference_dir(cfg) / "measures" / "avg_rank.json"
    assert json.loads(cached.read_text())["values"] == AVG_RANK

    # another selection by the same measure, on the same reference: the cached measure, other blocks
    initial_models.clear()
    lazy = run(_cfg(tmp_path, fixture_data_dir, "method.select=lazy", "method.max_layers=2"))
    assert calls == [4]
    assert [r["blocks"] for r in lazy] == [[0, 2]]
    _check_copied(initial_models, ref, {"round1-L2": [0, 2]})


def _check_copied(initial_models, ref, blocks_of):
    """Each stage started from the listed reference blocks, weight by weight, in that order."""
    for stage, blocks in blocks_of.items():
        start = initial_models[stage]
        assert len(start.transformer.h) == len(blocks), stage
        for t, b in zip(start.transformer.h, blocks):
            for part in ("ln_1", "attn", "ln_2", "mlp"):
                assert _same(getattr(t, part), getattr(ref.transformer.h[b], part)), (stage, b, part)
        assert torch.equal(start.transformer.wte.weight, ref.transformer.wte.weight)


def test_selection_is_refused_with_blocks_with_append_growth_and_by_an_unknown_name(tmp_path):
    base = ["method=inheritune", "model=cpu_tiny", "model.n_layer=8", f"paths.root_dir={tmp_path}"]
    with pytest.raises(ConfigError, match=r"method.select=lazy and method.blocks=\[4, 5\] both say"):
        check_method(compose([*base, "method.select=lazy", "method.blocks=[4,5]"]))
    with pytest.raises(ConfigError, match="method.select=potent cannot grow with method.grow_mode=append"):
        check_method(compose([*base, "method.select=potent", "method.grow_mode=append"]))
    with pytest.raises(ConfigError, match="method.select='best' is not one of first, potent, lazy"):
        check_method(compose([*base, "method.select=best"]))
    # append that never grows, and growth by reinherit, are fine
    check_method(compose([*base, "method.select=potent", "method.grow_mode=append", "method.max_layers=4"]))
    check_method(compose([*base, "method.select=random"]))
    check_method(compose([*base, "method.blocks=[4,5]"]))


def test_the_default_keeps_names_and_identities_and_a_selection_changes_both(tmp_path):
    base = ["method=inheritune", "model=cpu_tiny", "model.n_layer=8", f"paths.root_dir={tmp_path}"]
    default, first = plan(compose(base)), plan(compose([*base, "method.select=first"]))
    assert [(s.dir, s.identity) for s in default] == [(s.dir, s.identity) for s in first]
    assert all("select" not in s.identity["init"].get("method", {}) for s in default)
    assert {s.dir.parent.name for s in default if s.name.startswith("round")} == {"inheritune-n4-block-reinherit-s1"}
    potent = plan(compose([*base, "method.select=potent"]))
    rounds = [s for s in potent if s.name.startswith("round")]
    assert rounds and all(s.dir.parent.name == "inheritune-n4-block-reinherit-sel_potent-s1" for s in rounds)
    assert all(s.identity["init"]["method"]["select"] == "potent" for s in rounds)
    assert all(s.identity["init"]["selection"] == {"measure": "avg_rank", "n_seq": 100, "seq_len": 100, "seed": 0,
                                                   "tau": 0.9} for s in rounds)
    assert potent[0].identity == default[0].identity  # the reference is the same run
    bi = [s for s in plan(compose([*base, "method.select=block_influence"])) if s.name.startswith("round")]
    assert bi[0].identity["init"]["selection"]["measure"] == "block_influence"
    assert "selection" not in [s for s in plan(compose([*base, "method.select=random"]))
                               if s.name.startswith("round")][0].identity["init"]
