"""The model-family interface (lit_inheritune/models/__init__.py): one family per config, checkpoint and model, the
same handles and operations for our GPT and for Hugging Face decoders."""

import pytest
import torch
from hydra.utils import instantiate

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.models import (
    ModelLoadError,
    SurgeryError,
    checkpoint_shape,
    config_dict,
    family,
    family_of,
)
from lit_inheritune.models.gpt import GPT, GPTConfig


def _gpt(n_layer=3):
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=n_layer, n_head=2, n_embd=16, block_size=8, vocab_size=64))


def _llama(n_layer=3, tie=False):
    from transformers import LlamaConfig, LlamaForCausalLM

    from lit_inheritune.models.hf import HFCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(num_hidden_layers=n_layer, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=100, max_position_embeddings=32, tie_word_embeddings=tie)
    return HFCausalLM(LlamaForCausalLM(config), block_size=16)


def _gpt2(n_layer=3):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=n_layer, n_embd=32, n_head=2, vocab_size=100, n_positions=16))


def test_a_family_is_found_from_configs_checkpoints_and_models():
    gpt, hf = family("gpt"), family("hf")
    assert family_of(compose([]).model) is gpt and family_of(compose(["model=hf"]).model) is hf
    assert family_of(instantiate(compose(["model=cpu_tiny"]).model)) is gpt
    assert family_of(instantiate(compose(["model=hf"]).model)) is hf  # HFModelSpec, a GPTConfig subclass
    assert family_of({"n_layer": 2}) is gpt and family_of({"kind": "hf"}) is hf  # checkpoint hyper-parameters
    assert family_of(_gpt()) is gpt and family_of(_llama()) is hf and family_of(_gpt2()) is hf
    assert (gpt.pretrained, hf.pretrained) == (False, True)
    with pytest.raises(ConfigError, match="not the config class of a model family"):
        family_of({"_target_": "somewhere.Else"})
    with pytest.raises(SurgeryError, match="neither a model config nor a model"):
        family_of(torch.nn.Linear(2, 2))


def test_handles_point_into_the_model_for_every_family():
    model = _gpt()
    fam = family_of(model)
    assert fam.n_layer(model) == 3 and fam.blocks(model) is model.transformer.h
    assert fam.embedding(model) is model.transformer.wte and fam.position_embedding(model) is model.transformer.wpe
    assert fam.final_norm(model) is model.transformer.ln_f and fam.head(model).weight is fam.embedding(model).weight

    llama = _llama()
    fam = family_of(llama)
    assert fam.n_layer(llama) == 3 and fam.blocks(llama) is llama.hf.model.layers
    assert fam.embedding(llama) is llama.hf.model.embed_tokens and fam.position_embedding(llama) is None  # rotary
    assert fam.final_norm(llama) is llama.hf.model.norm and fam.head(llama) is llama.hf.lm_head
    gpt2 = _gpt2()
    assert fam.position_embedding(gpt2) is gpt2.transformer.wpe and fam.final_norm(gpt2) is gpt2.transformer.ln_f


@pytest.mark.parametrize("make", [_gpt, _llama])
def test_config_dict_rebuilds_the_model_and_gives_its_shape(make):
    model = make()
    fam = family_of(model)
    hparams = config_dict(model)
    assert family_of(hparams) is fam  # what a checkpoint records names the family
    back = fam.from_hparams(hparams, model.state_dict())
    assert type(back) is type(model)
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), model.state_dict().values()))
    shape = checkpoint_shape(hparams)
    assert (shape["n_layer"], shape["n_head"], shape["vocab_size"]) == (3, model.config.n_head,
                                                                         model.config.vocab_size)


def test_surgery_through_the_interface_and_what_a_family_refuses():
    gpt, hf = family("gpt"), family("hf")
    assert gpt.inherit(_gpt(4), 2).config.n_layer == 2
    ref = _llama(4).to(torch.bfloat16)
    small = hf.inherit(ref, 2, None, parts="block", copy_wpe=True, copy_ln_f=True, attn_scale="position")
    assert small.config.n_layer == 2 and next(small.parameters()).dtype == torch.float32  # a target to train
    assert hf.grow(small, ref, 1).config.n_layer == 3
    with pytest.raises(SurgeryError, match="whole layers"):
        hf.inherit(ref, 2, None, parts="attn")
    with pytest.raises(SurgeryError, match="Hugging Face models do not support half width"):
        hf.half_width(ref)
    with pytest.raises(ModelLoadError, match="GPT models do not support load"):
        gpt.load(GPTConfig())


def test_identities_recorded_before_the_move_still_match():
    """Stage identities name the model config class; those recorded under its old path are the same stage."""
    from lit_inheritune.training.identity import differences, fingerprint

    now = {"model": {"_target_": "lit_inheritune.models.gpt.GPTConfig", "n_layer": 2},
           "init": {"reference": {"model": {"_target_": "lit_inheritune.models.hf.HFModelSpec"}}}}
    before = {"model": {"_target_": "lit_inheritune.model.GPTConfig", "n_layer": 2},
              "init": {"reference": {"model": {"_target_": "lit_inheritune.hf.HFModelSpec"}}}}
    assert differences(before, now) == [] and fingerprint(before) == fingerprint(now)
    assert differences({**before, "seed": 1}, {**now, "seed": 2}) == [("seed", 1, 2)]
