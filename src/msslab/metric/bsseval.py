"""Test-set evaluation with museval (BSSEval v4): SDR, SIR, SAR, ISR in dB.

Scores are computed over windows (1 s by default), aggregated per track with a
NaN-aware median over windows, then over tracks with a median: the numbers the
SiSEC/MUSDB literature reports.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

METRICS = ("SDR", "SIR", "SAR", "ISR")


def _import_museval():
    try:
        import museval
    except Exception as exc:  # museval -> musdb -> stempeg checks for ffmpeg at import time
        raise RuntimeError(
            "museval could not be imported; it needs ffmpeg and ffprobe on PATH "
            "(Debian/Ubuntu: apt-get install ffmpeg)") from exc
    return museval


def score_track(name: str, targets: list[str], references: np.ndarray, estimates: np.ndarray, sample_rate: int,
                win_seconds: float = 1.0, hop_seconds: float = 1.0) -> dict:
    """BSSEval v4 of one track.

    Args:
        references, estimates: ``(nb_targets, samples, channels)`` float arrays.
    Returns:
        ``{"name", "museval": <museval JSON dict>, "medians": {target: {metric: dB}}}``.
        A target that is silent over the whole track cannot be scored by museval;
        it gets NaN everywhere (and a warning) instead of failing the evaluation.
    """
    museval = _import_museval()
    # float32 input makes museval's least-squares projections inaccurate (SIR off by
    # tens of dB) and slower; BSSEval is defined on float64.
    references, estimates = np.asarray(references, np.float64), np.asarray(estimates, np.float64)
    win, hop = int(win_seconds * sample_rate), int(hop_seconds * sample_rate)
    silent = [i for i in range(len(targets)) if not np.any(references[i])]
    scored = [i for i in range(len(targets)) if i not in silent]
    nb_windows = max(1, int(np.ceil((references.shape[1] - win) / hop)) + 1)
    values = {m: np.full((len(targets), nb_windows), np.nan) for m in METRICS}
    if silent:
        log.warning("track %s: target(s) %s are silent; their scores are NaN", name, [targets[i] for i in silent])
    if len(scored) >= 2:  # museval needs two estimates at least
        sdr, isr, sir, sar = museval.evaluate(references[scored], estimates[scored], win=win, hop=hop)
        for metric, result in zip(("SDR", "ISR", "SIR", "SAR"), (sdr, isr, sir, sar)):
            values[metric][scored, : result.shape[1]] = result[:, :nb_windows]
    elif scored:
        log.warning("track %s: fewer than two non-silent targets; not scored", name)
    store = museval.TrackStore(track_name=name, win=win_seconds, hop=hop_seconds)
    medians = {}
    for i, target in enumerate(targets):
        store.add_target(target, {m: values[m][i].tolist() for m in METRICS})
        medians[target] = {m: _nanmedian(values[m][i]) for m in METRICS}
    return {"name": name, "museval": json.loads(store.json), "medians": medians}


def _nanmedian(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmedian(x)) if np.isfinite(x).any() else float("nan")


def aggregate(track_medians: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median over tracks of per-track medians: ``{target: {metric: dB}}``."""
    targets = next(iter(track_medians.values())).keys()
    return {t: {m: _nanmedian([tm[t][m] for tm in track_medians.values()]) for m in METRICS} for t in targets}


def write_track_json(result: dict, directory: Path) -> Path:
    """Write museval's per-track JSON as ``<directory>/<track>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['name']}.json"
    from ..results import atomic_write_text  # a kill mid-write leaves the old file or none, never half

    return atomic_write_text(path, json.dumps(result["museval"], indent=2))


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
