"""``augmentation.placement=device`` measures like the loader placement.

Both placements run through the real data module on the same tones, clicks and
impulses; each test measures the effect a stage promises (gain in dB, stretch
rate, shift in semitones, RT60, SNR, noise colour) on the outputs of both and
compares them with the drawn value. Tolerances are stated where they are used.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from scipy.signal import hilbert, welch
from test_augmentation import SR, config, fundamental, harmonic, rt60

from msslab.augmentation import AugmentationError, DeviceAugmentation, build_pipeline
from msslab.augmentation.kernels import phase_vocoder, resample
from msslab.data import MSSDataModule
from msslab.data.tracks import TrackSet

SOURCES = ["vocals", "drums"]


class FixedTracks(TrackSet):
    """One track of given stems (``{source: (channels, frames)}``), the same for every split."""

    sources, nb_channels, sample_rate = SOURCES, 2, SR

    def __init__(self, stems):
        self.stems = {k: np.asarray(v, np.float32) for k, v in stems.items()}

    def __len__(self):
        return 1

    def name(self, index):
        return "fixed"

    def num_frames(self, index):
        return next(iter(self.stems.values())).shape[-1]

    def load(self, index, offset=0, num_frames=None):
        stop = None if num_frames is None else offset + num_frames
        return {k: v[:, offset:stop] for k, v in self.stems.items()}


def tremolo(seconds: float, hz: float = 6.0) -> np.ndarray:
    """A 440 Hz tone whose level swings ``hz`` times per second: its tempo is that rate."""
    t = np.arange(int(np.ceil(seconds * SR))) / SR
    return (0.3 * (1 + 0.8 * np.sin(2 * np.pi * hz * t)) * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def tremolo_hz(x: np.ndarray) -> float:
    """Level swings per second: a line fitted through the rising zero crossings of the envelope."""
    envelope = np.abs(hilbert(x))
    envelope = np.convolve(envelope, np.hanning(int(0.01 * SR)) / np.hanning(int(0.01 * SR)).sum(), "same")
    core = envelope[SR // 10:-SR // 10] - np.median(envelope[SR // 10:-SR // 10])
    rising = np.nonzero((core[:-1] < 0) & (core[1:] >= 0))[0]
    times = (rising - core[rising] / (core[rising + 1] - core[rising])) / SR
    return 1.0 / np.polyfit(np.arange(len(times)), times, 1)[0]


def stems(vocals: np.ndarray, drums: np.ndarray | None = None) -> dict:
    vocals = np.stack([vocals, 0.5 * vocals]).astype(np.float32)
    return {"vocals": vocals, "drums": np.zeros_like(vocals) if drums is None else np.stack([drums, drums])}


def example(placement: str, tracks: dict, seconds: float, names, seed: int = 0, **knobs):
    """``(mixture (C, T), targets (S, C, T))`` numpy of one training example, stages at p = 1."""
    node = OmegaConf.merge(config(*names, **{n: {"p": 1.0} | knobs.get(n, {}) for n in names}), {"placement": placement})
    track = FixedTracks(tracks)
    dm = MSSDataModule(track, track, track, sample_rate=SR, targets=SOURCES, chunk_seconds=seconds,
                       samples_per_track=1, valid_chunk_seconds=seconds, num_workers=0, seed=seed, augmentation=node)
    dm.setup("fit")
    item = dm.train_set[0]
    if placement == "device":
        item = dm.on_after_batch_transfer(torch.utils.data.default_collate([item]), 0)
        item = tuple(x[0] for x in item)
    return tuple(x.numpy().astype(np.float64) for x in item)


PLACEMENTS = ["loader", "device"]


def test_gain_and_channel_swap_measure_alike():
    t = np.arange(SR) / SR
    clean = stems(harmonic(220.0, t), harmonic(110.0, t))
    for placement in PLACEMENTS:
        _, targets = example(placement, clean, 1.0, ["gain"], gain={"gain_db": [3.0, 3.0]})
        for target, name in zip(targets, SOURCES):
            measured = 20 * np.log10(np.linalg.norm(target) / np.linalg.norm(clean[name]))
            assert abs(measured - 3.0) < 0.01, (placement, name, measured)  # exact gain, 0.01 dB
        _, targets = example(placement, clean, 1.0, ["channel_swap"])
        np.testing.assert_allclose(targets[0], clean["vocals"][::-1], atol=1e-6)


@pytest.mark.parametrize("rate", [0.85, 1.2])
def test_time_stretch_rate_measures_alike(rate):
    # A tone swinging 6 times per second swings 6 * rate times per second after the stretch, within 1 %.
    seconds = 1.5
    loaded = tremolo(seconds * max(1.0, rate))
    for placement in PLACEMENTS:
        _, targets = example(placement, stems(loaded), seconds, ["time_stretch"], time_stretch={"rate": [rate, rate]})
        assert targets.shape[-1] == int(seconds * SR)
        measured = tremolo_hz(targets[0, 0]) / 6.0
        assert abs(measured / rate - 1) < 0.01, (placement, measured)


@pytest.mark.parametrize("semitones", [-2.0, 3.0])
def test_pitch_shift_semitones_measure_alike(semitones):
    # The fundamental of a harmonic tone moves by the drawn shift, within 0.05 semitones.
    t = np.arange(SR) / SR
    for placement in PLACEMENTS:
        _, targets = example(placement, stems(harmonic(330.0, t)), 1.0, ["pitch_shift"],
                             pitch_shift={"semitones": [semitones, semitones]})
        measured = 12 * np.log2(fundamental(targets[0, 0]) / 330.0)
        assert abs(measured - semitones) < 0.05, (placement, measured)
        # the tempo is kept: the level stays steady over the segment, within 0.5 dB, and within 1.5 dB
        # of the input's (a phase vocoder loses a little; a broken one loses 10 dB and more)
        halves = np.split(targets[0, 0], 2)
        assert abs(10 * np.log10(np.mean(halves[0] ** 2) / np.mean(halves[1] ** 2))) < 0.5, placement
        assert abs(10 * np.log10(np.mean(targets[0, 0] ** 2) / np.mean(harmonic(330.0, t) ** 2))) < 1.5, placement


def test_stretch_and_shift_together_keep_both():
    # One phase-vocoder pass does both on the device: the pitch of a tone and the tempo of its swings.
    loaded = tremolo(1.5 * 1.1)
    _, targets = example("device", stems(loaded), 1.5, ["time_stretch", "pitch_shift"],
                         time_stretch={"rate": [1.1, 1.1]}, pitch_shift={"semitones": [2.0, 2.0]})
    assert abs(12 * np.log2(fundamental(targets[0, 0]) / 440.0) - 2.0) < 0.05
    assert abs(tremolo_hz(targets[0, 0]) / 6.0 / 1.1 - 1) < 0.01


def test_reverb_rt60_measures_alike():
    # An impulse in a room of RT60 0.5 s: T20 of the output within 15 % of 0.5 s for both placements.
    x = np.zeros(int(1.5 * SR))
    x[100] = 1.0
    measured = {}
    for placement in PLACEMENTS:
        _, targets = example(placement, stems(x), 1.5, ["reverb"],
                             reverb={"rt60": [0.5, 0.5], "room_size": [6.0, 6.0], "wet_level": [0.5, 0.5]})
        wet = targets[0, 0] - 0.5 * stems(x)["vocals"][0]
        measured[placement] = rt60(wet, 100)
        assert abs(measured[placement] / 0.5 - 1) < 0.15, measured
    # dry targets: the room goes into the mixture only
    mixture, targets = example("device", stems(x), 1.5, ["reverb"], reverb={"dry_target": True})
    np.testing.assert_allclose(targets[0], stems(x)["vocals"], atol=1e-6)
    assert np.sum((mixture - targets.sum(0)) ** 2) > 1e-3


@pytest.mark.parametrize("color,slope", [("white", 0.0), ("pink", -3.01), ("brown", -6.02)])
def test_background_noise_snr_and_colour_measure_alike(color, slope):
    # SNR of the mixture against the finished sources: the drawn 12 dB within 0.01 dB; the noise
    # spectrum falls by the colour's dB per octave within 1 dB/octave (250 Hz to 4 kHz); targets stay clean.
    t = np.arange(2 * SR) / SR
    clean = stems(harmonic(220.0, t), harmonic(110.0, t))
    for placement in PLACEMENTS:
        mixture, targets = example(placement, clean, 2.0, ["background_noise"],
                                   background_noise={"snr_db": [12.0, 12.0], "colors": [color], "nonstationary_p": 0.0})
        np.testing.assert_allclose(targets[0], clean["vocals"], atol=1e-6)
        noise = mixture - targets.sum(0)
        measured = 10 * np.log10(np.mean(targets.sum(0) ** 2) / np.mean(noise**2))
        assert abs(measured - 12.0) < 0.01, (placement, measured)
        freqs, power = welch(noise[0], SR, nperseg=4096)
        band = (freqs >= 250) & (freqs <= 4000)
        fitted = np.polyfit(np.log2(freqs[band]), 10 * np.log10(power[band]), 1)[0]
        assert abs(fitted - slope) < 1.0, (placement, fitted)


def test_the_seed_reproduces_a_device_batch_and_sources_share_one_draw():
    t = np.arange(int(1.1 * SR)) / SR
    clean = stems(harmonic(220.0, t), harmonic(110.0, t))
    names = ["time_stretch", "pitch_shift", "reverb", "background_noise"]
    first = example("device", clean, 1.0, names, seed=5)
    np.testing.assert_array_equal(first[0], example("device", clean, 1.0, names, seed=5)[0])
    assert not np.allclose(first[0], example("device", clean, 1.0, names, seed=6)[0])
    # per_source false (the default): every source of an example gets the same rate and shift
    pipeline = build_pipeline(config(*names, time_stretch={"p": 1.0}, pitch_shift={"p": 1.0}), SR)
    params = DeviceAugmentation(pipeline, SR).draw(np.random.default_rng(0), (4, 2, int(1.1 * SR)))
    assert len(set(params["stretch"]["rate"].tolist())) == 1 and params["stretch"]["rate"][0] != 1.0
    assert len(set(params["stretch"]["semitones"].tolist())) == 1


def test_placement_is_checked_and_validation_batches_pass_untouched():
    t = np.arange(SR) / SR
    with pytest.raises(AugmentationError, match="augmentation.placement"):
        example("gpu", stems(harmonic(220.0, t)), 1.0, ["gain"])
    node = OmegaConf.merge(config("gain"), {"placement": "device"})
    track = FixedTracks(stems(harmonic(220.0, t)))
    dm = MSSDataModule(track, track, track, sample_rate=SR, targets=SOURCES, chunk_seconds=1.0, samples_per_track=1,
                       valid_chunk_seconds=1.0, num_workers=0, seed=0, augmentation=node)
    dm.setup("fit")
    batch = (torch.zeros(1, 2, SR), torch.zeros(1, 2, 2, SR))
    assert dm.on_after_batch_transfer(batch, 0) is batch


def test_batched_stretch_gives_each_row_its_own_rate():
    # Rows of one call with different rates equal the rows done alone (no mixing across the batch).
    t = torch.arange(SR) / SR
    x = torch.stack([torch.sin(2 * np.pi * 440 * t), torch.sin(2 * np.pi * 300 * t)])[:, None]
    rates = torch.tensor([0.8, 1.25])
    together = phase_vocoder(x, rates, 8000, 512)
    for i in range(2):
        np.testing.assert_allclose(together[i], phase_vocoder(x[i:i + 1], rates[i:i + 1], 8000, 512)[0], atol=1e-4)
    steps = torch.tensor([1.0, 2 ** (3 / 12)], dtype=torch.float64)
    out = resample(x, steps, 8000)
    np.testing.assert_allclose(out[0], x[0, :, :8000], atol=1e-5)  # step 1 reads the samples themselves


def test_device_draws_match_the_loader_at_the_default_settings():
    """At the shipped ranges and p = 0.5, each stage applies as often and draws its values from
    the same distribution in both placements. The loader's draws are read from what its stages
    record (gain and channel swap: measured on the output); the device's from the parameters
    the workers ship. 400 examples each; a fraction within 0.1 of the other (about 3 standard
    deviations), values over the whole range and alike by a two-sample Kolmogorov-Smirnov test
    (p > 0.001)."""
    from audiomentations.augmentations.add_color_noise import NOISE_COLOR_DECAYS
    from scipy.stats import ks_2samp

    n, frames = 400, 1600
    stages = {"level": ["gain", "channel_swap"], "rest": ["time_stretch", "pitch_shift", "reverb", "background_noise"]}
    draws = {placement: {} for placement in PLACEMENTS}

    def record(placement, key, value):
        draws[placement].setdefault(key, []).append(value)

    vocals = np.stack([np.sin(np.arange(frames) * 0.05), 0.5 * np.sin(np.arange(frames) * 0.05)]).astype(np.float32)
    for names in stages.values():
        pipeline = build_pipeline(config(*names), SR)
        assert {n: dict(pipeline.stages)[n].p for n in names} == dict.fromkeys(names, 0.5)  # the shipped p
        load = pipeline.input_frames(frames)
        sources = {"vocals": np.pad(vocals, ((0, 0), (0, load - frames)), mode="wrap"), "drums": 0.3 * vocals[::-1]}
        sources["drums"] = np.pad(sources["drums"], ((0, 0), (0, load - frames)), mode="wrap")
        rng = np.random.default_rng(0)
        for _ in range(n):
            out, _ = pipeline(sources, rng, frames=frames)
            drawn = pipeline.drawn()
            if "gain" in names:
                for name in SOURCES:
                    record("loader", "gain_db", 20 * np.log10(np.linalg.norm(out[name]) / np.linalg.norm(sources[name])))
                    left, right = np.linalg.norm(out[name], axis=-1)
                    record("loader", "swap", float(left < right) if name == "vocals" else float(left > right))
                continue
            record("loader", "rate", drawn.get("time_stretch", {}).get("rate", 1.0))
            record("loader", "semitones", drawn.get("pitch_shift", {}).get("num_semitones", 0.0))
            record("loader", "wet", drawn.get("reverb", {}).get("wet_level", 0.0))
            record("loader", "rt60", drawn.get("reverb", {}).get("rt60", np.nan))
            noise = dict(pipeline.stages)["background_noise"].parameters
            record("loader", "snr_db", noise.get("snr_db", np.inf))
            record("loader", "decay_db", NOISE_COLOR_DECAYS[noise["color"]] if noise else np.nan)
            record("loader", "nonstationary", float(noise["nonstationary"]) if noise else np.nan)
        device = DeviceAugmentation(pipeline, frames)
        reverb = dict(pipeline.stages).get("reverb")
        rng = np.random.default_rng(1)
        for _ in range(n):
            if reverb is not None:
                reverb.parameters = {}
            params = device.draw(rng, (len(SOURCES), 2, load))
            if "gain" in names:
                for gain, swap in zip(params["gain"]["gain"], params["channel_swap"]["swap"]):
                    record("device", "gain_db", 20 * np.log10(gain))
                    record("device", "swap", float(swap))
                continue
            record("device", "rate", params["stretch"]["rate"][0])
            record("device", "semitones", params["stretch"]["semitones"][0])
            record("device", "wet", float(params["reverb"]["wet"]))
            record("device", "rt60", reverb.parameters.get("rt60", np.nan))
            noise = params["background_noise"]
            applied = np.isfinite(noise["snr_db"])
            record("device", "snr_db", float(noise["snr_db"]))
            record("device", "decay_db", float(noise["decay_db"]) if applied else np.nan)
            record("device", "nonstationary", float(noise["depth_db"] > 0) if applied else np.nan)

    loader, device = ({k: np.asarray(v, np.float64) for k, v in draws[p].items()} for p in PLACEMENTS)
    # (key, the value when not applied, the shipped range)
    for key, neutral, (low, high) in [("gain_db", 0.0, (-6, 6)), ("rate", 1.0, (0.9, 1.1)),
                                       ("semitones", 0.0, (-2, 2)), ("wet", 0.0, (0.1, 0.5)),
                                       ("snr_db", np.inf, (10, 30))]:
        # not applied: the neutral value up to rounding (the loader's gain is measured from norms, and a
        # swapped source's norm sums its samples in another order: a last-bit difference, not a gain)
        applied = {p: d[key][~np.isclose(d[key], neutral, rtol=0, atol=1e-4)] for p, d in (("loader", loader), ("device", device))}
        for p, values in applied.items():
            share = len(values) / len(loader[key])
            assert abs(share - 0.5) < 0.1, (key, p, share)
            # Inside the range and reaching both ends (200 uniform draws miss the outer 5 % with p < 1e-4).
            margin = 0.05 * (high - low)
            assert low <= values.min() < low + margin and high - margin < values.max() <= high, (key, p)
        assert ks_2samp(applied["loader"], applied["device"]).pvalue > 1e-3, key
    for key in ["rt60"]:  # drawn where the reverb applies
        assert ks_2samp(loader[key][loader["wet"] > 0], device[key][device["wet"] > 0]).pvalue > 1e-3, key
    for p, d in (("loader", loader), ("device", device)):
        assert abs(d["swap"].mean() - 0.5) < 0.1, (p, d["swap"].mean())
        applied = np.isfinite(d["snr_db"])
        assert abs(np.mean(d["nonstationary"][applied]) - 0.3) < 0.1, p  # nonstationary_p
        for decay in {NOISE_COLOR_DECAYS[c] for c in ["white", "pink", "brown"]}:  # each colour a third
            assert abs(np.mean(np.isclose(d["decay_db"][applied], decay, atol=1e-3)) - 1 / 3) < 0.1, (p, decay)
