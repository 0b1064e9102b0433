"""Per-variant summaries and paired tests against a baseline variant.

All values are in dB. A variant's median pools the per-track medians of all its
completed seeds (museval: median over 1 s frames per track, then over tracks;
here seeds count as more tracks). The spread is given twice: the interquartile
range over tracks x seeds, and the standard deviation of the per-seed medians.
"""

from __future__ import annotations

import inspect
import math
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from .runs import CompareError, parse_overrides

TESTS = ("wilcoxon", "bootstrap")


def ordered(values: Sequence) -> list:
    """Unique values in order of first appearance."""
    return list(dict.fromkeys(values))


# ---------------------------------------------------------------------------
# summary


def summarize(runs: pd.DataFrame, scores: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per variant (in order of first appearance).

    Columns: variant, status (completed / partial / failed), runs, completed,
    failed, seeds, train_seconds (median), failures ("run: error; ..."), then
    for each source and metric ``<source>_<metric>_<stat>`` with stat in
    median, q25, q75, iqr (over tracks x seeds), seed_std (std of per-seed
    medians, ddof=1; empty with one seed), n (number of track x seed values).
    """
    sources = ordered(scores["source"]) if len(scores) else []
    rows = []
    for variant in ordered(runs["variant"]):
        group = runs[runs["variant"] == variant]
        done = group[group["status"] == "completed"]
        not_done = group[group["status"] != "completed"]
        row = {
            "variant": variant,
            "status": "completed" if not len(not_done) else ("failed" if not len(done) else "partial"),
            "runs": len(group),
            "completed": len(done),
            "failed": len(not_done),
            "seeds": " ".join(ordered(s for s in done["seed"] if s)),
            "train_seconds": float(done["train_seconds"].median()) if len(done) else np.nan,
            "failures": "; ".join(f"{r.run}: {r.status}: {r.error}".rstrip(": ") for r in not_done.itertuples()),
        }
        mine = scores[scores["variant"] == variant]
        for source in sources:
            for metric in metrics:
                cell = mine[(mine["source"] == source) & (mine["metric"] == metric)]
                values = cell["value"].to_numpy(dtype=float)
                values = values[~np.isnan(values)]
                prefix = f"{source}_{metric}_"
                if len(values):
                    q25, median, q75 = np.percentile(values, [25, 50, 75])
                    per_seed = cell.groupby("run")["value"].median().dropna()
                    seed_std = float(per_seed.std(ddof=1)) if len(per_seed) > 1 else np.nan
                else:
                    q25 = median = q75 = seed_std = np.nan
                row |= {
                    prefix + "median": float(median),
                    prefix + "q25": float(q25),
                    prefix + "q75": float(q75),
                    prefix + "iqr": float(q75 - q25),
                    prefix + "seed_std": seed_std,
                    prefix + "n": len(values),
                }
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# paired test


@dataclass
class PairedResult:
    """Outcome of :func:`paired_test`; differences are ``a - b`` in dB."""

    method: str
    n: int  # pairs the test used: NaN pairs dropped; wilcoxon also drops zero differences
    median_diff: float
    mean_diff: float
    p_value: float  # wilcoxon: two-sided p; bootstrap: NaN
    ci_low: float  # bootstrap: confidence interval of the median difference; wilcoxon: NaN
    ci_high: float
    significant: bool
    verdict: str  # "significant", "not significant", "too few pairs" (bootstrap), or "no pairs"

    def as_dict(self) -> dict:
        return asdict(self)


def min_pairs(alpha: float) -> int:
    """Fewest pairs at which unanimous signs are not a coin's: ``2 ** (1 - n) < alpha`` (6 at 0.05).

    Below it, even differences that all share a sign are what chance gives with probability
    ``alpha`` or more (two-sided sign test), yet a percentile bootstrap interval of their
    median excludes 0 whenever they share one (down to a single pair).
    """
    return int(math.floor(1 - math.log2(alpha))) + 1


def _bootstrap_kwargs(seed: int) -> dict:
    # scipy renamed random_state -> rng in 1.15
    params = inspect.signature(stats.bootstrap).parameters
    return {"rng": seed} if "rng" in params else {"random_state": seed}


def paired_test(
    a: Sequence[float],
    b: Sequence[float],
    method: str = "wilcoxon",
    alpha: float = 0.05,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedResult:
    """Is ``a`` different from ``b``, pair by pair? (two-sided)

    ``a``, ``b``: paired scores in dB (same track and seed at each position).
    ``method``: ``"wilcoxon"`` (signed-rank test; significant when p < alpha)
    or ``"bootstrap"`` (percentile confidence interval of the median paired
    difference at level 1 - alpha, resampling pairs; significant when it
    excludes 0; seeded, so reports are reproducible). The bootstrap needs
    :func:`min_pairs` pairs (6 at alpha 0.05); with fewer its interval is still given,
    the verdict is ``too few pairs`` and never significant. Identical inputs give
    p = 1 / a zero-width interval at 0, never an exception.
    """
    if method not in TESTS:
        raise CompareError(f"unknown test {method!r}: choose one of {', '.join(TESTS)}")
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_test needs equally long inputs, got {a.shape} and {b.shape}")
    diff = a - b
    diff = diff[~np.isnan(diff)]
    n = len(diff)
    if n == 0:
        return PairedResult(method, 0, np.nan, np.nan, np.nan, np.nan, np.nan, False, "no pairs")
    median_diff, mean_diff = float(np.median(diff)), float(np.mean(diff))
    p_value = ci_low = ci_high = np.nan
    if method == "wilcoxon":
        n = int(np.count_nonzero(diff))  # the signed-rank test drops ties at zero (zero_method="wilcox")
        if n == 0:
            p_value = 1.0  # identical: scipy warns or raises here depending on version
        else:
            p_value = float(stats.wilcoxon(diff, alternative="two-sided").pvalue)
        significant = bool(p_value < alpha)
    else:
        if np.all(diff == diff[0]):
            ci_low = ci_high = float(diff[0])  # no variation to resample
        else:
            ci = stats.bootstrap(
                (diff,),
                np.median,
                confidence_level=1 - alpha,
                n_resamples=n_resamples,
                method="percentile",
                **_bootstrap_kwargs(seed),
            ).confidence_interval
            ci_low, ci_high = float(ci.low), float(ci.high)
        significant = bool(ci_low > 0 or ci_high < 0)
        if n < min_pairs(alpha):
            return PairedResult(method, n, median_diff, mean_diff, p_value, ci_low, ci_high, False, "too few pairs")
    return PairedResult(
        method,
        n,
        median_diff,
        mean_diff,
        p_value,
        ci_low,
        ci_high,
        significant,
        "significant" if significant else "not significant",
    )


# ---------------------------------------------------------------------------
# baseline


def select_baseline(runs: pd.DataFrame, spec: str | Sequence[str] | None) -> str:
    """The variant name that ``spec`` selects.

    ``spec``: a variant name as shown in the report, or overrides that select
    exactly one variant (``"augmentation=[]"``, ``"model=lstm augmentation=[]"``,
    or a list of them). ``None``: the first variant with a completed run.
    """
    variants = ordered(runs["variant"])
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        done = ordered(runs.loc[runs["status"] == "completed", "variant"])
        return done[0] if done else variants[0]
    if not isinstance(spec, str):
        spec = " ".join(str(s) for s in spec)
    if spec in variants:
        return spec
    try:
        wanted = parse_overrides(shlex.split(spec))
    except ValueError as err:
        raise CompareError(f"cannot read baseline={spec!r}: {err}") from err
    matches = ordered(
        row.variant
        for row in runs.itertuples()
        if all(row.settings.get(k) == v for k, v in wanted.items())
    )
    listing = "\n  ".join(variants)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CompareError(f"baseline={spec!r} matches no variant; the variants are:\n  {listing}")
    raise CompareError(
        f"baseline={spec!r} matches {len(matches)} variants ({' | '.join(matches)}); "
        f"add keys to pick one, or give a variant name:\n  {listing}"
    )


def _holm(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid])]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def compare_to_baseline(
    scores: pd.DataFrame,
    baseline: str,
    metrics: Sequence[str],
    method: str = "wilcoxon",
    alpha: float = 0.05,
    correction: str = "none",
    splits: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """Paired test of every other variant against ``baseline``, per source and metric.

    Pairs are (track, seed) found in both variants; when the two share no seed,
    per-track means over seeds are paired instead (``paired_on`` says which).
    ``splits``: variant -> the songs it scored (``test``, ``valid``); a variant scored on
    other songs than the baseline is not paired with it (verdict ``other split``).
    ``correction``: ``"none"`` or ``"holm"`` (Holm-Bonferroni over all rows;
    the verdict then uses the adjusted p-value). Columns: variant, source,
    metric, baseline_median, variant_median, paired_on, then
    :class:`PairedResult`'s fields, p_holm, better (``a`` above ``b``).
    """
    if correction not in ("none", "holm"):
        raise CompareError(f"unknown correction {correction!r}: choose none or holm")
    columns = ["variant", "source", "metric", "baseline_median", "variant_median", "paired_on"]
    columns += list(PairedResult.__dataclass_fields__) + ["p_holm", "better"]
    rows = []
    base = scores[scores["variant"] == baseline]
    for variant in ordered(scores["variant"]):
        if variant == baseline:
            continue
        mine = scores[scores["variant"] == variant]
        other_split = splits is not None and splits.get(variant) != splits.get(baseline)
        for source in ordered(scores["source"]):
            for metric in metrics:
                pick = lambda f: f[(f["source"] == source) & (f["metric"] == metric)]  # noqa: E731
                x, y = pick(mine), pick(base)
                if not len(x) or not len(y):
                    continue
                if other_split:  # other songs: a track name may repeat, the song does not
                    rows.append({"variant": variant, "source": source, "metric": metric,
                                 "baseline_median": float(y["value"].median()),
                                 "variant_median": float(x["value"].median()), "paired_on": "",
                                 "method": method, "n": 0, "significant": False,
                                 "verdict": f"other split ({splits.get(variant)} vs {splits.get(baseline)})"})
                    continue
                keys = ["track", "seed"]
                if not set(x["seed"].astype(str)) & set(y["seed"].astype(str)):
                    keys = ["track"]
                xs = x.assign(seed=x["seed"].astype(str)).groupby(keys)["value"].mean()
                ys = y.assign(seed=y["seed"].astype(str)).groupby(keys)["value"].mean()
                paired = pd.concat([xs.rename("a"), ys.rename("b")], axis=1, join="inner")
                result = paired_test(paired["a"], paired["b"], method=method, alpha=alpha)
                rows.append(
                    {
                        "variant": variant,
                        "source": source,
                        "metric": metric,
                        "baseline_median": float(y["value"].median()),  # pandas: NaN-aware, no warning
                        "variant_median": float(x["value"].median()),
                        "paired_on": "track+seed" if len(keys) == 2 else "track (seed mean)",
                    }
                    | result.as_dict()
                )
    table = pd.DataFrame(rows, columns=columns)
    if len(table):
        table["p_holm"] = _holm(table["p_value"].to_numpy())
        if correction == "holm" and method == "wilcoxon":
            table["significant"] = table["p_holm"] < alpha
            table["verdict"] = np.where(
                table["p_value"].isna(), table["verdict"], np.where(table["significant"], "significant", "not significant")
            )
        table["better"] = table["median_diff"] > 0
    return table
