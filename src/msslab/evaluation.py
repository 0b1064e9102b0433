"""Evaluation of a system under test conditions: separate whole tracks, score them with BSSEval v4,
write results, print the tables. Used by ``msslab-train`` after fitting and by ``msslab-eval``
(:func:`evaluate`, the library under ``msslab.cli.eval``).

``msslab-eval ckpt=PATH`` scores a checkpoint; ``msslab-eval model=oracle_irm``
scores the ideal ratio mask and ``model=mixture`` the mixture as every estimate
(no checkpoint for either). Both write ``museval/<track>.json``
and ``results.json`` into the run directory and print the table.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from .allocator import keep_freed_memory
from .errors import MsslabError
from .separation.inference import SeparationSettings, resolve_device, separate
from .metric import bsseval
from .results import results_table, run_identity, write_results

log = logging.getLogger(__name__)


def evaluate_system(system, datamodule, run_dir: Path, metric_cfg, separation_cfg, nb_tracks: int | None = None,
                    condition=None) -> dict:
    """Separate and score every test track.

    Returns ``{"sources", "tracks", "tracks_scored", "metric", "eval_seconds", "example",
    "separation"}`` (the last: the separation settings used, and the device). Separation runs
    in this process on the system's device (``msslab.separation.inference``, with ``separation_cfg``: a
    config block or :class:`SeparationSettings`). BSSEval runs with ``metric_cfg.backend``
    (``torch`` on ``metric_cfg.device``, default the model's device; ``museval`` in
    ``metric_cfg.n_jobs`` worker processes while the next tracks are separated), see
    :class:`msslab.metric.bsseval.TrackScorer`. ``condition``: a
    :class:`msslab.conditions.Condition` that perturbs each test track (None or clean: as is;
    otherwise the museval files go to ``museval/<condition>/``).
    """
    start_time = time.perf_counter()
    system.eval()
    tracks = datamodule.test_tracks
    nb = len(tracks) if nb_tracks is None else min(nb_tracks, len(tracks))
    sr = datamodule.sample_rate
    settings = (separation_cfg if isinstance(separation_cfg, SeparationSettings)
                else SeparationSettings.resolve(OmegaConf.to_container(separation_cfg)))
    museval_dir = Path(run_dir) / "museval" / ("" if condition is None or condition.clean else condition.name)
    example = None
    with bsseval.TrackScorer(system.targets, sr, metric_cfg, system.device, museval_dir) as scorer:
        for i in tqdm(range(nb), desc="separating + BSSEval", unit="track"):
            name, mixture, targets = datamodule.test_track(i, condition)
            true = targets if system.needs_targets else None
            estimates = separate(system, mixture, settings, targets=true)
            if example is None:
                example = {"name": name, "sample_rate": sr, "mixture": mixture.numpy(),
                           "estimates": {t: e.numpy() for t, e in zip(system.targets, estimates)}}
            scorer.add(name, targets, estimates)
        scores = scorer.summary()
    return scores | {"eval_seconds": time.perf_counter() - start_time, "example": example,
                     "separation": settings.as_dict() | {"device": str(system.device)}}


def evaluate_conditions(system, datamodule, run_dir: Path, cfg, separation=None) -> dict:
    """:func:`evaluate_system` once per test condition of ``cfg.conditions`` (default: clean).

    ``separation``: :class:`SeparationSettings` (default: ``cfg.separation``). Returns the clean
    condition's ``{"sources", "tracks", "example"}`` (the first condition's when clean is not
    selected) plus ``"conditions": {name: {"sources", "tracks", "parameters"}}`` (parameters:
    what was drawn per track), the total ``"eval_seconds"`` and the ``"separation"`` settings used.
    """
    from .conditions import CLEAN, build_conditions

    conditions = build_conditions(cfg.get("conditions"), datamodule.sample_rate)
    scored = {}
    for name, condition in conditions.items():
        if len(conditions) > 1:
            log.info("test condition %s", name)
        scored[name] = evaluate_system(system, datamodule, run_dir, cfg.metric,
                                       cfg.separation if separation is None else separation, condition=condition)
    main = scored.get(CLEAN) or next(iter(scored.values()))
    return {"sources": main["sources"], "tracks": main["tracks"], "example": main["example"],
            "tracks_scored": main["tracks_scored"], "metric": main["metric"],
            "eval_seconds": sum(r["eval_seconds"] for r in scored.values()), "separation": main["separation"],
            "conditions": {name: {"sources": r["sources"], "tracks": r["tracks"],
                                  "parameters": conditions[name].parameters} for name, r in scored.items()}}


def print_conditions(results: dict) -> None:
    """One table per test condition beyond the main one."""
    if len(results.get("conditions", {})) < 2:
        return
    for name, scores in results["conditions"].items():
        print_table(scores["sources"], f"condition {name}: museval medians (dB) over {len(scores['tracks'])} tracks")


def print_table(sources: dict, title: str) -> str:
    text = f"{title}\n{results_table(sources).round(2).to_string()}"
    print(text, flush=True)
    return text


def run_choices() -> dict:
    """The config-group choices of this run (``model``, ``data``, ...)."""
    return run_identity()["choices"]


def experiment_separation() -> dict | None:
    """The ``separation`` block of the experiment this command names, over conf/train.yaml's.

    eval.yaml nulls the block so that a checkpoint's own settings apply; a model without
    a checkpoint (the oracle, the mixture) takes them from the experiment instead, so that
    ``msslab-eval model=oracle_irm experiment=fullband`` separates as the recipe does.
    """
    choice = run_choices().get("experiment")
    if choice is None:
        return None
    from hydra import compose

    return OmegaConf.to_container(compose("train", overrides=[f"experiment={choice}"]).separation)


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` (or a model needing no training) on ``cfg.data``'s test set."""
    from hydra.utils import instantiate

    from .errors import CheckpointError
    from .system import build_system, covers_mixture, load_checkpoint

    run_dir = Path(cfg.paths.output_dir)
    if cfg.get("keep_freed_memory", True):
        keep_freed_memory()
    device = resolve_device(cfg.device)
    if cfg.ckpt:
        system = load_checkpoint(cfg.ckpt, map_location=device)
        trained = OmegaConf.create(system.config)
        trained_separation = OmegaConf.to_container(trained.separation) if "separation" in trained else {}
        with open_dict(cfg):  # the model decides rate and targets; the command decides the tracks
            cfg.data.sample_rate, cfg.data.targets = trained.data.sample_rate, trained.data.targets
    split = cfg.get("split", "test")
    if split not in ("test", "valid"):
        raise MsslabError(f"split: {split!r} is not one of test, valid")
    datamodule = instantiate(cfg.data, augmentation=None)
    datamodule.setup("test")
    if split == "valid":  # the held-out training songs: choose separation settings here, not on the test set
        datamodule.test_tracks = datamodule.valid_tracks
    if not cfg.ckpt:
        residual = not covers_mixture(datamodule.sources, datamodule.groups)
        system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual).to(device)
        if any(p.requires_grad for p in system.model.parameters()):
            raise CheckpointError(f"model={run_choices().get('model', cfg.model._target_)} needs training: "
                                  "give ckpt=<path to a .ckpt written by msslab-train>")
        trained_separation = experiment_separation()
    # The command's separation settings win; the ones it leaves null are the checkpoint's
    # (without one: the experiment's, as it would have trained the model).
    settings = SeparationSettings.resolve(OmegaConf.to_container(cfg.separation), trained_separation)
    results = evaluate_conditions(system, datamodule, run_dir, cfg, separation=settings)
    # Named as the run that trained the model (so compare pairs it with that run's seeds and
    # variants); what this command set (data, metric, separation) is recorded beside it.
    identity = system.config["run"]
    extra = {"eval_overrides": run_identity()["overrides"], "identity_from": identity.get("source")} if cfg.ckpt else {}
    write_results(run_dir, status="completed", choices=identity["choices"], overrides=identity["overrides"],
                  seed=identity["seed"], ckpt=str(cfg.ckpt) if cfg.ckpt else None, split=split, **extra,
                  sources=results["sources"], tracks=results["tracks"], tracks_scored=results["tracks_scored"],
                  metric=results["metric"], conditions=results["conditions"],
                  train_seconds=0.0, eval_seconds=results["eval_seconds"], separation=results["separation"])
    print_conditions(results)
    print_table(results["sources"], f"museval medians (dB) over {len(results['tracks'])} {split} tracks, run {run_dir}")
    return results
