"""Export to Hugging Face GPT2LMHeadModel: same logits, same token ids, clear refusals. All offline."""

import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lit_inheritune.errors import CheckpointError
from lit_inheritune.export import (
    ExportError,
    check_exportable,
    export_checkpoint,
    hf_config,
    save_hf_tokenizer,
    to_hf_gpt2,
    to_hf_state_dict,
)
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.tokenizer import gpt2_tokenizer, load_bpe, train_bpe

FIXTURE_CORPUS = Path(__file__).parent / "fixtures" / "corpus"
SAMPLE = "Hello world! What light through yonder window breaks?\n\n  It is the east, and Juliet is the sun. 42"


def tiny_gpt(scale_by_layer: bool = True, n_layer: int = 3, vocab_size: int = 96, block_size: int = 16) -> GPT:
    """Random weights large enough for peaked attention, and non-unit norm weights, so every mapping shows."""
    torch.manual_seed(0)
    config = GPTConfig(n_layer=n_layer, n_head=4, n_embd=32, block_size=block_size, vocab_size=vocab_size,
                       scale_attn_by_inverse_layer_idx=scale_by_layer)
    model = GPT(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p * 8 + 0.1 * torch.randn_like(p) if p.dim() > 1 else 1 + 0.5 * torch.randn_like(p))
    return model


def logits(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return out["logits"] if isinstance(out, dict) else out.logits


def full_block_tokens(config: GPTConfig) -> torch.Tensor:
    return torch.randint(0, config.vocab_size, (2, config.block_size), generator=torch.Generator().manual_seed(1))


def save_checkpoint(path: Path, model: GPT) -> Path:
    """The parts of a Lightning checkpoint of our CausalLM that models.load_checkpoint reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model": model.config.to_dict()}}, path)
    return path


@pytest.fixture(scope="module")
def corpus_bpe(tmp_path_factory):
    """A byte-level BPE trained on the fixture corpus exactly as prepare does (tokenizer.train_bpe)."""
    texts = [p.read_text(encoding="utf-8") for p in sorted(FIXTURE_CORPUS.glob("*.txt"))]
    return train_bpe(texts, 300, tmp_path_factory.mktemp("bpe") / "tokenizer.json")


@pytest.mark.parametrize("scale_by_layer", [True, False])
def test_hf_model_gives_our_logits_in_memory_and_from_disk(tmp_path, scale_by_layer):
    from transformers import GPT2LMHeadModel

    model = tiny_gpt(scale_by_layer)
    idx = full_block_tokens(model.config)
    ours = logits(model, idx)
    hf = to_hf_gpt2(model)
    assert (logits(hf, idx) - ours).abs().max().item() < 1e-5
    c = hf.config
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size) == (3, 4, 32, 16, 96)
    assert c.activation_function == "gelu_new" and c.scale_attn_weights and c.tie_word_embeddings
    assert c.scale_attn_by_inverse_layer_idx is scale_by_layer and c.layer_norm_epsilon == 1e-5
    assert c.resid_pdrop == c.embd_pdrop == c.attn_pdrop == 0.0

    # The test can see the layer scaling: the opposite setting gives other logits.
    flipped = GPT2LMHeadModel(hf_config(GPTConfig(**{**model.config.to_dict(),
                                                      "scale_attn_by_inverse_layer_idx": not scale_by_layer})))
    flipped.load_state_dict(hf.state_dict())
    assert (logits(flipped.eval(), idx) - ours).abs().max().item() > 1e-3

    out = export_checkpoint(save_checkpoint(tmp_path / "run" / "last.ckpt", model), tmp_path / "hf",
                            tokenizer="none")
    loaded = GPT2LMHeadModel.from_pretrained(out).eval()
    assert (logits(loaded, idx) - ours).abs().max().item() < 1e-5
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied


def test_state_dict_mapping_transposes_linears_and_zeroes_biases():
    model = tiny_gpt(n_layer=2)
    ours = {k: v.clone() for k, v in model.state_dict().items()}
    hf = to_hf_state_dict(model.state_dict(), model.config)
    assert hf["transformer.h.1.mlp.c_fc.weight"].shape == (32, 128)  # Conv1D: (in, out)
    assert torch.equal(hf["transformer.h.1.attn.c_attn.weight"], ours["transformer.h.1.attn.c_attn.weight"].t())
    assert torch.equal(hf["transformer.h.0.attn.c_proj.weight"], ours["transformer.h.0.attn.c_proj.weight"].t())
    assert torch.equal(hf["transformer.ln_f.weight"], ours["transformer.ln_f.weight"])
    biases = [k for k in hf if k.endswith(".bias")]
    assert len(biases) == 2 * 6 + 1 and all(not hf[k].any() for k in biases)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in ours.items())  # the input is untouched
    # A state dict without the tied head (as some checkpoints store it) maps the same.
    no_head = {k: v for k, v in ours.items() if k != "lm_head.weight"}
    assert torch.equal(to_hf_state_dict(no_head, model.config)["lm_head.weight"], ours["transformer.wte.weight"])


def test_corpus_bpe_tokenizer_round_trips(tmp_path, corpus_bpe):
    from transformers import AutoTokenizer

    save_hf_tokenizer(load_bpe(corpus_bpe.path), tmp_path, model_max_length=16)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in (SAMPLE, " leading space", "tabs\tand\r\nnewlines ünïcödé 🤗"):
        assert hf(text)["input_ids"] == corpus_bpe.encode(text)
        assert hf.decode(corpus_bpe.encode(text)) == text
    assert hf.eos_token == "<|endoftext|>" and hf.eos_token_id == corpus_bpe.eot_id == 0
    assert hf.model_max_length == 16


def test_gpt2_tokenizer_round_trips(tmp_path):
    from transformers import AutoTokenizer, GPT2TokenizerFast

    save_hf_tokenizer(gpt2_tokenizer(), tmp_path, model_max_length=1024)
    assert (tmp_path / "vocab.json").is_file() and (tmp_path / "merges.txt").is_file()
    hf = AutoTokenizer.from_pretrained(tmp_path)
    assert hf("Hello world")["input_ids"] == [15496, 995]
    assert hf(SAMPLE)["input_ids"] == gpt2_tokenizer().encode(SAMPLE)
    assert hf.eos_token_id == 50256 and len(hf) == 50257
    assert GPT2TokenizerFast.from_pretrained(tmp_path)(" Hello world")["input_ids"] == [18435, 995]


def test_cli_exports_a_run_with_its_datasets_tokenizer(tmp_path, fixture_data_dir, run_in_process):
    """tokenizer=auto: the run's config.yaml names the dataset, whose manifest names the BPE. `python -m
    lit_inheritune.export` runs in this process (conftest.run_in_process; test_cli_errors.py runs the export CLI as
    a real interpreter)."""
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from lit_inheritune.tokenizer import load_tokenizer

    run = tmp_path / "runs" / "scratch-L2-s1"
    model = tiny_gpt(n_layer=2, vocab_size=512)
    ckpt = save_checkpoint(run / "checkpoints" / "last.ckpt", model)
    OmegaConf.save({"data": {"data_dir": str(fixture_data_dir)}}, run / "config.yaml")
    out = tmp_path / "hf" / "scratch"
    done = run_in_process(["lit_inheritune.export", f"ckpt={ckpt}", f"out={out}"], tmp_path, HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(out))
    assert sorted(os.listdir(tmp_path)) == ["hf", "runs"]  # no .hydra/, logs or staging dir left behind

    idx = full_block_tokens(model.config)
    assert (logits(GPT2LMHeadModel.from_pretrained(out), idx) - logits(model, idx)).abs().max().item() < 1e-5
    ours = load_tokenizer(json.loads((fixture_data_dir / "manifest.json").read_text())["tokenizer"],
                          fixture_data_dir)
    assert AutoTokenizer.from_pretrained(out)(SAMPLE)["input_ids"] == ours.encode(SAMPLE)
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == ours.eot_id


def test_bad_requests_fail_clearly_before_writing(tmp_path, monkeypatch, capsys):
    ckpt = save_checkpoint(tmp_path / "run" / "last.ckpt", tiny_gpt(n_layer=2))
    out = tmp_path / "out"
    with pytest.raises(ExportError, match="checkpoint file .*nope.ckpt not found"):
        export_checkpoint(tmp_path / "nope.ckpt", out, tokenizer="none")
    (tmp_path / "junk.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.ckpt is corrupt"):
        export_checkpoint(tmp_path / "junk.ckpt", out, tokenizer="none")
    with pytest.raises(ExportError, match="no data_dir given and no run config"):
        export_checkpoint(ckpt, out)  # tokenizer=auto, but nothing says which dataset
    with pytest.raises(ExportError, match="tokenizer=gpt-2 is neither auto, gpt2 nor a tokenizers JSON.*tokenizer=none"):
        export_checkpoint(ckpt, out, tokenizer="gpt-2")
    with pytest.raises(ExportError, match="tokenizer gpt2 has 50257 ids but the model's vocab_size is 96"):
        export_checkpoint(ckpt, out, tokenizer="gpt2")
    assert not out.exists()

    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="exists and is not empty; pass overwrite=true"):
        export_checkpoint(ckpt, out, tokenizer="none")
    assert os.listdir(out) == ["notes.txt"]
    with pytest.raises(ExportError, match="holds the checkpoint"):
        export_checkpoint(ckpt, tmp_path, tokenizer="none", overwrite=True)
    export_checkpoint(ckpt, out, tokenizer="none", overwrite=True)
    assert "notes.txt" not in os.listdir(out) and (out / "config.json").is_file()

    # The CLI prints the message as one line, without a traceback, and exits with 2.
    from lit_inheritune import export
    from lit_inheritune.errors import run_cli

    monkeypatch.setattr(sys, "argv", ["export", f"ckpt={ckpt}", f"out={out}", "tokenizer=none"])
    capsys.readouterr()  # the exports above print progress bars
    with pytest.raises(SystemExit) as exit:
        run_cli(export.main)
    assert exit.value.code == 2
    assert re.fullmatch(r"error: out=.* exists and is not empty; pass overwrite=true to replace it\n",
                        capsys.readouterr().err)


def test_models_hf_gpt2_cannot_express_are_refused():
    from lit_inheritune.models.gpt import renumber_blocks
    from lit_inheritune.surgery import stack_blocks

    model = tiny_gpt(n_layer=2)
    check_exportable(stack_blocks(model))  # surgery renumbers blocks, so its results export
    del model.transformer.h[0]  # block 1 now sits at position 0 but still scales by 1/2
    model.config.n_layer = 1
    with pytest.raises(ExportError, match="block 0 scales attention by 1/\\(layer_idx\\+1\\) with layer_idx=1"):
        to_hf_gpt2(model)
    check_exportable(renumber_blocks(model))

    untied = tiny_gpt(n_layer=2)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach() + 1)
    with pytest.raises(ExportError, match="untied head cannot be exported"):
        to_hf_gpt2(untied)
    state = {**tiny_gpt(n_layer=2).state_dict(), "transformer.h.0.mlp.c_fc.bias": torch.zeros(128)}
    with pytest.raises(ExportError, match=r"no place for parameters \['transformer.h.0.mlp.c_fc.bias'\]"):
        to_hf_state_dict(state, GPTConfig(n_layer=2, n_head=4, n_embd=32, block_size=16, vocab_size=96))


def test_lm_eval_hf_model_loads_the_export(tmp_path, corpus_bpe):
    pytest.importorskip("accelerate", reason="lm_eval.models.huggingface imports accelerate, not installed here")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    ckpt = save_checkpoint(tmp_path / "last.ckpt", tiny_gpt(n_layer=2, vocab_size=512, block_size=32))
    out = export_checkpoint(ckpt, tmp_path / "hf", tokenizer=str(corpus_bpe.path))
    lm = HFLM(pretrained=str(out), device="cpu", batch_size=1)
    assert lm.eot_token_id == corpus_bpe.eot_id and lm.max_length == 32
    assert lm.tok_encode(SAMPLE) == corpus_bpe.encode(SAMPLE)
    request = Instance(request_type="loglikelihood", doc={}, arguments=("It is the east", " and Juliet"), idx=0)
    [(logprob, _)] = lm.loglikelihood([request])
    assert logprob < 0 and torch.isfinite(torch.tensor(logprob))
