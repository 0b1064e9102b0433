"""``results.json``: the one machine-readable summary of a run (what ``msslab-compare`` reads).

Its schema is :class:`Results`: written by :func:`write_results` (``msslab-train``, ``msslab-eval``),
read by :func:`read_results` (the run bookkeeping in ``msslab.runs`` and the report in
``msslab.report.runs``). What Hydra recorded in a run's ``.hydra/`` is read by :func:`read_hydra_record`.
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd

from .errors import MsslabError

FILENAME = "results.json"
Scores = dict[str, dict[str, float]]  # {target: {SDR, SIR, SAR, ISR}} in dB


class Results(TypedDict, total=False):
    """The keys of ``results.json`` (DESIGN.md relies on ``status``, ``choices``, ``sources``,
    ``train_seconds``, ``eval_seconds``). Scores are medians over 1 s frames, then over tracks, in dB."""

    # every run
    status: str  # completed | failed | killed | pruned
    run_id: str  # the run directory's name
    finished: str  # ISO 8601, UTC
    host: str
    slurm: dict[str, Any]  # inside a SLURM job: its ids and requeue count (added by write_results itself)
    choices: dict[str, Any]  # config-group choices; augmentation: the list of stages
    overrides: list[str]  # the command-line overrides of the run that trained the model
    seed: int | None
    error: str  # failed, killed, pruned: why
    traceback: str  # failed: where
    train_seconds: float
    eval_seconds: float
    # scores (completed runs)
    sources: Scores  # the clean condition's
    tracks: dict[str, Scores]  # per test track
    tracks_scored: int
    metric: dict[str, Any]  # how BSSEval ran
    conditions: dict[str, dict[str, Any]]  # {name: {sources, tracks, parameters}}
    separation: dict[str, Any]  # the separation settings used, and the device
    warnings: list[str]  # what failed after the scores were written
    # training runs
    epochs: int
    global_step: int
    resumes: list[dict[str, Any]]
    stop_reason: str | None  # budget, max_epochs, max_steps, early_stopping, killed
    stopped_after_seconds: float
    steps_this_process: int
    best_checkpoint: str | None
    best_val: float | None
    last_val: float  # pruned: the score it was pruned at
    val_metric: str
    nb_parameters: int
    # evaluations of a checkpoint (msslab-eval)
    ckpt: str | None
    split: str  # test | valid
    eval_overrides: list[str]  # what the evaluation command set
    identity_from: str | None  # where the training run's identity was read


class ResultsError(MsslabError):
    """A results.json that cannot be read or is not a JSON object."""


def _clean(value):
    """JSON without NaN: missing scores become null (valid JSON for every reader)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def write_results(run_dir: Path, **fields) -> Path:
    """Write ``run_dir/results.json`` (:class:`Results`) atomically (a crash mid-write never leaves half a file).

    A key outside the schema is a bug in the caller: ``TypeError`` naming it, nothing written."""
    unknown = sorted(set(fields) - set(Results.__annotations__))
    if unknown:
        raise TypeError(f"write_results: {unknown} are not keys of results.json (msslab.results.Results)")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    payload = {"run_id": run_dir.name, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "host": socket.gethostname()} | ({"slurm": slurm_job()} if "SLURM_JOB_ID" in os.environ else {}) | fields
    return atomic_write_text(run_dir / FILENAME, json.dumps(_clean(payload), indent=2))


def slurm_job() -> dict:
    """The SLURM job this process runs in (from its environment): ``job_id``, ``array_job_id``,
    ``array_task_id`` (null outside an array), ``restarts`` (times the job was requeued) and
    ``job`` (``<array job>_<task>`` for an array task, as squeue and sacct name it)."""
    env = os.environ
    array_job, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return {"job": f"{array_job}_{task}" if array_job and task else env.get("SLURM_JOB_ID"),
            "job_id": env.get("SLURM_JOB_ID"), "array_job_id": array_job, "array_task_id": task,
            "restarts": int(env.get("SLURM_RESTART_COUNT", 0))}


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``path`` through a temporary file and a rename: readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_results(run_dir: Path) -> Results | None:
    """``run_dir/results.json`` (or that file itself), or None when there is none.

    Raises :class:`ResultsError` naming the file when it cannot be read or is not a JSON object."""
    path = Path(run_dir)
    if path.is_dir() or path.name != FILENAME:
        path = path / FILENAME
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ResultsError(f"cannot read {path}: {err}") from err
    if not isinstance(results, dict):
        raise ResultsError(f"malformed {path}: expected a JSON object, got {type(results).__name__}")
    return results


def read_hydra_record(run_dir: Path) -> tuple[dict, list[str]] | None:
    """``(choices, overrides)`` that Hydra recorded in ``run_dir/.hydra/`` (``hydra.yaml``'s choices,
    unfiltered; ``overrides.yaml``, else ``hydra.yaml``'s task overrides), or None when it holds neither
    file. What cannot be parsed counts as empty: ``.hydra`` is a fallback for runs that predate what
    msslab records itself, and must not hide a run."""
    from omegaconf import OmegaConf

    hydra_dir = Path(run_dir) / ".hydra"
    hydra_yaml, overrides_yaml = hydra_dir / "hydra.yaml", hydra_dir / "overrides.yaml"
    if not hydra_yaml.is_file() and not overrides_yaml.is_file():
        return None
    choices, overrides = {}, []
    try:
        node = OmegaConf.load(hydra_yaml) if hydra_yaml.is_file() else None
        if node is not None:
            choices = OmegaConf.to_container(node.hydra.runtime.choices, resolve=False) or {}
        if overrides_yaml.is_file():
            overrides = OmegaConf.to_container(OmegaConf.load(overrides_yaml)) or []
        elif node is not None:
            overrides = OmegaConf.to_container(node.hydra.overrides.task) or []
    except Exception:
        pass
    return dict(choices), [str(o) for o in overrides]


def results_table(sources: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Targets as rows, SDR/SIR/SAR/ISR as columns (dB)."""
    return pd.DataFrame(sources).T[["SDR", "SIR", "SAR", "ISR"]].astype(float)


def run_identity(cfg=None) -> dict:
    """``{"choices", "overrides", "seed"}`` of the Hydra app running now (what names and pairs a run).

    ``choices``: the config-group choices (``model``, ``data``, ...; ``experiment``
    only when one was picked) and, with ``cfg``, the augmentation list read off
    its merged node. ``overrides``: the command-line overrides. Outside a Hydra
    app both are empty.
    """
    from hydra.core.hydra_config import HydraConfig

    choices, overrides = {}, []
    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra") and "/" not in k}
        overrides = list(hydra_cfg.overrides.task)
    if choices.get("experiment") is None:
        choices.pop("experiment", None)
    seed = None
    if cfg is not None:
        from .augmentation.pipeline import stage_names  # the settings (placement) are no choice

        choices["augmentation"] = stage_names(cfg.get("augmentation"))
        seed = cfg.get("seed")
    return {"choices": choices, "overrides": overrides, "seed": seed}


def stored_identity(config: dict, run_dir: Path | None) -> dict:
    """The identity of the run that trained a checkpoint whose ``msslab_config`` is ``config``.

    Checkpoints record it (``config["run"]``); for older ones it is read from the
    run directory's ``.hydra/`` files, or, without those, built from the config
    itself (seed and augmentation list only; ``source`` says which).
    """
    if config.get("run"):
        return dict(config["run"]) | {"source": "checkpoint"}
    record = read_hydra_record(run_dir) if run_dir is not None else None
    choices, overrides, source = {}, [], "config"
    if record is not None:
        choices = {k: v for k, v in record[0].items() if not k.startswith("hydra") and "/" not in k and v is not None}
        overrides, source = record[1], "run directory"
    from .augmentation.pipeline import stage_names

    choices["augmentation"] = stage_names(config.get("augmentation"))
    return {"choices": choices, "overrides": overrides, "seed": config.get("seed"), "source": source}
