"""``msslab-train``: train a separator, evaluate its best checkpoint, write ``results.json``.

A Hydra app: ``msslab-train model=gru 'augmentation=[pitch_shift,reverb]' trainer.max_epochs=20``.
Returns the best validation score, so Hydra sweepers (Optuna) can maximise it.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from pathlib import Path

import hydra
import lightning.pytorch as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from .augmentation import AugmentationError, check_overrides, stage_names
from .errors import MsslabError
from .evaluate import CONF_DIR, evaluate_conditions, print_conditions, print_table, run_choices
from .logger import build_loggers, log_test_results
from .results import write_results
from .system import build_system, covers_mixture

log = logging.getLogger(__name__)


def _choices(cfg: DictConfig) -> dict:
    """Config choices for results and tags; the augmentation list is read off the merged node."""
    choices = run_choices()
    if choices.get("experiment") is None:
        choices.pop("experiment", None)
    choices["augmentation"] = stage_names(cfg.get("augmentation"))
    return choices


def train(cfg: DictConfig) -> dict | None:
    """Fit, test the best checkpoint, log and write results; returns the results dict (None on DDP ranks > 0)."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(cfg.seed, workers=True)
    choices = _choices(cfg)

    datamodule = instantiate(cfg.data, augmentation=cfg.get("augmentation"))
    datamodule.setup("fit")
    residual = not covers_mixture(datamodule.sources, datamodule.groups)
    system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual)
    if not any(p.requires_grad for p in system.model.parameters()):
        raise MsslabError(f"model={cfg.model._target_} has nothing to train: evaluate it with msslab-eval")
    # Input normalisation from clean training mixtures (magnitude statistics per bin).
    examples = datamodule.clean_train_examples(64)
    system.model.set_input_stats(system.spectrogram(examples).abs())

    loggers = build_loggers(cfg.get("logger"), choices)
    for logger in loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True) | {"choices": choices})
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    start = time.perf_counter()
    trainer.fit(system, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    if not trainer.is_global_zero:  # DDP: the other processes only train; rank 0 evaluates and writes
        return None

    # Lightning leaves the module on the CPU after fit: evaluate on the trainer's device.
    system.to(trainer.strategy.root_device)
    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint is not None else ""
    if best_path:
        system.load_state_dict(torch.load(best_path, map_location=system.device, weights_only=True)["state_dict"])
    best_score = checkpoint.best_model_score if checkpoint is not None else None
    results = evaluate_conditions(system, datamodule, run_dir, cfg)
    record = dict(status="completed", choices=choices, overrides=_overrides(), seed=cfg.seed,
                  sources=results["sources"], tracks=results["tracks"], tracks_scored=results["tracks_scored"],
                  metric=results["metric"], conditions=results["conditions"], train_seconds=train_seconds,
                  eval_seconds=results["eval_seconds"], epochs=trainer.current_epoch,
                  best_checkpoint=best_path or None,
                  best_val=float(best_score) if best_score is not None else None,
                  val_metric=f"val/{cfg.metric.validation}",
                  nb_parameters=sum(p.numel() for p in system.model.parameters()),
                  separation=results["separation"])
    write_results(run_dir, **record)
    log_test_results(loggers, results, results["example"])
    for logger in loggers:
        logger.finalize("success")
    print_conditions(results)
    print_table(results["sources"], f"museval medians (dB) over {len(results['tracks'])} test tracks "
                                    f"(trained {train_seconds:.0f} s, evaluated {results['eval_seconds']:.0f} s), run {run_dir}")
    return record


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


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

    In a sweep a failed run returns NaN (the sweep goes on; an Optuna search gets the
    exception and marks the trial failed, see ``max_failure_rate`` in experiments/search.yaml);
    a single run re-raises.
    """
    run_dir = Path(cfg.paths.output_dir)
    start = time.perf_counter()
    try:
        record = train(cfg)
        _finish_wandb(0)
    except Exception as exc:
        _finish_wandb(1)
        log.error("run failed: %s", exc)
        if rank_zero_only.rank != 0:  # DDP: rank 0 records the run
            raise
        write_results(run_dir, status="failed", choices=_choices(cfg), overrides=_overrides(), seed=cfg.get("seed"),
                      error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(),
                      train_seconds=time.perf_counter() - start)
        if _multirun():
            if "optuna" in str(HydraConfig.get().sweeper.get("_target_", "")):
                raise  # Optuna records the trial as failed; NaN would make its sweeper crash
            return float("nan")
        if isinstance(exc, MsslabError):  # the user's input: the message says it all
            raise SystemExit(f"error: {exc}") from None
        raise
    if record is None or record["best_val"] is None:  # not rank 0, or nothing validated
        return float("nan")
    return record["best_val"]


@hydra.main(config_path=CONF_DIR, config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float:
    return run(cfg)


def main():
    # Hydra names unknown group options itself, except inside a list: augmentation=[reverb,echo].
    try:
        check_overrides(sys.argv[1:], CONF_DIR)
    except AugmentationError as exc:
        raise SystemExit(f"error: {exc}") from None
    return _hydra_main()


if __name__ == "__main__":
    main()
