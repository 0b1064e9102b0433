"""Test-set evaluation: separate whole tracks, score them with museval, write results.

``msslab-eval ckpt=PATH`` scores a checkpoint; ``msslab-eval model=oracle_irm``
scores the ideal ratio mask and ``model=mixture`` the mixture as every estimate
(no checkpoint for either). Both write ``museval/<track>.json``
and ``results.json`` into the run directory and print the table.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm.auto import tqdm

from .errors import exit_on_user_error
from .metric import bsseval
from .results import results_table, run_identity, write_results

log = logging.getLogger(__name__)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@torch.no_grad()
def separate_chunked(system, mixture: torch.Tensor, chunk_frames: int, overlap_frames: int,
                     targets: torch.Tensor | None = None) -> torch.Tensor:
    """Separate a long mixture ``(C, T)`` in overlapping chunks -> ``(S, C, T)``.

    Chunks are all ``chunk_frames`` long (the last one is aligned to the end), and
    neighbours are cross-faded over ``overlap_frames`` (0: hard cuts), so memory is
    bounded by the chunk size whatever the length. ``targets`` ``(S, C, T)`` is
    passed chunk by chunk to models that need it (the oracle).
    """
    length = mixture.shape[-1]
    shortest = system.spectrogram.n_fft  # the STFT's reflect padding needs this much signal
    if length < shortest:
        pad = (0, shortest - length)
        padded = None if targets is None else torch.nn.functional.pad(targets, pad)
        return separate_chunked(system, torch.nn.functional.pad(mixture, pad), chunk_frames, 0, padded)[..., :length]
    chunk_frames = max(chunk_frames, shortest)
    if length <= chunk_frames:
        return system(mixture[None], None if targets is None else targets[None])[0]
    overlap = min(max(overlap_frames, 0), chunk_frames // 2)
    starts = list(range(0, length - chunk_frames, chunk_frames - overlap)) + [length - chunk_frames]
    ramp = torch.linspace(0, 1, overlap + 2, dtype=mixture.dtype)[1:-1]
    out, weight = None, torch.zeros(length, dtype=mixture.dtype)
    for start in starts:
        stop = start + chunk_frames
        chunk_targets = None if targets is None else targets[None, ..., start:stop]
        estimate = system(mixture[None, :, start:stop], chunk_targets)[0]
        if out is None:
            out = torch.zeros(estimate.shape[:-1] + (length,), dtype=estimate.dtype)
        fade = torch.ones(chunk_frames, dtype=mixture.dtype)
        if overlap and start > 0:
            fade[:overlap] = ramp
        if overlap and stop < length:
            fade[-overlap:] = ramp.flip(0)
        out[..., start:stop] += estimate * fade
        weight[start:stop] += fade
    return out / weight


def evaluate_system(system, datamodule, run_dir: Path, metric_cfg, separation_cfg, nb_tracks: int | None = None,
                    condition=None) -> dict:
    """Separate and score every test track; return ``{"sources", "tracks", "eval_seconds", "example"}``.

    Separation runs in this process; museval (the slow part) runs in ``metric_cfg.n_jobs``
    worker processes while the next tracks are separated. ``condition``: a
    :class:`msslab.conditions.Condition` that perturbs each test track (None or clean: as is;
    otherwise the museval files go to ``museval/<condition>/``).
    """
    start_time = time.perf_counter()
    system.eval()
    tracks = datamodule.test_tracks
    nb = len(tracks) if nb_tracks is None else min(nb_tracks, len(tracks))
    sr = datamodule.sample_rate
    chunk, overlap = int(separation_cfg.chunk_seconds * sr), int(separation_cfg.overlap_seconds * sr)
    n_jobs = metric_cfg.n_jobs or bsseval.default_jobs()
    kwargs = dict(sample_rate=sr, win_seconds=metric_cfg.win_seconds, hop_seconds=metric_cfg.hop_seconds)
    museval_dir = Path(run_dir) / "museval" / ("" if condition is None or condition.clean else condition.name)
    track_medians, example = {}, None

    def collect(result):
        bsseval.write_track_json(result, museval_dir)
        track_medians[result["name"]] = result["medians"]

    pool = ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn")) if n_jobs > 1 else None
    pending = []
    try:
        for i in tqdm(range(nb), desc="separating + museval", unit="track"):
            name, mixture, targets = datamodule.test_track(i, condition)
            true = targets if system.needs_targets else None
            estimates = separate_chunked(system, mixture.to(system.device), chunk, overlap,
                                         None if true is None else true.to(system.device)).cpu()
            if example is None:
                example = {"name": name, "sample_rate": sr, "mixture": mixture.numpy(),
                           "estimates": {t: e.numpy() for t, e in zip(system.targets, estimates)}}
            refs, ests = targets.permute(0, 2, 1).numpy(), estimates.permute(0, 2, 1).numpy()
            if pool is None:
                collect(bsseval.score_track(name, system.targets, refs, ests, **kwargs))
                continue
            pending.append(pool.submit(bsseval.score_track, name, system.targets, refs, ests, **kwargs))
            while len(pending) >= 2 * n_jobs:  # bound the memory held by queued tracks
                collect(pending.pop(0).result())
        for future in pending:
            collect(future.result())
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return {"sources": bsseval.aggregate(track_medians), "tracks": track_medians,
            "eval_seconds": time.perf_counter() - start_time, "example": example}


def evaluate_conditions(system, datamodule, run_dir: Path, cfg) -> dict:
    """:func:`evaluate_system` once per test condition of ``cfg.conditions`` (default: clean).

    Returns the clean condition's ``{"sources", "tracks", "example"}`` (the first
    condition's when clean is not selected) plus ``"conditions": {name: {"sources",
    "tracks", "parameters"}}`` (parameters: what was drawn per track) and the total
    ``"eval_seconds"``.
    """
    from .conditions import CLEAN, build_conditions

    conditions = build_conditions(cfg.get("conditions"), datamodule.sample_rate)
    scored = {}
    for name, condition in conditions.items():
        if len(conditions) > 1:
            log.info("test condition %s", name)
        scored[name] = evaluate_system(system, datamodule, run_dir, cfg.metric, cfg.separation,
                                       condition=condition)
    main = scored.get(CLEAN) or next(iter(scored.values()))
    return {"sources": main["sources"], "tracks": main["tracks"], "example": main["example"],
            "eval_seconds": sum(r["eval_seconds"] for r in scored.values()),
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


def evaluate(cfg: DictConfig) -> dict:
    """Evaluate ``cfg.ckpt`` (or a model needing no training) on ``cfg.data``'s test set."""
    from hydra.utils import instantiate

    from .errors import CheckpointError
    from .system import build_system, covers_mixture, load_checkpoint

    run_dir = Path(cfg.paths.output_dir)
    if cfg.ckpt:
        system = load_checkpoint(cfg.ckpt)
        trained = OmegaConf.create(system.config)
        with open_dict(cfg):  # the model decides rate and targets; the command decides the tracks
            cfg.data.sample_rate, cfg.data.targets = trained.data.sample_rate, trained.data.targets
    datamodule = instantiate(cfg.data, augmentation=None)
    datamodule.setup("test")
    if not cfg.ckpt:
        residual = not covers_mixture(datamodule.sources, datamodule.groups)
        system = build_system(cfg, datamodule.targets, datamodule.nb_channels, residual)
        if any(p.requires_grad for p in system.model.parameters()):
            raise CheckpointError(f"model={run_choices().get('model', cfg.model._target_)} needs training: "
                                  "give ckpt=<path to a .ckpt written by msslab-train>")
    results = evaluate_conditions(system, datamodule, run_dir, cfg)
    # Named as the run that trained the model (so compare pairs it with that run's seeds and
    # variants); what this command set (data, metric, separation) is recorded beside it.
    identity = system.config["run"]
    extra = {"eval_overrides": run_identity()["overrides"], "identity_from": identity.get("source")} if cfg.ckpt else {}
    write_results(run_dir, status="completed", choices=identity["choices"], overrides=identity["overrides"],
                  seed=identity["seed"], ckpt=str(cfg.ckpt) if cfg.ckpt else None, **extra,
                  sources=results["sources"], tracks=results["tracks"], conditions=results["conditions"],
                  train_seconds=0.0, eval_seconds=results["eval_seconds"])
    print_conditions(results)
    print_table(results["sources"], f"museval medians (dB) over {len(results['tracks'])} test tracks, run {run_dir}")
    return results


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
