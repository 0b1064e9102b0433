"""Training budgets and learning-rate schedules that know how far the run has got.

``TrainingBudget`` stops a fit after so many minutes (wall-clock or process CPU time),
and ``AnnealedLR`` decays the learning rate over the run, down to ``final`` times its
initial value when the run ends. How far the run has got (``training_progress``) is the
furthest of the step count against ``trainer.max_steps``, the step count against the
steps of ``trainer.max_epochs``, and the time spent against a ``TrainingBudget``: so the
same schedule anneals over 15 epochs or over 20 minutes, whichever the run is given.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

from .errors import MsslabError

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
SHAPES = ("linear", "cosine")


class TrainingBudget(pl.Callback):
    """Stops training once ``minutes`` of the ``clock`` are spent.

    ``clock``: ``wall`` (elapsed time) or ``cpu`` (CPU time of the training process, all its
    threads; data-loader worker processes are not counted, so use ``data.num_workers=0`` to
    budget the whole work). Time spent in validation counts. The time spent is saved in
    checkpoints, so a resumed run continues the same budget; under DDP rank 0's clock decides
    for every process.

    ``snapshots``: minutes of the budget at which to save the training state as it is then
    (``<snapshot_dir>/budget-<minutes>min.ckpt``, a full checkpoint, at the first step past
    each mark): one run gives its model after 5, 10, 20, ... minutes, a learning curve against
    compute. With a schedule that does not look at the budget (``scheduler=plateau``) the
    state at a mark is the one a run of that budget would have reached (same seed).
    """

    def __init__(self, minutes: float, clock: str = "wall", snapshots=(), snapshot_dir: str | None = None):
        if clock not in CLOCKS:
            raise MsslabError(f"budget.clock: unknown clock {clock!r}; choose one of {sorted(CLOCKS)}")
        if not minutes > 0:
            raise MsslabError(f"budget.minutes must be positive, got {minutes}")
        snapshots = sorted(float(m) for m in snapshots or ())
        if any(not 0 < m <= minutes for m in snapshots):
            raise MsslabError(f"budget.snapshots: every mark must lie in (0, budget.minutes={minutes:g}], got "
                              f"{[f'{m:g}' for m in snapshots]}")
        if snapshots and snapshot_dir is None:
            raise MsslabError("budget.snapshots needs a folder to save them in")
        self.snapshots, self.snapshot_dir = snapshots, snapshot_dir
        self._taken: list[float] = []  # marks saved (kept over a resume: a mark is saved once)
        self.seconds, self.clock = 60.0 * minutes, clock
        self._before = 0.0  # spent by the runs this one resumes
        self._start: float | None = None
        self._fraction = 0.0  # as rank 0 last measured it
        self.stopped = False  # this callback ended the fit

    def spent(self) -> float:
        """Seconds of the budget spent so far (this run and the ones it resumes)."""
        return self._before + (CLOCKS[self.clock]() - self._start if self._start is not None else 0.0)

    def fraction(self) -> float:
        """Share of the budget spent (rank 0's measurement, the same on every process), in [0, 1]."""
        return self._fraction

    def on_train_start(self, trainer, pl_module):
        self._start = CLOCKS[self.clock]()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        # One measurement, broadcast, decides both the stop and the progress the next scheduler
        # step reads: per-process clocks would give every DDP process another lr and stop step.
        fraction = float(trainer.strategy.broadcast(self.spent() / self.seconds, src=0))
        self._fraction = min(1.0, fraction)
        for mark in self.snapshots:  # decided on rank 0's clock: saving is collective under DDP
            if mark not in self._taken and fraction * self.seconds >= 60.0 * mark:
                self._taken.append(mark)
                # the whole training state (optimizer, callbacks), as last.ckpt; said, so Lightning logs nothing
                trainer.save_checkpoint(snapshot_path(self.snapshot_dir, mark), weights_only=False)
        if fraction >= 1.0:
            trainer.should_stop = self.stopped = True

    def state_dict(self) -> dict:
        return {"spent": self.spent(), "seconds": self.seconds, "clock": self.clock, "snapshots_taken": self._taken}

    def load_state_dict(self, state_dict: dict) -> None:
        same_clock = state_dict.get("clock") == self.clock
        self._before = float(state_dict["spent"]) if same_clock else 0.0
        self._taken = [float(m) for m in state_dict.get("snapshots_taken", [])] if same_clock else []


def snapshot_path(folder, minutes: float):
    """Where ``TrainingBudget`` saves the state at ``minutes`` of the budget."""
    return Path(folder) / f"budget-{minutes:g}min.ckpt"


def training_progress(trainer: pl.Trainer) -> float:
    """How far the fit has got, in [0, 1]: the furthest of its step and time limits."""
    step = trainer.global_step
    fractions = [step / trainer.max_steps] if trainer.max_steps and trainer.max_steps > 0 else []
    total = trainer.estimated_stepping_batches  # from max_epochs (inf when unlimited)
    if math.isfinite(total) and total > 0:
        fractions.append(step / total)
    fractions += [c.fraction() for c in trainer.callbacks if isinstance(c, TrainingBudget)]
    return min(1.0, max(fractions, default=0.0))


class AnnealedLR(torch.optim.lr_scheduler.LRScheduler):
    """Decays each learning rate from its initial value to ``final`` times it over the run.

    ``shape``: ``linear`` or ``cosine`` in the run's progress (``training_progress``), which
    ``bind`` supplies (``SeparationSystem`` binds the trainer's); steps after every batch.
    At a fixed budget a decay to (near) zero beats a constant or plateau-driven rate:
    the last steps are small ones that settle the weights.
    """

    interval = "step"

    def __init__(self, optimizer: torch.optim.Optimizer, shape: str = "linear", final: float = 0.0, last_epoch: int = -1):
        if shape not in SHAPES:
            raise MsslabError(f"scheduler.shape: unknown shape {shape!r}; choose one of {list(SHAPES)}")
        if not 0.0 <= final <= 1.0:
            raise MsslabError(f"scheduler.final must be in [0, 1] (a fraction of the initial lr), got {final}")
        self.shape, self.final = shape, final
        self._progress = lambda: 0.0  # until bound: the initial rate
        super().__init__(optimizer, last_epoch)

    def bind(self, progress) -> "AnnealedLR":
        """Take the run's progress (a callable returning [0, 1]) from now on."""
        self._progress = progress
        return self

    def factor(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        decay = 1.0 - p if self.shape == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
        return self.final + (1.0 - self.final) * decay

    def get_lr(self) -> list[float]:
        factor = self.factor(self._progress())
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k != "_progress"}


STOP_REASONS = ("max_epochs", "max_steps", "budget", "early_stopping", "killed", "other")


def stop_reason(trainer: pl.Trainer) -> str:
    """Why ``fit`` ended: one of ``STOP_REASONS`` (``killed``: interrupted by a signal, e.g. Ctrl-C or
    SLURM's SIGTERM, which Lightning catches and ends the fit normally)."""
    from lightning.pytorch.callbacks import EarlyStopping
    from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

    if trainer.interrupted:
        return "killed"
    if any(isinstance(c, TrainingBudget) and c.stopped for c in trainer.callbacks):
        return "budget"
    if any(isinstance(c, EarlyStopping) and c.stopping_reason != EarlyStoppingReason.NOT_STOPPED
           for c in trainer.callbacks):
        return "early_stopping"
    if trainer.max_steps is not None and 0 < trainer.max_steps <= trainer.global_step:
        return "max_steps"
    if trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch:
        return "max_epochs"
    return "other"


class StopRecord(pl.Callback):
    """Records why and when the fit stopped, and keeps a decided stop across a resume.

    Lightning does not save ``trainer.should_stop``: a run whose early stopping (or budget)
    had ended the fit, resumed after a crash in the evaluation that follows, trained on
    (an epoch more, until early stopping decided again). The decision is saved in every
    checkpoint and, resumed from one, the fit ends before its first step.

    ``steps``: optimizer steps this process ran; ``seconds()``: wall seconds of fitting,
    those of the runs it resumes included; ``reason``: set when the fit ends.
    """

    def __init__(self):
        self.steps, self.reason = 0, None
        self._before, self._start = 0.0, None
        self._restored_stop: str | None = None  # the stop a checkpoint had decided
        self._trainer = None

    def setup(self, trainer, pl_module, stage):
        self._trainer = trainer

    def seconds(self) -> float:
        return self._before + (time.perf_counter() - self._start if self._start is not None else 0.0)

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()
        if self._restored_stop:  # the fit it resumes had ended: train nothing more
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1

    def on_train_end(self, trainer, pl_module):
        self.reason = self._restored_stop if self._restored_stop and self.steps == 0 else stop_reason(trainer)

    def state_dict(self) -> dict:
        trainer = self._trainer
        stopping = trainer is not None and trainer.should_stop
        return {"seconds": self.seconds(), "stop": (self._restored_stop or stop_reason(trainer)) if stopping else None}

    def load_state_dict(self, state_dict: dict) -> None:
        self._before = float(state_dict.get("seconds", 0.0))
        self._restored_stop = state_dict.get("stop")
