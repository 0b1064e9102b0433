"""Source-level augmentations of standard MSS training: gain, channel swap, remix."""

from __future__ import annotations

import audiomentations
import numpy as np

from .pipeline import as_range, check_probability, stack, unstack


class Gain:
    """Random gain in dB (audiomentations ``Gain``).

    Args:
        p: probability of applying it (per source when ``per_source``, else per example).
        gain_db: ``[low, high]`` gain range in dB, drawn uniformly.
        per_source: draw a gain for every source (changes the balance of the mix),
            or one for the whole example (changes only its loudness).
    """

    def __init__(self, p: float = 0.5, gain_db=(-6.0, 6.0), per_source: bool = True):
        low, high = as_range(gain_db, "gain.gain_db")
        self.p, self.per_source = check_probability(p, "gain"), bool(per_source)
        self.transform = audiomentations.Gain(min_gain_db=low, max_gain_db=high, p=self.p)

    def __call__(self, sources, mix_only, rng, sample_rate):
        if self.per_source:
            return {k: self.transform(v, sample_rate) for k, v in sources.items()}, mix_only
        return unstack(self.transform(stack(sources), sample_rate), sources), mix_only


class ChannelSwap:
    """Swap left and right (reverse the channel order) of stereo sources.

    Args:
        p: probability of swapping (per source when ``per_source``, else per example).
        per_source: draw for every source, or once for the whole example.
    """

    def __init__(self, p: float = 0.5, per_source: bool = True):
        self.p, self.per_source = check_probability(p, "channel_swap"), bool(per_source)

    def __call__(self, sources, mix_only, rng, sample_rate):
        if self.per_source:
            swap = {k: rng.random() < self.p for k in sources}
        else:
            swap = dict.fromkeys(sources, rng.random() < self.p)
        return {k: np.ascontiguousarray(v[::-1]) if swap[k] else v for k, v in sources.items()}, mix_only


class Remix:
    """Draw the sources of an example from different random tracks (and positions).

    The data set does the drawing, because it loads the audio; the pipeline only
    carries the probability as ``pipeline.remix_p``.

    Args:
        p: probability that an example is a remix of independent tracks.
    """

    def __init__(self, p: float = 0.5):
        self.p = check_probability(p, "remix")

    def __call__(self, sources, mix_only, rng, sample_rate):
        return sources, mix_only
