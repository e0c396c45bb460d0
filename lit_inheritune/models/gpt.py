"""GPT-2 as the Inheritune paper trains it (PAPER.md sections 1-2).

Pre-LN blocks, tanh-GELU MLP, no biases anywhere (linear layers and layer norms), no dropout,
learned position embeddings, LM head tied to the token embedding, GPT-2 init. The one addition
to nanoGPT's model is the paper's attention scale: logits are divided by sqrt(head_dim) and,
when `scale_attn_by_inverse_layer_idx` is on, also by (layer_idx + 1), 0-based. `layer_idx` is
the block's position in *this* model, as in Hugging Face's GPT-2 and the official code, unless
`attn_scale_index` lists another index per block: a block moved by surgery can keep the scale it was
trained with (PAPER.md section 1, "Attention scale").

Shapes: B batch, T time, C = n_embd, H = n_head, D = C // H, V = padded vocab.

Below the model: the GPT family's side of the model-family interface (lit_inheritune/models/__init__.py), i.e.
its handles, its checkpoints, its weight surgery and its attention analysis. The surgery functions are pure: each
returns a new model (inputs are never modified) and checks shapes before it copies anything. What is copied:

- `inherit`: the token embedding (and so the tied LM head) and the chosen parts of the chosen reference blocks.
  The position embedding and the final norm keep their fresh init unless asked for (`copy_wpe`, `copy_ln_f`),
  which is what the official code does (PAPER.md section 1).
- `grow`: `reinherit` is a fresh `inherit` of the first n+g blocks (what the paper ran); `append` keeps the
  trained target and appends reference blocks n..n+g-1.

Attention scale of a block that moves (`attn_scale`, PAPER.md section 1): `position` (the default, the official
code's behaviour) gives it 1 / (position + 1) of its position in the new model; `source` keeps the scale of the
block it was copied from, so it computes exactly what it computed there. For the paper's first-n inheritance
the two are the same model. The choice is recorded in the new model's config (`attn_scale_index`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lit_inheritune.models.common import (
    BLOCK_PARTS,
    SurgeryError,
    check_grow,
    check_same_family,
    keeps_scale,
    loss_and_grads,
    source_blocks,
)


@dataclass
class GPTConfig:
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    block_size: int = 1024
    # GPT-2's 50257 ids padded to a multiple of 64 for faster matmuls (nanoGPT convention).
    vocab_size: int = 50304
    scale_attn_by_inverse_layer_idx: bool = True
    # Block i's layer_idx in the attention scale 1 / (layer_idx + 1); null = its position i. Surgery sets it when
    # moved blocks keep their source block's scale. A list equal to the positions is stored as null, so a model
    # whose blocks all sit where they were trained has one config whichever policy built it.
    attn_scale_index: list[int] | None = None

    def __post_init__(self) -> None:
        for field in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if int(getattr(self, field)) < 1:
                raise ValueError(f"GPTConfig.{field} must be positive, got {getattr(self, field)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.attn_scale_index is not None:
            index = [int(i) for i in self.attn_scale_index]
            if len(index) != self.n_layer or min(index) < 0:
                raise ValueError(f"attn_scale_index={index} must list one index >= 0 for each of the "
                                 f"{self.n_layer} blocks")
            self.attn_scale_index = None if index == list(range(self.n_layer)) else index

    def layer_idx(self, position: int) -> int:
        """The index in block `position`'s attention scale 1 / (layer_idx + 1)."""
        return position if self.attn_scale_index is None else self.attn_scale_index[position]

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)


class LayerNorm(nn.Module):
    """LayerNorm with a weight and no bias (PyTorch's nn.LayerNorm(bias=False) is >= 2.1 only)."""

    def __init__(self, ndim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.layer_idx = layer_idx
        self.scale_by_layer = config.scale_attn_by_inverse_layer_idx
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v stacked
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)

    @property
    def scale(self) -> float:
        scale = 1.0 / math.sqrt(self.n_embd // self.n_head)
        if self.scale_by_layer:
            scale /= self.layer_idx + 1
        return scale

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, H, C // H).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, C // H).transpose(1, 2)
        v = v.view(B, T, H, C // H).transpose(1, 2)
        if return_attn:
            # The slow path, for analysis: materialise the post-softmax probabilities.
            logits = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, T)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            attn = logits.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            y = attn @ v
        else:
            attn = None
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble heads
        return self.c_proj(y), attn


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    @property
    def layer_idx(self) -> int:
        return self.attn.layer_idx

    @layer_idx.setter
    def layer_idx(self, value: int) -> None:
        self.attn.layer_idx = value

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        a, attn = self.attn(self.ln_1(x), return_attn)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, attn


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                h=nn.ModuleList([Block(config, config.layer_idx(i)) for i in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one tensor, two names
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 init: N(0, 0.02) everywhere, residual projections N(0, 0.02 / sqrt(2 L))."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, LayerNorm):
                nn.init.ones_(module.weight)
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.transformer.h:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.c_proj.weight, mean=0.0, std=residual_std)

    def num_params(self) -> int:
        """Parameter count; the tied head is counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, return_attn: bool = False
    ) -> dict[str, torch.Tensor | list[torch.Tensor] | None]:
        """idx, targets: (B, T) token ids. Returns logits (B, T, V), the mean CE loss when targets
        are given, and with `return_attn` the post-softmax attention per layer, each (B, H, T, T)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} exceeds block_size={self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        attns = []
        for block in self.transformer.h:
            x, attn = block(x, return_attn)
            attns.append(attn)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.reshape(-1))
        return {"logits": logits, "loss": loss, "attn": attns if return_attn else None}


def renumber_blocks(model: GPT, keep_scale: bool = False) -> GPT:
    """After surgery reorders or appends blocks: give every block the attention scale of its position (the
    official rule), or with `keep_scale` let each keep the layer_idx it brought from its source model; the
    config records the depth and the result (attn_scale_index), so checkpoints rebuild the same model."""
    if not keep_scale:
        for i, block in enumerate(model.transformer.h):
            block.layer_idx = i
    model.config.n_layer = len(model.transformer.h)
    model.config.attn_scale_index = [block.layer_idx for block in model.transformer.h]
    model.config.__post_init__()  # checks it, and stores positions as null
    return model


# ----------------------------------------------------------------------------------------------------
# The family interface (lit_inheritune/models/__init__.py): handles and checkpoints


def owns(model) -> bool:
    return isinstance(model, GPT)


def blocks(model: GPT) -> nn.ModuleList:
    return model.transformer.h


def embedding(model: GPT) -> nn.Embedding:
    return model.transformer.wte


def position_embedding(model: GPT) -> nn.Embedding:
    return model.transformer.wpe


def final_norm(model: GPT) -> LayerNorm:
    return model.transformer.ln_f


def head(model: GPT) -> nn.Linear:
    return model.lm_head  # tied: its weight is the token embedding's


def random(spec: GPTConfig) -> GPT:
    return GPT(spec)


def config_dict(model: GPT) -> dict:
    return model.config.to_dict()


def from_hparams(hparams: dict, state: dict | None) -> GPT:
    """The GPT a checkpoint's model hyper-parameters describe, holding `state` (None: freshly initialised, for
    weights loaded right after)."""
    model = GPT(GPTConfig(**hparams))
    if state is None:
        return model
    missing, unexpected = model.load_state_dict(state, strict=False)
    if [m for m in missing if m != "lm_head.weight"] or unexpected:
        raise SurgeryError(f"does not match its GPT config: missing {missing}, unexpected {unexpected}")
    return model


# ----------------------------------------------------------------------------------------------------
# Weight surgery (see the module docstring)


@torch.no_grad()
def _copy_(dst: nn.Module, src: nn.Module) -> None:
    dst.load_state_dict(src.state_dict())


def inherit(
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
    scale_index = [reference.transformer.h[b].layer_idx for b in blocks] if keeps_scale(attn_scale) else None

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
    check_grow(n, k, n_new, mode)
    if mode == "reinherit":
        return inherit(reference, n_layer=n + n_new, **inherit_kwargs)
    keep_scale = keeps_scale(inherit_kwargs.get("attn_scale", "position"))
    grown = copy.deepcopy(target)
    for src in range(n, n + n_new):
        grown.transformer.h.append(copy.deepcopy(reference.transformer.h[src]))
    return renumber_blocks(grown, keep_scale)


renumber = renumber_blocks


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


# ----------------------------------------------------------------------------------------------------
# Attention analysis (lit_inheritune/analysis.py measures what these return)


def attention_per_layer(model: GPT, idx: torch.Tensor) -> Iterator[torch.Tensor]:
    """Yield each layer's post-softmax attention (B, H, T, T) for idx (B, T), one layer at a time.

    The same computation as `model(idx, return_attn=True)["attn"]` (a test checks it) without ln_f and
    the LM head: the (B, T, V) logits cost ~15% of a GPT-2 Medium forward and are not needed, and only
    one layer's attention is alive at a time.
    """
    B, T = idx.shape
    pos = torch.arange(T, device=idx.device)
    x = model.transformer.wte(idx) + model.transformer.wpe(pos)  # (B, T, C)
    *rest, last = model.transformer.h
    for block in rest:
        x, attn = block(x, return_attn=True)
        yield attn
    _, attn = last.attn(last.ln_1(x), return_attn=True)  # the last MLP feeds no attention: skip it
    yield attn


def attention_layers_alive(model: GPT) -> int:
    return 1


def qk_grad_norms(model: GPT, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Frobenius norms of dLoss/dW for W_Q, W_K, W_V (the row slices of `attn.c_attn.weight`, which
    stacks q, k, v along dim 0) and the attention output projection, per layer, from one
    forward/backward on (x, y) (B, T)."""
    C = model.config.n_embd
    qkv_weights = [block.attn.c_attn.weight for block in model.transformer.h]  # each (3C, C)
    proj_weights = [block.attn.c_proj.weight for block in model.transformer.h]  # each (C, C)
    loss, grads = loss_and_grads(model, x, y, qkv_weights + proj_weights)
    qkv_grads, proj_grads = grads[: len(qkv_weights)], grads[len(qkv_weights) :]
    return {
        "loss": loss.item(),
        "q": [g[:C].norm().item() for g in qkv_grads],
        "k": [g[C : 2 * C].norm().item() for g in qkv_grads],
        "v": [g[2 * C :].norm().item() for g in qkv_grads],
        "proj": [g.norm().item() for g in proj_grads],
    }
