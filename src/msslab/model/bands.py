"""Which frequency bins share a mask value: one per bin up to an edge, then one per band of bins."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .spectrogram import frequency_bin


class MaskBands:
    """One mask value per bin below ``coarse_above`` Hz, one per ``coarse_width`` bins above it.

    Above a few kHz, where a 4096-point STFT at 44.1 kHz has bins 10.8 Hz apart, a mask
    value per bin buys little: the RNN separator decodes ``nb_values`` values instead of
    ``nb_bins`` (its largest layer), and the oracle mask of the same layout is the ceiling
    of a separator that uses it. ``coarse_above=None`` (or width 1): a value per bin.
    The last band is cut short at the top bin.
    """

    def __init__(self, nb_bins: int, sample_rate: float | None = None, coarse_above: float | None = None,
                 coarse_width: int = 1):
        if not (isinstance(coarse_width, int) and coarse_width >= 1):
            raise ValueError(f"model.coarse_width must be a whole number of bins >= 1, got {coarse_width!r}")
        self.nb_bins, self.width = nb_bins, coarse_width
        if coarse_above is None or coarse_width == 1:
            self.fine_bins = nb_bins
        else:
            if sample_rate is None:
                raise ValueError("model.coarse_above is in Hz: the model needs the sample rate (build it with sample_rate=)")
            if not 0 < coarse_above < sample_rate / 2:
                raise ValueError(f"model.coarse_above must be in (0, {sample_rate / 2}) Hz, got {coarse_above}")
            self.fine_bins = frequency_bin(coarse_above, sample_rate, nb_bins)
        self.nb_values = self.fine_bins + math.ceil((nb_bins - self.fine_bins) / coarse_width)

    @property
    def coarse(self) -> bool:
        return self.nb_values < self.nb_bins

    def expand(self, values: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``nb_values`` along ``dim`` -> ``nb_bins``: each band's value repeated over its bins."""
        if not self.coarse:
            return values
        values = values.movedim(dim, -1)
        # expand + reshape, whose gradient is a sum (index_select's scatter-add gradient cost
        # as much CPU time as the smaller decoder saved)
        coarse = values[..., self.fine_bins:, None].expand(*values.shape[:-1], -1, self.width).flatten(-2)
        bins = torch.cat([values[..., : self.fine_bins], coarse[..., : self.nb_bins - self.fine_bins]], dim=-1)
        return bins.movedim(-1, dim)

    def pool(self, bins: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """``nb_bins`` along ``dim`` -> ``nb_values``: the sum over each band's bins."""
        if not self.coarse:
            return bins
        bins = bins.movedim(dim, -1)
        coarse = F.pad(bins[..., self.fine_bins:], (0, (self.nb_values - self.fine_bins) * self.width - (self.nb_bins - self.fine_bins)))
        values = torch.cat([bins[..., : self.fine_bins], coarse.unflatten(-1, (-1, self.width)).sum(-1)], dim=-1)
        return values.movedim(-1, dim)
