"""The track abstraction every dataset implements.

A dataset is a :class:`TrackSet`: an indexable collection of multitrack songs whose
stems are returned as float32 arrays of shape ``(channels, frames)`` at the set's
``sample_rate``. Everything downstream (chunking, augmentation, target grouping,
evaluation) only talks to this interface, so a new dataset is one new class.
"""

from __future__ import annotations

import abc

import numpy as np

from ..errors import MsslabError


class DataError(MsslabError, ValueError):
    """Bad dataset input: the message names the file or key and what is wrong."""


class TrackSet(abc.ABC):
    """An indexable set of multitrack songs.

    Subclasses set ``sample_rate`` (Hz), ``sources`` (stem names, e.g.
    ``["vocals", "drums", "bass", "other"]``) and ``nb_channels`` (2 for stereo).
    """

    sample_rate: int
    sources: list[str]
    nb_channels: int = 2

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def name(self, index: int) -> str:
        """A human-readable, unique track name (used for per-track result files)."""

    @abc.abstractmethod
    def num_frames(self, index: int) -> int:
        """Length of track ``index`` in samples at ``sample_rate``."""

    @abc.abstractmethod
    def load(self, index: int, offset: int = 0, num_frames: int | None = None) -> dict[str, np.ndarray]:
        """Stems of track ``index`` from sample ``offset``, ``num_frames`` long (None: to the end).

        Returns ``{source: float32 array (nb_channels, frames)}`` for every name in
        ``sources``, all of the same length.
        """

    def prepare(self) -> None:
        """Do expensive one-off work (generation, scanning, validation) before workers fork."""
