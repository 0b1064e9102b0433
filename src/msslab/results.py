"""``results.json``: the one machine-readable summary of a run (what ``msslab-compare`` reads).

Shape (see DESIGN.md): ``status``, ``run_id``, ``choices``, ``overrides``, ``seed``,
``sources`` ({target: {SDR, SIR, SAR, ISR}}, medians over frames then tracks, dB),
``tracks`` ({track: {target: {metric: dB}}}, per-track medians), ``train_seconds``,
``eval_seconds``, and ``error`` for a failed run. A training run adds ``stop_reason``
(``budget``, ``max_epochs``, ``max_steps``, ``early_stopping``, ``killed``: what ended the
fit), ``stopped_after_seconds`` (wall seconds of fitting, resumed processes included)
and ``steps_this_process`` (optimizer steps the last process trained itself). A run inside a SLURM job adds ``slurm``
(job id, array job and task id, requeue count: see :func:`slurm_job`). An evaluation of a checkpoint
records the training run's ``choices``, ``seed`` and ``overrides`` (its identity) and
adds ``eval_overrides``: what the evaluation command set (data, metric, separation, ...).
"""

from __future__ import annotations

import json
import math
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

FILENAME = "results.json"


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
    """Write ``run_dir/results.json`` atomically (a crash mid-write never leaves half a file)."""
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


def read_results(path: Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / FILENAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no results.json (did the run finish?)") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


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
    from omegaconf import OmegaConf

    hydra_dir = Path(run_dir) / ".hydra" if run_dir is not None else None
    choices, overrides, source = {}, [], "config"
    if hydra_dir is not None and (hydra_dir / "hydra.yaml").is_file():
        node = OmegaConf.load(hydra_dir / "hydra.yaml")
        choices = {k: v for k, v in OmegaConf.to_container(node.hydra.runtime.choices).items()
                   if not k.startswith("hydra") and "/" not in k and v is not None}
        overrides = [str(o) for o in OmegaConf.to_container(node.hydra.overrides.task)]
        source = "run directory"
    from .augmentation.pipeline import stage_names

    choices["augmentation"] = stage_names(config.get("augmentation"))
    return {"choices": choices, "overrides": overrides, "seed": config.get("seed"), "source": source}
