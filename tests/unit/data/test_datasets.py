"""Real-data layouts (data=musdb18hq, musdb18, stem_folder) on small fixtures made here.

Every fixture is written by the test into ``tmp_path`` (a few seconds of audio); the
MUSDB18 ``.stem.mp4`` tests use the one real excerpt that ``stempeg`` ships.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from msslab import CONFIG_DIR
from msslab.data import DataError, MSSDataModule
from msslab.data import audio as audio_module
from msslab.data.filetracks import official_validation_tracks
from msslab.data.folders import StemFolderTracks
from msslab.data.synthetic import generate_track

MUSDB_SOURCES = ["vocals", "drums", "bass", "other"]
OFFICIAL = official_validation_tracks()
CONF_DIR = CONFIG_DIR
HAVE_FFMPEG = shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None
needs_ffmpeg = pytest.mark.skipif(not HAVE_FFMPEG, reason="ffmpeg/ffprobe not on PATH (the project's setup installs it)")


# ------------------------------------------------------------------------------- fixture writers
def tone(seconds: float, sr: int, freq: float, channels: int = 2, seed: int = 0) -> np.ndarray:
    """``(frames, channels)`` float32: a sine plus a little noise (never silent)."""
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    mono = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(n)
    out = np.stack([mono * (1 - 0.2 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def write_track(folder: Path, seconds: float = 3.0, sr: int = 22050, sources=MUSDB_SOURCES, ext: str = "wav",
                mixture: str | None = "mixture", channels: int = 2, subtype: str | None = "PCM_16", seed: int = 0) -> Path:
    """One track folder: ``<source>.<ext>`` per source (+ the mixture, their sum)."""
    folder.mkdir(parents=True, exist_ok=True)
    stems = {s: tone(seconds, sr, 110.0 * (i + 1), channels, seed + i) for i, s in enumerate(sources)}
    for name, audio in stems.items():
        sf.write(folder / f"{name}.{ext}", audio, sr, subtype=subtype)
    if mixture:
        sf.write(folder / f"{mixture}.{ext}", np.sum(list(stems.values()), axis=0) * 0.5, sr, subtype=subtype)
    return folder


def hq_root(root: Path, train=("A - One", "B - Two", "C - Three", "D - Four", "E - Five"), test=("T - One", "T - Two"),
            **kwargs) -> Path:
    for split, names in (("train", train), ("test", test)):
        for i, name in enumerate(names):
            write_track(root / split / name, seed=10 * i, **kwargs)
    return root


def tracks(root, split, sample_rate=16000, **kwargs) -> StemFolderTracks:
    kwargs.setdefault("sources", MUSDB_SOURCES)
    t = StemFolderTracks(str(root), split, sample_rate, **kwargs)
    t.prepare()
    return t


def names(t) -> list[str]:
    return [t.name(i) for i in range(len(t))]


# ------------------------------------------------------------------------------------------ splits
def test_musdb18hq_holds_out_the_official_validation_tracks(tmp_path):
    root = hq_root(tmp_path, train=("A - One", OFFICIAL[0], "B - Two", OFFICIAL[5], "C - Three"))
    train, valid, test = (tracks(root, s) for s in ("train", "valid", "test"))
    assert names(train) == ["A - One", "B - Two", "C - Three"]
    assert sorted(names(valid)) == sorted([OFFICIAL[0], OFFICIAL[5]])
    assert names(test) == ["T - One", "T - Two"]
    assert train.sources == MUSDB_SOURCES and train.nb_channels == 2


def test_not_musdb_holds_out_a_fraction_with_a_warning(tmp_path, caplog):
    root = hq_root(tmp_path, train=[f"Song {i:02d}" for i in range(10)])
    with caplog.at_level(logging.WARNING):
        valid = tracks(root, "valid", valid_fraction=0.2)
    train = tracks(root, "train", valid_fraction=0.2)
    assert len(valid) == 2 and len(train) == 8
    assert not set(names(valid)) & set(names(train))
    assert "not MUSDB18" in caplog.text and "valid_fraction" in caplog.text


def test_valid_tracks_list_is_checked(tmp_path):
    root = hq_root(tmp_path)
    assert names(tracks(root, "valid", valid_tracks_list=["B - Two"])) == ["B - Two"]
    assert "B - Two" not in names(tracks(root, "train", valid_tracks_list=["B - Two"]))
    with pytest.raises(DataError, match=r"valid_tracks_list.*'B - Tow'.*not found"):
        tracks(root, "valid", valid_tracks_list=["B - Tow"])


def test_nb_tracks_and_seconds_take_an_excerpt(tmp_path):
    root = hq_root(tmp_path, seconds=4.0, sr=16000)
    t = tracks(root, "test", nb_tracks=1, seconds=2.0)
    assert len(t) == 1 and t.num_frames(0) == 32000
    whole = tracks(root, "test")
    np.testing.assert_allclose(t.load(0)["vocals"], whole.load(0, 16000, 32000)["vocals"])  # the middle 2 s


# ------------------------------------------------------------------------- reading and resampling
def test_chunks_are_resampled_slices_of_the_whole_track(tmp_path):
    root = hq_root(tmp_path, test=("T - One",), seconds=3.0, sr=22050)
    t = tracks(root, "test", sample_rate=16000)
    assert t.num_frames(0) == 48000
    whole = t.load(0)
    raw, _ = sf.read(tmp_path / "test" / "T - One" / "drums.wav", dtype="float32", always_2d=True)
    reference = torchaudio.functional.resample(torch.from_numpy(raw.T.copy()), 22050, 16000).numpy()
    np.testing.assert_allclose(whole["drums"], reference, atol=1e-5)
    for offset in (0, 1, 7919, 24000, 48000 - 8000):
        chunk = t.load(0, offset, 8000)
        assert set(chunk) == set(MUSDB_SOURCES)
        for source, audio in chunk.items():
            assert audio.shape == (2, 8000) and audio.dtype == np.float32
            np.testing.assert_allclose(audio, whole[source][:, offset : offset + 8000], atol=1e-5)
    with pytest.raises(DataError, match="outside"):
        t.load(0, 47000, 8000)


def test_reading_a_chunk_reads_only_that_span(tmp_path, monkeypatch):
    root = hq_root(tmp_path, test=("T - One",), seconds=6.0, sr=44100)
    t = tracks(root, "test", sample_rate=16000)
    calls = []
    real_read = audio_module.sf.read

    def spy(path, *args, **kwargs):
        calls.append((Path(path).name, kwargs.get("start"), kwargs.get("stop")))
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(audio_module.sf, "read", spy)
    t.load(0, 40000, 16000)  # 1 s from 2.5 s
    assert sorted(c[0] for c in calls) == sorted(f"{s}.wav" for s in MUSDB_SOURCES)  # the mixture is not read
    for _, start, stop in calls:
        assert start is not None and stop is not None
        assert 2.5 * 44100 - 1000 < start <= 2.5 * 44100 and 3.5 * 44100 <= stop < 3.5 * 44100 + 1000


def test_mono_stems_become_stereo_and_rates_differ_between_tracks(tmp_path):
    write_track(tmp_path / "train" / "mono", channels=1, sr=8000, seconds=3.0)
    write_track(tmp_path / "train" / "stereo", sr=22050, seconds=3.0)
    write_track(tmp_path / "test" / "t", sr=16000, seconds=3.0)
    t = tracks(tmp_path, "train", valid_tracks_list=["stereo"])
    audio = t.load(0, 0, 16000)
    assert names(t) == ["mono"] and audio["vocals"].shape == (2, 16000)
    np.testing.assert_array_equal(audio["vocals"][0], audio["vocals"][1])
    assert t.num_frames(0) == 48000


# ------------------------------------------------------------------------------------ stem_folder
def test_stem_folder_discovers_sources_and_needs_no_mixture(tmp_path):
    for split, name in (("train", "a"), ("train", "b"), ("test", "c")):
        write_track(tmp_path / split / name, sources=["voice", "guitar", "keys"], ext="flac", mixture=None, sr=16000)
    t = StemFolderTracks(str(tmp_path), "train", 16000)  # sources: None -> discovered
    assert t.sources == ["guitar", "keys", "voice"]
    t.prepare()
    assert len(t) == 1 and t.load(0, 0, 100)["voice"].shape == (2, 100)
    explicit = tracks(tmp_path, "test", sources=["voice", "keys"])
    assert explicit.sources == ["voice", "keys"] and set(explicit.load(0)) == {"voice", "keys"}


def test_stem_folder_excludes_the_mixture_from_discovered_sources(tmp_path):
    for split in ("train", "test"):
        write_track(tmp_path / split / "x", sources=["lead", "rest"], mixture="mix")
    assert StemFolderTracks(str(tmp_path), "test", 16000, mixture="mix").sources == ["lead", "rest"]
    assert StemFolderTracks(str(tmp_path), "test", 16000, mixture=None).sources == ["lead", "mix", "rest"]


# ------------------------------------------------------------------- the DataModule on real layouts
def test_datamodule_groups_targets_and_draws_chunks(tmp_path):
    root = hq_root(tmp_path, train=("A", "B", OFFICIAL[1]), test=("T",), seconds=3.0, sr=22050)
    sets = {f"{s}_tracks": StemFolderTracks(str(root), s, 16000, MUSDB_SOURCES, min_seconds=2.0)
            for s in ("train", "valid", "test")}
    dm = MSSDataModule(**sets, sample_rate=16000, targets=["vocals", "accompaniment"], chunk_seconds=2.0,
                       samples_per_track=3, valid_chunk_seconds=2.0, batch_size=2, num_workers=0)
    dm.setup("fit")
    assert dm.groups == {"vocals": ["vocals"], "accompaniment": ["drums", "bass", "other"]}
    assert len(dm.train_set) == 6
    mixture, targets = dm.train_set[0]
    assert mixture.shape == (2, 32000) and targets.shape == (2, 2, 32000)
    torch.testing.assert_close(targets.sum(0), mixture, atol=1e-5, rtol=0)
    name, mixture, targets = dm.test_track(0)
    assert name == "T" and mixture.shape == (2, 48000) and targets.shape == (2, 2, 48000)
    mixture, targets = dm.valid_set[0]
    assert mixture.shape == (2, 32000)


def test_tracks_too_short_for_time_stretch_are_refused_before_training(tmp_path):
    # 2.1 s tracks hold one 2 s chunk, but time_stretch up to rate 1.1 loads ceil(2 s x 1.1) = 2.2 s.
    root = hq_root(tmp_path, train=("A", "B", OFFICIAL[1]), test=("T",), seconds=2.1, sr=16000)
    sets = {f"{s}_tracks": StemFolderTracks(str(root), s, 16000, MUSDB_SOURCES, min_seconds=2.0)
            for s in ("train", "valid", "test")}
    stretch = {"time_stretch": {"_target_": "msslab.augmentation.TimeStretch", "p": 1.0, "rate": [0.9, 1.1]}}
    dm = MSSDataModule(**sets, sample_rate=16000, targets=None, chunk_seconds=2.0, samples_per_track=1,
                       batch_size=1, num_workers=0, augmentation=stretch)
    with pytest.raises(DataError, match=r"'A'.*33600 samples\) .*35200 samples to load.*time_stretch"):
        dm.setup("fit")
    unstretched = MSSDataModule(**sets, sample_rate=16000, targets=None, chunk_seconds=2.0, samples_per_track=1,
                                batch_size=1, num_workers=0)
    unstretched.setup("fit")
    assert unstretched.train_set[0][0].shape == (2, 32000)
    assert "silence-padded" not in (CONF_DIR / "augmentation" / "time_stretch.yaml").read_text()  # it is not


def test_reading_past_the_end_names_the_file(tmp_path):
    path = str(tmp_path / "song" / "vocals.wav")
    for rate in (16000, 22050):  # one second, read as is and resampled to 16 kHz
        spans = []

        def read(start, stop):
            spans.append((start, stop))
            return {"vocals": np.zeros((2, max(0, min(stop, rate) - start)), np.float32)}

        for offset, frames in ((20000, 100), (15900, 200), (-1, 10)):
            with pytest.raises(DataError, match="song/vocals.wav.*outside its 16000 samples"):
                audio_module.read_resampled(read, rate, rate, 16000, offset, frames, path)
        assert not spans  # refused before reading


def test_silent_target_chunks_are_redrawn(tmp_path):
    folder = write_track(tmp_path / "train" / "half silent", seconds=4.0, sr=16000)
    vocals, sr = sf.read(folder / "vocals.wav")
    vocals[: len(vocals) // 2] = 0.0  # no vocals in the first 2 s
    sf.write(folder / "vocals.wav", vocals, sr)
    write_track(tmp_path / "train" / "other", seconds=4.0, sr=16000)
    write_track(tmp_path / "test" / "t", seconds=4.0, sr=16000)
    sets = {f"{s}_tracks": StemFolderTracks(str(tmp_path), s, 16000, MUSDB_SOURCES, valid_tracks_list=["other"])
            for s in ("train", "valid", "test")}
    dm = MSSDataModule(**sets, sample_rate=16000, targets=["vocals"], chunk_seconds=0.5, samples_per_track=20,
                       num_workers=0, silent_target_db=-60.0, seed=3)
    dm.setup("fit")
    energies = [float((dm.train_set[i][1][0] ** 2).mean()) for i in range(20)]
    assert min(energies) > 1e-6


# ------------------------------------------------------------------------------------- bad input
def corrupt(root: Path, case: str) -> tuple[str, str]:
    """Break track 'B - Two' of train/ in one way; return (file or track named, problem text)."""
    track = root / "train" / "B - Two"
    if case == "missing stem":
        (track / "bass.wav").unlink()
        return str(track / "bass"), "missing stem file"
    if case == "unreadable":
        (track / "drums.wav").write_bytes(b"this is not audio" * 100)
        return str(track / "drums.wav"), "unreadable audio file"
    if case == "truncated wav":
        data = (track / "other.wav").read_bytes()
        (track / "other.wav").write_bytes(data[: len(data) // 2])
        return str(track / "other.wav"), "truncated audio file"
    if case == "truncated flac":
        (track / "other.wav").unlink()
        sf.write(track / "other.flac", tone(3.0, 22050, 300.0, seed=5), 22050)
        data = (track / "other.flac").read_bytes()
        (track / "other.flac").write_bytes(data[: len(data) // 2])
        return str(track / "other.flac"), "truncated"
    if case == "lengths differ":
        sf.write(track / "vocals.wav", tone(2.5, 22050, 220.0), 22050, subtype="PCM_16")
        return str(track), "stems differ in length"
    if case == "rates differ":
        sf.write(track / "vocals.wav", tone(3.0, 16000, 220.0), 16000, subtype="PCM_16")
        return str(track), "different sample rates"
    if case in ("nan", "inf"):
        audio = tone(3.0, 22050, 220.0)
        audio[30000, 1] = np.nan if case == "nan" else np.inf
        sf.write(track / "vocals.wav", audio, 22050, subtype="FLOAT")
        return str(track / "vocals.wav"), "NaN or infinite samples (first at 1.36 s"
    if case == "too short":
        for s in MUSDB_SOURCES + ["mixture"]:
            sf.write(track / f"{s}.wav", tone(1.0, 22050, 220.0), 22050, subtype="PCM_16")
        return str(track), "shorter than one training chunk"
    if case == "six channels":
        sf.write(track / "bass.wav", np.zeros((66150, 6), np.float32) + 0.1, 22050, subtype="PCM_16")
        return str(track / "bass.wav"), "6 channels"
    raise ValueError(case)


BAD_CASES = ["missing stem", "unreadable", "truncated wav", "truncated flac", "lengths differ", "rates differ",
             "nan", "inf", "too short", "six channels"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_track_is_an_error_naming_file_and_problem(tmp_path, case):
    root = hq_root(tmp_path, train=("A - One", "B - Two", "C - Three"), test=("T",), seconds=3.0)
    where, problem = corrupt(root, case)
    kwargs = {"extensions": ["wav", "flac"], "valid_tracks_list": ["A - One"], "min_seconds": 2.0}
    with pytest.raises(DataError) as err:
        tracks(root, "train", **kwargs)
    message = str(err.value)
    assert where in message and problem in message and "on_bad_track=skip" in message
    assert "C - Three" not in message


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_track_is_skipped_with_a_warning_and_a_summary(tmp_path, case, caplog):
    root = hq_root(tmp_path, train=("A - One", "B - Two", "C - Three"), test=("T",), seconds=3.0)
    where, problem = corrupt(root, case)
    kwargs = {"extensions": ["wav", "flac"], "valid_tracks_list": ["A - One"], "min_seconds": 2.0}
    with caplog.at_level(logging.WARNING):
        t = tracks(root, "train", on_bad_track="skip", **kwargs)
    assert names(t) == ["C - Three"] and set(t.skipped) == {"B - Two"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(where in w and problem in w for w in warnings)
    assert any("skipped 1 of 2 tracks" in w and "B - Two" in w for w in warnings)
    assert t.load(0, 0, 1000)["vocals"].shape == (2, 1000)


def test_trim_to_shortest_cuts_stems_of_different_lengths(tmp_path):
    root = hq_root(tmp_path, train=("A - One", "B - Two"), test=("T",), seconds=3.0, sr=16000)
    corrupt(root, "lengths differ")  # vocals of B - Two: 2.5 s at 22050 Hz ...
    sf.write(root / "train" / "B - Two" / "vocals.wav", tone(2.5, 16000, 220.0), 16000)  # ... at the track's rate
    t = tracks(root, "train", valid_tracks_list=["A - One"], trim_to_shortest=True)
    assert t.num_frames(0) == 40000 and t.load(0)["drums"].shape == (2, 40000)


def test_all_tracks_bad_is_an_error_even_when_skipping(tmp_path):
    root = hq_root(tmp_path, train=("A - One", "B - Two"), test=("T",))
    (root / "test" / "T" / "vocals.wav").unlink()
    with pytest.raises(DataError, match="no usable tracks"):
        tracks(root, "test", on_bad_track="skip")


@pytest.mark.parametrize("case", ["missing root", "root is a file", "missing split", "no tracks"])
def test_missing_root_split_or_tracks(tmp_path, case):
    root = tmp_path / "musdb18hq"
    if case == "root is a file":
        root.write_text("")
    elif case == "missing split":
        (root / "train").mkdir(parents=True)
    elif case == "no tracks":
        (root / "train").mkdir(parents=True)
        (root / "train" / "README.txt").write_text("tracks go in sub-folders")
    expected = {"missing root": f"{root} does not exist", "root is a file": f"{root} is not a folder",
                "missing split": f"no 'test' folder in {root}", "no tracks": f"no tracks found in {root / 'train'}"}[case]
    with pytest.raises(DataError, match="data") as err:
        tracks(root, "test" if case == "missing split" else "train", extensions=["wav"])
    assert expected in str(err.value) and "ROOT/{train,test}/<track>/<source>.wav" in str(err.value)


def test_bad_settings_name_the_key(tmp_path):
    hq_root(tmp_path)
    with pytest.raises(DataError, match="on_bad_track"):
        StemFolderTracks(str(tmp_path), "train", 16000, MUSDB_SOURCES, on_bad_track="ignore")
    with pytest.raises(DataError, match="valid_fraction"):
        StemFolderTracks(str(tmp_path), "train", 16000, MUSDB_SOURCES, valid_fraction=1.0)
    with pytest.raises(DataError, match="has 1 track.*at least 2"):
        tracks(hq_root(tmp_path / "one", train=("only",)), "valid", valid_tracks_list=[])


# ----------------------------------------------------------------------------- MUSDB18 .stem.mp4
@pytest.fixture(scope="module")
def musdb_root(tmp_path_factory):
    """A tiny MUSDB18: the stempeg excerpt as two train tracks (one an official validation track) and a test track."""
    import stempeg

    example = stempeg.example_stem_path()
    root = tmp_path_factory.mktemp("musdb18")
    for split, name in (("train", "Some Artist - Some Song"), ("train", OFFICIAL[0]), ("test", "The Easton Ellises - Falcon 69")):
        (root / split).mkdir(exist_ok=True)
        shutil.copy(example, root / split / f"{name}.stem.mp4")
    return root


@needs_ffmpeg
def test_musdb18_splits_sources_and_exact_decoding(musdb_root):
    import stempeg

    from msslab.data.musdb import MusdbTracks

    train, valid, test = (MusdbTracks(str(musdb_root), s, 44100) for s in ("train", "valid", "test"))
    for t in (train, valid, test):
        t.prepare()
    assert names(train) == ["Some Artist - Some Song"] and names(valid) == [OFFICIAL[0]]
    assert test.sources == MUSDB_SOURCES and test.num_frames(0) == 268288
    stems, rate = stempeg.read_stems(stempeg.example_stem_path(), dtype=np.float32)  # (mixture, drums, bass, other, vocals)
    whole = test.load(0)
    for source, stream in (("drums", 1), ("bass", 2), ("other", 3), ("vocals", 4)):
        np.testing.assert_array_equal(whole[source], stems[stream].T)
    for offset in (0, 12345, 150000, 268288 - 44100):  # seeking chunks decode the very same samples
        chunk = test.load(0, offset, 44100)
        np.testing.assert_array_equal(chunk["vocals"], stems[4].T[:, offset : offset + 44100])


@needs_ffmpeg
def test_musdb18_resampled_chunks(musdb_root):
    from msslab.data.musdb import MusdbTracks

    t = MusdbTracks(str(musdb_root), "test", 16000, min_seconds=3.0)
    whole = t.load(0)
    assert t.num_frames(0) == 97339 and whole["drums"].shape == (2, 97339)
    chunk = t.load(0, 30000, 48000)
    np.testing.assert_allclose(chunk["bass"], whole["bass"][:, 30000:78000], atol=1e-5)


@needs_ffmpeg
@pytest.mark.parametrize("case", ["unreadable", "truncated", "one stream", "no ffmpeg"])
def test_musdb18_bad_input(musdb_root, tmp_path, case, monkeypatch):
    from msslab.data.musdb import MusdbTracks

    root = tmp_path / "musdb18"
    shutil.copytree(musdb_root, root)
    bad = root / "test" / "The Easton Ellises - Falcon 69.stem.mp4"
    if case == "unreadable":
        bad.write_bytes(bad.read_bytes()[:3000])
        problem = "unreadable stem file (ffprobe:"
    elif case == "truncated":
        bad.write_bytes(bad.read_bytes()[:700_000])
        problem = "truncated or corrupt stem file"
    elif case == "one stream":
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(musdb_root / "test" / bad.name), "-map", "0:a:1",
                        "-t", "1", "-c", "copy", "-f", "mp4", str(bad)], check=True)
        problem = "has 1 audio stream(s); a MUSDB18 .stem.mp4 has 5"
    else:
        monkeypatch.setattr(shutil, "which", lambda tool: None)
        problem = "ffmpeg and ffprobe are not on PATH"
    with pytest.raises(DataError) as err:
        MusdbTracks(str(root), "test", 44100).prepare()
    assert problem in str(err.value)
    if case != "no ffmpeg":
        assert str(bad) in str(err.value)


# --------------------------------------------------------------------------------- whole pipeline
def synthetic_hq_root(root: Path, sr: int = 22050) -> Path:
    """MUSDB18-HQ layout with generated music (so museval sees real-ish, never silent stems)."""
    layout = {"train": ["Artist A - Song", "Artist B - Song", OFFICIAL[2]], "test": ["Artist C - Song"]}
    for split, track_names in layout.items():
        for i, name in enumerate(track_names):
            folder = root / split / name
            folder.mkdir(parents=True)
            stems = generate_track(seed=100 * i + len(split), seconds=4.0, sample_rate=sr)
            for source, audio in stems.items():
                sf.write(folder / f"{source}.wav", audio.T, sr, subtype="PCM_16")
            sf.write(folder / "mixture.wav", np.sum(list(stems.values()), axis=0).T, sr, subtype="PCM_16")
    return root


@pytest.mark.slow
@pytest.mark.integration
def test_smoke_experiment_on_musdb18hq_writes_results(tmp_path):
    """``data=musdb18hq`` end to end: the data node's dataset keys (root, on_bad_track, ...) reach
    the track sets through MSSDataModule; if they stop doing so, this fails (it is never skipped)."""
    root = synthetic_hq_root(tmp_path / "musdb18hq")
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    cmd = [sys.executable, "-m", "msslab.cli.train", "experiment=smoke", "data=musdb18hq", f"data.root={root}",
           f"hydra.run.dir={run_dir}"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["choices"]["data"] == "musdb18hq"
    assert list(results["tracks"]) == ["Artist C - Song"]
    for source in MUSDB_SOURCES:
        assert np.isfinite(results["sources"][source]["SDR"])
