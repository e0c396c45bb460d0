"""Where a checkpoint's run lives and which tokenizer it was trained with, found offline from what the runner
wrote: <run dir>/checkpoints/last.ckpt beside <run dir>/config.yaml, whose data.data_dir holds the manifest."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

import lit_inheritune.models  # noqa: F401  (the model families' tokenizer kinds a manifest may name, e.g. hf)
from lit_inheritune.tokenizer import Tokenizer, TokenizerError, gpt2_tokenizer, load_bpe, load_tokenizer

HINT = "pass data_dir=DIR (the prepared dataset), tokenizer=gpt2 or tokenizer=PATH/tokenizer.json"


def run_dir_of(ckpt: str | Path) -> Path:
    """A checkpoint at <run dir>/checkpoints/last.ckpt belongs to <run dir>; any other to its folder."""
    parent = Path(ckpt).parent
    return parent.parent if parent.name == "checkpoints" else parent


def checkpoint_data_dir(ckpt: str | Path) -> str | None:
    """data.data_dir of the config.yaml in the checkpoint's run dir, or None when there is none."""
    run_config = run_dir_of(ckpt) / "config.yaml"
    return OmegaConf.select(OmegaConf.load(run_config), "data.data_dir") if run_config.is_file() else None


def checkpoint_tokenizer(ckpt: str | Path, tokenizer: str = "auto", data_dir: str | Path | None = None) -> Tokenizer:
    """"gpt2"; a `tokenizers` JSON file; or "auto": the tokenizer in the manifest of `data_dir` (default:
    data.data_dir of the config.yaml in the checkpoint's run dir). Raises TokenizerError saying what to pass."""
    from lit_inheritune.data.prepare import MANIFEST_FILE

    choice = str(tokenizer or "auto")
    if choice == "gpt2":
        return gpt2_tokenizer()
    if choice != "auto":
        if not Path(choice).is_file():
            raise TokenizerError(f"tokenizer={choice} is neither auto, gpt2 nor a tokenizers JSON file")
        return load_bpe(Path(choice))
    if data_dir is None:
        run_config = run_dir_of(ckpt) / "config.yaml"
        if not run_config.is_file():
            raise TokenizerError(f"no data_dir given and no run config {run_config} to find it in; {HINT}")
        data_dir = checkpoint_data_dir(ckpt)
        if not data_dir:
            raise TokenizerError(f"{run_config} names no data.data_dir; {HINT}")
    manifest_path = Path(data_dir) / MANIFEST_FILE
    if not manifest_path.is_file():
        raise TokenizerError(f"{manifest_path} does not exist, so the model's tokenizer is unknown; {HINT}")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return load_tokenizer(manifest["tokenizer"], Path(data_dir))
