"""Separation: the :class:`Separator` and what runs it.

- :mod:`.separator`: :class:`Separator`, a trained network as a plain ``nn.Module`` (STFT, masks, Wiener filter);
- :mod:`.inference`: whole tracks in overlapping chunks (evaluation and ``msslab-separate``), and the
  ``separation:`` settings (:class:`SeparationSettings`);
- :mod:`.files`: audio files in, one file per source out (``msslab-separate``);
- :mod:`.streaming`: the :class:`~.streaming.Streamer`, block-by-block separation with a causal separator;
- :mod:`.stream_files`: files separated through a Streamer, read and written in blocks (``streaming=true``).
"""

from .inference import SeparationSettings, separate, separate_stream
from .separator import Separator

__all__ = ["SeparationSettings", "Separator", "load_separator", "separate", "separate_stream"]


def load_separator(path, map_location="cpu") -> Separator:
    """The :class:`Separator` of a checkpoint written by ``msslab-train``, on ``map_location``, in eval mode
    (checked and loaded as :func:`msslab.system.load_checkpoint` does)."""
    from ..system import load_checkpoint  # here, not at the top: msslab.system imports this package

    return load_checkpoint(path, map_location=map_location).separator.eval()
