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

``augmentation.placement`` (``loader``, default, or ``device``) says where the
stages run; with ``device`` the loader only draws parameters and
:class:`DeviceAugmentation` applies them batched on the training device.

Stages run in the canonical order ``remix, gain, channel_swap, time_stretch,
pitch_shift, reverb, background_noise`` whatever the order of the selection.
"""

from __future__ import annotations

from .device import PLACEMENTS, DeviceAugmentation, check_placement
from .noise import BackgroundNoise
from .pipeline import (AVAILABLE, ORDER, RESERVED, AugmentationError, AugmentationPipeline, build_pipeline,
                       check_overrides, stage_names)
from .reverb import Reverb, synthetic_rir
from .source import ChannelSwap, Gain, Remix
from .stretch import PitchShift, TimeStretch

__all__ = [
    "AVAILABLE", "ORDER", "PLACEMENTS", "RESERVED", "AugmentationError", "AugmentationPipeline", "DeviceAugmentation",
    "build_pipeline", "check_overrides", "check_placement", "stage_names",
    "BackgroundNoise", "ChannelSwap", "Gain", "PitchShift", "Remix", "Reverb", "TimeStretch", "synthetic_rir",
]
