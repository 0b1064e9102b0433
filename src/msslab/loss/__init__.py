"""Training objectives (config group ``loss``).

Each loss declares the domain it compares in: ``spectrogram`` losses get
magnitudes ``(B, S, C, F, T)``, ``waveform`` losses get signals ``(B, S, C, samples)``
(the estimate is resynthesised with the mixture phase), ``complex`` losses get the complex
spectrograms and the signals (``loss(estimate_specs, target_specs, estimates, targets)``).
It also declares the mask kinds it can train (``mask_kinds``): a magnitude loss cannot see
the phase that a complex mask estimates, and ``check_mask_kind`` refuses that pairing at start-up.

Every loss is a per-source value averaged over sources; ``weights`` (``{target: weight}``,
1 for a target not named) makes that a weighted mean, e.g. ``loss.weights={other:2}`` to
spend more of the network on a source that lags. The system binds the weights to its
targets (``bind_targets``), so a name that is not a target is an error at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..errors import MsslabError
from ..metric.sdr import sdr


def _all_but_sources(x: torch.Tensor) -> tuple[int, ...]:
    return (0, *range(2, x.dim()))  # (B, S, ...): every axis but the sources'


class SourceLoss(nn.Module):
    """Weighted mean over sources of ``per_source(estimate, target)`` (shape ``(S,)``)."""

    domain = "spectrogram"
    mask_kinds = ("magnitude", "complex")

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
        return self.weighted_mean(self.per_source(estimate, target))

    def weighted_mean(self, values: torch.Tensor) -> torch.Tensor:
        """Per-source ``values`` ``(S,)`` -> their (weighted) mean."""
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

    mask_kinds = ("magnitude",)  # it gets mask x |X|: the phase a complex mask estimates is invisible to it

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


class ComplexL1(SourceLoss):
    """The band-split RNN paper's objective: L1 on the real and imaginary parts of the estimated
    spectrogram plus L1 on the estimated waveform, per source (means over bins, frames, samples).

    The two terms are on their own scales (an unnormalised STFT value sums ``n_fft`` windowed
    samples); ``spectrogram_weight`` and ``waveform_weight`` scale them. Works for magnitude and
    complex masks alike.
    """

    domain = "complex"

    def __init__(self, spectrogram_weight: float = 1.0, waveform_weight: float = 1.0,
                 weights: Mapping[str, float] | None = None):
        super().__init__(weights)
        for key, value in dict(spectrogram_weight=spectrogram_weight, waveform_weight=waveform_weight).items():
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"loss.{key} must be a number >= 0, got {value!r}")
        self.spectrogram_weight, self.waveform_weight = spectrogram_weight, waveform_weight

    def forward(self, estimate_specs: torch.Tensor, target_specs: torch.Tensor, estimates: torch.Tensor,
                targets: torch.Tensor) -> torch.Tensor:
        """Complex ``(B, S, C, F, T)`` spectrograms and ``(B, S, C, samples)`` waveforms -> scalar."""
        diff = torch.view_as_real(estimate_specs - target_specs).abs()  # |real| and |imag| differences
        spectrogram = diff.mean(_all_but_sources(diff)) * 2  # the sum of the two parts' means
        waveform = (estimates - targets).abs().mean(_all_but_sources(estimates))
        return self.weighted_mean(self.spectrogram_weight * spectrogram + self.waveform_weight * waveform)


def check_mask_kind(loss: nn.Module | None, model: nn.Module) -> None:
    """Refuse a loss that cannot train the model's kind of mask (``MsslabError`` naming both)."""
    kind = getattr(model, "mask_kind", "magnitude")
    kinds = getattr(loss, "mask_kinds", ("magnitude", "complex"))
    if loss is not None and kind not in kinds:
        raise MsslabError(f"loss {type(loss).__name__} trains {' or '.join(kinds)} masks only, not the {kind} masks "
                          f"of model {type(model).__name__}: choose another loss (loss=bsrnn, l1 or sdr serve both)")
