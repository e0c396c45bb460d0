"""The regime pilot's follow-ups: a config the pilot defined but never ran, reported on its own after the pilot's
runs are gone, and counted in the pilot's findings."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "regime_pilot.py"


@pytest.fixture
def pilot(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("regime_pilot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "ROOT", tmp_path)
    return module


def _run(root, config, n_layer, steps, val_loss):
    run = root / "outputs" / f"regime_{config}" / f"scratch-L{n_layer}-T{steps}-s1"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"val_loss": val_loss, "train_seconds": 100.0,
                                                 "provenance": {"commit": "abc"}}))


def test_a_follow_up_reports_its_config_alone_and_the_pilot_findings_count_it(pilot, tmp_path):
    _run(tmp_path, "lr3e-3_4v2", 4, 1000, 4.80)
    _run(tmp_path, "lr3e-3_4v2", 2, 1000, 4.83)
    out = tmp_path / "results" / "regime"
    pilot.report(out / "lr3e-3_4v2", ["lr3e-3_4v2"])
    md = (out / "lr3e-3_4v2" / "pilot.md").read_text()
    assert md.startswith("# Regime pilot follow-up (lr3e-3_4v2)")
    assert "| lr3e-3_4v2 |" in md and "| 0.0300 |" in md and "| shape_4v2 |" not in md
    assert "## Fallback" not in md and "fallback (experiments/results/regime/pilot.md)" in md
    assert (out / "lr3e-3_4v2" / "pilot.png").exists()

    # the pilot's own report, written when its runs existed: shape_4v2 measured, the 3x-rate config not run
    configs = {n: {"k": k, "steps": steps, "overrides": o, "hypothesis": h}
               for n, (k, steps, o, h) in pilot.CONFIGS.items()}
    verdicts = {n: {"status": "incomplete"} for n in configs}
    verdicts["shape_4v2"] = {"gap": -0.0485, "n_deep": 1, "n_half": 1, "status": "fails"}
    (out / "pilot.json").write_text(json.dumps({"verdicts": verdicts, "configs": configs}))
    (out / "pilot.md").write_text(f"# Regime pilot\n\n{pilot.MEASURED_HEADING}\n\nold\n\n## Fallback\n\nkept\n")
    pilot.rewrite_measured(out)
    md = (out / "pilot.md").read_text()
    measured, not_tried = md.split("Not tried:")
    assert "- lr3e-3_4v2 (" in measured and "gap +0.0300" in measured and "lr3e-3_4v2/pilot.md" in measured
    assert "3x the learning rate (k = 4) (lr3e-3_4v2 against shape_4v2) moved the gap by +0.0785" in measured
    assert "lr3e-3_4v2" not in not_tried and "- lr3e-3_8v4 (" in not_tried
    assert md.endswith("## Fallback\n\nkept\n")
