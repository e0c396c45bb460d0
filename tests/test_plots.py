"""Figures that say what they show: nothing clipped, nothing hidden, no blank panels (issue #12, paper cuts)."""

import json

import matplotlib.image as mpimg
import numpy as np
import pytest

from lit_inheritune import analysis

C0, C1 = (31, 119, 180), (255, 127, 14)  # matplotlib's first two colours: the first two series


def _report(n_layer: int, n_head: int, seed: int = 0) -> dict:
    rank = np.random.default_rng(seed).uniform(1, 12, size=(n_layer, n_head))
    return {"primary_tau": "0.9", "per_tau": {"0.9": {"rank": rank.tolist(), "max_rank": rank.max(1).tolist()}},
            "near_rank1": 1.5, "n_layer": n_layer, "avg_mass": rank.mean(1).tolist(), "eta": 0.9}


def _pixels(png, rgb) -> int:
    image = mpimg.imread(png)[..., :3] * 255
    return int((np.abs(image - np.array(rgb)).max(-1) < 40).sum())


@pytest.mark.parametrize("n_layer, n_head, label", [(2, 2, "round1-L2"), (4, 4, "inheritune_4L"),
                                                    (30, 9, "SmolLM2-135M-Instruct")])
def test_rank_heatmap_title_and_colour_bar_label_lie_inside_the_figure(tmp_path, monkeypatch, n_layer, n_head,
                                                                       label):
    outside = []
    save = analysis._save

    def check_then_save(fig, path):
        fig.canvas.draw()
        renderer, frame = fig.canvas.get_renderer(), fig.bbox
        image_ax, colour_bar_ax = fig.axes
        for text in (image_ax.title, colour_bar_ax.yaxis.label):
            box = text.get_window_extent(renderer)
            if box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1:
                outside.append(text.get_text())
        return save(fig, path)

    monkeypatch.setattr(analysis, "_save", check_then_save)
    analysis.plot_rank_heatmap(_report(n_layer, n_head), tmp_path / "heat.png", title=label)
    assert not outside


def test_identical_series_in_max_rank_stay_visible(tmp_path):
    """The same model under two labels: the first series must still show, not only in the legend."""
    report = _report(8, 4)
    png = analysis.plot_max_rank({"reference_8L": report, "same_8L": json.loads(json.dumps(report))},
                                 tmp_path / "max_rank.png")
    assert _pixels(png, C0) > 0.4 * _pixels(png, C1)


def test_a_report_panel_with_no_runs_says_so(tmp_path, monkeypatch):
    import matplotlib.figure

    from lit_inheritune.report import plot_curves

    texts = []
    savefig = matplotlib.figure.Figure.savefig

    def record_then_save(fig, *args, **kwargs):
        texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_then_save)
    table = {"title": "Table 1", "rows": [{"name": "Inheritune 4L", "run": "inheritune-n4/round1-L4", "mean": None,
                                           "at_step": None, "paper": None}]}
    plot_curves(table, runs=[], path=tmp_path / "curves.png")
    assert texts == ["no runs"]


def _longest_suite_title() -> str:
    import yaml

    from lit_inheritune.paper import HERE as PAPER_DIR

    suites = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text()).values()
    return max((t["title"] for suite in suites for t in suite["tables"]), key=len)


@pytest.mark.parametrize("plot", ["curves", "compute"])
def test_a_long_table_title_lies_inside_the_figure(tmp_path, monkeypatch, plot):
    import matplotlib.figure

    from lit_inheritune.report import plot_compute, plot_curves

    outside = []
    savefig = matplotlib.figure.Figure.savefig

    def check_then_save(fig, *args, **kwargs):
        fig.canvas.draw()
        renderer, frame = fig.canvas.get_renderer(), fig.bbox
        titles = [fig._suptitle, *(ax.title for ax in fig.axes)]
        for text in (t for t in titles if t is not None and t.get_text()):
            box = text.get_window_extent(renderer)
            if box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1:
                outside.append(text.get_text())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", check_then_save)
    stage = tmp_path / "inheritune-n4-s1" / "round1-L4"
    (stage / "csv").mkdir(parents=True)
    (stage / "csv" / "metrics.csv").write_text("step,val/loss\n49,6.0\n99,5.5\n")
    runs = [{"label": "inheritune-n4/round1-L4", "seed": 1, "dir": str(stage),
             "identity": {"train": {"max_steps": 100}}}]
    row = {"name": "Inheritune 4L", "run": "inheritune-n4/round1-L4", "mean": 5.5, "at_step": None, "paper": None,
           "flops": 1e12, "cumulative_flops": 5e12}
    table = {"title": _longest_suite_title(), "rows": [row]}
    if plot == "curves":
        plot_curves(table, runs, tmp_path / "curves.png")
    else:
        assert plot_compute([table], runs, tmp_path / "compute.png")
    assert not outside


def test_max_rank_draws_uniform_causal_attention_as_its_baseline(tmp_path, monkeypatch):
    """Uniform causal attention over 2 tokens is [[1, 0], [1/2, 1/2]]: singular values squared (3 +- sqrt 5)/4, so
    the first holds 0.873 of the energy (k* = 1 at tau 0.8, 2 at 0.9); column 0 holds 1.25 / 1.5 = 0.833 of the
    squared norm (m* = 1 at eta 0.8, 2 at 0.9). The plot draws the baseline of the reports' window length."""
    assert analysis.uniform_baseline(2, 0.8, 0.8) == (1, 1)
    assert analysis.uniform_baseline(2, 0.9, 0.9) == (2, 2)
    assert analysis.uniform_baseline(1, 0.9, 0.9) == (1, 1)
    import matplotlib.axes

    lines = []
    axhline = matplotlib.axes.Axes.axhline
    monkeypatch.setattr(matplotlib.axes.Axes, "axhline",
                        lambda ax, y=0, *a, **kw: lines.append((kw.get("label"), y)) or axhline(ax, y, *a, **kw))
    report = {**_report(4, 2), "seq_len": 64}
    analysis.plot_max_rank({"a": report}, tmp_path / "max_rank.png")
    want = analysis.uniform_baseline(64, 0.9, 0.9)
    assert [y for label, y in lines if label == "uniform causal attention"] == list(want)
    assert 1 < want[0] < 64 and 1 < want[1] < 64  # neither lazy nor full: a level between


def _fit(group, name, stages, losses):
    """A fit directory as a run writes it: fit.json (its stages and steps), stages.json and the fit's CSV log."""
    fit = group / name
    (fit / "csv").mkdir(parents=True)
    (fit / "fit.json").write_text(json.dumps({"stages": stages, "steps": 10 * len(stages)}))
    (fit / "stages.json").write_text(json.dumps({"reference": {"val_loss": 4.0}, "stages": []}))
    rows = "".join(f"{10 * (i + 1) - 1},{v}\n" for i, v in enumerate(losses))
    (fit / "csv" / "metrics.csv").write_text("step,val/loss\n" + rows)


def test_growing_runs_plot_only_fits_that_grew(tmp_path, monkeypatch):
    """'Growing runs' is drawn for fits with a stage after their first; a one-round fit is not growth."""
    import matplotlib.figure

    from lit_inheritune.report import plot_growth

    group = tmp_path / "group"
    _fit(group, "inheritune-n4-block-reinherit-s1", ["round1-L4"], [4.5])
    assert plot_growth(group, tmp_path / "growth.png") is None
    _fit(group, "inheritune-n2-block-reinherit-s1", ["round1-L2", "round2-L3"], [4.9, 4.6])
    legends = []
    savefig = matplotlib.figure.Figure.savefig

    def record_then_save(fig, *args, **kwargs):
        legends.extend(t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts())
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_then_save)
    assert plot_growth(group, tmp_path / "growth.png") is not None
    assert legends == ["inheritune-n2-block-reinherit (1 seed)", "reference"]


def test_compute_view_has_one_panel_per_table_with_runs(tmp_path, monkeypatch):
    import matplotlib.figure

    from lit_inheritune.report import plot_compute

    runs = []
    for label in ("a", "b"):
        stage = tmp_path / label
        (stage / "csv").mkdir(parents=True)
        (stage / "csv" / "metrics.csv").write_text("step,val/loss\n4,5.0\n9,4.5\n")
        runs.append({"label": label, "dir": str(stage), "identity": {"train": {"max_steps": 10}}})
    row = lambda run, flops: {"name": run, "run": run, "at_step": None, "flops": flops, "cumulative_flops": 2 * flops}
    tables = [{"title": "Table 1", "rows": [row("a", 1e12)]}, {"title": "Table 2", "rows": [row("b", 2e12)]},
              {"title": "nothing trained", "rows": [row("c", 3e12)]}]
    titles, xs = [], []
    savefig = matplotlib.figure.Figure.savefig

    def record_then_save(fig, *args, **kwargs):
        titles.extend(ax.get_title() for ax in fig.axes)
        xs.extend(list(line.get_xdata()) for ax in fig.axes for line in ax.lines)
        return savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record_then_save)
    assert plot_compute(tables, runs, tmp_path / "compute.png") is not None
    assert titles == ["Table 1", "Table 2"]
    # each point at the FLOPs before the row (cumulative - own) plus the steps taken (5 and 10 of 10)
    assert xs == [[1.5e12, 2e12], [3e12, 4e12]]


def test_official_curves_are_labelled_with_the_papers_names():
    from lit_inheritune.paper import paper_name

    assert paper_name("table1.large.3") == "GPT-2 Large 18L, Inheritune round 1, 100K steps"
    assert paper_name("table1.medium.2") == "GPT-2 Medium 16L, random init, 200K steps"
    assert paper_name("table3.2") == "GPT-2 Medium 16L, attention + MLP init"
    assert paper_name("table2.xlarge.0") == "GPT-2 XLarge 48L, half width"
    assert paper_name("kd.1") == "GPT-2 Medium 16L, DistilBERT-style KD student, 50K steps"
    assert paper_name("lazy_transfer.3") == "GPT-2 Small 4L, random init"
