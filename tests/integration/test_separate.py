"""``msslab-separate`` with the smoke checkpoint (8 kHz, stereo) on files unlike its training data.

The inputs are at 11025 Hz, mono and stereo, and several chunks long (``chunk_seconds=1``),
so resampling, channel handling and the chunk cross-fade are all on the path. The model
masks with a softmax, so whatever it learned, its estimates must add up to the input.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from msslab.data.synthetic import generate_track

SOURCES = ["vocals", "drums", "bass", "other"]
RATE = 11025
SECONDS = 2.7
CHUNKING = ["separation.chunk_seconds=1.0", "separation.overlap_seconds=0.25"]


def song(seed: int, channels: int) -> np.ndarray:
    """``(frames, channels)`` music band-limited below 3 kHz (it survives the 8 kHz model rate intact)."""
    stems = generate_track(seed, seconds=SECONDS + 0.1, sample_rate=6000)
    mixture = torch.from_numpy(np.sum(list(stems.values()), axis=0))
    audio = AF.resample(mixture, 6000, RATE).numpy()[:, : int(SECONDS * RATE) + 3]  # an odd length
    audio = audio[:1] if channels == 1 else audio
    return (0.8 * audio / np.abs(audio).max()).T


def snr_db(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("songs")
    stereo, mono = folder / "stereo song.flac", folder / "mono.wav"
    sf.write(stereo, song(1, channels=2), RATE, subtype="PCM_24")
    sf.write(mono, song(2, channels=1), RATE, subtype="FLOAT")
    return {"stereo song": stereo, "mono": mono}


@pytest.fixture(scope="module")
def runs(smoke_run, inputs, cli_factory, tmp_path_factory):
    """Three concurrent ``msslab-separate`` calls: a fresh output folder, and an output folder that
    already holds a (bogus) result, without and with ``overwrite=true``."""
    base = tmp_path_factory.mktemp("separate")
    bogus = np.zeros((10, 1), dtype=np.float32)
    for name in ("refused", "overwritten"):
        (base / name / "mono").mkdir(parents=True)
        sf.write(base / name / "mono" / "vocals.wav", bogus, 8000)
    common = [f"ckpt={smoke_run.last_checkpoint}", f"input=[{inputs['stereo song']},{inputs['mono']}]", *CHUNKING]
    results = cli_factory(base).run_all({
        "fresh": ["msslab-separate", *common, f"output={base / 'fresh'}"],
        "refused": ["msslab-separate", *common, f"output={base / 'refused'}"],
        "overwritten": ["msslab-separate", *common, f"output={base / 'overwritten'}", "overwrite=true"],
    })
    return base, results


def check_outputs(folder, inputs):
    for name, path in inputs.items():
        mixture, rate = sf.read(path, dtype="float32", always_2d=True)
        estimates = []
        for source in SOURCES:
            out = folder / name / f"{source}.wav"
            info = sf.info(out)
            assert (info.samplerate, info.channels, info.frames) == (RATE, mixture.shape[1], mixture.shape[0]), out
            audio, _ = sf.read(out, dtype="float32", always_2d=True)
            assert np.isfinite(audio).all() and np.abs(audio).max() > 1e-3, out
            estimates.append(audio)
        # Softmax masks partition the mixture: across chunk seams, resampling and channels they add back up.
        assert snr_db(np.sum(estimates, axis=0), mixture) > 30, name
        # Per channel too (a channel mix-up would fail here, not above).
        for channel in range(mixture.shape[1]):
            assert snr_db(np.sum(estimates, axis=0)[:, channel], mixture[:, channel]) > 30, (name, channel)
    assert sorted(p.name for p in folder.iterdir()) == sorted(inputs)


def test_sources_have_the_input_length_rate_and_channels(runs, inputs):
    base, results = runs
    result = results["fresh"]
    assert result.returncode == 0, result.tail()
    check_outputs(base / "fresh", inputs)
    assert str(base / "fresh" / "mono" / "vocals.wav") in result.stdout  # says where it wrote


def test_existing_outputs_are_not_overwritten(runs):
    base, results = runs
    result = results["refused"]
    assert result.returncode != 0
    assert "exist" in result.output and "overwrite=true" in result.output, result.tail()
    assert "Traceback" not in result.output  # a user error: one line, no stack trace
    assert sf.info(base / "refused" / "mono" / "vocals.wav").frames == 10  # untouched
    assert not (base / "refused" / "stereo song").exists()  # nothing written at all


def test_overwrite_true_replaces_them(runs, inputs):
    base, results = runs
    result = results["overwritten"]
    assert result.returncode == 0, result.tail()
    check_outputs(base / "overwritten", inputs)


def test_blockwise_separation_equals_separating_the_whole_file(smoke_run, tmp_path):
    """Reading, resampling and writing in blocks (11025 Hz file, 8 kHz model) matches doing each step on
    the whole file at once: the block seams are exact to float rounding."""
    from msslab.data.audio import resample
    from msslab.separation.inference import SeparationSettings, separate
    from msslab.separation.files import check_input, separate_file
    from msslab.system import load_checkpoint

    system = load_checkpoint(smoke_run.last_checkpoint)
    path = tmp_path / "song.wav"
    sf.write(path, song(3, channels=2), RATE, subtype="FLOAT")
    settings = SeparationSettings(chunk_seconds=1.0, overlap_seconds=0.25, batch_size=2)
    outputs = {t: tmp_path / "out" / f"{t}.wav" for t in system.targets}
    separate_file(system, check_input(path), outputs, settings, block_seconds=0.37)
    mixture = sf.read(path, dtype="float32", always_2d=True)[0].T
    whole = separate(system, torch.from_numpy(resample(mixture, RATE, 8000)), settings).numpy()
    expected = resample(whole, 8000, RATE)[..., : mixture.shape[-1]]
    for target, estimate in zip(system.targets, expected):
        written = sf.read(outputs[target], dtype="float32", always_2d=True)[0].T
        assert written.shape == estimate.shape
        assert np.abs(written - estimate).max() < 1e-5 * np.abs(estimate).max() + 1e-7, target
    assert not list((tmp_path / "out").glob("*.partial"))


def test_peak_memory_is_flat_in_the_file_length(smoke_run, tmp_path):
    """Peak RSS of separating 200 s of 44.1 kHz stereo stays within 1.3x that of 20 s (reading the
    whole file, as before, grew it by about 0.22 GB a minute)."""
    import subprocess
    import sys

    from conftest import cli_command

    measure = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
    rng = np.random.default_rng(0)
    started = {}
    for seconds in (20, 200):
        path = tmp_path / f"song{seconds}.wav"
        with sf.SoundFile(path, "w", samplerate=44100, channels=2, subtype="PCM_16") as out:
            for _ in range(seconds // 20):
                out.write(0.2 * rng.standard_normal((20 * 44100, 2)).astype(np.float32))
        command = cli_command("msslab-separate", f"ckpt={smoke_run.last_checkpoint}", f"input={path}",
                              f"output={tmp_path / str(seconds)}", "device=cpu")
        started[seconds] = subprocess.Popen([sys.executable, "-c", measure, *command], cwd=tmp_path,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {}
    for seconds, process in started.items():
        stdout, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
        peak[seconds] = int(stdout.strip().splitlines()[-1])
        assert sf.info(tmp_path / str(seconds) / f"song{seconds}" / "vocals.wav").frames == seconds * 44100
    assert peak[200] < 1.3 * peak[20], peak
