"""Runs in, report out: the whole of ``msslab-compare`` as one Python function."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import plots
from .conditions import CLEAN, condition_tests, robustness, seed_table
from .runs import CompareError, condition_scores, load_runs, track_scores
from .stats import TESTS, compare_to_baseline, min_pairs, ordered, select_baseline, summarize
from .write import claim, fmt, md_table, record

log = logging.getLogger(__name__)

MARKDOWN = "comparison.md"
CSV = "comparison.csv"
RUNS_CSV = "comparison_runs.csv"
TESTS_CSV = "comparison_tests.csv"
PAPER_TABLE = "paper_table.md"
PAPER_FIGURES = {  # metric -> (file, title), as numbered in the paper
    "SDR": ("paper_fig2_sdr.png", "Fig. 2: SDR per source"),
    "SIR": ("paper_fig3_sir.png", "Fig. 3: SIR per source"),
}


CONDITIONS_CSV = "comparison_conditions.csv"
CONDITION_TESTS_CSV = "comparison_condition_tests.csv"
ROBUSTNESS_CSV = "comparison_robustness.csv"


def conditions_png(metric: str) -> str:
    return f"comparison_conditions_{metric}.png"


def bars_png(metric: str) -> str:
    return f"comparison_{metric}_bars.png"


def boxes_png(metric: str) -> str:
    return f"comparison_{metric}_boxes.png"


@dataclass
class Report:
    """What :func:`compare_runs` computed and wrote (frames as described in :mod:`msslab.report.stats`)."""

    runs: pd.DataFrame  # one row per run
    scores: pd.DataFrame  # per-track scores of completed runs (long)
    summary: pd.DataFrame  # one row per variant (= comparison.csv)
    tests: pd.DataFrame  # paired tests against the baseline (= comparison_tests.csv)
    baseline: str | None
    output: Path
    conditions: pd.DataFrame  # seed means and CIs per test condition (= comparison_conditions.csv)
    condition_tests: pd.DataFrame  # paired tests per condition (= comparison_condition_tests.csv)
    robustness: pd.DataFrame  # drop from clean per condition (= comparison_robustness.csv)
    files: dict[str, Path] = field(default_factory=dict)  # role -> written file


def compare_runs(
    dirs: str | Path | Sequence[str | Path],
    output: str | Path | None = None,
    baseline: str | Sequence[str] | None = None,
    metrics: Sequence[str] = ("SDR", "SIR", "SAR", "ISR"),
    plot_metrics: Sequence[str] = ("SDR", "SIR"),
    test: str = "wilcoxon",
    alpha: float = 0.05,
    correction: str = "none",
    paper_figures: bool = False,
    paper_sources: Sequence[str] = ("vocals", "accompaniment"),
    pool_over: Sequence[str] = ("seed",),
    progress: bool | None = None,
) -> Report:
    """Read the runs under ``dirs`` and write the comparison report into ``output``.

    ``dirs``: sweep or run directories (searched recursively for results.json).
    ``output``: report directory (default: the first of ``dirs``); files there
    are overwritten only if compare wrote them. ``baseline``: variant name or
    overrides selecting one variant (default: the first variant that
    completed). ``metrics``: columns of the tables; ``plot_metrics``: metrics
    that get bar charts and box plots. ``test``: ``wilcoxon`` or ``bootstrap``,
    at level ``alpha``; ``correction``: ``none`` or ``holm`` (wilcoxon only).
    ``paper_figures``: also draw the paper's Fig. 2 (SDR) and Fig. 3 (SIR) for
    ``paper_sources`` as Source 1, Source 2, ... plus ``paper_table.md``.
    ``pool_over``: keys whose values are replicates of one variant (seeds).
    Returns the :class:`Report`; raises :class:`CompareError` on bad input.

    The steps, in order: read runs -> variants -> tests -> output files -> tables
    -> figures -> markdown.
    """
    check_options(test, alpha, correction)
    dirs = [dirs] if isinstance(dirs, (str, Path)) else list(dirs)
    metrics, plot_metrics, paper_sources = list(metrics), list(plot_metrics), list(paper_sources)
    wanted = ordered(metrics + plot_metrics + (["SDR", "SIR"] if paper_figures else []))

    runs, scores = read_runs(dirs, wanted, pool_over, progress)
    paper_figures = paper_figures and len(scores) > 0  # nothing to draw without scores
    if paper_figures:
        check_paper_sources(scores, paper_sources)
    summary, base = variants(runs, scores, wanted, baseline)
    tests, conditions, ctests, drops = paired_tests(runs, scores, base, wanted, metrics, test, alpha, correction)

    out = output_dir(output, dirs)
    names = file_names(plot_metrics if len(scores) else [], paper_figures)
    claim(out, names.values())
    report = Report(runs, scores, summary, tests, base, out, conditions, ctests, drops)
    files = {role: out / name for role, name in names.items()}
    write_tables(report, files)
    draw_figures(report, files, plot_metrics if len(scores) else [], paper_sources if paper_figures else None)
    paper_md = paper_table(summary, paper_sources) if paper_figures else ""
    if paper_figures:
        files["paper_table"].write_text("<!-- written by msslab-compare; regenerate freely -->\n" + paper_md + "\n")
    text = markdown(report, dirs, metrics, plot_metrics, test, alpha, correction, files, paper_md)
    files["markdown"].write_text(text + conditions_markdown(report, plot_metrics, test, alpha, files))
    record(out, names.values())
    report.files = files
    return report


# ---------------------------------------------------------------------------
# the steps of compare_runs


def check_options(test: str, alpha: float, correction: str) -> None:
    """Raise :class:`CompareError` on an unknown test, an ``alpha`` outside (0, 1) or Holm without Wilcoxon."""
    if test not in TESTS:
        raise CompareError(f"unknown test={test!r}: choose one of {', '.join(TESTS)}")
    if not 0 < alpha < 1:
        raise CompareError(f"alpha must be between 0 and 1, got {alpha}")
    if correction == "holm" and test != "wilcoxon":
        raise CompareError("correction=holm adjusts p-values, so it needs test=wilcoxon")


def read_runs(dirs: list[str | Path], wanted: list[str], pool_over: Sequence[str],
              progress: bool | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Directories in, ``(runs, scores)`` out: one row per run, and the per-track ``wanted`` metrics (dB)
    of the completed runs (long). Logs each failed run; :class:`CompareError` if a wanted metric is
    in no completed run's results."""
    runs = load_runs(dirs, pool_over=pool_over, progress=progress)
    scores = track_scores(runs, wanted)
    done = runs["status"] == "completed"
    log.info("%d runs in %d variants: %d completed", len(runs), runs["variant"].nunique(), int(done.sum()))
    for row in runs[~done].itertuples():
        log.warning("run %s (%s) %s: %s", row.run, row.variant, row.status, row.error or "no error message")
    if done.any():
        available = ordered(m for r in runs[done].itertuples() for t in (r.tracks or {"*": r.sources}).values()
                            for s in t.values() for m in s)
        missing = [m for m in wanted if m not in available]
        if missing:
            raise CompareError(f"metric(s) {', '.join(missing)} not in any results; available: {', '.join(available)}")
    return runs, scores


def check_paper_sources(scores: pd.DataFrame, paper_sources: list[str]) -> None:
    """:class:`CompareError` naming the sources of ``paper_sources`` that no run scored."""
    sources = ordered(scores["source"])
    absent = [s for s in paper_sources if s not in sources]
    if absent:
        raise CompareError(
            f"paper_sources {absent} not in the results; available sources: {', '.join(sources)} "
            f"(choose with paper_sources=[...])"
        )


def variants(runs: pd.DataFrame, scores: pd.DataFrame, wanted: list[str],
             baseline: str | Sequence[str] | None) -> tuple[pd.DataFrame, str | None]:
    """Runs and scores in, ``(summary, baseline)`` out: one row per variant (``comparison.csv``) and
    the name of the baseline variant (None when there are no runs)."""
    summary = summarize(runs, scores, wanted)
    return summary, select_baseline(runs, baseline) if len(runs) else None


def paired_tests(runs: pd.DataFrame, scores: pd.DataFrame, base: str | None, wanted: list[str], metrics: list[str],
                 test: str, alpha: float, correction: str):
    """Each variant against ``base``, paired on (track, seed): ``(tests, conditions, condition tests,
    robustness)`` frames (the clean condition only for runs evaluated without test conditions):
    tests on the clean scores, seed means with 95% intervals per condition, tests per condition,
    and the drops from clean."""
    splits = dict(zip(runs["variant"], runs["split"]))  # evaluations on other songs are not paired with them
    tests = compare_to_baseline(scores, base, metrics, method=test, alpha=alpha, correction=correction, splits=splits)
    by_condition = condition_scores(runs, wanted)
    level = 0.95
    conditions = seed_table(by_condition, level)
    ctests = condition_tests(by_condition, base, metrics, method=test, alpha=alpha, correction=correction,
                             splits=splits) \
        if base is not None and len(by_condition) else pd.DataFrame()
    return tests, conditions, ctests, robustness(by_condition, level)


def output_dir(output: str | Path | None, dirs: list[str | Path]) -> Path:
    """The report folder: ``output``, else the first of ``dirs`` (its folder when that is a results.json)."""
    out = Path(output) if output is not None else Path(dirs[0])
    return out.parent if out.is_file() else out


def file_names(plot_metrics: Sequence[str], paper_figures: bool) -> dict[str, str]:
    """Role -> file name of everything the report writes: the tables always, the charts of
    ``plot_metrics``, and the paper's figures and table with ``paper_figures``."""
    names = {"markdown": MARKDOWN, "csv": CSV, "runs_csv": RUNS_CSV, "tests_csv": TESTS_CSV,
             "conditions_csv": CONDITIONS_CSV, "condition_tests_csv": CONDITION_TESTS_CSV,
             "robustness_csv": ROBUSTNESS_CSV}
    for metric in plot_metrics:
        names[f"bars_{metric}"] = bars_png(metric)
        names[f"boxes_{metric}"] = boxes_png(metric)
        names[f"conditions_{metric}"] = conditions_png(metric)
    if paper_figures:
        names |= {f"paper_{m}": png for m, (png, _) in PAPER_FIGURES.items()} | {"paper_table": PAPER_TABLE}
    return names


def write_tables(report: Report, files: dict[str, Path]) -> None:
    """The report's frames into their CSV files (``files``: role -> path, from :func:`file_names`)."""
    report.summary.to_csv(files["csv"], index=False)
    runs_table = report.runs.drop(columns=["path", "settings", "sources", "tracks", "conditions"])
    runs_table.to_csv(files["runs_csv"], index=False)
    report.tests.to_csv(files["tests_csv"], index=False)
    report.conditions.to_csv(files["conditions_csv"], index=False)
    report.condition_tests.to_csv(files["condition_tests_csv"], index=False)
    report.robustness.to_csv(files["robustness_csv"], index=False)


def draw_figures(report: Report, files: dict[str, Path], plot_metrics: Sequence[str],
                 paper_sources: Sequence[str] | None) -> None:
    """PNG files: bars, boxes and per-condition charts of each of ``plot_metrics``, and the paper's
    Fig. 2 and 3 for ``paper_sources`` (None: no paper figures)."""
    sources = ordered(report.scores["source"])
    variants = list(report.summary["variant"])
    for metric in plot_metrics:
        plots.bar_chart(report.summary, sources, metric, files[f"bars_{metric}"])
        plots.box_plots(report.scores, variants, metric, files[f"boxes_{metric}"])
        plots.condition_chart(report.conditions, variants, metric, files[f"conditions_{metric}"])
    if paper_sources is not None:
        for metric, (_, title) in PAPER_FIGURES.items():
            plots.paper_figure(report.summary, paper_sources, metric, title, files[f"paper_{metric}"])


# ---------------------------------------------------------------------------
# markdown


def paper_table(summary: pd.DataFrame, sources: Sequence[str]) -> str:
    """Median SDR and SIR (dB) per source, numbered as in the paper (Source 1, Source 2, ...)."""
    done = summary[summary["completed"] > 0]
    several = len(done) > 1
    header = (["variant"] if several else []) + ["source", "SDR (dB)", "SIR (dB)"]
    rows = []
    for row in done.to_dict("records"):
        for i, source in enumerate(sources):
            cells = [f"Source {i + 1} ({source})", fmt(row[f"{source}_SDR_median"]), fmt(row[f"{source}_SIR_median"])]
            rows.append(([row["variant"]] if several else []) + cells)
    return md_table(header, rows)


def _score_cell(row: dict, source: str, metric: str) -> str:
    prefix = f"{source}_{metric}_"
    if not row.get(prefix + "n"):
        return "n/a"
    text = f"**{fmt(row[prefix + 'median'])}** [{fmt(row[prefix + 'q25'])}, {fmt(row[prefix + 'q75'])}]"
    if row[prefix + "seed_std"] == row[prefix + "seed_std"]:  # not NaN: two seeds or more
        text += f" ±{fmt(row[prefix + 'seed_std'])}"
    return text


def markdown(report: Report, dirs, metrics, plot_metrics, test, alpha, correction, files, paper_md="") -> str:
    """The text of comparison.md (without the test conditions, see :func:`conditions_markdown`):
    variants, a table per metric, the paired tests, failed runs, figures."""
    lines = (_variants_section(report, dirs) + _metric_sections(report, metrics)
             + _baseline_section(report, test, alpha, correction) + _failed_section(report.runs)
             + _figures_section(report.output, files, plot_metrics, paper_md))
    return "\n".join(lines)


def _variants_section(report: Report, dirs) -> list[str]:
    """The title, how to read the cells, and one row per variant (status, run counts, training time)."""
    runs, summary = report.runs, report.summary
    n_done = int((runs["status"] == "completed").sum())
    return [
        "<!-- written by msslab-compare; regenerate freely -->",
        "# Run comparison",
        "",
        f"{len(runs)} runs in {len(summary)} variants ({n_done} completed, {len(runs) - n_done} not) "
        f"from {', '.join(f'`{d}`' for d in dirs)}.",
        "",
        "Scores in dB (BSSEval v4): median over 1 s frames per track, then over tracks and seeds. "
        "Cells: **median** [25th, 75th percentile over tracks x seeds] ± standard deviation of the "
        "per-seed medians (two seeds or more). Higher is better.",
        "",
        "## Variants",
        "",
        md_table(
            ["variant", "status", "runs", "completed", "failed", "seeds", "train s (median)"],
            [
                [f"`{r['variant']}`", r["status"], r["runs"], r["completed"], r["failed"], r["seeds"] or "-",
                 fmt(r["train_seconds"], 0)]
                for r in summary.to_dict("records")
            ],
        ),
    ]


def _metric_sections(report: Report, metrics) -> list[str]:
    """One table per metric: a row per variant, a column per source."""
    sources = ordered(report.scores["source"])
    lines = []
    for metric in metrics:
        lines += ["", f"## {metric} (dB)", ""]
        lines.append(
            md_table(
                ["variant"] + sources,
                [[f"`{r['variant']}`"] + [_score_cell(r, s, metric) for s in sources]
                 for r in report.summary.to_dict("records")],
            )
            if sources
            else "No completed runs."
        )
    return lines


def _baseline_section(report: Report, test, alpha, correction) -> list[str]:
    """How the paired tests work and one row per (variant, source, metric) against the baseline."""
    tests = report.tests
    lines = ["", "## Against the baseline", ""]
    if report.baseline is None or not len(tests):
        lines.append(
            f"Baseline `{report.baseline}`: nothing to compare (one variant only, or no completed runs on one side)."
        )
        return lines
    if test == "wilcoxon":
        how = (
            f"Wilcoxon signed-rank test (two-sided) on the paired differences; significant when p < {alpha}"
            + (" after Holm-Bonferroni correction over all rows." if correction == "holm" else ".")
        )
    else:
        how = (
            f"bootstrap {100 * (1 - alpha):g}% confidence interval (percentile, pairs resampled) of the median "
            f"paired difference; significant when it excludes 0, given at least {min_pairs(alpha)} pairs "
            "(with fewer, unanimous signs are within chance, yet the interval excludes 0: \"too few pairs\")."
        )
    lines += [
        f"Baseline: `{report.baseline}`. Each variant is paired with the baseline on the same track and seed "
        "(on the same track, averaged over seeds, when the two share no seed). "
        f"Δ = median of the paired differences (variant − baseline), dB; positive = better. Test: {how} "
        "\"not significant\" means the difference is within what tracks and seeds vary by: treat it as noise.",
        "",
    ]
    stat_header = "p" if test == "wilcoxon" else f"{100 * (1 - alpha):g}% CI of Δ"
    rows = []
    for t in tests.to_dict("records"):
        if test == "wilcoxon":
            stat = f"{t['p_value']:.3g}" if t["p_value"] == t["p_value"] else "n/a"
            if correction == "holm" and t["p_holm"] == t["p_holm"]:
                stat += f" (Holm {t['p_holm']:.3g})"
        else:
            stat = f"[{fmt(t['ci_low'], signed=True)}, {fmt(t['ci_high'], signed=True)}]"
        verdict = t["verdict"]
        if t["significant"]:
            verdict = f"**significant**, {'better' if t['median_diff'] > 0 else 'worse'}"
        rows.append([f"`{t['variant']}`", t["source"], t["metric"], fmt(t["median_diff"], signed=True),
                     t["n"], stat, verdict])
    lines.append(md_table(["variant", "source", "metric", "Δ dB", "pairs", stat_header, "verdict"], rows))
    if test == "wilcoxon" and (tests["n"] < 6).any():
        lines += ["", "With fewer than 6 pairs the signed-rank test cannot reach p < 0.05: add tracks or seeds."]
    return lines


def _failed_section(runs: pd.DataFrame) -> list[str]:
    """One row per run that did not complete, with its error."""
    bad = runs[runs["status"] != "completed"]
    lines = ["", "## Failed runs", ""]
    lines.append(
        md_table(
            ["run", "variant", "seed", "status", "error"],
            [[f"`{r.run}`", f"`{r.variant}`", r.seed or "-", r.status, r.error or "-"] for r in bad.itertuples()],
        )
        if len(bad)
        else "None."
    )
    return lines


def _figures_section(out: Path, files, plot_metrics, paper_md: str) -> list[str]:
    """The paper table and figures (when drawn), links to the charts, and the names of the CSV tables."""
    lines = []
    if paper_md:
        lines += ["", "## Paper figures (Fig. 2: SDR, Fig. 3: SIR)", "", paper_md, ""]
        lines += [f"![{m}]({files[f'paper_{m}'].relative_to(out).as_posix()})" for m in PAPER_FIGURES]
    figures = [role for role in files if role.startswith(("bars_", "boxes_"))]
    if figures:
        lines += ["", "## Figures", ""]
        for metric in plot_metrics:
            lines += [
                f"![{metric} per source and variant]({files[f'bars_{metric}'].name})",
                f"![{metric} per track]({files[f'boxes_{metric}'].name})",
            ]
    lines += ["", f"Tables: `{CSV}` (one row per variant), `{RUNS_CSV}` (one row per run), `{TESTS_CSV}` (tests).", ""]
    return lines


def conditions_markdown(report: Report, metrics: Sequence[str], test: str, alpha: float, files) -> str:
    """The test-condition sections of comparison.md: seed means with CIs and tests per condition, drops."""
    if not len(report.conditions):
        return ""
    lines = _condition_sections(report, metrics, test, alpha) + _robustness_section(report, metrics)
    figures = [m for m in metrics if f"conditions_{m}" in files]
    lines += [f"![{m} per test condition]({files[f'conditions_{m}'].name})" for m in figures]
    lines += ["", f"Tables: `{CONDITIONS_CSV}` (seed means and CIs), `{CONDITION_TESTS_CSV}` (paired tests per "
              f"condition), `{ROBUSTNESS_CSV}` (drops from clean).", ""]
    return "\n".join(lines)


def _condition_sections(report: Report, metrics, test: str, alpha: float) -> list[str]:
    """Per condition, a row per variant: seed mean ± CI half-width per source and metric, with the
    paired difference to the baseline and its test."""
    table, ctests = report.conditions, report.condition_tests
    sources = ordered(table["source"])
    variants = ordered(table["variant"])
    means = table.set_index(["variant", "condition", "source", "metric"])
    tested = ctests.set_index(["variant", "condition", "source", "metric"]) if len(ctests) else None
    lines = ["", "## Test conditions: mean over seeds", "",
             "Per run, the median over tracks under each condition; per variant, the mean of those over seeds "
             "± half the 95% Student-t confidence interval over seeds (no interval with one seed). "
             f"Δ: median paired difference to the baseline `{report.baseline}` over (track, seed) pairs, dB; "
             + ("p: Wilcoxon signed-rank, two-sided." if test == "wilcoxon" else
                f"[..]: bootstrap {100 * (1 - alpha):g}% CI of Δ.") + " **bold**: significant.", ""]

    def cell(variant, condition, source, metric):
        key = (variant, condition, source, metric)
        if key not in means.index:
            return "n/a"
        row = means.loc[key]
        text = fmt(row["mean"])
        if row["ci_high"] == row["ci_high"]:
            text += f" ±{fmt((row['ci_high'] - row['ci_low']) / 2)}"
        if tested is not None and key in tested.index:
            t = tested.loc[key]
            stat = (f"p={t['p_value']:.2g}" if test == "wilcoxon" and t["p_value"] == t["p_value"] else
                    f"[{fmt(t['ci_low'], signed=True)}, {fmt(t['ci_high'], signed=True)}]")
            delta = f"Δ{fmt(t['median_diff'], signed=True)}, {stat}"
            text += f" ({'**' + delta + '**' if t['significant'] else delta})"
        return text

    for condition in ordered(table["condition"]):
        lines += [f"### {condition}", ""]
        header = ["variant"] + [f"{s} {m}" for m in metrics for s in sources]
        lines.append(md_table(header, [[f"`{v}`"] + [cell(v, condition, s, m) for m in metrics for s in sources]
                                       for v in variants]))
        lines.append("")
    return lines


def _robustness_section(report: Report, metrics) -> list[str]:
    """Per metric, a row per variant: the drop from clean under each other condition and source."""
    table, drops = report.conditions, report.robustness
    if not len(drops):
        return []
    sources = ordered(table["source"])
    variants = ordered(table["variant"])
    lines = ["## Robustness: drop from clean (dB, mean over seeds ± 95% CI half-width; positive = worse)", ""]
    drop = drops.set_index(["variant", "condition", "source", "metric"])
    others = [c for c in ordered(table["condition"]) if c != CLEAN]
    for metric in metrics:
        header = ["variant"] + [f"{c} {s}" for c in others for s in sources]
        rows = []
        for v in variants:
            cells = []
            for c in others:
                for s in sources:
                    key = (v, c, s, metric)
                    if key not in drop.index:
                        cells.append("n/a")
                        continue
                    d = drop.loc[key]
                    half = f" ±{fmt((d['ci_high'] - d['ci_low']) / 2)}" if d["ci_high"] == d["ci_high"] else ""
                    cells.append(fmt(d["drop"], signed=True) + half)
            rows.append([f"`{v}`"] + cells)
        lines += [f"{metric}:", "", md_table(header, rows), ""]
    return lines
