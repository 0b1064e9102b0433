"""Training-time augmentation (config group ``augmentation``).

Interface used by the data module (see ``msslab.data.datamodule``):

``build_pipeline(cfg, sample_rate) -> AugmentationPipeline | None``
    ``cfg`` is the merged ``augmentation`` node (one key per selected augmentation,
    possibly empty or None); returns None when nothing is selected. An unknown key
    raises :class:`AugmentationError` listing the available augmentations.

``pipeline(sources, rng) -> (sources, noise)``
    ``sources``: ``{name: float32 (channels, frames)}``; returns the augmented
    sources (same keys, shapes and dtype) and an additive array for the mixture
    only (same shape; background noise, or the reverb when targets stay dry) or
    None. All randomness comes from ``rng``.

``pipeline.remix_p``: probability that an example's sources are drawn from
different tracks (the data set does the drawing).

Stages run in the canonical order ``remix, gain, channel_swap, time_stretch,
pitch_shift, reverb, background_noise`` whatever the order of the selection.
"""

from __future__ import annotations

from .noise import BackgroundNoise
from .pipeline import AVAILABLE, ORDER, AugmentationError, AugmentationPipeline, build_pipeline, check_overrides
from .reverb import Reverb, synthetic_rir
from .source import ChannelSwap, Gain, Remix
from .stretch import PitchShift, TimeStretch

__all__ = [
    "AVAILABLE", "ORDER", "AugmentationError", "AugmentationPipeline", "build_pipeline", "check_overrides",
    "BackgroundNoise", "ChannelSwap", "Gain", "PitchShift", "Remix", "Reverb", "TimeStretch", "synthetic_rir",
]
