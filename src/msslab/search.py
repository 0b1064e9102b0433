"""Optuna search (the library under ``msslab-search``, ``msslab.cli.search``): a study that persists in its
sweep directory and prunes trials; :func:`pruning_callback` is the training side of it.

``msslab-search experiment=search [overrides] ['key=choice(...)' ...]`` composes the same
train config as ``msslab-train``; the study settings and search space are its ``search``
node (conf/experiment/search.yaml), and sweep overrides on the command line add parameters
(``choice``, ``interval``, ``range``, ``tag(log, ...)``: the Optuna sweeper's syntax).

Why not the Hydra Optuna sweeper: it hands jobs no trial, so they cannot report
intermediate scores or be pruned, and it numbers jobs from 0 on every launch, so a relaunch
into the same sweep directory would reuse the directories of other trials. Here:

- the study lives in ``<sweep dir>/optuna.db`` (SQLite): the same command with
  ``hydra.sweep.dir=<that dir>`` continues it, trial numbers continuing;
- each trial is ``msslab-train`` in a subprocess, in ``<sweep dir>/<trial number>``, with
  ``resume=auto``: a trial interrupted by a kill is resumed from its checkpoint by the
  relaunch, a finished one is not run again;
- the trial reports validation SDR at each epoch end to the study's pruner
  (``search.pruner``, median by default) and stops when pruned: results.json ``pruned``;
- the study records the launch's fixed overrides (what every trial trains with): a relaunch
  that changes them is refused, naming the keys, since its trials would not be comparable;
- a relaunch seeds the sampler from ``search.sampler.seed`` and the number of trials the
  study holds, so it proposes new points instead of replaying the first launch's.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import lightning.pytorch as pl

from . import CONFIG_DIR
from .errors import MsslabError

log = logging.getLogger(__name__)

FIXED_ATTR = "msslab_fixed_overrides"  # study user attribute: the fixed overrides of its first launch


class Pruned(Exception):
    """The Optuna pruner stopped this trial (not a failure)."""

    def __init__(self, message: str, epoch: int, value: float, monitor: str):
        super().__init__(message)
        self.epoch, self.value, self.monitor = epoch, value, monitor


class _ReportToTrial(pl.Callback):
    """Report the monitored validation score at each epoch end; raise :class:`Pruned` when told to."""

    def __init__(self, trial, monitor: str):
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        epoch = trainer.current_epoch
        self.trial.report(float(value), step=epoch)
        if self.trial.should_prune():
            raise Pruned(f"trial {self.trial.number} pruned after epoch {epoch}: {self.monitor}={float(value):.3f}",
                         epoch, float(value), self.monitor)


def _study(search, storage: str, load_only: bool = False):
    import optuna
    from hydra.utils import instantiate

    pruner = instantiate(search.pruner) if search.get("pruner") else optuna.pruners.NopPruner()
    if load_only:
        return optuna.load_study(study_name=search.study_name, storage=storage, pruner=pruner)
    return optuna.create_study(study_name=search.study_name, storage=storage, load_if_exists=True,
                               direction=search.direction, sampler=instantiate(search.sampler), pruner=pruner)


def fixed_settings(overrides: list[str]) -> dict[str, str]:
    """``key -> value`` of the overrides every trial of a study trains with.

    Left out: ``hydra.*`` (where and how the launch runs) and the keys that say how to run,
    not what (``search.*``: trial count, parallelism, pruner, sampler; ``resume``, ``rerun_failed``).
    """
    from .report.runs import parse_overrides
    from .runs import NOT_COMPARED

    return {key: value for key, value in parse_overrides(overrides).items()
            if not key.lstrip("~").startswith("hydra") and key.lstrip("~").split(".")[0] not in NOT_COMPARED}


def check_fixed(study, fixed: dict[str, str]) -> None:
    """Record ``fixed`` with a study on its first launch; refuse a relaunch that changes them.

    Raises :class:`MsslabError` naming every key that differs (``key: old -> new``).
    """
    recorded = study.user_attrs.get(FIXED_ATTR)
    if recorded is None:  # a new study (or one from before this record): this launch's settings are its own
        study.set_user_attr(FIXED_ATTR, fixed)
        return
    missing = "<absent>"
    changes = [f"{key}: {recorded.get(key, missing)!r} -> {fixed.get(key, missing)!r}"
               for key in sorted(set(recorded) | set(fixed)) if recorded.get(key, missing) != fixed.get(key, missing)]
    if changes:
        raise MsslabError(f"study {study.study_name} was started with other fixed settings; its trials would be "
                          f"ranked with ones trained differently: {'; '.join(changes)}. Relaunch with the study's "
                          "own overrides, or start a new study in another hydra.sweep.dir")


def reseed_sampler(study, sampler_cfg) -> None:
    """A relaunch's sampler: seeded from ``sampler_cfg.seed`` and the number of trials so far.

    The sampler is not stored with the study; rebuilt with the same seed on every launch it
    would propose the first launch's points again (its random start-up trials are drawn from
    the seed alone). A new study keeps the seed itself: the same seed, the same proposals.
    """
    import numpy as np
    from hydra.utils import instantiate

    seed, done = sampler_cfg.get("seed"), len(study.trials)
    if seed is None or not done:
        return
    derived = int(np.random.SeedSequence([int(seed) % 2**32, done]).generate_state(1)[0])
    study.sampler = instantiate(sampler_cfg, seed=derived)
    log.info("sampler seeded with %d (seed %s, %d trials so far)", derived, seed, done)


def pruning_callback(cfg) -> pl.Callback:
    """The callback of a run that is trial ``cfg.search.trial`` of the study in ``cfg.search.storage``."""
    import optuna

    study = _study(cfg.search, cfg.search.storage, load_only=True)
    trial_id = study._storage.get_trial_id_from_study_id_trial_number(study._study_id, int(cfg.search.trial))
    return _ReportToTrial(optuna.trial.Trial(study, trial_id), f"val/{cfg.metric.validation}")


def _value(value) -> str:
    """A parameter value as a Hydra override value."""
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


class Search:
    """One launch of a study: runs trials until the study holds ``n_trials`` of them."""

    def __init__(self, argv: list[str]):
        from hydra import compose, initialize_config_dir
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra_plugins.hydra_optuna_sweeper._impl import create_optuna_distribution_from_override

        parser = OverridesParser.create()
        overrides = parser.parse_overrides(argv)
        self.fixed = [o.input_line for o in overrides if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose("train", overrides=self.fixed, return_hydra_config=True)
        if cfg.get("search") is None:
            raise MsslabError("msslab-search needs a config with a `search` node: add experiment=search")
        self.search = search = cfg.search
        params = [parser.parse_override(f"{key}={value}") for key, value in (search.get("params") or {}).items()]
        params += [o for o in overrides if o.is_sweep_override()]
        self.distributions = {o.get_key_element(): create_optuna_distribution_from_override(o) for o in params}
        if not self.distributions:
            raise MsslabError("nothing to search: search.params is empty and no sweep override was given")
        self.sweep_dir = Path(cfg.hydra.sweep.dir).absolute()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = search.storage or f"sqlite:///{self.sweep_dir / 'optuna.db'}"
        self.n_trials = int(search.n_trials)
        self.rerun_failed = bool(cfg.get("rerun_failed"))
        self.study = _study(search, self.storage)
        check_fixed(self.study, fixed_settings(self.fixed))
        reseed_sampler(self.study, search.sampler)
        self._ask_lock = threading.Lock()

    def run_trial(self, number: int, params: dict) -> None:
        """Run (or continue) trial ``number`` as ``msslab-train`` and tell the study how it ended."""
        import optuna

        from .runs import is_finite, read_status

        job_dir = self.sweep_dir / str(number)
        args = [sys.executable, "-m", "msslab.cli.train", *self.fixed, *(f"{k}={_value(v)}" for k, v in params.items()),
                f"hydra.run.dir={job_dir}", "resume=auto", f"rerun_failed={str(self.rerun_failed).lower()}",
                f"search.trial={number}", f"search.storage={self.storage}"]
        log.info("trial %d: %s", number, " ".join(f"{k}={_value(v)}" for k, v in params.items()))
        returncode = subprocess.run(args).returncode
        results = read_status(job_dir) or {}
        status = results.get("status")
        if status == "completed" and is_finite(results.get("best_val")):
            self.study.tell(number, float(results["best_val"]))
        elif status == "pruned":
            self.study.tell(number, state=optuna.trial.TrialState.PRUNED)
        elif status in ("completed", "failed"):  # completed without a validation score counts as failed
            self.study.tell(number, state=optuna.trial.TrialState.FAIL)
        else:  # killed, or refused (e.g. its directory is in use): left running, a relaunch resumes it
            log.warning("trial %d ended without results (exit code %d): a relaunch resumes it", number, returncode)
        log.info("trial %d: %s %s", number, status, results.get("best_val"))

    def _worker(self, leftover: list) -> None:
        while True:
            with self._ask_lock:
                if leftover:
                    trial = leftover.pop(0)
                    number, params = trial.number, trial.params
                elif len(self.study.trials) < self.n_trials:
                    trial = self.study.ask(self.distributions)
                    number, params = trial.number, trial.params
                else:
                    return
            self.run_trial(number, params)

    def run(self) -> dict:
        """Resume the trials a killed launch left running, then ask for new ones up to ``n_trials``."""
        import optuna

        running = [t for t in self.study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
        log.info("study %s in %s: %d trials so far, %d to resume, %d in all", self.search.study_name,
                 self.sweep_dir, len(self.study.trials), len(running), self.n_trials)
        n_jobs = max(1, int(self.search.get("n_jobs") or 1))
        with ThreadPoolExecutor(n_jobs) as pool:
            for future in [pool.submit(self._worker, running) for _ in range(n_jobs)]:
                future.result()
        return self.summary()

    def summary(self) -> dict:
        """Write ``<sweep dir>/optimization_results.yaml`` (best trial, counts by state) and return it."""
        import yaml

        from .results import atomic_write_text

        trials = self.study.trials
        counts = {}
        for trial in trials:
            counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
        summary = {"study_name": self.search.study_name, "storage": self.storage, "trials": counts}
        if counts.get("complete"):
            best = self.study.best_trial
            summary |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
        atomic_write_text(self.sweep_dir / "optimization_results.yaml", yaml.safe_dump(summary, sort_keys=False))
        return summary
