"""What every dataset read from disk shares: splits, up-front checks, bad-track policy, lazy loading.

A :class:`FileTracks` is one split (``train``, ``valid`` or ``test``) of a dataset laid
out as ``ROOT/train/...`` and ``ROOT/test/...``. ``valid`` is held out of ``train/``:
by default MUSDB18's official validation tracks; a dataset without them holds out a
fraction of ``train/`` instead. :meth:`FileTracks.prepare` lists the split and checks
every track from its headers before any training starts; a bad track is an error
naming the file and the problem, or (``on_bad_track="skip"``) a warning and a summary.
Audio is then read lazily, chunk by chunk, and resampled to ``sample_rate`` on the fly.

Subclasses say how a layout is listed, checked and read (:mod:`.folders`, :mod:`.musdb`).
"""

from __future__ import annotations

import abc
import importlib.util
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .audio import AudioInfo, BadAudio, read_resampled, resampled_length, to_stereo
from .tracks import DataError, TrackSet

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
ON_BAD_TRACK = ("error", "skip")
MIXTURE = "mixture"
SCAN_THREADS = 8  # headers are read (and stem.mp4 probed) in parallel: the work is I/O and subprocesses


@lru_cache(maxsize=1)
def musdb_setup() -> dict:
    """The ``musdb`` package's own dataset description (official validation tracks, stem ids).

    Read from the installed package's data file without importing it, because importing
    ``musdb`` needs ffmpeg, which the wav layouts do not.
    """
    spec = importlib.util.find_spec("musdb")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the `musdb` package is not installed: reinstall msslab (`pip install -e .`)")
    with open(os.path.join(spec.submodule_search_locations[0], "configs", "mus.yaml")) as f:
        return yaml.safe_load(f)


def official_validation_tracks() -> list[str]:
    """MUSDB18's 14 official validation tracks (names of ``train/`` tracks)."""
    return list(musdb_setup()["validation_tracks"])


class BadTrack(DataError):
    """One track is unusable; ``problems`` lists ``"file: problem"`` lines."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass
class Track:
    """A checked track: where its stems are, and the span of them that is used (source rate)."""

    name: str
    sample_rate: int  # Hz, of every file of the track
    start: int  # first used sample (an excerpt of ``seconds`` starts past 0)
    frames: int  # used samples per stem
    parts: dict[str, Any]  # source -> whatever the subclass needs to read it (path, stream index)
    files: dict[str, AudioInfo] = field(default_factory=dict)


def _seconds(info: AudioInfo) -> str:
    return f"{info.seconds:.2f} s ({info.frames} samples)"


def _grouped(files: dict[str, AudioInfo], describe) -> str:
    """``"vocals.wav: 2.50 s; drums.wav, bass.wav: 3.00 s"``: files grouped by what ``describe`` says."""
    groups: dict[str, list[str]] = {}
    for info in files.values():
        groups.setdefault(describe(info), []).append(Path(info.path).name)
    return "; ".join(f"{', '.join(group)}: {text}" for text, group in sorted(groups.items(), key=lambda g: len(g[1])))


class FileTracks(TrackSet):
    """One split of an on-disk dataset, checked up front and read lazily.

    Args:
        root: dataset folder holding ``train_folder`` and ``test_folder``.
        split: ``train`` / ``valid`` (both from ``train_folder``) or ``test``.
        sample_rate: Hz delivered by :meth:`load`; files at other rates are resampled.
        sources: stem names; ``None`` asks :meth:`discover_sources`.
        valid_tracks_list: track names held out of ``train_folder`` for ``valid``. ``None``:
            MUSDB18's official validation tracks (if none is present, ``valid_fraction`` of
            the tracks, with a warning); ``[]``: ``valid_fraction`` of the tracks.
        valid_fraction: share of ``train_folder`` held out when no list applies (0 < f < 1).
        on_bad_track: ``error`` (stop, naming every bad file) or ``skip`` (warn, leave the track out).
        trim_to_shortest: cut stems of different lengths to the shortest instead of calling the track bad.
        min_seconds: a track shorter than this is bad (the training chunk length); ``None``: any length.
        nb_tracks: use only the first this many tracks of the split (``None``: all).
        seconds: use only this many seconds from the middle of each track (``None``: whole tracks).
        train_folder, test_folder: names of the split folders under ``root``.
    """

    nb_channels = 2
    layout = "ROOT/{train,test}/..."  # shown in error messages; subclasses describe theirs

    def __init__(self, root: str, split: str, sample_rate: int, sources: list[str] | None,
                 valid_tracks_list: list[str] | None = None, valid_fraction: float = 0.1,
                 on_bad_track: str = "error", trim_to_shortest: bool = False, min_seconds: float | None = None,
                 nb_tracks: int | None = None, seconds: float | None = None,
                 train_folder: str = "train", test_folder: str = "test"):
        if split not in SPLITS:
            raise DataError(f"data: split must be one of {list(SPLITS)}, got {split!r}")
        if on_bad_track not in ON_BAD_TRACK:
            raise DataError(f"data.on_bad_track must be one of {list(ON_BAD_TRACK)}, got {on_bad_track!r}")
        if not 0.0 < float(valid_fraction) < 1.0:
            raise DataError(f"data.valid_fraction must be between 0 and 1 (exclusive), got {valid_fraction}")
        if int(sample_rate) <= 0:
            raise DataError(f"data.sample_rate must be positive, got {sample_rate}")
        if nb_tracks is not None and int(nb_tracks) < 1:
            raise DataError(f"data.{split}_tracks.nb_tracks must be >= 1 or null, got {nb_tracks}")
        if seconds is not None and float(seconds) <= 0:
            raise DataError(f"data.{split}_tracks.seconds must be > 0 or null, got {seconds}")
        self.root, self.split, self.sample_rate = Path(str(root)).expanduser(), split, int(sample_rate)
        self.train_folder, self.test_folder = str(train_folder), str(test_folder)
        self.sources = [str(s) for s in (self.discover_sources() if sources is None else sources)]
        if not self.sources or len(set(self.sources)) != len(self.sources):
            raise DataError(f"data: sources must be distinct names, got {self.sources}")
        self.valid_tracks_list = None if valid_tracks_list is None else [str(t) for t in valid_tracks_list]
        self.valid_fraction, self.on_bad_track, self.trim_to_shortest = float(valid_fraction), on_bad_track, bool(trim_to_shortest)
        self.min_seconds = None if min_seconds is None else float(min_seconds)
        self.nb_tracks = None if nb_tracks is None else int(nb_tracks)
        self.seconds = None if seconds is None else float(seconds)
        self.skipped: dict[str, str] = {}  # track name -> why it was left out
        self._tracks: list[Track] | None = None

    # ----------------------------------------------------------------- what subclasses provide
    @abc.abstractmethod
    def list_tracks(self, folder: Path) -> list[str]:
        """Sorted names of the tracks in a split folder (no checks beyond listing)."""

    @abc.abstractmethod
    def scan_track(self, folder: Path, name: str) -> tuple[dict[str, AudioInfo], dict[str, Any]]:
        """``(files, parts)`` of one track from its headers, or :class:`BadTrack`.

        ``files`` maps every file of the track (sources, and the mixture if there is one)
        to its :class:`AudioInfo`; ``parts`` maps each source to what :meth:`read` needs.
        """

    @abc.abstractmethod
    def read(self, track: Track, start: int, stop: int) -> dict[str, np.ndarray]:
        """Source-rate samples ``[start, stop)`` of every source: ``{source: (channels, n)}``."""

    def discover_sources(self) -> list[str]:
        """Source names when none are configured (a layout that cannot tell says so)."""
        raise DataError(f"data: give the source names (sources: [...]) for {type(self).__name__}")

    def check_track(self, track: Track) -> None:
        """Costlier checks on a track that passed the header checks (raise :class:`BadTrack`)."""

    # ------------------------------------------------------------------------- the TrackSet API
    def __len__(self) -> int:
        return len(self.tracks)

    def name(self, index: int) -> str:
        return self.tracks[index].name

    def num_frames(self, index: int) -> int:
        track = self.tracks[index]
        return resampled_length(track.frames, track.sample_rate, self.sample_rate)

    def load(self, index: int, offset: int = 0, num_frames: int | None = None) -> dict[str, np.ndarray]:
        track = self.tracks[index]
        total = self.num_frames(index)
        num_frames = total - offset if num_frames is None else num_frames
        if offset < 0 or num_frames < 0 or offset + num_frames > total:
            raise DataError(f"track {track.name!r}: samples {offset}..{offset + num_frames} are outside its {total} samples")

        def read(start: int, stop: int) -> dict[str, np.ndarray]:
            audio = self.read(track, track.start + start, track.start + stop)
            return {s: to_stereo(audio[s], track.files[s].path) for s in self.sources}

        where = ", ".join(sorted({str(info.path) for info in track.files.values()}))
        audio = read_resampled(read, track.frames, track.sample_rate, self.sample_rate, offset, num_frames, where)
        return {s: audio[s].astype(np.float32, copy=False) for s in self.sources}

    @property
    def tracks(self) -> list[Track]:
        if self._tracks is None:  # used outside a DataModule: check on first use
            self.prepare()
        return self._tracks

    # ---------------------------------------------------------------------------- split + checks
    def split_folder(self) -> Path:
        """The folder this split's tracks are in; a missing root or split folder is a :class:`DataError`."""
        if not self.root.exists():
            raise DataError(f"data.root: {self.root} does not exist (expected the layout {self.layout})")
        if not self.root.is_dir():
            raise DataError(f"data.root: {self.root} is not a folder (expected the layout {self.layout})")
        sub = self.test_folder if self.split == "test" else self.train_folder
        folder = self.root / sub
        if not folder.is_dir():
            present = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DataError(f"data.root: no {sub!r} folder in {self.root} (sub-folders: {present}; "
                            f"expected the layout {self.layout})")
        return folder

    def select(self, names: list[str], folder: Path) -> list[str]:
        """The names of this split among the tracks of its folder (train/valid: disjoint, deterministic)."""
        if self.split == "test":
            return names
        held = self.held_out(names, folder)
        chosen = [n for n in names if (n in held) == (self.split == "valid")]
        if self.split == "train" and not chosen:
            raise DataError(f"data: every track of {folder} is held out for validation: no tracks left to train on "
                            f"(check data.valid_tracks_list / data.valid_fraction)")
        return chosen

    def held_out(self, names: list[str], folder: Path) -> set[str]:
        if self.valid_tracks_list:  # the user's list: every name must be there (a typo is an error)
            missing = [n for n in self.valid_tracks_list if n not in names]
            if missing:
                raise DataError(f"data.valid_tracks_list: {missing} not found in {folder} "
                                f"(it has {len(names)} tracks, e.g. {names[:3]})")
            return set(self.valid_tracks_list)
        if self.valid_tracks_list is None:
            official = official_validation_tracks()
            present = [n for n in official if n in names]
            if present:
                if len(present) < len(official) and self.split == "valid":
                    log.warning("data: %d of MUSDB18's %d official validation tracks are not in %s; "
                                "validating on the %d that are", len(official) - len(present), len(official),
                                folder, len(present))
                return set(present)
        held = self.fraction_held_out(names, folder)
        if self.valid_tracks_list is not None and self.split == "valid":
            log.info("data: validating on %d of the %d tracks of %s (data.valid_fraction=%s): %s",
                     len(held), len(names), folder, self.valid_fraction, sorted(held))
        elif self.split == "valid":
            log.warning("data: none of MUSDB18's official validation tracks is in %s, so this is not MUSDB18 itself: "
                        "holding out %d of its %d tracks for validation (data.valid_fraction=%s): %s",
                        folder, len(held), len(names), self.valid_fraction, sorted(held))
        return held

    def fraction_held_out(self, names: list[str], folder: Path) -> set[str]:
        if len(names) < 2:
            raise DataError(f"data: {folder} has {len(names)} track(s); holding out validation tracks needs at "
                            f"least 2 (add tracks, or list them in data.valid_tracks_list)")
        count = min(len(names) - 1, max(1, round(self.valid_fraction * len(names))))
        # Evenly spread over the sorted names: deterministic, independent of any seed.
        picks = np.unique(np.round(np.linspace(0, len(names) - 1, count)).astype(int))
        return {names[i] for i in picks}

    def prepare(self) -> None:
        """List this split and check every track up front; keep the good ones (see ``on_bad_track``)."""
        if self._tracks is not None:
            return
        started = time.perf_counter()
        folder = self.split_folder()
        names = self.list_tracks(folder)
        if not names:
            raise DataError(f"data: no tracks found in {folder} (expected the layout {self.layout})")
        names = self.select(names, folder)
        if self.nb_tracks is not None:
            names = names[: self.nb_tracks]
        with ThreadPoolExecutor(min(SCAN_THREADS, len(names))) as pool:
            outcomes = list(pool.map(lambda n: self._checked(folder, n), names))
        tracks, bad = [], {}
        for name, outcome in zip(names, outcomes):
            if isinstance(outcome, BadTrack):
                bad[name] = outcome.problems
            else:
                tracks.append(outcome)
        where = f"{folder} (data.{self.split}_tracks)"
        if bad and self.on_bad_track == "error":
            lines = "\n".join(f"  - {p}" for problems in bad.values() for p in problems)
            hint = "set data.trim_to_shortest=true to cut stems to the shortest, " if any(
                "differ in length" in p for problems in bad.values() for p in problems) else ""
            raise DataError(f"data: {len(bad)} bad track(s) of {len(names)} in {where}:\n{lines}\n"
                            f"Fix or remove them, {hint}or set data.on_bad_track=skip to leave them out.")
        for name, problems in bad.items():
            log.warning("data: skipping track %r of %s: %s", name, where, "; ".join(problems))
        self.skipped = {name: "; ".join(problems) for name, problems in bad.items()}
        if bad:
            log.warning("data: on_bad_track=skip: skipped %d of %d tracks in %s: %s",
                        len(bad), len(names), where, list(bad))
        if not tracks:
            raise DataError(f"data: no usable tracks in {where}: all {len(names)} are bad (see the warnings above)")
        self._tracks = tracks
        log.info("data: %s split: %d track(s) from %s checked in %.1f s", self.split, len(tracks), folder,
                 time.perf_counter() - started)

    def _checked(self, folder: Path, name: str) -> Track | BadTrack:
        try:
            track = self._track(folder, name)
            self.check_track(track)
            return track
        except BadTrack as bad:
            return bad
        except BadAudio as bad:
            return BadTrack([str(bad)])
        except OSError as err:  # e.g. permission denied, or a file removed while listing
            return BadTrack([f"{self.track_path(folder, name)}: {err}"])

    def track_path(self, folder: Path, name: str) -> Path:
        """Where track ``name`` lives (named in messages about the whole track)."""
        return folder / name

    def _track(self, folder: Path, name: str) -> Track:
        files, parts = self.scan_track(folder, name)
        where = self.track_path(folder, name)
        for info in files.values():
            if info.channels not in (1, 2):
                raise BadAudio(info.path, f"has {info.channels} channels; msslab reads mono (made stereo) or stereo audio")
        rates = {info.sample_rate for info in files.values()}
        if len(rates) > 1:  # (lengths in samples are not comparable then)
            raise BadTrack([f"{where}: stems have different sample rates: "
                            + _grouped(files, lambda i: f"{i.sample_rate} Hz")])
        lengths = {info.frames for info in files.values()}
        if len(lengths) > 1 and not self.trim_to_shortest:
            raise BadTrack([f"{where}: stems differ in length: " + _grouped(files, _seconds)])
        rate, frames = rates.pop(), min(lengths)
        if len(lengths) > 1:
            log.info("data: %s: stems cut to the shortest, %.2f s (data.trim_to_shortest)", where, frames / rate)
        start = 0
        if self.seconds is not None and self.seconds * rate < frames:  # a middle excerpt
            used = int(round(self.seconds * rate))
            start, frames = (frames - used) // 2, used
        if self.min_seconds is not None:
            needed = int(round(self.min_seconds * self.sample_rate))
            if resampled_length(frames, rate, self.sample_rate) < needed:
                raise BadTrack([f"{where}: {frames / rate:.2f} s long, shorter than one training chunk "
                                f"({self.min_seconds} s, data.chunk_seconds)"])
        return Track(name, rate, start, frames, parts, files)
