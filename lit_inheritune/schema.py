"""Structured schemas of the training config, registered in Hydra's ConfigStore: types are checked while the
config is composed, so `train.max_steps=abc` or a misspelt key is rejected naming the key, before anything runs.

The YAML files hold the values; these dataclasses only say which keys exist and of what type (`MISSING`: the
YAML must set it). `config.yaml` starts from `base_config`; every model YAML from `base_gpt_model` or
`base_hf_model`. Keep the fields in step with what they are instantiated into (GPTConfig, HFModelSpec,
OptimConfig, TokenDataModule): tests/test_configs.py compares them. This module imports no torch, so composing
a config (and `--help`) stays fast.
"""

# No `from __future__ import annotations`: OmegaConf reads these annotations as types.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class GPTModelSchema:
    _target_: str = "lit_inheritune.models.gpt.GPTConfig"
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    block_size: int = MISSING
    vocab_size: int = MISSING
    scale_attn_by_inverse_layer_idx: bool = MISSING
    attn_scale_index: list[int] | None = None  # set by surgery (GPTConfig), never by a model config


@dataclass
class HFModelSchema(GPTModelSchema):
    _target_: str = "lit_inheritune.models.hf.HFModelSpec"
    path: str = MISSING
    gguf_file: str | None = None
    revision: str | None = None
    cache_dir: str | None = None
    attn_implementation: str = MISSING
    dtype: str = MISSING


@dataclass
class TrainSchema:
    max_steps: int = MISSING
    accumulate_grad_batches: int = MISSING
    val_every_n_steps: int = MISSING
    log_every_n_steps: int = MISSING
    compile: bool = False


@dataclass
class OptimSchema:
    _target_: str = "lit_inheritune.training.optim.OptimConfig"
    lr: float = MISSING
    min_lr: float = MISSING
    warmup_steps: int = MISSING
    decay_steps: int = MISSING
    weight_decay: float = MISSING
    beta1: float = MISSING
    beta2: float = MISSING


@dataclass
class PrepareSchema:
    # Kind-specific (see data/corpus.py load_corpus and data/prepare.py), so open dictionaries.
    source: dict[str, Any] = MISSING
    tokenizer: dict[str, Any] = MISSING
    val_fraction: float = MISSING
    split_seed: int = MISSING
    eot: str = MISSING


@dataclass
class DataSchema:
    _target_: str = "lit_inheritune.data.datamodule.TokenDataModule"
    data_dir: str = MISSING
    block_size: int = MISSING
    batch_size: int = MISSING
    model_vocab_size: int = MISSING
    sampling: str = MISSING
    num_val_windows: int = MISSING
    val_seed: int = MISSING
    seed: int = MISSING
    # TokenDataModule's own defaults, for the data configs that do not set them.
    val_batch_size: int | None = None
    num_workers: int = 0
    verify_checksum: bool = True
    prepare: PrepareSchema | None = None


@dataclass
class ReferenceSchema:
    """The reference (conf/reference/): `train` (trained here, max_steps and seed), `ckpt` (a checkpoint), or
    `pretrained` (the pretrained model the model config names). Each method's keys are its own dataclass's
    (lit_inheritune/methods/), checked when the run starts, before any directory exists."""

    kind: str = MISSING
    ckpt: str | None = None
    max_steps: int | None = None
    seed: int | None = None


@dataclass
class AnalysisSchema:
    n_seq: int = MISSING
    seq_len: int = MISSING
    taus: list[float] = MISSING
    eta: float = MISSING
    seed: int = MISSING


@dataclass
class ConfigSchema:
    name: str = MISSING
    seed: int = MISSING
    resume: bool = MISSING
    train: TrainSchema = field(default_factory=TrainSchema)
    optim: OptimSchema = field(default_factory=OptimSchema)
    data: DataSchema = field(default_factory=DataSchema)
    reference: ReferenceSchema = field(default_factory=ReferenceSchema)
    # A method's keys are its class's fields (lit_inheritune/methods/, named by `_target_`): checked by checks.py.
    method: Any = MISSING
    analyze: bool = MISSING
    analysis: AnalysisSchema = field(default_factory=AnalysisSchema)
    run_name: str = MISSING
    run_dir: str = MISSING
    # Two model schemas (ours, Hugging Face): each model YAML names its own in its defaults.
    model: Any = MISSING
    # Passed to Lightning and Hydra as they are.
    paths: Any = MISSING
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None


def register() -> None:
    store = ConfigStore.instance()
    store.store(name="base_config", node=ConfigSchema)
    store.store(name="base_gpt_model", node=GPTModelSchema)
    store.store(name="base_hf_model", node=HFModelSchema)
