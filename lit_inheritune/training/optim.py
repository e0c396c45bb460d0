"""AdamW with decay on Linear weights only, and linear warmup then cosine decay to min_lr (PAPER.md section 3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class OptimConfig:
    lr: float = 6e-4
    min_lr: float = 1e-5
    warmup_steps: int = 2000
    # Length of the cosine; the paper decays over the whole run (100K steps).
    decay_steps: int = 100_000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.warmup_steps < 0 or self.decay_steps < 1:
            raise ValueError(f"bad schedule: warmup_steps={self.warmup_steps}, decay_steps={self.decay_steps}")


class WarmupCosine:
    """lr multiplier at an optimizer step: linear warmup, cosine to min_lr/lr at decay_steps, then flat.

    A callable object rather than a closure so the scheduler's state dict stays plain data.
    """

    def __init__(self, cfg: OptimConfig):
        self.warmup = cfg.warmup_steps
        self.decay = cfg.decay_steps
        self.floor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if step >= self.decay:
            return self.floor
        progress = (step - self.warmup) / max(1, self.decay - self.warmup)
        return self.floor + 0.5 * (1.0 - self.floor) * (1.0 + math.cos(math.pi * progress))


def decayed_parameters(model: torch.nn.Module) -> set[int]:
    """ids of the parameters that get weight decay: the weights of nn.Linear layers (PAPER.md section 3,
    as the official code), never an embedding, even where a Linear head is tied to one, nor norms."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    # Hugging Face GPT-2 keeps its linear layers as transformers' Conv1D (a Linear with a transposed weight).
    linear = lambda m: isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"
    return {id(m.weight) for m in model.modules() if linear(m) and id(m.weight) not in embeddings}


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig):
    params = [p for p in model.parameters() if p.requires_grad]
    decayed = decayed_parameters(model)
    groups = [
        {"params": [p for p in params if id(p) in decayed], "weight_decay": cfg.weight_decay, "name": "decay"},
        {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0, "name": "no_decay"},
    ]
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, foreach=True
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg))
    return optimizer, scheduler
