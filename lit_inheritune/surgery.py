"""Weight surgery: pure functions that build one model from another, for any model family. No Trainer, no
optimizer. Every function returns a new model (inputs are never modified) and checks the request before it
copies anything, so a bad request fails before any compute is spent.

The operations reach the models only through the model-family interface (lit_inheritune/models/__init__.py):
inheriting and growing are the family's own (`family_of(reference).inherit`, `.grow`, `.half_width`; what each
copies is described in models/gpt.py and models/hf.py), while stacking is built here from the family's blocks.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from lit_inheritune.models import SurgeryError, family_of, keeps_scale


def _given(**opts) -> dict:
    """The options the caller set: the others keep the family's defaults."""
    return {k: v for k, v in opts.items() if v is not None}


def inherit_blocks(
    reference,
    n_layer: int | None = None,
    blocks: Sequence[int] | None = None,
    parts: str | None = None,
    copy_wpe: bool | None = None,
    copy_ln_f: bool | None = None,
    attn_scale: str | None = None,
):
    """A model of `len(blocks)` layers (default: the first `n_layer` reference blocks) whose block i is a copy of
    the chosen `parts` of reference block `blocks[i]` (our GPT: everything else freshly initialised unless
    `copy_wpe` / `copy_ln_f`; with attn_scale="source" block i keeps the attention scale of reference block
    `blocks[i]`). Options left None take the family's defaults (GPT: parts="block", no copies, "position")."""
    opts = _given(parts=parts, copy_wpe=copy_wpe, copy_ln_f=copy_ln_f, attn_scale=attn_scale)
    return family_of(reference).inherit(reference, n_layer, blocks, **opts)


def grow(target, reference, n_new: int = 2, mode: str = "append", **inherit_kwargs):
    """An (n + n_new)-layer model from an n-layer target and the reference it came from: `reinherit` is a fresh
    inheritance of the first n + n_new blocks (what the paper ran); `append` keeps the trained target and appends
    reference blocks n..n+n_new-1 (keeping their attention scale when inherit_kwargs has attn_scale="source")."""
    fam, other = family_of(target), family_of(reference)
    if other is not fam:
        raise SurgeryError(f"cannot grow a {fam.title} model from a {other.title} reference")
    return fam.grow(target, reference, n_new, mode, **inherit_kwargs)


def stack_blocks(model, times: int = 2, attn_scale: str = "position"):
    """Stacking (Gong et al. 2019): a model `times` as deep whose blocks repeat the trained ones in order,
    e.g. blocks 0..m-1 copied into m..2m-1. Embeddings and the final norm are kept. With attn_scale="source"
    every copy keeps the attention scale of the block it repeats."""
    if times < 2:
        raise SurgeryError(f"stacking needs times >= 2, got {times}")
    keep_scale = keeps_scale(attn_scale)
    fam = family_of(model)
    stacked = copy.deepcopy(model)
    originals = list(fam.blocks(model))
    for _ in range(times - 1):
        for block in originals:
            fam.blocks(stacked).append(copy.deepcopy(block))
    return fam.renumber(stacked, keep_scale)


def hybrid_stack(reference, n_source: int, n_layer: int, **inherit_kwargs):
    """Hybrid stacking: reference blocks 0..n_source-1 repeated in order to fill n_layer blocks."""
    if not 1 <= n_source <= n_layer:
        raise SurgeryError(f"hybrid stacking needs 1 <= n_source <= n_layer, got {n_source} and {n_layer}")
    return inherit_blocks(reference, blocks=[i % n_source for i in range(n_layer)], **inherit_kwargs)


def half_width(reference):
    """The reference at full depth with half the width and half the heads, initialised from its first half of
    heads and MLP units (the slicing: models/gpt.py `half_width`, PAPER.md section 4)."""
    return family_of(reference).half_width(reference)
