"""Seconds for `measure_attention` on a GPT-2 Medium-sized model (PAPER.md section 5's setting).

    python benchmarks/analysis_speed.py                       # 24L, 16 heads, d=1024: 100 seqs x 100 tokens
    python benchmarks/analysis_speed.py --out experiments/results/benchmarks/analysis_speed.json

Random weights (the cost does not depend on them) and random val tokens. Two timings: the paper's single
tau=0.9, and the four robustness taus, which share one SVD per layer and so should cost about the same.
The forward pass is most of the time (~6 TFLOP at 100 x 100 tokens); the SVDs are the rest.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lit_inheritune.analysis import DEFAULT_TAUS, measure_attention
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.provenance import provenance


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=24)
    parser.add_argument("--n-head", type=int, default=16)
    parser.add_argument("--n-embd", type=int, default=1024)
    parser.add_argument("--n-seq", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per forward (default: auto)")
    parser.add_argument("--skip-single-tau", action="store_true", help="time only the four-tau run")
    parser.add_argument("--precision", nargs="+", default=["32", "bf16"], help="forward precisions to time")
    parser.add_argument("--out", type=Path, default=None, help="write the timings as JSON here")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=1024,
                       vocab_size=50304)
    model = GPT(config)
    val_tokens = np.random.default_rng(0).integers(0, 50257, size=200_000).astype(np.uint16)

    timings = {}
    runs = {"four_taus": DEFAULT_TAUS} if args.skip_single_tau else {"tau_0.9": (0.9,), "four_taus": DEFAULT_TAUS}
    runs = {f"{name}_{p}": (taus, p) for name, taus in runs.items() for p in args.precision}
    for name, (taus, precision) in runs.items():
        start = time.perf_counter()
        report = measure_attention(model, val_tokens, n_seq=args.n_seq, seq_len=args.seq_len, taus=taus,
                                   batch_size=args.batch_size, precision=precision)
        timings[name] = time.perf_counter() - start
        print(f"{name}: {timings[name]:.1f} s for {args.n_seq} x {args.seq_len} tokens, "
              f"{args.n_layer} layers x {args.n_head} heads (MaxRank layer 0: {report['max_rank'][0]:.2f})")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"seconds": timings, "model": config.to_dict(), "n_seq": args.n_seq, "seq_len": args.seq_len,
                  "provenance": provenance()}
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
