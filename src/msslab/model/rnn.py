"""One recurrent separator for every variant: LSTM or GRU, uni- or bi-directional."""

from __future__ import annotations

import torch
from torch import nn

from .bands import MaskBands

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
MASKS = ("softmax", "sigmoid", "relu")


class RNNSeparator(nn.Module):
    """Estimates one magnitude mask per target from the mixture magnitude.

    normalise -> encode (linear, BN, tanh) -> RNN stack -> skip (concat encoder
    output) -> decode (2 x linear, BN) -> mask -> multiply with the mixture.

    Args:
        nb_bins: frequency bins of the full spectrogram (masks cover all of them).
        max_bin: bins fed to the network (a cut-off; higher bins are decoded from them).
        nb_channels: audio channels (2 for stereo), modelled jointly.
        nb_targets: masks to estimate.
        cell: ``lstm`` or ``gru``.
        bidirectional: sees the future (offline) or not (causal, streaming).
        nb_layers, hidden_size, dropout: RNN stack size; ``hidden_size`` is the total
            width, split over the two directions when bidirectional.
        mask: ``softmax`` across targets (estimates sum to the mixture), ``sigmoid``
            or ``relu`` (each target on its own).
        residual: add an implicit "everything else" class to the softmax, for target
            sets that do not cover the whole mixture.
        sample_rate: Hz of the audio; needed only for ``coarse_above``.
        coarse_above, coarse_width: above ``coarse_above`` Hz one mask value serves
            ``coarse_width`` adjacent bins (``MaskBands``; None: a value per bin). The output
            layer and the elementwise work after it scale with the number of values: at
            44.1 kHz with 2049 bins, width 8 above 4 kHz decodes 582 per target and channel.
    """

    mask_kind = "magnitude"  # real masks >= 0 on the mixture magnitude (BandSplitRNN: complex)

    def __init__(self, nb_bins: int, max_bin: int, nb_channels: int, nb_targets: int, cell: str = "lstm",
                 bidirectional: bool = True, nb_layers: int = 3, hidden_size: int = 256, dropout: float = 0.3,
                 mask: str = "softmax", residual: bool = False, sample_rate: float | None = None,
                 coarse_above: float | None = None, coarse_width: int = 1):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"model.cell: unknown cell {cell!r}; choose one of {sorted(CELLS)}")
        if mask not in MASKS:
            raise ValueError(f"model.mask: unknown mask {mask!r}; choose one of {list(MASKS)}")
        if bidirectional and hidden_size % 2:
            raise ValueError(f"model.hidden_size must be even for a bidirectional RNN, got {hidden_size}")
        self.nb_bins, self.max_bin, self.nb_channels, self.nb_targets = nb_bins, max_bin, nb_channels, nb_targets
        self.bands = MaskBands(nb_bins, sample_rate, coarse_above, coarse_width)
        self.mask, self.residual = mask, residual and mask == "softmax"
        self.nb_classes = nb_targets + int(self.residual)
        # Input statistics (per bin), set from training data before fitting; saved with the weights.
        self.register_buffer("input_mean", torch.zeros(max_bin))
        self.register_buffer("input_scale", torch.ones(max_bin))
        self.encoder = nn.Sequential(nn.Linear(nb_channels * max_bin, hidden_size, bias=False), nn.BatchNorm1d(hidden_size), nn.Tanh())
        self.rnn = CELLS[cell](input_size=hidden_size, hidden_size=hidden_size // 2 if bidirectional else hidden_size,
                               num_layers=nb_layers, bidirectional=bidirectional, batch_first=False,
                               dropout=dropout if nb_layers > 1 else 0.0)
        out = self.nb_classes * nb_channels * self.bands.nb_values
        self.decoder = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size, bias=False), nn.BatchNorm1d(hidden_size), nn.ReLU(),
            nn.Linear(hidden_size, out, bias=False), nn.BatchNorm1d(out))

    @torch.no_grad()
    def set_input_stats(self, magnitude: torch.Tensor) -> None:
        """Set the normalisation from mixture magnitudes ``(..., nb_bins, frames)``."""
        x = magnitude[..., : self.max_bin, :].transpose(-1, -2).reshape(-1, self.max_bin)
        self.input_mean.copy_(x.mean(0))
        self.input_scale.copy_(x.std(0).clamp_min(1e-4))

    @property
    def causal(self) -> bool:
        """Each frame's masks depend on that frame and earlier ones only (streamable)."""
        return not self.rnn.bidirectional

    def forward(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Mixture magnitude ``(batch, channels, nb_bins, frames)`` -> masks ``(batch, targets, channels, nb_bins, frames)``."""
        return self.step(magnitude)[0]

    def step(self, magnitude: torch.Tensor, state=None):
        """``forward`` that carries the RNN hidden state: ``(masks, state)``.

        Calling it on consecutive pieces of a frame sequence, each time with the state the
        previous call returned, gives the masks of one call on the whole sequence (causal
        models only: a bidirectional RNN would need the future frames). ``state=None`` starts
        from zeros. Everything else is per frame (fixed input statistics, BatchNorm in eval mode).
        """
        if state is not None and not self.causal:
            raise ValueError("a bidirectional RNN cannot carry its state across calls: it needs the future frames")
        batch, channels, bins, frames = magnitude.shape
        x = magnitude[:, :, : self.max_bin].permute(3, 0, 1, 2)  # (frames, batch, channels, max_bin)
        x = (x - self.input_mean) / self.input_scale
        x = self.encoder(x.reshape(frames * batch, channels * self.max_bin)).reshape(frames, batch, -1)
        y, state = self.rnn(x, state)
        y = torch.cat([x, y], dim=-1)  # skip connection around the recurrent stack
        y = self.decoder(y.reshape(frames * batch, -1)).reshape(frames, batch, self.nb_classes, channels, self.bands.nb_values)
        if self.mask == "softmax":
            y = torch.softmax(y, dim=2)[:, :, : self.nb_targets]
        else:
            y = torch.sigmoid(y) if self.mask == "sigmoid" else torch.relu(y)
        y = self.bands.expand(y)  # after the softmax, which then runs on fewer values
        return y.permute(1, 2, 3, 4, 0), state
