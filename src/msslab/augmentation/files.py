"""A folder of audio files (noise recordings, impulse responses), read on demand and cached."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .pipeline import AugmentationError

EXTENSIONS = (".wav", ".flac", ".ogg", ".aif", ".aiff", ".mp3")


def match_channels(audio: np.ndarray, channels: int) -> np.ndarray:
    """``(c, T) -> (channels, T)``: repeat a mono file, keep the first ``channels`` otherwise."""
    if audio.shape[0] == channels:
        return audio
    if audio.shape[0] == 1:
        return np.repeat(audio, channels, axis=0)
    if audio.shape[0] > channels:
        return audio[:channels]
    return audio[np.arange(channels) % audio.shape[0]]


class AudioFolder:
    """The audio files under ``path`` (recursively, sorted), as float32 ``(channels, frames)``.

    Files are read with soundfile and resampled to the requested rate with
    torchaudio; the last ``cache_size`` files read stay in memory (per worker
    process), so a small folder is read from disk once.
    """

    def __init__(self, path: str, what: str, cache_size: int = 64):
        root = Path(path).expanduser()
        if not root.exists():
            raise AugmentationError(f"{what}: folder {str(root)!r} does not exist")
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.suffix.lower() in EXTENSIONS)
        if not files:
            raise AugmentationError(f"{what}: no audio files ({', '.join(EXTENSIONS)}) under {str(root)!r}")
        self.files, self.what, self.cache_size = files, what, int(cache_size)
        self._cache: OrderedDict = OrderedDict()

    def __len__(self) -> int:
        return len(self.files)

    def groups(self) -> list[list[int]]:
        """File indices grouped by the folder that holds them (sorted; e.g. one room's IRs)."""
        by_folder: dict = {}
        for i, path in enumerate(self.files):
            by_folder.setdefault(path.parent, []).append(i)
        return [by_folder[k] for k in sorted(by_folder)]

    def load(self, index: int, sample_rate: int) -> np.ndarray:
        key = (index, sample_rate)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        try:
            audio, rate = sf.read(str(self.files[index]), dtype="float32", always_2d=True)
        except Exception as err:  # soundfile raises several types; say which file it was
            raise AugmentationError(f"{self.what}: cannot read {str(self.files[index])!r}: {err}") from err
        audio = audio.T
        if rate != sample_rate:
            audio = AF.resample(torch.from_numpy(np.ascontiguousarray(audio)), rate, sample_rate).numpy()
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if self.cache_size > 0:
            self._cache[key] = audio
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return audio
