"""Weight surgery: pure functions that build one GPT from another. No Trainer, no optimizer.

Every function returns a new model (inputs are never modified) and checks shapes before it copies
anything, so a bad request fails before any compute is spent. What is copied, exactly:

- `inherit_blocks`: the token embedding (and so the tied LM head) and the chosen parts of the chosen
  reference blocks. The position embedding and the final norm keep their fresh init unless asked
  for (`copy_wpe`, `copy_ln_f`), which is what the official code does (PAPER.md section 1).
- `grow`: `reinherit` is a fresh `inherit_blocks` of the first n+g blocks (what the paper ran);
  `append` keeps the trained target and appends reference blocks n..n+g-1.

Attention scale of a block that moves (`attn_scale`, PAPER.md section 1): `position` (the default, the official
code's behaviour) gives it 1 / (position + 1) of its position in the new model; `source` keeps the scale of the
block it was copied from, so it computes exactly what it computed there. For the paper's first-n inheritance
the two are the same model. The choice is recorded in the new model's config (`attn_scale_index`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch

from lit_inheritune.model import GPT, GPTConfig, renumber_blocks

ATTN_SCALES = ("position", "source")

# Sub-modules of a block each Table 3 variant inherits.
BLOCK_PARTS: dict[str, tuple[str, ...]] = {
    "block": ("ln_1", "attn", "ln_2", "mlp"),
    "attn": ("ln_1", "attn"),
    "mlp": ("ln_2", "mlp"),
    "attn_mlp": ("attn", "mlp"),
}


class SurgeryError(ValueError):
    """A surgery request that cannot work (wrong shapes, missing blocks)."""


def check_same_family(a: GPTConfig, b: GPTConfig, what: str = "reference") -> None:
    """Blocks move between models only when width, heads, vocabulary and context agree."""
    for field in ("n_embd", "n_head", "vocab_size", "block_size", "scale_attn_by_inverse_layer_idx"):
        if getattr(a, field) != getattr(b, field):
            raise SurgeryError(
                f"{what} has {field}={getattr(b, field)} but the model has {field}={getattr(a, field)}; "
                "blocks can only be copied between models of the same width, heads, vocab and context"
            )


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


def _keeps_scale(attn_scale: str) -> bool:
    """Whether moved blocks keep their source block's attention scale (`source`) or take their position's."""
    if attn_scale not in ATTN_SCALES:
        raise SurgeryError(f"unknown attention scale policy {attn_scale!r}; choose one of {list(ATTN_SCALES)}")
    return attn_scale == "source"


@torch.no_grad()
def _copy_(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def inherit_blocks(
    reference: GPT,
    n_layer: int | None = None,
    blocks: Sequence[int] | None = None,
    parts: str = "block",
    copy_wpe: bool = False,
    copy_ln_f: bool = False,
    attn_scale: str = "position",
) -> GPT:
    """A model of `len(blocks)` layers (default: the first `n_layer` reference blocks) whose block i is a
    copy of the chosen `parts` of reference block `blocks[i]`; everything else is freshly initialised as
    in a random model of the same size (seeded by the caller's RNG state). With attn_scale="source" block i
    keeps the attention scale of reference block `blocks[i]`, whichever parts are copied."""
    blocks = source_blocks(reference.config.n_layer, n_layer, blocks)
    if parts not in BLOCK_PARTS:
        raise SurgeryError(f"unknown block parts {parts!r}; choose one of {sorted(BLOCK_PARTS)}")
    scale_index = [reference.transformer.h[b].layer_idx for b in blocks] if _keeps_scale(attn_scale) else None

    config = GPTConfig(**{**reference.config.to_dict(), "n_layer": len(blocks), "attn_scale_index": scale_index})
    target = GPT(config).to(reference.transformer.wte.weight.device)
    _copy_(target.transformer.wte, reference.transformer.wte)
    if copy_wpe:
        _copy_(target.transformer.wpe, reference.transformer.wpe)
    if copy_ln_f:
        _copy_(target.transformer.ln_f, reference.transformer.ln_f)
    for dst, src in zip(target.transformer.h, blocks):
        for part in BLOCK_PARTS[parts]:
            _copy_(getattr(dst, part), getattr(reference.transformer.h[src], part))
    return target


def grow(target: GPT, reference: GPT, n_new: int = 2, mode: str = "append", **inherit_kwargs) -> GPT:
    """An (n + n_new)-layer model from an n-layer target and the reference it came from. With `append`, the
    appended blocks (and the target's) keep their attention scale when inherit_kwargs has attn_scale="source"."""
    n, k = target.config.n_layer, reference.config.n_layer
    check_same_family(target.config, reference.config)
    if n_new < 1:
        raise SurgeryError(f"grow needs n_new >= 1, got {n_new}")
    if n + n_new > k:
        raise SurgeryError(f"cannot grow a {n}-layer model by {n_new}: the reference has only {k} layers")
    if mode == "reinherit":
        return inherit_blocks(reference, n_layer=n + n_new, **inherit_kwargs)
    if mode != "append":
        raise SurgeryError(f"unknown grow mode {mode!r}; choose 'append' or 'reinherit'")
    keep_scale = _keeps_scale(inherit_kwargs.get("attn_scale", "position"))
    grown = copy.deepcopy(target)
    for src in range(n, n + n_new):
        grown.transformer.h.append(copy.deepcopy(reference.transformer.h[src]))
    return renumber_blocks(grown, keep_scale)


def gpt_from_checkpoint(path, map_location="cpu") -> GPT:
    """The GPT inside one of our Lightning checkpoints (loaded with weights_only=True), or the
    `hf.HFCausalLM` when the checkpoint records a Hugging Face config (issue #7)."""
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams or "state_dict" not in ckpt:
        raise SurgeryError(f"{path} is not a lit_inheritune GPT checkpoint (no model hyperparameters)")
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if hparams["model"].get("kind") == "hf":
        from lit_inheritune.hf import hf_from_hparams

        return hf_from_hparams(hparams["model"], state)
    model = model_from_config(hparams["model"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise SurgeryError(f"{path} does not match its GPT config: missing {missing}, unexpected {unexpected}")
    return model


def model_from_config(config: dict):
    """A model of a checkpoint's recorded config (`CausalLM.hparams["model"]`), for its weights to be loaded into."""
    if config.get("kind") == "hf":
        from lit_inheritune.hf import hf_from_hparams

        return hf_from_hparams(config, None)
    return GPT(GPTConfig(**config))


def stack_blocks(model: GPT, times: int = 2, attn_scale: str = "position") -> GPT:
    """Stacking (Gong et al. 2019): a model `times` as deep whose blocks repeat the trained ones in order,
    e.g. blocks 0..m-1 copied into m..2m-1. Embeddings and the final norm are kept. With attn_scale="source"
    every copy keeps the attention scale of the block it repeats."""
    if times < 2:
        raise SurgeryError(f"stacking needs times >= 2, got {times}")
    keep_scale = _keeps_scale(attn_scale)
    stacked = copy.deepcopy(model)
    originals = list(model.transformer.h)
    for _ in range(times - 1):
        for block in originals:
            stacked.transformer.h.append(copy.deepcopy(block))
    return renumber_blocks(stacked, keep_scale)


def hybrid_stack(reference: GPT, n_source: int, n_layer: int, **inherit_kwargs) -> GPT:
    """Hybrid stacking: reference blocks 0..n_source-1 repeated in order to fill n_layer blocks."""
    if not 1 <= n_source <= n_layer:
        raise SurgeryError(f"hybrid stacking needs 1 <= n_source <= n_layer, got {n_source} and {n_layer}")
    return inherit_blocks(reference, blocks=[i % n_source for i in range(n_layer)], **inherit_kwargs)


@torch.no_grad()
def half_width(reference: GPT) -> GPT:
    """The reference at full depth with half the width and half the heads, initialised from its first half
    of heads and MLP units. The paper leaves the slicing open; this project's choice (PAPER.md section 4):

    - attention: q, k and v rows of heads 0..H/2-1 (head_dim unchanged) and input columns 0..d/2-1;
      c_proj[:d/2, :d/2] (output features 0..d/2-1, inputs from the kept heads);
    - MLP: c_fc[:2d, :d/2] (the first 2d = 4 * d/2 hidden units), c_proj[:d/2, :2d];
    - embeddings (token, position, so the tied head too)[:, :d/2]; every norm weight[:d/2].

    No block moves, so each keeps the reference's attention scale (its attn_scale_index too).
    """
    cfg = reference.config
    C, H = cfg.n_embd, cfg.n_head
    if H % 2 or C % 2:
        raise SurgeryError(f"half width needs an even number of heads and width, got n_head={H}, n_embd={C}")
    c = C // 2
    small = GPT(GPTConfig(**{**cfg.to_dict(), "n_embd": c, "n_head": H // 2}))
    small.transformer.wte.weight.copy_(reference.transformer.wte.weight[:, :c])
    small.transformer.wpe.weight.copy_(reference.transformer.wpe.weight[:, :c])
    small.transformer.ln_f.weight.copy_(reference.transformer.ln_f.weight[:c])
    for dst, src in zip(small.transformer.h, reference.transformer.h):
        w = src.attn.c_attn.weight  # (3C, C): rows [q; k; v], head h at rows h*D..(h+1)*D of each
        dst.attn.c_attn.weight.copy_(torch.cat([w[i * C : i * C + c, :c] for i in range(3)]))
        dst.attn.c_proj.weight.copy_(src.attn.c_proj.weight[:c, :c])
        dst.mlp.c_fc.weight.copy_(src.mlp.c_fc.weight[: 4 * c, :c])
        dst.mlp.c_proj.weight.copy_(src.mlp.c_proj.weight[:c, : 4 * c])
        dst.ln_1.weight.copy_(src.ln_1.weight[:c])
        dst.ln_2.weight.copy_(src.ln_2.weight[:c])
    return small
