"""Comparison reports over many runs: tables, figures and paired tests (``msslab-compare``).

Read runs with :func:`load_runs`, or do everything with :func:`compare_runs`.
"""

from .build import Report, compare_runs, paper_table
from .runs import CompareError, load_runs, track_scores
from .stats import PairedResult, compare_to_baseline, paired_test, select_baseline, summarize

__all__ = [
    "CompareError",
    "PairedResult",
    "Report",
    "compare_runs",
    "compare_to_baseline",
    "load_runs",
    "paired_test",
    "paper_table",
    "select_baseline",
    "summarize",
    "track_scores",
]
