"""Training tokens/s of our Lightning loop against a plain PyTorch loop, same model and batches, one process.

    python benchmarks/throughput.py                 # `make bench`: the CPU reference config
    python benchmarks/throughput.py --model gpt2_small --steps 10 --batch-size 4

Both loops draw the same windows (TrainWindows over one random token array), use the same AdamW
groups, schedule and grad clipping, and time only optimizer steps after a warm-up. The Lightning side
is the real training path: CausalLM + Trainer with the project's callbacks and CSV logging.
The loops alternate for several rounds and each side keeps its best round, because on a shared
2-core machine round-to-round noise (~10%) is larger than the difference being measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lit_inheritune.config import compose
from lit_inheritune.data.datamodule import TrainWindows
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.provenance import provenance
from lit_inheritune.training.callbacks import SpeedMonitor
from lit_inheritune.training.lm import CausalLM
from lit_inheritune.training.optim import OptimConfig, build_optimizer


def plain_loop(config: GPTConfig, optim: OptimConfig, batches, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    model = GPT(config)
    optimizer, scheduler = build_optimizer(model, optim)
    it = iter(batches)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        x, y = next(it)
        loss = model(x, y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
    return time.perf_counter() - start


class _Timer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, pl_module):
        self.end = time.perf_counter()


def lightning_loop(config: GPTConfig, optim: OptimConfig, batches, warmup: int, steps: int) -> float:
    torch.manual_seed(0)
    module = CausalLM(GPT(config), optim)
    timer = _Timer(warmup)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=warmup + steps, gradient_clip_val=1.0,
            logger=L.pytorch.loggers.CSVLogger(tmp, name="", version="bench"), log_every_n_steps=10,
            callbacks=[timer, SpeedMonitor()], enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, default_root_dir=tmp,
        )
        loader = torch.utils.data.DataLoader(batches, batch_size=None)
        trainer.fit(module, train_dataloaders=loader)
    return timer.end - timer.start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cpu_reference", help="a conf/model name")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="alternating rounds; the best of each is kept")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args()

    cfg = compose([f"model={args.model}"])
    config = GPTConfig(**{k: v for k, v in cfg.model.items() if k != "_target_"})
    optim = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=args.warmup + args.steps)
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, size=2_000_000).astype(np.uint16)
    batches = TrainWindows(tokens, config.block_size, args.batch_size, seed=0, sampling="random")
    tokens_timed = args.steps * args.batch_size * config.block_size

    plain, light = [], []
    for _ in range(args.repeats):  # alternate so drift in machine load hits both
        plain.append(tokens_timed / plain_loop(config, optim, batches, args.warmup, args.steps))
        light.append(tokens_timed / lightning_loop(config, optim, batches, args.warmup, args.steps))
    result = {
        "model": args.model,
        "params_M": round(GPT(config).num_params() / 1e6, 3),
        "batch": f"{args.batch_size} x {config.block_size}",
        "steps_timed": args.steps,
        "plain_tokens_per_sec": round(max(plain)),
        "lightning_tokens_per_sec": round(max(light)),
        "ratio_lightning_over_plain": round(max(light) / max(plain), 3),
        "rounds_plain": [round(x) for x in plain],
        "rounds_lightning": [round(x) for x in light],
        **provenance(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
