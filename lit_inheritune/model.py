"""GPT-2 as the Inheritune paper trains it (PAPER.md sections 1-2).

Pre-LN blocks, tanh-GELU MLP, no biases anywhere (linear layers and layer norms), no dropout,
learned position embeddings, LM head tied to the token embedding, GPT-2 init. The one addition
to nanoGPT's model is the paper's attention scale: logits are divided by sqrt(head_dim) and,
when `scale_attn_by_inverse_layer_idx` is on, also by (layer_idx + 1), 0-based. `layer_idx` is
the block's position in *this* model, as in Hugging Face's GPT-2 and the official code, unless
`attn_scale_index` lists another index per block: a block moved by surgery can keep the scale it was
trained with (PAPER.md section 1, "Attention scale").

Shapes: B batch, T time, C = n_embd, H = n_head, D = C // H, V = padded vocab.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


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
