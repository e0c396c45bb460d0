import math

import pytest
import torch

from lit_inheritune.config import compose
from lit_inheritune.models.gpt import GPT, GPTConfig

# PAPER.md section 2: computed parameter counts (vocab 50304, context 1024, tied head), in millions,
# for the reference and its variant depth.
PAPER_PARAMS = {
    "gpt2_small": ((12, 124.4), (4, 67.7)),
    "gpt2_medium": ((24, 354.6), (16, 253.9)),
    "gpt2_large": ((36, 773.6), (18, 419.6)),
    "gpt2_large_dagger": ((32, 694.9), (16, 380.3)),
    "gpt2_xlarge": ((48, 1556.8), (24, 819.5)),
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_configs_match_published_param_counts(name):
    (ref_layers, ref_m), (var_layers, var_m) = PAPER_PARAMS[name]
    cfg = compose([f"model={name}"]).model
    assert cfg.n_layer == ref_layers
    for layers, millions in ((ref_layers, ref_m), (var_layers, var_m)):
        with torch.device("meta"):
            model = GPT(GPTConfig(**{**{k: v for k, v in cfg.items() if k != "_target_"}, "n_layer": layers}))
        assert round(model.num_params() / 1e6, 1) == millions


def _tiny(**kw):
    defaults = dict(n_layer=3, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    return GPTConfig(**{**defaults, **kw})


def test_shapes_and_tied_head():
    torch.manual_seed(0)
    model = GPT(_tiny())
    idx = torch.randint(0, 64, (2, 8))
    out = model(idx, idx)
    assert out["logits"].shape == (2, 8, 64)
    assert out["loss"].shape == ()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert all(p.ndim for p in model.parameters())
    assert not any(n.endswith("bias") for n, _ in model.named_parameters())


def test_init_matches_gpt2():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=64, vocab_size=2048))
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    residual = 0.02 / math.sqrt(2 * 8)
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual, rel=0.05)
    assert torch.equal(model.transformer.ln_f.weight, torch.ones(256))


def test_attention_probabilities_path_matches_fast_path():
    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    idx = torch.randint(0, 64, (2, 8))
    fast = model(idx)["logits"]
    slow = model(idx, return_attn=True)
    torch.testing.assert_close(slow["logits"], fast, rtol=1e-5, atol=1e-5)
    assert len(slow["attn"]) == 3
    for attn in slow["attn"]:
        assert attn.shape == (2, 2, 8, 8)
        torch.testing.assert_close(attn.sum(-1), torch.ones(2, 2, 8))
        assert torch.all(attn.triu(diagonal=1) == 0)  # causal


def _attn_logits(model, block, x):
    """Pre-softmax logits of one block's attention, recomputed by hand."""
    attn = model.transformer.h[block].attn
    B, T, C = x.shape
    q, k, _ = attn.c_attn(model.transformer.h[block].ln_1(x)).split(C, dim=2)
    q = q.view(B, T, attn.n_head, -1).transpose(1, 2)
    k = k.view(B, T, attn.n_head, -1).transpose(1, 2)
    return q @ k.transpose(-2, -1)


def test_inverse_layer_index_scaling():
    """Block i divides its attention logits by sqrt(head_dim) * (i + 1); moving a block changes its output."""
    torch.manual_seed(0)
    model = GPT(_tiny()).eval()
    x = torch.randn(1, 8, 16)
    block = model.transformer.h[2]
    raw = _attn_logits(model, 2, x)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    for idx in (0, 2, 5):
        block.layer_idx = idx
        _, probs = block.attn(block.ln_1(x), return_attn=True)
        expected = (raw / (math.sqrt(8) * (idx + 1))).masked_fill(~causal, float("-inf")).softmax(-1)
        torch.testing.assert_close(probs, expected)
    block.layer_idx = 0
    y0, _ = block(x)
    block.layer_idx = 2
    y2, _ = block(x)
    assert not torch.allclose(y0, y2)

    # Switched off, every block uses plain 1/sqrt(head_dim).
    flat = GPT(_tiny(scale_attn_by_inverse_layer_idx=False))
    assert {b.attn.scale for b in flat.transformer.h} == {1 / math.sqrt(8)}


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="block_size"):
        GPT(_tiny())(torch.zeros(1, 9, dtype=torch.long))

