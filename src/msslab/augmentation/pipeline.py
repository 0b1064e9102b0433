"""The augmentation pipeline: selected stages, applied in one canonical order.

A stage is a callable ``stage(sources, mix_only, rng, sample_rate) -> (sources,
mix_only)``: ``sources`` maps source names to float32 ``(channels, frames)``
arrays of one training example; ``mix_only`` is an additive array that only the
mixture gets (background noise, or the reverb tail when targets stay dry), or
None. Stages keep every source's shape and dtype.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ..errors import MsslabError

# Canonical order, whatever the order of the selection: source-level gain and
# channel swap first (cheap, and they act on the dry recordings), then the
# pitch/tempo changes, then the room, and the noise last because its SNR is
# measured against the finished mixture. ``remix`` is done by the data set when
# it loads the sources, i.e. before all of these.
ORDER = ("remix", "gain", "channel_swap", "time_stretch", "pitch_shift", "reverb", "background_noise")
AVAILABLE = tuple(sorted(ORDER))
# Keys of the ``augmentation`` node that are settings, not stages (conf/train.yaml sets them).
RESERVED = ("placement",)


class AugmentationError(MsslabError, ValueError):
    """A bad augmentation config: the message names the key and what is allowed."""


@contextlib.contextmanager
def seeded_global_random(rng: np.random.Generator):
    """Seed python's ``random`` and numpy's global state from ``rng``, restore them after.

    audiomentations draws its parameters from these global generators; seeding
    them from the data set's per-worker generator makes its draws reproducible,
    and restoring them leaves the rest of the process undisturbed.
    """
    seed = int(rng.integers(2**32))
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def stack(sources: Mapping[str, np.ndarray]) -> np.ndarray:
    """All sources' channels in one ``(sources * channels, frames)`` float32 array."""
    return np.ascontiguousarray(np.concatenate([np.asarray(v, dtype=np.float32) for v in sources.values()]))


def unstack(stacked: np.ndarray, like: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`stack`: split rows back into the sources of ``like``."""
    out, row = {}, 0
    for name, source in like.items():
        rows = source.shape[0]
        out[name] = np.ascontiguousarray(stacked[row:row + rows], dtype=np.float32)
        row += rows
    return out


def as_range(value, name: str) -> tuple[float, float]:
    """A ``[low, high]`` config range as floats (a single number means a fixed value)."""
    if isinstance(value, (int, float)):
        return float(value), float(value)
    low, high = (float(v) for v in value)
    if low > high:
        raise AugmentationError(f"{name}: range [{low}, {high}] has low > high")
    return low, high


def check_probability(p: float, name: str) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise AugmentationError(f"{name}.p must be in [0, 1], got {p}")
    return p


class AugmentationPipeline:
    """The selected augmentation stages of one training set.

    Call it as ``pipeline(sources, rng) -> (sources, noise)``: ``sources`` maps
    names to float32 ``(channels, frames)`` arrays at ``sample_rate`` (Hz), all of
    one length; the result has the same keys, shapes and dtype, plus an array
    (same shape as a source) that only the mixture gets, or None. Every random
    draw comes from ``rng``, so the same generator state gives the same example.

    ``remix_p`` is the probability that the data set draws an example's sources
    from different tracks (0 when ``remix`` is not selected).
    """

    def __init__(self, stages: Mapping[str, object], sample_rate: int):
        unknown = [k for k in stages if k not in ORDER]
        if unknown:
            raise AugmentationError(
                f"unknown augmentation(s) {unknown}; available: {', '.join(AVAILABLE)}")
        self.sample_rate = int(sample_rate)
        self.names = [k for k in ORDER if k in stages]
        remix = stages.get("remix")
        self.remix_p = float(getattr(remix, "p", 0.0)) if remix is not None else 0.0
        self.stages = [(k, stages[k]) for k in self.names if k != "remix"]

    def input_frames(self, frames: int) -> int:
        """Samples to load for an example of ``frames`` samples.

        More than ``frames`` when time_stretch may speed up, so a faster tempo still
        fills the example instead of ending in silence.
        """
        stretch = dict(self.stages).get("time_stretch")
        return int(np.ceil(frames * max(1.0, stretch.max_rate))) if stretch is not None else frames

    def __call__(self, sources: Mapping[str, np.ndarray], rng: np.random.Generator, frames: int | None = None):
        """``frames``: the example length, when ``sources`` were loaded longer (see ``input_frames``)."""
        sources = {k: np.asarray(v, dtype=np.float32) for k, v in sources.items()}
        frames = frames or next(iter(sources.values())).shape[-1]
        shapes = {k: v.shape[:-1] + (frames,) for k, v in sources.items()}
        mix_only = None
        with seeded_global_random(rng):
            for name, stage in self.stages:
                sources, mix_only = stage(sources, mix_only, rng, self.sample_rate)
                if name == "time_stretch":
                    sources = {k: np.ascontiguousarray(v[..., :frames]) for k, v in sources.items()}
        # Stages promise this; a silent shape change would misalign targets and mixture.
        for k, v in sources.items():
            assert v.shape == shapes[k] and v.dtype == np.float32, (k, v.shape, v.dtype)
        return sources, mix_only

    def drawn(self) -> dict:
        """``{stage: {parameter: value}}`` of the last call, for the stages that record their draws."""
        return {name: dict(stage.parameters) for name, stage in self.stages if getattr(stage, "parameters", None)}

    def __repr__(self) -> str:
        return f"AugmentationPipeline({', '.join(self.names)}; sample_rate={self.sample_rate})"


def stage_names(cfg) -> list[str]:
    """The augmentations selected in a merged ``augmentation`` node, in selection order (settings left out)."""
    return [str(k) for k in (cfg or {}) if str(k) not in RESERVED]


def build_pipeline(cfg, sample_rate: int) -> AugmentationPipeline | None:
    """The training augmentation pipeline from the merged ``augmentation`` config node.

    ``cfg`` has one key per selected augmentation (``{pitch_shift: {...}, reverb:
    {...}}``), each a ``_target_`` node (already instantiated stages are accepted
    too); settings such as ``placement`` are skipped. Empty or None gives None: no augmentation. An unknown key raises
    :class:`AugmentationError` listing the available augmentations.
    """
    if cfg is not None and not isinstance(cfg, Mapping | DictConfig):
        raise AugmentationError(f"augmentation must be a mapping of name -> config, got {type(cfg).__name__}")
    if not stage_names(cfg):
        return None
    unknown = [name for name in stage_names(cfg) if name not in ORDER]
    if unknown:
        raise AugmentationError(f"unknown augmentation(s) {unknown}; available: {', '.join(AVAILABLE)}")
    stages = {}
    for name in stage_names(cfg):
        node = cfg[name]
        if isinstance(node, DictConfig | Mapping):
            if "_target_" not in node:
                raise AugmentationError(f"augmentation.{name} has no _target_ (use conf/augmentation/{name}.yaml)")
            node = OmegaConf.create(dict(node)) if not isinstance(node, DictConfig) else node
            try:
                stages[str(name)] = instantiate(node, _convert_="all")
            except InstantiationException as err:  # say which knob, not where Hydra failed
                cause = err.__cause__ if err.__cause__ is not None else err
                prefix = "augmentation." if isinstance(cause, AugmentationError) else f"augmentation.{name}: "
                raise AugmentationError(f"{prefix}{cause}") from err
        else:
            stages[str(name)] = node
    return AugmentationPipeline(stages, sample_rate)


def check_overrides(overrides: Sequence[str], config_dir: str | Path) -> None:
    """Fail early, listing the choices, on an unknown name in an ``augmentation=...`` override.

    Hydra lists a group's options for ``augmentation=foo`` but not for a name
    inside a list (``augmentation=[reverb,foo]``); an entry point calls this with
    its command-line overrides before composing. Sweeps (``augmentation=[],[reverb]``)
    are parsed with Hydra's own override grammar. ``config_dir`` is the primary
    config folder (its ``augmentation/`` subfolder holds the choices).
    """
    choices = sorted(p.stem for p in Path(config_dir, "augmentation").glob("*.yaml"))
    relevant = [o for o in overrides if o.lstrip("+~").startswith("augmentation=")]
    if not relevant:
        return
    for override in OverridesParser.create().parse_overrides(relevant):
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        for value in values:
            if isinstance(value, str):  # a sweep value arrives as its text, e.g. "[reverb,foo]"
                value = value.strip().strip("[]").split(",") if value.strip().startswith("[") else [value]
            names = [str(n).strip() for n in (value if isinstance(value, (list, tuple)) else [value])]
            unknown = [n for n in names if n and n not in choices]
            if unknown:
                raise AugmentationError(
                    f"unknown augmentation(s) {unknown} in {override.input_line!r}; available: {', '.join(choices)}")
