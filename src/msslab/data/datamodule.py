"""The LightningDataModule: tracks -> random chunks -> per-source augmentation -> mix.

Training examples are random chunks of random tracks, augmented at the source
level and mixed afterwards, so the mixture always equals the sum of the targets
(plus background noise, which only the mixture gets). Validation uses fixed,
un-augmented chunks; test tracks are evaluated whole (see ``msslab.evaluate``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from ..augmentation import DeviceAugmentation, build_pipeline, check_placement
from .tracks import DataError, TrackSet

log = logging.getLogger(__name__)

ACCOMPANIMENT = "accompaniment"


def target_groups(sources: Sequence[str], targets: Sequence[str] | Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Map each target name to the sources summed into it.

    ``targets`` is a list of source names, where ``accompaniment`` means the sum of
    every source not named otherwise (the paper's Source 2), or a mapping
    ``{target: [sources]}`` for any other grouping.
    """
    sources = list(sources)
    if isinstance(targets, Mapping):
        groups = {str(k): [str(s) for s in v] for k, v in targets.items()}
    else:
        named = [str(t) for t in targets]
        rest = [s for s in sources if s not in named]
        # "accompaniment" is the sum of the other sources, unless the data set has a stem of that name.
        groups = {t: [t] if t != ACCOMPANIMENT or t in sources else rest for t in named}
    if not groups:
        raise DataError("data.targets is empty: name at least one target source")
    for target, members in groups.items():
        unknown = [m for m in members if m not in sources]
        if unknown:
            raise DataError(f"data.targets: {target!r} uses unknown source(s) {unknown}; the dataset has {sources}")
        if not members:
            raise DataError(f"data.targets: {target!r} is empty (every source is already a target)")
    return groups


def mix_example(sources: dict[str, np.ndarray], groups: dict[str, list[str]], noise: np.ndarray | None = None):
    """``(mixture (C, T), targets (S, C, T))`` float32 tensors from source arrays.

    The mixture is the sum of *all* sources (a target subset still hears the rest),
    plus ``noise`` when given.
    """
    mixture = np.sum(np.stack(list(sources.values())), axis=0)
    if noise is not None:
        mixture = mixture + noise
    targets = np.stack([np.sum([sources[s] for s in members], axis=0) for members in groups.values()])
    return torch.from_numpy(np.ascontiguousarray(mixture, dtype=np.float32)), torch.from_numpy(targets.astype(np.float32))


def mix_batch(sources: torch.Tensor, groups: dict[str, list[str]], names: Sequence[str],
              noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`mix_example` for a batch on any device: ``sources (B, S, C, T)`` in the order of ``names``.

    Returns ``(mixture (B, C, T), targets (B, targets, C, T))``.
    """
    mixture = sources.sum(1)
    if noise is not None:
        mixture = mixture + noise
    index = {name: i for i, name in enumerate(names)}
    targets = torch.stack([sources[:, [index[s] for s in members]].sum(1) for members in groups.values()], dim=1)
    return mixture, targets


def _check_tracksets(sets: dict[str, TrackSet], sample_rate: int) -> None:
    reference = None
    for split, tracks in sets.items():
        if tracks.sample_rate != sample_rate:
            raise DataError(f"data.{split}_tracks: sample_rate {tracks.sample_rate} differs from data.sample_rate {sample_rate}")
        if reference is None:
            reference = (split, list(tracks.sources))
        elif list(tracks.sources) != reference[1]:
            raise DataError(f"data.{split}_tracks: sources {list(tracks.sources)} differ from {reference[0]}'s {reference[1]}")


class TrainChunks(Dataset):
    """``samples_per_track`` random, augmented chunks per track and epoch.

    Randomness comes from one generator per worker, seeded from torch's worker seed
    (which Lightning derives from the global seed, and which changes every epoch)
    and the process's ``rank`` (DDP), so runs are reproducible while workers,
    processes and epochs differ.

    With a ``device_augmentation`` an item is ``{"sources": (S, C, loaded samples),
    "params": the example's drawn augmentation parameters}`` instead: the stages
    then run batched on the device (``MSSDataModule.on_after_batch_transfer``).
    """

    def __init__(self, tracks: TrackSet, groups, chunk_frames: int, samples_per_track: int, seed: int,
                 pipeline=None, silent_db: float | None = None, max_redraws: int = 10,
                 device_augmentation: DeviceAugmentation | None = None, rank: int = 0):
        self.tracks, self.groups, self.chunk_frames, self.rank = tracks, groups, chunk_frames, rank
        self.samples_per_track, self.seed, self.pipeline = samples_per_track, seed, pipeline
        self.device_augmentation = device_augmentation
        self.silent_db, self.max_redraws = silent_db, max_redraws
        self._rng, self._rng_seed = None, None
        # Time stretching may need more input than one chunk to fill it.
        self.load_frames = pipeline.input_frames(chunk_frames) if pipeline is not None else chunk_frames
        # Checked here, before training, against what will be loaded (not just one chunk).
        for index in range(len(tracks)):
            if tracks.num_frames(index) < self.load_frames:
                because = " (data.chunk_seconds x the largest time_stretch.rate)" if self.load_frames > chunk_frames else ""
                raise DataError(f"track {tracks.name(index)!r} is shorter ({tracks.num_frames(index)} samples) than one "
                                f"training chunk ({self.load_frames} samples to load{because})")

    def __len__(self) -> int:
        return len(self.tracks) * self.samples_per_track

    def rng(self) -> np.random.Generator:
        info = get_worker_info()
        seed = info.seed if info is not None else self.seed
        if self._rng_seed != seed:
            # The rank too: every DDP process gets the same seeds, and must draw other chunks.
            self._rng, self._rng_seed = np.random.default_rng([seed, self.rank] if self.rank else seed), seed
        return self._rng

    def _offset(self, index: int, rng) -> int:
        room = self.tracks.num_frames(index) - self.load_frames
        if room < 0:
            raise DataError(f"track {self.tracks.name(index)!r} is shorter ({self.tracks.num_frames(index)} samples) than one training chunk ({self.load_frames} samples to load)")
        return int(rng.integers(0, room + 1))

    def _draw_sources(self, index: int, rng) -> dict[str, np.ndarray]:
        remix_p = self.pipeline.remix_p if self.pipeline is not None else 0.0
        if remix_p > 0 and rng.random() < remix_p:
            sources = {}
            for name in self.tracks.sources:  # every source from its own random track and position
                other = int(rng.integers(len(self.tracks)))
                sources[name] = self.tracks.load(other, self._offset(other, rng), self.load_frames)[name]
            return sources
        return self.tracks.load(index, self._offset(index, rng), self.load_frames)

    def _silent(self, sources) -> bool:
        if self.silent_db is None:
            return False
        for members in self.groups.values():
            target = np.sum([sources[s] for s in members], axis=0)
            if 10 * np.log10(np.mean(target**2) + 1e-12) < self.silent_db:
                return True
        return False

    def __getitem__(self, item: int):
        rng = self.rng()
        index = item // self.samples_per_track
        sources = self._draw_sources(index, rng)
        for _ in range(self.max_redraws):
            if not self._silent(sources):
                break
            sources = self._draw_sources(index, rng)
        if self.device_augmentation is not None:
            stacked = np.stack(list(sources.values())).astype(np.float32, copy=False)
            return {"sources": torch.from_numpy(stacked), "params": self.device_augmentation.draw(rng, stacked.shape)}
        noise = None
        if self.pipeline is not None:
            sources, noise = self.pipeline(sources, rng, frames=self.chunk_frames)
        return mix_example(sources, self.groups, noise)


class FixedChunks(Dataset):
    """Consecutive, un-augmented chunks of every track (validation): the same every epoch."""

    def __init__(self, tracks: TrackSet, groups, chunk_frames: int, max_chunks_per_track: int | None = None):
        self.tracks, self.groups = tracks, groups
        self.index = []
        for t in range(len(tracks)):
            total = tracks.num_frames(t)
            size = min(chunk_frames, total)  # a short track gives one shorter chunk
            starts = list(range(0, total - size + 1, size))[:max_chunks_per_track]
            self.index += [(t, s, size) for s in starts]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int):
        track, start, size = self.index[item]
        return mix_example(self.tracks.load(track, start, size), self.groups)


class MSSDataModule(pl.LightningDataModule):
    """Train / valid / test track sets plus chunking, augmentation and target grouping.

    Args:
        train_tracks, valid_tracks, test_tracks: :class:`TrackSet` objects (built by Hydra).
        sample_rate: Hz; every track set must deliver audio at this rate.
        targets: source names (``accompaniment`` = the rest), ``{target: [sources]}``, or None (every source).
        chunk_seconds: length of a training example in seconds.
        samples_per_track: training examples drawn per track and epoch.
        valid_chunk_seconds, valid_max_chunks: validation chunking (None: all chunks).
        silent_target_db: redraw a training chunk if a target is quieter than this (dB RMS); None keeps all.
        augmentation: the merged ``augmentation`` config node (see ``msslab.augmentation``); its
            ``placement`` says where the stages run: ``loader`` (worker processes, numpy and
            audiomentations) or ``device`` (workers draw the parameters, the stages run batched
            on the training device in :meth:`on_after_batch_transfer`).
    """

    def __init__(self, train_tracks: TrackSet, valid_tracks: TrackSet, test_tracks: TrackSet, sample_rate: int,
                 targets, chunk_seconds: float = 4.0, samples_per_track: int = 16, valid_chunk_seconds: float = 8.0,
                 valid_max_chunks: int | None = None, batch_size: int = 16, num_workers: int = 2,
                 silent_target_db: float | None = None, seed: int = 0, augmentation=None, **dataset_options):
        # dataset_options: keys of the data node that the track sets reference
        # (root, on_bad_track, ...); Hydra has already rejected any typo among them.
        super().__init__()
        self.train_tracks, self.valid_tracks, self.test_tracks = train_tracks, valid_tracks, test_tracks
        self.sample_rate = int(sample_rate)
        _check_tracksets({"train": train_tracks, "valid": valid_tracks, "test": test_tracks}, self.sample_rate)
        self.sources = list(train_tracks.sources)
        self.groups = target_groups(self.sources, self.sources if targets is None else targets)
        self.targets = list(self.groups)
        self.nb_channels = train_tracks.nb_channels
        self.chunk_frames = int(round(chunk_seconds * self.sample_rate))
        self.valid_chunk_frames = int(round(valid_chunk_seconds * self.sample_rate))
        self.valid_max_chunks = valid_max_chunks
        self.samples_per_track, self.batch_size, self.num_workers = samples_per_track, batch_size, num_workers
        self.silent_target_db, self.seed = silent_target_db, seed
        self.pipeline = build_pipeline(augmentation, self.sample_rate)
        self.placement = check_placement((augmentation or {}).get("placement", "loader"))
        self.device_augmentation = (DeviceAugmentation(self.pipeline, self.chunk_frames)
                                    if self.placement == "device" and self.pipeline is not None else None)
        self._prepared = False

    def setup(self, stage: str | None = None) -> None:
        if not self._prepared:  # generate / scan once, in the main process, before workers fork
            for tracks in (self.train_tracks, self.valid_tracks, self.test_tracks):
                tracks.prepare()
            self._prepared = True
        self.train_set = TrainChunks(self.train_tracks, self.groups, self.chunk_frames, self.samples_per_track,
                                     self.seed, self.pipeline, self.silent_target_db,
                                     device_augmentation=self.device_augmentation,
                                     rank=self.trainer.global_rank if self.trainer is not None else 0)
        self.valid_set = FixedChunks(self.valid_tracks, self.groups, self.valid_chunk_frames, self.valid_max_chunks)

    def _loader(self, dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=shuffle, pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        # Validation chunks may be shorter than the rest (short tracks): batch only equal lengths.
        sizes = {size for _, _, size in self.valid_set.index}
        return self._loader(self.valid_set, False, self.batch_size if len(sizes) == 1 else 1)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Training batches of the device placement arrive as sources + parameters: augment and mix them here."""
        if isinstance(batch, Mapping):
            sources, noise = self.device_augmentation(batch["sources"], batch["params"])
            return mix_batch(sources, self.groups, self.sources, noise)
        return batch

    def clean_train_examples(self, nb_examples: int) -> torch.Tensor:
        """Un-augmented training mixtures ``(nb_examples, C, T)``, for input statistics."""
        dataset = TrainChunks(self.train_tracks, self.groups, self.chunk_frames, self.samples_per_track, self.seed)
        rng = np.random.default_rng(self.seed)
        items = rng.choice(len(dataset), size=min(nb_examples, len(dataset)), replace=False)
        return torch.stack([dataset[int(i)][0] for i in items])

    def test_track(self, index: int, condition=None):
        """``(name, mixture (C, T), targets (S, C, T))`` of one whole test track.

        ``condition``: a :class:`msslab.conditions.Condition` perturbing the track (None: as is).
        """
        name, sources, noise = self.test_tracks.name(index), self.test_tracks.load(index), None
        if condition is not None:
            sources, noise = condition(name, sources)
        mixture, targets = mix_example(sources, self.groups, noise)
        return name, mixture, targets
