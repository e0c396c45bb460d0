"""Training compute of a stage, and of everything it needed first, from the stage's identity (issue #15).

FLOPs per trained token, for a decoder of L layers, width d, context T and vocabulary V (Kaplan et al. 2020,
with the LM head counted since at small width it is much of the model):
    forward = 2 * N + 2 * L * T * d,   N = 12 * L * d^2 (attention and MLP matrices) + d * V (the head)
    training = 3 * forward (backward costs twice the forward)
The second term is the attention scores and their weighted sum over a full context (SDPA does not skip the
causal half). Embedding lookups, norms and the softmax are left out. Distillation adds the frozen teacher's
forward on every token. The cumulative cost of a stage adds every stage it was built from, each once: the
reference (also as a teacher), the round before (append growth, stacking's first stage) and, for Inheritune
rounds that re-inherit, the earlier rounds of the same run, which had to be trained to know they fell short.
"""

from __future__ import annotations

from lit_inheritune.training.identity import fingerprint

SOURCES = ("reference", "previous", "teacher")


def flops_per_token(model: dict, forward_only: bool = False) -> float:
    L, d, T, V = (int(model[k]) for k in ("n_layer", "n_embd", "block_size", "vocab_size"))
    forward = 2 * (12 * L * d * d + d * V) + 2 * L * T * d
    return forward if forward_only else 3 * forward


def tokens(identity: dict) -> int:
    """Tokens a stage trains on: steps x batch x context x accumulation x devices x nodes (the processes the
    trainer runs, as runner.py counts them; devices=auto counts as one)."""
    data, train, trainer = identity["data"], identity["train"], identity.get("trainer", {})
    devices = trainer.get("devices") or 1
    devices = devices if isinstance(devices, int) else 1
    return int(train["max_steps"]) * int(data["batch_size"]) * int(identity["model"]["block_size"]) \
        * int(train.get("accumulate_grad_batches", 1)) * devices * int(trainer.get("num_nodes") or 1)


def stage_flops(identity: dict) -> float | None:
    """The training FLOPs of this stage alone (None for a given model: a checkpoint or a pretrained one)."""
    if "model" not in identity or "train" not in identity:
        return None
    per_token = flops_per_token(identity["model"])
    teacher = identity.get("init", {}).get("teacher")
    if teacher is not None:
        if "model" not in teacher:
            return None
        per_token += flops_per_token(teacher["model"], forward_only=True)
    return per_token * tokens(identity)


def _closure(identity: dict, found: dict[str, dict]) -> None:
    found.setdefault(fingerprint(identity), identity)
    init = identity.get("init") or {}
    for key in SOURCES:
        if isinstance(init.get(key), dict):
            _closure(init[key], found)


def _cumulative(cost, identity: dict, earlier) -> float | None:
    found: dict[str, dict] = {}
    for ident in (identity, *earlier):
        _closure(ident, found)
    costs = [cost(ident) for ident in found.values()]
    return None if any(c is None for c in costs) else float(sum(costs))


def cumulative_flops(identity: dict, earlier: list[dict] = ()) -> float | None:
    """FLOPs of this stage plus every stage it was built from, each counted once; `earlier` are stages the
    method trained before this one without building on them (re-inherited Inheritune rounds). None when a
    source's cost is unknown (a given reference)."""
    return _cumulative(stage_flops, identity, earlier)


def cumulative_tokens(identity: dict, earlier: list[dict] = ()) -> float | None:
    """Tokens trained on by this stage and every stage it was built from, counted as `cumulative_flops` counts
    FLOPs (a teacher's forward passes are not training: they add FLOPs, not tokens)."""
    return _cumulative(lambda ident: tokens(ident) if "model" in ident and "train" in ident else None,
                       identity, earlier)


def cumulative_at(identity: dict, earlier: list[dict], step: int) -> dict[str, float]:
    """What a stage has cost when it has trained `step` of its steps, everything it was built from included
    (the report's cumulative FLOPs read off the curve at that step): {"cumulative_tokens", "cumulative_flops"},
    each left out when a source's cost is unknown."""
    fraction = step / int(identity["train"]["max_steps"])
    out = {}
    for name, total, own in (("cumulative_tokens", cumulative_tokens(identity, earlier), tokens(identity)),
                             ("cumulative_flops", cumulative_flops(identity, earlier), stage_flops(identity))):
        if total is not None and own is not None:
            out[name] = total - own * (1 - fraction)
    return out


def matched_steps(budget: float, identity: dict, every: int) -> int:
    """The step count at which a stage like `identity` (its own training, at its per-step cost) spends `budget`
    FLOPs, to the nearest multiple of `every` (a run ends on a validation step), at least `every`."""
    per_step = stage_flops(identity) / int(identity["train"]["max_steps"])
    return max(every, every * round(budget / per_step / every))
