"""Augmentation on the training device (``augmentation.placement: device``).

The same stages, knobs and semantics as the loader placement, split in two:

- in the loader workers, :meth:`DeviceAugmentation.draw` only draws each
  example's parameters from the data set's generator (so a seed reproduces the
  data), as small arrays that the default collate stacks into a batch;
- on the device, :meth:`DeviceAugmentation.__call__` applies them to a whole
  batch of sources ``(batch, sources, channels, samples)`` at once, in the
  canonical order, with per-example parameters: gain, channel swap, time
  stretch + pitch shift (one batched phase vocoder and one batched resampler),
  reverb (batched FFT convolution with the example's room impulse responses),
  then background noise into the mixture only, at the drawn SNR against the
  finished mixture. The data module mixes sources and targets afterwards.

The DSP (phase vocoder, resampler, FFT convolution, coloured noise) is in
:mod:`msslab.augmentation.kernels`; this module holds the stages that draw the
parameters and call it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from audiomentations.augmentations.add_color_noise import NOISE_COLOR_DECAYS

from .kernels import (RESAMPLE_HALF_WIDTH, coloured_noise, fft_convolve, level_envelopes, phase_vocoder, resample,
                      stft_size)
from .noise import BackgroundNoise
from .pipeline import AugmentationError, AugmentationPipeline
from .reverb import SPEED_OF_SOUND, Reverb
from .source import ChannelSwap, Gain
from .stretch import PitchShift, TimeStretch

PLACEMENTS = ("loader", "device")


def _per_source(rng, p: float, per_source: bool, nb_sources: int, draw, neutral: float) -> np.ndarray:
    """``(nb_sources,)`` float32 values: ``draw()`` where applied (probability ``p``), ``neutral`` elsewhere."""
    if per_source:
        values = [draw() if rng.random() < p else neutral for _ in range(nb_sources)]
    else:
        values = [draw() if rng.random() < p else neutral] * nb_sources
    return np.asarray(values, dtype=np.float32)


class _GainStage:
    def __init__(self, stage: Gain):
        self.stage = stage
        t = stage.transform
        self.range = (t.min_gain_db, t.max_gain_db)

    def draw(self, rng, shape, sample_rate):
        db = _per_source(rng, self.stage.p, self.stage.per_source, shape[0], lambda: rng.uniform(*self.range), 0.0)
        return {"gain": (10.0 ** (db / 20.0)).astype(np.float32)}

    def __call__(self, sources, mix_only, params, sample_rate):
        return sources * params["gain"].to(sources)[:, :, None, None], mix_only


class _ChannelSwapStage:
    def __init__(self, stage: ChannelSwap):
        self.stage = stage

    def draw(self, rng, shape, sample_rate):
        return {"swap": _per_source(rng, self.stage.p, self.stage.per_source, shape[0], lambda: 1.0, 0.0)}

    def __call__(self, sources, mix_only, params, sample_rate):
        swap = params["swap"].to(sources.device)[:, :, None, None] > 0.5
        return torch.where(swap, sources.flip(2), sources), mix_only


class _StretchStage:
    """time_stretch and pitch_shift together: one phase vocoder pass and one resampling per stretched source.

    A pitch shift by ratio ``q`` is a stretch by ``1 / q`` then reading at step
    ``q``; a preceding tempo change by ``rate`` folds into the same stretch
    (``rate / q``), so both cost one STFT, one inverse STFT and one resampling.
    """

    def __init__(self, time_stretch: TimeStretch | None, pitch_shift: PitchShift | None, frames: int):
        self.time_stretch, self.pitch_shift, self.frames = time_stretch, pitch_shift, frames
        if time_stretch is not None:
            t = time_stretch.transform
            self.rate = (t.min_rate, t.max_rate)
        if pitch_shift is not None:
            t = pitch_shift.transform
            self.semitones = (t.min_semitones, t.max_semitones)

    def draw(self, rng, shape, sample_rate):
        n = shape[0]
        rate = np.ones(n, np.float32) if self.time_stretch is None else _per_source(
            rng, self.time_stretch.p, self.time_stretch.per_source, n, lambda: rng.uniform(*self.rate), 1.0)
        semitones = np.zeros(n, np.float32) if self.pitch_shift is None else _per_source(
            rng, self.pitch_shift.p, self.pitch_shift.per_source, n, lambda: rng.uniform(*self.semitones), 0.0)
        return {"rate": rate, "semitones": semitones}

    def __call__(self, sources, mix_only, params, sample_rate):
        b, s, c, t = sources.shape
        rate = params["rate"].to(sources.device, torch.float64).reshape(-1)
        ratio = 2.0 ** (params["semitones"].to(sources.device, torch.float64).reshape(-1) / 12.0)
        flat = sources.reshape(b * s, c, t)
        out = flat[..., :self.frames].clone()
        todo = torch.nonzero((rate != 1.0) | (ratio != 1.0)).flatten()
        if len(todo):
            rate, ratio = rate[todo], ratio[todo]
            # Stretched long enough that the read positions of the resampler stay inside.
            length = int(math.ceil(self.frames * max(1.0, float(ratio.max())))) + RESAMPLE_HALF_WIDTH + 1
            stretched = phase_vocoder(flat[todo], (rate / ratio).to(flat.dtype), length, stft_size(sample_rate))
            shifted = ratio != 1.0  # a tempo change alone needs no resampling
            out[todo] = stretched[..., :self.frames]
            if shifted.any():
                out[todo[shifted]] = resample(stretched[shifted], ratio[shifted], self.frames)
        return out.reshape(b, s, c, self.frames), mix_only


class _ReverbStage:
    def __init__(self, stage: Reverb, frames: int, sample_rate: int):
        self.stage, self.frames = stage, frames
        if stage.folder is None:  # the longest generated IR, so that every example's fits one array
            longest = 0.5 * stage.room_size[1] / SPEED_OF_SOUND + stage.rt60[1]
            self.ir_frames = min(frames, int(np.ceil(longest * sample_rate)) + 1)
        else:  # an IR past the segment's length cannot reach into it
            self.ir_frames = frames

    def draw(self, rng, shape, sample_rate):
        nb_sources, channels = shape[0], shape[1]
        count = nb_sources if self.stage.per_source else 1
        irs = np.zeros((count, channels, self.ir_frames), np.float32)
        wet = np.float32(0.0)
        if rng.random() < self.stage.p:
            wet = np.float32(rng.uniform(*self.stage.wet_level))
            drawn = self.stage.impulse_responses(count, channels, sample_rate, rng)[..., :self.ir_frames]
            irs[..., :drawn.shape[-1]] = drawn
        return {"wet": np.asarray(wet, np.float32), "ir": irs}

    def __call__(self, sources, mix_only, params, sample_rate):
        wet = params["wet"].to(sources)
        todo = torch.nonzero(wet > 0).flatten()
        if not len(todo):
            return sources, mix_only
        dry = sources[todo]
        w = wet[todo][:, None, None, None]
        reverberant = (1 - w) * dry + w * fft_convolve(dry, params["ir"][todo].to(sources))
        if not self.stage.dry_target:
            sources = sources.clone()
            sources[todo] = reverberant
            return sources, mix_only
        mix_only = torch.zeros_like(sources[:, 0]) if mix_only is None else mix_only.clone()
        mix_only[todo] += (reverberant - dry).sum(1)
        return sources, mix_only


class _NoiseStage:
    def __init__(self, stage: BackgroundNoise, frames: int):
        self.stage, self.frames = stage, frames

    def draw(self, rng, shape, sample_rate):
        params = {"snr_db": np.float32(np.inf), "decay_db": np.float32(0.0), "seed": np.int64(0),
                  "depth_db": np.float32(0.0), "rate_hz": np.float32(1.0)}
        recorded = np.zeros((shape[1], self.frames), np.float32) if self.stage.folder is not None else None
        if rng.random() < self.stage.p:
            params["snr_db"] = np.float32(rng.uniform(*self.stage.snr_db))
            if recorded is not None:  # reading files is the loader's job: ship the crop
                recorded = self.stage.noise((shape[1], self.frames), sample_rate, rng)
            else:
                params["decay_db"] = np.float32(NOISE_COLOR_DECAYS[self.stage.colors[int(rng.integers(len(self.stage.colors)))]])
                params["seed"] = np.int64(rng.integers(2**62))
                if rng.random() < self.stage.nonstationary_p:
                    params["depth_db"] = np.float32(rng.uniform(*self.stage.modulation_db))
                    params["rate_hz"] = np.float32(rng.uniform(*self.stage.modulation_hz))
        if recorded is not None:
            params["recorded"] = recorded
        return {k: np.asarray(v) for k, v in params.items()}

    def __call__(self, sources, mix_only, params, sample_rate):
        snr = params["snr_db"].to(sources.device, torch.float64)
        todo = torch.nonzero(torch.isfinite(snr)).flatten()
        if not len(todo):
            return sources, mix_only
        mixture = sources[todo].double().sum(1)
        if mix_only is not None:
            mixture = mixture + mix_only[todo].double()
        c, t = mixture.shape[-2:]
        if "recorded" in params:
            noise = params["recorded"][todo].to(sources)
        else:
            noise = coloured_noise(params["seed"][todo], params["decay_db"][todo].to(sources), c, t, sample_rate,
                                   sources.device)
            depth = params["depth_db"][todo].to(sources)
            modulated = torch.nonzero(depth > 0).flatten()
            if len(modulated):
                noise[modulated] *= level_envelopes(params["seed"][todo][modulated], depth[modulated],
                                                    params["rate_hz"][todo][modulated], t, sample_rate,
                                                    sources.device)[:, None, :]
        signal_power = mixture.pow(2).mean((-2, -1))
        noise_power = noise.double().pow(2).mean((-2, -1))
        # A silent mixture has no SNR: it gets no noise, as in the loader placement.
        scale = torch.where((signal_power > 1e-12) & (noise_power > 0),
                            torch.sqrt(signal_power / noise_power.clamp(min=1e-30) / 10.0 ** (snr[todo] / 10.0)), 0.0)
        mix_only = torch.zeros_like(sources[:, 0]) if mix_only is None else mix_only.clone()
        mix_only[todo] += (noise.double() * scale[:, None, None]).to(sources)
        return sources, mix_only


class DeviceAugmentation:
    """The stages of an :class:`AugmentationPipeline`, drawn per example in the loader, run batched on the device.

    Args:
        pipeline: the loader pipeline built from the same config (same knobs and checks).
        frames: the example length in samples; the loader delivers
            ``pipeline.input_frames(frames)`` (longer when time_stretch may speed up).
    """

    def __init__(self, pipeline: AugmentationPipeline, frames: int):
        self.sample_rate, self.frames = pipeline.sample_rate, int(frames)
        self.names = list(pipeline.names)
        stages = dict(pipeline.stages)
        self.stages: list[tuple[str, object]] = []
        for name, stage in pipeline.stages:
            if name == "gain":
                self.stages.append((name, _GainStage(stage)))
            elif name == "channel_swap":
                self.stages.append((name, _ChannelSwapStage(stage)))
            elif name == "time_stretch" or (name == "pitch_shift" and "time_stretch" not in stages):
                self.stages.append(("stretch", _StretchStage(stages.get("time_stretch"), stages.get("pitch_shift"),
                                                             self.frames)))
            elif name == "reverb":
                self.stages.append((name, _ReverbStage(stage, self.frames, self.sample_rate)))
            elif name == "background_noise":
                self.stages.append((name, _NoiseStage(stage, self.frames)))
            elif name != "pitch_shift":
                raise AugmentationError(f"augmentation.{name} has no device implementation")
        self.cuts = not any(name == "stretch" for name, _ in self.stages)

    def draw(self, rng: np.random.Generator, shape: tuple[int, int, int]) -> dict[str, dict[str, np.ndarray]]:
        """One example's parameters; ``shape`` = ``(sources, channels, samples loaded)``. Runs in the loader."""
        return {name: stage.draw(rng, shape, self.sample_rate) for name, stage in self.stages}

    def __call__(self, sources: torch.Tensor, params: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``sources (B, S, C, loaded samples)`` -> ``(sources (B, S, C, frames), mixture-only (B, C, frames) or None)``.

        ``params`` is the collated output of :meth:`draw` (on any device).
        """
        mix_only = None
        if self.cuts:
            sources = sources[..., :self.frames]
        for name, stage in self.stages:
            sources, mix_only = stage(sources, mix_only, params[name], self.sample_rate)
        return sources, mix_only

    def __repr__(self) -> str:
        return f"DeviceAugmentation({', '.join(self.names)}; sample_rate={self.sample_rate})"


def check_placement(placement) -> str:
    if placement not in PLACEMENTS:
        raise AugmentationError(f"augmentation.placement must be one of {list(PLACEMENTS)}, got {placement!r}")
    return placement
