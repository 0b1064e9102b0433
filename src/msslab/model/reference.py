"""Reference points with nothing to train: the oracle ceiling and the mixture floor."""

from __future__ import annotations

import torch
from torch import nn

from .bands import MaskBands


class OracleIRM(nn.Module):
    """Masks ``|S_j|^p / sum_k |S_k|^p`` computed from the true sources (no training).

    The sum runs over all targets plus, where the targets do not cover the mixture,
    the residual ``|X - sum_j S_j|`` so a target subset is handled like the RNN's.
    Args: ``power``: 1 (magnitude ratio) or 2 (Wiener-like power ratio);
    ``coarse_above``, ``coarse_width``: the RNN separator's mask layout (``MaskBands``):
    above ``coarse_above`` Hz the ratio of the energies summed over each band of
    ``coarse_width`` bins, the ceiling of a separator with that layout.
    """

    needs_targets = True
    mask_kind = "magnitude"

    def __init__(self, power: float = 1.0, residual: bool = False, sample_rate: float | None = None,
                 coarse_above: float | None = None, coarse_width: int = 1, **unused):
        super().__init__()
        self.power, self.residual = power, residual
        self.layout = dict(sample_rate=sample_rate, coarse_above=coarse_above, coarse_width=coarse_width)
        MaskBands(4097, **self.layout)  # bad settings fail here, not at the first batch

    def forward(self, mixture_spec: torch.Tensor, target_specs: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` complex mixture and ``(B, S, C, F, T)`` complex targets -> ``(B, S, C, F, T)`` masks."""
        bands = MaskBands(mixture_spec.shape[-2], **self.layout)
        energy = bands.pool(target_specs.abs() ** self.power, dim=-2)
        total = energy.sum(1, keepdim=True)
        if self.residual:
            total = total + bands.pool((mixture_spec - target_specs.sum(1)).abs().unsqueeze(1) ** self.power, dim=-2)
        return bands.expand(energy / total.clamp_min(1e-10), dim=-2)


class MixtureBaseline(nn.Module):
    """Every estimate is the mixture itself (all masks 1): the floor any separator must beat."""

    needs_targets = False
    mask_kind = "magnitude"
    # the floor is the mixture itself: a Wiener filter over equal estimates would hand each
    # target 1/S of it (the same BSSEval scores, which allow any gain, but not the mixture)
    post_filter = False

    def __init__(self, nb_targets: int, **unused):
        super().__init__()
        self.nb_targets = nb_targets

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` -> ``(B, S, C, F, T)`` ones."""
        return torch.ones_like(magnitude).unsqueeze(1).expand(-1, self.nb_targets, -1, -1, -1)
