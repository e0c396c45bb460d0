"""`method=embedding_only` (issue #23): the reference's embeddings (and what an Inheritune target takes besides its
blocks) with fresh blocks, the scratch model's of the same depth and seed."""

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.methods import BUILT_IN, EmbeddingOnly, make_run, method_by_name, random_model
from lit_inheritune.run import run


def _cfg(tmp_path, data_dir, *extra):
    return compose([*TINY, "method=embedding_only", "model.n_layer=4", "method.n_layer=2", "train.max_steps=10",
                    "train.val_every_n_steps=10", f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


def _trained_looking(model, seed=123):
    """A stand-in for a trained reference: every tensor moved by seeded noise, so none equals a fresh init's (a
    norm's ones, a bias's zeros) by accident."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _differs_everywhere(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(not torch.equal(sa[k], sb[k]) for k in sa if sa[k].is_floating_point())


def test_embedding_only_is_a_built_in_method():
    assert EmbeddingOnly in BUILT_IN and method_by_name("embedding_only") is EmbeddingOnly


@pytest.mark.parametrize("copy", [False, True])
def test_gpt_target_takes_the_reference_embedding_and_the_seeded_scratch_blocks(tmp_path, copy):
    flag = str(copy).lower()
    r = make_run(_cfg(tmp_path, tmp_path, f"method.copy_wpe={flag}", f"method.copy_ln_f={flag}"))
    reference = _trained_looking(random_model(r, 4))
    L.seed_everything(r.seed, verbose=False)
    scratch = random_model(r, 2)  # what method=scratch of this depth and seed starts from
    L.seed_everything(r.seed, verbose=False)
    target = r.method.build(r, reference)
    t, ref = target.transformer, reference.transformer
    assert target.config.n_layer == 2
    assert torch.equal(t.wte.weight, ref.wte.weight) and target.lm_head.weight is t.wte.weight  # tied head
    assert t.wte.weight.data_ptr() != ref.wte.weight.data_ptr()  # a copy: training it leaves the reference alone
    assert torch.equal(t.wpe.weight, ref.wpe.weight) == copy and _same(t.ln_f, ref.ln_f) == copy
    for i in range(2):
        assert _same(t.h[i], scratch.transformer.h[i])
        assert _differs_everywhere(t.h[i], ref.h[i])


def _tiny_llama(n_layer, tie, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_inheritune.models.hf_wrapper import HFCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=n_layer, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=32, tie_word_embeddings=tie)
    return HFCausalLM(LlamaForCausalLM(config), block_size=16)


@pytest.mark.parametrize("tie", [True, False])
def test_hf_target_takes_embeddings_final_norm_and_head_as_appendix_b_and_fresh_layers(monkeypatch, tie):
    """As Appendix B's twin inherits SmolLM2 (LLaMA): embeddings, final norm and head, tied or not, from the
    reference; every decoder layer from the fresh model."""
    from lit_inheritune.methods import embedding_only
    from lit_inheritune.models import family_of

    reference = _trained_looking(_tiny_llama(4, tie, seed=0))
    fresh = _tiny_llama(2, tie, seed=1)
    monkeypatch.setattr(embedding_only, "random_model", lambda run, n_layer: fresh)
    target = EmbeddingOnly(n_layer=2, copy_wpe=True, copy_ln_f=True, tag="x").build(None, reference)
    hf = family_of(reference)
    assert hf.n_layer(target) == 2
    for part in (hf.embedding, hf.final_norm, hf.head):
        assert _same(part(target), part(reference))
    assert (hf.head(target).weight is hf.embedding(target).weight) == tie
    for mine, new, ref in zip(hf.blocks(target), hf.blocks(fresh), hf.blocks(reference)):
        assert _same(mine, new) and _differs_everywhere(mine, ref)


def test_a_run_trains_it_after_the_reference_and_records_what_it_is(tmp_path, fixture_data_dir, shared_reference,
                                                                    initial_models):
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir))
    [result] = run(cfg)
    stage = Path(cfg.run_dir) / "embedding-L2"
    assert Path(cfg.run_dir).name == "embedding_only-L2-s1" and result["n_layer"] == 2
    identity = json.loads((stage / "identity.json").read_text())
    assert identity["init"]["kind"] == "embedding_only" and identity["init"]["method"]["n_layer"] == 2
    assert identity["init"]["reference"]["init"] == {"kind": "random"}  # the trained reference it started from
    from lit_inheritune.models import load_checkpoint

    reference = load_checkpoint(Path(cfg.paths.log_dir) / cfg.name / "scratch-L4-T10-s1" / "checkpoints" / "last.ckpt")
    start = initial_models["embedding-L2"]
    assert torch.equal(start.transformer.wte.weight, reference.transformer.wte.weight)
    L.seed_everything(1, workers=True, verbose=False)  # the run's seed: the blocks method=scratch starts from
    scratch = random_model(make_run(cfg), 2)
    assert all(_same(a, b) for a, b in zip(start.transformer.h, scratch.transformer.h))


def test_bad_depths_and_a_hf_reference_without_its_norm_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"method.n_layer=5: the target's depth must be between 1 and the "
                                          r"reference's 4 layers"):
        EmbeddingOnly(n_layer=5, tag="x").validate(make_run(_cfg(tmp_path, tmp_path, "method.n_layer=5")))
    hf = make_run(compose(["model=hf", "method=embedding_only", "method.copy_wpe=true"]))
    with pytest.raises(ConfigError, match="set method.copy_wpe=true and method.copy_ln_f=true"):
        hf.method.validate(hf)
