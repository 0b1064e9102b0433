"""Time budgets and the annealed learning rate: the decay follows the run's epochs, steps or
budget, a budget stops the fit and carries over a resume, and bad settings name their key."""

from __future__ import annotations

import io
import json
import math

import lightning.pytorch as pl
import pytest
import torch

from msslab.schedule import AnnealedLR, TrainingBudget

TINY = ["experiment=smoke", "data.targets=[vocals,accompaniment]", "data.train_tracks.nb_tracks=2",
        "data.test_tracks.nb_tracks=1", "data.test_tracks.seconds=3.0", "trainer.enable_progress_bar=false",
        "logger=none", "scheduler=anneal"]


class RecordLR(pl.Callback):
    """The learning rate each training batch ran with."""

    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(compose_train, tmp_path, overrides, recorder=None):
    import msslab.training

    recorder = recorder or RecordLR()
    cfg = compose_train([*TINY, *overrides], tmp_path)
    original = msslab.training.instantiate

    def instantiate(config, *args, **kwargs):  # hand the trainer one more callback
        if kwargs.get("callbacks") is not None:
            kwargs["callbacks"] = [*kwargs["callbacks"], recorder]
        return original(config, *args, **kwargs)

    msslab.training.instantiate = instantiate
    try:
        msslab.training.run(cfg)
    finally:
        msslab.training.instantiate = original
    return recorder.lrs, json.loads((tmp_path / "results.json").read_text())


@pytest.mark.parametrize("shape", ["linear", "cosine"])
def test_factor_runs_from_one_to_final(shape):
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = AnnealedLR(optimizer, shape=shape, final=0.1)
    assert scheduler.factor(0.0) == pytest.approx(1.0) and scheduler.factor(1.0) == pytest.approx(0.1)
    assert scheduler.factor(0.5) == pytest.approx(0.55)  # both shapes pass the midpoint halfway
    expected = 0.1 + 0.9 * (0.75 if shape == "linear" else 0.5 * (1 + math.cos(math.pi / 4)))
    assert scheduler.factor(0.25) == pytest.approx(expected)
    assert scheduler.factor(2.0) == pytest.approx(0.1)  # past the end: stays at final
    progress = iter([0.5, 1.0])
    scheduler.bind(lambda: next(progress))
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.55e-3)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1e-3)


def test_scheduler_state_is_plain_data():
    optimizer = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3)
    scheduler = AnnealedLR(optimizer).bind(lambda: 0.25)
    optimizer.step()
    scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)  # a bound callable would not pickle
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)  # checkpoints are loaded weights_only
    restored = AnnealedLR(torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=1e-3))
    restored.load_state_dict(state)
    assert restored.last_epoch == scheduler.last_epoch and restored.get_last_lr() == pytest.approx([0.75e-3])


def test_budget_state_carries_over_a_resume():
    budget = TrainingBudget(minutes=1.0, clock="cpu")
    budget.on_train_start(None, None)
    sum(i * i for i in range(200_000))  # spend some CPU time
    state = budget.state_dict()
    assert 0 < state["spent"] < 60
    resumed = TrainingBudget(minutes=1.0, clock="cpu")
    resumed.load_state_dict(state)
    assert resumed.spent() == pytest.approx(state["spent"])
    other_clock = TrainingBudget(minutes=1.0, clock="wall")
    other_clock.load_state_dict(state)  # CPU seconds say nothing about wall seconds
    assert other_clock.spent() == 0.0


def test_learning_rate_anneals_over_the_epochs(compose_train, tmp_path):
    lrs, results = _fit(compose_train, tmp_path, ["trainer.max_epochs=2", "scheduler.final=0.1", "optimizer.lr=0.001"])
    steps = results["global_step"]
    assert len(lrs) == steps >= 4
    assert lrs[0] == pytest.approx(1e-3)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))  # strictly decreasing, every step
    # linear in the steps done: the last batch runs at 1 - (1 - final) * (steps - 1) / steps
    assert lrs[-1] == pytest.approx(1e-3 * (1 - 0.9 * (steps - 1) / steps))
    assert results["stop_reason"] == "max_epochs" and results["epochs"] == 2


def test_budget_stops_the_fit_and_drives_the_decay(compose_train, tmp_path):
    lrs, results = _fit(compose_train, tmp_path, ["trainer.max_epochs=1000", "budget.minutes=0.05", "budget.clock=cpu", "optimizer.lr=0.001"])
    assert results["status"] == "completed"
    assert 2 < results["global_step"] < 1000 * 2  # stopped by the 3 s budget, long before 1000 epochs
    # max_epochs=1000 alone would barely move the rate: the budget drives it down to near 0
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] < 0.25e-3
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    # results.json says what ended training, and after how long (wall seconds >= the 3 CPU seconds)
    assert results["stop_reason"] == "budget" and results["stopped_after_seconds"] >= 3.0
    assert results["steps_this_process"] == results["global_step"]


def test_budget_snapshots_save_the_state_at_each_mark(compose_train, tmp_path):
    _, results = _fit(compose_train, tmp_path, ["trainer.max_epochs=1000", "budget.minutes=0.05", "budget.clock=cpu",
                                                "budget.snapshots=[0.01,0.03]"])
    states = [torch.load(tmp_path / "checkpoints" / f"budget-{m}min.ckpt", weights_only=True) for m in ("0.01", "0.03")]
    steps = [s["global_step"] for s in states]
    assert 0 < steps[0] < steps[1] < results["global_step"], (steps, results["global_step"])
    spent = [next(v for k, v in s["callbacks"].items() if k.startswith("TrainingBudget"))["spent"] for s in states]
    assert 0.6 <= spent[0] < 1.8 <= spent[1] < 3.0, spent  # saved at the first step past each mark
    # the weights differ: each snapshot is the state at its time, not the final one
    first, second = (s["state_dict"] for s in states)
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_budget_snapshots_are_saved_once_over_a_resume():
    budget = TrainingBudget(minutes=1.0, clock="cpu", snapshots=[0.5], snapshot_dir="unused")
    budget._taken = [0.5]
    resumed = TrainingBudget(minutes=1.0, clock="cpu", snapshots=[0.5], snapshot_dir="unused")
    resumed.load_state_dict(budget.state_dict())
    assert resumed._taken == [0.5]


@pytest.mark.parametrize("marks", [[0], [2.0], [-1, 0.5]])
def test_budget_snapshots_outside_the_budget_are_refused(marks):
    with pytest.raises(Exception, match=r"budget.snapshots: every mark must lie in \(0, budget.minutes=1\]"):
        TrainingBudget(minutes=1.0, clock="cpu", snapshots=marks, snapshot_dir="unused")


# patience 1 and an unreachable min_delta: early stopping would end the fit after the second epoch
STOPS_EARLY = ["callbacks.early_stopping.patience=1", "+callbacks.early_stopping.min_delta=1000"]


@pytest.mark.slow
@pytest.mark.parametrize("early_stopping", [False, True])
def test_a_budgeted_run_trains_its_budget_unless_early_stopping_is_asked_for(compose_train, tmp_path, early_stopping):
    _, results = _fit(compose_train, tmp_path, ["trainer.max_epochs=1000", "budget.minutes=0.05", "budget.clock=cpu",
                                                *STOPS_EARLY, f"budget.early_stopping={str(early_stopping).lower()}"])
    if early_stopping:
        assert results["stop_reason"] == "early_stopping" and results["epochs"] == 2, results
    else:
        assert results["stop_reason"] == "budget" and results["epochs"] > 2, results


@pytest.mark.parametrize("override, message", [
    ("scheduler.shape=steep", "scheduler.shape: unknown shape 'steep'"),
    ("budget.clock=sundial", "budget.clock: unknown clock 'sundial'"),
    ("budget.minutes=-1", "budget.minutes must be positive"),
])
@pytest.mark.slow
def test_bad_settings_name_their_key(cli, tmp_path, override, message):
    budget = [] if override.startswith("budget.minutes") else ["budget.minutes=1"]
    result = cli.run("msslab-train", *TINY, *budget, override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0 and f"error: {message}" in result.output, result.tail()
    assert "Traceback" not in result.output


class CtrlC(RecordLR):
    """Presses Ctrl-C after the third training step."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            raise KeyboardInterrupt


@pytest.mark.parametrize("moved", [False, True])
def test_a_killed_run_says_so_and_resumes(compose_train, tmp_path, moved):
    # moved: the checkpoints written outside the run directory; resume and the snapshots follow them
    folder = tmp_path / "elsewhere" if moved else tmp_path / "checkpoints"
    moves = [f"callbacks.checkpoint.dirpath={folder}", f"callbacks.step_checkpoint.dirpath={folder}"] if moved else []
    overrides = ["trainer.max_epochs=3", "budget.minutes=10", "budget.snapshots=[0.001]", *moves]
    with pytest.raises(SystemExit):  # Lightning catches the interrupt and exits
        _fit(compose_train, tmp_path, overrides, recorder=CtrlC())
    killed = json.loads((tmp_path / "results.json").read_text())
    assert killed["status"] == "killed" and killed["stop_reason"] == "killed" and killed["stopped_after_seconds"] > 0
    saved = sorted(p.name for p in folder.glob("*.ckpt"))
    assert "budget-0.001min.ckpt" in saved and {"last.ckpt", "step.ckpt"} & set(saved), saved
    assert moved != (tmp_path / "checkpoints").exists()
    _, results = _fit(compose_train, tmp_path, [*overrides, "resume=auto"])  # not final: it continues
    assert results["status"] == "completed" and results["stop_reason"] == "max_epochs" and len(results["resumes"]) == 1
    assert results["resumes"][0]["global_step"] >= 1  # from the interrupted run's checkpoint, not from scratch


class LostService(RecordLR):
    """SLURM's SIGTERM arrives (a handler keeps the process alive), then a logging call fails."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            import msslab.training

            msslab.training._SIGTERM["received"] = True
            raise BrokenPipeError("the W&B service process has gone")


def test_an_error_after_sigterm_is_recorded_as_killed_not_failed(compose_train, tmp_path, monkeypatch):
    import msslab.training

    monkeypatch.setitem(msslab.training._SIGTERM, "received", False)
    with pytest.raises(SystemExit) as exited:
        _fit(compose_train, tmp_path, ["trainer.max_epochs=3"], recorder=LostService())
    assert exited.value.code == 143
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] == "killed" and "BrokenPipeError" in record["error"], record
    _, results = _fit(compose_train, tmp_path, ["trainer.max_epochs=3", "resume=auto"])  # a requeued job resumes
    assert results["status"] == "completed" and len(results["resumes"]) == 1
