"""Scores per test condition: seed means with confidence intervals, paired tests, robustness.

Works on the long frame of :func:`msslab.report.runs.condition_scores` (columns variant,
seed, run, condition, track, source, metric, value in dB). A run's score under a
condition is its median over tracks (museval's convention); a variant's score is the
mean of those per-seed medians, with a Student-t confidence interval over seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

from .stats import compare_to_baseline, ordered

CLEAN = "clean"


def _mean_ci(values: np.ndarray, level: float) -> tuple[float, float, float]:
    """Mean and its Student-t confidence interval (NaN bounds with fewer than two values)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return np.nan, np.nan, np.nan
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * stats.sem(values))
    return mean, mean - half, mean + half


def per_seed(scores: pd.DataFrame) -> pd.DataFrame:
    """Median over tracks for each (variant, condition, source, metric, run, seed)."""
    keys = ["variant", "condition", "source", "metric", "run", "seed"]
    return scores.groupby(keys, sort=False)["value"].median().reset_index()


def seed_table(scores: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per variant, condition, source and metric.

    Columns: seeds (runs averaged), mean (mean over seeds of the per-seed median over
    tracks, dB), ci_low / ci_high (``level`` Student-t interval of that mean; NaN with one
    seed), median (over tracks x seeds, dB).
    """
    seeds = per_seed(scores)
    rows = []
    for (variant, condition, source, metric), group in seeds.groupby(
            ["variant", "condition", "source", "metric"], sort=False):
        mean, low, high = _mean_ci(group["value"].to_numpy(dtype=float), level)
        pooled = scores[(scores["variant"] == variant) & (scores["condition"] == condition)
                        & (scores["source"] == source) & (scores["metric"] == metric)]["value"]
        rows.append({"variant": variant, "condition": condition, "source": source, "metric": metric,
                     "seeds": int(group["value"].notna().sum()), "mean": mean, "ci_low": low, "ci_high": high,
                     "median": float(pooled.median())})
    return pd.DataFrame(rows, columns=["variant", "condition", "source", "metric", "seeds", "mean", "ci_low",
                                       "ci_high", "median"])


def robustness(scores: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Drop from clean per variant, condition, source and metric (dB; positive = worse than clean).

    The drop is taken per run (clean minus condition, each a median over tracks), so
    the interval over seeds is a paired one. Columns: variant, condition, source,
    metric, seeds, drop, ci_low, ci_high.
    """
    seeds = per_seed(scores)
    clean = seeds[seeds["condition"] == CLEAN].set_index(["variant", "source", "metric", "run"])["value"]
    rows = []
    for (variant, condition, source, metric), group in seeds[seeds["condition"] != CLEAN].groupby(
            ["variant", "condition", "source", "metric"], sort=False):
        base = clean.reindex([(variant, source, metric, run) for run in group["run"]]).to_numpy(dtype=float)
        drop, low, high = _mean_ci(base - group["value"].to_numpy(dtype=float), level)
        rows.append({"variant": variant, "condition": condition, "source": source, "metric": metric,
                     "seeds": int(np.sum(~np.isnan(base - group["value"].to_numpy(dtype=float)))),
                     "drop": drop, "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows, columns=["variant", "condition", "source", "metric", "seeds", "drop", "ci_low",
                                       "ci_high"])


def condition_tests(scores: pd.DataFrame, baseline: str, metrics: Sequence[str], **options) -> pd.DataFrame:
    """:func:`~msslab.report.stats.compare_to_baseline` under each condition (pairs: track and seed).

    A ``condition`` column first; ``options`` go to ``compare_to_baseline`` (method,
    alpha, correction; Holm's correction then runs over the rows of each condition).
    """
    tables = []
    for condition in ordered(scores["condition"]):
        table = compare_to_baseline(scores[scores["condition"] == condition], baseline, metrics, **options)
        tables.append(table.assign(condition=condition))
    if not tables:
        return pd.DataFrame()
    table = pd.concat(tables, ignore_index=True)
    return table[["condition"] + [c for c in table.columns if c != "condition"]]
