"""`python -m lit_inheritune.plan experiment=<name> [overrides] [--gpu A100] [--mfu 0.4]`: what a run would cost,
before any of it runs.

The config is the runner's (same composition, same checks but the data's and the GPUs'), and the stages are the
method's own plan (`run.plan`): every stage the run may take, Algorithm 1's rounds up to max_layers included. For
each: parameters, steps, tokens, training FLOPs (compute.py), peak memory per device, GPU-hours at a stated MFU on
a stated GPU, checkpoint size, and whether its directory already holds it. Nothing here imports torch: parameter
counts and memory are arithmetic on the config.

Memory per device, in bytes (P parameters, B micro-batch, T context, d width, L layers, V vocabulary):
- weights, gradients and AdamW's two moments: P each (2P for the moments) at the parameters' dtype, 4 bytes
  under 32-true and the *-mixed precisions (fp32 master weights), 2 under bf16-true / 16-true;
- DDP keeps its gradient buckets beside the gradients (one more copy); FSDP shards weights, gradients and moments
  over devices x num_nodes and gathers two blocks at a time in full (the one computing and the one prefetched);
- activations kept for the backward of one micro-batch, per block per token: x and the ln_1 output, q, k, v,
  the attention output twice (SDPA's and the re-assembled heads), x and the ln_2 output, the 4d MLP input and
  GELU output: 17d values, at 4 bytes in fp32 and about 38d bytes under mixed precision (the residual stream and
  norms stay fp32); plus the head: the logits, their fp32 log-softmax and its gradient (3 x V per token, fp32);
- the peak is the larger of the forward's and the optimizer step's. Lightning clears the gradients between a
  step's forward and its backward, so the forward still holds the last step's: weights + gradients + moments +
  activations. The step holds weights + gradients + moments + one gradient-sized temporary (foreach AdamW).
tests/test_plan.py checks this against the peak resident memory of real training steps on the CPU.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from lit_inheritune.compute import stage_flops, tokens
from lit_inheritune.errors import ConfigError

# Dense bf16 tensor-core peak per GPU, FLOP/s (vendor data sheets, without sparsity; V100 has no bf16: its fp16).
GPUS = {
    "A100": 312e12,
    "H100": 989e12,
    "A6000": 154.8e12,
    "L40S": 362e12,
    "RTX4090": 165.2e12,
    "V100": 125e12,
}
DEFAULT_GPU, DEFAULT_MFU = "A100", 0.4

GIB = 2**30


# ----------------------------------------------------------------------------------------------------------------
# Arithmetic on a stage's model


def param_count(model: dict) -> tuple[int, bool]:
    """(parameters, exact?) of a stage's model (its identity's `model`). Our GPT exactly: blocks 12 d^2 each plus
    two norm weights, the tied token embedding, the position embedding and the final norm. A Hugging Face model's
    MLP width is not in the config: estimated as 12 L d^2 + 2 V d (an untied head), within ~1% for LLaMA-3B."""
    L, d, V = int(model["n_layer"]), int(model["n_embd"]), int(model["vocab_size"])
    if "path" in model:  # a Hugging Face model spec
        return 12 * L * d * d + 2 * V * d, False
    T = int(model["block_size"])
    return L * (12 * d * d + 2 * d) + V * d + T * d + d, True


def dtype_kind(precision: str) -> str:
    """fp32, mixed (fp32 weights, bf16/fp16 compute) or half (weights and compute in 16 bits)."""
    if "mixed" in precision:
        return "mixed"
    return "half" if precision in ("bf16-true", "16-true", "bf16", "16") else "fp32"


# Bytes of a parameter (and of its gradient and each AdamW moment): mixed precision keeps fp32 master weights.
PARAM_BYTES = {"fp32": 4, "mixed": 4, "half": 2}
# Bytes a block keeps for its backward per token, per unit of width: 17 values (module docstring), in fp32, in
# 16 bits, or mixed (the residual stream and the norms' inputs stay fp32).
BLOCK_ACTIVATION_BYTES = {"fp32": 68, "mixed": 38, "half": 34}


def param_bytes(precision: str) -> int:
    return PARAM_BYTES[dtype_kind(precision)]


def activation_bytes(model: dict, micro_batch: int, precision: str) -> int:
    """What one micro-batch's forward keeps for its backward (module docstring), the head included: the fp32
    logits, their log-softmax and its gradient, and ln_f's input and output."""
    L, d, V, T = (int(model[k]) for k in ("n_layer", "n_embd", "vocab_size", "block_size"))
    head = 3 * 4 * V + 2 * 4 * d
    return micro_batch * T * (L * BLOCK_ACTIVATION_BYTES[dtype_kind(precision)] * d + head)


@dataclass
class Memory:
    weights: float
    grads: float
    adam: float
    activations: float
    extra: float  # DDP's gradient buckets, FSDP's gathered blocks
    extra_name: str
    peak: float


def memory(model: dict, micro_batch: int, precision: str, strategy: str, world: int,
           teacher: dict | None = None) -> Memory:
    """Peak memory per device, in bytes, of training `model` (module docstring). `strategy`: single, ddp or fsdp;
    `teacher`: a frozen model run forward on every batch (distillation), held whole on each device."""
    p, _ = param_count(model)
    b = param_bytes(precision)
    shard = world if strategy == "fsdp" else 1
    weights, grads, adam = p * b / shard, p * b / shard, 2 * p * b / shard
    extra, extra_name = 0.0, ""
    if strategy == "ddp" and world > 1:
        extra, extra_name = p * b, "DDP buckets"
    elif strategy == "fsdp":
        d = int(model["n_embd"])
        extra, extra_name = 2 * (12 * d * d + 2 * d) * b, "FSDP gathered"
    acts = activation_bytes(model, micro_batch, precision)
    if teacher is not None:
        weights += param_count(teacher)[0] * b
        acts += micro_batch * int(teacher["block_size"]) * int(teacher["vocab_size"]) * 4  # its logits
    forward = weights + grads + adam + acts + extra
    step = weights + 2 * grads + adam + extra
    return Memory(weights, grads, adam, acts, extra, extra_name, max(forward, step))


def checkpoint_bytes(params: int, precision: str) -> int:
    """A Lightning checkpoint: the weights and both AdamW moments (the tied head stored once)."""
    return 3 * params * param_bytes(precision)


def strategy_of(cfg: DictConfig) -> tuple[str, int]:
    """(single | ddp | fsdp, devices x num_nodes) of the configured Trainer."""
    from lit_inheritune.training.strategy import is_fsdp

    t = cfg.trainer
    devices = t.get("devices")
    devices = devices if isinstance(devices, int) and not isinstance(devices, bool) else 1
    world = devices * int(t.get("num_nodes") or 1)
    if is_fsdp(cfg):
        return "fsdp", world
    return ("ddp" if "ddp" in str(t.get("strategy")) and world > 1 else "single"), world


# ----------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class StagePlan:
    name: str
    dir: Path
    init: str
    n_layer: int
    params: int
    exact: bool
    steps: int
    tokens: int
    flops: float
    memory: Memory
    checkpoint: int
    status: str


def stage_status(stage) -> str:
    """What the stage's directory holds: done (result.json), a checkpoint to resume, nothing, or work made under
    other settings (which the run would refuse)."""
    from lit_inheritune.training.identity import check_stage_dir

    try:
        check_stage_dir(stage.dir, stage.identity)
    except ConfigError:
        return "other settings!"
    if (stage.dir / "result.json").exists():
        return "done"
    if (stage.dir / "checkpoints" / "last.ckpt").exists():
        return "started (resume=true)"
    return "-"


def plan_stages(cfg: DictConfig) -> list[StagePlan]:
    from lit_inheritune.run import plan

    strategy, world = strategy_of(cfg)
    precision = str(cfg.trainer.precision)
    out = []
    for stage in plan(cfg):
        ident = stage.identity
        model, steps = ident["model"], int(ident["train"]["max_steps"])
        params, exact = param_count(model)
        teacher = (ident.get("init") or {}).get("teacher")
        teacher_model = teacher.get("model") if isinstance(teacher, dict) else None
        mem = memory(model, int(ident["data"]["batch_size"]), precision, strategy, world, teacher_model)
        out.append(StagePlan(stage.name, stage.dir, stage.init, int(model["n_layer"]), params, exact, steps,
                             tokens(ident), stage_flops(ident) or 0.0, mem, checkpoint_bytes(params, precision),
                             stage_status(stage)))
    return out


def check(cfg: DictConfig):
    """The runner's checks (checks.preflight) but the ones that need the data prepared or the GPUs present: the
    plan is for before either exists."""
    from lit_inheritune import checks

    checks.check_names(cfg)
    checks.check_train(cfg)
    checks.check_trainer(cfg, count_gpus=False)  # a precision typo would be costed as fp32
    checks.check_optim(cfg)
    checks.check_model(cfg)
    run = checks.check_method(cfg)
    checks.check_reference_checkpoint(run)
    return run


# ----------------------------------------------------------------------------------------------------------------
# Output


def _si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    return f"{x:.0f}{unit}"


def _gib(x: float) -> str:
    return f"{x / GIB:.1f} GiB" if x >= GIB else f"{x / 2**20:.0f} MiB"


def _hours(h: float) -> str:
    return f"{h:,.0f}" if h >= 10 else f"{h:.2g}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table padded to its columns, readable in a terminal and pasteable as is."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def data_line(cfg: DictConfig, needed: int) -> str:
    manifest = Path(cfg.data.data_dir) / "manifest.json"
    if not manifest.is_file():
        return f"data: {cfg.data.data_dir} not prepared yet (prepared on the first run)"
    train = json.loads(manifest.read_text()).get("splits", {}).get("train", {}).get("tokens")
    if not train:
        return f"data: {cfg.data.data_dir} prepared"
    return f"data: {cfg.data.data_dir} holds {_si(train)} train tokens; the plan reads {needed / train:.1f}x that"


def render(cfg: DictConfig, stages: list[StagePlan], gpu: str, mfu: float) -> str:
    strategy, world = strategy_of(cfg)
    t, d = cfg.trainer, cfg.data
    peak_flops = GPUS[gpu] * mfu
    gpu_hours = lambda flops: flops / peak_flops / 3600
    per_step = int(d.batch_size) * int(cfg.model.block_size) * int(cfg.train.accumulate_grad_batches) * world
    lines = [
        f"plan of {cfg.name} / {cfg.run_name}: method={cfg.method.name}, {len(stages)} stage(s) at most "
        f"(nothing is trained)",
        f"trainer: {t.precision}, {strategy if strategy != 'single' else 'one device'}"
        f"{f' over {world} devices' if world > 1 else ''}"
        f"{' (trainer.devices=auto: counted as 1)' if t.get('devices') == 'auto' else ''}; micro-batch {d.batch_size} x {cfg.model.block_size} "
        f"tokens, accumulation {cfg.train.accumulate_grad_batches}: {per_step:,} tokens per step",
        f"GPU-hours: training FLOPs / ({gpu} bf16 peak {GPUS[gpu] / 1e12:.0f} TFLOP/s x MFU {mfu:.2f}); "
        "--gpu NAME (plan.gpu=), --mfu X (plan.mfu=)",
        "",
    ]
    rows = [[s.name, s.n_layer, f"{'~' * (not s.exact)}{s.params / 1e6:.1f}M", f"{s.steps:,}", _si(s.tokens),
             f"{s.flops:.2e}", _hours(gpu_hours(s.flops)), _gib(s.memory.peak), _gib(s.checkpoint), s.status]
            for s in stages]
    lines += table(["stage", "layers", "params", "steps", "tokens", "train FLOPs", f"{gpu}-hours",
                    "peak mem/device", "checkpoint", "on disk"], rows)
    extra = next((s.memory.extra_name for s in stages if s.memory.extra_name), "")
    mem_rows = [[s.name, _gib(s.memory.weights), _gib(s.memory.grads), _gib(s.memory.adam),
                 _gib(s.memory.activations), *([_gib(s.memory.extra)] if extra else []), _gib(s.memory.peak)]
                for s in stages]
    lines += ["", f"memory per device ({t.precision}, micro-batch {d.batch_size}):"]
    lines += table(["stage", "weights", "gradients", "AdamW moments", "activations", *([extra] if extra else []),
                    "peak"], mem_rows)
    total_flops, total_tokens = sum(s.flops for s in stages), sum(s.tokens for s in stages)
    todo = [s for s in stages if s.status != "done"]
    lines += [
        "",
        f"total, every stage: {_si(total_tokens)} tokens, {total_flops:.2e} FLOPs, {_hours(gpu_hours(total_flops))} "
        f"{gpu}-hours ({_hours(gpu_hours(total_flops) / world)} h on {world} GPU{'s' * (world > 1)}); still to "
        f"train: {_hours(gpu_hours(sum(s.flops for s in todo)))} {gpu}-hours",
        f"checkpoints: best.ckpt and last.ckpt per stage, {_gib(2 * sum(s.checkpoint for s in stages))} in all",
        data_line(cfg, total_tokens),
        *(f"{s.name}: {s.init} -> {s.dir}" for s in stages),
    ]
    if not all(s.exact for s in stages):
        lines.append("~: a Hugging Face model's MLP width is not in the config; its parameters are estimated "
                     "(12 L d^2 + 2 V d)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Command line

USAGE = """usage: python -m lit_inheritune.plan experiment=NAME [overrides ...] [--gpu NAME] [--mfu X]

Every stage the run may take (the method's plan, growth rounds to max_layers included) with parameters, steps,
tokens, training FLOPs, peak memory per device, GPU-hours, checkpoint sizes and what is already on disk. Nothing
is trained. The overrides are the runner's (python -m lit_inheritune ...). plan.gpu=NAME and plan.mfu=X are the
same as the flags. GPUs: """ + ", ".join(GPUS) + f""" (default {DEFAULT_GPU}, MFU {DEFAULT_MFU})."""


def parse(argv: list[str]) -> tuple[list[str], str, float]:
    """(Hydra overrides, GPU, MFU) of the command line."""
    overrides, options = [], {"gpu": DEFAULT_GPU, "mfu": str(DEFAULT_MFU)}
    args = iter(argv)
    for arg in args:
        key, eq, value = arg.partition("=")
        name = key.removeprefix("--").removeprefix("plan.")
        if name in options and (key.startswith("--") or key.startswith("plan.")):
            if not eq:
                value = next(args, None)
                if value is None:
                    raise ConfigError(f"{key} needs a value")
            options[name] = value
        else:
            overrides.append(arg)
    gpu = next((g for g in GPUS if g.lower() == options["gpu"].lower()), None)
    if gpu is None:
        raise ConfigError(f"plan.gpu={options['gpu']!r} is not one of {', '.join(GPUS)}")
    try:
        mfu = float(options["mfu"])
    except ValueError:
        mfu = -1.0
    if not 0 < mfu <= 1:
        raise ConfigError(f"plan.mfu={options['mfu']!r} must be a fraction in (0, 1], e.g. 0.4")
    return overrides, gpu, mfu


def main(argv: list[str]) -> str:
    from lit_inheritune.config import compose

    overrides, gpu, mfu = parse(argv)
    if {"-m", "--multirun"} & set(overrides):
        raise ConfigError("the plan shows one job: give one value per key (no -m), and plan each job of a sweep")
    cfg = compose(overrides)
    check(cfg)
    text = render(cfg, plan_stages(cfg), gpu, mfu)
    print(text)
    return text


if __name__ == "__main__":
    if {"--help", "-h"} & set(sys.argv[1:]):
        print(USAGE)
    else:
        from lit_inheritune.errors import run_cli

        run_cli(lambda: main(sys.argv[1:]))
