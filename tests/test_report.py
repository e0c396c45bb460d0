import json

from lit_inheritune.report import collect, markdown_table, summarize, write_report


def _result(path, val_loss, n_layer=4, steps=100):
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps(
        {"val_loss": val_loss, "n_layer": n_layer, "steps": steps, "wall_seconds": 60.0}))


def test_report_regenerates_the_table_exactly_and_shows_missing_runs(tmp_path):
    group = tmp_path / "cpu_x"
    _result(group / "scratch-L8-T200-s1", 5.0, n_layer=8, steps=200)
    _result(group / "scratch-L8-T200-s2", 5.2, n_layer=8, steps=200)
    _result(group / "inheritune-n4-block-reinherit-s1" / "round1-L4", 4.5)
    rows = collect(group)
    assert {(r["label"], r["seed"]) for r in rows} == {
        ("scratch-L8-T200", 1), ("scratch-L8-T200", 2), ("inheritune-n4-block-reinherit/round1-L4", 1)}
    table = markdown_table(summarize(rows), expect=["scratch-L8-T200", "inheritune-n4-block-reinherit/round1-L4",
                                                    "scratch-L4-T100"])
    assert table == (
        "| run | layers | steps | seeds | val loss (mean +- std) | wall time (min, all seeds) |\n"
        "|---|---|---|---|---|---|\n"
        "| scratch-L8-T200 | 8 | 200 | 1,2 | 5.1000 +- 0.1414 | 2.0 |\n"
        "| inheritune-n4-block-reinherit/round1-L4 | 4 | 100 | 1 | 4.5000 | 1.0 |\n"
        "| scratch-L4-T100 | | | 0 | missing | |\n"
    )
    md = write_report(group, tmp_path / "out", expect=None).read_text()
    assert "- commit: `" in md and "- command: `" in md and "| scratch-L8-T200 | 8 |" in md
