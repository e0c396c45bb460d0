"""A checkpoint's recorded model config (read without its weights), where its run lives and which tokenizer it was
trained with, found offline from what the runner
wrote: <run dir>/checkpoints/last.ckpt beside <run dir>/config.yaml, whose data.data_dir holds the manifest."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

import lit_inheritune.models  # noqa: F401  (the model families' tokenizer kinds a manifest may name, e.g. hf)
from lit_inheritune.errors import CheckpointError
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


def checkpoint_config(path: str | Path, key: str = "ckpt", own_stage: bool = False) -> dict:
    """The model hyper-parameters recorded in one of our checkpoints, read without loading the weights (mmap).
    Raises CheckpointError naming the file when it is missing, corrupt (e.g. truncated) or not one of ours; what
    it advises depends on where the file is: `key` is the setting that named it (e.g. reference.ckpt), and
    `own_stage` says it is a checkpoint of this run's own stage (one it would resume from)."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; give the path of a last.ckpt or best.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt (truncated or not a torch file: {reason}); "
                              f"{_corrupt_advice(path, key, own_stage)}") from None
    model = (ckpt.get("hyper_parameters") or {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(model, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a lit_inheritune checkpoint (no model hyper-parameters); give "
                              f"another {key}=")
    return model


def _corrupt_advice(path: Path, key: str, own_stage: bool) -> str:
    """What to do about a corrupt checkpoint: inside a run's stage directory (it holds identity.json), use the
    stage's best.ckpt or train the stage again; anywhere else (the user's own folder) give another file."""
    from lit_inheritune.training.identity import IDENTITY_FILE

    best = path.with_name("best.ckpt")
    best = best if best.is_file() and best != path else None
    stage = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    if not own_stage and not (stage / IDENTITY_FILE).is_file():
        return (f"it is not a usable checkpoint: give another {key}="
                + (f" (e.g. {key}={best}, the best validation step beside it)" if best else ""))
    if best is None:
        return f"remove {stage} to train that stage again"
    here = "" if own_stage else f" or pass {key}={best},"
    return (f"use {best} (the best validation step) instead: `cp {best} {path}` and rerun with resume=true to "
            f"continue training from it,{here} or remove {stage} to train that stage again")
