"""Sweeps: the named presets compose into the intended jobs, and tiny sweeps run for real.

The runs go through the real Hydra multirun (``python -m msslab.cli.train -m ...``) at a size
far below ``experiment=smoke``: two sources, one epoch, two 3 s test tracks.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate
from omegaconf import OmegaConf

from msslab import CONFIG_DIR

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = CONFIG_DIR
PAPER_FOUR = ["time_stretch", "pitch_shift", "background_noise", "reverb"]

# Smaller than experiment=smoke: a sweep job here trains for a second and evaluates for a few.
TINY = ["data.targets=[vocals,accompaniment]", "data.train_tracks.nb_tracks=2", "data.test_tracks.nb_tracks=2",
        "data.test_tracks.seconds=3.0", "trainer.max_epochs=1", "trainer.enable_progress_bar=false"]


# ---------------------------------------------------------------- composing presets (no training)

def _compose(overrides: list[str]):
    """The config a job of ``msslab-train`` gets, with its ``hydra`` node (choices, sweeper, launcher)."""
    import msslab  # noqa: F401  registers ${msslab.uid:}, which the run and sweep dirs use

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} resolves as inside the app
    return cfg


@pytest.fixture(autouse=True)
def _no_hydra_app_after():
    yield
    HydraConfig.instance().cfg = None


def sweep_jobs(preset: str, *extra: str) -> list[list[str]]:
    """Override lists of the jobs ``msslab-train -m experiment=<preset> <extra>`` launches (basic sweeper)."""
    cfg = _compose([f"experiment={preset}"])
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *extra])
    return [[f"experiment={preset}", *job] for job in BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]]


def augmentations(cfg) -> list[str]:
    from msslab.augmentation import stage_names

    return stage_names(cfg.get("augmentation"))


def test_paper_preset_is_the_papers_system():
    cfg = _compose(["experiment=paper"])
    assert cfg.name == "paper"
    assert list(cfg.data.targets) == ["vocals", "accompaniment"]
    assert sorted(augmentations(cfg)) == sorted(PAPER_FOUR)
    assert cfg.model.cell in ("lstm", "gru") and cfg.model.bidirectional
    assert cfg.hydra.sweep.dir.startswith("multirun/paper/")


def test_ablation_augmentation_composes_the_ten_augmentation_sets():
    jobs = sweep_jobs("ablation_augmentation")
    composed = [_compose(job) for job in jobs]
    sets = [tuple(sorted(augmentations(cfg))) for cfg in composed]
    expected = ([()] + [(a,) for a in PAPER_FOUR] + [tuple(sorted(PAPER_FOUR))]
                + [tuple(sorted(set(PAPER_FOUR) - {a})) for a in PAPER_FOUR])
    assert sorted(sets) == sorted(expected) and len(set(sets)) == 10
    for cfg in composed:  # everything else is the paper's system
        assert cfg.name == "ablation_augmentation" and list(cfg.data.targets) == ["vocals", "accompaniment"]
        assert cfg.model.bidirectional and cfg.hydra.launcher._target_.endswith("JoblibLauncher")
        # no processes of its own: they cannot start inside joblib's (loky) workers
        assert cfg.data.num_workers == 0 and cfg.metric.n_jobs == 1
        assert cfg.hydra.sweep.dir.startswith("multirun/ablation_augmentation/")


def _nb_parameters(cfg) -> int:
    spectrogram = instantiate(cfg.stft)
    model = instantiate(cfg.model, nb_bins=spectrogram.nb_bins, max_bin=spectrogram.max_bin, nb_channels=2,
                        nb_targets=len(cfg.data.targets), residual=False, sample_rate=spectrogram.sample_rate)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model", [None, "bsrnn"])
def test_ablation_rnn_matches_parameter_counts(model):
    """The four cell/direction variants, of the RNN separator or (``model=bsrnn``) of the band-split RNN."""
    jobs = sweep_jobs("ablation_rnn", *([f"model={model}"] if model else []))
    counts = {}
    for job in jobs:
        cfg = _compose(job)
        assert cfg.model._target_.endswith("BandSplitRNN" if model else "RNNSeparator")
        counts[(cfg.model.cell, cfg.model.bidirectional)] = _nb_parameters(cfg)
        assert cfg.name == "ablation_rnn" and sorted(augmentations(cfg)) == sorted(PAPER_FOUR)
    assert set(counts) == {("lstm", False), ("gru", False), ("lstm", True), ("gru", True)}
    low, high = min(counts.values()), max(counts.values())
    assert high / low < 1.02, f"parameter counts drifted apart, re-match hidden sizes in ablation_rnn.yaml: {counts}"


def test_sweeps_cross_and_add_seeds():
    # augmentation x model: both presets at once, plus three seeds on the command line
    jobs = sweep_jobs("[ablation_augmentation,ablation_rnn]", "seed=1,2,3")
    assert len(jobs) == 10 * 4 * 3
    job = next(j for j in jobs if "rnn=bgru" in j and "augmentation=[]" in j and "seed=2" in j)
    cfg = _compose(job)
    assert augmentations(cfg) == [] and cfg.model.cell == "gru" and cfg.model.bidirectional and cfg.seed == 2
    assert cfg.model.hidden_size == cfg.matched_hidden_size.blstm.bgru


def test_search_preset_is_an_optuna_study_maximising_validation_sdr():
    from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

    cfg = _compose(["experiment=search"])
    search = cfg.search
    assert search.direction == "maximize" and search.pruner._target_ == "optuna.pruners.MedianPruner"
    assert search.storage is None and search.trial is None  # sqlite in the sweep dir; set per trial
    assert set(search.params) == {"optimizer.lr", "model.hidden_size", "model.nb_layers", "model.dropout", "stft.n_fft"}
    for key, value in search.params.items():
        assert OmegaConf.select(cfg, key) is not None, f"search parameter {key} is not a config key"
        distribution = create_optuna_distribution_from_override(OverridesParser.create().parse_override(f"{key}={value}"))
        assert distribution is not None
    assert cfg.callbacks.checkpoint.monitor == "val/sdr" and cfg.callbacks.checkpoint.mode == "max"


def test_slurm_launcher_config():
    cfg = _compose(["experiment=ablation_rnn", "hydra/launcher=slurm"])  # the command line beats the preset
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.cpus_per_task > 0
    assert "partition" in launcher
    assert launcher.max_num_timeout > 0  # timed-out jobs are requeued and resume from their checkpoints


def test_sweep_and_run_dirs_are_unique_per_launch():
    first, second = _compose(["experiment=smoke"]), _compose(["experiment=smoke"])
    for key in ("run", "sweep"):
        assert first.hydra[key].dir != second.hydra[key].dir  # even within one second


# ---------------------------------------------------------------- real sweeps

def multirun(cwd: Path, sweep_dir: Path, *overrides: str, timeout: float = 600) -> str:
    """``python -m msslab.cli.train -m <overrides>`` into ``sweep_dir``; returns its output."""
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    args = [sys.executable, "-m", "msslab.cli.train", "-m", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {' '.join(args)}\n{output[-5000:]}"
    return output


def compare(*args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "msslab.cli.compare", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"MPLBACKEND": "Agg"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def wandb_records(path: Path):
    """The records of an offline W&B run file (``run-<id>.wandb``: LevelDB log format of protobufs)."""
    from wandb.proto import wandb_internal_pb2

    block, data = 32768, path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, chunks = 7, []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a record header never straddles a block: skip the padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunks.append(data[pos + 7:pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def read_wandb_run(job_dir: Path) -> dict:
    """Group, tags, config keys, history keys and summary of the one offline W&B run in ``job_dir``."""
    runs = sorted((job_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, f"expected one offline W&B run under {job_dir / 'wandb'}, found {runs}"
    run = {"dir": runs[0].parent, "history": set(), "summary": {}, "config": set()}
    for record in wandb_records(runs[0]):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, group=record.run.run_group, tags=set(record.run.tags))
        elif kind == "history":
            run["history"] |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "summary":
            run["summary"].update({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                   for item in record.summary.update})
        elif kind == "config":
            run["config"] |= {item.key for item in record.config.update}
    return run


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory) -> Path:
    """``augmentation=[],all`` (none, the paper's four) x ``model=lstm,gru``, two jobs at a time (joblib)."""
    base = tmp_path_factory.mktemp("sweep")
    sweep_dir = base / "multirun" / "tiny"
    multirun(base, sweep_dir, "experiment=smoke", *TINY, "name=tiny", "hydra/launcher=joblib",
             "hydra.launcher.n_jobs=2", "augmentation=[],all", "model=lstm,gru")
    return sweep_dir


def test_two_by_two_sweep_writes_four_results(two_by_two):
    results = {p.parent.name: json.loads(p.read_text()) for p in two_by_two.glob("*/results.json")}
    assert sorted(results) == ["0", "1", "2", "3"]
    for r in results.values():
        assert r["status"] == "completed", r.get("error")
        assert set(r["sources"]) == {"vocals", "accompaniment"} and math.isfinite(r["sources"]["vocals"]["SDR"])
    variants = {(r["choices"]["model"], tuple(sorted(r["choices"]["augmentation"]))) for r in results.values()}
    assert variants == {(m, a) for m in ("lstm", "gru") for a in ((), tuple(sorted(PAPER_FOUR)))}


def test_two_by_two_sweep_compares_into_four_rows_and_figures(two_by_two, tmp_path):
    compare(two_by_two, f"output={tmp_path}", "paper_figures=true")
    summary = pd.read_csv(tmp_path / "comparison.csv")
    assert len(summary) == 4 and set(summary["status"]) == {"completed"}
    assert summary["variant"].str.contains("model=").all() and summary["variant"].str.contains("augmentation=").all()
    for name in ("comparison_SDR_bars.png", "comparison_SIR_bars.png", "comparison_SDR_boxes.png",
                 "paper_fig2_sdr.png", "paper_fig3_sir.png", "paper_table.md", "comparison.md"):
        assert (tmp_path / name).stat().st_size > 0, name


def test_two_by_two_sweep_logs_each_run_to_wandb_offline(two_by_two):
    runs = {}
    for job_dir in sorted(p for p in two_by_two.iterdir() if p.name.isdigit()):
        run, results = read_wandb_run(job_dir), json.loads((job_dir / "results.json").read_text())
        runs[run["id"]] = run
        assert run["group"] == "tiny"  # one group per sweep: the sweep's name
        assert {"model=" + results["choices"]["model"], "data=synthetic"} <= run["tags"]  # a tag per choice
        for augmentation in results["choices"]["augmentation"]:
            assert any(augmentation in tag for tag in run["tags"] if tag.startswith("augmentation")), run["tags"]
        assert {"val/sdr", "train/loss_step", "epoch"} <= run["history"]  # training curves
        assert {"model", "optimizer", "data"} <= run["config"]  # the resolved config
        assert run["summary"]["test/vocals/SDR"] == pytest.approx(results["sources"]["vocals"]["SDR"])
        assert any(key.startswith("test/museval/") for key in run["summary"])  # the museval table
        media = run["dir"] / "files" / "media"
        assert any((media / "audio").rglob("*.wav")) and any((media / "images").rglob("*.png"))
    assert len(runs) == 4  # one W&B run per job, not one shared run


def test_a_failing_run_is_recorded_and_the_sweep_finishes(tmp_path):
    # A negative learning rate passes the config but fails inside trainer.fit (torch.optim.Adam).
    sweep_dir = tmp_path / "multirun" / "fail"
    multirun(tmp_path, sweep_dir, "experiment=smoke", *TINY, "name=fail", "model=lstm", "optimizer.lr=-1.0,0.001")
    failed, completed = (json.loads((sweep_dir / job / "results.json").read_text()) for job in ("0", "1"))
    assert failed["status"] == "failed" and "learning rate" in failed["error"]
    assert completed["status"] == "completed"
    compare(sweep_dir, f"output={tmp_path / 'report'}")
    runs = pd.read_csv(tmp_path / "report" / "comparison_runs.csv")
    assert sorted(runs["status"]) == ["completed", "failed"]
    assert "learning rate" in runs.loc[runs["status"] == "failed", "error"].iloc[0]
    assert "learning rate" in (tmp_path / "report" / "comparison.md").read_text()


def trained_steps(log_dir: Path) -> list[int]:
    """The training steps one process logged (a CSVLogger version: one per process; every step, trainer=smoke)."""
    metrics = pd.read_csv(log_dir / "metrics.csv")
    return sorted(int(step) for step in metrics.loc[metrics["train/loss_step"].notna(), "step"])


def test_a_relaunched_sweep_runs_only_unfinished_jobs(tmp_path):
    import torch

    sweep_dir = tmp_path / "multirun" / "relaunch"
    # Two epochs with a step checkpoint every 3 steps: one lands inside the second epoch.
    tiny = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    args = ["experiment=smoke", *tiny, "trainer.max_epochs=2", "callbacks.step_checkpoint.every_n_train_steps=3",
            "name=relaunch", "model=lstm", "logger=csv", "seed=1,2,3"]
    multirun(tmp_path, sweep_dir, *args)
    results = {job: sweep_dir / job / "results.json" for job in "012"}
    total = json.loads(results["0"].read_text())["global_step"]
    failed = json.loads(results["1"].read_text()) | {"status": "failed", "error": "simulated failure"}
    results["1"].write_text(json.dumps(failed))
    # Job 2 killed after its step checkpoint, before the epoch's end: no last.ckpt, no results.json.
    results["2"].unlink()
    (sweep_dir / "2" / "checkpoints" / "last.ckpt").unlink()
    saved_at = torch.load(sweep_dir / "2" / "checkpoints" / "step.ckpt", weights_only=True)["global_step"]
    assert 0 < saved_at < total
    before = {job: path.read_bytes() for job, path in results.items() if path.exists()}
    assert trained_steps(sweep_dir / "2" / "csv" / "version_0") == list(range(total))  # every step is logged

    multirun(tmp_path, sweep_dir, *args)
    assert results["0"].read_bytes() == before["0"] and results["1"].read_bytes() == before["1"]
    assert not (sweep_dir / "0" / "csv" / "version_1").exists()  # the completed job did not run again
    resumed = json.loads(results["2"].read_text())
    assert resumed["status"] == "completed" and resumed["seed"] == 3 and resumed["global_step"] == total
    assert [r["checkpoint"] for r in resumed["resumes"]] == ["step.ckpt"]
    # The relaunched process trained only what the checkpoint did not hold (a restart trains all of it).
    assert trained_steps(sweep_dir / "2" / "csv" / "version_1") == list(range(saved_at, total))

    multirun(tmp_path, sweep_dir, *args, "rerun_failed=true")  # now the failed one runs again
    assert results["1"].read_bytes() != before["1"] and json.loads(results["1"].read_text())["status"] == "completed"
    assert results["0"].read_bytes() == before["0"]


def search(cwd: Path, sweep_dir: Path, *overrides: str) -> str:
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "MPLBACKEND": "Agg"}
    args = [sys.executable, "-m", "msslab.cli.search", *overrides, f"hydra.sweep.dir={sweep_dir}"]
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"$ {' '.join(args)}\n{output[-5000:]}"
    return output


def test_search_prunes_persists_completes_and_survives_trials_without_a_score(tmp_path):
    import optuna

    sweep_dir = tmp_path / "multirun" / "search"
    args = ["experiment=[search,smoke]", *TINY, "name=search", "logger=csv", "~search.params",
            "optimizer.lr=choice(0.001,0.002)", "search.n_jobs=1"]
    # A pruner that prunes every trial at its first report: a threshold no SDR reaches.
    threshold = ["~search.pruner", "+search.pruner._target_=optuna.pruners.ThresholdPruner", "+search.pruner.lower=1000.0"]
    search(tmp_path, sweep_dir, *args, *threshold, "search.n_trials=1")
    pruned = json.loads((sweep_dir / "0" / "results.json").read_text())
    assert pruned["status"] == "pruned" and pruned["epochs"] == 1 and "pruned after epoch 0" in pruned["error"]

    # The relaunch continues the study (default median pruner, too few trials to prune yet): trial 1 completes.
    search(tmp_path, sweep_dir, *args, "search.n_trials=2")
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{sweep_dir / 'optuna.db'}")
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "PRUNED"), (1, "COMPLETE")]
    completed = json.loads((sweep_dir / "1" / "results.json").read_text())
    assert completed["status"] == "completed" and math.isfinite(completed["best_val"])
    # The study's best is that run: its best validation score, and the parameters it trained with.
    assert study.best_trial.number == 1 and study.best_value == pytest.approx(completed["best_val"])
    assert set(study.best_params) == {"optimizer.lr"} and study.best_params["optimizer.lr"] in (0.001, 0.002)
    assert f"optimizer.lr={study.best_params['optimizer.lr']!r}" in completed["overrides"]
    summary = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert summary.trials == {"pruned": 1, "complete": 1} and summary.best_trial == 1
    assert summary.best_value == pytest.approx(completed["best_val"]) and summary.best_params == study.best_params

    from msslab.report.runs import load_runs  # what msslab-compare lists

    runs = load_runs(sweep_dir, progress=False)
    assert sorted(runs["status"]) == ["completed", "pruned"]
    assert "pruned after epoch 0" in runs.loc[runs["status"] == "pruned", "error"].iloc[0]
    assert not runs["variant"].str.contains("search|resume").any()  # bookkeeping, not what a trial is

    # Without the checkpoint callback a run has no best score. A relaunch of this study with it
    # removed is refused (its trials would train otherwise); in a study of its own the trial
    # fails, and the search finishes.
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    refused = subprocess.run([sys.executable, "-m", "msslab.cli.search", *args, "search.n_trials=3", "~callbacks.checkpoint",
                              f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=600)
    assert refused.returncode != 0 and "~callbacks.checkpoint: '<absent>' -> ''" in refused.stderr, refused.stderr
    assert len(optuna.load_study(study_name="search", storage=f"sqlite:///{sweep_dir / 'optuna.db'}").trials) == 2
    unscored_dir = tmp_path / "multirun" / "unscored"
    search(tmp_path, unscored_dir, *args, "search.n_trials=1", "~callbacks.checkpoint")
    study = optuna.load_study(study_name="search", storage=f"sqlite:///{unscored_dir / 'optuna.db'}")
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "FAIL")]
    unscored = json.loads((unscored_dir / "0" / "results.json").read_text())
    assert unscored["status"] == "completed" and unscored["best_val"] is None
    assert OmegaConf.load(unscored_dir / "optimization_results.yaml").trials == {"fail": 1}


def launch_search(sweep_dir: Path, monkeypatch, *overrides: str):
    """One in-process launch of ``msslab-search`` whose trials do not train: each scores its learning rate."""
    from msslab.search import Search

    def run_trial(self, number, params):
        self.study.tell(number, float(params["optimizer.lr"]))

    monkeypatch.setattr(Search, "run_trial", run_trial)
    search = Search(["experiment=search", *overrides, f"hydra.sweep.dir={sweep_dir}"])
    search.run()
    return search.study


def test_a_relaunched_search_proposes_new_points(tmp_path, monkeypatch):
    first = [t.params for t in launch_search(tmp_path / "study", monkeypatch, "search.n_trials=3", "search.n_jobs=1").trials]
    continued = launch_search(tmp_path / "study", monkeypatch, "search.n_trials=6", "search.n_jobs=1")
    params = [t.params for t in continued.trials]
    assert [t.number for t in continued.trials] == list(range(6))
    assert params[:3] == first
    for old in params[:3]:  # not the first launch's proposals again
        assert all(new["optimizer.lr"] != old["optimizer.lr"] for new in params[3:]), params
    # The seed still decides: a new study with it proposes what the first launch did.
    again = launch_search(tmp_path / "again", monkeypatch, "search.n_trials=3", "search.n_jobs=1")
    assert [t.params for t in again.trials] == params[:3]


def test_a_search_relaunched_with_other_fixed_settings_is_refused(tmp_path, monkeypatch):
    from msslab.errors import MsslabError

    launch_search(tmp_path, monkeypatch, "trainer.max_epochs=20", "search.n_trials=1")
    with pytest.raises(MsslabError, match=r"trainer\.max_epochs: '20' -> '2'"):
        launch_search(tmp_path, monkeypatch, "trainer.max_epochs=2", "search.n_trials=2")
    with pytest.raises(MsslabError, match=r"model\.dropout: '<absent>' -> '0.1'.*trainer\.max_epochs: '20' -> '<absent>'"):
        launch_search(tmp_path, monkeypatch, "model.dropout=0.1", "search.n_trials=2")
    # How to run (trial count, parallelism, pruner, resume) is not what a trial is: a relaunch may change it.
    study = launch_search(tmp_path, monkeypatch, "trainer.max_epochs=20", "search.n_trials=2", "search.n_jobs=1",
                          "search.pruner=null", "rerun_failed=true")
    assert len(study.trials) == 2
