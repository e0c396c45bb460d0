"""A group's finished runs as tables (`python -m lit_inheritune.report`, __main__.py): runs.py collects the runs
(result.json, identities, CSV curves) and writes runs.md; claims.py sets them beside the paper's tables and
claims (paper/suites.yaml) and writes tables.md; plots.py draws the figures. The names below are the package's."""

from lit_inheritune.report.claims import (
    COMPUTE_NOTE,
    TEST_NOTE,
    claim_verdict,
    growth_cost,
    judge_checks,
    not_run_reason,
    paper_noise,
    paper_verdict,
    row_compute,
    suite_markdown,
    suite_tables,
    write_suite,
)
from lit_inheritune.report.plots import plot_compute, plot_curves, plot_growth
from lit_inheritune.report.runs import (
    check_seeds_agree,
    collect,
    last_word_acc,
    markdown_table,
    summarize,
    val_curve,
    write_report,
)

__all__ = [
    "COMPUTE_NOTE", "TEST_NOTE", "check_seeds_agree", "claim_verdict", "collect", "growth_cost", "judge_checks",
    "last_word_acc",
    "markdown_table", "paper_noise", "paper_verdict", "plot_compute", "plot_curves", "plot_growth", "not_run_reason",
    "row_compute", "suite_markdown", "suite_tables", "summarize", "val_curve", "write_report", "write_suite",
]
