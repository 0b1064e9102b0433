"""Audio files for the file-backed datasets: metadata, checks, lazy span reads, resampling.

Everything here reads only what it is asked for: :func:`audio_info` opens the header
(plus the last few samples, to catch truncated files), :func:`read_span` seeks to a
span, and :func:`read_resampled` turns a request in model-rate samples into the
source-rate span it needs (with a margin for the resampling filter), so a chunk of a
long track costs a chunk's worth of reading whatever the track's length.

Problems with a file are :class:`BadAudio` (a :class:`DataError` naming the file).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soundfile as sf
import torch
import torchaudio

from .tracks import DataError

# libsndfile subtypes that can hold NaN or infinite samples; integer PCM cannot.
FLOAT_SUBTYPES = {"FLOAT", "DOUBLE"}
TAIL_FRAMES = 1024  # samples read at the end of every file to prove it is complete
# torchaudio's default resampling filter (sinc, 6 zero crossings, rolloff 0.99).
LOWPASS_FILTER_WIDTH, ROLLOFF = 6, 0.99


class BadAudio(DataError):
    """One file is unusable: ``path`` and ``problem`` say which and why."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem


@dataclass(frozen=True)
class AudioInfo:
    """What a header says about one audio file (or one stream of a multi-stream file)."""

    path: str
    sample_rate: int  # Hz
    frames: int  # samples per channel
    channels: int
    subtype: str = ""  # libsndfile subtype, e.g. PCM_16, FLOAT ("" when not read by libsndfile)

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def _truncated_wav(extra_info: str) -> tuple[int, int] | None:
    """``(declared, present)`` audio bytes when a WAV header promises more than the file holds."""
    match = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", extra_info, re.MULTILINE)
    if not match:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    # 0 and 0xFFFFFFFF are placeholders left by streaming writers, not truncation.
    if declared <= present or declared in (0, 0xFFFFFFFF):
        return None
    return declared, present


def audio_info(path: str) -> AudioInfo:
    """Header of ``path``, checked: readable, not empty, not truncated (raises :class:`BadAudio`)."""
    try:
        info = sf.info(path)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadAudio(path, f"unreadable audio file ({getattr(err, 'error_string', err)})") from None
    truncated = _truncated_wav(info.extra_info)
    if truncated is not None:
        raise BadAudio(path, f"truncated audio file: its header declares {truncated[0]} bytes of audio, "
                             f"the file holds {truncated[1]}")
    if info.frames <= 0:
        raise BadAudio(path, "empty audio file (0 samples)")
    try:  # compressed formats (FLAC, OGG, MP3) only show truncation when decoding the end
        tail = sf.read(path, start=max(0, info.frames - TAIL_FRAMES), stop=info.frames, dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadAudio(path, "truncated or corrupt audio file: its last samples cannot be decoded "
                             f"({getattr(err, 'error_string', err)})") from None
    expected = min(TAIL_FRAMES, info.frames)
    if len(tail) < expected:
        raise BadAudio(path, f"truncated audio file: the header declares {info.frames} samples, "
                             f"decoding stops about {expected - len(tail)} samples short")
    return AudioInfo(str(path), int(info.samplerate), int(info.frames), int(info.channels), info.subtype)


def check_finite(info: AudioInfo, block_frames: int = 1 << 18) -> None:
    """Stream through a float-encoded file and raise :class:`BadAudio` at the first NaN / inf.

    Integer PCM cannot hold such values, so those files are not read at all.
    """
    if info.subtype not in FLOAT_SUBTYPES:
        return
    position = 0
    try:
        for block in sf.blocks(info.path, blocksize=block_frames, dtype="float32", always_2d=True):
            bad = ~np.isfinite(block)
            if bad.any():
                first = position + int(np.argmax(bad.any(axis=1)))
                raise BadAudio(info.path, f"contains NaN or infinite samples (first at {first / info.sample_rate:.2f} s, "
                                          f"sample {first})")
            position += len(block)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadAudio(info.path, f"unreadable audio data after sample {position} ({err})") from None


def read_span(path: str, start: int, stop: int) -> np.ndarray:
    """Samples ``[start, stop)`` of ``path`` as float32 ``(channels, stop - start)``; seeks, reads nothing else."""
    try:
        audio = sf.read(path, start=start, stop=stop, dtype="float32", always_2d=True)[0]
    except (sf.LibsndfileError, RuntimeError) as err:
        raise BadAudio(path, f"cannot read samples {start}..{stop} ({err})") from None
    if len(audio) != stop - start:
        raise BadAudio(path, f"truncated audio file: asked for samples {start}..{stop}, got {len(audio)}")
    return audio.T


def to_stereo(audio: np.ndarray, path: str = "") -> np.ndarray:
    """``(1, T)`` -> ``(2, T)`` by duplication; stereo passes through; more channels are an error."""
    if audio.shape[0] == 2:
        return audio
    if audio.shape[0] == 1:
        return np.repeat(audio, 2, axis=0)
    raise BadAudio(path, f"has {audio.shape[0]} channels; msslab reads mono (made stereo) or stereo audio")


@lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig, new, lowpass_filter_width=LOWPASS_FILTER_WIDTH, rolloff=ROLLOFF)


def resample(audio: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited (sinc) resampling of ``(..., T)`` float32 from ``orig`` to ``new`` Hz (torchaudio)."""
    if orig == new:
        return audio
    with torch.no_grad():
        return _resampler(orig, new)(torch.from_numpy(np.ascontiguousarray(audio))).numpy()


def resampled_length(frames: int, orig: int, new: int) -> int:
    """Samples at ``new`` Hz of ``frames`` samples at ``orig`` Hz (torchaudio's length: rounded up)."""
    return -(-frames * new // orig)


def read_resampled(read: Callable[[int, int], dict[str, np.ndarray]], total: int, orig: int, new: int,
                   offset: int, num_frames: int, what: str = "audio") -> dict[str, np.ndarray]:
    """Output samples ``[offset, offset + num_frames)`` at ``new`` Hz of a ``total``-sample source at ``orig`` Hz.

    A request outside the source's ``resampled_length`` raises :class:`DataError` naming
    ``what`` (the file or track).

    ``read(start, stop)`` returns ``{name: (C, stop - start)}`` source-rate samples. Only
    the span under the request plus the filter's reach is read, and the span starts on
    the grid where source and output samples coincide, so the result equals the same
    samples of the whole file resampled at once (up to float rounding).
    """
    available = resampled_length(total, orig, new)
    if offset < 0 or num_frames < 0 or offset + num_frames > available:
        raise DataError(f"{what}: asked for samples {offset}..{offset + num_frames} at {new} Hz, "
                        f"outside its {available} samples")
    if orig == new:
        return read(offset, offset + num_frames)
    g = math.gcd(orig, new)
    step_in, step_out = orig // g, new // g  # the input/output samples of one grid period
    # torchaudio's kernel reaches this many input samples either side of a grid period.
    reach = math.ceil(LOWPASS_FILTER_WIDTH * step_in / (min(step_in, step_out) * ROLLOFF)) + step_in + 1
    first_in = offset * step_in // step_out
    start = max(0, (first_in - reach) // step_in) * step_in
    stop = min(total, -(-(offset + num_frames) * step_in // step_out) + reach)
    span = read(start, stop)
    names = list(span)
    out = resample(np.stack([span[n] for n in names]), orig, new)
    skip = offset - start // step_in * step_out
    out = out[..., skip : skip + num_frames]
    if out.shape[-1] != num_frames:  # cannot happen after the check above; a wrong length must not pass
        raise DataError(f"{what}: resampled {out.shape[-1]} samples where {num_frames} were asked for")
    return {n: np.ascontiguousarray(out[i]) for i, n in enumerate(names)}
