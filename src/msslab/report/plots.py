"""Figures of a comparison: bar charts per source and variant, per-track box plots,
and the paper's Fig. 2 (SDR) and Fig. 3 (SIR) for "Source 1" and "Source 2".

Every function takes the frames built by :mod:`msslab.report.stats` /
:func:`msslab.report.runs.track_scores` and writes one PNG; nothing is shown.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window (CI, SLURM, ssh)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .stats import ordered  # noqa: E402

_METADATA = {"Software": "msslab-compare"}
_DPI = 120


def _wrap(name: str, width: int = 28) -> str:
    """Break a variant name into lines at spaces or after "=", keeping words whole."""
    lines = [""]
    for piece in re.split(r"(?<=[= ])", name):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", metadata=_METADATA)
    plt.close(fig)
    return path


def _grouped_bars(ax, groups, variants, height, low=None, high=None, legend=None, values=False):
    """Bars at x = group, one bar per variant; height/low/high: (variant, group) -> dB;
    legend: variant -> legend text; values: write each bar's height on it."""
    n = max(len(variants), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    for i, variant in enumerate(variants):
        h = np.array([height(variant, g) for g in groups], dtype=float)
        yerr = None
        if low is not None:
            lo = np.array([low(variant, g) for g in groups], dtype=float)
            hi = np.array([high(variant, g) for g in groups], dtype=float)
            yerr = np.nan_to_num(np.vstack([h - lo, hi - h]))
        bars = ax.bar(
            x + (i - (n - 1) / 2) * width,
            np.nan_to_num(h),
            width,
            yerr=yerr,
            capsize=3,
            label=_wrap((legend or {}).get(variant, variant), 60),
        )
        if values:
            ax.bar_label(bars, labels=[f"{v:.2f}" if np.isfinite(v) else "n/a" for v in h], fontsize=8, padding=2)
    ax.set_xticks(x, groups)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)


def bar_chart(summary: pd.DataFrame, sources: Sequence[str], metric: str, path: str | Path) -> Path:
    """Median ``metric`` per source (x) and variant (bars); whiskers span the
    25th-75th percentile over tracks x seeds. Variants without completed runs
    are drawn as empty slots and marked "(failed)" in the legend."""
    variants = list(summary["variant"])
    table = summary.set_index("variant")
    legend = {v: f"{v} (failed)" for v in summary.loc[summary["completed"] == 0, "variant"]}
    get = lambda stat: lambda variant, source: table.at[variant, f"{source}_{metric}_{stat}"]  # noqa: E731
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + len(sources) * (0.5 + 0.45 * len(variants))), 4.2))
    _grouped_bars(ax, list(sources), variants, get("median"), get("q25"), get("q75"), legend=legend)
    ax.set_ylabel(f"{metric} (dB)")
    ax.set_title(f"{metric} per source: median over tracks and seeds, whiskers 25th-75th percentile")
    ax.title.set_fontsize(9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, frameon=False)
    return _save(fig, Path(path))


def box_plots(scores: pd.DataFrame, variants: Sequence[str], metric: str, path: str | Path) -> Path:
    """One panel per source; one box per variant over its per-track values
    (tracks x seeds), with the values drawn as dots."""
    mine = scores[scores["metric"] == metric]
    sources = ordered(mine["source"])
    fig, axes = plt.subplots(
        1,
        max(len(sources), 1),
        figsize=(max(4.0, 0.9 * len(variants) + 1.5) * max(len(sources), 1), 4.5),
        squeeze=False,
        sharey=True,
    )
    for ax, source in zip(axes[0], sources):
        data = [
            mine[(mine["source"] == source) & (mine["variant"] == v)]["value"].dropna().to_numpy() for v in variants
        ]
        positions = np.arange(1, len(variants) + 1)
        filled = [i for i, d in enumerate(data) if len(d)]
        if filled:
            ax.boxplot([data[i] for i in filled], positions=positions[filled], widths=0.6, showfliers=False)
        jitter = np.random.default_rng(0)
        for i in filled:
            ax.plot(
                positions[i] + jitter.uniform(-0.15, 0.15, len(data[i])),
                data[i],
                "o",
                markersize=3,
                alpha=0.5,
                color="tab:blue",
            )
        labels = [_wrap(v, 18) + ("" if len(d) else "\n(no results)") for v, d in zip(variants, data)]
        ax.set_xticks(positions, labels, rotation=45, ha="right", fontsize=8)
        ax.set_xlim(0.4, len(variants) + 0.6)
        ax.set_title(source)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} per track (dB)")
    fig.suptitle(f"{metric} per track and seed", fontsize=10)
    return _save(fig, Path(path))


def paper_figure(
    summary: pd.DataFrame, sources: Sequence[str], metric: str, title: str, path: str | Path
) -> Path:
    """The paper's bar chart: ``metric`` for "Source 1", "Source 2", ... (= ``sources``
    in order), one bar per variant, labelled with its median (dB)."""
    done = summary[summary["completed"] > 0]
    variants = list(done["variant"])
    table = done.set_index("variant")
    groups = [f"Source {i + 1}\n({s})" for i, s in enumerate(sources)]
    by_group = dict(zip(groups, sources))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + len(sources) * (0.6 + 0.5 * len(variants))), 4.2))
    _grouped_bars(
        ax, groups, variants, lambda v, g: table.at[v, f"{by_group[g]}_{metric}_median"], values=True
    )
    ax.set_ylabel(f"{metric} (dB)")
    ax.set_title(title)
    if len(variants) > 1:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    ax.margins(y=0.15)
    return _save(fig, Path(path))


def condition_chart(table: pd.DataFrame, variants: Sequence[str], metric: str, path: str | Path) -> Path:
    """One panel per source: mean ``metric`` over seeds per test condition (x) and variant
    (bars), whiskers the confidence interval over seeds (``table``: :func:`msslab.report.conditions.seed_table`)."""
    mine = table[table["metric"] == metric].set_index(["variant", "condition", "source"])
    sources, conditions = ordered(table["source"]), ordered(table["condition"])
    fig, axes = plt.subplots(len(sources), 1, figsize=(max(6.0, 1.5 + len(conditions) * (0.4 + 0.3 * len(variants))),
                                                      3.2 * len(sources) + 0.8), squeeze=False, sharex=True)
    for ax, source in zip(axes[:, 0], sources):
        get = lambda column: lambda variant, condition: (  # noqa: E731
            mine[column].get((variant, condition, source), np.nan))
        _grouped_bars(ax, conditions, list(variants), get("mean"), get("ci_low"), get("ci_high"))
        ax.set_ylabel(f"{source}\n{metric} (dB)")
    axes[0, 0].set_title(f"{metric} per test condition: mean over seeds of the median over tracks, "
                         "whiskers 95% CI over seeds", fontsize=9)
    axes[-1, 0].legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, frameon=False)
    return _save(fig, Path(path))
