"""Band-split RNN (BSRNN; Luo and Yu, "Music Source Separation With Band-Split RNN", TASLP 2023).

The complex spectrogram is cut into frequency bands; each band is normalised and projected to
``N`` features; K dual-path blocks model the ``(bands, frames)`` grid with an RNN over time within
each band and an RNN across the bands within each frame; per band a mask head estimates a complex
mask for each target.

Stereo: the channels are modelled jointly (the paper runs each channel on its own): a band's
input is the real and imaginary parts of all channels' bins, and its mask head gives a complex
value per channel and bin. This halves the work of the paper's per-channel scheme and lets the
network use inter-channel cues.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .spectrogram import frequency_bin

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
TARGET_MODES = ("shared", "separate")


def preset_edges(segments: Sequence[Sequence[float]]) -> list[float]:
    """Band edges in Hz from ``[[width, up_to], ...]``: bands of ``width`` Hz up to ``up_to`` Hz,
    each segment starting where the previous one ended (the first at 0 Hz)."""
    edges, start = [], 0.0
    for segment in segments:
        width, up_to = (float(v) for v in segment)
        count = round((up_to - start) / width)
        edges += [start + width * (i + 1) for i in range(count)]
        start = up_to
    return edges


def band_bins(bands: str | Sequence[float], sample_rate: float, nb_bins: int,
              presets: Mapping[str, Sequence[Sequence[float]]] | None = None) -> list[int]:
    """Bin boundaries ``[0, b_1, ..., nb_bins]`` of the bands: band ``k`` is bins ``[b_k, b_k+1)``.

    ``bands``: a preset name (a key of ``presets``, each ``[[width_hz, up_to_hz], ...]``) or an
    increasing list of band edges in Hz. Each edge goes to its nearest bin; edges at or above
    Nyquist and bands that round to no bin are dropped, and whatever lies above the last edge is
    one band, so the bands cover every bin exactly once at any ``n_fft`` and sample rate.
    """
    presets = dict(presets or {})
    if isinstance(bands, str):
        if bands not in presets:
            raise ValueError(f"model.bands: unknown preset {bands!r}; choose one of {sorted(presets)} "
                             f"or give a list of band edges in Hz")
        try:
            edges = preset_edges(presets[bands])
        except (TypeError, ValueError):
            raise ValueError(f"model.band_presets.{bands}: expected a list of [width_hz, up_to_hz] pairs, "
                             f"got {presets[bands]!r}") from None
    else:
        edges = list(bands)
        if not all(isinstance(e, (int, float)) and e > 0 for e in edges) or sorted(set(edges)) != edges:
            raise ValueError(f"model.bands: band edges must be increasing positive numbers in Hz, got {edges!r}")
    inner = sorted({frequency_bin(e, sample_rate, nb_bins) for e in edges} & set(range(1, nb_bins)))
    return [0, *inner, nb_bins]


class ResidualRNN(nn.Module):
    """``x + linear(rnn(norm(x)))`` over the sequences ``(length, batch, features)``.

    The norm is per element of the sequence (LayerNorm over the features; the paper's GroupNorm
    over the whole sequence would let future frames in), so a causal RNN keeps the block causal.
    """

    def __init__(self, features: int, hidden_size: int, cell: str, bidirectional: bool):
        super().__init__()
        self.norm = nn.LayerNorm(features)
        # sequence-first: the CPU RNN kernels take that layout (batch_first costs two copies a call)
        self.rnn = CELLS[cell](features, hidden_size, bidirectional=bidirectional)
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), features)

    def forward(self, x: torch.Tensor, state=None):
        y, state = self.rnn(self.norm(x), state)
        return x + self.fc(y), state


class MaskHead(nn.Module):
    """One band's mask estimator for ``nb_targets`` targets: norm, MLP (tanh), GLU.

    The targets' MLPs are independent; they run as one batched product.
    """

    def __init__(self, features: int, hidden: int, out: int, nb_targets: int):
        super().__init__()
        self.norm = nn.LayerNorm(features)
        self.fc1 = nn.Linear(features, nb_targets * hidden)
        self.w2 = nn.Parameter(torch.empty(nb_targets, hidden, 2 * out))
        self.b2 = nn.Parameter(torch.zeros(nb_targets, 2 * out))
        bound = hidden ** -0.5  # nn.Linear's initialisation (fan-in: hidden)
        nn.init.uniform_(self.w2, -bound, bound)
        self.nb_targets, self.hidden = nb_targets, hidden

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``(frames, batch, features)`` -> ``(frames, batch, targets, out)``."""
        h = torch.tanh(self.fc1(self.norm(z))).unflatten(-1, (self.nb_targets, self.hidden))
        y = torch.einsum("btsh,sho->btso", h, self.w2) + self.b2
        return nn.functional.glu(y, dim=-1)


class BandSplitCore(nn.Module):
    """Band split, K dual-path blocks and the per-band mask heads of ``nb_targets`` targets."""

    def __init__(self, widths: list[int], nb_channels: int, nb_targets: int, features: int, nb_layers: int,
                 rnn_size: int, cell: str, bidirectional: bool, mask_hidden: int):
        super().__init__()
        inputs = [2 * nb_channels * w for w in widths]  # real and imaginary part of every channel's bins
        self.split = nn.ModuleList(nn.Sequential(nn.LayerNorm(n), nn.Linear(n, features)) for n in inputs)
        self.time = nn.ModuleList(ResidualRNN(features, rnn_size, cell, bidirectional) for _ in range(nb_layers))
        # Across the bands of one frame: no future frames involved, so always bidirectional.
        self.band = nn.ModuleList(ResidualRNN(features, rnn_size, cell, True) for _ in range(nb_layers))
        self.heads = nn.ModuleList(MaskHead(features, mask_hidden, n, nb_targets) for n in inputs)

    def forward(self, bands: list[torch.Tensor], state=None):
        """Per band ``(frames, batch, 2 * channels * width)`` -> per band ``(frames, batch, targets,
        2 * channels * width)``, and the time RNNs' states."""
        z = torch.stack([split(x) for split, x in zip(self.split, bands)], dim=2)  # (T, B, K, N)
        frames, batch, nb_bands, features = z.shape
        state = state or [None] * len(self.time)
        new_state = []
        for time, band, s in zip(self.time, self.band, state):
            # (T, B*K, N) for the RNN over time, (K, T*B, N) across bands: one transposing copy each way
            y, s = time(z.reshape(frames, batch * nb_bands, features), s)
            z = y.reshape(frames, batch, nb_bands, features).permute(2, 0, 1, 3).reshape(nb_bands, -1, features)
            z = band(z)[0].reshape(nb_bands, frames, batch, features).permute(1, 2, 0, 3)  # back to (T, B, K, N)
            new_state.append(s)
        return [head(z[:, :, k]) for k, head in enumerate(self.heads)], new_state


class BandSplitRNN(nn.Module):
    """Band-split RNN separator: complex mixture spectrogram in, one complex mask per target out.

    Args:
        nb_bins: frequency bins of the spectrogram (the bands cover all of them).
        max_bin: ignored (the bands cover every bin; the top band is cheap).
        nb_channels: audio channels, modelled jointly (module docstring).
        nb_targets: masks to estimate.
        residual: ignored: each target's mask is estimated on its own (no softmax across
            targets), so a target set that does not cover the mixture needs nothing extra.
        sample_rate: Hz of the audio, to place the band edges.
        bands: a preset name (key of ``band_presets``) or an increasing list of band edges in Hz.
        band_presets: ``{name: [[width_hz, up_to_hz], ...]}``; above the last ``up_to`` one band.
        hidden_size: N, the features per band (the paper: 128).
        nb_layers: K, the dual-path blocks (the paper: 12).
        rnn_size: hidden units per direction of every RNN (None: 2N, the paper's).
        cell: ``lstm`` or ``gru``.
        bidirectional: whether the RNN over time sees the future (False: causal, streamable; the
            RNN across bands always sees all bands of the current frame).
        mask_hidden: hidden units of each mask MLP (None: 4N, the paper's).
        targets: ``shared`` (one network, a mask head per target) or ``separate`` (one network
            per target, as in the paper: nb_targets times the parameters and the compute).
    """

    mask_kind = "complex"

    def __init__(self, nb_bins: int, max_bin: int | None = None, nb_channels: int = 2, nb_targets: int = 4,
                 residual: bool = False, sample_rate: float = 44100, bands: str | Sequence[float] = "vocals",
                 band_presets: Mapping[str, Sequence[Sequence[float]]] | None = None, hidden_size: int = 128,
                 nb_layers: int = 12, rnn_size: int | None = None, cell: str = "lstm", bidirectional: bool = True,
                 mask_hidden: int | None = None, targets: str = "shared"):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"model.cell: unknown cell {cell!r}; choose one of {sorted(CELLS)}")
        if targets not in TARGET_MODES:
            raise ValueError(f"model.targets: unknown mode {targets!r}; choose one of {list(TARGET_MODES)}")
        for key, value in dict(hidden_size=hidden_size, nb_layers=nb_layers, rnn_size=rnn_size or 1,
                               mask_hidden=mask_hidden or 1).items():
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"model.{key} must be a whole number >= 1, got {value!r}")
        if not isinstance(bands, str):
            bands = list(bands)
        self.bounds = band_bins(bands, sample_rate, nb_bins, band_presets)
        self.nb_bins, self.nb_channels, self.nb_targets = nb_bins, nb_channels, nb_targets
        self.bidirectional = bidirectional
        widths = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        core = dict(widths=widths, nb_channels=nb_channels, features=hidden_size, nb_layers=nb_layers,
                    rnn_size=rnn_size or 2 * hidden_size, cell=cell, bidirectional=bidirectional,
                    mask_hidden=mask_hidden or 4 * hidden_size)
        if targets == "shared":
            self.cores = nn.ModuleList([BandSplitCore(nb_targets=nb_targets, **core)])
        else:
            self.cores = nn.ModuleList(BandSplitCore(nb_targets=1, **core) for _ in range(nb_targets))

    @property
    def nb_bands(self) -> int:
        return len(self.bounds) - 1

    @property
    def causal(self) -> bool:
        """Each frame's masks depend on that frame and earlier ones only (streamable)."""
        return not self.bidirectional

    def set_input_stats(self, magnitude: torch.Tensor) -> None:
        """Nothing to set: each band's input is normalised per frame (training calls this for every model)."""

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """Complex mixture ``(batch, channels, nb_bins, frames)`` -> complex masks
        ``(batch, targets, channels, nb_bins, frames)``."""
        return self.step(spec)[0]

    def step(self, spec: torch.Tensor, state=None):
        """``forward`` that carries the time RNNs' states: ``(masks, state)``.

        On consecutive pieces of a frame sequence, each call given the state the previous one
        returned, the masks equal those of one call on the whole sequence (causal models only).
        ``state=None`` starts from zeros.
        """
        if state is not None and not self.causal:
            raise ValueError("a bidirectional RNN cannot carry its state across calls: it needs the future frames")
        if not spec.is_complex():
            raise ValueError("BandSplitRNN takes the complex spectrogram (it estimates complex masks)")
        batch, channels, bins, frames = spec.shape
        x = torch.view_as_real(spec).permute(3, 0, 2, 1, 4)  # (T, B, F, C, 2)
        bands = [x[:, :, a:b].reshape(frames, batch, -1) for a, b in zip(self.bounds, self.bounds[1:])]
        state = state or [None] * len(self.cores)
        outputs, new_state = [], []
        for core, s in zip(self.cores, state):
            masks, s = core(bands, s)
            outputs.append(torch.cat([m.unflatten(-1, (-1, channels, 2)) for m in masks], dim=3))  # (T, B, S, F, C, 2)
            new_state.append(s)
        masks = torch.cat(outputs, dim=2).float()  # float: bfloat16 has no complex type
        return torch.view_as_complex(masks.permute(1, 2, 4, 3, 0, 5).contiguous()), new_state
