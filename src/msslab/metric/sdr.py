"""Fast, differentiable SDR variants for validation (museval is for the test set)."""

from __future__ import annotations

import torch


def sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Plain SDR in dB, ``10 log10(|s|^2 / |s - s_hat|^2)``, over channels and samples.

    ``(..., channels, samples)`` -> ``(...)``.
    """
    num = reference.pow(2).sum((-2, -1))
    den = (reference - estimate).pow(2).sum((-2, -1))
    return 10 * torch.log10((num + eps) / (den + eps))


def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB (per channel, then averaged): ``(..., channels, samples)`` -> ``(...)``."""
    estimate = estimate - estimate.mean(-1, keepdim=True)
    reference = reference - reference.mean(-1, keepdim=True)
    scale = (estimate * reference).sum(-1, keepdim=True) / (reference.pow(2).sum(-1, keepdim=True) + eps)
    target = scale * reference
    ratio = (target.pow(2).sum(-1) + eps) / ((estimate - target).pow(2).sum(-1) + eps)
    return (10 * torch.log10(ratio)).mean(-1)


FAST_METRICS = {"sdr": sdr, "si_sdr": si_sdr}
