"""``msslab-separate``: audio file(s) in, one file per target source out.

``msslab-separate ckpt=model.ckpt input=song.flac output=separated`` writes
``separated/song/<target>.wav`` at the input's sample rate, channel count and length.
Any length works in flat memory: the file is read, resampled to the model's rate,
separated (``msslab.inference``), resampled back and written block by block.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import numpy as np
import soundfile as sf
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from .data.audio import AudioInfo, BadAudio, audio_info, check_finite, read_resampled, read_span, resampled_length
from .errors import AudioFileError, exit_on_user_error
from .evaluate import CONF_DIR
from .inference import SeparationSettings, resolve_device, separate_stream
from .system import load_checkpoint

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


def separate_file(system, info: AudioInfo, outputs: dict[str, Path], settings: SeparationSettings,
                  block_seconds: float = BLOCK_SECONDS) -> None:
    """Separate one file into ``outputs`` (``{target: path}``) at its rate, channel count and length.

    Each output is written to ``<path>.partial`` and renamed when complete, so a crash
    leaves no truncated result under the final name.
    """
    rate, frames, channels = info.sample_rate, info.frames, info.channels
    model_rate = system.spectrogram.sample_rate
    model_channels = system.config["nb_channels"]

    def read_input(start: int, stop: int):  # model-rate, model-channel mixture samples [start, stop)
        span = read_resampled(lambda a, b: {"mixture": read_span(info.path, a, b)}, frames, rate, model_rate,
                              start, stop - start)["mixture"]
        mixture = torch.from_numpy(span)
        if channels != model_channels:  # mono in a stereo model: duplicate; more channels: downmix
            mixture = mixture.mean(0, keepdim=True).expand(model_channels, -1)
        return mixture, None

    pending = _Pending(separate_stream(system, read_input, resampled_length(frames, rate, model_rate), settings))
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


def separate(cfg: DictConfig) -> list[Path]:
    """Separate every input; returns the written files. Nothing is overwritten unless ``overwrite=true``."""
    inputs = [Path(p) for p in (cfg.input if isinstance(cfg.input, (list, ListConfig)) else [cfg.input])]
    system = load_checkpoint(cfg.ckpt, map_location=resolve_device(cfg.device))
    # The command's separation settings win; the ones it leaves null are the checkpoint's.
    settings = SeparationSettings.resolve(OmegaConf.to_container(cfg.separation), system.config.get("separation"))
    plan = output_paths(inputs, Path(cfg.output), system.targets)
    existing = [str(p) for files in plan.values() for p in files.values() if p.exists()]
    if existing and not cfg.overwrite:
        raise AudioFileError(f"output: {len(existing)} file(s) exist already, e.g. {existing[0]}; "
                             "choose another output= or pass overwrite=true")
    if cfg.streaming:  # block by block with a causal model (msslab.streaming)
        from .streaming import stream_files

        # the command's, as offline
        system.wiener_iterations, system.wiener_exponent = settings.wiener_iterations, settings.wiener_exponent
        return stream_files(system, plan, cfg.block_ms, cfg.wiener_context_ms)
    infos = {path: check_input(path) for path in inputs}  # fail on a bad input before writing anything
    written = []
    for path, info in infos.items():
        separate_file(system, info, plan[path], settings)
        written.extend(plan[path].values())
        log.info("%s -> %s", path, plan[path][system.targets[0]].parent)
        print(f"{path}: {', '.join(str(p) for p in plan[path].values())}", flush=True)
    return written


@hydra.main(config_path=CONF_DIR, config_name="separate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    separate(cfg)


if __name__ == "__main__":
    main()
