"""Run lifecycle: unique run directories, one live run per directory, resuming a killed run.

A run directory keeps what a later ``resume`` needs in ``.msslab/``: the config of its
first start (``config.yaml``, plus Hydra's ``.hydra`` files, restored when a refused
command has overwritten them), its W&B run id (``wandb_id``), the checkpoints it resumed
from (``resumes.json``) and a lock file held by the live run.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import secrets
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from . import CONFIG_DIR
from .errors import MsslabError, UnsafeConfigError
from .results import FILENAME as RESULTS_FILE
from .results import ResultsError, atomic_write_text, read_results

log = logging.getLogger(__name__)

STATE_DIR = ".msslab"
# Keys that say how to run, not what: they may differ between a run and its resume.
NOT_COMPARED = ("resume", "rerun_failed", "search")
FINAL_STATUSES = ("completed", "pruned")


def register_resolvers() -> None:
    """``${msslab.uid:}``: a short random suffix, the same everywhere in one config (cached).

    Hydra copies a sweep's resolver cache into each job, so all jobs of one sweep see the
    sweep's value; two runs started in the same second get different ones.
    """
    if not OmegaConf.has_resolver("msslab.uid"):
        OmegaConf.register_new_resolver("msslab.uid", lambda: secrets.token_hex(3), use_cache=True)


class RunDirBusy(MsslabError):
    """Another live process is using the run directory."""


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir``'s lock while the run lives; refuse a directory another live run holds.

    An OS file lock (``flock``): it is released when the process ends, however it ends, so
    a killed run never leaves a stale lock behind.
    """
    state = Path(run_dir) / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    handle = open(state / "lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        restore_hydra_files(Path(run_dir))  # Hydra wrote this command's .hydra/ over the live run's
        raise RunDirBusy(f"run directory {run_dir} is in use by a live run ({owner}); "
                         f"wait for it or choose another hydra.run.dir") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def read_status(run_dir: Path) -> dict | None:
    """The run's results.json, or None when there is none (never finished) or it is unreadable."""
    try:
        return read_results(run_dir)
    except ResultsError:
        return None


def checkpoint_dirs(cfg: DictConfig) -> list[Path]:
    """Where the run's checkpoints are written: the ``dirpath`` of each ``ModelCheckpoint`` callback
    (``callbacks.checkpoint`` first), ``<run dir>/checkpoints`` when none sets one.

    Resume and ``budget.snapshots`` follow a moved ``dirpath``: a resume that looked only in the
    run directory would start a moved run again from scratch.
    """
    folders = []
    for node in (cfg.get("callbacks") or {}).values():
        if node is not None and str(node.get("_target_", "")).endswith("ModelCheckpoint") and node.get("dirpath"):
            folder = Path(str(node.dirpath))
            if folder not in folders:
                folders.append(folder)
    return folders or [Path(cfg.paths.output_dir) / "checkpoints"]


def latest_checkpoint(folders: list[Path]) -> Path | None:
    """The newest checkpoint in ``folders`` (``last.ckpt`` at an epoch end, ``step.ckpt`` within one)."""
    candidates = [p for folder in folders for p in Path(folder).glob("*.ckpt") if p.name in ("last.ckpt", "step.ckpt")]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)


def _flatten(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out |= _flatten(value, f"{prefix}{key}.")
        return out or {prefix.rstrip("."): {}}
    return {prefix.rstrip("."): node}


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every differing leaf, keys of ``NOT_COMPARED`` left out."""
    old_flat, new_flat = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if key.split(".")[0] in NOT_COMPARED:
            continue
        missing = "<absent>"
        before, after = old_flat.get(key, missing), new_flat.get(key, missing)
        if before != after:
            lines.append(f"{key}: {before!r} -> {after!r}")
    return lines


def restore_hydra_files(run_dir: Path) -> None:
    """Put back the first start's ``.hydra`` files, which Hydra overwrote before the task ran."""
    saved = run_dir / STATE_DIR / "hydra"
    if saved.is_dir():
        (run_dir / ".hydra").mkdir(exist_ok=True)
        for path in (run_dir / ".hydra").glob("*.yaml"):  # exactly the first start's files, none of this command's
            if not (saved / path.name).exists():
                path.unlink()
        for path in saved.iterdir():
            shutil.copy2(path, run_dir / ".hydra" / path.name)


def preserve_hydra_files(run_dir: Path) -> None:
    """Save the ``.hydra`` files of a run from before msslab kept its own copy (``.msslab/hydra``).

    Called before Hydra starts, which writes the new command's ``.hydra`` over the old run's:
    this copy is what :func:`prepare` compares with and what a refused command restores.
    """
    run_dir = Path(run_dir)
    saved = run_dir / STATE_DIR / "hydra"
    if (run_dir / STATE_DIR / "config.yaml").is_file() or saved.is_dir() or not (run_dir / ".hydra").is_dir():
        return
    saved.mkdir(parents=True)
    for path in (run_dir / ".hydra").glob("*.yaml"):
        shutil.copy2(path, saved / path.name)


def _save_first_start(run_dir: Path, cfg: DictConfig) -> None:
    state = run_dir / STATE_DIR
    if (run_dir / ".hydra").is_dir():
        (state / "hydra").mkdir(parents=True, exist_ok=True)
        for path in (run_dir / ".hydra").glob("*.yaml"):
            shutil.copy2(path, state / "hydra" / path.name)
    atomic_write_text(state / "config.yaml", OmegaConf.to_yaml(cfg))  # written last: marks the run as started


def prepare(run_dir: Path, cfg: DictConfig, resume, rerun_failed: bool = False) -> dict:
    """Decide how a run starts in ``run_dir``: ``{"skip": results | None, "checkpoint": Path | None}``.

    ``resume``: None (a new run: the directory must not hold one), ``"auto"`` or a path
    (continue the run there: skip it when finished, refuse a changed config). A failed run
    is skipped unless ``rerun_failed``; a rerun continues from its newest checkpoint.
    """
    run_dir = Path(run_dir)
    started = (run_dir / STATE_DIR / "config.yaml").is_file()
    results = read_status(run_dir)
    checkpoint = latest_checkpoint(checkpoint_dirs(cfg))
    if not (started or results or checkpoint):
        if resume not in (None, "auto"):
            raise MsslabError(f"resume={resume}: no run to resume there (no {STATE_DIR}/config.yaml, "
                              f"{RESULTS_FILE} or checkpoint)")
        _save_first_start(run_dir, cfg)
        return {"skip": None, "checkpoint": None}
    restore_hydra_files(run_dir)
    if resume is None:
        raise MsslabError(f"run directory {run_dir} holds a run already: continue it with resume=auto, "
                          f"or choose another hydra.run.dir")
    # A run from before msslab kept its config: compare with its own .hydra/config.yaml, which
    # preserve_hydra_files saved before Hydra wrote this command's over it.
    stored = run_dir / STATE_DIR / ("config.yaml" if started else "hydra/config.yaml")
    if not stored.is_file():
        raise MsslabError(f"resume refused: {run_dir} holds a run without its config ({STATE_DIR}/config.yaml "
                          f"or .hydra/config.yaml), so it cannot be checked to be the same run")
    old = OmegaConf.to_container(OmegaConf.load(stored), resolve=False)
    differences = config_differences(old, OmegaConf.to_container(cfg, resolve=False))
    if differences:
        raise MsslabError(f"resume refused: the config differs from the run in {run_dir} "
                          f"({stored.relative_to(run_dir)}) in {len(differences)} key(s):\n  " + "\n  ".join(differences))
    if not started:
        atomic_write_text(run_dir / STATE_DIR / "config.yaml", OmegaConf.to_yaml(cfg))
    status = (results or {}).get("status")
    if status in FINAL_STATUSES or (status == "failed" and not rerun_failed):
        return {"skip": results, "checkpoint": None}
    return {"skip": None, "checkpoint": checkpoint}


def record_resume(run_dir: Path, checkpoint: Path, epoch: int, global_step: int) -> list[dict]:
    """Append to the run's resume history (``.msslab/resumes.json``) and return it."""
    path = Path(run_dir) / STATE_DIR / "resumes.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append({"checkpoint": checkpoint.name, "epoch": epoch, "global_step": global_step,
                    "at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    atomic_write_text(path, json.dumps(history, indent=2))
    return history


def resume_history(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / STATE_DIR / "resumes.json"
    return json.loads(path.read_text()) if path.is_file() else []


def wandb_run_id(run_dir: Path) -> str:
    """The W&B run id of this run directory: made at the first start, reused by every resume."""
    path = Path(run_dir) / STATE_DIR / "wandb_id"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


def resume_arguments(argv: list[str]) -> list[str]:
    """``msslab-train resume=<run dir> [...]`` -> that run's own overrides, then the given ones.

    The given ones come last and win; the run directory becomes ``hydra.run.dir``. Other
    arguments are returned unchanged.
    """
    given = [a for a in argv if a.startswith("resume=")]
    if not given:
        return argv
    target = given[-1].split("=", 1)[1]
    if target in ("auto", "null", "None", ""):
        return argv
    run_dir = Path(target)
    saved = run_dir / STATE_DIR / "hydra" / "overrides.yaml"
    if not saved.is_file():
        raise MsslabError(f"resume={target}: {saved} not found (not a msslab run directory, "
                          f"or one that never started)")
    given_keys = {a.split("=", 1)[0].lstrip("+~") for a in argv if "=" in a}
    original = [o for o in (yaml.safe_load(saved.read_text()) or [])
                if o.split("=", 1)[0].lstrip("+~") not in given_keys | {"resume", "rerun_failed", "hydra.run.dir"}]
    check_stored_overrides(original, saved)
    run_dir_given = "hydra.run.dir" in given_keys
    return [*original, *argv, *([] if run_dir_given else [f"hydra.run.dir={run_dir}"])]


def is_finite(value) -> bool:
    return value is not None and math.isfinite(float(value))


def check_stored_overrides(overrides: list[str], source: Path) -> None:
    """Refuse a run directory's stored override that would make Hydra build something outside
    the allow-list (``msslab.trust.run_targets``): the file is data, not the user's command.
    The user may still give such an override on the command line, where it wins."""
    # Lazy: ``import msslab`` imports this module, and the parser and msslab.trust (torch) are
    # only needed when a run directory is resumed.
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from .trust import check_config, run_targets

    parser = OverridesParser.create()
    for text in overrides:
        if "_target_" not in str(text) and "_args_" not in str(text) and "_partial_" not in str(text):
            continue  # group choices and plain values: nothing to build
        try:
            override = parser.parse_override(str(text))
        except Exception as exc:
            raise MsslabError(f"resume: {source}: cannot parse the override {text!r} ({exc})") from None
        node = override.value()
        for part in reversed(override.key_or_group.split(".")):
            node = {part: node}
        try:
            check_config(_plain(node), run_targets(str(CONFIG_DIR)), interpolations=True)
        except UnsafeConfigError as exc:
            raise MsslabError(f"resume: {source}: {exc}; give it on the command line if you mean it") from None


def _plain(node):
    """Hydra's parsed override values (its own list and dict types, interpolations as str) as plain data."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [_plain(v) for v in node]
    return node if node is None or isinstance(node, (bool, int, float)) else str(node)
