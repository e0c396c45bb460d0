"""Hydra/OmegaConf set-up shared by the CLI, the tests and notebooks."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from lit_inheritune import schema

CONFIG_DIR = Path(__file__).parent / "conf"

schema.register()

# val_check_interval counts micro-batches: val_every_n_steps * accumulate_grad_batches.
if not OmegaConf.has_resolver("mul"):
    OmegaConf.register_new_resolver("mul", lambda a, b: a * b)
# Inheritune's default target depth is half the reference's: ${idiv:${model.n_layer},2}.
if not OmegaConf.has_resolver("idiv"):
    OmegaConf.register_new_resolver("idiv", lambda a, b: a // b)
# train.compile's default: on where the trainer runs on an NVIDIA GPU (trainer=gpu, ddp, fsdp).
if not OmegaConf.has_resolver("on_gpu"):
    OmegaConf.register_new_resolver("on_gpu", lambda accelerator: accelerator in ("gpu", "cuda"))
# hydra/launcher=slurm: a GPU per device of a GPU trainer, none (no --gpus-per-node) for a CPU one.
if not OmegaConf.has_resolver("slurm_gpus"):
    OmegaConf.register_new_resolver(
        "slurm_gpus", lambda accelerator, devices: devices if str(accelerator) in ("gpu", "cuda") else None)


def _source_tag(n_layer, blocks) -> str:
    """Run-name part naming which reference blocks a target inherits: n6 (first six) or b4-7 / b0_2_5."""
    if not blocks:
        return f"n{n_layer}"
    blocks = [int(b) for b in blocks]
    if blocks == list(range(blocks[0], blocks[-1] + 1)):
        return f"b{blocks[0]}-{blocks[-1]}"
    return "b" + "_".join(map(str, blocks))


if not OmegaConf.has_resolver("source_tag"):
    OmegaConf.register_new_resolver("source_tag", _source_tag)
# A path inside the source checkout (data=fixture's corpus in tests/fixtures), found from any working directory.
REPO_DIR = Path(__file__).resolve().parents[1]
if not OmegaConf.has_resolver("repo"):
    OmegaConf.register_new_resolver("repo", lambda rel: str(REPO_DIR / rel))


def _attn_scale_tag(attn_scale) -> str:
    """Run-name suffix of the attention-scale policy: none for the official `position`, so those runs keep their
    names, and e.g. `-scale_source` otherwise, so the two policies never share a run directory."""
    return "" if attn_scale == "position" else f"-scale_{attn_scale}"


if not OmegaConf.has_resolver("attn_scale_tag"):
    OmegaConf.register_new_resolver("attn_scale_tag", _attn_scale_tag)


def _select_tag(select) -> str:
    """Run-name suffix of Inheritune's block selection: none for the paper's `first`, so those runs keep their
    names, and e.g. `-sel_potent` otherwise."""
    return "" if select in (None, "first") else f"-sel_{select}"


if not OmegaConf.has_resolver("select_tag"):
    OmegaConf.register_new_resolver("select_tag", _select_tag)


# Run-name suffix of a switch that is off by default: `${flag_tag:${method.carry_optimizer},carry}` -> "-carry".
if not OmegaConf.has_resolver("flag_tag"):
    OmegaConf.register_new_resolver("flag_tag", lambda on, name: f"-{name}" if on else "")


def compose(overrides: list[str] | None = None):
    """The config `python -m lit_inheritune <overrides>` would run, without starting a job."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))
