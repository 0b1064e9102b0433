"""Training objectives (config group ``loss``).

Each loss declares the domain it compares in: ``spectrogram`` losses get
magnitudes ``(B, S, C, F, T)``, ``waveform`` losses get signals ``(B, S, C, samples)``
(the estimate is resynthesised with the mixture phase).

Every loss is a per-source value averaged over sources; ``weights`` (``{target: weight}``,
1 for a target not named) makes that a weighted mean, e.g. ``loss.weights={other:2}`` to
spend more of the network on a source that lags. The system binds the weights to its
targets (``bind_targets``), so a name that is not a target is an error at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..metric.sdr import sdr


def _all_but_sources(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))  # (B, S, ...): every axis but the sources'


class SourceLoss(nn.Module):
    """Weighted mean over sources of ``per_source(estimate, target)`` (shape ``(S,)``)."""

    domain = "spectrogram"

    def __init__(self, weights: Mapping[str, float] | None = None):
        super().__init__()
        self.weights = dict(weights or {})
        self.register_buffer("_weights", None, persistent=False)

    def bind_targets(self, targets: Sequence[str]) -> None:
        """Resolve ``weights`` to a vector in the order of ``targets`` (None: all equal)."""
        unknown = sorted(set(self.weights) - set(targets))
        if unknown:
            raise ValueError(f"loss.weights: {', '.join(unknown)} not among the targets {list(targets)}")
        for name, value in self.weights.items():
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"loss.weights.{name}: a weight must be a number >= 0, got {value!r}")
        if not self.weights:
            self._weights = None
            return
        vector = torch.tensor([float(self.weights.get(t, 1.0)) for t in targets])
        if vector.sum() <= 0:
            raise ValueError("loss.weights: at least one target needs a positive weight")
        self._weights = vector / vector.sum()

    def per_source(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        values = self.per_source(estimate, target)
        if self._weights is None:
            return values.mean()
        return (values * self._weights.to(values.dtype)).sum()


class MagnitudeMSE(SourceLoss):
    """Mean squared error between estimated and true magnitude spectrograms.

    ``phase_sensitive``: the true magnitude is replaced by its projection on the mixture's
    phase, ``|S| cos(angle(S) - angle(X))`` (the phase-sensitive target of Erdogan et al.,
    2015). Estimates are resynthesised with the mixture phase, so that projection is all of a
    source a real mask can recover; the plain magnitude asks the mask to restore energy that
    arrives with the wrong phase, and where sources overlap that energy is an artifact.
    The loss is then the complex-domain error of mask x X up to a constant.
    """

    def __init__(self, phase_sensitive: bool = False, weights: Mapping[str, float] | None = None):
        super().__init__(weights)
        self.phase_sensitive = phase_sensitive

    def per_source(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (estimate - target).pow(2).mean(_all_but_sources(estimate))


class WaveformL1(SourceLoss):
    """Mean absolute error between estimated and true waveforms."""

    domain = "waveform"

    def per_source(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (estimate - target).abs().mean(_all_but_sources(estimate))


class NegativeSDR(SourceLoss):
    """Minus the signal-to-distortion ratio (dB) per source and example, averaged.

    ``eps`` keeps silent targets from producing infinite gradients.
    """

    domain = "waveform"

    def __init__(self, eps: float = 1e-8, weights: Mapping[str, float] | None = None):
        super().__init__(weights)
        self.eps = eps

    def per_source(self, estimate: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return -sdr(estimate, target, eps=self.eps).mean(0)
