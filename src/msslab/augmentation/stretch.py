"""Time stretching and pitch shifting (audiomentations ``TimeStretch`` / ``PitchShift``).

By default one draw per example is applied to all of its sources at once: their
channels are stacked into one ``(sources * channels, frames)`` array, so the
sources stay musically coherent and one draw costs one call of the stretcher.
The default backend is Signalsmith Stretch, the faster and cleaner of the two
that audiomentations offers (``librosa_phase_vocoder`` is the other).
"""

from __future__ import annotations

import audiomentations

from .pipeline import AugmentationError, as_range, check_probability, stack, unstack

METHODS = ("signalsmith_stretch", "librosa_phase_vocoder")


def _check_method(method: str, name: str) -> str:
    if method not in METHODS:
        raise AugmentationError(f"{name}.method must be one of {list(METHODS)}, got {method!r}")
    return method


class _PerExampleOrSource:
    transform: audiomentations.core.transforms_interface.BaseWaveformTransform
    per_source: bool

    @property
    def parameters(self) -> dict:
        """The last draw (audiomentations' own record: ``rate`` / ``num_semitones``)."""
        drawn = self.transform.parameters
        return {k: v for k, v in drawn.items() if k != "should_apply"} if drawn.get("should_apply") else {}

    def __call__(self, sources, mix_only, rng, sample_rate):
        if self.per_source:
            return {k: self.transform(v, sample_rate) for k, v in sources.items()}, mix_only
        return unstack(self.transform(stack(sources), sample_rate), sources), mix_only


class TimeStretch(_PerExampleOrSource):
    """Change the tempo, keep the pitch; the segment length is restored.

    Args:
        p: probability of applying it (per example, or per source when ``per_source``).
        rate: ``[low, high]`` speed factor, drawn uniformly (>1 faster, <1 slower).
            The data set loads ``ceil(segment * max(rate))`` samples, so a faster
            tempo still fills the segment; the pipeline cuts the result to the segment.
        per_source: draw a rate for every source instead of one per example.
        method: ``signalsmith_stretch`` (default) or ``librosa_phase_vocoder``.
    """

    def __init__(self, p: float = 0.5, rate=(0.9, 1.1), per_source: bool = False,
                 method: str = "signalsmith_stretch"):
        low, high = as_range(rate, "time_stretch.rate")
        self.p, self.per_source = check_probability(p, "time_stretch"), bool(per_source)
        self.max_rate = high
        self.transform = audiomentations.TimeStretch(
            min_rate=low, max_rate=high, leave_length_unchanged=True,
            method=_check_method(method, "time_stretch"), p=self.p)


class PitchShift(_PerExampleOrSource):
    """Change the pitch, keep the tempo (and the length).

    Args:
        p: probability of applying it (per example, or per source when ``per_source``).
        semitones: ``[low, high]`` shift in semitones, drawn uniformly (within +-24).
        per_source: draw a shift for every source instead of one per example.
        method: ``signalsmith_stretch`` (default) or ``librosa_phase_vocoder``.
    """

    def __init__(self, p: float = 0.5, semitones=(-2.0, 2.0), per_source: bool = False,
                 method: str = "signalsmith_stretch"):
        low, high = as_range(semitones, "pitch_shift.semitones")
        self.p, self.per_source = check_probability(p, "pitch_shift"), bool(per_source)
        self.transform = audiomentations.PitchShift(
            min_semitones=low, max_semitones=high, method=_check_method(method, "pitch_shift"), p=self.p)
