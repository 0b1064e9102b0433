"""The augmentation config group: every test measures the property it names."""

from __future__ import annotations

import random

import numpy as np
import pytest
import soundfile as sf
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from scipy.signal import find_peaks, welch

from msslab import CONFIG_DIR
from msslab.augmentation import AVAILABLE, AugmentationError, build_pipeline, check_overrides

CONF = CONFIG_DIR
SR = 16000
NAMES = ["gain", "channel_swap", "time_stretch", "pitch_shift", "reverb", "background_noise"]


# ---------------------------------------------------------------- helpers

def config(*names: str, **knobs):
    """The merged ``augmentation`` node of the real YAMLs, with ``knobs = {name: {key: value}}``."""
    files = [OmegaConf.load(CONF / "augmentation" / f"{n}.yaml") for n in names]
    # A preset (all.yaml) is a defaults list of other files of the group.
    files = [config(*[d for d in f.defaults if d != "_self_"]) if "defaults" in f else f for f in files]
    node = OmegaConf.merge(*files)
    return OmegaConf.merge(node, OmegaConf.create(knobs))


def always(*names: str, **knobs):
    """A pipeline of ``names`` that always applies (p = 1), at ``SR``."""
    merged = {n: {"p": 1.0} | knobs.get(n, {}) for n in names}
    return build_pipeline(config(*names, **merged), SR)


def music(seed: int = 0, seconds: float = 1.0, sample_rate: int = SR, channels: int = 2) -> dict[str, np.ndarray]:
    """Four distinct stereo sources: a harmonic tone, clicks, a bass tone and noise, at unequal L/R levels."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    clicks = np.zeros_like(t)
    clicks[:: sample_rate // 8] = 1.0
    mono = {
        "vocals": harmonic(330.0, t),
        "drums": np.convolve(clicks, np.exp(-np.arange(200) / 30.0))[: len(t)],
        "bass": harmonic(82.0, t),
        "other": 0.2 * rng.standard_normal(len(t)),
    }
    pan = rng.uniform(0.3, 1.0, size=(4, channels))
    return {k: (pan[i, :, None] * v[None]).astype(np.float32) for i, (k, v) in enumerate(mono.items())}


def harmonic(f0: float, t: np.ndarray, nb: int = 5) -> np.ndarray:
    return 0.3 * sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, nb + 1))


def mix(sources, noise, groups=None):
    """The data module's own mixing: ``(mixture, targets)``."""
    from msslab.data.datamodule import mix_example

    groups = groups or {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}
    mixture, targets = mix_example(sources, groups, noise)
    return mixture.numpy(), targets.numpy()


def fundamental(x: np.ndarray, sample_rate: int = SR) -> float:
    """Frequency (Hz) of the strongest spectral peak (the fundamental of a 1/k harmonic tone)."""
    seg = x[sample_rate // 4:]
    spectrum = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 16 * len(seg)))
    return float(np.fft.rfftfreq(16 * len(seg), 1 / sample_rate)[np.argmax(spectrum)])


def click_spacing(x: np.ndarray, sample_rate: int = SR) -> float:
    """Median time (s) between clicks."""
    energy = np.convolve(x**2, np.ones(int(0.002 * sample_rate)), "same")
    peaks, _ = find_peaks(energy, height=0.3 * energy.max(), distance=int(0.04 * sample_rate))
    return float(np.median(np.diff(peaks))) / sample_rate


def rt60(x: np.ndarray, start: int, sample_rate: int = SR) -> float:
    """Reverberation time (s) from Schroeder's backward integral, fitted from -5 to -25 dB (T20)."""
    energy = x[start:].astype(np.float64) ** 2
    edc = np.cumsum(energy[::-1])[::-1]
    edc_db = 10 * np.log10(edc / edc[0] + 1e-30)
    i5, i25 = int(np.argmax(edc_db <= -5)), int(np.argmax(edc_db <= -25))
    slope = np.polyfit(np.arange(i5, i25) / sample_rate, edc_db[i5:i25], 1)[0]
    return -60.0 / slope


def snr_db(sources, noise) -> float:
    clean = np.sum(list(sources.values()), axis=0, dtype=np.float64)
    return 10 * np.log10(np.mean(clean**2) / np.mean(noise.astype(np.float64) ** 2))


def impulse(seconds: float = 2.5, at: int = 100) -> dict[str, np.ndarray]:
    x = np.zeros((2, int(seconds * SR)), np.float32)
    x[:, at] = 1.0
    return {"vocals": x}


# ---------------------------------------------------------------- config group

def test_selections_compose_and_build_in_canonical_order():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        picked = compose("train", overrides=["augmentation=[reverb,pitch_shift]"]).augmentation
        everything = compose("train", overrides=["augmentation=all"]).augmentation
        nothing = compose("train", overrides=["augmentation=[]"]).get("augmentation")
        extended = compose("train", overrides=["augmentation=[all,gain,remix]", "augmentation.reverb.p=1"]).augmentation
    assert build_pipeline(picked, SR).names == ["pitch_shift", "reverb"]  # list order does not matter
    assert sorted(everything) == ["background_noise", "pitch_shift", "placement", "reverb", "time_stretch"]
    assert everything.placement == "loader" and dict(nothing) == {"placement": "loader"}  # the default setting
    assert build_pipeline(everything, SR).names == ["time_stretch", "pitch_shift", "reverb", "background_noise"]
    assert build_pipeline(nothing, SR) is None and build_pipeline({}, SR) is None
    pipeline = build_pipeline(extended, SR)
    assert pipeline.names == ["remix", "gain", "time_stretch", "pitch_shift", "reverb", "background_noise"]
    assert pipeline.remix_p == 0.5 and extended.reverb.p == 1
    assert build_pipeline(everything, SR).remix_p == 0.0


def test_unknown_names_and_knobs_are_clear_errors():
    with pytest.raises(AugmentationError) as err:
        build_pipeline({"pitch_shfit": {}}, SR)
    assert "pitch_shfit" in str(err.value) and all(name in str(err.value) for name in AVAILABLE)
    with pytest.raises(AugmentationError) as err:
        check_overrides(["model=gru", "augmentation=[reverb,echo]"], CONF)
    assert "echo" in str(err.value) and all(name in str(err.value) for name in [*AVAILABLE, "all"])
    check_overrides(["augmentation=[pitch_shift,reverb]", "augmentation=all", "augmentation=[]"], CONF)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        with pytest.raises(Exception, match="(?s)echo.*Available options.*time_stretch"):
            compose("train", overrides=["augmentation=echo"])
        with pytest.raises(Exception, match="rt61"):
            compose("train", overrides=["augmentation=[reverb]", "augmentation.reverb.rt61=1"])
    with pytest.raises(AugmentationError, match="reverb.p"):
        build_pipeline(config("reverb", reverb={"p": 2.0}), SR)


# ---------------------------------------------------------------- every augmentation

@pytest.mark.parametrize("names", [[n] for n in NAMES] + [["all"], NAMES])
@pytest.mark.parametrize("sample_rate,channels", [(SR, 2), (8000, 2), (44100, 2), (SR, 1)])
def test_mixture_is_sum_of_targets_and_shapes_are_kept(names, sample_rate, channels):
    node = config(*names)
    pipeline = build_pipeline(OmegaConf.merge(node, {n: {"p": 1.0} for n in node}), sample_rate)
    sources = music(1, 0.5, sample_rate, channels)
    out, noise = pipeline(sources, np.random.default_rng(0))
    assert list(out) == list(sources)
    for name, source in out.items():
        assert source.shape == sources[name].shape and source.dtype == np.float32
        assert np.all(np.isfinite(source))
    mixture, targets = mix(out, noise)
    expected = targets.sum(axis=0) + (0 if noise is None else noise)
    np.testing.assert_allclose(mixture, expected, atol=1e-6 * np.abs(mixture).max())
    assert (noise is not None) == ("background_noise" in node)
    if noise is not None:
        assert noise.shape == sources["vocals"].shape and noise.dtype == np.float32
        assert np.abs(mixture - targets.sum(axis=0)).max() > 1e-3  # the mixture has the noise ...
    if list(node) == ["background_noise"]:
        for name in sources:  # ... and the targets do not
            np.testing.assert_array_equal(out[name], sources[name])


@pytest.mark.parametrize("name", NAMES)
def test_seed_makes_it_reproducible_and_draws_differ(name):
    # channel_swap at p = 1 always swaps: draw it at p = 0.5 to see draws differ.
    pipeline = always(name, channel_swap={"p": 0.5})
    sources = music(2)
    state = random.getstate(), np.random.get_state()[1].copy()

    def flat(result):
        out, noise = result
        return np.concatenate([*out.values(), *([] if noise is None else [noise])]).tobytes()

    first = flat(pipeline(sources, np.random.default_rng(7)))
    assert flat(pipeline(sources, np.random.default_rng(7))) == first
    rng = np.random.default_rng(8)  # another worker, then its later epochs
    later = [flat(pipeline(sources, rng)) for _ in range(6)]
    if name == "channel_swap":
        assert len(set(later)) > 1
    else:
        assert first not in later and len(set(later)) == len(later)
    # audiomentations' global generators are seeded from rng and restored afterwards.
    assert random.getstate() == state[0] and np.array_equal(np.random.get_state()[1], state[1])


# ---------------------------------------------------------------- the effects are real

@pytest.mark.parametrize("semitones", [12.0, -12.0])
def test_pitch_shift_by_an_octave_scales_the_fundamental(semitones):
    pipeline = always("pitch_shift", pitch_shift={"semitones": [semitones, semitones]})
    sources = music(3)
    out, _ = pipeline(sources, np.random.default_rng(0))
    for name, f0 in [("vocals", 330.0), ("bass", 82.0)]:
        assert fundamental(sources[name][0]) == pytest.approx(f0, rel=0.01)
        assert fundamental(out[name][0]) == pytest.approx(f0 * 2 ** (semitones / 12), rel=0.02)


def test_pitch_shift_per_source_draws_per_source():
    pipeline = always("pitch_shift", pitch_shift={"semitones": [-5.0, 5.0], "per_source": True})
    t = np.arange(SR) / SR
    tone = np.stack([harmonic(220.0, t)] * 2).astype(np.float32)
    out, _ = pipeline({k: tone.copy() for k in "abcd"}, np.random.default_rng(1))
    shifts = [12 * np.log2(fundamental(out[k][0]) / 220.0) for k in "abcd"]
    assert all(-5.2 < s < 5.2 for s in shifts) and np.ptp(shifts) > 1.0  # not one shift for all


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_scales_click_spacing_by_inverse_rate(rate):
    pipeline = always("time_stretch", time_stretch={"rate": [rate, rate]})
    clicks = np.zeros((2, 2 * SR), np.float32)
    clicks[:, 800::1600] = 1.0  # every 0.1 s
    sources = {"drums": clicks, "other": music(4, 2.0)["other"]}
    out, _ = pipeline(sources, np.random.default_rng(0))
    assert click_spacing(clicks[0]) == pytest.approx(0.1, rel=1e-3)
    assert click_spacing(out["drums"][0]) == pytest.approx(0.1 / rate, rel=0.02)
    assert click_spacing(out["drums"][1]) == pytest.approx(0.1 / rate, rel=0.02)


@pytest.mark.parametrize("color", ["white", "pink", "brown"])
@pytest.mark.parametrize("nonstationary", [0.0, 1.0])
def test_background_noise_has_the_drawn_snr(color, nonstationary):
    sources = music(5)
    for snr in (0.0, 12.5, 30.0):
        pipeline = always("background_noise", background_noise={
            "snr_db": [snr, snr], "colors": [color], "nonstationary_p": nonstationary})
        out, noise = pipeline(sources, np.random.default_rng(int(snr)))
        assert snr_db(out, noise) == pytest.approx(snr, abs=0.5)
    pipeline = always("background_noise", background_noise={"snr_db": [5.0, 15.0]})
    measured = [snr_db(*pipeline(sources, np.random.default_rng(s))) for s in range(8)]
    assert min(measured) >= 5.0 - 0.5 and max(measured) <= 15.0 + 0.5 and np.std(measured) > 1.0


def test_background_noise_colours_have_their_spectral_slope():
    slopes = {}
    for color in ("white", "pink", "brown"):
        pipeline = always("background_noise", background_noise={"colors": [color], "nonstationary_p": 0.0})
        _, noise = pipeline(music(6, 2.0), np.random.default_rng(0))
        freq, power = welch(noise[0], SR, nperseg=4096)
        band = (freq >= 100) & (freq <= 6400)
        slopes[color] = np.polyfit(np.log2(freq[band]), 10 * np.log10(power[band]), 1)[0]  # dB per octave
    assert slopes["white"] == pytest.approx(0.0, abs=1.0)
    assert slopes["pink"] == pytest.approx(-3.0, abs=1.0)
    assert slopes["brown"] == pytest.approx(-6.0, abs=1.0)


def test_nonstationary_noise_level_varies_over_time():
    def level_spread(p):
        pipeline = always("background_noise", background_noise={
            "colors": ["white"], "nonstationary_p": p, "modulation_db": [20.0, 20.0]})
        _, noise = pipeline(music(7, 2.0), np.random.default_rng(0))
        blocks = noise[0, : 2 * SR].reshape(20, -1)
        levels = 10 * np.log10(np.mean(blocks**2, axis=1))
        return levels.max() - levels.min()

    assert level_spread(0.0) < 1.0 and level_spread(1.0) > 6.0


def test_background_noise_from_a_folder(tmp_path):
    t = np.arange(3 * 22050) / 22050
    sf.write(tmp_path / "hum.wav", 0.5 * np.sin(2 * np.pi * 1000 * t), 22050)  # mono, another rate
    pipeline = always("background_noise", background_noise={"noise_dir": str(tmp_path), "snr_db": [10.0, 10.0]})
    sources = music(8)
    out, noise = pipeline(sources, np.random.default_rng(0))
    assert noise.shape == (2, SR)
    assert fundamental(noise[0]) == pytest.approx(1000.0, rel=0.01)
    assert snr_db(out, noise) == pytest.approx(10.0, abs=0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AugmentationError, match="background_noise.noise_dir: no audio files"):
        always("background_noise", background_noise={"noise_dir": str(tmp_path / "empty")})


@pytest.mark.parametrize("wet", [1.0, 0.3])
def test_reverb_decays_at_the_configured_rt60(wet):
    x = impulse()
    dry_tail = np.sum(x["vocals"][0, 100 + SR // 20:] ** 2)
    for target in (0.3, 0.8):
        pipeline = always("reverb", reverb={"rt60": [target, target], "wet_level": [wet, wet]})
        out, _ = pipeline(x, np.random.default_rng(0))
        tail = out["vocals"][:, 101:]
        assert dry_tail == 0 and np.sum(tail[:, SR // 20:] ** 2) > 0  # the impulse now decays
        for channel in (0, 1):
            assert rt60(out["vocals"][channel], 101) == pytest.approx(target, rel=0.1)
        assert np.corrcoef(tail[0], tail[1])[0, 1] < 0.5  # a wide (decorrelated) stereo room
    pipeline = always("reverb", reverb={"rt60": [0.3, 0.9]})
    measured = [rt60(pipeline(x, np.random.default_rng(s))[0]["vocals"][0], 101) for s in range(6)]
    assert 0.3 * 0.9 <= min(measured) and max(measured) <= 0.9 * 1.1 and max(measured) - min(measured) > 0.1


def test_reverb_puts_all_sources_in_the_same_room():
    pipeline = always("reverb")
    sources = music(9)
    out, _ = pipeline(sources, np.random.default_rng(3))
    together, _ = pipeline({"all": np.sum(list(sources.values()), axis=0)}, np.random.default_rng(3))
    # One room (one linear filter) for all sources: reverberating the sum = summing the reverberated.
    np.testing.assert_allclose(np.sum(list(out.values()), axis=0), together["all"], atol=1e-5)
    separate = always("reverb", reverb={"per_source": True})
    out, _ = separate(sources, np.random.default_rng(3))
    assert not np.allclose(np.sum(list(out.values()), axis=0), together["all"], atol=1e-3)


def test_reverb_dry_targets_put_the_reverb_in_the_mixture_only():
    pipeline = always("reverb", reverb={"dry_target": True, "wet_level": [0.5, 0.5]})
    sources = music(10)
    out, extra = pipeline(sources, np.random.default_rng(0))
    for name in sources:
        np.testing.assert_array_equal(out[name], sources[name])
    wet, _ = always("reverb", reverb={"wet_level": [0.5, 0.5]})(sources, np.random.default_rng(0))
    mixture, targets = mix(out, extra)
    np.testing.assert_allclose(mixture, np.sum(list(wet.values()), axis=0), atol=1e-5)
    assert np.sum(extra**2) > 0.01 * np.sum(targets.sum(axis=0) ** 2)


def test_reverb_from_a_folder_of_impulse_responses(tmp_path):
    rate, decay = 48000, 0.5
    rng = np.random.default_rng(0)
    t = np.arange(int(0.8 * rate)) / rate
    ir = rng.standard_normal((len(t), 2)) * np.exp(-np.log(1000) * t / decay)[:, None] * 0.1
    ir[0] = 1.0  # direct sound ...
    sf.write(tmp_path / "hall.flac", np.concatenate([np.zeros((300, 2)), ir]), rate)  # ... after 300 samples of latency
    pipeline = always("reverb", reverb={"ir_dir": str(tmp_path), "wet_level": [1.0, 1.0]})
    out, _ = pipeline(impulse(), np.random.default_rng(0))
    assert int(np.argmax(np.abs(out["vocals"][0]))) == 100  # aligned with the dry source
    assert rt60(out["vocals"][0], 101) == pytest.approx(decay, rel=0.1)


def test_reverb_per_source_from_a_folder_takes_every_source_from_one_room(tmp_path):
    rate = SR
    rng = np.random.default_rng(0)
    t = np.arange(int(1.5 * rate)) / rate
    decays = {"small": 0.2, "hall": 1.0}  # a room is a subfolder; its files are positions in it
    for room, decay in decays.items():
        (tmp_path / room).mkdir()
        for position in range(3):
            ir = rng.standard_normal((len(t), 2)) * np.exp(-np.log(1000) * t / decay)[:, None] * 0.1
            ir[0] = 1.0
            sf.write(tmp_path / room / f"position{position}.wav", ir, rate)
    pipeline = always("reverb", reverb={"ir_dir": str(tmp_path), "wet_level": [1.0, 1.0], "per_source": True})
    sources = {name: impulse()["vocals"] for name in ("vocals", "drums", "bass", "other")}
    rooms = set()
    for seed in range(6):
        out, _ = pipeline(sources, np.random.default_rng(seed))
        measured = [rt60(out[name][0], 101) for name in sources]
        assert max(measured) - min(measured) < 0.3, (seed, measured)  # one room per example ...
        assert len({out[name].tobytes() for name in sources}) == 3  # ... at its 3 positions (one used twice)
        rooms.add(min(decays, key=lambda r: abs(decays[r] - measured[0])))
    assert rooms == set(decays)


def test_gain_and_channel_swap():
    sources = music(11)
    out, _ = always("gain", gain={"gain_db": [-9.0, 3.0]})(sources, np.random.default_rng(0))
    gains_db = [20 * np.log10(np.linalg.norm(out[k]) / np.linalg.norm(sources[k])) for k in sources]
    assert all(-9.0 - 1e-4 <= g <= 3.0 + 1e-4 for g in gains_db) and np.ptp(gains_db) > 0.5  # per source
    out, _ = always("gain", gain={"per_source": False})(sources, np.random.default_rng(0))
    ratios = [np.linalg.norm(out[k]) / np.linalg.norm(sources[k]) for k in sources]
    assert np.ptp(ratios) < 1e-5 and abs(ratios[0] - 1) > 1e-3
    out, _ = always("channel_swap")(sources, np.random.default_rng(0))
    for name in sources:
        np.testing.assert_array_equal(out[name], sources[name][::-1])


# ---------------------------------------------------------------- through the data module

def test_data_module_augments_training_only():
    """Training examples differ from those of the same data module without augmentation (same
    seed, so the same chunks: time_stretch only slows down here, which loads no extra samples);
    validation chunks are identical and clean."""
    from msslab.data import MSSDataModule
    from msslab.data.synthetic import SyntheticTracks

    def tracks(split, seed):
        return SyntheticTracks(nb_tracks=2, seconds=3.0, sample_rate=8000, seed=seed, split=split, cache_dir=False)

    def data_module(augmentation):
        dm = MSSDataModule(tracks("train", 1), tracks("valid", 2), tracks("test", 3), sample_rate=8000,
                           targets=["vocals", "accompaniment"], chunk_seconds=1.0, samples_per_track=2,
                           valid_chunk_seconds=1.0, num_workers=0, seed=0, augmentation=augmentation)
        dm.setup("fit")
        return dm

    node = OmegaConf.merge(config("all", "gain", "channel_swap"),
                           {n: {"p": 1.0} for n in ["time_stretch", "pitch_shift", "reverb", "gain", "channel_swap"]},
                           {"background_noise": {"p": 0.0}, "time_stretch": {"rate": [0.8, 0.95]}})
    augmented, plain = data_module(node), data_module(None)
    assert augmented.train_set.load_frames == plain.train_set.load_frames == 8000
    for item in range(len(plain.train_set)):
        mixture, targets = augmented.train_set[item]
        assert mixture.shape == (2, 8000) and targets.shape == (2, 2, 8000)
        np.testing.assert_allclose(mixture.numpy(), targets.sum(0).numpy(), atol=1e-5)
        _, clean_targets = plain.train_set[item]
        for target, clean in zip(targets, clean_targets):  # every target of every example is changed
            assert (target - clean).pow(2).mean() > 0.1 * clean.pow(2).mean(), item
    assert len(augmented.valid_set) == len(plain.valid_set) == 6
    for item in range(len(plain.valid_set)):
        for a, b in zip(augmented.valid_set[item], plain.valid_set[item]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    clean = augmented.valid_tracks.load(0, 0, 8000)
    mixture, targets = augmented.valid_set[0]
    np.testing.assert_array_equal(targets[0].numpy(), clean["vocals"])
    np.testing.assert_allclose(mixture.numpy(), np.sum(list(clean.values()), axis=0), atol=1e-6)
