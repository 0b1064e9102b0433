"""STFT front end: perfect reconstruction, bin/frame bookkeeping, and oracle-mask separation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msslab.model import OracleIRM, Spectrogram
from msslab.model.spectrogram import magnitude, phase_sensitive_magnitude
from msslab.separation import Separator
from msslab.system import SeparationSystem

SR = 8000


def noise(*shape, seed=0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32)) * 0.1


def relative_error(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    return float((estimate - reference).norm() / reference.norm())


@pytest.mark.parametrize("n_fft, hop, window", [(512, 128, "hann"), (256, 64, "hamming"), (1024, 256, "blackman"),
                                                (256, 128, "hann"), (512, 256, "sqrt_hann"), (512, 128, "sqrt_hann")])
@pytest.mark.parametrize("length", [8000, 8001, 1234])  # whole frames or not
def test_stft_istft_round_trip(n_fft, hop, window, length):
    spec = Spectrogram(n_fft=n_fft, hop_length=hop, window=window, sample_rate=SR)
    wave = noise(3, 2, length)  # (batch, channels, samples): leading dimensions pass through
    stft = spec(wave)
    assert stft.is_complex() and stft.shape == (3, 2, n_fft // 2 + 1, length // hop + 1)
    assert spec.nb_bins == n_fft // 2 + 1 == spec.max_bin
    back = spec.inverse(stft, length=length)
    assert back.shape == wave.shape
    assert relative_error(back, wave) < 1e-5
    # The edges too (a wrong padding mode would damage the first and last frames only).
    edge = n_fft
    assert relative_error(back[..., :edge], wave[..., :edge]) < 1e-5
    assert relative_error(back[..., -edge:], wave[..., -edge:]) < 1e-5


@pytest.mark.parametrize("window, swing", [("hann", 2.0), ("sqrt_hann", 1.0)])
def test_half_overlap_synthesis_level(window, swing):
    """The inverse STFT divides by the overlap-add of the squared window. At 50 % overlap that
    level swings by 2x for Hann (sin^4 + cos^4), so any change a mask makes between frames is
    amplified up to twice; for the square-root Hann it is constant."""
    w = Spectrogram(n_fft=512, hop_length=256, window=window).window
    assert torch.allclose(w, torch.hann_window(512) ** (0.5 if window == "sqrt_hann" else 1.0))
    level = (w**2).reshape(2, 256).sum(0)  # two frames overlap at every sample
    assert float(level.max() / level.min()) == pytest.approx(swing, rel=1e-3)


def test_magnitude_is_the_complex_abs():
    spec = Spectrogram(n_fft=256, hop_length=64)(torch.randn(2, 3, 4000))
    spec[0, 0, 5, 3] = 0  # a zero bin stays zero
    assert torch.allclose(magnitude(spec), spec.abs(), rtol=1e-6, atol=0)


def test_phase_sensitive_magnitude_projects_on_the_mixture_phase():
    generator = torch.Generator().manual_seed(0)
    sources = torch.randn(2, 3, 2, 40, 9, dtype=torch.complex64, generator=generator)
    mix = sources.sum(1)
    projected = phase_sensitive_magnitude(sources, mix, mix.abs())
    expected = sources.abs() * torch.cos(sources.angle() - mix.angle().unsqueeze(1))
    torch.testing.assert_close(projected, expected, rtol=1e-4, atol=1e-5)
    assert bool((projected < 0).any())  # a source against the mixture's phase counts negative
    torch.testing.assert_close(projected.sum(1), mix.abs(), rtol=1e-4, atol=1e-5)
    silent = phase_sensitive_magnitude(sources, torch.zeros_like(mix), torch.zeros(mix.shape))
    assert bool(torch.isfinite(silent).all()) and bool((silent == 0).all())


def test_a_sine_lands_in_its_bin():
    spec = Spectrogram(n_fft=512, hop_length=128, sample_rate=SR)
    t = torch.arange(SR) / SR
    for freq in (250.0, 1000.0, 3125.0):  # exact bin centres: k * SR / n_fft
        magnitude = spec(torch.sin(2 * torch.pi * freq * t)).abs()
        assert int(magnitude[:, 10:-10].mean(-1).argmax()) == round(freq * 512 / SR)


@pytest.mark.parametrize("max_freq, max_bin", [(None, 257), (4000.0, 257), (2000.0, 129), (1000.0, 65), (15.625, 2)])
def test_max_freq_becomes_the_bin_of_that_frequency(max_freq, max_bin):
    # Bin k is at k * 8000 / 512 = 15.625 k Hz, and the cut-off bin itself is fed to the network.
    assert Spectrogram(n_fft=512, hop_length=128, sample_rate=SR, max_freq=max_freq).max_bin == max_bin


@pytest.mark.parametrize("kwargs, key", [({"window": "kaiser"}, "window"), ({"hop_length": 1024}, "hop_length"),
                                         ({"max_freq": 5000.0}, "max_freq"), ({"max_freq": 0.0}, "max_freq")])
def test_bad_stft_settings_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=f"stft.{key}"):
        Spectrogram(**{"n_fft": 512, "hop_length": 128, "sample_rate": SR} | kwargs)


def _system(power: float = 1.0, residual: bool = False, targets=("a", "b", "c")) -> SeparationSystem:
    return SeparationSystem(Separator(OracleIRM(power=power, residual=residual),  # plain masks: their sums are tested
                                      Spectrogram(n_fft=512, hop_length=128, sample_rate=SR), list(targets),
                                      wiener_iterations=0)).eval()


def _tones(length: int = SR) -> torch.Tensor:
    """Three stereo sources in disjoint bands: ``(1, 3, 2, length)``."""
    t = torch.arange(length) / SR
    low = torch.sin(2 * torch.pi * 110 * t) + 0.5 * torch.sin(2 * torch.pi * 220 * t)
    mid = torch.sin(2 * torch.pi * 1000 * t + 1.0) * (1 + 0.5 * torch.sin(2 * torch.pi * 3 * t))
    high = torch.sin(2 * torch.pi * 3000 * t) * 0.3
    sources = torch.stack([torch.stack([low, 0.5 * low]), torch.stack([0.2 * mid, mid]), torch.stack([high, high])])
    return sources[None].float()


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_oracle_mask_estimates_sum_to_the_mixture(power):
    sources = noise(2, 3, 2, 6000, seed=1)  # overlapping in time and frequency
    mixture = sources.sum(1)
    estimates = _system(power)(mixture, sources)
    assert estimates.shape == sources.shape
    assert relative_error(estimates.sum(1), mixture) < 1e-5
    masks = OracleIRM(power=power)(Spectrogram(512, 128, sample_rate=SR)(mixture), Spectrogram(512, 128, sample_rate=SR)(sources))
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1 + 1e-6


def test_coarse_oracle_is_the_band_energy_ratio():
    """201 bins at 8 kHz (20 Hz apart): per bin below 1 kHz (bin 50), per 4 bins above, as the RNN's layout."""
    targets = torch.randn(1, 2, 2, 201, 5, dtype=torch.complex64)
    mixture = targets.sum(1)
    fine = OracleIRM()(mixture, targets)
    masks = OracleIRM(sample_rate=8000, coarse_above=1000, coarse_width=4)(mixture, targets)
    assert masks.shape == fine.shape and torch.allclose(masks.sum(1), torch.ones(()))
    assert torch.equal(masks[..., :50, :], fine[..., :50, :])
    energy = targets.abs()
    for lo, hi in [(50, 54), (54, 58), (198, 201)]:  # two full bands and the short last one
        band = energy[..., lo:hi, :].sum(-2)
        expected = band / band.sum(1, keepdim=True)
        for f in range(lo, hi):
            assert torch.allclose(masks[..., f, :], expected, atol=1e-6), f
    with pytest.raises(ValueError, match="model.coarse_width"):
        OracleIRM(sample_rate=8000, coarse_above=1000, coarse_width=0)


def test_oracle_mask_recovers_sources_in_disjoint_bands():
    sources = _tones()
    estimates = _system()(sources.sum(1), sources)
    for j in range(3):
        assert relative_error(estimates[:, j], sources[:, j]) < 0.03, j


def test_oracle_mask_of_a_lone_source_is_exact():
    sources = _tones()
    sources[:, 1:] = 0  # one active source: its mask is 1 wherever it has energy
    estimates = _system()(sources.sum(1), sources)
    assert relative_error(estimates[:, 0], sources[:, 0]) < 1e-5
    assert float(estimates[:, 1:].abs().max()) < 1e-6


def test_oracle_with_residual_leaves_the_rest_out():
    sources = _tones()
    mixture = sources.sum(1)
    estimates = _system(residual=True, targets=("low", "mid"))(mixture, sources[:, :2])  # "high" is not a target
    for j in range(2):
        assert relative_error(estimates[:, j], sources[:, j]) < 0.03, j
    assert relative_error(estimates.sum(1), mixture - sources[:, 2]) < 0.03


def test_oracle_cannot_separate_without_the_true_sources():
    with pytest.raises(ValueError, match="oracle"):
        _system()(noise(1, 2, 4000))


def test_mixture_baseline_returns_the_mixture_for_every_target():
    from msslab.model import MixtureBaseline

    system = SeparationSystem(Separator(MixtureBaseline(nb_targets=3), Spectrogram(n_fft=512, hop_length=128, sample_rate=SR),
                                        ["a", "b", "c"])).eval()
    mixture = noise(2, 2, 5000, seed=4)
    estimates = system(mixture)
    assert estimates.shape == (2, 3, 2, 5000)
    for j in range(3):
        assert relative_error(estimates[:, j], mixture) < 1e-5
