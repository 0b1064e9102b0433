"""Generated multitrack music: deterministic from a seed, and each stem has its claimed structure.

The checks measure the audio (spectral flux, band energy, pitch track, pan law) rather
than reading the generator's parameters, so a renderer that stops producing drums that
hit, a bass that is low or a voice that sings would fail here.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, signal

from msslab.data import MSSDataModule
from msslab.data.synthetic import PANS, SOURCES, SyntheticTracks, generate_track

SR = 16000
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def tracks() -> dict[int, dict[str, np.ndarray]]:
    return {seed: generate_track(seed, seconds=4.0, sample_rate=SR) for seed in SEEDS}


def frame_rms(x: np.ndarray, seconds: float) -> np.ndarray:
    mono = x.mean(0)
    n = int(seconds * SR)
    k = len(mono) // n
    return np.sqrt((mono[: k * n].reshape(k, n) ** 2).mean(1))


def spectral_flux(x: np.ndarray) -> float:
    """Mean positive magnitude change between frames, relative to the mean magnitude (onsets)."""
    _, _, z = signal.stft(x.mean(0), SR, nperseg=512, noverlap=384)
    magnitude = np.abs(z)
    rise = np.maximum(np.diff(magnitude, axis=1), 0).sum(0)
    return float(rise.mean() / magnitude.sum(0).mean())


def energy_below(x: np.ndarray, hz: float) -> float:
    freqs, power = signal.welch(x.mean(0), SR, nperseg=4096)
    return float(power[freqs < hz].sum() / power.sum())


def pan_position(x: np.ndarray) -> float:
    """Inverse of the constant-power law: -1 left, 0 centre, 1 right."""
    left, right = np.sqrt((x.astype(np.float64) ** 2).mean(1))
    return float(np.arctan2(right, left) * 4 / np.pi - 1)


def pitch_track(x: np.ndarray, sr: int, fmin: float = 200.0, fmax: float = 1700.0, frame: float = 0.03,
                hop: float = 0.005):
    """``(f0 Hz, periodicity, energy)`` per frame from the normalised autocorrelation."""
    x = x.astype(np.float64)
    n, h = int(frame * sr), int(hop * sr)
    lags = np.arange(int(sr / fmax), int(sr / fmin) + 1)
    f0, periodicity, energy = [], [], []
    for start in range(0, len(x) - n - lags[-1], h):
        a = x[start : start + n]
        b = np.lib.stride_tricks.sliding_window_view(x[start : start + n + lags[-1]], n)[lags]
        c = b @ a / (np.sqrt((b**2).sum(1) * (a**2).sum()) + 1e-12)
        i = int(np.argmax(c >= 0.9 * c.max()))  # the first strong peak: no octave errors
        while i + 1 < len(c) and c[i + 1] > c[i]:
            i += 1
        d = 0.5 * (c[i - 1] - c[i + 1]) / (c[i - 1] - 2 * c[i] + c[i + 1]) if 0 < i < len(c) - 1 else 0.0
        f0.append(sr / (lags[i] + d)), periodicity.append(c[i]), energy.append((a**2).mean())
    return np.array(f0), np.array(periodicity), np.array(energy)


# ------------------------------------------------------------------------------ determinism

def test_same_seed_same_audio_other_seed_other_audio():
    a, b, c = (generate_track(seed, seconds=1.5, sample_rate=8000) for seed in (7, 7, 8))
    assert list(a) == SOURCES
    for name in SOURCES:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.allclose(a[name], c[name])


def test_shapes_dtype_and_levels():
    stems = generate_track(3, seconds=1.2345, sample_rate=11025)
    for name, audio in stems.items():
        assert audio.dtype == np.float32 and audio.shape == (2, round(1.2345 * 11025)), name
        assert np.isfinite(audio).all()
        level_db = 10 * np.log10(np.mean(audio.astype(np.float64) ** 2) * 2)  # mono-equivalent RMS
        assert -30 < level_db < -10, name


def test_track_sets_are_seeded_per_split_and_track():
    train = SyntheticTracks(nb_tracks=2, seconds=1.0, sample_rate=8000, seed=1000, split="train")
    again = SyntheticTracks(nb_tracks=2, seconds=1.0, sample_rate=8000, seed=1000, split="train")
    test = SyntheticTracks(nb_tracks=2, seconds=1.0, sample_rate=8000, seed=3000, split="test")
    np.testing.assert_array_equal(train.load(1)["bass"], again.load(1)["bass"])
    assert not np.allclose(train.load(0)["bass"], train.load(1)["bass"])
    assert not np.allclose(train.load(0)["bass"], test.load(0)["bass"])  # splits never share a track
    assert [train.name(0), test.name(1)] == ["synthetic-train-000", "synthetic-test-001"]
    chunk = train.load(1, offset=1234, num_frames=2000)
    assert all(chunk[s].shape == (2, 2000) for s in SOURCES)
    np.testing.assert_array_equal(chunk["vocals"], train.load(1)["vocals"][:, 1234:3234])


@pytest.mark.parametrize("kwargs", [{"nb_tracks": 0}, {"seconds": 0.0}])
def test_bad_track_set_settings_are_errors(kwargs):
    from msslab.data import DataError

    with pytest.raises(DataError, match="nb_tracks" if "nb_tracks" in kwargs else "seconds"):
        SyntheticTracks(**{"nb_tracks": 1, "seconds": 1.0, "sample_rate": 8000, "seed": 0} | kwargs)


def test_same_seed_same_training_examples():
    def module(seed):
        def tracks(split, s):
            return SyntheticTracks(nb_tracks=2, seconds=2.0, sample_rate=8000, seed=s, split=split)
        dm = MSSDataModule(tracks("train", 1), tracks("valid", 2), tracks("test", 3), sample_rate=8000,
                           targets=None, chunk_seconds=0.5, samples_per_track=3, num_workers=0, seed=seed)
        dm.setup("fit")
        return dm

    first, second, other = module(0), module(0), module(1)
    for i in range(len(first.train_set)):
        np.testing.assert_array_equal(first.train_set[i][1].numpy(), second.train_set[i][1].numpy())
    different = [not np.array_equal(first.train_set[i][0].numpy(), other.train_set[i][0].numpy())
                 for i in range(len(first.train_set))]
    assert any(different)  # the chunk positions follow the seed


# ---------------------------------------------------------------------------- stem structure

def test_drums_are_the_transient_source(tracks):
    for seed, stems in tracks.items():
        flux = {name: spectral_flux(audio) for name, audio in stems.items()}
        # The voice comes closest (note onsets, vibrato moving partials across bins).
        assert flux["drums"] > 1.05 * flux["vocals"], (seed, flux)
        assert flux["drums"] > 1.5 * max(flux["bass"], flux["other"]), (seed, flux)


def test_bass_lives_below_300_hz_and_vocals_above(tracks):
    for seed, stems in tracks.items():
        assert energy_below(stems["bass"], 300) > 0.9, seed
        assert energy_below(stems["vocals"], 300) < 0.05, seed
        assert energy_below(stems["other"], 100) < 0.05, seed


def test_vocals_are_harmonic_with_vibrato():
    sr = 44100  # fine lags: a 1 kHz voice moves by 1/44 of a period per sample
    for seed in SEEDS:
        voice = generate_track(seed, seconds=3.0, sample_rate=sr)["vocals"].mean(0)
        f0, periodicity, energy = pitch_track(voice, sr)
        voiced = energy > energy.max() * 1e-3
        assert np.median(periodicity[voiced]) > 0.9, seed  # harmonic: periodic at f0
        assert 250 < np.median(f0[voiced]) < 1600, seed  # a voice, an octave above the key root
        # Vibrato: the pitch wobbles around each note by tens of cents, a few times a second.
        cents = 1200 * np.log2(f0)
        wobble = cents - ndimage.median_filter(cents, size=41)  # the notes: a 200 ms running median
        steady = voiced & (periodicity > 0.9) & (np.abs(wobble) < 80)  # not across note changes
        depth = np.median(np.abs(wobble[steady]))
        assert 5 < depth < 60, (seed, depth)
        contour = np.where(steady, wobble, 0.0)
        spectrum = np.abs(np.fft.rfft(contour * np.hanning(len(contour)), 8192))
        rates = np.fft.rfftfreq(8192, 0.005)
        band = (rates > 1) & (rates < 20)
        assert 4.0 < rates[band][np.argmax(spectrum[band])] < 7.0, seed


def test_vocals_have_rests():
    for seed in SEEDS:
        vocals = generate_track(seed, seconds=12.0, sample_rate=8000)["vocals"].mean(0)
        level = np.sqrt((vocals[: 12 * 8000].reshape(-1, 400) ** 2).mean(1))  # 50 ms frames
        silent = level < level.max() * 1e-2  # nothing but the noise floor, 60 dB below the stem's RMS
        assert 0.03 < silent.mean() < 0.6, seed
        runs = np.diff(np.flatnonzero(np.diff(np.r_[0, silent.astype(int), 0])))[::2]
        assert runs.max() >= 4, seed  # a rest of 200 ms or more, not only the gaps between notes


def test_sources_overlap_in_time(tracks):
    for seed, stems in tracks.items():
        active = np.array([frame_rms(a, 0.1) > 0.03 * frame_rms(a, 0.1).max() for a in stems.values()])
        assert (active.sum(0) >= 3).mean() > 0.8, seed


def test_each_stem_is_panned_with_one_constant_power_position(tracks):
    positions = {name: [] for name in SOURCES}
    for stems in tracks.values():
        for name, audio in stems.items():
            left, right = audio.astype(np.float64)
            assert np.corrcoef(left, right)[0, 1] > 0.999  # one source, one position (plus a noise floor)
            low, high = PANS[name]
            position = pan_position(audio)
            assert low - 0.02 <= position <= high + 0.02, (name, position)
            positions[name].append(position)
        assert np.ptp([pan_position(a) for a in stems.values()]) > 0.02  # not all at one spot
    for name, values in positions.items():
        assert np.ptp(values) > 0.01, name  # drawn per track, not fixed
    assert any(not np.allclose(a[0], a[1]) for stems in tracks.values() for a in stems.values())


# ----------------------------------------------------------------------------- target groups

def test_accompaniment_is_drums_plus_bass_plus_other(tmp_path, compose_train):
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=smoke", "data.targets=[vocals,accompaniment]"], tmp_path)
    dm = instantiate(cfg.data, augmentation=None)
    assert dm.targets == ["vocals", "accompaniment"] and dm.groups["accompaniment"] == ["drums", "bass", "other"]
    name, mixture, targets = dm.test_track(0)
    stems = dm.test_tracks.load(0)
    assert targets.shape == (2, 2, stems["vocals"].shape[1])
    np.testing.assert_array_equal(targets[0].numpy(), stems["vocals"])
    accompaniment = stems["drums"] + stems["bass"] + stems["other"]
    np.testing.assert_allclose(targets[1].numpy(), accompaniment, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mixture.numpy(), stems["vocals"] + accompaniment, rtol=0, atol=1e-6)
    dm.setup("fit")
    mixture, targets = dm.train_set[0]
    np.testing.assert_allclose(mixture.numpy(), targets.sum(0).numpy(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------ disk cache

def test_cache_is_hit_the_second_time_and_a_changed_parameter_misses(tmp_path, monkeypatch):
    import msslab.data.synthetic as synthetic

    def tracks(**changes):
        return SyntheticTracks(**({"nb_tracks": 2, "seconds": 1.0, "sample_rate": 8000, "seed": 11, "split": "train",
                                   "cache_dir": str(tmp_path), "workers": 0} | changes))

    first = tracks()
    first.prepare()
    files = sorted((tmp_path / "synthetic").iterdir())
    assert [f.suffix for f in files] == [".npy", ".npy"]  # one per track, no temporary file left behind

    def no_rendering(*args):
        raise AssertionError("rendered although the track is cached")

    monkeypatch.setattr(synthetic, "_render", no_rendering)
    second = tracks()
    second.prepare()  # read from disk
    for i in range(2):
        for name in SOURCES:
            np.testing.assert_array_equal(second.load(i)[name], first.load(i)[name])
    # everything that determines a track is in its key: each change misses the cache
    for changes in ({"seed": 12}, {"seconds": 1.5}, {"sample_rate": 16000}, {"noise_floor_db": -50.0}):
        changed = tracks(**changes)
        assert all(not changed.cache_path(i).exists() for i in range(2)), changes
        with pytest.raises(AssertionError, match="rendered although"):
            changed.prepare()
    monkeypatch.setattr(synthetic, "CODE_VERSION", "another-generator")
    assert not tracks().cache_path(0).exists()


def test_a_damaged_cache_file_is_rendered_again(tmp_path):
    tracks = SyntheticTracks(nb_tracks=1, seconds=1.0, sample_rate=8000, seed=3, cache_dir=str(tmp_path), workers=0)
    tracks.prepare()
    path = tracks.cache_path(0)
    good = np.load(path)
    path.write_bytes(path.read_bytes()[:100])  # e.g. a copy cut short
    again = SyntheticTracks(nb_tracks=1, seconds=1.0, sample_rate=8000, seed=3, cache_dir=str(tmp_path), workers=0)
    again.prepare()
    np.testing.assert_array_equal(np.stack(list(again.load(0).values())), good)
    np.testing.assert_array_equal(np.load(path), good)


def test_parallel_rendering_equals_serial_and_no_cache_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    parallel = SyntheticTracks(nb_tracks=3, seconds=1.0, sample_rate=8000, seed=21, cache_dir=str(tmp_path / "c"),
                               workers=2)
    parallel.prepare()
    serial = SyntheticTracks(nb_tracks=3, seconds=1.0, sample_rate=8000, seed=21, cache_dir=False, workers=0)
    serial.prepare()
    for i in range(3):
        for name in SOURCES:
            np.testing.assert_array_equal(parallel.load(i)[name], serial.load(i)[name])
    assert len(list((tmp_path / "c" / "synthetic").iterdir())) == 3
    assert serial.cache_path(0) is None and sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_default_cache_dir_honours_xdg_cache_home(tmp_path, monkeypatch):
    from msslab.data.synthetic import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "msslab"
    tracks = SyntheticTracks(nb_tracks=1, seconds=0.5, sample_rate=8000, seed=1)
    assert tracks.cache_path(0).parent == tmp_path / "msslab" / "synthetic"
