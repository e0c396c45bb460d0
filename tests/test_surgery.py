"""Weight surgery, checked tensor by tensor without a Trainer."""

import pytest
import torch

from lit_inheritune.models import SurgeryError, load_checkpoint
from lit_inheritune.models.gpt import BLOCK_PARTS, GPT, GPTConfig
from lit_inheritune.surgery import (
    grow,
    half_width,
    hybrid_stack,
    inherit_blocks,
    stack_blocks,
)


def _ref(n_layer=6, **kw):
    """A stand-in for a trained reference: GPT-2 init plus seeded noise on every tensor. No tensor equals its
    fresh-init value (a LayerNorm weight is 1 at init in every model), so a copy from the wrong place, or one
    that should not happen, shows in the tests' exact comparisons."""
    torch.manual_seed(0)
    cfg = dict(n_layer=n_layer, n_head=2, n_embd=16, block_size=8, vocab_size=64)
    model = GPT(GPTConfig(**{**cfg, **kw}))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def _fresh_like(model, seed):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**model.config.to_dict()))


# Table 3 (PAPER.md section 4), written out here rather than read from surgery.BLOCK_PARTS, which is under test.
TABLE3_PARTS = {"block": ("ln_1", "attn", "ln_2", "mlp"), "attn": ("ln_1", "attn"), "mlp": ("ln_2", "mlp"),
                "attn_mlp": ("attn", "mlp")}


def test_table3_variants_are_the_papers():
    assert BLOCK_PARTS == TABLE3_PARTS


@pytest.mark.parametrize("parts", sorted(TABLE3_PARTS))
def test_inherit_copies_exactly_the_selected_parts(parts):
    ref = _ref()
    torch.manual_seed(123)
    tgt = inherit_blocks(ref, n_layer=3, parts=parts)
    fresh = _fresh_like(tgt, 123)  # what every uninherited tensor must be: the same-size random init
    assert tgt.config.n_layer == 3
    assert torch.equal(tgt.transformer.wte.weight, ref.transformer.wte.weight)
    assert tgt.lm_head.weight is tgt.transformer.wte.weight
    # official behaviour: wpe and ln_f are not copied
    assert torch.equal(tgt.transformer.wpe.weight, fresh.transformer.wpe.weight)
    assert not torch.equal(tgt.transformer.wpe.weight, ref.transformer.wpe.weight)
    assert torch.equal(tgt.transformer.ln_f.weight, fresh.transformer.ln_f.weight)
    for i in range(3):
        for name in ("ln_1", "attn", "ln_2", "mlp"):
            got = getattr(tgt.transformer.h[i], name)
            want = getattr(ref.transformer.h[i] if name in TABLE3_PARTS[parts] else fresh.transformer.h[i], name)
            assert _same(got, want), (parts, i, name)
            other = getattr(fresh.transformer.h[i] if name in TABLE3_PARTS[parts] else ref.transformer.h[i], name)
            assert not any(torch.equal(a, b) for a, b in zip(got.state_dict().values(), other.state_dict().values()))
    # the reference is untouched by the surgery
    assert _same(ref, _ref())


def test_inherit_any_source_blocks_and_optional_wpe_ln_f():
    ref = _ref(n_layer=8)
    tgt = inherit_blocks(ref, blocks=[4, 5, 6, 7], copy_wpe=True, copy_ln_f=True)
    assert [b.layer_idx for b in tgt.transformer.h] == [0, 1, 2, 3]  # scale follows the new position
    for i, src in enumerate([4, 5, 6, 7]):
        assert _same(tgt.transformer.h[i], ref.transformer.h[src])
    assert torch.equal(tgt.transformer.wpe.weight, ref.transformer.wpe.weight)
    assert torch.equal(tgt.transformer.ln_f.weight, ref.transformer.ln_f.weight)


def test_inherited_prefix_reproduces_reference_activations():
    """First-n inheritance keeps block indices, so the first n blocks compute exactly what they did."""
    ref = _ref().eval()
    tgt = inherit_blocks(ref, n_layer=3, copy_wpe=True).eval()
    idx = torch.randint(0, 64, (2, 8))
    x_ref = ref.transformer.wte(idx) + ref.transformer.wpe(torch.arange(8))
    x_tgt = tgt.transformer.wte(idx) + tgt.transformer.wpe(torch.arange(8))
    for i in range(3):
        x_ref, _ = ref.transformer.h[i](x_ref)
        x_tgt, _ = tgt.transformer.h[i](x_tgt)
    assert torch.equal(x_ref, x_tgt)


def test_grow_append_keeps_trained_blocks_and_appends_reference_blocks():
    ref = _ref()
    tgt = inherit_blocks(ref, n_layer=2)
    with torch.no_grad():  # "training" moves the target away from the reference
        for p in tgt.parameters():
            p.add_(0.01)
    grown = grow(tgt, ref, n_new=2, mode="append")
    assert grown.config.n_layer == 4 and tgt.config.n_layer == 2
    assert [b.layer_idx for b in grown.transformer.h] == [0, 1, 2, 3]
    for i in range(2):
        assert _same(grown.transformer.h[i], tgt.transformer.h[i])
    for i in (2, 3):
        assert _same(grown.transformer.h[i], ref.transformer.h[i])
    for name in ("wte", "wpe", "ln_f"):
        assert _same(getattr(grown.transformer, name), getattr(tgt.transformer, name))
    assert grown.lm_head.weight is grown.transformer.wte.weight
    assert grown.transformer.h[0] is not tgt.transformer.h[0]


def test_grow_reinherit_equals_a_fresh_inherit():
    ref = _ref()
    tgt = inherit_blocks(ref, n_layer=2)
    torch.manual_seed(7)
    grown = grow(tgt, ref, n_new=2, mode="reinherit")
    torch.manual_seed(7)
    fresh = inherit_blocks(ref, n_layer=4)
    assert _same(grown, fresh)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda ref: inherit_blocks(ref, n_layer=7), "cannot inherit 7 layers from a reference with 6"),
        (lambda ref: inherit_blocks(ref, blocks=[0, 6]), r"block\(s\) \[6\] out of range"),
        (lambda ref: inherit_blocks(ref, n_layer=2, parts="norms"), "unknown block parts"),
        (lambda ref: grow(inherit_blocks(ref, n_layer=5), ref, n_new=2), "reference has only 6 layers"),
        (lambda ref: grow(_ref(n_layer=2, n_embd=32), ref), "n_embd=16 but the model has n_embd=32"),
        (lambda ref: grow(_ref(n_layer=2, vocab_size=128), ref), "vocab_size"),
        (lambda ref: grow(inherit_blocks(ref, n_layer=2), ref, mode="prepend"), "unknown grow mode"),
    ],
)
def test_bad_requests_fail_clearly(call, message):
    with pytest.raises(SurgeryError, match=message):
        call(_ref())


def test_checkpoint_of_something_else_is_rejected(tmp_path):
    path = tmp_path / "x.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(SurgeryError, match="not a lit_inheritune checkpoint"):
        load_checkpoint(path)


def test_stack_blocks_repeats_trained_blocks_in_order():
    small = _ref(n_layer=2)
    stacked = stack_blocks(small)
    assert stacked.config.n_layer == 4 and small.config.n_layer == 2
    assert [b.layer_idx for b in stacked.transformer.h] == [0, 1, 2, 3]
    for i in range(4):
        assert _same(stacked.transformer.h[i], small.transformer.h[i % 2])
    for name in ("wte", "wpe", "ln_f"):
        assert _same(getattr(stacked.transformer, name), getattr(small.transformer, name))
    assert stacked.transformer.h[2] is not stacked.transformer.h[0]


def test_hybrid_stack_fills_depth_with_the_first_reference_blocks():
    ref = _ref(n_layer=8)
    tgt = hybrid_stack(ref, n_source=2, n_layer=4)
    for i, src in enumerate([0, 1, 0, 1]):
        assert _same(tgt.transformer.h[i], ref.transformer.h[src])
    assert torch.equal(tgt.transformer.wte.weight, ref.transformer.wte.weight)
    with pytest.raises(SurgeryError, match="n_source"):
        hybrid_stack(ref, n_source=5, n_layer=4)


def test_half_width_takes_the_documented_slices():
    ref = _ref(n_layer=2, n_head=4, n_embd=16)
    small = half_width(ref)
    C, c, D = 16, 8, 4
    assert (small.config.n_embd, small.config.n_head, small.config.n_layer) == (8, 2, 2)
    assert small.config.head_dim == ref.config.head_dim == D
    assert torch.equal(small.transformer.wte.weight, ref.transformer.wte.weight[:, :c])
    assert small.lm_head.weight is small.transformer.wte.weight
    assert torch.equal(small.transformer.wpe.weight, ref.transformer.wpe.weight[:, :c])
    for s, r in zip(small.transformer.h, ref.transformer.h):
        q, k, v = s.attn.c_attn.weight.split(c, dim=0)
        rq, rk, rv = r.attn.c_attn.weight.split(C, dim=0)
        for part, ref_part in ((q, rq), (k, rk), (v, rv)):
            # heads 0 and 1 of the reference: rows 0..2*D-1, the first c input features
            assert torch.equal(part, ref_part[: 2 * D, :c])
        assert torch.equal(s.attn.c_proj.weight, r.attn.c_proj.weight[:c, :c])
        assert torch.equal(s.mlp.c_fc.weight, r.mlp.c_fc.weight[: 4 * c, :c])
        assert torch.equal(s.mlp.c_proj.weight, r.mlp.c_proj.weight[:c, : 4 * c])
        assert torch.equal(s.ln_1.weight, r.ln_1.weight[:c])
        assert torch.equal(s.ln_2.weight, r.ln_2.weight[:c])
    assert torch.equal(small.transformer.ln_f.weight, ref.transformer.ln_f.weight[:c])
    small(torch.randint(0, 64, (1, 8)))  # and it runs
    with pytest.raises(SurgeryError, match="even number of heads"):
        half_width(_ref(n_layer=2, n_head=1, n_embd=16))


# Attention scale of moved blocks (PAPER.md section 1): every surgery that moves a block, as
# (new model, [(position in the new model, the block it is a copy of)]) for a policy.
def _moved_by_method_blocks(attn_scale):
    ref = _ref(n_layer=8)
    return inherit_blocks(ref, blocks=[4, 5, 6, 7], attn_scale=attn_scale), [(i, ref.transformer.h[4 + i]) for i in range(4)]


def _moved_by_append(attn_scale):
    ref = _ref(n_layer=8)
    target = inherit_blocks(ref, blocks=[4, 5], attn_scale=attn_scale)
    grown = grow(target, ref, n_new=2, mode="append", attn_scale=attn_scale)
    return grown, [(0, ref.transformer.h[4]), (1, ref.transformer.h[5]), (2, ref.transformer.h[2]),
                   (3, ref.transformer.h[3])]


def _moved_by_stacking(attn_scale):
    small = _ref(n_layer=2)
    return stack_blocks(small, attn_scale=attn_scale), [(i, small.transformer.h[i % 2]) for i in range(4)]


def _moved_by_hybrid_stacking(attn_scale):
    ref = _ref(n_layer=8)
    return hybrid_stack(ref, n_source=2, n_layer=4, attn_scale=attn_scale), [(i, ref.transformer.h[i % 2]) for i in range(4)]


def _moved_by_distilbert_mapping(attn_scale):
    from lit_inheritune.methods.distill import distilbert_blocks

    ref = _ref(n_layer=8)
    blocks = distilbert_blocks(8, 6)  # [0, 2, 4, 6, 4, 5]
    return inherit_blocks(ref, blocks=blocks, attn_scale=attn_scale), [(i, ref.transformer.h[b]) for i, b in enumerate(blocks)]


MOVERS = [_moved_by_method_blocks, _moved_by_append, _moved_by_stacking, _moved_by_hybrid_stacking,
          _moved_by_distilbert_mapping]


@pytest.mark.parametrize("surgery", MOVERS, ids=lambda f: f.__name__.removeprefix("_moved_by_"))
def test_source_scale_policy_keeps_what_each_moved_block_computes(surgery):
    x = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        kept, pairs = surgery("source")
        for position, source in pairs:
            assert torch.equal(kept.transformer.h[position](x)[0], source(x)[0]), position
        official, pairs = surgery("position")
        assert any(position != source.layer_idx for position, source in pairs)  # something did move
        for position, source in pairs:
            same = torch.equal(official.transformer.h[position](x)[0], source(x)[0])
            assert same == (position == source.layer_idx), position  # a moved block's scale, and output, change
    assert [b.layer_idx for b in official.transformer.h] == list(range(len(pairs)))
    assert official.config.attn_scale_index is None
    assert kept.config.attn_scale_index == [source.layer_idx for _, source in pairs]


def test_source_scale_policy_survives_a_checkpoint(tmp_path):
    """The per-block scale index lives in the config the checkpoint records, so the model comes back whole."""
    from lit_inheritune.training.lm import CausalLM
    from lit_inheritune.training.optim import OptimConfig

    ref = _ref(n_layer=8)
    moved = inherit_blocks(ref, blocks=[6, 1, 7], attn_scale="source")
    module = CausalLM(moved, OptimConfig())
    path = tmp_path / "moved.ckpt"  # what Lightning's checkpoint holds of the module
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, path)
    back = load_checkpoint(path)
    assert back.config.attn_scale_index == [6, 1, 7]
    assert [b.layer_idx for b in back.transformer.h] == [6, 1, 7]
    idx = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        assert torch.equal(back(idx)["logits"], moved(idx)["logits"])


def test_first_n_inheritance_is_one_model_under_either_policy():
    ref = _ref()
    torch.manual_seed(5)
    official = inherit_blocks(ref, n_layer=3)
    torch.manual_seed(5)
    kept = inherit_blocks(ref, n_layer=3, attn_scale="source")
    assert official.config == kept.config and _same(official, kept)
    with pytest.raises(SurgeryError, match="unknown attention scale policy 'layer'"):
        inherit_blocks(ref, n_layer=3, attn_scale="layer")
