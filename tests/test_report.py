import json
import math

import pytest

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


def _stage(group, label_with_seed, val_loss, curve=None, n_layer=4, steps=500):
    path = group / label_with_seed
    _result(path, val_loss, n_layer=n_layer, steps=steps)
    if curve:  # Lightning logs a validation at the 0-based index of the last batch: step 250 -> 249
        (path / "csv").mkdir()
        lines = ["epoch,step,train/loss,val/loss"] + [f"0,{s - 1},,{v}" for s, v in curve.items()]
        (path / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_suite_tables_put_ours_beside_the_paper_and_check_the_orderings(tmp_path):
    import yaml

    from lit_inheritune.paper import HERE as PAPER_DIR
    from lit_inheritune.report import suite_markdown, suite_tables, write_suite

    group = tmp_path / "cpu_medium_16l"
    _stage(group, "scratch-L8-T1500-s0", 4.60, n_layer=8, steps=1500)
    for seed, (inh, scr_t, scr_2t) in {1: (4.50, 4.90, 4.55), 2: (4.54, 4.94, 4.65)}.items():
        _stage(group, f"inheritune-n4-block-reinherit-s{seed}/round1-L4", inh, curve={250: inh + 0.2, 500: inh})
        _stage(group, f"scratch-L4-T500-s{seed}", scr_t, curve={250: scr_t + 0.3, 500: scr_t})
        _stage(group, f"scratch-L4-T1000-s{seed}", scr_2t, steps=1000)
    _stage(group, "kd-L4-s1/student-L4", 4.60, steps=250)
    from lit_inheritune.matched import steps

    spec = yaml.safe_load((PAPER_DIR / "suites.yaml").read_text())["cpu_medium_16l"]["tables"][0]
    matched = steps(next(r for r in spec["rows"] if r.get("matched"))["matched"])
    for seed, (emb, flops_equal) in {1: (4.70, 4.45), 2: (4.75, 4.47)}.items():  # Table 1's controls
        _stage(group, f"embedding_only-L4-s{seed}/embedding-L4", emb)
        _stage(group, f"scratch-L4-T{matched}-s{seed}", flops_equal, steps=matched)

    tables = {t["id"]: t for t in suite_tables("cpu_medium_16l", collect(group))}
    t1 = {r["name"]: r for r in tables["table1"]["rows"]}
    assert t1["Inheritune 4L, round 1, T"]["ours"] == [4.50, 4.54]
    assert t1["reference 8L, rand, 3T"]["paper"]["val_loss"] == 2.85
    growth = {r["name"]: r for r in tables["table1_growth"]["rows"]}
    assert growth["Inheritune 5L, round 2, T"]["ours"] == [] and growth["Inheritune 5L, round 2, T"]["paper"]["layers"] == 16
    checks = {c["claim"]: (c["ours"], c["test"], c["paper"]) for c in tables["table1"]["checks"]}
    # the t-test rule: the single-seed reference is a one-sample test, rows sharing seeds 1,2 are paired
    one_sample, paired = "one-sample t-test against the single run", "paired t-test by seed"
    assert checks == {
        "premise at equal steps: the 8L model beats half-depth scratch, both trained 2T": ("not run", None, "holds"),
        # 4.60 vs 4.60; in the paper 2.85 vs 2.84 at 2T (Large), inside its curves' eval-to-eval noise
        "premise as run here: the 3T reference beats half-depth scratch trained 2T": (
            "tie", one_sample, "within the paper's noise"),
        "Inheritune 4L matches the reference": ("tie", one_sample, "holds"),  # by 0.08, t = 4 on 1 df: p = 0.16
        "Inheritune 4L beats scratch 4L at T": ("holds", paired, "holds"),  # by 0.40 in both seeds
        "Inheritune 4L at T beats scratch 4L at 2T": ("tie", paired, "holds"),  # by 0.05 and 0.11, t = 2.67 on 1 df
        # the controls have no published counterpart; the 4T row has no run yet
        "control: Inheritune 4L at T beats scratch 4L at 4T, as many updates as its inherited blocks had": (
            "not run", None, "missing"),
        "control: Inheritune 4L beats scratch 4L given the same cumulative training FLOPs": (
            "tie", paired, "missing"),  # behind by 0.05 and 0.07: t = 6 on 1 df, p = 0.11
        "control: inheriting the blocks beats inheriting the embedding alone": ("holds", paired, "missing"),
        "control: inheriting the embedding alone beats scratch 4L at T": ("holds", paired, "missing"),
    }
    assert t1["scratch 4L, FLOPs-equal to reference + Inheritune"]["run"] == f"scratch-L4-T{matched}"
    assert t1["scratch 4L, FLOPs-equal to reference + Inheritune"]["ours"] == [4.45, 4.47]
    at_2t = next(c for c in tables["table1"]["checks"] if c["claim"].endswith("at 2T"))
    # Student's t on 1 df is Cauchy: two-sided p = 1 - (2 / pi) atan(|t|)
    assert at_2t["margin"] == pytest.approx(0.08) and at_2t["p"] == pytest.approx(
        1 - 2 / math.pi * math.atan(0.08 / (math.sqrt(0.05**2 + 0.11**2 - 2 * 0.08**2) / math.sqrt(2))), rel=1e-9)
    growth_checks = {c["claim"]: c["paper"] for c in tables["table1_growth"]["checks"]}
    # the paper's Medium reference beats its 16L model at 2T by 0.02, above the two curves' noise
    assert growth_checks["premise as run here: the 3T reference beats half-depth scratch trained 2T"] == "holds"
    kd = {r["name"]: r for r in tables["kd"]["rows"]}
    assert kd["Inheritune 4L at step T/2 of T"]["ours"] == [4.70, 4.74]  # read off the curve at step 250
    assert kd["DistilBERT-style KD 4L, T/2"]["ours"] == []
    kd_checks = {c["claim"]: c["ours"] for c in tables["kd"]["checks"]}
    # 4.70, 4.74 against KD's one seed at 4.60: behind by 0.12, but t = 6 on 1 df is p = 0.11
    assert kd_checks["Inheritune beats logit KD"] == "tie" and kd_checks["Inheritune beats DistilBERT-style KD"] == "not run"
    assert {c["paper"] for c in tables["table2"]["checks"]} == {"holds"}

    assert "last-word acc" not in suite_markdown(tables["table1"])  # nothing evaluated yet
    for seed, acc in ((1, 0.08), (2, 0.10)):  # what `evaluate tasks=[lastword]` writes into the stage dir
        eval_dir = group / f"inheritune-n4-block-reinherit-s{seed}" / "round1-L4" / "eval"
        eval_dir.mkdir()
        (eval_dir / "results.json").write_text(json.dumps(
            {"results": {"lastword_embedded_bpe4096": {"acc,none": acc, "perplexity,none": 900.0}}}))
    md = write_suite(group, tmp_path / "out", "cpu_medium_16l").read_text()
    assert "| Inheritune 4L at T beats scratch 4L at 2T | tie | +0.0800 | paired t-test by seed | 0.23 | holds | " \
        "+0.04 | 0.0304 |" in md  # the two curves' noise in quadrature
    assert "Welch's t-test otherwise" in md and "p < 0.05" in md
    # no identity.json in these hand-made stages: no compute columns
    # the paper's rows by the paper's names (its figures' too), not its log files' (large-half-init_log)
    assert "| 4.5200 +- 0.0283 | - | - | - | GPT-2 Large 18L, Inheritune round 1, 100K steps | 2.80 | 9.0 +- 1.4 " \
        "(2 seeds) | 34.64 |" in md
    assert "| 5.0000 +- 0.0000 |" not in md and "| reference 8L, rand, 3T | `scratch-L8-T1500` | 0 | 4.6000 | " \
        "- | - | - | GPT-2 Large 36L, random init, 100K steps | 2.85 | - | 34.14 |" in md
    assert "| Inheritune 4L, round 1, T | `inheritune-n4-block-reinherit/round1-L4` | 1,2 | 4.5200 +- 0.0283 | " \
           "- | - | - | GPT-2 Large 18L, Inheritune round 1, 100K steps | 2.80 |" in md
    assert "| stacking 2L -> 4L, T + T | `stacking-L4/stage2-L4` | - | not run | - | - | - | GPT-2 Large 18L, " \
           "stacking | 2.87 |" in md
    assert "- commit: `" in md
    assert all((tmp_path / "out" / f"{t}_curves.png").stat().st_size > 10_000
               for t in ("table1", "table1_growth", "table2", "table3", "kd"))


def test_a_given_reference_is_a_row_from_stages_json_but_a_trained_one_is_not_repeated(tmp_path):
    group = tmp_path / "cpu_smollm2_15l"
    run = group / "inheritune-n15-block-reinherit-s1"
    _result(run / "round1-L15", 3.1, n_layer=15, steps=200)
    measured = {"stage": "reference", "n_layer": 30, "params": 1, "steps": None, "tokens": None, "val_loss": 3.4}
    (run / "stages.json").write_text(json.dumps({"reference": measured, "stages": [], "provenance": {"commit": "abc"}}))
    trained = group / "inheritune-n4-block-reinherit-s1"
    _result(trained / "round1-L4", 4.5)
    (trained / "stages.json").write_text(json.dumps(
        {"reference": {**measured, "last_checkpoint": "x/last.ckpt"}, "stages": []}))
    rows = {(r["label"], r["seed"]): r for r in collect(group)}
    assert set(rows) == {("inheritune-n15-block-reinherit/round1-L15", 1), ("inheritune-n4-block-reinherit/round1-L4", 1),
                         ("inheritune-n15-block-reinherit/reference", 1)}
    ref = rows[("inheritune-n15-block-reinherit/reference", 1)]
    assert ref["val_loss"] == 3.4 and ref["n_layer"] == 30 and ref["dir"] == str(run / "reference")
    assert ref["provenance"]["commit"] == "abc"  # measured by that run, so it carries the run's provenance
    assert "| inheritune-n15-block-reinherit/reference | 30 |  | 1 | 3.4000 | 0.0 |" in markdown_table(summarize(list(rows.values())))


def test_the_t_distribution_matches_known_values():
    from lit_inheritune.report.stats import betainc, t_two_sided_p

    # the 0.975 quantiles of Student's t (any printed table): two-sided p = 0.05
    for t, df in ((12.706, 1), (4.303, 2), (2.776, 4), (2.571, 5), (2.228, 10), (2.042, 30)):
        assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-4), (t, df)
    for t in (0.0, 0.3, 1.0, 4.0, 25.0):  # closed forms: 1 df is Cauchy; 2 df is 1 - |t| / sqrt(2 + t^2)
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-10, abs=1e-14)
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-10, abs=1e-14)
    assert t_two_sided_p(math.inf, 3) == 0.0
    assert betainc(2, 3, 0.4) == pytest.approx(0.5248, abs=1e-12)  # I_x(2,3) = P(Binomial(4, x) >= 2)
    assert betainc(1, 1, 0.37) == pytest.approx(0.37, abs=1e-14)


def test_welch_paired_and_one_sample_tests_on_known_inputs():
    from lit_inheritune.report.stats import compare, one_sample, paired, welch

    w = welch([1, 2, 3, 4], [2, 4, 6, 8, 10])  # unequal variances: Welch-Satterthwaite df = 5.52
    assert w["t"] == pytest.approx(-2.2514363231593695, rel=1e-12)
    assert w["df"] == pytest.approx(5.520787746170677, rel=1e-12)
    assert w["p"] == pytest.approx(0.06913359319239237, rel=1e-9)  # scipy.stats.ttest_ind(equal_var=False)
    pr = paired([1.0, 2.0, 4.0], [0.5, 1.0, 2.5])  # differences 0.5, 1, 1.5: mean 1, se 0.5 / sqrt(3), 2 df
    assert pr["df"] == 2 and pr["t"] == pytest.approx(1 / (0.5 / math.sqrt(3)))
    assert pr["p"] == pytest.approx(1 - pr["t"] / math.sqrt(2 + pr["t"] ** 2), rel=1e-10)
    one = one_sample([4.0, 4.2], 4.5)  # mean 4.1, se 0.1: t = -4 on 1 df
    assert one["t"] == pytest.approx(-4) and one["p"] == pytest.approx(1 - 2 / math.pi * math.atan(4), rel=1e-10)
    # which test: same seeds -> paired (matched by seed, whatever the order); otherwise Welch; one value -> one-sample
    assert compare([1.0, 2.0, 4.0], [2.5, 0.5, 1.0], [1, 2, 3], [3, 1, 2]) == pr
    assert compare([1.0, 2.0, 4.0], [0.5, 1.0, 2.5], [1, 2, 3], [1, 2, 4])["test"] == "Welch's t-test"
    assert compare([4.5], [4.0, 4.2])["t"] == pytest.approx(4) and compare([4.5], [4.0, 4.2])["p"] == one["p"]
    assert compare([4.5], [4.0]) is None and compare([], [4.0, 4.1]) is None


def test_claim_verdicts_follow_the_t_test():
    from lit_inheritune.report import claim_verdict, paper_verdict

    assert claim_verdict([1.0, 1.02], [1.10, 1.12])["verdict"] == "holds"  # Welch, t = 7.07 on 2 df: p = 0.019
    assert claim_verdict([1.10, 1.12], [1.0, 1.02])["verdict"] == "fails"
    assert claim_verdict([1.0, 1.1], [1.05, 1.15])["verdict"] == "tie"  # 0.05 apart, t = 0.71
    # against a single run, lhs = x -+ 0.01 has se 0.01: t = margin / 0.01 on 1 df, p = 0.05 at t = 12.706.
    # Both margins are far beyond the old rule's noise (2 x 0.014); the test separates them at p = 0.05
    just_in, just_out = claim_verdict([0.99, 1.01], [1.13]), claim_verdict([0.99, 1.01], [1.12])
    assert just_in["verdict"] == "holds" and just_in["p"] < 0.05
    assert just_out["verdict"] == "tie" and just_out["p"] >= 0.05
    assert just_in["test"] == just_out["test"] == "one-sample t-test against the single run"
    assert claim_verdict([1.0006], [1.0])["verdict"] == "fails (1 seed each: untested)"
    assert claim_verdict([1.0], [])["verdict"] == "missing"
    assert paper_verdict(2.64, "<", 2.64) == "tie" and paper_verdict(2.81, "<=", 2.81) == "holds"
    assert paper_verdict(2.80, "<", 2.85) == "holds" and paper_verdict(2.87, "<", 2.85) == "fails"
    assert paper_verdict(2.84, "<", 2.85, noise=0.012) == "within the paper's noise"
    assert paper_verdict(2.81, "<", 2.83, noise=0.0097) == "holds"


def test_the_papers_noise_is_the_spread_of_its_last_evaluations(monkeypatch):
    from lit_inheritune.paper import published
    from lit_inheritune.report import paper_noise

    large = published()["table1"]["large"]
    # GPT-2 Large's reference and its 18L model at 200K: a published 0.01 apart, each curve ~0.02 eval to eval
    assert 0.015 < paper_noise(large[0]) < 0.03 and 0.015 < paper_noise(large[2]) < 0.03
    # a straight line through the last evaluations is not noise: a curve that only trends has none
    from lit_inheritune.report import claims
    fake = {"run": "x", "steps": 10_000}
    curve = [{"step": 1000 * i, "train_loss": 0.0, "val_loss": 3.0 - 0.001 * i} for i in range(20)]
    monkeypatch.setattr(claims, "official_curves", lambda: {"x": curve})
    assert paper_noise(fake) == pytest.approx(0.0, abs=1e-9)
    curve[5]["val_loss"] += 0.05  # step 5000: inside the last 10 evaluations up to step 10000
    assert paper_noise(fake) > 0.01
    curve[5]["val_loss"] -= 0.05
    curve[15]["val_loss"] += 0.05  # after the published step: not counted
    assert paper_noise(fake) == pytest.approx(0.0, abs=1e-9)


def test_seeds_of_a_row_made_under_other_settings_are_refused(tmp_path):
    from lit_inheritune.errors import ConfigError
    from lit_inheritune.report import check_seeds_agree

    group = tmp_path / "g"
    identity = {"seed": 1, "data": {"seed": 1, "batch_size": 32}, "optim": {"lr": 1e-3},
                "init": {"kind": "inheritune", "reference": {"seed": 0}}}
    for seed, lr in ((1, 1e-3), (2, 1e-3), (3, 2e-3)):
        _result(group / f"scratch-L4-T500-s{seed}", 4.5)
        ident = {**identity, "seed": seed, "data": {**identity["data"], "seed": seed}, "optim": {"lr": lr}}
        (group / f"scratch-L4-T500-s{seed}" / "identity.json").write_text(json.dumps(ident))
    rows = collect(group)
    check_seeds_agree(rows[:2])  # seeds 1 and 2 differ in their seed only
    with pytest.raises(ConfigError, match=r"scratch-L4-T500 were made under different settings \(optim.lr: 0.001 "
                                          r"for seed 1, 0.002 for seed 3\)"):
        check_seeds_agree(rows)
    with pytest.raises(ConfigError):
        write_report(group, tmp_path / "out")

    # a stage built on an earlier stage of its own run (stacking's second stage) nests that stage's seed too;
    # the shared reference's seed is a setting like any other
    def stacked(seed, reference_seed=0):
        first = {**identity, "seed": seed, "data": {**identity["data"], "seed": seed}}
        return {**first, "init": {"kind": "stacking", "previous": {**first, "init": {
            "kind": "hybrid", "reference": {"seed": reference_seed}}}}}

    for seed, reference_seed in ((1, 0), (2, 0), (3, 7)):
        _result(group / f"stacking-L4-s{seed}" / "stage2-L4", 4.6)
        (group / f"stacking-L4-s{seed}" / "stage2-L4" / "identity.json").write_text(
            json.dumps(stacked(seed, reference_seed)))
    stacking = [r for r in collect(group) if r["label"] == "stacking-L4/stage2-L4"]
    check_seeds_agree(stacking[:2])
    with pytest.raises(ConfigError, match=r"init.previous.init.reference.seed: 0 for seed 1, 7 for seed 3"):
        check_seeds_agree(stacking)


def test_every_claim_a_suite_checks_holds_in_the_paper():
    """A check states a claim of the paper, so on the paper's side it must hold (or have no published numbers,
    as the Appendix B twin): a claim written the wrong way round shows here."""
    import yaml

    from lit_inheritune.paper import HERE
    from lit_inheritune.report import suite_tables

    for suite in yaml.safe_load((HERE / "suites.yaml").read_text()):
        for table in suite_tables(suite, []):
            for check in table["checks"]:
                if check["claim"].startswith("premise as run here") and table["id"] == "table1":
                    # the fallback, not the paper's claim: in the paper (Large) it does not hold
                    assert check["paper"] == "within the paper's noise"
                    continue
                assert check["paper"].split(" (")[0] in ("holds", "missing", "within the paper's noise"), (
                    suite, check["claim"])
                assert (check["paper"] == "missing") == (None in check["paper_values"]), (suite, check["claim"])


def test_lazy_transfer_checks_the_papers_whole_ordering_and_reports_what_it_finds(tmp_path):
    """v4 Table 4's ordering, blocks 4-7 < 0-3 < 8-11 < random, checked pair by pair, under both attention-scale
    policies. Runs ordered 0-3 < 4-7 < 8-11 < random fail the middle-blocks claim and hold the others."""
    from lit_inheritune.report import suite_markdown, suite_tables

    group = tmp_path / "cpu_lazy_transfer"
    _stage(group, "scratch-L12-T1500-s0", 5.0, n_layer=12, steps=1500)
    for label, loss in {"inheritune-b0-3-block-reinherit/round1-L4": 4.90,
                        "inheritune-b4-7-block-reinherit/round1-L4": 4.95,
                        "inheritune-b8-11-block-reinherit/round1-L4": 4.97,
                        "inheritune-b4-7-block-reinherit-scale_source/round1-L4": 4.85,
                        "inheritune-b8-11-block-reinherit-scale_source/round1-L4": 4.88,
                        "scratch-L4-T500": 5.3}.items():
        run, _, stage = label.partition("/")
        for seed, spread in ((1, -0.001), (2, 0.001)):  # two seeds: margins of 0.02 and more are far above noise
            _stage(group, f"{run}-s{seed}" + (f"/{stage}" if stage else ""), loss + spread)
    [table] = suite_tables("cpu_lazy_transfer", collect(group))
    checks = {c["claim"]: (c["ours"], c["paper"]) for c in table["checks"]}
    unknown = "holds (no official curve: noise unknown)"  # v4 Table 4 has no published curves
    assert checks == {
        "the potent middle blocks (4-7) transfer better than the first blocks (0-3)": ("fails", unknown),
        "the last blocks (lazy in the paper) transfer worse than blocks 0-3": ("holds", unknown),
        "the last blocks transfer worse than blocks 4-7": ("holds", unknown),
        "even the last blocks beat random init": ("holds", unknown),
        "source scale: the potent middle blocks (4-7) transfer better than the first blocks (0-3)": ("holds", unknown),
        "source scale: the last blocks transfer worse than blocks 0-3": ("fails", unknown),
        "source scale: the last blocks transfer worse than blocks 4-7": ("holds", unknown),
        "source scale: even the last blocks beat random init": ("holds", unknown),
    }
    md = suite_markdown(table)
    assert "| the potent middle blocks (4-7) transfer better than the first blocks (0-3) | fails |" in md
    [source_row] = [line for line in md.splitlines() if line.startswith("| from blocks 4-7, source scale |")]
    assert "`inheritune-b4-7-block-reinherit-scale_source/round1-L4` | 1,2 | 4.8500 +- 0.0014 |" in source_row
    assert source_row.endswith("| - | - |")  # no published counterpart: the paper ran the position scale


def test_a_round_algorithm_1_never_reached_says_why_instead_of_missing(tmp_path):
    from lit_inheritune.report import suite_markdown, suite_tables

    group = tmp_path / "cpu_medium_16l"
    _stage(group, "scratch-L8-T1500-s0", 4.60, n_layer=8, steps=1500)

    from lit_inheritune.config import compose
    from lit_inheritune.run import plan

    planned = {(seed, int(s.name[5])): s.identity for seed in (1, 2, 3)
               for s in plan(compose(["experiment=cpu_medium_16l", f"seed={seed}"])) if s.name.startswith("round")}

    def fit(seed, rounds):  # the growing run's record: each round's val loss and whether it matched
        run = f"inheritune-n4-block-reinherit-s{seed}"
        for i, (loss, _) in enumerate(rounds, start=1):
            if not (group / run / f"round{i}-L{3 + i}").exists():
                _stage(group, f"{run}/round{i}-L{3 + i}", loss, n_layer=3 + i)
                # the method that made a stage is read from its identity, as every run records it
                (group / run / f"round{i}-L{3 + i}" / "identity.json").write_text(json.dumps(planned[(seed, i)]))
        (group / run / "stages.json").write_text(json.dumps({"reference": {"last_checkpoint": "x"}, "stages": [
            {"stage": f"round{i}-L{3 + i}", "val_loss": loss, "matched": matched}
            for i, (loss, matched) in enumerate(rounds, start=1)]}))

    fit(1, [(4.55, True)])
    fit(2, [(4.58, True)])
    tables = {t["id"]: t for t in suite_tables("cpu_medium_16l", collect(group))}
    md = suite_markdown(tables["table1_growth"])
    assert "| Inheritune 5L, round 2, T | `inheritune-n4-block-reinherit/round2-L5` | - | not run: round1 matched " \
           "(seeds 1,2) |" in md
    assert "| growth: Inheritune 5L (round 2) beats round 1 | not run: round1 matched (seeds 1,2) |" in md
    # the scratch 5L rows are the bar for round 2 (suites.yaml's needed_by): not needed either, for the same reason
    assert "| scratch 5L, 2T | `scratch-L5-T1000` | - | not run: round1 matched (seeds 1,2) |" in md

    (group / "inheritune-n4-block-reinherit-s3" / "checkpoints").mkdir(parents=True)  # seed 3 still in round 1
    (group / "inheritune-n4-block-reinherit-scale_source-s1" / "checkpoints").mkdir(parents=True)  # another run
    for round1 in ([], [(4.70, False)]):  # still in round 1; fell short and round 2 has not ended yet
        if round1:
            fit(3, round1)
        tables = {t["id"]: t for t in suite_tables("cpu_medium_16l", collect(group))}
        md = suite_markdown(tables["table1_growth"])
        assert "| Inheritune 5L, round 2, T | `inheritune-n4-block-reinherit/round2-L5` | - | not run |" in md
        assert "| scratch 5L, T | `scratch-L5-T500` | - | not run |" in md  # no reason yet: some seed may need it

    fit(3, [(4.70, False), (4.59, True)])  # one seed that grew: round 2 has its result, the others' reason is moot
    tables = {t["id"]: t for t in suite_tables("cpu_medium_16l", collect(group))}
    growth = {r["name"]: r for r in tables["table1_growth"]["rows"]}
    assert growth["Inheritune 5L, round 2, T"]["ours"] == [4.59] and growth["Inheritune 5L, round 2, T"]["not_run"] is None


def test_a_committed_report_is_rejudged_from_its_tables_json_alone(tmp_path):
    """The runs behind experiments/results are not on every machine: rejudge rewrites each table's section of
    tables.md from tables.json's per-seed values under the current rules, and leaves the rest as written."""
    from lit_inheritune.report import suite_markdown, suite_tables
    from lit_inheritune.report.rejudge import rejudge

    group = tmp_path / "cpu_medium_16l"
    _stage(group, "scratch-L8-T1500-s0", 4.60, n_layer=8, steps=1500)
    for seed, (inh, scr_2t) in {1: (4.50, 4.55), 2: (4.54, 4.65), 3: (4.52, 4.60)}.items():
        _stage(group, f"inheritune-n4-block-reinherit-s{seed}/round1-L4", inh)
        _stage(group, f"scratch-L4-T1000-s{seed}", scr_2t, steps=1000)
    # an older report: the growth twin's table was added to the suite after it
    tables = [t for t in suite_tables("cpu_medium_16l", collect(group)) if t["id"] != "growth_k4"]
    old_rule = "A claim holds at our scale only when the margin exceeds the noise (2 x the pooled std over seeds)."
    sections = []
    for t in tables:  # written as an older report did: the old rule's text, no ours_seeds or only_seeds,
        for row in t["rows"]:  # table1_growth's rows
            del row["ours_seeds"], row["only_seeds"]
        if t["id"] == "table1_growth":
            t["rows"] = [r for r in t["rows"] if r["name"] != "scratch 4L, 2T"]
            t["checks"] = [c for c in t["checks"] if not c["claim"].startswith("premise")]
        sections.append(suite_markdown(t) + old_rule + f"\n\n![{t['id']} curves](x.png)\n")
    out = tmp_path / "report"
    out.mkdir()
    (out / "tables.md").write_text("# Paper tables: cpu_medium_16l\n\nan old description\n\n- command: `x`\n"
                                   "- commit: `abc`\n\nCompute: tokens trained ...\n\n"
                                   + "\n".join(sections) + "\n## Compute to match the reference\n\nkept\n")
    (out / "tables.json").write_text(json.dumps({"provenance": {"commit": "abc"}, "suite": "cpu_medium_16l",
                                                 "tables": tables}))
    md = rejudge(out, command="rejudge").read_text()
    assert md.count("- verdicts re-judged from this report's tables.json by `rejudge`") == 1
    assert "an old description" not in md and md.startswith("# Paper tables: cpu_medium_16l\n\nCPU twins on the")
    assert "- commit: `abc`" in md and "kept\n" in md and md.count("curves](x.png)") == len(tables)
    assert "Welch's t-test otherwise" in md and "2 x the pooled std" not in md
    # the seeds 1-3 of both rows were paired: 0.05, 0.11, 0.08 apart, t = 4.62 on 2 df
    assert "| Inheritune 4L at T beats scratch 4L at 2T | holds | +0.0800 | paired t-test by seed | 0.044 |" in md
    written = json.loads((out / "tables.json").read_text())
    assert written["rejudged"]["command"] == "rejudge" and written["provenance"] == {"commit": "abc"}
    growth = {c["claim"]: c for c in next(t for t in written["tables"] if t["id"] == "table1_growth")["checks"]}
    # scratch 4L at 2T is a row of table1_growth now; the report had it in table1 only, and it is found there
    premise = growth["premise as run here: the 3T reference beats half-depth scratch trained 2T"]
    assert premise["test"] == "one-sample t-test against the single run" and premise["ours"] == "tie"
    assert "| scratch 4L, 2T | `scratch-L4-T1000` | 1,2,3 | 4.6000 +- 0.0500 |" in md
    # the reference rows name only_seeds [0] now; the old rows of seed 0 alone are theirs
    assert md.count("| reference 8L, rand, 3T | `scratch-L8-T1500` | 0 | 4.6000 |") == 2
    assert "; the suite's tables added since (growth_k4) are not in this report: they need the runs" in md
    assert md == rejudge(out, command="rejudge").read_text()  # re-judging again changes nothing


def test_the_paper_noise_of_a_difference_adds_both_curves_noise(monkeypatch):
    """Two published numbers each with eval-to-eval noise 0.03 and 0.04 differ by noise 0.05 (in quadrature), so
    a 0.045 gap is within it, though larger than either curve's own noise."""
    from lit_inheritune.report import claims

    monkeypatch.setattr(claims, "paper_noise", lambda row: {"a": 0.03, "b": 0.04}[row])
    assert claims.pooled_paper_noise("a", "b") == pytest.approx(0.05)
    assert claims.paper_verdict(2.800, "<", 2.845, noise=claims.pooled_paper_noise("a", "b")) == \
        "within the paper's noise"


def test_seeds_that_cannot_pair_fall_back_to_welch():
    """A seed None (a given reference) or a repeated seed cannot pair values: Welch's test, not a crash or a
    pairing of the wrong values."""
    from lit_inheritune.report.stats import compare, welch

    lhs, rhs = [4.70, 4.72], [4.80, 4.83]
    assert compare(lhs, rhs, [1, 2], [1, None]) == welch(lhs, rhs)
    assert compare(lhs, rhs, [1, 1], [1, 1]) == welch(lhs, rhs)


def test_a_second_reference_seed_fills_its_own_rows_and_leaves_table_one_on_seed_zero(tmp_path):
    """suites.yaml's `only_seeds`: with references of seeds 0 and 1 in one group, Table 1's reference row stays
    seed 0's run; the reference-seeds table judges each Inheritune row against its own reference (one run: a
    one-sample test) and against both seeds (Welch), and its curves draw only the seeds a row names."""
    from lit_inheritune.report import suite_tables, write_suite

    group = tmp_path / "cpu_medium_16l"
    _stage(group, "scratch-L8-T1500-s0", 4.76, curve={750: 5.0, 1500: 4.76}, n_layer=8, steps=1500)
    _stage(group, "scratch-L8-T1500-s1", 4.70, curve={750: 4.9, 1500: 4.70}, n_layer=8, steps=1500)
    for seed, (ref0, ref1) in {1: (4.71, 4.66), 2: (4.72, 4.665), 3: (4.72, 4.67)}.items():
        _stage(group, f"inheritune-n4-block-reinherit-s{seed}/round1-L4", ref0)
        _stage(group, f"inheritune-n4-block-reinherit-ref1-s{seed}/round1-L4", ref1)
    runs = collect(group)
    table1 = {t["id"]: t for t in suite_tables("cpu_medium_16l", runs)}["table1"]
    reference = next(r for r in table1["rows"] if r["name"] == "reference 8L, rand, 3T")
    assert reference["ours"] == [4.76] and reference["seeds"] == [0]

    [table] = suite_tables("cpu_medium_16l_reference_seeds", runs)
    rows = {r["name"]: r for r in table["rows"]}
    assert rows["reference 8L, seed 0"]["ours"] == [4.76] and rows["reference 8L, seed 1"]["ours"] == [4.70]
    assert sorted(rows["reference 8L, seeds 0 and 1"]["ours"]) == [4.70, 4.76]
    assert rows["Inheritune 4L from reference seed 1"]["ours_seeds"] == [1, 2, 3]
    checks = {c["claim"]: c for c in table["checks"]}
    own = checks["Inheritune 4L matches its reference (seed 1)"]
    assert own["test"] == "one-sample t-test against the single run" and own["ours"] == "holds"
    assert own["margin"] == pytest.approx(4.70 - (4.66 + 4.665 + 4.67) / 3)
    both = checks["Inheritune 4L from reference seed 0 matches the reference over both seeds"]
    assert both["test"] == "Welch's t-test" and both["ours"] == "tie"  # 4.717 against 4.70 and 4.76
    assert checks["Inheritune 4L from reference seed 0 beats it from seed 1 (a tie: the reference's seed does not "
                  "move it)"]["test"] == "paired t-test by seed"

    import matplotlib.pyplot as plt

    drawn = {}
    original = plt.Axes.plot

    def spy(ax, xs, ys, *args, label=None, **kwargs):
        drawn[label] = list(ys)
        return original(ax, xs, ys, *args, label=label, **kwargs)

    plt.Axes.plot = spy
    try:
        write_suite(group, tmp_path / "out", "cpu_medium_16l_reference_seeds")
    finally:
        plt.Axes.plot = original
    assert drawn["reference 8L, seed 1 (1 seed)"] == [4.9, 4.70]
    assert drawn["reference 8L, seeds 0 and 1 (2 seeds)"] == pytest.approx([4.95, 4.73])
