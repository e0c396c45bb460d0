"""Model families behind one small interface (issue #14): our GPT (`models/gpt.py`) and Hugging Face causal LMs
(`models/hf.py`).

Surgery, analysis, the tokenizer registry, training and the runner reach a model only through this module:

    family = family_of(x)    # x: a model config (`cfg.model`, or what it instantiates), a checkpoint's model
                             # hyper-parameters, or a model (an nn.Module) of a registered family
    family = family("hf")    # by name: the `kind` that checkpoints and tokenizer specs record

A `ModelFamily` offers:

- facts about its configs, known without importing torch (what lit_inheritune/checks.py uses): `name`, `title`,
  `pretrained` (the model config names pretrained weights, loaded and never trained here), `methods` (the
  methods it supports; None: all), `inherits_whole` (blocks are inherited whole, with the embeddings, final norm
  and head), `keeps_source_scale` (a moved block can keep its source's attention scale), `has_tokenizer` (a
  pretrained model of the family brings its own data tokenizer, spec kind = the family's name, registered with
  lit_inheritune.tokenizer when this module is imported);
- handles: `blocks(model)` (the decoder blocks, an nn.ModuleList), `embedding(model)`, `position_embedding(model)`
  (None where positions are not embedded), `final_norm(model)`, `head(model)`;
- building: `random(spec)` (random init, from the instantiated model config), `load(spec)` (the pretrained model
  a config names), `pretrained_model(path, gguf_file, cache_dir)` (a pretrained model by name or path, its own
  tokenizer, and where it came from), `from_hparams(hparams, state)` (a checkpoint's model), `config_dict(model)`
  (what checkpoints record of it: plain values, so they load with weights_only=True);
- surgery: `inherit(reference, n_layer, blocks, **opts)`, `grow(target, reference, n_new, mode, **opts)`,
  `renumber(model, keep_scale)`, `half_width(reference)`; opts are parts, copy_wpe, copy_ln_f and attn_scale as
  in `method=inheritune`. Both return a model to train in float32; inputs are never modified;
- analysis: `attention_per_layer(model, idx)` (each layer's post-softmax attention (B, H, T, T)),
  `attention_layers_alive(model)` (how many of those exist at once), `qk_grad_norms(model, x, y)`;
- data: `data_tokenizer(spec)` (a pretrained model's own tokenizer as a data-pipeline tokenizer).

An operation a family does not have raises SurgeryError (surgery) or ModelLoadError (loading). Family-neutral
helpers: `load_checkpoint(path)`, `config_dict(model)`, `checkpoint_shape(hparams)`, `check_same_family(a, b)`.

Layers: this package's `__init__` and `common.py` import neither torch nor a family (the `__init__` imports the
tokenizer module, below it, to register the families' tokenizer kinds). A family is registered here
by name with its config facts; its module is imported by name (importlib) the first time one of its operations
runs, and imports `models.common` and its own parts (hf: hf_load, hf_wrapper, hf_surgery, and the tokenizer),
never the modules that use this interface. So nothing below the models imports a family, and the import graph has
no cycle (tests/test_layers.py checks both).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import ModuleType

from lit_inheritune.errors import ConfigError
from lit_inheritune.models.common import (
    ATTN_SCALES,
    BLOCK_PARTS,
    GROW_MODES,
    ModelLoadError,
    SurgeryError,
    check_same_family,
    keeps_scale,
    loss_and_grads,
    source_blocks,
)
from lit_inheritune.tokenizer import register_tokenizer_kind

__all__ = [
    "ATTN_SCALES", "BLOCK_PARTS", "FAMILIES", "GROW_MODES", "ModelFamily", "ModelLoadError", "SurgeryError", "check_same_family",
    "checkpoint_shape", "config_dict", "family", "family_of", "keeps_scale", "load_checkpoint", "loss_and_grads",
    "source_blocks", "tokenizer_families", "upgrade_config_class",
]

# Checkpoints whose model hyper-parameters record no `kind` predate the families: they hold our GPT.
DEFAULT_KIND = "gpt"


@dataclass(eq=False, frozen=True)
class ModelFamily:
    """One family of models: its config facts (fields) and its operations (methods, run by its module)."""

    name: str  # the `kind` in checkpoints' model hyper-parameters and in tokenizer specs
    module: str  # where the operations live, imported on first use
    config_class: str  # dotted path of its model config: the `_target_` of conf/model/*.yaml
    title: str  # for messages: "GPT", "Hugging Face"
    pretrained: bool = False
    methods: tuple[str, ...] | None = None
    inherits_whole: bool = False
    keeps_source_scale: bool = True
    has_tokenizer: bool = False
    # n_layer, n_head, n_embd, vocab_size, ... -> their dotted key in a checkpoint's model hyper-parameters
    shape_keys: Mapping[str, str] = field(default_factory=dict)
    # where the config class lived before (stage identities recorded then name it so)
    former_config_classes: tuple[str, ...] = ()

    @property
    def impl(self) -> ModuleType:
        """The family's module (imported now if it is not yet)."""
        return importlib.import_module(self.module)

    def _op(self, name: str, error: type[Exception] = SurgeryError):
        op = getattr(self.impl, name, None)
        if op is None:
            raise error(f"{self.title} models do not support {name.replace('_', ' ')}")
        return op

    # Handles
    def blocks(self, model):
        return self._op("blocks")(model)

    def embedding(self, model):
        return self._op("embedding")(model)

    def position_embedding(self, model):
        return self._op("position_embedding")(model)

    def final_norm(self, model):
        return self._op("final_norm")(model)

    def head(self, model):
        return self._op("head")(model)

    def n_layer(self, model) -> int:
        return len(self.blocks(model))

    def owns(self, model) -> bool:
        """Whether `model` (an nn.Module) is one of this family's models."""
        return bool(self._op("owns")(model))

    # Building
    def random(self, spec):
        """A randomly initialised model of the instantiated model config `spec` (seeded by the caller's RNG)."""
        return self._op("random", ModelLoadError)(spec)

    def load(self, spec):
        """The pretrained model the instantiated model config `spec` names, checked against it."""
        return self._op("load", ModelLoadError)(spec)

    def pretrained_model(self, path: str, gguf_file: str | None = None, cache_dir=None):
        """(model, its own data tokenizer, {"path", "gguf_file"} it came from, aliases resolved)."""
        return self._op("pretrained_model", ModelLoadError)(path, gguf_file, cache_dir)

    def from_hparams(self, hparams: dict, state: dict | None):
        """The model a checkpoint's model hyper-parameters describe, holding `state` (`model.` prefix removed;
        None: the model only, for weights loaded right after, as a resumed fit that grew does)."""
        return self._op("from_hparams")(hparams, state)

    def config_dict(self, model) -> dict:
        return self._op("config_dict")(model)

    # Surgery
    def inherit(self, reference, n_layer: int | None = None, blocks=None, **opts):
        """A model of the first `n_layer` reference blocks (or of the listed `blocks`, in order)."""
        return self._op("inherit")(reference, n_layer, blocks, **opts)

    def grow(self, target, reference, n_new: int = 2, mode: str = "append", **opts):
        """An (n + n_new)-layer model from an n-layer target and its reference: `append` keeps the target and
        appends reference blocks n..n+n_new-1; `reinherit` inherits the first n + n_new blocks afresh."""
        return self._op("grow")(target, reference, n_new, mode, **opts)

    def renumber(self, model, keep_scale: bool = False):
        """After blocks were appended or reordered in place: each block's attention scale and the config's depth."""
        return self._op("renumber")(model, keep_scale)

    def half_width(self, reference):
        return self._op("half_width")(reference)

    # Analysis
    def attention_per_layer(self, model, idx):
        return self._op("attention_per_layer")(model, idx)

    def attention_layers_alive(self, model) -> int:
        return int(self._op("attention_layers_alive")(model))

    def qk_grad_norms(self, model, x, y) -> dict:
        return self._op("qk_grad_norms")(model, x, y)

    # Data
    def data_tokenizer(self, spec: dict):
        return self._op("data_tokenizer", ModelLoadError)(spec)


FAMILIES: dict[str, ModelFamily] = {}


def register(fam: ModelFamily) -> ModelFamily:
    FAMILIES[fam.name] = fam
    if fam.has_tokenizer:  # its pretrained models' own tokenizers: a tokenizer spec kind, built by the family
        register_tokenizer_kind(fam.name, fam.data_tokenizer)
    return fam


register(ModelFamily(
    name="gpt",
    module="lit_inheritune.models.gpt",
    config_class="lit_inheritune.models.gpt.GPTConfig",
    title="GPT",
    shape_keys={k: k for k in ("n_layer", "n_head", "n_embd", "vocab_size", "block_size",
                               "scale_attn_by_inverse_layer_idx")},
    former_config_classes=("lit_inheritune.model.GPTConfig",),
))
register(ModelFamily(
    name="hf",
    module="lit_inheritune.models.hf",
    config_class="lit_inheritune.models.hf.HFModelSpec",
    title="Hugging Face",
    pretrained=True,
    methods=("inheritune", "scratch", "embedding_only"),
    inherits_whole=True,  # as the official lit-gpt code inherited OpenLLaMA-3B
    keeps_source_scale=False,  # HF's GPT-2 scales attention by each layer's position
    has_tokenizer=True,
    shape_keys={"n_layer": "hf_config.num_hidden_layers", "n_head": "hf_config.num_attention_heads",
                "n_embd": "hf_config.hidden_size", "vocab_size": "hf_config.vocab_size"},
    former_config_classes=("lit_inheritune.hf.HFModelSpec",),
))


def family(name: str) -> ModelFamily:
    """The family registered as `name` (a checkpoint's or tokenizer spec's `kind`)."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; registered: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def _class_path(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def family_of(x) -> ModelFamily:
    """The family of a model config (a config node with `_target_`, or the object it instantiates), of a
    checkpoint's model hyper-parameters (their `kind`), or of a model."""
    if isinstance(x, Mapping):
        target = x.get("_target_")
        if target is None:  # a checkpoint's model hyper-parameters
            return family(x.get("kind") or DEFAULT_KIND)
        for fam in FAMILIES.values():
            if target == fam.config_class:
                return fam
        raise ConfigError(f"model._target_={target} is not the config class of a model family; use one of "
                          f"{', '.join(f.config_class for f in FAMILIES.values())}")
    path = _class_path(x)
    for fam in FAMILIES.values():
        if path == fam.config_class:
            return fam
    # A model: asked first of the families whose modules are loaded (its class came from one), then of the others.
    for fam in sorted(FAMILIES.values(), key=lambda f: f.module not in sys.modules):
        if fam.owns(x):
            return fam
    raise SurgeryError(f"{type(x).__name__} is neither a model config nor a model of a registered family "
                       f"({', '.join(FAMILIES)})")


def tokenizer_families() -> list[str]:
    """Names of the families whose pretrained models bring their own tokenizer (tokenizer spec kinds)."""
    return [fam.name for fam in FAMILIES.values() if fam.has_tokenizer]


def upgrade_config_class(path: str) -> str:
    """A model config class path as it is now (paths recorded before the classes moved are mapped)."""
    for fam in FAMILIES.values():
        if path in fam.former_config_classes:
            return fam.config_class
    return path


def config_dict(model) -> dict:
    """What a checkpoint records of `model` (its family rebuilds it from this with `from_hparams`)."""
    return family_of(model).config_dict(model)


def checkpoint_shape(model_hparams: dict) -> dict:
    """n_layer, n_head, ... of a checkpoint's model hyper-parameters, read without torch."""
    shape = {}
    for ours, key in family_of(model_hparams).shape_keys.items():
        value = model_hparams
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        shape[ours] = value
    return shape


def load_checkpoint(path, map_location="cpu"):
    """The model inside one of our Lightning checkpoints (loaded with weights_only=True), of whichever family
    its model hyper-parameters name."""
    import torch

    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams or "state_dict" not in ckpt:
        raise SurgeryError(f"{path} is not a lit_inheritune checkpoint (no model hyperparameters)")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    try:
        return family_of(hparams["model"]).from_hparams(hparams["model"], state)
    except SurgeryError as e:
        raise SurgeryError(f"{path} {e}") from None  # the families' messages are predicates: "does not match ..."
