"""Reference points with nothing to train: the oracle ceiling and the mixture floor."""

from __future__ import annotations

import torch
from torch import nn


class OracleIRM(nn.Module):
    """Masks ``|S_j|^p / sum_k |S_k|^p`` computed from the true sources (no training).

    The sum runs over all targets plus, where the targets do not cover the mixture,
    the residual ``|X - sum_j S_j|`` so a target subset is handled like the RNN's.
    Args: ``power``: 1 (magnitude ratio) or 2 (Wiener-like power ratio).
    """

    needs_targets = True

    def __init__(self, power: float = 1.0, residual: bool = False, **unused):
        super().__init__()
        self.power, self.residual = power, residual

    def forward(self, mixture_spec: torch.Tensor, target_specs: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` complex mixture and ``(B, S, C, F, T)`` complex targets -> ``(B, S, C, F, T)`` masks."""
        energy = target_specs.abs() ** self.power
        total = energy.sum(1, keepdim=True)
        if self.residual:
            total = total + (mixture_spec - target_specs.sum(1)).abs().unsqueeze(1) ** self.power
        return energy / total.clamp_min(1e-10)


class MixtureBaseline(nn.Module):
    """Every estimate is the mixture itself (all masks 1): the floor any separator must beat."""

    needs_targets = False

    def __init__(self, nb_targets: int, **unused):
        super().__init__()
        self.nb_targets = nb_targets

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T)`` -> ``(B, S, C, F, T)`` ones."""
        return torch.ones_like(magnitude).unsqueeze(1).expand(-1, self.nb_targets, -1, -1, -1)
