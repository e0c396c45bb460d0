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
