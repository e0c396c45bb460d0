"""Peak memory of a few real training steps on the CPU, for tests/test_plan.py to hold the plan's memory model to.

    python tests/peak_memory.py '{"n_layer": 4, "n_embd": 256, ...}' BATCH ACCUMULATE STEPS

Prints one JSON line: {"peak_bytes": ...}, the growth of this process's peak resident set (VmHWM, reset before the
fit) over its resident set after every import and the data: the model, its gradients, AdamW's state and the
activations the steps kept, as the operating system saw them. A fresh process, so nothing a test did before
counts. Run it with MALLOC_MMAP_THRESHOLD_=65536: glibc then maps every tensor above 64 KiB on its own and returns
it when freed, so the resident peak is the peak of live tensors (what torch.cuda.max_memory_allocated reports on a
GPU). Without it glibc keeps freed activations in its heap and reuses them badly, and the peak resident set grows
some 20% above the live peak. The fit is the runner's: CausalLM (its loss, AdamW with its foreach step) under a Lightning Trainer with
gradient clipping, fp32, no logger, checkpoint or validation.
"""

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig


def status_bytes(key: str) -> int:
    """A /proc/self/status field (VmRSS: resident now, VmHWM: its peak), in bytes."""
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> None:
    """Start the resident peak afresh from now (Linux's clear_refs 5): a spike while importing or loading, above
    what the fit reaches, would otherwise hide the fit's own peak (seen under the loaded test suite: 0 bytes)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def main() -> None:
    shape, batch, accumulate, steps = json.loads(sys.argv[1]), *map(int, sys.argv[2:5])
    torch.manual_seed(0)
    T, V = shape["block_size"], shape["vocab_size"]
    x = torch.randint(0, V, (batch * accumulate * steps, T + 1))
    loader = DataLoader(TensorDataset(x[:, :-1], x[:, 1:]), batch_size=batch)
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
                        accumulate_grad_batches=accumulate, gradient_clip_val=1.0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0)
    before = status_bytes("VmRSS")
    reset_peak()
    module = CausalLM(GPT(GPTConfig(**shape)), OptimConfig(lr=1e-4, warmup_steps=0, decay_steps=steps))
    trainer.fit(module, loader)
    print(json.dumps({"peak_bytes": status_bytes("VmHWM") - before, "params": module.model.num_params()}))


if __name__ == "__main__":
    main()
