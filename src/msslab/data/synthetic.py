"""Generated multitrack music: no files, no downloads, deterministic from a seed.

Each track is a short piece at one tempo and in one key with a four-chord
progression, rendered as four stereo stems that overlap in time and frequency
like real music:

- ``vocals``: a sung melody over the chords (harmonic source shaped by a vowel
  formant envelope, vibrato, note changes, legato glides and rests);
- ``drums``: kick, snare and hi-hats on a sixteenth-note grid (pitch-swept and
  noise transients with exponential decays);
- ``bass``: a plucked bass line on the chord roots (low harmonics, fast decay);
- ``other``: sustained and arpeggiated chords (piano/pad-like partials).

Every stem is panned with a constant-power law, and levels are drawn per
track, so no two tracks are mixed alike.

Rendering is slow at 44.1 kHz (over a second per 12 s track), so
:class:`SyntheticTracks` renders the missing tracks in parallel processes and
caches every track on disk, keyed by everything that determines it (see
:func:`track_key`): a sweep, its jobs and later runs render each track once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
from scipy import signal

from .tracks import DataError, TrackSet

log = logging.getLogger(__name__)

SOURCES = ["vocals", "drums", "bass", "other"]

MAJOR = np.array([0, 2, 4, 5, 7, 9, 11])
# Scale degrees of common pop progressions (I-V-vi-IV, vi-IV-I-V, I-vi-IV-V, ii-V-I-vi).
PROGRESSIONS = [(0, 4, 5, 3), (5, 3, 0, 4), (0, 5, 3, 4), (1, 4, 0, 5)]
# (F1, F2, F3) in Hz for a few vowels; the voice moves between them per note.
VOWELS = np.array([[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [570, 840, 2410], [300, 870, 2240]])


def midi_to_hz(note):
    return 440.0 * 2.0 ** ((np.asarray(note, dtype=np.float64) - 69.0) / 12.0)


def _pan(mono: np.ndarray, position: float) -> np.ndarray:
    """Constant-power pan, ``position`` in [-1 (left), 1 (right)]."""
    angle = (position + 1.0) * np.pi / 4.0
    return np.stack([np.cos(angle) * mono, np.sin(angle) * mono])


def _adsr(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    env = np.ones(n)
    a = min(n, max(1, int(attack * sr)))
    r = min(n - a, max(1, int(release * sr)))
    env[:a] = np.linspace(0.0, 1.0, a)
    if r > 0:
        env[n - r :] *= np.linspace(1.0, 0.0, r)
    return env


class _Score:
    """Tempo, key and chords shared by all stems of one track."""

    def __init__(self, rng: np.random.Generator, seconds: float):
        self.bpm = rng.uniform(90, 140)
        self.beat = 60.0 / self.bpm
        self.root = int(rng.integers(52, 64))  # key root in MIDI, E3..D#4
        progression = PROGRESSIONS[int(rng.integers(len(PROGRESSIONS)))]
        self.nb_bars = int(np.ceil(seconds / (4 * self.beat))) + 1
        self.chords = [progression[i % 4] for i in range(self.nb_bars)]  # one chord per bar

    def chord_notes(self, bar: int, octave: int = 0) -> np.ndarray:
        """MIDI notes of the triad of ``bar``, ``octave`` octaves above the key root."""
        degree = self.chords[bar]
        idx = np.array([degree, degree + 2, degree + 4])
        return self.root + 12 * octave + MAJOR[idx % 7] + 12 * (idx // 7)

    def scale_note(self, degree: int, octave: int = 0) -> int:
        return int(self.root + 12 * octave + MAJOR[degree % 7] + 12 * (degree // 7))


def _vocals(score: _Score, rng, n: int, sr: int) -> np.ndarray:
    """A sung melody: notes of 1/2 to 2 beats on chord tones and passing notes, with rests."""
    f0 = np.zeros(n)
    amp = np.zeros(n)
    vowel = np.zeros((n, 3))
    t = rng.uniform(0, 2) * score.beat
    degree = int(rng.integers(0, 5))
    while t < n / sr:
        dur = score.beat * float(rng.choice([0.5, 1.0, 1.0, 1.5, 2.0]))
        start, stop = int(t * sr), min(n, int((t + dur) * sr))
        if rng.random() < 0.2:  # a breath / rest
            t += dur
            continue
        bar = min(int(t / (4 * score.beat)), score.nb_bars - 1)
        if rng.random() < 0.6:  # land on a chord tone, else step through the scale
            degree = int(score.chords[bar] + rng.choice([0, 2, 4]))
        else:
            degree = int(np.clip(degree + rng.choice([-1, 1]), -2, 9))
        length = stop - start
        if length <= 0:
            break
        f0[start:stop] = midi_to_hz(score.scale_note(degree, octave=1))
        amp[start:stop] = _adsr(length, sr, 0.03, 0.08) * rng.uniform(0.6, 1.0)
        vowel[start:stop] = VOWELS[int(rng.integers(len(VOWELS)))]
        t += dur
    # Smooth pitch (glides between notes) and add a vibrato of constant rate and depth.
    held = f0 > 0
    f0 = np.where(held, f0, np.maximum.accumulate(np.where(held, f0, 0.0)))
    f0[f0 == 0] = midi_to_hz(score.root + 12)
    glide = max(1, int(0.03 * sr))
    f0 = signal.lfilter([1.0 / glide], [1, -(1 - 1.0 / glide)], f0, zi=[f0[0] * (1 - 1.0 / glide)])[0]
    vibrato_rate, vibrato_depth = rng.uniform(4.5, 6.5), rng.uniform(0.2, 0.5)  # Hz, semitones
    time = np.arange(n) / sr
    f0 = f0 * 2.0 ** (vibrato_depth * np.sin(2 * np.pi * vibrato_rate * time) / 12.0)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    out = np.zeros(n)
    for k in range(1, 40):
        fk = k * f0
        # Formant envelope: source slope (-6 dB/oct) times three resonances; silent above Nyquist.
        gain = k ** -1.0 * sum(np.exp(-0.5 * ((fk - vowel[:, j]) / (80.0 + 40 * j)) ** 2) * (1.0, 0.7, 0.35)[j] for j in range(3))
        gain = (gain + 0.02 / k) * (fk < 0.45 * sr)
        out += gain * np.sin(k * phase)
    breath = signal.lfilter(*signal.butter(2, [min(2000, 0.4 * sr), min(6000, 0.45 * sr)], "band", fs=sr), rng.standard_normal(n))
    return (out + 0.02 * breath) * amp


def _drums(score: _Score, rng, n: int, sr: int) -> np.ndarray:
    out = np.zeros(n)
    step = score.beat / 4  # sixteenth notes
    kick_len, snare_len, hat_len = int(0.35 * sr), int(0.25 * sr), int(0.08 * sr)
    tk = np.arange(kick_len) / sr
    kick = np.sin(2 * np.pi * np.cumsum(50 + 100 * np.exp(-tk / 0.03)) / sr) * np.exp(-tk / 0.12)
    ts = np.arange(snare_len) / sr
    snare_noise = signal.lfilter(*signal.butter(2, min(1500, 0.4 * sr), "high", fs=sr), rng.standard_normal(snare_len))
    snare = (0.6 * snare_noise * np.exp(-ts / 0.06) + 0.5 * np.sin(2 * np.pi * 190 * ts) * np.exp(-ts / 0.04))
    th = np.arange(hat_len) / sr
    hat = signal.lfilter(*signal.butter(2, min(6000, 0.4 * sr), "high", fs=sr), rng.standard_normal(hat_len)) * np.exp(-th / 0.015)
    kick_pattern = {0, 8} | ({10} if rng.random() < 0.5 else set()) | ({3} if rng.random() < 0.3 else set())
    hats_every = int(rng.choice([2, 2, 1]))

    def place(sample, position, gain):
        start = int(position * sr)
        if start >= n:
            return
        stop = min(n, start + len(sample))
        out[start:stop] += gain * sample[: stop - start]

    for i in range(int(n / sr / step) + 1):
        pos, s16 = i * step, i % 16
        if s16 in kick_pattern:
            place(kick, pos, rng.uniform(0.8, 1.0))
        if s16 in (4, 12) or (s16 == 14 and rng.random() < 0.15):
            place(snare, pos, rng.uniform(0.7, 1.0))
        if s16 % hats_every == 0:
            place(hat, pos, rng.uniform(0.2, 0.45) * (1.3 if s16 % 4 == 2 else 1.0))
    return out


def _plucked(freqs, starts, durs, n, sr, nb_harmonics, decay, brightness) -> np.ndarray:
    """Notes with harmonics whose amplitude falls with order and decays faster when higher."""
    out = np.zeros(n)
    for f, start, dur in zip(freqs, starts, durs):
        s, e = int(start * sr), min(n, int((start + dur) * sr))
        if e <= s:
            continue
        t = np.arange(e - s) / sr
        note = np.zeros(e - s)
        for k in range(1, nb_harmonics + 1):
            if k * f >= 0.45 * sr:
                break
            note += brightness**(k - 1) / k * np.sin(2 * np.pi * k * f * t) * np.exp(-t * k / decay)
        out[s:e] += note * _adsr(e - s, sr, 0.005, 0.03)
    return out


def _bass(score: _Score, rng, n: int, sr: int) -> np.ndarray:
    per_beat = int(rng.choice([1, 2]))
    dur = score.beat / per_beat
    starts = np.arange(0, n / sr, dur)
    freqs = []
    for t in starts:
        bar = min(int(t / (4 * score.beat)), score.nb_bars - 1)
        root = score.chord_notes(bar, octave=-2)[0]
        freqs.append(midi_to_hz(root + (12 if rng.random() < 0.15 else 0) + (7 if rng.random() < 0.1 else 0)))
    return _plucked(freqs, starts, np.full(len(starts), dur * 0.95), n, sr, nb_harmonics=8, decay=0.6, brightness=0.7)


def _other(score: _Score, rng, n: int, sr: int) -> np.ndarray:
    arpeggio = rng.random() < 0.5
    freqs, starts, durs = [], [], []
    bar_len = 4 * score.beat
    for bar in range(score.nb_bars):
        notes = midi_to_hz(score.chord_notes(bar, octave=int(rng.choice([0, 1]))))
        if arpeggio:  # eighth-note arpeggio up and down the triad
            order = [0, 1, 2, 1] * 2
            for j, idx in enumerate(order):
                freqs.append(notes[idx]), starts.append(bar * bar_len + j * score.beat / 2), durs.append(score.beat * 0.9)
        else:  # chords struck on beats 1 and 3
            for beat in (0, 2):
                for f in notes:
                    freqs.append(f), starts.append(bar * bar_len + beat * score.beat), durs.append(2 * score.beat)
    return 0.6 * _plucked(freqs, starts, durs, n, sr, nb_harmonics=10, decay=1.5, brightness=0.55)


RENDERERS = {"vocals": _vocals, "drums": _drums, "bass": _bass, "other": _other}
# Level ranges in dB relative to full scale RMS, roughly like a pop mix, with headroom
# so that mixtures stay below full scale (they can be written as PCM without clipping).
LEVELS_DB = {"vocals": (-24, -18), "drums": (-26, -20), "bass": (-26, -20), "other": (-28, -22)}
PANS = {"vocals": (-0.15, 0.15), "drums": (-0.3, 0.3), "bass": (-0.1, 0.1), "other": (-0.8, 0.8)}


def generate_track(seed: int, seconds: float, sample_rate: int, noise_floor_db: float = -60.0) -> dict[str, np.ndarray]:
    """Render one track: ``{source: float32 (2, round(seconds * sample_rate))}``.

    Each stem gets an independent white noise floor ``noise_floor_db`` below its
    level, like a recording. Without it the band-limited stems make BSSEval's
    512-tap projections ill-conditioned, and museval reports SIR/SAR/ISR that
    contradict the SDR by tens of dB.
    """
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sample_rate))
    score = _Score(rng, seconds)
    stems = {}
    for name in SOURCES:
        mono = RENDERERS[name](score, np.random.default_rng(rng.integers(2**32)), n, sample_rate)
        rms = np.sqrt(np.mean(mono**2)) + 1e-9
        level = 10.0 ** (rng.uniform(*LEVELS_DB[name]) / 20.0)
        stereo = _pan(mono / rms * level, rng.uniform(*PANS[name]))
        stereo += rng.standard_normal(stereo.shape) * level * 10.0 ** (noise_floor_db / 20.0)
        stems[name] = stereo.astype(np.float32)
    return stems


# Below this many samples to render (about 2 s of work), one process does it (workers: null).
PARALLEL_MIN_FRAMES = 4_000_000
# Part of every cache key: a change to this file (the generator) makes new tracks.
CODE_VERSION = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def default_cache_dir() -> Path:
    """The user's cache folder for msslab (``$XDG_CACHE_HOME/msslab``, else ``~/.cache/msslab`` on Linux)."""
    import platformdirs

    return Path(platformdirs.user_cache_dir("msslab", appauthor=False))


def track_key(seed: int, seconds: float, sample_rate: int, noise_floor_db: float) -> str:
    """Cache key of one rendered track: its parameters and the generator's code version."""
    fields = {"code": CODE_VERSION, "seed": int(seed), "seconds": float(seconds), "sample_rate": int(sample_rate),
              "noise_floor_db": float(noise_floor_db), "sources": SOURCES}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def _render(seed: int, seconds: float, sample_rate: int, noise_floor_db: float) -> np.ndarray:
    """One track as a ``(sources, 2, frames)`` float32 array (runs in a worker process)."""
    return np.stack(list(generate_track(seed, seconds, sample_rate, noise_floor_db).values()))


def _write_atomically(path: Path, audio: np.ndarray) -> None:
    """Write to a temporary file in the same folder, then rename: a reader (or a concurrent
    job writing the same track) never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            np.save(f, audio)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class SyntheticTracks(TrackSet):
    """``nb_tracks`` generated tracks of ``seconds`` length; track ``i`` is seeded by ``(seed, i)``.

    Different splits use different ``seed`` values so they never share a track.

    Args:
        cache_dir: folder of rendered tracks (``.npy``, one per track, named by
            :func:`track_key`); None: the user's cache folder (:func:`default_cache_dir`);
            False: no cache, render in memory.
        workers: processes that render the missing tracks in :meth:`prepare`
            (None: one per CPU core, or this process when there is little to render;
            0 or 1: in this process).
    """

    sources = SOURCES
    nb_channels = 2

    def __init__(self, nb_tracks: int, seconds: float, sample_rate: int, seed: int, split: str = "train",
                 noise_floor_db: float = -60.0, cache_dir: str | bool | None = None, workers: int | None = None):
        if nb_tracks < 1:
            raise DataError(f"data: {split} needs nb_tracks >= 1, got {nb_tracks}")
        if seconds <= 0:
            raise DataError(f"data: {split} needs seconds > 0, got {seconds}")
        if workers is not None and workers < 0:
            raise DataError(f"data: {split} needs workers >= 0 (or null: one per core), got {workers}")
        self.nb_tracks, self.seconds, self.sample_rate, self.seed, self.split = nb_tracks, seconds, sample_rate, seed, split
        self.noise_floor_db = noise_floor_db
        if cache_dir is True or cache_dir is None:
            cache_dir = default_cache_dir()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir not in (False, "") else None
        self.workers = workers
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.nb_tracks

    def name(self, index: int) -> str:
        return f"synthetic-{self.split}-{index:03d}"

    def num_frames(self, index: int) -> int:
        return int(round(self.seconds * self.sample_rate))

    def _arguments(self, index: int) -> tuple:
        seed = int(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        return seed, self.seconds, self.sample_rate, self.noise_floor_db

    def cache_path(self, index: int) -> Path | None:
        """Where track ``index`` is cached (None without a cache)."""
        return None if self.cache_dir is None else self.cache_dir / "synthetic" / f"{track_key(*self._arguments(index))}.npy"

    def _keep(self, index: int, audio: np.ndarray) -> None:
        self._cache[index] = dict(zip(SOURCES, audio))

    def _read_cached(self, index: int) -> bool:
        path = self.cache_path(index)
        if path is None or not path.is_file():
            return False
        try:
            audio = np.load(path)
        except (OSError, ValueError) as err:  # a damaged file is rendered again and replaced
            log.warning("synthetic data cache: cannot read %s (%s); rendering the track again", path, err)
            return False
        if audio.shape != (len(SOURCES), self.nb_channels, self.num_frames(index)) or audio.dtype != np.float32:
            log.warning("synthetic data cache: %s holds %s %s; rendering the track again", path, audio.shape, audio.dtype)
            return False
        self._keep(index, audio)
        return True

    def _store(self, index: int, audio: np.ndarray) -> None:
        path = self.cache_path(index)
        if path is not None:
            _write_atomically(path, audio)
        self._keep(index, audio)

    def _track(self, index: int) -> dict[str, np.ndarray]:
        if index not in self._cache and not self._read_cached(index):
            self._store(index, _render(*self._arguments(index)))
        return self._cache[index]

    def load(self, index, offset=0, num_frames=None):
        stop = None if num_frames is None else offset + num_frames
        return {name: audio[:, offset:stop] for name, audio in self._track(index).items()}

    def prepare(self) -> None:
        """Read the cached tracks and render the missing ones, in parallel processes (with a progress bar)."""
        from tqdm.auto import tqdm

        missing = [i for i in range(len(self)) if i not in self._cache and not self._read_cached(i)]
        if not missing:
            return
        if self.workers is not None:
            workers = min(self.workers, len(missing))
        elif len(missing) * self.num_frames(0) < PARALLEL_MIN_FRAMES:  # starting processes would cost more
            workers = 1
        else:
            workers = min(os.cpu_count() or 1, len(missing))
        progress = tqdm(total=len(missing), desc=f"rendering {self.split} tracks", unit="track", disable=None)
        with progress:
            if workers <= 1:
                for i in missing:
                    self._track(i)
                    progress.update()
                return
            # spawn: works inside any parent (Lightning, a sweep launcher's worker) and does not
            # copy a big parent process; each worker only imports numpy and scipy.
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                futures = {pool.submit(_render, *self._arguments(i)): i for i in missing}
                for future in as_completed(futures):
                    self._store(futures[future], future.result())
                    progress.update()
