"""Experiment loggers (config group ``logger``): W&B offline by default, CSV, TensorBoard, none."""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger

from ..runs import wandb_run_id

log = logging.getLogger(__name__)


def build_loggers(cfg, choices: dict, run_dir: Path | None = None) -> list[Logger]:
    """Instantiate every logger of the ``logger`` node; W&B runs get a tag per config choice.

    With ``run_dir``, the W&B run id is the one kept in that directory, so a resumed run
    logs into the same W&B run (``resume="allow"``).
    """
    tags = run_tags(choices)
    loggers = []
    for name, node in (cfg or {}).items():
        kwargs = {}
        if str(node.get("_target_", "")).endswith("WandbLogger"):
            kwargs["tags"] = tags
            if run_dir is not None:
                kwargs |= {"id": wandb_run_id(run_dir), "resume": "allow"}
        loggers.append(instantiate(node, **kwargs))
    return loggers


def run_tags(choices: dict) -> list[str]:
    """One tag per config choice, ``group=value``; a list (augmentation) gives one tag per item.

    W&B refuses tags over 64 characters, which one tag for a whole list soon is.
    """
    tags = []
    for group, value in choices.items():
        if isinstance(value, (list, tuple)):
            tags += [f"{group}={item}" for item in value] or [f"{group}=none"]
        elif value not in (None, ""):
            tags.append(f"{group}={value}")
    return [tag[:64] for tag in tags]


def log_test_results(loggers: list[Logger], results: dict, example: dict | None = None) -> None:
    """Log the museval medians to every logger, plus a table, audio and a spectrogram to W&B.

    With test conditions (``results["conditions"]``), each condition's medians are logged
    as ``test/<condition>/<target>/<metric>`` and W&B gets a table over conditions.

    ``example``: ``{"name", "sample_rate", "mixture" (C, T), "estimates" {target: (C, T)}}``.
    """
    flat = {f"test/{target}/{metric}": value for target, scores in results["sources"].items()
            for metric, value in scores.items() if np.isfinite(value)}
    # Every test condition under its own prefix (clean is the plain test/...).
    for condition, scored in (results.get("conditions") or {}).items():
        if scored["sources"] is not results["sources"]:
            flat |= {f"test/{condition}/{target}/{metric}": value for target, scores in scored["sources"].items()
                     for metric, value in scores.items() if np.isfinite(value)}
    for logger in loggers:
        logger.log_metrics(flat)
        if isinstance(logger, WandbLogger):
            _log_wandb_media(logger, results, example)


def _log_wandb_media(logger: WandbLogger, results: dict, example: dict | None) -> None:
    import wandb  # lazy: about 1 s of import, which only runs that log to W&B pay

    rows = [[t] + [s.get(m) for m in ("SDR", "SIR", "SAR", "ISR")] for t, s in results["sources"].items()]
    logger.log_table("test/museval", columns=["target", "SDR", "SIR", "SAR", "ISR"], data=rows)
    for target, scores in results["sources"].items():
        logger.experiment.summary.update({f"test/{target}/{m}": v for m, v in scores.items()})
    conditions = results.get("conditions") or {}
    if len(conditions) > 1:
        rows = [[c, t] + [s.get(m) for m in ("SDR", "SIR", "SAR", "ISR")]
                for c, scored in conditions.items() for t, s in scored["sources"].items()]
        logger.log_table("test/conditions", columns=["condition", "target", "SDR", "SIR", "SAR", "ISR"], data=rows)
    if example is None:
        return
    sr, seconds = example["sample_rate"], 10
    clips = {"mixture": example["mixture"], **example["estimates"]}
    audio = {f"audio/{name}": wandb.Audio(clip[:, : seconds * sr].mean(0), sample_rate=sr, caption=f"{example['name']}: {name}")
             for name, clip in clips.items()}
    logger.experiment.log({**audio, "spectrograms": wandb.Image(spectrogram_figure(clips, sr, seconds, example["name"]))})


def spectrogram_figure(clips: dict[str, np.ndarray], sample_rate: int, seconds: float, title: str):
    """One log-magnitude spectrogram panel per clip (first ``seconds`` of each, mono sum)."""
    matplotlib.use("Agg")  # files only; never open a window (the figure goes to W&B)
    fig, axes = plt.subplots(len(clips), 1, figsize=(8, 1.8 * len(clips)), sharex=True, constrained_layout=True)
    for ax, (name, clip) in zip(np.atleast_1d(axes), clips.items()):
        ax.specgram(clip[:, : int(seconds * sample_rate)].mean(0), NFFT=512, Fs=sample_rate, noverlap=384, cmap="magma", vmin=-120)
        ax.set_ylabel(f"{name}\nHz")
    np.atleast_1d(axes)[-1].set_xlabel("time (s)")
    fig.suptitle(title)
    return fig
