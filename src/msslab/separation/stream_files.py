"""``msslab-separate streaming=true``: audio files separated through a :class:`~.streaming.Streamer`,
read, resampled, separated, resampled back and written in blocks (memory flat in a file's length).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio

from ..errors import AudioFileError
from .inference import as_separator
from .streaming import Streamer, StreamingError

log = logging.getLogger(__name__)


def stream_files(separator, plan: dict[Path, dict[str, Path]], block_ms: float,
                 wiener_context_ms: float | None = None) -> list[Path]:
    """Separate each file block by block with a :class:`Streamer` of ``separator`` (a causal
    :class:`~msslab.separation.Separator`, on its device, with its Wiener settings).

    ``plan`` maps each input file to ``{target: output path}``. Files are read and written
    in blocks of ``block_ms`` milliseconds (memory does not grow with their length); each
    output has its input's sample rate, channel count and length (the stream's latency is
    dropped from its start). An output is written under a temporary name and renamed when
    complete. With ``separator.wiener_iterations > 0``, ``wiener_context_ms`` selects the causal
    Wiener filter over that much past (None refuses the filter). Returns the written files.
    """
    if not block_ms > 0:
        raise StreamingError(f"block_ms must be positive, got {block_ms}")
    context = None
    if wiener_context_ms is not None:
        if not wiener_context_ms > 0:
            raise StreamingError(f"wiener_context_ms must be positive, got {wiener_context_ms}")
        spectrogram = as_separator(separator).spectrogram
        context = math.ceil(wiener_context_ms * spectrogram.sample_rate / 1000 / spectrogram.hop_length)
    streamer = Streamer(separator, device=as_separator(separator).device, wiener_context_frames=context)
    infos = {path: _stream_info(path) for path in plan}  # fail on a bad input before writing anything
    written = []
    for path, outputs in plan.items():
        info = infos[path]
        block = max(1, round(block_ms * info.samplerate / 1000))
        _stream_file(streamer, path, outputs, info, block)
        written.extend(outputs.values())
        log.info("%s -> %s (streamed in blocks of %d samples)", path, next(iter(outputs.values())).parent, block)
        print(f"{path}: {', '.join(str(p) for p in outputs.values())}", flush=True)
    return written


def _stream_info(path: Path):
    if not path.is_file():
        raise AudioFileError(f"input: {path} does not exist")
    try:
        info = sf.info(path)
    except Exception as exc:
        raise AudioFileError(f"input: {path} is not a readable audio file ({exc})") from None
    if info.frames == 0:
        raise AudioFileError(f"input: {path} holds no samples")
    return info


class StreamResampler:
    """torchaudio's sinc resampling (``torchaudio.functional.resample`` with its defaults), block by block.

    The outputs of ``process`` followed by that of ``finish`` are the resampling of the
    whole signal at once: the same kernel applied at the same positions, with the same
    zeros beyond both ends. Holds back about one kernel width of input (``lowpass_filter_width``
    zero crossings, 6 by default: under 1 ms at 8 kHz and above).
    """

    def __init__(self, orig_freq: int, new_freq: int, channels: int):
        transform = torchaudio.transforms.Resample(orig_freq, new_freq)
        self.kernel, self.width = transform.kernel, transform.width  # (new, 1, 2 * width + orig), zeros each side
        divisor = math.gcd(orig_freq, new_freq)
        self.orig, self.new = orig_freq // divisor, new_freq // divisor
        self._buffer = torch.zeros(channels, self.width)  # the whole-signal resampler's leading zeros
        self._received = self._produced = 0

    def process(self, x: torch.Tensor) -> torch.Tensor:
        """``(channels, samples)`` at ``orig_freq`` -> ``(channels, samples')`` at ``new_freq``, as far as known."""
        self._received += x.shape[-1]
        self._buffer = torch.cat([self._buffer, x], dim=-1)
        size = self.kernel.shape[-1]
        if self._buffer.shape[-1] < size:
            return self._buffer[:, :0]
        groups = (self._buffer.shape[-1] - size) // self.orig + 1  # each: `orig` samples in, `new` out
        y = F.conv1d(self._buffer[:, None, : (groups - 1) * self.orig + size], self.kernel, stride=self.orig)
        self._buffer = self._buffer[:, groups * self.orig:]
        y = y.transpose(1, 2).reshape(x.shape[0], -1)
        self._produced += y.shape[-1]
        return y

    def finish(self) -> torch.Tensor:
        """The rest of the output: ``ceil(samples * new_freq / orig_freq)`` in all, as the whole-signal resampling."""
        channels = self._buffer.shape[0]
        total = math.ceil(self.new * self._received / self.orig)
        produced = self._produced
        y = self.process(torch.zeros(channels, self.width + self.orig))
        return y[:, : max(0, total - produced)]


def _stream_file(streamer: Streamer, path: Path, outputs: dict[str, Path], info, block: int) -> None:
    """Read, resample, stream, resample back and write in blocks; the outputs appear complete or not at all."""
    channels, rate, length = info.channels, info.samplerate, info.frames
    model_channels, model_rate = streamer.nb_channels, streamer.sample_rate
    nb_targets = len(streamer.targets)
    resample_in = StreamResampler(rate, model_rate, model_channels) if rate != model_rate else None
    resample_out = StreamResampler(model_rate, rate, nb_targets * model_channels) if rate != model_rate else None
    temporary = {t: out.with_name(f".{out.stem}.partial{out.suffix}") for t, out in outputs.items()}
    to_skip = streamer.latency_samples  # the stream starts with this much silence (at the model's rate)
    written = 0
    writers = {}

    def write(estimates: torch.Tensor, last: bool = False) -> None:
        """``(targets, model channels, samples)`` at the model's rate, the stream's next samples."""
        nonlocal to_skip, written
        skip = min(to_skip, estimates.shape[-1])
        to_skip -= skip
        estimates = estimates[..., skip:]
        if resample_out is not None:
            flat = estimates.reshape(nb_targets * model_channels, -1)
            flat = torch.cat([resample_out.process(flat), resample_out.finish()], -1) if last else resample_out.process(flat)
            estimates = flat.reshape(nb_targets, model_channels, -1)
        if last:  # the input's length exactly, as offline separation gives
            estimates = F.pad(estimates, (0, max(0, length - written - estimates.shape[-1])))
        estimates = estimates[..., : length - written]
        if channels != model_channels:  # back to the file's channels, as offline separation does
            estimates = estimates.mean(1, keepdim=True).expand(-1, channels, -1)
        for target, estimate in zip(streamer.targets, estimates.numpy()):
            writers[target].write(estimate.T)
        written += estimates.shape[-1]

    def separate(mixture: torch.Tensor) -> torch.Tensor:
        """``(model channels, samples)`` at the model's rate -> the stream's ``(targets, model channels, samples)``."""
        pieces = streamer.process(mixture)
        return torch.stack([pieces[t] for t in streamer.targets]).cpu()

    try:
        for target, tmp in temporary.items():
            tmp.parent.mkdir(parents=True, exist_ok=True)
            writers[target] = sf.SoundFile(tmp, "w", samplerate=rate, channels=channels, subtype="FLOAT", format="WAV")
        with sf.SoundFile(path) as source:
            for audio in source.blocks(blocksize=block, dtype="float32", always_2d=True):
                if not np.isfinite(audio).all():
                    raise AudioFileError(f"input: {path} contains NaN or infinite samples")
                mixture = torch.from_numpy(audio.T)
                if channels != model_channels:  # mono in a stereo model: duplicate; more channels: downmix
                    mixture = mixture.mean(0, keepdim=True).expand(model_channels, -1)
                write(separate(resample_in.process(mixture) if resample_in is not None else mixture))
        tail = separate(resample_in.finish()) if resample_in is not None else None
        end = streamer.flush()
        end = torch.stack([end[t] for t in streamer.targets]).cpu()
        write(end if tail is None else torch.cat([tail, end], -1), last=True)
        for writer in writers.values():
            writer.close()
        for target, tmp in temporary.items():
            os.replace(tmp, outputs[target])
    finally:
        streamer.reset()
        for writer in writers.values():
            writer.close()
        for tmp in temporary.values():
            tmp.unlink(missing_ok=True)
