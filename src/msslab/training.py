"""Training: fit a separator, evaluate its best checkpoint, write ``results.json`` (the library under ``msslab-train``).

:func:`run` is what the command calls (``msslab.cli.train``): it returns the best validation score, so
Hydra sweepers (Optuna) can maximise it, and records a crash as a failed run.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .allocator import keep_freed_memory
from .errors import MsslabError
from .evaluation import evaluate_conditions, print_conditions, print_table
from .logger import build_loggers, log_test_results
from .results import run_identity, write_results
from .runs import (RunDirBusy, checkpoint_dirs, is_finite, latest_checkpoint, locked, prepare, record_resume,
                   resume_history)
from .schedule import StopRecord, TrainingBudget
from .search import Pruned
from .system import build_system, covers_mixture

log = logging.getLogger(__name__)


def train(cfg: DictConfig, ckpt_path: Path | None = None) -> dict | None:
    """Fit (continuing from ``ckpt_path`` if given), test the best checkpoint, log and write results.

    Returns the results dict (None on DDP ranks > 0). Once results.json says completed, a
    failure of what follows (W&B media, logger finalisation, the printed tables) is recorded
    in its ``warnings`` instead of failing the run.
    """
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()
    pl.seed_everything(cfg.seed, workers=True)
    identity = run_identity(cfg)  # choices (with the augmentation list), overrides, seed
    choices = identity["choices"]

    datamodule = instantiate(cfg.data, augmentation=cfg.get("augmentation"))
    datamodule.setup("fit")
    residual = not covers_mixture(datamodule.sources, datamodule.groups)
    system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual)
    if not any(p.requires_grad for p in system.model.parameters()):
        raise MsslabError(f"model={cfg.model._target_} has nothing to train: evaluate it with msslab-eval")
    # Input normalisation from clean training mixtures (magnitude statistics per bin).
    examples = datamodule.clean_train_examples(64)
    system.model.set_input_stats(system.spectrogram(examples).abs())

    loggers = build_loggers(cfg.get("logger"), choices, run_dir)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | {"choices": choices})
    budget = cfg.get("budget") or {}
    # A budget trains for its time (and scheduler=anneal decays over all of it): early stopping
    # stays off unless budget.early_stopping=true asks for it.
    keep = {name: node for name, node in (cfg.get("callbacks") or {}).items() if node is not None
            and not (name == "early_stopping" and budget.get("minutes") is not None
                     and not budget.get("early_stopping", False))}
    callbacks = [instantiate(c) for c in keep.values()]
    if budget.get("minutes") is not None:
        callbacks.append(TrainingBudget(budget.minutes, budget.get("clock", "wall"), budget.get("snapshots") or (),
                                        str(checkpoint_dirs(cfg)[0])))
    stop = StopRecord()  # why and when fit stopped; keeps a decided stop over a resume
    callbacks.append(stop)
    if (cfg.get("search") or {}).get("trial") is not None:
        from .search import pruning_callback

        callbacks.append(pruning_callback(cfg))
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    # weights_only: a run directory's checkpoint is data, never code (Lightning's default depends on torch's)
    trainer.fit(system, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    train_seconds = time.perf_counter() - start
    if not trainer.is_global_zero:  # DDP: the other processes only train; rank 0 evaluates and writes
        return None
    resumes = resume_history(run_dir)

    # Lightning leaves the module on the CPU after fit: evaluate on the trainer's device.
    system.to(trainer.strategy.root_device)
    # The callback that keeps the best validation score (step.ckpt has no monitor).
    checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None)
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if best_path:
        system.load_state_dict(torch.load(best_path, map_location=system.device, weights_only=True)["state_dict"])
    best_score = checkpoint.best_model_score if checkpoint is not None else None
    results = evaluate_conditions(system, datamodule, run_dir, cfg)
    record = dict(status="completed", **identity,
                  sources=results["sources"], tracks=results["tracks"], tracks_scored=results["tracks_scored"],
                  metric=results["metric"], conditions=results["conditions"], train_seconds=train_seconds,
                  eval_seconds=results["eval_seconds"], epochs=trainer.current_epoch,
                  global_step=trainer.global_step, resumes=resumes,
                  stop_reason=stop.reason, stopped_after_seconds=stop.seconds(), steps_this_process=stop.steps,
                  best_checkpoint=best_path or None,
                  best_val=float(best_score) if best_score is not None else None,
                  val_metric=f"val/{cfg.metric.validation}",
                  nb_parameters=sum(p.numel() for p in system.model.parameters()),
                  separation=results["separation"])
    write_results(run_dir, **record)

    def finalize_loggers():
        for logger in loggers:
            logger.finalize("success")
        _finish_wandb(0)

    title = (f"museval medians (dB) over {len(results['tracks'])} test tracks "
             f"(trained {train_seconds:.0f} s, evaluated {results['eval_seconds']:.0f} s), run {run_dir}")
    warnings = []
    for what, step in (("logging the test results", lambda: log_test_results(loggers, results, results["example"])),
                       ("finalizing the loggers", finalize_loggers),
                       ("printing the tables", lambda: (print_conditions(results), print_table(results["sources"], title)))):
        try:
            step()
        except Exception as exc:  # the scores are on disk: a logging failure must not fail the run
            log.warning("after the run completed, %s failed: %s: %s", what, type(exc).__name__, exc)
            warnings.append(f"{what}: {type(exc).__name__}: {exc}")
    if warnings:
        record["warnings"] = warnings
        write_results(run_dir, **record)
    return record


def _multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _finish_wandb(exit_code: int) -> None:
    # A sweep's launcher reuses worker processes: an unfinished W&B run would swallow the next job's logs.
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def run(cfg: DictConfig) -> float:
    """Train and record the outcome; a crash is written to results.json as ``failed``.

    A run continues its directory's newest checkpoint when resuming (``resume``; always in a
    sweep, see :func:`msslab.runs.prepare`); a finished run is not run again. In a sweep a
    failed run, or one without a best validation score, returns NaN (the sweep goes on)
    or, under the Optuna sweeper, raises (the trial is recorded as failed: optuna refuses
    NaN); a single run re-raises.
    """
    run_dir = Path(cfg.paths.output_dir)
    _note_sigterm()
    resume = cfg.get("resume")
    if resume is None and _multirun():
        resume = "auto"  # a relaunched sweep continues each job's directory
    if rank_zero_only.rank != 0:  # DDP: rank 0 holds the lock and decided; the others follow its checkpoint
        train(cfg, latest_checkpoint(checkpoint_dirs(cfg)) if resume is not None else None)
        return float("nan")
    try:
        with locked(run_dir):
            return _run_locked(cfg, run_dir, resume)
    except (RunDirBusy, ResumeRefused) as exc:  # nothing of this run was written: nothing to record
        log.error("%s", exc)
        return _failed_value(exc)


_SIGTERM = {"received": False}


def _note_sigterm() -> None:
    """Remember a SIGTERM where a handler (submitit's, in a SLURM job) keeps the process alive.

    SLURM requeues or preempts a job with SIGTERM, which also ends the W&B service process:
    the run may then fail on the next log call before Lightning stops it. Such an error is
    no verdict on the run (see :func:`_run_locked`). Without a handler SIGTERM still kills.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        return
    if getattr(previous, "notes_sigterm", False):  # a worker process reused by a sweep: wrapped already
        return

    def handler(signum, frame):
        _SIGTERM["received"] = True
        previous(signum, frame)

    handler.notes_sigterm = True
    signal.signal(signal.SIGTERM, handler)


class ResumeRefused(MsslabError):
    """The run directory holds a different (or any, for a new run) run."""


def _run_locked(cfg: DictConfig, run_dir: Path, resume) -> float:
    try:
        plan = prepare(run_dir, cfg, resume, rerun_failed=bool(cfg.get("rerun_failed")))
    except MsslabError as exc:
        raise ResumeRefused(str(exc)) from None
    if plan["skip"] is not None:
        record = plan["skip"]
        log.info("%s: already %s, not run again (rerun_failed=true reruns a failed run)", run_dir, record["status"])
        if record["status"] == "failed":
            return _failed_value(MsslabError(f"{run_dir} failed before: {record.get('error')}"))
        if record["status"] == "pruned":  # only msslab-search prunes; it reads results.json itself
            return float("nan")
        return _objective(record)
    if plan["checkpoint"] is not None:
        ckpt = torch.load(plan["checkpoint"], map_location="cpu", weights_only=True, mmap=True)
        record_resume(run_dir, plan["checkpoint"], ckpt["epoch"], ckpt["global_step"])
        log.info("resuming %s from %s (epoch %d, step %d)", run_dir, plan["checkpoint"].name, ckpt["epoch"],
                 ckpt["global_step"])
        del ckpt
    start = time.perf_counter()

    def record_killed(exc: BaseException) -> None:
        # Not final: resume=auto continues the run from its newest checkpoint.
        if rank_zero_only.rank == 0:
            write_results(run_dir, status="killed", **run_identity(cfg), error=f"{type(exc).__name__}: {exc}",
                          stop_reason="killed", stopped_after_seconds=time.perf_counter() - start,
                          resumes=resume_history(run_dir), train_seconds=time.perf_counter() - start)

    try:
        record = train(cfg, plan["checkpoint"])
    except Pruned as exc:
        _finish_wandb(0)
        log.info("%s", exc)
        write_results(run_dir, status="pruned", **run_identity(cfg),
                      error=str(exc), epochs=exc.epoch + 1, last_val=exc.value, val_metric=exc.monitor,
                      resumes=resume_history(run_dir), train_seconds=time.perf_counter() - start)
        return float("nan")
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (SLURM): Lightning ends the fit and exits
        record_killed(exc)
        raise
    except Exception as exc:
        if _SIGTERM["received"]:  # SLURM is requeueing or cancelling the job: killed, not failed; requeued, it resumes
            log.warning("stopped by SIGTERM (%s: %s): recorded as killed, not failed", type(exc).__name__, exc)
            record_killed(exc)
            raise SystemExit(143) from exc
        _finish_wandb(1)
        log.error("run failed: %s", exc)
        if rank_zero_only.rank != 0:  # DDP: rank 0 records the run
            raise
        write_results(run_dir, status="failed", **run_identity(cfg),
                      error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                      resumes=resume_history(run_dir), train_seconds=time.perf_counter() - start)
        return _failed_value(exc)
    return _objective(record)


def _optuna_sweeper() -> bool:
    return _multirun() and "optuna" in str(HydraConfig.get().sweeper.get("_target_", ""))


def _failed_value(exc: Exception) -> float:
    """What a failed run returns: NaN in a sweep (it goes on), the error otherwise."""
    if _optuna_sweeper():
        raise exc  # Optuna records the trial as failed; NaN would make its sweeper crash
    if _multirun():
        return float("nan")
    if isinstance(exc, MsslabError):  # the user's input: the message says it all
        raise SystemExit(f"error: {exc}") from None
    raise exc


def _objective(record: dict | None) -> float:
    """The best validation score; a completed run without one is a failed trial for Optuna."""
    if record is None:  # a DDP rank > 0
        return float("nan")
    value = record.get("best_val")
    if is_finite(value):
        return float(value)
    if _optuna_sweeper():
        raise MsslabError(f"no finite best validation score ({record.get('val_metric')}={value}): "
                          f"the trial counts as failed")
    return float("nan")
