"""The whole pipeline through the real Hydra apps: train -> checkpoint -> museval -> results -> W&B.

Most tests read the session's one trained ``msslab-train experiment=smoke`` run (see
``conftest.py``); the rest re-evaluate or re-train small parts of it and compare.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

SOURCES = ["vocals", "drums", "bass", "other"]
METRICS = ["SDR", "SIR", "SAR", "ISR"]
TEST_TRACKS = ["synthetic-test-000", "synthetic-test-001"]  # experiment=smoke: 2 test tracks of 5 s


def is_finite_float(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


# ------------------------------------------------------------------------- the smoke run's files

def test_results_json_has_the_documented_shape(smoke_run):
    results = smoke_run.results
    assert results["status"] == "completed"
    choices = results["choices"]
    assert {k: choices[k] for k in ("data", "model", "loss", "experiment", "trainer", "logger")} == {
        "data": "synthetic", "model": "blstm", "loss": "mse", "experiment": "smoke", "trainer": "smoke", "logger": "wandb"}
    assert choices["augmentation"] == []
    assert list(results["sources"]) == SOURCES
    for source, scores in results["sources"].items():
        assert sorted(scores) == sorted(METRICS) and all(is_finite_float(v) for v in scores.values()), (source, scores)
    assert is_finite_float(results["train_seconds"]) and 0 < results["train_seconds"] < 600
    assert is_finite_float(results["eval_seconds"]) and results["eval_seconds"] > 0
    assert results["seed"] == 42 and results["run_id"] == smoke_run.run_dir.name
    assert results["overrides"] == ["experiment=smoke"]
    assert results["val_metric"] == "val/sdr" and is_finite_float(results["best_val"])


def test_summary_is_the_median_over_tracks_of_the_per_track_medians(smoke_run):
    tracks = smoke_run.results["tracks"]
    assert sorted(tracks) == TEST_TRACKS
    for source in SOURCES:
        for metric in METRICS:
            per_track = [tracks[t][source][metric] for t in TEST_TRACKS]
            assert smoke_run.results["sources"][source][metric] == pytest.approx(np.median(per_track), abs=1e-9)


def test_museval_json_per_track_in_museval_format(smoke_run):
    import jsonschema
    import museval
    from museval.aggregate import json2df

    schema = json.loads((Path(museval.__path__[0]) / "musdb.schema.json").read_text())
    files = sorted((smoke_run.run_dir / "museval").glob("*.json"))
    assert [f.stem for f in files] == TEST_TRACKS
    for path in files:
        scores = json.loads(path.read_text())
        jsonschema.validate(scores, schema)
        assert [t["name"] for t in scores["targets"]] == SOURCES
        for target in scores["targets"]:  # 1 s windows, 1 s hop over 5 s
            assert [f["time"] for f in target["frames"]] == [0, 1, 2, 3, 4]
            assert all(f["duration"] == 1 for f in target["frames"])
        # museval's own reader, and the medians results.json reports for this track.
        frame_table = json2df(scores, path.stem)
        medians = frame_table.groupby(["target", "metric"])["score"].median()
        for source in SOURCES:
            for metric in METRICS:
                assert medians[(source, metric)] == pytest.approx(
                    smoke_run.results["tracks"][path.stem][source][metric], abs=1e-4)


def test_run_directory_holds_config_checkpoints_and_an_offline_wandb_run(smoke_run):
    run_dir = smoke_run.run_dir
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    assert config["name"] == "smoke" and config["data"]["sample_rate"] == 8000
    assert yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) == ["experiment=smoke"]
    assert smoke_run.best_checkpoint.is_file() and smoke_run.best_checkpoint.parent == run_dir / "checkpoints"
    assert smoke_run.last_checkpoint.is_file()
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    [records] = runs[0].glob("run-*.wandb")
    data = records.read_bytes()
    # The run's history and summary went to W&B (offline): losses, validation, test scores, tags.
    for key in (b"train/loss", b"val/sdr", b"test/vocals/SDR", b"test/other/ISR", b"model=blstm"):
        assert key in data, key


def test_checkpoint_rebuilds_the_trained_system(smoke_run):
    from msslab.system import load_checkpoint

    system = load_checkpoint(smoke_run.best_checkpoint)
    assert system.targets == SOURCES and system.spectrogram.sample_rate == 8000
    assert system.spectrogram.n_fft == 256 and system.model.rnn.hidden_size == 16  # 32 over two directions
    assert not system.training
    weights = torch.load(smoke_run.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for name, tensor in system.state_dict().items():
        assert torch.equal(tensor, weights[name]), name
    # Input statistics were set from the data (not the identity defaults).
    assert not torch.equal(system.model.input_mean, torch.zeros_like(system.model.input_mean))


class _TouchOnUnpickle:
    """Unpickling this calls ``Path.touch``: a stand-in for code hidden in a downloaded checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_a_checkpoint_carrying_code_is_refused_without_running_it(smoke_run, tmp_path):
    from msslab.errors import CheckpointError
    from msslab.system import load_checkpoint

    checkpoint = torch.load(smoke_run.best_checkpoint, map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    checkpoint["extra"] = _TouchOnUnpickle(marker)
    path = tmp_path / "downloaded.ckpt"
    torch.save(checkpoint, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert not marker.exists()  # the pickled call never ran


def test_a_checkpoint_from_before_run_identities_takes_it_from_its_run_directory(smoke_run, tmp_path):
    from msslab.system import load_checkpoint

    checkpoint = torch.load(smoke_run.best_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["msslab_config"]["run"]["seed"] == smoke_run.results["seed"]
    del checkpoint["msslab_config"]["run"]
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    old = tmp_path / "run" / "checkpoints" / "old.ckpt"
    torch.save(checkpoint, old)
    bare = load_checkpoint(old).config["run"]  # no .hydra beside it: what the config itself says
    assert bare["source"] == "config" and bare["seed"] == smoke_run.results["seed"] and bare["choices"] == {
        "augmentation": []}
    shutil.copytree(smoke_run.run_dir / ".hydra", tmp_path / "run" / ".hydra")
    run = load_checkpoint(old).config["run"]
    assert run["source"] == "run directory" and run["seed"] == smoke_run.results["seed"]
    assert run["choices"] == smoke_run.results["choices"] and run["overrides"] == smoke_run.results["overrides"]


# --------------------------------------------------------------------------- reproducibility

def test_same_seed_trains_the_same_model(smoke_run, compose_train, tmp_path):
    """A second run of the smoke config (in-process, no logger, shorter test set) matches the session's run."""
    from msslab.training import run

    cfg = compose_train(["experiment=smoke", "logger=none", "data.test_tracks.nb_tracks=1",
                         "data.test_tracks.seconds=2.0"], tmp_path)
    best_val = run(cfg)
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["status"] == "completed" and again["choices"]["logger"] == "none"
    assert best_val == pytest.approx(smoke_run.results["best_val"], abs=1e-6)
    assert again["epochs"] == smoke_run.results["epochs"]
    first = torch.load(smoke_run.best_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    second = torch.load(again["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert first.keys() == second.keys()
    for name in first:
        assert torch.allclose(first[name].float(), second[name].float(), atol=1e-6), name


@pytest.fixture(scope="module")
def evaluations(smoke_run, cli_factory, tmp_path_factory):
    """``msslab-eval`` on the first test track of the smoke config, run concurrently: the smoke
    checkpoint again, the oracle (ceiling) and the mixture as every estimate (floor).

    ``{key: (CliResult, results.json dict or None)}``.
    """
    base = tmp_path_factory.mktemp("eval")
    common = ["experiment=smoke", "data.test_tracks.nb_tracks=1"]
    commands = {
        # Quoted: Hydra's override grammar does not take the "=" of Lightning's "best-epoch=001.ckpt" bare.
        "checkpoint": ["msslab-eval", f"ckpt='{smoke_run.best_checkpoint}'", "seed=7"],
        "oracle": ["msslab-eval", "model=oracle_irm"],
        "mixture": ["msslab-eval", "model=mixture"],
    }
    results = cli_factory(base).run_all({key: [*command, *common, f"hydra.run.dir={base / key}"]
                                         for key, command in commands.items()})
    out = {}
    for key, result in results.items():
        path = base / key / "results.json"
        out[key] = (result, json.loads(path.read_text()) if path.is_file() else None)
    return out


def evaluation(evaluations, key: str) -> dict:
    result, results = evaluations[key]
    assert result.returncode == 0, result.tail()
    assert results is not None and results["status"] == "completed", result.tail()
    assert list(results["tracks"]) == ["synthetic-test-000"]
    for source in SOURCES:
        assert all(is_finite_float(results["sources"][source][m]) for m in METRICS), (key, source)
    return results


def test_evaluating_the_checkpoint_again_gives_the_same_scores(evaluations, smoke_run):
    results = evaluation(evaluations, "checkpoint")
    assert results["train_seconds"] == 0.0
    # Recorded as the run that trained the checkpoint, not as the evaluation command (seed=7).
    for key in ("choices", "overrides", "seed"):
        assert results[key] == smoke_run.results[key], key
    assert "seed=7" in results["eval_overrides"] and "data.test_tracks.nb_tracks=1" in results["eval_overrides"]
    track = results["tracks"]["synthetic-test-000"]
    for source in SOURCES:
        for metric in METRICS:
            assert track[source][metric] == pytest.approx(
                smoke_run.results["tracks"]["synthetic-test-000"][source][metric], abs=1e-6), (source, metric)


def test_oracle_is_far_above_the_trained_model_and_the_mixture(evaluations, smoke_run):
    oracle = evaluation(evaluations, "oracle")
    mixture = evaluation(evaluations, "mixture")
    assert oracle["choices"]["model"] == "oracle_irm" and mixture["choices"]["model"] == "mixture"
    assert "SDR" in evaluations["oracle"][0].stdout  # the table is printed
    ceiling, floor = oracle["tracks"]["synthetic-test-000"], mixture["tracks"]["synthetic-test-000"]
    trained = smoke_run.results["tracks"]["synthetic-test-000"]
    for source in SOURCES:
        sdr = ceiling[source]["SDR"]
        assert sdr > trained[source]["SDR"] + 6, (source, sdr, trained[source]["SDR"])
        assert sdr > floor[source]["SDR"] + 10, (source, sdr, floor[source]["SDR"])
        assert ceiling[source]["SIR"] > floor[source]["SIR"] + 10, source


# ------------------------------------------------------------------------------- failed runs

def test_a_crashed_run_is_recorded_as_failed(compose_train, tmp_path):
    from msslab.training import run

    cfg = compose_train(["experiment=smoke", "logger=none", "data.chunk_seconds=30"], tmp_path)  # tracks are 6 s
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    message = str(exit_info.value)
    assert message.startswith("error:") and "synthetic-train-" in message and "chunk" in message
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "failed" and "synthetic-train-" in results["error"]
    assert results["choices"]["experiment"] == "smoke" and "sources" not in results
