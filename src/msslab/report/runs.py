"""Find and read finished runs: ``results.json`` files under sweep/run directories.

A run directory is one written by ``msslab-train`` (``results.json`` plus
``.hydra/``). A run is identified by its directory; runs are grouped into
*variants*: everything that configured the run (config-group choices and
command-line overrides) except the keys in ``pool_over`` (the seed, by default),
so that several seeds of one configuration pool together.

An ``msslab-eval`` results.json carries the identity of the run that trained its
checkpoint; it is a variant of its own, keyed in addition by the songs it scored
(``split``), what the evaluation command set (``eval.<key>``) and which of the run's
checkpoints it loaded (``ckpt``), so it never pools with its training run or with an
evaluation under other settings.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from tqdm.auto import tqdm

from ..errors import MsslabError
from ..results import FILENAME, ResultsError, read_hydra_record, read_results
from ..runs import NOT_COMPARED

log = logging.getLogger(__name__)

RESULTS_FILE = FILENAME

#: Columns of the frame returned by :func:`load_runs`, in order.
RUN_COLUMNS = [
    "run",  # path of the run directory, relative to the directory it was found under
    "path",  # absolute path of the run directory
    "status",  # "completed", "failed", "pruned" (an Optuna trial stopped early), or "missing" (no results.json)
    "error",  # error message of a failed run (why a pruned one stopped), else ""
    "run_id",
    "seed",
    "split",  # the songs scored: "test" (training runs), or an msslab-eval's split ("valid")
    "variant",  # readable variant name (only the keys that differ across runs)
    "settings",  # dict: every key=value that defines the variant (choices + overrides)
    "sources",  # dict: source -> metric -> run-level median (dB)
    "tracks",  # dict: track -> source -> metric -> track-level median (dB)
    "conditions",  # dict: test condition -> its "tracks" dict (clean included; {} for runs without conditions)
    "train_seconds",
    "eval_seconds",
]


class CompareError(MsslabError):
    """A problem with the runs or options given to ``compare``; the message names what to fix
    (a user error: ``msslab-compare`` exits with one line, as every command)."""


# ---------------------------------------------------------------------------
# discovery


def _natural_key(path: Path) -> list:
    # multirun job dirs are 0, 1, ..., 10: sort them as numbers, not strings
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_run_dirs(directory: str | Path) -> list[Path]:
    """All run directories under ``directory`` (itself included), naturally sorted.

    A run directory holds a ``results.json``, or is a Hydra job directory
    (``.hydra/config.yaml``) without one: a run that died before writing its
    results, reported as ``missing`` rather than dropped.
    """
    root = Path(directory)
    if not root.exists():
        raise CompareError(f"run directory does not exist: {root}")
    if root.is_file():
        if root.name != RESULTS_FILE:
            raise CompareError(f"expected a directory or a {RESULTS_FILE}, got the file: {root}")
        return [root.parent]
    found = {p.parent for p in root.rglob(RESULTS_FILE) if p.is_file()}
    found |= {p.parent.parent for p in root.rglob(".hydra/config.yaml")}
    if not found:
        raise CompareError(f"no {RESULTS_FILE} found under: {root}")
    return sorted(found, key=_natural_key)


# ---------------------------------------------------------------------------
# settings: what defines a variant


def _canonical(value: Any) -> str:
    """One spelling per value, so that ``[a, b]``, ``['a','b']`` and a YAML list compare equal."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{_canonical(v)}" for k, v in value.items()) + "}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        items = [i.strip().strip("'\"") for i in text[1:-1].split(",") if i.strip()]
        return "[" + ",".join(items) + "]"
    return text


@functools.cache
def _override_parser():
    return OverridesParser.create()


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """``["model=blstm", "augmentation=[pitch_shift]"]`` -> ``{"model": "blstm", "augmentation": "[pitch_shift]"}``.

    Uses Hydra's own override grammar so quoting and lists read as Hydra read
    them; ``+key``/``++key`` count as ``key``, ``~key`` as key ``~key``.
    """
    parser = _override_parser()
    settings: dict[str, str] = {}
    for text in overrides:
        text = str(text)
        try:
            override = parser.parse_override(text)
        except Exception:  # not Hydra grammar (hand-written results): split by hand
            key, _, value = text.partition("=")
            settings[key.lstrip("+")] = _canonical(value)
            continue
        key = override.key_or_group
        if override.package:
            key = f"{key}@{override.package}"
        if override.type == OverrideType.DEL:
            settings["~" + key] = ""
        else:
            settings[key] = _canonical(override.value())
    return settings


def _settings(choices: Mapping | None, overrides: Sequence[str] | None) -> dict[str, str]:
    settings = {
        str(k): _canonical(v)
        for k, v in (choices or {}).items()
        if v is not None and not str(k).startswith("hydra")
    }
    # How a run was launched (resume, search bookkeeping) is not what it is.
    settings.update(
        {k: v for k, v in parse_overrides(overrides or []).items()
         if not k.lstrip("~").startswith("hydra") and k.lstrip("~").split(".")[0] not in NOT_COMPARED}
    )
    return settings


def _read_hydra(run_dir: Path) -> tuple[dict, list[str]]:
    """Choices and overrides recorded by Hydra in ``.hydra/`` (when results.json lacks them)."""
    return read_hydra_record(run_dir) or ({}, [])


def _checkpoint_kind(path: str) -> str:
    """``.../checkpoints/best-epoch042.ckpt`` -> ``best-epochN``: which of a run's checkpoints, not whose.

    The directory names the training run (already in the variant through its identity) and
    the digits the epoch or step it was saved at, which differ between seeds; both are left
    out so that the best checkpoints of several seeds pool, apart from their last ones.
    """
    return re.sub(r"\d+", "N", Path(str(path)).stem)


def _evaluation_settings(results: Mapping) -> dict[str, str]:
    """What makes an ``msslab-eval`` result a variant of its own (``{}`` for a training run).

    ``split`` (the songs scored), ``ckpt`` (:func:`_checkpoint_kind`) and every override the
    evaluation command set, as ``eval.<key>`` (a separation setting tried on a checkpoint
    is not the setting it was trained with).
    """
    if not any(key in results for key in ("split", "eval_overrides", "ckpt")):
        return {}
    settings = {"split": _canonical(results.get("split") or "test")}
    if results.get("ckpt"):
        settings["ckpt"] = _checkpoint_kind(results["ckpt"])
    for key, value in parse_overrides(results.get("eval_overrides") or []).items():
        bare = key.lstrip("~")
        if bare in ("split", "ckpt") or bare.startswith("hydra") or bare.split(".")[0] in NOT_COMPARED:
            continue
        settings[("~" if key.startswith("~") else "") + "eval." + bare] = value
    return settings


# ---------------------------------------------------------------------------
# scores


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _scores(per_source: Any) -> dict[str, dict[str, float]]:
    if not isinstance(per_source, Mapping):
        return {}
    return {
        str(source): {str(m): _number(v) for m, v in metrics.items()}
        for source, metrics in per_source.items()
        if isinstance(metrics, Mapping)
    }


def _tracks_from_museval(run_dir: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per-track medians over frames from museval's own JSON files (``museval/**/<track>.json``)."""
    tracks: dict[str, dict[str, dict[str, float]]] = {}
    for path in sorted((run_dir / "museval").rglob("*.json"), key=_natural_key):
        try:
            data = json.loads(path.read_text())
            targets = data["targets"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        track: dict[str, dict[str, float]] = {}
        for target in targets:
            frames = [f.get("metrics", {}) for f in target.get("frames", [])]
            metrics = sorted({m for f in frames for m in f})
            with warnings.catch_warnings():  # an all-NaN target (silent source) stays NaN, quietly
                warnings.simplefilter("ignore", RuntimeWarning)
                track[target["name"]] = {
                    m: float(np.nanmedian([_number(f.get(m)) for f in frames])) if frames else math.nan
                    for m in metrics
                }
        tracks[path.stem] = track
    return tracks


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """One run directory -> one row of :func:`load_runs` (without ``run`` and ``variant``).

    Raises :class:`CompareError` naming the file if ``results.json`` is not a JSON object.
    """
    run_dir = Path(run_dir)
    try:
        results = read_results(run_dir)
    except ResultsError as err:
        raise CompareError(str(err)) from err
    if results is None:
        choices, overrides = _read_hydra(run_dir)
        results = {
            "status": "missing",
            "error": f"no {RESULTS_FILE}: the run died before writing it, or is still running",
        }
    else:
        choices, overrides = results.get("choices"), results.get("overrides")
        if choices is None or overrides is None:
            hydra_choices, hydra_overrides = _read_hydra(run_dir)
            choices = hydra_choices if choices is None else choices
            overrides = hydra_overrides if overrides is None else overrides

    settings = _settings(choices, overrides) | _evaluation_settings(results)
    seed = results.get("seed", settings.get("seed"))
    sources = _scores(results.get("sources"))
    raw_tracks = results.get("tracks")
    if isinstance(raw_tracks, Mapping):
        tracks = {str(name): _scores(per_source) for name, per_source in raw_tracks.items()}
    else:
        tracks = _tracks_from_museval(run_dir) if (run_dir / "museval").is_dir() else {}

    conditions = {}
    for name, scored in (results.get("conditions") or {}).items():
        if isinstance(scored, Mapping) and isinstance(scored.get("tracks"), Mapping):
            conditions[str(name)] = {str(t): _scores(per_source) for t, per_source in scored["tracks"].items()}

    status = str(results.get("status") or ("completed" if sources else "failed"))
    error = str(results.get("error") or "")
    if status == "completed" and not sources and not tracks:
        status, error = "failed", error or f"{RESULTS_FILE} says completed but holds no scores"
    return {
        "path": str(run_dir.resolve()),
        "status": status,
        "error": error,
        "run_id": str(results.get("run_id") or run_dir.name),
        "seed": "" if seed is None else str(seed),  # "" = unknown: pandas keeps it a plain string
        "split": settings.get("split", "test"),
        "settings": settings,
        "sources": sources,
        "tracks": tracks,
        "conditions": conditions,
        "train_seconds": _number(results.get("train_seconds")),
        "eval_seconds": _number(results.get("eval_seconds")),
    }


# ---------------------------------------------------------------------------
# variants


def name_variants(settings: Sequence[Mapping[str, str]], pool_over: Iterable[str] = ("seed",)) -> list[str]:
    """A short readable name per run: only the ``key=value`` pairs that differ across runs.

    Keys in ``pool_over`` are left out, so runs differing only in them get the
    same name (= the same variant). A single variant is named by its model,
    augmentation and dotted overrides.
    """
    pooled = set(pool_over)
    kept = [{k: v for k, v in s.items() if k not in pooled} for s in settings]
    keys: list[str] = []
    for s in kept:
        keys += [k for k in s if k not in keys]
    # a key names variants when it takes two values; one merely absent in some runs
    # (an older sweep, a crashed run) only when that is needed to tell variants apart
    shown = {k for k in keys if len({s[k] for s in kept if k in s}) > 1}
    if len({_frozen(s) for s in kept}) == 1:  # one variant: its model, augmentation, dotted overrides
        shown = {k for k in keys if k in ("model", "augmentation") or "." in k}
    while True:
        names = [" ".join(f"{k}={s[k]}" for k in keys if k in shown and k in s) or "default" for s in kept]
        clashing: dict[str, set] = {}
        for name, s in zip(names, kept):
            clashing.setdefault(name, set()).add(_frozen(s))
        extra = {
            k
            for name, group in clashing.items()
            if len(group) > 1
            for k in keys
            if len({dict(g).get(k) for g in group}) > 1
        } - shown
        if not extra:
            return names
        shown |= extra


def _frozen(settings: Mapping[str, str]) -> frozenset:
    return frozenset(settings.items())


def load_runs(
    dirs: str | Path | Sequence[str | Path],
    pool_over: Iterable[str] = ("seed",),
    progress: bool | None = None,
) -> pd.DataFrame:
    """Read every run under ``dirs`` into one frame, one row per run (columns :data:`RUN_COLUMNS`).

    ``dirs``: sweep directories (``multirun/<name>``), single run directories,
    or ``results.json`` files; searched recursively. A run found twice is read
    once. ``progress``: show a progress bar (``None``: only on a terminal).
    Raises :class:`CompareError` naming the path for a missing directory, a
    directory without runs, or a malformed ``results.json``.
    """
    if isinstance(dirs, (str, Path)):
        dirs = [dirs]
    if not dirs:
        raise CompareError("no run directories given (dirs=[...])")
    found: dict[Path, tuple[Path, Path]] = {}
    for directory in dirs:
        root = Path(directory)
        base = root.parent if root.is_file() else root
        for run_dir in find_run_dirs(root):
            found.setdefault(run_dir.resolve(), (run_dir, base))

    rows = []
    bar = tqdm(found.values(), desc="reading runs", unit="run", disable=(None if progress is None else not progress))
    for run_dir, base in bar:
        row = read_run(run_dir)
        label = base.resolve().name
        relative = run_dir.relative_to(base).as_posix()
        if relative == ".":
            row["run"] = label
        else:
            row["run"] = f"{label}/{relative}" if len(dirs) > 1 else relative
        rows.append(row)

    names = name_variants([r["settings"] for r in rows], pool_over)
    for row, name in zip(rows, names):
        row["variant"] = name
    _warn_repeated_seeds(rows)
    return pd.DataFrame(rows, columns=RUN_COLUMNS)


def _warn_repeated_seeds(rows: Sequence[Mapping]) -> None:
    # Two completed runs of one variant with one seed (the same checkpoint evaluated twice,
    # two copies of a run): the paired tests average them into one pair, so say so.
    seen: dict[tuple, str] = {}
    for row in rows:
        if row["status"] != "completed" or not row["seed"]:
            continue
        key = (row["variant"], row["seed"])
        if key in seen:
            log.warning("runs %s and %s are one variant (%s) with one seed (%s): their scores are averaged "
                        "in the paired tests", seen[key], row["run"], row["variant"], row["seed"])
        else:
            seen[key] = row["run"]


def track_scores(runs: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Long frame of per-track scores of completed runs.

    Columns: variant, seed, run, track, source, metric, value (dB). A run
    without per-track scores contributes its run-level medians as track ``*``.
    """
    records = []
    for row in runs.itertuples(index=False):
        if row.status != "completed":
            continue
        per_track = row.tracks or ({"*": row.sources} if row.sources else {})
        for track, per_source in per_track.items():
            for source, values in per_source.items():
                for metric, value in values.items():
                    if metrics is None or metric in metrics:
                        records.append((row.variant, row.seed, row.run, track, source, metric, value))
    return pd.DataFrame(records, columns=["variant", "seed", "run", "track", "source", "metric", "value"])


def condition_scores(runs: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Like :func:`track_scores`, with a ``condition`` column: every test condition of every run.

    A run evaluated without conditions contributes its scores as ``clean``.
    """
    records = []
    for row in runs.itertuples(index=False):
        if row.status != "completed":
            continue
        per_condition = row.conditions or {"clean": row.tracks or ({"*": row.sources} if row.sources else {})}
        for condition, per_track in per_condition.items():
            for track, per_source in per_track.items():
                for source, values in per_source.items():
                    for metric, value in values.items():
                        if metrics is None or metric in metrics:
                            records.append((row.variant, row.seed, row.run, condition, track, source, metric, value))
    return pd.DataFrame(records, columns=["variant", "seed", "run", "condition", "track", "source", "metric", "value"])
