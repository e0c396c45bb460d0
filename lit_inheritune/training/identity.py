"""Run identity: what determines a stage's training, recorded in its directory and checked before reuse.

A stage directory is reused (skipped when finished, continued with resume=true) only when the identity it
recorded equals the one the current config asks for. The identity holds the stage's model, the data (the
batching settings, the prepare config and the shards' checksums), the optimizer and schedule, the training
length, the trainer settings that change the numbers, the seed, and how the stage was initialised, which
nests the identity of whatever it was initialised from (the reference, the previous stage). So a reference
trained under another lr, or a round-1 target built from another reference, is never picked up by accident.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lit_inheritune.errors import ConfigError
from lit_inheritune.models import upgrade_config_class

IDENTITY_FILE = "identity.json"

# Settings that do not change what a stage computes: where things live and how they are logged. (A method's own
# control settings, such as how far Inheritune grows, are left out by the method: methods/base.py `control`.)
_DATA_IGNORED = ("_target_", "data_dir", "num_workers", "verify_checksum", "prepare")
_MODEL_IGNORED = ("cache_dir",)

# Before each method was a module with a schema of its own (issue #24), one schema held every method's keys, null
# where unused, stage identities recorded them all, and some experiments carried one method's values into another's
# (cpu_medium_table2's stacking recorded Inheritune's grow_mode). A method's part of an identity is still written in
# that shape, and a recorded one is read with the keys its method does not own set to null, so the stages trained
# before the move are recognised as the same stages (tests/test_run_identity.py pins fingerprints of both).
LEGACY_METHOD_KEYS = ("n_layer", "blocks", "parts", "copy_wpe", "copy_ln_f", "grow_mode", "attn_scale", "alpha",
                      "temperature", "min_lr", "student_blocks")
_METHOD_KEYS: dict[str, frozenset[str]] = {}


def register_method_keys(name: str, keys) -> None:
    """The identity keys method `name` owns (methods/__init__.py registers the built-in ones, load_method the
    configured one)."""
    _METHOD_KEYS[name] = frozenset(keys)


def method_record(identity: dict) -> dict:
    """A method's identity in the recorded shape: every legacy key, null unless the method sets it."""
    return {**dict.fromkeys(LEGACY_METHOD_KEYS), **identity}


def _upgrade_method(record: dict) -> dict:
    owned = _METHOD_KEYS.get(record.get("name"))
    if owned is None:
        return record
    return {k: None if k in LEGACY_METHOD_KEYS and k not in owned else v for k, v in record.items()}


def _plain(node) -> dict:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)


def data_identity(cfg: DictConfig) -> dict:
    """The batching settings plus what the prepared directory holds (its manifest's prepare config and the
    shards' checksums), so moving the data elsewhere keeps the identity and re-tokenizing it does not."""
    data = {k: v for k, v in _plain(cfg.data).items() if k not in _DATA_IGNORED}
    manifest_path = Path(cfg.data.data_dir) / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        data["prepared"] = {"config": manifest.get("config"),
                            **{split: entry.get("sha256") for split, entry in manifest.get("splits", {}).items()}}
    return data


def stage_identity(cfg: DictConfig, *, n_layer: int, steps: int, seed: int, init: dict,
                   model: dict | None = None) -> dict:
    """Everything that determines a stage of `steps` steps of an `n_layer`-layer model (`model` overrides
    other fields, e.g. half width) trained from `init`."""
    t = cfg.trainer
    return {
        "model": {**{k: v for k, v in _plain(cfg.model).items() if k not in _MODEL_IGNORED},
                  "n_layer": int(n_layer), **(model or {})},
        "data": {**data_identity(cfg), "seed": int(seed)},
        "optim": {**{k: v for k, v in _plain(cfg.optim).items() if k != "_target_"}, "decay_steps": int(steps)},
        "train": {"max_steps": int(steps), "accumulate_grad_batches": int(cfg.train.accumulate_grad_batches)},
        "trainer": {"precision": str(t.get("precision")), "gradient_clip_val": t.get("gradient_clip_val"),
                    "devices": t.get("devices"), "num_nodes": t.get("num_nodes", 1), "strategy": str(t.get("strategy"))},
        "seed": int(seed),
        "init": init,
    }


def upgrade(identity):
    """The identity as it is recorded now: a model config class recorded under the path it had before the model
    families moved to lit_inheritune/models (e.g. lit_inheritune.model.GPTConfig) is named by its path now, and a
    method's keys are read as its own (`_upgrade_method`), so stages trained before those moves are still recognised
    as the same."""
    if isinstance(identity, dict):
        if isinstance(identity.get("method"), dict) and "kind" in identity:  # an `init` that names its method
            identity = {**identity, "method": _upgrade_method(identity["method"])}
        return {k: upgrade_config_class(v) if k == "_target_" and isinstance(v, str) else upgrade(v)
                for k, v in identity.items()}
    if isinstance(identity, list):
        return [upgrade(v) for v in identity]
    return identity


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(upgrade(identity), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): obj}


def differences(recorded: dict, wanted: dict) -> list[tuple[str, object, object]]:
    """(dotted key, recorded value, wanted value) for every key whose values differ."""
    a, b = _flatten(upgrade(recorded)), _flatten(upgrade(wanted))
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va != vb:
            diffs.append((key, "(absent)" if va is missing else va, "(absent)" if vb is missing else vb))
    return diffs


def check_stage_dir(stage_dir: Path, identity: dict) -> bool:
    """True when `stage_dir` already holds work (a result or a checkpoint) made under `identity`; False when
    it holds none. Work made under other settings is a ConfigError naming the differing keys."""
    stage_dir = Path(stage_dir)
    has_work = (stage_dir / "result.json").exists() or (stage_dir / "checkpoints" / "last.ckpt").exists()
    path = stage_dir / IDENTITY_FILE
    ways_out = (f"give these settings their own run with a new name=<experiment name>, or remove {stage_dir} "
                "to train it again")
    if not path.exists():
        if has_work:
            raise ConfigError(f"{stage_dir} holds a run that recorded no identity, so it cannot be known to match "
                              f"this config; {ways_out}")
        return False
    recorded = json.loads(path.read_text())
    diffs = differences(recorded, identity)
    if diffs:
        shown = "; ".join(f"{k}: {_short(va)} (there) vs {_short(vb)} (now)" for k, va, vb in diffs[:6])
        more = f" and {len(diffs) - 6} more" if len(diffs) > 6 else ""
        raise ConfigError(f"{stage_dir} was made under other settings: {shown}{more}; {ways_out}")
    return has_work


def _short(value) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."
