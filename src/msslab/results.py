"""``results.json``: the one machine-readable summary of a run (what ``msslab-compare`` reads).

Shape (see DESIGN.md): ``status``, ``run_id``, ``choices``, ``overrides``, ``seed``,
``sources`` ({target: {SDR, SIR, SAR, ISR}}, medians over frames then tracks, dB),
``tracks`` ({track: {target: {metric: dB}}}, per-track medians), ``train_seconds``,
``eval_seconds``, and ``error`` for a failed run.
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
               "host": socket.gethostname()} | fields
    return atomic_write_text(run_dir / FILENAME, json.dumps(_clean(payload), indent=2))


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
