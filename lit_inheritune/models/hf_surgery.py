"""Layer surgery on Hugging Face causal LMs, in the style of our GPT's (`models/gpt.py`) and of the official
lit-gpt Inheritune code, which loaded the reference's state dict into the smaller model: `inherit_hf_layers`
keeps the chosen decoder layers and copies everything else (embeddings, final norm, head, tied or not);
`grow_hf` mirrors the GPT's `grow`. New models are built from a copied config (depth updated), so every layer's
`layer_idx` (KV cache, GPT-2's 1/(layer_idx+1) attention scale) is its position in the new model. Inputs are
never modified. Both take and return an HF model or an `HFCausalLM`.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence

import torch
import torch.nn as nn

from lit_inheritune.models.common import SurgeryError, check_grow, source_blocks
from lit_inheritune.models.hf_load import _build_empty, _tied_key
from lit_inheritune.models.hf_wrapper import _rewrap, _unwrap, decoder_layers, layer_list_name

# Config fields that must agree for layers to move between two models (absent fields are skipped).
FAMILY_FIELDS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size", "vocab_size")


def check_same_hf_family(a, b, what: str = "reference") -> None:
    """Layers move between two HF models only when architecture and every shape agree."""
    for field in FAMILY_FIELDS:
        va, vb = getattr(a, field, None), getattr(b, field, None)
        if va != vb:
            raise SurgeryError(f"{what} has {field}={vb} but the model has {field}={va}; layers can only be "
                               "copied between models of the same architecture, width, heads and vocabulary")


def _with_layers(base, sources: Sequence[tuple[nn.Module, int]]):
    """A new model like `base` (config, class, dtype, device) whose layer i is a copy of layer sources[i][1]
    of sources[i][0]; every other tensor (embeddings, final norm, head) is copied from `base`."""
    prefix = layer_list_name(base)
    config = copy.deepcopy(base.config)
    config.num_hidden_layers = len(sources)  # GPT-2's attribute_map turns this into n_layer
    if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds (Qwen, Gemma)
        config.layer_types = [m.config.layer_types[i] for m, i in sources]
    param = next(base.parameters())
    new = _build_empty(type(base), config, param.dtype, param.device)
    in_layers = re.compile(rf"^{re.escape(prefix)}\.\d+\.")
    state = {k: v for k, v in base.state_dict().items() if not in_layers.match(k)}
    for i, (model, src) in enumerate(sources):
        state.update({f"{prefix}.{i}.{k}": v for k, v in decoder_layers(model)[src].state_dict().items()})
    with torch.no_grad():
        missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _tied_key(new, k)]
    if missing or unexpected:
        raise SurgeryError(f"layer surgery on {type(base).__name__} left tensors unset: missing {missing}, "
                           f"unexpected {unexpected}")
    base_tied = base.get_output_embeddings().weight is base.get_input_embeddings().weight
    if (new.get_output_embeddings().weight is new.get_input_embeddings().weight) != base_tied:
        raise SurgeryError(f"the new {type(base).__name__} does not tie its head as the source does")
    return new.train()  # a fresh model to train, like surgery.inherit_blocks' (the source may be in eval)


def inherit_hf_layers(model, n_layer: int | None = None, blocks: Sequence[int] | None = None):
    """A model of the first `n_layer` decoder layers of `model` (or of the listed `blocks`, in order) with its
    embeddings, final norm and LM head, as the official lit-gpt code inherited OpenLLaMA-3B. Takes and returns
    an HF model or an `HFCausalLM`."""
    hf, block_size = _unwrap(model)
    blocks = source_blocks(len(decoder_layers(hf)), n_layer, blocks)
    return _rewrap(_with_layers(hf, [(hf, b) for b in blocks]), block_size)


def grow_hf(target, reference, n_new: int = 2, mode: str = "append"):
    """An (n + n_new)-layer model from an n-layer target and its reference, as `surgery.grow`: `reinherit` is a
    fresh inheritance of the first n + n_new reference layers; `append` keeps the trained target (layers,
    embeddings, norm, head) and appends reference layers n..n+n_new-1."""
    hf_t, block_size = _unwrap(target)
    hf_r, _ = _unwrap(reference)
    check_same_hf_family(hf_t.config, hf_r.config)
    n, k = len(decoder_layers(hf_t)), len(decoder_layers(hf_r))
    check_grow(n, k, n_new, mode)
    if mode == "reinherit":
        return _rewrap(inherit_hf_layers(hf_r, n_layer=n + n_new), block_size)
    sources = [(hf_t, i) for i in range(n)] + [(hf_r, i) for i in range(n, n + n_new)]
    return _rewrap(_with_layers(hf_t, sources), block_size)
