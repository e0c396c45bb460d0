"""`HFCausalLM`: the wrapper that lets a Hugging Face causal LM train, checkpoint and be analysed through the same
`CausalLM`, `fit_stage` and analysis code as our GPT (forward(idx, targets) -> {logits, loss, attn},
`.config.n_layer`, `num_params()`), with checkpoints that record the HF config (`hf_from_hparams` reads them
back); and where each architecture keeps its decoder layers.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_inheritune.models.common import SurgeryError
from lit_inheritune.models.hf_load import HFLoadError, _build_empty, _tied_key

# Where each architecture keeps its decoder layers: LLaMA / Mistral / Qwen / SmolLM, GPT-2, GPT-NeoX, OPT.
LAYER_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")


def layer_list_name(model: nn.Module) -> str:
    """Dotted name of the model's decoder-layer ModuleList, e.g. 'model.layers' (LLaMA) or 'transformer.h'."""
    for name in LAYER_LISTS:
        try:
            layers = model.get_submodule(name)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return name
    raise SurgeryError(f"cannot find the decoder layers of {type(model).__name__}: none of {list(LAYER_LISTS)} "
                       "is a ModuleList; add its layer list to lit_inheritune.models.hf_wrapper.LAYER_LISTS")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(layer_list_name(model))


def _unwrap(model):
    return (model.hf, model.block_size) if isinstance(model, HFCausalLM) else (model, None)


def _rewrap(hf_model, block_size):
    return hf_model if block_size is None else HFCausalLM(hf_model, block_size)


class HFConfigView:
    """GPTConfig's fields read live from the wrapped HF config (so they follow surgery), and a `to_dict`
    that records the whole HF config in our checkpoints' hyperparameters."""

    def __init__(self, hf_model: nn.Module, block_size: int):
        self._hf = hf_model
        self.block_size = int(block_size)

    @property
    def n_layer(self) -> int:
        return len(decoder_layers(self._hf))

    n_head = property(lambda self: int(self._hf.config.num_attention_heads))
    n_embd = property(lambda self: int(self._hf.config.hidden_size))
    vocab_size = property(lambda self: int(self._hf.config.vocab_size))
    scale_attn_by_inverse_layer_idx = property(
        lambda self: bool(getattr(self._hf.config, "scale_attn_by_inverse_layer_idx", False)))

    def to_dict(self) -> dict:
        # A JSON round trip leaves only plain values, so checkpoints still load with weights_only=True.
        hf_config = json.loads(self._hf.config.to_json_string(use_diff=False))
        return {"kind": "hf", "n_layer": self.n_layer, "n_head": self.n_head, "n_embd": self.n_embd,
                "vocab_size": self.vocab_size, "block_size": self.block_size,
                "attn_implementation": self._hf.config._attn_implementation, "hf_config": hf_config}


class HFCausalLM(nn.Module):
    """An HF causal LM behind our GPT's interface: forward(idx, targets, return_attn) -> {logits, loss, attn},
    `config.n_layer`, `num_params()`. `block_size` is the training context (the windows), not the model's
    position limit."""

    def __init__(self, hf_model: nn.Module, block_size: int | None = None):
        super().__init__()
        self.hf = hf_model
        limit = getattr(hf_model.config, "max_position_embeddings", None) or hf_model.config.n_positions
        self.block_size = int(block_size or limit)
        if self.block_size > limit:
            raise HFLoadError(f"block_size={self.block_size} exceeds the model's {limit} positions")
        self.config = HFConfigView(hf_model, self.block_size)

    def num_params(self) -> int:
        """Parameter count; a tied head is counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_attn: bool = False):
        with eager_attention(self.hf) if return_attn else nullcontext():
            out = self.hf(input_ids=idx, use_cache=False, output_attentions=return_attn)
        logits = out.logits  # (B, T, V)
        loss = None
        if targets is not None:  # targets are already shifted, as our data pipeline yields them
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return {"logits": logits, "loss": loss, "attn": list(out.attentions) if return_attn else None}


@contextmanager
def eager_attention(hf_model):
    """The HF model on eager attention while the block runs: SDPA, which load_hf_model leaves to training (a
    trained target is reloaded with it), returns no post-softmax attention to read."""
    impl = hf_model.config._attn_implementation
    if impl == "eager":
        yield
        return
    hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        hf_model.set_attn_implementation(impl)


def hf_from_hparams(model_hparams: dict, state: dict | None) -> HFCausalLM:
    """The HFCausalLM a checkpoint describes: its recorded HF config, then its weights (`model.`-stripped;
    None: float32 and uninitialised, for weights loaded right after)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    hf_config = dict(model_hparams["hf_config"])
    config = CONFIG_MAPPING[hf_config["model_type"]].from_dict(hf_config)
    attn = model_hparams.get("attn_implementation")
    hf = _build_empty(lambda c: AutoModelForCausalLM.from_config(c, attn_implementation=attn), config,
                      next(iter(state.values())).dtype if state else torch.float32)
    model = HFCausalLM(hf, model_hparams["block_size"])
    if state is None:
        return model
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _tied_key(hf, k.removeprefix("hf."))]
    if missing or unexpected:
        raise SurgeryError(f"does not match its HF config: missing {missing}, unexpected {unexpected}")
    return model
