"""What every model family shares: its errors, the choice of source blocks, the block parts and attention-scale
policy a moved block can take, the shape check before blocks move, the preconditions of growth, and gradients
taken without side effects.

Imports nothing of the package but `errors`, and torch only inside the functions that need it, so the config
checks (lit_inheritune/checks.py) can use the interface without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence

# Sub-modules of a block each Table 3 variant inherits (method.parts), by their names in our GPT's blocks.
BLOCK_PARTS: dict[str, tuple[str, ...]] = {
    "block": ("ln_1", "attn", "ln_2", "mlp"),
    "attn": ("ln_1", "attn"),
    "mlp": ("ln_2", "mlp"),
    "attn_mlp": ("attn", "mlp"),
}
ATTN_SCALES = ("position", "source")
GROW_MODES = ("append", "reinherit")


class SurgeryError(ValueError):
    """A surgery request that cannot work (wrong shapes, missing blocks), or a checkpoint that does not hold
    the model its hyper-parameters describe."""


class ModelLoadError(RuntimeError):
    """A model or tokenizer that cannot be loaded here (missing file or package, unreachable hub)."""


def _check_sources(blocks: Sequence[int], n_available: int, what: str) -> list[int]:
    blocks = [int(b) for b in blocks]
    if not blocks:
        raise SurgeryError(f"no {what} blocks requested")
    bad = [b for b in blocks if not 0 <= b < n_available]
    if bad:
        raise SurgeryError(f"{what} block(s) {bad} out of range: the {what} has {n_available} blocks (0..{n_available - 1})")
    return blocks


def source_blocks(k: int, n_layer: int | None, blocks: Sequence[int] | None) -> list[int]:
    """The reference blocks a target inherits: the first `n_layer` of `k`, or an explicit list, checked."""
    if blocks is None:
        if n_layer is None:
            raise SurgeryError("give n_layer (inherit the first n blocks) or an explicit list of blocks")
        if not 1 <= n_layer <= k:
            raise SurgeryError(f"cannot inherit {n_layer} layers from a reference with {k} layers")
        blocks = range(n_layer)
    elif n_layer is not None and n_layer != len(blocks):
        raise SurgeryError(f"n_layer={n_layer} but {len(blocks)} source blocks were listed")
    return _check_sources(blocks, k, "reference")


def keeps_scale(attn_scale: str) -> bool:
    """Whether moved blocks keep their source block's attention scale (`source`) or take their position's."""
    if attn_scale not in ATTN_SCALES:
        raise SurgeryError(f"unknown attention scale policy {attn_scale!r}; choose one of {list(ATTN_SCALES)}")
    return attn_scale == "source"


def check_grow(n: int, k: int, n_new: int, mode: str) -> None:
    """Whether an n-layer target can grow by `n_new` blocks of its k-layer reference in `mode` (`append` keeps the
    target and appends reference blocks n..n+n_new-1; `reinherit` inherits the first n + n_new afresh)."""
    if n_new < 1:
        raise SurgeryError(f"grow needs n_new >= 1, got {n_new}")
    if n + n_new > k:
        raise SurgeryError(f"cannot grow a {n}-layer model by {n_new}: the reference has only {k} layers")
    if mode not in GROW_MODES:
        raise SurgeryError(f"unknown grow mode {mode!r}; choose 'append' or 'reinherit'")


def check_same_family(a, b, what: str = "reference") -> None:
    """Blocks move between models only when width, heads, vocabulary and context agree. `a` and `b` are model
    configs with GPTConfig's fields: a GPTConfig, an HFModelSpec, or a model's `.config` of either family."""
    for field in ("n_embd", "n_head", "vocab_size", "block_size", "scale_attn_by_inverse_layer_idx"):
        if getattr(a, field) != getattr(b, field):
            raise SurgeryError(
                f"{what} has {field}={getattr(b, field)} but the model has {field}={getattr(a, field)}; "
                "blocks can only be copied between models of the same width, heads, vocab and context"
            )


def loss_and_grads(model, x, y, weights: list):
    """(loss, d loss / d weights) of one eval-mode forward/backward, leaving no trace: no .grad written, and
    the weights' requires_grad flags and the model's train/eval mode restored."""
    import torch

    requires_grad = [w.requires_grad for w in weights]
    was_training = model.training
    model.eval()
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad():
            loss = model(x, y)["loss"]
            grads = torch.autograd.grad(loss, weights)
    finally:
        for w, flag in zip(weights, requires_grad):
            w.requires_grad_(flag)
        model.train(was_training)
    return loss, grads
