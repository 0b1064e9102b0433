"""Audio files in, one file per target source out (the library under ``msslab-separate``).

``separated/song/<target>.wav`` at the input's sample rate, channel count and length.
Any length works in flat memory: the file is read, resampled to the separator's rate,
separated (``msslab.separation.inference``), resampled back and written block by block.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from ..data.audio import AudioInfo, BadAudio, audio_info, check_finite, read_resampled, read_span, resampled_length
from ..errors import AudioFileError
from .inference import SeparationSettings, as_separator, separate_stream

log = logging.getLogger(__name__)
BLOCK_SECONDS = 10.0  # output written per step (at the input's rate)


def check_input(path: Path) -> AudioInfo:
    """The header of a readable, complete, finite audio file, or an error naming the file (streams, reads no more)."""
    if not path.is_file():
        raise AudioFileError(f"input: {path} does not exist")
    try:
        info = audio_info(str(path))
    except BadAudio as exc:
        raise AudioFileError(f"input: {path} is not a readable audio file ({exc.problem})") from None
    try:
        check_finite(info)
    except BadAudio as exc:
        raise AudioFileError(f"input: {path} {exc.problem}") from None
    return info


def output_paths(inputs: list[Path], output: Path, targets: list[str]) -> dict[Path, dict[str, Path]]:
    names = [p.stem for p in inputs]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise AudioFileError(f"input: several files are named {sorted(duplicated)}; their outputs would collide")
    return {p: {t: output / p.stem / f"{t}.wav" for t in targets} for p in inputs}


class _Pending:
    """Model-rate estimates as they stream out of the separator, read back by position.

    Reads never go backwards, so everything before the last read's start is dropped.
    """

    def __init__(self, blocks):
        self.blocks, self.start, self.buffer = blocks, 0, None

    def read(self, start: int, stop: int) -> dict[str, np.ndarray]:
        while self.buffer is None or self.start + self.buffer.shape[-1] < stop:
            block = next(self.blocks).float().cpu().numpy()
            self.buffer = block if self.buffer is None else np.concatenate([self.buffer, block], -1)
        self.buffer, self.start = self.buffer[..., start - self.start :], start
        return {"estimates": self.buffer[..., : stop - start]}


def separate_file(separator, info: AudioInfo, outputs: dict[str, Path], settings: SeparationSettings | None = None,
                  block_seconds: float = BLOCK_SECONDS) -> None:
    """Separate one file with ``separator`` (a :class:`~msslab.separation.Separator`; ``settings``: chunking
    and Wiener filter, as :func:`~msslab.separation.inference.separate_stream` takes them) into ``outputs``
    (``{target: path}``) at its rate, channel count and length.

    Each output is written to ``<path>.partial`` and renamed when complete, so a crash
    leaves no truncated result under the final name.
    """
    rate, frames, channels = info.sample_rate, info.frames, info.channels
    separator = as_separator(separator)
    model_rate = separator.sample_rate
    model_channels = separator.nb_channels

    def read_input(start: int, stop: int):  # model-rate, model-channel mixture samples [start, stop)
        span = read_resampled(lambda a, b: {"mixture": read_span(info.path, a, b)}, frames, rate, model_rate,
                              start, stop - start)["mixture"]
        mixture = torch.from_numpy(span)
        if channels != model_channels:  # mono in a stereo model: duplicate; more channels: downmix
            mixture = mixture.mean(0, keepdim=True).expand(model_channels, -1)
        return mixture, None

    pending = _Pending(separate_stream(separator, read_input, resampled_length(frames, rate, model_rate), settings))
    model_length = resampled_length(frames, rate, model_rate)
    partial = {target: path.with_name(path.name + ".partial") for target, path in outputs.items()}
    for path in partial.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    files = {t: sf.SoundFile(p, "w", samplerate=rate, channels=channels, subtype="FLOAT", format="WAV")
             for t, p in partial.items()}
    try:
        block = max(1, int(block_seconds * rate))
        for offset in range(0, frames, block):
            size = min(block, frames - offset)
            estimates = read_resampled(pending.read, model_length, model_rate, rate, offset, size)["estimates"]
            if channels != model_channels:
                estimates = np.broadcast_to(estimates.mean(1, keepdims=True), estimates.shape[:1] + (channels, size))
            for target, estimate in zip(outputs, estimates):
                files[target].write(estimate.T)
    except BaseException:
        for target, file in files.items():
            file.close()
            partial[target].unlink(missing_ok=True)
        raise
    for target, file in files.items():
        file.close()
        os.replace(partial[target], outputs[target])


def separate_files(separator, plan: dict[Path, dict[str, Path]], settings: SeparationSettings | None = None
                   ) -> list[Path]:
    """Separate every input of ``plan`` (``{input: {target: output}}``, see :func:`output_paths`);
    returns the written files. Every input is checked before anything is written."""
    separator = as_separator(separator)
    infos = {path: check_input(path) for path in plan}  # fail on a bad input before writing anything
    written = []
    for path, info in infos.items():
        separate_file(separator, info, plan[path], settings)
        written.extend(plan[path].values())
        log.info("%s -> %s", path, plan[path][separator.targets[0]].parent)
        print(f"{path}: {', '.join(str(p) for p in plan[path].values())}", flush=True)
    return written
