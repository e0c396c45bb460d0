"""FSDP on CPU processes (gloo), for tests: the paper's XLarge runs use trainer=fsdp, and this is how its code
path (wrapping, the FSDP precision plugin, gradient clipping, full-state checkpoints) runs without a GPU."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.strategies import fsdp as lightning_fsdp


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy with the model wrapped on CPU. Lightning refuses FSDP without a GPU (its check
    is `type(strategy) is FSDPStrategy`, which a subclass passes) and torch's FSDP places the model on the
    accelerator unless given a device; everything else (auto-wrap policy, sharding, precision plugin,
    checkpointing) is Lightning's own."""

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        from torch.distributed.fsdp import FullyShardedDataParallel

        return FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                        mixed_precision=self.mixed_precision_config,
                                        sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                        **self.kwargs)

    @contextmanager
    def _full_state_dict_on_cpu(self):
        """Lightning gathers full state dicts with offload_to_cpu=True; with parameters already on the CPU, torch
        frees the gathered tensors that ranks > 0 then clone (a segfault). Gather without the offload."""
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        def context(module, world_size, rank0_only=True):
            return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                        FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                        FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

        with mock.patch.object(lightning_fsdp, "_get_full_state_dict_context", context):
            yield

    def lightning_module_state_dict(self):
        with self._full_state_dict_on_cpu():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with self._full_state_dict_on_cpu():
            return super().optimizer_state(optimizer)


def global_grad_norm(trainer: L.Trainer) -> float:
    """The L2 norm of the whole gradient: each rank's shard squared and summed, then summed over ranks."""
    local = sum((p.grad.double() ** 2).sum() for p in trainer.strategy.model.parameters() if p.grad is not None)
    total = torch.as_tensor(local, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(total)
    return math.sqrt(total.item())


class GradNormProbe(L.Callback):
    """Records, per optimizer step, the global gradient norm before clipping (Lightning's hook before it clips)
    and the one the step used (read after the step: the gradients stay in place until the next step zeroes
    them). Rank 0 adds them to the JSON file `path` under the stage's name."""

    def __init__(self, path: str):
        self.path = Path(path)
        self.steps: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.steps.append({"before_clip": global_grad_norm(trainer)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps[-1]["stepped"] = global_grad_norm(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            record = json.loads(self.path.read_text()) if self.path.exists() else {}
            record[pl_module.hparams["meta"]["stage"]] = {"world_size": trainer.world_size, "steps": self.steps}
            self.path.write_text(json.dumps(record, indent=2))
