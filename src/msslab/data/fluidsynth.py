"""The FluidSynth renderer of ``data=rendered``: composed songs to stem WAV files, cached.

:func:`render_song` composes a song (:mod:`msslab.data.compose`), writes each stem as a
MIDI file and renders it on its own with the ``fluidsynth`` program and a General MIDI
soundfont, so the stems sum exactly to the mixture; stem levels are drawn per song.
:func:`render_dataset` renders every song of a :class:`RenderSpec` once, in parallel
processes, into a cache in the MUSDB18-HQ layout (``<root>/{train,test}/<song>/<stem>.wav``
plus ``mixture.wav``) whose folder name is a hash of everything that determines it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm.auto import tqdm

from .compose import SOURCES, Song, write_midi
from .tracks import DataError

log = logging.getLogger(__name__)

# Bump when the composer (compose.py) or the mixing (render_song) changes: it is part of the cache key.
GENERATOR_VERSION = 1
# Stem levels in dB RMS (full scale), roughly like a pop mix, with headroom for the sum.
LEVELS_DB = {"vocals": (-23.0, -17.0), "drums": (-24.0, -18.0), "bass": (-25.0, -19.0), "other": (-25.0, -19.0)}


@dataclass(frozen=True)
class RenderSpec:
    """Everything that determines the rendered songs (the cache key)."""

    nb_train: int
    nb_test: int
    seconds: float
    sample_rate: int
    seed: int
    soundfont: str
    gain: float
    timing_ms: float
    fluidsynth: str = "fluidsynth"

    def key(self) -> dict:
        sf_path = Path(self.soundfont).expanduser()
        return asdict(self) | {"generator": GENERATOR_VERSION, "fluidsynth": fluidsynth_version(self.fluidsynth),
                               "soundfont": f"{sf_path.name}:{sf_path.stat().st_size}"}

    def folder_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.key(), sort_keys=True).encode()).hexdigest()[:12]
        return f"rendered-{self.sample_rate}hz-{self.nb_train}+{self.nb_test}x{self.seconds:g}s-{digest}"

    def songs(self) -> list[tuple[str, str, int]]:
        """``(split folder, song name, seed)`` of every song; train and test seeds never overlap."""
        out = []
        for split, count in (("train", self.nb_train), ("test", self.nb_test)):
            for i in range(count):
                seed = int(np.random.SeedSequence([self.seed, split == "test", i]).generate_state(1)[0])
                out.append((split, f"song-{i:04d}", seed))
        return out


@lru_cache(maxsize=None)
def fluidsynth_version(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise DataError(f"data.fluidsynth: the FluidSynth program {program!r} was not found on PATH; data=rendered "
                        "needs it to render MIDI (Debian/Ubuntu: `apt-get install fluidsynth`, which "
                        "scripts/setup.sh does), or set data.fluidsynth to its path")
    result = subprocess.run([found, "--version"], capture_output=True, text=True)
    return result.stdout.splitlines()[0].strip() if result.stdout else "unknown"


def check_tools(spec: RenderSpec) -> None:
    """A clear :class:`DataError` when FluidSynth or the soundfont is missing."""
    fluidsynth_version(spec.fluidsynth)
    if not Path(spec.soundfont).expanduser().is_file():
        raise DataError(f"data.soundfont: the General MIDI soundfont {spec.soundfont} does not exist; install it "
                        "(Debian/Ubuntu: `apt-get install fluid-soundfont-gm`, which scripts/setup.sh does) "
                        "or set data.soundfont to an .sf2 file")


def _fluidsynth(spec: RenderSpec, midi: Path, wav: Path) -> np.ndarray:
    command = [spec.fluidsynth, "-ni", "-q", "-F", str(wav), "-T", "wav", "-O", "float", "-r", str(spec.sample_rate),
               "-g", str(spec.gain), "-o", "synth.cpu-cores=1",
               # Load only the samples the song plays, not the whole (140 MB) soundfont: halves the start-up.
               "-o", "synth.dynamic-sample-loading=1", str(Path(spec.soundfont).expanduser()), str(midi)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0 or not wav.is_file():
        raise RuntimeError(f"fluidsynth failed on {midi.name} (exit {result.returncode}): {result.stderr.strip()[-500:]}")
    audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    if rate != spec.sample_rate:
        raise RuntimeError(f"fluidsynth wrote {rate} Hz instead of {spec.sample_rate} Hz")
    return audio.T  # (2, frames)


def render_song(spec: RenderSpec, seed: int, folder: Path) -> float:
    """Compose song ``seed``, render its stems into ``folder`` (created atomically); returns seconds of CPU time."""
    started = time.process_time()
    song = Song(seed, spec.seconds)
    rng = np.random.default_rng([seed, 1])
    n = int(round(spec.seconds * spec.sample_rate))
    stems = {}
    with tempfile.TemporaryDirectory(prefix=".render-", dir=folder.parent) as tmp:
        tmp = Path(tmp)
        for name in SOURCES:
            write_midi(song.parts[name], song.bpm, tmp / f"{name}.mid", rng, spec.timing_ms * (0.5 if name == "drums" else 1.0))
            audio = _fluidsynth(spec, tmp / f"{name}.mid", tmp / f"{name}.render.wav")[:, :n]
            audio = np.pad(audio, ((0, 0), (0, n - audio.shape[1])))
            rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
            if rms < 1e-6:
                raise RuntimeError(f"stem {name} of song seed {seed} rendered silent (soundfont {spec.soundfont})")
            stems[name] = audio * (10 ** (rng.uniform(*LEVELS_DB[name]) / 20) / rms)
        peak = np.abs(sum(stems.values())).max()
        scale = min(1.0, 0.98 / peak) if peak > 0 else 1.0  # headroom for the sum and the 16-bit stems
        out = tmp / "track"
        out.mkdir()
        mixture = 0.0
        for name, audio in stems.items():
            pcm = np.clip(np.round(audio * scale * 32767), -32768, 32767).astype(np.int16)
            sf.write(str(out / f"{name}.wav"), pcm.T, spec.sample_rate, subtype="PCM_16")
            mixture = mixture + pcm.astype(np.float32) / 32768.0  # what soundfile reads back
        # The exact sum of the 16-bit stems, stored as float so that nothing is rounded.
        sf.write(str(out / "mixture.wav"), np.asarray(mixture).T, spec.sample_rate, subtype="FLOAT")
        os.replace(out, folder)
    return time.process_time() - started


def _render_job(spec: RenderSpec, seed: int, folder: str) -> float:
    return render_song(spec, seed, Path(folder))


def render_dataset(spec: RenderSpec, root: Path, workers: int | None = None) -> Path:
    """Render every song of ``spec`` missing under ``root`` (in parallel processes); returns ``root``.

    Complete songs are kept, so an interrupted render resumes; ``root/render.json``
    (the cache key and timings) is written last and marks the cache as complete.
    """
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # concurrent runs (a sweep) render once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "render.json").is_file():
            return root
        check_tools(spec)
        todo = [(seed, root / split / name) for split, name, seed in spec.songs() if not (root / split / name).is_dir()]
        for split in ("train", "test"):
            (root / split).mkdir(exist_ok=True)
        workers = max(1, min(workers or os.cpu_count() or 1, len(todo) or 1))
        log.info("data: rendering %d songs of %g s with FluidSynth into %s (%d processes)", len(todo), spec.seconds,
                 root, workers)
        started, cpu = time.perf_counter(), 0.0
        # fork: the jobs need numpy, mido and soundfile only, and a spawned process would re-import torch.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            futures = {pool.submit(_render_job, spec, seed, str(folder)): folder for seed, folder in todo}
            for future in tqdm(as_completed(futures), total=len(futures), desc="rendering songs", unit="song"):
                try:
                    cpu += future.result()
                except Exception as exc:
                    for other in futures:
                        other.cancel()
                    raise DataError(f"data=rendered: rendering {futures[future]} failed: {exc}") from exc
        wall = time.perf_counter() - started
        music_minutes = len(todo) * spec.seconds / 60
        record = {"key": spec.key(), "songs": len(spec.songs()), "rendered_now": len(todo), "wall_seconds": wall,
                  "processes": workers,
                  "wall_seconds_per_music_minute": wall / music_minutes if music_minutes else None}
        tmp = root / "render.json.tmp"
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, root / "render.json")
        if todo:
            log.info("data: rendered %.1f min of music in %.0f s (%.1f s per minute of music, %d processes)",
                     music_minutes, wall, wall / music_minutes, workers)
    return root
