"""``msslab-separate``: audio file(s) in, one file per target source out.

``msslab-separate ckpt=model.ckpt input=song.flac output=separated`` writes
``separated/song/<target>.wav`` at the input's sample rate, channel count and length.
Any length works: the model sees overlapping chunks of ``chunk_seconds``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
from omegaconf import DictConfig, ListConfig

from .errors import AudioFileError, exit_on_user_error
from .evaluate import CONF_DIR, separate_chunked
from .system import load_checkpoint

log = logging.getLogger(__name__)


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """``(channels, samples)`` float32 and the sample rate, or an error naming the file."""
    if not path.is_file():
        raise AudioFileError(f"input: {path} does not exist")
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioFileError(f"input: {path} is not a readable audio file ({exc})") from None
    if audio.shape[0] == 0:
        raise AudioFileError(f"input: {path} holds no samples")
    if not np.isfinite(audio).all():
        raise AudioFileError(f"input: {path} contains NaN or infinite samples")
    return audio.T, rate


def output_paths(inputs: list[Path], output: Path, targets: list[str]) -> dict[Path, dict[str, Path]]:
    names = [p.stem for p in inputs]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise AudioFileError(f"input: several files are named {sorted(duplicated)}; their outputs would collide")
    return {p: {t: output / p.stem / f"{t}.wav" for t in targets} for p in inputs}


@torch.no_grad()
def separate_file(system, audio: np.ndarray, rate: int, chunk_seconds: float, overlap_seconds: float) -> np.ndarray:
    """``(channels, samples)`` at ``rate`` -> ``(targets, channels, samples)`` at the same rate and length."""
    model_rate = system.spectrogram.sample_rate
    model_channels = system.config["nb_channels"]
    mixture = torch.from_numpy(audio)
    channels, length = mixture.shape
    if channels != model_channels:  # mono in a stereo model: duplicate; more channels: downmix
        mixture = mixture.mean(0, keepdim=True).expand(model_channels, -1)
    if rate != model_rate:
        mixture = AF.resample(mixture, rate, model_rate)
    estimates = separate_chunked(system, mixture.to(system.device), int(chunk_seconds * model_rate),
                                 int(overlap_seconds * model_rate)).cpu()
    if rate != model_rate:
        estimates = AF.resample(estimates, model_rate, rate)
    estimates = torch.nn.functional.pad(estimates, (0, max(0, length - estimates.shape[-1])))[..., :length]
    if channels != model_channels:
        estimates = estimates.mean(1, keepdim=True).expand(-1, channels, -1)
    return estimates.numpy()


def separate(cfg: DictConfig) -> list[Path]:
    """Separate every input; returns the written files. Nothing is overwritten unless ``overwrite=true``."""
    inputs = [Path(p) for p in (cfg.input if isinstance(cfg.input, (list, ListConfig)) else [cfg.input])]
    system = load_checkpoint(cfg.ckpt, map_location=cfg.device)
    if cfg.wiener_iterations is not None:
        system.wiener_iterations = int(cfg.wiener_iterations)
    plan = output_paths(inputs, Path(cfg.output), system.targets)
    existing = [str(p) for files in plan.values() for p in files.values() if p.exists()]
    if existing and not cfg.overwrite:
        raise AudioFileError(f"output: {len(existing)} file(s) exist already, e.g. {existing[0]}; "
                             "choose another output= or pass overwrite=true")
    if cfg.streaming:  # block by block with a causal model (msslab.streaming)
        from .streaming import stream_files

        return stream_files(system, plan, cfg.block_ms)
    audio = {path: read_audio(path) for path in inputs}  # fail on a bad input before writing anything
    written = []
    for path, (samples, rate) in audio.items():
        estimates = separate_file(system, samples, rate, cfg.chunk_seconds, cfg.overlap_seconds)
        for (target, out), estimate in zip(plan[path].items(), estimates):
            out.parent.mkdir(parents=True, exist_ok=True)
            sf.write(out, estimate.T, rate, subtype="FLOAT")
            written.append(out)
        log.info("%s -> %s", path, plan[path][system.targets[0]].parent)
        print(f"{path}: {', '.join(str(p) for p in plan[path].values())}", flush=True)
    return written


@hydra.main(config_path=CONF_DIR, config_name="separate", version_base="1.3")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    separate(cfg)


if __name__ == "__main__":
    main()
