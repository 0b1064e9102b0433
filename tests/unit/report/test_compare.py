"""msslab-compare on constructed sweeps: tables, failed runs, figures, paired tests, bad input."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from hydra import compose, initialize_config_dir

from msslab.cli.compare import CONFIG_DIR, hydra_argv, run
from msslab.report import CompareError, compare_runs, load_runs, paired_test

TRACKS = [f"track{i:02d}" for i in range(8)]
SEEDS = [1, 2]
SOURCES = ["vocals", "accompaniment"]
METRICS = ["SDR", "SIR", "SAR", "ISR"]
BASELINE = "augmentation=[]"
BETTER = "augmentation=[pitch_shift]"  # +3 dB vocals SDR on every track, plus noise
SAME = "augmentation=[reverb]"  # the baseline's numbers exactly
DEAD = "augmentation=[time_stretch]"  # every run failed
AUGMENTATIONS = {BASELINE: [], BETTER: ["pitch_shift"], SAME: ["reverb"], DEAD: ["time_stretch"]}


def base_score(track: int, seed: int, source: int, metric: int) -> float:
    """Baseline per-track median (dB): differs by track, seed, source and metric."""
    rng = np.random.default_rng([track, seed, source, metric])
    return round(float(4.0 + 2.0 * source + 3.0 * metric + rng.normal(0, 1.5)), 4)


def tracks_for(variant: str, seed: int) -> dict:
    noise = np.random.default_rng([seed, 99])
    tracks = {}
    for t, track in enumerate(TRACKS):
        tracks[track] = {}
        for s, source in enumerate(SOURCES):
            tracks[track][source] = {}
            for m, metric in enumerate(METRICS):
                value = base_score(t, seed, s, m)
                if variant == BETTER and source == "vocals" and metric == "SDR":
                    value += 3.0 + float(noise.normal(0, 0.3))
                tracks[track][source][metric] = value
    return tracks


def write_run(job_dir: Path, variant: str, seed: int, failed: bool = False) -> None:
    job_dir.mkdir(parents=True)
    augmentation = AUGMENTATIONS[variant]
    results = {
        "status": "failed" if failed else "completed",
        "run_id": f"{job_dir.name}-{seed}",
        "choices": {"data": "synthetic", "model": "blstm", "augmentation": augmentation, "loss": "mse"},
        "overrides": [f"augmentation={variant.split('=', 1)[1]}", f"seed={seed}", "trainer=smoke"],
        "seed": seed,
        "train_seconds": 10.0 + seed,
        "eval_seconds": 2.0,
    }
    if failed:
        results["error"] = "RuntimeError: forced failure for the test"
    else:
        tracks = tracks_for(variant, seed)
        results["tracks"] = tracks
        results["sources"] = {
            source: {m: float(np.median([tracks[t][source][m] for t in TRACKS])) for m in METRICS}
            for source in SOURCES
        }
    (job_dir / "results.json").write_text(json.dumps(results, indent=1))


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """multirun/ablation/<job>/results.json: 3 variants x 2 seeds completed, a third seed of
    SAME forced to fail, and a variant whose only run failed."""
    root = tmp_path / "multirun" / "ablation"
    jobs = [(v, s, False) for v in (BASELINE, BETTER, SAME) for s in SEEDS]
    jobs += [(SAME, 3, True), (DEAD, 1, True)]
    for number, (variant, seed, failed) in enumerate(jobs):
        write_run(root / str(number), variant, seed, failed)
    (root / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    return root


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name="compare", overrides=hydra_argv(overrides))


def is_png(path: Path) -> tuple[int, int]:
    """(width, height) of a valid PNG, else fail."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert data[12:16] == b"IHDR" and data.rstrip().endswith(b"IEND\xaeB`\x82"), path
    width, height = struct.unpack(">II", data[16:24])
    assert width > 100 and height > 100, path
    return width, height


def test_report_tables_figures_and_failed_runs(sweep: Path):
    report = run(compose_cfg([str(sweep), "progress=false"]))

    table = pd.read_csv(sweep / "comparison.csv")
    assert list(table["variant"]) == [BASELINE, BETTER, SAME, DEAD]  # one row per variant, sweep order
    rows = table.set_index("variant")
    for variant in (BASELINE, BETTER, SAME):
        pooled = [tracks_for(variant, s) for s in SEEDS]
        for source in SOURCES:
            for metric in METRICS:
                values = [t[track][source][metric] for t in pooled for track in TRACKS]
                assert rows.at[variant, f"{source}_{metric}_median"] == pytest.approx(np.median(values))
                q25, q75 = np.percentile(values, [25, 75])
                assert rows.at[variant, f"{source}_{metric}_iqr"] == pytest.approx(q75 - q25)
                per_seed = [np.median([t[track][source][metric] for track in TRACKS]) for t in pooled]
                assert rows.at[variant, f"{source}_{metric}_seed_std"] == pytest.approx(np.std(per_seed, ddof=1))

    # the forced failure is listed, the rest of its variant still counts
    assert rows.at[SAME, "status"] == "partial"
    assert (rows.at[SAME, "completed"], rows.at[SAME, "failed"]) == (2, 1)
    assert "forced failure" in rows.at[SAME, "failures"]
    assert rows.at[DEAD, "status"] == "failed" and np.isnan(rows.at[DEAD, "vocals_SDR_median"])
    per_run = pd.read_csv(sweep / "comparison_runs.csv")
    assert sorted(per_run["status"]) == ["completed"] * 6 + ["failed"] * 2
    text = (sweep / "comparison.md").read_text()
    failed_section = text.split("## Failed runs", 1)[1]
    assert "forced failure" in failed_section and f"`{DEAD}`" in failed_section and "`6`" in failed_section

    for metric in ("SDR", "SIR"):
        for kind in ("bars", "boxes"):
            is_png(sweep / f"comparison_{metric}_{kind}.png")
    assert report.baseline == BASELINE


def test_paired_test_verdicts_in_report(sweep: Path, tmp_path: Path):
    out = tmp_path / "report"
    report = run(compose_cfg([f"dirs=[{sweep}]", f"output={out}", "baseline=augmentation=[]", "progress=false"]))
    tests = pd.read_csv(out / "comparison_tests.csv").set_index(["variant", "source", "metric"])

    better = tests.loc[(BETTER, "vocals", "SDR")]
    assert better["n"] == len(TRACKS) * len(SEEDS)  # paired on track and seed
    assert better["verdict"] == "significant" and better["p_value"] < 0.001
    assert better["median_diff"] == pytest.approx(3.0, abs=0.3)
    assert tests.loc[(BETTER, "accompaniment", "SDR")]["verdict"] == "not significant"
    same = tests.loc[SAME]
    assert (same["verdict"] == "not significant").all() and (same["p_value"] == 1.0).all()
    assert DEAD not in tests.index.get_level_values("variant")

    text = (out / "comparison.md").read_text()
    assert f"Baseline: `{BASELINE}`" in text and "**significant**, better" in text
    assert not (sweep / "comparison.md").exists()
    assert report.files["markdown"] == out / "comparison.md"


def test_bootstrap_verdicts(sweep: Path, tmp_path: Path):
    out = tmp_path / "boot"
    run(compose_cfg([str(sweep), f"output={out}", "test=bootstrap", "metrics=[SDR]", "progress=false"]))
    tests = pd.read_csv(out / "comparison_tests.csv").set_index(["variant", "source", "metric"])
    better = tests.loc[(BETTER, "vocals", "SDR")]
    assert better["verdict"] == "significant" and 2.5 < better["ci_low"] < better["ci_high"] < 3.5
    same = tests.loc[(SAME, "vocals", "SDR")]
    assert same["verdict"] == "not significant" and same["ci_low"] == same["ci_high"] == 0


def test_paired_test_unit():
    rng = np.random.default_rng(0)
    b = rng.normal(5, 2, 20)
    for method in ("wilcoxon", "bootstrap"):
        clear = paired_test(b + 3 + rng.normal(0, 0.5, 20), b, method=method)
        assert clear.significant and clear.verdict == "significant" and clear.median_diff > 2
        same = paired_test(b, b.copy(), method=method)
        assert not same.significant and same.verdict == "not significant" and same.median_diff == 0
        assert paired_test([np.nan], [1.0], method=method).verdict == "no pairs"
    assert paired_test(b, b.copy()).p_value == 1.0
    # The signed-rank test drops zero differences: n counts the pairs it used.
    tied = paired_test([1.0, 2.0, 3.0, 5.0, 6.0, 9.0], [1.0, 2.0, 3.0, 4.0, 4.0, 6.0])
    assert tied.n == 3 and tied.median_diff == pytest.approx(0.5)
    assert paired_test([1.0, 2.0, 3.0, 5.0, 6.0, 9.0], [1.0, 2.0, 3.0, 4.0, 4.0, 6.0], method="bootstrap").n == 6
    with pytest.raises(CompareError, match="unknown test"):
        paired_test(b, b, method="ttest")


def test_cli_positional_and_paper_figures(sweep: Path, tmp_path: Path):
    """The real console entry point, as a user runs it."""
    out = tmp_path / "paper"
    proc = subprocess.run(
        [sys.executable, "-m", "msslab.cli.compare", str(sweep), f"output={out}", "paper_figures=true",
         "baseline=augmentation=[]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for name in ("paper_fig2_sdr.png", "paper_fig3_sir.png"):
        is_png(out / name)
    table = (out / "paper_table.md").read_text()
    assert "Source 1 (vocals)" in table and "Source 2 (accompaniment)" in table
    assert "## Paper figures" in (out / "comparison.md").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["multirun", "paper"]  # no outputs/, no .hydra/, no log


def test_bad_directories_name_the_path(tmp_path: Path):
    missing = tmp_path / "no_such_sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "msslab.cli.compare", f"dirs=[{missing}]"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert proc.returncode != 0 and str(missing) in proc.stderr and "Traceback" not in proc.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CompareError, match="no results.json found under: .*empty"):
        load_runs([empty])
    broken = tmp_path / "broken" / "0"
    broken.mkdir(parents=True)
    (broken / "results.json").write_text("{not json")
    with pytest.raises(CompareError, match=r"cannot read .*broken/0/results\.json"):
        load_runs([tmp_path / "broken"])


def test_never_overwrites_foreign_files(sweep: Path, tmp_path: Path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "comparison.csv").write_text("somebody else's table\n")
    with pytest.raises(CompareError, match="refusing to overwrite .*comparison.csv"):
        compare_runs([sweep], output=out, progress=False)
    assert (out / "comparison.csv").read_text() == "somebody else's table\n"
    # a report compare wrote itself is regenerated freely
    compare_runs([sweep], progress=False, plot_metrics=[])
    first = (sweep / "comparison.md").read_text()
    compare_runs([sweep], progress=False, plot_metrics=[])
    assert (sweep / "comparison.md").read_text() == first


def test_baseline_selection_errors_and_missing_results(sweep: Path):
    with pytest.raises(CompareError, match="matches no variant"):
        compare_runs([sweep], baseline="augmentation=[gain]", progress=False)
    with pytest.raises(CompareError, match="matches 4 variants"):
        compare_runs([sweep], baseline="model=blstm", progress=False)
    # a Hydra job dir that died before writing results.json is listed, not dropped
    crashed = sweep / "8" / ".hydra"
    crashed.mkdir(parents=True)
    (crashed / "config.yaml").write_text("seed: 4\n")
    (crashed / "overrides.yaml").write_text("- augmentation=[]\n- seed=4\n- trainer=smoke\n")
    runs = load_runs([sweep], progress=False)
    row = runs[runs["run"] == "8"].iloc[0]
    assert row["status"] == "missing" and row["variant"] == BASELINE


def test_variant_names_only_show_what_differs(sweep: Path):
    runs = load_runs([sweep], progress=False)
    assert list(dict.fromkeys(runs["variant"])) == [BASELINE, BETTER, SAME, DEAD]
    assert runs.groupby("variant").size()[SAME] == 3  # seeds pool into one variant


def test_command_line_sugar():
    assert hydra_argv(["multirun/a", "multirun/b", "test=bootstrap"]) == [
        "test=bootstrap",
        "dirs=['multirun/a','multirun/b']",
    ]
    assert hydra_argv(["baseline=augmentation=[]"]) == ["baseline='augmentation=[]'"]
    assert hydra_argv(["baseline='augmentation=[]'", "baseline=null"]) == ["baseline='augmentation=[]'", "baseline=null"]
    assert hydra_argv(["--cfg", "job", "-cn", "compare", "x"]) == ["--cfg", "job", "-cn", "compare", "dirs=['x']"]
    cfg = compose_cfg(["it's a dir", "baseline=model=lstm augmentation=[]"])
    assert list(cfg.dirs) == ["it's a dir"] and cfg.baseline == "model=lstm augmentation=[]"


def test_per_track_scores_from_museval_json(tmp_path: Path):
    """A run whose results.json has no "tracks" is read from museval's own per-track files."""
    run_dir = tmp_path / "outputs" / "run"
    (run_dir / "museval" / "test").mkdir(parents=True)
    frames = [{"time": i, "duration": 1, "metrics": {"SDR": v, "SIR": 10.0, "SAR": 1.0, "ISR": 2.0}}
              for i, v in enumerate([1.0, 3.0, float("nan"), 2.0])]
    museval = {"targets": [{"name": "vocals", "frames": frames}], "museval_version": "0.4"}
    (run_dir / "museval" / "test" / "song a.json").write_text(json.dumps(museval))
    results = {"status": "completed", "choices": {"model": "lstm"}, "sources": {"vocals": {"SDR": 2.0}}}
    (run_dir / "results.json").write_text(json.dumps(results))
    runs = load_runs([tmp_path / "outputs"], progress=False)
    assert runs.loc[0, "tracks"] == {"song a": {"vocals": {"SDR": 2.0, "SIR": 10.0, "SAR": 1.0, "ISR": 2.0}}}
    assert runs.loc[0, "variant"] == "model=lstm"


def test_variant_names_when_keys_are_missing_in_some_runs():
    from msslab.report.runs import name_variants

    settings = [
        {"model": "blstm", "augmentation": "[]", "trainer": "smoke", "seed": "1"},
        {"model": "blstm", "augmentation": "[reverb]", "trainer": "smoke", "seed": "2"},
        {"model": "blstm", "augmentation": "[]", "seed": "1"},  # older run without trainer
    ]
    assert name_variants(settings) == [
        "augmentation=[] trainer=smoke",
        "augmentation=[reverb] trainer=smoke",  # a key that tells two variants apart is shown for all
        "augmentation=[]",
    ]


def test_conditions_get_seed_means_paired_tests_and_drops(tmp_path: Path):
    """A 2-run x 2-seed sweep scored under clean and noise: augmentation helps under noise only."""
    root = tmp_path / "multirun" / "conditions"
    for job, (variant, seed) in enumerate((v, s) for v in (BASELINE, BETTER) for s in SEEDS):
        write_run(root / str(job), BASELINE if variant == BASELINE else SAME, seed)  # clean: identical scores
        results = json.loads((root / str(job) / "results.json").read_text())
        results["choices"]["augmentation"] = AUGMENTATIONS[variant]
        results["overrides"][0] = f"augmentation={variant.split('=', 1)[1]}"
        noisy = {t: {s: {m: v - 6.0 + (2.0 + 0.1 * i if variant == BETTER else 0.0) for m, v in scores.items()}
                     for s, scores in per_source.items()} for i, (t, per_source) in enumerate(results["tracks"].items())}
        results["conditions"] = {"clean": {"sources": results["sources"], "tracks": results["tracks"], "parameters": {}},
                                 "noise": {"sources": {}, "tracks": noisy, "parameters": {}}}
        (root / str(job) / "results.json").write_text(json.dumps(results))
    report = compare_runs(root, output=tmp_path / "report", baseline=BASELINE, progress=False)
    tests = report.condition_tests.set_index(["condition", "variant", "source", "metric"])
    noise = tests.loc[("noise", BETTER, "vocals", "SDR")]
    assert noise["paired_on"] == "track+seed" and noise["n"] == len(TRACKS) * len(SEEDS)
    assert noise["significant"] and noise["median_diff"] == pytest.approx(2.35)
    assert not tests.loc[("clean", BETTER, "vocals", "SDR")]["significant"]
    means = report.conditions.set_index(["variant", "condition", "source", "metric"])
    row = means.loc[(BASELINE, "clean", "vocals", "SDR")]
    per_seed = [np.median([tracks_for(BASELINE, s)[t]["vocals"]["SDR"] for t in TRACKS]) for s in SEEDS]
    assert row["seeds"] == 2 and row["mean"] == pytest.approx(np.mean(per_seed))
    half = stats.t.ppf(0.975, 1) * np.std(per_seed, ddof=1) / np.sqrt(2)
    assert row["ci_low"] == pytest.approx(np.mean(per_seed) - half) and row["ci_high"] == pytest.approx(np.mean(per_seed) + half)
    drops = report.robustness.set_index(["variant", "condition", "source", "metric"])["drop"]
    assert drops[(BASELINE, "noise", "vocals", "SDR")] == pytest.approx(6.0)
    assert drops[(BETTER, "noise", "vocals", "SDR")] < 4.0
    text = (tmp_path / "report" / "comparison.md").read_text()
    assert "### noise" in text and "## Robustness" in text
    for name in ("comparison_conditions.csv", "comparison_condition_tests.csv", "comparison_robustness.csv",
                 "comparison_conditions_SDR.png", "comparison_conditions_SIR.png"):
        assert (tmp_path / "report" / name).is_file(), name


def write_evaluation(job_dir: Path, seed: int, split: str, exponent: float, shift: float) -> None:
    """An ``msslab-eval`` results.json: the training run's identity (as write_run's BASELINE), its
    checkpoint, the split and the command's own overrides; scores = the baseline's + ``shift`` dB."""
    job_dir.mkdir(parents=True)
    ckpt = f"multirun/ablation/{seed}/checkpoints/best-epoch{3 + seed:03d}.ckpt"  # the epoch differs per seed
    tracks = {t: {s: {m: v + shift for m, v in ms.items()} for s, ms in ss.items()}
              for t, ss in tracks_for(BASELINE, seed).items()}
    results = {
        "status": "completed", "run_id": f"eval-{seed}",
        "choices": {"data": "synthetic", "model": "blstm", "augmentation": [], "loss": "mse"},
        "overrides": ["augmentation=[]", f"seed={seed}", "trainer=smoke"], "seed": seed,
        "ckpt": ckpt, "split": split,
        "eval_overrides": [f"ckpt={ckpt}", f"split={split}", f"separation.wiener_exponent={exponent}",
                           f"hydra.run.dir=outputs/eval/{split}_{exponent}_{seed}"],
        "tracks": tracks,
        "sources": {s: {m: float(np.median([tracks[t][s][m] for t in TRACKS])) for m in METRICS} for s in SOURCES},
        "train_seconds": 0.0, "eval_seconds": 1.0,
    }
    (job_dir / "results.json").write_text(json.dumps(results))


def test_an_evaluation_is_its_own_variant_per_split_and_setting(tmp_path: Path):
    # The training runs (test songs), and their checkpoints scored on the validation songs at two
    # Wiener exponents (the README's way of choosing a setting) and on the test songs at one.
    root = tmp_path / "runs"
    for seed in SEEDS:
        write_run(root / "train" / str(seed), BASELINE, seed)
        write_evaluation(root / "valid1.5" / str(seed), seed, "valid", 1.5, shift=1.0)
        write_evaluation(root / "valid2" / str(seed), seed, "valid", 2.0, shift=2.0)
        write_evaluation(root / "test1.5" / str(seed), seed, "test", 1.5, shift=0.5)
    report = compare_runs([root], output=tmp_path / "report", metrics=["SDR"], plot_metrics=[], progress=False)
    runs = report.runs.set_index("run")
    assert runs["variant"].nunique() == 4  # one row per setting and split, none pooled with training
    assert set(runs["split"]) == {"test", "valid"}
    variant = {name: runs.at[f"{name}/1", "variant"] for name in ("train", "valid1.5", "valid2", "test1.5")}
    assert "split=valid" in variant["valid2"] and "eval.separation.wiener_exponent=2.0" in variant["valid2"]
    assert "ckpt=" not in variant["valid2"]  # best-epoch004 and best-epoch005 are both a best checkpoint
    for name in variant:  # both seeds in each row, nothing else
        assert runs.loc[runs["variant"] == variant[name]].index.str.startswith(name + "/").all()

    summary = report.summary.set_index("variant")
    for name, shift in (("train", 0.0), ("valid1.5", 1.0), ("valid2", 2.0), ("test1.5", 0.5)):
        values = [v["vocals"]["SDR"] + shift for s in SEEDS for v in tracks_for(BASELINE, s).values()]
        assert summary.at[variant[name], "vocals_SDR_median"] == pytest.approx(np.median(values))
        assert summary.at[variant[name], "vocals_SDR_n"] == len(TRACKS) * len(SEEDS)

    # Paired on track and seed within a split, each seed once; the other split is not paired at all.
    report = compare_runs([root], output=tmp_path / "valid", baseline=variant["valid1.5"], metrics=["SDR"],
                          plot_metrics=[], progress=False)
    tests = report.tests.set_index(["variant", "source"])
    better = tests.loc[(variant["valid2"], "vocals")]
    assert better["n"] == len(TRACKS) * len(SEEDS) and better["median_diff"] == pytest.approx(1.0)
    assert better["paired_on"] == "track+seed"
    for other in ("train", "test1.5"):
        row = tests.loc[(variant[other], "vocals")]
        assert row["n"] == 0 and row["verdict"] == "other split (test vs valid)" and not row["significant"]


def test_bootstrap_needs_enough_pairs():
    for n in (1, 2, 5):  # every difference positive: a percentile interval excludes 0 all the same
        few = paired_test(np.arange(n) + 1.0, np.zeros(n), method="bootstrap")
        assert few.verdict == "too few pairs" and not few.significant and few.n == n
    enough = paired_test(np.arange(6) + 1.0, np.zeros(6), method="bootstrap")
    assert enough.verdict == "significant" and enough.significant
    from msslab.report.stats import min_pairs

    assert min_pairs(0.05) == 6 and min_pairs(0.01) == 8  # 2 ** (1 - n) < alpha


def test_results_json_has_one_schema(tmp_path: Path):
    """write_results takes the keys of msslab.results.Results only; the report reads through read_results."""
    from msslab.results import Results, ResultsError, read_results, write_results

    assert {"status", "choices", "sources", "train_seconds", "eval_seconds"} <= set(Results.__annotations__)
    with pytest.raises(TypeError, match="train_second"):
        write_results(tmp_path / "typo", status="completed", train_second=1.0)
    assert not (tmp_path / "typo" / "results.json").exists()
    write_results(tmp_path / "run", status="completed", choices={"model": "lstm"}, train_seconds=1.5,
                  sources={"vocals": {"SDR": 1.0, "SIR": 2.0, "SAR": 3.0, "ISR": float("nan")}})
    results = read_results(tmp_path / "run")
    assert results["run_id"] == "run" and results["sources"]["vocals"]["ISR"] is None  # NaN written as null
    assert read_results(tmp_path / "nothing") is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("[1, 2]")
    with pytest.raises(ResultsError, match="malformed .*expected a JSON object, got list"):
        read_results(tmp_path / "bad")
    with pytest.raises(CompareError, match="malformed .*results.json"):
        load_runs([tmp_path / "bad"], progress=False)
