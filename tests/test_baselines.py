"""The warm-start baselines end to end on the fixture corpus (the surgery itself is in test_surgery.py)."""

import lightning as L
import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.errors import ConfigError
from lit_inheritune.methods import reference_dir
from lit_inheritune.models import load_checkpoint
from lit_inheritune.models.gpt import GPT, GPTConfig
from lit_inheritune.run import run
from lit_inheritune.surgery import half_width


def _cfg(tmp_path, data_dir, method, *extra):
    return compose([*TINY, f"method={method}", "model.n_layer=4", "train.max_steps=10", "train.val_every_n_steps=10",
                    f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _fresh(reference, n_layer, seed):
    """What a baseline's surgery draws every tensor it does not copy from: each run seeds cfg.seed right before."""
    L.seed_everything(seed, verbose=False)
    return GPT(GPTConfig(**{**reference.config.to_dict(), "n_layer": n_layer}))


@pytest.mark.parametrize("attn_scale, scales", [("position", [0, 1, 2, 3]), ("source", [0, 1, 0, 1])])
def test_stacking_trains_half_depth_then_the_stacked_model(tmp_path, fixture_data_dir, initial_models, attn_scale,
                                                           scales):
    cfg = _cfg(tmp_path, fixture_data_dir, "stacking", "method.n_layer=4", f"method.attn_scale={attn_scale}")
    first, second = run(cfg)
    assert (first["n_layer"], second["n_layer"]) == (2, 4)
    assert first["last_checkpoint"].startswith(cfg.run_dir)  # the two stages are one fit (GrowCallback)
    assert second["steps"] == 10
    # stage 1 is the scratch run of n/2 layers, to the last bit: same seed, same batches
    [scratch] = run(compose([*TINY, "model.n_layer=2", "train.max_steps=10", "train.val_every_n_steps=10",
                             f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}"]))
    assert scratch["val_loss"] == first["val_loss"]
    assert _same(load_checkpoint(scratch["last_checkpoint"]), load_checkpoint(first["last_checkpoint"]))
    # Stage 2 starts from stage 1's trained model with its blocks 0, 1 repeated as 2, 3; nothing else changes.
    trained, start = load_checkpoint(first["last_checkpoint"]), initial_models["stage2-L4"]
    assert not _same(trained, initial_models["stage1-L2"])  # stage 1 trained
    for i in range(4):
        assert _same(start.transformer.h[i], trained.transformer.h[i % 2]), i
    for name in ("wte", "wpe", "ln_f"):
        assert _same(getattr(start.transformer, name), getattr(trained.transformer, name)), name
    assert [b.layer_idx for b in start.transformer.h] == scales  # method.attn_scale reached the surgery


@pytest.mark.parametrize("attn_scale, scales", [("position", [0, 1, 2, 3]), ("source", [0, 1, 0, 1])])
def test_hybrid_stacking_repeats_the_references_first_blocks(tmp_path, fixture_data_dir, initial_models, attn_scale,
                                                             scales, shared_reference):
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "hybrid_stacking", "method.n_layer=4",
                                f"method.attn_scale={attn_scale}"))
    [hybrid] = run(cfg)
    assert hybrid["n_layer"] == 4
    reference = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    start, fresh = initial_models["hybrid-L4"], _fresh(reference, 4, cfg.seed)
    for i in range(4):  # reference blocks 0, 1, 0, 1
        assert _same(start.transformer.h[i], reference.transformer.h[i % 2]), i
    assert torch.equal(start.transformer.wte.weight, reference.transformer.wte.weight)
    for name in ("wpe", "ln_f"):  # as Inheritune: not copied
        assert _same(getattr(start.transformer, name), getattr(fresh.transformer, name)), name
        assert not _same(getattr(start.transformer, name), getattr(reference.transformer, name)), name
    assert [b.layer_idx for b in start.transformer.h] == scales  # method.attn_scale reached the surgery


def test_half_width_starts_from_the_sliced_reference(tmp_path, fixture_data_dir, initial_models, shared_reference):
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, "half_width"))
    [half] = run(cfg)
    reference = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    start = initial_models["halfwidth-L4-d16"]
    assert (start.config.n_layer, start.config.n_embd, start.config.n_head) == (4, 16, 1)
    assert _same(start, half_width(reference))  # every tensor a slice of the trained reference (test_surgery)
    assert not _same(start, _fresh(half_width(reference), 4, cfg.seed))
    assert half["n_layer"] == 4


@pytest.mark.parametrize(
    "method, override, message",
    [
        ("stacking", "method.n_layer=3", "even method.n_layer"),
        ("hybrid_stacking", "method.n_layer=6", "method.n_layer <= 4"),
        ("half_width", "model.n_head=1", "even heads"),
    ],
)
def test_bad_baseline_requests_fail_before_training(tmp_path, fixture_data_dir, method, override, message):
    with pytest.raises(ConfigError, match=message):
        run(_cfg(tmp_path, fixture_data_dir, method, override))
    assert not (tmp_path / "outputs").exists()


def test_distilbert_default_mapping_is_the_papers_for_medium():
    from lit_inheritune.methods.distill import distilbert_blocks

    assert distilbert_blocks(24, 16) == [*range(0, 24, 2), 18, 19, 20, 21]
    assert distilbert_blocks(24, 12) == list(range(0, 24, 2))
    assert distilbert_blocks(8, 6) == [0, 2, 4, 6, 4, 5]


@pytest.mark.parametrize("method, overrides", [("kd", []), ("distilbert_kd", ["method.attn_scale=source"])])
def test_distillation_runs_and_saves_only_the_student(tmp_path, fixture_data_dir, initial_models, method, overrides,
                                                     shared_reference):
    cfg = shared_reference(_cfg(tmp_path, fixture_data_dir, method, "method.n_layer=2", "optim.min_lr=1e-4",
                                "method.min_lr=2e-4", *overrides))
    [result] = run(cfg)
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert load_checkpoint(result["last_checkpoint"]).config.n_layer == 2
    assert result["stage"] == "student-L2"
    # The student decays to KD's own floor; the teacher, the group's reference, to the group's.
    assert ckpt["hyper_parameters"]["optim"]["min_lr"] == 2e-4
    teacher = load_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    assert torch.load(reference_dir(cfg) / "checkpoints" / "last.ckpt", weights_only=True)[
        "hyper_parameters"]["optim"]["min_lr"] == 1e-4
    # Logit KD starts from a random init; DistilBERT-style from teacher blocks 0, 2 (every other block) and
    # the teacher's token embedding, the rest fresh.
    start, fresh = initial_models["student-L2"], _fresh(teacher, 2, cfg.seed)
    if method == "kd":
        assert _same(start, fresh)
        return
    for i, src in enumerate([0, 2]):
        assert _same(start.transformer.h[i], teacher.transformer.h[src]), i
    assert torch.equal(start.transformer.wte.weight, teacher.transformer.wte.weight)
    for name in ("wpe", "ln_f"):
        assert _same(getattr(start.transformer, name), getattr(fresh.transformer, name)), name
    assert [b.layer_idx for b in start.transformer.h] == [0, 2]  # method.attn_scale=source reached the surgery


def test_distilbert_mapping_naming_a_missing_teacher_block_is_a_clear_error(tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match=r"\[7\] do not exist"):
        run(_cfg(tmp_path, fixture_data_dir, "distilbert_kd", "method.n_layer=2", "method.student_blocks=[0,7]"))
    assert not (tmp_path / "outputs").exists()
