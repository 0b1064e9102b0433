"""Test-set evaluation with BSSEval v4 (museval's definition): SDR, SIR, SAR, ISR in dB.

Scores are computed over windows (1 s by default), aggregated per track with a
NaN-aware median over windows, then over tracks with a median: the numbers the
SiSEC/MUSDB literature reports. Two backends compute the same numbers:
``torch`` (msslab's batched implementation, :mod:`msslab.metric.bsseval_torch`, CPU or
CUDA) and ``museval`` (the reference, CPU, one process per track).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .bsseval_torch import ILL_CONDITIONED, SOLVERS, bss_eval_v4, window_count

log = logging.getLogger(__name__)

METRICS = ("SDR", "SIR", "SAR", "ISR")
# Above this a ratio says the residual is below 1e-15 of the signal energy: the rounding
# of float64 projections (e.g. the SAR of an estimate that lies exactly in the span of
# the delayed references, as the mixture does), a value neither backend determines.
ROUNDING_FLOOR_DB = 150.0
BACKENDS = ("torch", "museval")
DEFAULT_SOLVER = "stable"


def _import_museval():
    # Lazy: importing museval fails without ffmpeg on PATH, which only backend=museval needs.
    try:
        import museval
    except Exception as exc:  # museval -> musdb -> stempeg checks for ffmpeg at import time
        raise RuntimeError(
            "museval could not be imported; it needs ffmpeg and ffprobe on PATH "
            "(Debian/Ubuntu: apt-get install ffmpeg)") from exc
    return museval


def bss_eval(references: np.ndarray, estimates: np.ndarray, win: int, hop: int, backend: str = "torch",
             device: str | torch.device | None = None, solver: str = DEFAULT_SOLVER,
             info: dict | None = None) -> dict[str, np.ndarray]:
    """BSSEval v4 of sources that all have sound: ``{metric: (sources, windows) dB}``.

    ``references``, ``estimates``: ``(sources, samples, channels)``; ``win``, ``hop`` in samples.
    ``solver`` (torch backend): ``exact`` (museval's solve) or ``stable`` (see
    :func:`msslab.metric.bsseval_torch.bss_eval_v4`); museval always solves exactly.
    ``info`` receives ``"condition"`` (of the delayed references' Gram matrix) and
    ``"ill_conditioned_windows"`` (both backends; see :func:`~msslab.metric.bsseval_torch.bss_eval_v4`).
    """
    if solver not in SOLVERS:
        raise ValueError(f"metric.solver: unknown solver {solver!r}; choose one of {list(SOLVERS)}")
    info = {} if info is None else info
    if backend == "torch":
        values = bss_eval_v4(references, estimates, win, hop, device=device, solver=solver, info=info)
    elif backend == "museval":
        values = _import_museval().evaluate(references, estimates, win=win, hop=hop)
        # the same diagnosis as the torch backend's (a tenth of museval's time): where the Gram
        # matrix is ill-conditioned, which windows depend on the solve
        bss_eval_v4(references, estimates, win, hop, solver="exact", info=info)
    else:
        raise ValueError(f"metric.backend: unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    return dict(zip(("SDR", "ISR", "SIR", "SAR"), (np.asarray(v, np.float64) for v in values)))


def _silent(x: np.ndarray) -> bool:
    # museval's rule: a source whose channels sum to zero at every sample cannot be scored
    return not np.any(np.sum(x, axis=-1))


def score_track(name: str, targets: list[str], references: np.ndarray, estimates: np.ndarray, sample_rate: int,
                win_seconds: float = 1.0, hop_seconds: float = 1.0, backend: str = "torch",
                device: str | torch.device | None = None, solver: str = DEFAULT_SOLVER) -> dict:
    """BSSEval v4 of one track.

    Args:
        references, estimates: ``(nb_targets, samples, channels)`` float arrays.
        backend: ``torch`` or ``museval``; ``device``: where the torch backend runs;
        solver: ``stable`` or ``exact`` (torch backend).
    Returns:
        ``{"name", "museval": <museval JSON dict>, "medians": {target: {metric: dB}},
        "values": {metric: (nb_targets, windows) dB}, "scored": [targets scored],
        "condition": condition estimate of the Gram matrix, "ill_conditioned_windows": in a track
        whose Gram matrix has a condition above ``ILL_CONDITIONED``, the windows whose ISR/SIR/SAR
        differ by more than 0.1 dB between museval's exact solve and the stable one (else 0),
        "nonfinite": [targets whose estimate holds NaN or inf]}``. The museval JSON carries the last three under "msslab".
        The targets that have sound are scored together; a target whose reference or
        estimate is silent over the whole track cannot be scored (BSSEval needs sound)
        and gets NaN everywhere, with a warning, without costing the others their scores.
        The frame count is museval's (the trailing partial window is dropped).
    """
    # float32 input makes the least-squares projections inaccurate (SIR off by tens of
    # dB); BSSEval is defined on float64.
    references, estimates = np.asarray(references, np.float64), np.asarray(estimates, np.float64)
    win, hop = int(win_seconds * sample_rate), int(hop_seconds * sample_rate)
    nb_windows = window_count(references.shape[1], win, hop)
    values = {m: np.full((len(targets), nb_windows), np.nan) for m in METRICS}
    scored = []
    nonfinite = [t for t, e in zip(targets, estimates) if not np.isfinite(e).all()]
    if nonfinite:
        log.warning("track %s: the estimates of %s hold NaN or inf; they score NaN", name, nonfinite)
    for i, target in enumerate(targets):
        for kind, x in (("reference", references[i]), ("estimate", estimates[i, : references.shape[1]])):
            if _silent(x):
                log.warning("track %s: the %s of target %s is silent over the whole track; it is not scored",
                            name, kind, target)
                break
        else:
            scored.append(i)
    info = {"condition": float("nan"), "ill_conditioned_windows": 0}
    if scored:
        result = bss_eval(references[scored], estimates[scored], win, hop, backend, device, solver, info)
        for metric in METRICS:
            values[metric][scored] = result[metric]
    ill = info["ill_conditioned_windows"]
    extra = {"condition": info["condition"], "ill_conditioned_windows": ill, "nonfinite": nonfinite}
    store = _import_museval().TrackStore(track_name=name, win=win_seconds, hop=hop_seconds)
    medians = {}
    for i, target in enumerate(targets):
        store.add_target(target, {m: values[m][i].tolist() for m in METRICS})
        medians[target] = {m: _nanmedian(values[m][i]) for m in METRICS}
    document = json.loads(store.json)
    document["msslab"] = {"backend": backend, "solver": solver if backend == "torch" else "exact",
                          "condition": info["condition"] if np.isfinite(info["condition"]) else None,
                          "ill_conditioned_windows": ill, "nonfinite_estimates": nonfinite}
    return {"name": name, "museval": document, "medians": medians, "values": values,
            "scored": [targets[i] for i in scored]} | extra


def _nanmedian(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(np.nanmedian(x)) if not np.isnan(x).all() else float("nan")


def aggregate(track_medians: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median over tracks of per-track medians: ``{target: {metric: dB}}``."""
    targets = next(iter(track_medians.values())).keys()
    return {t: {m: _nanmedian([tm[t][m] for tm in track_medians.values()]) for m in METRICS} for t in targets}


def tracks_scored(track_medians: dict[str, dict[str, dict[str, float]]]) -> dict[str, int]:
    """How many tracks each target's median covers: ``{target: n}`` (tracks with an SDR)."""
    targets = next(iter(track_medians.values())).keys()
    return {t: sum(not np.isnan(tm[t]["SDR"]) for tm in track_medians.values()) for t in targets}


def largest_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """Per-window agreement of two score sets ``{metric: array}``.

    Returns ``{"max_abs_diff_db": largest |a - b| over windows where both are finite (and
    not both above ``ROUNDING_FLOOR_DB``), "pattern_mismatches": windows where one is
    NaN/+inf/-inf and the other is not the same}``.
    """
    largest, mismatches = 0.0, 0
    for metric in METRICS:
        x, y = np.asarray(a[metric], float), np.asarray(b[metric], float)
        finite = np.isfinite(x) & np.isfinite(y)
        compared = finite & ~((x > ROUNDING_FLOOR_DB) & (y > ROUNDING_FLOOR_DB))
        if compared.any():
            largest = max(largest, float(np.abs(x - y)[compared].max()))
        same = (np.isnan(x) & np.isnan(y)) | (x == y) | finite
        mismatches += int((~same).sum())
    return {"max_abs_diff_db": largest, "pattern_mismatches": mismatches}


def write_track_json(result: dict, directory: Path) -> Path:
    """Write museval's per-track JSON as ``<directory>/<track>.json``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['name']}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result["museval"], indent=2))
    os.replace(tmp, path)
    return path


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class TrackScorer:
    """Scores the test tracks of one evaluation as they are separated.

    The ``torch`` backend scores each track at once on ``device``; the ``museval`` backend
    (and the ``crosscheck`` re-scoring of the first tracks with museval) runs in
    ``n_jobs`` worker processes while the next tracks are separated. Use as a context
    manager; :meth:`summary` gives what results.json records.
    """

    def __init__(self, targets: list[str], sample_rate: int, metric_cfg, device, json_dir: Path):
        self.targets, self.json_dir = list(targets), Path(json_dir)
        self.backend = metric_cfg.get("backend", "torch")
        if self.backend not in BACKENDS:
            raise ValueError(f"metric.backend: unknown backend {self.backend!r}; choose one of {list(BACKENDS)}")
        self.device = torch.device(metric_cfg.get("device") or device or "cpu")
        self.solver = metric_cfg.get("solver") or DEFAULT_SOLVER
        if self.solver not in SOLVERS:
            raise ValueError(f"metric.solver: unknown solver {self.solver!r}; choose one of {list(SOLVERS)}")
        self.crosscheck = int(metric_cfg.get("crosscheck") or 0)
        self.kwargs = dict(sample_rate=sample_rate, win_seconds=metric_cfg.win_seconds,
                           hop_seconds=metric_cfg.hop_seconds)
        n_jobs = metric_cfg.get("n_jobs") or default_jobs()
        uses_museval = self.backend == "museval" or self.crosscheck > 0
        self.pool = (ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"))
                     if uses_museval and n_jobs > 1 else None)
        self.max_pending = 2 * n_jobs
        self.pending, self.track_medians, self.checks = [], {}, []
        self.ill_conditioned, self.nonfinite = {}, {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def _submit(self, *args, **kwargs):
        if self.pool is None:
            result = score_track(*args, **kwargs)
            return lambda: result
        future = self.pool.submit(score_track, *args, **kwargs)
        return future.result

    def add(self, name: str, references: torch.Tensor, estimates: torch.Tensor) -> None:
        """Score one track: ``references``, ``estimates`` ``(targets, channels, samples)``."""
        refs = references.detach().permute(0, 2, 1).cpu().numpy()
        ests = estimates.detach().permute(0, 2, 1).cpu().numpy()
        if self.backend == "torch":
            result = score_track(name, self.targets, refs, ests, backend="torch", device=self.device,
                                 solver=self.solver, **self.kwargs)
            self._collect(result)
            if len(self.checks) < self.crosscheck:
                self.checks.append((result, self._submit(name, self.targets, refs, ests, backend="museval",
                                                         **self.kwargs)))
        else:
            self.pending.append(self._submit(name, self.targets, refs, ests, backend="museval", **self.kwargs))
        while len(self.pending) + len(self.checks) > self.max_pending and self.pending:
            self._collect(self.pending.pop(0)())

    def _collect(self, result: dict) -> None:
        write_track_json(result, self.json_dir)
        self.track_medians[result["name"]] = result["medians"]
        self.ill_conditioned[result["name"]] = result["ill_conditioned_windows"]
        if result["nonfinite"]:
            self.nonfinite[result["name"]] = result["nonfinite"]

    def summary(self) -> dict:
        """Wait for the workers; ``{"sources", "tracks", "tracks_scored", "metric"}`` for results.json."""
        while self.pending:
            self._collect(self.pending.pop(0)())
        metric = {"backend": self.backend, "device": str(self.device) if self.backend == "torch" else "cpu",
                  "solver": self.solver if self.backend == "torch" else "exact",
                  "ill_conditioned_windows": dict(self.ill_conditioned), "nonfinite_estimates": dict(self.nonfinite)}
        ill = {t: n for t, n in self.ill_conditioned.items() if n}
        if ill:  # once per run
            log.warning("%d of %d track(s) have a numerically singular Gram matrix of delayed references "
                        "(condition > %.0e, typical of AAC-coded stems); in %d window(s) museval's exact SIR/SAR/ISR "
                        "differ from the stable solve's by > 0.1 dB, i.e. are rounding noise%s", len(ill),
                        len(self.ill_conditioned), ILL_CONDITIONED, sum(ill.values()), "" if metric["solver"] == "stable" else "; metric.solver=stable gives "
                        "stable numbers")
        if self.nonfinite:
            log.warning("estimates hold NaN or inf in %d track(s) (%s): those targets score NaN there and do "
                        "not count in tracks_scored", len(self.nonfinite), self.nonfinite)
        if self.checks:
            stats = [largest_difference(ours["values"], wait()["values"]) for ours, wait in self.checks]
            metric["crosscheck"] = {"tracks": len(stats),
                                    "max_abs_diff_db": max(s["max_abs_diff_db"] for s in stats),
                                    "pattern_mismatches": sum(s["pattern_mismatches"] for s in stats)}
            log.info("crosscheck against museval on %d track(s): %s", len(stats), metric["crosscheck"])
        if not self.track_medians:
            return {"sources": {}, "tracks": {}, "tracks_scored": {}, "metric": metric}
        silent = {t: n for t, n in tracks_scored(self.track_medians).items() if n < len(self.track_medians)}
        if silent:
            log.warning("medians cover fewer tracks for targets silent in some tracks: %s of %d", silent,
                        len(self.track_medians))
        return {"sources": aggregate(self.track_medians), "tracks": self.track_medians,
                "tracks_scored": tracks_scored(self.track_medians), "metric": metric}
