"""Batched DSP kernels of the device augmentation: pure tensor functions, no parameters drawn.

Each works on a whole batch with its own value per row (rate, step, impulse response,
noise seed), on any device. :mod:`msslab.augmentation.device` draws those values and
calls these.

Why own code for the stretch: ``torchaudio.functional.phase_vocoder`` and
``julius.resample_frac`` take one rate per call, torch-audiomentations has no
time stretch and shifts pitch one example at a time; a per-example rate is a
per-example read position, which ``torch.gather`` handles in one pass.
"""

from __future__ import annotations

import math

import torch

RESAMPLE_HALF_WIDTH = 16  # taps each side of the windowed-sinc resampler



def stft_size(sample_rate: int) -> int:
    """Phase-vocoder FFT size: the power of two nearest to 46 ms (2048 samples at 44.1 kHz)."""
    return 2 ** int(round(math.log2(0.046 * sample_rate)))


def phase_vocoder(x: torch.Tensor, rate: torch.Tensor, length: int, n_fft: int) -> torch.Tensor:
    """Time-stretch every row of ``x (N, C, T)`` by its own ``rate (N,)`` (>1 faster), keeping the pitch.

    Classic phase vocoder (as ``torchaudio.functional.phase_vocoder``, with a read
    position per row): output frame ``k`` reads the input spectrum at
    ``k * rate``, magnitudes interpolated linearly, phases advanced by the
    measured instantaneous frequency. Returns ``(N, C, length)``; past the end of
    the input the output is silent.
    """
    hop = n_fft // 4
    window = torch.hann_window(n_fft, device=x.device, dtype=x.dtype)
    n, c, t = x.shape
    # Zero padding, not reflection: the first frame sets every later frame's phases, and a reflected
    # start would make them incoherent across bins (the output then loses 10-20 dB when slowed down).
    spec = torch.stft(x.reshape(n * c, t), n_fft, hop, window=window, pad_mode="constant", return_complex=True)
    spec = spec.reshape(n, c, *spec.shape[-2:])  # (N, C, F, frames)
    frames = spec.shape[-1]
    spec = torch.nn.functional.pad(spec, (0, 2))  # reading frame i + 1 at the end stays in range
    steps = length // hop + 3  # the inverse STFT then covers `length`
    position = torch.arange(steps, device=x.device, dtype=x.dtype)[None] * rate[:, None].to(x.dtype)  # (N, steps)
    index = position.floor().long().clamp(max=frames)
    alpha = (position - index).clamp(0, 1)[:, None, None, :]
    inside = (position <= frames - 1)[:, None, None, :]

    magnitudes, phases = spec.abs(), spec.angle()

    def at(values, i):
        return torch.gather(values, 3, i[:, None, None, :].expand(n, c, spec.shape[2], steps))

    after = index + 1
    magnitude = ((1 - alpha) * at(magnitudes, index) + alpha * at(magnitudes, after)) * inside
    expected = torch.linspace(0, math.pi * hop, spec.shape[2], device=x.device, dtype=x.dtype)[:, None]
    advance = at(phases, after) - at(phases, index) - expected
    advance = advance - 2 * math.pi * torch.round(advance / (2 * math.pi)) + expected
    phase = torch.cumsum(torch.cat([phases[..., :1], advance[..., :-1]], dim=-1), dim=-1)
    out = torch.polar(magnitude, phase).reshape(n * c, spec.shape[2], steps)
    return torch.istft(out, n_fft, hop, window=window, length=length).reshape(n, c, length)


def resample(x: torch.Tensor, step: torch.Tensor, length: int) -> torch.Tensor:
    """Read every row of ``x (N, C, T)`` at positions ``0, step, 2 step, ...`` (own ``step (N,)`` per row).

    Band-limited interpolation with a Hann-windowed sinc of 2 x 16 taps whose
    cutoff falls to ``1 / step`` of the Nyquist frequency when ``step > 1``
    (anti-aliasing). ``step > 1`` raises the pitch and shortens the signal.
    Returns ``(N, C, length)``; reads past the end are silent.
    """
    n, c, t = x.shape
    position = torch.arange(length, device=x.device, dtype=torch.float64)[None] * step[:, None].double()
    base = position.floor()
    frac = (position - base).to(x.dtype)[:, None, :]  # (N, 1, length)
    base = base.long()
    cutoff = torch.clamp(1.0 / step.to(x.dtype), max=1.0)[:, None, None]
    padded = torch.nn.functional.pad(x, (RESAMPLE_HALF_WIDTH, RESAMPLE_HALF_WIDTH + 1))
    out = torch.zeros(n, c, length, device=x.device, dtype=x.dtype)
    for k in range(-RESAMPLE_HALF_WIDTH + 1, RESAMPLE_HALF_WIDTH + 1):
        index = (base + k + RESAMPLE_HALF_WIDTH).clamp(0, padded.shape[-1] - 1)
        taps = torch.gather(padded, 2, index[:, None, :].expand(n, c, length))
        distance = k - frac
        window = 0.5 + 0.5 * torch.cos(math.pi * distance / RESAMPLE_HALF_WIDTH)
        out += taps * cutoff * torch.sinc(cutoff * distance) * window
    return out


def fft_convolve(x: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
    """``x (..., C, T)`` convolved per channel with ``ir`` (broadcastable, ``(..., C, L)``), cut to ``T``."""
    t = x.shape[-1]
    n = 1 << (t + ir.shape[-1] - 1 - 1).bit_length()
    out = torch.fft.irfft(torch.fft.rfft(x, n) * torch.fft.rfft(ir, n), n)
    return out[..., :t]


def coloured_noise(seeds: torch.Tensor, decay_db: torch.Tensor, channels: int, frames: int, sample_rate: int,
                   device) -> torch.Tensor:
    """Zero-mean noise ``(N, channels, frames)`` whose spectrum falls by ``decay_db`` dB per octave.

    White noise from a generator seeded per example (reproducible), shaped in the
    frequency domain; the DC bin is removed. Only the shape matters: the level is
    set by the SNR afterwards.
    """
    white = torch.stack([
        torch.randn(channels, frames, device=device, generator=torch.Generator(device).manual_seed(int(s)))
        for s in seeds.tolist()])
    spectrum = torch.fft.rfft(white)
    freqs = torch.fft.rfftfreq(frames, 1.0 / sample_rate).to(device)
    octaves = torch.log2(freqs.clamp(min=freqs[1]) / 1000.0)  # relative to 1 kHz
    gain = 10.0 ** (decay_db.to(device)[:, None] * octaves[None] / 20.0)
    gain[:, 0] = 0.0
    return torch.fft.irfft(spectrum * gain[:, None, :], frames)


def level_envelopes(seeds: torch.Tensor, depth_db: torch.Tensor, rate_hz: torch.Tensor, frames: int,
                    sample_rate: int, device) -> torch.Tensor:
    """Piecewise-linear level curves in ``[-depth_db, 0]`` dB as gains ``(N, frames)`` (see ``level_envelope``)."""
    curves = []
    for seed, depth, rate in zip(seeds.tolist(), depth_db.tolist(), rate_hz.tolist()):
        step = max(1, int(sample_rate / rate))
        knots = frames // step + 2
        generator = torch.Generator(device).manual_seed(int(seed) + 1)
        levels = -depth * torch.rand(1, 1, knots, device=device, generator=generator)
        curve = torch.nn.functional.interpolate(levels, size=(knots - 1) * step + 1, mode="linear", align_corners=True)
        curves.append(10.0 ** (curve[0, 0, :frames] / 20.0))
    return torch.stack(curves)
