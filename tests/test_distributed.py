"""The recipe under DDP: two CPU processes (gloo) through a grow step hold identical weights."""

import json
import subprocess
import sys

from conftest import TINY


def test_inheritune_grow_under_ddp_keeps_ranks_identical(tmp_path, fixture_data_dir):
    cmd = [sys.executable, "-m", "lit_inheritune", *TINY, "trainer=ddp_cpu", "method=inheritune",
           "model.n_layer=4", "method.n_layer=2", "method.grow_by=1", "method.max_layers=3",
           "method.tolerance=-100", "method.grow_mode=append", "train.max_steps=10", "train.val_every_n_steps=10",
           f"paths.root_dir={tmp_path}", f"data.data_dir={fixture_data_dir}", "name=ddp"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    run_dir = tmp_path / "outputs" / "ddp" / "inheritune-n2-block-append-s1"
    for stage in ("round1-L2", "round2-L3"):
        digests = json.loads((run_dir / stage / "weights_digest.json").read_text())["ranks"]
        assert len(digests) == 2 and digests[0] == digests[1]
        assert json.loads((run_dir / stage / "result.json").read_text())["n_layer"] == int(stage[-1])
