"""Test conditions (config group ``conditions``): deterministic perturbations of the test set.

A condition is a set of augmentation stages (``msslab.augmentation``, the same code
as in training) with fixed ranges and probability 1, applied to every test track with
a generator seeded by the track's name and the condition's name only, never by the
run's seed: every run and every model is scored on bit-identical audio, so runs can be
paired track by track under each condition.

What the stages do to the references follows the augmentation semantics: reverb,
pitch shift and time stretch change every source alike (the references are the
transformed sources, as they are in the mixture); background noise goes into the
mixture only (the references stay clean).

``build_conditions(cfg, sample_rate) -> {name: Condition}`` from the merged
``conditions`` node (one key per selected condition, each a mapping of augmentation
name -> stage config; ``{}`` is the clean test set).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import numpy as np
from omegaconf import DictConfig

from ..augmentation import AugmentationError, build_pipeline
from ..errors import MsslabError

CLEAN = "clean"


class ConditionError(MsslabError, ValueError):
    """A bad ``conditions`` config: the message names the key."""


def track_seed(track: str, condition: str) -> int:
    """A seed from the track's and the condition's names (stable across processes and machines)."""
    digest = hashlib.sha256(f"{condition}\0{track}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class Condition:
    """One test condition: augmentation stages applied with per-track seeded draws.

    Args:
        name: the condition's name (part of the seed, and of result keys and paths).
        pipeline: an :class:`~msslab.augmentation.AugmentationPipeline`, or None (clean).

    ``parameters`` maps each track perturbed so far to what was drawn for it
    (``{stage: {parameter: value}}``, e.g. ``{"background_noise": {"snr_db": 4.2}}``).
    """

    def __init__(self, name: str, pipeline=None):
        self.name, self.pipeline = str(name), pipeline
        self.parameters: dict[str, dict] = {}
        stretch = dict(pipeline.stages).get("time_stretch") if pipeline is not None else None
        # A faster tempo needs more input than it outputs: the track is cut to what the fastest rate fills.
        self.max_rate = max(1.0, stretch.max_rate) if stretch is not None else 1.0

    @property
    def clean(self) -> bool:
        return self.pipeline is None

    def __call__(self, track: str, sources: Mapping[str, np.ndarray]):
        """``(sources, noise)`` of track ``track`` under this condition.

        ``sources``: ``{name: float32 (channels, frames)}`` of the whole track. The result's
        sources (the references) are all equally long (shorter than the input for the tempo
        condition: ``floor(frames / max rate)``); ``noise`` is what only the mixture gets, or None.
        """
        if self.pipeline is None:
            return dict(sources), None
        frames = next(iter(sources.values())).shape[-1]
        out_frames = int(np.floor(frames / self.max_rate))
        rng = np.random.default_rng(track_seed(track, self.name))
        sources, noise = self.pipeline(sources, rng, frames=out_frames)
        if noise is not None:
            noise = np.ascontiguousarray(noise[..., :out_frames])
        self.parameters[track] = _plain(self.pipeline.drawn())
        return sources, noise

    def __repr__(self) -> str:
        return f"Condition({self.name}: {self.pipeline.names if self.pipeline else 'clean'})"


def _plain(value):
    """numpy scalars -> Python numbers (results.json)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


def build_conditions(cfg, sample_rate: int) -> dict[str, Condition]:
    """``{name: Condition}`` from the merged ``conditions`` node, in the order selected.

    ``cfg``: ``{condition: {augmentation: stage config}}`` (None or empty: clean only).
    Every stage must have ``p: 1`` (a condition is applied to every track).
    """
    if not cfg:
        return {CLEAN: Condition(CLEAN)}
    if not isinstance(cfg, Mapping | DictConfig):
        raise ConditionError(f"conditions must be a mapping of name -> stages, got {type(cfg).__name__}")
    conditions = {}
    for name in cfg:
        stages = cfg[name] or {}
        if not isinstance(stages, Mapping | DictConfig):
            raise ConditionError(f"conditions.{name} must map augmentation names to stage configs "
                                 f"(see conf/conditions/), got {stages!r}")
        for stage, node in stages.items():
            if float(node.get("p", 1.0)) != 1.0:
                raise ConditionError(f"conditions.{name}.{stage}.p must be 1 (a condition perturbs every track)")
        try:
            pipeline = build_pipeline(stages, sample_rate)
        except AugmentationError as err:
            raise ConditionError(f"conditions.{name}: {err}") from err
        if pipeline is not None and pipeline.remix_p > 0:
            raise ConditionError(f"conditions.{name}: remix draws sources from other tracks; it is no test condition")
        conditions[str(name)] = Condition(str(name), pipeline)
    return conditions


__all__ = ["CLEAN", "Condition", "ConditionError", "build_conditions", "track_seed"]
