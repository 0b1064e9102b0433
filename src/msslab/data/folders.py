"""Tracks stored as folders of audio files, one file per source: MUSDB18-HQ and any stem folder.

Layout: ``ROOT/{train,test}/<track>/<source>.<ext>`` with an optional
``<mixture>.<ext>``. MUSDB18-HQ is this layout with the sources ``vocals, drums,
bass, other``, a ``mixture.wav`` and wav files only (``conf/data/musdb18hq.yaml``);
``conf/data/stem_folder.yaml`` takes the source names from the first track instead.

The mixture file, when there is one, is checked like the stems but not read: the
DataModule mixes the (augmented) sources itself, so mixture and targets always agree.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .audio import BadAudio, audio_info, check_finite, read_span
from .filetracks import MIXTURE, BadTrack, FileTracks, Track
from .tracks import DataError

log = logging.getLogger(__name__)

# Formats libsndfile reads (soundfile), by file extension.
AUDIO_EXTENSIONS = ["wav", "flac", "ogg", "aiff", "aif", "mp3"]


class StemFolderTracks(FileTracks):
    """One split of a folder-per-track dataset (see the module doc); read lazily with soundfile.

    Args (beyond :class:`~msslab.data.filetracks.FileTracks`'s):
        sources: source names, each a file ``<source>.<ext>`` in every track folder;
            ``None``: every audio file of the split's first track except the mixture, sorted.
        mixture: file name (without extension) of the optional mixture; ``None``: no mixture file.
        extensions: file extensions read as audio (without the dot).
    """

    def __init__(self, root: str, split: str, sample_rate: int, sources: list[str] | None = None,
                 mixture: str | None = MIXTURE, extensions: list[str] = tuple(AUDIO_EXTENSIONS), **kwargs):
        self.mixture = mixture or None
        self.extensions = [str(e).lower().lstrip(".") for e in extensions]
        if not self.extensions:
            raise DataError("data: extensions is empty: name the audio file extensions to read (e.g. [wav])")
        super().__init__(root, split, sample_rate, None if sources is None else list(sources), **kwargs)
        if self.mixture is not None and self.mixture in self.sources:
            raise DataError(f"data: {self.mixture!r} is both the mixture file and a source: rename one")

    @property
    def layout(self) -> str:
        return f"ROOT/{{{self.train_folder},{self.test_folder}}}/<track>/<source>.{self._ext_pattern()}"

    def _ext_pattern(self) -> str:
        return self.extensions[0] if len(self.extensions) == 1 else "{" + ",".join(self.extensions) + "}"

    def _audio_files(self, track_dir: Path) -> dict[str, list[Path]]:
        """``{name without extension: [paths]}`` of the audio files in a track folder."""
        files: dict[str, list[Path]] = {}
        for path in sorted(track_dir.iterdir()):
            if path.is_file() and not path.name.startswith(".") and path.suffix.lower().lstrip(".") in self.extensions:
                files.setdefault(path.stem, []).append(path)
        return files

    def list_tracks(self, folder: Path) -> list[str]:
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))

    def discover_sources(self) -> list[str]:
        folder = self.split_folder()
        names = self.list_tracks(folder)
        if not names:
            raise DataError(f"data: no tracks found in {folder} (expected the layout {self.layout})")
        first = folder / names[0]
        files = self._audio_files(first)
        doubled = {stem: [p.name for p in paths] for stem, paths in files.items() if len(paths) > 1}
        if doubled:
            raise DataError(f"data: cannot take source names from {first}: several files per name {doubled}")
        sources = sorted(stem for stem in files if stem != self.mixture)
        if not sources:
            raise DataError(f"data: cannot take source names from {first}, the first track: it has no audio files "
                            f"(extensions {self.extensions}) other than the mixture; set data.sources")
        log.info("data: sources %s, from the files of %s", sources, first)
        return sources

    def scan_track(self, folder, name):
        track_dir = folder / name
        present = self._audio_files(track_dir)
        wanted = self.sources + ([self.mixture] if self.mixture in present else [])
        files, problems = {}, []
        for stem in wanted:
            paths = present.get(stem, [])
            if not paths:
                found = sorted(p.name for ps in present.values() for p in ps)
                problems.append(f"{track_dir / stem}.{self._ext_pattern()}: missing stem file (the track has {found})")
            elif len(paths) > 1:
                problems.append(f"{track_dir / stem}: several files for one stem: {[p.name for p in paths]}")
            else:
                try:
                    files[stem] = audio_info(str(paths[0]))
                except BadAudio as bad:
                    problems.append(str(bad))
        if problems:
            raise BadTrack(problems)
        return files, {s: files[s].path for s in self.sources}

    def check_track(self, track: Track) -> None:
        # NaN / inf: only float-encoded files can hold them; those are streamed through once, here.
        problems = []
        for info in track.files.values():
            try:
                check_finite(info)
            except BadAudio as bad:
                problems.append(str(bad))
        if problems:
            raise BadTrack(problems)

    def read(self, track: Track, start: int, stop: int) -> dict[str, np.ndarray]:
        return {s: read_span(track.parts[s], start, stop) for s in self.sources}
