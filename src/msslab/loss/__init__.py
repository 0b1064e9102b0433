"""Training objectives (config group ``loss``).

Each loss declares the domain it compares in: ``spectrogram`` losses get
magnitudes ``(B, S, C, F, T)``, ``waveform`` losses get signals ``(B, S, C, samples)``
(the estimate is resynthesised with the mixture phase).
"""

from __future__ import annotations

import torch
from torch import nn


class MagnitudeMSE(nn.Module):
    """Mean squared error between estimated and true magnitude spectrograms.

    ``phase_sensitive``: the true magnitude is replaced by its projection on the mixture's
    phase, ``|S| cos(angle(S) - angle(X))`` (the phase-sensitive target of Erdogan et al.,
    2015). Estimates are resynthesised with the mixture phase, so that projection is all of a
    source a real mask can recover; the plain magnitude asks the mask to restore energy that
    arrives with the wrong phase, and where sources overlap that energy is an artifact.
    The loss is then the complex-domain error of mask x X up to a constant.
    """

    domain = "spectrogram"

    def __init__(self, phase_sensitive: bool = False):
        super().__init__()
        self.phase_sensitive = phase_sensitive

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean((estimate - target) ** 2)


class WaveformL1(nn.Module):
    """Mean absolute error between estimated and true waveforms."""

    domain = "waveform"

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.mean(torch.abs(estimate - target))


class NegativeSDR(nn.Module):
    """Minus the signal-to-distortion ratio (dB) per source and example, averaged.

    ``eps`` keeps silent targets from producing infinite gradients.
    """

    domain = "waveform"

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = eps

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from ..metric.sdr import sdr

        return -sdr(estimate, target, eps=self.eps).mean()
