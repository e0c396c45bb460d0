"""The warm-start baselines end to end on the fixture corpus (the surgery itself is in test_surgery.py)."""

import pytest
import torch
from conftest import TINY

from lit_inheritune.config import compose
from lit_inheritune.run import reference_dir, run, scratch_dir
from lit_inheritune.surgery import gpt_from_checkpoint
from lit_inheritune.training.runner import ConfigError


def _cfg(tmp_path, data_dir, method, *extra):
    return compose([*TINY, f"method={method}", "model.n_layer=4", "train.max_steps=10", "train.val_every_n_steps=10",
                    f"paths.root_dir={tmp_path}", f"data.data_dir={data_dir}", *extra])


def test_stacking_trains_half_depth_then_the_stacked_model(tmp_path, fixture_data_dir):
    cfg = _cfg(tmp_path, fixture_data_dir, "stacking")
    first, second = run(cfg)
    assert (first["n_layer"], second["n_layer"]) == (1, 2)
    assert first["last_checkpoint"].startswith(str(scratch_dir(cfg, 1, 10)))  # shared with scratch runs
    assert second["steps"] == 10


def test_hybrid_stacking_and_half_width_start_from_the_reference(tmp_path, fixture_data_dir):
    [hybrid] = run(_cfg(tmp_path, fixture_data_dir, "hybrid_stacking"))
    [half] = run(_cfg(tmp_path, fixture_data_dir, "half_width"))
    cfg = _cfg(tmp_path, fixture_data_dir, "half_width")
    reference = gpt_from_checkpoint(reference_dir(cfg) / "checkpoints" / "last.ckpt")
    assert hybrid["n_layer"] == 2
    model = gpt_from_checkpoint(half["last_checkpoint"])
    assert (model.config.n_layer, model.config.n_embd, model.config.n_head) == (4, 16, 1)
    assert not torch.equal(model.transformer.wte.weight, reference.transformer.wte.weight[:, :16])  # trained


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
    from lit_inheritune.run import distilbert_blocks

    assert distilbert_blocks(24, 16) == [*range(0, 24, 2), 18, 19, 20, 21]
    assert distilbert_blocks(24, 12) == list(range(0, 24, 2))
    assert distilbert_blocks(8, 6) == [0, 2, 4, 6, 4, 5]


@pytest.mark.parametrize("method", ["kd", "distilbert_kd"])
def test_distillation_runs_and_saves_only_the_student(tmp_path, fixture_data_dir, method):
    cfg = _cfg(tmp_path, fixture_data_dir, method, "method.n_layer=2", "optim.min_lr=1e-4", "method.min_lr=2e-4")
    [result] = run(cfg)
    ckpt = torch.load(result["last_checkpoint"], weights_only=True)
    assert all(k.startswith("model.") for k in ckpt["state_dict"])
    assert gpt_from_checkpoint(result["last_checkpoint"]).config.n_layer == 2
    assert result["stage"] == "student-L2"
    # The student decays to KD's own floor; the teacher, the group's reference, to the group's.
    assert ckpt["hyper_parameters"]["optim"]["min_lr"] == 2e-4
    teacher = torch.load(reference_dir(cfg) / "checkpoints" / "last.ckpt", weights_only=True)
    assert teacher["hyper_parameters"]["optim"]["min_lr"] == 1e-4


def test_distilbert_mapping_naming_a_missing_teacher_block_is_a_clear_error(tmp_path, fixture_data_dir):
    with pytest.raises(ConfigError, match=r"\[7\] do not exist"):
        run(_cfg(tmp_path, fixture_data_dir, "distilbert_kd", "method.n_layer=2", "method.student_blocks=[0,7]"))
    assert not (tmp_path / "outputs").exists()
