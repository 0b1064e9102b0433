"""Runs that survive: a killed run resumes, a changed config is refused, run directories are
never shared, and a logging failure after the scores are written does not fail the run.

Training runs are far below ``experiment=smoke``: two targets, two 3 s test tracks.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

TINY = ["experiment=smoke", "data.targets=[vocals,accompaniment]", "data.train_tracks.nb_tracks=2",
        "data.test_tracks.nb_tracks=2", "data.test_tracks.seconds=3.0", "trainer.enable_progress_bar=false"]
# 2 epochs of 20 steps, a step checkpoint every 3: long enough to be killed mid-epoch.
KILLABLE = [*TINY, "trainer.max_epochs=2", "data.samples_per_track=40", "trainer.limit_train_batches=20",
            "callbacks.step_checkpoint.every_n_train_steps=3"]
LONG = 900  # s; a few seconds each on an idle machine, minutes on a crowded one


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_a_killed_run_resumes_from_its_checkpoint(cli, tmp_path):
    run_dir = tmp_path / "run"
    process = cli.start("msslab.cli.train", *KILLABLE, f"hydra.run.dir={run_dir}")
    step_ckpt = run_dir / "checkpoints" / "step.ckpt"
    deadline = time.monotonic() + LONG
    while not step_ckpt.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    killed = cli.wait(process, timeout=LONG)
    assert killed.returncode == -signal.SIGKILL, killed.tail()
    assert step_ckpt.exists() and not (run_dir / "results.json").exists()
    hydra_config = (run_dir / ".hydra" / "config.yaml").read_bytes()

    # A changed config is refused, naming the key, and the run's recorded config is kept.
    changed = cli.run("msslab.cli.train", *KILLABLE, "model.hidden_size=48", f"hydra.run.dir={run_dir}", "resume=auto",
                      timeout=LONG)
    assert changed.returncode != 0 and "model.hidden_size: 32 -> 48" in changed.output, changed.tail()
    assert "Traceback" not in changed.output
    assert (run_dir / ".hydra" / "config.yaml").read_bytes() == hydra_config
    resumed = cli.run("msslab.cli.train", f"resume={run_dir}", timeout=LONG)  # the run's own overrides
    assert resumed.returncode == 0, resumed.tail()
    results = _results(run_dir)
    assert results["status"] == "completed", results.get("error")
    # As many epochs and steps as an uninterrupted run, and the resumed process itself trained only
    # the steps after its checkpoint: it continued, it did not restart (a restart from scratch
    # also ends at 2 epochs and 40 steps, and the resume history is written before fit).
    assert results["epochs"] == 2 and results["global_step"] == 2 * 20
    [history] = results["resumes"]
    assert history["checkpoint"] == "step.ckpt" and history["epoch"] == 0 and 3 <= history["global_step"] < 20
    checkpoint_step = history["global_step"]
    assert results["steps_this_process"] == 2 * 20 - checkpoint_step, (results["steps_this_process"], checkpoint_step)
    assert results["stop_reason"] == "max_epochs"
    assert results["overrides"][: len(KILLABLE)] == KILLABLE
    # One W&B run, continued: both processes logged under the run id kept in the run directory.
    run_id = (run_dir / ".msslab" / "wandb_id").read_text().strip()
    offline = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(f"-{run_id}") for p in offline), offline


def test_runs_started_together_get_their_own_directories(cli, tmp_path):
    runs = cli.run_all({seed: ["msslab.cli.train", *TINY, "trainer.max_epochs=1", "logger=csv", "name=twin",
                               f"seed={seed}"] for seed in (1, 2)}, timeout=LONG)
    for result in runs.values():
        assert result.returncode == 0, result.tail()
    run_dirs = sorted((tmp_path / "outputs" / "twin").iterdir())
    assert len(run_dirs) == 2, run_dirs
    assert sorted(_results(d)["seed"] for d in run_dirs) == [1, 2]
    assert {Path(_results(d)["best_checkpoint"]).parent.parent for d in run_dirs} == set(run_dirs)


def test_a_run_directory_in_use_is_refused(compose_train, tmp_path):
    from msslab.runs import locked
    from msslab.training import run

    cfg = compose_train([*TINY, "logger=none"], tmp_path)
    with locked(tmp_path):  # as a live run in another process holds it
        with pytest.raises(SystemExit) as exit_info:
            run(cfg)
    assert "in use by a live run" in str(exit_info.value) and str(tmp_path) in str(exit_info.value)
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "checkpoints").exists()


def test_a_new_run_into_a_directory_holding_one_is_refused(compose_train, tmp_path):
    from msslab.training import run

    (tmp_path / ".msslab").mkdir()
    (tmp_path / ".msslab" / "config.yaml").write_text("seed: 1\n")  # a run started here before
    cfg = compose_train([*TINY, "logger=none"], tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run(cfg)
    assert "holds a run already" in str(exit_info.value) and "resume=auto" in str(exit_info.value)
    assert (tmp_path / ".msslab" / "config.yaml").read_text() == "seed: 1\n"
    assert not (tmp_path / "checkpoints").exists()


def test_a_logging_failure_after_the_scores_keeps_the_run_completed(compose_train, tmp_path, monkeypatch):
    import msslab.training

    def broken(*args, **kwargs):
        raise ConnectionError("W&B media upload refused")

    monkeypatch.setattr(msslab.training, "log_test_results", broken)
    cfg = compose_train([*TINY, "trainer.max_epochs=1", "logger=csv"], tmp_path)
    best_val = msslab.training.run(cfg)
    results = _results(tmp_path)
    assert results["status"] == "completed" and results["best_val"] == pytest.approx(best_val)
    assert results["sources"]["vocals"]["SDR"] is not None
    assert any("W&B media upload refused" in w for w in results["warnings"]), results.get("warnings")


EMA = ("callbacks.weight_average={_target_:lightning.pytorch.callbacks.WeightAveraging,"
       "multi_avg_fn:{_target_:torch.optim.swa_utils.get_ema_multi_avg_fn,decay:0.9}}")


def test_the_weight_average_is_what_checkpoints_and_the_test_use(compose_train, tmp_path):
    import torch

    import msslab.training
    from msslab.system import load_checkpoint

    cfg = compose_train([*TINY, "trainer.max_epochs=2", "logger=none", EMA], tmp_path)  # 2 steps an epoch
    msslab.training.run(cfg)
    results = _results(tmp_path)
    ckpt = torch.load(results["best_checkpoint"], map_location="cpu", weights_only=True)
    average, current = ckpt["state_dict"], ckpt["current_model_state"]
    assert int(ckpt["averaging_state"]["n_averaged"]) == ckpt["global_step"] >= 2  # updated after every step
    # The checkpoint's weights are the average, not the last step's; the test scored them.
    assert any(not torch.equal(average[k], current[k]) for k in average if k.startswith("separator.model.rnn."))
    system = load_checkpoint(results["best_checkpoint"])
    assert all(torch.equal(value, average[key]) for key, value in system.state_dict().items())
    assert results["status"] == "completed"


def test_an_old_run_without_its_stored_config_refuses_a_changed_one(cli, compose_train, tmp_path):
    """A run from before msslab kept .msslab/config.yaml: its own .hydra/config.yaml is compared,
    and the refused command leaves that run's .hydra/ as it was."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "old-run"
    cfg = compose_train([*KILLABLE, "model.hidden_size=48"], run_dir)
    OmegaConf.update(cfg, "paths.output_dir", "${hydra:runtime.output_dir}")  # as Hydra stored it
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    (run_dir / ".hydra" / "overrides.yaml").write_text("- model.hidden_size=48\n")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"an old run's checkpoint")
    before = {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()}

    result = cli.run("msslab.cli.train", *KILLABLE, f"hydra.run.dir={run_dir}", "resume=auto", timeout=LONG)
    assert result.returncode != 0 and "resume refused" in result.output, result.tail()
    assert "model.hidden_size: 48 -> 32" in result.output and "Traceback" not in result.output, result.tail()
    assert {p.name: p.read_bytes() for p in (run_dir / ".hydra").iterdir()} == before
    assert not (run_dir / "results.json").exists() and not (run_dir / ".msslab" / "config.yaml").exists()


def test_an_old_run_with_the_same_config_resumes_and_one_without_any_is_refused(compose_train, tmp_path):
    from omegaconf import OmegaConf

    from msslab.errors import MsslabError
    from msslab.runs import STATE_DIR, prepare

    cfg = compose_train(TINY, tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"an old run's checkpoint")
    with pytest.raises(MsslabError, match="without its config"):
        prepare(tmp_path, cfg, "auto")
    (tmp_path / STATE_DIR / "hydra").mkdir(parents=True)  # as preserve_hydra_files saved the old .hydra
    (tmp_path / STATE_DIR / "hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    plan = prepare(tmp_path, cfg, "auto")
    assert plan == {"skip": None, "checkpoint": tmp_path / "checkpoints" / "last.ckpt"}
    assert OmegaConf.load(tmp_path / STATE_DIR / "config.yaml") == cfg  # adopted: later resumes compare with it


def test_a_run_that_stopped_early_and_crashed_in_evaluation_trains_no_more(compose_train, tmp_path, monkeypatch):
    """Early stopping had ended the fit; the evaluation after it crashed. The rerun evaluates
    the same model: Lightning does not restore ``should_stop``, msslab's checkpoint does."""
    import torch

    import msslab.training

    # patience 1 and an unreachable min_delta: early stopping ends the fit after the second epoch
    stopping = [*TINY, "logger=none", "trainer.max_epochs=20", "callbacks.early_stopping.patience=1",
                "+callbacks.early_stopping.min_delta=1000"]

    def crash(*args, **kwargs):
        raise RuntimeError("out of memory in the evaluation")

    monkeypatch.setattr(msslab.training, "evaluate_conditions", crash)
    with pytest.raises(RuntimeError, match="out of memory"):
        msslab.training.run(compose_train(stopping, tmp_path))
    assert _results(tmp_path)["status"] == "failed"
    stopped_at = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    monkeypatch.undo()

    msslab.training.run(compose_train([*stopping, "resume=auto", "rerun_failed=true"], tmp_path))
    results = _results(tmp_path)
    assert results["status"] == "completed" and results["global_step"] == stopped_at, (results["global_step"], stopped_at)
    assert results["steps_this_process"] == 0 and results["stop_reason"] == "early_stopping"


@pytest.mark.parametrize("override, key", [
    ("+callbacks.evil={_target_:builtins.open,file:precious.txt,mode:w}", "callbacks.evil._target_"),
    ("optimizer._target_=torch.load", "optimizer._target_"),
    ("+callbacks.x={_target_:torch.optim.Adam,_args_:[{_target_:os.system,_args_:[id]}]}", "callbacks.x._args_[0]._target_"),
])
def test_resume_from_a_run_directory_refuses_stored_overrides_that_build_other_targets(tmp_path, override, key):
    """``resume=<run dir>`` turns the directory's stored overrides into the command's: they are data from
    a file, so only the shipped configs' targets may be built from them."""
    from msslab.errors import MsslabError
    from msslab.runs import STATE_DIR, resume_arguments

    (tmp_path / STATE_DIR / "hydra").mkdir(parents=True)
    (tmp_path / STATE_DIR / "hydra" / "overrides.yaml").write_text(f"- model=gru\n- '{override}'\n")
    with pytest.raises(MsslabError) as info:
        resume_arguments([f"resume={tmp_path}"])
    assert f"{key}=" in str(info.value) and "overrides.yaml" in str(info.value), str(info.value)
    # the README's weight-average recipe is the user's own and stays allowed; so is a given override
    (tmp_path / STATE_DIR / "hydra" / "overrides.yaml").write_text(f"- model=gru\n- '{EMA}'\n")
    assert resume_arguments([f"resume={tmp_path}"])[:2] == ["model=gru", EMA]
    (tmp_path / STATE_DIR / "hydra" / "overrides.yaml").write_text(f"- '{override}'\n")
    given = override.lstrip("+")
    assert resume_arguments([f"resume={tmp_path}", given]) == [f"resume={tmp_path}", given, f"hydra.run.dir={tmp_path}"]
