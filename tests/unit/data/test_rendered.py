"""data=rendered: a tiny FluidSynth render (3 + 1 songs of 4 s at 16 kHz) through the real config.

Checks the cache layout, determinism from the seed, that the stems sum to the mixture,
that every stem sounds like its family, that the DataModule reads it, and the errors
for a missing FluidSynth or soundfont. scripts/setup.sh installs FluidSynth and the
soundfont, so CI runs all of it.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy import signal

from msslab import CONFIG_DIR
from msslab.data import DataError
from msslab.data.compose import DRUM_CHANNEL, SOURCES, Song
from msslab.data.fluidsynth import RenderSpec, render_dataset, render_song
from msslab.system import build_system

SOUNDFONT = "/usr/share/sounds/sf2/FluidR3_GM.sf2"
SR = 16000
SECONDS = 4.0
needs_fluidsynth = pytest.mark.skipif(shutil.which("fluidsynth") is None or not Path(SOUNDFONT).is_file(),
                                      reason="fluidsynth or the GM soundfont is not installed (bash scripts/setup.sh installs both)")
OVERRIDES = ["data=rendered", f"data.sample_rate={SR}", "data.nb_train=3", "data.nb_test=1", f"data.seconds={SECONDS}",
             "data.chunk_seconds=1.0", "data.valid_chunk_seconds=2.0", "data.batch_size=2", "data.num_workers=0",
             "data.render_workers=2", "data.valid_fraction=0.3"]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """``(datamodule, cache root)`` of the tiny render, composed from conf/ as a user's run is."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    if shutil.which("fluidsynth") is None or not Path(SOUNDFONT).is_file():
        pytest.skip("fluidsynth or the GM soundfont is not installed (bash scripts/setup.sh installs both)")
    base = tmp_path_factory.mktemp("rendered")
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[*OVERRIDES, f"data.cache_dir={base / 'cache'}", f"paths.output_dir={base}"])
    datamodule = instantiate(cfg.data, augmentation=None)
    datamodule.setup("fit")
    return datamodule, Path(datamodule.train_tracks.root), cfg


def read(folder: Path, name: str) -> np.ndarray:
    audio, rate = sf.read(str(folder / f"{name}.wav"), dtype="float64", always_2d=True)
    assert rate == SR
    return audio.T


def test_song_is_deterministic_and_has_every_part():
    a, b, c = Song(7, 20.0), Song(7, 20.0), Song(8, 20.0)
    assert [(n.beat, n.pitch) for n in a.parts["vocals"][0].notes] == [(n.beat, n.pitch) for n in b.parts["vocals"][0].notes]
    assert (a.bpm, a.tonic) != (c.bpm, c.tonic)
    assert a.parts["drums"][0].channel == DRUM_CHANNEL
    assert 2 <= len(a.parts["other"]) <= 3 and len({p.channel for p in a.parts["other"]}) == len(a.parts["other"])
    beats = 20.0 * a.bpm / 60
    assert sum(s.bars for s in a.sections) * 4 >= beats  # the form covers the song
    for stem, parts in a.parts.items():
        assert all(part.notes for part in parts), stem
    # The bass plays low, the lead sings above it.
    assert max(n.pitch for n in a.parts["bass"][0].notes) < min(n.pitch for n in a.parts["vocals"][0].notes) + 12


@needs_fluidsynth
def test_layout_and_stems_sum_to_the_mixture(rendered):
    datamodule, root, _ = rendered
    assert sorted(p.name for p in (root / "train").iterdir()) == ["song-0000", "song-0001", "song-0002"]
    assert sorted(p.name for p in (root / "test").iterdir()) == ["song-0000"]
    record = json.loads((root / "render.json").read_text())
    assert record["songs"] == 4 and record["key"]["seconds"] == SECONDS
    for track in [*(root / "train").iterdir(), *(root / "test").iterdir()]:
        assert sorted(p.name for p in track.iterdir()) == sorted(f"{n}.wav" for n in [*SOURCES, "mixture"])
        stems = [read(track, s) for s in SOURCES]
        mixture = read(track, "mixture")
        assert mixture.shape == (2, int(SECONDS * SR))
        np.testing.assert_allclose(sum(stems), mixture, atol=1e-6)
        assert np.abs(mixture).max() < 1.0


def band_share(x: np.ndarray, low: float, high: float) -> float:
    freqs, power = signal.welch(x.mean(0), SR, nperseg=2048)
    return float(power[(freqs >= low) & (freqs < high)].sum() / power.sum())


def onset_strength(x: np.ndarray) -> float:
    """Mean positive spectral change between frames relative to the mean magnitude (hits)."""
    _, _, z = signal.stft(x.mean(0), SR, nperseg=512, noverlap=384)
    magnitude = np.abs(z)
    return float(np.maximum(np.diff(magnitude, axis=1), 0).sum(0).mean() / magnitude.sum(0).mean())


@needs_fluidsynth
def test_every_stem_sounds_like_its_family(rendered):
    _, root, _ = rendered
    for track in (root / "train").iterdir():
        stems = {s: read(track, s) for s in SOURCES}
        for name, audio in stems.items():
            frames = audio.mean(0)[: int(SECONDS * SR) // 4000 * 4000].reshape(-1, 4000)  # 0.25 s frames
            active = np.mean(10 * np.log10((frames**2).mean(1) + 1e-20) > -50)
            assert 10 * np.log10(np.mean(audio**2)) > -35, (track.name, name)
            assert active > 0.5, (track.name, name, active)  # sounds over most of the song
        assert band_share(stems["bass"], 0, 300) > max(band_share(stems[s], 0, 300) for s in ("vocals", "other"))
        assert onset_strength(stems["drums"]) > max(onset_strength(stems[s]) for s in ("vocals", "bass", "other"))
        # Stereo placement: the stems are not all panned alike.
        balance = [np.log(np.mean(a[0] ** 2) / np.mean(a[1] ** 2)) for a in stems.values()]
        assert np.ptp(balance) > 0.05


@needs_fluidsynth
def test_render_is_deterministic_from_the_seed(rendered, tmp_path):
    _, root, cfg = rendered
    spec = rendered[0].train_tracks.spec
    seed = spec.songs()[1][2]
    render_song(spec, seed, tmp_path / "again")
    for s in [*SOURCES, "mixture"]:
        np.testing.assert_array_equal(read(tmp_path / "again", s), read(root / "train" / "song-0001", s), err_msg=s)
    assert not np.array_equal(read(root / "train" / "song-0000", "vocals"), read(root / "train" / "song-0001", "vocals"))


@needs_fluidsynth
def test_loads_through_the_datamodule_and_reuses_the_cache(rendered):
    from hydra.utils import instantiate

    datamodule, root, cfg = rendered
    assert (len(datamodule.train_tracks), len(datamodule.valid_tracks), len(datamodule.test_tracks)) == (2, 1, 1)
    mixture, targets = next(iter(datamodule.train_dataloader()))
    assert mixture.shape == (2, 2, SR) and targets.shape == (2, 4, 2, SR)
    np.testing.assert_allclose(targets.sum(1).numpy(), mixture.numpy(), atol=1e-5)
    name, mixture, targets = datamodule.test_track(0)
    assert name == "song-0000" and mixture.shape == (2, int(SECONDS * SR))
    stamp = (root / "render.json").stat().st_mtime_ns
    again = instantiate(cfg.data, augmentation=None)
    again.setup("fit")
    assert Path(again.train_tracks.root) == root and (root / "render.json").stat().st_mtime_ns == stamp
    changed = cfg.data.copy()
    changed.song_seed = 99  # another seed is another set of songs, in its own cache folder
    other = instantiate(changed, augmentation=None).train_tracks.spec
    assert other.folder_name() != datamodule.train_tracks.spec.folder_name()


def test_missing_fluidsynth_or_soundfont_is_named(tmp_path):
    spec = dict(nb_train=2, nb_test=1, seconds=1.0, sample_rate=SR, seed=0, gain=0.4, timing_ms=0.0)
    with pytest.raises(DataError, match=r"data\.fluidsynth: .*no-such-fluidsynth"):
        render_dataset(RenderSpec(**spec, soundfont=SOUNDFONT, fluidsynth="no-such-fluidsynth"), tmp_path / "a")
    if shutil.which("fluidsynth") is None:
        pytest.skip("fluidsynth is not installed: the soundfont check comes after it")
    with pytest.raises(DataError, match=r"data\.soundfont: .*missing\.sf2"):
        render_dataset(RenderSpec(**spec, soundfont=str(tmp_path / "missing.sf2")), tmp_path / "b")
    assert not any((tmp_path / "b").glob("*/song-*"))


def test_fullband_recipe_composes_on_rendered_and_musdb18hq(compose_train, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_train(["experiment=fullband"], tmp_path)
    assert cfg.data.train_tracks._target_ == "msslab.data.rendered.RenderedTracks"
    assert (cfg.data.sample_rate, cfg.stft.n_fft, cfg.stft.hop_length, cfg.stft.max_freq) == (44100, 4096, 2048, 16000)
    assert {"channel_swap", "gain"} <= set(cfg.augmentation)
    model = build_system(cfg, ["vocals", "drums", "bass", "other"], nb_channels=2, residual=False).model
    assert (model.bands.fine_bins, model.bands.nb_values) == (372, 582)  # 10.8 Hz bins to 4 kHz, then 86 Hz bands
    # the step checkpoint goes by time (Lightning refuses a step and a time interval together)
    step_checkpoint = instantiate(cfg.callbacks.step_checkpoint)
    assert (step_checkpoint._train_time_interval, step_checkpoint._every_n_train_steps) == (timedelta(minutes=1), 0)
    cfg = compose_train(["experiment=fullband", "data=musdb18hq", "data.root=/data"], tmp_path)
    assert cfg.data.train_tracks._target_ == "msslab.data.folders.StemFolderTracks" and cfg.data.sample_rate == 44100
