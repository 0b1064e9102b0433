"""Background noise, added to the mixture only at a random SNR (targets stay clean)."""

from __future__ import annotations

import numpy as np
from audiomentations.augmentations.add_color_noise import NOISE_COLOR_DECAYS, generate_decaying_white_noise

from .files import AudioFolder, match_channels
from .pipeline import AugmentationError, as_range, check_probability


def level_envelope(frames: int, sample_rate: int, depth_db: float, rate_hz: float, rng) -> np.ndarray:
    """A random, piecewise-linear level curve in ``[-depth_db, 0]`` dB as linear gains ``(frames,)``.

    A new level every ``1 / rate_hz`` seconds makes stationary noise come and go
    like traffic, crowds or machinery.
    """
    step = max(1, int(sample_rate / rate_hz))
    knots = np.arange(0, frames + step, step)
    levels = rng.uniform(-depth_db, 0.0, size=len(knots))
    return (10.0 ** (np.interp(np.arange(frames), knots, levels) / 20.0)).astype(np.float32)


class BackgroundNoise:
    """Noise in the mixture at a random SNR; generated coloured noise, or recordings from a folder.

    The SNR is the power ratio of the mixture (sum of the augmented sources) to the
    noise over the whole example, so a drawn SNR is exactly the measured one.

    Args:
        p: probability that an example gets noise.
        snr_db: ``[low, high]`` mixture-to-noise ratio in dB, drawn uniformly.
        colors: generated noise colours to draw from (audiomentations' names: white,
            pink, brown, blue, violet, ...; pink falls 3 dB and brown 6 dB per octave).
        nonstationary_p: probability that the noise level varies over time.
        modulation_db: ``[low, high]`` depth of those level changes in dB.
        modulation_hz: ``[low, high]`` rate of those level changes (new levels per second).
        noise_dir: folder of noise recordings (any rate, mono or stereo) to use instead
            of generated noise; None generates.
        cache_size: recordings kept in memory per worker.
        n_fft: frequency resolution of the colouring filter (higher = true slope
            further down in frequency).
    """

    def __init__(self, p: float = 0.5, snr_db=(10.0, 30.0), colors=("white", "pink", "brown"),
                 nonstationary_p: float = 0.3, modulation_db=(6.0, 20.0), modulation_hz=(0.5, 4.0),
                 noise_dir: str | None = None, cache_size: int = 64, n_fft: int = 2048):
        self.p = check_probability(p, "background_noise")
        self.snr_db = as_range(snr_db, "background_noise.snr_db")
        self.colors = [str(c) for c in ([colors] if isinstance(colors, str) else colors)]
        bad = [c for c in self.colors if c not in NOISE_COLOR_DECAYS]
        if bad or not self.colors:
            raise AugmentationError(f"background_noise.colors: unknown {bad or 'empty list'}; "
                                    f"available: {sorted(NOISE_COLOR_DECAYS)}")
        self.nonstationary_p = check_probability(nonstationary_p, "background_noise.nonstationary")
        self.modulation_db = as_range(modulation_db, "background_noise.modulation_db")
        self.modulation_hz = as_range(modulation_hz, "background_noise.modulation_hz")
        if self.modulation_hz[0] <= 0:
            raise AugmentationError("background_noise.modulation_hz must be > 0")
        self.folder = AudioFolder(noise_dir, "background_noise.noise_dir", cache_size) if noise_dir else None
        self.n_fft = int(n_fft)
        self.parameters: dict = {}

    def noise(self, shape: tuple[int, int], sample_rate: int, rng) -> np.ndarray:
        """Unscaled noise of ``shape`` ``(channels, frames)``, float32."""
        channels, frames = shape
        if self.folder is not None:
            pick = int(rng.integers(len(self.folder)))
            self.parameters["file"] = self.folder.files[pick].name
            audio = match_channels(self.folder.load(pick, sample_rate), channels)
            if audio.shape[1] < frames:  # loop a short recording
                audio = np.tile(audio, (1, -(-frames // audio.shape[1])))
            start = int(rng.integers(audio.shape[1] - frames + 1))
            noise = audio[:, start:start + frames].copy()
        else:
            color = self.colors[int(rng.integers(len(self.colors)))]
            self.parameters["color"] = color
            # Draws from numpy's global generator, which the pipeline seeds from rng.
            noise = generate_decaying_white_noise((channels, frames), NOISE_COLOR_DECAYS[color], sample_rate,
                                                  n_fft=self.n_fft)
            noise -= noise.mean(axis=1, keepdims=True)  # the colouring filter leaves a DC offset
        self.parameters["nonstationary"] = bool(rng.random() < self.nonstationary_p)
        if self.parameters["nonstationary"]:
            noise *= level_envelope(frames, sample_rate, rng.uniform(*self.modulation_db),
                                    rng.uniform(*self.modulation_hz), rng)
        return noise.astype(np.float32, copy=False)

    def __call__(self, sources, mix_only, rng, sample_rate):
        self.parameters = {}  # what this call drew (read by test conditions)
        if rng.random() >= self.p:
            return sources, mix_only
        mixture = np.sum(list(sources.values()), axis=0, dtype=np.float64)
        if mix_only is not None:
            mixture += mix_only
        signal_power = float(np.mean(mixture**2))
        snr = rng.uniform(*self.snr_db)
        self.parameters["snr_db"] = float(snr)
        noise = self.noise(mixture.shape, sample_rate, rng)
        noise_power = float(np.mean(noise.astype(np.float64) ** 2))
        if signal_power <= 1e-12 or noise_power <= 0.0:  # SNR undefined for a silent mixture
            return sources, mix_only
        noise *= np.float32(np.sqrt(signal_power / noise_power / 10.0 ** (snr / 10.0)))
        return sources, noise if mix_only is None else (mix_only + noise).astype(np.float32)
