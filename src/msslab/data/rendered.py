"""data=rendered: songs composed from a seed, written as MIDI per stem and rendered with FluidSynth.

Three modules, one job each: :mod:`msslab.data.compose` composes a song (tempo, key,
form, four stems of General MIDI parts) and writes it as MIDI; :mod:`msslab.data.fluidsynth`
renders the songs once, in parallel processes, into a cache in the MUSDB18-HQ layout
(``<root>/{train,test}/<song>/<stem>.wav`` plus ``mixture.wav``); this module's
:class:`RenderedTracks` (the config's ``_target_``) finds or renders that cache and reads
it like any stem folder (:class:`~msslab.data.folders.StemFolderTracks`).
"""

from __future__ import annotations

from pathlib import Path

from .compose import SOURCES
from .fluidsynth import RenderSpec, check_tools, render_dataset
from .folders import StemFolderTracks
from .synthetic import default_cache_dir
from .tracks import DataError


class RenderedTracks(StemFolderTracks):
    """One split of the rendered songs: renders (or finds) the cache, then reads it as a stem folder.

    Args:
        cache_dir: folder holding the rendered datasets, one sub-folder per cache key (None:
            ``rendered/`` in the user's cache folder, as ``data=synthetic``).
        nb_train, nb_test: songs in ``train/`` (validation is held out of them) and ``test/``.
        seconds: length of every song in seconds.
        seed: seeds the songs (train and test songs never share a seed).
        render_sample_rate: Hz FluidSynth renders at (``sample_rate`` is read from it, resampled if different).
        soundfont: path of a General MIDI ``.sf2`` soundfont.
        gain: FluidSynth master gain (levels are normalised afterwards; this sets its internal headroom).
        timing_ms: standard deviation of the humanised note onsets (ms; drums get half).
        fluidsynth: the FluidSynth program (name on PATH or path).
        workers: rendering processes (``None``: one per CPU core).
        Other arguments: as :class:`~msslab.data.folders.StemFolderTracks` (split, sample_rate, validation hold-out, ...).
    """

    def __init__(self, split: str, sample_rate: int, cache_dir: str | None, nb_train: int, nb_test: int, seconds: float,
                 seed: int, soundfont: str, render_sample_rate: int | None = None, gain: float = 0.4,
                 timing_ms: float = 8.0, fluidsynth: str = "fluidsynth", workers: int | None = None, **kwargs):
        for key, value, minimum in (("nb_train", nb_train, 2), ("nb_test", nb_test, 1)):
            if int(value) < minimum:
                raise DataError(f"data.{key} must be >= {minimum}, got {value}")
        if float(seconds) <= 0:
            raise DataError(f"data.seconds must be > 0, got {seconds}")
        self.spec = RenderSpec(int(nb_train), int(nb_test), float(seconds), int(render_sample_rate or sample_rate),
                               int(seed), str(soundfont), float(gain), float(timing_ms), str(fluidsynth))
        # one cache root for every generated data set (data=synthetic uses the same folder)
        self.cache_dir = Path(str(cache_dir)).expanduser() if cache_dir else default_cache_dir() / "rendered"
        self.workers = workers
        super().__init__(root=str(self.cache_dir / "pending"), split=split, sample_rate=sample_rate, sources=SOURCES,
                         mixture="mixture", extensions=["wav"], **kwargs)

    def prepare(self) -> None:
        if self._tracks is None:
            check_tools(self.spec)  # (the cache key names the FluidSynth version and the soundfont)
            self.root = render_dataset(self.spec, self.cache_dir / self.spec.folder_name(), self.workers)
        super().prepare()
