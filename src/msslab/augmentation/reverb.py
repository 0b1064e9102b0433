"""Reverberation: all sources of an example in one room.

Room impulse responses are generated (no files needed): a few sparse early
reflections after a pre-delay set by the room size, then a dense tail of noise
decaying exponentially by 60 dB over the drawn RT60, independently per channel
so the reverb is wide. Or they are read from a folder of recorded IRs.
"""

from __future__ import annotations

import numpy as np
import scipy.fft

from .files import AudioFolder, match_channels
from .pipeline import AugmentationError, as_range, check_probability, stack, unstack

SPEED_OF_SOUND = 343.0  # m/s
LN_1000 = np.log(1000.0)  # 60 dB of amplitude decay


def synthetic_rir(sample_rate: int, rt60: float, room_size: float, channels: int, rng,
                  early_reflections: int = 8) -> np.ndarray:
    """A wet-only room impulse response, float32 ``(channels, frames)``, unit energy per channel.

    Args:
        sample_rate: Hz.
        rt60: seconds for the tail to decay by 60 dB.
        room_size: metres; the pre-delay (first reflection) is half a crossing of
            the room, and early reflections spread over the next two crossings.
        channels: independent realisations (decorrelated stereo).
        early_reflections: number of discrete early reflections per channel.

    The direct sound is not included: it is the dry signal itself, so that the
    reverberant source stays aligned with the dry one.
    """
    crossing = room_size / SPEED_OF_SOUND
    pre_delay = 0.5 * crossing
    frames = int(np.ceil((pre_delay + rt60) * sample_rate)) + 1
    t = np.arange(frames) / sample_rate
    decay = np.exp(-LN_1000 * np.clip(t - pre_delay, 0.0, None) / rt60)
    # The tail builds up over two crossings of the room (echo density grows with time).
    ramp = np.clip((t - pre_delay) / (2.0 * crossing), 0.0, 1.0)
    ir = rng.standard_normal((channels, frames)) * (decay * np.sin(0.5 * np.pi * ramp) ** 2)
    start = int(pre_delay * sample_rate)
    spread = max(1, int(2.0 * crossing * sample_rate))
    for c in range(channels):
        taps = np.minimum(start + rng.integers(0, spread, size=early_reflections), frames - 1)
        ir[c, taps] += rng.choice([-1.0, 1.0], size=early_reflections) * rng.uniform(2.0, 6.0, early_reflections) \
            * decay[taps]
    ir /= np.sqrt(np.sum(ir**2, axis=1, keepdims=True)) + 1e-12
    return ir.astype(np.float32)


def prepare_recorded_ir(ir: np.ndarray, channels: int) -> np.ndarray:
    """A recorded IR with its direct-sound peak moved to sample 0, unit energy per channel."""
    ir = match_channels(ir, channels)
    peak = int(np.argmax(np.max(np.abs(ir), axis=0)))
    ir = ir[:, peak:]
    return (ir / (np.sqrt(np.sum(ir**2, axis=1, keepdims=True)) + 1e-12)).astype(np.float32)


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """``x (..., C, T)`` convolved per channel with ``ir (..., C, L)``, cut to ``T`` samples."""
    frames = x.shape[-1]
    n = scipy.fft.next_fast_len(frames + ir.shape[-1] - 1, real=True)
    spectrum = scipy.fft.rfft(x, n, axis=-1) * scipy.fft.rfft(ir, n, axis=-1)
    return scipy.fft.irfft(spectrum, n, axis=-1)[..., :frames].astype(np.float32)


class Reverb:
    """Put all sources of an example in the same room.

    Each source becomes ``(1 - wet) * dry + wet * (dry convolved with the room's IR)``,
    cut to the segment length (the tail past its end is dropped for every source
    alike). By default the target is the reverberant source; with ``dry_target``
    the targets stay dry and the reverberation goes into the mixture only.

    Args:
        p: probability that an example is reverberated.
        rt60: ``[low, high]`` reverberation time in seconds, drawn uniformly.
        room_size: ``[low, high]`` room size in metres (pre-delay, early reflections).
        wet_level: ``[low, high]`` share of reverberant sound, 0 (dry) to 1 (wet only).
        dry_target: keep the targets dry (the network learns to dereverberate).
        per_source: every source its own position (IR realisation) in the shared
            room (same RT60, size and wet level); False uses one IR for all. With
            ``ir_dir``, a room is a folder: the IRs of all sources come from one
            (sub)folder of ``ir_dir``, so keep each room's recordings in its own folder.
        early_reflections: discrete early reflections per generated IR channel.
        ir_dir: folder of recorded impulse responses to use instead of generated
            ones (``rt60``, ``room_size`` then do not apply); None generates.
        cache_size: recorded IRs kept in memory per worker.
    """

    def __init__(self, p: float = 0.5, rt60=(0.2, 1.0), room_size=(3.0, 20.0), wet_level=(0.1, 0.5),
                 dry_target: bool = False, per_source: bool = False, early_reflections: int = 8,
                 ir_dir: str | None = None, cache_size: int = 64):
        self.p = check_probability(p, "reverb")
        self.rt60 = as_range(rt60, "reverb.rt60")
        self.room_size = as_range(room_size, "reverb.room_size")
        self.wet_level = as_range(wet_level, "reverb.wet_level")
        if self.rt60[0] <= 0 or self.room_size[0] <= 0:
            raise AugmentationError("reverb.rt60 and reverb.room_size must be > 0")
        if not (0.0 <= self.wet_level[0] and self.wet_level[1] <= 1.0):
            raise AugmentationError(f"reverb.wet_level must lie in [0, 1], got {list(self.wet_level)}")
        self.dry_target, self.per_source = bool(dry_target), bool(per_source)
        self.early_reflections = int(early_reflections)
        self.folder = AudioFolder(ir_dir, "reverb.ir_dir", cache_size) if ir_dir else None
        self.rooms = self.folder.groups() if self.folder is not None else []
        self.parameters: dict = {}

    def impulse_responses(self, count: int, channels: int, sample_rate: int, rng) -> np.ndarray:
        """``count`` IRs of one room, ``(count, channels, frames)`` float32."""
        if self.folder is not None:
            if count == 1:
                picks = [int(rng.integers(len(self.folder)))]
            else:  # positions in one room: IRs of one folder (repeated if it holds fewer than count)
                room = self.rooms[int(rng.integers(len(self.rooms)))]
                picks = [room[int(i)] for i in rng.permutation(max(count, len(room)))[:count] % len(room)]
            self.parameters["ir_files"] = [self.folder.files[i].name for i in picks]
            irs = [prepare_recorded_ir(self.folder.load(i, sample_rate), channels) for i in picks]
            frames = max(ir.shape[1] for ir in irs)
            return np.stack([np.pad(ir, ((0, 0), (0, frames - ir.shape[1]))) for ir in irs])
        rt60, room = rng.uniform(*self.rt60), rng.uniform(*self.room_size)
        self.parameters |= {"rt60": float(rt60), "room_size": float(room)}
        return np.stack([synthetic_rir(sample_rate, rt60, room, channels, rng, self.early_reflections)
                         for _ in range(count)])

    def __call__(self, sources, mix_only, rng, sample_rate):
        self.parameters = {}  # what this call drew (read by test conditions)
        if rng.random() >= self.p:
            return sources, mix_only
        channels = {v.shape[0] for v in sources.values()}
        if len(channels) != 1:
            raise AugmentationError(f"reverb needs sources with one channel count, got {sorted(channels)}")
        channels = channels.pop()
        wet = np.float32(rng.uniform(*self.wet_level))
        self.parameters["wet_level"] = float(wet)
        irs = self.impulse_responses(len(sources) if self.per_source else 1, channels, sample_rate, rng)
        dry = stack(sources).reshape(len(sources), channels, -1)
        reverberant = (1 - wet) * dry + wet * convolve(dry, irs)
        if not self.dry_target:
            return unstack(reverberant.reshape(-1, dry.shape[-1]), sources), mix_only
        tail = np.sum(reverberant - dry, axis=0, dtype=np.float32)
        return sources, tail if mix_only is None else (mix_only + tail).astype(np.float32)
